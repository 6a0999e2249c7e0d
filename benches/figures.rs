//! genbuild's figures side by side with the reference's approach, as one Markdown
//! table for the README.
//!
//! Why a bench of its own rather than criterion: each row compares two *approaches*
//! (genbuild's, and the way the Go reference does the same thing, re-enacted here with
//! the same commands on the same machine in the same run), and several rows are not
//! durations at all (leftover processes, threads, RSS, CPU seconds). Every row is
//! measured for both sides in one run, interleaved where it matters, and reports
//! medians over repetitions; the last column is genbuild ÷ reference.
//!
//! The reference approach of each row, re-enacted:
//! * eval: `git clone` of the repository to a temp dir and checkout of the commit, then
//!   `nix-instantiate DIR -A system.toplevel` and a second
//!   `nix-instantiate --eval --strict` for the paths (two evaluations). A bare single
//!   `nix-instantiate --eval` of the working tree is the floor: genbuild's overhead
//!   over Nix itself.
//! * stop: SIGKILL to the Nix client and a wait for it; the builders it started are
//!   counted afterwards through the nonce in their command lines, then killed.
//! * churn, state(): each eval kills the previous client with SIGKILL, waits for it
//!   and starts the next, holding the builder's one mutex throughout (as the Go
//!   builder's `Eval` does), while `State()` takes the same mutex.
//! * notification: a thread waits for the child and sends on a 1-slot channel.
//! * CPU: a thread blocked in `wait()`.
//! * log RSS: the child's output copied to a log writer with a 32 KiB buffer, as Go's
//!   `io.Copy` does (the reference streams nothing to subscribers).
//!
//! Needs Nix (Debian's nix-bin 2.8 as root, single-user; settings passed with
//! `--option`, `/etc/nix` untouched) for the eval and stop rows; without it those
//! rows say so. `--quick` (or `GENBUILD_BENCH_QUICK=1`) does fewer repetitions and a
//! shorter CPU job, for CI. Run: `cargo bench --bench figures [-- --quick]`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Receiver;
use genbuild::proto::{self, event, Event};
use genbuild::{
    Builder, BuilderConfig, EvalOutput, EvalRequest, Executor, JobContext, JobError, NixExecutor, Store,
};
use parking_lot::Mutex;

#[path = "../tests/common/mod.rs"]
mod common;

use common::nix::{Env, Repo, SETTINGS};
use common::{fd_count, nonce, processes_with, rs, thread_count};

const HANG: Duration = Duration::from_secs(300);

/// Repetitions and sizes; `--quick` shrinks them.
struct Plan {
    eval_reps: usize,
    stop_reps: usize,
    churn_reps: usize,
    notify_reps: usize,
    cpu_job: Duration,
    log_bytes: u64,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                eval_reps: 3,
                stop_reps: 2,
                churn_reps: 1,
                notify_reps: 15,
                cpu_job: Duration::from_secs(2),
                log_bytes: 256 << 20,
            }
        } else {
            Plan {
                eval_reps: 7,
                stop_reps: 5,
                churn_reps: 3,
                notify_reps: 60,
                cpu_job: Duration::from_secs(10),
                log_bytes: 1 << 30,
            }
        }
    }
}

/// One line of the table.
struct Row {
    what: String,
    genbuild: String,
    reference: String,
    ratio: String,
    notes: String,
}

fn row(what: &str, genbuild: String, reference: String, ratio: Option<f64>, notes: String) -> Row {
    Row {
        what: what.to_string(),
        genbuild,
        reference,
        ratio: ratio.map_or("—".into(), |r| format!("{r:.2}×")),
        notes,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--rss-child") {
        let bytes = args.get(i + 2).and_then(|b| b.parse().ok()).unwrap_or(1 << 30);
        rss_child(args.get(i + 1).map(String::as_str).unwrap_or("genbuild"), bytes);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("GENBUILD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let plan = Plan::new(quick);
    let started = Instant::now();
    let mut rows = Vec::new();
    let nix = Command::new("nix-instantiate").arg("--version").output().is_ok_and(|o| o.status.success());
    if nix {
        let stage = Instant::now();
        rows.extend(eval_rows(&plan));
        eprintln!("eval rows: {:?}", stage.elapsed());
        let stage = Instant::now();
        rows.extend(stop_rows(&plan));
        eprintln!("stop rows: {:?}", stage.elapsed());
    } else {
        let missing = || "Nix not installed".to_string();
        rows.push(row("eval → evaluation_done", missing(), missing(), None, String::new()));
        rows.push(row("stop() during a Nix build", missing(), missing(), None, String::new()));
    }
    let stage = Instant::now();
    rows.extend(churn_rows(&plan));
    eprintln!("churn rows: {:?}", stage.elapsed());
    let stage = Instant::now();
    rows.push(instant_eval_row(&plan));
    rows.push(shell_stop_row(&plan));
    rows.push(notification_row(&plan));
    rows.push(cpu_row(&plan));
    rows.push(rss_row(&plan));
    eprintln!("other rows: {:?}", stage.elapsed());
    print_table(&rows, quick, started.elapsed());
}

// ---------------------------------------------------------------------------------
// Helpers

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    let i = ((values.len() - 1) as f64 * p).round() as usize;
    values[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 1.0 {
        format!("{v:.1} ms")
    } else if v >= 1e-3 {
        format!("{:.0} µs", v * 1e3)
    } else {
        format!("{:.0} ns", v * 1e6)
    }
}

/// The processes left with `marker` once those dying with their parent had a moment
/// to go; all of them are killed afterwards.
fn count_and_kill_leftovers(marker: &str) -> usize {
    let settle = Instant::now() + Duration::from_millis(500);
    let mut left = processes_with(marker);
    while Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(20));
        left = processes_with(marker);
    }
    for &pid in &left {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    left.len()
}

/// user + system CPU time of this process (all threads, dead ones included).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    // rest starts at field 3; utime and stime are fields 14 and 15; USER_HZ is 100.
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

fn nix_args() -> Vec<String> {
    SETTINGS.iter().flat_map(|(k, v)| ["--option".to_string(), k.to_string(), v.to_string()]).collect()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn git(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir).args(["-c", "user.name=b", "-c", "user.email=b@b"]);
    cmd
}

/// Commits a `default.nix` whose `system.toplevel` runs `script` with `env` as an
/// extra derivation attribute (Nix source); returns the commit id.
fn commit_system(repo: &Repo, name: &str, script: &str, env: &str) -> String {
    let expr = format!(
        r#"{{ system = {{ toplevel = derivation {{ name = "{name}"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/bin:/usr/bin"; args = [ "-c" {script:?} ]; extra = {env}; }}; }}; }}"#
    );
    repo.write("default.nix", &expr).commit()
}

fn nix_builder(repo: &Repo, env: &Env) -> (Builder, Arc<Store>) {
    let mut config = BuilderConfig::new("bench", repo.path());
    config.system_attr = "system".into();
    config.eval_timeout = HANG;
    config.build_timeout = HANG;
    let store = Arc::new(Store::new());
    (Builder::new(config, store.clone(), Arc::new(NixExecutor::new(env.options()))), store)
}

fn wait_for_log(events: &Receiver<Event>, text: &str) {
    let deadline = Instant::now() + HANG;
    loop {
        let event = events.recv_deadline(deadline).unwrap_or_else(|_| panic!("no log line with {text:?}"));
        if let Some(event::Kind::LogLine(line)) = &event.kind {
            if line.line.contains(text) {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// eval

/// About a second of evaluation on a 2-core EPYC: 900 × a 10,000-deep recursion,
/// feeding the derivation's environment so that the result cannot be skipped.
const HEAVY: &str = "(let f = n: if n == 0 then 0 else 1 + f (n - 1); \
                     in toString (builtins.foldl' (a: i: a + builtins.seq (f 10000) i) 0 (builtins.genList (x: x) 900)))";

fn eval_rows(plan: &Plan) -> Vec<Row> {
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

// ---------------------------------------------------------------------------------
// stop

fn stop_rows(plan: &Plan) -> Vec<Row> {
    let (repo, env) = (Repo::new(), Env::new());
    let (builder, store) = nix_builder(&repo, &env);
    let (evaluated, built, events) = (builder.evaluation_done(), builder.build_done(), builder.subscribe());
    let (mut ours, mut reference, mut ours_left, mut ref_left) = (Vec::new(), Vec::new(), 0, 0);
    for _ in 0..plan.stop_reps {
        // genbuild: a real build, stopped once its builder printed.
        let n = nonce();
        let script = format!("echo started-{n}; sleep 300.{n}; echo > $out");
        let commit = commit_system(&repo, &format!("stop-{n}"), &script, "\"\"");
        let uuid = builder.eval(&rs(&commit)).unwrap();
        assert_eq!(evaluated.recv_timeout(HANG).unwrap(), uuid);
        let drv = store.generation(&uuid).unwrap().drv_path;
        assert!(!drv.is_empty());
        builder.submit_build(&uuid).unwrap();
        wait_for_log(&events, &format!("started-{n}"));
        let t = Instant::now();
        builder.stop();
        ours.push(ms(t.elapsed()));
        assert_eq!(built.recv_timeout(HANG).unwrap(), uuid);
        ours_left += count_and_kill_leftovers(&n);
        events.try_iter().for_each(drop);

        // Reference: the same kind of build, its Nix client killed with SIGKILL.
        let m = nonce();
        let script = format!("echo started-{m}; sleep 300.{m}; echo > $out");
        commit_system(&repo, &format!("stop-{m}"), &script, "\"\"");
        let drv = run(Command::new("nix-instantiate")
            .args(nix_args())
            .arg(repo.path())
            .args(["-A", "system.toplevel"]));
        let mut client = Command::new("nix-store")
            .args(nix_args())
            .args(["--realise", &drv])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_line(&mut client, &format!("started-{m}"));
        let t = Instant::now();
        client.kill().unwrap();
        client.wait().unwrap();
        reference.push(ms(t.elapsed()));
        ref_left += count_and_kill_leftovers(&m);
    }
    drop(builder);
    let (ours, reference) = (median(ours), median(reference));
    vec![
        row(
            "stop() during a real Nix build: latency",
            fmt_ms(ours),
            fmt_ms(reference),
            Some(ours / reference),
            "SIGTERM, Nix stops its builder, reap vs SIGKILL + reap".into(),
        ),
        row(
            "stop(): builder processes left afterwards",
            format!("{ours_left} in {} stops", plan.stop_reps),
            format!("{ref_left} in {} stops", plan.stop_reps),
            None,
            "counted by nonce in /proc/*/cmdline, then killed".into(),
        ),
    ]
}

/// Reads `child`'s stderr until a line contains `text`; the rest is drained on a thread.
fn wait_for_line(child: &mut Child, text: &str) {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = crossbeam_channel::bounded(1);
    let text = text.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains(&text) {
                let _ = tx.try_send(());
            }
        }
    });
    rx.recv_timeout(HANG).expect("the build never started");
}

// ---------------------------------------------------------------------------------
// churn and state()

/// An executor whose jobs are one command each: `sh -c SCRIPT`, or `date +%s%N`
/// (reported as the machine id, for the notification row).
struct BenchExecutor {
    eval_script: Mutex<Option<String>>,
    build_script: Mutex<Option<String>>,
}

impl BenchExecutor {
    fn new(eval: Option<String>, build: Option<String>) -> BenchExecutor {
        BenchExecutor { eval_script: Mutex::new(eval), build_script: Mutex::new(build) }
    }

    fn run(script: Option<String>, ctx: &JobContext) -> Result<String, JobError> {
        match script.as_deref() {
            Some("date") => {
                let mut cmd = Command::new("date");
                cmd.arg("+%s%N");
                Ok(ctx.run(cmd)?.stdout.trim().to_string())
            }
            Some(script) => {
                let mut cmd = Command::new("sh");
                cmd.arg("-c").arg(script);
                ctx.run(cmd).map(|_| String::new())
            }
            None => Ok(String::new()),
        }
    }
}

impl Executor for BenchExecutor {
    fn eval(&self, _: &EvalRequest, ctx: &JobContext) -> Result<EvalOutput, JobError> {
        let stamp = Self::run(self.eval_script.lock().clone(), ctx)?;
        Ok(EvalOutput {
            drv_path: "/nix/store/b-x.drv".into(),
            out_path: "/nix/store/b-x".into(),
            machine_id: stamp,
        })
    }

    fn build(&self, _: &str, ctx: &JobContext) -> Result<(), JobError> {
        Self::run(self.build_script.lock().clone(), ctx).map(drop)
    }

    fn is_store_path_valid(&self, _: &str) -> bool {
        false
    }
}

fn shell_builder(eval: Option<String>, build: Option<String>) -> (Builder, Arc<Store>) {
    let store = Arc::new(Store::new());
    let builder = Builder::new(
        BuilderConfig::new("bench", "/nonexistent"),
        store.clone(),
        Arc::new(BenchExecutor::new(eval, build)),
    );
    (builder, store)
}

/// The reference's builder, re-enacted: one mutex held while the previous client is
/// killed and reaped and the next one started.
struct ReferenceChurn {
    state: Mutex<(Option<Child>, proto::Generation)>,
}

impl ReferenceChurn {
    fn eval(&self, script: &str, i: usize) {
        let mut state = self.state.lock();
        if let Some(mut previous) = state.0.take() {
            let _ = previous.kill();
            let _ = previous.wait();
        }
        state.1 = proto::Generation {
            uuid: format!("g{i}"),
            eval_status: "evaluating".into(),
            ..Default::default()
        };
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        state.0 = Some(child);
    }

    fn state(&self) -> proto::Builder {
        let state = self.state.lock();
        proto::Builder { generation: Some(state.1.clone()), ..Default::default() }
    }

    fn stop(&self) {
        if let Some(mut child) = self.state.lock().0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

const CHURN_CALLS: usize = 1000;
const STATE_THREADS: usize = 8;

/// Runs `calls` with 8 threads calling `state` meanwhile; returns the calls' elapsed
/// time and every state() latency in ms.
fn churn_with_readers(
    calls: impl FnOnce(),
    state: impl Fn() + Send + Sync + 'static,
) -> (Duration, Vec<f64>) {
    let state = Arc::new(state);
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..STATE_THREADS)
        .map(|_| {
            let (state, done) = (state.clone(), done.clone());
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    state();
                    latencies.push(ms(t.elapsed()));
                }
                latencies
            })
        })
        .collect();
    let t = Instant::now();
    calls();
    let elapsed = t.elapsed();
    done.store(true, Ordering::Relaxed);
    let latencies = readers.into_iter().flat_map(|r| r.join().unwrap()).collect();
    (elapsed, latencies)
}

fn churn_rows(plan: &Plan) -> Vec<Row> {
    let (mut ours_rate, mut ref_rate) = (Vec::new(), Vec::new());
    let mut counts = (String::new(), String::new());
    for _ in 0..plan.churn_reps {
        let n = nonce();
        let script = format!("sleep 300.{n}");
        let before = (thread_count(), fd_count(), processes_with(&n).len());
        let (builder, _) = shell_builder(Some(script.clone()), None);
        let t = Instant::now();
        for i in 0..CHURN_CALLS {
            builder.eval(&rs(&format!("{i:040x}"))).unwrap();
        }
        ours_rate.push(CHURN_CALLS as f64 / t.elapsed().as_secs_f64());
        let during = (thread_count(), fd_count(), processes_with(&n).len());
        builder.stop();
        drop(builder);
        let after = (thread_count(), fd_count(), processes_with(&n).len());
        counts.0 = format!("{before:?} → {during:?} → {after:?}");

        let m = nonce();
        let script = format!("sleep 300.{m}");
        let before = (thread_count(), fd_count(), processes_with(&m).len());
        let reference = ReferenceChurn { state: Mutex::new((None, proto::Generation::default())) };
        let t = Instant::now();
        for i in 0..CHURN_CALLS {
            reference.eval(&script, i);
        }
        ref_rate.push(CHURN_CALLS as f64 / t.elapsed().as_secs_f64());
        let during = (thread_count(), fd_count(), processes_with(&m).len());
        reference.stop();
        let after = (thread_count(), fd_count(), processes_with(&m).len());
        counts.1 = format!("{before:?} → {during:?} → {after:?}");
        count_and_kill_leftovers(&n);
        count_and_kill_leftovers(&m);
    }
    let (ours_rate, ref_rate) = (median(ours_rate), median(ref_rate));
    let (ours_running, ref_running) = churn_running(plan);

    // state() from 8 threads during the same churn.
    let n = nonce();
    let script = format!("sleep 300.{n}");
    let (builder, _) = shell_builder(Some(script.clone()), None);
    let reader = builder.clone();
    let (_, ours) = churn_with_readers(
        || {
            for i in 0..CHURN_CALLS {
                builder.eval(&rs(&format!("{i:040x}"))).unwrap();
            }
        },
        move || drop(reader.state()),
    );
    builder.stop();
    drop(builder);
    let reference = Arc::new(ReferenceChurn { state: Mutex::new((None, proto::Generation::default())) });
    let reader = reference.clone();
    let (_, theirs) = churn_with_readers(
        || {
            for i in 0..CHURN_CALLS {
                reference.eval(&script, i);
            }
        },
        move || drop(reader.state()),
    );
    reference.stop();
    count_and_kill_leftovers(&n);
    let (ours_med, theirs_med) = (median(ours.clone()), median(theirs.clone()));
    let (ours_p99, theirs_p99) = (percentile(ours, 0.99), percentile(theirs, 0.99));
    vec![
        row(
            "pre-emption churn: eval() calls/s while a job runs",
            format!("{ours_rate:.0}/s"),
            format!("{ref_rate:.0}/s"),
            Some(ours_rate / ref_rate),
            format!("{CHURN_CALLS} calls back to back; higher is better"),
        ),
        row(
            "churn: eval() cycles/s, each once the last job printed",
            format!("{ours_running:.0}/s"),
            format!("{ref_running:.0}/s"),
            Some(ours_running / ref_running),
            format!("{RUNNING_CALLS} cycles: eval, then its process's first line"),
        ),
        row(
            "churn: (threads, fds, procs) before → during → after",
            counts.0,
            counts.1,
            None,
            "reference's SIGKILL of `sh` orphans its `sleep`".into(),
        ),
        row(
            "state() from 8 threads during churn: median",
            fmt_ms(ours_med),
            fmt_ms(theirs_med),
            Some(ours_med / theirs_med),
            "reference holds its mutex while killing and reaping".into(),
        ),
        row(
            "state() from 8 threads during churn: p99",
            fmt_ms(ours_p99),
            fmt_ms(theirs_p99),
            Some(ours_p99 / theirs_p99),
            String::new(),
        ),
    ]
}

const RUNNING_CALLS: usize = 200;

/// Churn where each eval() comes once the previous job's process is running (it
/// printed its first line), so that every call really pre-empts a live process.
/// Returns cycles/s of genbuild and of the reference.
fn churn_running(plan: &Plan) -> (f64, f64) {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..plan.churn_reps {
        let n = nonce();
        let script = format!("echo started; sleep 300.{n}; true");
        let (builder, _) = shell_builder(Some(script.clone()), None);
        let events = builder.subscribe();
        let t = Instant::now();
        for i in 0..RUNNING_CALLS {
            let uuid = builder.eval(&rs(&format!("{i:040x}"))).unwrap();
            loop {
                let event = events.recv_timeout(HANG).expect("the job never printed");
                if let Some(event::Kind::LogLine(line)) = event.kind {
                    if line.generation_uuid == uuid {
                        break;
                    }
                }
            }
        }
        ours.push(RUNNING_CALLS as f64 / t.elapsed().as_secs_f64());
        builder.stop();
        drop(builder);
        count_and_kill_leftovers(&n);

        let m = nonce();
        let script = format!("echo started; sleep 300.{m}; true");
        let mut previous: Option<Child> = None;
        let t = Instant::now();
        for _ in 0..RUNNING_CALLS {
            if let Some(mut child) = previous.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(&script)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut first = [0u8; 8];
            let _ = child.stdout.as_mut().unwrap().read(&mut first);
            previous = Some(child);
        }
        theirs.push(RUNNING_CALLS as f64 / t.elapsed().as_secs_f64());
        if let Some(mut child) = previous {
            let _ = child.kill();
            let _ = child.wait();
        }
        count_and_kill_leftovers(&m);
    }
    (median(ours), median(theirs))
}

// ---------------------------------------------------------------------------------
// notification latency, CPU, RSS

/// The builder's own round trip: eval() → `evaluation_done` with an executor that
/// returns at once, against a thread that sends on a 1-slot channel.
fn instant_eval_row(plan: &Plan) -> Row {
    let (builder, _) = shell_builder(None, None);
    let done = builder.evaluation_done();
    let (mut ours, mut reference) = (Vec::new(), Vec::new());
    for i in 0..plan.notify_reps * 10 {
        let started = Instant::now();
        let uuid = builder.eval(&rs(&format!("{i:040x}"))).unwrap();
        assert_eq!(done.recv_timeout(HANG).unwrap(), uuid);
        ours.push(ms(started.elapsed()));

        let started = Instant::now();
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || tx.send(i).unwrap());
        assert_eq!(rx.recv_timeout(HANG).unwrap(), i);
        reference.push(ms(started.elapsed()));
    }
    let (ours, reference) = (median(ours), median(reference));
    let notes =
        format!("median of {}; reference: a thread sending on a 1-slot channel", plan.notify_reps * 10);
    row(
        "eval() → evaluation_done, instant executor",
        fmt_ms(ours),
        fmt_ms(reference),
        Some(ours / reference),
        notes,
    )
}

/// stop() while a `sleep` job runs, against SIGKILL and a wait of the shell.
fn shell_stop_row(plan: &Plan) -> Row {
    let (mut ours, mut reference) = (Vec::new(), Vec::new());
    let (mut our_leftovers, mut reference_leftovers) = (0, 0);
    for _ in 0..plan.stop_reps {
        let n = nonce();
        let script = format!("sleep 300.{n}; true");
        let (builder, _) = shell_builder(Some(script.clone()), None);
        builder.eval(&rs(&n)).unwrap();
        wait_for_process(&n);
        let started = Instant::now();
        builder.stop();
        ours.push(ms(started.elapsed()));
        our_leftovers += count_and_kill_leftovers(&n);

        let mut child = Command::new("sh").arg("-c").arg(&script).stdin(Stdio::null()).spawn().unwrap();
        wait_for_process(&n);
        let started = Instant::now();
        child.kill().unwrap();
        child.wait().unwrap();
        reference.push(ms(started.elapsed()));
        reference_leftovers += count_and_kill_leftovers(&n);
    }
    let (ours, reference) = (median(ours), median(reference));
    let notes = format!(
        "`sh -c 'sleep; true'`; processes left: {our_leftovers} vs {reference_leftovers} in {} stops",
        plan.stop_reps
    );
    row(
        "stop() with a running `sleep` job: latency",
        fmt_ms(ours),
        fmt_ms(reference),
        Some(ours / reference),
        notes,
    )
}

/// Until a process carrying `marker` runs.
fn wait_for_process(marker: &str) {
    let deadline = Instant::now() + HANG;
    while processes_with(marker).is_empty() {
        assert!(Instant::now() < deadline, "no process with {marker} started");
        std::thread::yield_now();
    }
}

fn notification_row(plan: &Plan) -> Row {
    let (builder, store) = shell_builder(Some("date".into()), None);
    let done = builder.evaluation_done();
    let (mut ours, mut reference) = (Vec::new(), Vec::new());
    for i in 0..plan.notify_reps {
        let uuid = builder.eval(&rs(&format!("{i:040x}"))).unwrap();
        assert_eq!(done.recv_timeout(HANG).unwrap(), uuid);
        let received = now_ns();
        let written: u128 = store.generation(&uuid).unwrap().machine_id.parse().unwrap();
        ours.push((received - written) as f64 / 1e6);

        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let out = Command::new("date").arg("+%s%N").stdin(Stdio::null()).output().unwrap();
            let _ = tx.send(String::from_utf8_lossy(&out.stdout).trim().to_string());
        });
        let stamp = rx.recv_timeout(HANG).unwrap();
        let received = now_ns();
        reference.push((received - stamp.parse::<u128>().unwrap()) as f64 / 1e6);
    }
    let (ours, reference) = (median(ours), median(reference));
    row(
        "notification: child's last write → message received",
        fmt_ms(ours),
        fmt_ms(reference),
        Some(ours / reference),
        format!("median of {}; reference: wait thread + 1-slot channel", plan.notify_reps),
    )
}

fn cpu_row(plan: &Plan) -> Row {
    let secs = plan.cpu_job.as_secs();
    let (builder, _) = shell_builder(Some(format!("sleep {secs}")), None);
    let done = builder.evaluation_done();
    let before = cpu_time();
    builder.eval(&rs(&"0".repeat(40))).unwrap();
    done.recv_timeout(HANG).unwrap();
    let ours = cpu_time() - before;
    drop(builder);

    let before = cpu_time();
    let waiter = std::thread::spawn(move || {
        Command::new("sleep").arg(secs.to_string()).stdin(Stdio::null()).status().unwrap();
    });
    waiter.join().unwrap();
    let reference = cpu_time() - before;
    row(
        &format!("builder's own CPU while a {secs} s job runs"),
        format!("{} ms", whole_ms(ours)),
        format!("{} ms", whole_ms(reference)),
        None,
        "utime+stime of the process, 10 ms resolution".into(),
    )
}

fn whole_ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Runs this bench as a child measuring one side of the RSS row; parses its line.
fn rss_side(side: &str, bytes: u64) -> (u64, u64, Duration) {
    let exe = std::env::current_exe().unwrap();
    let t = Instant::now();
    let out = Command::new(exe)
        .args(["--rss-child", side, &bytes.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let elapsed = t.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut numbers = text.split_whitespace().filter_map(|w| w.parse::<u64>().ok());
    let (before, after) = (numbers.next(), numbers.next());
    match (before, after) {
        (Some(b), Some(a)) => (b, a, elapsed),
        _ => panic!("the RSS child ({side}) printed {text:?}: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

fn rss_row(plan: &Plan) -> Row {
    let (ob, oa, ot) = rss_side("genbuild", plan.log_bytes);
    let (rb, ra, rt) = rss_side("reference", plan.log_bytes);
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    row(
        &format!("peak RSS while a build prints {} MiB of log lines", plan.log_bytes >> 20),
        format!("{} → {} ({:.1} s)", mib(ob), mib(oa), ot.as_secs_f64()),
        format!("{} → {} ({:.1} s)", mib(rb), mib(ra), rt.as_secs_f64()),
        Some(oa as f64 / ra as f64),
        "VmHWM; genbuild with a subscriber that never reads".into(),
    )
}

/// The child of the RSS row: prints `VmHWM-before VmHWM-after` in KiB.
fn rss_child(side: &str, bytes: u64) {
    let line = "0123456789".repeat(10);
    let script = format!("yes {line} | head -c {bytes} >&2");
    match side {
        "genbuild" => {
            let (builder, store) = shell_builder(None, Some(script));
            let events = builder.subscribe();
            let uuid = builder.eval(&rs(&"0".repeat(40))).unwrap();
            builder.evaluation_done().recv_timeout(HANG).unwrap();
            let before = status_kib("VmHWM:");
            builder.submit_build(&uuid).unwrap();
            builder.build_done().recv_timeout(HANG).unwrap();
            let after = status_kib("VmHWM:");
            let g = store.generation(&uuid).unwrap();
            assert_eq!(g.build_status, "built", "{}", g.build_err);
            let queued = events.len();
            drop(events);
            println!("{before} {after} queued={queued}");
        }
        _ => {
            let before = status_kib("VmHWM:");
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(&script)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stderr = child.stderr.take().unwrap();
            let mut sink = std::io::sink();
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match stderr.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink.write_all(&buf[..n]).unwrap(),
                }
            }
            assert!(child.wait().unwrap().success());
            let after = status_kib("VmHWM:");
            println!("{before} {after}");
        }
    }
}

// ---------------------------------------------------------------------------------
// the table

fn print_table(rows: &[Row], quick: bool, elapsed: Duration) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map_or(String::new(), |o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let nix = Command::new("nix")
        .arg("--version")
        .output()
        .map_or("no Nix".into(), |o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let mut out = String::new();
    out.push_str(&format!(
        "\nMeasured {date} on {nproc} × {cpu}, {nix}{}; the bench took {:.0} s.\n\n",
        if quick { " (--quick)" } else { "" },
        elapsed.as_secs_f64()
    ));
    out.push_str("| measure | genbuild | reference approach | genbuild ÷ reference | notes |\n");
    out.push_str("| --- | --- | --- | --- | --- |\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.what, r.genbuild, r.reference, r.ratio, r.notes
        ));
    }
    print!("{out}");
}
