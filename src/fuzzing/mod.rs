//! Operation sequences and their oracle, shared by the cargo-fuzz targets in `fuzz/`
//! and by `tests/fuzz_replay.rs`, so that stable `cargo test` replays the committed
//! corpus, the crash files and seeded random sequences through the very same code.
//!
//! The generators (the [`Op`] sequences, drawn by `arbitrary`) are apart from the
//! oracles (wasmtime's `crates/fuzzing` is the model):
//! * `reference`: a second model of the builder's semantics (the crate documentation),
//!   written from the rules and not from the machine's code; it says what every
//!   operation must do.
//! * `check_machine` drives the private state machine the way the
//!   [`Builder`](crate::Builder) does (drain every action, end a job a command waits
//!   for, retry the command) and compares everything it emits with the reference.
//! * `check_builder` runs the same sequences against the threaded
//!   [`Builder`](crate::Builder) with a fake executor, and also checks that every call
//!   returns (a watchdog) and that no thread outlives the builder.
//! * `check_decode` feeds arbitrary bytes to the store loader and the protobuf
//!   decoders: errors are fine, panics are not.
//!
//! # Reused evaluations
//!
//! The fake executors give an evaluation of commit `c` the reuse key
//! `reuse-key-of-c`, except for commits whose name ends in `0` (no key: never
//! reused); an `eval` asks for a new commit or one of the last four asked for
//! ([`Commit`]), and says whether the `.drv` of that commit's earlier evaluation is
//! still valid when the new one looks for it. The reference predicts the reuse (an
//! evaluation that ends at once, with no job reaching the executor) and the store's
//! index of reusable evaluations, both of which the checkers compare.
//!
//! Besides comparing with the reference, both checkers hold these invariants after
//! every operation: when `stop()` returns nothing runs and nothing is wanted; no job
//! starts while a stop is under way; a resume after a stop starts nothing; every
//! notification names the generation whose job ended; no job of a generation starts
//! once a newer generation was created.
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

/// Which commit an `eval()` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// One never asked for.
    New,
    /// One asked for before: counted back from the last one asked for, among the last
    /// four (a new one when none was). `drv_valid`: whether the `.drv` of its earlier
    /// evaluation is still in the store (not collected) when this one looks for it.
    Again { back: u8, drv_valid: bool },
}

/// A call made during a [`Op::Race`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `eval()` of a new generation (only the first of a race; later ones are not
    /// made, since two waiting evaluations proceed in no fixed order).
    Eval(Commit),
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
        commit: Commit,
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
    /// A `stop()` whose job (if one runs) ends with `cancelled_job_ends`, and `calls`
    /// made after that job ended but before the stop is over: no job may start then.
    /// (The builder check makes them once `stop()` returned: it cannot hold a stop
    /// open.)
    StopWindow {
        calls: [Call; 2],
        cancelled_job_ends: JobEnd,
    },
}

impl Op {
    /// The calls a race makes: its first `eval` only.
    fn race_calls(calls: &[Call]) -> Vec<Call> {
        let first_eval = calls.iter().position(|c| matches!(c, Call::Eval(_)));
        calls
            .iter()
            .enumerate()
            .filter(|(i, c)| !matches!(c, Call::Eval(_)) || Some(*i) == first_eval)
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

impl<'a> Arbitrary<'a> for Commit {
    /// Half new; a reused commit's `.drv` valid three times in four.
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let bits = u8::arbitrary(u)?;
        Ok(if bits & 1 == 0 {
            Commit::New
        } else {
            Commit::Again { back: (bits >> 1) & 3, drv_valid: (bits >> 3) & 3 != 0 }
        })
    }

    fn size_hint(_: usize) -> (usize, Option<usize>) {
        (1, Some(1))
    }
}

impl<'a> Arbitrary<'a> for Call {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.choose_index(5)? {
            0 => Call::Eval(u.arbitrary()?),
            1 => Call::SubmitCurrent,
            2 => Call::Suspend,
            3 => Call::Resume,
            _ => Call::Stop,
        })
    }

    fn size_hint(_: usize) -> (usize, Option<usize>) {
        (1, Some(2))
    }
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.choose_index(10)? {
            0 => Op::Eval { cancelled_job_ends: u.arbitrary()?, commit: u.arbitrary()? },
            1 => Op::SubmitCurrent,
            2 => Op::SubmitStale(u.arbitrary()?),
            3 => Op::SubmitUnknown,
            4 => Op::Suspend { cancelled_job_ends: u.arbitrary()? },
            5 => Op::Resume,
            6 => Op::Stop { cancelled_job_ends: u.arbitrary()? },
            7 => Op::Complete { job: u.arbitrary()?, ending: u.arbitrary()? },
            8 => Op::Race { calls: u.arbitrary()?, cancelled_job_ends: u.arbitrary()? },
            _ => Op::StopWindow { calls: u.arbitrary()?, cancelled_job_ends: u.arbitrary()? },
        })
    }

    fn size_hint(_: usize) -> (usize, Option<usize>) {
        (1, Some(8))
    }
}

/// The earlier commit `choice` names among `asked` (oldest first) and whether its
/// `.drv` is still valid; `None`: a new commit.
fn earlier_commit(choice: Commit, asked: &[String]) -> Option<(String, bool)> {
    let Commit::Again { back, drv_valid } = choice else { return None };
    let last_four = &asked[asked.len().saturating_sub(4)..];
    let back = usize::from(back) % last_four.len().max(1);
    Some((last_four.iter().rev().nth(back)?.clone(), drv_valid))
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
