//! The generations, by uuid, with comin's status strings; optionally persisted.
//!
//! [`Store::new`] keeps them in memory; [`Store::open`] also in a file, rewritten on
//! every change. Only the builder changes generations (the mutators are crate-private),
//! so the file always says what the state machine decided. The file:
//!
//! * **Atomic**: a temporary file beside it, fsync, rename over it, fsync of the
//!   directory, so a crash leaves the old file or the new one, never half of one (the
//!   reference truncates and rewrites in place). What a crash left of a temporary file
//!   is removed on open. A generation found `evaluating` or `building` on open was
//!   interrupted and is recorded failed, "interrupted".
//! * **Framed**: a magic number, a format version and the data's length before the
//!   protobuf, a CRC-32 after it (layout in `file.rs`). A bare protobuf cut between two
//!   generations is a valid, shorter store; a framed file cut at any byte is too short
//!   for its header, and is refused. The legacy format (a bare protobuf, written by
//!   earlier versions) still loads and is rewritten framed on the next change.
//! * **Never overwritten when unreadable**: a file that is cut, damaged, empty (genbuild
//!   never writes an empty file: an empty one was cut, e.g. by a crash of a file system
//!   that had not written its data yet) or not a state file is a
//!   [`StoreError::Corrupt`] naming it; a file of a newer format version is
//!   [`StoreError::NewerVersion`]; both are left as they are.
//! * **Forward compatible**: fields a newer genbuild added, which this one does not
//!   know, are kept and written back; so an older genbuild run for a while (a NixOS
//!   rollback) loses nothing.
//! * **Symbolic links are written through**: when the path is a link (or a chain of
//!   them), the file it resolves to is replaced, atomically, in its own directory, and
//!   the link stays; a dangling link's target is created. [`Store::id`] follows the
//!   link too, so every spelling of one file is one store.
//!
//! A failure to write does not lose the in-memory state: the change is kept, the error
//! is logged and reported by [`Store::last_error`] (and in the builder's state), and
//! the next successful write catches up.
//!
//! Besides the generations, the store keeps the **reusable evaluations**: the result
//! of every successful evaluation whose executor gave it a reuse key
//! ([`Executor::eval_reuse_key`](crate::Executor::eval_reuse_key)), by that key, so
//! that a later `eval()` with the same inputs, in this process or after a restart, is
//! recorded from it without evaluating (see [`Builder::eval`](crate::Builder::eval)).
//! It holds the results themselves, not references to generations, which the
//! collection of generations may drop; it is an index in memory (no scan of the store
//! per `eval()`), bounded to the [`MAX_REUSABLE_EVALUATIONS`] most recently used keys.
//!
//! **One store per file at a time.** A `Store` writes its whole state on every change;
//! two of them over one file (in one process or two) overwrite each other's changes.
//! Open a file in one process at a time, once, and share the `Arc<Store>`.
//!
//! **One builder per store at a time.** The store's rules are store-wide (the last
//! generations of each kind are kept, whichever builder made them) and its
//! [`id`](Store::id) names the owner of the Nix executors' gc roots: two live builders
//! over one store drop each other's generations and roots. Builders one after the
//! other (a restart) are the intended use; see
//! [`Builder::new`](crate::Builder::new).

mod file;
mod reusable;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::error::StoreError;
use crate::executor::EvalOutput;
use crate::process::ResourceUsage;
use crate::proto::{self, status, Generation, ReusableEvaluation, StoreState};
use crate::status::BuildReason;
use crate::status::Provenance;
use reusable::ReuseIndex;
pub use reusable::MAX_REUSABLE_EVALUATIONS;

/// The generations by uuid, in memory or persisted to a file; share it as `Arc<Store>`.
///
/// Cheap to query; every query returns copies. Generations are created and changed
/// only by the [`Builder`](crate::Builder) the store is given to, one builder at a
/// time (see the [module documentation](self)).
#[derive(Debug)]
pub struct Store {
    path: Option<PathBuf>,
    id: String,
    state: Mutex<Inner>,
}

impl Default for Store {
    fn default() -> Store {
        Store { path: None, id: format!("memory-{}", uuid::Uuid::new_v4().simple()), state: Mutex::default() }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// The generations and the last ones started and finished. Its
    /// `reusable_evaluations` are written from `index` just before the file is.
    data: StoreState,
    index: ReuseIndex,
    /// What the file held that this genbuild does not know; written back.
    unknown: file::Unknown,
    last_error: Option<String>,
}

/// Where a generation's repository-independent fields come from.
#[derive(Debug, Clone, Default)]
pub(crate) struct NewGeneration<'a> {
    pub(crate) uuid: &'a str,
    pub(crate) hostname: &'a str,
    pub(crate) repository_path: &'a str,
    pub(crate) repository_subdir: &'a str,
    pub(crate) system_attr: &'a str,
}

impl Store {
    /// Creates an empty store that lives in memory only.
    ///
    /// # Examples
    /// ```
    /// let store = genbuild::Store::new();
    /// assert!(store.generations().is_empty());
    /// assert!(store.path().is_none());
    /// ```
    pub fn new() -> Store {
        Store::default()
    }

    /// Opens the store persisted at `path`: loaded when the file exists, created on the
    /// first change otherwise.
    ///
    /// Generations found `evaluating` or `building` were interrupted (the process
    /// ended while they ran): they are recorded failed with "interrupted", and the file
    /// is rewritten at once. When `path` is a symbolic link, the file it resolves to is
    /// read and, on every change, replaced (the link stays). A file in the legacy
    /// format (a bare protobuf) is read and rewritten in the framed one on the next
    /// change. See the [module documentation](self) for the format.
    ///
    /// # Errors
    /// * [`StoreError::Corrupt`] when the file is not a whole state file (cut short,
    ///   damaged, empty or something else), and [`StoreError::NewerVersion`] when a
    ///   newer genbuild wrote it in a format this one cannot read; the file is left as
    ///   it is: move it away to start with an empty store.
    /// * [`StoreError::NotAFile`] when `path` is a directory, a FIFO or a device.
    /// * [`StoreError::Io`] when the file cannot be inspected or read.
    ///
    /// A missing directory is no error here: the first write reports it (see
    /// [`last_error`](Store::last_error)).
    ///
    /// Open a file once, in one process at a time, and share the `Arc<Store>`: every
    /// change rewrites the whole file, so two stores over one file overwrite each
    /// other's generations and reusable evaluations.
    ///
    /// # Examples
    /// ```
    /// use genbuild::{Store, StoreError};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("state.pb");
    /// let store = Store::open(&path)?;
    /// assert!(store.generations().is_empty());
    /// assert_eq!(store.path(), Some(path.as_path()));
    ///
    /// // A file that is not a state file is refused, and left as it is.
    /// std::fs::write(&path, "not a state file")?;
    /// match Store::open(&path) {
    ///     Err(StoreError::Corrupt { path: p, .. }) => assert_eq!(p, path),
    ///     other => panic!("expected Corrupt, got {other:?}"),
    /// }
    /// assert_eq!(std::fs::read(&path)?, b"not a state file");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(path: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let path = path.into();
        let target = file::resolve(&path)?;
        let contents = file::read(&target)?;
        file::remove_interrupted_writes(&target);
        let (mut data, unknown) = match contents {
            Some(contents) => {
                if contents.legacy {
                    log::info!(
                        "the store file {} is in the legacy format; the next change rewrites it framed",
                        target.display()
                    );
                }
                (contents.state, contents.unknown)
            }
            None => Default::default(),
        };
        let id = file::store_id(&target);
        let index = ReuseIndex::load(std::mem::take(&mut data.reusable_evaluations));
        let inner = Inner { data, index, unknown, last_error: None };
        let store = Store { path: Some(path), id, state: Mutex::new(inner) };
        let mut inner = store.state.lock();
        if mark_interrupted(&mut inner.data) {
            store.persist(&mut inner);
        }
        drop(inner);
        Ok(store)
    }

    /// Returns a name for this store: derived from its file's path for a persisted store
    /// (the same after a restart), unique for an in-memory one.
    ///
    /// Executors keep the gc roots of a builder's jobs under it, so that builders never
    /// release each other's roots. For a persisted store it is `file-` and a hash of
    /// the absolute path of the file the path resolves to (symbolic links followed, the
    /// directory canonical), so that two spellings of one file, or a link and its
    /// target, give one id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Returns the path this store persists to, as given to [`open`](Store::open).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Returns a copy of generation `uuid`, or `None` if the store does not hold it (it
    /// never existed, or was collected).
    pub fn generation(&self, uuid: &str) -> Option<Generation> {
        self.state.lock().data.generations.iter().find(|g| g.uuid == uuid).cloned()
    }

    /// Returns copies of all generations, oldest first.
    pub fn generations(&self) -> Vec<Generation> {
        self.state.lock().data.generations.clone()
    }

    /// Returns copies of the reusable evaluations (see the [module documentation](self)),
    /// least recently used first: at most [`MAX_REUSABLE_EVALUATIONS`].
    pub fn reusable_evaluations(&self) -> Vec<ReusableEvaluation> {
        self.state.lock().index.to_persisted()
    }

    /// Returns the text of the last failure to persist a change (a [`StoreError`]),
    /// cleared by the next successful write; always `None` for an in-memory store.
    pub fn last_error(&self) -> Option<String> {
        self.state.lock().last_error.clone()
    }

    /// Creates a generation from the repository status and marks it `evaluating`.
    /// Collects generations that are none of the last eval-started, eval-finished,
    /// build-started and build-finished ones.
    pub(crate) fn generation_eval_started(&self, new: NewGeneration<'_>, rs: &proto::RepositoryStatus) {
        let generation = Generation {
            uuid: new.uuid.to_string(),
            hostname: new.hostname.to_string(),
            repository_path: new.repository_path.to_string(),
            repository_subdir: new.repository_subdir.to_string(),
            system_attr: new.system_attr.to_string(),
            selected_remote_url: rs.selected_remote_url.clone(),
            selected_remote_name: rs.selected_remote_name.clone(),
            selected_branch_name: rs.selected_branch_name.clone(),
            selected_commit_id: rs.selected_commit_id.clone(),
            selected_commit_msg: rs.selected_commit_msg.clone(),
            selected_branch_is_testing: rs.selected_branch_is_testing,
            main_commit_id: rs.main_commit_id.clone(),
            main_remote_name: rs.main_remote_name.clone(),
            main_branch_name: rs.main_branch_name.clone(),
            eval_status: status::EVALUATING.into(),
            eval_started_at: Some(now()),
            build_status: status::INITIALIZED.into(),
            ..Default::default()
        };
        self.change(|data, _| {
            data.last_eval_started = generation.uuid.clone();
            data.generations.push(generation);
            collect_garbage(data);
        });
    }

    /// Records the end of generation `uuid`'s evaluation: its paths, or its error. A
    /// result with a reuse key becomes (or, reused, stays) the most recent reusable
    /// evaluation of its key.
    pub(crate) fn generation_eval_finished(
        &self,
        uuid: &str,
        result: &Result<(EvalOutput, Provenance), String>,
        usage: Option<ResourceUsage>,
    ) {
        self.change(|data, index| {
            data.last_eval_finished = uuid.to_string();
            if let Ok((output, provenance)) = result {
                let reusable = match provenance {
                    Provenance::Evaluated { key: Some(key) } => Some((key, uuid)),
                    Provenance::Reused { key, from } => Some((key, from.as_str())),
                    Provenance::Evaluated { key: None } => None,
                };
                if let Some((key, source)) = reusable {
                    index.record(ReusableEvaluation {
                        key: key.clone(),
                        source_uuid: source.to_string(),
                        drv_path: output.drv_path.clone(),
                        out_path: output.out_path.clone(),
                        machine_id: output.machine_id.clone(),
                    });
                }
            }
            let Some(g) = find(data, uuid) else { return };
            g.eval_ended_at = Some(now());
            g.eval_usage = usage.map(to_proto);
            match result {
                Ok((output, provenance)) => {
                    g.eval_status = status::EVALUATED.into();
                    g.drv_path = output.drv_path.clone();
                    g.out_path = output.out_path.clone();
                    g.machine_id = output.machine_id.clone();
                    if let Provenance::Reused { from, .. } = provenance {
                        g.eval_reused_from = from.clone();
                    }
                }
                Err(e) => {
                    g.eval_status = status::FAILED.into();
                    g.eval_err = e.clone();
                }
            }
        });
    }

    /// Marks generation `uuid` `building`, for `reason`.
    pub(crate) fn generation_build_started(&self, uuid: &str, reason: BuildReason) {
        self.change(|data, _| {
            data.last_build_started = uuid.to_string();
            let Some(g) = find(data, uuid) else { return };
            g.build_status = status::BUILDING.into();
            g.build_started_at = Some(now());
            g.build_ended_at = None;
            g.build_err.clear();
            g.build_usage = None;
            g.build_reason = reason.as_str().into();
        });
    }

    /// Records the end of generation `uuid`'s build.
    pub(crate) fn generation_build_finished(
        &self,
        uuid: &str,
        result: &Result<(), String>,
        usage: Option<ResourceUsage>,
    ) {
        self.change(|data, _| {
            data.last_build_finished = uuid.to_string();
            let Some(g) = find(data, uuid) else { return };
            g.build_ended_at = Some(now());
            g.build_usage = usage.map(to_proto);
            match result {
                Ok(()) => g.build_status = status::BUILT.into(),
                Err(e) => {
                    g.build_status = status::FAILED.into();
                    g.build_err = e.clone();
                }
            }
        });
    }

    /// The drv paths of the generations kept, for the executor's gc roots.
    pub(crate) fn live_drv_paths(&self) -> Vec<String> {
        let inner = self.state.lock();
        inner.data.generations.iter().filter(|g| !g.drv_path.is_empty()).map(|g| g.drv_path.clone()).collect()
    }

    /// The reusable evaluation recorded under `key`: the generation it came from, and
    /// its result.
    pub(crate) fn reusable_evaluation(&self, key: &str) -> Option<(String, EvalOutput)> {
        self.state.lock().index.get(key)
    }

    /// Drops the reusable evaluation of `key` if it still is generation
    /// `source_uuid`'s (its `.drv` was found invalid: it cannot be reused again).
    pub(crate) fn forget_reusable_evaluation(&self, key: &str, source_uuid: &str) {
        let mut inner = self.state.lock();
        if inner.index.remove(key, source_uuid) {
            let Inner { data, index, unknown, .. } = &mut *inner;
            unknown.retain_of(data, index);
            self.persist(&mut inner);
        }
    }

    fn change(&self, f: impl FnOnce(&mut StoreState, &mut ReuseIndex)) {
        let mut inner = self.state.lock();
        let Inner { data, index, unknown, .. } = &mut *inner;
        f(data, index);
        unknown.retain_of(data, index);
        self.persist(&mut inner);
    }

    fn persist(&self, inner: &mut Inner) {
        let Some(path) = &self.path else { return };
        inner.data.reusable_evaluations = inner.index.to_persisted();
        match file::write_atomically(path, &file::encode(&inner.data, &inner.unknown)) {
            Ok(()) => inner.last_error = None,
            Err(e) => {
                log::error!("{e}");
                inner.last_error = Some(e.to_string());
            }
        }
    }
}

/// Records the generations found `evaluating` or `building` as failed, "interrupted";
/// returns whether there was one.
fn mark_interrupted(data: &mut StoreState) -> bool {
    let mut interrupted = false;
    for g in &mut data.generations {
        if g.eval_status == status::EVALUATING {
            g.eval_status = status::FAILED.into();
            g.eval_err = "interrupted".into();
            g.eval_ended_at = Some(now());
            interrupted = true;
        }
        if g.build_status == status::BUILDING {
            g.build_status = status::FAILED.into();
            g.build_err = "interrupted".into();
            g.build_ended_at = Some(now());
            interrupted = true;
        }
    }
    interrupted
}

fn find<'a>(data: &'a mut StoreState, uuid: &str) -> Option<&'a mut Generation> {
    data.generations.iter_mut().find(|g| g.uuid == uuid)
}

/// comin's rule: keep the last eval-started, eval-finished, build-started and
/// build-finished generations. The current generation is always one of them.
fn collect_garbage(data: &mut StoreState) {
    let keep = [
        &data.last_eval_started,
        &data.last_eval_finished,
        &data.last_build_started,
        &data.last_build_finished,
    ];
    let keep: Vec<String> = keep.into_iter().cloned().collect();
    data.generations.retain(|g| keep.contains(&g.uuid));
}

/// A job's usage as the wire format spells it.
fn to_proto(usage: ResourceUsage) -> proto::ResourceUsage {
    proto::ResourceUsage {
        peak_memory_bytes: usage.peak_memory_bytes,
        cpu_ms: u64::try_from(usage.cpu_time.as_millis()).unwrap_or(u64::MAX),
        memory_limit_reached: usage.memory_limit_reached,
    }
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}

#[cfg(test)]
mod tests {
    //! The mutators are crate-private: what needs them is tested here; what goes through
    //! the public API (the file on disk, links, odd paths) is in tests/store.rs.

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn started(store: &Store, uuid: &str) {
        let new = NewGeneration { uuid, hostname: "h", ..Default::default() };
        let rs = proto::RepositoryStatus { selected_commit_id: "c".into(), ..Default::default() };
        store.generation_eval_started(new, &rs);
    }

    fn evaluated(store: &Store, uuid: &str) {
        started(store, uuid);
        let out = EvalOutput {
            drv_path: format!("/nix/store/{uuid}.drv"),
            out_path: "/o".into(),
            machine_id: "m".into(),
        };
        store.generation_eval_finished(uuid, &Ok((out, Provenance::Evaluated { key: None })), None);
    }

    fn built(store: &Store, uuid: &str) {
        evaluated(store, uuid);
        store.generation_build_started(uuid, BuildReason::NeedBuild);
        store.generation_build_finished(uuid, &Ok(()), None);
    }

    #[test]
    fn lifecycle_methods_set_comin_status_strings() {
        let store = Store::new();
        started(&store, "a");
        assert_eq!(store.generation("a").unwrap().eval_status, status::EVALUATING);
        store.generation_eval_finished("a", &Err("boom".into()), None);
        let g = store.generation("a").unwrap();
        assert_eq!((g.eval_status.as_str(), g.eval_err.as_str()), (status::FAILED, "boom"));
        evaluated(&store, "b");
        store.generation_build_started("b", BuildReason::NeedBuild);
        let g = store.generation("b").unwrap();
        assert_eq!(
            (g.build_status.as_str(), g.build_reason.as_str()),
            (status::BUILDING, "need to be built")
        );
        store.generation_build_finished("b", &Ok(()), None);
        let g = store.generation("b").unwrap();
        assert_eq!(
            (g.eval_status.as_str(), g.build_status.as_str(), g.machine_id.as_str()),
            ("evaluated", "built", "m")
        );
        assert!(store.generation("zzz").is_none());
    }

    #[test]
    fn only_the_last_started_and_finished_generations_are_kept() {
        let store = Store::new();
        built(&store, "built");
        evaluated(&store, "evaluated");
        started(&store, "old");
        started(&store, "current");
        let kept: Vec<String> = store.generations().into_iter().map(|g| g.uuid).collect();
        assert_eq!(kept, ["built", "evaluated", "current"]);
    }

    #[test]
    fn a_persisted_store_reloads_and_marks_interrupted_jobs_failed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.pb");
        {
            let store = Store::open(&path).unwrap();
            evaluated(&store, "done");
            store.generation_build_started("done", BuildReason::NeedBuild);
            started(&store, "running");
        }
        let store = Store::open(&path).unwrap();
        let running = store.generation("running").unwrap();
        assert_eq!(
            (running.eval_status.as_str(), running.eval_err.as_str()),
            (status::FAILED, "interrupted")
        );
        let done = store.generation("done").unwrap();
        assert_eq!(
            (done.eval_status.as_str(), done.build_status.as_str()),
            (status::EVALUATED, status::FAILED)
        );
        assert_eq!(done.build_err, "interrupted");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["state.pb"], "no temporary file left behind");
    }

    #[test]
    fn a_missing_directory_is_reported_when_writing_and_memory_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("missing/state.pb")).unwrap();
        evaluated(&store, "a");
        assert_eq!(store.generation("a").unwrap().eval_status, status::EVALUATED);
        let err = store.last_error().expect("the write failed");
        assert!(err.contains("missing/state.pb"), "{err}");
        assert!(
            err.contains("cannot create a temporary file beside") && err.contains("No such file"),
            "{err}"
        );
    }

    #[test]
    fn an_unwritable_directory_mid_run_keeps_the_old_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("state");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("state.pb");
        let store = Store::open(&path).unwrap();
        evaluated(&store, "a");
        let before = std::fs::read(&path).unwrap();
        // Root ignores permission bits, so make the directory unusable by replacing it
        // with a file for the duration of the fault.
        let aside = dir.path().join("aside");
        std::fs::rename(&sub, &aside).unwrap();
        std::fs::write(&sub, b"").unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o444)).unwrap();
        store.generation_build_started("a", BuildReason::NeedBuild);
        assert!(store.last_error().is_some());
        assert_eq!(store.generation("a").unwrap().build_status, status::BUILDING, "in-memory state intact");
        std::fs::remove_file(&sub).unwrap();
        std::fs::rename(&aside, &sub).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), before, "the old file is whole");
        store.generation_build_finished("a", &Ok(()), None);
        assert!(store.last_error().is_none(), "the next write catches up");
        assert_eq!(Store::open(&path).unwrap().generation("a").unwrap().build_status, status::BUILT);
    }

    fn evaluated_with_key(store: &Store, uuid: &str, key: &str) {
        started(store, uuid);
        let out = EvalOutput {
            drv_path: format!("/nix/store/{uuid}.drv"),
            out_path: "/o".into(),
            machine_id: "m".into(),
        };
        store.generation_eval_finished(
            uuid,
            &Ok((out, Provenance::Evaluated { key: Some(key.into()) })),
            None,
        );
    }

    #[test]
    fn reusable_evaluations_are_kept_reused_and_forgotten_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.pb");
        let store = Store::open(&path).unwrap();
        evaluated_with_key(&store, "a", "ka");
        evaluated_with_key(&store, "b", "kb");
        started(&store, "c");
        let (from, output) = store.reusable_evaluation("ka").expect("kept");
        assert_eq!((from.as_str(), output.drv_path.as_str()), ("a", "/nix/store/a.drv"));
        let reused = Ok((output, Provenance::Reused { key: "ka".into(), from: from.clone() }));
        store.generation_eval_finished("c", &reused, None);
        assert_eq!(store.generation("c").unwrap().eval_reused_from, "a");
        let keys = |store: &Store| -> Vec<(String, String)> {
            store.reusable_evaluations().into_iter().map(|e| (e.key, e.source_uuid)).collect()
        };
        let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter().map(|(k, s)| (k.to_string(), s.to_string())).collect()
        };
        assert_eq!(keys(&store), pairs(&[("kb", "b"), ("ka", "a")]), "reused: the most recent, same source");
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(keys(&store), pairs(&[("kb", "b"), ("ka", "a")]), "the order survives a restart");
        store.forget_reusable_evaluation("kb", "not-b");
        assert_eq!(keys(&store).len(), 2, "only the entry of that source is forgotten");
        store.forget_reusable_evaluation("kb", "b");
        drop(store);
        assert_eq!(keys(&Store::open(&path).unwrap()), pairs(&[("ka", "a")]));
        // A failed evaluation and one without a key are never kept.
        let store = Store::new();
        started(&store, "f");
        store.generation_eval_finished("f", &Err("boom".into()), None);
        evaluated(&store, "n");
        assert!(store.reusable_evaluations().is_empty());
    }

    #[test]
    fn a_framed_file_of_the_version_before_reuse_loads_with_no_reusable_evaluation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.pb");
        built(&Store::open(&path).unwrap(), "old");
        let contents = file::read(&path).unwrap().expect("written");
        assert!(contents.state.reusable_evaluations.is_empty());
        // Byte for byte what the previous version wrote: it had no field 6.
        let mut previous = contents.state.clone();
        previous.reusable_evaluations.clear();
        std::fs::write(&path, file::encode(&previous, &contents.unknown)).unwrap();
        let store = Store::open(&path).unwrap();
        assert!(store.reusable_evaluations().is_empty());
        assert_eq!(store.generation("old").unwrap().build_status, status::BUILT);
    }

    #[test]
    fn unknown_fields_of_a_reusable_evaluation_stay_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.pb");
        let store = Store::open(&path).unwrap();
        evaluated_with_key(&store, "a", "ka");
        evaluated_with_key(&store, "b", "kb");
        drop(store);
        // As a newer genbuild writes it: field 9 of the evaluation kept under "ka".
        let mut contents = file::read(&path).unwrap().expect("written");
        contents.unknown.reusable.insert("ka".into(), vec![0x48, 7]);
        std::fs::write(&path, file::encode(&contents.state, &contents.unknown)).unwrap();
        let store = Store::open(&path).unwrap();
        started(&store, "c");
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.state.lock().unknown.reusable.get("ka"),
            Some(&vec![0x48, 7]),
            "kept across a change"
        );
        store.forget_reusable_evaluation("ka", "a");
        assert!(store.state.lock().unknown.reusable.is_empty(), "gone with its entry");
    }

    #[test]
    fn unknown_fields_survive_every_change_and_go_with_their_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.pb");
        built(&Store::open(&path).unwrap(), "old");
        // As a newer genbuild writes it: field 99 of the state, 150 of the generation.
        let mut contents = file::read(&path).unwrap().expect("written");
        contents.unknown.top = vec![0x9a, 0x06, 3, b't', b'o', b'p'];
        contents.unknown.generations.insert("old".into(), vec![0xb0, 0x09, 42]);
        std::fs::write(&path, file::encode(&contents.state, &contents.unknown)).unwrap();
        let store = Store::open(&path).unwrap();
        let before = store.state.lock().unknown.clone();
        assert_eq!(before, contents.unknown);
        // Kept as the last built generation while a new one is evaluated.
        evaluated(&store, "new");
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.state.lock().unknown, before, "rewritten framed, reread");
        assert_eq!(store.generation("old").unwrap().build_status, status::BUILT);
        // Once the generation is collected (on the next eval start) its fields go with
        // it; the state's stay.
        built(&store, "newer");
        started(&store, "newest");
        assert!(store.generation("old").is_none());
        drop(store);
        let unknown = Store::open(&path).unwrap().state.lock().unknown.clone();
        assert_eq!((&unknown.top, unknown.generations.len()), (&before.top, 0));
    }
}
