//! The state every [`Builder`](super::Builder) handle shares, and the commands'
//! locking and waiting: lock once, feed the machine, perform every action it queued,
//! unlock.
//!
//! This is the one owner of the jobs' bookkeeping (cargo's `JobQueue` is the model):
//! the jobs report their outcome only through [`Shared::finish`], tagged with their
//! [`JobId`]; everything else about them (starting, cancelling, joining their
//! threads) happens here, under the state mutex or right after it.
//!
//! A command that must wait for a job (the machine's [`Step::WaitFor`]) waits on the
//! `job_ended` condition variable, which releases the mutex, and is woken by every
//! handled completion. An `eval` hands its next step over to the job it waits for
//! ([`HandedOver`]): the job's end takes it on the job's thread, so that the new
//! evaluation starts at once, on that thread, rather than after the caller woke and
//! started it on another (two thread wake-ups, about 70 µs of every pre-emption).
//!
//! **While a stop is under way** (a `stop()` waits for the job it cancelled), no job
//! starts: when `stop()` returns, in every thread that called it, none may run. An
//! `eval` waits until every stop under way has returned, then goes on (and gives up
//! with [`Error::Stopped`] if another stop was made after it); a build that
//! `submit_build` or `resume` (or a job's end) would start meanwhile ends at once,
//! "cancelled: stopped", as if the stop had cancelled it. Those calls never block, and
//! the stop cannot wait for a job it would then have to cancel in turn.

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex, MutexGuard};

use super::job_body::{self, Task};
use super::reentry::{self, BuilderId};
use super::subscribers::Subscribers;
use super::BuilderConfig;
use crate::error::{CancelReason, Error, JobError};
use crate::executor::{EvalRequest, Executor};
use crate::job::Job;
use crate::machine::{Action, GenerationView, JobId, Machine, Notification, Outcome, Record, Step, Wait};
use crate::process::CgroupSlot;
use crate::proto::{self, event, log_line};
use crate::status::{BuildStatus, EvalStatus};
use crate::store::{NewGeneration, Store};
use crate::threads::SignalMask;

/// The sending and receiving ends of a notification channel.
pub(super) struct Channel<T> {
    pub(super) tx: Sender<T>,
    pub(super) rx: Receiver<T>,
}

impl<T> Channel<T> {
    fn unbounded() -> Channel<T> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Channel { tx, rx }
    }
}

pub(super) struct Shared {
    pub(super) id: BuilderId,
    pub(super) config: BuilderConfig,
    pub(super) store: Arc<Store>,
    pub(super) executor: Arc<dyn Executor>,
    pub(super) state: Mutex<State>,
    /// Signalled whenever a job's completion has been handled.
    job_ended: Condvar,
    pub(super) evaluation_done: Channel<String>,
    pub(super) build_done: Channel<String>,
    pub(super) subscribers: Arc<Subscribers>,
    /// The empty cgroup the builder's commands take turns in.
    pub(super) cgroups: Arc<CgroupSlot>,
}

pub(super) struct State {
    pub(super) machine: Machine<proto::RepositoryStatus>,
    /// Every job started whose thread has not been joined yet.
    jobs: HashMap<JobId, Job>,
    /// Calls blocked in [`Shared::wait_for`] or [`Shared::wait_for_stops`].
    pub(super) waiting_calls: usize,
    /// `stop()` calls under way: no job starts meanwhile.
    stopping: usize,
    /// `stop()` calls made so far: an `eval` that waited for one under way gives up if
    /// a later one came meanwhile.
    stops_made: u64,
    /// An `eval` waiting for the job it cancelled, whose next step that job's end takes
    /// (see [`Shared::finish`]).
    handed_over: Option<HandedOver>,
}

/// An `eval` call's next step, handed to the end of the job it waits for: taken there,
/// on the job's thread, the next job starts without waiting for the caller to wake, and
/// runs on that same thread (`threads::as_last_act`).
struct HandedOver {
    uuid: String,
    request: proto::RepositoryStatus,
    wait: Wait,
    /// The caller's, for the job it starts.
    mask: SignalMask,
    /// The step, once taken.
    step: Option<Result<Step, Error>>,
}

impl Shared {
    pub(super) fn new(config: BuilderConfig, store: Arc<Store>, executor: Arc<dyn Executor>) -> Shared {
        Shared {
            id: BuilderId::new(),
            subscribers: Arc::new(Subscribers::new(config.subscriber_backlog_bytes)),
            config,
            store,
            executor,
            state: Mutex::new(State {
                machine: Machine::new(),
                jobs: HashMap::new(),
                waiting_calls: 0,
                stopping: 0,
                stops_made: 0,
                handed_over: None,
            }),
            job_ended: Condvar::new(),
            evaluation_done: Channel::unbounded(),
            build_done: Channel::unbounded(),
            cgroups: Arc::default(),
        }
    }

    /// Refuses a call that would wait for the job of this builder it is made from.
    fn refuse_inside_job(&self, method: &'static str) -> Result<(), Error> {
        match reentry::own_job(self.id) {
            Some(_) => Err(Error::CalledFromJob { method }),
            None => Ok(()),
        }
    }

    pub(super) fn eval(self: &Arc<Self>, rs: &proto::RepositoryStatus) -> Result<String, Error> {
        self.refuse_inside_job("eval")?;
        let uuid = uuid::Uuid::new_v4().to_string();
        let mut state = self.state.lock();
        let stops_before = state.stops_made;
        let mut waited = None;
        let mut taken = None;
        loop {
            let step = match taken.take() {
                Some(step) => step,
                None => {
                    // No job starts while a stop is under way: this one starts after it.
                    if state.stopping > 0 {
                        self.wait_for_stops(&mut state);
                        // As an eval waiting for a job does, it gives up for a later stop.
                        if state.stops_made != stops_before {
                            return Err(Error::Stopped);
                        }
                    }
                    let step = state.machine.eval(&uuid, rs, waited);
                    self.perform(&mut state);
                    step
                }
            };
            match step? {
                Step::Done => return Ok(uuid),
                Step::WaitFor(wait) => {
                    let hand_over = state.handed_over.is_none();
                    if hand_over {
                        let request = rs.clone();
                        state.handed_over = Some(HandedOver {
                            uuid: uuid.clone(),
                            request,
                            wait,
                            mask: SignalMask::current(),
                            step: None,
                        });
                    }
                    self.wait_for(&mut state, wait.job);
                    waited = Some(wait);
                    if hand_over {
                        taken = state.handed_over.take().and_then(|h| h.step);
                    }
                }
            }
        }
    }

    pub(super) fn submit_build(self: &Arc<Self>, uuid: &str) -> Result<(), Error> {
        let mut state = self.state.lock();
        let stored = self.store.generation(uuid).map(|g| GenerationView {
            // A status that is none of comin's words is taken for the first one.
            eval: g.eval_status.parse().unwrap_or(EvalStatus::Initialized),
            build: g.build_status.parse().unwrap_or(BuildStatus::Initialized),
            drv_path: g.drv_path,
        });
        let result = state.machine.submit_build(uuid, stored);
        self.perform(&mut state);
        result
    }

    pub(super) fn suspend(self: &Arc<Self>) -> Result<(), Error> {
        self.refuse_inside_job("suspend")?;
        let mut state = self.state.lock();
        let mut waited = None;
        loop {
            let step = state.machine.suspend(waited);
            self.perform(&mut state);
            match step? {
                Step::Done => return Ok(()),
                Step::WaitFor(wait) => {
                    self.wait_for(&mut state, wait.job);
                    waited = Some(wait);
                }
            }
        }
    }

    pub(super) fn resume(self: &Arc<Self>) -> Result<(), Error> {
        let mut state = self.state.lock();
        let result = state.machine.resume();
        self.perform(&mut state);
        result
    }

    /// Cancels everything and waits until the running job ended, unless it is the
    /// caller's own; then joins the threads of the jobs that ended. No job starts
    /// meanwhile (see the module documentation), so that when this returns none runs
    /// but the caller's own.
    pub(super) fn stop(self: &Arc<Self>) {
        let own = reentry::own_job(self.id);
        let ended: Vec<Job> = {
            let mut state = self.state.lock();
            state.stops_made += 1;
            state.stopping += 1;
            // Once: no job starts while this waits. Should one run all the same, it is
            // cancelled and waited for too.
            loop {
                let step = state.machine.stop();
                self.perform(&mut state);
                match step {
                    Step::WaitFor(wait) if own != Some(wait.job) => self.wait_for(&mut state, wait.job),
                    _ => break,
                }
            }
            state.stopping -= 1;
            if state.stopping == 0 {
                // Evaluations made meanwhile go on.
                self.job_ended.notify_all();
            }
            let running = state.machine.running_job().map(|(id, _)| id);
            let ended: Vec<JobId> =
                state.jobs.keys().copied().filter(|&id| Some(id) != running && Some(id) != own).collect();
            ended.iter().filter_map(|id| state.jobs.remove(id)).collect()
        };
        // Their completions were handled: the threads are returning, joining is quick.
        for mut job in ended {
            job.wait();
        }
    }

    pub(super) fn state(&self) -> proto::Builder {
        let state = self.state.lock();
        let machine = &state.machine;
        let uuid = machine.generation_uuid().unwrap_or_default().to_string();
        proto::Builder {
            is_evaluating: Some(machine.is_evaluating()),
            is_building: Some(machine.is_building()),
            generation: self.store.generation(&uuid),
            generation_uuid: uuid,
            is_suspended: Some(machine.is_suspended()),
            hostname: self.config.hostname.clone(),
            last_error: self.store.last_error().unwrap_or_default(),
            build_progress: machine.is_building().then(|| self.subscribers.latest_progress()).flatten(),
        }
    }

    /// Hands a job's outcome to the machine; called on the job's thread when it ends.
    /// Takes the next step of an `eval` waiting for this job, unless a stop is under way
    /// (the caller then waits for it, and may give up): the pre-empting evaluation
    /// starts here, and its job runs next on this thread.
    pub(super) fn finish(self: &Arc<Self>, job: JobId, outcome: Outcome) {
        let mut state = self.state.lock();
        state.machine.handle_finished(job, outcome);
        self.perform(&mut state);
        if state.stopping == 0 {
            if let Some(mut handed) = state.handed_over.take() {
                if handed.step.is_none() && handed.wait.job == job {
                    let step = state.machine.eval(&handed.uuid, &handed.request, Some(handed.wait));
                    crate::threads::as_last_act(handed.mask, || self.perform(&mut state));
                    handed.step = Some(step);
                }
                state.handed_over = Some(handed);
            }
        }
        self.job_ended.notify_all();
    }

    /// Until job `job` is no longer running (its completion has been handled).
    fn wait_for(&self, state: &mut MutexGuard<'_, State>, job: JobId) {
        state.waiting_calls += 1;
        while state.machine.running_job().is_some_and(|(running, _)| running == job) {
            self.job_ended.wait(state);
        }
        state.waiting_calls -= 1;
    }

    /// Until no stop is under way.
    fn wait_for_stops(&self, state: &mut MutexGuard<'_, State>) {
        state.waiting_calls += 1;
        while state.stopping > 0 {
            self.job_ended.wait(state);
        }
        state.waiting_calls -= 1;
    }

    /// Performs every queued action of the machine, in order.
    fn perform(self: &Arc<Self>, state: &mut State) {
        let mut failed_to_start = Vec::new();
        loop {
            while let Some(action) = state.machine.poll_action() {
                match action {
                    // A stop under way ends whatever would start (see the module doc).
                    Action::StartEval { job, .. } | Action::StartBuild { job, .. } if state.stopping > 0 => {
                        failed_to_start.push((job, JobError::Cancelled(Some(CancelReason::Stopped))));
                    }
                    Action::StartEval { job, uuid, request } => {
                        let task = Task::Eval(self.eval_request(&request));
                        self.start(state, job, task, uuid, &mut failed_to_start);
                    }
                    Action::StartBuild { job, uuid, drv_path } => {
                        self.start(state, job, Task::Build { drv_path }, uuid, &mut failed_to_start);
                    }
                    Action::Cancel { job, reason } => {
                        if let Some(running) = state.jobs.get(&job) {
                            running.cancel(reason);
                        }
                    }
                    Action::Record(record) => self.record(record),
                    Action::Notify(Notification::EvaluationDone(uuid)) => {
                        let _ = self.evaluation_done.tx.send(uuid);
                    }
                    Action::Notify(Notification::BuildDone(uuid)) => {
                        let _ = self.build_done.tx.send(uuid);
                    }
                }
            }
            let Some((job, error)) = failed_to_start.pop() else { break };
            state.machine.handle_finished(job, Outcome::Failed(error));
            self.job_ended.notify_all();
        }
    }

    fn eval_request(&self, rs: &proto::RepositoryStatus) -> EvalRequest {
        EvalRequest {
            repository_path: self.config.repository_path.clone(),
            repository_subdir: self.config.repository_subdir.clone(),
            commit_id: rs.selected_commit_id.clone(),
            system_attr: self.config.system_attr.clone(),
            hostname: self.config.hostname.clone(),
            submodules: self.config.submodules,
        }
    }

    fn start(
        self: &Arc<Self>,
        state: &mut State,
        id: JobId,
        task: Task,
        uuid: String,
        failed_to_start: &mut Vec<(JobId, JobError)>,
    ) {
        // Finished jobs are joined here; their threads have returned, so this does
        // not block.
        state.jobs.retain(|_, job| !job.is_finished());
        let (phase, timeout, grace) = match task {
            Task::Eval(_) => {
                (log_line::Phase::Eval, self.config.eval_timeout, self.config.process.eval_kill_grace)
            }
            Task::Build { .. } => {
                (log_line::Phase::Build, self.config.build_timeout, self.config.process.kill_grace)
            }
        };
        let logs = self.subscribers.log_sink(id, uuid, phase);
        let mut job = job_body::job(self, id, task, timeout, grace, logs);
        job.start();
        if job.is_finished() {
            if let Some(error) = job.error() {
                // The thread did not start: on_finished will never run.
                failed_to_start.push((id, error.clone()));
                return;
            }
        }
        state.jobs.insert(id, job);
    }

    /// Writes a record to the store and publishes it to the subscribers.
    fn record(&self, record: Record<proto::RepositoryStatus>) {
        let store = &self.store;
        let (uuid, kind): (String, fn(proto::Generation) -> event::Kind) = match record {
            Record::EvalStarted { uuid, request } => {
                let config = &self.config;
                let new = NewGeneration {
                    uuid: &uuid,
                    hostname: &config.hostname,
                    repository_path: &config.repository_path.to_string_lossy(),
                    repository_subdir: &config.repository_subdir,
                    system_attr: &config.system_attr,
                };
                store.generation_eval_started(new, &request);
                (uuid, |g| event::Kind::EvalStarted(proto::EvalStarted { generation: Some(g) }))
            }
            Record::EvalFinished { uuid, result } => {
                store.generation_eval_finished(&uuid, &result);
                self.subscribers.job_ended(&uuid);
                (uuid, |g| event::Kind::EvalFinished(proto::EvalFinished { generation: Some(g) }))
            }
            Record::BuildStarted { uuid, reason } => {
                store.generation_build_started(&uuid, reason);
                (uuid, |g| event::Kind::BuildStarted(proto::BuildStarted { generation: Some(g) }))
            }
            Record::BuildFinished { uuid, result } => {
                store.generation_build_finished(&uuid, &result);
                self.subscribers.job_ended(&uuid);
                (uuid, |g| event::Kind::BuildFinished(proto::BuildFinished { generation: Some(g) }))
            }
        };
        let generation =
            store.generation(&uuid).unwrap_or_else(|| proto::Generation { uuid, ..Default::default() });
        self.subscribers.lifecycle(kind(generation));
    }
}

impl Drop for Shared {
    /// Joins the threads of the jobs left, except the one this runs on: when a job
    /// drops the builder's last handle, the builder goes with the job's end, on the
    /// job's own thread, which a reaper thread joins instead. Then the idle job
    /// threads exit.
    fn drop(&mut self) {
        let own = reentry::own_job(self.id);
        for (id, job) in self.state.get_mut().jobs.drain() {
            if Some(id) != own {
                drop(job);
                continue;
            }
            // The job goes to the reaper over a channel, so that it stays here (and is
            // left detached) if the reaper cannot start.
            let (handover, job_to_reap) = crossbeam_channel::bounded::<Job>(1);
            let reaper = std::thread::Builder::new()
                .name("genbuild-reaper".into())
                .spawn(move || drop(job_to_reap.recv()));
            match reaper {
                Ok(_) => drop(handover.send(job)),
                Err(e) => {
                    log::warn!("cannot start a thread to join a dropped builder's last job ({e}); it is left detached");
                    std::mem::forget(job);
                }
            }
        }
        // Job threads left idle (this builder's, or another's) would outlive it.
        crate::threads::retire_idle();
    }
}
