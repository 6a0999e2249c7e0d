//! What the builder asks of Nix, as a trait: evaluate a commit, build a derivation,
//! ask whether a store path is valid. [`NixExecutor`] and [`FlakeExecutor`] are the two
//! real implementations; tests and embedders may write their own, whose commands get
//! the subprocess protocol for free through [`JobContext::run`].

use std::path::PathBuf;

use crate::{JobContext, JobError};

/// The evaluation of one commit, as the builder hands it to an [`Executor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalRequest {
    pub repository_path: PathBuf,
    /// `""` or `"."` for the repository root.
    pub repository_subdir: String,
    pub commit_id: String,
    /// Legacy Nix: the attribute path holding `.toplevel`; flakes: `nixosConfigurations`.
    pub system_attr: String,
    pub hostname: String,
    pub submodules: bool,
}

/// What an evaluation yields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvalOutput {
    pub drv_path: String,
    pub out_path: String,
    /// The machine id the configuration expects, `""` when it sets none.
    pub machine_id: String,
}

/// Evaluates and builds. Called from the builder's worker threads, one job at a time
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
    /// executors also root the output then, as a build would have.
    fn is_built(&self, output: &EvalOutput) -> bool {
        self.is_store_path_valid(&output.out_path)
    }
    /// Drops whatever the executor keeps, under `ctx`'s
    /// [`gc_root_owner`](JobContext::gc_root_owner), for derivations not in
    /// `live_drv_paths` (gc roots). Called from an evaluation job, before the
    /// evaluation. Does nothing by default.
    fn release_unused(&self, live_drv_paths: &[String], ctx: &JobContext) {
        let _ = (live_drv_paths, ctx);
    }
}

mod flake;
mod legacy;
mod nix;

pub use flake::FlakeExecutor;
pub use legacy::NixExecutor;
pub use nix::{NixOptions, NixVersion};
