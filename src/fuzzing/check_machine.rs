//! The checker acting as the driver of the private state machine.
//!
//! It performs every action the way the threaded driver does, keeping its own store
//! and job table from the actions alone, and compares what it saw with the
//! reference. A call that waits for a job is either settled at once (the job ends,
//! the call is made again) or, in a race, kept blocked while the next calls are made.
//!
//! The records also go to an in-memory [`Store`], whose index of reusable evaluations
//! the checker's evaluation jobs look up as the builder's do: a job that finds its
//! key there with its `.drv` still valid ends at once, reused; one whose `.drv` is not
//! drops the entry and runs.

mod effects;
mod invariants;

use std::collections::{HashMap, HashSet};
use std::fmt;

use effects::Stored;

use super::reference::{Blocked, Ev, Reference, Reply, Text};
use super::{earlier_commit, error_mismatch, Call, JobEnd, Op, Target};
use crate::machine::{
    Action, GenerationView, JobId, JobKind, Machine, Notification, Outcome, Step, Until, Wait,
};
use crate::status::EvalStatus;
use crate::store::Store;
use crate::{CancelReason, Error, JobError};

/// The started job not yet ended, as the driver tracks it from the actions.
#[derive(Debug, Clone)]
struct RunningJob {
    id: JobId,
    kind: JobKind,
    uuid: String,
    key: String,
    /// An evaluation that has not looked for a reusable one yet.
    lookup_pending: bool,
}

/// A machine command that returned [`Step::WaitFor`] and is made again once what it
/// waits for is over (a `stop` is ended then).
#[derive(Debug)]
enum Pending {
    Eval { uuid: String, key: String, wait: Wait },
    Suspend(Wait),
    Stop(Wait),
}

impl Pending {
    fn wait(&self) -> Wait {
        match self {
            Pending::Eval { wait, .. } | Pending::Suspend(wait) | Pending::Stop(wait) => *wait,
        }
    }
}

/// What a call did: the command it left waiting (with the reference's view of it), or
/// its result and the reference's.
struct Called {
    pending: Option<(Pending, Blocked)>,
    result: Result<(), Error>,
    expected: Result<(), Error>,
}

impl Called {
    fn returned(result: Result<(), Error>, expected: Result<(), Error>) -> Called {
        Called { pending: None, result, expected }
    }
}

struct MachineDriver {
    machine: Machine<String>,
    reference: Reference,
    running: Option<RunningJob>,
    /// The reason of the `Cancel` action seen for the running job.
    cancelled: Option<CancelReason>,
    ended: Vec<JobId>,
    seen_jobs: HashSet<JobId>,
    store: HashMap<String, Stored>,
    /// The same records, applied by the real store (in memory).
    records: Store,
    /// Every uuid handed to `eval`, created or not.
    uuids: Vec<String>,
    /// The commits `eval` was called with, oldest first.
    asked: Vec<String>,
    /// Whether the `.drv` of each commit's evaluation is still valid, as last said.
    drv_valid: HashMap<String, bool>,
    /// The generation created last.
    newest: Option<String>,
    /// A `stop` was called and no build was asked for since.
    stopped: bool,
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
    fn drain(&mut self, finished: Option<&RunningJob>) -> Vec<Ev> {
        let mut evs = Vec::new();
        let mut notifications = 0;
        while let Some(action) = self.machine.poll_action() {
            match action {
                Action::StartEval { .. } | Action::StartBuild { .. } if self.machine.is_stopping() => {
                    self.fail("no job starts while a stop is under way", format!("{action:?}"))
                }
                Action::StartEval { job, uuid, request } => {
                    if evs.last() != Some(&Ev::EvalStarted(uuid.clone())) {
                        self.fail("an evaluation is recorded as started before it starts", &uuid);
                    }
                    if self.stored(&uuid).key != request {
                        self.fail("an evaluation evaluates what eval() was given", &request);
                    }
                    self.started(job, JobKind::Eval, &uuid, request);
                    evs.push(Ev::StartEval(uuid));
                }
                Action::StartBuild { job, uuid, drv_path } => {
                    if self.machine.is_suspended() {
                        self.fail("no build starts while suspended", &uuid);
                    }
                    if self.machine.generation_uuid() != Some(uuid.as_str()) {
                        self.fail("only the current generation is built", &uuid);
                    }
                    let stored = self.stored(&uuid);
                    if stored.eval != EvalStatus::Evaluated || stored.drv_path != drv_path {
                        self.fail("only an evaluated generation is built", format!("{uuid}: {stored:?}"));
                    }
                    if evs.last() != Some(&Ev::BuildStarted(uuid.clone(), crate::BUILD_REASON_NEED_BUILD)) {
                        self.fail("a build is recorded as started before it starts", &uuid);
                    }
                    self.started(job, JobKind::Build, &uuid, stored.key);
                    evs.push(Ev::StartBuild(uuid, drv_path));
                }
                Action::Cancel { job, reason } => {
                    let Some(running) = self.running.clone() else {
                        self.fail("only a running job is cancelled", format!("{job:?} while none runs"))
                    };
                    if running.id != job {
                        self.fail(
                            "only a running job is cancelled",
                            format!("{job:?} while {running:?} runs"),
                        );
                    }
                    if self.cancelled.is_some() {
                        self.fail(
                            "a job's processes are cancelled once",
                            format!("{job:?} again for {reason:?}"),
                        );
                    }
                    self.cancelled = Some(reason);
                    evs.push(Ev::Cancel(running.uuid));
                }
                Action::Record(record) => evs.push(self.apply_record(record)),
                Action::Notify(Notification::BuildDone(uuid))
                    if finished.is_none()
                        && self.machine.is_stopping()
                        && evs.last()
                            == Some(&Ev::BuildFinished(
                                uuid.clone(),
                                Err(Text::Exact("cancelled: stopped".into())),
                            )) =>
                {
                    // A build that would start during a stop ends at once, unstarted.
                    evs.push(Ev::BuildDone(uuid));
                }
                Action::Notify(n) => {
                    notifications += 1;
                    let Some(job) = finished else {
                        self.fail("only a job's end notifies", format!("{n:?} from a command"))
                    };
                    let names_its_job = match (&n, job.kind) {
                        (Notification::EvaluationDone(u), JobKind::Eval) => *u == job.uuid,
                        (Notification::BuildDone(u), _) => *u == job.uuid,
                        _ => false,
                    };
                    if !names_its_job {
                        self.fail(
                            "a notification names the generation whose job ended",
                            format!("{n:?} for {job:?}"),
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

    fn started(&mut self, id: JobId, kind: JobKind, uuid: &str, key: String) {
        if let Some(r) = &self.running {
            self.fail("at most one job runs", format!("{kind:?} {id:?} started while {r:?} runs"));
        }
        if !self.seen_jobs.insert(id) {
            self.fail("job ids are never reused", format!("{id:?}"));
        }
        if self.newest.as_deref() != Some(uuid) {
            self.fail(
                "no job of a generation starts once a newer one was created",
                format!("{kind:?} of {uuid} while the newest is {:?}", self.newest),
            );
        }
        let lookup_pending = kind == JobKind::Eval;
        self.running = Some(RunningJob { id, kind, uuid: uuid.to_string(), key, lookup_pending });
        self.cancelled = None;
    }

    /// Makes `call`, on the machine and on the reference; returns the machine's
    /// pending command if it must wait, and the results to compare otherwise.
    fn call(&mut self, call: Call, evs: &mut Vec<Ev>) -> Called {
        let (pending, result, reply) = match call {
            Call::Eval(choice) => {
                let uuid = format!("gen-{}", self.uuids.len());
                let (key, drv_valid) = earlier_commit(choice, &self.asked)
                    .unwrap_or_else(|| (format!("key{}", self.uuids.len()), true));
                self.uuids.push(uuid.clone());
                self.asked.push(key.clone());
                self.drv_valid.insert(key.clone(), drv_valid);
                let reply = self.reference.eval(&uuid, &key, drv_valid);
                match self.machine.eval(&uuid, &key, None) {
                    Ok(Step::WaitFor(wait)) => (Some(Pending::Eval { uuid, key, wait }), Ok(()), reply),
                    Ok(Step::Done) => {
                        self.stopped = false;
                        (None, Ok(()), reply)
                    }
                    Err(e) => (None, Err(e), reply),
                }
            }
            Call::SubmitCurrent => {
                let uuid =
                    self.machine.generation_uuid().map_or(format!("unknown-{}", self.step), str::to_string);
                return self.submit(&uuid, evs);
            }
            Call::Suspend => {
                let reply = self.reference.suspend();
                match self.machine.suspend(None) {
                    Ok(Step::WaitFor(wait)) => (Some(Pending::Suspend(wait)), Ok(()), reply),
                    Ok(Step::Done) => (None, Ok(()), reply),
                    Err(e) => (None, Err(e), reply),
                }
            }
            Call::Resume => {
                let expected = self.reference.resume();
                let result = self.machine.resume();
                let drained = self.drain(None);
                if self.stopped && drained.iter().any(|ev| matches!(ev, Ev::StartBuild(..))) {
                    self.fail("a resume after a stop starts nothing", format!("{drained:?}"));
                }
                evs.extend(drained);
                return Called::returned(result, expected);
            }
            Call::Stop => {
                self.stopped = true;
                let reply = self.reference.stop();
                match self.machine.stop_begin() {
                    Step::WaitFor(wait) => (Some(Pending::Stop(wait)), Ok(()), reply),
                    Step::Done => {
                        evs.extend(self.drain(None));
                        self.machine.stop_end();
                        evs.extend(self.drain(None));
                        self.check_stopped();
                        (None, Ok(()), reply)
                    }
                }
            }
        };
        evs.extend(self.drain(None));
        evs.extend(self.look_for_reuse());
        match (pending, reply) {
            (Some(pending), Reply::Blocked(blocked)) => {
                match pending.wait().until {
                    Until::JobEnded(job) => {
                        match &self.running {
                            Some(r) if r.id == job => {}
                            r => self.fail(
                                "a command waits only for the running job",
                                format!("{job:?} while {r:?} runs"),
                            ),
                        }
                        if self.cancelled.is_none() {
                            self.fail("a command waits only for a job it cancelled", format!("{job:?}"));
                        }
                    }
                    Until::StopsEnded if !self.machine.is_stopping() => self
                        .fail("a command waits for stops only while one is under way", format!("{call:?}")),
                    Until::StopsEnded => {}
                }
                Called { pending: Some((pending, blocked)), result: Ok(()), expected: Ok(()) }
            }
            (None, Reply::Returned(expected)) => Called::returned(result, expected),
            (pending, reply) => self.fail(
                "a call waits exactly when it cancels the running job",
                format!("{call:?}: machine {pending:?}, reference {reply:?}"),
            ),
        }
    }

    fn submit(&mut self, uuid: &str, evs: &mut Vec<Ev>) -> Called {
        let stored = self.store.get(uuid).map(|g| GenerationView {
            eval: g.eval,
            build: g.build,
            drv_path: g.drv_path.clone(),
        });
        let result = self.machine.submit_build(uuid, stored);
        evs.extend(self.drain(None));
        if result.is_ok() {
            self.stopped = false;
        }
        Called::returned(result, self.reference.submit_build(uuid))
    }

    /// A blocked call, once the job it waited for ended.
    fn unblock(&mut self, pending: Pending, blocked: Blocked, evs: &mut Vec<Ev>) {
        let expected = self.reference.unblock(blocked);
        let pending_kind = match pending {
            Pending::Stop(_) => PendingKind::Stop,
            _ => PendingKind::Other,
        };
        let result = match pending {
            Pending::Eval { uuid, key, wait } => match self.machine.eval(&uuid, &key, Some(wait)) {
                Ok(Step::Done) => {
                    self.stopped = false;
                    Ok(())
                }
                Ok(Step::WaitFor(wait)) => self.fail(
                    "no job of a generation starts once a newer one was asked for",
                    format!("eval of {uuid} waits again, for {:?}", wait.until),
                ),
                Err(e) => Err(e),
            },
            Pending::Suspend(wait) => match self.machine.suspend(Some(wait)) {
                Ok(Step::Done) => Ok(()),
                other => self.fail("a suspend waits for one job at most", format!("{other:?}")),
            },
            Pending::Stop(_) => {
                self.machine.stop_end();
                Ok(())
            }
        };
        evs.extend(self.drain(None));
        if matches!(pending_kind, PendingKind::Stop) {
            self.check_stopped();
        }
        evs.extend(self.look_for_reuse());
        if let Some((rule, detail)) = error_mismatch(&result, &expected) {
            self.fail(rule, detail);
        }
    }

    /// Ends the dying job with `ending`, then makes the blocked calls again, in order.
    fn end_dying_job(&mut self, blocked: Vec<(Pending, Blocked)>, ending: JobEnd, evs: &mut Vec<Ev>) {
        if blocked.is_empty() {
            return;
        }
        evs.extend(self.finish_running(ending, false));
        self.reference.finish(ending, false);
        for (pending, blocked) in blocked {
            self.unblock(pending, blocked, evs);
        }
    }

    fn apply(&mut self, op: Op) {
        let mut evs = Vec::new();
        let mut results = (Ok(()), Ok(()));
        match op {
            Op::Eval { cancelled_job_ends: ending, commit } => {
                results = self.settle(Call::Eval(commit), ending, &mut evs)
            }
            Op::Suspend { cancelled_job_ends: ending } => {
                results = self.settle(Call::Suspend, ending, &mut evs)
            }
            Op::Stop { cancelled_job_ends: ending } => results = self.settle(Call::Stop, ending, &mut evs),
            Op::Resume => results = self.settle(Call::Resume, JobEnd::Cancelled, &mut evs),
            Op::SubmitCurrent => results = self.settle(Call::SubmitCurrent, JobEnd::Cancelled, &mut evs),
            Op::SubmitStale(back) => {
                let uuid = self.uuids.iter().rev().nth(1 + back as usize % 4).cloned();
                let uuid = uuid.unwrap_or_else(|| format!("unknown-{}", self.step));
                let called = self.submit(&uuid, &mut evs);
                results = (called.result, called.expected);
            }
            Op::SubmitUnknown => {
                let called = self.submit(&format!("unknown-{}", self.step), &mut evs);
                results = (called.result, called.expected);
            }
            Op::Complete { job, ending } => self.complete(job, ending, &mut evs),
            Op::Race { calls, cancelled_job_ends } => {
                let blocked = self.calls(&Op::race_calls(&calls), &mut evs);
                self.end_dying_job(blocked, cancelled_job_ends, &mut evs);
            }
            Op::StopWindow { calls, cancelled_job_ends } => {
                self.stop_window(&calls, cancelled_job_ends, &mut evs)
            }
        }
        let expected = self.reference.take_evs();
        if evs != expected {
            self.fail(
                "the machine does what the documented semantics say",
                format!("expected {expected:#?}\n  got {evs:#?}"),
            );
        }
        if let Some((rule, detail)) = error_mismatch(&results.0, &results.1) {
            self.fail(rule, detail);
        }
        self.check_state();
    }

    /// Makes `calls` in order; the calls left waiting.
    fn calls(&mut self, calls: &[Call], evs: &mut Vec<Ev>) -> Vec<(Pending, Blocked)> {
        let mut blocked = Vec::new();
        for &call in calls {
            let called = self.call(call, evs);
            if let Some((rule, detail)) = error_mismatch(&called.result, &called.expected) {
                self.fail(rule, detail);
            }
            blocked.extend(called.pending);
        }
        blocked
    }

    /// A stop whose job ends with `ending`, then `calls` made before the stop is over,
    /// then its end, then the calls that waited for it.
    fn stop_window(&mut self, calls: &[Call], ending: JobEnd, evs: &mut Vec<Ev>) {
        self.stopped = true;
        let runs = self.reference.stop_begin();
        let step = self.machine.stop_begin();
        evs.extend(self.drain(None));
        if runs != matches!(step, Step::WaitFor(_)) {
            self.fail("a stop waits exactly when it cancels the running job", format!("{step:?}"));
        }
        if runs {
            evs.extend(self.finish_running(ending, false));
            self.reference.finish(ending, false);
        }
        let blocked = self.calls(&Op::race_calls(calls), evs);
        self.machine.stop_end();
        self.reference.stop_end();
        evs.extend(self.drain(None));
        self.check_stopped();
        for (pending, blocked) in blocked {
            self.unblock(pending, blocked, evs);
        }
    }

    /// Makes `call`; if it waits, its job ends with `ending` and the call is made
    /// again, as a lone caller's would be.
    fn settle(
        &mut self,
        call: Call,
        ending: JobEnd,
        evs: &mut Vec<Ev>,
    ) -> (Result<(), Error>, Result<(), Error>) {
        let called = self.call(call, evs);
        let Some((pending, blocked)) = called.pending else { return (called.result, called.expected) };
        evs.extend(self.finish_running(ending, false));
        self.reference.finish(ending, false);
        self.unblock(pending, blocked, evs);
        (Ok(()), Ok(()))
    }

    fn complete(&mut self, job: Target, ending: JobEnd, evs: &mut Vec<Ev>) {
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
                self.reference.finish(ending, job == Target::WrongKind);
            }
            Some(id) => {
                let outcome = Outcome::Failed(JobError::Failed("late".into()));
                if self.machine.handle_finished(id, outcome) {
                    self.fail("a completion of a job that is not running is ignored", format!("{id:?}"));
                }
                evs.extend(self.drain(None));
            }
        }
    }
}

/// Which pending command was made again.
#[derive(Clone, Copy)]
enum PendingKind {
    Stop,
    Other,
}

/// Applies `ops` to the state machine, acting as its driver, and panics, naming the
/// rule, on the first divergence from the documented semantics. Ends with a `stop` so
/// that every job started has ended.
pub fn check_machine(ops: &[Op]) {
    let mut d = MachineDriver {
        machine: Machine::new(),
        reference: Reference::default(),
        running: None,
        cancelled: None,
        ended: Vec::new(),
        seen_jobs: HashSet::new(),
        store: HashMap::new(),
        records: Store::new(),
        uuids: Vec::new(),
        asked: Vec::new(),
        drv_valid: HashMap::new(),
        newest: None,
        stopped: false,
        step: 0,
        op: Op::SubmitUnknown,
    };
    d.check_state();
    let last = Op::Stop { cancelled_job_ends: JobEnd::Cancelled };
    for (step, &op) in ops.iter().chain(std::iter::once(&last)).enumerate() {
        d.step = step;
        d.op = op;
        d.apply(op);
    }
    if d.running.is_some() || d.seen_jobs.len() != d.ended.len() {
        d.fail("every started job ends", format!("{} started, {} ended", d.seen_jobs.len(), d.ended.len()));
    }
}
