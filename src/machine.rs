//! The builder's rules as a pure state machine: no threads, clocks, channels or I/O.
//!
//! Every rule of DESIGN.md's Semantics section lives here and only here. The threaded
//! [`Builder`](crate::Builder) feeds the machine its inputs (the caller's commands and
//! the jobs' completions), performs the [`Action`]s it asks for in order, and decides
//! nothing itself. That split (quinn's `quinn-proto` / `quinn`) lets the rules be unit
//! tested and fuzzed without a process in sight.
//!
//! * Commands: [`Machine::eval`], [`Machine::submit_build`], [`Machine::suspend`],
//!   [`Machine::resume`], [`Machine::stop`] return what the caller must be told, and
//!   queue actions.
//! * Inputs: [`Machine::handle_finished`] takes a job's outcome.
//! * Outputs: [`Machine::poll_action`] drains the queued actions; the driver must drain
//!   them after every call, before releasing its lock.
//!
//! A command that finds a job in its way (an `eval` while a job runs, a `suspend`
//! while a build runs) queues the job's cancellation and returns
//! [`Step::WaitFor`]: the driver waits, without its lock, until the job's completion
//! has been handled, then calls the command again.

use std::collections::VecDeque;

use crate::error::{CancelReason, Error, JobError};
use crate::executor::EvalOutput;

/// Identifies one job (an evaluation or a build) for the machine's whole life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Eval,
    Build,
}

/// Evaluation status of a generation (comin's strings via [`EvalStatus::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalStatus {
    Initialized,
    Evaluating,
    Evaluated,
    Failed,
}

/// Build status of a generation (comin's strings via [`BuildStatus::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStatus {
    Initialized,
    Building,
    Built,
    Failed,
}

impl EvalStatus {
    pub fn as_str(self) -> &'static str {
        use crate::proto::status::*;
        match self {
            EvalStatus::Initialized => INITIALIZED,
            EvalStatus::Evaluating => EVALUATING,
            EvalStatus::Evaluated => EVALUATED,
            EvalStatus::Failed => FAILED,
        }
    }
}

impl BuildStatus {
    pub fn as_str(self) -> &'static str {
        use crate::proto::status::*;
        match self {
            BuildStatus::Initialized => INITIALIZED,
            BuildStatus::Building => BUILDING,
            BuildStatus::Built => BUILT,
            BuildStatus::Failed => FAILED,
        }
    }
}

/// What the machine needs to know of a generation it does not track (one found in
/// the store, e.g. after a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationView {
    pub eval: EvalStatus,
    pub build: BuildStatus,
    pub drv_path: String,
}

/// Why a build was started, as recorded in the generation's `build_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildReason {
    AlreadyBuilt,
    NeedBuild,
}

impl BuildReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildReason::AlreadyBuilt => crate::BUILD_REASON_ALREADY_BUILT,
            BuildReason::NeedBuild => crate::BUILD_REASON_NEED_BUILD,
        }
    }
}

/// How a job ended, as its worker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An evaluation succeeded; `out_path_valid` says whether its output is already
    /// in the store (asked by the worker, since that is I/O).
    Evaluated { output: EvalOutput, out_path_valid: bool },
    /// A build succeeded.
    Built,
    /// The job failed, timed out or was cancelled.
    Failed(JobError),
}

/// A change the driver writes to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    EvalStarted { uuid: String },
    EvalFinished { uuid: String, result: Result<EvalOutput, String> },
    BuildStarted { uuid: String, reason: BuildReason },
    BuildFinished { uuid: String, result: Result<(), String> },
}

/// A message the driver sends to the caller's channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    EvaluationDone(String),
    BuildDone(String),
}

/// What the driver must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start evaluating generation `uuid` as job `job`.
    StartEval { job: JobId, uuid: String },
    /// Start building `drv_path` of generation `uuid` as job `job`.
    StartBuild { job: JobId, uuid: String, drv_path: String },
    /// Cancel a running job; its completion still comes through `handle_finished`.
    Cancel { job: JobId, reason: CancelReason },
    /// Write to the store (and tell subscribers).
    Record(Record),
    /// Send on `evaluation_done` / `build_done`.
    Notify(Notification),
}

/// What a command tells its caller when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// Done; the queued actions carry it out.
    Done,
    /// A job is in the way and has been cancelled: wait until its completion was
    /// handled, then call the command again.
    WaitFor(JobId),
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
    cancelled: Option<CancelReason>,
}

/// The builder's state. See the module documentation.
#[derive(Debug, Default)]
pub struct Machine {
    current: Option<Current>,
    running: Option<Running>,
    suspended: bool,
    next_job: u64,
    actions: VecDeque<Action>,
}

impl Machine {
    pub fn new() -> Machine {
        Machine::default()
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

    /// Whether a build of the current generation waits for `resume`.
    pub fn is_build_wanted(&self) -> bool {
        self.current.as_ref().is_some_and(|c| c.build_wanted)
    }

    // ---- commands ----

    /// Evaluate a new generation `uuid`: cancels whatever runs, waits for it, then
    /// makes `uuid` current and starts its evaluation.
    pub fn eval(&mut self, uuid: &str) -> Step {
        if let Some(step) = self.cancel_running(CancelReason::Superseded(uuid.to_string()), |_| true) {
            return step;
        }
        self.current = Some(Current {
            uuid: uuid.to_string(),
            eval: EvalStatus::Evaluating,
            build: BuildStatus::Initialized,
            drv_path: String::new(),
            build_wanted: false,
        });
        let job = self.new_job(JobKind::Eval);
        self.actions.push_back(Action::Record(Record::EvalStarted { uuid: uuid.to_string() }));
        self.actions.push_back(Action::StartEval { job, uuid: uuid.to_string() });
        Step::Done
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
    pub fn suspend(&mut self) -> Result<Step, Error> {
        if self.suspended {
            return Err(Error::AlreadySuspended);
        }
        self.suspended = true;
        Ok(self.wait_for_build_cancelled_by_suspend())
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

    /// Cancel whatever runs; nothing is wanted any more. Call until it returns
    /// [`Step::Done`].
    pub fn stop(&mut self) -> Step {
        if let Some(current) = &mut self.current {
            current.build_wanted = false;
        }
        self.cancel_running(CancelReason::Stopped, |_| true).unwrap_or(Step::Done)
    }

    /// Continues a suspend that found a build running (see [`Step::WaitFor`]).
    pub fn wait_for_build_cancelled_by_suspend(&mut self) -> Step {
        if !self.suspended {
            return Step::Done;
        }
        self.cancel_running(CancelReason::Suspended, |r| r.kind == JobKind::Build).unwrap_or(Step::Done)
    }

    // ---- inputs ----

    /// A job ended. Completions of jobs that are not running (stale, duplicated) are
    /// ignored and return false.
    pub fn handle_finished(&mut self, job: JobId, outcome: Outcome) -> bool {
        let Some(running) = self.running.take_if(|r| r.id == job) else { return false };
        let current = self.current.as_mut().expect("a running job has a current generation");
        let uuid = current.uuid.clone();
        let error_text = |e: &JobError| match (e, &running.cancelled) {
            (JobError::Cancelled(_), Some(reason)) => JobError::Cancelled(Some(reason.clone())).to_string(),
            _ => e.to_string(),
        };
        match (running.kind, outcome) {
            (JobKind::Eval, Outcome::Evaluated { output, out_path_valid }) => {
                current.eval = EvalStatus::Evaluated;
                current.drv_path = output.drv_path.clone();
                self.actions.push_back(Action::Record(Record::EvalFinished {
                    uuid: uuid.clone(),
                    result: Ok(output),
                }));
                if out_path_valid {
                    current.build = BuildStatus::Built;
                    let reason = BuildReason::AlreadyBuilt;
                    self.actions
                        .push_back(Action::Record(Record::BuildStarted { uuid: uuid.clone(), reason }));
                    self.actions.push_back(Action::Record(Record::BuildFinished {
                        uuid: uuid.clone(),
                        result: Ok(()),
                    }));
                    self.actions.push_back(Action::Notify(Notification::BuildDone(uuid)));
                } else {
                    self.actions.push_back(Action::Notify(Notification::EvaluationDone(uuid)));
                }
            }
            (JobKind::Eval, Outcome::Failed(e)) => {
                current.eval = EvalStatus::Failed;
                let result = Err(error_text(&e));
                self.actions.push_back(Action::Record(Record::EvalFinished { uuid: uuid.clone(), result }));
                self.actions.push_back(Action::Notify(Notification::EvaluationDone(uuid)));
            }
            (JobKind::Build, Outcome::Built) => {
                current.build = BuildStatus::Built;
                self.actions
                    .push_back(Action::Record(Record::BuildFinished { uuid: uuid.clone(), result: Ok(()) }));
                self.actions.push_back(Action::Notify(Notification::BuildDone(uuid)));
            }
            (JobKind::Build, Outcome::Failed(e)) => {
                current.build = BuildStatus::Failed;
                // Only a build the suspend did cancel is built again on resume; one
                // that failed on its own before the cancel landed is not.
                if let (JobError::Cancelled(_), Some(CancelReason::Suspended)) = (&e, &running.cancelled) {
                    current.build_wanted = true;
                }
                let result = Err(error_text(&e));
                self.actions.push_back(Action::Record(Record::BuildFinished { uuid: uuid.clone(), result }));
                self.actions.push_back(Action::Notify(Notification::BuildDone(uuid)));
            }
            (kind, outcome) => {
                // A worker reporting the other kind's success is a bug in the driver;
                // record it as a failure so the job still ends with its notification.
                let e = JobError::Failed(format!("internal error: a {kind:?} job reported {outcome:?}"));
                self.running = Some(running);
                return self.handle_finished(job, Outcome::Failed(e));
            }
        }
        self.start_wanted_build();
        true
    }

    // ---- outputs ----

    /// The next action to perform, in order.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    // ---- internals ----

    fn new_job(&mut self, kind: JobKind) -> JobId {
        self.next_job += 1;
        let id = JobId(self.next_job);
        self.running = Some(Running { id, kind, cancelled: None });
        id
    }

    /// Cancels the running job if `which` selects it (once: a second cancel only
    /// waits) and returns the step to wait for it.
    fn cancel_running(&mut self, reason: CancelReason, which: impl Fn(&Running) -> bool) -> Option<Step> {
        let running = self.running.as_mut().filter(|r| which(r))?;
        if running.cancelled.is_none() {
            running.cancelled = Some(reason.clone());
            self.actions.push_back(Action::Cancel { job: running.id, reason });
        }
        Some(Step::WaitFor(running.id))
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
        self.actions.push_back(Action::StartBuild { job, uuid, drv_path });
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

    fn drain(m: &mut Machine) -> Vec<Action> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }

    fn started_job(actions: &[Action]) -> JobId {
        actions
            .iter()
            .find_map(|a| match a {
                Action::StartEval { job, .. } | Action::StartBuild { job, .. } => Some(*job),
                _ => None,
            })
            .expect("a job was started")
    }

    /// A machine whose generation "g1" is evaluated (not built).
    fn evaluated() -> Machine {
        let mut m = Machine::new();
        assert_eq!(m.eval("g1"), Step::Done);
        let job = started_job(&drain(&mut m));
        assert!(m.handle_finished(job, Outcome::Evaluated { output: output(), out_path_valid: false }));
        drain(&mut m);
        m
    }

    /// `evaluated()` with a build of it running; returns the build's job.
    fn building() -> (Machine, JobId) {
        let mut m = evaluated();
        m.submit_build("g1", None).unwrap();
        let job = started_job(&drain(&mut m));
        (m, job)
    }

    fn record(uuid: &str, result: Result<(), String>) -> Action {
        Action::Record(Record::BuildFinished { uuid: uuid.into(), result })
    }

    #[test]
    fn eval_records_then_starts_and_marks_evaluating() {
        let mut m = Machine::new();
        assert_eq!(m.eval("g1"), Step::Done);
        assert_eq!(
            drain(&mut m),
            [
                Action::Record(Record::EvalStarted { uuid: "g1".into() }),
                Action::StartEval { job: JobId(1), uuid: "g1".into() }
            ]
        );
        assert!(m.is_evaluating() && !m.is_building());
        assert_eq!(m.generation_uuid(), Some("g1"));
    }

    #[test]
    fn successful_eval_records_and_notifies_evaluation_done() {
        let mut m = Machine::new();
        let _ = m.eval("g1");
        let job = started_job(&drain(&mut m));
        m.handle_finished(job, Outcome::Evaluated { output: output(), out_path_valid: false });
        assert_eq!(
            drain(&mut m),
            [
                Action::Record(Record::EvalFinished { uuid: "g1".into(), result: Ok(output()) }),
                Action::Notify(Notification::EvaluationDone("g1".into())),
            ]
        );
        assert!(!m.is_evaluating());
    }

    #[test]
    fn an_output_already_valid_is_recorded_built_and_notified_on_build_done() {
        let mut m = Machine::new();
        let _ = m.eval("g1");
        let job = started_job(&drain(&mut m));
        m.handle_finished(job, Outcome::Evaluated { output: output(), out_path_valid: true });
        assert_eq!(
            drain(&mut m),
            [
                Action::Record(Record::EvalFinished { uuid: "g1".into(), result: Ok(output()) }),
                Action::Record(Record::BuildStarted { uuid: "g1".into(), reason: BuildReason::AlreadyBuilt }),
                record("g1", Ok(())),
                Action::Notify(Notification::BuildDone("g1".into())),
            ]
        );
        assert_eq!(m.submit_build("g1", None), Err(Error::AlreadyBuilt));
    }

    #[test]
    fn failed_eval_records_the_error_and_notifies_evaluation_done() {
        let mut m = Machine::new();
        let _ = m.eval("g1");
        let job = started_job(&drain(&mut m));
        m.handle_finished(job, Outcome::Failed(JobError::TimedOut(std::time::Duration::from_secs(2))));
        assert_eq!(
            drain(&mut m),
            [
                Action::Record(Record::EvalFinished {
                    uuid: "g1".into(),
                    result: Err("timed out after 2s".into())
                }),
                Action::Notify(Notification::EvaluationDone("g1".into())),
            ]
        );
        assert_eq!(m.submit_build("g1", None), Err(Error::NotEvaluated));
    }

    #[test]
    fn eval_while_a_job_runs_cancels_it_once_and_waits() {
        let mut m = Machine::new();
        let _ = m.eval("g1");
        let job = started_job(&drain(&mut m));
        assert_eq!(m.eval("g2"), Step::WaitFor(job));
        let superseded = CancelReason::Superseded("g2".into());
        assert_eq!(drain(&mut m), [Action::Cancel { job, reason: superseded }]);
        assert_eq!(m.eval("g3"), Step::WaitFor(job), "a second eval waits for the same job");
        assert_eq!(drain(&mut m), [], "and does not cancel it again");
        m.handle_finished(job, Outcome::Failed(JobError::Cancelled(None)));
        let err = "cancelled: superseded by generation g2".to_string();
        assert_eq!(
            drain(&mut m),
            [
                Action::Record(Record::EvalFinished { uuid: "g1".into(), result: Err(err) }),
                Action::Notify(Notification::EvaluationDone("g1".into())),
            ]
        );
        assert_eq!(m.eval("g3"), Step::Done);
        assert_eq!(m.generation_uuid(), Some("g3"));
    }

    #[test]
    fn eval_preempts_a_build() {
        let (mut m, job) = building();
        assert_eq!(m.eval("g2"), Step::WaitFor(job));
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
        let mut m = Machine::new();
        let msg = |r: Result<(), Error>| r.unwrap_err().to_string();
        assert_eq!(msg(m.submit_build("u", None)), "no generation with uuid u has been found");
        let _ = m.eval("g1");
        drain(&mut m);
        assert_eq!(msg(m.submit_build("other", None)), "another generation is evaluating or evaluated");
        assert_eq!(msg(m.submit_build("g1", None)), "the generation is not evaluated");
        m.handle_finished(JobId(1), Outcome::Evaluated { output: output(), out_path_valid: false });
        m.submit_build("g1", None).unwrap();
        assert_eq!(msg(m.submit_build("g1", None)), "the builder is already building");
        m.handle_finished(JobId(2), Outcome::Built);
        assert_eq!(msg(m.submit_build("g1", None)), "the generation is already built");
    }

    #[test]
    fn a_stored_generation_becomes_current_when_submitted() {
        let mut m = Machine::new();
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
        let mut m = Machine::new();
        assert_eq!(m.resume().unwrap_err().to_string(), "the builder is not suspended");
        assert_eq!(m.suspend(), Ok(Step::Done));
        assert_eq!(m.suspend().unwrap_err().to_string(), "the builder is already suspended");
        assert!(m.is_suspended());
        m.resume().unwrap();
        assert!(!m.is_suspended());
    }

    #[test]
    fn a_build_submitted_while_suspended_waits_for_resume() {
        let mut m = evaluated();
        let _ = m.suspend().unwrap();
        m.submit_build("g1", None).unwrap();
        assert_eq!(drain(&mut m), []);
        assert!(m.is_build_wanted() && !m.is_building());
        m.resume().unwrap();
        assert!(m.is_building());
    }

    #[test]
    fn suspend_lets_an_evaluation_run_and_resume_builds_nothing_unsubmitted() {
        let mut m = Machine::new();
        let _ = m.eval("g1");
        drain(&mut m);
        assert_eq!(m.suspend(), Ok(Step::Done));
        assert_eq!(drain(&mut m), [], "the evaluation is not cancelled");
        m.handle_finished(JobId(1), Outcome::Evaluated { output: output(), out_path_valid: false });
        drain(&mut m);
        m.resume().unwrap();
        assert_eq!(drain(&mut m), []);
        assert!(!m.is_building());
    }

    #[test]
    fn suspend_cancels_a_build_which_resume_starts_again() {
        let (mut m, job) = building();
        assert_eq!(m.suspend(), Ok(Step::WaitFor(job)));
        assert_eq!(drain(&mut m), [Action::Cancel { job, reason: CancelReason::Suspended }]);
        m.handle_finished(job, Outcome::Failed(JobError::Cancelled(None)));
        let err = "cancelled: suspended".to_string();
        assert_eq!(
            drain(&mut m),
            [record("g1", Err(err)), Action::Notify(Notification::BuildDone("g1".into()))]
        );
        assert!(!m.is_building(), "not restarted while suspended");
        assert_eq!(m.wait_for_build_cancelled_by_suspend(), Step::Done);
        m.resume().unwrap();
        assert!(matches!(drain(&mut m).last(), Some(Action::StartBuild { .. })));
    }

    #[test]
    fn a_build_that_fails_on_its_own_before_the_suspend_lands_is_not_rebuilt() {
        let (mut m, job) = building();
        let _ = m.suspend().unwrap();
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
        let _ = m.suspend().unwrap();
        m.resume().unwrap();
        drain(&mut m);
        assert!(m.is_building(), "the cancelled job still runs");
        m.handle_finished(job, Outcome::Failed(JobError::Cancelled(None)));
        assert!(matches!(drain(&mut m).last(), Some(Action::StartBuild { .. })));
    }

    #[test]
    fn stop_cancels_whatever_runs_and_forgets_wanted_builds() {
        let (mut m, job) = building();
        assert_eq!(m.stop(), Step::WaitFor(job));
        assert_eq!(drain(&mut m), [Action::Cancel { job, reason: CancelReason::Stopped }]);
        m.handle_finished(job, Outcome::Failed(JobError::Cancelled(None)));
        assert_eq!(
            drain(&mut m),
            [
                record("g1", Err("cancelled: stopped".into())),
                Action::Notify(Notification::BuildDone("g1".into()))
            ]
        );
        assert_eq!(m.stop(), Step::Done, "stop twice is harmless");
        let (mut m, job) = building();
        let _ = m.stop();
        assert_eq!(m.suspend(), Ok(Step::WaitFor(job)), "suspend during a stop waits for it");
        m.handle_finished(job, Outcome::Failed(JobError::Cancelled(None)));
        m.resume().unwrap();
        assert!(!m.is_building(), "but does not revive the stopped build");
        let mut m = evaluated();
        let _ = m.suspend().unwrap();
        m.submit_build("g1", None).unwrap();
        assert_eq!(m.stop(), Step::Done);
        m.resume().unwrap();
        assert!(!m.is_building(), "a stop forgets the build submitted while suspended");
        assert_eq!(m.eval("g2"), Step::Done, "the machine stays usable");
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
        let mut m = Machine::new();
        let _ = m.eval("g1");
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
        let mut m = Machine::new();
        let _ = m.eval("g1");
        drain(&mut m);
        m.handle_finished(JobId(1), Outcome::Failed(JobError::Cancelled(None)));
        assert!(
            matches!(&drain(&mut m)[0], Action::Record(Record::EvalFinished { result: Err(e), .. }) if e == "cancelled")
        );
    }
}
