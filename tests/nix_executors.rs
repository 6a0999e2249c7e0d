//! Both Nix executors against the real Nix, driven through the `Builder`: what they
//! share is tested over the table [`KINDS`]; what differs has tests of its own.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nix::*;
use genbuild::{proto, EvalOutput, Executor, BUILD_REASON_ALREADY_BUILT};

/// Runs `test` for each executor kind, when Nix is there.
fn for_each_kind(test: impl Fn(Kind)) {
    if nix_or_skip() {
        KINDS.into_iter().for_each(test);
    }
}

/// `let` bindings of a chain `a <- b <- c` whose middle builder runs `middle`; the
/// toplevel is `c`. Each builder sleeps a little so that progress is seen mid-way.
fn chain(kind: Kind, nonce: &str, middle: &str) -> String {
    format!(
        r#"mk = name: deps: script: derivation {{ inherit name deps; system = {}; builder = "/bin/sh"; nonce = "{nonce}"; args = [ "-c" script ]; }};
           a = mk "chain-a" [] "echo building a; /bin/sleep 0.3; echo > $out";
           b = mk "chain-b" [ a ] {};
           c = mk "chain-c" [ b ] "echo building c; /bin/sleep 0.3; echo > $out";"#,
        kind.current_system(),
        nix_str(middle)
    )
}

#[test]
fn evaluates_the_commit_asked_for_builds_and_finds_it_already_built() {
    for_each_kind(|kind| {
        let (env, repo, n) = (Env::new(), Repo::new(), nonce());
        repo.write(kind.file(), "throw \"the first commit was evaluated\"");
        repo.commit();
        // The commit asked for is on a side branch only; HEAD is a later commit of main.
        repo.git(&["checkout", "-q", "-b", "side"]);
        repo.write(kind.file(), &kind.expression("host1", &n, "echo hi > $out", Some("mid-1")));
        let commit = repo.commit();
        repo.git(&["checkout", "-q", "main"]);
        repo.write(kind.file(), "throw \"the later commit was evaluated\"");
        repo.commit();
        let h = Harness::of(kind, &env, &repo, "host1");
        let g = h.eval(&commit);
        assert_eq!(g.eval_status, "evaluated", "{kind:?}: {}", g.eval_err);
        assert!(g.drv_path.ends_with("-sys.drv"), "{}", g.drv_path);
        assert!(g.out_path.ends_with("-sys"), "{}", g.out_path);
        assert_eq!(g.machine_id, "mid-1");
        let drv_root = build_rooted_then_already_built(&h, &env, &commit, &g);

        // Found built by a builder with roots of its own: its output is rooted all the same.
        let other = Env::new();
        let h = Harness::of(kind, &other, &repo, "host1");
        let uuid = h.builder.eval(&rs(&commit)).unwrap();
        assert_eq!(h.built.recv_timeout(NIX_HANG).unwrap(), uuid);
        assert_eq!(h.generation(&uuid).build_reason, BUILD_REASON_ALREADY_BUILT);
        assert_eq!(other.roots_of(&h.store), vec![drv_root.clone(), format!("{drv_root}.out")]);
        assert_no_process(&n);
    });
}

#[test]
fn an_absent_machine_id_is_empty() {
    for_each_kind(|kind| {
        let (env, repo, n) = (Env::new(), Repo::new(), nonce());
        repo.write(kind.file(), &kind.expression("h", &n, "echo > $out", None));
        let g = Harness::of(kind, &env, &repo, "h").eval(&repo.commit());
        assert_eq!(g.eval_status, "evaluated", "{kind:?}: {}", g.eval_err);
        assert_eq!(g.machine_id, "");
    });
}

#[test]
fn a_legacy_expression_may_be_a_plain_attribute_set() {
    if !nix_or_skip() {
        return;
    }
    let (env, repo, n) = (Env::new(), Repo::new(), nonce());
    let system = drv("plain", &n, "echo > $out", "builtins.currentSystem");
    repo.write("default.nix", &format!("{{ system = {{ toplevel = {system}; config = {{}}; }}; }}"));
    let g = Harness::of(Kind::Legacy, &env, &repo, "h").eval(&repo.commit());
    assert_eq!(g.eval_status, "evaluated", "{}", g.eval_err);
    assert!(g.drv_path.ends_with("-plain.drv"));
}

#[test]
fn evaluates_a_subdir_with_its_submodules() {
    for_each_kind(|kind| {
        let (env, repo, sub, n) = (Env::new(), Repo::new(), Repo::new(), nonce());
        sub.write("id.nix", "\"from-submodule\"");
        sub.commit();
        let subdir = "hosts/x&rev=0 y#";
        repo.git(&["submodule", "add", "-q", sub.path().to_str().unwrap(), &format!("{subdir}/vendor")]);
        let toplevel = drv("sys", &n, "echo > $out", &kind.current_system());
        let expression = kind.expression_with("h", "", &toplevel, Some("import ./vendor/id.nix"));
        repo.write(&format!("{subdir}/{}", kind.file()), &expression);
        let first = repo.commit();
        repo.write(&format!("{subdir}/{}", kind.file()), "throw \"the later commit was evaluated\"");
        repo.commit();

        let mut config = nix_config("h", repo.path(), kind.system_attr());
        config.repository_subdir = subdir.into();
        config.submodules = true;
        let mut options = env.options();
        options.env = kind.submodule_env();
        let g = Harness::new(config.clone(), kind.executor(options.clone())).eval(&first);
        assert_eq!(g.eval_status, "evaluated", "{kind:?}: {}", g.eval_err);
        assert_eq!(g.machine_id, "from-submodule");

        config.submodules = false;
        let g = Harness::new(config, kind.executor(options)).eval(&first);
        assert_eq!(g.eval_status, "failed");
        assert!(g.eval_err.starts_with(&format!("`{} ", kind.evaluator())), "{kind:?}: {}", g.eval_err);
        assert!(g.eval_err.contains("id.nix"), "{kind:?}: {}", g.eval_err);
    });
}

/// An error text a person reads: no raw log, no terminal codes.
fn assert_clean(err: &str) {
    assert!(!err.contains("@nix") && !err.contains("\"action\""), "raw JSON in {err}");
    assert!(!err.contains('\x1b'), "escape codes in {err:?}");
}

#[test]
fn failures_carry_the_command_and_nix_own_message() {
    for_each_kind(|kind| {
        let (env, repo, n) = (Env::new(), Repo::new(), nonce());
        repo.write(kind.file(), "{ a = ; }");
        let syntax = repo.commit();
        let failing = chain(kind, &n, "echo building b; echo failing-build-NONCE >&2; exit 1");
        repo.write(kind.file(), &kind.expression_with("h", &failing, "c", None));
        let failing = repo.commit();
        let h = Harness::of(kind, &env, &repo, "h");

        let g = h.eval(&syntax);
        assert_eq!(g.eval_status, "failed");
        let command =
            format!("`{} --log-format internal-json --option build-users-group ''", kind.evaluator());
        assert!(g.eval_err.starts_with(&command), "{kind:?}: {}", g.eval_err);
        // One location, once: relative to the repository where Nix names the file in
        // it (the legacy checkout, a 2.34 flake's origin), else Nix's copy of it.
        let at = g.eval_err.split_once("syntax error, unexpected ';' (at ").map(|(_, at)| at);
        let at = at.unwrap_or_else(|| panic!("{kind:?}: no location: {}", g.eval_err));
        let store_copy =
            at.starts_with("/nix/store/") && at.contains(&format!("-source/{}:1:7)", kind.file()));
        assert!(
            at.starts_with(&format!("{}:1:7)", kind.file())) || kind == Kind::Flake && store_copy,
            "{kind:?}: {at}"
        );
        assert_eq!(g.eval_err.matches(":1:7").count(), 1, "{kind:?}: {}", g.eval_err);
        assert_clean(&g.eval_err);

        let g = h.eval(&"0".repeat(40));
        assert_eq!(g.eval_status, "failed");
        assert!(g.eval_err.contains(&"0".repeat(40)), "{kind:?}: {}", g.eval_err);
        assert_clean(&g.eval_err);

        let mut config = nix_config("h", repo.path(), "nope");
        config.eval_timeout = NIX_HANG;
        let g = Harness::new(config, kind.executor(env.options())).eval(&failing);
        assert!(g.eval_err.contains("attribute 'nope' missing"), "{kind:?}: {}", g.eval_err);
        assert_clean(&g.eval_err);

        // A chain whose middle derivation fails: its path, then its last lines.
        let g = h.eval(&failing);
        assert_eq!(g.eval_status, "evaluated", "{kind:?}: {}", g.eval_err);
        let _ = drain(&h);
        let g = h.build(&g.uuid);
        assert_eq!(g.build_status, "failed");
        let err = &g.build_err;
        assert!(err.starts_with(&format!("`{} --log-format", kind.building_program())), "{kind:?}: {err}");
        let (lines, progress) = drain(&h);
        let b = lines
            .into_iter()
            .find(|l| l.line == "failing-build-NONCE")
            .map(|l| l.drv_path)
            .expect("the failing builder's line, attributed");
        assert!(b.ends_with("-chain-b.drv"), "{b}");
        // Nix's own words differ between versions; the path and the exit code are there.
        assert!(err.contains(&format!("'{b}'")) && err.contains("exit code 1"), "{kind:?}: {err}");
        assert!(err.ends_with(&format!("last log lines of {b}:\nbuilding b\nfailing-build-NONCE")), "{err}");
        assert_clean(err);
        assert!(progress.iter().any(|p| p.failed >= 1), "{kind:?}: {progress:?}");
    });
}

/// The log lines and progress events received so far.
fn drain(h: &Harness) -> (Vec<proto::LogLine>, Vec<proto::BuildProgress>) {
    let (mut lines, mut progress) = (Vec::new(), Vec::new());
    for event in h.events.try_iter() {
        match event.kind {
            Some(proto::event::Kind::LogLine(l)) => lines.push(l),
            Some(proto::event::Kind::BuildProgress(p)) => progress.push(p),
            _ => {}
        }
    }
    (lines, progress)
}

#[test]
fn a_build_reports_progress_and_its_lines_per_derivation() {
    for_each_kind(|kind| {
        let (env, repo, n) = (Env::new(), Repo::new(), nonce());
        let lets = chain(kind, &n, "echo building b; /bin/sleep 0.3; echo > $out");
        repo.write(kind.file(), &kind.expression_with("h", &lets, "c", None));
        let h = Harness::of(kind, &env, &repo, "h");
        let g = h.eval(&repo.commit());
        h.builder.submit_build(&g.uuid).unwrap();
        assert_eq!(h.built.recv_timeout(NIX_HANG).unwrap(), g.uuid);
        let g = h.generation(&g.uuid);
        assert_eq!(g.build_status, "built", "{kind:?}: {}", g.build_err);

        let (lines, progress) = drain(&h);
        let last = progress.last().expect("progress events");
        assert_eq!((last.done, last.expected, last.running, last.failed), (3, 3, 0, 0), "{kind:?}: {last:?}");
        // b builds for 0.3 s, printing nothing after its first line: its state is sent.
        let b_building = progress.iter().any(|p| {
            p.running == 1 && p.building.len() == 1 && p.building[0].ends_with("-chain-b.drv") && p.done == 1
        });
        assert!(b_building, "{kind:?}: {progress:?}");
        for p in &progress {
            assert_eq!(p.running, p.building.len() as u64, "{kind:?}: {p:?}");
            assert!(p.done + p.running + p.failed <= p.expected, "{kind:?}: {p:?}");
        }
        assert!(progress.windows(2).all(|w| w[0].done <= w[1].done), "{kind:?}: {progress:?}");
        for name in ["a", "b", "c"] {
            let line = lines.iter().find(|l| l.line == format!("building {name}")).expect("builder line");
            assert!(line.drv_path.ends_with(&format!("-chain-{name}.drv")), "{kind:?}: {line:?}");
        }
        for line in &lines {
            assert!(!line.line.contains("@nix") && !line.line.contains('\x1b'), "{kind:?}: {line:?}");
        }
    });
}

#[test]
fn hostile_values_are_data_or_refused() {
    for_each_kind(|kind| {
        let (env, repo, n) = (Env::new(), Repo::new(), nonce());
        let hostname = "h\"; x = ${builtins.trace \"INJECTED\" (abort \"INJECTED\")}; \n&rev=0\"";
        let subdir = "odd\"${builtins.trace \"INJECTED\" 1}&rev=00\nx y#%?";
        let body = kind.expression_with(
            hostname,
            "",
            &drv("hostile", &n, "echo > $out", &kind.current_system()),
            Some(&nix_str(hostname)),
        );
        repo.write(&format!("{subdir}/{}", kind.file()), &body);
        let commit = repo.commit();

        let mut config = nix_config(hostname, repo.path(), kind.system_attr());
        config.repository_subdir = subdir.into();
        let h = Harness::new(config.clone(), kind.executor(env.options()));
        let g = h.eval(&commit);
        assert_eq!(g.eval_status, "evaluated", "{kind:?}: {}", g.eval_err);
        assert_eq!(g.machine_id, hostname);
        assert!(!h.logs().contains("INJECTED"));

        config.system_attr = format!("{}\"; y = ${{builtins.trace \"INJECTED\" 1}}", kind.system_attr());
        let h = Harness::new(config.clone(), kind.executor(env.options()));
        let g = h.eval(&commit);
        assert_eq!(g.eval_status, "failed");
        assert!(g.eval_err.contains("missing"), "{kind:?}: {}", g.eval_err);
        assert!(!h.logs().contains("trace: INJECTED") && !g.eval_err.contains("trace: INJECTED"));

        // A branch named like a commit id is not a commit id.
        let fake = "f".repeat(40);
        repo.git(&["branch", &fake, &commit]);
        config.system_attr = kind.system_attr().into();
        let g = Harness::new(config, kind.executor(env.options())).eval(&fake);
        assert_eq!(g.eval_status, "failed", "{kind:?}: the branch {fake} was evaluated");

        for (subdir, commit, why) in [
            ("../x", commit.as_str(), "invalid repository subdirectory"),
            ("/etc", commit.as_str(), "invalid repository subdirectory"),
            ("", "HEAD --upload-pack=touch /tmp/x", "invalid commit id"),
        ] {
            let mut config = nix_config("h", repo.path(), kind.system_attr());
            config.repository_subdir = subdir.into();
            let g = Harness::new(config, kind.executor(env.options())).eval(commit);
            assert!(g.eval_err.contains(why), "{kind:?}: {}", g.eval_err);
        }
    });
}

#[test]
fn a_subdirectory_may_not_leave_the_repository_through_a_link() {
    for_each_kind(|kind| {
        let (env, repo, n) = (Env::new(), Repo::new(), nonce());
        let outside = repo.dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join(kind.file()), "throw \"evaluated outside the repository\"").unwrap();
        repo.write(&format!("real/inner/{}", kind.file()), &kind.expression("h", &n, "echo > $out", None));
        let link = |name: &str, target: &str| {
            let path = repo.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, path).unwrap();
        };
        link("abs", outside.to_str().unwrap());
        link("rel", "../outside");
        link("l1", "l2");
        link("l2", "abs");
        link("real/esc", "../../outside");
        link("inlink", "real/inner");
        link("inchain", "inlink");
        let commit = repo.commit();
        for (subdir, stays) in [
            ("abs", false),
            ("rel", false),
            ("l1", false),
            ("real/esc", false),
            ("inlink", true),
            ("inchain", true),
            ("real/../inlink", false), // `..` is refused before any link is read
        ] {
            let mut config = nix_config("h", repo.path(), kind.system_attr());
            config.repository_subdir = subdir.into();
            let g = Harness::new(config, kind.executor(env.options())).eval(&commit);
            if stays {
                assert_eq!(g.eval_status, "evaluated", "{kind:?} {subdir}: {}", g.eval_err);
            } else if subdir.contains("..") {
                assert!(g.eval_err.contains("invalid repository subdirectory"), "{}", g.eval_err);
            } else {
                let expected = format!("the subdirectory {subdir:?} leaves the repository");
                assert_eq!(g.eval_err, expected, "{kind:?}");
            }
        }
        let mut config = nix_config("h", repo.path(), kind.system_attr());
        config.repository_subdir = "nope".into();
        let g = Harness::new(config, kind.executor(env.options())).eval(&commit);
        assert_eq!(
            g.eval_err,
            format!("the subdirectory \"nope\" does not exist at commit {commit}"),
            "{kind:?}"
        );
    });
}

#[test]
fn repository_paths_that_need_encoding_work() {
    for_each_kind(|kind| {
        let branches: &[&str] = match kind {
            Kind::Legacy => &["main"],
            Kind::Flake => &["main", "master"],
        };
        for c in [" ", "\"", "?", "#", "%25"] {
            for branch in branches {
                let (env, n) = (Env::new(), nonce());
                let repo = Repo::named(&format!("re{c}po"), branch);
                repo.write(kind.file(), &kind.expression("h", &n, "echo > $out", Some("found")));
                let commit = repo.commit();
                // HEAD elsewhere: the commit is not the default branch's.
                repo.git(&["checkout", "-q", "-b", "later"]);
                repo.write(kind.file(), "throw \"the later commit was evaluated\"");
                repo.commit();
                let g = Harness::of(kind, &env, &repo, "h").eval(&commit);
                assert_eq!(g.eval_status, "evaluated", "{kind:?} {c:?} {branch}: {}", g.eval_err);
                assert_eq!(g.machine_id, "found");
            }
        }
        let links = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("genbuild-flake-"))
            .count();
        assert_eq!(links, 0, "the links' directories are removed");
    });
}

#[test]
fn an_option_reaches_nix() {
    for_each_kind(|kind| {
        let (env, repo, n) = (Env::new(), Repo::new(), nonce());
        repo.write(kind.file(), &kind.expression("h", &n, "echo > $out", None));
        let config = nix_config("h", repo.path(), kind.system_attr());
        let h = Harness::new(config, kind.executor(env.with("max-jobs", "0")));
        let g = h.eval(&repo.commit());
        let g = h.build(&g.uuid);
        assert_eq!(g.build_status, "failed");
        // Nix's words after the command line (which names the option too) differ
        // between versions; each names the setting.
        let (_, nix_says) = g.build_err.split_once(":\n").expect("the command, then Nix's message");
        assert!(nix_says.contains("max-jobs"), "{kind:?}: {}", g.build_err);
    });
}

#[test]
fn eval_and_build_time_out_and_leave_no_builder() {
    for_each_kind(|kind| {
        let (env, repo, n) = (Env::new(), Repo::new(), nonce());
        // Import from derivation: the evaluation itself waits for a sleeping builder.
        let ifd = drv("ifd", &n, &sleeper(&n), &kind.current_system());
        repo.write(kind.file(), &kind.expression_with("h", "", &format!("import ({ifd})"), None));
        let slow_eval = repo.commit();
        let m = nonce();
        repo.write(kind.file(), &kind.expression("h", &m, &sleeper(&m), None));
        let slow_build = repo.commit();

        let mut config = nix_config("h", repo.path(), kind.system_attr());
        config.eval_timeout = Duration::from_secs(3);
        config.build_timeout = Duration::from_secs(3);
        let h = Harness::new(config, kind.executor(env.options()));
        let g = h.eval(&slow_eval);
        assert_eq!(g.eval_err, "timed out after 3s", "{kind:?}");
        assert_no_process(&n);

        let g = h.eval(&slow_build);
        let g = h.build(&g.uuid);
        assert_eq!(g.build_err, "timed out after 3s", "{kind:?}");
        assert_no_process(&m);
    });
}

#[test]
fn stop_and_a_new_eval_end_a_build_and_its_builder() {
    for_each_kind(|kind| {
        let (env, repo) = (Env::new(), Repo::new());
        let (n, m) = (nonce(), nonce());
        repo.write(kind.file(), &kind.expression("h", &n, &sleeper(&n), None));
        let first = repo.commit();
        repo.write(kind.file(), &kind.expression("h", &m, &sleeper(&m), None));
        let second = repo.commit();
        let h = Harness::of(kind, &env, &repo, "h");

        let g = h.eval(&first);
        h.builder.submit_build(&g.uuid).unwrap();
        h.wait_for_log(&format!("started {n}"));
        let started = Instant::now();
        h.builder.stop();
        assert!(started.elapsed() < Duration::from_secs(10), "stop() took {:?}", started.elapsed());
        assert_eq!(h.built.recv_timeout(NIX_HANG).unwrap(), g.uuid);
        assert_eq!(h.generation(&g.uuid).build_err, "cancelled: stopped");
        assert_no_process(&n);

        let g = h.eval(&second);
        h.builder.submit_build(&g.uuid).unwrap();
        h.wait_for_log(&format!("started {m}"));
        let newer = h.builder.eval(&rs(&first)).unwrap();
        assert_eq!(h.built.recv_timeout(NIX_HANG).unwrap(), g.uuid);
        assert_eq!(h.generation(&g.uuid).build_err, format!("cancelled: superseded by generation {newer}"));
        assert_no_process(&m);
        assert_eq!(h.evaluated.recv_timeout(NIX_HANG).unwrap(), newer);
        h.builder.stop();
        assert_no_process(&n);
    });
}

#[test]
fn an_evaluation_is_reused_while_its_drv_is_valid_and_rooted_again() {
    for_each_kind(|kind| {
        let (env, repo, n) = (Env::new(), Repo::new(), nonce());
        repo.write(kind.file(), &kind.expression("h", &n, "echo > $out", None));
        let h = Harness::of(kind, &env, &repo, "h");
        let g = h.eval(&repo.commit());
        assert_eq!(g.eval_status, "evaluated", "{kind:?}: {}", g.eval_err);
        let output =
            EvalOutput { drv_path: g.drv_path.clone(), out_path: g.out_path, machine_id: g.machine_id };
        let executor: Arc<dyn Executor> = kind.executor(env.options());
        let owner = format!("file-reuse-{n}");
        let reuse = |output: &EvalOutput| {
            let (executor, output) = (executor.clone(), output.clone());
            in_job(&owner, move |ctx| executor.reuse_evaluation(&output, ctx)).expect("an answer")
        };

        assert!(reuse(&output), "{kind:?}: a valid drv is reused");
        let root = env.root_dir().join(&owner).join(g.drv_path.rsplit('/').next().unwrap());
        assert_eq!(std::fs::read_link(&root).unwrap().to_str(), Some(g.drv_path.as_str()));

        // Unrooted by both owners and deleted: no longer reusable.
        for owner in [owner.clone(), h.store.id().to_string()] {
            let executor = executor.clone();
            in_job(&owner, move |ctx| executor.release_unused(&[], ctx));
        }
        let deleted =
            std::process::Command::new("nix-store").args(["--delete", &g.drv_path]).output().unwrap();
        assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
        assert!(!valid(&g.drv_path));
        assert!(!reuse(&output), "{kind:?}: a deleted drv is not reused");
        let mut bogus = output.clone();
        bogus.drv_path = "/etc/passwd".into();
        assert!(!reuse(&bogus));
    });
}

#[test]
fn flakes_offer_a_reuse_key_and_legacy_only_when_asked() {
    if !nix_or_skip() {
        return;
    }
    let (env, repo) = (Env::new(), Repo::new());
    let commit = repo.commit();
    let req = |hostname: &str| genbuild::EvalRequest {
        repository_path: repo.path().to_path_buf(),
        repository_subdir: String::new(),
        commit_id: commit.clone(),
        system_attr: "nixosConfigurations".into(),
        hostname: hostname.into(),
        submodules: false,
    };
    // The key is asked in the evaluation job (`nix --version` runs as its command).
    let key = |kind: Kind, options: genbuild::NixOptions, req: genbuild::EvalRequest| {
        let executor = kind.executor(options);
        in_job("file-key", move |ctx| executor.eval_reuse_key(&req, ctx))
    };
    let flake = key(Kind::Flake, env.options(), req("h")).expect("a flake key");
    let again = key(Kind::Flake, env.options(), req("h"));
    assert_eq!(again.as_ref(), Some(&flake), "another executor, the same key");
    assert_ne!(key(Kind::Flake, env.options(), req("h2")), Some(flake.clone()));
    assert_ne!(key(Kind::Flake, env.with("max-jobs", "3"), req("h")), Some(flake.clone()));

    assert_eq!(key(Kind::Legacy, env.options(), req("h")), None);
    let mut options = env.options();
    options.reuse_legacy_evaluations = true;
    let legacy = key(Kind::Legacy, options, req("h")).expect("a legacy key when asked");
    assert_ne!(legacy, flake);

    let mut missing = req("h");
    missing.repository_path = repo.path().join("nope");
    assert_eq!(key(Kind::Flake, env.options(), missing), None);
}

/// A shallow clone (`git clone --depth 1`, as CI systems and GitOps tools clone) is
/// evaluated on every Nix: Nix 2.20 and later refuse one in a flake reference unless
/// told `shallow=1`, which 2.8 refuses in turn.
#[test]
fn a_shallow_clone_is_evaluated() {
    for_each_kind(|kind| {
        let (env, repo, n) = (Env::new(), Repo::new(), nonce());
        repo.write(kind.file(), &kind.expression("h", &n, "echo > $out", None));
        repo.commit();
        repo.write("other", "a second commit, so that the clone lacks history").commit();
        let shallow = tempfile::tempdir().unwrap();
        let url = format!("file://{}", repo.path().display());
        let clone = std::process::Command::new("git")
            .args(["clone", "-q", "--depth", "1", &url])
            .arg(shallow.path().join("r"))
            .output()
            .unwrap();
        assert!(clone.status.success(), "{}", String::from_utf8_lossy(&clone.stderr));
        let path = shallow.path().join("r");
        assert!(path.join(".git/shallow").is_file(), "not a shallow clone");
        let head =
            std::process::Command::new("git").arg("-C").arg(&path).args(["rev-parse", "HEAD"]).output();
        let head = String::from_utf8(head.unwrap().stdout).unwrap().trim().to_string();
        let config = nix_config("h", &path, kind.system_attr());
        let h = Harness::new(config, kind.executor(env.options()));
        let g = h.eval(&head);
        assert_eq!(g.eval_status, "evaluated", "{kind:?} on {}: {}", nix_version(), g.eval_err);
    });
}

/// A flake in a repository whose HEAD is detached (a deploy tool's checkout) is
/// evaluated without a warning of Nix's about it in the user's log.
#[test]
fn a_detached_head_leaves_no_warning_in_the_log() {
    if !nix_or_skip() {
        return;
    }
    let kind = Kind::Flake;
    {
        let (env, repo, n) = (Env::new(), Repo::new(), nonce());
        repo.write(kind.file(), &kind.expression("h", &n, "echo > $out", None));
        let commit = repo.commit();
        repo.git(&["checkout", "-q", "--detach"]);
        let h = Harness::of(kind, &env, &repo, "h");
        let g = h.eval(&commit);
        assert_eq!(g.eval_status, "evaluated", "{}", g.eval_err);
        let logs = h.logs();
        assert!(!logs.lines().any(|l| l.starts_with("warning:")), "{logs}");
    }
}
