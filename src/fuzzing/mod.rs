//! Operation sequences and their oracle, shared by the cargo-fuzz targets in `fuzz/`
//! and by `tests/fuzz_replay.rs`, so that stable `cargo test` replays the committed
//! corpus, the crash files and seeded random sequences through the very same code.
//!
//! The generators (the [`Op`] sequences, drawn by `arbitrary`) are apart from the
//! oracles (wasmtime's `crates/fuzzing` is the model):
//! * `reference`: a second model of the builder's semantics (the crate documentation,
//!   DESIGN.md), written from the rules and not from the machine's code; it says what
//!   every operation must do.
//! * `check_machine` drives the private state machine the way the
//!   [`Builder`](crate::Builder) does (drain every action, end a job a command waits
//!   for, retry the command) and compares everything it emits with the reference.
//! * `check_builder` runs the same sequences against the threaded
//!   [`Builder`](crate::Builder) with a fake executor, and also checks that every call
//!   returns (a watchdog) and that no thread outlives the builder.
//! * `check_decode` feeds arbitrary bytes to the store loader and the protobuf
//!   decoders: errors are fine, panics are not.
//!
//! Besides comparing with the reference, both checkers hold these invariants after
//! every operation: when `stop()` returns nothing runs and nothing is wanted; a resume
//! after a stop starts nothing; every notification names the generation whose job
//! ended; no job of a generation starts once a newer generation was created.
//!
//! # Races
//!
//! [`Op::Race`] makes calls while the job the first of them cancels takes its time to
//! die: a call that waits for that job (an `eval`, a `suspend` of a build, a `stop`)
//! stays blocked, on a thread of its own in the builder check, while the next calls
//! are made; then the job ends, and the blocked calls return. This is how suspend ‖
//! resume ‖ stop, stop ‖ stop and eval ‖ stop interleave in real use, with a build
//! that ignores SIGTERM for its grace period.

mod check_builder;
mod check_decode;
mod check_machine;
mod fake;
mod reference;

use arbitrary::{Arbitrary, Result, Unstructured};

pub use check_builder::{check_builder, BUILDER_MAX_OPS};
pub use check_decode::check_decode;
pub use check_machine::check_machine;

/// How a job ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEnd {
    /// Success; for an evaluation, whether its output is already in the store.
    Ok {
        already_built: bool,
    },
    Failed,
    Cancelled,
    TimedOut,
}

/// Which job a completion is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The running job (an unknown id when none runs).
    Running,
    /// A job that already ended, counted back from the last one: a late duplicate.
    Stale(u8),
    /// An id never handed out.
    Unknown(u8),
    /// The running job, reporting the other kind's success (a driver bug the machine
    /// must survive). Machine check only.
    WrongKind,
}

/// A call made during a [`Op::Race`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `eval()` of a new generation (only the first of a race; later ones are not
    /// made, since two waiting evaluations proceed in no fixed order).
    Eval,
    /// `submit_build()` of the current generation.
    SubmitCurrent,
    Suspend,
    Resume,
    Stop,
}

/// One step of a sequence: a caller's command, a job's completion, or a race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `eval()` of a new generation; `cancelled_job_ends` is how a job it cancels ends
    /// (cancelled, or it won the race and ended on its own).
    Eval {
        cancelled_job_ends: JobEnd,
    },
    /// `submit_build()` of the current generation (a fresh uuid when there is none).
    SubmitCurrent,
    /// `submit_build()` of an earlier generation, counted back from the last one.
    SubmitStale(u8),
    /// `submit_build()` of a uuid never seen.
    SubmitUnknown,
    Suspend {
        cancelled_job_ends: JobEnd,
    },
    Resume,
    Stop {
        cancelled_job_ends: JobEnd,
    },
    Complete {
        job: Target,
        ending: JobEnd,
    },
    /// `calls`, made in this order while the job a call cancels is still dying (see
    /// the module documentation); then that job ends with `cancelled_job_ends`.
    Race {
        calls: [Call; 3],
        cancelled_job_ends: JobEnd,
    },
}

impl Op {
    /// The calls a race makes: its first `eval` only.
    fn race_calls(calls: &[Call; 3]) -> Vec<Call> {
        let first_eval = calls.iter().position(|c| *c == Call::Eval);
        calls
            .iter()
            .enumerate()
            .filter(|(i, c)| **c != Call::Eval || Some(*i) == first_eval)
            .map(|(_, c)| *c)
            .collect()
    }
}

// One byte per choice (a derived `Arbitrary` spends four on every enum
// discriminant): the fuzzers reach long sequences with short inputs.

impl<'a> Arbitrary<'a> for JobEnd {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.choose_index(5)? {
            0 => JobEnd::Ok { already_built: false },
            1 => JobEnd::Ok { already_built: true },
            2 => JobEnd::Failed,
            3 => JobEnd::Cancelled,
            _ => JobEnd::TimedOut,
        })
    }

    fn size_hint(_: usize) -> (usize, Option<usize>) {
        (1, Some(1))
    }
}

impl<'a> Arbitrary<'a> for Target {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.choose_index(4)? {
            0 => Target::Running,
            1 => Target::Stale(u.arbitrary()?),
            2 => Target::Unknown(u.arbitrary()?),
            _ => Target::WrongKind,
        })
    }

    fn size_hint(_: usize) -> (usize, Option<usize>) {
        (1, Some(2))
    }
}

impl<'a> Arbitrary<'a> for Call {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.choose_index(5)? {
            0 => Call::Eval,
            1 => Call::SubmitCurrent,
            2 => Call::Suspend,
            3 => Call::Resume,
            _ => Call::Stop,
        })
    }

    fn size_hint(_: usize) -> (usize, Option<usize>) {
        (1, Some(1))
    }
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.choose_index(9)? {
            0 => Op::Eval { cancelled_job_ends: u.arbitrary()? },
            1 => Op::SubmitCurrent,
            2 => Op::SubmitStale(u.arbitrary()?),
            3 => Op::SubmitUnknown,
            4 => Op::Suspend { cancelled_job_ends: u.arbitrary()? },
            5 => Op::Resume,
            6 => Op::Stop { cancelled_job_ends: u.arbitrary()? },
            7 => Op::Complete { job: u.arbitrary()?, ending: u.arbitrary()? },
            _ => Op::Race { calls: u.arbitrary()?, cancelled_job_ends: u.arbitrary()? },
        })
    }

    fn size_hint(_: usize) -> (usize, Option<usize>) {
        (1, Some(5))
    }
}

/// The rule a command's result breaks, if any: exactly the documented errors, with
/// their messages.
fn error_mismatch(
    result: &Result<(), crate::Error>,
    expected: &Result<(), crate::Error>,
) -> Option<(&'static str, String)> {
    if result != expected {
        return Some((
            "errors are exactly the documented ones",
            format!("expected {expected:?}, got {result:?}"),
        ));
    }
    match (result, expected) {
        (Err(e), Err(x)) if e.to_string() != x.to_string() => {
            Some(("error messages are the documented ones", format!("expected {x}, got {e}")))
        }
        _ => None,
    }
}
