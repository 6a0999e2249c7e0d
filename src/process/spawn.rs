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
/// closed, stdout and stderr piped; returns the cgroup it runs in (none if `Auto` had
/// to start it without).
pub(super) fn start(
    cmd: AnyCommand,
    cgroup: Option<Cgroup>,
    options: &ProcessOptions,
    description: &str,
) -> Result<(Child, Option<Cgroup>), JobError> {
    let cannot_start = |e: io::Error| JobError::Failed(format!("cannot start `{description}`: {e}"));
    let way = match (&cmd.0, &cgroup, options.wait) {
        (_, None, _) => Way::Std,
        (Kind::Genbuild(_), Some(_), WaitStrategy::Pidfd) => Way::Clone,
        (_, Some(_), _) => Way::StdWithHook,
    };
    let (Way::Clone | Way::StdWithHook, Some(group)) = (way, cgroup) else {
        log::debug!("`{description}`: contained by its process tree");
        return std_spawn(into_std(cmd), None).map(|child| (child, None)).map_err(cannot_start);
    };
    let auto = options.containment == Containment::Auto;
    let mut cmd = match (way, cmd.0) {
        (Way::Clone, Kind::Genbuild(genbuild)) => match clone_into_cgroup(&genbuild, group.target()) {
            Ok(child) => return Ok(contained(child, group, description)),
            Err(CloneError::Start(e)) => return Err(cannot_start(e)),
            Err(CloneError::Enter(e)) if auto => {
                log::debug!(
                    "`{description}` could not enter cgroup {} ({e}); starting it without",
                    group.dir().display()
                );
                drop(group);
                return std_spawn(genbuild.to_std(), None).map(|child| (child, None)).map_err(cannot_start);
            }
            Err(CloneError::Enter(e)) => return Err(cannot_start(e)),
            Err(CloneError::Unsupported(why)) => {
                log::debug!("`{description}`: started by std's fork ({why})");
                genbuild.to_std()
            }
        },
        (_, kind) => into_std(AnyCommand(kind)),
    };
    let hook = group.entry_hook().map_err(|e| {
        JobError::Failed(format!("cannot start `{description}`: cannot open its cgroup's cgroup.procs: {e}"))
    })?;
    match std_spawn_ref(&mut cmd, Some(hook.clone())) {
        Ok(child) => Ok(contained(child, group, description)),
        Err(e) if auto => {
            log::debug!(
                "`{description}` could not start inside cgroup {} ({e}); trying without",
                group.dir().display()
            );
            hook.disable();
            drop(group);
            std_spawn_ref(&mut cmd, None).map(|child| (child, None)).map_err(cannot_start)
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

fn std_spawn(mut cmd: std::process::Command, hook: Option<Arc<EntryHook>>) -> io::Result<Child> {
    std_spawn_ref(&mut cmd, hook)
}

/// std's spawn of `cmd` with the protocol's stdio and process group, entering the
/// cgroup of `hook` before `exec` if there is one.
fn std_spawn_ref(cmd: &mut std::process::Command, hook: Option<Arc<EntryHook>>) -> io::Result<Child> {
    cmd.process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(hook) = hook {
        // SAFETY: the hook makes one atomic load and one write(2) on an fd it owns
        // (open as long as the hook, which the Command holds): async-signal-safe, no
        // allocation, no lock.
        unsafe { cmd.pre_exec(move || hook.enter()) };
    }
    cmd.spawn().map(Child::Std)
}
