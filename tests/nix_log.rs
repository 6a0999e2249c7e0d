//! Nix's log with the real Nix where lines get long: a builder's line or an evaluation
//! error longer than the pipe reader's 64 KiB pieces, a failing build's long last line.

mod common;

use common::nix::*;
use genbuild::proto::event;

/// The log lines received so far: text and derivation.
fn log_lines(h: &Harness) -> Vec<(String, String)> {
    let lines = h.events.try_iter().filter_map(|e| match e.kind {
        Some(event::Kind::LogLine(l)) => Some((l.line, l.drv_path)),
        _ => None,
    });
    lines.collect()
}

/// A legacy system whose build runs `script` and fails, evaluated and built: the
/// harness (its events kept), the failed generation, the nonce.
fn failed_build(script: &str) -> (Harness, genbuild::proto::Generation, String) {
    let (kind, env, repo, n) = (Kind::Legacy, Env::new(), Repo::new(), nonce());
    repo.write(kind.file(), &kind.expression("h", &n, script, None));
    let commit = repo.commit();
    let h = Harness::of(kind, &env, &repo, "h");
    let g = h.eval(&commit);
    assert_eq!(g.eval_status, "evaluated", "{}", g.eval_err);
    let g = h.build(&g.uuid);
    assert_eq!(g.build_status, "failed");
    assert_no_process(&n);
    (h, g, n)
}

/// The line reached Nix's log as one `@nix` JSON line of about 70 KB, which the pipe
/// reader hands in pieces: it used to be logged as raw JSON fragments, without its
/// derivation.
#[test]
fn a_build_line_longer_than_64_kib_is_logged_whole_with_its_derivation() {
    if !nix_or_skip() {
        return;
    }
    let (h, g, _) = failed_build(
        "printf 'LINE-START'; i=0; while [ $i -lt 7000 ]; do printf xxxxxxxxxx; i=$((i+1)); done; echo MARKER-END; echo short-last-line; exit 1",
    );
    let lines = log_lines(&h);
    // Through a daemon Nix's error repeats the last lines: its own line, no derivation's.
    let long: Vec<&(String, String)> =
        lines.iter().filter(|(l, drv)| l.contains("MARKER-END") && !drv.is_empty()).collect();
    assert_eq!(long.len(), 1, "{:?}", lines.iter().map(|(l, _)| &l[..l.len().min(80)]).collect::<Vec<_>>());
    let expected = format!("LINE-START{}MARKER-END", "x".repeat(70_000));
    assert_eq!((long[0].0.as_str(), long[0].1.as_str()), (expected.as_str(), g.drv_path.as_str()));
    assert!(!lines.iter().any(|(l, _)| l.contains("@nix") || l.contains("\"action\"")), "raw JSON logged");
    assert!(g.build_err.ends_with("MARKER-END\nshort-last-line"), "{}", g.build_err);
}

/// An evaluation error longer than 64 KiB used to vanish from `eval_err`, raw JSON in
/// its place.
#[test]
fn a_long_evaluation_error_is_its_text_not_raw_json() {
    if !nix_or_skip() {
        return;
    }
    let (kind, env, repo) = (Kind::Legacy, Env::new(), Repo::new());
    let toplevel = r#"throw ("BIG-ERROR " + builtins.concatStringsSep "" (builtins.genList (_: "yyyyyyyyyy") 7000) + " END-OF-ERROR")"#;
    repo.write(kind.file(), &kind.expression_with("h", "", toplevel, None));
    let commit = repo.commit();
    let h = Harness::of(kind, &env, &repo, "h");
    let g = h.eval(&commit);
    assert_eq!(g.eval_status, "failed");
    let err = &g.eval_err;
    assert!(err.contains("BIG-ERROR yyyyyyyyyy"), "{}", &err[..err.len().min(600)]);
    assert!(!err.contains("@nix") && !err.contains("\\u001b") && !err.contains("\"action\""), "{err}");
    let lines = log_lines(&h);
    assert!(lines.iter().any(|(l, _)| l.contains("BIG-ERROR") && l.ends_with(" END-OF-ERROR")));
    assert!(!lines.iter().any(|(l, _)| l.contains("@nix")), "raw JSON logged");
}

/// A failing build whose last line is longer than the failure's 4096 bytes used to
/// lose every last line, that one included.
#[test]
fn a_long_last_build_line_leaves_the_failure_its_last_lines() {
    if !nix_or_skip() {
        return;
    }
    let (_, g, _) = failed_build(
        "echo 'compiling foo.c'; echo 'foo.c:1: error: something broke'; i=0; while [ $i -lt 500 ]; do printf 'gcc-arg-%04d ' $i; i=$((i+1)); done; echo; exit 1",
    );
    let err = &g.build_err;
    assert!(err.contains("compiling foo.c\nfoo.c:1: error: something broke\n"), "{err}");
    assert!(err.contains("gcc-arg-0499"), "{err}");
}
