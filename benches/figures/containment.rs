//! Rows of containment: what a job's escaped processes become.
//!
//! * A `setsid`, double-forked daemon that ignores SIGTERM and let go of the pipes,
//!   left running by a job that is then stopped: genbuild's stop() against the
//!   reference's SIGKILL of the shell.
//! * A command that exits while its `setsid` grandchild holds the pipes: how long until
//!   the job ends, and whether the grandchild is left. The reference re-enacts Go's
//!   `cmd.Run` with piped output, whose `Wait` waits for the pipes' EOF, i.e. for the
//!   grandchild's death (capped here).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use genbuild::{Job, JobContext};

use crate::common::{auto_containment, daemon, nonce, processes_with, rs, sh};
use crate::util::{
    count_and_kill_leftovers, fmt_ms, kill_and_count, median, ms, shell_builder, stop_and_count,
};
use crate::{row, Plan, Row, HANG};

/// How long the reference's wait for the pipes is allowed before it is called endless.
const PIPE_CAP: Duration = Duration::from_secs(3);

pub(crate) fn containment_rows(plan: &Plan) -> Vec<Row> {
    vec![daemon_row(plan), leftover_row(plan)]
}

fn wait_for(marker: &str, count: usize) {
    let deadline = Instant::now() + HANG;
    while processes_with(marker).len() < count {
        assert!(Instant::now() < deadline, "fewer than {count} processes with {marker}");
        std::thread::yield_now();
    }
}

fn daemon_row(plan: &Plan) -> Row {
    let (mut ours, mut reference, mut ours_left, mut ref_left) = (Vec::new(), Vec::new(), 0, 0);
    for _ in 0..plan.stop_reps {
        let n = nonce();
        let script = format!("{}sleep 300.{n}; true", daemon(&n, false));
        let (builder, _) = shell_builder(Some(script.clone()), None);
        builder.eval(&rs(&n)).unwrap();
        wait_for(&format!("300.{n}"), 3);
        let (took, left) = stop_and_count(builder, &n);
        ours.push(took);
        ours_left += left;

        let m = nonce();
        let script = format!("{}sleep 300.{m}; true", daemon(&m, false));
        let child = Command::new("sh").arg("-c").arg(&script).stdin(Stdio::null()).spawn().unwrap();
        wait_for(&format!("300.{m}"), 3);
        let (took, left) = kill_and_count(child, &m);
        reference.push(took);
        ref_left += left;
    }
    let (ours, reference) = (median(ours), median(reference));
    row(
        "stop() of a job whose setsid daemon ignores SIGTERM: processes left",
        format!("{ours_left} in {} stops ({})", plan.stop_reps, fmt_ms(ours)),
        format!("{ref_left} in {} stops ({})", plan.stop_reps, fmt_ms(reference)),
        None,
        format!("double fork, stdio closed; stop() latency in brackets; {}", auto_containment()),
    )
}

fn leftover_row(plan: &Plan) -> Row {
    let (mut ours, mut ours_left, mut ref_left, mut ref_capped) = (Vec::new(), 0, 0, 0);
    let mut reference = Vec::new();
    for _ in 0..plan.stop_reps {
        let n = nonce();
        let script = format!("{}exit 0", daemon(&n, true));
        let mut job = Job::new(move |ctx: &JobContext| ctx.run(sh(&script)).map(drop), HANG);
        let t = Instant::now();
        job.start();
        job.wait();
        ours.push(ms(t.elapsed()));
        assert_eq!(job.error(), None);
        ours_left += count_and_kill_leftovers(&n);

        let m = nonce();
        let script = format!("{}exit 0", daemon(&m, true));
        let t = Instant::now();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, eof) = crossbeam_channel::bounded(2);
        for mut pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut pipe, &mut std::io::sink());
                let _ = tx.send(());
            });
        }
        let both = eof.recv_deadline(t + PIPE_CAP).and_then(|()| eof.recv_deadline(t + PIPE_CAP));
        child.wait().unwrap();
        if both.is_err() {
            ref_capped += 1;
        }
        reference.push(ms(t.elapsed()));
        ref_left += count_and_kill_leftovers(&m);
    }
    let (ours, reference) = (median(ours), median(reference));
    let capped =
        if ref_capped > 0 { format!(" (capped {ref_capped}×: never, really)") } else { String::new() };
    row(
        "a command exits, its setsid grandchild holds the pipes: job end",
        format!("{}, {ours_left} left in {}", fmt_ms(ours), plan.stop_reps),
        format!("{}{capped}, {ref_left} left in {}", fmt_ms(reference), plan.stop_reps),
        Some(ours / reference),
        format!("start → end; reference: Go's cmd.Wait waits for the pipes' EOF; {}", auto_containment()),
    )
}
