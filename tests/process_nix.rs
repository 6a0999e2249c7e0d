//! A real, CPU-bound Nix evaluation is stopped at once: an evaluator does not act on
//! SIGTERM, so evaluations get a grace of 100 ms (`ProcessOptions::eval_kill_grace`)
//! instead of the 5 s of builds.
//!
//! Uses the machine's Nix (Debian's nix-bin, root single-user, settings as `--option`);
//! skipped when Nix is missing, except under `CI=true`. Run under
//! `flock -s /tmp/genbuild-nix.lock`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::nix::{nix_or_skip, nonce, Env, Repo, NIX_HANG as HANG};
use common::{assert_no_process, auto_containment, busy_process, ENDLESS_EVAL};
use genbuild::{BuilderConfig, Containment, NixExecutor};

#[test]
fn stop_during_a_cpu_bound_evaluation_returns_at_once_and_leaves_no_nix_process() {
    if !nix_or_skip() {
        return;
    }
    for containment in [Containment::Auto, Containment::ProcessTree] {
        match &containment {
            Containment::Auto => eprintln!("containment: {}", auto_containment()),
            other => eprintln!("containment: {other:?}"),
        }
        let (repo, env) = (Repo::new(), Env::new());
        let n = nonce();
        let expr = format!(
            r#"{{ system = {{ toplevel = derivation {{ name = "endless"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; work = {ENDLESS_EVAL}; }}; }}; }}"#
        );
        let commit = repo.write("default.nix", &expr).commit();
        let mut config = BuilderConfig::new("h", repo.path());
        config.system_attr = "system".into();
        config.eval_timeout = HANG;
        config.process.containment = containment.clone();
        // Carries the nonce into the evaluator's command line; harmless to an evaluation.
        let executor = NixExecutor::new(env.with("system-features", &n));
        let store = std::sync::Arc::new(genbuild::Store::new());
        let builder = genbuild::Builder::new(config, store.clone(), std::sync::Arc::new(executor));
        let uuid = builder.eval(&common::rs(&commit)).unwrap();

        let evaluator = busy_process(&n, "nix-instantiate");
        let started = Instant::now();
        builder.stop();
        let took = started.elapsed();
        eprintln!("{containment:?}: stop() during a CPU-bound evaluation took {took:?}");
        // The evaluation grace is 100 ms, a build's 5 s: the bound tells them apart, with
        // room for a loaded machine.
        assert!(took < Duration::from_millis(2500), "{containment:?}: stop() took {took:?}");
        assert!(!Path::new(&format!("/proc/{evaluator}")).exists(), "the evaluator {evaluator} is left");
        assert_no_process(&n);
        assert_eq!(store.generation(&uuid).unwrap().eval_err, "cancelled: stopped");
    }
}
