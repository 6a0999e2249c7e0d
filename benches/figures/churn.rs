//! Rows of pre-emption churn: eval() after eval() while a job runs, against the
//! reference's kill, wait and spawn under its one mutex; and state() from 8 threads
//! meanwhile.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use genbuild::proto::{self, event};
use parking_lot::Mutex;

use crate::common::{
    assert_genbuild_threads_at_most, fd_count, genbuild_thread_count, nonce, processes_with, rs,
};
use crate::util::{count_and_kill_leftovers, fmt_ms, median, ms, percentile, shell_builder};
use crate::{row, Plan, Row, HANG};

/// The reference's builder, re-enacted: one mutex held while the previous client is
/// killed and reaped and the next one started.
pub(crate) struct ReferenceChurn {
    state: Mutex<(Option<Child>, proto::Generation)>,
}

impl ReferenceChurn {
    fn eval(&self, script: &str, i: usize) {
        let mut state = self.state.lock();
        if let Some(mut previous) = state.0.take() {
            let _ = previous.kill();
            let _ = previous.wait();
        }
        // The generation the Go builder creates in Eval, holding what genbuild's holds,
        // so that both state() calls copy the same amount.
        state.1 = proto::Generation {
            uuid: uuid::Uuid::new_v4().to_string(),
            hostname: "host1".into(),
            repository_path: "/nonexistent/repo".into(),
            system_attr: "nixosConfigurations".into(),
            selected_commit_id: format!("{i:040x}"),
            selected_branch_name: "main".into(),
            eval_status: "evaluating".into(),
            eval_started_at: Some(std::time::SystemTime::now().into()),
            build_status: "initialized".into(),
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

pub(crate) const CHURN_CALLS: usize = 1000;

pub(crate) const STATE_THREADS: usize = 8;

/// eval() calls of each side between turns in the state() rows.
const STATE_ROUND: usize = 100;

/// Runs `calls` with 8 threads calling `state` meanwhile; returns the calls' elapsed
/// time and every state() latency in ms.
pub(crate) fn churn_with_readers(
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

pub(crate) fn churn_rows(plan: &Plan) -> Vec<Row> {
    let (mut ours_rate, mut ref_rate) = (Vec::new(), Vec::new());
    let mut counts = (String::new(), String::new());
    for _ in 0..plan.churn_reps {
        let n = nonce();
        let script = format!("sleep 300.{n}");
        let before = (genbuild_thread_count(), fd_count(), processes_with(&n).len());
        let (builder, _) = shell_builder(Some(script.clone()), None);
        let t = Instant::now();
        for i in 0..CHURN_CALLS {
            builder.eval(&rs(&format!("{i:040x}"))).unwrap();
        }
        ours_rate.push(CHURN_CALLS as f64 / t.elapsed().as_secs_f64());
        let during = (genbuild_thread_count(), fd_count(), processes_with(&n).len());
        builder.stop();
        drop(builder);
        // Job threads wait 50 ms for another job before they exit.
        assert_genbuild_threads_at_most(before.0);
        let after = (genbuild_thread_count(), fd_count(), processes_with(&n).len());
        counts.0 = format!("{before:?} → {during:?} → {after:?}");

        let m = nonce();
        let script = format!("sleep 300.{m}");
        let before = (genbuild_thread_count(), fd_count(), processes_with(&m).len());
        let reference = ReferenceChurn { state: Mutex::new((None, proto::Generation::default())) };
        let t = Instant::now();
        for i in 0..CHURN_CALLS {
            reference.eval(&script, i);
        }
        ref_rate.push(CHURN_CALLS as f64 / t.elapsed().as_secs_f64());
        let during = (genbuild_thread_count(), fd_count(), processes_with(&m).len());
        reference.stop();
        let after = (genbuild_thread_count(), fd_count(), processes_with(&m).len());
        counts.1 = format!("{before:?} → {during:?} → {after:?}");
        count_and_kill_leftovers(&n);
        count_and_kill_leftovers(&m);
    }
    let (ours_rate, ref_rate) = (median(ours_rate), median(ref_rate));
    let (ours_running, ref_running, (ours_left, ref_left)) = churn_running(plan);

    // state() from 8 threads during the same churn, genbuild and the reference taking
    // turns every STATE_ROUND calls so that both see the same machine.
    let n = nonce();
    let script = format!("sleep 300.{n}");
    let (builder, _) = shell_builder(Some(script.clone()), None);
    let reference = Arc::new(ReferenceChurn { state: Mutex::new((None, proto::Generation::default())) });
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..CHURN_CALLS / STATE_ROUND {
        let calls = round * STATE_ROUND..(round + 1) * STATE_ROUND;
        let reader = builder.clone();
        let (_, latencies) = churn_with_readers(
            || calls.clone().for_each(|i| drop(builder.eval(&rs(&format!("{i:040x}"))).unwrap())),
            move || drop(reader.state()),
        );
        ours.extend(latencies);
        let reader = reference.clone();
        let (_, latencies) = churn_with_readers(
            || calls.for_each(|i| reference.eval(&script, i)),
            move || drop(reader.state()),
        );
        theirs.extend(latencies);
    }
    builder.stop();
    drop(builder);
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
            format!(
                "{} cycles each, alternating every {RUNNING_BLOCK}: eval, then its process's first line; \
                 processes left: {ours_left} vs {ref_left}",
                plan.churn_reps * RUNNING_BLOCKS_PER_REP * RUNNING_BLOCK
            ),
        ),
        row(
            "churn: (threads, fds, procs) before → during → after",
            counts.0,
            counts.1,
            None,
            "after: once idle job threads exited (50 ms); reference's SIGKILL of `sh` orphans its `sleep`"
                .into(),
        ),
        row(
            "state() from 8 threads during churn: median",
            fmt_ms(ours_med),
            fmt_ms(theirs_med),
            Some(ours_med / theirs_med),
            format!(
                "taking turns every {STATE_ROUND} calls; reference holds its mutex while killing and reaping"
            ),
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

/// Cycles of each side between switches, and switches per repetition of the plan.
pub(crate) const RUNNING_BLOCK: usize = 20;
const RUNNING_BLOCKS_PER_REP: usize = 10;

/// Churn where each eval() comes once the previous job's process is running (it
/// printed its first line), so that every call really pre-empts a live process.
/// genbuild and the reference alternate every [`RUNNING_BLOCK`] cycles, so that both
/// see the same machine. Returns cycles/s of genbuild and of the reference, and the
/// processes each left.
pub(crate) fn churn_running(plan: &Plan) -> (f64, f64, (usize, usize)) {
    let n = nonce();
    let (builder, _) = shell_builder(Some(format!("echo started; sleep 300.{n}; true")), None);
    let events = builder.subscribe();
    let mut i = 0;
    let mut ours = || {
        let uuid = builder.eval(&rs(&format!("{i:040x}"))).unwrap();
        i += 1;
        loop {
            let event = events.recv_timeout(HANG).expect("the job never printed");
            if let Some(event::Kind::LogLine(line)) = event.kind {
                if line.generation_uuid == uuid {
                    break;
                }
            }
        }
    };
    let m = nonce();
    let script = format!("echo started; sleep 300.{m}; true");
    let mut previous: Option<Child> = None;
    let mut theirs = || {
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
    };
    let (mut ours_time, mut theirs_time) = (Duration::ZERO, Duration::ZERO);
    let blocks = plan.churn_reps * RUNNING_BLOCKS_PER_REP;
    for _ in 0..blocks {
        let t = Instant::now();
        (0..RUNNING_BLOCK).for_each(|_| ours());
        ours_time += t.elapsed();
        let t = Instant::now();
        (0..RUNNING_BLOCK).for_each(|_| theirs());
        theirs_time += t.elapsed();
    }
    builder.stop();
    drop(builder);
    if let Some(mut child) = previous {
        let _ = child.kill();
        let _ = child.wait();
    }
    let cycles = (blocks * RUNNING_BLOCK) as f64;
    let left = (count_and_kill_leftovers(&n), count_and_kill_leftovers(&m));
    (cycles / ours_time.as_secs_f64(), cycles / theirs_time.as_secs_f64(), left)
}
