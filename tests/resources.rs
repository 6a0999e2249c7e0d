//! Memory limits and what each evaluation and build used, with real Nix (Debian's
//! nix-bin, root single-user, settings as `--option`).
//!
//! The memory figures are the kernel's: the tests compare genbuild's accounting with
//! `getrusage(RUSAGE_CHILDREN)` around the same evaluation run directly. The tests of
//! this binary run one at a time (they measure this process's peak memory and its
//! children's usage).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nix::{nix_or_skip, nix_str, nonce, Env, Repo, NIX_HANG};
use common::{assert_no_process, auto_containment, rs};
use genbuild::proto::{status, Generation, ResourceUsage};
use genbuild::{Builder, BuilderConfig, Containment, NixExecutor, Store};

static ONE_AT_A_TIME: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

const MIB: u64 = 1 << 20;

/// `builtins.deepSeq` of `count` strings: about 180 bytes each on Nix 2.8.
fn strings(count: u64) -> String {
    format!("builtins.deepSeq (builtins.genList (x: toString x) {count}) true")
}

/// A repository whose `system.toplevel` carries `work` (forced by the evaluation) and
/// builds with `script`.
fn repository(nonce: &str, work: &str, script: &str) -> (Repo, String) {
    let repo = Repo::new();
    let expr = format!(
        r#"{{ system = {{ toplevel = derivation {{ name = "usage"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/bin:/usr/bin"; nonce = "{nonce}"; work = {work}; args = [ "-c" {} ]; }}; }}; }}"#,
        nix_str(script)
    );
    let commit = repo.write("default.nix", &expr).commit();
    (repo, commit)
}

/// A builder of `repo` whose Nix commands carry `nonce` on their command lines.
fn builder(repo: &Repo, nonce: &str, configure: impl FnOnce(&mut BuilderConfig)) -> (Builder, Arc<Store>) {
    let env = Env::new();
    let mut config = BuilderConfig::new("h", repo.path());
    config.system_attr = "system".into();
    config.eval_timeout = NIX_HANG;
    config.build_timeout = NIX_HANG;
    configure(&mut config);
    let store = Arc::new(Store::new());
    let executor = NixExecutor::new(env.with("system-features", nonce));
    (Builder::new(config, store.clone(), Arc::new(executor)), store)
}

fn evaluated(builder: &Builder, store: &Store, commit: &str) -> Generation {
    let uuid = builder.eval(&rs(commit)).unwrap();
    assert_eq!(builder.evaluation_done().recv_timeout(NIX_HANG).unwrap(), uuid);
    store.generation(&uuid).unwrap()
}

fn built(builder: &Builder, store: &Store, uuid: &str) -> Generation {
    let g = store.generation(uuid).unwrap();
    assert_eq!(g.eval_status, status::EVALUATED, "{}", g.eval_err);
    builder.submit_build(uuid).unwrap();
    assert_eq!(builder.build_done().recv_timeout(NIX_HANG).unwrap(), uuid);
    store.generation(uuid).unwrap()
}

/// This process's peak resident set (`VmHWM`), in bytes.
fn own_peak() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap();
    kib.trim().trim_end_matches(" kB").trim().parse::<u64>().unwrap() * 1024
}

/// What the kernel counted of `nix-instantiate --eval --strict EXPR` run directly:
/// (peak resident set, CPU time).
fn measured_directly(expr: &str) -> (u64, Duration) {
    let children = || {
        // SAFETY: a plain C struct the kernel fills.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: writes to the local only.
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
        usage
    };
    let cpu = |u: &libc::rusage| {
        Duration::new(u.ru_utime.tv_sec as u64, u.ru_utime.tv_usec as u32 * 1000)
            + Duration::new(u.ru_stime.tv_sec as u64, u.ru_stime.tv_usec as u32 * 1000)
    };
    let before = children();
    let out = std::process::Command::new("nix-instantiate")
        .args(["--eval", "--strict", "-E", expr])
        .env("NIX_CONFIG", "build-users-group =\nsubstituters =")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = children();
    (after.ru_maxrss as u64 * 1024, cpu(&after) - cpu(&before))
}

/// Whether Nix builds through a daemon here (the matrix's pass with `NIX_REMOTE=daemon`):
/// the builders are then the daemon's children, outside the build command's reach, and
/// a build's limit and usage cover the Nix client only (documented), so the tests of a
/// build's own CPU and memory say they could not run.
fn builds_through_a_daemon() -> bool {
    let remote = std::env::var("NIX_REMOTE").unwrap_or_default();
    let daemon = !remote.is_empty() && remote != "local";
    if daemon {
        eprintln!("COULD NOT RUN: NIX_REMOTE={remote}: the builders are the daemon's children");
    }
    daemon
}

fn usage_of(u: &Option<ResourceUsage>, what: &str) -> ResourceUsage {
    u.unwrap_or_else(|| panic!("no {what} usage recorded"))
}

/// An evaluation of about 800 MiB under a 256 MiB limit is killed within seconds, says
/// so, leaves no evaluator, and does not grow the embedding process.
#[test]
fn an_evaluation_past_its_memory_limit_is_killed_and_says_so() {
    if !nix_or_skip() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock();
    eprintln!("containment: {}", auto_containment());
    let n = nonce();
    let (repo, commit) = repository(&n, &strings(5_000_000), "echo > $out");
    let (builder, store) = builder(&repo, &n, |c| c.eval_memory_limit = Some(256 * MIB));
    let peak_before = own_peak();
    let started = Instant::now();
    let g = evaluated(&builder, &store, &commit);
    let took = started.elapsed();
    assert_no_process(&n);
    assert_eq!(g.eval_status, status::FAILED);
    assert!(g.eval_err.starts_with("`nix-instantiate"), "{}", g.eval_err);
    assert!(
        g.eval_err.contains("was killed: it reached its memory limit of 256 MiB (peak seen: "),
        "{}",
        g.eval_err
    );
    let usage = usage_of(&g.eval_usage, "evaluation");
    assert!(usage.memory_limit_reached, "{usage:?}");
    assert!(usage.peak_memory_bytes > 256 * MIB, "{usage:?}");
    let grown = own_peak().saturating_sub(peak_before);
    assert!(grown < 64 * MIB, "the embedding process grew by {grown} bytes");
    eprintln!(
        "killed after {took:?}: peak {} MiB seen for a limit of 256 MiB (overshoot {:.2}x)",
        usage.peak_memory_bytes / MIB,
        usage.peak_memory_bytes as f64 / (256 * MIB) as f64
    );
    assert!(took < NIX_HANG);
}

/// Without a limit, an evaluation of about 370 MiB succeeds, and what it used is what
/// the kernel counts of the same evaluation run directly, within a factor of 2.
#[test]
fn an_evaluation_reports_its_peak_memory_and_cpu_time() {
    if !nix_or_skip() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock();
    let n = nonce();
    let work = strings(2_000_000);
    let (repo, commit) = repository(&n, &work, "echo > $out");
    let (builder, store) = builder(&repo, &n, |_| {});
    let g = evaluated(&builder, &store, &commit);
    assert_eq!(g.eval_status, status::EVALUATED, "{}", g.eval_err);
    let usage = usage_of(&g.eval_usage, "evaluation");
    let (peak, cpu) = measured_directly(&work);
    eprintln!(
        "genbuild: {} MiB, {} ms CPU; directly: {} MiB, {cpu:?}",
        usage.peak_memory_bytes / MIB,
        usage.cpu_ms,
        peak / MIB
    );
    let ratio = |a: f64, b: f64| a.max(b) / a.min(b).max(1.0);
    assert!(ratio(usage.peak_memory_bytes as f64, peak as f64) < 2.0, "peak {usage:?} against {peak}");
    assert!(ratio(usage.cpu_ms as f64, cpu.as_millis() as f64) < 2.0, "cpu {usage:?} against {cpu:?}");
    assert!(!usage.memory_limit_reached);
    assert_no_process(&n);
}

/// A build whose shell spins for half a second records that CPU time.
#[test]
fn a_build_reports_its_cpu_time() {
    if !nix_or_skip() || builds_through_a_daemon() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock();
    let n = nonce();
    let spin = "end=$(( $(date +%s%N) + 500000000 )); while [ $(date +%s%N) -lt $end ]; do i=0; \
                while [ $i -lt 2000 ]; do i=$((i+1)); done; done; echo > $out";
    let (repo, commit) = repository(&n, "true", spin);
    let (builder, store) = builder(&repo, &n, |_| {});
    let g = evaluated(&builder, &store, &commit);
    let g = built(&builder, &store, &g.uuid);
    assert_eq!(g.build_status, status::BUILT, "{}", g.build_err);
    let usage = usage_of(&g.build_usage, "build");
    assert!(usage.cpu_ms >= 200, "{usage:?}");
    assert!(!usage.memory_limit_reached);
    assert_no_process(&n);
}

/// A build that holds 400 MB in a shell variable under a 128 MiB limit is killed and
/// says so, whether the watchdog counts the processes of its cgroup or of its process
/// tree (the builder is a child of `nix-store`); nothing of it is left.
#[test]
fn a_build_past_its_memory_limit_is_killed_and_says_so() {
    if !nix_or_skip() || builds_through_a_daemon() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock();
    for containment in [Containment::Auto, Containment::ProcessTree] {
        match &containment {
            Containment::Auto => eprintln!("containment: {}", auto_containment()),
            other => eprintln!("containment: {other:?}"),
        }
        let n = nonce();
        let hog = format!("x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo {n} ${{#x}}; echo > $out");
        let (repo, commit) = repository(&n, "true", &hog);
        let (builder, store) = builder(&repo, &n, |c| {
            c.build_memory_limit = Some(128 * MIB);
            c.process.containment = containment.clone();
        });
        let g = evaluated(&builder, &store, &commit);
        let g = built(&builder, &store, &g.uuid);
        assert_eq!(g.build_status, status::FAILED);
        assert!(
            g.build_err.contains("was killed: it reached its memory limit of 128 MiB (peak seen: "),
            "{containment:?}: {}",
            g.build_err
        );
        let usage = usage_of(&g.build_usage, "build");
        assert!(usage.memory_limit_reached && usage.peak_memory_bytes > 128 * MIB, "{usage:?}");
        eprintln!("{containment:?}: peak {} MiB seen for a limit of 128 MiB", usage.peak_memory_bytes / MIB);
        assert_no_process(&n);
    }
}

/// Where the commands' cgroups have the memory controller (a unified host whose
/// agent's cgroup delegates it), the kernel enforces the limit (`memory.max`) and says
/// it did in `memory.events`. Not on a hybrid host, whose memory controller is on
/// cgroup v1: there the test says plainly that it could not run.
#[test]
fn the_kernel_enforces_the_limit_where_the_memory_controller_is_available() {
    if !nix_or_skip() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock();
    let Some(parent) = common::writable_cgroup() else {
        return eprintln!("COULD NOT RUN: no writable cgroup v2 here");
    };
    let offered = std::fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
    if !offered.split_whitespace().any(|c| c == "memory") {
        return eprintln!(
            "COULD NOT RUN: the cgroup v2 at {} offers no memory controller ({offered:?}); \
             the memory.max path is covered by unit tests only on this host",
            parent.display()
        );
    }
    let n = nonce();
    let (repo, commit) = repository(&n, &strings(5_000_000), "echo > $out");
    let (builder, store) = builder(&repo, &n, |c| c.eval_memory_limit = Some(256 * MIB));
    let g = evaluated(&builder, &store, &commit);
    assert_eq!(g.eval_status, status::FAILED);
    assert!(g.eval_err.contains("was killed: it reached its memory limit of 256 MiB"), "{}", g.eval_err);
    assert!(usage_of(&g.eval_usage, "evaluation").memory_limit_reached);
    assert_no_process(&n);
}

/// Generous limits change nothing: the evaluation and the build succeed, no limit is
/// reported reached.
#[test]
fn generous_limits_change_nothing() {
    if !nix_or_skip() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock();
    let n = nonce();
    let (repo, commit) = repository(&n, &strings(200_000), "echo > $out");
    let (builder, store) = builder(&repo, &n, |c| {
        c.eval_memory_limit = Some(8 << 30);
        c.build_memory_limit = Some(8 << 30);
    });
    let g = evaluated(&builder, &store, &commit);
    assert_eq!(g.eval_status, status::EVALUATED, "{}", g.eval_err);
    let g = built(&builder, &store, &g.uuid);
    assert_eq!(g.build_status, status::BUILT, "{}", g.build_err);
    assert!(!usage_of(&g.eval_usage, "evaluation").memory_limit_reached);
    assert!(!usage_of(&g.build_usage, "build").memory_limit_reached);
    assert_no_process(&n);
}
