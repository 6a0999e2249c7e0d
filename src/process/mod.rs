//! The subprocess protocol: how a job runs a command so that it can always be stopped,
//! and so that nothing it started outlives it.
//!
//! One thread per command, the job's own: it spawns the command and then blocks in one
//! `poll` on the command's two pipes, its exit (a pidfd) and the job's cancel eventfd,
//! handing each line to the caller as it comes. No reader threads, no waiter thread
//! (the portable wait path, for systems without pidfds, keeps one: see [`wait`]).
//!
//! * **Containment** ([`cgroup`], [`tree`]). Where a writable cgroup v2 hierarchy
//!   exists, every command runs in a child cgroup of its own, born in it or entering it
//!   before `exec` ([`spawn`]). SIGKILL to the command's process group is usually all
//!   it takes; a process that left the group (`setsid`, a double fork, re-parented to
//!   init) dies by killing the cgroup (`cgroup.kill`), repeated every 100 ms until the
//!   cgroup is empty: one kill misses a process that comes in after it (a fork racing
//!   with `cgroup.kill`). An emptied cgroup is kept for the next command
//!   ([`CgroupSlot`]).
//!   Elsewhere the command's process group and the descendants found by walking
//!   `/proc` are what can be reached, listed *before* the first signal (a builder whose
//!   parent died is re-parented and lost to a later walk), and again from every member
//!   left in the group before the last.
//! * **"Finished" is the command's exit**, never its pipes' EOF: whatever the command
//!   left behind is killed as soon as it exits, then the pipes close. A holder of the
//!   pipes that escaped every kill (not possible inside a cgroup) gets a short grace,
//!   then is found by its open pipe in `/proc` and killed, and our ends are closed.
//! * **Cancel or timeout**: SIGTERM to the group (Nix then stops its own builders),
//!   a grace period (builds: 5 s; evaluations, which have nothing to shut down: 100 ms),
//!   then SIGKILL to everything. A grace too large for an `Instant` means "never
//!   force": SIGTERM only, and the wait lasts until the command exits on its own.
//! * **Never signal a reaped pid**: the exit is *observed* without reaping (pidfd, or
//!   `waitid(WNOWAIT)`), leftovers of the group are killed while the zombie leader
//!   keeps the group id reserved, and only then is the leader reaped, with a bound: a
//!   process stuck in uninterruptible sleep is handed to a detached reaper thread
//!   instead of blocking `stop()` for ever ([`wait`]).
//! * **Memory bounded in bytes** ([`pipes`]): lines are cut at 64 KiB, `\r` ends a line
//!   (progress bars), stdout is kept up to 64 MiB, the stderr tail up to 4096 bytes.
//!
//! This module knows nothing of jobs: [`crate::job`] hands it a [`Limits`] (deadline,
//! cancellation, grace) and a line callback. It never imports `job` or `builder`.

mod cgroup;
mod child;
mod clone;
mod command;
mod fds;
pub(crate) mod pipes;
mod poll;
mod spawn;
mod supervise;
mod tree;
mod usage;
mod wait;
mod wake;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{CancelReason, JobError};

pub(crate) use cgroup::CgroupSlot;
pub use command::{AnyCommand, Command};
pub use usage::ResourceUsage;

/// The output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The command's standard output.
    Stdout,
    /// The command's standard error.
    Stderr,
}

/// How a command's exit is awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WaitStrategy {
    /// Linux: a pidfd, polled together with the command's pipes and the job's cancel
    /// eventfd by the job's own thread; no other thread, no signal handler. Falls back
    /// to [`WaitStrategy::Portable`] where pidfds are missing (Linux before 5.3).
    #[default]
    Pidfd,
    /// Any Unix (macOS for nix-darwin hosts): a waiter thread blocks in
    /// `waitid(WNOWAIT)`, which observes the exit without reaping (so the owner can
    /// still signal the process group safely) and wakes the job's `poll`.
    ///
    /// A killed command is reaped with a bound through the `wait-timeout` crate, which
    /// installs a **process-wide SIGCHLD handler** the first time it is needed (it
    /// chains to the handler it replaces). Programs that own SIGCHLD themselves should
    /// keep [`WaitStrategy::Pidfd`] on Linux, where no handler is installed.
    Portable,
}

/// What keeps a command's processes together so that all of them can be killed.
///
/// Which one a command ran under is logged at debug level.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Containment {
    /// [`Containment::Cgroup`] under this process's own cgroup where the cgroup v2
    /// hierarchy is mounted and writable (root, or a systemd service with
    /// `Delegate=yes`); found from `/proc/self/mountinfo` and `/proc/self/cgroup`.
    /// [`Containment::ProcessTree`] elsewhere (macOS, containers without delegation,
    /// Linux 4.5 to 5.1, whose cgroups can neither be killed nor frozen), and for any
    /// command whose cgroup cannot be created or entered.
    #[default]
    Auto,
    /// A child cgroup of this cgroup v2 directory for every command, created before the
    /// spawn and entered by the child before `exec`. Guarantees that every process the
    /// command starts (double-forked, `setsid`, re-parented) is killed when the command
    /// exits, is cancelled or times out, and that stop() returns only once the cgroup
    /// is empty (then removed, or kept empty for the builder's next command). The one
    /// way out is a process with the right to move itself to another cgroup (root
    /// writing to another `cgroup.procs`). If the child cgroup cannot be created or
    /// entered, or the kernel can neither kill it (`cgroup.kill`, Linux 5.14) nor freeze
    /// it (`cgroup.freeze`, Linux 5.2), the command fails without running.
    Cgroup(PathBuf),
    /// The command's process group, and the descendants found by walking `/proc` from
    /// the command and from every living member of its group before each kill. Reaches
    /// every process that stays in the group or below a living ancestor; a process
    /// that called `setsid` *and* whose parent already died is out of reach, unless it
    /// still holds the command's stdout or stderr, in which case it is found through
    /// that pipe and killed once the command exited.
    ProcessTree,
}

/// Knobs of the subprocess protocol.
///
/// # SIGCHLD must not be ignored
///
/// Commands are reaped by the job that ran them, and only after whatever they left
/// behind was killed (while the exited leader is a zombie, its process group id cannot
/// be reused). An embedding program that sets SIGCHLD to `SIG_IGN` (common in C
/// daemons), or installs a handler with `SA_NOCLDWAIT`, has its children reaped by the
/// kernel the moment they exit: exit statuses are lost ("cannot reap …: No child
/// processes") and the group id is no longer reserved. Both are seen (`sigaction`) and
/// a job's commands are then not started: they fail with [`JobError::Failed`] saying
/// so. A handler of the program's own is fine, as long as it does not reap children
/// it did not start (`waitpid(-1, …)`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessOptions {
    /// Builds: between SIGTERM to the group and SIGKILL to everything. 5 s by default.
    /// A grace too large to add to an `Instant` (e.g. `Duration::MAX`) means never
    /// force: SIGTERM only, and stopping waits until the command ends on its own.
    pub kill_grace: Duration,
    /// Evaluations, which have nothing to shut down gracefully: the same, 100 ms by
    /// default.
    pub eval_kill_grace: Duration,
    /// How the exit of a command is awaited.
    pub wait: WaitStrategy,
    /// How a command's processes are kept together.
    pub containment: Containment,
    /// The nice value (-20 to 19) every command runs at, so that jobs never starve the
    /// host's services; `None` (the default) keeps this process's. Set in the child
    /// before `exec` (so also for what it starts), and as the command's `cpu.weight`
    /// where its cgroup has the cpu controller. Raising priority (a negative value
    /// below this process's) needs root or `CAP_SYS_NICE`.
    pub nice: Option<i32>,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        ProcessOptions {
            kill_grace: Duration::from_secs(5),
            eval_kill_grace: Duration::from_millis(100),
            wait: WaitStrategy::Pidfd,
            containment: Containment::Auto,
            nice: None,
        }
    }
}

/// What a successful command printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// All of stdout, as printed (up to 64 MiB; bytes past that only reach the log).
    pub stdout: String,
    /// The last lines of stderr, at most 4096 bytes.
    pub stderr_tail: String,
}

/// The cancel switch shared by a job's owner and whoever cancels it. Cancelling wakes
/// a waiting [`run`] at once through an fd it polls (an eventfd on Linux, a pipe
/// elsewhere).
pub(crate) struct CancelToken {
    flag: AtomicBool,
    reason: Mutex<Option<CancelReason>>,
    wake: Option<wake::Wake>,
}

impl CancelToken {
    pub(crate) fn new() -> Arc<Self> {
        let wake = wake::Wake::new()
            .map_err(|e| log::warn!("no cancel fd ({e}): cancellation is noticed within 50 ms"))
            .ok();
        Arc::new(CancelToken { flag: AtomicBool::new(false), reason: Mutex::new(None), wake })
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
        if let Some(wake) = &self.wake {
            wake.wake();
        }
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    pub(crate) fn error(&self) -> JobError {
        JobError::Cancelled(self.reason.lock().clone())
    }

    fn wake(&self) -> Option<&wake::Wake> {
        self.wake.as_ref()
    }
}

/// The bounds a command runs within.
pub(crate) struct Limits<'a> {
    /// The job's whole timeout, for the error message.
    pub timeout: Duration,
    pub deadline: Instant,
    pub cancel: &'a CancelToken,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    pub options: &'a ProcessOptions,
    /// Where an empty cgroup waits for the next command.
    pub cgroups: &'a CgroupSlot,
    /// Bytes of memory the command's processes may use together.
    pub memory_limit: Option<u64>,
    /// What the commands run under these limits used, added up.
    pub usage: &'a Mutex<Option<ResourceUsage>>,
}

/// Runs `cmd` under `limits`, handing every line it prints to `on_line` on this thread,
/// in order. See the module documentation for what happens to its processes.
pub(crate) fn run(
    cmd: AnyCommand,
    limits: &Limits<'_>,
    on_line: &mut dyn FnMut(Stream, &str),
) -> Result<CommandOutput, JobError> {
    if limits.cancel.is_cancelled() {
        return Err(limits.cancel.error());
    }
    if Instant::now() >= limits.deadline {
        return Err(JobError::TimedOut(limits.timeout));
    }
    let description = describe(&cmd);
    if let Some(why) = wait::sigchld_unusable() {
        return Err(JobError::Failed(format!("cannot run `{description}`: {why}")));
    }
    let cgroup =
        cgroup::Cgroup::for_command(&limits.options.containment, limits.cgroups).map_err(JobError::Failed)?;
    let resources = cgroup::Resources { memory_limit: limits.memory_limit, nice: limits.options.nice };
    let enforced = cgroup.as_ref().map(|c| c.apply(&resources)).unwrap_or_default();
    let memory = if enforced.memory { "memory.max" } else { "the watchdog" };
    if let Some(limit) = limits.memory_limit {
        log::debug!(
            "`{description}`: its memory limit of {} is enforced by {memory}",
            crate::error::human_bytes(limit)
        );
    }
    let (child, cgroup) = spawn::start(cmd, cgroup, limits.options, &description)?;
    supervise::supervise(child, cgroup, enforced, limits, on_line, description)
}

/// The command line as a person would type it, shortened to stay readable in errors.
fn describe(cmd: &AnyCommand) -> String {
    let mut words = vec![cmd.program().to_string_lossy().into_owned()];
    words.extend(cmd.args().into_iter().map(|a| {
        let a = a.to_string_lossy();
        if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:@+,%^#".contains(c)) {
            a.into_owned()
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    }));
    let line = words.join(" ");
    if line.chars().count() > 300 {
        format!("{}…", line.chars().take(300).collect::<String>())
    } else {
        line
    }
}

/// `now + d`, or `None` ("never") when that is past what an `Instant` can hold.
fn deadline_after(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_quotes_what_a_shell_would_split() {
        let mut cmd = Command::new("nix-instantiate");
        cmd.args(["--eval", "a b", "it's"]);
        assert_eq!(describe(&cmd.into()), r"nix-instantiate --eval 'a b' 'it'\''s'");
    }

    #[test]
    fn a_grace_past_what_an_instant_holds_is_never() {
        assert_eq!(deadline_after(Duration::MAX), None);
        assert!(deadline_after(Duration::from_secs(1)).is_some());
    }
}
