//! Waiting for a command's exit without reaping it, and reaping it with a bound.
//!
//! The exit is *observed* first and the command reaped last, after its leftovers were
//! killed: while the leader is a zombie its pid, and so its process group id, cannot be
//! recycled, so no signal ever reaches a stranger.
//!
//! * Linux ([`WaitStrategy::Pidfd`]): a pidfd, readable once the process exited; the
//!   job's thread polls it with everything else. Its bounded reap is a `poll` of the
//!   pidfd with a limit: no signal handler in the embedding program.
//! * Elsewhere ([`WaitStrategy::Portable`]): a thread blocked in `waitid(WNOWAIT)`
//!   wakes an fd the job's thread polls. Its bounded reap uses the `wait-timeout`
//!   crate, the portable way to wait for a child with a limit (it installs a
//!   process-wide SIGCHLD handler that chains to the previous one, once).
//!
//! A process that does not die within [`REAP_LIMIT`] of SIGKILL is in uninterruptible
//! sleep (a hung NFS mount, a frozen cgroup v1): it is handed to a detached reaper
//! thread and logged, and `stop()` returns instead of blocking for ever.

use std::io;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};

use super::cgroup::Cgroup;
use super::child::{Child, Reaped};
use super::poll::readable_until;
use super::wake::Wake;
use super::{deadline_after, WaitStrategy};

/// How long a killed process may take to exit before a reaper thread takes it over.
/// Generous: a large process under load takes a while to release its memory.
pub(crate) const REAP_LIMIT: Duration = Duration::from_secs(2);
/// How long a reaper waits for a cgroup to empty before it kills it again.
const REAPER_ROUND: Duration = Duration::from_secs(10);

/// Observes a child's exit without reaping it.
pub(super) enum ExitWatch {
    /// Readable once the process exited.
    Pidfd { pidfd: OwnedFd, exited: bool },
    /// Woken by a `waitid(WNOWAIT)` thread once the process exited.
    Thread { woken: Arc<Wake>, exited: bool },
}

impl ExitWatch {
    pub(super) fn new(child: &mut Child, strategy: WaitStrategy) -> io::Result<ExitWatch> {
        if let Some(pidfd) = child.take_pidfd() {
            return Ok(ExitWatch::Pidfd { pidfd, exited: false });
        }
        let pid = child.pid();
        if strategy == WaitStrategy::Pidfd {
            match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
                Ok(pidfd) => return Ok(ExitWatch::Pidfd { pidfd, exited: false }),
                Err(e) => log::debug!("pidfd_open failed ({e}); using the portable wait"),
            }
        }
        let woken = Arc::new(Wake::new()?);
        let wake = woken.clone();
        std::thread::Builder::new().name("genbuild-waitid".into()).spawn(move || {
            use rustix::process::{waitid, WaitId, WaitIdOptions};
            let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
            while let Err(rustix::io::Errno::INTR) = waitid(WaitId::Pid(pid), options) {}
            wake.wake();
        })?;
        Ok(ExitWatch::Thread { woken, exited: false })
    }

    /// What to poll for the exit.
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        match self {
            ExitWatch::Pidfd { pidfd, .. } => pidfd.as_fd(),
            ExitWatch::Thread { woken, .. } => woken.fd(),
        }
    }

    pub(super) fn exited(&self) -> bool {
        match self {
            ExitWatch::Pidfd { exited, .. } | ExitWatch::Thread { exited, .. } => *exited,
        }
    }

    /// Records that [`fd`](ExitWatch::fd) polled readable.
    pub(super) fn set_exited(&mut self) {
        match self {
            ExitWatch::Pidfd { exited, .. } | ExitWatch::Thread { exited, .. } => *exited = true,
        }
    }

    /// Until the process exits or `limit` passes (`None`: no limit); whether it exited.
    /// A `poll` that fails counts as "not exited": the caller hands the process to a
    /// reaper, which blocks in `wait` instead.
    pub(super) fn wait_exit(&mut self, limit: Option<Duration>) -> bool {
        if self.exited() {
            return true;
        }
        match readable_until(self.fd(), limit.and_then(deadline_after)) {
            Ok(exited) => {
                if exited {
                    self.set_exited();
                }
                exited
            }
            Err(e) => {
                log::error!("cannot poll for a command's exit ({e})");
                false
            }
        }
    }

    /// Reaps `child` if it exits within `limit`, with what the kernel counted of it
    /// (not known for a command the portable wait had not seen exit, which
    /// `wait-timeout` reaps); `None` if it does not exit.
    pub(super) fn reap(
        &mut self,
        child: &mut Child,
        limit: Duration,
    ) -> Option<io::Result<(ExitStatus, Option<Reaped>)>> {
        if let (ExitWatch::Thread { exited: false, .. }, Child::Std(child)) = (&self, &mut *child) {
            use wait_timeout::ChildExt;
            return child.wait_timeout(limit).transpose().map(|status| status.map(|s| (s, None)));
        }
        self.wait_exit(Some(limit))
            .then(|| child.wait_with_usage().map(|(status, usage)| (status, Some(usage))))
    }
}

/// Hands a child that did not die, and its cgroup (or a cgroup that did not empty), to
/// a detached thread that reaps the child whenever it exits, then empties and removes
/// the cgroup.
pub(super) fn hand_off(child: Option<Child>, cgroup: Option<Cgroup>, description: &str) {
    let pid = child.as_ref().map(Child::pid);
    log::warn!(
        "`{description}` (pid {pid:?}) or a process of its cgroup did not exit within {REAP_LIMIT:?} of \
         SIGKILL (uninterruptible sleep?); a reaper thread waits for it"
    );
    let description = description.to_string();
    let reaper = std::thread::Builder::new().name("genbuild-reaper".into()).spawn(move || {
        if let Some(mut child) = child {
            let status = child.wait();
            log::warn!("`{description}` (pid {pid:?}) finally ended: {status:?}");
        }
        // Ends once the cgroup is empty: never before, whatever it takes.
        if let Some(cgroup) = cgroup {
            let mut rounds = 0u64;
            loop {
                if let Err(e) = cgroup.kill() {
                    log::warn!("cannot kill the cgroup of `{description}` ({e}); trying again");
                }
                if cgroup.wait_empty(REAPER_ROUND) {
                    if let Err(e) = cgroup.remove() {
                        log::warn!("cannot remove the cgroup of `{description}`: {e}");
                    }
                    break;
                }
                rounds += 1;
                log::warn!(
                    "the cgroup of `{description}` ({}) still holds processes after {rounds} rounds of SIGKILL \
                     (uninterruptible sleep?); killing it again",
                    cgroup.dir().display()
                );
            }
        }
    });
    if let Err(e) = reaper {
        log::error!("cannot start a reaper thread ({e}): pid {pid:?} stays a zombie once it exits");
    }
}

/// What follows when the kernel reaps this process's children, for both errors below.
macro_rules! reaped_by_the_kernel {
    () => {
        "so the kernel reaps its children the moment they exit: a command's exit status would be lost, \
         and its process group id could be reused while its processes are being killed"
    };
}

const SIGCHLD_IGNORED: &str = concat!(
    "this process ignores SIGCHLD (SIG_IGN), ",
    reaped_by_the_kernel!(),
    ". Restore SIGCHLD's default disposition (SIG_DFL) before running commands; a handler of your own \
     is fine unless it sets SA_NOCLDWAIT"
);

const SIGCHLD_NOCLDWAIT: &str = concat!(
    "this process's SIGCHLD handler has SA_NOCLDWAIT, ",
    reaped_by_the_kernel!(),
    ". Install it without SA_NOCLDWAIT (or restore SIG_DFL) before running commands"
);

/// Why no command runs, when this process lets the kernel reap its children (SIGCHLD
/// set to `SIG_IGN`, as C daemons often do, or a handler with `SA_NOCLDWAIT`); `None`
/// when it does not. One `sigaction` query per command.
pub(super) fn sigchld_unusable() -> Option<&'static str> {
    // SAFETY: a query: no action is installed.
    let current = unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut current) != 0 {
            return None;
        }
        current
    };
    if current.sa_sigaction == libc::SIG_IGN {
        Some(SIGCHLD_IGNORED)
    } else if current.sa_flags & libc::SA_NOCLDWAIT != 0 {
        Some(SIGCHLD_NOCLDWAIT)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::process::Pid;
    use std::process::Command;
    use std::time::Instant;

    fn alive(pid: Pid) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| !r.trim_start().starts_with('Z')))
    }

    fn gone(pid: Pid) -> bool {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    /// The bounded reap and the hand-off, with a process whose exit the test controls:
    /// a `sleep` nobody killed stands for one stuck in uninterruptible sleep after
    /// SIGKILL. Both strategies give up after the limit, and the reaper reaps it (no
    /// zombie) once it does exit.
    #[test]
    fn a_process_that_does_not_exit_in_time_is_handed_to_a_reaper() {
        for strategy in [WaitStrategy::Pidfd, WaitStrategy::Portable] {
            let mut child = Child::Std(Command::new("sleep").arg("30").spawn().unwrap());
            let pid = child.pid();
            let mut watch = ExitWatch::new(&mut child, strategy).unwrap();
            let started = Instant::now();
            assert!(watch.reap(&mut child, Duration::from_millis(100)).is_none(), "{strategy:?}");
            let waited = started.elapsed();
            assert!(waited >= Duration::from_millis(90) && waited < Duration::from_secs(5), "{waited:?}");
            hand_off(Some(child), None, "sleep 30");
            assert!(alive(pid));
            rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !gone(pid) {
                assert!(Instant::now() < deadline, "{strategy:?}: the reaper did not reap {pid}");
                std::thread::yield_now();
            }
        }
    }

    #[test]
    fn a_process_that_exits_in_time_is_reaped() {
        for strategy in [WaitStrategy::Pidfd, WaitStrategy::Portable] {
            let mut child = Child::Std(Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap());
            let mut watch = ExitWatch::new(&mut child, strategy).unwrap();
            let (status, _) = watch.reap(&mut child, Duration::from_secs(10)).expect("exited").unwrap();
            assert_eq!(status.code(), Some(3), "{strategy:?}");
        }
    }
}
