//! Rows of the memory watchdog: how far past its limit a command gets before it is
//! killed, and what the sampling costs the builder while a long job runs under a limit.
//! The reference bounds nothing (comin's builder has no memory limit): its column is
//! what the same command does without one.

use std::time::Duration;

use crate::common::rs;
use crate::latency::whole_ms;
use crate::util::{bench_config, cpu_time, BenchExecutor};
use crate::{row, Plan, Row, HANG};
use genbuild::{Builder, Store};

const MIB: u64 = 1 << 20;

/// A builder of shell jobs whose evaluations may use `limit` bytes.
fn limited(eval: &str, limit: Option<u64>) -> Builder {
    let mut config = bench_config(std::path::Path::new("/nonexistent"));
    config.eval_memory_limit = limit;
    config.eval_timeout = HANG;
    let executor = BenchExecutor::new(Some(eval.to_string()), None);
    Builder::new(config, std::sync::Arc::new(Store::new()), std::sync::Arc::new(executor))
}

/// The peak seen when a command that grows its memory as fast as a shell can (a 400
/// MB variable) is killed, over the limit: the watchdog's overshoot, for 128 and 256
/// MiB limits; the command runs to its end, at its full size, without a limit.
pub(crate) fn overshoot_rows(plan: &Plan) -> Vec<Row> {
    let hog = "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo ${#x}";
    let peak_of = |limit: Option<u64>| {
        let builder = limited(hog, limit);
        let uuid = builder.eval(&rs(&"0".repeat(40))).unwrap();
        builder.evaluation_done().recv_timeout(HANG).unwrap();
        let g = builder.state().generation.unwrap();
        assert_eq!(g.uuid, uuid);
        g.eval_usage.map_or(0, |u| u.peak_memory_bytes)
    };
    let unbounded = peak_of(None);
    [128, 256]
        .into_iter()
        .map(|limit_mib| {
            let peaks: Vec<f64> = (0..plan.stop_reps)
                .map(|_| peak_of(Some(limit_mib * MIB)) as f64 / (limit_mib * MIB) as f64)
                .collect();
            let worst = peaks.iter().copied().fold(0.0, f64::max);
            let median = crate::util::median(peaks.clone());
            row(
                &format!("memory watchdog: peak at the kill ÷ a {limit_mib} MiB limit"),
                format!("{median:.2}× (worst {worst:.2}×)"),
                format!("{} MiB, unbounded", unbounded / MIB),
                None,
                format!(
                    "a shell filling a 400 MB variable, sampled every 50 ms; median of {}; cgroup v2 \
                     memory.max is exact where the memory controller is delegated",
                    plan.stop_reps
                ),
            )
        })
        .collect()
}

/// The builder's own CPU while a job of `plan.cpu_job` runs under a memory limit (the
/// watchdog samples it every 50 ms) and without one, side by side.
pub(crate) fn watchdog_cpu_row(plan: &Plan) -> Row {
    let secs = plan.cpu_job.as_secs();
    let cpu_of = |limit: Option<u64>| {
        let builder = limited(&format!("sleep {secs}"), limit);
        let before = cpu_time();
        builder.eval(&rs(&"0".repeat(40))).unwrap();
        builder.evaluation_done().recv_timeout(HANG + Duration::from_secs(secs)).unwrap();
        cpu_time() - before
    };
    let (watched, unwatched) = (cpu_of(Some(1 << 30)), cpu_of(None));
    row(
        &format!("builder's own CPU while a {secs} s job runs under a memory limit"),
        format!("{} ms", whole_ms(watched)),
        format!("{} ms without a limit", whole_ms(unwatched)),
        None,
        "utime+stime of the process, 10 ms resolution; the watchdog samples the job's cgroup every 50 ms"
            .into(),
    )
}
