//! The example `demo` run as a user runs it, with real Nix: on test repositories, with
//! and without `--json`, a chain of three derivations through both executors, Ctrl-C
//! in the middle of a build, and the mistakes a user makes (each a clear message
//! before Nix runs). Every run ends with no process of its derivations left.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::nix::*;

/// Bound on a run of the demo; only catches hangs.
const DEMO_HANG: Duration = Duration::from_secs(300);

/// The example's binary, built once per test binary with this test's profile and
/// features (`cargo test` builds examples with `test = true` as test harnesses only).
fn demo_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test's path");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "--quiet", "--example", "demo", "--manifest-path"]);
        cargo.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
        cargo.arg("--target-dir").arg(profile_dir.parent().unwrap());
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some(profile) => drop(cargo.args(["--profile", profile])),
            None => panic!("no profile directory in {}", exe.display()),
        }
        if cfg!(feature = "fuzzing") {
            cargo.args(["--features", "fuzzing"]);
        }
        let status = cargo.status().expect("cargo");
        assert!(status.success(), "cargo build --example demo: {status}");
        profile_dir.join("examples/demo")
    })
}

fn spawn(args: &[&str]) -> Child {
    Command::new(demo_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the demo starts")
}

/// A finished run of the demo.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

impl Run {
    /// The value of the summary row `name` (`build       built in 0.1 s` → `built in 0.1 s`).
    fn row(&self, name: &str) -> &str {
        let row = self.stdout.lines().find(|l| l.len() > 12 && l[..12].trim_end() == name);
        row.map(|l| &l[12..]).unwrap_or_else(|| panic!("no summary row {name:?} in {self:?}"))
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// Runs the demo to its end (killed and failed after `DEMO_HANG`).
fn run(args: &[&str]) -> Run {
    let child = spawn(args);
    let pid = child.id();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let output: Output = match rx.recv_timeout(DEMO_HANG) {
        Ok(output) => output.expect("the demo's output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("the demo {args:?} did not end within {DEMO_HANG:?}");
        }
    };
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A repository whose `default.nix` has `machine.toplevel`, and the arguments that
/// evaluate it with gc roots in `env`.
struct Case {
    /// Holds the gc roots; its drop removes them and their `auto/` links.
    _env: Env,
    repo: Repo,
    nonce: String,
    commit: String,
    roots: String,
}

impl Case {
    fn legacy(toplevel: impl Fn(&str) -> String) -> Case {
        let (env, repo, nonce) = (Env::new(), Repo::new(), nonce());
        repo.write("default.nix", &format!("{{ hostname }}: {{ machine.toplevel = {}; }}", toplevel(&nonce)));
        let commit = repo.commit();
        let roots = env.roots.path().join("roots").to_str().unwrap().to_string();
        Case { _env: env, repo, nonce, commit, roots }
    }

    fn args<'a>(&'a self, more: &[&'a str]) -> Vec<&'a str> {
        let repo = self.repo.path().to_str().unwrap();
        let mut args = vec!["--repo", repo, "--host", "web1", "--attr", "machine", "--gc-roots", &self.roots];
        args.extend_from_slice(more);
        args
    }
}

fn single(nonce: &str) -> String {
    drv("sys", nonce, &format!("echo hello-{nonce}; echo ok > $out"), "builtins.currentSystem")
}

/// Three derivations, each needing the one before; `system` is Nix code.
fn chain(nonce: &str, system: &str) -> String {
    // The pauses let the builder's progress (coalesced to ten events a second) show
    // each derivation building.
    let a = drv("chain-a", nonce, &format!("echo built-a-{nonce}; /bin/sleep 0.3; echo a > $out"), system);
    let b =
        drv("chain-b", nonce, &format!("echo built-b-{nonce}; /bin/sleep 0.3; echo ${{a}} > $out"), system);
    let c = drv("chain-c", nonce, &format!("echo built-c-{nonce}; echo ${{b}} > $out"), system);
    format!("let a = {a}; b = {b}; c = {c}; in c")
}

/// The symbolic links under `dir`, at any depth.
fn symlinks_in(dir: &Path) -> usize {
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
    entries
        .map(|e| match e.file_type() {
            Ok(t) if t.is_symlink() => 1,
            Ok(t) if t.is_dir() => symlinks_in(&e.path()),
            _ => 0,
        })
        .sum()
}

/// The log line `text` printed by derivation `name`: prefixed by its short name when
/// the line came with its derivation, bare otherwise.
fn has_log_line(run: &Run, name: &str, text: &str) -> bool {
    run.stdout.lines().chain(run.stderr.lines()).any(|l| l == text || l == format!("{name}> {text}"))
}

#[test]
fn builds_a_repository_and_sums_it_up() {
    if !nix_or_skip() {
        return;
    }
    let case = Case::legacy(single);
    let run = run(&case.args(&["--build"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.row("build").starts_with("built in "), "{run:?}");
    assert!(run.row("evaluation").starts_with("evaluated in "), "{run:?}");
    assert_eq!(run.row("commit"), format!("{} c", case.commit));
    assert_eq!(run.row("host"), "web1 (attribute machine)");
    assert!(uuid::Uuid::parse_str(run.row("generation")).is_ok(), "{run:?}");
    let (drv_path, out) = (run.row("drv"), run.row("out"));
    assert!(drv_path.starts_with("/nix/store/") && drv_path.ends_with("-sys.drv"), "{run:?}");
    assert!(valid(out), "{run:?}");
    assert!(has_log_line(&run, "sys", &format!("hello-{}", case.nonce)), "{run:?}");
    assert!(!run.stdout.contains("@nix") && !run.stdout.contains('\x1b'), "{run:?}");
    assert!(symlinks_in(Path::new(&case.roots)) >= 2, "the .drv's root and the output's, in --gc-roots");
    assert_no_process(&case.nonce);

    let again = self::run(&case.args(&["--build"]));
    assert_eq!(again.code, Some(0), "{again:?}");
    assert_eq!(again.row("build"), "already built (its output was in the store)");
    assert_eq!(again.row("out"), out);
}

#[test]
fn a_terminal_gets_one_status_line_rewritten_in_place() {
    if !nix_or_skip() {
        return;
    }
    let case = Case::legacy(single);
    // `script` (util-linux) runs the demo on a pseudo-terminal of unknown size.
    let mut command = shell_words(demo_binary().to_str().unwrap());
    for arg in case.args(&["--build"]) {
        command.push(' ');
        command.push_str(&shell_words(arg));
    }
    let output = Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .expect("script");
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{screen}");
    assert!(screen.contains("\r\x1b[2K[0:00] evaluating web1 at "), "{screen:?}");
    assert!(screen.contains("\r\x1b[2K[0:00] building sys"), "{screen:?}");
    let summary = screen.split("\r\n\r\n").last().unwrap();
    assert!(summary.starts_with("generation  ") && !summary.contains('\x1b'), "{screen:?}");
    assert!(summary.contains("build       built in "), "{screen:?}");
    assert_no_process(&case.nonce);
}

/// `s` quoted for `sh`.
fn shell_words(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn a_repository_with_a_space_behind_a_symlink_and_a_subdir() {
    if !nix_or_skip() {
        return;
    }
    let (dir, n) = (tempfile::tempdir().unwrap(), nonce());
    let repo = dir.path().join("my infra");
    let host_dir = repo.join("hosts/web 1");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(host_dir.join("default.nix"), format!("{{ machine.toplevel = {}; }}", single(&n)))
        .unwrap();
    let git = |args: &[&str]| {
        let status = Command::new("git").arg("-C").arg(&repo).args(args).status().unwrap();
        assert!(status.success(), "git {args:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "spaces"]);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&repo, &link).unwrap();
    let env = Env::new(); // its drop removes the roots' `auto/` links
    let roots = env.roots.path().join("roots");
    let run = run(&[
        "--repo",
        link.to_str().unwrap(),
        "--host",
        "web1",
        "--attr",
        "machine",
        "--subdir",
        "./hosts/web 1/",
        "--build",
        "--gc-roots",
        roots.to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.row("repository"), format!("{} (subdir ./hosts/web 1/)", repo.display()));
    assert!(run.row("build").starts_with("built in "), "{run:?}");
    assert!(has_log_line(&run, "sys", &format!("hello-{n}")), "{run:?}");
    assert_no_process(&n);
}

#[test]
fn json_for_scripts() {
    if !nix_or_skip() {
        return;
    }
    let case = Case::legacy(single);
    let evaluated = run(&case.args(&["--json"]));
    assert_eq!(evaluated.code, Some(0), "{evaluated:?}");
    let state = evaluated.json();
    let g = &state["generation"];
    assert_eq!(g["eval_status"], "evaluated", "{evaluated:?}");
    assert_ne!(g["build_status"], "built", "evaluated only: {evaluated:?}");
    assert!(evaluated.stderr.contains("evaluating web1 at "), "progress goes to stderr: {evaluated:?}");

    let built = run(&case.args(&["--json", "--build"]));
    assert_eq!(built.code, Some(0), "{built:?}");
    let state = built.json();
    let object = state.as_object().unwrap();
    for key in ["is_evaluating", "is_building", "generation_uuid", "is_suspended", "hostname", "last_error"] {
        assert!(object.contains_key(key), "{key} missing: {built:?}");
    }
    assert!(object.contains_key("build_progress"));
    assert_eq!(state["hostname"], "web1");
    assert_eq!(state["is_building"], false);
    let g = &state["generation"];
    assert_eq!(g.as_object().unwrap().len(), 29, "every field of Generation: {g:#}");
    for step in ["eval_usage", "build_usage"] {
        assert!(g[step]["peak_memory_bytes"].as_u64().is_some_and(|b| b > 0), "{step}: {g:#}");
        assert_eq!(g[step]["memory_limit_reached"], false, "{step}: {g:#}");
    }
    assert_eq!(g["uuid"], state["generation_uuid"]);
    assert_eq!(g["build_status"], "built", "{built:?}");
    assert_eq!(g["selected_commit_id"], case.commit.as_str());
    let drv_path = g["drv_path"].as_str().unwrap();
    assert!(drv_path.starts_with("/nix/store/") && drv_path.ends_with(".drv"), "{drv_path}");
    assert!(valid(g["out_path"].as_str().unwrap()), "{g:#}");
    for time in ["eval_started_at", "eval_ended_at", "build_started_at", "build_ended_at"] {
        let time = g[time].as_str().unwrap_or_else(|| panic!("{time} is not a string: {g:#}"));
        assert!(time.len() >= 20 && time.as_bytes()[10] == b'T' && time.ends_with('Z'), "RFC 3339: {time}");
    }
    assert_no_process(&case.nonce);
}

#[test]
fn a_chain_of_three_derivations_through_both_executors() {
    if !nix_or_skip() {
        return;
    }
    let legacy = Case::legacy(|n| chain(n, "builtins.currentSystem"));
    let flake = Case::legacy(|_| "throw \"the flake is evaluated, not default.nix\"".into());
    let system = format!("{:?}", system());
    flake.repo.write(
        "flake.nix",
        &format!(
            "{{ outputs = {{ self }}: {{ machine.web1.config.system.build.toplevel = {}; }}; }}",
            chain(&flake.nonce, &system)
        ),
    );
    let flake_commit = flake.repo.commit();
    let runs = [
        (&legacy, run(&legacy.args(&["--build"]))),
        (&flake, run(&flake.args(&["--build", "--flake", "--commit", &flake_commit]))),
    ];
    for (case, run) in &runs {
        assert_eq!(run.code, Some(0), "{run:?}");
        assert!(run.row("build").starts_with("built in "), "{run:?}");
        assert!(run.row("drv").ends_with("-chain-c.drv"), "{run:?}");
        for name in ["chain-a", "chain-b", "chain-c"] {
            let text = format!("built-{}-{}", &name[6..], case.nonce);
            assert!(has_log_line(run, name, &text), "no {text}: {run:?}");
        }
        // Progress comes from Nix's internal-json log, as genbuild observes it: on
        // every Nix a chain of three ends at 3/3 (Nix 2.30 and later count one more).
        let progress: Vec<&str> = run.stdout.lines().filter(|l| l.starts_with("progress: ")).collect();
        assert_eq!(progress.last(), Some(&"progress: 3/3 built"), "{run:?}");
        for name in ["chain-a", "chain-b"] {
            assert!(progress.iter().any(|l| l.ends_with(&format!("building {name}"))), "{run:?}");
        }
        assert!(!progress.iter().any(|l| l.contains("/4 ")), "{run:?}");
        eprintln!("{} progress lines: {progress:?}", progress.len());
        assert_no_process(&case.nonce);
    }
}

#[test]
fn a_failing_derivation_fails_the_run_with_its_output() {
    if !nix_or_skip() {
        return;
    }
    let case = Case::legacy(|n| {
        let system = "builtins.currentSystem";
        let a = drv("chain-a", n, "echo a > $out", system);
        let b = drv("chain-b", n, &format!("echo failing-{n}; : ${{a}}; exit 3"), system);
        let c = drv("chain-c", n, "echo ${b} > $out", system);
        format!("let a = {a}; b = {b}; c = {c}; in c")
    });
    let run = run(&case.args(&["--build"]));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.row("evaluation").starts_with("evaluated in "), "{run:?}");
    assert!(run.row("build").starts_with("failed after "), "{run:?}");
    let error = &run.stdout[run.stdout.find("\nerror       ").expect("an error row")..];
    assert!(error.contains("-chain-b.drv"), "the failing derivation is named: {run:?}");
    assert!(!error.contains("@nix") && !error.contains('\x1b'), "{run:?}");
    assert!(has_log_line(&run, "chain-b", &format!("failing-{}", case.nonce)), "{run:?}");
    assert_no_process(&case.nonce);
}

#[test]
fn a_bad_attribute_is_nix_error_in_the_summary() {
    if !nix_or_skip() {
        return;
    }
    let case = Case::legacy(single);
    let run = run(&case.args(&["--build", "--attr", "nope"]));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.row("evaluation").starts_with("failed after "), "{run:?}");
    assert_eq!(run.row("build"), "not started");
    let error = run.row("error");
    assert!(run.stdout.contains("nope"), "{run:?}");
    assert!(!error.contains("@nix") && !run.stdout.contains('\x1b'), "{run:?}");
}

#[test]
fn mistakes_are_clear_errors_before_nix_runs() {
    let case = Case::legacy(single);
    let not_git = tempfile::tempdir().unwrap();
    let missing = not_git.path().join("missing");
    case.repo.write("hosts/web1/x", "");
    let inside = case.repo.path().join("hosts");
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let expectations: Vec<(Vec<String>, i32, String)> = vec![
        (vec!["--repo".into(), path(&missing), "--host".into(), "h".into()], 1, "does not exist".into()),
        (
            vec!["--repo".into(), path(not_git.path()), "--host".into(), "h".into()],
            1,
            "is not a git repository".into(),
        ),
        (
            vec!["--repo".into(), path(&inside), "--host".into(), "h".into()],
            1,
            "is inside the git repository".into(),
        ),
        (
            vec![
                "--repo".into(),
                path(case.repo.path()),
                "--host".into(),
                "h".into(),
                "--commit".into(),
                "deadbeef".into(),
            ],
            1,
            format!("commit deadbeef not found in {}", path(&case.repo.path().canonicalize().unwrap())),
        ),
        (
            vec!["--repo".into(), path(case.repo.path()), "--host".into(), "h".into(), "--flake".into()],
            1,
            "has no flake.nix (is it a default.nix? then drop --flake)".into(),
        ),
        (vec!["--repo".into(), path(case.repo.path())], 2, "--repo needs --host NAME".into()),
        (vec!["--frobnicate".into()], 2, "invalid option '--frobnicate'".into()),
        (vec!["--host".into(), "h".into()], 2, "--host needs --repo PATH".into()),
    ];
    for (args, code, message) in expectations {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = run(&args);
        assert_eq!(run.code, Some(code), "{args:?}: {run:?}");
        assert!(run.stderr.contains(&message), "{args:?}: expected {message:?} in {run:?}");
        assert!(run.stdout.is_empty(), "nothing ran: {run:?}");
    }
    let help = run(&["--help"]);
    assert_eq!(help.code, Some(0));
    assert!(help.stdout.contains("--repo PATH --host NAME"), "{help:?}");
}

#[test]
fn ctrl_c_stops_the_build_and_leaves_no_process() {
    if !nix_or_skip() {
        return;
    }
    let case = Case::legacy(|n| drv("sleeper", n, &sleeper(n), "builtins.currentSystem"));
    let mut child = spawn(&case.args(&["--build"]));
    let pid = child.id();
    let (tx, lines) = crossbeam_channel::unbounded();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || stdout.lines().map_while(Result::ok).try_for_each(|l| tx.send(l)));
    let started = format!("started {}", case.nonce);
    let mut seen = Vec::new();
    while !seen.last().is_some_and(|l: &String| l.ends_with(&started)) {
        seen.push(
            lines.recv_timeout(DEMO_HANG).unwrap_or_else(|_| panic!("the build never started: {seen:#?}")),
        );
    }
    let status = Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    let (tx, exited) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || tx.send(child.wait()));
    let status = exited.recv_timeout(DEMO_HANG).expect("the demo ends after Ctrl-C").unwrap();
    seen.extend(lines.iter());
    let run = Run { code: status.code(), stdout: seen.join("\n") + "\n", stderr: String::new() };
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stdout.contains("interrupted: stopping the builder"), "{run:?}");
    assert!(run.row("build").starts_with("failed after "), "{run:?}");
    assert_eq!(run.row("error"), "cancelled: stopped", "{run:?}");
    assert_no_process(&case.nonce);
}

#[test]
fn the_bundled_demo_leaves_nothing_behind() {
    if !nix_or_skip() {
        return;
    }
    let run = run(&[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.row("build").starts_with("built in "), "{run:?}");
    assert!(has_log_line(&run, "demo-demo", "building the demo generation"), "{run:?}");
    let repo = PathBuf::from(run.row("repository"));
    assert!(repo.starts_with(std::env::temp_dir()) && !repo.exists(), "{run:?}");
    let id = repo.file_name().unwrap().to_str().unwrap();
    assert!(!Path::new("/nix/var/nix/gcroots").join(id).exists(), "its gc roots are removed");
}
