//! Memory stays bounded however slowly subscribers read: a binary of its own, so that
//! the process's resident set is this test's.

mod common;

use std::time::Duration;

use common::*;
use genbuild::proto::event;

/// The resident set and its peak, in KiB, from /proc/self/status.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name}"));
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn subscribers_that_never_read_keep_memory_bounded_while_256_mib_of_log_lines_stream() {
    let (builder, _, _) = builder(
        // 16,384 lines of 16 KiB (long, but far below any cut of the line length), on
        // stderr, of which only a tail is kept for the error text.
        ShellExecutor::new().build_runs("yes \"$(printf '%016383d' 0)\" | head -c 268435456 >&2"),
    );
    let idle: Vec<_> = (0..2).map(|_| builder.subscribe()).collect();
    let uuid = builder.eval(&rs("c1")).unwrap();
    recv(&builder.evaluation_done(), "evaluation_done");
    // Forget the peak so far (the test harness, the build of the binary's statics).
    std::fs::write("/proc/self/clear_refs", "5").expect("the kernel resets the peak resident set");
    let (before, _) = rss_kib();
    builder.submit_build(&uuid).unwrap();
    assert_eq!(builder.build_done().recv_timeout(Duration::from_secs(300)), Ok(uuid.clone()));
    let (_, peak) = rss_kib();
    let growth_mib = peak.saturating_sub(before) / 1024;
    eprintln!("peak resident set growth: {growth_mib} MiB");
    // 16 MiB of backlog for each of the two subscribers, and some slack.
    assert!(growth_mib < 64, "the resident set grew by {growth_mib} MiB");

    for events in &idle {
        let (mut lines, mut lifecycle) = (0u64, 0);
        let mut finished_with = None;
        for e in events.try_iter() {
            match e.kind.unwrap() {
                event::Kind::LogLine(l) => {
                    lines += 1;
                    if l.dropped_before > 0 {
                        finished_with = Some(l.dropped_before);
                    }
                }
                _ => lifecycle += 1,
            }
        }
        assert_eq!(lifecycle, 4, "lifecycle events are never dropped");
        assert!(lines > 100 && lines < 16_384, "{lines} lines kept");
        assert_eq!(finished_with, None, "nothing was read, so no line after the drops was sent");
    }
}
