//! Jobs: a piece of [`Work`] on a thread of its own, with a deadline and a cancel switch.
//!
//! A [`Job`] is the reference's `Exec` (start, wait, stop, error). The [`JobContext`]
//! it hands to the work carries the deadline, the cancellation and where the work's
//! output goes, and runs commands with the subprocess protocol of
//! [`process`](crate::process): work that only runs commands through
//! [`JobContext::run`] is timed out and cancelled without any code of its own.
//!
//! A job catches a panic of its work, once, on its own thread, and turns it into a
//! [`JobError`]: whoever waits for the job, and the job's
//! [`on_finished`](Job::on_finished) hook, always learn how it ended.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{CancelReason, JobError};
use crate::process::{
    self, AnyCommand, CancelToken, CgroupSlot, CommandOutput, Containment, Limits, ProcessOptions,
    ResourceUsage, Stream,
};
use crate::threads::{JobThread, Pool, SignalMask, Successor, POOL};

/// How far a build has come, as a job reports it with [`JobContext::progress`].
///
/// New fields may come: an executor outside this crate starts from
/// `Progress::default()` and sets the fields it knows.
///
/// ```
/// let mut progress = genbuild::Progress::default();
/// progress.done = 1;
/// progress.expected = 3;
/// progress.building = vec!["/nix/store/…-b.drv".into()];
/// # assert_eq!(progress.copies_done, 0);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Derivations built.
    pub done: u64,
    /// Derivations to build in all.
    pub expected: u64,
    /// Derivations building now.
    pub running: u64,
    /// Derivations that failed.
    pub failed: u64,
    /// The store paths of the derivations building now.
    pub building: Vec<String>,
    /// Store paths copied between stores (to or from a remote builder, or from a
    /// substituter).
    pub copies_done: u64,
    /// Store paths to copy in all, as far as known yet; at least `copies_done` plus the
    /// number of `copying`.
    pub copies_expected: u64,
    /// The store paths being copied now.
    pub copying: Vec<String>,
    /// Bytes copied by the copies started so far (0 where Nix reports no bytes, as
    /// Nix 2.8 does for a remote builder's copies).
    pub copy_bytes_done: u64,
    /// Bytes to copy in all for the copies started so far; at least `copy_bytes_done`.
    pub copy_bytes_expected: u64,
}

/// What a job's work produces besides its result: log lines and progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutput<'a> {
    /// A line a command printed, or the work logged.
    Line {
        /// Where the line came from.
        stream: Stream,
        /// The derivation whose builder printed the line, when known.
        drv_path: Option<&'a str>,
        /// The line, without its line ending.
        text: &'a str,
    },
    /// The progress of a build.
    Progress(&'a Progress),
}

/// Receives a job's [`JobOutput`], on the job's thread. It must not block: the
/// job's command waits while it runs.
pub type LogSink = Arc<dyn Fn(JobOutput<'_>) + Send + Sync>;

/// What a job sees of its surroundings: its deadline, its cancellation, where its
/// output goes, and the one way to run a command under those.
pub struct JobContext {
    timeout: Duration,
    deadline: Instant,
    grace: Duration,
    cancel: Arc<CancelToken>,
    logs: LogSink,
    options: ProcessOptions,
    gc_root_owner: Arc<str>,
    cgroups: Arc<CgroupSlot>,
    memory_limit: Option<u64>,
    /// What the job's commands used so far.
    usage: Arc<Mutex<Option<ResourceUsage>>>,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("timeout", &self.timeout)
            .field("deadline", &self.deadline)
            .field("grace", &self.grace)
            .field("cancelled", &self.is_cancelled())
            .field("options", &self.options)
            .field("gc_root_owner", &self.gc_root_owner)
            .finish_non_exhaustive()
    }
}

impl JobContext {
    /// Runs `cmd` to completion, stdin closed, each line of stdout and stderr sent to
    /// the job's log as it comes (lines end at `\n` or `\r`; longer than 64 KiB, they
    /// come in pieces).
    ///
    /// The command runs in a cgroup of its own where a writable cgroup v2 hierarchy
    /// exists, in its own process group otherwise ([`Containment`](crate::Containment)).
    /// Blocks until the command exits, the job's deadline passes or the job is
    /// cancelled; in the two last cases the command's process group gets SIGTERM, then
    /// after the grace period everything it started gets SIGKILL, and this returns
    /// [`JobError::TimedOut`] or [`JobError::Cancelled`]. When the command exits,
    /// whatever it left running is killed. A command that exits non-zero or by a signal
    /// gives [`JobError::Command`] naming the command, its status and the last lines of
    /// its stderr. In a program whose kernel reaps its children (SIGCHLD ignored, or
    /// a handler with `SA_NOCLDWAIT`), no command is started: see [`ProcessOptions`].
    ///
    /// `cmd` is genbuild's own [`Command`](crate::Command) or a
    /// `std::process::Command`. genbuild knows every setting of its own, and in a cgroup
    /// starts it itself, the way `posix_spawn` does, born in the cgroup without the cost
    /// of a `fork`. A `std::process::Command` may hold settings no getter shows (`uid`,
    /// `gid`, `groups`, `arg0`, `pre_exec` hooks): it is always started by std, which
    /// honours them all (in a cgroup with a `fork` and a hook that enters it). Moving an
    /// executor to the faster way is a change of import:
    ///
    /// ```
    /// use genbuild::{Command, JobContext, JobError}; // was: use std::process::Command;
    ///
    /// fn realise(ctx: &JobContext, drv: &str) -> Result<String, JobError> {
    ///     let mut cmd = Command::new("nix-store");
    ///     cmd.arg("--realise").arg(drv);
    ///     Ok(ctx.run(cmd)?.stdout)
    /// }
    /// ```
    pub fn run(&self, cmd: impl Into<AnyCommand>) -> Result<CommandOutput, JobError> {
        self.run_with(cmd, &mut |stream, line| self.log(stream, line))
    }

    /// Runs `cmd` as [`run`](JobContext::run) does, but hands every line it prints to
    /// `on_line` (on this thread, in order) instead of the job's log; `on_line`
    /// decides what to log. Stdout is still collected, and the raw stderr tail kept
    /// for the error of a failing command.
    pub fn run_with(
        &self,
        cmd: impl Into<AnyCommand>,
        on_line: &mut dyn FnMut(Stream, &str),
    ) -> Result<CommandOutput, JobError> {
        process::run(cmd.into(), &self.limits(&self.options), on_line)
    }

    fn limits<'a>(&'a self, options: &'a ProcessOptions) -> Limits<'a> {
        Limits {
            timeout: self.timeout,
            deadline: self.deadline,
            cancel: &self.cancel,
            grace: self.grace,
            options,
            cgroups: &self.cgroups,
            memory_limit: self.memory_limit,
            usage: &self.usage,
        }
    }

    /// What the job's commands used so far, added up (the largest peak, the CPU times
    /// summed); `None` while no command ran. See [`ResourceUsage`].
    pub fn usage(&self) -> Option<ResourceUsage> {
        *self.usage.lock()
    }

    /// The bytes of memory each command of the job may use (its processes together),
    /// if there is a limit.
    pub fn memory_limit(&self) -> Option<u64> {
        self.memory_limit
    }

    /// [`run_with`](JobContext::run_with) for a short query that starts no process of
    /// its own (`nix-store --check-validity`, `nix --version`). Under
    /// [`Containment::Auto`] its process tree contains it, which spares it a cgroup of
    /// its own and what that costs (its creation and removal, and the kernel's cgroup
    /// migration, up to milliseconds after a quiet spell); it is stopped as any command.
    pub(crate) fn run_query(
        &self,
        cmd: impl Into<AnyCommand>,
        on_line: &mut dyn FnMut(Stream, &str),
    ) -> Result<CommandOutput, JobError> {
        let options = match self.options.containment {
            Containment::Auto => {
                ProcessOptions { containment: Containment::ProcessTree, ..self.options.clone() }
            }
            _ => self.options.clone(),
        };
        process::run(cmd.into(), &self.limits(&options), on_line)
    }

    /// Sends one line to the job's log, as if a command had printed it.
    pub fn log(&self, stream: Stream, line: &str) {
        (self.logs)(JobOutput::Line { stream, drv_path: None, text: line })
    }

    /// Sends one line to the job's log, attributed to the derivation `drv_path`
    /// whose builder printed it.
    pub fn log_derivation(&self, stream: Stream, drv_path: &str, line: &str) {
        (self.logs)(JobOutput::Line { stream, drv_path: Some(drv_path), text: line })
    }

    /// Reports how far the job's build has come.
    pub fn progress(&self, progress: Progress) {
        (self.logs)(JobOutput::Progress(&progress))
    }

    /// Whether the job has been cancelled; long pure-Rust work should check it.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// `Ok` while the job may go on; otherwise the error its next command would get:
    /// [`JobError::Cancelled`] with the reason, or [`JobError::TimedOut`] once past the
    /// deadline. For work between commands that waits or loops on its own.
    ///
    /// ```
    /// use std::time::Duration;
    /// use genbuild::{Job, JobContext, JobError};
    ///
    /// let mut job = Job::new(
    ///     |ctx: &JobContext| loop {
    ///         ctx.check()?; // some work of its own, a piece at a time
    ///         std::thread::yield_now();
    ///     },
    ///     Duration::from_millis(50),
    /// );
    /// job.start();
    /// job.wait();
    /// assert_eq!(job.error(), Some(&JobError::TimedOut(Duration::from_millis(50))));
    /// ```
    pub fn check(&self) -> Result<(), JobError> {
        if self.cancel.is_cancelled() {
            return Err(self.cancel.error());
        }
        if Instant::now() >= self.deadline {
            return Err(JobError::TimedOut(self.timeout));
        }
        Ok(())
    }

    /// When the job times out.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The name under which an executor keeps the gc roots of this job: the id of the
    /// builder's [`Store`](crate::Store). Roots kept under another name belong to
    /// another builder and must never be released by this one.
    pub fn gc_root_owner(&self) -> &str {
        &self.gc_root_owner
    }
}

/// What a [`Job`] runs on its thread.
pub trait Work: Send + 'static {
    /// Does the work; commands go through `ctx` so that they can be stopped.
    fn run(&mut self, ctx: &JobContext) -> Result<(), JobError>;
}

impl<F> Work for F
where
    F: FnMut(&JobContext) -> Result<(), JobError> + Send + 'static,
{
    fn run(&mut self, ctx: &JobContext) -> Result<(), JobError> {
        self(ctx)
    }
}

/// The end of a job, on its thread: sees its result and may name the job to run next
/// there.
type OnFinished = Box<dyn FnOnce(&Result<(), JobError>) -> Option<Successor> + Send>;

/// Runs one piece of [`Work`] on a thread of its own, with a timeout and cancellation.
///
/// ```
/// use std::time::Duration;
/// use genbuild::{Command, Job, JobContext, JobError};
///
/// let mut job = Job::new(
///     |ctx: &JobContext| {
///         let mut sleep = Command::new("sleep");
///         sleep.arg("30");
///         ctx.run(sleep).map(drop)
///     },
///     Duration::from_millis(100),
/// );
/// job.start();
/// job.wait();
/// assert_eq!(job.error(), Some(&JobError::TimedOut(Duration::from_millis(100))));
/// ```
pub struct Job {
    work: Option<Box<dyn Work>>,
    timeout: Duration,
    options: ProcessOptions,
    grace: Option<Duration>,
    logs: LogSink,
    gc_root_owner: Arc<str>,
    cgroups: Arc<CgroupSlot>,
    memory_limit: Option<u64>,
    on_finished: Option<OnFinished>,
    cancel: Arc<CancelToken>,
    thread: Option<JobThread<Result<(), JobError>>>,
    /// Started as the successor of the job on this thread.
    successor_of: Option<std::thread::ThreadId>,
    /// The threads it may run on.
    pool: &'static Pool,
    result: Option<Result<(), JobError>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("timeout", &self.timeout)
            .field("options", &self.options)
            .field("started", &(self.work.is_none()))
            .field("finished", &self.is_finished())
            .field("result", &self.result)
            .finish_non_exhaustive()
    }
}

impl Job {
    /// A job that will run `work` with `timeout` once started. Its log lines go to
    /// the `log` crate at debug level.
    pub fn new(work: impl Work, timeout: Duration) -> Job {
        Job {
            work: Some(Box::new(work)),
            timeout,
            options: ProcessOptions::default(),
            grace: None,
            logs: Arc::new(|output| {
                if let JobOutput::Line { stream, text, .. } = output {
                    log::debug!("{stream:?}: {text}")
                }
            }),
            gc_root_owner: Arc::from("standalone"),
            cgroups: Arc::default(),
            memory_limit: None,
            on_finished: None,
            cancel: CancelToken::new(),
            thread: None,
            successor_of: None,
            pool: &POOL,
            result: None,
        }
    }

    /// Replaces the subprocess options (grace period, wait strategy, containment).
    pub fn with_options(mut self, options: ProcessOptions) -> Job {
        self.options = options;
        self
    }

    /// Sets the time between SIGTERM and SIGKILL for this job's commands; by default
    /// the options' [`kill_grace`](ProcessOptions::kill_grace).
    pub fn with_kill_grace(mut self, grace: Duration) -> Job {
        self.grace = Some(grace);
        self
    }

    /// Replaces where the job's output goes.
    pub fn with_log_sink(mut self, logs: LogSink) -> Job {
        self.logs = logs;
        self
    }

    /// Sets the name its executor keeps gc roots under ([`JobContext::gc_root_owner`]);
    /// `"standalone"` by default.
    pub fn with_gc_root_owner(mut self, owner: &str) -> Job {
        self.gc_root_owner = Arc::from(owner);
        self
    }

    /// Bounds the memory of each of the job's commands: a command whose processes use
    /// more than `bytes` together is killed with all of them, and the job's command
    /// fails with [`JobError::MemoryLimit`]. By the kernel (`memory.max`) where the
    /// command's cgroup has the memory controller, otherwise by sampling their resident
    /// memory every 50 ms (which may overshoot by what they allocate meanwhile). `None`
    /// (the default): no limit.
    pub fn with_memory_limit(mut self, bytes: Option<u64>) -> Job {
        self.memory_limit = bytes;
        self
    }

    /// Runs the job on a thread of `pool` rather than of the process's.
    pub(crate) fn with_pool(mut self, pool: &'static Pool) -> Job {
        self.pool = pool;
        self
    }

    /// Shares `slot` (an empty cgroup kept between commands) with other jobs, as a
    /// builder's jobs do.
    pub(crate) fn with_cgroup_slot(mut self, slot: Arc<CgroupSlot>) -> Job {
        self.cgroups = slot;
        self
    }

    /// Calls `f` on the job's thread with the job's result once its work returned or
    /// panicked, before [`wait`](Job::wait) returns. Not called for a job whose
    /// thread could not be started (its error is then known when `start` returns).
    pub fn on_finished(mut self, f: impl FnOnce(&Result<(), JobError>) + Send + 'static) -> Job {
        self.on_finished = Some(Box::new(move |result| {
            f(result);
            None
        }));
        self
    }

    /// As [`on_finished`](Job::on_finished), and the job `f` returns runs next on this
    /// job's thread (see [`Successor`]).
    pub(crate) fn on_finished_then(
        mut self,
        f: impl FnOnce(&Result<(), JobError>) -> Option<Successor> + Send + 'static,
    ) -> Job {
        self.on_finished = Some(Box::new(f));
        self
    }

    /// Starts the job on a thread of its own (one a job that just ended left idle, or a
    /// new one), with the signal mask of the calling thread; the timeout runs from here.
    /// A second call does nothing.
    pub fn start(&mut self) {
        let Some(body) = self.body() else { return };
        match JobThread::spawn_in(self.pool, body) {
            Ok(thread) => self.thread = Some(thread),
            Err(e) => self.result = Some(Err(JobError::Failed(format!("cannot start a job thread: {e}")))),
        }
    }

    /// Starts the job as the successor of the job running on this thread, with signal
    /// mask `mask`: it runs there once that job returns the [`Successor`] given here
    /// (from its `on_finished_then` hook). `None` if the job was started already.
    pub(crate) fn start_as_successor(&mut self, mask: SignalMask) -> Option<Successor> {
        let (thread, successor) = JobThread::successor(mask, self.body()?);
        self.thread = Some(thread);
        self.successor_of = Some(std::thread::current().id());
        Some(successor)
    }

    /// Whether this job runs next on the calling thread, once the job running there
    /// returned: waiting for it here would wait for ever.
    pub(crate) fn runs_next_here(&self) -> bool {
        self.successor_of == Some(std::thread::current().id()) && !self.is_finished()
    }

    /// What the job's thread runs, once: the work, then the `on_finished` hook. The
    /// timeout runs from here.
    #[allow(clippy::type_complexity)]
    fn body(
        &mut self,
    ) -> Option<impl FnOnce() -> (Result<(), JobError>, Option<Successor>) + Send + 'static> {
        let mut work = self.work.take()?;
        let now = Instant::now();
        let ctx = JobContext {
            timeout: self.timeout,
            deadline: now.checked_add(self.timeout).unwrap_or(now + Duration::from_secs(100 * 365 * 86400)),
            grace: self.grace.unwrap_or(self.options.kill_grace),
            cancel: self.cancel.clone(),
            logs: self.logs.clone(),
            options: self.options.clone(),
            gc_root_owner: self.gc_root_owner.clone(),
            cgroups: self.cgroups.clone(),
            memory_limit: self.memory_limit,
            usage: Arc::default(),
        };
        let on_finished = self.on_finished.take();
        Some(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work.run(&ctx)))
                .unwrap_or_else(|panic| {
                    Err(JobError::Failed(format!("the job panicked: {}", panic_message(&*panic))))
                });
            drop(work);
            let next = on_finished.and_then(|f| f(&result));
            (result, next)
        })
    }

    /// Blocks until the job's thread has ended (returns at once if it was never started).
    pub fn wait(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.result = Some(thread.join().unwrap_or_else(|panic| {
                // Only the on_finished hook can get here: the work's panic is caught.
                Err(JobError::Failed(format!("the job's end panicked: {}", panic_message(&*panic))))
            }));
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

    /// The job's error once [`wait`](Job::wait) returned; `None` while it runs or if
    /// it succeeded.
    pub fn error(&self) -> Option<&JobError> {
        self.result.as_ref().and_then(|r| r.as_ref().err())
    }

    /// Whether the job's thread has ended (without joining it).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for Job {
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
