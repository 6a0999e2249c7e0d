//! What the builder asks of Nix, as a trait: evaluate a commit, build a derivation,
//! ask whether a store path is valid. [`NixExecutor`] and [`FlakeExecutor`] are the two
//! real implementations; tests and embedders may write their own, whose commands get
//! the subprocess protocol for free through [`JobContext::run`].

use std::path::PathBuf;

use crate::job::JobContext;
use crate::JobError;

mod nix;

pub use nix::{FlakeExecutor, NixExecutor, NixOptions, NixVersion};

/// The evaluation of one commit, as the builder hands it to an [`Executor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalRequest {
    /// The repository holding the commit.
    pub repository_path: PathBuf,
    /// The directory of the expression inside the repository: `""` or `"."` for the
    /// repository root.
    pub repository_subdir: String,
    /// The commit to evaluate: 40 or 64 hexadecimal characters.
    pub commit_id: String,
    /// Legacy Nix: the attribute path holding `.toplevel`; flakes: `nixosConfigurations`.
    pub system_attr: String,
    /// The host whose system is evaluated.
    pub hostname: String,
    /// Whether the repository's submodules are part of the source.
    pub submodules: bool,
}

/// What an evaluation yields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvalOutput {
    /// The store path of the system's derivation (`….drv`).
    pub drv_path: String,
    /// The store path the build will produce.
    pub out_path: String,
    /// The machine id the configuration expects, `""` when it sets none.
    pub machine_id: String,
}

/// Evaluates and builds. Called from the builder's job threads, one job at a time
/// per builder; implementations must run their commands through `ctx` (or check
/// [`JobContext::is_cancelled`]) so that timeouts and cancellation reach them.
pub trait Executor: Send + Sync + 'static {
    /// Evaluates `req`, returning the derivation and output paths.
    fn eval(&self, req: &EvalRequest, ctx: &JobContext) -> Result<EvalOutput, JobError>;

    /// Builds `drv_path`.
    fn build(&self, drv_path: &str, ctx: &JobContext) -> Result<(), JobError>;

    /// Whether `path` is valid in the Nix store.
    fn is_store_path_valid(&self, path: &str) -> bool;

    /// Whether the output of a successful evaluation is already built (the "already
    /// built" shortcut: the builder then records it built without building). By default
    /// [`is_store_path_valid`](Executor::is_store_path_valid) of the out path; the Nix
    /// executors also root the output then, under `ctx`'s
    /// [`gc_root_owner`](JobContext::gc_root_owner), as a build would have.
    fn is_built(&self, output: &EvalOutput, ctx: &JobContext) -> bool {
        let _ = ctx;
        self.is_store_path_valid(&output.out_path)
    }

    /// Drops whatever the executor keeps, under `ctx`'s
    /// [`gc_root_owner`](JobContext::gc_root_owner), for derivations not in
    /// `live_drv_paths` (gc roots). Called from an evaluation job, before the
    /// evaluation. Does nothing by default.
    fn release_unused(&self, live_drv_paths: &[String], ctx: &JobContext) {
        let _ = (live_drv_paths, ctx);
    }

    /// The key of everything that can change the result of evaluating `req`, or `None`
    /// when the result may depend on more than the executor can name (then an
    /// evaluation is never reused). Two requests with the same key evaluate to the
    /// same derivation, so a successful evaluation may stand in for a later one with
    /// the same key (see [`reuse_evaluation`](Executor::reuse_evaluation)). `None`
    /// by default. Called from the evaluation job, before
    /// [`reuse_evaluation`](Executor::reuse_evaluation): a command it needs (the Nix
    /// executors ask `nix --version` once) runs through `ctx`.
    ///
    /// The builder keeps results by this key alone, in its [`Store`](crate::Store),
    /// across restarts and whichever executor a later builder over that store has: the
    /// key must name the executor (its kind, its version) as well as the request, so
    /// that two executors that may evaluate differently never share one. The Nix
    /// executors' keys are name-based UUIDs of all that, genbuild's own evaluation
    /// expressions included.
    fn eval_reuse_key(&self, req: &EvalRequest, ctx: &JobContext) -> Option<String> {
        let _ = (req, ctx);
        None
    }

    /// Whether the earlier evaluation `output` (of a request with the same
    /// [`eval_reuse_key`](Executor::eval_reuse_key)) can stand in for a new one: its
    /// derivation is still there, and is now protected for `ctx`'s
    /// [`gc_root_owner`](JobContext::gc_root_owner) as an evaluation would have
    /// protected it. `Ok(false)` by default.
    ///
    /// # Errors
    /// Whatever kept the executor from answering: the job's cancel or timeout (a
    /// command run through `ctx` returns them), a check that could not run. The
    /// builder then ends the evaluation job with that error and keeps the earlier
    /// evaluation for a later reuse; only `Ok(false)` makes it forget it.
    fn reuse_evaluation(&self, output: &EvalOutput, ctx: &JobContext) -> Result<bool, JobError> {
        let _ = (output, ctx);
        Ok(false)
    }
}
