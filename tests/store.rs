//! The store: statuses, the GC rule, atomic persistence, recovery, corrupt files.

use std::os::unix::fs::PermissionsExt;

use genbuild::proto::{status, RepositoryStatus};
use genbuild::{Error, EvalOutput, Store};

fn started(store: &Store, uuid: &str) {
    let new = genbuild::store::NewGeneration { uuid, hostname: "h", ..Default::default() };
    store.generation_eval_started(
        new,
        &RepositoryStatus { selected_commit_id: "c".into(), ..Default::default() },
    );
}

fn evaluated(store: &Store, uuid: &str) {
    started(store, uuid);
    let out = EvalOutput {
        drv_path: format!("/nix/store/{uuid}.drv"),
        out_path: "/o".into(),
        machine_id: "m".into(),
    };
    store.generation_eval_finished(uuid, &Ok(out));
}

#[test]
fn lifecycle_methods_set_comin_status_strings() {
    let store = Store::new();
    started(&store, "a");
    assert_eq!(store.generation("a").unwrap().eval_status, status::EVALUATING);
    store.generation_eval_finished("a", &Err("boom".into()));
    let g = store.generation("a").unwrap();
    assert_eq!((g.eval_status.as_str(), g.eval_err.as_str()), (status::FAILED, "boom"));
    evaluated(&store, "b");
    store.generation_build_started("b", genbuild::machine::BuildReason::NeedBuild);
    let g = store.generation("b").unwrap();
    assert_eq!((g.build_status.as_str(), g.build_reason.as_str()), (status::BUILDING, "need to be built"));
    store.generation_build_finished("b", &Ok(()));
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
    evaluated(&store, "built");
    store.generation_build_started("built", genbuild::machine::BuildReason::NeedBuild);
    store.generation_build_finished("built", &Ok(()));
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
        store.generation_build_started("done", genbuild::machine::BuildReason::NeedBuild);
        started(&store, "running");
    }
    let store = Store::open(&path).unwrap();
    let running = store.generation("running").unwrap();
    assert_eq!((running.eval_status.as_str(), running.eval_err.as_str()), (status::FAILED, "interrupted"));
    let done = store.generation("done").unwrap();
    assert_eq!((done.eval_status.as_str(), done.build_status.as_str()), (status::EVALUATED, status::FAILED));
    assert_eq!(done.build_err, "interrupted");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["state.pb"], "no temporary file left behind");
}

#[test]
fn a_corrupt_file_is_an_error_naming_it_and_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.pb");
    let garbage = b"\xff\xff\xff\xff not protobuf".to_vec();
    std::fs::write(&path, &garbage).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(&err, Error::CorruptStore { path: p, .. } if p == &path), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), garbage);
}

#[test]
fn a_missing_directory_is_reported_when_writing_and_memory_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("missing/state.pb")).unwrap();
    evaluated(&store, "a");
    assert_eq!(store.generation("a").unwrap().eval_status, status::EVALUATED);
    let err = store.last_error().expect("the write failed");
    assert!(err.contains("missing/state.pb"), "{err}");
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
    store.generation_build_started("a", genbuild::machine::BuildReason::NeedBuild);
    assert!(store.last_error().is_some());
    assert_eq!(store.generation("a").unwrap().build_status, status::BUILDING, "in-memory state intact");
    std::fs::remove_file(&sub).unwrap();
    std::fs::rename(&aside, &sub).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), before, "the old file is whole");
    store.generation_build_finished("a", &Ok(()));
    assert!(store.last_error().is_none(), "the next write catches up");
    assert_eq!(Store::open(&path).unwrap().generation("a").unwrap().build_status, status::BUILT);
}
