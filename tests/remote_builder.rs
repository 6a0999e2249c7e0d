//! Nix's own remote builders, for real, with both executors: `NixOptions` carrying
//! `builders = ssh-ng://…`, `max-jobs = 0` and `NIX_SSHOPTS` send the build to an sshd
//! on this machine whose Nix has a store of its own (tests/common/remote.rs).
//!
//! What genbuild promises here: the build happens on the remote and its output is
//! copied back into the local store, the progress events showing that copy; `stop()` during a remote build returns once the
//! local Nix, its build hook and the ssh client are gone, and the remote's side (sshd's
//! session, its `nix-daemon --stdio` and the derivation's builder) goes when the ssh
//! connection closes. genbuild schedules nothing itself: Nix picks the machine.
//!
//! Skipped (with a message) without sshd or root, except under `CI=true`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nix::*;
use common::remote::{describe, wait_gone, Protocol, Remote};
use genbuild::{FlakeExecutor, NixExecutor};

/// Bound of the remote's side going away after stop(): it only catches a hang (the
/// session closes in well under a second here).
const REMOTE_GONE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
enum Front {
    /// `NixExecutor` over a `default.nix`.
    Legacy,
    /// `FlakeExecutor` over a `flake.nix`.
    Flake,
}

/// One way of building remotely.
#[derive(Clone, Copy, Debug)]
struct Case {
    front: Front,
    protocol: Protocol,
    /// SIGTERM → SIGKILL grace of the build; `None`: the default.
    kill_grace: Option<Duration>,
}

impl Case {
    fn new(front: Front, protocol: Protocol) -> Case {
        Case { front, protocol, kill_grace: None }
    }

    /// A repository whose system for host `h` is one derivation running `script`, and
    /// a builder over it whose Nix builds only on `remote`.
    fn setup(self, remote: &Remote, env: &Env, repo: &Repo, nonce: &str, script: &str) -> Harness {
        let options = remote.configure(env.options(), self.protocol);
        let (attr, system) = match self.front {
            Front::Legacy => ("system", "builtins.currentSystem".to_string()),
            Front::Flake => ("nixosConfigurations", format!("{:?}", system())),
        };
        let toplevel = drv("remote", nonce, script, &system);
        let mut cfg = nix_config("h", repo.path(), attr);
        cfg.build_timeout = Duration::from_secs(600);
        if let Some(grace) = self.kill_grace {
            cfg.process.kill_grace = grace;
        }
        match self.front {
            Front::Legacy => {
                repo.write("default.nix", &format!("{{ system = {{ toplevel = {toplevel}; }}; }}"));
                Harness::new(cfg, Arc::new(NixExecutor::new(options)))
            }
            Front::Flake => {
                let outputs = format!("nixosConfigurations.h.config.system.build.toplevel = {toplevel};");
                repo.write("flake.nix", &format!("{{ outputs = {{ self }}: {{ {outputs} }}; }}"));
                Harness::new(cfg, Arc::new(FlakeExecutor::new(options)))
            }
        }
    }
}

/// Builds a fresh derivation: it is built in the remote's store, copied back (which
/// the progress shows), and the connection's processes end with the build.
fn builds_on_the_remote_and_copies_back(case: Case, remote: &Remote) {
    let (env, repo, n) = (Env::new(), Repo::new(), nonce());
    let h = case.setup(remote, &env, &repo, &n, &format!("echo built-remotely {n} > $out"));
    let g = h.eval(&repo.commit());
    assert_eq!(g.eval_status, "evaluated", "{}", g.eval_err);
    assert!(!valid(&g.out_path) && !remote.holds(&g.out_path), "{} exists before its build", g.out_path);

    let g = h.build(&g.uuid);
    assert_eq!(
        g.build_status,
        "built",
        "{case:?}: {}\n{}\nsshd's log:\n{}",
        g.build_err,
        h.logs(),
        remote.log()
    );
    assert!(remote.holds(&g.out_path), "{case:?}: {} was not built on the remote", g.out_path);
    assert!(valid(&g.out_path), "{case:?}: {} was not copied back", g.out_path);
    assert_eq!(std::fs::read_to_string(&g.out_path).unwrap(), format!("built-remotely {n}\n"));
    let progress = build_progress(&h, &g.uuid);
    eprintln!("{case:?}: the build's progress events:");
    for p in &progress {
        eprintln!("  {p:?}");
    }
    assert!(progress.iter().any(|p| p.copies_expected >= 1), "{case:?}: no copy shown: {progress:?}");
    let last = progress.last().expect("progress events");
    assert_eq!((last.done, last.expected, last.running, last.failed), (1, 1, 0, 0), "{case:?}: {last:?}");
    assert!(last.copies_done >= 1 && last.copies_done == last.copies_expected, "{case:?}: {last:?}");
    assert!(last.building.is_empty() && last.copying.is_empty(), "{case:?}: {last:?}");
    let left = wait_gone(|| remote.processes(Some(&n)), REMOTE_GONE);
    assert!(left.is_empty(), "{case:?}: processes left after a remote build: {}", describe(&left));
}

/// The progress events of generation `uuid` received so far.
fn build_progress(h: &Harness, uuid: &str) -> Vec<genbuild::proto::BuildProgress> {
    let progress = h.events.try_iter().filter_map(|e| match e.kind {
        Some(genbuild::proto::event::Kind::BuildProgress(p)) if p.generation_uuid == uuid => Some(p),
        _ => None,
    });
    progress.collect()
}

/// Stops a build while the remote's builder sleeps: no process is left on either side.
fn stop_during_a_remote_build_leaves_no_process(case: Case, remote: &Remote) {
    let (env, repo, n) = (Env::new(), Repo::new(), nonce());
    let h = case.setup(remote, &env, &repo, &n, &sleeper(&n));
    let g = h.eval(&repo.commit());
    assert_eq!(g.eval_status, "evaluated", "{}", g.eval_err);
    h.builder.submit_build(&g.uuid).unwrap();
    // The line comes from the remote's builder, through the ssh connection.
    h.wait_for_log(&format!("started {n}"));
    common::wait_for_processes(&format!("300.{n}"), 1);
    let (local, remote_side) = (remote.local_processes(Some(&n)), remote.remote_processes(Some(&n)));
    eprintln!(
        "{case:?}: running before stop():\n local:{}\n remote:{}",
        describe(&local),
        describe(&remote_side)
    );
    assert!(
        local.iter().any(|p| p.cmdline.starts_with("ssh ")),
        "{case:?}: no ssh client: {}",
        describe(&local)
    );
    let daemon = |p: &common::remote::Proc| {
        p.cmdline.contains("nix-daemon --stdio") || p.cmdline.contains("nix-store --serve")
    };
    assert!(remote_side.iter().any(daemon), "{case:?}: no remote Nix: {}", describe(&remote_side));

    let started = Instant::now();
    h.builder.stop();
    let stop_latency = started.elapsed();
    // genbuild's guarantee: its processes (the local Nix, its build hook and the ssh
    // client) are gone when stop() returns; the grace lets the kernel finish their exit.
    let local_left = wait_gone(|| remote.local_processes(Some(&n)), Duration::from_secs(2));
    // The remote's side goes when the connection closes: sshd's session ends, the
    // remote Nix sees its stdin hang up and kills its builder.
    let remote_left = wait_gone(|| remote.remote_processes(Some(&n)), REMOTE_GONE);
    let all_gone = started.elapsed();
    eprintln!("{case:?}: stop() during a remote build took {stop_latency:?}; both sides were gone {all_gone:?} after it began");
    assert!(local_left.is_empty(), "{case:?}: local processes alive after stop(): {}", describe(&local_left));
    assert!(
        remote_left.is_empty(),
        "{case:?}: remote processes alive {REMOTE_GONE:?} after stop(): {}",
        describe(&remote_left)
    );
    assert!(stop_latency < Duration::from_secs(10), "{case:?}: stop() took {stop_latency:?}");
    assert_eq!(h.built.recv_timeout(NIX_HANG).unwrap(), g.uuid);
    assert_eq!(h.generation(&g.uuid).build_err, "cancelled: stopped");
    assert!(!remote.holds(&g.out_path) && !valid(&g.out_path), "{case:?}: the stopped build finished");
    assert_no_process(&n);
}

/// Both executors, one after the other on one remote.
const FRONTS: [Front; 2] = [Front::Legacy, Front::Flake];

#[test]
fn builds_run_on_the_remote_and_are_copied_back() {
    let Some(remote) = Remote::start_or_skip() else { return };
    for front in FRONTS {
        builds_on_the_remote_and_copies_back(Case::new(front, Protocol::SshNg), &remote);
    }
}

#[test]
fn stop_during_a_remote_build_leaves_no_process_on_either_side() {
    let Some(remote) = Remote::start_or_skip() else { return };
    for front in FRONTS {
        stop_during_a_remote_build_leaves_no_process(Case::new(front, Protocol::SshNg), &remote);
    }
}

/// No grace: SIGKILL follows SIGTERM at once, so the local Nix mostly dies before it
/// can end its build hook, which runs in a session of its own (setsid) with the ssh
/// client below it. genbuild's walk of the process tree must find and kill both, and
/// the remote's side still goes.
#[test]
fn stop_without_grace_kills_the_build_hook_and_ssh_client_too() {
    let Some(remote) = Remote::start_or_skip() else { return };
    for front in FRONTS {
        let case = Case { kill_grace: Some(Duration::ZERO), ..Case::new(front, Protocol::SshNg) };
        stop_during_a_remote_build_leaves_no_process(case, &remote);
    }
}

/// The older `ssh://` protocol (`nix-store --serve` on the remote) works the same, and
/// one remote serves one build after another.
#[test]
fn ssh_protocol_builds_and_stops_on_the_same_remote() {
    let Some(remote) = Remote::start_or_skip() else { return };
    for front in FRONTS {
        builds_on_the_remote_and_copies_back(Case::new(front, Protocol::Ssh), &remote);
        stop_during_a_remote_build_leaves_no_process(Case::new(front, Protocol::Ssh), &remote);
    }
}

/// Records Nix's `--log-format internal-json -v` stderr of remote builds over
/// `ssh-ng://` into `$GENBUILD_RECORD_TO`, for the log parser's unit tests: a chain of
/// two derivations (the first writes 8 MiB, so that a copy is not instant) built with
/// `nix-store --realise` and with `nix build`. Run by tests/fixtures/record.sh.
#[test]
#[ignore = "records fixtures: run by tests/fixtures/record.sh"]
fn record_remote_build_logs() {
    let to = std::env::var("GENBUILD_RECORD_TO").expect("GENBUILD_RECORD_TO: where the recordings go");
    let Some(remote) = Remote::start_or_skip() else { return };
    let env = Env::new();
    let options = remote.configure(env.options(), Protocol::SshNg);
    let nix = |program: &str| {
        let mut cmd = std::process::Command::new(program);
        cmd.args(["--log-format", "internal-json", "-v", "--extra-experimental-features", "nix-command"]);
        for (name, value) in &options.options {
            cmd.args(["--option", name, value]);
        }
        cmd.envs(options.env.iter().map(|(k, v)| (k, v)));
        cmd
    };
    let work = tempfile::tempdir().unwrap();
    for (name, program, args) in [
        ("remote-realise-chain", "nix-store", ["--realise", "--no-gc-warning"]),
        ("remote-build-chain", "nix", ["build", "--no-link"]),
    ] {
        let n = nonce();
        let a = drv(
            "remote-a",
            &n,
            "echo building a on the remote; /bin/dd if=/dev/zero of=$out bs=1M count=8 status=none",
            "builtins.currentSystem",
        );
        let b =
            drv("remote-b", &n, "echo building b on the remote; echo $a > $out", "builtins.currentSystem");
        let file = work.path().join(format!("{name}.nix"));
        std::fs::write(&file, b.replacen("derivation {", &format!("derivation {{ a = {a};"), 1)).unwrap();
        let drv_path = nix("nix-instantiate").arg(&file).output().unwrap();
        assert!(drv_path.status.success(), "{}", String::from_utf8_lossy(&drv_path.stderr));
        let drv_path = String::from_utf8(drv_path.stdout).unwrap().trim().to_string();
        let mut cmd = nix(program);
        // `nix build` builds a `.drv`'s outputs as `DRV^*` (from Nix 2.15 on).
        let installable = if program == "nix" { installable(&drv_path) } else { drv_path.clone() };
        cmd.args(args).arg(installable);
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(out.status.success(), "{cmd:?}:\n{stderr}");
        std::fs::write(format!("{to}/{name}.stderr"), &stderr).unwrap();
        assert_no_process(&n);
    }
}
