//! Operation sequences and their oracle, shared by the cargo-fuzz targets in `fuzz/`
//! and by `tests/fuzz_replay.rs`, so that stable `cargo test` replays the committed
//! corpus, the crash files and seeded random sequences through the very same code.
//!
//! Three checks:
//! * [`check_machine`] drives [`Machine`] the way [`Builder`](crate::Builder) does
//!   (drain every action, complete a job a command waits for, retry the command) and
//!   compares everything it emits with `Reference`, a second model of DESIGN.md's
//!   Semantics written without looking at the machine's code. Divergences are either a
//!   bug of the machine or an ambiguity of DESIGN.md; both deserve a look.
//! * [`check_builder`] runs the same sequences against the threaded
//!   [`Builder`](crate::Builder) with an in-process executor, and also checks that
//!   every call returns (a watchdog) and that no thread outlives the builder.
//! * [`check_decode`] feeds arbitrary bytes to the store loader and the protobuf
//!   decoders: errors are fine, panics are not.
//!
//! # The fake executor of `check_builder`
//!
//! A fake job must end when the checker says so, and also when the builder cancels
//! it. [`JobContext`] offers no handle to block on for the cancellation (only a flag),
//! and polling that flag would make timing part of the test. So each fake job
//! registers with the checker and blocks on a channel for its directive:
//! * `Finish(ending)`: return that outcome (the checker then waits for the job's
//!   notification, so the next step starts from a settled state);
//! * `AwaitCancel`: run a real `sleep 1000` through [`JobContext::run`], which the
//!   builder's cancellation ends through the real subprocess protocol. The checker
//!   sends it just before a call the reference says cancels the job (eval, suspend
//!   of a build, stop), so a cancelled job's error text is produced by the real code.
//!
//! A cancellation the reference does not predict therefore leaves the fake job
//! waiting and shows up as the watchdog's "deadlock" panic; one that is predicted but
//! not performed shows up as a sleeping job the next step waits for, likewise. The
//! machine check sees every `Cancel` action and names such bugs precisely; the builder
//! check is there for the driver's own plumbing (locking, waiting, joining, channels).
//! Races between a job ending and a cancellation are explored by the machine check
//! only (the `cancelled_job_ends` of [`Op`]); the builder check always lets the
//! cancellation win, so its outcome is deterministic.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use crossbeam_channel::{Receiver, Sender};
use prost::Message;

use crate::machine::{
    Action, BuildStatus, EvalStatus, GenerationView, JobId, JobKind, Machine, Notification, Outcome, Record,
    Step,
};
use crate::{CancelReason, Error, EvalOutput, EvalRequest, Executor, JobContext, JobError};

/// How a job ends.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Success; for an evaluation, whether its output is already in the store.
    Ok {
        out_path_valid: bool,
    },
    Failed,
    Cancelled,
    TimedOut,
}

/// Which job a completion is for.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
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

/// One step of a sequence: a caller's command or a job's completion.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `eval()` of a new generation; `cancelled_job_ends` is how a job it cancels ends
    /// (cancelled, or it won the race and ended on its own).
    Eval {
        cancelled_job_ends: Ending,
    },
    /// `submit_build()` of the current generation (a fresh uuid when there is none).
    SubmitCurrent,
    /// `submit_build()` of an earlier generation, counted back from the last one.
    SubmitStale(u8),
    /// `submit_build()` of a uuid never seen.
    SubmitUnknown,
    Suspend {
        cancelled_job_ends: Ending,
    },
    Resume,
    Stop {
        cancelled_job_ends: Ending,
    },
    Complete {
        job: Target,
        ending: Ending,
    },
}

/// `len` bytes from a xorshift generator seeded with `seed`: the same on every
/// machine and every run. The seed corpus is made of these.
pub fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        // xorshift64*; the state must never be zero.
        state = if state == 0 { 0x2545_F491_4F6C_DD1D } else { state };
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        bytes.extend(state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// `count` sequences of `len` operations, drawn from [`seeded_bytes`] through
/// [`Unstructured`] as libFuzzer's inputs are.
pub fn seeded_sequences(seed: u64, count: usize, len: usize) -> Vec<Vec<Op>> {
    (0..count as u64)
        .map(|i| {
            let bytes = seeded_bytes(seed.wrapping_mul(0x1_0000_0001).wrapping_add(i), len * 16);
            let mut u = Unstructured::new(&bytes);
            (0..len).map(|_| Op::arbitrary(&mut u).expect("enough bytes for every operation")).collect()
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// The reference model, from DESIGN.md's Semantics section.
// ---------------------------------------------------------------------------------

/// An error text as recorded on a generation; `Any` where DESIGN.md leaves it open.
#[derive(Debug, Clone)]
enum Text {
    Exact(String),
    Any,
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        match (self, other) {
            (Text::Exact(a), Text::Exact(b)) => a == b,
            _ => true,
        }
    }
}

/// What the outside world sees of a step: store records, notifications, and (machine
/// check only) job starts and cancellations.
#[derive(Debug, Clone, PartialEq)]
enum Ev {
    EvalStarted(String),
    EvalFinished(String, Result<EvalOutput, Text>),
    BuildStarted(String, &'static str),
    BuildFinished(String, Result<(), Text>),
    EvaluationDone(String),
    BuildDone(String),
    StartEval(String),
    StartBuild(String, String),
    Cancel(String),
}

impl Ev {
    fn is_visible_to_builder_check(&self) -> bool {
        !matches!(self, Ev::StartEval(_) | Ev::StartBuild(..) | Ev::Cancel(_))
    }
}

#[derive(Debug, Clone)]
struct RefGen {
    uuid: String,
    /// What the fake executor derives its output from.
    key: String,
    eval: &'static str,
    build: &'static str,
    eval_err: Text,
    build_err: Text,
    drv_path: String,
    /// A build submitted while suspended, or cancelled by a suspend.
    wanted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Eval,
    Build,
}

/// DESIGN.md's rules, restated.
#[derive(Debug, Default)]
struct Reference {
    current: Option<RefGen>,
    running: Option<Kind>,
    suspended: bool,
    known: Vec<String>,
    evs: Vec<Ev>,
}

const INITIALIZED: &str = "initialized";
const EVALUATING: &str = "evaluating";
const EVALUATED: &str = "evaluated";
const BUILDING: &str = "building";
const BUILT: &str = "built";
const FAILED: &str = "failed";

fn fake_output(key: &str, out_path_valid: bool) -> EvalOutput {
    EvalOutput {
        drv_path: format!("/nix/store/{key}-system.drv"),
        out_path: format!("/nix/store/{key}-system{}", if out_path_valid { "-valid" } else { "" }),
        machine_id: String::new(),
    }
}

fn fake_failure(key: &str) -> String {
    format!("fake failure of {key}")
}

const FAKE_TIMEOUT: Duration = Duration::from_secs(7);

/// The error text DESIGN.md asks for; `cancelled_by` is what the job was cancelled
/// for, if it was.
fn expected_text(key: &str, ending: Ending, cancelled_by: Option<&str>) -> Text {
    Text::Exact(match ending {
        Ending::Ok { .. } => unreachable!("a success has no error text"),
        Ending::Failed => fake_failure(key),
        Ending::TimedOut => "timed out after 7s".to_string(),
        Ending::Cancelled => match cancelled_by {
            Some(why) => format!("cancelled: {why}"),
            None => "cancelled".to_string(),
        },
    })
}

impl Reference {
    fn take_evs(&mut self) -> Vec<Ev> {
        std::mem::take(&mut self.evs)
    }

    /// Whether `op` cancels the running job.
    fn cancels(&self, op: &Op) -> bool {
        match op {
            Op::Eval { .. } | Op::Stop { .. } => self.running.is_some(),
            Op::Suspend { .. } => !self.suspended && self.running == Some(Kind::Build),
            _ => false,
        }
    }

    /// The running job ends; `cancelled_by` names why it was cancelled, if it was.
    /// `wrong_kind`: it reports the other kind's success.
    fn finish(&mut self, ending: Ending, cancelled_by: Option<&str>, wrong_kind: bool) {
        let kind = self.running.take().expect("finish with a running job");
        let g = self.current.as_mut().expect("a running job has a current generation");
        let uuid = g.uuid.clone();
        let failure = |ending| expected_text(&g.key, ending, cancelled_by);
        let result = match (ending, wrong_kind) {
            (Ending::Ok { .. }, true) => Err(Text::Any),
            (Ending::Ok { out_path_valid }, false) => Ok(out_path_valid),
            (ending, _) => Err(failure(ending)),
        };
        match (kind, result) {
            (Kind::Eval, Ok(out_path_valid)) => {
                let output = fake_output(&g.key, out_path_valid);
                g.eval = EVALUATED;
                g.drv_path = output.drv_path.clone();
                self.evs.push(Ev::EvalFinished(uuid.clone(), Ok(output)));
                if out_path_valid {
                    g.build = BUILT;
                    g.build_err = Text::Exact(String::new());
                    self.evs.push(Ev::BuildStarted(uuid.clone(), crate::BUILD_REASON_ALREADY_BUILT));
                    self.evs.push(Ev::BuildFinished(uuid.clone(), Ok(())));
                    self.evs.push(Ev::BuildDone(uuid));
                } else {
                    self.evs.push(Ev::EvaluationDone(uuid));
                }
            }
            (Kind::Eval, Err(text)) => {
                g.eval = FAILED;
                g.eval_err = text.clone();
                self.evs.push(Ev::EvalFinished(uuid.clone(), Err(text)));
                self.evs.push(Ev::EvaluationDone(uuid));
            }
            (Kind::Build, Ok(_)) => {
                g.build = BUILT;
                self.evs.push(Ev::BuildFinished(uuid.clone(), Ok(())));
                self.evs.push(Ev::BuildDone(uuid));
            }
            (Kind::Build, Err(text)) => {
                g.build = FAILED;
                g.build_err = text.clone();
                self.evs.push(Ev::BuildFinished(uuid.clone(), Err(text)));
                self.evs.push(Ev::BuildDone(uuid));
            }
        }
    }

    fn cancel_running(&mut self, why: &str, ending: Ending) {
        let uuid = self.current.as_ref().expect("a running job has a current generation").uuid.clone();
        self.evs.push(Ev::Cancel(uuid));
        self.finish(ending, Some(why), false);
    }

    fn eval(&mut self, uuid: &str, key: &str, cancelled_job_ends: Ending) {
        if self.running.is_some() {
            self.cancel_running(&format!("superseded by generation {uuid}"), cancelled_job_ends);
        }
        self.current = Some(RefGen {
            uuid: uuid.to_string(),
            key: key.to_string(),
            eval: EVALUATING,
            build: INITIALIZED,
            eval_err: Text::Exact(String::new()),
            build_err: Text::Exact(String::new()),
            drv_path: String::new(),
            wanted: false,
        });
        self.known.push(uuid.to_string());
        self.running = Some(Kind::Eval);
        self.evs.push(Ev::EvalStarted(uuid.to_string()));
        self.evs.push(Ev::StartEval(uuid.to_string()));
    }

    fn submit_build(&mut self, uuid: &str) -> Result<(), Error> {
        let Some(g) = &mut self.current else {
            // No current generation: only the store could know `uuid`, and every
            // generation this model created is or was current.
            return Err(Error::UnknownGeneration(uuid.to_string()));
        };
        if g.uuid != uuid {
            return Err(Error::AnotherGeneration);
        }
        if g.eval != EVALUATED {
            return Err(Error::NotEvaluated);
        }
        if self.running == Some(Kind::Build) {
            return Err(Error::AlreadyBuilding);
        }
        if g.build == BUILT {
            return Err(Error::AlreadyBuilt);
        }
        if self.suspended {
            g.wanted = true;
        } else {
            self.start_build();
        }
        Ok(())
    }

    fn start_build(&mut self) {
        let g = self.current.as_mut().expect("a build has a current generation");
        g.wanted = false;
        g.build = BUILDING;
        g.build_err = Text::Exact(String::new());
        self.running = Some(Kind::Build);
        self.evs.push(Ev::BuildStarted(g.uuid.clone(), crate::BUILD_REASON_NEED_BUILD));
        self.evs.push(Ev::StartBuild(g.uuid.clone(), g.drv_path.clone()));
    }

    fn suspend(&mut self, cancelled_job_ends: Ending) -> Result<(), Error> {
        if self.suspended {
            return Err(Error::AlreadySuspended);
        }
        self.suspended = true;
        if self.running == Some(Kind::Build) {
            self.cancel_running("suspended", cancelled_job_ends);
            let g = self.current.as_mut().expect("a build has a current generation");
            // Only a build the suspend did cancel is taken up again on resume; one
            // that ended on its own first was not cancelled by it.
            g.wanted = cancelled_job_ends == Ending::Cancelled;
        }
        Ok(())
    }

    fn resume(&mut self) -> Result<(), Error> {
        if !self.suspended {
            return Err(Error::NotSuspended);
        }
        self.suspended = false;
        let wanted =
            self.current.as_ref().is_some_and(|g| g.wanted && g.eval == EVALUATED && g.build != BUILT);
        if wanted && self.running.is_none() {
            self.start_build();
        }
        Ok(())
    }

    fn stop(&mut self, cancelled_job_ends: Ending) {
        // "Stop" means nothing is wanted any more, including a build queued while
        // suspended (DESIGN.md leaves this open; the machine documents it so).
        if let Some(g) = &mut self.current {
            g.wanted = false;
        }
        if self.running.is_some() {
            self.cancel_running("stopped", cancelled_job_ends);
        }
    }
}

// ---------------------------------------------------------------------------------
// check_machine: the checker acting as the driver of `Machine`.
// ---------------------------------------------------------------------------------

/// A generation as the driver's store holds it, built from `Record` actions only.
#[derive(Debug, Clone)]
struct Stored {
    eval: EvalStatus,
    build: BuildStatus,
    drv_path: String,
}

struct MachineDriver {
    machine: Machine,
    reference: Reference,
    /// The started job not yet ended, as the driver tracks it from the actions.
    running: Option<(JobId, JobKind, String)>,
    /// The reason of the `Cancel` action seen for the running job.
    cancelled: Option<CancelReason>,
    ended: Vec<JobId>,
    /// Uuid (and fake executor key) of every job started.
    seen_jobs: HashSet<JobId>,
    store: HashMap<String, Stored>,
    uuids: Vec<String>,
    step: usize,
    op: Op,
}

impl MachineDriver {
    fn fail(&self, rule: &str, detail: impl fmt::Display) -> ! {
        panic!("rule violated: {rule}\n  at step {} ({:?})\n  {detail}", self.step, self.op)
    }

    /// Performs every queued action, checking the driver-level invariants, and returns
    /// them as events. `finished`: the job whose completion was just handled, which
    /// must yield exactly one notification here; commands yield none of their own.
    fn drain(&mut self, finished: Option<(JobId, JobKind, String)>) -> Vec<Ev> {
        let mut evs = Vec::new();
        let mut notifications = 0;
        while let Some(action) = self.machine.poll_action() {
            match action {
                Action::StartEval { job, uuid } => {
                    if let Some(r) = &self.running {
                        self.fail("at most one job runs", format!("eval {job:?} started while {r:?} runs"));
                    }
                    if !self.seen_jobs.insert(job) {
                        self.fail("job ids are never reused", format!("{job:?}"));
                    }
                    if evs.last() != Some(&Ev::EvalStarted(uuid.clone())) {
                        self.fail("an evaluation is recorded as started before it starts", &uuid);
                    }
                    self.running = Some((job, JobKind::Eval, uuid.clone()));
                    self.cancelled = None;
                    evs.push(Ev::StartEval(uuid));
                }
                Action::StartBuild { job, uuid, drv_path } => {
                    if let Some(r) = &self.running {
                        self.fail("at most one job runs", format!("build {job:?} started while {r:?} runs"));
                    }
                    if !self.seen_jobs.insert(job) {
                        self.fail("job ids are never reused", format!("{job:?}"));
                    }
                    if self.machine.is_suspended() {
                        self.fail("no build starts while suspended", &uuid);
                    }
                    if self.machine.generation_uuid() != Some(uuid.as_str()) {
                        self.fail("only the current generation is built", &uuid);
                    }
                    match self.store.get(&uuid) {
                        Some(g) if g.eval == EvalStatus::Evaluated && g.drv_path == drv_path => {}
                        g => self.fail("only an evaluated generation is built", format!("{uuid}: {g:?}")),
                    }
                    if evs.last() != Some(&Ev::BuildStarted(uuid.clone(), crate::BUILD_REASON_NEED_BUILD)) {
                        self.fail("a build is recorded as started before it starts", &uuid);
                    }
                    self.running = Some((job, JobKind::Build, uuid.clone()));
                    self.cancelled = None;
                    evs.push(Ev::StartBuild(uuid, drv_path));
                }
                Action::Cancel { job, reason } => {
                    let Some((running, _, uuid)) = self.running.clone() else {
                        self.fail("only a running job is cancelled", format!("{job:?} while none runs"))
                    };
                    if running != job {
                        self.fail(
                            "only a running job is cancelled",
                            format!("{job:?} while {running:?} runs"),
                        );
                    }
                    if self.cancelled.is_some() {
                        self.fail("a job is cancelled once", format!("{job:?} again for {reason:?}"));
                    }
                    self.cancelled = Some(reason);
                    evs.push(Ev::Cancel(uuid));
                }
                Action::Record(record) => evs.push(self.apply_record(record)),
                Action::Notify(n) => {
                    notifications += 1;
                    let Some((_, kind, uuid)) = &finished else {
                        self.fail("only a job's end notifies", format!("{n:?} from a command"))
                    };
                    let ok = match (&n, kind) {
                        (Notification::EvaluationDone(u), JobKind::Eval) => u == uuid,
                        (Notification::BuildDone(u), _) => u == uuid,
                        _ => false,
                    };
                    if !ok {
                        self.fail(
                            "a job notifies for its own generation and kind",
                            format!("{n:?} for {finished:?}"),
                        );
                    }
                    evs.push(match n {
                        Notification::EvaluationDone(u) => Ev::EvaluationDone(u),
                        Notification::BuildDone(u) => Ev::BuildDone(u),
                    });
                }
            }
        }
        if finished.is_some() && notifications != 1 {
            self.fail(
                "every job ends with exactly one notification",
                format!("{finished:?} gave {notifications}"),
            );
        }
        evs
    }

    fn apply_record(&mut self, record: Record) -> Ev {
        let text = |r: Result<(), String>| r.map_err(Text::Exact);
        match record {
            Record::EvalStarted { uuid } => {
                let g = Stored {
                    eval: EvalStatus::Evaluating,
                    build: BuildStatus::Initialized,
                    drv_path: "".into(),
                };
                if self.store.insert(uuid.clone(), g).is_some() {
                    self.fail("a generation is created once", &uuid);
                }
                Ev::EvalStarted(uuid)
            }
            Record::EvalFinished { uuid, result } => {
                let g = self.stored(&uuid);
                if g.eval != EvalStatus::Evaluating {
                    self.fail(
                        "an evaluation finishes once, after it started",
                        format!("{uuid}: {:?}", g.eval),
                    );
                }
                let g = self.store.get_mut(&uuid).expect("checked above");
                match &result {
                    Ok(output) => {
                        g.eval = EvalStatus::Evaluated;
                        g.drv_path = output.drv_path.clone();
                    }
                    Err(_) => g.eval = EvalStatus::Failed,
                }
                Ev::EvalFinished(uuid, result.map_err(Text::Exact))
            }
            Record::BuildStarted { uuid, reason } => {
                let g = self.stored(&uuid);
                if g.eval != EvalStatus::Evaluated
                    || g.build == BuildStatus::Built
                    || g.build == BuildStatus::Building
                {
                    self.fail(
                        "a build starts only of an evaluated, unbuilt generation",
                        format!("{uuid}: {g:?}"),
                    );
                }
                self.store.get_mut(&uuid).expect("checked above").build = BuildStatus::Building;
                Ev::BuildStarted(uuid, reason.as_str())
            }
            Record::BuildFinished { uuid, result } => {
                if self.stored(&uuid).build != BuildStatus::Building {
                    self.fail("a build finishes once, after it started", &uuid);
                }
                let built = if result.is_ok() { BuildStatus::Built } else { BuildStatus::Failed };
                self.store.get_mut(&uuid).expect("checked above").build = built;
                Ev::BuildFinished(uuid, text(result))
            }
        }
    }

    fn stored(&self, uuid: &str) -> Stored {
        match self.store.get(uuid) {
            Some(g) => g.clone(),
            None => self.fail("records are about created generations", uuid),
        }
    }

    /// Hands the running job's end to the machine, as its worker would.
    fn finish_running(&mut self, ending: Ending, wrong_kind: bool) -> Vec<Ev> {
        let (job, kind, uuid) = self.running.clone().expect("a running job");
        let outcome = match (ending, kind == JobKind::Eval) {
            (Ending::Ok { out_path_valid }, is_eval) if is_eval != wrong_kind => {
                Outcome::Evaluated { output: fake_output(&uuid, out_path_valid), out_path_valid }
            }
            (Ending::Ok { .. }, _) => Outcome::Built,
            (Ending::Failed, _) => Outcome::Failed(JobError::Failed(fake_failure(&uuid))),
            (Ending::TimedOut, _) => Outcome::Failed(JobError::TimedOut(FAKE_TIMEOUT)),
            (Ending::Cancelled, _) => Outcome::Failed(JobError::Cancelled(self.cancelled.clone())),
        };
        if !self.machine.handle_finished(job, outcome) {
            self.fail("the running job's completion is accepted", format!("{job:?}"));
        }
        self.running = None;
        self.ended.push(job);
        self.drain(Some((job, kind, uuid)))
    }

    /// Runs `command` until it no longer asks to wait, ending each job it waits for
    /// with `ending` first, as the real driver does; a command waits once at most.
    fn settle(
        &mut self,
        what: &str,
        mut command: impl FnMut(&mut Machine) -> Step,
        ending: Ending,
        evs: &mut Vec<Ev>,
    ) {
        let mut waits = 0;
        while let Step::WaitFor(job) = command(&mut self.machine) {
            evs.extend(self.drain(None));
            waits += 1;
            if waits > 1 {
                self.fail("a command waits for one job at most", format!("{what} waits again for {job:?}"));
            }
            self.wait_for(job, ending, evs);
        }
        evs.extend(self.drain(None));
    }

    /// A command's `WaitFor(job)`: the job must be the running one, cancelled in this
    /// step; it ends with `ending`.
    fn wait_for(&mut self, job: JobId, ending: Ending, evs: &mut Vec<Ev>) {
        match &self.running {
            Some((running, ..)) if *running == job => {}
            r => self.fail("a command waits only for the running job", format!("{job:?} while {r:?} runs")),
        }
        if self.cancelled.is_none() {
            self.fail("a command waits only for a job it cancelled", format!("{job:?}"));
        }
        evs.extend(self.finish_running(ending, false));
    }

    fn apply(&mut self, op: Op) {
        let mut evs = Vec::new();
        let mut expected_result: Result<(), Error> = Ok(());
        let mut result: Result<(), Error> = Ok(());
        match op {
            Op::Eval { cancelled_job_ends } => {
                let uuid = format!("gen-{}", self.uuids.len());
                self.uuids.push(uuid.clone());
                self.settle("eval", |m| m.eval(&uuid), cancelled_job_ends, &mut evs);
                self.reference.eval(&uuid, &uuid, cancelled_job_ends);
            }
            Op::SubmitCurrent | Op::SubmitStale(_) | Op::SubmitUnknown => {
                let uuid = match op {
                    Op::SubmitCurrent => self.machine.generation_uuid().map(str::to_string),
                    Op::SubmitStale(back) => self.uuids.iter().rev().nth(1 + back as usize % 4).cloned(),
                    _ => None,
                };
                let uuid = uuid.unwrap_or_else(|| format!("unknown-{}", self.step));
                let stored = self.store.get(&uuid).map(|g| GenerationView {
                    eval: g.eval,
                    build: g.build,
                    drv_path: g.drv_path.clone(),
                });
                result = self.machine.submit_build(&uuid, stored);
                evs.extend(self.drain(None));
                expected_result = self.reference.submit_build(&uuid);
            }
            Op::Suspend { cancelled_job_ends } => {
                result = self.machine.suspend().map(|first| {
                    let mut first = Some(first);
                    let mut next = |m: &mut Machine| {
                        first.take().unwrap_or_else(|| m.wait_for_build_cancelled_by_suspend())
                    };
                    self.settle("suspend", &mut next, cancelled_job_ends, &mut evs);
                });
                evs.extend(self.drain(None));
                expected_result = self.reference.suspend(cancelled_job_ends);
            }
            Op::Resume => {
                result = self.machine.resume();
                evs.extend(self.drain(None));
                expected_result = self.reference.resume();
            }
            Op::Stop { cancelled_job_ends } => {
                self.settle("stop", Machine::stop, cancelled_job_ends, &mut evs);
                self.reference.stop(cancelled_job_ends);
            }
            Op::Complete { job, ending } => {
                let stale = match job {
                    Target::Running | Target::WrongKind if self.running.is_some() => None,
                    Target::Stale(back) if !self.ended.is_empty() => {
                        Some(self.ended[self.ended.len() - 1 - back as usize % self.ended.len()])
                    }
                    Target::Unknown(n) => Some(JobId(u64::MAX - n as u64)),
                    _ => Some(JobId(u64::MAX / 2)),
                };
                match stale {
                    None => {
                        evs.extend(self.finish_running(ending, job == Target::WrongKind));
                        self.reference.finish(ending, None, job == Target::WrongKind);
                    }
                    Some(id) => {
                        let outcome = Outcome::Failed(JobError::Failed("late".into()));
                        if self.machine.handle_finished(id, outcome) {
                            self.fail(
                                "a completion of a job that is not running is ignored",
                                format!("{id:?}"),
                            );
                        }
                        evs.extend(self.drain(None));
                    }
                }
            }
        }
        let expected = self.reference.take_evs();
        if evs != expected {
            self.fail(
                "the machine does what DESIGN.md's Semantics say",
                format!("expected {expected:#?}\n  got {evs:#?}"),
            );
        }
        if let Some((rule, detail)) = error_mismatch(&result, &expected_result) {
            self.fail(rule, detail);
        }
        self.check_state();
    }

    fn check_state(&self) {
        let r = &self.reference;
        let m = &self.machine;
        let want = (r.running == Some(Kind::Eval), r.running == Some(Kind::Build), r.suspended);
        let got = (m.is_evaluating(), m.is_building(), m.is_suspended());
        if want != got {
            self.fail("is_evaluating, is_building, is_suspended", format!("expected {want:?}, got {got:?}"));
        }
        if m.generation_uuid() != r.current.as_ref().map(|g| g.uuid.as_str()) {
            self.fail(
                "the current generation",
                format!("expected {:?}, got {:?}", r.current, m.generation_uuid()),
            );
        }
        if m.running_job().map(|(id, _)| id) != self.running.as_ref().map(|(id, ..)| *id) {
            self.fail("the running job is the last one started", format!("{:?}", m.running_job()));
        }
        // Once built, a wanted build is moot: the flag is not compared.
        let built = r.current.as_ref().is_some_and(|g| g.build == BUILT);
        let wanted = r.current.as_ref().is_some_and(|g| g.wanted);
        if !built && m.is_build_wanted() != wanted {
            self.fail(
                "a build is wanted exactly when submitted while suspended or cancelled by suspend",
                wanted,
            );
        }
        if let Some(g) = &r.current {
            let stored = self.stored(&g.uuid);
            let statuses = (stored.eval.as_str(), stored.build.as_str());
            if statuses != (g.eval, g.build) {
                self.fail(
                    "the current generation's statuses",
                    format!("expected {:?}, got {statuses:?}", (g.eval, g.build)),
                );
            }
        }
    }
}

/// Applies `ops` to a [`Machine`], acting as its driver, and panics, naming the rule,
/// on the first divergence from DESIGN.md. Ends with a `stop` so that every job
/// started has ended.
pub fn check_machine(ops: &[Op]) {
    let mut d = MachineDriver {
        machine: Machine::new(),
        reference: Reference::default(),
        running: None,
        cancelled: None,
        ended: Vec::new(),
        seen_jobs: HashSet::new(),
        store: HashMap::new(),
        uuids: Vec::new(),
        step: 0,
        op: Op::SubmitUnknown,
    };
    d.check_state();
    let last = Op::Stop { cancelled_job_ends: Ending::Cancelled };
    for (step, &op) in ops.iter().chain(std::iter::once(&last)).enumerate() {
        d.step = step;
        d.op = op;
        d.apply(op);
    }
    if d.running.is_some() || d.seen_jobs.len() != d.ended.len() {
        d.fail("every started job ends", format!("{} started, {} ended", d.seen_jobs.len(), d.ended.len()));
    }
}

// ---------------------------------------------------------------------------------
// check_builder: the same sequences against the threaded Builder.
// ---------------------------------------------------------------------------------

enum Directive {
    Finish(Ending),
    AwaitCancel,
}

/// A job of [`FakeExecutor`], as the checker sees it.
struct FakeJob {
    directive: Sender<Directive>,
}

/// Jobs block until the checker directs them; see the module documentation.
struct FakeExecutor {
    jobs: Sender<FakeJob>,
}

impl FakeExecutor {
    fn wait(&self, ctx: &JobContext) -> Result<Ending, JobError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.jobs
            .send(FakeJob { directive: tx })
            .map_err(|_| JobError::Failed("the checker is gone".into()))?;
        match rx.recv() {
            Ok(Directive::Finish(Ending::Failed)) => Err(JobError::Failed(String::new())),
            Ok(Directive::Finish(Ending::TimedOut)) => Err(JobError::TimedOut(FAKE_TIMEOUT)),
            Ok(Directive::Finish(Ending::Cancelled)) => Err(JobError::Cancelled(None)),
            Ok(Directive::Finish(ending)) => Ok(ending),
            Ok(Directive::AwaitCancel) | Err(_) => {
                let mut sleep = std::process::Command::new("sleep");
                sleep.arg("1000");
                ctx.run(sleep)?;
                Err(JobError::Failed("`sleep 1000` ended on its own".into()))
            }
        }
    }
}

impl Executor for FakeExecutor {
    fn eval(&self, req: &EvalRequest, ctx: &JobContext) -> Result<EvalOutput, JobError> {
        match self.wait(ctx) {
            Ok(Ending::Ok { out_path_valid }) => Ok(fake_output(&req.commit_id, out_path_valid)),
            Ok(_) => unreachable!("failures are errors"),
            Err(JobError::Failed(_)) => Err(JobError::Failed(fake_failure(&req.commit_id))),
            Err(e) => Err(e),
        }
    }

    fn build(&self, drv_path: &str, ctx: &JobContext) -> Result<(), JobError> {
        let key = drv_path.trim_start_matches("/nix/store/").trim_end_matches("-system.drv");
        match self.wait(ctx) {
            Ok(_) => Ok(()),
            Err(JobError::Failed(_)) => Err(JobError::Failed(fake_failure(key))),
            Err(e) => Err(e),
        }
    }

    fn is_store_path_valid(&self, path: &str) -> bool {
        path.ends_with("-valid")
    }
}

/// Runs the builder's calls on a thread of its own so that the checker can give up
/// on one that does not return.
struct Caller {
    calls: Option<Sender<Box<dyn FnOnce() + Send>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const CALL_BOUND: Duration = Duration::from_secs(10);

impl Caller {
    fn new() -> Caller {
        let (tx, rx) = crossbeam_channel::unbounded::<Box<dyn FnOnce() + Send>>();
        let thread = std::thread::Builder::new()
            .name("fuzz-caller".into())
            .spawn(move || rx.iter().for_each(|call| call()))
            .expect("cannot start the caller thread");
        Caller { calls: Some(tx), thread: Some(thread) }
    }

    fn call<R: Send + 'static>(&self, what: impl fmt::Display, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let call = Box::new(move || {
            let _ = tx.send(f());
        });
        self.calls.as_ref().expect("caller running").send(call).expect("the caller thread is alive");
        rx.recv_timeout(CALL_BOUND).unwrap_or_else(|_| panic!("deadlock: {what} did not return within 10 s"))
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        self.calls.take();
        // A caller stuck in a deadlocked call is left behind rather than hanging the
        // process; the panic already reported it.
        if let Some(thread) = self.thread.take() {
            if !std::thread::panicking() {
                let _ = thread.join();
            }
        }
    }
}

/// Threads the library started (all are named `genbuild-…`).
fn genbuild_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("genbuild"))
        .count()
}

/// Builder checks run one at a time per process, so that thread counts are theirs.
static BUILDER_CHECK: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// The longest sequence [`check_builder`] runs; the rest of a longer input is ignored
/// (every step costs real threads).
pub const BUILDER_MAX_OPS: usize = 64;

struct BuilderChecker {
    builder: Option<crate::Builder>,
    caller: Caller,
    reference: Reference,
    jobs: Receiver<FakeJob>,
    /// The running job's directive channel, once its worker called the executor.
    running: Option<FakeJob>,
    evaluation_done: Receiver<String>,
    build_done: Receiver<String>,
    events: Receiver<crate::proto::Event>,
    commits: u64,
    step: usize,
    op: Op,
}

impl BuilderChecker {
    fn fail(&self, rule: &str, detail: impl fmt::Display) -> ! {
        panic!("rule violated (builder): {rule}\n  at step {} ({:?})\n  {detail}", self.step, self.op)
    }

    fn builder(&self) -> crate::Builder {
        self.builder.clone().expect("the builder lives until the end")
    }

    /// The running job's directive channel (waiting for its worker to register).
    fn running_job(&mut self) -> &FakeJob {
        if self.running.is_none() {
            match self.jobs.recv_timeout(CALL_BOUND) {
                Ok(job) => self.running = Some(job),
                Err(_) => self.fail("a started job reaches the executor", "none within 10 s"),
            }
        }
        self.running.as_ref().expect("just set")
    }

    fn direct(&mut self, directive: Directive) {
        let job = self.running_job();
        if job.directive.send(directive).is_err() {
            self.fail("a job waits for its end", "the fake job is gone");
        }
        self.running = None;
    }

    fn apply(&mut self, op: Op) {
        // The builder always lets a cancellation win (see the module documentation).
        let op = match op {
            Op::Eval { .. } => Op::Eval { cancelled_job_ends: Ending::Cancelled },
            Op::Suspend { .. } => Op::Suspend { cancelled_job_ends: Ending::Cancelled },
            Op::Stop { .. } => Op::Stop { cancelled_job_ends: Ending::Cancelled },
            op => op,
        };
        if self.reference.cancels(&op) {
            self.direct(Directive::AwaitCancel);
        }
        let builder = self.builder();
        let what = format!("{op:?}");
        let mut result: Result<(), Error> = Ok(());
        let mut expected_result: Result<(), Error> = Ok(());
        match op {
            Op::Eval { cancelled_job_ends } => {
                self.commits += 1;
                let commit = format!("{:040x}", self.commits);
                let rs = crate::proto::RepositoryStatus {
                    selected_commit_id: commit.clone(),
                    ..Default::default()
                };
                match self.caller.call(what, move || builder.eval(&rs)) {
                    Ok(uuid) => self.reference.eval(&uuid, &commit, cancelled_job_ends),
                    Err(e) => self.fail("eval does not fail", e),
                }
            }
            Op::SubmitCurrent | Op::SubmitStale(_) | Op::SubmitUnknown => {
                let known = &self.reference.known;
                let uuid = match op {
                    Op::SubmitCurrent => self.reference.current.as_ref().map(|g| g.uuid.clone()),
                    Op::SubmitStale(back) => known.iter().rev().nth(1 + back as usize % 4).cloned(),
                    _ => None,
                };
                let uuid = uuid.unwrap_or_else(|| format!("00000000-0000-4000-8000-{:012}", self.step));
                let u = uuid.clone();
                result = self.caller.call(what, move || builder.submit_build(&u));
                expected_result = self.reference.submit_build(&uuid);
            }
            Op::Suspend { cancelled_job_ends } => {
                result = self.caller.call(what, move || builder.suspend());
                expected_result = self.reference.suspend(cancelled_job_ends);
            }
            Op::Resume => {
                result = self.caller.call(what, move || builder.resume());
                expected_result = self.reference.resume();
            }
            Op::Stop { cancelled_job_ends } => {
                self.caller.call(what, move || builder.stop());
                self.reference.stop(cancelled_job_ends);
            }
            Op::Complete { job: Target::Running, ending } if self.reference.running.is_some() => {
                self.direct(Directive::Finish(ending));
                self.reference.finish(ending, None, false);
            }
            // Stale, unknown and mistyped completions cannot reach a Builder: its
            // workers report only their own job, once.
            Op::Complete { .. } => {}
        }
        if let Some((rule, detail)) = error_mismatch(&result, &expected_result) {
            self.fail(rule, detail);
        }
        let expected: Vec<Ev> =
            self.reference.take_evs().into_iter().filter(Ev::is_visible_to_builder_check).collect();
        self.check_observed(&expected);
        self.check_state();
    }

    /// Compares what the caller's channels received with `expected`, waiting for the
    /// notifications a job's end sends from its worker.
    fn check_observed(&self, expected: &[Ev]) {
        for ev in expected {
            let (rx, uuid, name) = match ev {
                Ev::EvaluationDone(uuid) => (&self.evaluation_done, uuid, "evaluation_done"),
                Ev::BuildDone(uuid) => (&self.build_done, uuid, "build_done"),
                _ => continue,
            };
            match rx.recv_timeout(CALL_BOUND) {
                Ok(got) if &got == uuid => {}
                Ok(got) => self.fail("notifications in order", format!("{name}: expected {uuid}, got {got}")),
                Err(_) => {
                    self.fail("every job ends with exactly one notification", format!("no {name} for {uuid}"))
                }
            }
        }
        let extra: Vec<String> = self.evaluation_done.try_iter().chain(self.build_done.try_iter()).collect();
        if !extra.is_empty() {
            self.fail("every job ends with exactly one notification", format!("unexpected {extra:?}"));
        }
        let events: Vec<(&str, String)> = self
            .events
            .try_iter()
            .filter_map(|e| {
                use crate::proto::event::Kind as K;
                Some(match e.kind? {
                    K::EvalStarted(e) => ("eval started", e.generation?.uuid),
                    K::EvalFinished(e) => ("eval finished", e.generation?.uuid),
                    K::BuildStarted(e) => ("build started", e.generation?.uuid),
                    K::BuildFinished(e) => ("build finished", e.generation?.uuid),
                    _ => return None,
                })
            })
            .collect();
        let want: Vec<(&str, String)> = expected
            .iter()
            .filter_map(|ev| match ev {
                Ev::EvalStarted(u) => Some(("eval started", u.clone())),
                Ev::EvalFinished(u, _) => Some(("eval finished", u.clone())),
                Ev::BuildStarted(u, _) => Some(("build started", u.clone())),
                Ev::BuildFinished(u, _) => Some(("build finished", u.clone())),
                _ => None,
            })
            .collect();
        if events != want {
            self.fail(
                "every lifecycle event is published, in order",
                format!("expected {want:?}, got {events:?}"),
            );
        }
    }

    fn check_state(&self) {
        let builder = self.builder();
        let state = self.caller.call("state()", move || builder.state());
        let r = &self.reference;
        let want = (r.running == Some(Kind::Eval), r.running == Some(Kind::Build), r.suspended);
        let got = (
            state.is_evaluating.unwrap_or_default(),
            state.is_building.unwrap_or_default(),
            state.is_suspended.unwrap_or_default(),
        );
        if want != got {
            self.fail("is_evaluating, is_building, is_suspended", format!("expected {want:?}, got {got:?}"));
        }
        let uuid = r.current.as_ref().map(|g| g.uuid.clone()).unwrap_or_default();
        if state.generation_uuid != uuid {
            self.fail(
                "the current generation",
                format!("expected {uuid:?}, got {:?}", state.generation_uuid),
            );
        }
        let Some(g) = &r.current else { return };
        let Some(stored) = state.generation else {
            self.fail("the current generation is in the store", uuid)
        };
        let want = (g.eval, g.build, g.eval_err.clone(), g.build_err.clone());
        let got = (
            stored.eval_status.as_str(),
            stored.build_status.as_str(),
            Text::Exact(stored.eval_err.clone()),
            Text::Exact(stored.build_err.clone()),
        );
        if want.0 != got.0 || want.1 != got.1 || want.2 != got.2 || want.3 != got.3 {
            self.fail("the current generation as stored", format!("expected {want:?}, got {got:?}"));
        }
        if g.eval == EVALUATED && stored.drv_path != g.drv_path {
            self.fail(
                "the evaluation's output is recorded",
                format!("expected {}, got {}", g.drv_path, stored.drv_path),
            );
        }
    }
}

/// Applies `ops` (at most [`BUILDER_MAX_OPS`]) to a real [`Builder`](crate::Builder)
/// with the fake executor described in the module documentation; panics, naming the
/// rule, on a divergence from DESIGN.md, a call that does not return within 10 s, or
/// a thread left behind once the builder is dropped.
pub fn check_builder(ops: &[Op]) {
    let _one_at_a_time = BUILDER_CHECK.lock();
    let threads_before = genbuild_threads();
    let (jobs_tx, jobs) = crossbeam_channel::unbounded();
    let mut config = crate::BuilderConfig::new("fuzz-host", std::env::temp_dir());
    config.process.kill_grace = Duration::from_millis(500);
    let builder =
        crate::Builder::new(config, Arc::new(crate::Store::new()), Arc::new(FakeExecutor { jobs: jobs_tx }));
    let mut c = BuilderChecker {
        evaluation_done: builder.evaluation_done(),
        build_done: builder.build_done(),
        events: builder.subscribe(),
        builder: Some(builder),
        caller: Caller::new(),
        reference: Reference::default(),
        jobs,
        running: None,
        commits: 0,
        step: 0,
        op: Op::SubmitUnknown,
    };
    let last = Op::Stop { cancelled_job_ends: Ending::Cancelled };
    let ops = &ops[..ops.len().min(BUILDER_MAX_OPS)];
    for (step, &op) in ops.iter().chain(std::iter::once(&last)).enumerate() {
        c.step = step;
        c.op = op;
        c.apply(op);
    }
    let builder = c.builder.take().expect("the builder lives until the end");
    c.caller.call("drop(Builder)", move || drop(builder));
    if let Ok(job) = c.jobs.try_recv() {
        drop(job);
        c.fail("a job reaches the executor only when the reference starts one", "an extra job registered");
    }
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let now = genbuild_threads();
        if now <= threads_before {
            break;
        }
        if Instant::now() > deadline {
            panic!("rule violated (builder): no thread outlives the builder: {threads_before} before, {now} after");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------
// check_decode
// ---------------------------------------------------------------------------------

/// Decodes `bytes` as every message a caller or a store file can hand genbuild:
/// errors are fine, panics are not; a store file that does not decode is reported
/// naming the file and left as it was.
pub fn check_decode(bytes: &[u8]) {
    use crate::proto;
    if let Ok(m) = proto::RepositoryStatus::decode(bytes) {
        assert_eq!(
            proto::RepositoryStatus::decode(m.encode_to_vec().as_slice()).ok(),
            Some(m),
            "re-encoding"
        );
    }
    let _ = proto::Builder::decode(bytes);
    let _ = proto::Event::decode(bytes);
    let _ = proto::Generation::decode(bytes);

    static FILES: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "genbuild-fuzz-{}-{}.store",
        std::process::id(),
        FILES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, bytes).expect("cannot write the store file to decode");
    let opened = crate::Store::open(&path);
    match &opened {
        Ok(store) => {
            let _ = store.generations();
        }
        Err(
            e @ (crate::error::StoreError::Corrupt { .. } | crate::error::StoreError::NewerVersion { .. }),
        ) => {
            assert!(e.to_string().contains(&path.display().to_string()), "the error names the file: {e}");
            let left = std::fs::read(&path).expect("the corrupt store file is still there");
            assert_eq!(left, bytes, "a store file that does not decode is left untouched");
        }
        Err(e) => panic!("a store file that does not decode gives StoreError::Corrupt, got: {e}"),
    }
    drop(opened);
    let _ = std::fs::remove_file(&path);
}

/// The rule a command's result breaks, if any: exactly DESIGN.md's errors, with its
/// messages.
fn error_mismatch(
    result: &Result<(), Error>,
    expected: &Result<(), Error>,
) -> Option<(&'static str, String)> {
    if result != expected {
        return Some((
            "errors are exactly those of DESIGN.md",
            format!("expected {expected:?}, got {result:?}"),
        ));
    }
    match (result, expected) {
        (Err(e), Err(x)) if e.to_string() != x.to_string() => {
            Some(("error messages are DESIGN.md's", format!("expected {x}, got {e}")))
        }
        _ => None,
    }
}
