//! Rows of evaluation reuse: a flake commit's first evaluation against the same commit
//! again on another branch and after a restart; the reference evaluates every time.

use std::sync::Arc;
use std::time::Instant;

use genbuild::{proto, Builder, BuilderConfig, FlakeExecutor, Store};

use crate::common::nix::{Env, Repo};
use crate::common::nix_shim::NixShim;
use crate::common::rs;
use crate::eval::HEAVY;
use crate::util::{fmt_ms, median, ms};
use crate::{row, Plan, Row, HANG};

/// A flake commit's first evaluation (about a second: [`HEAVY`]) against the same
/// commit again on another branch, and after a restart (a new store over the same
/// file, a new executor and builder, timed from the store's opening). The reference
/// evaluates every time: its column is the first evaluation's time. Each repetition
/// evaluates a new commit first; evaluator processes are counted through wrappers of
/// Nix's binaries.
pub(crate) fn reuse_rows(plan: &Plan) -> Vec<Row> {
    let (repo, env, shim) = (Repo::new(), Env::new(), NixShim::new());
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join("state.pb");
    let mut options = env.options();
    options.bin_dir = Some(shim.bin_dir());
    let mut config = BuilderConfig::new("bench", repo.path());
    config.eval_timeout = HANG;
    let start = |store: Store| {
        Builder::new(config.clone(), Arc::new(store), Arc::new(FlakeExecutor::new(options.clone())))
    };
    let eval = |builder: &Builder, rs: &proto::RepositoryStatus| {
        let uuid = builder.eval(rs).unwrap();
        assert_eq!(builder.evaluation_done().recv_timeout(HANG).unwrap(), uuid);
        let g = builder.state().generation.unwrap();
        assert_eq!(g.eval_status, "evaluated", "{}", g.eval_err);
        g
    };
    let toplevel = format!(
        r#"derivation {{ name = "heavy"; system = "{}-linux"; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; extra = {HEAVY}; }}"#,
        std::env::consts::ARCH
    );
    let mut builder = start(Store::open(&path).unwrap());
    let (mut first, mut again, mut restarted, mut evaluators) = (Vec::new(), Vec::new(), Vec::new(), 0);
    // One warm-up, then repetitions, each with a commit never evaluated.
    for rep in 0..=plan.eval_reps {
        let flake = format!(
            "# {rep}\n{{ outputs = {{ self }}: {{ nixosConfigurations.bench.config.system.build.toplevel = {toplevel}; }}; }}"
        );
        let commit = repo.write("flake.nix", &flake).commit();
        let t = Instant::now();
        let evaluated = eval(&builder, &rs(&commit));
        let first_elapsed = t.elapsed();
        assert_eq!(evaluated.eval_reused_from, "");
        let before = shim.evaluations();

        let testing = proto::RepositoryStatus { selected_branch_name: "testing".into(), ..rs(&commit) };
        let t = Instant::now();
        assert_eq!(eval(&builder, &testing).eval_reused_from, evaluated.uuid);
        let again_elapsed = t.elapsed();

        drop(builder);
        let t = Instant::now();
        builder = start(Store::open(&path).unwrap());
        assert_eq!(eval(&builder, &rs(&commit)).eval_reused_from, evaluated.uuid);
        let restarted_elapsed = t.elapsed();
        if rep > 0 {
            evaluators += shim.evaluations() - before;
            first.push(ms(first_elapsed));
            again.push(ms(again_elapsed));
            restarted.push(ms(restarted_elapsed));
        }
    }
    drop(builder);
    let (first, again, restarted) = (median(first), median(again), median(restarted));
    let reps = plan.eval_reps;
    let reused = format!("{evaluators} evaluator processes in {reps} (a wrapper of `nix` counts them)");
    vec![
        row(
            "flake eval() → evaluation_done, first evaluation (≈1 s expression)",
            fmt_ms(first),
            "—".into(),
            None,
            "one `nix eval`; each repetition a new commit".into(),
        ),
        row(
            "same commit again, on another branch: reused",
            fmt_ms(again),
            fmt_ms(first),
            Some(again / first),
            format!("reference evaluates again; {reused}"),
        ),
        row(
            "same commit after a restart (Store::open, new builder): reused",
            fmt_ms(restarted),
            fmt_ms(first),
            Some(restarted / first),
            format!("from Store::open; the new executor's `nix --version` included; {reused}"),
        ),
    ]
}
