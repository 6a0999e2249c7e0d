//! [`NixExecutor`] against the real Nix: evaluation of a checkout with
//! `nix-instantiate`, builds with `nix-store --realise`, driven through the `Builder`.

mod common;

use std::time::{Duration, Instant};

use common::nix::*;
use genbuild::{NixExecutor, BUILD_REASON_ALREADY_BUILT};

/// A legacy `default.nix` taking `hostname`, whose `system.toplevel` runs `script`.
fn legacy(nonce: &str, script: &str, machine_id: Option<&str>) -> String {
    let id = machine_id.map(|id| format!("config.services.comin.machineId = {id:?};")).unwrap_or_default();
    format!(
        "{{ hostname }}: {{ system = {{ toplevel = {}; {id} }}; }}",
        drv("sys-${hostname}", nonce, script, "builtins.currentSystem")
    )
}

fn harness(env: &Env, repo: &Repo, hostname: &str) -> Harness {
    Harness::new(config(hostname, repo.path(), "system"), NixExecutor::new(env.options()))
}

#[test]
fn evaluates_builds_and_finds_it_already_built() {
    if !nix_or_skip() {
        return;
    }
    let (env, repo, n) = (Env::new(), Repo::new(), nonce());
    repo.write("default.nix", &legacy(&n, "echo hi > $out", Some("mid-1")));
    let commit = repo.commit();
    let h = harness(&env, &repo, "host1");
    let g = h.eval(&commit);
    assert_eq!(g.eval_status, "evaluated", "{}", g.eval_err);
    assert!(g.drv_path.ends_with("-sys-host1.drv"), "{}", g.drv_path);
    assert!(g.out_path.ends_with("-sys-host1"), "{}", g.out_path);
    assert_eq!(g.machine_id, "mid-1");
    let drv_root = build_rooted_then_already_built(&h, &env, &commit, &g);

    // Found built by a builder with roots of its own: its output is rooted all the same.
    let other = Env::new();
    let h = harness(&other, &repo, "host1");
    let uuid = h.builder.eval(&rs(&commit)).unwrap();
    assert_eq!(h.built.recv_timeout(HANG).unwrap(), uuid);
    assert_eq!(h.generation(&uuid).build_reason, BUILD_REASON_ALREADY_BUILT);
    assert_eq!(other.roots(), vec![drv_root.clone(), format!("{drv_root}.out")]);
    assert_no_process(&n);
}

#[test]
fn machine_id_absent_is_empty_and_plain_attrsets_work() {
    if !nix_or_skip() {
        return;
    }
    let (env, repo, n) = (Env::new(), Repo::new(), nonce());
    // Not a function: no hostname asked for.
    let system = drv("plain", &n, "echo > $out", "builtins.currentSystem");
    repo.write("default.nix", &format!("{{ system = {{ toplevel = {system}; config = {{}}; }}; }}"));
    let g = harness(&env, &repo, "h").eval(&repo.commit());
    assert_eq!(g.eval_status, "evaluated", "{}", g.eval_err);
    assert_eq!(g.machine_id, "");
}

#[test]
fn evaluates_the_commit_asked_for_in_a_subdir_with_submodules() {
    if !nix_or_skip() {
        return;
    }
    let (env, repo, sub, n) = (Env::new(), Repo::new(), Repo::new(), nonce());
    sub.write("id.nix", "\"from-submodule\"");
    sub.commit();
    repo.git(&["submodule", "add", "-q", sub.path().to_str().unwrap(), "hosts/x/vendor"]);
    let id = "import ./vendor/id.nix";
    repo.write(
        "hosts/x/default.nix",
        &format!(
            "{{ system = {{ toplevel = {}; config.services.comin.machineId = {id}; }}; }}",
            drv("x", &n, "echo > $out", "builtins.currentSystem")
        ),
    );
    let first = repo.commit();
    repo.write("hosts/x/default.nix", "throw \"the later commit was evaluated\"");
    repo.commit();

    let mut config = config("h", repo.path(), "system");
    config.repository_subdir = "hosts/x".into();
    config.submodules = true;
    let h = Harness::new(config.clone(), NixExecutor::new(env.options()));
    let g = h.eval(&first);
    assert_eq!(g.eval_status, "evaluated", "{}", g.eval_err);
    assert_eq!(g.machine_id, "from-submodule");

    config.submodules = false;
    let g = Harness::new(config, NixExecutor::new(env.options())).eval(&first);
    assert_eq!(g.eval_status, "failed");
    assert!(g.eval_err.contains("nix-instantiate") && g.eval_err.contains("id.nix"), "{}", g.eval_err);
}

#[test]
fn failures_carry_the_command_and_nix_own_message() {
    if !nix_or_skip() {
        return;
    }
    let (env, repo, n) = (Env::new(), Repo::new(), nonce());
    repo.write("default.nix", "{ system = { toplevel = ; }; }");
    let syntax = repo.commit();
    repo.write("default.nix", &legacy(&n, "echo failing-build-NONCE >&2; exit 1", None));
    let failing = repo.commit();
    let h = harness(&env, &repo, "h");

    let g = h.eval(&syntax);
    assert_eq!(g.eval_status, "failed");
    assert!(g.eval_err.contains("nix-instantiate") && g.eval_err.contains("syntax error"), "{}", g.eval_err);

    let g = h.eval(&"0".repeat(40));
    assert_eq!(g.eval_status, "failed");
    assert!(g.eval_err.contains("git") && g.eval_err.contains("0000000000"), "{}", g.eval_err);

    let g = Harness::new(config("h", repo.path(), "nope"), NixExecutor::new(env.options())).eval(&failing);
    assert!(g.eval_err.contains("attribute 'nope' missing"), "{}", g.eval_err);

    let g = h.eval(&failing);
    assert_eq!(g.eval_status, "evaluated", "{}", g.eval_err);
    let g = h.build(&g.uuid);
    assert_eq!(g.build_status, "failed");
    assert!(g.build_err.contains("nix-store --option"), "{}", g.build_err);
    assert!(g.build_err.contains("failing-build-NONCE"), "{}", g.build_err);
    assert!(g.build_err.contains("exit code 1"), "{}", g.build_err);
}

#[test]
fn hostile_values_are_data_or_refused() {
    if !nix_or_skip() {
        return;
    }
    let (env, repo, n) = (Env::new(), Repo::new(), nonce());
    let body = format!(
        "{{ hostname }}: {{ system = {{ toplevel = {}; config.services.comin.machineId = hostname; }}; }}",
        drv("hostile", &n, "echo > $out", "builtins.currentSystem")
    );
    let subdir = "odd\"${builtins.trace \"INJECTED\" 1}&rev=00\nx";
    repo.write(&format!("{subdir}/default.nix"), &body);
    let commit = repo.commit();

    let hostname = "h\"; x = ${builtins.trace \"INJECTED\" (abort \"INJECTED\")}; \n\"";
    let mut cfg = config(hostname, repo.path(), "system");
    cfg.repository_subdir = subdir.into();
    let h = Harness::new(cfg.clone(), NixExecutor::new(env.options()));
    let g = h.eval(&commit);
    assert_eq!(g.eval_status, "evaluated", "{}", g.eval_err);
    assert_eq!(g.machine_id, hostname);
    assert!(!h.logs().contains("trace: INJECTED"));

    cfg.system_attr = "system\"; y = ${builtins.trace \"INJECTED\" 1}".into();
    let h = Harness::new(cfg.clone(), NixExecutor::new(env.options()));
    let g = h.eval(&commit);
    assert_eq!(g.eval_status, "failed");
    assert!(g.eval_err.contains("missing"), "{}", g.eval_err);
    assert!(!h.logs().contains("trace: INJECTED"));
    assert!(!g.eval_err.contains("trace: INJECTED"));

    for (subdir, commit, why) in [
        ("../x", commit.as_str(), "invalid repository subdirectory"),
        ("/etc", commit.as_str(), "invalid repository subdirectory"),
        ("", "HEAD --upload-pack=touch /tmp/x", "invalid commit id"),
    ] {
        let mut cfg = config("h", repo.path(), "system");
        cfg.repository_subdir = subdir.into();
        let g = Harness::new(cfg, NixExecutor::new(env.options())).eval(commit);
        assert!(g.eval_err.contains(why), "{}", g.eval_err);
    }
}

#[test]
fn an_option_reaches_nix() {
    if !nix_or_skip() {
        return;
    }
    let (env, repo, n) = (Env::new(), Repo::new(), nonce());
    repo.write("default.nix", &legacy(&n, "echo > $out", None));
    let h = Harness::new(config("h", repo.path(), "system"), NixExecutor::new(env.with("max-jobs", "0")));
    let g = h.eval(&repo.commit());
    let g = h.build(&g.uuid);
    assert_eq!(g.build_status, "failed");
    assert!(g.build_err.contains("unable to start any build"), "{}", g.build_err);
}

#[test]
fn eval_and_build_time_out_and_leave_no_builder() {
    if !nix_or_skip() {
        return;
    }
    let (env, repo, n) = (Env::new(), Repo::new(), nonce());
    // Import from derivation: the evaluation itself waits for a sleeping builder.
    let ifd = drv("ifd", &n, &sleeper(&n), "builtins.currentSystem");
    repo.write("default.nix", &format!("import ({ifd})"));
    let slow_eval = repo.commit();
    let m = nonce();
    repo.write("default.nix", &legacy(&m, &sleeper(&m), None));
    let slow_build = repo.commit();

    let mut cfg = config("h", repo.path(), "system");
    cfg.eval_timeout = Duration::from_secs(3);
    cfg.build_timeout = Duration::from_secs(3);
    let h = Harness::new(cfg, NixExecutor::new(env.options()));
    let g = h.eval(&slow_eval);
    assert_eq!(g.eval_err, "timed out after 3s");
    assert_no_process(&n);

    let g = h.eval(&slow_build);
    let g = h.build(&g.uuid);
    assert_eq!(g.build_err, "timed out after 3s");
    assert_no_process(&m);
}

#[test]
fn stop_and_a_new_eval_end_a_build_and_its_builder() {
    if !nix_or_skip() {
        return;
    }
    let (env, repo) = (Env::new(), Repo::new());
    let (n, m) = (nonce(), nonce());
    repo.write("default.nix", &legacy(&n, &sleeper(&n), None));
    let first = repo.commit();
    repo.write("default.nix", &legacy(&m, &sleeper(&m), None));
    let second = repo.commit();
    let h = harness(&env, &repo, "h");

    let g = h.eval(&first);
    h.builder.submit_build(&g.uuid).unwrap();
    h.wait_for_log(&format!("started {n}"));
    let started = Instant::now();
    h.builder.stop();
    assert!(started.elapsed() < Duration::from_secs(10), "stop() took {:?}", started.elapsed());
    assert_eq!(h.built.recv_timeout(HANG).unwrap(), g.uuid);
    assert_eq!(h.generation(&g.uuid).build_err, "cancelled: stopped");
    assert_no_process(&n);

    let g = h.eval(&second);
    h.builder.submit_build(&g.uuid).unwrap();
    h.wait_for_log(&format!("started {m}"));
    let newer = h.builder.eval(&rs(&first)).unwrap();
    assert_eq!(h.built.recv_timeout(HANG).unwrap(), g.uuid);
    assert_eq!(h.generation(&g.uuid).build_err, format!("cancelled: superseded by generation {newer}"));
    assert_no_process(&m);
    assert_eq!(h.evaluated.recv_timeout(HANG).unwrap(), newer);
    h.builder.stop();
    assert_no_process(&n);
}
