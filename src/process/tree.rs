//! Containment without cgroups: the process tree in `/proc`.
//!
//! Nix builders call `setsid`, so a kill of the command's process group alone leaves
//! them running; they are found by walking the tree down from the command. A process
//! whose parent died is re-parented and lost to that walk, hence the walk *before* the
//! first signal. Every process is identified by its pid and start time, so a pid
//! recycled meanwhile is never signalled.
//!
//! One more way to find leftovers: a process that still holds the command's stdout or
//! stderr once the command exited is a leftover of it, wherever it sits in the tree
//! ([`pipe_holders`]).

use std::collections::{HashSet, VecDeque};

use rustix::process::{Pid, Signal};

/// A process: its pid and its start time (`None` once it is gone).
pub(super) type ProcId = (i32, Option<u64>);

/// `pid` with its start time.
pub(super) fn proc_id(pid: i32) -> ProcId {
    (pid, start_time(pid))
}

/// Every process below `roots` (not including them unless they are below another
/// root), with its start time so that a recycled pid is never mistaken for it.
pub(super) fn descendants(roots: &HashSet<ProcId>) -> HashSet<ProcId> {
    walk(roots, has_children_lists())
}

/// SIGKILL to each of `known` that is still the process it was.
pub(super) fn kill_all<'a>(known: impl IntoIterator<Item = &'a ProcId>) {
    for &(pid, started) in known {
        if started.is_some() && start_time(pid) == started {
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
    }
}

/// The processes other than this one holding an end of a pipe whose inode is in
/// `inodes`. Reads every `/proc/PID/fd`: only worth it when a pipe outlives its
/// command.
pub(super) fn pipe_holders(inodes: &[u64]) -> Vec<ProcId> {
    let me = std::process::id() as i32;
    let names: Vec<String> = inodes.iter().map(|i| format!("pipe:[{i}]")).collect();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| names.iter().any(|n| target.as_os_str() == &**n))
            })
        })
        .map(proc_id)
        .collect()
}

fn walk(roots: &HashSet<ProcId>, children_lists: bool) -> HashSet<ProcId> {
    let mut found = HashSet::new();
    let mut queue: VecDeque<i32> = roots.iter().map(|&(pid, _)| pid).collect();
    // Without the kernel's children lists, one scan of /proc serves the whole walk.
    let table = if children_lists { Vec::new() } else { process_table() };
    while let Some(parent) = queue.pop_front() {
        let children: Vec<ProcId> = if children_lists {
            children_of(parent).into_iter().map(proc_id).collect()
        } else {
            table
                .iter()
                .filter(|&&(_, ppid, _)| ppid == parent)
                .map(|&(pid, _, started)| (pid, Some(started)))
                .collect()
        };
        for child in children {
            if child.1.is_some() && found.insert(child) {
                queue.push_back(child.0);
            }
        }
    }
    found
}

/// Whether the kernel lists each task's children (`/proc/PID/task/TID/children`,
/// CONFIG_PROC_CHILDREN): a walk then reads only the subtree, not every process.
fn has_children_lists() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| {
        let me = std::process::id();
        std::path::Path::new(&format!("/proc/{me}/task/{me}/children")).exists()
    })
}

/// The children of every thread of `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<i32>>())
        .collect()
}

/// `(pid, ppid, start time)` of every process, from /proc.
fn process_table() -> Vec<(i32, i32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|entry| {
        let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let (ppid, started) = stat_fields(pid)?;
        Some((pid, ppid, started))
    })
    .collect()
}

fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid).map(|(_, started)| started)
}

/// `(ppid, starttime)` from `/proc/PID/stat`; the command name may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn stat_fields(pid: i32) -> Option<(i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, starttime field 22.
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let me = std::process::id() as i32;
        let (ppid, _) = stat_fields(me).expect("own stat");
        assert_eq!(ppid, rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get()));
    }

    #[test]
    fn both_tree_walks_find_the_same_descendants() {
        let mut child =
            Command::new("sh").args(["-c", "sleep 30 & (sleep 30 & wait) & wait"]).spawn().unwrap();
        let root: HashSet<ProcId> = [(child.id() as i32, None)].into();
        let deadline = Instant::now() + Duration::from_secs(10);
        let found = loop {
            let found = walk(&root, false);
            if found.len() == 3 || Instant::now() > deadline {
                break found;
            }
        };
        assert_eq!(found.len(), 3, "below sh: its subshell and two sleeps: {found:?}");
        if has_children_lists() {
            assert_eq!(walk(&root, true), found);
        }
        kill_all(&found);
        let _ = child.kill();
        child.wait().unwrap();
    }

    #[test]
    fn the_holder_of_a_pipe_is_found_by_its_inode() {
        use std::os::unix::fs::MetadataExt;
        let mut child = Command::new("sleep").arg("30").stdout(std::process::Stdio::piped()).spawn().unwrap();
        let pipe = child.stdout.take().unwrap();
        let inode = std::fs::File::from(std::os::fd::OwnedFd::from(pipe)).metadata().unwrap().ino();
        let holders = pipe_holders(&[inode]);
        let _ = child.kill();
        child.wait().unwrap();
        assert_eq!(holders.iter().map(|h| h.0).collect::<Vec<_>>(), [child.id() as i32]);
    }
}
