//! The generations, by uuid, with comin's status strings; optionally persisted.
//!
//! `Store::open(path)` keeps the generations in a protobuf file written atomically
//! (temp file, fsync, rename, fsync of the directory) on every change, so a crash
//! leaves the old file or the new one, never half of one. A generation found
//! `evaluating` or `building` on load was interrupted by a crash and is marked failed.
//! A file that does not decode is an error naming it, and is never overwritten.
//!
//! A failure to write does not lose the in-memory state: the change is kept, the error
//! is logged and reported by [`Store::last_error`] (and in the builder's state), and
//! the next successful write catches up.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use parking_lot::Mutex;
use prost::Message;

use crate::error::Error;
use crate::executor::EvalOutput;
use crate::machine::{BuildReason, BuildStatus, EvalStatus, GenerationView};
use crate::proto::{self, status, Generation, StoreState};

/// Generations by uuid. Cheap to query; share it as `Arc<Store>`.
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
    data: StoreState,
    last_error: Option<String>,
}

/// Where a generation's repository-independent fields come from.
#[derive(Debug, Clone, Default)]
pub struct NewGeneration<'a> {
    pub uuid: &'a str,
    pub hostname: &'a str,
    pub repository_path: &'a str,
    pub repository_subdir: &'a str,
    pub system_attr: &'a str,
}

impl Store {
    /// An empty store living in memory only.
    pub fn new() -> Store {
        Store::default()
    }

    /// The store persisted at `path`: loaded when the file exists (interrupted
    /// generations marked failed), created on the first change otherwise.
    ///
    /// # Errors
    /// [`Error::CorruptStore`] when the file does not decode (it is left as it is),
    /// [`Error::StoreIo`] when it cannot be read.
    pub fn open(path: impl Into<PathBuf>) -> Result<Store, Error> {
        let path = path.into();
        let data = match fs::read(&path) {
            Ok(bytes) => StoreState::decode(bytes.as_slice())
                .map_err(|e| Error::CorruptStore { path: path.clone(), reason: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StoreState::default(),
            Err(e) => return Err(Error::StoreIo { action: "read", path, reason: e.to_string() }),
        };
        remove_interrupted_writes(&path);
        let id = file_store_id(&path);
        let store = Store { path: Some(path), id, state: Mutex::new(Inner { data, last_error: None }) };
        let mut inner = store.state.lock();
        let mut interrupted = false;
        for g in &mut inner.data.generations {
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
        if interrupted {
            store.persist(&mut inner);
        }
        drop(inner);
        Ok(store)
    }

    /// A name for this store: derived from its file's path for a persisted store (the
    /// same after a restart), unique for an in-memory one. Executors keep the gc roots
    /// of a builder's jobs under it, so that builders never release each other's roots.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The file this store persists to, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// A copy of generation `uuid`.
    pub fn generation(&self, uuid: &str) -> Option<Generation> {
        self.state.lock().data.generations.iter().find(|g| g.uuid == uuid).cloned()
    }

    /// Copies of all generations, oldest first.
    pub fn generations(&self) -> Vec<Generation> {
        self.state.lock().data.generations.clone()
    }

    /// The last failure to persist, cleared by the next successful write.
    pub fn last_error(&self) -> Option<String> {
        self.state.lock().last_error.clone()
    }

    /// Creates a generation from the repository status and marks it `evaluating`.
    /// Collects generations that are none of the last eval-started, eval-finished,
    /// build-started and build-finished ones.
    pub fn generation_eval_started(&self, new: NewGeneration<'_>, rs: &proto::RepositoryStatus) {
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
        self.change(|data| {
            data.last_eval_started = generation.uuid.clone();
            data.generations.push(generation);
            collect_garbage(data);
        });
    }

    pub fn generation_eval_finished(&self, uuid: &str, result: &Result<EvalOutput, String>) {
        self.change(|data| {
            data.last_eval_finished = uuid.to_string();
            let Some(g) = find(data, uuid) else { return };
            g.eval_ended_at = Some(now());
            match result {
                Ok(output) => {
                    g.eval_status = status::EVALUATED.into();
                    g.drv_path = output.drv_path.clone();
                    g.out_path = output.out_path.clone();
                    g.machine_id = output.machine_id.clone();
                }
                Err(e) => {
                    g.eval_status = status::FAILED.into();
                    g.eval_err = e.clone();
                }
            }
        });
    }

    pub fn generation_build_started(&self, uuid: &str, reason: BuildReason) {
        self.change(|data| {
            data.last_build_started = uuid.to_string();
            let Some(g) = find(data, uuid) else { return };
            g.build_status = status::BUILDING.into();
            g.build_started_at = Some(now());
            g.build_ended_at = None;
            g.build_err.clear();
            g.build_reason = reason.as_str().into();
        });
    }

    pub fn generation_build_finished(&self, uuid: &str, result: &Result<(), String>) {
        self.change(|data| {
            data.last_build_finished = uuid.to_string();
            let Some(g) = find(data, uuid) else { return };
            g.build_ended_at = Some(now());
            match result {
                Ok(()) => g.build_status = status::BUILT.into(),
                Err(e) => {
                    g.build_status = status::FAILED.into();
                    g.build_err = e.clone();
                }
            }
        });
    }

    /// What the state machine needs to know of a stored generation.
    pub(crate) fn view(&self, uuid: &str) -> Option<GenerationView> {
        let g = self.generation(uuid)?;
        let eval = match g.eval_status.as_str() {
            status::EVALUATING => EvalStatus::Evaluating,
            status::EVALUATED => EvalStatus::Evaluated,
            status::FAILED => EvalStatus::Failed,
            _ => EvalStatus::Initialized,
        };
        let build = match g.build_status.as_str() {
            status::BUILDING => BuildStatus::Building,
            status::BUILT => BuildStatus::Built,
            status::FAILED => BuildStatus::Failed,
            _ => BuildStatus::Initialized,
        };
        Some(GenerationView { eval, build, drv_path: g.drv_path })
    }

    /// The drv paths of the generations kept, for the executor's gc roots.
    pub(crate) fn live_drv_paths(&self) -> Vec<String> {
        let inner = self.state.lock();
        inner.data.generations.iter().filter(|g| !g.drv_path.is_empty()).map(|g| g.drv_path.clone()).collect()
    }

    fn change(&self, f: impl FnOnce(&mut StoreState)) {
        let mut inner = self.state.lock();
        f(&mut inner.data);
        self.persist(&mut inner);
    }

    fn persist(&self, inner: &mut Inner) {
        let Some(path) = &self.path else { return };
        match write_atomically(path, &inner.data.encode_to_vec()) {
            Ok(()) => inner.last_error = None,
            Err(e) => {
                log::error!("{e}");
                inner.last_error = Some(e.to_string());
            }
        }
    }
}

/// `file-` and a hash of the file's absolute path (its directory resolved, so that two
/// spellings of one path give one id).
fn file_store_id(path: &Path) -> String {
    let (dir, _, _) = temp_file_pattern(path);
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let full = dir.join(path.file_name().unwrap_or_default());
    let hash = full
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("file-{hash:016x}")
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

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}

/// The directory of `path` and the prefix and suffix of its temporary files.
fn temp_file_pattern(path: &Path) -> (&Path, String, &'static str) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    (dir, format!(".{name}."), ".tmp")
}

/// Removes the temporary files of writes a crash interrupted before their rename.
fn remove_interrupted_writes(path: &Path) {
    let (dir, prefix, suffix) = temp_file_pattern(path);
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(suffix) {
            log::info!("removing {}, left by an interrupted write", entry.path().display());
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Temp file in the same directory, fsync, rename over `path`, fsync the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |action, e: std::io::Error| Error::StoreIo {
        action,
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let (dir, prefix, suffix) = temp_file_pattern(path);
    let tmp = dir.join(format!("{prefix}{}{suffix}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = File::create(&tmp).map_err(|e| io("create a temporary file beside", e))?;
        file.write_all(bytes).map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("sync", e))?;
        fs::rename(&tmp, path).map_err(|e| io("replace", e))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("sync the directory of", e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
