//! A started command, whoever started it: std, or genbuild's clone.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use rustix::fd::OwnedFd;
use rustix::process::{Pid, WaitOptions};

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
        match self {
            Child::Std(child) => child.wait(),
            Child::Cloned(child) => reap(child.pid),
        }
    }
}

pub(super) fn reap(pid: Pid) -> io::Result<ExitStatus> {
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
            Ok(Some((_, status))) => return Ok(ExitStatus::from_raw(status.as_raw())),
            Ok(None) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
