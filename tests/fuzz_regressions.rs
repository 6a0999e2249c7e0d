//! Inputs the fuzzers found, minimised, each replayed through the check that caught
//! it, with a comment naming the bug.
#![cfg(feature = "fuzzing")]

use genbuild::fuzzing::{check_builder, check_machine, Call, Commit, JobEnd, Op, Target};

/// Evaluated, submitted and building; then `suspend` races with the build, which
/// fails (or times out) on its own just before the cancellation lands.
fn build_ends_on_its_own_during_suspend(ending: JobEnd) -> Vec<Op> {
    vec![
        Op::Eval { cancelled_job_ends: JobEnd::Cancelled, commit: Commit::New },
        Op::Complete { job: Target::Running, ending: JobEnd::Ok { already_built: false } },
        Op::SubmitCurrent,
        Op::Suspend { cancelled_job_ends: ending },
        Op::Resume,
    ]
}

/// Bug (machine.rs, found by `state_transitions`): `suspend` marks the build as
/// wanted again when it *cancels* it, not when the build *ends cancelled*. A build
/// that failed or timed out on its own in that window is recorded failed with its
/// own error, and is then started again by `resume` although nobody submitted it
/// again. The rule (`Builder::resume`): resume builds what "was cancelled by the suspend".
#[test]
fn suspend_does_not_requeue_a_build_that_failed_on_its_own() {
    check_machine(&build_ends_on_its_own_during_suspend(JobEnd::Failed));
}

/// Same bug, with a build that timed out on its own.
#[test]
fn suspend_does_not_requeue_a_build_that_timed_out_on_its_own() {
    check_machine(&build_ends_on_its_own_during_suspend(JobEnd::TimedOut));
}

/// The same sequence with the cancellation winning (the common case) is correct:
/// the build is started again on resume. Kept as the control of the two above, on
/// the machine and on the threaded builder.
#[test]
fn suspend_requeues_a_build_it_cancelled() {
    let ops = build_ends_on_its_own_during_suspend(JobEnd::Cancelled);
    check_machine(&ops);
    check_builder(&ops);
}

// ---- stop() is stronger than every pending request (issue 9, items 1-4) ----
//
// Found with the fix of item 1 (a later, stronger cancel reason replaces the one
// recorded) reverted, by fresh runs of the fuzzers with an empty corpus.

fn both(ops: &[Op]) {
    check_machine(ops);
    check_builder(ops);
}

/// An evaluated generation with its build running.
fn building() -> Vec<Op> {
    vec![
        Op::Eval { cancelled_job_ends: JobEnd::Cancelled, commit: Commit::New },
        Op::Complete { job: Target::Running, ending: JobEnd::Ok { already_built: false } },
        Op::SubmitCurrent,
    ]
}

fn race(calls: [Call; 3]) -> Op {
    Op::Race { calls, cancelled_job_ends: JobEnd::Cancelled }
}

/// Bug (machine.rs, found by `state_transitions` after 7,976 runs, 1.3 s, and by
/// `builder_ops` after 15-20 thousand runs, 36-48 s): the first cancel reason won. A
/// `stop` while an `eval` waited for the running evaluation recorded "cancelled:
/// superseded by generation …" for a generation that was never created, and the eval
/// went on after the stop.
#[test]
fn a_stop_while_an_eval_waits_records_stopped_and_the_eval_gives_up() {
    both(&[
        Op::Eval { cancelled_job_ends: JobEnd::Failed, commit: Commit::New },
        race([Call::Eval(Commit::New), Call::SubmitCurrent, Call::Stop]),
    ]);
}

/// Bug (machine.rs, found by `state_transitions` after 84,238 runs, 11.7 s, with only
/// the suspend's reason kept): a build cancelled by `suspend` and then stopped while
/// it died was wanted again when it ended, so a later `resume` built it.
#[test]
fn a_stop_while_a_suspended_build_dies_forgets_the_build() {
    both(&[
        Op::Race {
            calls: [Call::Eval(Commit::New), Call::Eval(Commit::New), Call::Stop],
            cancelled_job_ends: JobEnd::Ok { already_built: false },
        },
        Op::SubmitCurrent,
        race([Call::Suspend, Call::Stop, Call::Stop]),
        Op::Resume,
    ]);
}

/// Bug (machine.rs, found by `state_transitions` after 52,612 runs, 6.1 s, with only
/// the suspend's reason kept; issue 9 item 3): suspend, resume, then an `eval` while
/// the build dies started (recorded, notified) a build of the old generation when the
/// dying one ended, then cancelled it.
#[test]
fn an_eval_while_a_suspended_and_resumed_build_dies_starts_no_build_of_the_old_generation() {
    both(&[
        Op::Race {
            calls: [Call::Eval(Commit::New), Call::Stop, Call::Stop],
            cancelled_job_ends: JobEnd::Ok { already_built: false },
        },
        Op::SubmitCurrent,
        race([Call::Suspend, Call::Resume, Call::Eval(Commit::New)]),
        Op::SubmitStale(0),
    ]);
}

/// Issue 9, item 1, as reported: suspend while the build dies slowly, resume, stop:
/// when stop() returned a new build ran.
#[test]
fn suspend_resume_stop_while_a_build_dies_leaves_nothing_running() {
    let mut ops = building();
    ops.push(race([Call::Suspend, Call::Resume, Call::Stop]));
    ops.push(Op::Resume);
    both(&ops);
}

/// Issue 9, item 4: two stops of a dying build both wait for it (the second returned
/// at once).
#[test]
fn two_stops_of_a_dying_build_both_wait_for_it() {
    let mut ops = building();
    ops.push(race([Call::Stop, Call::Stop, Call::Resume]));
    both(&ops);
}

/// Bug (the builder check itself, found by `builder_ops`): a `resume` made while a
/// stopped build still died saw `is_building()` true and was taken for a resume that
/// started a build.
#[test]
fn a_resume_while_a_stopped_build_dies_starts_nothing() {
    both(&[
        Op::Eval { cancelled_job_ends: JobEnd::Cancelled, commit: Commit::New },
        Op::Race {
            calls: [Call::SubmitCurrent, Call::Stop, Call::SubmitCurrent],
            cancelled_job_ends: JobEnd::Ok { already_built: false },
        },
        Op::Race {
            calls: [Call::SubmitCurrent, Call::Stop, Call::Resume],
            cancelled_job_ends: JobEnd::Ok { already_built: true },
        },
    ]);
}
