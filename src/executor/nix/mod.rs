//! The two Nix executors: one core, two front ends.
//!
//! [`NixExecutor`] (legacy Nix: `nix-instantiate`, `nix-store --realise`) and
//! [`FlakeExecutor`] (`nix eval`, `nix build`) differ only in how they name the source
//! to evaluate and the command that builds; everything else is the core's, written
//! once: input validation, the single evaluation process, the gc roots, the Nix
//! version, the store queries, Nix's structured log, the evaluation reuse key.
//!
//! * Values from the caller never become Nix code or URLs: they travel as `--argstr`
//!   strings and are looked up with `builtins.getAttr` ([`request`]).
//! * One evaluation process per eval, printing drv path, out path and machine id
//!   together.
//! * The source is the commit, never the working tree; a subdirectory that leaves
//!   the repository is refused ([`source`]).
//! * Every Nix command runs with `--log-format internal-json`; its log is parsed
//!   ([`log`]) into log lines attributed to derivations, build progress and, on
//!   failure, a clean error text.
//! * GC roots are kept per owner ([`roots`]).

mod flake;
mod key;
mod legacy;
mod log;
mod request;
mod roots;
mod source;
mod version;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;

pub use flake::FlakeExecutor;
pub use legacy::NixExecutor;
pub use version::NixVersion;

use crate::error::{CommandFailure, Exit};
use crate::job::JobContext;
use crate::process::Command;
use crate::process::{CommandOutput, Stream};
use crate::{EvalOutput, EvalRequest, JobError};
use roots::Roots;

/// Options applied to every Nix call of an executor.
///
/// Configure it by changing the fields of [`NixOptions::default()`]:
///
/// ```
/// use genbuild::NixOptions;
///
/// let mut options = NixOptions::default();
/// options.options.push(("max-jobs".into(), "4".into()));
/// options.env.push(("NIX_SSHOPTS".into(), "-F /etc/genbuild/ssh_config".into()));
/// assert_eq!(options.gc_root_dir, std::path::Path::new("/nix/var/nix/gcroots/genbuild"));
/// assert!(!options.reuse_legacy_evaluations);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NixOptions {
    /// Extra `--option NAME VALUE` pairs (`builders`, `max-jobs`, `substituters`…).
    pub options: Vec<(String, String)>,
    /// Extra environment variables of every Nix call (`NIX_CONFIG`, `NIX_PATH`…).
    pub env: Vec<(String, String)>,
    /// Directory of the `nix`, `nix-store` and `nix-instantiate` binaries; `None`: `PATH`.
    pub bin_dir: Option<PathBuf>,
    /// The directory of gc roots owned by the library; each builder keeps its roots in
    /// a subdirectory of its own, so builders may share it.
    pub gc_root_dir: PathBuf,
    /// Attribute path, relative to the evaluated system, of the expected machine id.
    pub machine_id_attr: String,
    /// Whether [`NixExecutor`] offers its evaluations for reuse (a later evaluation of
    /// the same commit with the same inputs is then not run again). Off by default,
    /// and turn it on only for a `default.nix` that depends on nothing but its
    /// commit: a legacy expression can read `<nixpkgs>` from `NIX_PATH`, the
    /// environment, files outside the repository or the clock, none of which is part
    /// of the reuse key. Flake evaluations are pure and always offered for reuse.
    pub reuse_legacy_evaluations: bool,
}

impl Default for NixOptions {
    fn default() -> Self {
        NixOptions {
            options: Vec::new(),
            env: Vec::new(),
            bin_dir: None,
            gc_root_dir: PathBuf::from("/nix/var/nix/gcroots/genbuild"),
            machine_id_attr: "config.services.comin.machineId".to_string(),
            reuse_legacy_evaluations: false,
        }
    }
}

/// Which front end a [`Core`] serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Legacy,
    Flake,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Legacy => "legacy",
            Kind::Flake => "flake",
        }
    }
}

/// Nix helpers prepended to both evaluation expressions. `lookupOr` walks an attribute
/// path given as a list of names, giving `null` where it is missing.
const NIX_HELPERS: &str = r#"
  walk = value: names: builtins.foldl' (acc: name: builtins.getAttr name acc) value names;
  lookupOr = value: names: builtins.foldl'
    (acc: name: if builtins.isAttrs acc && builtins.hasAttr name acc then builtins.getAttr name acc else null)
    value names;
  machineIdOf = value: names: let id = lookupOr value names; in if id == null then "" else id;
  paths = top: { drv = top.drvPath; out = top.outPath; };
"#;

/// A front end's evaluation command: the command so far, the arguments that end it
/// (the long expression last, so that an error message shows the rest first), and
/// the source that must live while it runs.
struct Evaluation {
    command: Command,
    last_args: Vec<String>,
    source: Option<source::TempDir>,
    /// Where the evaluated files are, for error locations relative to the repository.
    roots: Vec<log::SourceRoot>,
    /// A line for the error text, should the evaluation fail.
    hint: Option<String>,
}

/// What both executors are made of: the options, the detected version, the roots.
#[derive(Debug)]
struct Core {
    kind: Kind,
    options: NixOptions,
    version: OnceLock<NixVersion>,
    roots: Roots,
}

impl Core {
    fn new(kind: Kind, options: NixOptions) -> Core {
        let roots = Roots::new(options.gc_root_dir.clone(), &state_dir(&options));
        Core { kind, options, version: OnceLock::new(), roots }
    }

    /// `program` (from `bin_dir` when set) with the environment, the log format, every
    /// `--option` pair, then `args` (all Nix commands take options before their
    /// operation).
    fn command<I, S>(&self, program: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(self.program(program));
        cmd.args(["--log-format", "internal-json"]);
        for (name, value) in &self.options.options {
            cmd.arg("--option").arg(name).arg(value);
        }
        cmd.args(args);
        cmd.envs(self.options.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn program(&self, program: &str) -> PathBuf {
        match &self.options.bin_dir {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        }
    }

    /// Runs a command made by [`command`](Core::command): Nix's log becomes log lines
    /// (attributed to their derivation) and progress; a failure's error text is Nix's
    /// messages and the failing derivation's last lines, not Nix's raw log.
    fn run(
        &self,
        ctx: &JobContext,
        cmd: Command,
        roots: Vec<log::SourceRoot>,
    ) -> Result<CommandOutput, JobError> {
        let mut nix_log = log::NixLog::with_sources(roots);
        let mut emit = |event: log::Event<'_>| match event {
            log::Event::Line { drv_path: Some(drv), text } => ctx.log_derivation(Stream::Stderr, drv, text),
            log::Event::Line { drv_path: None, text } => ctx.log(Stream::Stderr, text),
            log::Event::Progress(progress) => ctx.progress(progress.clone()),
        };
        let result = ctx.run_with(cmd, &mut |stream, line| {
            // Stdout is the command's answer (collected), stderr its log.
            if stream == Stream::Stderr {
                nix_log.feed(line, &mut emit);
            }
        });
        nix_log.finish(&mut emit);
        result.map_err(|e| match e {
            JobError::Command(mut failure) => {
                failure.stderr_tail = nix_log.failure().trim().to_string();
                JobError::Command(failure)
            }
            other => other,
        })
    }

    /// The Nix version, asked once per executor (through `ctx`, so it can be cancelled).
    fn version(&self, ctx: &JobContext) -> Result<NixVersion, JobError> {
        if let Some(version) = self.version.get() {
            return Ok(*version);
        }
        let output = ctx.run_query(self.command("nix", ["--version"]), &mut |_, _| {})?;
        self.remember_version(&output.stdout)
    }

    fn remember_version(&self, stdout: &str) -> Result<NixVersion, JobError> {
        let version = NixVersion::parse(stdout).ok_or_else(|| {
            JobError::Failed(format!("cannot read the Nix version from `nix --version`: {stdout:?}"))
        })?;
        ::log::debug!("using {version}");
        Ok(*self.version.get_or_init(|| version))
    }

    /// One evaluation process printing `{drv, out, machineId}`; the `.drv` is rooted
    /// under the job's owner before this returns.
    ///
    /// The evaluator's temporary root on the `.drv` ends with it, so a collection
    /// between its exit and our root deletes the `.drv`. Our root is made while no
    /// collection runs ([`roots`]), so a `.drv` found valid after it is in place stays;
    /// one found gone is evaluated once more.
    fn eval(&self, req: &EvalRequest, ctx: &JobContext) -> Result<EvalOutput, JobError> {
        request::validate(req)?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let output = self.evaluate(req, ctx)?;
            // An empty path is the builder's to refuse, with its own message.
            if output.drv_path.is_empty() {
                return Ok(output);
            }
            self.roots.root_drv(ctx, &output.drv_path)?;
            if self.is_valid(&output.drv_path, ctx)? {
                return Ok(output);
            }
            let collected = format!("{} was garbage-collected right after its evaluation", output.drv_path);
            if attempts == 2 {
                return Err(JobError::Failed(format!("{collected}, twice")));
            }
            ctx.log(Stream::Stderr, &format!("{collected}; evaluating again"));
        }
    }

    fn evaluate(&self, req: &EvalRequest, ctx: &JobContext) -> Result<EvalOutput, JobError> {
        let subdir = request::subdir(&req.repository_subdir)?;
        let system_attr = request::attr_path_json("system attribute", &req.system_attr)?;
        let machine_id_path = request::attr_path_json("machine id attribute", &self.options.machine_id_attr)?;
        let Evaluation { mut command, last_args, source, roots, hint } = match self.kind {
            Kind::Legacy => legacy::evaluation(self, req, &subdir, ctx)?,
            Kind::Flake => flake::evaluation(self, req, &subdir, ctx)?,
        };
        command.args(["--argstr", "hostname", &req.hostname]);
        command.args(["--argstr", "systemAttr", &system_attr]);
        command.args(["--argstr", "machineIdPath", &machine_id_path]);
        command.args(last_args);
        let output = self.run(ctx, command, roots).map_err(|e| match (e, hint) {
            (JobError::Command(mut failure), Some(hint)) => {
                failure.stderr_tail = format!("{}\n{hint}", failure.stderr_tail);
                JobError::Command(failure)
            }
            (e, _) => e,
        });
        drop(source);
        request::parse_eval_output(&output?.stdout)
    }

    /// Builds `drv_path`, the command registering the output's root itself.
    fn build(&self, drv_path: &str, ctx: &JobContext) -> Result<(), JobError> {
        let root = self.roots.out_root(ctx.gc_root_owner(), drv_path)?;
        let cmd = match self.kind {
            Kind::Legacy => legacy::build_command(self, drv_path, &root),
            Kind::Flake => flake::build_command(self, drv_path, &root, ctx)?,
        };
        self.run(ctx, cmd, Vec::new()).map(drop)
    }

    /// Asks the store, not the file system (a path may exist without being valid).
    fn is_store_path_valid(&self, path: &str) -> bool {
        if path.is_empty() {
            return false;
        }
        // Not a job's command (the trait's method has no job): std runs it.
        let mut cmd = self.command("nix-store", ["--check-validity", path]).to_std();
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        match cmd.status() {
            Ok(status) => status.success(),
            Err(e) => {
                ::log::warn!("cannot run nix-store --check-validity {path}: {e}");
                false
            }
        }
    }

    /// [`is_store_path_valid`](Core::is_store_path_valid) as a command of the job: a
    /// store that does not answer (a remote `store = ssh://…`) is cancelled and timed
    /// out with the job. Its answer ("path … is not valid") is no log line.
    ///
    /// # Errors
    /// The job's cancel or timeout, or a check that could not run or was killed: only
    /// the check's non-zero exit means "not valid".
    fn is_valid(&self, path: &str, ctx: &JobContext) -> Result<bool, JobError> {
        if path.is_empty() {
            return Ok(false);
        }
        let cmd = self.command("nix-store", ["--check-validity", path]);
        match ctx.run_query(cmd, &mut |_, _| {}) {
            Ok(_) => Ok(true),
            Err(JobError::Command(CommandFailure { exit: Exit::Code(_), .. })) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether `output` is in the store, then with the root a build would give it.
    /// Rooted first, checked second (see [`roots`]); the root goes again when the
    /// output is not there, or the check did not answer.
    fn is_built(&self, output: &EvalOutput, ctx: &JobContext) -> bool {
        if output.out_path.is_empty() {
            return false;
        }
        let owner = ctx.gc_root_owner();
        if let Err(e) = self.roots.root_out(ctx, &output.drv_path, &output.out_path) {
            ::log::warn!("{e}; {} is not taken for built", output.out_path);
            self.roots.unroot_out(owner, &output.drv_path);
            return false;
        }
        match self.is_valid(&output.out_path, ctx) {
            Ok(true) => true,
            answer => {
                if let Err(e) = answer {
                    ::log::debug!("{e}; {} is not taken for built", output.out_path);
                }
                self.roots.unroot_out(owner, &output.drv_path);
                false
            }
        }
    }

    fn release_unused(&self, live_drv_paths: &[String], ctx: &JobContext) {
        self.roots.release_unused(ctx.gc_root_owner(), live_drv_paths)
    }

    fn eval_reuse_key(&self, req: &EvalRequest, ctx: &JobContext) -> Option<String> {
        if self.kind == Kind::Legacy && !self.options.reuse_legacy_evaluations {
            return None;
        }
        key::eval_reuse_key(self, req, ctx)
    }

    /// Whether an earlier evaluation's `.drv` is still in the store, rooted again under
    /// the job's owner. Rooted first (while no collection runs), checked second: a
    /// `.drv` found valid then stays (as in [`eval`](Core::eval)).
    fn reuse_evaluation(&self, output: &EvalOutput, ctx: &JobContext) -> Result<bool, JobError> {
        if roots::store_basename(&output.drv_path).is_err() {
            return Ok(false);
        }
        self.roots.root_drv(ctx, &output.drv_path)?;
        self.is_valid(&output.drv_path, ctx)
    }
}

/// Nix's state directory (`NIX_STATE_DIR`, `/nix/var/nix` by default): its `gcroots/`
/// is where roots outside it get registered, its `gc.lock` what a collection holds.
fn state_dir(options: &NixOptions) -> PathBuf {
    options
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "NIX_STATE_DIR")
        .map(|(_, v)| PathBuf::from(v))
        .or_else(|| std::env::var_os("NIX_STATE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/nix/var/nix"))
}

/// Implements [`Executor`](crate::Executor) for a front end by handing every call to
/// its `core`.
macro_rules! executor_over_core {
    ($executor:ty) => {
        impl $crate::Executor for $executor {
            fn eval(
                &self,
                req: &$crate::EvalRequest,
                ctx: &$crate::JobContext,
            ) -> Result<$crate::EvalOutput, $crate::JobError> {
                self.core.eval(req, ctx)
            }

            fn build(&self, drv_path: &str, ctx: &$crate::JobContext) -> Result<(), $crate::JobError> {
                self.core.build(drv_path, ctx)
            }

            fn is_store_path_valid(&self, path: &str) -> bool {
                self.core.is_store_path_valid(path)
            }

            fn is_built(&self, output: &$crate::EvalOutput, ctx: &$crate::JobContext) -> bool {
                self.core.is_built(output, ctx)
            }

            fn release_unused(&self, live_drv_paths: &[String], ctx: &$crate::JobContext) {
                self.core.release_unused(live_drv_paths, ctx)
            }

            fn eval_reuse_key(&self, req: &$crate::EvalRequest, ctx: &$crate::JobContext) -> Option<String> {
                self.core.eval_reuse_key(req, ctx)
            }

            fn reuse_evaluation(
                &self,
                output: &$crate::EvalOutput,
                ctx: &$crate::JobContext,
            ) -> Result<bool, $crate::JobError> {
                self.core.reuse_evaluation(output, ctx)
            }
        }
    };
}
use executor_over_core;

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<NixExecutor>();
    send_sync::<FlakeExecutor>();
    send_sync::<NixOptions>();
};
