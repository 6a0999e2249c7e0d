//! Rows of a real Nix evaluation: eval() → evaluation_done against the reference's
//! clone + checkout + two evaluations, the overhead over one bare `nix-instantiate`, and
//! stop() while the evaluator is busy on the CPU.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use genbuild::{Builder, BuilderConfig, NixExecutor, Store};

use crate::common::nix::{Env, Repo};
use crate::common::{nonce, processes_with, rs};
use crate::util::{
    commit_system, count_and_kill_leftovers, fmt_ms, git, median, ms, nix_args, nix_builder, run,
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

/// Minutes of evaluation, as [`HEAVY`] a thousand times over.
const ENDLESS: &str = "(let f = n: if n == 0 then 0 else 1 + f (n - 1); \
    in toString (builtins.foldl' (a: i: a + builtins.seq (f 10000) i) 0 (builtins.genList (x: x) 1000000)))";

/// User + system CPU time of `pid`, in clock ticks (10 ms).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)
}

/// Until a `nix-instantiate` carrying `marker` has burnt a quarter second of CPU.
fn busy_evaluator(marker: &str) -> i32 {
    let deadline = Instant::now() + HANG;
    loop {
        assert!(Instant::now() < deadline, "the evaluation never got busy");
        let busy = processes_with(marker).into_iter().find(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default().to_vec();
            Path::new(&*String::from_utf8_lossy(&argv0)).file_name().is_some_and(|n| n == "nix-instantiate")
                && cpu_ticks(pid) >= 25
        });
        if let Some(pid) = busy {
            return pid;
        }
        std::thread::yield_now();
    }
}

/// stop() while a real evaluation is busy on the CPU, against SIGKILL of the
/// evaluator and a wait for it.
pub(crate) fn cpu_bound_stop_row(plan: &Plan) -> Row {
    let (repo, env) = (Repo::new(), Env::new());
    let commit = commit_system(&repo, "endless", "echo > $out", ENDLESS);
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
        busy_evaluator(&n);
        let t = Instant::now();
        builder.stop();
        ours.push(ms(t.elapsed()));
        drop(builder);
        ours_left += count_and_kill_leftovers(&n);

        let m = nonce();
        let mut evaluator = Command::new("nix-instantiate")
            .args(nix_args())
            .args(["--option", "system-features", &m])
            .arg(repo.path())
            .args(["-A", "system.toplevel"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        busy_evaluator(&m);
        let t = Instant::now();
        evaluator.kill().unwrap();
        evaluator.wait().unwrap();
        reference.push(ms(t.elapsed()));
        ref_left += count_and_kill_leftovers(&m);
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
