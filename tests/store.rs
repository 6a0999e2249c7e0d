//! The state file through the public API: framing, the legacy format, fields of newer
//! versions, symbolic links, and paths that are not what they should be. The store's
//! mutators are crate-private (only the builder writes generations), so changes are
//! made by a [`Builder`] over an executor that succeeds at once and starts no process;
//! the lifecycle and GC rules are unit tests in `src/store/mod.rs`.

mod common;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use common::store::{data_of, one_built_generation, HEADER_LEN, MAGIC};
use common::*;
use genbuild::proto::StoreState;
use genbuild::{Builder, Store, StoreError};
use prost::Message;

/// A builder over the store persisted at `path`.
fn persisted(path: &Path) -> (Builder, Arc<Store>) {
    let (builder, store, _) = persisted_with_executor(path);
    (builder, store)
}

fn persisted_with_executor(path: &Path) -> (Builder, Arc<Store>, Arc<ShellExecutor>) {
    let store = Arc::new(Store::open(path).unwrap_or_else(|e| panic!("{e}")));
    let executor = Arc::new(ShellExecutor::new());
    (Builder::new(config(), store.clone(), executor.clone()), store, executor)
}

/// Evaluates commit `n`; returns the generation's uuid.
fn evaluate(builder: &Builder, n: u32) -> String {
    let done = builder.evaluation_done();
    let uuid = builder.eval(&rs(&format!("{n:040x}"))).unwrap();
    assert_eq!(recv(&done, "evaluation_done"), uuid);
    uuid
}

fn build(builder: &Builder, uuid: &str) {
    let done = builder.build_done();
    builder.submit_build(uuid).unwrap();
    assert_eq!(recv(&done, "build_done"), uuid);
}

/// A store file holding a built generation and an evaluated one; their uuids.
fn two_generations(path: &Path) -> [String; 2] {
    let (builder, store, executor) = persisted_with_executor(path);
    let built = evaluate(&builder, 1);
    build(&builder, &built);
    // Every generation has the same out path: not built, for the next one.
    executor.valid.lock().clear();
    let evaluated = evaluate(&builder, 2);
    assert_eq!(store.generations().len(), 2);
    assert_eq!(store.last_error(), None);
    [built, evaluated]
}

/// A temporary directory holding `state.pb`, written by [`two_generations`]; its bytes.
fn state_file() -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.pb");
    two_generations(&path);
    let bytes = std::fs::read(&path).unwrap();
    (dir, path, bytes)
}

/// Where the first generation's record ends in `state`'s encoding: field 1's key, the
/// length, the generation.
fn end_of_first_generation(state: &StoreState) -> usize {
    let len = state.generations[0].encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

fn uuids(store: &Store) -> Vec<String> {
    store.generations().into_iter().map(|g| g.uuid).collect()
}

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect()
}

/// A directory `real` holding the state file, and one `links` for links to it.
fn link_dirs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (real, links) = (dir.path().join("real"), dir.path().join("links"));
    std::fs::create_dir(&real).unwrap();
    std::fs::create_dir(&links).unwrap();
    (dir, real, links)
}

fn assert_link(link: &Path, to: &Path) {
    let meta = std::fs::symlink_metadata(link).unwrap();
    assert!(meta.file_type().is_symlink(), "{} is still a link", link.display());
    assert_eq!(std::fs::read_link(link).unwrap(), to);
}

#[test]
fn a_state_file_that_is_a_symlink_is_written_through_to_its_target() {
    let (_dir, real, links) = link_dirs();
    let (target, link) = (real.join("state.pb"), links.join("state.pb"));
    let [built, evaluated] = two_generations(&target);
    symlink(&target, &link).unwrap();
    let (builder, store) = persisted(&link);
    let newer = evaluate(&builder, 3);
    assert_eq!(store.last_error(), None);
    assert_link(&link, &target);
    assert!(std::fs::symlink_metadata(&target).unwrap().is_file());
    assert_eq!(uuids(&Store::open(&target).unwrap()), [built, evaluated, newer]);
    assert_eq!((temp_files(&real), temp_files(&links)), (vec![], vec![]));
}

#[test]
fn a_chain_of_relative_symlinks_is_written_through_to_its_last_target() {
    let (_dir, real, links) = link_dirs();
    let target = real.join("state.pb");
    two_generations(&target);
    let (first, second) = (links.join("a"), links.join("b"));
    symlink("b", &first).unwrap();
    symlink("../real/state.pb", &second).unwrap();
    let (builder, store) = persisted(&first);
    let newer = evaluate(&builder, 3);
    assert_eq!(store.last_error(), None);
    assert_link(&first, Path::new("b"));
    assert_link(&second, Path::new("../real/state.pb"));
    assert!(uuids(&Store::open(&target).unwrap()).contains(&newer));
    assert_eq!((temp_files(&real), temp_files(&links)), (vec![], vec![]));
}

#[test]
fn a_dangling_symlink_gets_its_target_created() {
    let (_dir, real, links) = link_dirs();
    let (target, link) = (real.join("state.pb"), links.join("state.pb"));
    symlink(&target, &link).unwrap();
    let (builder, store) = persisted(&link);
    assert!(store.generations().is_empty());
    let uuid = evaluate(&builder, 1);
    assert_eq!(store.last_error(), None);
    assert_link(&link, &target);
    assert_eq!(uuids(&Store::open(&target).unwrap()), [uuid]);
}

#[test]
fn a_symlinked_state_file_has_the_id_of_its_target() {
    let (_dir, real, links) = link_dirs();
    let (target, link) = (real.join("state.pb"), links.join("state.pb"));
    symlink(&target, &link).unwrap();
    let id = Store::open(&target).unwrap().id().to_string();
    assert!(id.starts_with("file-"), "{id}");
    assert_eq!(Store::open(&link).unwrap().id(), id, "dangling");
    two_generations(&target);
    assert_eq!(Store::open(&link).unwrap().id(), id);
    assert_eq!(Store::open(links.join("../real/./state.pb")).unwrap().id(), id);
    assert_ne!(Store::open(real.join("other.pb")).unwrap().id(), id);
}

#[test]
fn a_symlink_loop_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    symlink(&b, &a).unwrap();
    symlink(&a, &b).unwrap();
    let err = Store::open(&a).unwrap_err();
    assert!(matches!(&err, StoreError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_link(&a, &b);
}

#[test]
fn a_state_file_cut_at_any_byte_is_reported_corrupt_and_left_untouched() {
    let (_dir, path, whole) = state_file();
    // Every byte, so the ends of the header, of each generation and of the data too.
    for cut in 0..whole.len() {
        std::fs::write(&path, &whole[..cut]).unwrap();
        match Store::open(&path) {
            Err(err @ StoreError::Corrupt { .. }) => {
                assert!(err.to_string().contains(&path.display().to_string()), "{err}");
            }
            other => panic!("cut at {cut} of {}: {other:?}", whole.len()),
        }
        assert_eq!(std::fs::read(&path).unwrap(), &whole[..cut], "left untouched");
    }
}

#[test]
fn a_state_file_cut_at_a_generation_boundary_is_reported_corrupt() {
    let (_dir, path, whole) = state_file();
    let data = data_of(&whole);
    let state = StoreState::decode(data).unwrap();
    let boundary = HEADER_LEN + end_of_first_generation(&state);
    let shorter = StoreState::decode(&whole[HEADER_LEN..boundary]).unwrap();
    assert_eq!(shorter.generations.len(), 1, "the bare data cut there is a smaller valid store");
    std::fs::write(&path, &whole[..boundary]).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt { reason, .. } if reason.contains("cut short")), "{err}");
}

#[test]
fn a_damaged_byte_is_reported_corrupt() {
    let (_dir, path, mut bytes) = state_file();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt { reason, .. } if reason.contains("checksum")), "{err}");
}

#[test]
fn a_huge_length_in_the_header_is_corrupt() {
    let (_dir, path, mut bytes) = state_file();
    for len in [u64::MAX, 1 << 62] {
        bytes[HEADER_LEN - 8..HEADER_LEN].copy_from_slice(&len.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(&err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(&len.to_string()), "{err}");
    }
}

#[test]
fn an_empty_state_file_is_corrupt_not_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.pb");
    std::fs::write(&path, b"").unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt { reason, .. } if reason.contains("empty")), "{err}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left untouched");
}

#[test]
fn a_corrupt_file_is_an_error_naming_it_and_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.pb");
    let garbage = b"\xff\xff\xff\xff not protobuf".to_vec();
    std::fs::write(&path, &garbage).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt { path: p, .. } if p == &path), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    assert!(err.to_string().contains("move it away"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), garbage);
}

#[test]
fn a_legacy_state_file_loads_and_is_rewritten_framed_on_the_next_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.pb");
    let legacy = one_built_generation("legacy");
    std::fs::write(&path, legacy.encode_to_vec()).unwrap();
    let (builder, store) = persisted(&path);
    assert_eq!(store.generations(), legacy.generations);
    assert_eq!(std::fs::read(&path).unwrap(), legacy.encode_to_vec(), "not rewritten by a load");
    let uuid = evaluate(&builder, 2);
    let rewritten = std::fs::read(&path).unwrap();
    let state = StoreState::decode(data_of(&rewritten)).unwrap();
    assert_eq!(state.generations[0], legacy.generations[0]);
    assert_eq!(uuids(&Store::open(&path).unwrap()), ["legacy".to_string(), uuid]);
}

/// What a cut legacy file gives, documented: nothing to detect it by.
#[test]
fn a_legacy_state_file_cut_at_a_generation_boundary_loads_as_a_shorter_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.pb");
    let state = one_built_generation("legacy");
    let legacy = state.encode_to_vec();
    std::fs::write(&path, &legacy[..end_of_first_generation(&state)]).unwrap();
    assert_eq!(uuids(&Store::open(&path).unwrap()), ["legacy"]);
}

/// Messages as a newer genbuild might declare them: fields this one does not know.
#[derive(Clone, PartialEq, prost::Message)]
struct FutureState {
    #[prost(message, repeated, tag = "1")]
    generations: Vec<FutureGeneration>,
    #[prost(string, tag = "99")]
    shelf: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct FutureGeneration {
    #[prost(string, tag = "1")]
    uuid: String,
    #[prost(uint64, tag = "150")]
    speed: u64,
    #[prost(message, optional, tag = "151")]
    detail: Option<Detail>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Detail {
    #[prost(string, tag = "1")]
    note: String,
}

/// `StoreState.generations` as raw records, to write one of known and unknown fields.
#[derive(Clone, PartialEq, prost::Message)]
struct RawGenerations {
    #[prost(bytes = "vec", repeated, tag = "1")]
    generations: Vec<Vec<u8>>,
}

#[test]
fn fields_written_by_a_newer_version_survive_a_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.pb");
    let legacy = one_built_generation("legacy");
    let extra = FutureGeneration {
        uuid: String::new(),
        speed: 299_792_458,
        detail: Some(Detail { note: "nested".into() }),
    };
    let mut generation = legacy.generations[0].encode_to_vec();
    generation.extend(extra.encode_to_vec());
    let mut bytes = RawGenerations { generations: vec![generation] }.encode_to_vec();
    bytes.extend(StoreState { generations: vec![], ..legacy }.encode_to_vec());
    bytes.extend(FutureState { generations: vec![], shelf: "kept".into() }.encode_to_vec());
    std::fs::write(&path, &bytes).unwrap();
    // The first rewrite reads the legacy format, the second the framed one.
    for n in 2..4 {
        let (builder, store) = persisted(&path);
        assert_eq!(store.generation("legacy").unwrap().drv_path, "/nix/store/hand-written.drv");
        // "legacy" stays as the last built generation while newer ones are evaluated.
        evaluate(&builder, n);
        assert!(uuids(&store).contains(&"legacy".to_string()));
        let rewritten = std::fs::read(&path).unwrap();
        let read = FutureState::decode(data_of(&rewritten)).unwrap();
        assert_eq!(read.shelf, "kept", "rewrite {n}");
        let kept: Vec<_> = read.generations.iter().filter(|g| g.uuid == "legacy").collect();
        assert_eq!(kept.len(), 1, "rewrite {n}: {read:?}");
        assert_eq!((kept[0].speed, &kept[0].detail), (extra.speed, &extra.detail), "rewrite {n}");
    }
}

#[test]
fn a_state_file_of_a_newer_format_version_is_refused_and_left_untouched() {
    let (_dir, path, mut bytes) = state_file();
    bytes[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&7u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(&err, StoreError::NewerVersion { version: 7, supported: 1, path: p } if p == &path),
        "{err:?}"
    );
    assert!(err.to_string().contains("newer genbuild"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn a_state_path_that_is_a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(&err, StoreError::NotAFile { found: "a directory", .. }), "{err:?}");
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

#[test]
fn a_state_path_without_a_file_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for path in [std::path::PathBuf::new(), dir.path().join("missing/..")] {
        let err = Store::open(&path).unwrap_err();
        assert!(
            matches!(&err, StoreError::NotAFile { found: "a path without a file name", .. }),
            "{path:?}: {err:?}"
        );
    }
    let err = Store::open("/").unwrap_err();
    assert!(matches!(&err, StoreError::NotAFile { found: "a directory", .. }), "{err:?}");
}

#[test]
fn a_state_path_that_is_a_fifo_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fifo");
    let mode = rustix::fs::Mode::from_raw_mode(0o600);
    rustix::fs::mknodat(rustix::fs::CWD, &path, rustix::fs::FileType::Fifo, mode, 0).unwrap();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || tx.send(Store::open(&path).map(drop)));
    let result = recv(&rx, "Store::open of a FIFO");
    assert!(matches!(&result, Err(StoreError::NotAFile { found: "a FIFO", .. })), "{result:?}");
}

/// Root reads a file whatever its permission bits: run as root (CI), this test runs
/// itself again as `nobody`, through util-linux's `setpriv`.
#[test]
fn an_unreadable_state_file_is_an_io_error() {
    if rustix::process::geteuid().is_root() {
        let test = "an_unreadable_state_file_is_an_io_error";
        let output = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env("TMPDIR", std::env::temp_dir())
            .output()
            .expect("setpriv (util-linux) runs this test as an unprivileged user");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "as nobody: {}\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        return;
    }
    let (_dir, path, _) = state_file();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(&err, StoreError::Io { action: "read", .. }), "{err:?}");
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn a_state_path_with_spaces_works() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("a dir with spaces");
    std::fs::create_dir(&sub).unwrap();
    let path = sub.join("state file.pb");
    let [built, evaluated] = two_generations(&path);
    let store = Store::open(&path).unwrap();
    assert_eq!(uuids(&store), [built, evaluated]);
    assert_eq!(temp_files(&sub), Vec::<String>::new());
}

#[test]
fn a_rewrite_keeps_the_state_files_permissions() {
    let (_dir, path, _) = state_file();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (builder, _store) = persisted(&path);
    evaluate(&builder, 3);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o600);
}

#[test]
fn temporary_files_of_interrupted_writes_are_removed_and_only_those() {
    let (dir, path, _) = state_file();
    let left = format!(".state.pb.{}.tmp", "0123456789abcdef".repeat(2));
    let others = [".other.pb.0123456789abcdef0123456789abcdef.tmp", ".state.pb.backup.tmp"];
    for name in others.iter().copied().chain([left.as_str()]) {
        std::fs::write(dir.path().join(name), b"x").unwrap();
    }
    Store::open(&path).unwrap();
    let mut found = temp_files(dir.path());
    found.sort();
    assert_eq!(found, others);
}
