//! Every scenario of DESIGN.md's Semantics section against the threaded builder, with
//! executors whose jobs are real `sh`/`sleep` processes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use genbuild::proto::{event, status};
use genbuild::{Error, BUILD_REASON_ALREADY_BUILT, BUILD_REASON_NEED_BUILD};

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
    assert_quiet(&builder.evaluation_done(), "evaluation_done");
    assert_quiet(&builder.build_done(), "build_done");

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
    assert_quiet(&builder.evaluation_done(), "evaluation_done");
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
    assert_quiet(&builder.build_done(), "build_done");
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
    assert_quiet(&builder.build_done(), "build_done");
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
    let (builder, _, _) = builder(
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
    // 4096 queued at most, the first of which is the eval_started event.
    assert_eq!(lines.len(), 4095);
    assert!(lines.iter().enumerate().all(|(i, (line, dropped))| *line == i.to_string() && *dropped == 0));
    builder.submit_build(&uuid).unwrap();
    recv(&builder.build_done(), "build_done");
    drain(&mut lines);
    assert_eq!(
        lines.last().unwrap(),
        &("after".to_string(), 6000 - 4095),
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
