//! Jobs: a [`Runnable`] on its own thread with a deadline and a cancel switch.
//!
//! [`Exec`] is the reference's `Exec` (start, wait, stop, error). The
//! [`JobContext`] it hands to the runnable carries the deadline, the cancellation and
//! the log sink, and runs commands with the subprocess protocol of
//! [`process`](crate::process): a job that only runs commands through
//! [`JobContext::run`] is timed out and cancelled without any code of its own.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::error::{CancelReason, JobError};
use crate::process;

/// The output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Receives every line a job's commands print, from the threads draining them.
/// It must not block: it runs while the child is writing.
pub type LogSink = Arc<dyn Fn(Stream, &str) + Send + Sync>;

/// How a command's exit is awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WaitStrategy {
    /// Linux: `poll` on a pidfd and the job's cancel eventfd; no extra thread.
    /// Falls back to [`WaitStrategy::Portable`] where pidfds are missing.
    #[default]
    Pidfd,
    /// Any Unix (macOS for nix-darwin hosts): a waiter thread blocks in
    /// `waitid(WNOWAIT)`, which observes the exit without reaping, so the owner
    /// can still signal the process group safely. Installs no signal handler.
    Portable,
}

/// Knobs of the subprocess protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessOptions {
    /// Between SIGTERM to the group and SIGKILL to the group and every descendant.
    pub kill_grace: Duration,
    pub wait: WaitStrategy,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        ProcessOptions { kill_grace: Duration::from_secs(5), wait: WaitStrategy::Pidfd }
    }
}

/// What a successful command printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// All of stdout (up to 64 MiB; lines past that only reach the log sink).
    pub stdout: String,
    /// The last lines of stderr, at most [`STDERR_TAIL_BYTES`](crate::STDERR_TAIL_BYTES).
    pub stderr_tail: String,
}

/// The cancel switch shared by a job's owner and whoever cancels it. Cancelling wakes
/// a waiting [`JobContext::run`] at once: through an eventfd on Linux, through a
/// disconnected channel on the portable path.
pub(crate) struct CancelToken {
    flag: AtomicBool,
    reason: Mutex<Option<CancelReason>>,
    eventfd: Option<rustix::fd::OwnedFd>,
    wake: Mutex<Option<Sender<()>>>,
    woken: Receiver<()>,
}

impl CancelToken {
    pub(crate) fn new() -> Arc<Self> {
        let (wake, woken) = crossbeam_channel::bounded(0);
        let eventfd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .ok();
        Arc::new(CancelToken {
            flag: AtomicBool::new(false),
            reason: Mutex::new(None),
            eventfd,
            wake: Mutex::new(Some(wake)),
            woken,
        })
    }

    /// The first reason given is kept; later calls only wake again.
    pub(crate) fn cancel(&self, reason: Option<CancelReason>) {
        {
            let mut current = self.reason.lock();
            if current.is_none() {
                *current = reason;
            }
        }
        self.flag.store(true, Ordering::SeqCst);
        if let Some(fd) = &self.eventfd {
            // Never read back: the fd stays readable for every later poll.
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
        self.wake.lock().take();
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    pub(crate) fn error(&self) -> JobError {
        JobError::Cancelled(self.reason.lock().clone())
    }

    pub(crate) fn eventfd(&self) -> Option<&rustix::fd::OwnedFd> {
        self.eventfd.as_ref()
    }

    /// Disconnects (returns at once) when the token is cancelled.
    pub(crate) fn woken(&self) -> &Receiver<()> {
        &self.woken
    }
}

/// What a job sees of its surroundings: its deadline, its cancellation, where its
/// log lines go, and the one way to run a command under those.
pub struct JobContext {
    pub(crate) timeout: Duration,
    pub(crate) deadline: Instant,
    pub(crate) cancel: Arc<CancelToken>,
    pub(crate) logs: LogSink,
    pub(crate) options: ProcessOptions,
    pub(crate) gc_root_owner: Arc<str>,
}

impl JobContext {
    pub(crate) fn new(
        timeout: Duration,
        cancel: Arc<CancelToken>,
        logs: LogSink,
        options: ProcessOptions,
        gc_root_owner: Arc<str>,
    ) -> Self {
        let now = Instant::now();
        let deadline = now.checked_add(timeout).unwrap_or(now + Duration::from_secs(100 * 365 * 86400));
        JobContext { timeout, deadline, cancel, logs, options, gc_root_owner }
    }

    /// The name under which an executor keeps the gc roots of this job: the id of the
    /// builder's [`Store`](crate::Store). Roots kept under another name belong to
    /// another builder and must never be released by this one.
    pub fn gc_root_owner(&self) -> &str {
        &self.gc_root_owner
    }

    /// Runs `cmd` to completion in its own process group, stdin closed, each line of
    /// stdout and stderr sent to the log sink as it comes.
    ///
    /// Blocks until the command exits, the job's deadline passes or the job is
    /// cancelled; in the two last cases the command's process group gets SIGTERM, then
    /// after the grace period SIGKILL, as does every descendant (also those that left
    /// the group with `setsid`), and this returns [`JobError::TimedOut`] or
    /// [`JobError::Cancelled`]. A command that exits non-zero or by a signal gives
    /// [`JobError::Failed`] naming the command, its status and the last lines of its
    /// stderr.
    pub fn run(&self, cmd: Command) -> Result<CommandOutput, JobError> {
        process::run(cmd, self)
    }

    /// Whether the job has been cancelled; long pure-Rust work should check it.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// When the job times out.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Sends one line to the job's log sink, as if a command had printed it.
    pub fn log(&self, stream: Stream, line: &str) {
        (self.logs)(stream, line)
    }
}

/// A job body: what [`Exec`] runs on its thread.
pub trait Runnable: Send + 'static {
    fn run(&mut self, ctx: &JobContext) -> Result<(), JobError>;
}

impl<F> Runnable for F
where
    F: FnMut(&JobContext) -> Result<(), JobError> + Send + 'static,
{
    fn run(&mut self, ctx: &JobContext) -> Result<(), JobError> {
        self(ctx)
    }
}

/// Runs one [`Runnable`] on a thread of its own, with a timeout and cancellation.
///
/// ```
/// use std::process::Command;
/// use std::time::Duration;
/// use genbuild::{Exec, JobContext, JobError};
///
/// let mut exec = Exec::new(
///     |ctx: &JobContext| {
///         let mut sleep = Command::new("sleep");
///         sleep.arg("30");
///         ctx.run(sleep).map(drop)
///     },
///     Duration::from_millis(100),
/// );
/// exec.start();
/// exec.wait();
/// assert_eq!(exec.error(), Some(&JobError::TimedOut(Duration::from_millis(100))));
/// ```
pub struct Exec {
    runnable: Option<Box<dyn Runnable>>,
    timeout: Duration,
    options: ProcessOptions,
    logs: LogSink,
    gc_root_owner: Arc<str>,
    cancel: Arc<CancelToken>,
    thread: Option<JoinHandle<Result<(), JobError>>>,
    result: Option<Result<(), JobError>>,
}

impl Exec {
    /// A job that will run `runnable` with `timeout` once started. Its log lines go
    /// to the `log` crate at debug level.
    pub fn new(runnable: impl Runnable, timeout: Duration) -> Exec {
        Exec {
            runnable: Some(Box::new(runnable)),
            timeout,
            options: ProcessOptions::default(),
            logs: Arc::new(|stream, line| log::debug!("{stream:?}: {line}")),
            gc_root_owner: Arc::from("standalone"),
            cancel: CancelToken::new(),
            thread: None,
            result: None,
        }
    }

    /// Replaces the subprocess options (grace period, wait strategy).
    pub fn with_options(mut self, options: ProcessOptions) -> Exec {
        self.options = options;
        self
    }

    /// Replaces the log sink.
    pub fn with_log_sink(mut self, logs: LogSink) -> Exec {
        self.logs = logs;
        self
    }

    /// Sets the name its executor keeps gc roots under ([`JobContext::gc_root_owner`]);
    /// `"standalone"` by default.
    pub fn with_gc_root_owner(mut self, owner: &str) -> Exec {
        self.gc_root_owner = Arc::from(owner);
        self
    }

    /// Starts the job on a new thread; the timeout runs from here. A second call does
    /// nothing.
    pub fn start(&mut self) {
        let Some(mut runnable) = self.runnable.take() else { return };
        let ctx = JobContext::new(
            self.timeout,
            self.cancel.clone(),
            self.logs.clone(),
            self.options,
            self.gc_root_owner.clone(),
        );
        let spawned =
            std::thread::Builder::new().name("genbuild-job".into()).spawn(move || runnable.run(&ctx));
        match spawned {
            Ok(thread) => self.thread = Some(thread),
            Err(e) => self.result = Some(Err(JobError::Failed(format!("cannot start a job thread: {e}")))),
        }
    }

    /// Blocks until the job's thread has ended (returns at once if it was never started).
    pub fn wait(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.result = Some(match thread.join() {
                Ok(result) => result,
                Err(panic) => Err(JobError::Failed(format!("the job panicked: {}", panic_message(&*panic)))),
            });
        }
    }

    /// Cancels the job and waits for it to end.
    pub fn stop(&mut self) {
        self.cancel(CancelReason::Stopped);
        self.wait();
    }

    /// Cancels the job without waiting.
    pub fn cancel(&self, reason: CancelReason) {
        self.cancel.cancel(Some(reason));
    }

    /// The job's error once [`wait`](Exec::wait) returned; `None` while it runs or if
    /// it succeeded.
    pub fn error(&self) -> Option<&JobError> {
        self.result.as_ref().and_then(|r| r.as_ref().err())
    }

    /// Whether the job's thread has ended (without joining it).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for Exec {
    /// A job is never left running behind its handle.
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}

/// The text of a panic payload, for error messages.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string payload".to_string())
}
