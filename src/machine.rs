//! The builder's rules as a pure state machine: no threads, clocks, channels or I/O.
//!
//! Every rule of the builder's semantics (the crate documentation states them) lives
//! here and only here. The threaded [`Builder`](crate::Builder) feeds the machine its
//! inputs (the callers' commands and the jobs' completions), performs the [`Action`]s it
//! asks for in order, and decides nothing itself. That split (quinn's `quinn-proto` /
//! `quinn`) lets the rules be unit tested and fuzzed without a process in sight.
//!
//! * Commands: [`Machine::eval`], [`Machine::submit_build`], [`Machine::suspend`],
//!   [`Machine::resume`], [`Machine::stop`] return what the caller must be told, and
//!   queue actions.
//! * Inputs: [`Machine::handle_finished`] takes a job's outcome.
//! * Outputs: [`Machine::poll_action`] drains the queued actions; the driver must drain
//!   them after every call, before releasing its lock.
//!
//! A command that finds a job in its way (an `eval` while a job runs, a `suspend`
//! while a build runs, a `stop`) queues the job's cancellation and returns
//! [`Step::WaitFor`]: the driver waits, without its lock, until the job's completion
//! has been handled, then calls `eval` or `suspend` again with the [`Wait`] it got
//! (a `stop` is done once its job ended).
//!
//! # Cancellation reasons, and why stop() wins
//!
//! A job cancelled while it takes its time to die (a build's grace period) may be
//! cancelled again for another reason. The machine records the strongest reason
//! given, `stopped` > `superseded by generation …` > `suspended`: it decides what the
//! job's error says, and whether its build is wanted again (only a build whose
//! strongest reason is the suspend is). The process is not signalled twice.
//!
//! `stop()` is stronger than every request made before it: it forgets every wanted
//! build (submitted while suspended, or cancelled by a suspend), and an `eval` still
//! waiting for a job when `stop` is called gives up with [`Error::Stopped`]. An `eval`
//! forgets the wanted builds of the generation it replaces too. So when the job a
//! `stop` waited for has ended, nothing starts.
//!
//! # Reused evaluations
//!
//! Whether an earlier evaluation stands in for a new one is the evaluation job's
//! business (the lookup and the `.drv`'s validity are I/O): the job reports its
//! [`Provenance`](crate::status::Provenance) with its outcome, and the machine carries it into the
//! [`Record::EvalFinished`] for the store, which keeps the index of reusable results.
//! A reused evaluation is otherwise an evaluation like any other: a job that can be
//! cancelled, then the "already built" shortcut or `evaluation_done`.

use std::collections::VecDeque;

use crate::error::{CancelReason, Error, JobError};
use crate::executor::EvalOutput;
use crate::process::ResourceUsage;
use crate::status::{BuildReason, BuildStatus, EvalStatus, Provenance};

/// Identifies one job (an evaluation or a build) for the machine's whole life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Eval,
    Build,
}

/// What the machine needs to know of a generation it does not track (one found in
/// the store, e.g. after a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationView {
    pub eval: EvalStatus,
    pub build: BuildStatus,
    pub drv_path: String,
}

/// How a job ended, as the job reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An evaluation succeeded, or an earlier one was reused (`provenance`);
    /// `already_built` says whether its output is already in the store (asked by the
    /// job, since that is I/O).
    Evaluated { output: EvalOutput, already_built: bool, provenance: Provenance },
    /// A build succeeded.
    Built,
    /// The job failed, timed out or was cancelled.
    Failed(JobError),
}

/// A job's end as the machine takes it: how it ended, and what its commands used (the
/// machine only carries that into the record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub outcome: Outcome,
    pub usage: Option<ResourceUsage>,
}

impl From<Outcome> for Finished {
    fn from(outcome: Outcome) -> Finished {
        Finished { outcome, usage: None }
    }
}

/// A change the driver writes to the store. `R` is the caller's evaluation request,
/// carried untouched from [`Machine::eval`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<R> {
    EvalStarted {
        uuid: String,
        request: R,
    },
    /// A successful evaluation records where its result comes from; what the job's
    /// commands used, if it ran any.
    EvalFinished {
        uuid: String,
        result: Result<(EvalOutput, Provenance), String>,
        usage: Option<ResourceUsage>,
    },
    BuildStarted {
        uuid: String,
        reason: BuildReason,
    },
    BuildFinished {
        uuid: String,
        result: Result<(), String>,
        usage: Option<ResourceUsage>,
    },
}

/// A message the driver sends to the caller's channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    EvaluationDone(String),
    BuildDone(String),
}

/// What the driver must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<R> {
    /// Start evaluating `request` as generation `uuid`, as job `job`.
    StartEval { job: JobId, uuid: String, request: R },
    /// Start building `drv_path` of generation `uuid` as job `job`.
    StartBuild { job: JobId, uuid: String, drv_path: String },
    /// Cancel a running job; its completion still comes through `handle_finished`.
    Cancel { job: JobId, reason: CancelReason },
    /// Write to the store (and tell subscribers).
    Record(Record<R>),
    /// Send on `evaluation_done` / `build_done`.
    Notify(Notification),
}

/// A command's wait for what is in its way: hand it back to the command once that is
/// over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// What to wait for.
    pub until: Until,
    /// How many stops had begun when the command was first called.
    stops: u64,
}

/// What a waiting command waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The end of this job (its completion handled).
    JobEnded(JobId),
    /// The end of every stop under way ([`Machine::stop_end`]).
    StopsEnded,
}

impl Wait {
    /// The job waited for, if it is one.
    pub fn job(&self) -> Option<JobId> {
        match self.until {
            Until::JobEnded(job) => Some(job),
            Until::StopsEnded => None,
        }
    }
}

/// What a command tells its caller when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// Done; the queued actions carry it out.
    Done,
    /// Something is in the way (a job, which has been cancelled, or a stop under way):
    /// wait until it is over, then call the command again with this (`stop_begin`:
    /// wait for the job, then call [`Machine::stop_end`]).
    WaitFor(Wait),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Current {
    uuid: String,
    eval: EvalStatus,
    build: BuildStatus,
    drv_path: String,
    /// A build was asked for (submitted while suspended, or cancelled by a suspend)
    /// and starts as soon as the builder is resumed and idle.
    build_wanted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Running {
    id: JobId,
    kind: JobKind,
    /// The strongest reason it was cancelled for.
    cancelled: Option<CancelReason>,
}

/// The builder's state. See the module documentation. `R`: the evaluation request
/// the driver wants back in [`Action::StartEval`] and [`Record::EvalStarted`].
#[derive(Debug)]
pub struct Machine<R> {
    current: Option<Current>,
    running: Option<Running>,
    suspended: bool,
    next_job: u64,
    /// Stops begun so far ([`Machine::stop_begin`], once per `stop()`): a waiting
    /// `eval` older than the last one gives up.
    stops: u64,
    /// Stops under way (begun, not ended): no job starts meanwhile.
    stopping: u32,
    actions: VecDeque<Action<R>>,
}

impl<R: Clone> Default for Machine<R> {
    fn default() -> Self {
        Machine::new()
    }
}

impl<R: Clone> Machine<R> {
    pub fn new() -> Machine<R> {
        Machine {
            current: None,
            running: None,
            suspended: false,
            next_job: 0,
            stops: 0,
            stopping: 0,
            actions: VecDeque::new(),
        }
    }

    // ---- getters ----

    pub fn is_evaluating(&self) -> bool {
        self.running.as_ref().is_some_and(|r| r.kind == JobKind::Eval)
    }

    pub fn is_building(&self) -> bool {
        self.running.as_ref().is_some_and(|r| r.kind == JobKind::Build)
    }

    pub fn is_suspended(&self) -> bool {
        self.suspended
    }

    /// The current generation: the last one evaluated, or the one a build was
    /// submitted for.
    pub fn generation_uuid(&self) -> Option<&str> {
        self.current.as_ref().map(|c| c.uuid.as_str())
    }

    /// The running job, if any.
    pub fn running_job(&self) -> Option<(JobId, JobKind)> {
        self.running.as_ref().map(|r| (r.id, r.kind))
    }

    /// Whether a stop is under way ([`Machine::stop_begin`] without its `stop_end`).
    pub fn is_stopping(&self) -> bool {
        self.stopping > 0
    }

    /// Whether a build of the current generation waits for `resume` or for the
    /// running job to end.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn is_build_wanted(&self) -> bool {
        self.current.as_ref().is_some_and(|c| c.build_wanted)
    }

    // ---- commands ----

    /// Evaluate `request` as a new generation `uuid`: cancels whatever runs and waits
    /// for it, then makes `uuid` current and starts its evaluation. `waited`: the
    /// [`Wait`] this same call got before.
    ///
    /// While a stop is under way, the evaluation waits until it ended ([`Until::StopsEnded`]).
    ///
    /// # Errors
    /// [`Error::Stopped`] when a stop began while this call waited (for a job, or for
    /// an earlier stop): the generation is not created.
    pub fn eval(&mut self, uuid: &str, request: &R, waited: Option<Wait>) -> Result<Step, Error> {
        let stops = match waited {
            Some(wait) if wait.stops != self.stops => return Err(Error::Stopped),
            Some(wait) => wait.stops,
            None => self.stops,
        };
        if let Some(current) = &mut self.current {
            current.build_wanted = false;
        }
        if let Some(job) = self.cancel_running(CancelReason::Superseded(uuid.to_string()), |_| true) {
            return Ok(Step::WaitFor(Wait { until: Until::JobEnded(job), stops }));
        }
        if self.stopping > 0 {
            return Ok(Step::WaitFor(Wait { until: Until::StopsEnded, stops }));
        }
        self.current = Some(Current {
            uuid: uuid.to_string(),
            eval: EvalStatus::Evaluating,
            build: BuildStatus::Initialized,
            drv_path: String::new(),
            build_wanted: false,
        });
        let job = self.new_job(JobKind::Eval);
        let (uuid, request) = (uuid.to_string(), request.clone());
        self.actions
            .push_back(Action::Record(Record::EvalStarted { uuid: uuid.clone(), request: request.clone() }));
        self.actions.push_back(Action::StartEval { job, uuid, request });
        Ok(Step::Done)
    }

    /// Build generation `uuid`. `stored` is the store's view of it, used only when it
    /// is not the current generation.
    pub fn submit_build(&mut self, uuid: &str, stored: Option<GenerationView>) -> Result<(), Error> {
        let view = match &self.current {
            Some(c) if c.uuid != uuid => return Err(Error::AnotherGeneration),
            Some(c) => GenerationView { eval: c.eval, build: c.build, drv_path: c.drv_path.clone() },
            None => stored.ok_or_else(|| Error::UnknownGeneration(uuid.to_string()))?,
        };
        if view.eval != EvalStatus::Evaluated {
            return Err(Error::NotEvaluated);
        }
        if self.is_building() {
            return Err(Error::AlreadyBuilding);
        }
        if view.build == BuildStatus::Built {
            return Err(Error::AlreadyBuilt);
        }
        let current = self.current.get_or_insert_with(|| Current {
            uuid: uuid.to_string(),
            eval: view.eval,
            build: view.build,
            drv_path: view.drv_path,
            build_wanted: false,
        });
        current.build_wanted = true;
        self.start_wanted_build();
        Ok(())
    }

    /// Suspend: refuse builds until [`Machine::resume`]; a running build is cancelled
    /// and will be started again on resume. A running evaluation continues.
    /// `waited`: the [`Wait`] this same call got before (the suspension is then in
    /// effect already, unless a `resume` came meanwhile).
    pub fn suspend(&mut self, waited: Option<Wait>) -> Result<Step, Error> {
        if waited.is_none() {
            if self.suspended {
                return Err(Error::AlreadySuspended);
            }
            self.suspended = true;
        }
        if !self.suspended {
            return Ok(Step::Done);
        }
        let stops = waited.map_or(self.stops, |w| w.stops);
        match self.cancel_running(CancelReason::Suspended, |r| r.kind == JobKind::Build) {
            Some(job) => Ok(Step::WaitFor(Wait { until: Until::JobEnded(job), stops })),
            None => Ok(Step::Done),
        }
    }

    /// Resume: build the current generation if a build of it was asked for.
    pub fn resume(&mut self) -> Result<(), Error> {
        if !self.suspended {
            return Err(Error::NotSuspended);
        }
        self.suspended = false;
        self.start_wanted_build();
        Ok(())
    }

    /// Begins a stop: cancels whatever runs and forgets every wanted build; an `eval`
    /// waiting now gives up. Until the matching [`Machine::stop_end`], no job starts:
    /// an `eval` waits for the stop's end, a build that would start ends at once,
    /// "cancelled: stopped". The caller waits for the job it is given, if any, then
    /// ends the stop.
    pub fn stop_begin(&mut self) -> Step {
        self.stops += 1;
        self.stopping += 1;
        if let Some(current) = &mut self.current {
            current.build_wanted = false;
        }
        match self.cancel_running(CancelReason::Stopped, |_| true) {
            Some(job) => Step::WaitFor(Wait { until: Until::JobEnded(job), stops: self.stops }),
            None => Step::Done,
        }
    }

    /// Ends a stop [`Machine::stop_begin`] began, once the job it waited for ended.
    /// A build wanted meanwhile (submitted while suspended) is forgotten: when the last
    /// stop under way ends, nothing runs and nothing is wanted but what the caller's
    /// own job does (a stop called from inside it cannot wait for it).
    pub fn stop_end(&mut self) {
        debug_assert!(self.stopping > 0, "stop_end without stop_begin");
        self.stopping = self.stopping.saturating_sub(1);
        if let Some(current) = &mut self.current {
            current.build_wanted = false;
        }
    }

    // ---- inputs ----

    /// A job ended. Completions of jobs that are not running (stale, duplicated) are
    /// ignored and return false.
    pub fn handle_finished(&mut self, job: JobId, finished: impl Into<Finished>) -> bool {
        let Finished { outcome, usage } = finished.into();
        let Some(running) = self.running.take_if(|r| r.id == job) else { return false };
        let current = self.current.as_mut().expect("a running job has a current generation");
        let uuid = current.uuid.clone();
        let error_text = |e: &JobError| match (e, &running.cancelled) {
            (JobError::Cancelled(_), Some(reason)) => JobError::Cancelled(Some(reason.clone())).to_string(),
            _ => e.to_string(),
        };
        let mut record = |record| self.actions.push_back(Action::Record(record));
        let notification = match (running.kind, outcome) {
            (JobKind::Eval, Outcome::Evaluated { output, already_built, provenance }) => {
                current.eval = EvalStatus::Evaluated;
                current.drv_path = output.drv_path.clone();
                record(Record::EvalFinished { uuid: uuid.clone(), result: Ok((output, provenance)), usage });
                if already_built {
                    current.build = BuildStatus::Built;
                    let reason = BuildReason::AlreadyBuilt;
                    record(Record::BuildStarted { uuid: uuid.clone(), reason });
                    record(Record::BuildFinished { uuid: uuid.clone(), result: Ok(()), usage: None });
                    Notification::BuildDone(uuid)
                } else {
                    Notification::EvaluationDone(uuid)
                }
            }
            (JobKind::Eval, Outcome::Failed(e)) => {
                current.eval = EvalStatus::Failed;
                record(Record::EvalFinished { uuid: uuid.clone(), result: Err(error_text(&e)), usage });
                Notification::EvaluationDone(uuid)
            }
            (JobKind::Build, Outcome::Built) => {
                current.build = BuildStatus::Built;
                record(Record::BuildFinished { uuid: uuid.clone(), result: Ok(()), usage });
                Notification::BuildDone(uuid)
            }
            (JobKind::Build, Outcome::Failed(e)) => {
                current.build = BuildStatus::Failed;
                // Only a build the suspend cancelled, and nothing stronger since, is
                // built again on resume; one that failed on its own before the cancel
                // landed is not.
                if let (JobError::Cancelled(_), Some(CancelReason::Suspended)) = (&e, &running.cancelled) {
                    current.build_wanted = true;
                }
                record(Record::BuildFinished { uuid: uuid.clone(), result: Err(error_text(&e)), usage });
                Notification::BuildDone(uuid)
            }
            (kind, outcome) => {
                // A job reporting the other kind's success is a bug in the driver;
                // record it as a failure so the job still ends with its notification.
                let e = JobError::Failed(format!("internal error: a {kind:?} job reported {outcome:?}"));
                self.running = Some(running);
                return self.handle_finished(job, Finished { outcome: Outcome::Failed(e), usage });
            }
        };
        self.actions.push_back(Action::Notify(notification));
        self.start_wanted_build();
        true
    }

    // ---- outputs ----

    /// The next action to perform, in order.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action<R>> {
        self.actions.pop_front()
    }

    // ---- internals ----

    fn new_job(&mut self, kind: JobKind) -> JobId {
        self.next_job += 1;
        let id = JobId(self.next_job);
        self.running = Some(Running { id, kind, cancelled: None });
        id
    }

    /// Cancels the running job if `which` selects it and returns its id. The process
    /// is cancelled once; a stronger reason given later replaces the recorded one.
    fn cancel_running(&mut self, reason: CancelReason, which: impl Fn(&Running) -> bool) -> Option<JobId> {
        let running = self.running.as_mut().filter(|r| which(r))?;
        match &running.cancelled {
            None => {
                running.cancelled = Some(reason.clone());
                self.actions.push_back(Action::Cancel { job: running.id, reason });
            }
            Some(earlier) if strength(&reason) > strength(earlier) => running.cancelled = Some(reason),
            Some(_) => {}
        }
        Some(running.id)
    }

    fn start_wanted_build(&mut self) {
        if self.suspended || self.running.is_some() {
            return;
        }
        let Some(current) = self.current.as_mut() else { return };
        if !current.build_wanted
            || current.eval != EvalStatus::Evaluated
            || current.build == BuildStatus::Built
        {
            return;
        }
        current.build_wanted = false;
        current.build = BuildStatus::Building;
        let (uuid, drv_path) = (current.uuid.clone(), current.drv_path.clone());
        let job = self.new_job(JobKind::Build);
        let reason = BuildReason::NeedBuild;
        self.actions.push_back(Action::Record(Record::BuildStarted { uuid: uuid.clone(), reason }));
        if self.stopping > 0 {
            // No job starts while a stop is under way: the build ends at once, as if
            // the stop had cancelled it.
            self.running.as_mut().expect("just started").cancelled = Some(CancelReason::Stopped);
            self.handle_finished(job, Outcome::Failed(JobError::Cancelled(Some(CancelReason::Stopped))));
            return;
        }
        self.actions.push_back(Action::StartBuild { job, uuid, drv_path });
    }
}

/// Which of two reasons a job cancelled twice records: stopped > superseded > suspended.
fn strength(reason: &CancelReason) -> u8 {
    match reason {
        CancelReason::Suspended => 1,
        CancelReason::Superseded(_) => 2,
        CancelReason::Stopped => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output() -> EvalOutput {
        EvalOutput {
            drv_path: "/nix/store/x.drv".into(),
            out_path: "/nix/store/x".into(),
            machine_id: String::new(),
        }
    }

    /// The provenance of an evaluation that ran, with no reuse key.
    fn fresh() -> Provenance {
        Provenance::Evaluated { key: None }
    }

    /// A successful evaluation's outcome.
    fn evaluation(already_built: bool) -> Outcome {
        Outcome::Evaluated { output: output(), already_built, provenance: fresh() }
    }

    type M = Machine<String>;

    fn eval(m: &mut M, uuid: &str) -> Step {
        m.eval(uuid, &format!("rs of {uuid}"), None).expect("eval is not refused")
    }

    fn job_of(step: Step) -> Option<JobId> {
        match step {
            Step::WaitFor(wait) => wait.job(),
            Step::Done => None,
        }
    }

    fn drain(m: &mut M) -> Vec<Action<String>> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }

    fn started_job(actions: &[Action<String>]) -> JobId {
        actions
            .iter()
            .find_map(|a| match a {
                Action::StartEval { job, .. } | Action::StartBuild { job, .. } => Some(*job),
                _ => None,
            })
            .expect("a job was started")
    }

    /// A machine whose generation "g1" is evaluated (not built).
    fn evaluated() -> M {
        let mut m = M::new();
        assert_eq!(eval(&mut m, "g1"), Step::Done);
        let job = started_job(&drain(&mut m));
        assert!(m.handle_finished(job, evaluation(false)));
        drain(&mut m);
        m
    }

    /// `evaluated()` with a build of it running; returns the build's job.
    fn building() -> (M, JobId) {
        let mut m = evaluated();
        m.submit_build("g1", None).unwrap();
        let job = started_job(&drain(&mut m));
        (m, job)
    }

    fn record(uuid: &str, result: Result<(), String>) -> Action<String> {
        Action::Record(Record::BuildFinished { uuid: uuid.into(), result, usage: None })
    }

    #[test]
    fn eval_records_then_starts_and_marks_evaluating() {
        let mut m = M::new();
        assert_eq!(eval(&mut m, "g1"), Step::Done);
        assert_eq!(
            drain(&mut m),
            [
                Action::Record(Record::EvalStarted { uuid: "g1".into(), request: "rs of g1".into() }),
                Action::StartEval { job: JobId(1), uuid: "g1".into(), request: "rs of g1".into() }
            ]
        );
        assert!(m.is_evaluating() && !m.is_building());
        assert_eq!(m.generation_uuid(), Some("g1"));
    }

    #[test]
    fn successful_eval_records_and_notifies_evaluation_done() {
        let mut m = M::new();
        let _ = eval(&mut m, "g1");
        let job = started_job(&drain(&mut m));
        m.handle_finished(job, evaluation(false));
        assert_eq!(
            drain(&mut m),
            [
                Action::Record(Record::EvalFinished {
                    uuid: "g1".into(),
                    result: Ok((output(), fresh())),
                    usage: None
                }),
                Action::Notify(Notification::EvaluationDone("g1".into())),
            ]
        );
        assert!(!m.is_evaluating());
    }

    #[test]
    fn an_output_already_valid_is_recorded_built_and_notified_on_build_done() {
        let mut m = M::new();
        let _ = eval(&mut m, "g1");
        let job = started_job(&drain(&mut m));
        m.handle_finished(job, evaluation(true));
        assert_eq!(
            drain(&mut m),
            [
                Action::Record(Record::EvalFinished {
                    uuid: "g1".into(),
                    result: Ok((output(), fresh())),
                    usage: None
                }),
                Action::Record(Record::BuildStarted { uuid: "g1".into(), reason: BuildReason::AlreadyBuilt }),
                record("g1", Ok(())),
                Action::Notify(Notification::BuildDone("g1".into())),
            ]
        );
        assert_eq!(m.submit_build("g1", None), Err(Error::AlreadyBuilt));
    }

    #[test]
    fn a_reused_evaluation_is_recorded_with_its_source_and_ends_as_any_evaluation() {
        for already_built in [false, true] {
            let mut m = M::new();
            let _ = eval(&mut m, "g2");
            let job = started_job(&drain(&mut m));
            let provenance = Provenance::Reused { key: "k".into(), from: "g1".into() };
            let outcome =
                Outcome::Evaluated { output: output(), already_built, provenance: provenance.clone() };
            assert!(m.handle_finished(job, outcome));
            let actions = drain(&mut m);
            assert_eq!(
                actions[0],
                Action::Record(Record::EvalFinished {
                    uuid: "g2".into(),
                    result: Ok((output(), provenance)),
                    usage: None
                })
            );
            let done = if already_built {
                Notification::BuildDone("g2".into())
            } else {
                Notification::EvaluationDone("g2".into())
            };
            assert_eq!(actions.last(), Some(&Action::Notify(done)));
            assert!(!m.is_evaluating());
            let expected = if already_built { Err(Error::AlreadyBuilt) } else { Ok(()) };
            assert_eq!(m.submit_build("g2", None), expected);
        }
    }

    #[test]
    fn failed_eval_records_the_error_and_notifies_evaluation_done() {
        let mut m = M::new();
        let _ = eval(&mut m, "g1");
        let job = started_job(&drain(&mut m));
        m.handle_finished(job, Outcome::Failed(JobError::TimedOut(std::time::Duration::from_secs(2))));
        assert_eq!(
            drain(&mut m),
            [
                Action::Record(Record::EvalFinished {
                    uuid: "g1".into(),
                    result: Err("timed out after 2s".into()),
                    usage: None
                }),
                Action::Notify(Notification::EvaluationDone("g1".into())),
            ]
        );
        assert_eq!(m.submit_build("g1", None), Err(Error::NotEvaluated));
    }

    #[test]
    fn eval_while_a_job_runs_cancels_it_once_and_waits() {
        let mut m = M::new();
        let _ = eval(&mut m, "g1");
        let job = started_job(&drain(&mut m));
        assert_eq!(job_of(eval(&mut m, "g2")), Some(job));
        let superseded = CancelReason::Superseded("g2".into());
        assert_eq!(drain(&mut m), [Action::Cancel { job, reason: superseded }]);
        assert_eq!(job_of(eval(&mut m, "g3")), Some(job), "a second eval waits for the same job");
        assert_eq!(drain(&mut m), [], "and does not cancel it again");
        m.handle_finished(job, Outcome::Failed(JobError::Cancelled(None)));
        let err = "cancelled: superseded by generation g2".to_string();
        assert_eq!(
            drain(&mut m),
            [
                Action::Record(Record::EvalFinished { uuid: "g1".into(), result: Err(err), usage: None }),
                Action::Notify(Notification::EvaluationDone("g1".into())),
            ]
        );
        assert_eq!(eval(&mut m, "g3"), Step::Done);
        assert_eq!(m.generation_uuid(), Some("g3"));
    }

    #[test]
    fn eval_preempts_a_build() {
        let (mut m, job) = building();
        assert_eq!(job_of(eval(&mut m, "g2")), Some(job));
        assert_eq!(drain(&mut m), [Action::Cancel { job, reason: CancelReason::Superseded("g2".into()) }]);
        m.handle_finished(job, Outcome::Failed(JobError::Cancelled(None)));
        let err = "cancelled: superseded by generation g2".to_string();
        assert_eq!(
            drain(&mut m),
            [record("g1", Err(err)), Action::Notify(Notification::BuildDone("g1".into()))]
        );
    }

    #[test]
    fn submit_build_starts_a_build_of_the_evaluated_generation() {
        let mut m = evaluated();
        m.submit_build("g1", None).unwrap();
        assert_eq!(
            drain(&mut m),
            [
                Action::Record(Record::BuildStarted { uuid: "g1".into(), reason: BuildReason::NeedBuild }),
                Action::StartBuild { job: JobId(2), uuid: "g1".into(), drv_path: "/nix/store/x.drv".into() },
            ]
        );
        assert!(m.is_building());
        m.handle_finished(JobId(2), Outcome::Built);
        assert_eq!(
            drain(&mut m),
            [record("g1", Ok(())), Action::Notify(Notification::BuildDone("g1".into()))]
        );
        assert_eq!(m.submit_build("g1", None).unwrap_err().to_string(), "the generation is already built");
    }

    #[test]
    fn submit_build_errors_in_order_with_their_messages() {
        let mut m = M::new();
        let msg = |r: Result<(), Error>| r.unwrap_err().to_string();
        assert_eq!(msg(m.submit_build("u", None)), "no generation with uuid u has been found");
        let _ = eval(&mut m, "g1");
        drain(&mut m);
        assert_eq!(msg(m.submit_build("other", None)), "another generation is evaluating or evaluated");
        assert_eq!(msg(m.submit_build("g1", None)), "the generation is not evaluated");
        m.handle_finished(JobId(1), evaluation(false));
        m.submit_build("g1", None).unwrap();
        assert_eq!(msg(m.submit_build("g1", None)), "the builder is already building");
        m.handle_finished(JobId(2), Outcome::Built);
        assert_eq!(msg(m.submit_build("g1", None)), "the generation is already built");
    }

    #[test]
    fn a_stored_generation_becomes_current_when_submitted() {
        let mut m = M::new();
        let view = |eval, build| Some(GenerationView { eval, build, drv_path: "/nix/store/s.drv".into() });
        assert_eq!(
            m.submit_build("s", view(EvalStatus::Failed, BuildStatus::Initialized)),
            Err(Error::NotEvaluated)
        );
        assert_eq!(
            m.submit_build("s", view(EvalStatus::Evaluated, BuildStatus::Built)),
            Err(Error::AlreadyBuilt)
        );
        assert_eq!(m.generation_uuid(), None, "a refused submission changes nothing");
        m.submit_build("s", view(EvalStatus::Evaluated, BuildStatus::Failed)).unwrap();
        assert_eq!(m.generation_uuid(), Some("s"));
        assert!(drain(&mut m).contains(&Action::StartBuild {
            job: JobId(1),
            uuid: "s".into(),
            drv_path: "/nix/store/s.drv".into()
        }));
    }

    #[test]
    fn a_failed_build_can_be_submitted_again() {
        let (mut m, job) = building();
        m.handle_finished(job, Outcome::Failed(JobError::Failed("boom".into())));
        assert_eq!(
            drain(&mut m),
            [record("g1", Err("boom".into())), Action::Notify(Notification::BuildDone("g1".into()))]
        );
        m.submit_build("g1", None).unwrap();
        assert!(m.is_building());
    }

    #[test]
    fn suspend_twice_and_resume_unsuspended_are_refused() {
        let mut m = M::new();
        assert_eq!(m.resume().unwrap_err().to_string(), "the builder is not suspended");
        assert_eq!(m.suspend(None), Ok(Step::Done));
        assert_eq!(m.suspend(None).unwrap_err().to_string(), "the builder is already suspended");
        assert!(m.is_suspended());
        m.resume().unwrap();
        assert!(!m.is_suspended());
    }

    #[test]
    fn a_build_submitted_while_suspended_waits_for_resume() {
        let mut m = evaluated();
        let _ = m.suspend(None).unwrap();
        m.submit_build("g1", None).unwrap();
        assert_eq!(drain(&mut m), []);
        assert!(m.is_build_wanted() && !m.is_building());
        m.resume().unwrap();
        assert!(m.is_building());
    }

    #[test]
    fn suspend_lets_an_evaluation_run_and_resume_builds_nothing_unsubmitted() {
        let mut m = M::new();
        let _ = eval(&mut m, "g1");
        drain(&mut m);
        assert_eq!(m.suspend(None), Ok(Step::Done));
        assert_eq!(drain(&mut m), [], "the evaluation is not cancelled");
        m.handle_finished(JobId(1), evaluation(false));
        drain(&mut m);
        m.resume().unwrap();
        assert_eq!(drain(&mut m), []);
        assert!(!m.is_building());
    }

    #[test]
    fn suspend_cancels_a_build_which_resume_starts_again() {
        let (mut m, job) = building();
        let Ok(Step::WaitFor(wait)) = m.suspend(None) else { panic!("suspend waits for the build") };
        assert_eq!(wait.job(), Some(job));
        assert_eq!(drain(&mut m), [Action::Cancel { job, reason: CancelReason::Suspended }]);
        m.handle_finished(job, Outcome::Failed(JobError::Cancelled(None)));
        let err = "cancelled: suspended".to_string();
        assert_eq!(
            drain(&mut m),
            [record("g1", Err(err)), Action::Notify(Notification::BuildDone("g1".into()))]
        );
        assert!(!m.is_building(), "not restarted while suspended");
        assert_eq!(m.suspend(Some(wait)), Ok(Step::Done));
        m.resume().unwrap();
        assert!(matches!(drain(&mut m).last(), Some(Action::StartBuild { .. })));
    }

    #[test]
    fn a_build_that_fails_on_its_own_before_the_suspend_lands_is_not_rebuilt() {
        let (mut m, job) = building();
        let _ = m.suspend(None).unwrap();
        m.handle_finished(job, Outcome::Failed(JobError::Failed("exit 1".into())));
        assert_eq!(
            drain(&mut m)[1..],
            [record("g1", Err("exit 1".into())), Action::Notify(Notification::BuildDone("g1".into()))]
        );
        m.resume().unwrap();
        assert_eq!(drain(&mut m), [], "nobody asked for this build again");
    }

    #[test]
    fn resume_before_the_cancelled_build_ended_restarts_it_when_it_ends() {
        let (mut m, job) = building();
        let _ = m.suspend(None).unwrap();
        m.resume().unwrap();
        drain(&mut m);
        assert!(m.is_building(), "the cancelled job still runs");
        m.handle_finished(job, Outcome::Failed(JobError::Cancelled(None)));
        assert!(matches!(drain(&mut m).last(), Some(Action::StartBuild { .. })));
    }

    #[test]
    fn stop_cancels_whatever_runs_and_forgets_wanted_builds() {
        let (mut m, job) = building();
        assert_eq!(job_of(m.stop_begin()), Some(job));
        assert_eq!(drain(&mut m), [Action::Cancel { job, reason: CancelReason::Stopped }]);
        m.handle_finished(job, Outcome::Failed(JobError::Cancelled(None)));
        assert_eq!(
            drain(&mut m),
            [
                record("g1", Err("cancelled: stopped".into())),
                Action::Notify(Notification::BuildDone("g1".into()))
            ]
        );
        m.stop_end();
        assert_eq!(m.stop_begin(), Step::Done, "stop twice is harmless");
        m.stop_end();
        let (mut m, job) = building();
        let _ = m.stop_begin();
        assert_eq!(m.suspend(None).map(job_of), Ok(Some(job)), "suspend during a stop waits for it");
        m.handle_finished(job, Outcome::Failed(JobError::Cancelled(None)));
        m.stop_end();
        m.resume().unwrap();
        assert!(!m.is_building(), "but does not revive the stopped build");
        let mut m = evaluated();
        let _ = m.suspend(None).unwrap();
        m.submit_build("g1", None).unwrap();
        assert_eq!(m.stop_begin(), Step::Done);
        m.stop_end();
        m.resume().unwrap();
        assert!(!m.is_building(), "a stop forgets the build submitted while suspended");
        assert_eq!(eval(&mut m, "g2"), Step::Done, "the machine stays usable");
    }

    #[test]
    fn stale_and_duplicate_completions_are_ignored() {
        let (mut m, job) = building();
        assert!(!m.handle_finished(JobId(99), Outcome::Built));
        assert!(!m.handle_finished(JobId(1), Outcome::Built), "the evaluation already ended");
        assert_eq!(drain(&mut m), []);
        assert!(m.handle_finished(job, Outcome::Built));
        assert!(!m.handle_finished(job, Outcome::Built));
        assert_eq!(drain(&mut m).len(), 2);
    }

    #[test]
    fn a_completion_of_the_wrong_kind_fails_the_job() {
        let mut m = M::new();
        let _ = eval(&mut m, "g1");
        drain(&mut m);
        m.handle_finished(JobId(1), Outcome::Built);
        match &drain(&mut m)[..] {
            [Action::Record(Record::EvalFinished { result: Err(e), .. }), Action::Notify(_)] => {
                assert!(e.starts_with("internal error"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_uncancelled_job_reporting_cancelled_says_just_cancelled() {
        let mut m = M::new();
        let _ = eval(&mut m, "g1");
        drain(&mut m);
        m.handle_finished(JobId(1), Outcome::Failed(JobError::Cancelled(None)));
        assert!(
            matches!(&drain(&mut m)[0], Action::Record(Record::EvalFinished { result: Err(e), .. }) if e == "cancelled")
        );
    }

    /// The actions after the running build `job` ended cancelled.
    fn end_cancelled(m: &mut M, job: JobId) -> Vec<Action<String>> {
        assert!(m.handle_finished(job, Outcome::Failed(JobError::Cancelled(None))));
        drain(m)
    }

    fn starts_a_job(actions: &[Action<String>]) -> bool {
        actions.iter().any(|a| matches!(a, Action::StartEval { .. } | Action::StartBuild { .. }))
    }

    #[test]
    fn stop_after_suspend_and_resume_while_the_build_dies_leaves_nothing_running() {
        // Issue 9, item 1: the suspend's reason used to win, and the build was started
        // again when the cancelled one ended, after stop() had returned.
        let (mut m, job) = building();
        let _ = m.suspend(None).unwrap();
        m.resume().unwrap();
        drain(&mut m);
        assert_eq!(job_of(m.stop_begin()), Some(job));
        assert_eq!(drain(&mut m), [], "the process is not cancelled twice");
        assert_eq!(
            end_cancelled(&mut m, job),
            [
                record("g1", Err("cancelled: stopped".into())),
                Action::Notify(Notification::BuildDone("g1".into()))
            ],
            "the stronger reason is recorded, and nothing starts"
        );
        assert!(!m.is_building() && !m.is_build_wanted());
        m.stop_end();
    }

    #[test]
    fn stop_before_the_suspended_build_ended_forgets_it_for_resume() {
        // Issue 9, item 2.
        let (mut m, job) = building();
        let _ = m.suspend(None).unwrap();
        assert_eq!(job_of(m.stop_begin()), Some(job));
        drain(&mut m);
        assert!(!starts_a_job(&end_cancelled(&mut m, job)));
        m.stop_end();
        m.resume().unwrap();
        assert_eq!(drain(&mut m), [], "resume builds nothing wanted before the stop");
        assert!(!m.is_building());
    }

    #[test]
    fn eval_while_a_suspended_build_dies_starts_no_build_of_the_old_generation() {
        // Issue 9, item 3: the old build used to be started (recorded and notified)
        // and cancelled again.
        let (mut m, job) = building();
        let _ = m.suspend(None).unwrap();
        m.resume().unwrap();
        drain(&mut m);
        let Ok(Step::WaitFor(wait)) = m.eval("g2", &"rs of g2".into(), None) else { panic!("eval waits") };
        assert_eq!(drain(&mut m), []);
        assert_eq!(
            end_cancelled(&mut m, job),
            [
                record("g1", Err("cancelled: superseded by generation g2".into())),
                Action::Notify(Notification::BuildDone("g1".into()))
            ]
        );
        assert_eq!(m.eval("g2", &"rs of g2".into(), Some(wait)), Ok(Step::Done));
        assert_eq!(started_job(&drain(&mut m)), JobId(3), "the evaluation of g2 is the next job");
        assert_eq!(m.generation_uuid(), Some("g2"));
    }

    #[test]
    fn an_eval_waiting_when_stop_is_called_gives_up_and_a_later_one_proceeds() {
        let mut m = M::new();
        let _ = eval(&mut m, "g1");
        let job = started_job(&drain(&mut m));
        let Ok(Step::WaitFor(before)) = m.eval("g2", &"rs".into(), None) else { panic!("eval waits") };
        assert_eq!(job_of(m.stop_begin()), Some(job));
        let Ok(Step::WaitFor(after)) = m.eval("g3", &"rs".into(), None) else { panic!("eval waits") };
        drain(&mut m);
        let ended = end_cancelled(&mut m, job);
        let err = "cancelled: stopped".to_string();
        assert_eq!(
            ended[0],
            Action::Record(Record::EvalFinished { uuid: "g1".into(), result: Err(err), usage: None })
        );
        assert_eq!(m.eval("g2", &"rs".into(), Some(before)), Err(Error::Stopped));
        assert_eq!(drain(&mut m), []);
        assert_eq!(m.generation_uuid(), Some("g1"), "g2 was never created");
        let Ok(Step::WaitFor(stopping)) = m.eval("g3", &"rs".into(), Some(after)) else {
            panic!("an eval made during a stop waits for its end")
        };
        assert_eq!(stopping.until, Until::StopsEnded);
        m.stop_end();
        assert_eq!(m.eval("g3", &"rs".into(), Some(stopping)), Ok(Step::Done), "eval after a stop works");
        assert_eq!(m.generation_uuid(), Some("g3"));
    }

    #[test]
    fn a_weaker_reason_never_replaces_a_stronger_one() {
        let (mut m, job) = building();
        let _ = m.stop_begin();
        let _ = eval(&mut m, "g2");
        let _ = m.suspend(None).unwrap();
        drain(&mut m);
        let ended = end_cancelled(&mut m, job);
        assert_eq!(ended[0], record("g1", Err("cancelled: stopped".into())));
        let (mut m, job) = building();
        let _ = m.suspend(None).unwrap();
        let _ = eval(&mut m, "g2");
        let ended = end_cancelled(&mut m, job);
        assert_eq!(ended.last(), Some(&Action::Notify(Notification::BuildDone("g1".into()))));
        assert_eq!(ended[1], record("g1", Err("cancelled: superseded by generation g2".into())));
        assert!(!m.is_build_wanted(), "a superseded build is not wanted again");
    }

    #[test]
    fn no_job_starts_while_a_stop_is_under_way() {
        // Issue 23, item 1: this rule lived in the driver, out of the fuzzers' sight.
        let (mut m, job) = building();
        let _ = m.stop_begin();
        drain(&mut m);
        end_cancelled(&mut m, job);
        assert!(m.is_stopping());
        let Ok(Step::WaitFor(wait)) = m.eval("g2", &"rs".into(), None) else { panic!("eval waits") };
        assert_eq!(wait.until, Until::StopsEnded);
        assert_eq!(drain(&mut m), [], "an eval during a stop starts nothing");
        m.submit_build("g1", None).unwrap();
        assert_eq!(
            drain(&mut m),
            [
                Action::Record(Record::BuildStarted { uuid: "g1".into(), reason: BuildReason::NeedBuild }),
                record("g1", Err("cancelled: stopped".into())),
                Action::Notify(Notification::BuildDone("g1".into())),
            ],
            "a build submitted during a stop ends at once"
        );
        assert!(!m.is_building());
        m.stop_end();
        assert!(!m.is_stopping());
        assert_eq!(m.eval("g2", &"rs".into(), Some(wait)), Ok(Step::Done));
        assert!(starts_a_job(&drain(&mut m)));
    }

    #[test]
    fn a_build_wanted_during_a_stop_is_forgotten_when_it_ends() {
        let mut m = evaluated();
        assert_eq!(m.stop_begin(), Step::Done);
        let _ = m.suspend(None).unwrap();
        m.submit_build("g1", None).unwrap();
        assert!(m.is_build_wanted());
        m.stop_end();
        assert!(!m.is_build_wanted(), "stop() returns with nothing wanted");
        m.resume().unwrap();
        assert!(!starts_a_job(&drain(&mut m)));
    }

    #[test]
    fn stops_count_once_per_stop_and_overlap() {
        let (mut m, job) = building();
        let Ok(Step::WaitFor(before)) = m.eval("g2", &"rs".into(), None) else { panic!("eval waits") };
        let _ = m.stop_begin();
        let _ = m.stop_begin();
        end_cancelled(&mut m, job);
        m.stop_end();
        assert!(m.is_stopping(), "one of two stops under way");
        m.stop_end();
        assert!(!m.is_stopping());
        assert_eq!(m.eval("g2", &"rs".into(), Some(before)), Err(Error::Stopped));
    }
}
