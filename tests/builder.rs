//! Every scenario of the builder's semantics (the `Builder` methods' docs and the crate's
//! "Guarantees") against the threaded builder, with executors whose jobs are real
//! `sh`/`sleep` processes.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use genbuild::proto::{event, status};
use genbuild::{
    Builder, Error, EvalOutput, EvalRequest, Executor, JobContext, JobError, Store,
    BUILD_REASON_ALREADY_BUILT, BUILD_REASON_NEED_BUILD,
};
use parking_lot::Mutex;

#[test]
fn eval_then_build_records_every_step_and_notifies_once_each() {
    let (builder, store, _) =
        builder(ShellExecutor::new().eval_runs("echo evaluating").build_runs("echo building"));
    let events = builder.subscribe();
    let uuid = builder.eval(&rs("c1")).unwrap();
    assert_eq!(recv(&builder.evaluation_done(), "evaluation_done"), uuid);
    let g = generation(&store, &uuid);
    assert_eq!((g.eval_status.as_str(), g.build_status.as_str()), (status::EVALUATED, status::INITIALIZED));
    assert_eq!(g.drv_path, "/nix/store/aaaa-test.drv");
    assert_eq!((g.hostname.as_str(), g.selected_commit_id.as_str()), ("host1", "c1"));
    assert!(g.eval_started_at.is_some() && g.eval_ended_at.is_some());

    builder.submit_build(&uuid).unwrap();
    assert_eq!(recv(&builder.build_done(), "build_done"), uuid);
    let g = generation(&store, &uuid);
    assert_eq!(g.build_status, status::BUILT);
    assert_eq!(g.build_reason, BUILD_REASON_NEED_BUILD);
    assert_quiet(&builder, &builder.evaluation_done(), "evaluation_done");
    assert_quiet(&builder, &builder.build_done(), "build_done");

    let mut kinds = Vec::new();
    let mut lines = Vec::new();
    while let Ok(e) = events.try_recv() {
        match e.kind.unwrap() {
            event::Kind::EvalStarted(_) => kinds.push("eval_started"),
            event::Kind::EvalFinished(_) => kinds.push("eval_finished"),
            event::Kind::BuildStarted(_) => kinds.push("build_started"),
            event::Kind::BuildFinished(_) => kinds.push("build_finished"),
            event::Kind::LogLine(l) => lines.push(l.line),
            event::Kind::BuildProgress(_) => {}
        }
    }
    assert_eq!(kinds, ["eval_started", "eval_finished", "build_started", "build_finished"]);
    assert_eq!(lines, ["evaluating", "building"]);
    let state = builder.state();
    assert_eq!(state.generation_uuid, uuid);
    assert_eq!(state.generation.unwrap().build_status, status::BUILT);
    assert_eq!(
        (state.is_evaluating, state.is_building, state.is_suspended),
        (Some(false), Some(false), Some(false))
    );
}

#[test]
fn an_output_already_in_the_store_is_reported_built_without_building() {
    let executor = ShellExecutor::new().build_runs("exit 1");
    executor.valid.lock().insert(executor.output.out_path.clone());
    let (builder, store, _) = builder(executor);
    let uuid = builder.eval(&rs("c1")).unwrap();
    assert_eq!(recv(&builder.build_done(), "build_done"), uuid);
    let g = generation(&store, &uuid);
    assert_eq!(
        (g.build_status.as_str(), g.build_reason.as_str()),
        (status::BUILT, BUILD_REASON_ALREADY_BUILT)
    );
    assert_quiet(&builder, &builder.evaluation_done(), "evaluation_done");
    assert_eq!(builder.submit_build(&uuid), Err(Error::AlreadyBuilt));
}

#[test]
fn a_failing_evaluation_keeps_the_command_and_its_stderr_tail() {
    let (builder, store, _) = builder(
        ShellExecutor::new().eval_runs("echo first >&2; echo 'error: attribute missing' >&2; exit 3"),
    );
    let uuid = builder.eval(&rs("c1")).unwrap();
    assert_eq!(recv(&builder.evaluation_done(), "evaluation_done"), uuid);
    let g = generation(&store, &uuid);
    assert_eq!(g.eval_status, status::FAILED);
    assert!(g.eval_err.starts_with("`sh -c "), "{}", g.eval_err);
    assert!(g.eval_err.contains("exited with status 3:\nfirst\nerror: attribute missing"), "{}", g.eval_err);
    assert_eq!(builder.submit_build(&uuid), Err(Error::NotEvaluated));
}

#[test]
fn the_stderr_tail_is_bounded_and_keeps_the_last_lines() {
    let (builder, store, _) = builder(
        ShellExecutor::new()
            .build_runs("i=0; while [ $i -lt 2000 ]; do echo line$i >&2; i=$((i+1)); done; exit 1"),
    );
    let uuid = builder.eval(&rs("c1")).unwrap();
    recv(&builder.evaluation_done(), "evaluation_done");
    builder.submit_build(&uuid).unwrap();
    recv(&builder.build_done(), "build_done");
    let err = generation(&store, &uuid).build_err;
    assert!(err.ends_with("line1998\nline1999"), "{err}");
    assert!(!err.contains("line0\n"));
    assert!(err.len() <= 4096 + 200, "{} bytes: the tail is bounded to 4 KiB", err.len());
}

#[test]
fn a_failed_build_may_be_submitted_again() {
    let (builder, store, executor) = builder(ShellExecutor::new().build_runs("echo nope >&2; exit 1"));
    let uuid = builder.eval(&rs("c1")).unwrap();
    recv(&builder.evaluation_done(), "evaluation_done");
    builder.submit_build(&uuid).unwrap();
    recv(&builder.build_done(), "build_done");
    let g = generation(&store, &uuid);
    assert_eq!(g.build_status, status::FAILED);
    assert!(g.build_err.contains("exited with status 1:\nnope"), "{}", g.build_err);
    *executor.build_script.lock() = None;
    builder.submit_build(&uuid).unwrap();
    assert_eq!(recv(&builder.build_done(), "build_done"), uuid);
    let g = generation(&store, &uuid);
    assert_eq!((g.build_status.as_str(), g.build_err.as_str()), (status::BUILT, ""));
}

#[test]
fn a_new_eval_preempts_a_running_evaluation() {
    let n = nonce();
    let (builder, store, executor) = builder(ShellExecutor::new().eval_runs(long_sleep(&n)));
    let first = builder.eval(&rs("c1")).unwrap();
    assert!(builder.is_evaluating());
    wait_for_processes(&n, 1);
    *executor.eval_script.lock() = None;
    let second = builder.eval(&rs("c2")).unwrap();
    // The first job's result is recorded before eval() returns.
    let g = generation(&store, &first);
    assert_eq!(g.eval_status, status::FAILED);
    assert_eq!(g.eval_err, format!("cancelled: superseded by generation {second}"));
    assert_no_process(&n);
    let done = builder.evaluation_done();
    assert_eq!(recv(&done, "evaluation_done"), first);
    assert_eq!(recv(&done, "evaluation_done"), second);
    assert_eq!(generation(&store, &second).eval_status, status::EVALUATED);
    assert_eq!(builder.generation_uuid(), Some(second));
}

/// What the executors written for one test below evaluate to.
fn an_evaluation() -> EvalOutput {
    EvalOutput { drv_path: "/nix/store/a.drv".into(), out_path: "/nix/store/a".into(), ..Default::default() }
}

/// An evaluation that prints its process's blocked signals (`grep`, run directly: a
/// shell would clear them), then sleeps.
struct PrintsItsMask {
    nonce: String,
}

impl Executor for PrintsItsMask {
    fn eval(&self, _: &EvalRequest, ctx: &JobContext) -> Result<EvalOutput, JobError> {
        let mut grep = std::process::Command::new("grep");
        grep.args(["SigBlk", "/proc/self/status"]);
        ctx.run(grep)?;
        ctx.run(sh(&long_sleep(&self.nonce)))?;
        Ok(an_evaluation())
    }

    fn build(&self, _: &str, _: &JobContext) -> Result<(), JobError> {
        Ok(())
    }

    fn is_store_path_valid(&self, _: &str) -> bool {
        false
    }
}

/// Calls `eval` on a thread of its own that blocks `signal` and nothing else.
fn eval_blocking(builder: &Builder, commit: &str, signal: libc::c_int) -> String {
    let (builder, commit) = (builder.clone(), commit.to_string());
    std::thread::spawn(move || {
        // SAFETY: a mask change on this new thread only.
        unsafe {
            let mut mask: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut mask);
            libc::sigaddset(&mut mask, signal);
            libc::pthread_sigmask(libc::SIG_SETMASK, &mask, std::ptr::null_mut());
        }
        builder.eval(&rs(&commit)).unwrap()
    })
    .join()
    .unwrap()
}

/// A pre-empting eval's job starts on the thread of the job it cancelled (handed over
/// at that job's end), yet its commands get the signal mask of the thread that called
/// `eval`, not of the one that started the cancelled job.
#[test]
fn a_preempting_evals_command_gets_its_callers_signal_mask() {
    let n = nonce();
    let executor = Arc::new(PrintsItsMask { nonce: n.clone() });
    let builder = Builder::new(config(), Arc::new(Store::new()), executor);
    let events = builder.subscribe();
    let mut blocked = std::collections::HashMap::new();
    let mut mask_of = |uuid: &str| loop {
        if let Some(mask) = blocked.get(uuid) {
            return *mask;
        }
        if let Some(event::Kind::LogLine(l)) = recv(&events, "a log line").kind {
            let mask = l.line.strip_prefix("SigBlk:").map(|m| u64::from_str_radix(m.trim(), 16).unwrap());
            blocked.insert(l.generation_uuid, mask.expect("the first line is the mask"));
        }
    };
    let (usr1, usr2) = (1u64 << (libc::SIGUSR1 - 1), 1u64 << (libc::SIGUSR2 - 1));
    let first = eval_blocking(&builder, "c1", libc::SIGUSR2);
    assert_eq!(mask_of(&first) & (usr1 | usr2), usr2);
    // Each caller blocks another signal than the one before, so that either pass
    // fails if the new job keeps the mask of the job it pre-empts.
    for (commit, signal, bit) in [("c2", libc::SIGUSR1, usr1), ("c3", libc::SIGUSR2, usr2)] {
        wait_for_processes(&n, 1);
        let next = eval_blocking(&builder, commit, signal);
        assert_eq!(mask_of(&next) & (usr1 | usr2), bit, "{commit}");
    }
    builder.stop();
    assert_no_process(&n);
}

#[test]
fn a_new_eval_preempts_a_running_build() {
    let n = nonce();
    let (builder, store, _) = builder(ShellExecutor::new().build_runs(long_sleep(&n)));
    let first = builder.eval(&rs("c1")).unwrap();
    recv(&builder.evaluation_done(), "evaluation_done");
    builder.submit_build(&first).unwrap();
    assert!(builder.is_building());
    assert_eq!(builder.submit_build(&first), Err(Error::AlreadyBuilding));
    let second = builder.eval(&rs("c2")).unwrap();
    let g = generation(&store, &first);
    assert_eq!(g.build_status, status::FAILED);
    assert_eq!(g.build_err, format!("cancelled: superseded by generation {second}"));
    assert_eq!(recv(&builder.build_done(), "build_done"), first);
    assert_no_process(&n);
    assert_eq!(builder.submit_build(&first), Err(Error::AnotherGeneration));
    builder.stop();
}

#[test]
fn an_evaluation_times_out() {
    let n = nonce();
    let mut config = config();
    config.eval_timeout = Duration::from_millis(300);
    let (builder, store, _) = builder_with(config, ShellExecutor::new().eval_runs(long_sleep(&n)));
    let uuid = builder.eval(&rs("c1")).unwrap();
    assert_eq!(recv(&builder.evaluation_done(), "evaluation_done"), uuid);
    assert_eq!(generation(&store, &uuid).eval_err, "timed out after 300ms");
    assert!(!builder.is_evaluating());
    assert_no_process(&n);
}

#[test]
fn a_build_times_out() {
    let n = nonce();
    let mut config = config();
    config.build_timeout = Duration::from_millis(300);
    let (builder, store, _) = builder_with(config, ShellExecutor::new().build_runs(long_sleep(&n)));
    let uuid = builder.eval(&rs("c1")).unwrap();
    recv(&builder.evaluation_done(), "evaluation_done");
    builder.submit_build(&uuid).unwrap();
    assert_eq!(recv(&builder.build_done(), "build_done"), uuid);
    let g = generation(&store, &uuid);
    assert_eq!((g.build_status.as_str(), g.build_err.as_str()), (status::FAILED, "timed out after 300ms"));
    assert_no_process(&n);
}

#[test]
fn stop_during_an_evaluation_kills_it_and_the_builder_stays_usable() {
    let n = nonce();
    let (builder, store, executor) = builder(ShellExecutor::new().eval_runs(long_sleep(&n)));
    let uuid = builder.eval(&rs("c1")).unwrap();
    let started = Instant::now();
    builder.stop();
    assert!(started.elapsed() < HANG);
    assert!(!builder.is_evaluating());
    assert_no_process(&n);
    assert_eq!(generation(&store, &uuid).eval_err, "cancelled: stopped");
    assert_eq!(recv(&builder.evaluation_done(), "evaluation_done"), uuid);
    builder.stop();
    *executor.eval_script.lock() = None;
    let again = builder.eval(&rs("c2")).unwrap();
    assert_eq!(recv(&builder.evaluation_done(), "evaluation_done"), again);
    assert_eq!(generation(&store, &again).eval_status, status::EVALUATED);
}

#[test]
fn stop_during_a_build_kills_it() {
    let n = nonce();
    let (builder, store, _) = builder(ShellExecutor::new().build_runs(long_sleep(&n)));
    let uuid = builder.eval(&rs("c1")).unwrap();
    recv(&builder.evaluation_done(), "evaluation_done");
    builder.submit_build(&uuid).unwrap();
    builder.stop();
    assert!(!builder.is_building());
    assert_no_process(&n);
    let g = generation(&store, &uuid);
    assert_eq!((g.build_status.as_str(), g.build_err.as_str()), (status::FAILED, "cancelled: stopped"));
    assert_eq!(recv(&builder.build_done(), "build_done"), uuid);
}

#[test]
fn a_build_submitted_while_suspended_starts_on_resume() {
    let (builder, store, _) = builder(ShellExecutor::new());
    let uuid = builder.eval(&rs("c1")).unwrap();
    recv(&builder.evaluation_done(), "evaluation_done");
    builder.suspend().unwrap();
    assert_eq!(builder.suspend(), Err(Error::AlreadySuspended));
    builder.submit_build(&uuid).unwrap();
    assert!(!builder.is_building());
    assert_eq!(generation(&store, &uuid).build_status, status::INITIALIZED);
    assert_quiet(&builder, &builder.build_done(), "build_done");
    builder.resume().unwrap();
    assert_eq!(recv(&builder.build_done(), "build_done"), uuid);
    assert_eq!(generation(&store, &uuid).build_status, status::BUILT);
    assert_eq!(builder.resume(), Err(Error::NotSuspended));
}

#[test]
fn resume_builds_nothing_that_was_not_submitted() {
    let (builder, store, _) = builder(ShellExecutor::new());
    builder.suspend().unwrap();
    let uuid = builder.eval(&rs("c1")).unwrap();
    // An evaluation runs while suspended.
    assert_eq!(recv(&builder.evaluation_done(), "evaluation_done"), uuid);
    builder.resume().unwrap();
    assert!(!builder.is_building());
    assert_eq!(generation(&store, &uuid).build_status, status::INITIALIZED);
    assert_quiet(&builder, &builder.build_done(), "build_done");
}

#[test]
fn suspend_cancels_a_running_build_and_resume_builds_it_again() {
    let n = nonce();
    let (builder, store, executor) = builder(ShellExecutor::new().build_runs(long_sleep(&n)));
    let uuid = builder.eval(&rs("c1")).unwrap();
    recv(&builder.evaluation_done(), "evaluation_done");
    builder.submit_build(&uuid).unwrap();
    builder.suspend().unwrap();
    assert!(builder.is_suspended() && !builder.is_building());
    assert_no_process(&n);
    let g = generation(&store, &uuid);
    assert_eq!((g.build_status.as_str(), g.build_err.as_str()), (status::FAILED, "cancelled: suspended"));
    assert_eq!(recv(&builder.build_done(), "build_done"), uuid);
    *executor.build_script.lock() = None;
    builder.resume().unwrap();
    assert_eq!(recv(&builder.build_done(), "build_done"), uuid);
    assert_eq!(generation(&store, &uuid).build_status, status::BUILT);
}

#[test]
fn submit_build_checks_in_the_documented_order() {
    let n = nonce();
    let (builder, _, executor) = builder(ShellExecutor::new().eval_runs(long_sleep(&n)));
    assert_eq!(builder.submit_build("nope"), Err(Error::UnknownGeneration("nope".into())));
    assert_eq!(builder.submit_build("").unwrap_err().to_string(), "no generation with uuid  has been found");
    let uuid = builder.eval(&rs("c1")).unwrap();
    assert_eq!(
        builder.submit_build("nope").unwrap_err().to_string(),
        "another generation is evaluating or evaluated"
    );
    assert_eq!(builder.submit_build(&uuid).unwrap_err().to_string(), "the generation is not evaluated");
    builder.stop();
    assert_no_process(&n);
    *executor.eval_script.lock() = None;
    let uuid = builder.eval(&rs("c2")).unwrap();
    let done = builder.evaluation_done();
    assert_ne!(recv(&done, "evaluation_done"), uuid, "first the stopped one");
    assert_eq!(recv(&done, "evaluation_done"), uuid);
    builder.submit_build(&uuid).unwrap();
    recv(&builder.build_done(), "build_done");
    assert_eq!(builder.submit_build(&uuid).unwrap_err().to_string(), "the generation is already built");
}

#[test]
fn a_descendant_that_ignores_sigterm_is_killed_after_the_grace_period() {
    for wait in [genbuild::WaitStrategy::Pidfd, genbuild::WaitStrategy::Portable] {
        let n = nonce();
        let mut config = config();
        config.process.wait = wait;
        config.process.kill_grace = Duration::from_millis(300);
        // The inner shell leaves the process group and ignores SIGTERM, as do its children.
        let script = format!("setsid sh -c 'trap \"\" TERM; {} & wait' & wait", long_sleep(&n));
        let (builder, store, _) = builder_with(config, ShellExecutor::new().eval_runs(script));
        let uuid = builder.eval(&rs("c1")).unwrap();
        wait_for_processes(&format!("300.{n}"), 2);
        builder.stop();
        assert_no_process(&n);
        assert_eq!(generation(&store, &uuid).eval_err, "cancelled: stopped", "{wait:?}");
    }
}

#[test]
fn the_portable_wait_times_out_and_cancels_too() {
    let n = nonce();
    let mut config = config();
    config.process.wait = genbuild::WaitStrategy::Portable;
    config.eval_timeout = Duration::from_millis(200);
    let (builder, store, executor) = builder_with(config, ShellExecutor::new().eval_runs(long_sleep(&n)));
    let uuid = builder.eval(&rs("c1")).unwrap();
    recv(&builder.evaluation_done(), "evaluation_done");
    assert_eq!(generation(&store, &uuid).eval_err, "timed out after 200ms");
    assert_no_process(&n);
    *executor.build_script.lock() = Some(long_sleep(&n));
    *executor.eval_script.lock() = Some("echo ok >&2; exit 4".into());
    let uuid = builder.eval(&rs("c2")).unwrap();
    recv(&builder.evaluation_done(), "evaluation_done");
    assert!(generation(&store, &uuid).eval_err.ends_with("exited with status 4:\nok"));
}

#[test]
fn a_panicking_executor_still_ends_its_job() {
    let mut executor = ShellExecutor::new();
    executor.panic_in_eval = true;
    let (builder, store, _) = builder(executor);
    let uuid = builder.eval(&rs("c1")).unwrap();
    assert_eq!(recv(&builder.evaluation_done(), "evaluation_done"), uuid);
    let g = generation(&store, &uuid);
    assert_eq!(g.eval_status, status::FAILED);
    assert_eq!(g.eval_err, "the job panicked: the executor exploded");
    assert!(!builder.is_evaluating());
}

#[test]
fn a_thousand_evals_while_a_job_runs_each_notify_exactly_once_in_order() {
    let n = nonce();
    let (builder, store, _) = builder(ShellExecutor::new().eval_runs(long_sleep(&n)));
    let events = builder.subscribe();
    let uuids: Vec<String> = (0..1000).map(|i| builder.eval(&rs(&format!("c{i}"))).unwrap()).collect();
    builder.stop();
    assert_no_process(&n);
    let done: Vec<String> = builder.evaluation_done().try_iter().collect();
    assert_eq!(done, uuids);
    let finished: Vec<String> = events
        .try_iter()
        .filter_map(|e| match e.kind? {
            event::Kind::EvalFinished(f) => Some(f.generation?.uuid),
            _ => None,
        })
        .collect();
    assert_eq!(finished, uuids);
    for pair in uuids.windows(2) {
        assert_eq!(
            store.generation(&pair[0]).map(|g| g.eval_err),
            // Only the last generations are kept by the store.
            store.generation(&pair[0]).map(|_| format!("cancelled: superseded by generation {}", pair[1]))
        );
    }
    assert_eq!(generation(&store, &uuids[999]).eval_err, "cancelled: stopped");
}

#[test]
fn log_lines_reach_subscribers_and_a_lagging_one_loses_only_log_lines() {
    let mut config = config();
    config.subscriber_backlog_bytes = 256 << 10;
    let (builder, _, _) = builder_with(
        config,
        ShellExecutor::new()
            .eval_runs("i=0; while [ $i -lt 6000 ]; do echo $i; i=$((i+1)); done")
            .build_runs("echo after"),
    );
    let events = builder.subscribe();
    let uuid = builder.eval(&rs("c1")).unwrap();
    recv(&builder.evaluation_done(), "evaluation_done");
    let (mut lines, mut lifecycle) = (Vec::new(), 0);
    let mut drain = |lines: &mut Vec<(String, u64)>| {
        for e in events.try_iter() {
            match e.kind.unwrap() {
                event::Kind::LogLine(l) => {
                    assert_eq!(l.generation_uuid, uuid);
                    lines.push((l.line, l.dropped_before));
                }
                _ => lifecycle += 1,
            }
        }
    };
    drain(&mut lines);
    let kept = lines.len();
    assert!(kept > 100 && kept < 6000, "{kept} lines within the 256 KiB backlog");
    assert!(lines.iter().enumerate().all(|(i, (line, dropped))| *line == i.to_string() && *dropped == 0));
    builder.submit_build(&uuid).unwrap();
    recv(&builder.build_done(), "build_done");
    drain(&mut lines);
    assert_eq!(
        lines.last().unwrap(),
        &("after".to_string(), 6000 - kept as u64),
        "the next line counts the lost ones"
    );
    assert_eq!(lifecycle, 4, "lifecycle events are never dropped");
}

#[test]
fn dropping_the_last_handle_stops_the_running_job() {
    let n = nonce();
    let (builder, store, _) = builder(ShellExecutor::new().eval_runs(long_sleep(&n)));
    let clone = builder.clone();
    let uuid = builder.eval(&rs("c1")).unwrap();
    drop(builder);
    assert!(clone.is_evaluating(), "a clone keeps the builder alive");
    drop(clone);
    assert_no_process(&n);
    assert_eq!(generation(&store, &uuid).eval_err, "cancelled: stopped");
}

#[test]
fn a_generation_from_a_persisted_store_can_be_built_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.pb");
    let uuid = {
        let store = std::sync::Arc::new(genbuild::Store::open(&path).unwrap());
        let builder = genbuild::Builder::new(config(), store, std::sync::Arc::new(ShellExecutor::new()));
        let uuid = builder.eval(&rs("c1")).unwrap();
        recv(&builder.evaluation_done(), "evaluation_done");
        uuid
    };
    let store = std::sync::Arc::new(genbuild::Store::open(&path).unwrap());
    let builder = genbuild::Builder::new(config(), store.clone(), std::sync::Arc::new(ShellExecutor::new()));
    assert_eq!(builder.generation_uuid(), None);
    builder.submit_build(&uuid).unwrap();
    assert_eq!(recv(&builder.build_done(), "build_done"), uuid);
    assert_eq!(generation(&store, &uuid).build_status, status::BUILT);
}

// ---- stop() is stronger than every pending request (issue 9, items 1-4) ----

/// A builder whose build ignores SIGTERM and dies at the SIGKILL a second later, with
/// that build running; returns it with its generation and the build's nonce.
fn building_slowly() -> (Builder, Arc<Store>, String, String) {
    let n = nonce();
    let mut config = config();
    config.process.kill_grace = Duration::from_secs(1);
    let (builder, store, _) = builder_with(config, ShellExecutor::new().build_runs(dies_slowly(&n)));
    let uuid = builder.eval(&rs("c1")).unwrap();
    recv(&builder.evaluation_done(), "evaluation_done");
    builder.submit_build(&uuid).unwrap();
    // Once `sh` has exec'd `sleep` (NUL-separated arguments), SIGTERM is ignored: the
    // shell's own command line shows the nonce before its `trap` ran.
    wait_for_processes(&format!("sleep\0300.{n}"), 1);
    (builder, store, uuid, n)
}

/// `suspend()` on a thread of its own, returned once the suspension took effect (the
/// build is cancelled and dying; the thread waits for it).
fn suspend_in_background(builder: &Builder) -> std::thread::JoinHandle<Result<(), Error>> {
    let suspending = {
        let builder = builder.clone();
        std::thread::spawn(move || builder.suspend())
    };
    wait_until("the suspension", || builder.is_suspended());
    suspending
}

fn build_started_events(events: &crossbeam_channel::Receiver<genbuild::proto::Event>) -> usize {
    events.try_iter().filter(|e| matches!(e.kind, Some(event::Kind::BuildStarted(_)))).count()
}

#[test]
fn stop_after_suspend_and_resume_while_a_build_dies_leaves_nothing_running() {
    let (builder, store, uuid, n) = building_slowly();
    let suspending = suspend_in_background(&builder);
    builder.resume().unwrap();
    builder.stop();
    assert!(!builder.is_building(), "a build runs after stop() returned");
    assert_eq!(processes_with(&n), [] as [i32; 0], "a build process runs after stop() returned");
    suspending.join().unwrap().unwrap();
    assert_eq!(generation(&store, &uuid).build_err, "cancelled: stopped");
    assert_eq!(recv(&builder.build_done(), "build_done"), uuid);
    assert_quiet(&builder, &builder.build_done(), "build_done");
}

#[test]
fn stop_while_a_suspended_build_dies_makes_resume_build_nothing() {
    let (builder, store, uuid, n) = building_slowly();
    let events = builder.subscribe();
    let suspending = suspend_in_background(&builder);
    builder.stop();
    suspending.join().unwrap().unwrap();
    builder.resume().unwrap();
    assert!(!builder.is_building(), "resume() built what stop() forgot");
    assert_eq!(build_started_events(&events), 0);
    assert_eq!(generation(&store, &uuid).build_err, "cancelled: stopped");
    assert_eq!(recv(&builder.build_done(), "build_done"), uuid);
    assert_quiet(&builder, &builder.build_done(), "build_done");
    assert_no_process(&n);
}

#[test]
fn eval_while_a_suspended_and_resumed_build_dies_starts_no_build_of_the_old_generation() {
    let (builder, store, old, n) = building_slowly();
    let events = builder.subscribe();
    let suspending = suspend_in_background(&builder);
    builder.resume().unwrap();
    let new = builder.eval(&rs("c2")).unwrap();
    suspending.join().unwrap().unwrap();
    assert_eq!(build_started_events(&events), 0, "a build of the old generation started");
    assert_eq!(generation(&store, &old).build_err, format!("cancelled: superseded by generation {new}"));
    assert_eq!(recv(&builder.build_done(), "build_done"), old);
    assert_eq!(recv(&builder.evaluation_done(), "evaluation_done"), new);
    assert_quiet(&builder, &builder.build_done(), "build_done");
    assert_no_process(&n);
}

#[test]
fn two_threads_stopping_a_slowly_dying_build_both_return_once_it_is_gone() {
    let (builder, store, uuid, n) = building_slowly();
    let start = Arc::new(std::sync::Barrier::new(2));
    let stoppers: Vec<_> = (0..2)
        .map(|_| {
            let (builder, start, n) = (builder.clone(), start.clone(), n.clone());
            std::thread::spawn(move || {
                start.wait();
                let began = Instant::now();
                builder.stop();
                (began.elapsed(), processes_with(&n), builder.is_building())
            })
        })
        .collect();
    for stopper in stoppers {
        let (took, left, building) = stopper.join().unwrap();
        assert_eq!((left, building), (vec![], false), "stop() returned after {took:?}");
    }
    assert_eq!(generation(&store, &uuid).build_err, "cancelled: stopped");
}

#[test]
fn dropping_the_last_handle_returns_once_a_slowly_dying_build_is_gone() {
    let (builder, store, uuid, n) = building_slowly();
    let done = builder.build_done();
    drop(builder);
    assert_eq!(processes_with(&n), [] as [i32; 0]);
    assert_eq!(generation(&store, &uuid).build_err, "cancelled: stopped");
    assert_eq!(recv(&done, "build_done"), uuid);
}

#[test]
fn timeouts_of_duration_max_never_expire_and_stop_still_works() {
    let n = nonce();
    let mut config = config();
    config.eval_timeout = Duration::MAX;
    config.build_timeout = Duration::MAX;
    let (builder, store, executor) = builder_with(config, ShellExecutor::new().build_runs(long_sleep(&n)));
    let uuid = builder.eval(&rs("c1")).unwrap();
    assert_eq!(recv(&builder.evaluation_done(), "evaluation_done"), uuid);
    assert_eq!(generation(&store, &uuid).eval_status, status::EVALUATED);
    builder.submit_build(&uuid).unwrap();
    wait_for_processes(&n, 1);
    builder.stop();
    assert_no_process(&n);
    assert_eq!(generation(&store, &uuid).build_err, "cancelled: stopped");
    *executor.build_script.lock() = None;
    builder.submit_build(&uuid).unwrap();
    recv(&builder.build_done(), "build_done");
    assert_eq!(recv(&builder.build_done(), "build_done"), uuid);
}

// ---- calls from inside a job (issue 9, item 5) ----

type Inside = Box<dyn Fn(&Builder, &JobContext) -> String + Send + Sync>;

/// An executor that calls its own builder from inside its jobs and reports what the
/// call returned; evaluations then succeed, builds too.
struct CallsBack {
    builder: Mutex<Option<Builder>>,
    during_eval: Option<Inside>,
    during_build: Option<Inside>,
    report: crossbeam_channel::Sender<String>,
}

impl CallsBack {
    fn during(&self, what: &Option<Inside>, ctx: &JobContext) {
        let builder = self.builder.lock().clone();
        if let (Some(f), Some(builder)) = (what, builder) {
            let _ = self.report.send(f(&builder, ctx));
        }
    }
}

impl Executor for CallsBack {
    fn eval(&self, _: &EvalRequest, ctx: &JobContext) -> Result<EvalOutput, JobError> {
        self.during(&self.during_eval, ctx);
        if ctx.is_cancelled() {
            return Err(JobError::Cancelled(None));
        }
        Ok(EvalOutput {
            drv_path: "/nix/store/aaaa-test.drv".into(),
            out_path: "/nix/store/aaaa-test".into(),
            machine_id: String::new(),
        })
    }

    fn build(&self, _: &str, ctx: &JobContext) -> Result<(), JobError> {
        self.during(&self.during_build, ctx);
        Ok(())
    }

    fn is_store_path_valid(&self, _: &str) -> bool {
        false
    }
}

/// A builder whose executor calls it back; the reports come on the receiver.
fn calling_back(
    during_eval: Option<Inside>,
    during_build: Option<Inside>,
) -> (Builder, Arc<Store>, Arc<CallsBack>, crossbeam_channel::Receiver<String>) {
    let (report, reports) = crossbeam_channel::unbounded();
    let executor = Arc::new(CallsBack { builder: Mutex::new(None), during_eval, during_build, report });
    let store = Arc::new(Store::new());
    let builder = Builder::new(config(), store.clone(), executor.clone());
    *executor.builder.lock() = Some(builder.clone());
    (builder, store, executor, reports)
}

#[test]
fn eval_from_inside_a_job_is_refused_at_once() {
    let (builder, store, executor, reports) =
        calling_back(Some(Box::new(|b, _| format!("{:?}", b.eval(&rs("inner"))))), None);
    let uuid = builder.eval(&rs("c1")).unwrap();
    let report = recv(&reports, "the call from inside the job");
    assert_eq!(report, format!("{:?}", Err::<String, _>(Error::CalledFromJob { method: "eval" })));
    assert_eq!(recv(&builder.evaluation_done(), "evaluation_done"), uuid);
    assert_eq!(generation(&store, &uuid).eval_status, status::EVALUATED);
    let message = Error::CalledFromJob { method: "eval" }.to_string();
    assert!(message.starts_with("eval() was called from inside one of this builder's own jobs"), "{message}");
    executor.builder.lock().take();
}

#[test]
fn suspend_from_inside_a_build_is_refused_at_once() {
    let (builder, _, executor, reports) =
        calling_back(None, Some(Box::new(|b, _| format!("{:?}", b.suspend()))));
    let uuid = builder.eval(&rs("c1")).unwrap();
    recv(&builder.evaluation_done(), "evaluation_done");
    builder.submit_build(&uuid).unwrap();
    let report = recv(&reports, "the call from inside the job");
    assert_eq!(report, format!("{:?}", Err::<(), _>(Error::CalledFromJob { method: "suspend" })));
    assert_eq!(recv(&builder.build_done(), "build_done"), uuid);
    assert!(!builder.is_suspended());
    executor.builder.lock().take();
}

#[test]
fn stop_from_inside_a_job_cancels_it_and_returns_without_waiting_for_itself() {
    let n = nonce();
    let sleep = long_sleep(&n);
    let (builder, store, executor, reports) = calling_back(
        Some(Box::new(move |b, ctx| {
            b.stop();
            // The job is cancelled: a command it runs now ends at once.
            format!("stop returned; then {:?}", ctx.run(sh(&sleep)).map(drop))
        })),
        None,
    );
    let uuid = builder.eval(&rs("c1")).unwrap();
    let report = recv(&reports, "the call from inside the job");
    assert_eq!(report, "stop returned; then Err(Cancelled(Some(Stopped)))");
    assert_eq!(recv(&builder.evaluation_done(), "evaluation_done"), uuid);
    assert_eq!(generation(&store, &uuid).eval_err, "cancelled: stopped");
    assert!(!builder.is_evaluating());
    assert_no_process(&n);
    executor.builder.lock().take();
}

/// An executor holding its builder's last handle, which its evaluation drops when told.
struct DropsItsBuilder {
    builder: Mutex<Option<Builder>>,
    go: crossbeam_channel::Receiver<()>,
}

impl Executor for DropsItsBuilder {
    fn eval(&self, _: &EvalRequest, _: &JobContext) -> Result<EvalOutput, JobError> {
        self.go.recv_timeout(HANG).expect("the test lets the evaluation go on");
        drop(self.builder.lock().take());
        Ok(an_evaluation())
    }

    fn build(&self, _: &str, _: &JobContext) -> Result<(), JobError> {
        Ok(())
    }

    fn is_store_path_valid(&self, _: &str) -> bool {
        false
    }
}

fn reaper_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "genbuild-reaper")
        .count()
}

#[test]
fn dropping_the_last_handle_inside_a_job_stops_without_joining_itself() {
    let (go_tx, go) = crossbeam_channel::bounded(1);
    let executor = Arc::new(DropsItsBuilder { builder: Mutex::new(None), go });
    let store = Arc::new(Store::new());
    let builder = Builder::new(config(), store.clone(), executor.clone());
    let (done, events) = (builder.evaluation_done(), builder.subscribe());
    *executor.builder.lock() = Some(builder.clone());
    let uuid = builder.eval(&rs("c1")).unwrap();
    drop(builder);
    go_tx.send(()).unwrap();
    assert_eq!(recv(&done, "evaluation_done"), uuid);
    assert_eq!(
        done.recv_timeout(HANG),
        Err(crossbeam_channel::RecvTimeoutError::Disconnected),
        "the builder goes with its last handle"
    );
    let g = generation(&store, &uuid);
    assert_eq!((g.eval_status.as_str(), g.eval_err.as_str()), (status::EVALUATED, ""));
    assert_eq!(events.iter().count(), 2, "the subscriber saw the evaluation, then disconnected");
    wait_until("the reaper thread's end", || reaper_threads() == 0);
}

#[test]
fn submit_build_resume_and_getters_work_from_inside_a_job() {
    let (builder, _, executor, reports) = calling_back(
        None,
        Some(Box::new(|b, _| {
            let uuid = b.generation_uuid().unwrap();
            let state = b.state();
            format!(
                "{:?} {:?} building={} {} {}",
                b.submit_build(&uuid),
                b.resume(),
                b.is_building(),
                state.is_building == Some(true),
                state.generation_uuid == uuid,
            )
        })),
    );
    let uuid = builder.eval(&rs("c1")).unwrap();
    recv(&builder.evaluation_done(), "evaluation_done");
    builder.submit_build(&uuid).unwrap();
    let report = recv(&reports, "the calls from inside the job");
    assert_eq!(report, "Err(AlreadyBuilding) Err(NotSuspended) building=true true true");
    assert_eq!(recv(&builder.build_done(), "build_done"), uuid);
    executor.builder.lock().take();
}

// ---- progress (issue 12, §2) ----

/// An executor whose build reports progress 1000 times over about a second, says how
/// long that took, then ends when told.
struct ReportsProgress {
    reported: crossbeam_channel::Sender<Duration>,
    finish: crossbeam_channel::Receiver<()>,
}

impl Executor for ReportsProgress {
    fn eval(&self, _: &EvalRequest, _: &JobContext) -> Result<EvalOutput, JobError> {
        Ok(EvalOutput {
            drv_path: "/nix/store/p.drv".into(),
            out_path: "/nix/store/p".into(),
            ..Default::default()
        })
    }

    fn build(&self, drv_path: &str, ctx: &JobContext) -> Result<(), JobError> {
        let started = Instant::now();
        for done in 1..=1000 {
            // Progress is non_exhaustive: built from its default, field by field.
            let mut progress = genbuild::Progress::default();
            progress.done = done;
            progress.expected = 1000;
            progress.running = 1;
            progress.building = vec![drv_path.to_string()];
            ctx.progress(progress);
            std::thread::sleep(Duration::from_millis(1));
        }
        self.reported.send(started.elapsed()).unwrap();
        self.finish.recv_timeout(HANG).map_err(|_| JobError::Failed("never told to finish".into()))
    }

    fn is_store_path_valid(&self, _: &str) -> bool {
        false
    }
}

#[test]
fn progress_is_coalesced_to_ten_a_second_the_last_one_delivered_and_shown_in_the_state() {
    let (reported, reports) = crossbeam_channel::unbounded();
    let (finish, told) = crossbeam_channel::unbounded();
    let builder =
        Builder::new(config(), Arc::new(Store::new()), Arc::new(ReportsProgress { reported, finish: told }));
    let events = builder.subscribe();
    let uuid = builder.eval(&rs("c1")).unwrap();
    recv(&builder.evaluation_done(), "evaluation_done");
    assert_eq!(builder.state().build_progress, None, "no build runs");
    builder.submit_build(&uuid).unwrap();
    let took = recv(&reports, "the progress reports");
    let shown = builder.state().build_progress.expect("the state shows the running build's progress");
    assert_eq!((shown.generation_uuid.as_str(), shown.done, shown.expected), (uuid.as_str(), 1000, 1000));
    assert_eq!(shown.building, ["/nix/store/p.drv"]);
    finish.send(()).unwrap();
    recv(&builder.build_done(), "build_done");
    assert_eq!(builder.state().build_progress, None, "no build runs any more");

    let mut progress = Vec::new();
    let mut finished_after = None;
    for event in events.try_iter() {
        match event.kind.unwrap() {
            event::Kind::BuildProgress(p) => progress.push(p.done),
            event::Kind::BuildFinished(_) => finished_after = Some(progress.len()),
            _ => {}
        }
    }
    let allowed = (took.as_millis() / 100) as usize + 2;
    assert!(progress.len() <= allowed, "{} progress events in {took:?}: {progress:?}", progress.len());
    assert!(progress.len() >= 2, "{progress:?}");
    assert_eq!(progress.last(), Some(&1000), "the last report is delivered");
    assert_eq!(finished_after, Some(progress.len()), "and before the build's end");
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "in order: {progress:?}");
}

/// An executor whose evaluation ends successfully once cancelled (as one that finishes
/// its pure-Rust work does), and whose build runs until cancelled.
struct EndsWhenCancelled {
    nonce: String,
    builds_run: std::sync::atomic::AtomicUsize,
    /// Told once the evaluation was cancelled; it then ends when told to go.
    cancelled: crossbeam_channel::Sender<()>,
    go: crossbeam_channel::Receiver<()>,
}

impl Executor for EndsWhenCancelled {
    fn eval(&self, _: &EvalRequest, ctx: &JobContext) -> Result<EvalOutput, JobError> {
        let cancelled = ctx.run(sh(&long_sleep(&self.nonce)));
        assert!(matches!(cancelled, Err(JobError::Cancelled(_))), "{cancelled:?}");
        self.cancelled.send(()).unwrap();
        self.go.recv_timeout(HANG).expect("told to go on");
        Ok(an_evaluation())
    }

    fn build(&self, _: &str, ctx: &JobContext) -> Result<(), JobError> {
        self.builds_run.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ctx.run(sh(&long_sleep(&self.nonce))).map(drop)
    }

    fn is_store_path_valid(&self, _: &str) -> bool {
        false
    }
}

/// While stop() waits for the evaluation it cancelled, that evaluation ends evaluated
/// and another thread submits its build. stop() used to return with that build
/// running; now no job starts while a stop waits: the build ends at once, "cancelled:
/// stopped", announced before stop() returns. (A submit that lands after stop()
/// returned builds as usual: which one comes first is the scheduler's choice, so the
/// scenario runs until the first case was seen a few times.)
#[test]
fn a_build_submitted_while_stop_waits_ends_with_the_stop() {
    let (cancelled, evaluation_cancelled) = crossbeam_channel::unbounded();
    let (go_on, go) = crossbeam_channel::unbounded();
    let executor =
        Arc::new(EndsWhenCancelled { nonce: nonce(), builds_run: Default::default(), cancelled, go });
    let (mut ended_by_the_stop, mut ran_after_it) = (0, 0);
    for _ in 0..200 {
        let store = Arc::new(Store::new());
        let builder = Builder::new(config(), store.clone(), executor.clone());
        let uuid = builder.eval(&rs("c1")).unwrap();
        let stopping = {
            let builder = builder.clone();
            std::thread::spawn(move || builder.stop())
        };
        // The evaluation ends only once the stop cancelled it: the stop waits now. The
        // build is submitted as soon as the evaluation's end is recorded.
        recv(&evaluation_cancelled, "the cancel of the evaluation");
        go_on.send(()).unwrap();
        let deadline = Instant::now() + HANG;
        let submitted = loop {
            match builder.submit_build(&uuid) {
                Err(Error::NotEvaluated) if Instant::now() < deadline => std::hint::spin_loop(),
                submitted => break submitted,
            }
        };
        stopping.join().unwrap();
        let builds_run = executor.builds_run.load(std::sync::atomic::Ordering::SeqCst);
        let g = generation(&store, &uuid);
        if g.build_status == status::FAILED {
            assert_eq!((submitted, g.build_err.as_str()), (Ok(()), "cancelled: stopped"));
            assert_eq!(builder.build_done().try_recv(), Ok(uuid), "announced before stop() returned");
            assert!(!builder.is_building());
            drop(builder);
            let now = executor.builds_run.load(std::sync::atomic::Ordering::SeqCst);
            assert_eq!(now, builds_run, "a build ended by the stop reached the executor");
            ended_by_the_stop += 1;
        } else {
            // Submitted after stop() returned: it runs as any build.
            assert_eq!(submitted, Ok(()));
            builder.stop();
            assert_eq!(generation(&store, &uuid).build_err, "cancelled: stopped");
            ran_after_it += 1;
        }
        if ended_by_the_stop >= 3 {
            break;
        }
    }
    eprintln!("ended by the stop: {ended_by_the_stop}, ran after it: {ran_after_it}");
    assert!(ended_by_the_stop > 0, "every build submitted while stop() waited outlived it");
    assert_no_process(&executor.nonce);
}

/// The warnings logged so far that name `store`.
fn warnings_about(store: &Store) -> Vec<String> {
    warnings().iter().filter(|w| w.contains(store.id())).cloned().collect()
}

/// The store's rules are store-wide and its id owns the gc roots: builders over one
/// store one after the other (a restart) are its use, and take over what the earlier
/// one left; two alive at once drop each other's generations and roots, which
/// `Builder::new` cannot refuse but warns about.
#[test]
fn one_builder_per_store_at_a_time_and_a_second_live_one_is_warned_about() {
    let store = Arc::new(Store::new());
    assert_eq!(warnings_about(&store), Vec::<String>::new());
    let new = || Builder::new(config(), store.clone(), Arc::new(ShellExecutor::new()));

    let first = new();
    let uuid = first.eval(&rs("c1")).unwrap();
    assert_eq!(recv(&first.evaluation_done(), "evaluation_done"), uuid);
    let _same_builder = first.clone();
    drop((first, _same_builder));
    let restarted = new();
    assert_eq!(warnings_about(&store), Vec::<String>::new(), "one after the other is no misuse");
    restarted.submit_build(&uuid).unwrap();
    assert_eq!(recv(&restarted.build_done(), "build_done"), uuid);
    assert_eq!(generation(&store, &uuid).build_status, status::BUILT);

    let second = new();
    let warned = warnings_about(&store);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].contains("2 live Builders use the store") && warned[0].contains("one Builder per Store")
    );
    drop(second);
    drop(restarted);
    let _alone = new();
    assert_eq!(warnings_about(&store).len(), 1, "both were dropped");

    // Two stores over one file are one store.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        Store::open(dir.path().join("state.pb")).unwrap(),
        Store::open(dir.path().join("state.pb")).unwrap(),
    );
    let _a = Builder::new(config(), Arc::new(a), Arc::new(ShellExecutor::new()));
    let b = Arc::new(b);
    let _b = Builder::new(config(), b.clone(), Arc::new(ShellExecutor::new()));
    assert_eq!(warnings_about(&b).len(), 1);
}
