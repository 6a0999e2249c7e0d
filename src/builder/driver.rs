//! The state every [`Builder`](super::Builder) handle shares, and the commands'
//! locking and waiting: lock, feed the machine, perform every action it queued,
//! unlock.
//!
//! This is the one owner of the jobs' bookkeeping (cargo's `JobQueue` is the model):
//! the jobs report their outcome only through [`Shared::finish`], tagged with their
//! [`JobId`]; everything else about them (starting, cancelling, joining their
//! threads) happens here, under the state mutex or right after it. What to start,
//! cancel, record and notify, and when a command must wait, is the machine's to say:
//! this module decides nothing.
//!
//! A command that must wait (the machine's [`Step::WaitFor`]: for a job it cancelled,
//! or for a stop under way) waits on the `changed` condition variable, which releases
//! the mutex and is woken by every handled completion and every stop's end, then calls
//! the machine again.
//!
//! **The hand-over.** An `eval` that waits for the job it cancelled offers its next
//! step to that job's end ([`HandOver`]): [`Shared::finish`], on the job's thread and
//! under the same lock, makes the machine's `eval` call for it and starts the new
//! evaluation as that thread's [`Successor`], which the thread runs next, instead of
//! the caller waking, then starting it on another thread (two thread wake-ups, about
//! 70 µs of every pre-emption). The caller wakes meanwhile only to collect the step
//! taken for it. Nothing changes for the machine: the same call, with the same
//! arguments, made on another thread.

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex, MutexGuard};

use super::job_body::{self, Task};
use super::reentry::{self, BuilderId};
use super::subscribers::Subscribers;
use super::BuilderConfig;
use crate::error::{Error, JobError};
use crate::executor::{EvalRequest, Executor};
use crate::job::Job;
use crate::machine::{
    Action, Finished, GenerationView, JobId, Machine, Notification, Outcome, Record, Step, Until, Wait,
};
use crate::process::CgroupSlot;
use crate::proto::{self, event, log_line};
use crate::status::{BuildStatus, EvalStatus};
use crate::store::{NewGeneration, Store};
use crate::threads::{Pool, SignalMask, Successor, POOL};

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
    /// Signalled whenever a job's completion has been handled or a stop ended.
    changed: Condvar,
    pub(super) evaluation_done: Channel<String>,
    pub(super) build_done: Channel<String>,
    pub(super) subscribers: Arc<Subscribers>,
    /// The empty cgroup the builder's commands take turns in.
    pub(super) cgroups: Arc<CgroupSlot>,
    /// The threads its jobs run on.
    pub(super) pool: &'static Pool,
}

pub(super) struct State {
    pub(super) machine: Machine<proto::RepositoryStatus>,
    /// Every job started whose thread has not been joined yet.
    jobs: HashMap<JobId, Job>,
    /// Calls blocked in [`Shared::wait`].
    pub(super) waiting_calls: usize,
    /// The `eval` whose next step the end of the job it waits for may take.
    hand_over: HandOverSlot,
}

/// An `eval` call's next step, offered to the end of the job it waits for.
struct HandOver {
    ticket: u64,
    uuid: String,
    request: proto::RepositoryStatus,
    wait: Wait,
    /// The caller's, for the job it starts.
    mask: SignalMask,
}

/// Proof of an offer, which only the `eval` call that made it holds, and redeems once.
#[must_use = "an offer is collected by the call that made it"]
struct Ticket(u64);

/// One hand-over at a time: an offer (taken by the job's end), then the step taken for
/// it (collected by the caller). A second concurrent `eval` waits the ordinary way.
#[derive(Default)]
struct HandOverSlot {
    offer: Option<HandOver>,
    taken: Option<(u64, Result<Step, Error>)>,
    tickets: u64,
}

impl HandOverSlot {
    /// Offers the next step of an `eval` waiting for `wait`'s job; `None` if another
    /// call's offer is pending.
    fn offer(&mut self, uuid: &str, request: &proto::RepositoryStatus, wait: Wait) -> Option<Ticket> {
        if self.offer.is_some() || self.taken.is_some() {
            return None;
        }
        self.tickets += 1;
        let ticket = self.tickets;
        let mask = SignalMask::current();
        self.offer = Some(HandOver { ticket, uuid: uuid.into(), request: request.clone(), wait, mask });
        Some(Ticket(ticket))
    }

    /// The offer of an `eval` waiting for `job`, to take.
    fn take_for(&mut self, job: JobId) -> Option<HandOver> {
        self.offer.take_if(|offer| offer.wait.job() == Some(job))
    }

    /// The step taken for the offer `ticket` stood for.
    fn give_back(&mut self, ticket: u64, step: Result<Step, Error>) {
        debug_assert!(self.taken.is_none(), "one hand-over at a time");
        self.taken = Some((ticket, step));
    }

    /// The step taken for `ticket`'s offer, if one was; an offer nobody took is
    /// withdrawn (the caller makes the call itself).
    fn collect(&mut self, ticket: Ticket) -> Option<Result<Step, Error>> {
        self.offer.take_if(|offer| offer.ticket == ticket.0);
        self.taken.take_if(|(t, _)| *t == ticket.0).map(|(_, step)| step)
    }
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
                hand_over: HandOverSlot::default(),
            }),
            changed: Condvar::new(),
            evaluation_done: Channel::unbounded(),
            build_done: Channel::unbounded(),
            cgroups: Arc::default(),
            pool: &POOL,
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
        let mut step = state.machine.eval(&uuid, rs, None);
        self.perform(&mut state);
        loop {
            let wait = match step? {
                Step::Done => return Ok(uuid),
                Step::WaitFor(wait) => wait,
            };
            let ticket = match wait.until {
                Until::JobEnded(_) => state.hand_over.offer(&uuid, rs, wait),
                Until::StopsEnded => None,
            };
            self.wait(&mut state, wait);
            if let Some(taken) = ticket.and_then(|ticket| state.hand_over.collect(ticket)) {
                step = taken;
                continue;
            }
            step = state.machine.eval(&uuid, rs, Some(wait));
            self.perform(&mut state);
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
                    self.wait(&mut state, wait);
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

    /// Begins a stop, waits until the running job ended (unless it is the caller's
    /// own), ends the stop; then joins the threads of the jobs that ended. The machine
    /// starts no job while the stop is under way, so that when this returns none runs
    /// but the caller's own.
    pub(super) fn stop(self: &Arc<Self>) {
        let own = reentry::own_job(self.id);
        let ended: Vec<Job> = {
            let mut state = self.state.lock();
            let step = state.machine.stop_begin();
            self.perform(&mut state);
            if let Step::WaitFor(wait) = step {
                if wait.job() != own {
                    self.wait(&mut state, wait);
                }
            }
            state.machine.stop_end();
            self.perform(&mut state);
            // Evaluations made meanwhile go on.
            self.changed.notify_all();
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
    /// Takes the next step of an `eval` waiting for this job, if it offered it (see the
    /// module documentation): the job that step starts is returned, to run next on this
    /// thread.
    pub(super) fn finish(self: &Arc<Self>, job: JobId, finished: Finished) -> Option<Successor> {
        let mut state = self.state.lock();
        state.machine.handle_finished(job, finished);
        self.perform(&mut state);
        let mut successor = None;
        if let Some(offer) = state.hand_over.take_for(job) {
            let step = state.machine.eval(&offer.uuid, &offer.request, Some(offer.wait));
            successor = self.perform_here(&mut state, offer.mask);
            state.hand_over.give_back(offer.ticket, step);
        }
        self.changed.notify_all();
        successor
    }

    /// Until what `wait` waits for is over: the job's completion handled, or every stop
    /// under way ended.
    fn wait(&self, state: &mut MutexGuard<'_, State>, wait: Wait) {
        state.waiting_calls += 1;
        loop {
            let over = match wait.until {
                Until::JobEnded(job) => state.machine.running_job().is_none_or(|(running, _)| running != job),
                Until::StopsEnded => !state.machine.is_stopping(),
            };
            if over {
                break;
            }
            self.changed.wait(state);
        }
        state.waiting_calls -= 1;
    }

    /// Performs every queued action of the machine, in order.
    fn perform(self: &Arc<Self>, state: &mut State) {
        let successor = self.perform_starting(state, None);
        debug_assert!(successor.is_none());
    }

    /// [`perform`](Shared::perform), the first job started being this thread's
    /// successor, with signal mask `mask`.
    fn perform_here(self: &Arc<Self>, state: &mut State, mask: SignalMask) -> Option<Successor> {
        self.perform_starting(state, Some(mask))
    }

    fn perform_starting(
        self: &Arc<Self>,
        state: &mut State,
        mut here: Option<SignalMask>,
    ) -> Option<Successor> {
        let mut failed_to_start = Vec::new();
        let mut successor = None;
        loop {
            while let Some(action) = state.machine.poll_action() {
                match action {
                    Action::StartEval { job, uuid, request } => {
                        let task = Task::Eval(self.eval_request(&request));
                        let start = self.start(state, job, task, uuid, here.take());
                        successor = successor.or(self.started(state, job, start, &mut failed_to_start));
                    }
                    Action::StartBuild { job, uuid, drv_path } => {
                        let start = self.start(state, job, Task::Build { drv_path }, uuid, here.take());
                        successor = successor.or(self.started(state, job, start, &mut failed_to_start));
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
            self.changed.notify_all();
        }
        successor
    }

    /// Files a job [`start`](Shared::start) started; one whose thread could not start
    /// is recorded as failed (its `on_finished` will never run).
    fn started(
        &self,
        state: &mut State,
        id: JobId,
        (job, successor): (Job, Option<Successor>),
        failed_to_start: &mut Vec<(JobId, JobError)>,
    ) -> Option<Successor> {
        if job.is_finished() {
            if let Some(error) = job.error() {
                failed_to_start.push((id, error.clone()));
                return None;
            }
        }
        state.jobs.insert(id, job);
        successor
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

    /// Job `id` running `task` for generation `uuid`: started on a thread of the pool,
    /// or, with `here`, as the successor of the job on this thread (returned with it).
    fn start(
        self: &Arc<Self>,
        state: &mut State,
        id: JobId,
        task: Task,
        uuid: String,
        here: Option<SignalMask>,
    ) -> (Job, Option<Successor>) {
        // Finished jobs are joined here; their threads have returned, so this does
        // not block.
        state.jobs.retain(|_, job| !job.is_finished());
        let config = &self.config;
        let (phase, timeout, grace, memory_limit) = match task {
            Task::Eval(_) => (
                log_line::Phase::Eval,
                config.eval_timeout,
                config.process.eval_kill_grace,
                config.eval_memory_limit,
            ),
            Task::Build { .. } => (
                log_line::Phase::Build,
                config.build_timeout,
                config.process.kill_grace,
                config.build_memory_limit,
            ),
        };
        let logs = self.subscribers.log_sink(id, uuid, phase);
        let mut job = job_body::job(self, id, task, timeout, grace, logs).with_memory_limit(memory_limit);
        let successor = match here {
            Some(mask) => job.start_as_successor(mask),
            None => {
                job.start();
                None
            }
        };
        (job, successor)
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
            Record::EvalFinished { uuid, result, usage } => {
                store.generation_eval_finished(&uuid, &result, usage);
                self.subscribers.job_ended(&uuid);
                (uuid, |g| event::Kind::EvalFinished(proto::EvalFinished { generation: Some(g) }))
            }
            Record::BuildStarted { uuid, reason } => {
                store.generation_build_started(&uuid, reason);
                (uuid, |g| event::Kind::BuildStarted(proto::BuildStarted { generation: Some(g) }))
            }
            Record::BuildFinished { uuid, result, usage } => {
                store.generation_build_finished(&uuid, &result, usage);
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
    /// Joins the threads of the jobs left, except those this very thread runs: when a
    /// job drops the builder's last handle, the builder goes with the job's end, on the
    /// job's own thread, where a successor it started would run next; a reaper thread
    /// joins those instead. Then the idle job threads exit.
    fn drop(&mut self) {
        let own = reentry::own_job(self.id);
        for (id, job) in self.state.get_mut().jobs.drain() {
            if Some(id) != own && !job.runs_next_here() {
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
        self.pool.retire_idle();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::executor::EvalOutput;
    use crate::job::JobContext;

    /// Where each evaluation ran (the job thread and its idle spell); the one of commit
    /// "first" waits until it is cancelled.
    #[derive(Default)]
    struct RecordsWhere {
        ran: parking_lot::Mutex<Vec<(String, (std::thread::ThreadId, u64))>>,
        first_running: parking_lot::Condvar,
    }

    impl Executor for RecordsWhere {
        fn eval(&self, req: &EvalRequest, ctx: &JobContext) -> Result<EvalOutput, JobError> {
            self.ran.lock().push((req.commit_id.clone(), crate::threads::tests::where_am_i()));
            self.first_running.notify_all();
            if req.commit_id == "first" {
                while !ctx.is_cancelled() {
                    std::thread::yield_now();
                }
                return Err(ctx.check().unwrap_err());
            }
            Ok(EvalOutput {
                drv_path: "/nix/store/x.drv".into(),
                out_path: "/nix/store/x".into(),
                machine_id: String::new(),
            })
        }
        fn build(&self, _: &str, _: &JobContext) -> Result<(), JobError> {
            Ok(())
        }
        fn is_store_path_valid(&self, _: &str) -> bool {
            false
        }
    }

    fn rs(commit: &str) -> proto::RepositoryStatus {
        proto::RepositoryStatus { selected_commit_id: commit.into(), ..Default::default() }
    }

    /// Issue 21, item 3: once the last handle is dropped, every thread that ran one of
    /// the builder's jobs is joined, also one that handed its last result over a
    /// moment ago (it used to list itself idle only after, and be missed).
    #[test]
    fn dropping_a_builder_joins_every_thread_its_jobs_ran_on() {
        let pool = crate::threads::tests::pool(Duration::from_secs(600));
        for round in 0..3000 {
            let executor = Arc::new(RecordsWhere::default());
            let config = BuilderConfig::new("host", "/nonexistent");
            let mut shared = Shared::new(config, Arc::new(Store::new()), executor.clone());
            shared.pool = pool;
            let builder = super::super::Builder::from_shared(Arc::new(shared));
            let uuid = builder.eval(&rs("c")).unwrap();
            builder.evaluation_done().recv_timeout(Duration::from_secs(20)).unwrap();
            builder.submit_build(&uuid).unwrap();
            builder.build_done().recv_timeout(Duration::from_secs(20)).unwrap();
            builder.eval(&rs("d")).unwrap();
            builder.evaluation_done().recv_timeout(Duration::from_secs(20)).unwrap();
            drop(builder);
            for (_, (thread, _)) in executor.ran.lock().iter() {
                assert!(pool.is_joined(*thread), "round {round}: a job thread outlived its builder");
            }
        }
    }

    /// Issue 23, item 2: the evaluation an `eval` starts by pre-empting a job runs next
    /// on that job's thread, in the same busy spell: handed over at the job's end, not
    /// started by the caller once it woke (which lands on another thread, or on the
    /// same one after it went idle).
    #[test]
    fn a_preempting_evaluation_runs_next_on_the_cancelled_jobs_thread() {
        let executor = Arc::new(RecordsWhere::default());
        let config = BuilderConfig::new("host", "/nonexistent");
        let shared = Arc::new(Shared::new(config, Arc::new(Store::new()), executor.clone()));
        shared.eval(&rs("first")).unwrap();
        {
            let mut ran = executor.ran.lock();
            while ran.is_empty() {
                executor.first_running.wait_for(&mut ran, Duration::from_secs(20));
            }
        }
        shared.eval(&rs("second")).unwrap();
        shared.stop();
        let ran = executor.ran.lock().clone();
        assert_eq!(ran.len(), 2, "{ran:?}");
        assert_eq!(ran[0].1, ran[1].1, "the second evaluation did not run next on the first one's thread");
    }
}
