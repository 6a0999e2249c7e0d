//! Starting a command: the one place that decides how, before the command is touched.
//!
//! | command                     | cgroup, pidfd wait         | cgroup, portable wait | no cgroup |
//! |-----------------------------|----------------------------|-----------------------|-----------|
//! | genbuild's [`Command`](super::Command) | [`clone`](super::clone)    | std + entry hook      | std       |
//! | `std::process::Command`     | std + entry hook           | std + entry hook      | std       |
//!
//! * **clone**: genbuild starts it, born in its cgroup (see [`super::clone`]); every
//!   setting of a [`Command`] is honoured there. A kernel that kills a child cloned into
//!   a cgroup once killed sends the command the std way.
//! * **std + entry hook**: std's `spawn`, which honours everything a
//!   `std::process::Command` holds, with a `pre_exec` hook that enters the cgroup by
//!   writing to a `cgroup.procs` the hook owns ([`EntryHook`], numbered 3 or more).
//! * **std**: std's `spawn` (`posix_spawn`).
//!
//! Under [`Containment::Auto`], a command that cannot enter its cgroup is started
//! without one (its process tree contains it); under [`Containment::Cgroup`] it fails.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::Arc;

use super::cgroup::{Cgroup, EntryHook};
use super::child::Child;
use super::clone::{clone_into_cgroup, CloneError};
use super::command::{AnyCommand, Kind};
use super::{Containment, ProcessOptions, WaitStrategy};
use crate::error::JobError;

/// How a command is started (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    Clone,
    StdWithHook,
    Std,
}

/// Starts `cmd` in `cgroup` if there is one, in a process group of its own, stdin
/// closed, stdout and stderr piped, at the options' nice value; returns the cgroup it
/// runs in (none if `Auto` had to start it without).
pub(super) fn start(
    cmd: AnyCommand,
    cgroup: Option<Cgroup>,
    options: &ProcessOptions,
    description: &str,
) -> Result<(Child, Option<Cgroup>), JobError> {
    let cannot_start = |e: io::Error| JobError::Failed(format!("cannot start `{description}`: {e}"));
    let nice = options.nice;
    let way = match (&cmd.0, &cgroup, options.wait) {
        (_, None, _) if nice.is_none() => Way::Std,
        (_, None, _) => Way::StdWithHook,
        (Kind::Genbuild(_), Some(_), WaitStrategy::Pidfd) => Way::Clone,
        (_, Some(_), _) => Way::StdWithHook,
    };
    let Some(group) = cgroup else {
        log::debug!("`{description}`: contained by its process tree");
        let hook = (way == Way::StdWithHook).then(|| Hook::new(None, nice));
        return std_spawn(&mut into_std(cmd), hook).map(|child| (child, None)).map_err(cannot_start);
    };
    let auto = options.containment == Containment::Auto;
    let mut cmd = match (way, cmd.0) {
        (Way::Clone, Kind::Genbuild(genbuild)) => match clone_into_cgroup(&genbuild, group.target(), nice) {
            Ok(child) => return Ok(contained(child, group, description)),
            Err(CloneError::Start(e)) => return Err(cannot_start(e)),
            Err(CloneError::Enter(e)) if auto => {
                log::debug!(
                    "`{description}` could not enter cgroup {} ({e}); starting it without",
                    group.dir().display()
                );
                drop(group);
                let hook = nice.map(|nice| Hook::new(None, Some(nice)));
                return std_spawn(&mut genbuild.to_std(), hook)
                    .map(|child| (child, None))
                    .map_err(cannot_start);
            }
            Err(CloneError::Enter(e)) => return Err(cannot_start(e)),
            Err(CloneError::Unsupported(why)) => {
                log::debug!("`{description}`: started by std's fork ({why})");
                genbuild.to_std()
            }
        },
        (_, kind) => into_std(AnyCommand(kind)),
    };
    let entry = group.entry_hook().map_err(|e| {
        JobError::Failed(format!("cannot start `{description}`: cannot open its cgroup's cgroup.procs: {e}"))
    })?;
    match std_spawn(&mut cmd, Some(Hook::new(Some(entry.clone()), nice))) {
        Ok(child) => Ok(contained(child, group, description)),
        Err(e) if auto => {
            log::debug!(
                "`{description}` could not start inside cgroup {} ({e}); trying without",
                group.dir().display()
            );
            // The hook stays on the Command: it only sets the nice value from now on.
            entry.disable();
            drop(group);
            std_spawn(&mut cmd, None).map(|child| (child, None)).map_err(cannot_start)
        }
        Err(e) => Err(cannot_start(e)),
    }
}

/// The child in `group`, logged; with its cgroup.
fn contained(child: Child, group: Cgroup, description: &str) -> (Child, Option<Cgroup>) {
    log::debug!("`{description}`: pid {} contained by cgroup {}", child.pid(), group.dir().display());
    (child, Some(group))
}

fn into_std(cmd: AnyCommand) -> std::process::Command {
    match cmd.0 {
        Kind::Genbuild(cmd) => cmd.to_std(),
        Kind::Std(cmd) => cmd,
    }
}

/// What a child started by std does between `fork` and `exec`: take its nice value,
/// enter its cgroup.
struct Hook {
    entry: Option<Arc<EntryHook>>,
    nice: Option<i32>,
}

impl Hook {
    fn new(entry: Option<Arc<EntryHook>>, nice: Option<i32>) -> Hook {
        Hook { entry, nice }
    }

    /// Async-signal-safe: system calls and an atomic load, no allocation, no lock.
    fn run(&self) -> io::Result<()> {
        if let Some(nice) = self.nice {
            set_nice(nice)?;
        }
        match &self.entry {
            Some(entry) => entry.enter(),
            None => Ok(()),
        }
    }
}

/// Sets the calling process's nice value (`setpriority`, which nice(2) is relative).
fn set_nice(nice: i32) -> io::Result<()> {
    // SAFETY: a system call on the calling process only.
    match unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// std's spawn of `cmd` with the protocol's stdio and process group, running `hook`
/// before `exec` if there is one.
fn std_spawn(cmd: &mut std::process::Command, hook: Option<Hook>) -> io::Result<Child> {
    cmd.process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(hook) = hook {
        // SAFETY: `Hook::run` makes system calls (setpriority, one write(2) on an fd the
        // hook owns, open as long as the Command holds the hook) and an atomic load:
        // async-signal-safe, no allocation, no lock.
        unsafe { cmd.pre_exec(move || hook.run()) };
    }
    cmd.spawn().map(Child::Std)
}
