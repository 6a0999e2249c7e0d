//! The one error type of genbuild's API, and [`JobError`], the outcome of a failed job.
//!
//! Messages of the builder's refusals are part of the contract (DESIGN.md, Semantics):
//! callers and the Go reference compare them as strings.

use std::path::PathBuf;
use std::time::Duration;

/// Everything a genbuild call can refuse or fail with.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// `submit_build` of a generation that is not the current one.
    #[error("another generation is evaluating or evaluated")]
    AnotherGeneration,
    /// `submit_build` of a uuid the store does not know (it may have been collected).
    #[error("no generation with uuid {0} has been found")]
    UnknownGeneration(String),
    /// `submit_build` before the evaluation succeeded.
    #[error("the generation is not evaluated")]
    NotEvaluated,
    /// `submit_build` while a build runs; wait for `build_done`.
    #[error("the builder is already building")]
    AlreadyBuilding,
    /// `submit_build` of a generation that is built.
    #[error("the generation is already built")]
    AlreadyBuilt,
    /// `suspend` twice.
    #[error("the builder is already suspended")]
    AlreadySuspended,
    /// `resume` without `suspend`.
    #[error("the builder is not suspended")]
    NotSuspended,
    /// The store file exists but does not decode; it was left untouched.
    #[error("the store file {path} does not decode ({reason}); it was left untouched: move it away to start with an empty store")]
    CorruptStore { path: PathBuf, reason: String },
    /// Reading or writing the store file failed.
    #[error("cannot {action} the store file {path}: {reason}")]
    StoreIo { action: &'static str, path: PathBuf, reason: String },
}

/// Why a job (an evaluation or a build) did not succeed.
///
/// Executors return it; the builder turns it into the generation's `eval_err` or
/// `build_err`. [`JobContext::run`](crate::JobContext::run) produces the first three
/// on its own.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum JobError {
    /// The job failed; the text says what ran and what it printed last.
    #[error("{0}")]
    Failed(String),
    /// The job outlived its timeout and was killed.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The job was cancelled; the reason, when known, follows the word.
    #[error("cancelled{}", .0.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Cancelled(Option<CancelReason>),
}

/// Why the builder cancelled a job; part of the recorded error text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelReason {
    /// A newer `eval()` replaced the generation.
    Superseded(String),
    /// `stop()` was called (or the last handle dropped).
    Stopped,
    /// `suspend()` cancelled a running build.
    Suspended,
}

impl std::fmt::Display for CancelReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CancelReason::Superseded(uuid) => write!(f, "superseded by generation {uuid}"),
            CancelReason::Stopped => f.write_str("stopped"),
            CancelReason::Suspended => f.write_str("suspended"),
        }
    }
}
