//! Knowing, on a thread, that it runs one of a given builder's jobs.
//!
//! A job's executor may hold a [`Builder`](crate::Builder) and call it. A call that
//! waits for the running job would then wait for itself: the driver asks here first,
//! and refuses (or does not wait). The mark is a thread-local set while the job's work
//! and its completion run on the job's thread, keyed by the builder's identity, so a
//! job of one builder calling another builder is an ordinary caller.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::machine::JobId;

/// Identifies one builder for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BuilderId(u64);

impl BuilderId {
    pub(super) fn new() -> BuilderId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        BuilderId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

thread_local! {
    static INSIDE: Cell<Option<(BuilderId, JobId)>> = const { Cell::new(None) };
}

/// Marks this thread as running job `job` of `builder` until dropped.
pub(super) struct InsideJob {
    previous: Option<(BuilderId, JobId)>,
}

pub(super) fn enter(builder: BuilderId, job: JobId) -> InsideJob {
    InsideJob { previous: INSIDE.replace(Some((builder, job))) }
}

impl Drop for InsideJob {
    fn drop(&mut self) {
        INSIDE.set(self.previous);
    }
}

/// The job of `builder` this thread runs, if it runs one.
pub(super) fn own_job(builder: BuilderId) -> Option<JobId> {
    INSIDE.get().filter(|(b, _)| *b == builder).map(|(_, job)| job)
}
