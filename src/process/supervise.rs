//! The life of one command on the job's thread, from spawn to reap: one `poll` over its
//! pipes, its exit and the cancel switch, then the kills, the drain and the reap, in
//! the order the module documentation of [`super`] gives.

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::io::Errno;
use rustix::process::Signal;

use super::cgroup::{Cgroup, Enforced};
use super::child::{Child, Reaped};
use super::pipes::{Output, Pipe, MAX_LINE};
use super::poll::{poll_until, Polled};
use super::tree::{self, ProcId};
use super::usage::{ResourceUsage, Watchdog};
use super::wait::{self, ExitWatch, REAP_LIMIT};
use super::{deadline_after, CommandOutput, Limits, Stream};
use crate::error::{CommandFailure, Exit, JobError};

/// How long the pipes may stay open once every process we know of is dead; past it the
/// holder is some escaped process, found through the pipe and killed.
const PIPE_GRACE: Duration = Duration::from_millis(200);
/// How long the processes of a command's group get to die of SIGKILL before the whole
/// cgroup is killed (one may have forked as the signal came).
const GROUP_KILL_WAIT: Duration = Duration::from_millis(5);
/// How often a command that got SIGTERM gets it again during its grace.
const TERM_AGAIN: Duration = Duration::from_secs(1);
/// Without a cancel fd (none could be created), how often cancellation is checked.
const CANCEL_CHECK: Duration = Duration::from_millis(50);

/// Why a command's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Exited,
    Cancelled,
    TimedOut,
    /// The watchdog saw its processes pass the memory limit.
    MemoryLimit,
    /// `poll` failed: the command can no longer be watched, so it is stopped.
    PollFailed(Errno),
}

impl Cause {
    /// Why a [`Phase::Running`] pump returned (it waits for the exit, the cancel switch
    /// or the deadline: never for the pipes, whose end only [`Phase::Draining`] awaits).
    fn of(woke: Woke) -> Cause {
        match woke {
            Woke::Exited => Cause::Exited,
            Woke::Cancelled => Cause::Cancelled,
            Woke::Deadline => Cause::TimedOut,
            Woke::MemoryLimit => Cause::MemoryLimit,
            Woke::PollFailed(e) => Cause::PollFailed(e),
            Woke::PipesClosed => unreachable!("a running command's pump does not wait for its pipes"),
        }
    }
}

/// What a [`Supervisor::pump`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The exit, the cancel switch or the deadline.
    Running,
    /// The exit after SIGTERM, or the end of the grace.
    Terminating,
    /// The pipes' end, or the end of [`PIPE_GRACE`].
    Draining,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woke {
    Exited,
    Cancelled,
    Deadline,
    PipesClosed,
    MemoryLimit,
    PollFailed(Errno),
}

pub(super) fn supervise(
    mut child: Child,
    cgroup: Option<Cgroup>,
    enforced: Enforced,
    limits: &Limits<'_>,
    on_line: &mut dyn FnMut(Stream, &str),
    description: String,
) -> Result<CommandOutput, JobError> {
    let watch = match ExitWatch::new(&mut child, limits.options.wait) {
        Ok(watch) => watch,
        Err(e) => {
            let _ = rustix::process::kill_process_group(child.pid(), Signal::KILL);
            let _ = child.wait();
            return Err(JobError::Failed(format!("cannot watch `{description}` for its exit: {e}")));
        }
    };
    let [stdout, stderr] = child.take_output();
    let pipes = [stdout.map(|p| Pipe::new(Stream::Stdout, p)), stderr.map(|p| Pipe::new(Stream::Stderr, p))];
    let cpu_before = cgroup.as_ref().and_then(Cgroup::cpu_used);
    let watchdog = Watchdog::new(limits.memory_limit.filter(|_| !enforced.memory));
    Supervisor {
        child: Some(child),
        watch,
        cgroup,
        pipes: pipes.into_iter().flatten().collect(),
        output: Output::new(on_line),
        buf: vec![0; MAX_LINE],
        limits,
        description,
        known: HashSet::new(),
        watchdog,
        cpu_before,
        reaped: None,
    }
    .run()
}

struct Supervisor<'o, 'l> {
    /// `None` once reaped or handed to a reaper.
    child: Option<Child>,
    watch: ExitWatch,
    cgroup: Option<Cgroup>,
    /// The pipes still open.
    pipes: Vec<Pipe>,
    output: Output<'o>,
    buf: Vec<u8>,
    limits: &'l Limits<'l>,
    description: String,
    /// Without a cgroup: the processes seen below the command.
    known: HashSet<ProcId>,
    /// Samples the command's memory while a limit is the watchdog's to enforce.
    watchdog: Watchdog,
    /// What its cgroup had used before the command (a kept cgroup's earlier commands).
    cpu_before: Option<Duration>,
    /// What the kernel counted of the reaped leader.
    reaped: Option<Reaped>,
}

impl Supervisor<'_, '_> {
    fn run(mut self) -> Result<CommandOutput, JobError> {
        let cause = Cause::of(self.pump(Some(self.limits.deadline), Phase::Running));
        // A command past its memory limit is killed at once; one that passes it during
        // its grace (cancelled, timed out) too, and keeps its cause.
        let mut past_the_limit = cause == Cause::MemoryLimit;
        if matches!(cause, Cause::Cancelled | Cause::TimedOut | Cause::PollFailed(_)) {
            past_the_limit = self.terminate() == Woke::MemoryLimit;
        }
        self.kill_everything();
        let status = self.reap();
        let stuck = status.is_none()
            || self.cgroup.as_ref().is_some_and(|cgroup| !cgroup.kill_until_empty(REAP_LIMIT));
        self.drain();
        let oom_killed = self.cgroup.as_ref().is_some_and(Cgroup::oom_killed);
        let usage = self.usage(past_the_limit || oom_killed);
        self.limits.usage.lock().get_or_insert_with(ResourceUsage::default).add(&usage);
        let (child, cgroup) = (self.child.take(), self.cgroup.take());
        if stuck {
            wait::hand_off(child, cgroup, &self.description);
        } else if let Some(cgroup) = cgroup {
            if let Err(e) = self.limits.cgroups.keep(cgroup) {
                log::warn!("cannot remove the cgroup of `{}`: {e}", self.description);
            }
        }
        let description = std::mem::take(&mut self.description);
        let output = self.output.finish(&description);
        // Killed for its memory by the watchdog, or by the kernel while it ran.
        if cause == Cause::MemoryLimit || (cause == Cause::Exited && oom_killed) {
            let limit = self.limits.memory_limit.unwrap_or_default();
            return Err(JobError::MemoryLimit { command: description, limit, peak: usage.peak_memory_bytes });
        }
        outcome(cause, status, description, output, self.limits)
    }

    /// What the command used: the cgroup's counters where they count (its CPU time, its
    /// peak where the memory controller keeps one), the reaped leader's `rusage`, the
    /// watchdog's samples.
    fn usage(&self, memory_limit_reached: bool) -> ResourceUsage {
        let reaped = self.reaped.unwrap_or_default();
        let cgroup_cpu = self
            .cgroup
            .as_ref()
            .and_then(Cgroup::cpu_used)
            .map(|after| after.saturating_sub(self.cpu_before.unwrap_or_default()));
        let cgroup_peak = self.cgroup.as_ref().and_then(Cgroup::memory_peak).unwrap_or(0);
        ResourceUsage {
            peak_memory_bytes: reaped.max_rss.max(self.watchdog.peak).max(cgroup_peak),
            cpu_time: cgroup_cpu.map_or(reaped.cpu, |cpu| cpu.max(reaped.cpu)),
            memory_limit_reached,
        }
    }

    /// The processes of the command now: its cgroup's, or its process tree and group.
    fn processes(&self) -> Vec<rustix::process::Pid> {
        use rustix::process::Pid;
        let Some(leader) = self.child.as_ref().map(Child::pid) else { return Vec::new() };
        if let Some(cgroup) = &self.cgroup {
            return cgroup.listed().unwrap_or_else(|_| vec![leader]);
        }
        let leader = leader.as_raw_nonzero().get();
        let mut roots: HashSet<ProcId> = tree::group_members(leader).into_iter().collect();
        roots.insert(tree::proc_id(leader));
        let below = tree::descendants(&roots);
        roots.into_iter().chain(below).filter_map(|(pid, _)| Pid::from_raw(pid)).collect()
    }

    /// Cancel or timeout: SIGTERM to the group, then the grace (cut short by the memory
    /// limit); SIGKILL to everything comes next. What ended the grace.
    fn terminate(&mut self) -> Woke {
        let Some(pid) = self.child.as_ref().map(Child::pid) else { return Woke::Exited };
        if self.cgroup.is_none() {
            // Before the first signal: a builder whose parent dies is lost to later walks.
            self.known = tree::descendants(&[tree::proc_id(pid.as_raw_nonzero().get())].into());
        }
        log::debug!("terminating `{}` (pid {pid})", self.description);
        let grace_ends = deadline_after(self.limits.grace);
        loop {
            let _ = rustix::process::kill_process_group(pid, Signal::TERM);
            // SIGTERM again every second of the grace: Nix 2.34 may lose an interrupt
            // that comes while all its builders are silent (its worker polls without a
            // timeout), and acts on the next one at once.
            let again = Instant::now() + TERM_AGAIN;
            let until = grace_ends.map_or(again, |end| end.min(again));
            let woke = self.pump(Some(until), Phase::Terminating);
            match woke {
                Woke::Deadline if grace_ends.is_none_or(|end| Instant::now() < end) => continue,
                Woke::PollFailed(e) => {
                    log::error!("cannot poll for the exit of `{}` ({e}): killing it now", self.description)
                }
                _ => {}
            }
            return woke;
        }
    }

    /// SIGKILL to whatever is left: the cgroup, or the tree below the known processes and
    /// the group's members, and the group. The leader is not reaped yet, so its group id
    /// is still ours.
    fn kill_everything(&mut self) {
        let Some(pid) = self.child.as_ref().map(Child::pid) else { return };
        if let Some(cgroup) = &self.cgroup {
            if cgroup.is_empty() {
                return;
            }
            // The group first, which is usually all there is: a cgroup that got
            // `cgroup.kill` is not kept for the next command. Anything else in it (a
            // process that left the group) calls for the cgroup's kill at once.
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
            if cgroup.wait_group_empty(pid, GROUP_KILL_WAIT) {
                return;
            }
            match cgroup.kill() {
                Ok(()) => return,
                Err(e) => log::warn!("cannot kill cgroup {} ({e}): killing the tree", cgroup.dir().display()),
            }
        }
        let leader = pid.as_raw_nonzero().get();
        let mut roots = self.known.clone();
        if !self.watch.exited() {
            roots.insert(tree::proc_id(leader));
        }
        // Whoever is still in the group (all there is once the leader exited normally,
        // or born after the first walk): its `setsid` children are below it. Killed
        // through pidfds as the rest, so that their end is awaited too; but the leader,
        // whom the reap awaits.
        let members = tree::group_members(leader);
        roots.extend(members.iter().copied());
        let found = tree::descendants(&roots);
        self.known.extend(found);
        self.known.extend(members.into_iter().filter(|&(member, _)| member != leader));
        let killed = tree::kill_all(&self.known);
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        // Gone before the job ends, as in a cgroup (a process in uninterruptible sleep
        // is not waited for past the bound: the reaper's bound, for the same reason).
        if !tree::wait_gone(&killed, REAP_LIMIT) {
            log::warn!("a process of `{}` did not exit within {REAP_LIMIT:?} of SIGKILL", self.description);
        }
    }

    /// The leader's status, once it exited within [`REAP_LIMIT`]; `None` if it did not.
    fn reap(&mut self) -> Option<std::io::Result<ExitStatus>> {
        let child = self.child.as_mut()?;
        let reaped = self.watch.reap(child, REAP_LIMIT)?;
        self.child = None;
        Some(reaped.map(|(status, usage)| {
            self.reaped = usage;
            status
        }))
    }

    /// Reads the pipes to their end; past [`PIPE_GRACE`], kills their holders and closes
    /// them.
    fn drain(&mut self) {
        match self.pump(deadline_after(PIPE_GRACE), Phase::Draining) {
            Woke::PipesClosed => return,
            Woke::PollFailed(e) => {
                log::error!("cannot poll the output of `{}` ({e}): closing it", self.description)
            }
            _ => {}
        }
        let inodes: Vec<u64> = self.pipes.iter().filter_map(Pipe::inode).collect();
        let holders = tree::pipe_holders(&inodes);
        log::warn!(
            "`{}` ended but processes outside its reach hold its output open: killing {:?}",
            self.description,
            holders.iter().map(|h| h.0).collect::<Vec<_>>()
        );
        if !tree::wait_gone(&tree::kill_all(&holders), REAP_LIMIT) {
            log::warn!("a holder of the output of `{}` did not exit within {REAP_LIMIT:?}", self.description);
        }
        for pipe in std::mem::take(&mut self.pipes) {
            pipe.close(&mut self.output);
        }
    }

    /// Polls the pipes (handing out what they carry), the exit and the cancel switch
    /// until what `phase` waits for happens or `deadline` passes (`None`: never).
    fn pump(&mut self, deadline: Option<Instant>, phase: Phase) -> Woke {
        let cancel = self.limits.cancel;
        loop {
            if phase == Phase::Running && cancel.is_cancelled() {
                return Woke::Cancelled;
            }
            if phase != Phase::Draining && self.watch.exited() {
                return Woke::Exited;
            }
            if phase == Phase::Draining && self.pipes.is_empty() {
                return Woke::PipesClosed;
            }
            if phase != Phase::Draining && self.watchdog.is_due() && self.watchdog.sample(self.processes()) {
                return Woke::MemoryLimit;
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Woke::Deadline;
            }
            let cancel_fd = cancel.wake().map(|w| w.fd()).filter(|_| phase == Phase::Running);
            let mut wake_at = deadline;
            if let Some(sample) = self.watchdog.due().filter(|_| phase != Phase::Draining) {
                wake_at = Some(wake_at.map_or(sample, |at| at.min(sample)));
            }
            if phase == Phase::Running && cancel_fd.is_none() {
                let check = Instant::now() + CANCEL_CHECK;
                wake_at = Some(wake_at.map_or(check, |at| at.min(check)));
            }
            let mut fds: Vec<PollFd<'_>> =
                self.pipes.iter().map(|p| PollFd::from_borrowed_fd(p.fd(), PollFlags::IN)).collect();
            let exit_at = fds.len();
            if phase != Phase::Draining {
                fds.push(PollFd::from_borrowed_fd(self.watch.fd(), PollFlags::IN));
            }
            if let Some(fd) = cancel_fd {
                fds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN));
            }
            match poll_until(&mut fds, wake_at) {
                Ok(Polled::Ready) => {}
                // The checks at the top of the loop say whether to go on.
                Ok(Polled::Again | Polled::Passed) => continue,
                Err(e) => return Woke::PollFailed(e),
            }
            let ready: Vec<bool> = fds.iter().map(|fd| !fd.revents().is_empty()).collect();
            drop(fds);
            if phase != Phase::Draining && ready[exit_at] {
                self.watch.set_exited();
            }
            // Backwards, so that removing a pipe does not shift those still to read.
            for i in (0..exit_at).rev() {
                if ready[i] && !self.pipes[i].read(&mut self.buf, &mut self.output) {
                    self.pipes.remove(i);
                }
            }
        }
    }
}

impl Drop for Supervisor<'_, '_> {
    /// Only reached with a child still here if the line callback panicked: the
    /// command's processes must not outlive the job all the same.
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill_everything();
            if self.reap().is_none() {
                wait::hand_off(self.child.take(), self.cgroup.take(), &self.description);
            }
        }
    }
}

/// What [`super::run`] returns for a command that ended for `cause` with `status`
/// (`None`: not reaped), having printed `output` (stdout, stderr tail).
fn outcome(
    cause: Cause,
    status: Option<std::io::Result<ExitStatus>>,
    description: String,
    (stdout, stderr_tail): (String, String),
    limits: &Limits<'_>,
) -> Result<CommandOutput, JobError> {
    match (cause, status) {
        (Cause::Cancelled, _) => Err(limits.cancel.error()),
        (Cause::TimedOut, _) => Err(JobError::TimedOut(limits.timeout)),
        (Cause::MemoryLimit, _) => unreachable!("a command killed for its memory is reported before"),
        (Cause::PollFailed(e), _) => Err(JobError::Failed(format!(
            "cannot watch `{description}` any longer (poll failed: {e}); it was stopped"
        ))),
        (Cause::Exited, Some(Ok(status))) if status.success() => Ok(CommandOutput { stdout, stderr_tail }),
        (Cause::Exited, Some(Ok(status))) => {
            Err(JobError::Command(CommandFailure::new(description, exit_of(status), stderr_tail)))
        }
        (Cause::Exited, Some(Err(e))) if e.raw_os_error() == Some(Errno::CHILD.raw_os_error()) => {
            Err(JobError::Failed(format!(
                "cannot reap `{description}`: {e}; something reaps this process's children: SIGCHLD set to \
                 SIG_IGN or a handler with SA_NOCLDWAIT, or a waitpid(-1) elsewhere in the program"
            )))
        }
        (Cause::Exited, Some(Err(e))) => Err(JobError::Failed(format!("cannot reap `{description}`: {e}"))),
        (Cause::Exited, None) => unreachable!("an exited command is reaped at once"),
    }
}

fn exit_of(status: ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(signal)) => Exit::Signal(signal),
        (None, None) => Exit::Code(-1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn a_failure_names_command_status_and_tail() {
        let failure =
            |status, tail| CommandFailure::new("false", exit_of(ExitStatus::from_raw(status)), tail);
        assert_eq!(failure(1 << 8, "oops\n").to_string(), "`false` exited with status 1:\noops");
        assert_eq!(failure(9, "").to_string(), "`false` killed by signal 9");
    }

    /// A `poll` that fails while the command runs stops it and says so: it is neither a
    /// timeout nor the command's own failure.
    #[test]
    fn a_failed_poll_is_reported_not_taken_for_a_timeout() {
        assert_eq!(Cause::of(Woke::PollFailed(Errno::INVAL)), Cause::PollFailed(Errno::INVAL));
        assert_eq!(Cause::of(Woke::Deadline), Cause::TimedOut);
        let cancel = super::super::CancelToken::new();
        let options = super::super::ProcessOptions::default();
        let limits = Limits {
            timeout: Duration::MAX,
            deadline: Instant::now(),
            cancel: &cancel,
            grace: Duration::ZERO,
            options: &options,
            cgroups: &super::super::CgroupSlot::default(),
            memory_limit: None,
            usage: &Default::default(),
        };
        let killed = Some(Ok(ExitStatus::from_raw(9)));
        let result =
            outcome(Cause::PollFailed(Errno::INVAL), killed, "sleep 30".into(), Default::default(), &limits);
        let Err(JobError::Failed(message)) = result else { panic!("{result:?}") };
        assert!(message.contains("`sleep 30`") && message.contains("poll failed"), "{message}");
    }
}
