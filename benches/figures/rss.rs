//! Rows of peak RSS, each side measured in a child process of its own (this bench
//! again, with `--rss-child SIDE BYTES`), so that its `VmHWM` is its own: a build
//! printing a lot of log lines, and one 256 MiB line without a newline.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use genbuild::{Job, JobContext};

use crate::common::rs;
use crate::util::{shell_builder, status_kib};
use crate::{row, Plan, Row, HANG};

/// The huge line of the second group of rows.
const LINE_BYTES: u64 = 256 << 20;

pub(crate) fn rss_rows(plan: &Plan) -> Vec<Row> {
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let side = |name: &str, bytes: u64| {
        let (before, after, took) = rss_side(name, bytes);
        (format!("{} → {} ({:.1} s)", mib(before), mib(after), took.as_secs_f64()), after)
    };
    let (ours, ours_kib) = side("genbuild", plan.log_bytes);
    let (theirs, theirs_kib) = side("reference", plan.log_bytes);
    let (line, line_kib) = side("genbuild-line", LINE_BYTES);
    let (job_line, job_line_kib) = side("job-line", LINE_BYTES);
    let (theirs_line, theirs_line_kib) = side("reference-line", LINE_BYTES);
    vec![
        row(
            &format!("peak RSS while a build prints {} MiB of log lines", plan.log_bytes >> 20),
            ours,
            theirs,
            Some(ours_kib as f64 / theirs_kib as f64),
            "VmHWM; genbuild with a subscriber that never reads".into(),
        ),
        row(
            "peak RSS, one 256 MiB stderr line without newline, 2 idle subscribers",
            line,
            theirs_line.clone(),
            Some(line_kib as f64 / theirs_line_kib as f64),
            "VmHWM; the builder's subscriber backlogs hold what they are sent".into(),
        ),
        row(
            "peak RSS, the same line through JobContext::run_with",
            job_line,
            theirs_line,
            Some(job_line_kib as f64 / theirs_line_kib as f64),
            "VmHWM; the process layer alone: lines cut at 64 KiB".into(),
        ),
    ]
}

/// Runs this bench as a child measuring one side of an RSS row; parses its line.
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

/// The child of the RSS rows: prints `VmHWM-before VmHWM-after` in KiB.
pub(crate) fn rss_child(side: &str, bytes: u64) {
    let lines = format!("yes {} | head -c {bytes} >&2", "0123456789".repeat(10));
    let one_line = format!("head -c {bytes} /dev/zero | tr '\\0' x >&2");
    match side {
        "genbuild" | "genbuild-line" => {
            let script = if side == "genbuild" { lines } else { one_line };
            let (builder, store) = shell_builder(None, Some(script));
            let subscribers = if side == "genbuild" { 1 } else { 2 };
            let events: Vec<_> = (0..subscribers).map(|_| builder.subscribe()).collect();
            let uuid = builder.eval(&rs(&"0".repeat(40))).unwrap();
            builder.evaluation_done().recv_timeout(HANG).unwrap();
            let before = status_kib("VmHWM:");
            builder.submit_build(&uuid).unwrap();
            builder.build_done().recv_timeout(HANG).unwrap();
            let after = status_kib("VmHWM:");
            let g = store.generation(&uuid).unwrap();
            assert_eq!(g.build_status, "built", "{}", g.build_err);
            let queued = events[0].len();
            drop(events);
            println!("{before} {after} queued={queued}");
        }
        "job-line" => {
            let before = status_kib("VmHWM:");
            let mut job = Job::new(
                move |ctx: &JobContext| ctx.run_with(crate::common::sh(&one_line), &mut |_, _| {}).map(drop),
                HANG,
            );
            job.start();
            job.wait();
            assert_eq!(job.error(), None);
            let after = status_kib("VmHWM:");
            println!("{before} {after}");
        }
        _ => {
            let script = if side == "reference" { lines } else { one_line };
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
