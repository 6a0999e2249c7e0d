//! Inputs the fuzzers found, minimised, each replayed through the check that caught
//! it, with a comment naming the bug.
#![cfg(feature = "fuzzing")]

use genbuild::fuzzing::{check_builder, check_machine, JobEnd, Op, Target};

/// Evaluated, submitted and building; then `suspend` races with the build, which
/// fails (or times out) on its own just before the cancellation lands.
fn build_ends_on_its_own_during_suspend(ending: JobEnd) -> Vec<Op> {
    vec![
        Op::Eval { cancelled_job_ends: JobEnd::Cancelled },
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
/// again. DESIGN.md: resume builds what "was cancelled by the suspend".
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
