//! A cgroup v2 of its own for every command: the kernel's containment, which no
//! `setsid`, double fork or re-parenting escapes.
//!
//! The cgroup is created before the spawn, and the child is born in it or enters it
//! before `exec` ([`super::spawn`]), so not even the command's first instruction runs
//! outside it. Killing writes "1" to `cgroup.kill` (Linux ≥ 5.14), or, on older
//! kernels, freezes the cgroup (`cgroup.freeze`, Linux ≥ 5.2), SIGKILLs every pid
//! listed in it and thaws it. Kernels 4.5 to 5.1 have cgroup v2 but neither file: a
//! cgroup there cannot kill a `setsid` daemon, so it is not used (under
//! [`Containment::Auto`], such commands are contained by their process tree). The
//! cgroup is empty when `cgroup.events` says `populated 0` (awaited with `poll`, which
//! the kernel wakes on every change of that file); then it is removed, or kept empty
//! for the next command ([`CgroupSlot`]). A cgroup that could not be set up completely
//! is removed on the spot: nothing is left behind by a failure half-way.
//!
//! **Every file the kill needs is opened when the cgroup is created** (the kill file,
//! `cgroup.procs` for reading, `cgroup.events`), numbered 3 or more: a process at its
//! limit of open files (a busy agent may be) still kills, lists and awaits its
//! commands' cgroups. A read that fails is never taken for an empty list, and a cgroup
//! is never given up while a process lives in it.
//!
//! **Ownership** is a shared `flock` on the cgroup's directory, held as long as the
//! cgroup is (its directory fd is kept open): the sweep of cgroups left by processes
//! that are gone ([`slot`]) removes only those nobody holds, which works across pid
//! namespaces (a container sharing the cgroup tree sees other pids than the host).
//!
//! [`Containment::Auto`] uses a child of this process's own cgroup, found from
//! `/proc/self/mountinfo` (where cgroup2 is mounted: `/sys/fs/cgroup` on unified hosts,
//! `/sys/fs/cgroup/unified` on hybrid ones) and `/proc/self/cgroup` (the `0::` line),
//! never from a fixed path.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::process::Pid;

use super::fds::above_stdio;
use super::poll::{poll_until, Polled};
use super::{deadline_after, Containment};

mod mount;
mod resources;
mod slot;

pub(super) use mount::auto_parent;
pub(super) use resources::{Enforced, Resources};
pub(crate) use slot::CgroupSlot;

/// How long [`Cgroup::kill_until_empty`] waits after each kill before killing again.
const KILL_ROUND: Duration = Duration::from_millis(100);

/// A command's own cgroup, from its creation to its removal.
pub(super) struct Cgroup {
    dir: PathBuf,
    /// Its open files; taken only by the drop that hands it to a reaper.
    files: Option<Files>,
    /// Once `cgroup.kill` was written: Linux 6.18 kills children cloned into it.
    killed: AtomicBool,
    /// Once the kernel enforced a memory limit: its peak and events are the command's,
    /// so it is not kept for the next.
    memory_enforced: AtomicBool,
    /// Removed, or deliberately left in place: nothing for the drop to do.
    removed: bool,
}

/// The files of a cgroup, open from its creation to its removal.
struct Files {
    /// Its directory: children are cloned into it, and its shared `flock` marks the
    /// cgroup as owned.
    dir_fd: OwnedFd,
    /// Its `cgroup.procs`, for writing: children enter by it.
    procs: OwnedFd,
    /// Its `cgroup.procs`, for reading: the processes in it.
    procs_read: OwnedFd,
    /// Its `cgroup.events`, for `populated`.
    events: OwnedFd,
    /// Its `cgroup.stat`, for `nr_descendants`.
    stat: OwnedFd,
    /// What kills its processes.
    killer: Killer,
}

/// The file that kills a cgroup's processes, open from its creation.
enum Killer {
    /// `cgroup.kill` (Linux 5.14).
    Kill(OwnedFd),
    /// `cgroup.freeze` (Linux 5.2): freeze, SIGKILL every listed process, thaw.
    Freeze(OwnedFd),
}

/// What a child started by std (see [`super::spawn`]) runs between `fork` and `exec` to
/// enter the cgroup: a `write(2)` of "0" to its own copy of `cgroup.procs`, numbered 3
/// or more (the child's stdio, set up before the hook runs, overwrites 0–2). The hook
/// owns that fd: it is open as long as the hook is. Disabled for a retry outside any
/// cgroup.
pub(super) struct EntryHook {
    procs: OwnedFd,
    enabled: AtomicBool,
}

impl EntryHook {
    /// Async-signal-safe: one atomic load and one system call, no allocation.
    pub(super) fn enter(&self) -> io::Result<()> {
        if !self.enabled.load(Ordering::Relaxed) {
            return Ok(());
        }
        rustix::io::write(&self.procs, b"0").map(drop).map_err(io::Error::from)
    }

    pub(super) fn disable(&self) {
        self.enabled.store(false, Ordering::Relaxed);
    }
}

impl Cgroup {
    /// The cgroup `containment` asks for: `None` for the process tree (also when
    /// [`Containment::Auto`] finds no writable cgroup v2, or one that cannot kill), an
    /// error when [`Containment::Cgroup`]'s directory does not take a child or its
    /// cgroups cannot kill. A cgroup kept in `slot` under the same parent is used again.
    pub(super) fn for_command(
        containment: &Containment,
        slot: &CgroupSlot,
    ) -> Result<Option<Cgroup>, String> {
        let parent = match containment {
            Containment::ProcessTree => return Ok(None),
            Containment::Auto => match auto_parent() {
                Some(parent) => parent,
                None => return Ok(None),
            },
            Containment::Cgroup(parent) => parent,
        };
        if let Some(cgroup) = slot.take(parent) {
            return Ok(Some(cgroup));
        }
        let created = Cgroup::create(parent);
        if *containment == Containment::Auto {
            return match created {
                Ok(cgroup) => Ok(Some(cgroup)),
                Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                    static LOGGED: AtomicBool = AtomicBool::new(false);
                    if !LOGGED.swap(true, Ordering::Relaxed) {
                        log::debug!(
                            "cgroups under {} {e}: commands are contained by their process tree",
                            parent.display()
                        );
                    }
                    Ok(None)
                }
                Err(e) => {
                    log::debug!("cannot create a cgroup under {} ({e}): process tree", parent.display());
                    Ok(None)
                }
            };
        }
        created.map(Some).map_err(|e| {
            if e.kind() == io::ErrorKind::Unsupported {
                format!(
                    "Containment::Cgroup({}): its cgroups {e}; use Containment::Auto or \
                     Containment::ProcessTree, which contain commands by their process tree on this kernel",
                    parent.display()
                )
            } else {
                format!(
                    "cannot create a cgroup for the command under {} ({e}); it must be a writable \
                     cgroup v2 directory (or use Containment::Auto, which falls back to the process tree)",
                    parent.display()
                )
            }
        })
    }

    /// A new child cgroup of `parent`, named after this process and a counter, owned
    /// (locked) by it. An error of kind `Unsupported` when the kernel gives it no way to
    /// kill all its processes.
    pub(super) fn create(parent: &Path) -> io::Result<Cgroup> {
        prepare(parent);
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let mut attempts = 0;
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = parent.join(format!("genbuild-{}-{n}", std::process::id()));
            match fs::create_dir(&dir) {
                Ok(()) => {}
                // Left by an earlier process with the same pid: not ours to remove.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 100 => {
                    attempts += 1;
                    continue;
                }
                Err(e) => return Err(e),
            }
            match Cgroup::open(dir.clone()) {
                Ok(cgroup) => return Ok(cgroup),
                // Swept by another process between its creation and its lock.
                Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() && attempts < 100 => {
                    attempts += 1
                }
                Err(e) => {
                    let _ = fs::remove_dir(&dir);
                    return Err(e);
                }
            }
        }
    }

    /// The cgroup just created at `dir`, locked and with its files open.
    fn open(dir: PathBuf) -> io::Result<Cgroup> {
        let open = |path: &Path, flags: OFlags| -> io::Result<OwnedFd> {
            let fd = rustix::fs::open(path, flags | OFlags::CLOEXEC, Mode::empty())?;
            Ok(above_stdio(fd)?)
        };
        let dir_fd = open(&dir, OFlags::RDONLY | OFlags::DIRECTORY)?;
        rustix::fs::flock(&dir_fd, FlockOperation::NonBlockingLockShared)?;
        let procs = open(&dir.join("cgroup.procs"), OFlags::WRONLY)?;
        let procs_read = open(&dir.join("cgroup.procs"), OFlags::RDONLY)?;
        let events = open(&dir.join("cgroup.events"), OFlags::RDONLY)?;
        let stat = open(&dir.join("cgroup.stat"), OFlags::RDONLY)?;
        let killer = match open(&newer_file(&dir, "cgroup.kill"), OFlags::WRONLY) {
            Ok(kill) => Killer::Kill(kill),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match open(&newer_file(&dir, "cgroup.freeze"), OFlags::WRONLY) {
                    Ok(freeze) => Killer::Freeze(freeze),
                    Err(e) if e.kind() == io::ErrorKind::NotFound && dir.exists() => {
                        return Err(io::Error::new(
                            io::ErrorKind::Unsupported,
                            "cannot kill their processes: this kernel has neither cgroup.kill (Linux 5.14) \
                             nor cgroup.freeze (Linux 5.2)",
                        ));
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let files = Files { dir_fd, procs, procs_read, events, stat, killer };
        Ok(Cgroup {
            dir,
            files: Some(files),
            killed: AtomicBool::new(false),
            memory_enforced: AtomicBool::new(false),
            removed: false,
        })
    }

    fn files(&self) -> &Files {
        self.files.as_ref().expect("a cgroup's files are open until it is dropped")
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The hook a child started by std runs to enter this cgroup, with an fd of its own.
    pub(super) fn entry_hook(&self) -> io::Result<Arc<EntryHook>> {
        let procs = rustix::io::fcntl_dupfd_cloexec(&self.files().procs, 3)?;
        Ok(Arc::new(EntryHook { procs, enabled: AtomicBool::new(true) }))
    }

    /// Where [`super::clone`] starts a child in it.
    pub(super) fn target(&self) -> super::clone::Target<'_> {
        super::clone::Target { dir: self.files().dir_fd.as_fd(), procs: self.files().procs.as_fd() }
    }

    /// Empty (the caller made sure), not frozen, no cgroup below it, and never killed
    /// with `cgroup.kill`: as created.
    pub(super) fn reusable(&self) -> bool {
        if self.killed.load(Ordering::Relaxed) || self.memory_enforced.load(Ordering::Relaxed) {
            return false;
        }
        let (Ok(events), Ok(stat)) = (read_at_start(&self.files().events), read_at_start(&self.files().stat))
        else {
            return false;
        };
        events.lines().any(|l| l == "populated 0")
            && !events.lines().any(|l| l == "frozen 1")
            && stat.lines().any(|l| l == "nr_descendants 0")
    }

    /// SIGKILL to every process in the cgroup and below; returns at once (see
    /// [`wait_empty`](Cgroup::wait_empty)). Opens no file.
    pub(super) fn kill(&self) -> io::Result<()> {
        match &self.files().killer {
            Killer::Kill(kill) => {
                self.killed.store(true, Ordering::Relaxed);
                rustix::io::write(kill, b"1").map(drop).map_err(io::Error::from)
            }
            Killer::Freeze(freeze) => self.freeze_and_kill(freeze.as_fd()),
        }
    }

    /// Kernels before 5.14 have no `cgroup.kill`: a frozen cgroup cannot fork, so its
    /// list of pids is complete; SIGKILL reaches frozen tasks in cgroup v2.
    fn freeze_and_kill(&self, freeze: BorrowedFd<'_>) -> io::Result<()> {
        rustix::io::write(freeze, b"1")?;
        self.wait_for("frozen 1", Duration::from_secs(1));
        let listed = self.listed();
        for &pid in listed.as_deref().unwrap_or_default() {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        rustix::io::write(freeze, b"0")?;
        listed.map(drop)
    }

    /// Whether no process is left in the cgroup or below it. A cgroup whose
    /// `cgroup.events` cannot be read is not known to be empty, unless it is gone.
    pub(super) fn is_empty(&self) -> bool {
        self.says("populated 0")
    }

    /// Until the cgroup is empty, or `limit` passed; whether it is.
    ///
    /// The kernel notifies changes of `cgroup.events` at most every 10 ms, so the
    /// processes listed in the cgroup are also awaited through pidfds (a process leaves
    /// its cgroup before its pidfd becomes readable): the wait ends as soon as either
    /// says so. `populated 0` is what counts: a listed pid recycled before its pidfd was
    /// opened names a stranger, whose pidfd is then simply never awaited to the end.
    /// Without pidfds (none can be opened at the limit of open files) the events alone
    /// end it.
    pub(super) fn wait_empty(&self, limit: Duration) -> bool {
        if self.is_empty() {
            return true;
        }
        let listed = self.listed().unwrap_or_default();
        self.wait_empty_watching(&pidfds(&listed), limit)
    }

    /// [`wait_empty`](Cgroup::wait_empty), if every process in the cgroup and below it
    /// belongs to the process group `group` (which got SIGKILL); `false` at once if one
    /// does not, or if they cannot be listed.
    pub(super) fn wait_group_empty(&self, group: Pid, limit: Duration) -> bool {
        if self.is_empty() {
            return true;
        }
        let listed = match self.listed() {
            Ok(listed) => listed,
            Err(e) => {
                log::debug!("cannot list the processes of cgroup {} ({e})", self.dir.display());
                return false;
            }
        };
        // Gone meanwhile: nothing left to wait for.
        let member = |pid: &Pid| rustix::process::getpgid(Some(*pid)).map_or(true, |g| g == group);
        listed.iter().all(member) && self.wait_empty_watching(&pidfds(&listed), limit)
    }

    /// The processes in the cgroup and below it.
    pub(super) fn listed(&self) -> io::Result<Vec<Pid>> {
        let mut pids = parse_pids(&read_all(&self.files().procs_read)?);
        // Cgroups a command running as root created below its own.
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pids.extend(pids_below(&entry.path())?);
            }
        }
        Ok(pids.into_iter().filter_map(Pid::from_raw).collect())
    }

    /// Kills what is listed in the cgroup round after round until it is empty or `limit`
    /// passed; whether it is. One kill does not reach a process that came in after it:
    /// moved in by root, or forked while `cgroup.kill` ran (Linux 6.18 let a shell's
    /// `sleep` through once in a few thousand kills timed like that). Killing a process
    /// that is already dying changes nothing, so the rounds cost nothing in the common
    /// case, where the first wait ends in microseconds.
    pub(super) fn kill_until_empty(&self, limit: Duration) -> bool {
        let deadline = deadline_after(limit);
        loop {
            let round =
                deadline.map_or(KILL_ROUND, |d| d.saturating_duration_since(Instant::now()).min(KILL_ROUND));
            if self.wait_empty(round) {
                return true;
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return false;
            }
            if let Err(e) = self.kill() {
                log::warn!("cannot kill cgroup {} again ({e}); trying again", self.dir.display());
            }
        }
    }

    /// [`wait_empty`](Cgroup::wait_empty), with the pidfds of what was listed.
    fn wait_empty_watching(&self, pidfds: &[OwnedFd], limit: Duration) -> bool {
        use rustix::event::{PollFd, PollFlags};
        let deadline = deadline_after(limit);
        let mut waiting: Vec<&OwnedFd> = pidfds.iter().collect();
        loop {
            // Reading `cgroup.events` also re-arms its notification.
            if self.is_empty() {
                return true;
            }
            let mut fds = vec![PollFd::new(&self.files().events, PollFlags::PRI)];
            fds.extend(waiting.iter().map(|fd| PollFd::new(*fd, PollFlags::IN)));
            match poll_until(&mut fds, deadline) {
                Ok(Polled::Ready) => {}
                Ok(Polled::Again) => continue,
                Ok(Polled::Passed) => return self.is_empty(),
                Err(e) => {
                    log::error!("cannot poll cgroup {} ({e})", self.dir.display());
                    return self.is_empty();
                }
            }
            let exited: Vec<bool> = fds[1..].iter().map(|fd| !fd.revents().is_empty()).collect();
            let mut exited = exited.into_iter();
            waiting.retain(|_| !exited.next().unwrap_or(false));
        }
    }

    fn wait_for(&self, line: &str, limit: Duration) -> bool {
        use rustix::event::{PollFd, PollFlags};
        let deadline = deadline_after(limit);
        loop {
            if self.says(line) {
                return true;
            }
            let mut fds = [PollFd::new(&self.files().events, PollFlags::PRI)];
            match poll_until(&mut fds, deadline) {
                Ok(Polled::Ready | Polled::Again) => {}
                Ok(Polled::Passed) | Err(_) => return self.says(line),
            }
        }
    }

    /// Whether `cgroup.events` holds `line` (read afresh, which also re-arms `poll`). A
    /// cgroup that is gone is empty; one whose file cannot be read says nothing.
    fn says(&self, line: &str) -> bool {
        match read_at_start(&self.files().events) {
            Ok(events) => events.lines().any(|l| l == line),
            Err(e) if gone(&e) => line.starts_with("populated 0"),
            Err(e) => {
                log::warn!("cannot read {}/cgroup.events ({e})", self.dir.display());
                false
            }
        }
    }

    /// Removes the cgroup (and any cgroup its processes created below it); it must be
    /// empty.
    pub(super) fn remove(mut self) -> io::Result<()> {
        self.removed = true;
        remove_tree(&self.dir)
    }
}

impl Drop for Cgroup {
    /// A cgroup abandoned half-way (the command could not start, or a panic) is killed,
    /// awaited and removed all the same; one still populated after that is handed to a
    /// reaper thread, which never gives it up while a process lives in it.
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        if !self.is_empty() {
            if let Err(e) = self.kill() {
                log::warn!("cannot kill the processes of cgroup {} ({e})", self.dir.display());
            }
            if !self.kill_until_empty(super::wait::REAP_LIMIT) {
                let cgroup = Cgroup {
                    dir: self.dir.clone(),
                    files: self.files.take(),
                    killed: AtomicBool::new(self.killed.load(Ordering::Relaxed)),
                    memory_enforced: AtomicBool::new(false),
                    removed: false,
                };
                super::wait::hand_off(None, Some(cgroup), "an abandoned command");
                return;
            }
        }
        if let Err(e) = remove_tree(&self.dir) {
            log::warn!("cannot remove cgroup {}: {e}", self.dir.display());
        }
    }
}

/// What a parent gets before genbuild's first cgroup in it, once per process: the
/// empty cgroups of owners that are gone removed, the controllers enabled.
fn prepare(parent: &Path) {
    static PREPARED: parking_lot::Mutex<Vec<PathBuf>> = parking_lot::Mutex::new(Vec::new());
    {
        let mut prepared = PREPARED.lock();
        if prepared.iter().any(|p| p == parent) {
            return;
        }
        prepared.push(parent.to_path_buf());
    }
    slot::remove_dead_owners(parent);
    resources::enable_controllers(parent);
}

/// Whether a cgroup file's error says the cgroup is gone.
fn gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENOENT))
}

/// What a small cgroup file holds now.
fn read_at_start(file: &OwnedFd) -> io::Result<String> {
    let mut buf = [0u8; 512];
    let n = rustix::io::pread(file, &mut buf, 0)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// All a cgroup file holds now, however long, read through an open fd.
fn read_all(file: &OwnedFd) -> io::Result<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match rustix::io::pread(file, &mut buf, out.len() as u64)? {
            0 => return Ok(String::from_utf8_lossy(&out).into_owned()),
            n => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn parse_pids(list: &str) -> Vec<i32> {
    list.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Depth first: a process running as root may have created cgroups below its own.
fn remove_tree(dir: &Path) -> io::Result<()> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => {
            let subdirs: Vec<PathBuf> = fs::read_dir(dir)?
                .flatten()
                .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
                .map(|entry| entry.path())
                .collect();
            if subdirs.is_empty() {
                return Err(e);
            }
            for subdir in subdirs {
                remove_tree(&subdir)?;
            }
            fs::remove_dir(dir)
        }
    }
}

/// `dir`'s `name`, a file that older kernels lack; in unit tests, missing where the
/// test pretends to run on Linux 4.5 to 5.1.
fn newer_file(dir: &Path, name: &str) -> PathBuf {
    #[cfg(test)]
    if tests::PRETEND_LINUX_5_1.with(std::cell::Cell::get) {
        return dir.join(format!("{name}.missing-before-linux-5.2"));
    }
    dir.join(name)
}

/// Pidfds of those of `pids` still alive.
fn pidfds(pids: &[Pid]) -> Vec<OwnedFd> {
    pids.iter()
        .filter_map(|&pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok())
        .collect()
}

/// Every pid in `dir`'s `cgroup.procs` and in those of the cgroups below it.
fn pids_below(dir: &Path) -> io::Result<Vec<i32>> {
    let mut pids = parse_pids(&fs::read_to_string(dir.join("cgroup.procs"))?);
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            pids.extend(pids_below(&entry.path())?);
        }
    }
    Ok(pids)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    thread_local! {
        /// Set: cgroups created and killed on this thread behave as on Linux 4.5 to 5.1,
        /// which have neither `cgroup.kill` nor `cgroup.freeze`.
        pub(super) static PRETEND_LINUX_5_1: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Where this process's commands get their cgroups. `None` where there is none: the
    /// test is then skipped with the reason, except under `CI=true`, where it fails (CI
    /// machines have a writable cgroup v2, and a test that cannot run must say so).
    pub(in crate::process) fn require_parent() -> Option<&'static Path> {
        let why = match auto_parent() {
            Some(parent) => match Cgroup::create(parent).and_then(Cgroup::remove) {
                Ok(()) => return Some(parent),
                Err(e) => format!("cannot create a cgroup under {} ({e})", parent.display()),
            },
            None => "no cgroup v2 hierarchy of this process is mounted".to_string(),
        };
        assert!(
            std::env::var_os("CI").is_none_or(|ci| ci != "true"),
            "CI=true, but {why}: this test needs a writable cgroup v2"
        );
        eprintln!("skipped: {why}");
        None
    }

    /// A fresh cgroup under this process's own (see [`require_parent`]).
    pub(in crate::process) fn fresh_cgroup() -> Option<Cgroup> {
        Some(Cgroup::create(require_parent()?).expect("a cgroup can be created"))
    }

    /// `program args` started by std inside a fresh cgroup (see [`require_parent`]).
    fn spawned_in_a_cgroup(program: &str, args: &[&str]) -> Option<(Cgroup, std::process::Child)> {
        use std::os::unix::process::CommandExt;
        let cgroup = fresh_cgroup()?;
        let hook = cgroup.entry_hook().unwrap();
        let mut cmd = std::process::Command::new(program);
        cmd.args(args).process_group(0);
        // SAFETY: as in `super::super::spawn`.
        unsafe { cmd.pre_exec(move || hook.enter()) };
        let child = cmd.spawn().unwrap();
        Some((cgroup, child))
    }

    /// Live processes whose command line holds `marker`.
    fn alive_with(marker: &str) -> Vec<i32> {
        fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let zombie =
                    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                !zombie && String::from_utf8_lossy(&cmdline).contains(marker)
            })
            .collect()
    }

    /// Issue 21, item 2: a process at its limit of open files kills, lists and awaits a
    /// cgroup all the same: every file that takes was opened with the cgroup.
    #[test]
    fn a_cgroup_is_killed_and_emptied_with_no_file_descriptor_to_spare() {
        if !crate::alone::alone(
            "process::cgroup::tests::a_cgroup_is_killed_and_emptied_with_no_file_descriptor_to_spare",
        ) {
            return;
        }
        let script = "setsid sh -c 'trap \"\" TERM; sleep 300' </dev/null >/dev/null 2>&1 & exec sleep 301";
        let Some((cgroup, mut child)) = spawned_in_a_cgroup("sh", &["-c", script]) else { return };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while cgroup.listed().unwrap().len() < 2 {
            assert!(std::time::Instant::now() < deadline, "{:?}", cgroup.listed());
            std::thread::yield_now();
        }
        // Every descriptor this process may still open, taken.
        let mut filler = Vec::new();
        while let Ok(fd) = rustix::fs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
            filler.push(fd);
        }
        let killed = cgroup.kill();
        let emptied = cgroup.kill_until_empty(Duration::from_secs(20));
        drop(filler);
        let status = child.wait().unwrap();
        killed.expect("cgroup.kill written with no fd to spare");
        assert!(emptied, "the cgroup did not empty");
        assert_eq!(status.signal(), Some(9));
        cgroup.remove().unwrap();
    }

    /// The cgroups of this process under `parent`.
    fn ours(parent: &Path) -> Vec<PathBuf> {
        let prefix = format!("genbuild-{}-", std::process::id());
        fs::read_dir(parent)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect()
    }

    /// Linux 4.5 to 5.1 (simulated): a cgroup cannot kill a `setsid` process that
    /// ignores SIGTERM, so `Auto` does not use one; the command runs contained by its
    /// process tree, which kills the daemon, and no cgroup is left.
    #[test]
    fn without_cgroup_kill_or_freeze_auto_contains_the_command_by_its_process_tree() {
        if require_parent().is_none() {
            return;
        }
        PRETEND_LINUX_5_1.with(|p| p.set(true));
        let nonce = format!("{}", uuid::Uuid::new_v4().as_u128() % 1_000_000_000);
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(format!(
            "setsid sh -c 'trap \"\" TERM; exec sleep 300.{nonce}' & cat /proc/self/cgroup; echo started; exec sleep 301.{nonce}"
        ));
        let cancel = super::super::CancelToken::new();
        let options = super::super::ProcessOptions::default();
        let limits = super::super::Limits {
            timeout: Duration::from_secs(60),
            deadline: std::time::Instant::now() + Duration::from_secs(60),
            cancel: &cancel,
            grace: Duration::from_millis(100),
            options: &options,
            cgroups: &CgroupSlot::default(),
            memory_limit: None,
            usage: &Default::default(),
        };
        let mut lines = Vec::new();
        let result = super::super::run(cmd.into(), &limits, &mut |_, line| {
            lines.push(line.to_string());
            if line == "started" {
                // The daemon is started (`setsid` runs before `cat`) unless it is slow:
                // wait for it, then cancel.
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while alive_with(&format!("300.{nonce}")).is_empty() {
                    assert!(std::time::Instant::now() < deadline, "the daemon never started");
                    std::thread::yield_now();
                }
                cancel.cancel(None);
            }
        });
        PRETEND_LINUX_5_1.with(|p| p.set(false));
        let left = alive_with(&nonce);
        for &pid in &left {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
        assert_eq!(result, Err(crate::error::JobError::Cancelled(None)));
        let cgroup_line =
            lines.iter().find(|l| l.starts_with("0::")).expect("the command printed its cgroup");
        assert!(
            !cgroup_line.contains("genbuild-"),
            "the command ran in a cgroup that cannot kill: {cgroup_line}"
        );
        assert!(left.is_empty(), "left alive: {left:?}");
    }

    /// Linux 4.5 to 5.1 (simulated): an explicit cgroup parent is refused with the
    /// reason and what to use instead; the half-made cgroup is removed.
    #[test]
    fn without_cgroup_kill_or_freeze_an_explicit_cgroup_is_refused() {
        let Some(parent) = require_parent() else { return };
        PRETEND_LINUX_5_1.with(|p| p.set(true));
        let explicit =
            Cgroup::for_command(&Containment::Cgroup(parent.to_path_buf()), &CgroupSlot::default())
                .map(|c| c.is_some());
        let auto = Cgroup::for_command(&Containment::Auto, &CgroupSlot::default()).map(|c| c.is_some());
        PRETEND_LINUX_5_1.with(|p| p.set(false));
        let message = explicit.unwrap_err();
        for words in ["cgroup.kill (Linux 5.14)", "cgroup.freeze (Linux 5.2)", "Containment::ProcessTree"] {
            assert!(message.contains(words), "{message}");
        }
        assert_eq!(auto, Ok(false));
        // Other tests create cgroups of their own meanwhile; none of ours stays.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !ours(parent).is_empty() {
            assert!(std::time::Instant::now() < deadline, "left: {:?}", ours(parent));
            std::thread::yield_now();
        }
    }

    /// A pidfd of a process outside the cgroup (a pid listed in it, recycled before
    /// its pidfd was opened) does not hold up the wait: `populated 0` ends it.
    #[test]
    fn a_wait_for_an_empty_cgroup_ends_whatever_a_listed_pid_became() {
        let Some((cgroup, mut inside)) = spawned_in_a_cgroup("sleep", &["30"]) else { return };
        let mut stranger = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = rustix::process::Pid::from_raw(stranger.id() as i32).unwrap();
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
        cgroup.kill().unwrap();
        let started = std::time::Instant::now();
        let empty = cgroup.wait_empty_watching(&[pidfd], Duration::from_secs(20));
        let took = started.elapsed();
        let stranger_alive = stranger.try_wait().unwrap().is_none();
        let _ = stranger.kill();
        stranger.wait().unwrap();
        inside.wait().unwrap();
        assert!(empty && took < Duration::from_secs(10), "empty: {empty} after {took:?}");
        assert!(stranger_alive);
        cgroup.remove().unwrap();
    }

    /// A process that comes into the cgroup after its kill (here moved in; in the wild
    /// also forked while `cgroup.kill` ran) is killed by the next round, not waited for
    /// until the limit.
    #[test]
    fn a_process_that_comes_in_after_the_kill_is_killed_by_the_next_round() {
        let Some((cgroup, mut inside)) = spawned_in_a_cgroup("sleep", &["30"]) else { return };
        cgroup.kill().unwrap();
        let mut late = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        fs::write(cgroup.dir().join("cgroup.procs"), late.id().to_string()).unwrap();
        let started = std::time::Instant::now();
        let empty = cgroup.kill_until_empty(Duration::from_secs(20));
        let took = started.elapsed();
        let late_alive = late.try_wait().unwrap().is_none();
        let _ = late.kill();
        let late_status = late.wait().unwrap();
        inside.wait().unwrap();
        assert!(empty && took < Duration::from_secs(10), "empty: {empty} after {took:?}");
        assert!(!late_alive);
        assert_eq!(late_status.signal(), Some(9));
        cgroup.remove().unwrap();
    }

    /// The fallback for kernels without `cgroup.kill`, on this one: a `setsid`,
    /// double-forked pair in a fresh cgroup is frozen, listed, killed; the cgroup
    /// empties and is removed.
    #[test]
    fn freezing_and_killing_empties_a_cgroup() {
        let script = "setsid sh -c 'sleep 300 & exit 0' </dev/null >/dev/null 2>&1; exec sleep 300";
        let Some((cgroup, mut child)) = spawned_in_a_cgroup("sh", &["-c", script]) else { return };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cgroup.listed().unwrap().len() < 2 {
            assert!(std::time::Instant::now() < deadline, "{:?}", cgroup.listed());
            std::thread::yield_now();
        }
        assert!(!cgroup.is_empty());
        let freeze =
            rustix::fs::open(cgroup.dir().join("cgroup.freeze"), OFlags::WRONLY, Mode::empty()).unwrap();
        cgroup.freeze_and_kill(freeze.as_fd()).unwrap();
        assert!(cgroup.wait_empty(Duration::from_secs(10)));
        assert_eq!(child.wait().unwrap().signal(), Some(9));
        let dir = cgroup.dir().to_path_buf();
        cgroup.remove().unwrap();
        assert!(!dir.exists());
    }
}
