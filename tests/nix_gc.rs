//! GC safety of the Nix executors: a real `nix-store --gc` between evaluation and build.
//! A collection deletes whatever other tests have not rooted yet, so this binary must
//! run alone (`flock -x /tmp/genbuild-nix.lock cargo test --test nix_gc`), not beside
//! other Nix tests.

mod common;

use std::process::Command;
use std::time::Duration;

use common::nix::*;
use genbuild::{Job, JobContext};

/// A collection while the other test evaluates would delete what is not rooted yet
/// (the executors handle that, but each test wants its own collections).
static ONE_AT_A_TIME: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

fn gc() {
    let out = Command::new("nix-store").arg("--gc").output().expect("nix-store --gc");
    assert!(out.status.success(), "nix-store --gc: {}", String::from_utf8_lossy(&out.stderr));
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

        let executor = kind.executor(env.options());
        let mut release = Job::new(
            move |ctx: &JobContext| {
                executor.release_unused(&[], ctx);
                Ok(())
            },
            Duration::from_secs(60),
        )
        .with_gc_root_owner(h.store.id());
        release.start();
        release.wait();
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
