//! One empty cgroup kept from a command for the next, and the sweep of those that
//! processes no longer running left behind.

use std::fs;
use std::io;
use std::path::Path;

use rustix::fs::{FlockOperation, Mode, OFlags};

use super::Cgroup;

/// One empty cgroup kept from a command for the next, so that a builder's commands do
/// not each pay for a cgroup's creation and removal (a `mkdir`, a `rmdir` and the
/// kernel's work behind them: about as much as starting the command). A builder holds
/// one slot for all its jobs, a standalone [`Job`](crate::Job) one of its own; the
/// cgroup kept is removed with the slot.
///
/// A cgroup is kept only once its command's processes are all gone, and only if
/// nothing was left in it (no cgroup below it, not frozen) and it never needed
/// `cgroup.kill` (Linux 6.18 kills children born in such a cgroup). A command running
/// as root can change its own cgroup's settings (limits of controllers the parent
/// enables); the next command of the same builder inherits them.
#[derive(Default)]
pub(crate) struct CgroupSlot(parking_lot::Mutex<Option<Cgroup>>);

impl std::fmt::Debug for CgroupSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.0.lock().as_ref().map(|c| c.dir.clone());
        f.debug_tuple("CgroupSlot").field(&kept).finish()
    }
}

impl CgroupSlot {
    /// The cgroup kept, if it is a child of `parent` and still there.
    pub(super) fn take(&self, parent: &Path) -> Option<Cgroup> {
        let mut kept = self.0.lock();
        if kept.as_ref()?.dir.parent() != Some(parent) {
            return None;
        }
        let mut cgroup = kept.take()?;
        drop(kept);
        // Removed by someone else than a sweep (which leaves a locked cgroup alone).
        if !cgroup.dir.exists() {
            cgroup.removed = true;
            return None;
        }
        Some(cgroup)
    }

    /// Keeps `cgroup`, whose processes are all gone, for the next command; removes it
    /// instead if a cgroup is kept already or something was left in it.
    pub(in crate::process) fn keep(&self, cgroup: Cgroup) -> io::Result<()> {
        if !cgroup.reusable() {
            return cgroup.remove();
        }
        let mut kept = self.0.lock();
        match &*kept {
            Some(_) => {
                drop(kept);
                cgroup.remove()
            }
            None => {
                *kept = Some(cgroup);
                Ok(())
            }
        }
    }
}

impl Drop for CgroupSlot {
    fn drop(&mut self) {
        if let Some(cgroup) = self.0.get_mut().take() {
            let dir = cgroup.dir.clone();
            if let Err(e) = cgroup.remove() {
                log::warn!("cannot remove cgroup {}: {e}", dir.display());
            }
        }
    }
}

/// Removes the empty cgroups left under `parent` by processes no longer running (one
/// kept in a [`CgroupSlot`] by a program that exited without dropping its builder). A
/// cgroup is a dead process's when nobody holds the `flock` its owner holds as long as
/// it lives ([`Cgroup`]): no pid is compared, so processes in other pid namespaces
/// sharing the cgroup tree are judged right. One that is not empty is left alone.
pub(super) fn remove_dead_owners(parent: &Path) {
    for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = entry.file_name();
        if !is_ours(&name.to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        match owner_gone(&path) {
            Ok(true) => match fs::remove_dir(&path) {
                Ok(()) => log::debug!("removed cgroup {}, whose owner is gone", path.display()),
                Err(e) => log::debug!("cgroup {} of an owner that is gone stays ({e})", path.display()),
            },
            Ok(false) => {}
            Err(e) => log::debug!("cannot tell whether cgroup {} is owned ({e})", path.display()),
        }
    }
}

/// Whether `name` is one genbuild gives its cgroups (`genbuild-PID-N`).
fn is_ours(name: &str) -> bool {
    let Some((pid, n)) = name.strip_prefix("genbuild-").and_then(|rest| rest.split_once('-')) else {
        return false;
    };
    pid.parse::<u32>().is_ok() && n.parse::<u64>().is_ok()
}

/// Whether nobody holds the lock of the cgroup `dir`: its owner is gone. The exclusive
/// lock taken to find out is released at once.
fn owner_gone(dir: &Path) -> io::Result<bool> {
    let fd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::require_parent;
    use super::*;

    /// Empty cgroups nobody holds are removed; one a live owner holds, and names
    /// genbuild does not give, stay.
    #[test]
    fn the_empty_cgroups_nobody_holds_are_removed() {
        let Some(parent) = require_parent() else { return };
        let held = Cgroup::create(parent).unwrap();
        let names = ["genbuild-4000000-0".to_string(), "genbuild-1-x".into(), "genbuild-z".into()];
        for name in &names {
            fs::create_dir(parent.join(name)).unwrap();
        }
        remove_dead_owners(parent);
        let left: Vec<bool> = names.iter().map(|name| parent.join(name).exists()).collect();
        for name in &names {
            let _ = fs::remove_dir(parent.join(name));
        }
        let held_stays = held.dir().exists();
        held.remove().unwrap();
        assert_eq!(left, [false, true, true], "{names:?}");
        assert!(held_stays, "the cgroup of a live owner was removed");
    }

    /// Issue 21, item 6: a genbuild in another pid namespace, whose pids differ, sweeps
    /// only what nobody holds: this process's kept cgroup stays, a dead owner's goes.
    #[test]
    fn a_sweep_from_another_pid_namespace_spares_a_live_owners_cgroup() {
        if let Ok(parent) = std::env::var("GENBUILD_SWEEP_FROM_NAMESPACE") {
            remove_dead_owners(Path::new(&parent));
            return;
        }
        let Some(parent) = require_parent() else { return };
        let held = Cgroup::create(parent).unwrap();
        let dead = parent.join("genbuild-1-999999");
        fs::create_dir(&dead).unwrap();
        let status = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "process::cgroup::slot::tests::a_sweep_from_another_pid_namespace_spares_a_live_owners_cgroup"])
            .env("GENBUILD_SWEEP_FROM_NAMESPACE", parent)
            .stdout(std::process::Stdio::null())
            .status();
        let (held_stays, dead_gone) = (held.dir().exists(), !dead.exists());
        let _ = fs::remove_dir(&dead);
        held.remove().unwrap();
        let status = status.expect("unshare runs (util-linux)");
        assert!(status.success(), "the sweep in another pid namespace failed: {status:?}");
        assert!(held_stays, "a live process's cgroup was swept from another pid namespace");
        assert!(dead_gone, "a dead owner's cgroup was not swept");
    }
}
