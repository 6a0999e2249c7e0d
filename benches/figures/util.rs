//! What every group of rows uses: statistics, formatting, the process counts, the
//! executors and builders of the bench, Nix helpers.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use genbuild::{
    Builder, BuilderConfig, EvalOutput, EvalRequest, Executor, JobContext, JobError, NixExecutor, Store,
};
use parking_lot::Mutex;

use crate::common::nix::{Env, Repo, SETTINGS};
use crate::common::processes_with;
use crate::HANG;

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
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

pub(crate) fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    let i = ((values.len() - 1) as f64 * p).round() as usize;
    values[i]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) fn fmt_ms(v: f64) -> String {
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
pub(crate) fn count_and_kill_leftovers(marker: &str) -> usize {
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

/// genbuild's stop: `builder.stop()`, then the builder dropped. Returns how long the
/// stop took, in ms, and how many processes carrying `marker` it left (killed
/// afterwards).
pub(crate) fn stop_and_count(builder: Builder, marker: &str) -> (f64, usize) {
    let t = Instant::now();
    builder.stop();
    let took = ms(t.elapsed());
    drop(builder);
    (took, count_and_kill_leftovers(marker))
}

/// The reference's stop: SIGKILL to `child` and a wait for it. Returns how long that
/// took, in ms, and how many processes carrying `marker` it left (killed afterwards).
pub(crate) fn kill_and_count(mut child: std::process::Child, marker: &str) -> (f64, usize) {
    let t = Instant::now();
    child.kill().unwrap();
    child.wait().unwrap();
    let took = ms(t.elapsed());
    (took, count_and_kill_leftovers(marker))
}

/// user + system CPU time of this process (all threads, dead ones included).
pub(crate) fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    // rest starts at field 3; utime and stime are fields 14 and 15; USER_HZ is 100.
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

pub(crate) fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub(crate) fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

pub(crate) fn nix_args() -> Vec<String> {
    SETTINGS.iter().flat_map(|(k, v)| ["--option".to_string(), k.to_string(), v.to_string()]).collect()
}

pub(crate) fn run(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub(crate) fn git(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir).args(["-c", "user.name=b", "-c", "user.email=b@b"]);
    cmd
}

/// Commits a `default.nix` whose `system.toplevel` runs `script` with `env` as an
/// extra derivation attribute (Nix source); returns the commit id.
pub(crate) fn commit_system(repo: &Repo, name: &str, script: &str, env: &str) -> String {
    let expr = format!(
        r#"{{ system = {{ toplevel = derivation {{ name = "{name}"; system = builtins.currentSystem; builder = "/bin/sh"; PATH = "/bin:/usr/bin"; args = [ "-c" {script:?} ]; extra = {env}; }}; }}; }}"#
    );
    repo.write("default.nix", &expr).commit()
}

/// A builder's configuration as the bench runs it: `GENBUILD_BENCH_CONTAINMENT=tree`
/// measures the process-tree containment instead of the automatic one (a cgroup v2 per
/// command where writable).
pub(crate) fn bench_config(repository: &Path) -> BuilderConfig {
    let mut config = BuilderConfig::new("bench", repository);
    if std::env::var("GENBUILD_BENCH_CONTAINMENT").as_deref() == Ok("tree") {
        config.process.containment = genbuild::Containment::ProcessTree;
    }
    config
}

pub(crate) fn nix_builder(repo: &Repo, env: &Env) -> (Builder, Arc<Store>) {
    let mut config = bench_config(repo.path());
    config.system_attr = "system".into();
    config.eval_timeout = HANG;
    config.build_timeout = HANG;
    let store = Arc::new(Store::new());
    (Builder::new(config, store.clone(), Arc::new(NixExecutor::new(env.options()))), store)
}

/// An executor whose jobs are one command each: `sh -c SCRIPT`, or `date +%s%N`
/// (reported as the machine id, for the notification row).
pub(crate) struct BenchExecutor {
    eval_script: Mutex<Option<String>>,
    build_script: Mutex<Option<String>>,
}

impl BenchExecutor {
    pub(crate) fn new(eval: Option<String>, build: Option<String>) -> BenchExecutor {
        BenchExecutor { eval_script: Mutex::new(eval), build_script: Mutex::new(build) }
    }

    fn run(script: Option<String>, ctx: &JobContext) -> Result<String, JobError> {
        match script.as_deref() {
            Some("date") => {
                let mut cmd = genbuild::Command::new("date");
                cmd.arg("+%s%N");
                Ok(ctx.run(cmd)?.stdout.trim().to_string())
            }
            Some(script) => {
                let mut cmd = genbuild::Command::new("sh");
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

pub(crate) fn shell_builder(eval: Option<String>, build: Option<String>) -> (Builder, Arc<Store>) {
    let store = Arc::new(Store::new());
    let builder = Builder::new(
        bench_config(Path::new("/nonexistent")),
        store.clone(),
        Arc::new(BenchExecutor::new(eval, build)),
    );
    (builder, store)
}

/// Until a process carrying `marker` runs.
pub(crate) fn wait_for_process(marker: &str) {
    let deadline = Instant::now() + HANG;
    while processes_with(marker).is_empty() {
        assert!(Instant::now() < deadline, "no process with {marker} started");
        std::thread::yield_now();
    }
}
