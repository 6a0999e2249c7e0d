//! Evaluation reuse with the real Nix (issue 13): a commit evaluated once is not
//! evaluated again where that is sound. The evaluator processes are counted through
//! wrappers of Nix's binaries ([`NixShim`]), so "reused" means no evaluator ran.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::nix::*;
use common::nix_shim::NixShim;
use genbuild::proto::RepositoryStatus;
use genbuild::{Executor, FlakeExecutor, NixExecutor, NixOptions, Store};

/// A flake with two hosts, `h1` and `h2`, whose systems differ.
fn two_hosts(repo: &Repo, n: &str) -> String {
    let system = format!("{:?}", system());
    let host = |name: &str| {
        format!("{name} = {{ config.system.build.toplevel = {}; }};", drv(name, n, "echo > $out", &system))
    };
    repo.write(
        "flake.nix",
        &format!(
            "{{ outputs = {{ self }}: {{ nixosConfigurations = {{ {} {} }}; }}; }}",
            host("h1"),
            host("h2")
        ),
    );
    repo.commit()
}

fn options(env: &Env, shim: &NixShim) -> NixOptions {
    let mut options = env.options();
    options.bin_dir = Some(shim.bin_dir());
    options
}

fn flake(hostname: &str, repo: &Repo, store: &Arc<Store>, env: &Env, shim: &NixShim) -> Harness {
    let executor = Arc::new(FlakeExecutor::new(options(env, shim)));
    Harness::with_store(nix_config(hostname, repo.path(), "nixosConfigurations"), store.clone(), executor)
}

/// `commit` on another branch of another remote, with another message.
fn promoted(commit: &str) -> RepositoryStatus {
    RepositoryStatus {
        selected_commit_id: commit.into(),
        selected_commit_msg: "promoted".into(),
        selected_remote_name: "upstream".into(),
        selected_branch_name: "testing".into(),
        selected_branch_is_testing: Some(true),
        ..Default::default()
    }
}

fn eval_rs(h: &Harness, rs: &RepositoryStatus) -> genbuild::proto::Generation {
    let uuid = h.builder.eval(rs).expect("eval");
    assert_eq!(h.evaluated.recv_timeout(NIX_HANG).expect("evaluation_done"), uuid);
    h.generation(&uuid)
}

#[test]
fn a_flake_commit_is_reused_on_another_branch_and_after_a_restart_not_for_another_host() {
    if !nix_or_skip() {
        return;
    }
    let (env, repo, shim, n) = (Env::new(), Repo::new(), NixShim::new(), nonce());
    let commit = two_hosts(&repo, &n);
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join("state.pb");

    let store = Arc::new(Store::open(&path).unwrap());
    let h = flake("h1", &repo, &store, &env, &shim);
    let first = h.eval(&commit);
    assert_eq!(first.eval_status, "evaluated", "{}", first.eval_err);
    assert_eq!((first.eval_reused_from.as_str(), shim.evaluations()), ("", 1));

    let again = eval_rs(&h, &promoted(&commit));
    assert_eq!(again.eval_status, "evaluated", "{}", again.eval_err);
    assert_eq!(again.eval_reused_from, first.uuid);
    assert_eq!((&again.drv_path, &again.out_path), (&first.drv_path, &first.out_path));
    assert_eq!(
        (again.selected_branch_name.as_str(), again.selected_commit_msg.as_str()),
        ("testing", "promoted")
    );
    assert_eq!(shim.evaluations(), 1, "no `nix eval` ran: {:#?}", shim.invocations());
    let drv_root = first.drv_path.rsplit('/').next().unwrap().to_string();
    assert!(env.roots_of(&store).contains(&drv_root), "{:?}", env.roots_of(&store));
    drop(h);
    drop(store);

    // A restart: a new store over the same file, a new executor, a new builder.
    let store = Arc::new(Store::open(&path).unwrap());
    let h = flake("h1", &repo, &store, &env, &shim);
    let restarted = h.eval(&commit);
    assert_eq!(restarted.eval_reused_from, first.uuid, "{}", restarted.eval_err);
    assert_eq!(restarted.drv_path, first.drv_path);
    assert_eq!(shim.evaluations(), 1, "no `nix eval` after the restart: {:#?}", shim.invocations());

    // Another host: another key.
    let other = flake("h2", &repo, &store, &env, &shim).eval(&commit);
    assert_eq!(other.eval_status, "evaluated", "{}", other.eval_err);
    assert_eq!(other.eval_reused_from, "");
    assert_ne!(other.drv_path, first.drv_path);
    assert_eq!(shim.evaluations(), 2);
    assert_no_process(&repo.path().to_string_lossy());
}

/// Removes every root `owner` keeps in `env` (as its builder does once its generations
/// are gone).
fn release_roots(env: &Env, shim: &NixShim, owner: &str) {
    let executor = FlakeExecutor::new(options(env, shim));
    in_job(owner, move |ctx| executor.release_unused(&[], ctx));
}

fn delete(path: &str) {
    let out = std::process::Command::new("nix-store").args(["--delete", path]).output().unwrap();
    assert!(out.status.success(), "nix-store --delete {path}: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!valid(path));
}

#[test]
fn a_collected_drv_is_evaluated_again_and_then_reused() {
    if !nix_or_skip() {
        return;
    }
    let (env, repo, shim, n) = (Env::new(), Repo::new(), NixShim::new(), nonce());
    let commit = two_hosts(&repo, &n);
    let store = Arc::new(Store::new());
    let first = flake("h1", &repo, &store, &env, &shim).eval(&commit);
    assert_eq!(first.eval_status, "evaluated", "{}", first.eval_err);
    release_roots(&env, &shim, store.id());
    delete(&first.drv_path);

    let h = flake("h1", &repo, &store, &env, &shim);
    let events = h.builder.subscribe();
    let second = h.eval(&commit);
    assert_eq!(second.eval_status, "evaluated", "{}", second.eval_err);
    assert_eq!(second.eval_reused_from, "", "a collected .drv is not reused");
    assert_eq!(second.drv_path, first.drv_path, "the same inputs give the same .drv");
    assert!(valid(&second.drv_path));
    assert_eq!(shim.evaluations(), 2);
    let logs: Vec<String> = events
        .try_iter()
        .filter_map(|e| match e.kind? {
            genbuild::proto::event::Kind::LogLine(l) => Some(l.line),
            _ => None,
        })
        .collect();
    assert!(logs.iter().any(|l| l.contains("is no longer valid; evaluating")), "{logs:?}");
    let sources: Vec<String> = store.reusable_evaluations().into_iter().map(|e| e.source_uuid).collect();
    assert_eq!(
        sources,
        std::slice::from_ref(&second.uuid),
        "the stale entry went, the new evaluation is kept"
    );

    let third = h.eval(&commit);
    assert_eq!(third.eval_reused_from, second.uuid);
    assert_eq!(shim.evaluations(), 2);
}

#[test]
fn legacy_evaluations_are_reused_only_when_asked_and_never_for_a_flake() {
    if !nix_or_skip() {
        return;
    }
    let (env, repo, shim, n) = (Env::new(), Repo::new(), NixShim::new(), nonce());
    repo.write("default.nix", &Kind::Legacy.expression("h", &n, "echo > $out", None));
    repo.write("flake.nix", &Kind::Flake.expression("h", &n, "echo > $out", None));
    let commit = repo.commit();
    let store = Arc::new(Store::new());
    let legacy = |reuse: bool| -> Harness {
        let mut options = options(&env, &shim);
        options.reuse_legacy_evaluations = reuse;
        let executor: Arc<dyn Executor> = Arc::new(NixExecutor::new(options));
        Harness::with_store(nix_config("h", repo.path(), "system"), store.clone(), executor)
    };

    let h = legacy(false);
    let (a, b) = (h.eval(&commit), eval_rs(&h, &promoted(&commit)));
    assert_eq!(
        (a.eval_status.as_str(), b.eval_status.as_str()),
        ("evaluated", "evaluated"),
        "{}",
        a.eval_err
    );
    assert_eq!(b.eval_reused_from, "", "not without the opt-in");
    assert_eq!(shim.evaluations(), 2);
    assert!(h.store.reusable_evaluations().is_empty());

    // The same commit, host and repository through the flake executor, over the same
    // store: kept under a key of its own kind, which the legacy executor never asks for.
    let f = flake("h", &repo, &store, &env, &shim).eval(&commit);
    assert_eq!(f.eval_status, "evaluated", "{}", f.eval_err);
    assert_eq!(shim.evaluations(), 3);

    let h = legacy(true);
    let a = h.eval(&commit);
    assert_eq!(a.eval_reused_from, "", "the flake's evaluation is not the legacy one's");
    let b = eval_rs(&h, &promoted(&commit));
    assert_eq!(b.eval_reused_from, a.uuid, "{}", b.eval_err);
    assert_eq!(b.drv_path, a.drv_path);
    assert_eq!(shim.evaluations(), 4, "one evaluation with the opt-in: {:#?}", shim.invocations());
    assert_eq!(store.reusable_evaluations().len(), 2, "one per executor kind");
    assert_no_process(&Path::new(repo.path()).to_string_lossy());
}

/// Wrappers of Nix's binaries whose `nix-store --check-validity` hangs (a `sleep`
/// carrying the nonce) while the flag file exists: a check a cancel interrupts.
struct HangingCheck {
    dir: tempfile::TempDir,
}

impl HangingCheck {
    fn new(nonce: &str) -> HangingCheck {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("hang");
        for program in ["nix", "nix-store", "nix-instantiate"] {
            let found =
                std::process::Command::new("sh").args(["-c", &format!("command -v {program}")]).output();
            let real = String::from_utf8(found.unwrap().stdout).unwrap().trim().to_string();
            let script = format!(
                "#!/bin/sh\ncase \" $* \" in *' --check-validity '*) [ -e '{}' ] && exec sleep 300.{nonce};; esac\nexec '{real}' \"$@\"\n",
                flag.display()
            );
            let path = dir.path().join(program);
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        HangingCheck { dir }
    }

    fn hang(&self, on: bool) {
        let flag = self.dir.path().join("hang");
        if on {
            std::fs::write(flag, "").unwrap();
        } else {
            let _ = std::fs::remove_file(flag);
        }
    }
}

/// A validity check the cancel interrupts did not answer: neither the check after an
/// evaluation ("garbage-collected right after its evaluation; evaluating again") nor
/// the check of a reuse ("no longer valid", and the reusable evaluation forgotten)
/// takes the interruption for an invalid path.
#[test]
fn a_stop_during_a_validity_check_is_no_invalid_path() {
    if !nix_or_skip() {
        return;
    }
    let (env, repo, n) = (Env::new(), Repo::new(), nonce());
    let commit = two_hosts(&repo, &n);
    let check = HangingCheck::new(&n);
    let mut options = env.options();
    options.bin_dir = Some(check.dir.path().to_path_buf());
    let store = Arc::new(Store::new());
    let h = Harness::with_store(
        nix_config("h1", repo.path(), "nixosConfigurations"),
        store.clone(),
        Arc::new(FlakeExecutor::new(options)),
    );
    let stopped_in_the_check = |what: &str| {
        let uuid = h.builder.eval(&rs(&commit)).unwrap();
        common::wait_for_processes(&n, 1);
        h.builder.stop();
        assert_no_process(&n);
        assert_eq!(h.evaluated.recv_timeout(NIX_HANG).unwrap(), uuid);
        let g = h.generation(&uuid);
        assert_eq!((g.eval_status.as_str(), g.eval_err.as_str()), ("failed", "cancelled: stopped"), "{what}");
        h.logs()
    };

    // The check after the evaluation.
    check.hang(true);
    let logs = stopped_in_the_check("the check after the evaluation");
    assert!(!logs.contains("garbage-collected"), "{logs}");
    assert!(store.reusable_evaluations().is_empty());

    check.hang(false);
    let first = h.eval(&commit);
    assert_eq!(first.eval_status, "evaluated", "{}", first.eval_err);
    assert_eq!(store.reusable_evaluations().len(), 1);

    // The check of a reuse.
    check.hang(true);
    let logs = stopped_in_the_check("the check of a reuse");
    assert!(!logs.contains("no longer valid"), "{logs}");
    let kept: Vec<String> = store.reusable_evaluations().into_iter().map(|e| e.source_uuid).collect();
    assert_eq!(
        kept,
        std::slice::from_ref(&first.uuid),
        "the interrupted check forgot the reusable evaluation"
    );

    check.hang(false);
    let again = h.eval(&commit);
    assert_eq!(again.eval_reused_from, first.uuid, "{}", again.eval_err);
}
