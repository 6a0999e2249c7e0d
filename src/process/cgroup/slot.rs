//! One empty cgroup kept from a command for the next, and the sweep of those that
//! processes no longer running left behind.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicI32;
use std::sync::Arc;

use rustix::fd::AsRawFd;

use super::{Cgroup, Entry};

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
        // Another process (sharing the parent from another pid namespace) may have
        // taken it for a dead owner's and removed it.
        if !cgroup.dir.exists() {
            cgroup.removed = true;
            return None;
        }
        cgroup.entry = Entry(Arc::new(AtomicI32::new(cgroup.procs.as_raw_fd())));
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
/// kept in a [`CgroupSlot`] by a program that exited without dropping its builder);
/// once per parent and process. One that is not empty is left alone.
pub(super) fn sweep_dead_owners(parent: &Path) {
    static SWEPT: parking_lot::Mutex<Vec<PathBuf>> = parking_lot::Mutex::new(Vec::new());
    {
        let mut swept = SWEPT.lock();
        if swept.iter().any(|p| p == parent) {
            return;
        }
        swept.push(parent.to_path_buf());
    }
    remove_dead_owners(parent);
}

fn remove_dead_owners(parent: &Path) {
    let own = std::process::id();
    for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(owner) = dead_owner(&name.to_string_lossy(), own) else { continue };
        if fs::remove_dir(entry.path()).is_ok() {
            log::debug!("removed cgroup {} of process {owner}, which is gone", entry.path().display());
        }
    }
}

/// The pid in a cgroup name genbuild gives (`genbuild-PID-N`), if that process is not
/// this one and no longer runs.
fn dead_owner(name: &str, own: u32) -> Option<u32> {
    let (pid, n) = name.strip_prefix("genbuild-")?.split_once('-')?;
    let pid: u32 = pid.parse().ok()?;
    n.parse::<u64>().ok()?;
    (pid != own && !Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::super::auto_parent;
    use super::*;

    /// Empty cgroups named for processes that are gone are removed; those of a live
    /// process (pid 1) or this one, and names genbuild does not give, stay.
    #[test]
    fn the_empty_cgroups_of_processes_that_are_gone_are_removed() {
        let Some(parent) = auto_parent() else {
            eprintln!("skipped: no cgroup v2 here");
            return;
        };
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let dead = gone.id();
        gone.wait().unwrap();
        let names = [
            format!("genbuild-{dead}-0"),
            "genbuild-1-0".into(),
            format!("genbuild-{dead}-x"),
            "genbuild-z".into(),
        ];
        for name in &names {
            if fs::create_dir(parent.join(name)).is_err() {
                eprintln!("skipped: cannot create cgroups under {}", parent.display());
                return;
            }
        }
        remove_dead_owners(parent);
        let left: Vec<bool> = names.iter().map(|name| parent.join(name).exists()).collect();
        for name in &names {
            let _ = fs::remove_dir(parent.join(name));
        }
        assert_eq!(left, [false, true, true, true], "{names:?}");
        assert_eq!(dead_owner(&format!("genbuild-{}-3", std::process::id()), std::process::id()), None);
    }
}
