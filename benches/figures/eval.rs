//! Rows of a real Nix evaluation: eval() → evaluation_done against the reference's
//! clone + checkout + two evaluations, the overhead over one bare `nix-instantiate`, and
//! stop() while the evaluator is busy on the CPU.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use genbuild::{Builder, BuilderConfig, NixExecutor, Store};

use crate::common::nix::{Env, Repo};
use crate::common::{busy_process, nonce, rs, ENDLESS_EVAL};
use crate::util::{
    commit_system, fmt_ms, git, kill_and_count, median, ms, nix_args, nix_builder, run, stop_and_count,
};
use crate::{row, Plan, Row, HANG};

/// About a second of evaluation on a 2-core EPYC: 900 × a 10,000-deep recursion,
/// feeding the derivation's environment so that the result cannot be skipped.
pub(crate) const HEAVY: &str = "(let f = n: if n == 0 then 0 else 1 + f (n - 1); \
                     in toString (builtins.foldl' (a: i: a + builtins.seq (f 10000) i) 0 (builtins.genList (x: x) 900)))";

pub(crate) fn eval_rows(plan: &Plan) -> Vec<Row> {
    let (repo, env) = (Repo::new(), Env::new());
    let commit = commit_system(&repo, "heavy", "echo > $out", HEAVY);
    let (builder, store) = nix_builder(&repo, &env);
    let evaluated = builder.evaluation_done();
    let paths_expr = |dir: &Path| {
        format!(
            "let s = (import {}).system; in {{ drv = s.toplevel.drvPath; out = s.toplevel.outPath; }}",
            dir.display()
        )
    };
    let (mut ours, mut reference, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    // One warm-up of each (page cache, Nix's own caches), then interleaved repetitions.
    for rep in 0..=plan.eval_reps {
        let t = Instant::now();
        let uuid = builder.eval(&rs(&commit)).unwrap();
        assert_eq!(evaluated.recv_timeout(HANG).unwrap(), uuid);
        let elapsed = t.elapsed();
        let g = store.generation(&uuid).unwrap();
        assert_eq!(g.eval_status, "evaluated", "{}", g.eval_err);

        let t = Instant::now();
        let checkout = tempfile::tempdir().unwrap();
        let tree = checkout.path().join("src");
        run(Command::new("git").args(["clone", "-q"]).arg(repo.path()).arg(&tree));
        run(git(&tree).args(["checkout", "-q", &commit]));
        let drv =
            run(Command::new("nix-instantiate").args(nix_args()).arg(&tree).args(["-A", "system.toplevel"]));
        let paths = run(Command::new("nix-instantiate").args(nix_args()).args([
            "--eval",
            "--strict",
            "--json",
            "--expr",
            &paths_expr(&tree),
        ]));
        drop(checkout);
        let ref_elapsed = t.elapsed();
        assert!(drv.ends_with(".drv") && paths.contains(&g.out_path), "{drv} {paths}");

        let t = Instant::now();
        run(Command::new("nix-instantiate").args(nix_args()).args([
            "--eval",
            "--strict",
            "--json",
            "--read-write-mode",
            "--expr",
            &paths_expr(repo.path()),
        ]));
        let bare_elapsed = t.elapsed();
        if rep > 0 {
            ours.push(ms(elapsed));
            reference.push(ms(ref_elapsed));
            bare.push(ms(bare_elapsed));
        }
    }
    drop(builder);
    let (ours, reference, bare) = (median(ours), median(reference), median(bare));
    vec![
        row(
            "eval() → evaluation_done (≈1 s expression)",
            fmt_ms(ours),
            fmt_ms(reference),
            Some(ours / reference),
            "reference: clone + checkout + 2 × nix-instantiate".into(),
        ),
        row(
            "eval() overhead over one bare nix-instantiate",
            fmt_ms(ours),
            fmt_ms(bare),
            Some(ours / bare),
            format!("+{} for the checkout, version probe, root", fmt_ms(ours - bare)),
        ),
    ]
}

/// stop() while a real evaluation is busy on the CPU, against SIGKILL of the
/// evaluator and a wait for it.
pub(crate) fn cpu_bound_stop_row(plan: &Plan) -> Row {
    let (repo, env) = (Repo::new(), Env::new());
    let commit = commit_system(&repo, "endless", "echo > $out", ENDLESS_EVAL);
    let (mut ours, mut reference, mut ours_left, mut ref_left) = (Vec::new(), Vec::new(), 0, 0);
    for _ in 0..plan.stop_reps {
        let n = nonce();
        let mut config = BuilderConfig::new("bench", repo.path());
        config.system_attr = "system".into();
        config.eval_timeout = HANG;
        // The option only carries the nonce into the evaluator's command line.
        let executor = NixExecutor::new(env.with("system-features", &n));
        let builder = Builder::new(config, Arc::new(Store::new()), Arc::new(executor));
        builder.eval(&rs(&commit)).unwrap();
        busy_process(&n, "nix-instantiate");
        let (took, left) = stop_and_count(builder, &n);
        ours.push(took);
        ours_left += left;

        let m = nonce();
        let evaluator = Command::new("nix-instantiate")
            .args(nix_args())
            .args(["--option", "system-features", &m])
            .arg(repo.path())
            .args(["-A", "system.toplevel"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        busy_process(&m, "nix-instantiate");
        let (took, left) = kill_and_count(evaluator, &m);
        reference.push(took);
        ref_left += left;
    }
    let (ours, reference) = (median(ours), median(reference));
    row(
        "stop() during a CPU-bound evaluation: latency",
        fmt_ms(ours),
        fmt_ms(reference),
        Some(ours / reference),
        format!(
            "SIGTERM, 100 ms grace, SIGKILL vs SIGKILL; processes left: {ours_left} vs {ref_left} in {} stops",
            plan.stop_reps
        ),
    )
}
