//! Containment without cgroups: the process tree in `/proc`.
//!
//! Nix builders call `setsid`, so a kill of the command's process group alone leaves
//! them running; they are found by walking the tree down from the command, and from
//! every process still in its group. A process whose parent died is re-parented and
//! lost to that walk, hence the walk *before* the first signal.
//!
//! Every process is identified by its pid and start time, so that a pid recycled
//! meanwhile is neither walked into nor signalled: a process's children are only taken
//! if it still has its start time once they were read, and a signal goes through a
//! pidfd opened before the start time is checked (the pidfd cannot move to another
//! process, so the check holds when the signal is sent).
//!
//! One more way to find leftovers: a process that still holds the command's stdout or
//! stderr once the command exited is a leftover of it, wherever it sits in the tree
//! ([`pipe_holders`]).

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use rustix::fd::{AsFd, OwnedFd};
use rustix::io::Errno;
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

/// A process: its pid and its start time (`None` once it is gone).
pub(super) type ProcId = (i32, Option<u64>);

/// `pid` with its start time.
pub(super) fn proc_id(pid: i32) -> ProcId {
    (pid, start_time(pid))
}

/// Every process below `roots` (not including them unless they are below another
/// root), with its start time so that a recycled pid is never mistaken for it. A root
/// that is no longer the process it was (gone, or its pid recycled) has none.
pub(super) fn descendants(roots: &HashSet<ProcId>) -> HashSet<ProcId> {
    walk(roots, has_children_lists())
}

/// The live processes (not zombies) of process group `pgid`.
pub(super) fn group_members(pgid: i32) -> Vec<ProcId> {
    all_pids()
        .filter_map(|pid| {
            let stat = stat(pid)?;
            (stat.pgrp == pgid && !matches!(stat.state, 'Z' | 'X')).then_some((pid, Some(stat.started)))
        })
        .collect()
}

/// SIGKILL to each of `known` that is still the process it was; the pidfds of those
/// signalled, to await their end with [`wait_gone`].
pub(super) fn kill_all<'a>(known: impl IntoIterator<Item = &'a ProcId>) -> Vec<OwnedFd> {
    let mut signalled = Vec::new();
    for &(pid, started) in known {
        let (Some(started), Some(raw)) = (started, Pid::from_raw(pid)) else { continue };
        match pidfd_open(raw, PidfdFlags::empty()) {
            // Whatever has the pid now is pinned; if it has the start time, it is ours.
            Ok(pidfd)
                if start_time(pid) == Some(started) && pidfd_send_signal(&pidfd, Signal::KILL).is_ok() =>
            {
                signalled.push(pidfd);
            }
            // No pidfds (Linux before 5.3): the check, then the signal by pid.
            Err(Errno::NOSYS) if start_time(pid) == Some(started) => {
                let _ = rustix::process::kill_process(raw, Signal::KILL);
            }
            _ => {}
        }
    }
    signalled
}

/// Until every process of `pidfds` has exited (a pidfd is readable once its process
/// is a zombie or gone), or `limit` passed; whether they all have.
pub(super) fn wait_gone(pidfds: &[OwnedFd], limit: Duration) -> bool {
    let deadline = super::deadline_after(limit);
    pidfds.iter().all(|pidfd| matches!(super::poll::readable_until(pidfd.as_fd(), deadline), Ok(true)))
}

/// The processes other than this one holding an end of a pipe whose inode is in
/// `inodes`. Reads every `/proc/PID/fd`: only worth it when a pipe outlives its
/// command.
///
/// A child of this process that has not called `exec` yet is not one: it is another
/// command being started, which holds copies of all our fds (this pipe's read end
/// included) until its `exec` closes them.
pub(super) fn pipe_holders(inodes: &[u64]) -> Vec<ProcId> {
    let me = std::process::id() as i32;
    let names: Vec<String> = inodes.iter().map(|i| format!("pipe:[{i}]")).collect();
    let own_exe = std::fs::read_link("/proc/self/exe").ok();
    let starting = |pid: i32| {
        stat(pid).is_some_and(|s| s.ppid == me)
            && own_exe.is_some()
            && std::fs::read_link(format!("/proc/{pid}/exe")).ok() == own_exe
    };
    all_pids()
        .filter(|&pid| pid != me && !starting(pid))
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
    let mut queue: VecDeque<ProcId> = roots.iter().copied().collect();
    // Without the kernel's children lists, one scan of /proc serves the whole walk.
    let table = if children_lists { Vec::new() } else { process_table() };
    while let Some((parent, started)) = queue.pop_front() {
        let Some(started) = started else { continue };
        let children: Vec<ProcId> = if children_lists {
            children_of(parent)
                .into_iter()
                .filter_map(|pid| {
                    let stat = stat(pid)?;
                    (stat.ppid == parent).then_some((pid, Some(stat.started)))
                })
                .collect()
        } else {
            table
                .iter()
                .filter(|&&(_, ppid, _)| ppid == parent)
                .map(|&(pid, _, started)| (pid, Some(started)))
                .collect()
        };
        // Read after its children: if `parent` is still the process it was, they were
        // its own; if its pid was recycled, they are a stranger's.
        if start_time(parent) != Some(started) {
            continue;
        }
        for child in children {
            if found.insert(child) {
                queue.push_back(child);
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

/// The pid of every process, from /proc.
fn all_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
}

/// `(pid, ppid, start time)` of every process, from /proc.
fn process_table() -> Vec<(i32, i32, u64)> {
    all_pids().filter_map(|pid| stat(pid).map(|stat| (pid, stat.ppid, stat.started))).collect()
}

fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|stat| stat.started)
}

/// What the tree walk needs of `/proc/PID/stat`.
struct Stat {
    state: char,
    ppid: i32,
    pgrp: i32,
    /// In clock ticks since boot.
    started: u64,
}

/// `/proc/PID/stat`; the command name may hold spaces and parentheses, so fields are
/// counted from the last `)`.
fn stat(pid: i32) -> Option<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, pgrp 5, starttime 22.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        started: fields.get(19)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// Another command being started (a child of ours before its `exec`) holds a copy
    /// of a pipe's read end for a moment: it is not taken for the pipe's holder, which
    /// would kill it. A process that holds the pipe after its `exec` is.
    #[test]
    fn a_child_of_ours_before_its_exec_does_not_hold_a_pipe() {
        use std::os::unix::process::CommandExt;
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let inode = std::fs::File::from(read.try_clone().unwrap()).metadata().unwrap();
        let inode = std::os::unix::fs::MetadataExt::ino(&inode);
        let (ready_r, ready_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let ready_fd = std::os::fd::AsRawFd::as_raw_fd(&ready_w);
        let mut starting = Command::new("true");
        // SAFETY: write(2) and nanosleep(2) only, both async-signal-safe.
        unsafe {
            starting.pre_exec(move || {
                libc::write(ready_fd, b"r".as_ptr().cast(), 1);
                let pause = libc::timespec { tv_sec: 2, tv_nsec: 0 };
                libc::nanosleep(&pause, std::ptr::null_mut());
                Ok(())
            });
        }
        let spawner = std::thread::spawn(move || starting.spawn().unwrap().wait().unwrap());
        rustix::io::read(&ready_r, &mut [0u8; 1]).unwrap();
        let holders: Vec<i32> = pipe_holders(&[inode]).into_iter().map(|(pid, _)| pid).collect();
        spawner.join().unwrap();
        assert_eq!(holders, Vec::<i32>::new(), "a child before its exec was taken for a holder");
        let mut holder = Command::new("sleep")
            .arg("30")
            .stdout(std::process::Stdio::from(std::fs::File::from(write)))
            .spawn()
            .unwrap();
        let holders: Vec<i32> = pipe_holders(&[inode]).into_iter().map(|(pid, _)| pid).collect();
        holder.kill().unwrap();
        holder.wait().unwrap();
        assert_eq!(holders, [holder.id() as i32]);
    }

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let me = std::process::id() as i32;
        let stat = stat(me).expect("own stat");
        assert_eq!(stat.ppid, rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get()));
        let pgrp = rustix::process::getpgrp().as_raw_nonzero().get();
        assert_eq!(stat.pgrp, pgrp);
        assert!("RS".contains(stat.state), "{}", stat.state);
    }

    #[test]
    fn both_tree_walks_find_the_same_descendants() {
        let mut child =
            Command::new("sh").args(["-c", "sleep 30 & (sleep 30 & wait) & wait"]).spawn().unwrap();
        let root: HashSet<ProcId> = [proc_id(child.id() as i32)].into();
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

    /// A root whose pid now belongs to another process (its start time differs) is not
    /// walked into: that process's children are a stranger's, never to be killed.
    #[test]
    fn a_root_whose_pid_was_recycled_is_not_walked_into() {
        let mut stranger = Command::new("sh").args(["-c", "sleep 30 & wait"]).spawn().unwrap();
        let pid = stranger.id() as i32;
        let real = proc_id(pid);
        let deadline = Instant::now() + Duration::from_secs(10);
        while walk(&[real].into(), false).is_empty() {
            assert!(Instant::now() < deadline, "sh never started its sleep");
            std::thread::yield_now();
        }
        // The process once known under this pid started earlier: it is gone, the pid reused.
        let recycled: HashSet<ProcId> = [(pid, real.1.map(|t| t.saturating_sub(100)))].into();
        let found = [walk(&recycled, false), walk(&recycled, true), descendants(&recycled)];
        let below = walk(&[real].into(), false);
        kill_all(&below);
        let _ = stranger.kill();
        stranger.wait().unwrap();
        assert_eq!(below.len(), 1, "{below:?}");
        for found in found {
            assert!(found.is_empty(), "children of a stranger found through a recycled pid: {found:?}");
        }
    }

    /// Processes known by a start time they no longer have are not signalled.
    #[test]
    fn kill_all_spares_a_pid_whose_start_time_differs() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let (pid, started) = proc_id(child.id() as i32);
        kill_all(&[(pid, started.map(|t| t + 1)), (pid, None)]);
        let alive = child.try_wait().unwrap().is_none();
        kill_all(&[(pid, started)]);
        let status = child.wait().unwrap();
        assert!(alive, "a process known by another start time was killed");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
    }

    #[test]
    fn group_members_are_the_live_processes_of_the_group() {
        use std::os::unix::process::CommandExt;
        let mut leader =
            Command::new("sh").args(["-c", "sleep 30 & sleep 30 & wait"]).process_group(0).spawn().unwrap();
        let pgid = leader.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(10);
        while group_members(pgid).len() < 3 {
            assert!(Instant::now() < deadline, "{:?}", group_members(pgid));
            std::thread::yield_now();
        }
        let members = group_members(pgid);
        let _ = rustix::process::kill_process_group(Pid::from_raw(pgid).unwrap(), Signal::KILL);
        leader.wait().unwrap();
        assert_eq!(members.len(), 3, "{members:?}");
        assert!(members.iter().any(|m| m.0 == pgid), "the leader is a member: {members:?}");
        // The leader reaped, its group is empty (its sleeps die with the group kill).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !group_members(pgid).is_empty() {
            assert!(Instant::now() < deadline, "{:?}", group_members(pgid));
            std::thread::yield_now();
        }
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
