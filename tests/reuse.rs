//! Evaluation reuse (issue 13) against the threaded builder, with an executor whose
//! every answer the test controls: which commits fail, which `.drv`s are still valid,
//! where an evaluation or a reuse blocks. Real Nix is in tests/nix_reuse.rs.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use genbuild::proto::{event, status, RepositoryStatus};
use genbuild::store::MAX_REUSABLE_EVALUATIONS;
use genbuild::{
    Builder, EvalOutput, EvalRequest, Executor, JobContext, JobError, Store, BUILD_REASON_ALREADY_BUILT,
};
use parking_lot::Mutex;

/// An executor keyed by commit: the evaluation of commit `c` is `/nix/store/c-sys.drv`.
#[derive(Default)]
struct Keyed {
    /// Evaluations that ran (reached `eval`).
    evals: AtomicUsize,
    /// Commits whose evaluation fails.
    failing: Mutex<HashSet<String>>,
    /// Commits whose evaluation runs `sleep` (with this nonce) until cancelled.
    slow: Mutex<HashSet<String>>,
    /// Derivations no longer in the store.
    collected: Mutex<HashSet<String>>,
    /// Outputs in the store.
    built: Mutex<HashSet<String>>,
    /// When set, `reuse_evaluation` runs `sleep` (with this nonce) until cancelled and
    /// returns the job's error, as the Nix executors' check of the store does: a cancel
    /// arrives while a reuse checks the store.
    reuse_until_cancelled: AtomicBool,
    nonce: String,
}

fn drv_of(commit: &str) -> String {
    format!("/nix/store/{commit}-sys.drv")
}

impl Keyed {
    fn new() -> Arc<Keyed> {
        Arc::new(Keyed { nonce: nonce(), ..Keyed::default() })
    }

    fn evals(&self) -> usize {
        self.evals.load(Ordering::SeqCst)
    }
}

impl Executor for Keyed {
    fn eval(&self, req: &EvalRequest, ctx: &JobContext) -> Result<EvalOutput, JobError> {
        self.evals.fetch_add(1, Ordering::SeqCst);
        let commit = &req.commit_id;
        if self.slow.lock().contains(commit) {
            ctx.run(sh(&long_sleep(&self.nonce)))?;
        }
        if self.failing.lock().contains(commit) {
            return Err(JobError::Failed(format!("{commit} does not evaluate")));
        }
        Ok(EvalOutput {
            drv_path: drv_of(commit),
            out_path: format!("/nix/store/{commit}-sys"),
            machine_id: format!("id-{commit}"),
        })
    }

    fn build(&self, drv_path: &str, _: &JobContext) -> Result<(), JobError> {
        self.built.lock().insert(drv_path.trim_end_matches(".drv").to_string());
        Ok(())
    }

    fn is_store_path_valid(&self, path: &str) -> bool {
        self.built.lock().contains(path)
    }

    fn eval_reuse_key(&self, req: &EvalRequest, _: &JobContext) -> Option<String> {
        Some(format!("keyed-{}-{}", req.hostname, req.commit_id))
    }

    fn reuse_evaluation(&self, output: &EvalOutput, ctx: &JobContext) -> Result<bool, JobError> {
        if self.reuse_until_cancelled.load(Ordering::SeqCst) {
            let cancelled = ctx.run(sh(&long_sleep(&self.nonce)));
            assert!(matches!(cancelled, Err(JobError::Cancelled(_))), "{cancelled:?}");
            cancelled?;
        }
        Ok(!self.collected.lock().contains(&output.drv_path))
    }
}

struct Harness {
    builder: Builder,
    store: Arc<Store>,
    executor: Arc<Keyed>,
}

impl Harness {
    fn new() -> Harness {
        Harness::over(Arc::new(Store::new()), Keyed::new())
    }

    fn over(store: Arc<Store>, executor: Arc<Keyed>) -> Harness {
        Harness { builder: Builder::new(config(), store.clone(), executor.clone()), store, executor }
    }

    /// Evaluates `rs` and waits for its end (`evaluation_done`, or `build_done` when
    /// already built), skipping the notifications of earlier jobs; returns the
    /// generation.
    fn eval_rs(&self, rs: &RepositoryStatus) -> genbuild::proto::Generation {
        let uuid = self.builder.eval(rs).unwrap();
        loop {
            let done = crossbeam_channel::select! {
                recv(self.builder.evaluation_done()) -> u => u.unwrap(),
                recv(self.builder.build_done()) -> u => u.unwrap(),
                default(HANG) => panic!("no end of the evaluation of {uuid}"),
            };
            if done == uuid {
                return generation(&self.store, &uuid);
            }
        }
    }

    fn eval(&self, commit: &str) -> genbuild::proto::Generation {
        self.eval_rs(&rs(commit))
    }

    /// The keys kept for reuse, least recently used first.
    fn kept(&self) -> Vec<String> {
        self.store.reusable_evaluations().into_iter().map(|e| e.key).collect()
    }
}

fn key(commit: &str) -> String {
    format!("keyed-host1-{commit}")
}

#[test]
fn a_commit_evaluated_again_on_another_branch_is_reused_with_its_own_status() {
    let h = Harness::new();
    let events = h.builder.subscribe();
    let first = h.eval("c1");
    assert_eq!((first.eval_status.as_str(), first.eval_reused_from.as_str()), (status::EVALUATED, ""));
    assert_eq!(h.executor.evals(), 1);

    let testing = RepositoryStatus {
        selected_commit_id: "c1".into(),
        selected_commit_msg: "promoted".into(),
        selected_remote_name: "upstream".into(),
        selected_branch_name: "testing".into(),
        selected_branch_is_testing: Some(true),
        ..Default::default()
    };
    let again = h.eval_rs(&testing);
    assert_eq!(h.executor.evals(), 1, "no evaluation ran");
    assert_eq!(again.eval_status, status::EVALUATED);
    assert_eq!(again.eval_reused_from, first.uuid);
    assert_eq!(
        (&again.drv_path, &again.out_path, &again.machine_id),
        (&first.drv_path, &first.out_path, &first.machine_id)
    );
    let own = (
        again.selected_branch_name.as_str(),
        again.selected_remote_name.as_str(),
        again.selected_commit_msg.as_str(),
        again.selected_branch_is_testing,
    );
    assert_eq!(own, ("testing", "upstream", "promoted", Some(true)));
    let (started, ended) = (again.eval_started_at.unwrap(), again.eval_ended_at.unwrap());
    let first_ended = first.eval_ended_at.unwrap();
    let seconds = |t: &prost_types::Timestamp| (t.seconds, t.nanos);
    assert!(seconds(&started) >= seconds(&first_ended), "the timestamps are those of the reuse");
    assert!(seconds(&ended) >= seconds(&started));

    // A third time: still the first generation's evaluation.
    assert_eq!(h.eval("c1").eval_reused_from, first.uuid);
    assert_eq!(h.executor.evals(), 1);

    let mut reused_events = 0;
    let mut lines = Vec::new();
    for e in events.try_iter() {
        match e.kind.unwrap() {
            event::Kind::EvalFinished(f)
                if f.generation.as_ref().is_some_and(|g| !g.eval_reused_from.is_empty()) =>
            {
                reused_events += 1
            }
            event::Kind::LogLine(l) => lines.push(l.line),
            _ => {}
        }
    }
    assert_eq!(reused_events, 2, "the eval_finished event names the source");
    assert!(
        lines.iter().any(|l| l.contains(&format!("reusing the evaluation of generation {}", first.uuid))),
        "{lines:?}"
    );
}

#[test]
fn another_input_means_another_evaluation() {
    let h = Harness::new();
    h.eval("c1");
    let other = h.eval("c2");
    assert_eq!((other.eval_reused_from.as_str(), h.executor.evals()), ("", 2));
    let mut config = config();
    config.hostname = "host2".into();
    let b = Builder::new(config, h.store.clone(), h.executor.clone());
    let uuid = b.eval(&rs("c1")).unwrap();
    assert_eq!(recv(&b.evaluation_done(), "evaluation_done"), uuid);
    assert_eq!(generation(&h.store, &uuid).eval_reused_from, "", "another hostname, another key");
    assert_eq!(h.executor.evals(), 3);
}

#[test]
fn failed_cancelled_and_superseded_evaluations_are_never_reused() {
    let h = Harness::new();
    h.executor.failing.lock().insert("c1".into());
    assert_eq!(h.eval("c1").eval_status, status::FAILED);
    h.executor.failing.lock().clear();
    let g = h.eval("c1");
    assert_eq!((g.eval_status.as_str(), g.eval_reused_from.as_str()), (status::EVALUATED, ""));
    assert_eq!(h.executor.evals(), 2);

    h.executor.slow.lock().insert("c2".into());
    let stopped = h.builder.eval(&rs("c2")).unwrap();
    wait_for_processes(&h.executor.nonce, 1);
    h.builder.stop();
    assert_eq!(generation(&h.store, &stopped).eval_err, "cancelled: stopped");
    let superseded = h.builder.eval(&rs("c2")).unwrap();
    wait_for_processes(&h.executor.nonce, 1);
    let newer = h.builder.eval(&rs("c3")).unwrap();
    assert_eq!(
        generation(&h.store, &superseded).eval_err,
        format!("cancelled: superseded by generation {newer}")
    );
    assert_no_process(&h.executor.nonce);
    h.executor.slow.lock().clear();
    let g = h.eval("c2");
    assert_eq!((g.eval_status.as_str(), g.eval_reused_from.as_str()), (status::EVALUATED, ""));
    assert_eq!(h.executor.evals(), 6, "c1 twice, c2 three times, c3 once");
}

#[test]
fn an_invalid_drv_means_a_real_evaluation_and_its_entry_is_dropped() {
    let h = Harness::new();
    h.eval("c1");
    h.executor.collected.lock().insert(drv_of("c1"));
    // The evaluation that follows fails, so that nothing replaces the entry.
    h.executor.failing.lock().insert("c1".into());
    let events = h.builder.subscribe();
    let g = h.eval("c1");
    assert_eq!((g.eval_status.as_str(), h.executor.evals()), (status::FAILED, 2));
    assert!(h.kept().is_empty(), "the entry went: {:?}", h.kept());
    let lines: Vec<String> = events
        .try_iter()
        .filter_map(|e| match e.kind? {
            event::Kind::LogLine(l) => Some(l.line),
            _ => None,
        })
        .collect();
    assert!(lines.iter().any(|l| l.contains("is no longer valid; evaluating")), "{lines:?}");

    // Valid again (evaluated anew by someone else): the entry is gone, so c1 evaluates.
    h.executor.collected.lock().clear();
    h.executor.failing.lock().clear();
    let third = h.eval("c1");
    assert_eq!((third.eval_reused_from.as_str(), h.executor.evals()), ("", 3));
    assert_eq!(h.eval("c1").eval_reused_from, third.uuid, "the new evaluation is the source now");
}

#[test]
fn only_the_most_recently_used_keys_are_kept() {
    let h = Harness::new();
    let commits: Vec<String> = (0..=MAX_REUSABLE_EVALUATIONS).map(|i| format!("c{i}")).collect();
    let first = h.eval(&commits[0]);
    for commit in &commits[1..MAX_REUSABLE_EVALUATIONS] {
        h.eval(commit);
    }
    assert_eq!(h.kept().len(), MAX_REUSABLE_EVALUATIONS);
    // Reusing c0 makes it the most recently used: c1 is the oldest now.
    assert_eq!(h.eval(&commits[0]).eval_reused_from, first.uuid);
    h.eval(&commits[MAX_REUSABLE_EVALUATIONS]);
    let kept = h.kept();
    assert_eq!(kept.len(), MAX_REUSABLE_EVALUATIONS);
    assert!(!kept.contains(&key("c1")), "the least recently used key went");
    assert_eq!(kept[kept.len() - 2..], [key("c0"), key(&commits[MAX_REUSABLE_EVALUATIONS])]);
    let evals = h.executor.evals();
    assert_eq!(h.eval("c1").eval_reused_from, "");
    assert_eq!(h.executor.evals(), evals + 1);
    assert_eq!(h.eval("c0").eval_reused_from, first.uuid);
}

#[test]
fn a_reused_evaluation_of_a_built_output_takes_the_already_built_shortcut() {
    let h = Harness::new();
    let first = h.eval("c1");
    h.builder.submit_build(&first.uuid).unwrap();
    assert_eq!(recv(&h.builder.build_done(), "build_done"), first.uuid);
    let uuid = h.builder.eval(&rs("c1")).unwrap();
    assert_eq!(recv(&h.builder.build_done(), "build_done"), uuid);
    assert_quiet(&h.builder, &h.builder.evaluation_done(), "evaluation_done");
    let g = generation(&h.store, &uuid);
    assert_eq!(
        (g.eval_reused_from.as_str(), g.build_status.as_str(), g.build_reason.as_str()),
        (first.uuid.as_str(), status::BUILT, BUILD_REASON_ALREADY_BUILT)
    );
    assert_eq!(h.executor.evals(), 1);
}

/// Evaluates c1, then starts a reuse of it that lasts until it is cancelled (see
/// [`Keyed::reuse_until_cancelled`]); returns the first generation and the new uuid.
fn reuse_until_cancelled(h: &Harness) -> (genbuild::proto::Generation, String) {
    let first = h.eval("c1");
    h.executor.reuse_until_cancelled.store(true, Ordering::SeqCst);
    let uuid = h.builder.eval(&rs("c1")).unwrap();
    wait_for_processes(&h.executor.nonce, 1);
    h.executor.reuse_until_cancelled.store(false, Ordering::SeqCst);
    (first, uuid)
}

/// A reuse check the cancel interrupts did not answer: the evaluation it checked stays
/// reusable (the check used to take the interruption for "no longer valid").
#[test]
fn a_stop_during_the_reuse_check_ends_it_and_keeps_the_reusable_evaluation() {
    let h = Harness::new();
    let events = h.builder.subscribe();
    let (first, uuid) = reuse_until_cancelled(&h);
    assert!(h.builder.is_evaluating(), "a reuse is an evaluation job");
    h.builder.stop();
    assert!(!h.builder.is_evaluating());
    assert_no_process(&h.executor.nonce);
    let g = generation(&h.store, &uuid);
    assert_eq!(
        (g.eval_status.as_str(), g.eval_err.as_str(), g.eval_reused_from.as_str()),
        (status::FAILED, "cancelled: stopped", ""),
    );
    assert_eq!(h.kept(), [key("c1")], "the cancelled check forgot the reusable evaluation");
    let logged = log_lines(&events);
    assert!(!logged.iter().any(|l| l.contains("no longer valid")), "{logged:?}");
    assert_eq!(recv(&h.builder.evaluation_done(), "evaluation_done"), uuid);
    // The entry is still good: the next evaluation reuses it.
    assert_eq!(h.eval("c1").eval_reused_from, first.uuid);
    assert_eq!(h.executor.evals(), 1);
}

/// The log lines received so far.
fn log_lines(events: &crossbeam_channel::Receiver<genbuild::proto::Event>) -> Vec<String> {
    let lines = events.try_iter().filter_map(|e| match e.kind {
        Some(event::Kind::LogLine(l)) => Some(l.line),
        _ => None,
    });
    lines.collect()
}

#[test]
fn an_eval_during_a_reuse_supersedes_it() {
    let h = Harness::new();
    let (first, uuid) = reuse_until_cancelled(&h);
    let newer = h.builder.eval(&rs("c2")).unwrap();
    assert_no_process(&h.executor.nonce);
    let g = generation(&h.store, &uuid);
    assert_eq!(g.eval_err, format!("cancelled: superseded by generation {newer}"));
    let done: Vec<String> = (0..2).map(|_| recv(&h.builder.evaluation_done(), "evaluation_done")).collect();
    assert_eq!(done, [uuid, newer]);
    assert!(h.kept().contains(&key("c1")), "the superseded check forgot the reusable evaluation");
    assert_eq!(h.eval("c1").eval_reused_from, first.uuid);
}

#[test]
fn an_executor_without_keys_evaluates_every_time() {
    let (builder, store, _) = builder(ShellExecutor::new());
    for _ in 0..2 {
        let uuid = builder.eval(&rs("c1")).unwrap();
        assert_eq!(recv(&builder.evaluation_done(), "evaluation_done"), uuid);
        assert_eq!(generation(&store, &uuid).eval_reused_from, "");
    }
    assert!(store.reusable_evaluations().is_empty());
}

#[test]
fn reusable_evaluations_survive_a_restart_and_the_collection_of_their_generation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.pb");
    let first = {
        let h = Harness::over(Arc::new(Store::open(&path).unwrap()), Keyed::new());
        let first = h.eval("c1");
        // Enough generations after it that the store's rule collects it.
        for commit in ["c2", "c3", "c4"] {
            h.eval(commit);
        }
        assert!(h.store.generation(&first.uuid).is_none(), "collected");
        first
    };
    let h = Harness::over(Arc::new(Store::open(&path).unwrap()), Keyed::new());
    assert_eq!(h.kept(), [key("c1"), key("c2"), key("c3"), key("c4")]);
    let g = h.eval("c1");
    assert_eq!(
        (g.eval_reused_from.as_str(), g.drv_path.as_str()),
        (first.uuid.as_str(), drv_of("c1").as_str())
    );
    assert_eq!(g.machine_id, "id-c1");
    assert_eq!(h.executor.evals(), 0, "no evaluation after the restart");
    assert_eq!(h.kept().last(), Some(&key("c1")), "the reuse made it the most recent");
}

#[test]
fn a_store_file_without_reusable_evaluations_loads_and_evaluates() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.pb");
    // What a genbuild before evaluation reuse wrote (the bare, legacy format here; the
    // framed one is covered by the store's unit tests).
    std::fs::write(&path, common::store::one_built_generation("old").encode_to_vec()).unwrap();
    let h = Harness::over(Arc::new(Store::open(&path).unwrap()), Keyed::new());
    assert!(h.kept().is_empty());
    assert_eq!(h.eval("c1").eval_reused_from, "");
    assert_eq!(h.executor.evals(), 1);
    drop(h);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.reusable_evaluations().len(), 1, "written back with the index");
    assert!(store.generation("old").is_some());
}
