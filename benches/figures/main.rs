//! genbuild's figures side by side with the reference's approach, as one Markdown
//! table for the README.
//!
//! Why a bench of its own rather than criterion: each row compares two *approaches*
//! (genbuild's, and the way the Go reference does the same thing, re-enacted here with
//! the same commands on the same machine in the same run), and several rows are not
//! durations at all (leftover processes, threads, RSS, CPU seconds). Every row is
//! measured for both sides in one run, interleaved where it matters, and reports
//! medians over repetitions; the last column is genbuild ÷ reference. One file per
//! group of rows:
//!
//! * [`eval`]: `git clone` of the repository to a temp dir and checkout of the commit,
//!   then `nix-instantiate DIR -A system.toplevel` and a second
//!   `nix-instantiate --eval --strict` for the paths (two evaluations); a bare single
//!   `nix-instantiate --eval` of the working tree is the floor; stop() while the
//!   evaluator is busy on the CPU against SIGKILL of `nix-instantiate`.
//! * [`stop`]: SIGKILL to the Nix client and a wait for it; the builders it started are
//!   counted afterwards through the nonce in their command lines, then killed.
//! * [`churn`]: each eval kills the previous client with SIGKILL, waits for it and
//!   starts the next, holding the builder's one mutex throughout (as the Go builder's
//!   `Eval` does), while `State()` takes the same mutex.
//! * [`containment`]: a `setsid`, double-forked daemon that ignores SIGTERM, left by a
//!   job that is stopped; a grandchild holding the pipes of a command that exited (Go's
//!   `cmd.Wait` waits for the pipes' EOF).
//! * [`latency`]: a thread waits for the child and sends on a 1-slot channel; CPU: a
//!   thread blocked in `wait()`.
//! * [`reuse`]: the reference evaluates every commit it is given, so its column for
//!   an evaluation reused (the same flake commit on another branch, or after a
//!   restart) is the first evaluation's time.
//! * [`rss`]: the child's output copied to a log writer with a 32 KiB buffer, as Go's
//!   `io.Copy` does (the reference streams nothing to subscribers).
//! * [`resources`]: the memory watchdog's overshoot and its CPU; the reference bounds
//!   no memory.
//! * [`modules`]: not the reference's approach but the floor: a bare `nix eval` of the
//!   same attribute of a generated module-system configuration of NixOS's size, on
//!   each Nix version at hand (the machine's, and the Debian roots of `.ci/matrix`).
//!
//! Needs Nix (Debian's nix-bin 2.8 as root, single-user; settings passed with
//! `--option`, `/etc/nix` untouched) for the eval, reuse and stop rows; without it
//! those rows say so. `--quick` (or `GENBUILD_BENCH_QUICK=1`) does fewer repetitions
//! and a shorter CPU job, for CI. `--only NAME[,NAME]` runs only those groups (eval,
//! reuse, stop, churn, containment, latency, rss, resources, modules). `GENBUILD_BENCH_CONTAINMENT=tree`
//! runs genbuild's side with the process-tree containment instead of a cgroup v2 per
//! command (what a host without a writable cgroup v2 gets). Run:
//! `cargo bench --bench figures [-- --quick]`.

mod churn;
mod containment;
mod eval;
mod latency;
mod modules;
mod resources;
mod reuse;
mod rss;
mod stop;
mod util;

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

const HANG: Duration = Duration::from_secs(300);

/// Repetitions and sizes; `--quick` shrinks them.
pub(crate) struct Plan {
    pub(crate) eval_reps: usize,
    pub(crate) stop_reps: usize,
    pub(crate) churn_reps: usize,
    pub(crate) notify_reps: usize,
    pub(crate) cpu_job: Duration,
    pub(crate) log_bytes: u64,
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
pub(crate) struct Row {
    what: String,
    genbuild: String,
    reference: String,
    ratio: String,
    notes: String,
}

pub(crate) fn row(what: &str, genbuild: String, reference: String, ratio: Option<f64>, notes: String) -> Row {
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
        rss::rss_child(args.get(i + 1).map(String::as_str).unwrap_or("genbuild"), bytes);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("GENBUILD_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').map(str::to_string).collect());
    let wanted = |group: &str| only.as_ref().is_none_or(|o| o.iter().any(|g| g == group));
    let plan = Plan::new(quick);
    let started = Instant::now();
    let mut rows = Vec::new();
    let nix = Command::new("nix-instantiate").arg("--version").output().is_ok_and(|o| o.status.success());
    let stage = |name: &str, rows: &mut Vec<Row>, make: &dyn Fn() -> Vec<Row>| {
        if wanted(name) {
            let t = Instant::now();
            rows.extend(make());
            eprintln!("{name} rows: {:?}", t.elapsed());
        }
    };
    if nix {
        stage("eval", &mut rows, &|| {
            let mut rows = eval::eval_rows(&plan);
            rows.push(eval::cpu_bound_stop_row(&plan));
            rows
        });
        stage("reuse", &mut rows, &|| reuse::reuse_rows(&plan));
        stage("stop", &mut rows, &|| stop::stop_rows(&plan));
        stage("modules", &mut rows, &|| modules::module_rows(&plan));
    } else {
        let missing = || "Nix not installed".to_string();
        rows.push(row("eval → evaluation_done", missing(), missing(), None, String::new()));
        rows.push(row("stop() during a Nix build", missing(), missing(), None, String::new()));
    }
    stage("churn", &mut rows, &|| churn::churn_rows(&plan));
    stage("containment", &mut rows, &|| containment::containment_rows(&plan));
    stage("latency", &mut rows, &|| {
        vec![
            latency::instant_eval_row(&plan),
            stop::shell_stop_row(&plan),
            latency::notification_row(&plan),
            latency::cpu_row(&plan),
        ]
    });
    stage("rss", &mut rows, &|| rss::rss_rows(&plan));
    stage("resources", &mut rows, &|| {
        let mut rows = resources::overshoot_rows(&plan);
        rows.push(resources::watchdog_cpu_row(&plan));
        rows
    });
    if args.iter().any(|a| a == "--rows") {
        // For the bench that started this one in a Debian root (modules.rs).
        for r in &rows {
            let fields = [&r.what, &r.genbuild, &r.reference, &r.ratio, &r.notes];
            println!("{}{}", modules::ROW_MARK, fields.map(|f| f.as_str()).join("\t"));
        }
        return;
    }
    print_table(&rows, quick, started.elapsed());
}

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
