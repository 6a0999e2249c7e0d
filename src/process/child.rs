//! A started command, whoever started it: std, or genbuild's clone.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use rustix::fd::OwnedFd;
use rustix::process::Pid;

/// A started command, whoever started it.
pub(super) enum Child {
    Std(std::process::Child),
    Cloned(Cloned),
}

/// A command [`super::clone`] started.
pub(super) struct Cloned {
    pub(super) pid: Pid,
    pub(super) pidfd: Option<OwnedFd>,
    pub(super) stdout: Option<OwnedFd>,
    pub(super) stderr: Option<OwnedFd>,
}

impl Child {
    pub(super) fn pid(&self) -> Pid {
        match self {
            Child::Std(child) => Pid::from_raw(child.id() as i32).expect("a child's pid is positive"),
            Child::Cloned(child) => child.pid,
        }
    }

    /// The read ends of stdout and stderr, once.
    pub(super) fn take_output(&mut self) -> [Option<OwnedFd>; 2] {
        match self {
            Child::Std(child) => [child.stdout.take().map(Into::into), child.stderr.take().map(Into::into)],
            Child::Cloned(child) => [child.stdout.take(), child.stderr.take()],
        }
    }

    /// The pidfd the clone returned, once; std's children have none.
    pub(super) fn take_pidfd(&mut self) -> Option<OwnedFd> {
        match self {
            Child::Std(_) => None,
            Child::Cloned(child) => child.pidfd.take(),
        }
    }

    /// Blocks until the child exits and reaps it.
    pub(super) fn wait(&mut self) -> io::Result<ExitStatus> {
        self.wait_with_usage().map(|(status, _)| status)
    }

    /// Blocks until the child exits and reaps it; with what the kernel counted of it.
    pub(super) fn wait_with_usage(&mut self) -> io::Result<(ExitStatus, Reaped)> {
        reap(self.pid())
    }
}

/// What the kernel counted of a reaped process (`wait4`'s `rusage`): the process and
/// every descendant it waited for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Reaped {
    /// User and system CPU time.
    pub(super) cpu: Duration,
    /// The largest resident set among them, in bytes.
    pub(super) max_rss: u64,
}

/// Reaps `pid` (blocking until it exits), with its `rusage`.
pub(super) fn reap(pid: Pid) -> io::Result<(ExitStatus, Reaped)> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: a plain C struct the kernel fills.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: writes to the two locals only.
        let reaped = unsafe { libc::wait4(pid.as_raw_nonzero().get(), &mut status, 0, &mut usage) };
        if reaped < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        let cpu = time(usage.ru_utime) + time(usage.ru_stime);
        let max_rss = (usage.ru_maxrss as u64).saturating_mul(1024);
        return Ok((ExitStatus::from_raw(status), Reaped { cpu, max_rss }));
    }
}
