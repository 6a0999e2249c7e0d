//! Memory is bounded in bytes: one 256 MiB stderr line without a newline (what a
//! progress bar redrawing with `\r` looks like to a line reader that only knows `\n`,
//! or a runaway command) must not be buffered whole.
//!
//! Each measure runs in a child process of the test (this test binary again, told by
//! an environment variable which measure to take), so that its peak RSS (`VmHWM` in
//! /proc/self/status) is its own and not that of the other tests.

mod common;

use std::process::Command;

use common::*;
use genbuild::{Job, JobContext};

const CHILD: &str = "GENBUILD_MEMORY_CHILD";
const LINE_BYTES: u64 = 256 << 20;
const BOUND_KIB: u64 = 64 << 10;

fn vmhwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// A shell script printing one 256 MiB line of `x` to stderr, no newline.
fn huge_line() -> String {
    format!("head -c {LINE_BYTES} /dev/zero | tr '\\0' x >&2")
}

/// Runs `test` of this binary in a child process with the measure switched on; returns
/// its peak RSS growth in KiB.
fn in_child(test: &str) -> u64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1", "--include-ignored"])
        .env(CHILD, test)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let growth = text.split("vmhwm-growth-kib ").nth(1).and_then(|g| g.split_whitespace().next());
    growth.and_then(|g| g.parse().ok()).unwrap_or_else(|| {
        panic!("the child printed no measure:\n{text}\n{}", String::from_utf8_lossy(&out.stderr))
    })
}

fn is_child(test: &str) -> bool {
    std::env::var(CHILD).is_ok_and(|v| v == test)
}

#[test]
fn a_256_mib_line_without_newline_costs_less_than_64_mib() {
    const TEST: &str = "a_256_mib_line_without_newline_costs_less_than_64_mib";
    if is_child(TEST) {
        let before = vmhwm_kib();
        let script = huge_line();
        let mut job = Job::new(
            move |ctx: &JobContext| {
                let (mut pieces, mut bytes) = (0u64, 0u64);
                let result = ctx.run_with(sh(&script), &mut |_, line| {
                    pieces += 1;
                    bytes += line.len() as u64;
                });
                assert_eq!(bytes, LINE_BYTES, "every byte reaches on_line");
                assert_eq!(pieces, LINE_BYTES / (64 << 10), "in pieces of 64 KiB");
                result.map(drop)
            },
            HANG,
        );
        job.start();
        job.wait();
        assert_eq!(job.error(), None);
        println!("vmhwm-growth-kib {}", vmhwm_kib().saturating_sub(before));
        return;
    }
    let growth = in_child(TEST);
    eprintln!("peak RSS growth for a 256 MiB line: {growth} KiB");
    assert!(growth < BOUND_KIB, "peak RSS grew by {growth} KiB");
}

/// The same line through a builder with two subscribers that never read. The line
/// reaches them in 4096 pieces of 64 KiB: what bounds their backlogs is the builder's
/// byte-bounded subscriber fan-out, the process layer bounds the rest.
#[test]
fn a_256_mib_line_with_two_subscribers_that_never_read_costs_less_than_64_mib() {
    const TEST: &str = "a_256_mib_line_with_two_subscribers_that_never_read_costs_less_than_64_mib";
    if is_child(TEST) {
        let (builder, store, _) = builder(ShellExecutor::new().build_runs(huge_line()));
        let (_first, _second) = (builder.subscribe(), builder.subscribe());
        let uuid = builder.eval(&rs("c1")).unwrap();
        assert_eq!(recv(&builder.evaluation_done(), "evaluation_done"), uuid);
        let before = vmhwm_kib();
        builder.submit_build(&uuid).unwrap();
        assert_eq!(builder.build_done().recv_timeout(HANG * 3).unwrap(), uuid);
        assert_eq!(generation(&store, &uuid).build_status, "built");
        println!("vmhwm-growth-kib {}", vmhwm_kib().saturating_sub(before));
        return;
    }
    let growth = in_child(TEST);
    eprintln!("peak RSS growth for a 256 MiB line, two idle subscribers: {growth} KiB");
    assert!(growth < BOUND_KIB, "peak RSS grew by {growth} KiB");
}
