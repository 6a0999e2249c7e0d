//! [`FlakeExecutor`] against the real Nix: `nix eval` of `git+file://…?rev=…`, builds
//! with `nix build --out-link`, driven through the `Builder`.

mod common;

use std::time::{Duration, Instant};

use common::nix::*;
use genbuild::FlakeExecutor;

/// `s` as a Nix string literal.
fn nix_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").replace("${", "\\${"))
}

/// A `flake.nix` without inputs; host `hostname`'s toplevel runs `script`.
fn flake(hostname: &str, nonce: &str, script: &str, machine_id: Option<&str>) -> String {
    let id = machine_id.map(|id| format!("config.services.comin.machineId = {id:?};")).unwrap_or_default();
    let system = format!("{:?}", system());
    format!(
        "{{ outputs = {{ self }}: {{ nixosConfigurations.{} = {{ config.system.build.toplevel = {}; {id} }}; }}; }}",
        nix_str(hostname),
        drv("fsys", nonce, script, &system)
    )
}

fn harness(env: &Env, repo: &Repo, hostname: &str) -> Harness {
    Harness::new(config(hostname, repo.path(), "nixosConfigurations"), FlakeExecutor::new(env.options()))
}

#[test]
fn evaluates_builds_and_finds_it_already_built() {
    if !nix_or_skip() {
        return;
    }
    let (env, repo, n) = (Env::new(), Repo::new(), nonce());
    repo.write("flake.nix", &flake("host1", &n, "echo hi > $out", Some("mid-1")));
    let commit = repo.commit();
    // A later commit on another branch; HEAD stays elsewhere.
    repo.git(&["checkout", "-q", "-b", "other"]);
    repo.write("flake.nix", "throw \"the later commit was evaluated\"");
    repo.commit();
    let h = harness(&env, &repo, "host1");
    let g = h.eval(&commit);
    assert_eq!(g.eval_status, "evaluated", "{}", g.eval_err);
    assert!(g.drv_path.ends_with("-fsys.drv"), "{}", g.drv_path);
    assert_eq!(g.machine_id, "mid-1");
    build_rooted_then_already_built(&h, &env, &commit, &g);
}

#[test]
fn subdir_submodules_and_absent_machine_id() {
    if !nix_or_skip() {
        return;
    }
    let (env, repo, sub, n) = (Env::new(), Repo::new(), Repo::new(), nonce());
    sub.write("name.nix", "\"from-submodule\"");
    sub.commit();
    repo.git(&["submodule", "add", "-q", sub.path().to_str().unwrap(), "hosts/x&rev=0/vendor"]);
    let script = "echo > $out";
    let system = format!("{:?}", system());
    repo.write(
        "hosts/x&rev=0/flake.nix",
        &format!(
            "{{ outputs = {{ self }}: {{ nixosConfigurations.h.config.system.build.toplevel = derivation {{ name = import ./vendor/name.nix; system = {system}; builder = \"/bin/sh\"; nonce = \"{n}\"; args = [ \"-c\" {script:?} ]; }}; }}; }}"
        ),
    );
    let commit = repo.commit();
    let mut cfg = config("h", repo.path(), "nixosConfigurations");
    cfg.repository_subdir = "hosts/x&rev=0".into();
    cfg.submodules = true;
    // Nix runs `git submodule update` itself; git >= 2.38.1 refuses local-path
    // submodules unless told otherwise (the legacy executor passes this to git).
    let mut options = env.options();
    options.env = [
        ("GIT_CONFIG_COUNT", "1"),
        ("GIT_CONFIG_KEY_0", "protocol.file.allow"),
        ("GIT_CONFIG_VALUE_0", "always"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    let g = Harness::new(cfg, FlakeExecutor::new(options)).eval(&commit);
    assert_eq!(g.eval_status, "evaluated", "{}", g.eval_err);
    assert!(g.drv_path.ends_with("-from-submodule.drv"), "{}", g.drv_path);
    assert_eq!(g.machine_id, "");
}

#[test]
fn failures_carry_the_command_and_nix_own_message() {
    if !nix_or_skip() {
        return;
    }
    let (env, repo, n) = (Env::new(), Repo::new(), nonce());
    repo.write("flake.nix", "{ outputs = { self }: { ; }");
    let syntax = repo.commit();
    repo.write("flake.nix", &flake("h", &n, "echo failing-build-NONCE >&2; exit 1", None));
    let failing = repo.commit();
    let h = harness(&env, &repo, "h");

    let g = h.eval(&syntax);
    assert_eq!(g.eval_status, "failed");
    assert!(g.eval_err.contains("nix --option") && g.eval_err.contains("syntax error"), "{}", g.eval_err);

    let g = h.eval(&"0".repeat(40));
    assert_eq!(g.eval_status, "failed");
    assert!(g.eval_err.contains("0000000000000000000000000000000000000000"), "{}", g.eval_err);

    let g = harness(&env, &repo, "missing-host").eval(&failing);
    assert!(g.eval_err.contains("attribute 'missing-host' missing"), "{}", g.eval_err);

    let g = h.eval(&failing);
    assert_eq!(g.eval_status, "evaluated", "{}", g.eval_err);
    let g = h.build(&g.uuid);
    assert_eq!(g.build_status, "failed");
    assert!(g.build_err.contains("nix --option") && g.build_err.contains(" build "), "{}", g.build_err);
    assert!(g.build_err.contains("failing-build-NONCE"), "{}", g.build_err);
}

#[test]
fn hostile_hostname_is_data_and_an_option_reaches_nix() {
    if !nix_or_skip() {
        return;
    }
    let (env, repo, n) = (Env::new(), Repo::new(), nonce());
    let hostname = "h\"; x = ${builtins.trace \"INJECTED\" (abort \"INJECTED\")}; \n&rev=0\"";
    repo.write("flake.nix", &flake(hostname, &n, "echo > $out", Some("ok")));
    let commit = repo.commit();
    let h = Harness::new(
        config(hostname, repo.path(), "nixosConfigurations"),
        FlakeExecutor::new(env.with("max-jobs", "0")),
    );
    let g = h.eval(&commit);
    assert_eq!(g.eval_status, "evaluated", "{}", g.eval_err);
    assert_eq!(g.machine_id, "ok");
    assert!(!h.logs().contains("trace: INJECTED"));
    let g = h.build(&g.uuid);
    assert_eq!(g.build_status, "failed");
    assert!(g.build_err.contains("unable to start any build"), "{}", g.build_err);
}

#[test]
fn stop_ends_a_build_and_its_builder() {
    if !nix_or_skip() {
        return;
    }
    let (env, repo, n) = (Env::new(), Repo::new(), nonce());
    repo.write("flake.nix", &flake("h", &n, &sleeper(&n), None));
    let commit = repo.commit();
    let mut cfg = config("h", repo.path(), "nixosConfigurations");
    cfg.build_timeout = Duration::from_secs(600);
    let h = Harness::new(cfg, FlakeExecutor::new(env.options()));
    let g = h.eval(&commit);
    h.builder.submit_build(&g.uuid).unwrap();
    h.wait_for_log(&format!("started {n}"));
    let started = Instant::now();
    h.builder.stop();
    assert!(started.elapsed() < Duration::from_secs(10), "stop() took {:?}", started.elapsed());
    assert_eq!(h.built.recv_timeout(HANG).unwrap(), g.uuid);
    assert_eq!(h.generation(&g.uuid).build_err, "cancelled: stopped");
    assert_no_process(&n);
}
