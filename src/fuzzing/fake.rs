//! The fake executor of `check_builder`, and the caller that gives up on a call that
//! does not return.
//!
//! A fake job must end when the checker says so, and also when the builder cancels
//! it. [`JobContext`] offers no handle to block on for the cancellation (only a flag),
//! and polling that flag would make timing part of the test. So each fake job
//! registers with the checker (naming its kind and the commit it works on) and blocks
//! on a channel for its directive:
//! * `Finish(ending)`: return that outcome (the checker then waits for the job's
//!   notification, so the next step starts from a settled state);
//! * `AwaitCancel`: run a real `sleep 1000` through [`JobContext::run`], which the
//!   builder's cancellation ends through the real subprocess protocol. The checker
//!   sends it just before a lone call the reference says cancels the job (eval,
//!   suspend of a build, stop), so a cancelled job's error text is produced by the
//!   real code.
//!
//! Evaluations have the reuse key of [`fake_reuse_key`]; whether an earlier
//! evaluation's `.drv` is still valid is what the checker last said for its commit
//! ([`DrvValidity`]). A reused evaluation never reaches [`FakeExecutor::eval`], so it
//! does not register.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use super::reference::{fake_failure, fake_output, fake_reuse_key, Kind, FAKE_TIMEOUT};
use super::JobEnd;
use crate::{EvalOutput, EvalRequest, Executor, JobContext, JobError};

/// How long a call may take before the checker calls it a deadlock.
pub(super) const CALL_BOUND: Duration = Duration::from_secs(10);

pub(super) enum Directive {
    Finish(JobEnd),
    AwaitCancel,
}

/// A job of [`FakeExecutor`], as the checker sees it.
pub(super) struct FakeJob {
    pub(super) kind: Kind,
    /// The commit it evaluates, or whose output it builds.
    pub(super) key: String,
    pub(super) directive: Sender<Directive>,
}

/// Whether the `.drv` of each commit's evaluation is still valid, as the checker last
/// said (valid unless said otherwise).
#[derive(Debug, Clone, Default)]
pub(super) struct DrvValidity(Arc<Mutex<HashMap<String, bool>>>);

impl DrvValidity {
    pub(super) fn set(&self, commit: &str, valid: bool) {
        self.0.lock().insert(commit.to_string(), valid);
    }

    pub(super) fn of_commit(&self, commit: &str) -> bool {
        self.0.lock().get(commit).copied().unwrap_or(true)
    }

    fn of_drv(&self, drv_path: &str) -> bool {
        self.of_commit(drv_path.trim_start_matches("/nix/store/").trim_end_matches("-system.drv"))
    }
}

/// Jobs block until the checker directs them; see the module documentation.
pub(super) struct FakeExecutor {
    pub(super) jobs: Sender<FakeJob>,
    pub(super) drvs: DrvValidity,
}

impl FakeExecutor {
    fn wait(&self, kind: Kind, key: &str, ctx: &JobContext) -> Result<JobEnd, JobError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.jobs
            .send(FakeJob { kind, key: key.to_string(), directive: tx })
            .map_err(|_| JobError::Failed("the checker is gone".into()))?;
        match rx.recv() {
            Ok(Directive::Finish(JobEnd::Failed)) => Err(JobError::Failed(fake_failure(key))),
            Ok(Directive::Finish(JobEnd::TimedOut)) => Err(JobError::TimedOut(FAKE_TIMEOUT)),
            Ok(Directive::Finish(JobEnd::Cancelled)) => Err(JobError::Cancelled(None)),
            Ok(Directive::Finish(ending)) => Ok(ending),
            Ok(Directive::AwaitCancel) | Err(_) => {
                let mut sleep = std::process::Command::new("sleep");
                sleep.arg("1000");
                ctx.run(sleep)?;
                Err(JobError::Failed("`sleep 1000` ended on its own".into()))
            }
        }
    }
}

impl Executor for FakeExecutor {
    fn eval(&self, req: &EvalRequest, ctx: &JobContext) -> Result<EvalOutput, JobError> {
        match self.wait(Kind::Eval, &req.commit_id, ctx)? {
            JobEnd::Ok { already_built } => Ok(fake_output(&req.commit_id, already_built)),
            ending => unreachable!("{ending:?} is an error"),
        }
    }

    fn build(&self, drv_path: &str, ctx: &JobContext) -> Result<(), JobError> {
        let key = drv_path.trim_start_matches("/nix/store/").trim_end_matches("-system.drv");
        self.wait(Kind::Build, key, ctx).map(drop)
    }

    fn is_store_path_valid(&self, path: &str) -> bool {
        path.ends_with("-valid")
    }

    fn eval_reuse_key(&self, req: &EvalRequest, _: &JobContext) -> Option<String> {
        fake_reuse_key(&req.commit_id)
    }

    fn reuse_evaluation(&self, output: &EvalOutput, _: &JobContext) -> Result<bool, JobError> {
        Ok(self.drvs.of_drv(&output.drv_path))
    }
}

/// Runs the builder's calls on a thread of its own so that the checker can give up
/// on one that does not return.
pub(super) struct Caller {
    calls: Option<Sender<Box<dyn FnOnce() + Send>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Caller {
    pub(super) fn new() -> Caller {
        let (tx, rx) = crossbeam_channel::unbounded::<Box<dyn FnOnce() + Send>>();
        let thread = std::thread::Builder::new()
            .name("fuzz-caller".into())
            .spawn(move || rx.iter().for_each(|call| call()))
            .expect("cannot start the caller thread");
        Caller { calls: Some(tx), thread: Some(thread) }
    }

    pub(super) fn call<R: Send + 'static>(
        &self,
        what: impl fmt::Display,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let call = Box::new(move || {
            let _ = tx.send(f());
        });
        self.calls.as_ref().expect("caller running").send(call).expect("the caller thread is alive");
        rx.recv_timeout(CALL_BOUND).unwrap_or_else(|_| panic!("deadlock: {what} did not return within 10 s"))
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        self.calls.take();
        // A caller stuck in a deadlocked call is left behind rather than hanging the
        // process; the panic already reported it.
        if let Some(thread) = self.thread.take() {
            if !std::thread::panicking() {
                let _ = thread.join();
            }
        }
    }
}

/// Threads the library started (all are named `genbuild-…`).
pub(super) fn genbuild_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("genbuild"))
        .count()
}
