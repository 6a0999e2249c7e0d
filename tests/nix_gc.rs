//! GC safety of the Nix executors: a real `nix-store --gc` between evaluation and build.
//! A collection deletes whatever other tests have not rooted yet, so this binary must
//! run alone: `cargo test --test nix_gc -- --test-threads=1`, not beside other Nix tests.

mod common;

use std::process::Command;

use common::nix::*;
use genbuild::{Executor, FlakeExecutor, NixExecutor, NixOptions};

fn gc() {
    let out = Command::new("nix-store").arg("--gc").output().expect("nix-store --gc");
    assert!(out.status.success(), "nix-store --gc: {}", String::from_utf8_lossy(&out.stderr));
}

fn survives_a_gc_between_eval_and_build(
    repo: &Repo,
    system_attr: &str,
    make: impl Fn(NixOptions) -> Box<dyn Executor>,
) {
    let env = Env::new();
    let commit = repo.commit();
    let h = Harness::new(config("h", repo.path(), system_attr), BoxedExecutor(make(env.options())));
    let g = h.eval(&commit);
    assert_eq!(g.eval_status, "evaluated", "{}", g.eval_err);
    gc();
    assert!(valid(&g.drv_path), "the .drv was collected");
    let g = h.build(&g.uuid);
    assert_eq!(g.build_status, "built", "{}", g.build_err);
    gc();
    assert!(valid(&g.out_path), "the output was collected");

    let executor = make(env.options());
    let mut release = genbuild::Job::new(
        move |ctx: &genbuild::JobContext| {
            executor.release_unused(&[], ctx);
            Ok(())
        },
        std::time::Duration::from_secs(60),
    );
    release.start();
    release.wait();
    assert!(env.roots().is_empty(), "{:?}", env.roots());
    gc();
    assert!(!valid(&g.out_path) && !valid(&g.drv_path), "released roots still protect their paths");
}

struct BoxedExecutor(Box<dyn Executor>);

impl Executor for BoxedExecutor {
    fn eval(
        &self,
        req: &genbuild::EvalRequest,
        ctx: &genbuild::JobContext,
    ) -> Result<genbuild::EvalOutput, genbuild::JobError> {
        self.0.eval(req, ctx)
    }
    fn build(&self, drv_path: &str, ctx: &genbuild::JobContext) -> Result<(), genbuild::JobError> {
        self.0.build(drv_path, ctx)
    }
    fn is_store_path_valid(&self, path: &str) -> bool {
        self.0.is_store_path_valid(path)
    }
    fn release_unused(&self, live: &[String], ctx: &genbuild::JobContext) {
        self.0.release_unused(live, ctx)
    }
}

#[test]
fn roots_protect_drv_and_output_until_released() {
    if !nix_or_skip() {
        return;
    }
    let n = nonce();
    let legacy = Repo::new();
    legacy.write(
        "default.nix",
        &format!(
            "{{ system.toplevel = {}; }}",
            drv("gc-legacy", &n, "echo > $out", "builtins.currentSystem")
        ),
    );
    survives_a_gc_between_eval_and_build(&legacy, "system", |o| Box::new(NixExecutor::new(o)));

    let flake = Repo::new();
    let system = format!("{:?}", system());
    flake.write(
        "flake.nix",
        &format!(
            "{{ outputs = {{ self }}: {{ nixosConfigurations.h.config.system.build.toplevel = {}; }}; }}",
            drv("gc-flake", &n, "echo > $out", &system)
        ),
    );
    survives_a_gc_between_eval_and_build(&flake, "nixosConfigurations", |o| Box::new(FlakeExecutor::new(o)));
}
