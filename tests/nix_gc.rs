//! GC safety of the Nix executors: a real `nix-store --gc` between evaluation and build.
//! A collection deletes whatever other tests have not rooted yet, so this binary must
//! run alone (`flock -x /tmp/genbuild-nix.lock cargo test --test nix_gc`), not beside
//! other Nix tests.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::nix::*;
use genbuild::{EvalOutput, Job, JobContext, JobOutput, LogSink, Store};

/// A collection while the other test evaluates would delete what is not rooted yet
/// (the executors handle that, but each test wants its own collections).
static ONE_AT_A_TIME: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

fn gc() {
    let out = Command::new("nix-store").arg("--gc").output().expect("nix-store --gc");
    assert!(out.status.success(), "nix-store --gc: {}", String::from_utf8_lossy(&out.stderr));
}

/// Removes every root `owner` keeps in `env` (as its builder does once its generations
/// are gone).
fn release_roots(kind: Kind, env: &Env, owner: &str) {
    let executor = kind.executor(env.options());
    in_job(owner, move |ctx| executor.release_unused(&[], ctx));
}

fn system(kind: Kind, name: &str) -> Repo {
    let repo = Repo::new();
    let toplevel = drv(name, &nonce(), "echo > $out", &kind.current_system());
    repo.write(kind.file(), &kind.expression_with("h", "", &toplevel, None));
    repo
}

#[test]
fn roots_protect_drv_and_output_until_released() {
    if !nix_or_skip() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock();
    for kind in KINDS {
        let (env, repo) = (Env::new(), system(kind, "gc"));
        let h = Harness::of(kind, &env, &repo, "h");
        let g = h.eval(&repo.commit());
        assert_eq!(g.eval_status, "evaluated", "{}", g.eval_err);
        gc();
        assert!(valid(&g.drv_path), "{kind:?}: the .drv was collected");
        let g = h.build(&g.uuid);
        assert_eq!(g.build_status, "built", "{}", g.build_err);
        gc();
        assert!(valid(&g.out_path), "{kind:?}: the output was collected");

        release_roots(kind, &env, h.store.id());
        assert!(env.roots_of(&h.store).is_empty(), "{:?}", env.roots_of(&h.store));
        gc();
        assert!(
            !valid(&g.out_path) && !valid(&g.drv_path),
            "{kind:?}: released roots still protect their paths"
        );
    }
}

/// Issue 9 item 8: B's first evaluation used to release A's root, and a collection then
/// deleted the .drv A's confirmed build needed.
#[test]
fn another_builder_on_the_same_root_dir_does_not_expose_a_drv_to_the_collector() {
    if !nix_or_skip() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock();
    for kind in KINDS {
        let env = Env::new();
        let (a, b) = (system(kind, "gc-a"), system(kind, "gc-b"));
        let ha = Harness::of(kind, &env, &a, "h");
        let ga = ha.eval(&a.commit());
        assert_eq!(ga.eval_status, "evaluated", "{}", ga.eval_err);
        // Another builder, with an executor of its own, on the same directory.
        let hb = Harness::of(kind, &env, &b, "h");
        assert_eq!(hb.eval(&b.commit()).eval_status, "evaluated");
        gc();
        assert!(valid(&ga.drv_path), "{kind:?}: B's evaluation exposed A's .drv");
        let ga = ha.build(&ga.uuid);
        assert_eq!(ga.build_status, "built", "{kind:?}: {}", ga.build_err);
    }
}

/// Runs `program` with the tests' settings, returning its stdout's last line.
fn nix(program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    for (name, value) in SETTINGS {
        cmd.args(["--option", name, value]);
    }
    let out = cmd.args(args).output().expect(program);
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string()
}

/// Nix's collector reads the roots once, early, under an exclusive `gc.lock`, and
/// deletes afterwards: a root made after that scan used to protect nothing, although the
/// path was valid when it was checked. A root is now made as Nix makes one, under a
/// shared `gc.lock`: here the test holds the lock as a running collection does, the
/// roots wait for it, and once it is let go they protect their paths from a real
/// collection.
#[test]
fn a_root_made_while_a_collection_runs_waits_for_it_and_then_protects_its_path() {
    if !nix_or_skip() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock();
    for kind in KINDS {
        let env = Env::new();
        let n = nonce();
        let file = env.roots.path().join(format!("out-{n}"));
        std::fs::write(&file, &n).unwrap();
        // Paths in the store that nothing roots: an output and a derivation.
        let out_path = nix("nix-store", &["--add", file.to_str().unwrap()]);
        let drv_path =
            nix("nix-instantiate", &["-E", &drv("held", &n, "echo > $out", "builtins.currentSystem")]);
        let output =
            EvalOutput { drv_path: drv_path.clone(), out_path: out_path.clone(), machine_id: String::new() };
        let store = Store::new();

        let collection =
            std::fs::File::options().read(true).write(true).open("/nix/var/nix/gc.lock").unwrap();
        rustix::fs::flock(&collection, rustix::fs::FlockOperation::LockExclusive).unwrap();
        let (lines, logged) = crossbeam_channel::unbounded();
        let logs: LogSink = Arc::new(move |output: JobOutput<'_>| {
            if let JobOutput::Line { text, .. } = output {
                let _ = lines.send(text.to_string());
            }
        });
        let (answers, answered) = crossbeam_channel::bounded(1);
        let executor = kind.executor(env.options());
        let mut job = Job::new(
            move |ctx: &JobContext| {
                let built = executor.is_built(&output, ctx);
                let reusable = executor.reuse_evaluation(&output, ctx);
                let _ = answers.send((built, reusable));
                Ok(())
            },
            NIX_HANG,
        )
        .with_gc_root_owner(store.id())
        .with_log_sink(logs);
        job.start();
        let line = logged.recv_timeout(NIX_HANG).expect("a line saying the root waits for the collection");
        assert!(line.starts_with("waiting for the running garbage collection to end"), "{line}");
        assert_eq!(env.roots_of(&store), Vec::<String>::new(), "{kind:?}: rooted while a collection runs");
        rustix::fs::flock(&collection, rustix::fs::FlockOperation::Unlock).unwrap();
        let (built, reusable) = answered.recv_timeout(NIX_HANG).expect("the job's answers");
        job.wait();
        assert_no_process(&n);
        assert!(built, "{kind:?}: the output is in the store");
        assert_eq!(reusable, Ok(true), "{kind:?}: the .drv is in the store");

        for path in [&out_path, &drv_path] {
            let deleted = Command::new("nix-store").args(["--delete", path]).output().unwrap();
            assert!(!deleted.status.success() && valid(path), "{kind:?}: {path} was not protected");
        }
        release_roots(kind, &env, store.id());
        for path in [&out_path, &drv_path] {
            let deleted = Command::new("nix-store").args(["--delete", path]).output().unwrap();
            assert!(deleted.status.success(), "{kind:?}: {}", String::from_utf8_lossy(&deleted.stderr));
        }
    }
}
