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

use common::nix::{nix_or_skip, nonce, Env, Repo, HANG};
use common::{assert_no_process, auto_containment, processes_with};
use genbuild::{BuilderConfig, Containment, NixExecutor};

/// Minutes of evaluation: a 10,000-deep recursion, a million times, feeding the
/// derivation so that it cannot be skipped.
const ENDLESS: &str = "(let f = n: if n == 0 then 0 else 1 + f (n - 1); \
    in toString (builtins.foldl' (a: i: a + builtins.seq (f 10000) i) 0 (builtins.genList (x: x) 1000000)))";

/// User + system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)
}

fn is_evaluator(pid: i32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    Path::new(&*String::from_utf8_lossy(argv0)).file_name().is_some_and(|n| n == "nix-instantiate")
}

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
            r#"{{ system = {{ toplevel = derivation {{ name = "endless"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; work = {ENDLESS}; }}; }}; }}"#
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

        // Until the evaluator has burnt a quarter second of CPU: it is deep in the work.
        let deadline = Instant::now() + HANG;
        let evaluator = loop {
            assert!(Instant::now() < deadline, "the evaluation never got busy");
            let busy = processes_with(&n).into_iter().find(|&pid| is_evaluator(pid) && cpu_ticks(pid) >= 25);
            if let Some(pid) = busy {
                break pid;
            }
            std::thread::yield_now();
        };
        let started = Instant::now();
        builder.stop();
        let took = started.elapsed();
        eprintln!("{containment:?}: stop() during a CPU-bound evaluation took {took:?}");
        assert!(took < Duration::from_millis(500), "{containment:?}: stop() took {took:?}");
        assert!(!Path::new(&format!("/proc/{evaluator}")).exists(), "the evaluator {evaluator} is left");
        assert_no_process(&n);
        assert_eq!(store.generation(&uuid).unwrap().eval_err, "cancelled: stopped");
    }
}
