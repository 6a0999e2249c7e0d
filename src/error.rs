//! The builder's refusals ([`Error`]), the store's failures ([`StoreError`]) and
//! [`JobError`], the outcome of a failed job.
//!
//! Messages of the builder's refusals are part of the contract (the ones of comin's Go
//! builder, which genbuild implements): callers compare them as strings.

use std::path::PathBuf;
use std::time::Duration;

/// What a [`Builder`](crate::Builder) call refuses, with the message callers compare.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
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
    /// `eval` waited for the running job to end and `stop` was called meanwhile:
    /// stop is stronger than every request made before it, so no generation was
    /// created.
    #[error("stop() was called while eval() waited for the running job to end, so the evaluation was not started: call eval() again to evaluate this commit")]
    Stopped,
    /// A method that waits for the builder's jobs was called from inside one of
    /// them (an [`Executor`](crate::Executor) of this builder), where it would wait
    /// for itself.
    #[error("{method}() was called from inside one of this builder's own jobs, where it would wait for that job to end: call it from another thread (send the request to one over a channel)")]
    CalledFromJob {
        /// The method called.
        method: &'static str,
    },
}

/// Why a persisted [`Store`](crate::Store) could not be opened, or a change not written.
///
/// `path` is always the file genbuild read or wrote: the state file, or the file its
/// symbolic link resolves to. A file that cannot be read as a state file is never
/// overwritten. The text of an [`Io`](StoreError::Io) failure includes the operating
/// system's message (C callers and [`Store::last_error`](crate::Store::last_error) see
/// only the text), which [`source`](std::error::Error::source) also returns.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file is not a whole genbuild state file: cut short, damaged, or something
    /// else entirely. It was left untouched.
    #[error(
        "the store file {path} is corrupt ({reason}); it was left untouched: \
         move it away to start with an empty store"
    )]
    Corrupt {
        /// The file read.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file was written by a newer genbuild, in a format version this one cannot
    /// read. It was left untouched.
    #[error(
        "the store file {path} has format version {version}, and this genbuild reads \
         versions up to {supported}; it was left untouched: run a newer genbuild, or move \
         the file away to start with an empty store"
    )]
    NewerVersion {
        /// The file read.
        path: PathBuf,
        /// The version its header declares.
        version: u32,
        /// The newest version this genbuild reads (and the one it writes).
        supported: u32,
    },
    /// The path names something other than a regular file, such as a directory or a
    /// FIFO.
    #[error(
        "the store file {path} is {found}, not a regular file: give the path of a file \
         (it is created on the first change)"
    )]
    NotAFile {
        /// The path inspected.
        path: PathBuf,
        /// What was found there, e.g. "a directory".
        found: &'static str,
    },
    /// Reading, writing or inspecting the file failed.
    #[error("cannot {action} the store file {path}: {source}")]
    Io {
        /// What genbuild was doing, e.g. "read" or "create a temporary file beside".
        action: &'static str,
        /// The file acted upon.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a job (an evaluation or a build) did not succeed.
///
/// Executors return it; the builder turns it into the generation's `eval_err` or
/// `build_err`. [`JobContext::run`](crate::JobContext::run) produces all but
/// [`Failed`](JobError::Failed) on its own (and `Failed` when a command cannot start).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobError {
    /// The job failed; the text says what went wrong.
    #[error("{0}")]
    Failed(String),
    /// A command the job ran exited non-zero or was killed by a signal.
    #[error("{0}")]
    Command(CommandFailure),
    /// The job outlived its timeout and was killed.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The job was cancelled; the reason, when known, follows the word.
    #[error("cancelled{}", .0.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Cancelled(Option<CancelReason>),
    /// A command of the job passed the job's memory limit: it was killed, with every
    /// process it started.
    #[error(
        "`{command}` was killed: it reached its memory limit of {} (peak seen: {})",
        human_bytes(*limit),
        human_bytes(*peak)
    )]
    MemoryLimit {
        /// The command line, shortened to 300 characters.
        command: String,
        /// The limit, in bytes.
        limit: u64,
        /// The most memory its processes were seen using at once, in bytes.
        peak: u64,
    },
}

/// Why the builder cancelled a job; part of the recorded error text.
///
/// A job cancelled again while it dies records the strongest reason: `Stopped` over
/// `Superseded` over `Suspended`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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

/// A command that did not succeed: what ran, how it ended, what it printed last.
///
/// Its `Display` names the command (quoted as a shell would need it), its exit status
/// or signal, and the tail of its stderr on the lines below.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommandFailure {
    /// The command line, shortened to 300 characters.
    pub command: String,
    /// How it ended.
    pub exit: Exit,
    /// The last lines of its stderr, at most 4096 bytes (cut on a character boundary).
    pub stderr_tail: String,
}

impl CommandFailure {
    /// A failure of `command`, ended as `exit`, whose stderr ended with `stderr_tail`.
    pub fn new(command: impl Into<String>, exit: Exit, stderr_tail: impl Into<String>) -> Self {
        CommandFailure { command: command.into(), exit, stderr_tail: stderr_tail.into() }
    }
}

impl std::fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` {}", self.command, self.exit)?;
        match self.stderr_tail.trim_end() {
            "" => Ok(()),
            tail => write!(f, ":\n{tail}"),
        }
    }
}

/// How a command ended, when it did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal (this number) killed it.
    Signal(i32),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exited with status {code}"),
            Exit::Signal(signal) => write!(f, "killed by signal {signal}"),
        }
    }
}

/// A size for people: "256 MiB", "1.1 GiB", "900 KiB".
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() < 0.05 || value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod size_tests {
    use super::human_bytes;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(256 << 20), "256 MiB");
        assert_eq!(human_bytes((11 << 30) / 10), "1.1 GiB");
        assert_eq!(human_bytes(900 << 10), "900 KiB");
        assert_eq!(human_bytes(12), "12 bytes");
    }
}
