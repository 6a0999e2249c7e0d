//! What a builder's job does on its thread, and how it reports back.
//!
//! A job runs one [`Task`] as its [`Work`](crate::Work): it asks the executor, and for
//! an evaluation also whether the output is already built. Its outcome reaches the
//! driver through the job's `on_finished` hook, which runs on the job's thread even
//! when the executor panicked (the job catches the panic once): a started job always
//! ends with its notification. Both run marked as this builder's job (`reentry`), so
//! that a call from the executor back into the builder is recognised.
//!
//! An evaluation first looks for a reusable one (same reuse key, in the store) whose
//! `.drv` the executor finds still valid: that result then stands in for the
//! evaluation, and no evaluator runs. This is I/O, so it happens here, on the job's
//! thread, never under the builder's lock; a cancellation that came meanwhile wins, as
//! it would over an evaluator's exit.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::driver::Shared;
use super::reentry;
use crate::error::JobError;
use crate::executor::{EvalRequest, Executor};
use crate::job::{Job, JobContext, LogSink};
use crate::machine::{Finished, JobId, Outcome};
use crate::process::{ResourceUsage, Stream};
use crate::status::Provenance;
use crate::store::Store;

/// What a job does.
pub(super) enum Task {
    /// Evaluate a commit.
    Eval(EvalRequest),
    /// Build a derivation.
    Build { drv_path: String },
}

impl Task {
    fn run(&self, executor: &dyn Executor, store: &Store, ctx: &JobContext) -> Result<Outcome, JobError> {
        match self {
            Task::Eval(req) => {
                executor.release_unused(&store.live_drv_paths(), ctx);
                let key = executor.eval_reuse_key(req, ctx);
                if let Some(key) = &key {
                    if let Some(reused) = reuse(executor, store, key, ctx)? {
                        return Ok(reused);
                    }
                }
                let output = executor.eval(req, ctx)?;
                if output.drv_path.is_empty() || output.out_path.is_empty() {
                    return Err(JobError::Failed(format!(
                        "the evaluation returned an empty derivation or output path ({output:?})"
                    )));
                }
                let already_built = executor.is_built(&output, ctx);
                Ok(Outcome::Evaluated { output, already_built, provenance: Provenance::Evaluated { key } })
            }
            Task::Build { drv_path } => executor.build(drv_path, ctx).map(|()| Outcome::Built),
        }
    }
}

/// The outcome of reusing the evaluation the store keeps under `key`, if there is one
/// and the executor finds its `.drv` still valid (and roots it again for this job's
/// owner). One whose `.drv` is gone is dropped from the store: the evaluation runs. A
/// check that did not answer (cancelled, timed out, failed) ends the job with its
/// error and keeps the entry.
fn reuse(
    executor: &dyn Executor,
    store: &Store,
    key: &str,
    ctx: &JobContext,
) -> Result<Option<Outcome>, JobError> {
    let Some((from, output)) = store.reusable_evaluation(key) else { return Ok(None) };
    if ctx.is_cancelled() {
        return Err(JobError::Cancelled(None));
    }
    if !executor.reuse_evaluation(&output, ctx)? {
        store.forget_reusable_evaluation(key, &from);
        ctx.log(
            Stream::Stderr,
            &format!(
                "the evaluation of generation {from} is not reused: {} is no longer valid; evaluating",
                output.drv_path
            ),
        );
        return Ok(None);
    }
    if ctx.is_cancelled() {
        return Err(JobError::Cancelled(None));
    }
    ctx.log(
        Stream::Stderr,
        &format!("reusing the evaluation of generation {from} (same inputs): {}", output.drv_path),
    );
    let already_built = executor.is_built(&output, ctx);
    Ok(Some(Outcome::Evaluated {
        output,
        already_built,
        provenance: Provenance::Reused { key: key.to_string(), from },
    }))
}

/// The job `id` of `shared`'s builder running `task`, not started yet.
pub(super) fn job(
    shared: &Arc<Shared>,
    id: JobId,
    task: Task,
    timeout: Duration,
    kill_grace: Duration,
    logs: LogSink,
) -> Job {
    // The work leaves its outcome and what its commands used here, for the job's end.
    let ended: Arc<Mutex<(Option<Outcome>, Option<ResourceUsage>)>> = Arc::default();
    let work = {
        // Only `on_finished` holds the builder strongly (see the comment there), so
        // that its last reference cannot go with the work, unmarked.
        let (builder, ended) = (Arc::downgrade(shared), ended.clone());
        let builder_id = shared.id;
        move |ctx: &JobContext| {
            let _inside = reentry::enter(builder_id, id);
            let shared = builder.upgrade().expect("on_finished holds the builder until the job ends");
            let outcome = task.run(&*shared.executor, &shared.store, ctx);
            // A reused evaluation ran no evaluator: it reports no usage of its own.
            let reused =
                matches!(&outcome, Ok(Outcome::Evaluated { provenance: Provenance::Reused { .. }, .. }));
            *ended.lock() = (None, ctx.usage().filter(|_| !reused));
            ended.lock().0 = Some(outcome?);
            Ok(())
        }
    };
    let on_finished = {
        let shared = shared.clone();
        move |result: &Result<(), JobError>| {
            let _inside = reentry::enter(shared.id, id);
            let (outcome, usage) = std::mem::take(&mut *ended.lock());
            let outcome = match result {
                Ok(()) => outcome.expect("a job that succeeded left its outcome"),
                Err(e) => Outcome::Failed(e.clone()),
            };
            let successor = shared.finish(id, Finished { outcome, usage });
            // If the last handle was dropped by this job, this is the builder's last
            // reference: it must go while the thread is still marked as the job's, so
            // that the builder does not join this very thread (see `Shared`'s Drop).
            drop(shared);
            successor
        }
    };
    Job::new(work, timeout)
        .with_options(shared.config.process.clone())
        .with_kill_grace(kill_grace)
        .with_log_sink(logs)
        .with_gc_root_owner(shared.store.id())
        .with_cgroup_slot(shared.cgroups.clone())
        .with_pool(shared.pool)
        .on_finished_then(on_finished)
}
