//! Rows of the builder's own costs: the eval() → evaluation_done round trip, the
//! notification latency, the CPU it burns while a job runs.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::rs;
use crate::util::{cpu_time, fmt_ms, median, ms, now_ns, shell_builder};
use crate::{row, Plan, Row, HANG};

/// The builder's own round trip: eval() → `evaluation_done` with an executor that
/// returns at once, against a thread that sends on a 1-slot channel.
pub(crate) fn instant_eval_row(plan: &Plan) -> Row {
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

pub(crate) fn notification_row(plan: &Plan) -> Row {
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

pub(crate) fn cpu_row(plan: &Plan) -> Row {
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

pub(crate) fn whole_ms(d: Duration) -> u128 {
    d.as_millis()
}
