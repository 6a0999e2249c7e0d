//! Eight threads calling every `Builder` method at random for 10 s, with jobs that are
//! real short `sh`/`sleep` processes (and some long ones only cancellation ends).
//!
//! Why: the builder's promises (no panic, no deadlock, no leaked thread or process,
//! one notification per started evaluation) are about interleavings no scenario test
//! enumerates. A seeded PRNG per thread makes a failing run's call sequence
//! reproducible in intent, though not its timing.
//!
//! Deadlocks are caught by a watchdog: every thread reports each call it finishes on a
//! channel, and the main thread fails when none arrives within 20 s, naming what each
//! thread was last doing. A binary of its own, so that the thread and fd counts are of
//! this test only.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use crossbeam_channel::RecvTimeoutError;
use genbuild::Error;
use parking_lot::Mutex;

const THREADS: usize = 8;
const RUN: Duration = Duration::from_secs(10);
const WATCHDOG: Duration = Duration::from_secs(20);

/// What every thread saw, checked once all are done.
#[derive(Default)]
struct Seen {
    evals: Vec<String>,
    evals_given_up: u64,
    evaluation_done: Vec<String>,
    build_done: Vec<String>,
}

#[test]
fn eight_threads_calling_everything_at_random() {
    let (threads_before, fds_before) = (genbuild_thread_count(), fd_count());
    let n = nonce();
    // Short jobs, failing jobs, and long ones that only a cancellation ends.
    let scripts: Vec<Option<String>> = vec![
        None,
        Some(format!("sleep 0.01{n}")),
        Some(format!("echo out; sleep 0.05{n}; echo err >&2")),
        Some(format!("sleep 0.2{n}")),
        Some(format!("echo failing >&2; sleep 0.01{n}; exit 3")),
        Some(long_sleep(&n)),
    ];
    let mut config = config();
    config.process.kill_grace = Duration::from_millis(200);
    config.eval_timeout = Duration::from_secs(2);
    config.build_timeout = Duration::from_secs(2);
    let (builder, store, executor) = builder_with(config, ShellExecutor::new());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let (progress_tx, progress) = crossbeam_channel::unbounded::<(usize, &'static str)>();
    let mut callers = Vec::new();
    for t in 0..THREADS {
        let (builder, store, executor, scripts, seen, stop, progress_tx) = (
            builder.clone(),
            store.clone(),
            executor.clone(),
            scripts.clone(),
            seen.clone(),
            stop.clone(),
            progress_tx.clone(),
        );
        callers.push(std::thread::spawn(move || {
            let mut rng = XorShift(0x2545_f491_4f6c_dd1d ^ ((t as u64 + 1) << 32));
            let mut subscriptions = Vec::new();
            let mut clones = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let op: &'static str = match rng.below(16) {
                    0 | 1 => {
                        match builder.eval(&rs(&format!("t{t}-{i}"))) {
                            Ok(uuid) => seen.lock().evals.push(uuid),
                            // Another thread stopped while this one waited for a job.
                            Err(Error::Stopped) => seen.lock().evals_given_up += 1,
                            Err(e) => panic!("eval: unexpected {e}"),
                        }
                        "eval"
                    }
                    2 | 3 => {
                        let uuid = match rng.below(3) {
                            0 => "unknown".to_string(),
                            _ => builder.generation_uuid().unwrap_or_default(),
                        };
                        match builder.submit_build(&uuid) {
                            Ok(())
                            | Err(Error::AnotherGeneration)
                            | Err(Error::UnknownGeneration(_))
                            | Err(Error::NotEvaluated)
                            | Err(Error::AlreadyBuilding)
                            | Err(Error::AlreadyBuilt) => {}
                            Err(e) => panic!("submit_build: unexpected {e}"),
                        }
                        "submit_build"
                    }
                    4 => {
                        match builder.suspend() {
                            Ok(()) | Err(Error::AlreadySuspended) => {}
                            Err(e) => panic!("suspend: unexpected {e}"),
                        }
                        "suspend"
                    }
                    5 | 6 => {
                        match builder.resume() {
                            Ok(()) | Err(Error::NotSuspended) => {}
                            Err(e) => panic!("resume: unexpected {e}"),
                        }
                        "resume"
                    }
                    7 => {
                        builder.stop();
                        "stop"
                    }
                    8 => {
                        let state = builder.state();
                        assert_eq!(state.hostname, "host1");
                        if let Some(g) = state.generation {
                            assert_eq!(g.uuid, state.generation_uuid);
                        }
                        "state"
                    }
                    9 => {
                        let _ = (builder.is_evaluating(), builder.is_building(), builder.is_suspended());
                        let _ = builder.generation_uuid().map(|u| store.generation(&u));
                        "getters"
                    }
                    10 => {
                        let got: Vec<String> = builder.evaluation_done().try_iter().collect();
                        seen.lock().evaluation_done.extend(got);
                        "evaluation_done"
                    }
                    11 => {
                        let got: Vec<String> = builder.build_done().try_iter().collect();
                        seen.lock().build_done.extend(got);
                        "build_done"
                    }
                    12 => {
                        if subscriptions.len() < 3 {
                            subscriptions.push(builder.subscribe());
                        } else if rng.below(2) == 0 {
                            subscriptions.remove(0);
                        } else {
                            for events in &subscriptions {
                                events.try_iter().for_each(drop);
                            }
                        }
                        "subscribe"
                    }
                    13 => {
                        if clones.len() < 2 {
                            clones.push(builder.clone());
                        } else {
                            clones.clear();
                        }
                        "clone"
                    }
                    14 => {
                        let script = scripts[rng.below(scripts.len() as u64) as usize].clone();
                        if rng.below(2) == 0 {
                            *executor.eval_script.lock() = script;
                        } else {
                            *executor.build_script.lock() = script;
                        }
                        "set script"
                    }
                    _ => {
                        executor.valid.lock().clear();
                        "forget built outputs"
                    }
                };
                if progress_tx.send((t, op)).is_err() {
                    break;
                }
            }
        }));
    }
    drop(progress_tx);

    let deadline = Instant::now() + RUN;
    let mut last: HashMap<usize, &'static str> = HashMap::new();
    let mut calls = 0u64;
    loop {
        if Instant::now() >= deadline {
            stop.store(true, Ordering::Relaxed);
        }
        match progress.recv_timeout(WATCHDOG) {
            Ok((t, op)) => {
                calls += 1;
                last.insert(t, op);
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                panic!("no call returned within {WATCHDOG:?}; last call done by each thread: {last:?}")
            }
        }
    }
    for caller in callers {
        caller.join().expect("a calling thread panicked");
    }
    builder.stop();
    assert_no_process(&n);

    let mut seen = seen.lock();
    seen.evaluation_done.extend(builder.evaluation_done().try_iter());
    seen.build_done.extend(builder.build_done().try_iter());
    eprintln!(
        "{calls} calls, {} evals ({} given up for a stop), {} evaluation_done, {} build_done",
        seen.evals.len(),
        seen.evals_given_up,
        seen.evaluation_done.len(),
        seen.build_done.len()
    );
    assert!(calls > 1000, "only {calls} calls in {RUN:?}");
    // Every started evaluation ends with exactly one evaluation_done, or with a
    // build_done (the "already built" shortcut, or a build submitted afterwards).
    let count = |list: &[String]| {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for uuid in list {
            *counts.entry(uuid.clone()).or_default() += 1;
        }
        counts
    };
    let (evaluated, built) = (count(&seen.evaluation_done), count(&seen.build_done));
    let evals = count(&seen.evals);
    assert!(evals.values().all(|&c| c == 1), "eval() returned a uuid twice");
    for uuid in evals.keys() {
        let e = evaluated.get(uuid).copied().unwrap_or(0);
        assert!(e <= 1, "{uuid}: {e} evaluation_done");
        assert!(e == 1 || built.contains_key(uuid), "{uuid}: its evaluation never notified");
    }
    for uuid in evaluated.keys().chain(built.keys()) {
        assert!(evals.contains_key(uuid), "a notification for {uuid}, which eval() never returned");
    }
    drop(seen);
    drop(builder);
    assert_no_process(&n);
    assert_genbuild_threads_at_most(threads_before);
    assert_fds_at_most(fds_before);
}
