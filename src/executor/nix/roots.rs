//! GC roots, kept per owner, so that builders sharing a root directory never release
//! each other's roots.
//!
//! A build may be confirmed hours after its evaluation; a garbage collection in between
//! must keep the `.drv`, and the built output must stay until its generation is
//! dropped. The roots are symlinks into the store, in one directory per owner:
//!
//! ```text
//! <gc_root_dir>/                     NixOptions::gc_root_dir
//!   <owner>/                         JobContext::gc_root_owner(): the builder store's id
//!     .lock                          flock'd (shared) by every executor using this owner
//!     <hash>-<name>.drv              the root of an evaluated derivation
//!     <hash>-<name>.drv.out[-N]      the roots of its outputs (made by the build itself)
//! ```
//!
//! When `gc_root_dir` is not under Nix's `gcroots/` directory, each root is also
//! registered as an indirect root (a link in `gcroots/auto/` pointing at it), as
//! `nix-store --add-root --indirect` does; under `gcroots/` (the default) Nix finds them
//! by walking the directory.
//!
//! **A root and a running collection.** Nix's collector reads the roots once, early,
//! while it holds `<state>/gc.lock` exclusively, and deletes afterwards: a root made
//! after that scan protects nothing from that collection, even though the path is
//! still valid when the root is made. So a root is made as Nix's own `addPermRoot`
//! makes one: holding a *shared* `flock` on `gc.lock` (which waits while a collection
//! runs; the wait ends with the job's cancel or deadline), and only once it is in
//! place and the lock released is the path checked valid. A path found valid then
//! stays: a collection that starts later finds the root. (Without access to
//! `gc.lock`, for a user other than the store's owner, the root is made without the
//! lock, with a warning.)
//!
//! Guarantees:
//! * An executor creates and removes roots only in the directory of the owner it works
//!   for, and [`release_unused`](Roots::release_unused) removes only that owner's roots
//!   of derivations no longer live. Two builders over different stores (two executors
//!   or one shared executor) over the same `gc_root_dir` thus never touch each other's
//!   roots. The owner is the store's id: one store has one builder at a time (see
//!   [`Builder::new`](crate::Builder::new)); two live builders over one store would
//!   release each other's roots.
//! * A `file-*` owner (a store persisted to a file) keeps its roots across restarts:
//!   the same file gives the same owner, whose builder releases them once its
//!   generations are dropped. No one else ever removes them.
//! * A `memory-*` owner (an in-memory store) dies with its process. While an executor
//!   has used an owner's directory it holds a shared `flock` on its `.lock`; a release
//!   by any owner sweeps every `memory-*` directory nobody holds, so the roots of a
//!   process that exited (or whose executors were all dropped) do not leak. An
//!   in-memory store that outlives every executor that used it therefore loses its
//!   roots' protection.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustix::fs::FlockOperation;

use crate::job::JobContext;
use crate::process::Stream;
use crate::JobError;

/// The lock file of an owner's directory; never a root (roots end in `.drv…`).
const LOCK: &str = ".lock";

/// Owners whose directories are swept once nobody holds their lock.
const SWEPT_PREFIX: &str = "memory-";

/// The longest pause between two attempts at `gc.lock` while a collection runs.
const GC_LOCK_POLL: Duration = Duration::from_millis(50);

/// The gc roots of one executor, for every owner it works for.
#[derive(Debug)]
pub(crate) struct Roots {
    dir: PathBuf,
    gcroots: PathBuf,
    /// Nix's `<state>/gc.lock`, held exclusively by a running collection.
    gc_lock: PathBuf,
    /// Whether the failure to use `gc_lock` was reported (once per executor).
    gc_lock_warned: AtomicBool,
    held: Mutex<HashMap<String, Held>>,
}

/// An owner's directory this executor uses, and the shared lock it holds on it.
#[derive(Debug)]
struct Held {
    dir: PathBuf,
    lock: File,
}

impl Roots {
    /// Roots under `dir`, registered in `<state>/gcroots` when `dir` is outside it;
    /// `state` is Nix's state directory (`/nix/var/nix`).
    pub(crate) fn new(dir: PathBuf, state: &Path) -> Roots {
        Roots {
            dir,
            gcroots: state.join("gcroots"),
            gc_lock: state.join("gc.lock"),
            gc_lock_warned: AtomicBool::new(false),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Roots the `.drv` for `ctx`'s owner so that a garbage collection before the build
    /// keeps it. Waits while a collection runs; the caller checks the `.drv` valid
    /// afterwards (see the module documentation).
    pub(crate) fn root_drv(&self, ctx: &JobContext, drv_path: &str) -> Result<(), JobError> {
        let root = self.owner_dir(ctx.gc_root_owner())?.join(store_basename(drv_path)?);
        self.link(ctx, Path::new(drv_path), &root)
    }

    /// Where the build of `drv_path` puts the root of its output (Nix adds `-N` for
    /// further outputs).
    pub(crate) fn out_root(&self, owner: &str, drv_path: &str) -> Result<PathBuf, JobError> {
        Ok(self.owner_dir(owner)?.join(format!("{}.out", store_basename(drv_path)?)))
    }

    /// Roots `out_path` for `ctx`'s owner as the build of `drv_path` would have. Waits
    /// while a collection runs; the caller checks `out_path` valid afterwards.
    pub(crate) fn root_out(&self, ctx: &JobContext, drv_path: &str, out_path: &str) -> Result<(), JobError> {
        let root = self.out_root(ctx.gc_root_owner(), drv_path)?;
        self.link(ctx, Path::new(out_path), &root)
    }

    /// Removes the root [`root_out`](Roots::root_out) made, once its path turned out
    /// not to be valid.
    pub(crate) fn unroot_out(&self, owner: &str, drv_path: &str) {
        let Ok(root) = self.out_root(owner, drv_path) else { return };
        if let Some(link) = self.auto_link(&root) {
            let _ = std::fs::remove_file(link);
        }
        if let Err(e) = std::fs::remove_file(&root) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("cannot remove the gc root {}: {e}", root.display());
            }
        }
    }

    /// Removes `owner`'s roots of every derivation not in `live_drv_paths`, then the
    /// directories of `memory-*` owners nobody holds.
    pub(crate) fn release_unused(&self, owner: &str, live_drv_paths: &[String]) {
        match self.owner_dir(owner) {
            Ok(dir) => {
                let live: HashSet<&str> =
                    live_drv_paths.iter().filter_map(|p| Path::new(p).file_name()?.to_str()).collect();
                self.remove_roots(&dir, |name| drv_of_root(name).is_some_and(|drv| live.contains(drv)));
            }
            Err(e) => log::warn!("{e}; no gc root released"),
        }
        self.sweep_dead(owner);
    }

    /// The owner's directory, created and locked on first use.
    fn owner_dir(&self, owner: &str) -> Result<PathBuf, JobError> {
        let name = owner_name(owner)?;
        let mut held = self.held.lock();
        if let Some(h) = held.get(name) {
            // Still ours unless someone removed it behind our back.
            if same_file(&h.lock, &h.dir.join(LOCK)) {
                return Ok(h.dir.clone());
            }
        }
        let root = self.root_dir()?;
        let dir = root.join(name);
        let failed = |what: &str, e: std::io::Error| {
            JobError::Failed(format!("cannot {what} the gc root directory {}: {e}", dir.display()))
        };
        // A sweeper may remove a directory between our open and our lock (it took it
        // for dead); what we locked is then unlinked, and we start again.
        for _ in 0..100 {
            std::fs::create_dir_all(&dir).map_err(|e| failed("create", e))?;
            let lock = open_lock(&dir).map_err(|e| failed("open the lock of", e))?;
            rustix::fs::flock(&lock, FlockOperation::LockShared)
                .map_err(|e| failed("lock", std::io::Error::from(e)))?;
            if same_file(&lock, &dir.join(LOCK)) {
                held.insert(name.to_string(), Held { dir: dir.clone(), lock });
                return Ok(dir);
            }
        }
        Err(JobError::Failed(format!(
            "cannot lock the gc root directory {}: it keeps being removed",
            dir.display()
        )))
    }

    /// `gc_root_dir`, created and resolved (roots are registered by their resolved path).
    fn root_dir(&self) -> Result<PathBuf, JobError> {
        let dir = &self.dir;
        std::fs::create_dir_all(dir).map_err(|e| {
            JobError::Failed(format!("cannot create the gc root directory {}: {e}", dir.display()))
        })?;
        std::fs::canonicalize(dir).map_err(|e| {
            JobError::Failed(format!("cannot resolve the gc root directory {}: {e}", dir.display()))
        })
    }

    /// Points `root` at `target` and makes it known to the collector, while no
    /// collection runs.
    fn link(&self, ctx: &JobContext, target: &Path, root: &Path) -> Result<(), JobError> {
        let _no_collection = self.wait_for_collection(ctx, root)?;
        replace_symlink(target, root)
            .map_err(|e| JobError::Failed(format!("cannot create the gc root {}: {e}", root.display())))?;
        self.register_indirect(root)
    }

    /// A shared lock on `gc.lock`, once no collection holds it; `None` when the lock
    /// cannot be used at all (reported once). Polled without blocking, so that the
    /// job's cancel and deadline end the wait.
    fn wait_for_collection(&self, ctx: &JobContext, root: &Path) -> Result<Option<File>, JobError> {
        let unusable = |e: &dyn std::fmt::Display| {
            if !self.gc_lock_warned.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "cannot lock {} ({e}): gc roots are made without waiting for a running \
                     garbage collection, which may delete a path rooted while it runs",
                    self.gc_lock.display()
                );
            }
            Ok(None)
        };
        // Opened anew each time: a flock belongs to its open file, shared by threads.
        let lock = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.gc_lock)
        {
            Ok(lock) => lock,
            Err(e) => return unusable(&e),
        };
        let mut pause = Duration::from_millis(1);
        let mut told = false;
        loop {
            match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockShared) {
                Ok(()) => return Ok(Some(lock)),
                Err(rustix::io::Errno::WOULDBLOCK) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return unusable(&e),
            }
            ctx.check()?;
            if !std::mem::replace(&mut told, true) {
                ctx.log(
                    Stream::Stderr,
                    &format!(
                        "waiting for the running garbage collection to end before adding the gc root {}",
                        root.display()
                    ),
                );
            }
            std::thread::sleep(pause.min(ctx.deadline().saturating_duration_since(Instant::now())));
            pause = (pause * 2).min(GC_LOCK_POLL);
        }
    }

    /// Makes `root` (a symlink outside `gcroots/`) known to the collector.
    fn register_indirect(&self, root: &Path) -> Result<(), JobError> {
        let Some(link) = self.auto_link(root) else { return Ok(()) };
        std::fs::create_dir_all(link.parent().expect("in auto/"))
            .and_then(|()| replace_symlink(root, &link))
            .map_err(|e| JobError::Failed(format!("cannot register the gc root {}: {e}", link.display())))
    }

    /// The `gcroots/auto/` link registering `root`; `None` when `root` is under
    /// `gcroots/`, where Nix finds it without one.
    fn auto_link(&self, root: &Path) -> Option<PathBuf> {
        let gcroots = std::fs::canonicalize(&self.gcroots).unwrap_or_else(|_| self.gcroots.clone());
        if root.starts_with(&gcroots) {
            return None;
        }
        let name = format!("genbuild-{:016x}", fnv1a(root.as_os_str().as_encoded_bytes()));
        Some(gcroots.join("auto").join(name))
    }

    /// Removes the roots in `dir` (and the `auto/` links to them) that `keep` does not
    /// keep, and leftovers of interrupted [`replace_symlink`]s.
    fn remove_roots(&self, dir: &Path, keep: impl Fn(&str) -> bool) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut auto_links: Option<HashMap<PathBuf, Vec<PathBuf>>> = None;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let leftover = name.starts_with('.') && name.contains(".tmp-");
            if name == LOCK || (!leftover && (drv_of_root(name).is_none() || keep(name))) {
                continue;
            }
            let root = entry.path();
            let links = auto_links.get_or_insert_with(|| self.auto_links(dir));
            for link in links.get(&root).into_iter().flatten() {
                let _ = std::fs::remove_file(link);
            }
            if let Err(e) = std::fs::remove_file(&root) {
                log::warn!("cannot remove the gc root {}: {e}", root.display());
            }
        }
    }

    /// Removes the directories of `memory-*` owners (other than `except`) that no
    /// executor holds: their process exited or dropped every executor that used them.
    fn sweep_dead(&self, except: &str) {
        let Ok(root) = self.root_dir() else { return };
        let Ok(entries) = std::fs::read_dir(&root) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // A real directory only: a link named like an owner is not followed.
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if !name.starts_with(SWEPT_PREFIX) || name == except || !is_dir {
                continue;
            }
            let dir = entry.path();
            let Ok(lock) = open_lock(&dir) else { continue };
            if rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err()
                || !same_file(&lock, &dir.join(LOCK))
            {
                continue; // alive, or just swept by someone else
            }
            log::debug!("removing the gc roots of {name}, which no executor holds any more");
            self.remove_roots(&dir, |_| false);
            let _ = std::fs::remove_file(dir.join(LOCK));
            if let Err(e) = std::fs::remove_dir(&dir) {
                log::warn!("cannot remove the gc root directory {}: {e}", dir.display());
            }
        }
    }

    /// `auto/` links pointing into `dir`, by target.
    fn auto_links(&self, dir: &Path) -> HashMap<PathBuf, Vec<PathBuf>> {
        let mut links: HashMap<PathBuf, Vec<PathBuf>> = HashMap::new();
        let Ok(entries) = std::fs::read_dir(self.gcroots.join("auto")) else { return links };
        for entry in entries.flatten() {
            if let Ok(target) = std::fs::read_link(entry.path()) {
                if target.starts_with(dir) {
                    links.entry(target).or_default().push(entry.path());
                }
            }
        }
        links
    }
}

/// `owner` as a directory name: one plain path component.
fn owner_name(owner: &str) -> Result<&str, JobError> {
    let valid =
        !owner.is_empty() && owner.len() <= 200 && !owner.starts_with('.') && !owner.contains(['/', '\0']);
    if valid {
        Ok(owner)
    } else {
        Err(JobError::Failed(format!(
            "invalid gc root owner {owner:?}: it must be a file name not starting with a dot"
        )))
    }
}

fn open_lock(dir: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(dir.join(LOCK))
}

/// Whether `file` is what `path` names now (it was not unlinked or replaced).
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// The `.drv` name a root belongs to: `X.drv` for the root of the derivation,
/// `X.drv.out…` for its outputs (Nix suffixes further outputs with `-N`).
fn drv_of_root(name: &str) -> Option<&str> {
    if name.ends_with(".drv") && !name.starts_with('.') {
        return Some(name);
    }
    name.rfind(".drv.out").filter(|_| !name.starts_with('.')).map(|i| &name[..i + 4])
}

/// The file name of a store derivation path.
pub(crate) fn store_basename(drv_path: &str) -> Result<&str, JobError> {
    Path::new(drv_path)
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| drv_path.starts_with('/') && n.ends_with(".drv") && !n.starts_with('.'))
        .ok_or_else(|| JobError::Failed(format!("{drv_path:?} is not the store path of a derivation")))
}

/// Points `link` at `target`, atomically replacing whatever `link` was.
fn replace_symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    let tmp = link.with_file_name(format!(
        ".{}.tmp-{}",
        link.file_name().and_then(|n| n.to_str()).unwrap_or("root"),
        uuid::Uuid::new_v4().simple()
    ));
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::error::CancelReason;
    use crate::job::{Job, JobOutput, LogSink};

    #[test]
    fn roots_map_back_to_their_derivation() {
        assert_eq!(drv_of_root("abc-sys.drv"), Some("abc-sys.drv"));
        assert_eq!(drv_of_root("abc-sys.drv.out"), Some("abc-sys.drv"));
        assert_eq!(drv_of_root("abc-sys.drv.out-2"), Some("abc-sys.drv"));
        assert_eq!(drv_of_root(".abc.drv.tmp-1"), None);
        assert_eq!(drv_of_root(".lock"), None);
        assert_eq!(drv_of_root("other"), None);
    }

    #[test]
    fn owners_are_plain_names() {
        assert!(owner_name("file-0123abcd").is_ok());
        assert!(owner_name("memory-5f0e").is_ok());
        for bad in ["", ".", "..", ".lock", "a/b", "../x", "a\0b", &"x".repeat(201)] {
            let err = owner_name(bad).unwrap_err().to_string();
            assert!(err.contains("invalid gc root owner"), "{err}");
        }
    }

    /// Runs `f` in a job of `owner`, returning what it returns.
    fn in_job<T: Send + 'static>(
        owner: &str,
        logs: LogSink,
        f: impl FnOnce(&JobContext) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let mut f = Some(f);
        let mut job = Job::new(
            move |ctx: &JobContext| {
                let _ = tx.send(f.take().expect("run once")(ctx));
                Ok(())
            },
            Duration::from_secs(60),
        )
        .with_gc_root_owner(owner)
        .with_log_sink(logs);
        job.start();
        job.wait();
        rx.try_recv().expect("the job ran")
    }

    fn no_logs() -> LogSink {
        Arc::new(|_: JobOutput<'_>| {})
    }

    fn root_drv(roots: &Arc<Roots>, owner: &str, drv_path: &str) -> Result<(), JobError> {
        let (roots, drv_path) = (roots.clone(), drv_path.to_string());
        in_job(owner, no_logs(), move |ctx| roots.root_drv(ctx, &drv_path))
    }

    /// Two executors on one directory; a third sweeps only what nobody holds.
    #[test]
    fn owners_are_locked_and_dead_memory_owners_swept() {
        let tmp = tempfile::tempdir().unwrap();
        let gcroots = tmp.path().join("gcroots");
        let dir = tmp.path().join("roots");
        let drv = |n: &str| format!("/nix/store/{n}-x.drv");
        let a = Arc::new(Roots::new(dir.clone(), tmp.path()));
        let b = Arc::new(Roots::new(dir.clone(), tmp.path()));
        root_drv(&a, "memory-a", &drv("a")).unwrap();
        root_drv(&b, "memory-b", &drv("b")).unwrap();
        root_drv(&b, "file-b", &drv("b")).unwrap();
        let auto = |owner: &str| {
            std::fs::read_dir(gcroots.join("auto"))
                .unwrap()
                .flatten()
                .filter(|e| std::fs::read_link(e.path()).unwrap().starts_with(dir.join(owner)))
                .count()
        };
        assert_eq!((auto("memory-a"), auto("memory-b"), auto("file-b")), (1, 1, 1));

        // B's release keeps A's roots: A holds its lock.
        b.release_unused("memory-b", &[]);
        assert!(dir.join("memory-a").join("a-x.drv").is_symlink());
        assert!(!dir.join("memory-b").join("b-x.drv").exists());
        assert!(dir.join("file-b").join("b-x.drv").is_symlink());

        // Once A is gone its directory is swept by anyone's release; file owners stay.
        drop(a);
        let c = Roots::new(dir.clone(), tmp.path());
        c.release_unused("memory-c", &[]);
        assert!(!dir.join("memory-a").exists());
        assert_eq!(auto("memory-a"), 0);
        assert!(dir.join("file-b").join("b-x.drv").is_symlink());
        assert!(dir.join("memory-b").exists(), "B still holds its directory");

        // A link named like an owner is not followed into its target.
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink("/nix/store/e-x.drv", elsewhere.join("e-x.drv")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join("memory-link")).unwrap();
        c.release_unused("memory-c", &[]);
        assert!(elsewhere.join("e-x.drv").is_symlink());

        // Removed behind the executor's back, the directory is made and locked again.
        std::fs::remove_dir_all(dir.join("memory-b")).unwrap();
        root_drv(&b, "memory-b", &drv("b2")).unwrap();
        c.release_unused("memory-c", &[]);
        assert!(dir.join("memory-b").join("b2-x.drv").is_symlink());
    }

    /// A collection (here: whoever holds `gc.lock` exclusively) may have read the roots
    /// already: a root made now would not protect its path from it. The root waits
    /// until the collection ended, or until the job is cancelled or timed out.
    #[test]
    fn a_root_waits_for_a_running_collection() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = Arc::new(Roots::new(tmp.path().join("roots"), tmp.path()));
        let collection = File::create(tmp.path().join("gc.lock")).unwrap();
        let ends = [
            (None, Duration::from_secs(60), None),
            (
                Some(CancelReason::Stopped),
                Duration::from_secs(60),
                Some(JobError::Cancelled(Some(CancelReason::Stopped))),
            ),
            (None, Duration::from_millis(300), Some(JobError::TimedOut(Duration::from_millis(300)))),
        ];
        for (i, (cancel, timeout, error)) in ends.into_iter().enumerate() {
            let drv = format!("/nix/store/{i}-x.drv");
            let root = tmp.path().join(format!("roots/memory-a/{i}-x.drv"));
            rustix::fs::flock(&collection, FlockOperation::LockExclusive).unwrap();
            let (lines, logged) = crossbeam_channel::unbounded();
            let logs: LogSink = Arc::new(move |output: JobOutput<'_>| {
                if let JobOutput::Line { text, .. } = output {
                    let _ = lines.send(text.to_string());
                }
            });
            let roots = roots.clone();
            let mut job = Job::new(move |ctx: &JobContext| roots.root_drv(ctx, &drv), timeout)
                .with_gc_root_owner("memory-a")
                .with_log_sink(logs);
            job.start();
            let line = logged.recv_timeout(Duration::from_secs(60)).expect("a line saying the root waits");
            assert!(line.starts_with("waiting for the running garbage collection to end"), "{line}");
            assert!(!root.is_symlink(), "rooted while a collection runs");
            match cancel {
                Some(reason) => job.cancel(reason),
                // A timeout ends the wait on its own; a collection that ends, by
                // letting go of the lock.
                None if error.is_some() => {}
                None => rustix::fs::flock(&collection, FlockOperation::Unlock).unwrap(),
            }
            job.wait();
            assert_eq!(job.error(), error.as_ref());
            assert_eq!(root.is_symlink(), error.is_none());
            rustix::fs::flock(&collection, FlockOperation::Unlock).unwrap();
        }
    }

    /// Without a usable `gc.lock` (its directory is missing here), roots are still made.
    #[test]
    fn a_root_is_made_without_a_usable_gc_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = Arc::new(Roots::new(tmp.path().join("roots"), &tmp.path().join("missing")));
        root_drv(&roots, "memory-a", "/nix/store/a-x.drv").unwrap();
        assert!(tmp.path().join("roots/memory-a/a-x.drv").is_symlink());
    }
}
