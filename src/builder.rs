//! The thread-safe driver around [`Machine`]: one mutex around the machine, lock once
//! per call, feed it, perform every action it queued, unlock.
//!
//! The driver decides nothing: what to cancel, start, record and notify comes from the
//! machine. What it owns is the plumbing: the jobs' threads ([`Job`]), the store
//! writes, the channels.
//!
//! Locking rule: never join a worker or wait for a child while holding the state
//! mutex, because the worker needs the mutex to record its result. Waiting for a
//! cancelled job is a condition-variable wait (the mutex is released); `stop()`
//! cancels under the lock, then joins the workers outside it.
//!
//! Every job hands its outcome to the machine from its [`Job::on_finished`] hook, which
//! runs even when the executor panicked: a started job always ends with its
//! notification.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::error::{Error, JobError};
use crate::executor::{EvalRequest, Executor};
use crate::job::{Job, JobContext, JobOutput, LogSink};
use crate::machine::{Action, JobId, Machine, Notification, Outcome, Record, Step};
use crate::process::{ProcessOptions, Stream};
use crate::proto::{self, event, log_line, Event};
use crate::store::{NewGeneration, Store};

/// `build_reason` of a generation whose output was found in the store after evaluation.
pub const BUILD_REASON_ALREADY_BUILT: &str = "already built";
/// `build_reason` of a generation built because a build was submitted.
pub const BUILD_REASON_NEED_BUILD: &str = "need to be built";

/// Log lines queued for a subscriber beyond which further lines are dropped (and
/// counted) until it catches up. Lifecycle events are never dropped.
const LOG_BACKLOG: usize = 4096;

/// What a [`Builder`] evaluates and how long it lets jobs run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuilderConfig {
    pub hostname: String,
    pub repository_path: PathBuf,
    /// `""` or `"."` for the repository root.
    pub repository_subdir: String,
    /// Legacy Nix: the attribute holding `.toplevel`; flakes: `nixosConfigurations`.
    pub system_attr: String,
    pub submodules: bool,
    pub eval_timeout: Duration,
    pub build_timeout: Duration,
    /// Grace period and wait strategy of the subprocess protocol.
    pub process: ProcessOptions,
}

impl BuilderConfig {
    /// Defaults: repository root, `nixosConfigurations`, no submodules, 30 minute
    /// timeouts, 5 s between SIGTERM and SIGKILL.
    pub fn new(hostname: impl Into<String>, repository_path: impl Into<PathBuf>) -> Self {
        BuilderConfig {
            hostname: hostname.into(),
            repository_path: repository_path.into(),
            repository_subdir: String::new(),
            system_attr: "nixosConfigurations".into(),
            submodules: false,
            eval_timeout: Duration::from_secs(30 * 60),
            build_timeout: Duration::from_secs(30 * 60),
            process: ProcessOptions::default(),
        }
    }
}

/// Evaluates and builds one generation at a time. See the crate documentation.
///
/// A cheap handle: clone it freely, share it between threads. Dropping the last
/// handle stops the running job and joins its worker.
#[derive(Clone)]
pub struct Builder {
    handle: Arc<Handle>,
}

/// The last handle's drop stops the builder; workers only hold `Shared`.
struct Handle {
    shared: Arc<Shared>,
}

struct Shared {
    config: BuilderConfig,
    store: Arc<Store>,
    executor: Arc<dyn Executor>,
    state: Mutex<State>,
    /// Signalled whenever a job's completion has been handled.
    job_ended: Condvar,
    evaluation_done: (Sender<String>, Receiver<String>),
    build_done: (Sender<String>, Receiver<String>),
    subscribers: Arc<Subscribers>,
}

struct State {
    machine: Machine,
    jobs: HashMap<JobId, Job>,
}

impl Builder {
    /// A builder with no generation, evaluating with `executor` and recording in
    /// `store`.
    pub fn new(config: BuilderConfig, store: Arc<Store>, executor: Arc<dyn Executor>) -> Builder {
        let shared = Shared {
            config,
            store,
            executor,
            state: Mutex::new(State { machine: Machine::new(), jobs: HashMap::new() }),
            job_ended: Condvar::new(),
            evaluation_done: crossbeam_channel::unbounded(),
            build_done: crossbeam_channel::unbounded(),
            subscribers: Arc::default(),
        };
        Builder { handle: Arc::new(Handle { shared: Arc::new(shared) }) }
    }

    /// Evaluates the commit of `rs` as a new generation and returns its uuid.
    ///
    /// Cancels any running evaluation or build and blocks until their results are
    /// recorded ("cancelled: superseded by generation …"), then starts the evaluation
    /// and returns without waiting for it. Its end is announced on
    /// [`evaluation_done`](Builder::evaluation_done), or on
    /// [`build_done`](Builder::build_done) when the output is already in the store.
    pub fn eval(&self, rs: &proto::RepositoryStatus) -> Result<String, Error> {
        let shared = &self.handle.shared;
        let uuid = uuid::Uuid::new_v4().to_string();
        let mut state = shared.state.lock();
        loop {
            match state.machine.eval(&uuid) {
                Step::Done => {
                    shared.perform(&mut state, Some(rs));
                    return Ok(uuid);
                }
                Step::WaitFor(job) => {
                    shared.perform(&mut state, None);
                    shared.wait_for(&mut state, job);
                }
            }
        }
    }

    /// Builds the evaluated generation `generation_uuid`, now or, when suspended, on
    /// [`resume`](Builder::resume). Returns once the build started (or was queued);
    /// its end is announced on [`build_done`](Builder::build_done).
    ///
    /// # Errors
    /// In this order: [`Error::AnotherGeneration`], [`Error::UnknownGeneration`],
    /// [`Error::NotEvaluated`], [`Error::AlreadyBuilding`], [`Error::AlreadyBuilt`].
    pub fn submit_build(&self, generation_uuid: &str) -> Result<(), Error> {
        let shared = &self.handle.shared;
        let mut state = shared.state.lock();
        let stored = shared.store.view(generation_uuid);
        state.machine.submit_build(generation_uuid, stored)?;
        shared.perform(&mut state, None);
        Ok(())
    }

    /// Stops building until [`resume`](Builder::resume): a running build is cancelled
    /// ("cancelled: suspended", announced on `build_done`) and this blocks until its
    /// result is recorded; it is started again on resume. A running evaluation goes on.
    pub fn suspend(&self) -> Result<(), Error> {
        let shared = &self.handle.shared;
        let mut state = shared.state.lock();
        let mut step = state.machine.suspend()?;
        while let Step::WaitFor(job) = step {
            shared.perform(&mut state, None);
            shared.wait_for(&mut state, job);
            step = state.machine.wait_for_build_cancelled_by_suspend();
        }
        shared.perform(&mut state, None);
        Ok(())
    }

    /// Builds again: the current generation is built if a build of it was submitted
    /// while suspended or cancelled by [`suspend`](Builder::suspend). Never builds a
    /// generation nobody submitted.
    pub fn resume(&self) -> Result<(), Error> {
        let shared = &self.handle.shared;
        let mut state = shared.state.lock();
        state.machine.resume()?;
        shared.perform(&mut state, None);
        Ok(())
    }

    /// Cancels the running evaluation or build ("cancelled: stopped"), kills its
    /// processes and joins its worker; blocks until all that is done. Not terminal:
    /// [`eval`](Builder::eval) may follow.
    pub fn stop(&self) {
        self.handle.shared.stop();
    }

    /// A snapshot: hostname, what runs, the current generation (from the store).
    pub fn state(&self) -> proto::Builder {
        let shared = &self.handle.shared;
        let state = shared.state.lock();
        let machine = &state.machine;
        let uuid = machine.generation_uuid().unwrap_or_default().to_string();
        proto::Builder {
            is_evaluating: Some(machine.is_evaluating()),
            is_building: Some(machine.is_building()),
            generation: shared.store.generation(&uuid),
            generation_uuid: uuid,
            is_suspended: Some(machine.is_suspended()),
            hostname: shared.config.hostname.clone(),
            last_error: shared.store.last_error().unwrap_or_default(),
            build_progress: None,
        }
    }

    pub fn is_evaluating(&self) -> bool {
        self.handle.shared.state.lock().machine.is_evaluating()
    }

    pub fn is_building(&self) -> bool {
        self.handle.shared.state.lock().machine.is_building()
    }

    pub fn is_suspended(&self) -> bool {
        self.handle.shared.state.lock().machine.is_suspended()
    }

    /// The current generation's uuid.
    pub fn generation_uuid(&self) -> Option<String> {
        self.handle.shared.state.lock().machine.generation_uuid().map(str::to_string)
    }

    /// Receives the uuid of every generation whose evaluation ended (succeeded,
    /// failed or cancelled) without its output being already in the store.
    ///
    /// Unbounded: nothing is dropped however long nobody reads. Every call returns
    /// the same channel, so a message goes to exactly one of the receivers. Never
    /// disconnects while the builder lives.
    pub fn evaluation_done(&self) -> Receiver<String> {
        self.handle.shared.evaluation_done.1.clone()
    }

    /// Receives the uuid of every generation whose build ended (built, failed,
    /// cancelled), including the "already built" shortcut. Same guarantees as
    /// [`evaluation_done`](Builder::evaluation_done).
    pub fn build_done(&self) -> Receiver<String> {
        self.handle.shared.build_done.1.clone()
    }

    /// A new stream of every lifecycle event from now on, in order, never dropped; and
    /// of the jobs' log lines, which are dropped (and counted in the next line's
    /// `dropped_before`) while more than 4096 wait unread. Dropping the receiver
    /// unsubscribes.
    pub fn subscribe(&self) -> Receiver<Event> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.handle.shared.subscribers.list.lock().push(Subscriber { tx, dropped: 0 });
        rx
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

impl Shared {
    fn stop(self: &Arc<Self>) {
        let jobs: Vec<Job> = {
            let mut state = self.state.lock();
            let _ = state.machine.stop();
            self.perform(&mut state, None);
            state.jobs.drain().map(|(_, exec)| exec).collect()
        };
        for mut job in jobs {
            job.wait();
        }
    }

    /// Until job `job` is no longer running (its completion has been handled).
    fn wait_for(&self, state: &mut MutexGuard<'_, State>, job: JobId) {
        while state.machine.running_job().is_some_and(|(running, _)| running == job) {
            self.job_ended.wait(state);
        }
    }

    /// Performs every queued action of the machine, in order.
    fn perform(self: &Arc<Self>, state: &mut State, rs: Option<&proto::RepositoryStatus>) {
        let mut failed_to_start = Vec::new();
        loop {
            while let Some(action) = state.machine.poll_action() {
                match action {
                    Action::StartEval { job, uuid } => {
                        let req = self.eval_request(&uuid);
                        let timeout = self.config.eval_timeout;
                        self.start(state, job, Task::Eval(req), uuid, timeout, &mut failed_to_start);
                    }
                    Action::StartBuild { job, uuid, drv_path } => {
                        let timeout = self.config.build_timeout;
                        self.start(state, job, Task::Build(drv_path), uuid, timeout, &mut failed_to_start);
                    }
                    Action::Cancel { job, reason } => {
                        if let Some(running) = state.jobs.get(&job) {
                            running.cancel(reason);
                        }
                    }
                    Action::Record(record) => self.record(record, rs),
                    Action::Notify(Notification::EvaluationDone(uuid)) => {
                        let _ = self.evaluation_done.0.send(uuid);
                    }
                    Action::Notify(Notification::BuildDone(uuid)) => {
                        let _ = self.build_done.0.send(uuid);
                    }
                }
            }
            let Some((job, error)) = failed_to_start.pop() else { break };
            state.machine.handle_finished(job, Outcome::Failed(error));
            self.job_ended.notify_all();
        }
    }

    fn eval_request(&self, uuid: &str) -> EvalRequest {
        let commit_id = self.store.generation(uuid).map(|g| g.selected_commit_id).unwrap_or_default();
        EvalRequest {
            repository_path: self.config.repository_path.clone(),
            repository_subdir: self.config.repository_subdir.clone(),
            commit_id,
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
        timeout: Duration,
        failed_to_start: &mut Vec<(JobId, JobError)>,
    ) {
        // Finished jobs are joined here; their threads have returned, so this does
        // not block.
        state.jobs.retain(|_, job| !job.is_finished());
        let (phase, grace) = match task {
            Task::Eval(_) => (log_line::Phase::Eval, self.config.process.eval_kill_grace),
            Task::Build(_) => (log_line::Phase::Build, self.config.process.kill_grace),
        };
        let logs = self.subscribers.log_sink(uuid, phase);
        let outcome: Arc<Mutex<Option<Outcome>>> = Arc::default();
        let work = {
            let (shared, outcome) = (self.clone(), outcome.clone());
            move |ctx: &JobContext| {
                *outcome.lock() = Some(shared.perform_task(&task, ctx)?);
                Ok(())
            }
        };
        let on_finished = {
            let shared = self.clone();
            move |result: &Result<(), JobError>| {
                let outcome = match result {
                    Ok(()) => outcome.lock().take().expect("a job that succeeded left its outcome"),
                    Err(e) => Outcome::Failed(e.clone()),
                };
                shared.finish(id, outcome);
            }
        };
        let mut job = Job::new(work, timeout)
            .with_options(self.config.process.clone())
            .with_kill_grace(grace)
            .with_log_sink(logs)
            .with_gc_root_owner(self.store.id())
            .on_finished(on_finished);
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

    /// The body of every job: what the executor is asked, and what it answered.
    fn perform_task(&self, task: &Task, ctx: &JobContext) -> Result<Outcome, JobError> {
        let executor = &self.executor;
        match task {
            Task::Eval(req) => {
                executor.release_unused(&self.store.live_drv_paths(), ctx);
                let output = executor.eval(req, ctx)?;
                if output.drv_path.is_empty() || output.out_path.is_empty() {
                    return Err(JobError::Failed(format!(
                        "the evaluation returned an empty derivation or output path ({output:?})"
                    )));
                }
                let out_path_valid = executor.is_built(&output, ctx);
                Ok(Outcome::Evaluated { output, out_path_valid })
            }
            Task::Build(drv_path) => executor.build(drv_path, ctx).map(|()| Outcome::Built),
        }
    }

    fn record(&self, record: Record, rs: Option<&proto::RepositoryStatus>) {
        let store = &self.store;
        let (uuid, kind): (String, fn(proto::Generation) -> event::Kind) = match record {
            Record::EvalStarted { uuid } => {
                let config = &self.config;
                let new = NewGeneration {
                    uuid: &uuid,
                    hostname: &config.hostname,
                    repository_path: &config.repository_path.to_string_lossy(),
                    repository_subdir: &config.repository_subdir,
                    system_attr: &config.system_attr,
                };
                store.generation_eval_started(new, rs.unwrap_or(&Default::default()));
                (uuid, |g| event::Kind::EvalStarted(proto::EvalStarted { generation: Some(g) }))
            }
            Record::EvalFinished { uuid, result } => {
                store.generation_eval_finished(&uuid, &result);
                (uuid, |g| event::Kind::EvalFinished(proto::EvalFinished { generation: Some(g) }))
            }
            Record::BuildStarted { uuid, reason } => {
                store.generation_build_started(&uuid, reason);
                (uuid, |g| event::Kind::BuildStarted(proto::BuildStarted { generation: Some(g) }))
            }
            Record::BuildFinished { uuid, result } => {
                store.generation_build_finished(&uuid, &result);
                (uuid, |g| event::Kind::BuildFinished(proto::BuildFinished { generation: Some(g) }))
            }
        };
        let generation =
            store.generation(&uuid).unwrap_or_else(|| proto::Generation { uuid, ..Default::default() });
        self.subscribers.broadcast(kind(generation));
    }

    /// Hands a job's outcome to the machine; called by the job's `on_finished` hook.
    fn finish(self: &Arc<Self>, job: JobId, outcome: Outcome) {
        let mut state = self.state.lock();
        state.machine.handle_finished(job, outcome);
        self.perform(&mut state, None);
        self.job_ended.notify_all();
    }
}

/// What a job does.
enum Task {
    Eval(EvalRequest),
    Build(String),
}

#[derive(Default)]
struct Subscribers {
    list: Mutex<Vec<Subscriber>>,
}

struct Subscriber {
    tx: Sender<Event>,
    /// Log lines dropped since the last one sent.
    dropped: u64,
}

impl Subscribers {
    fn broadcast(&self, kind: event::Kind) {
        let event = Event { kind: Some(kind), created_at: Some(SystemTime::now().into()) };
        self.list.lock().retain(|s| s.tx.send(event.clone()).is_ok());
    }

    fn log_sink(self: &Arc<Self>, generation_uuid: String, phase: log_line::Phase) -> LogSink {
        let subscribers = self.clone();
        Arc::new(move |output| {
            let mut list = subscribers.list.lock();
            if list.is_empty() {
                return;
            }
            let created_at = Some(SystemTime::now().into());
            list.retain_mut(|s| {
                if s.tx.len() >= LOG_BACKLOG {
                    s.dropped += 1;
                    return true;
                }
                let kind = match output {
                    JobOutput::Line { stream, drv_path, text } => event::Kind::LogLine(proto::LogLine {
                        generation_uuid: generation_uuid.clone(),
                        phase: phase.into(),
                        stream: match stream {
                            Stream::Stdout => log_line::Stream::Stdout,
                            Stream::Stderr => log_line::Stream::Stderr,
                        }
                        .into(),
                        line: text.to_string(),
                        dropped_before: std::mem::take(&mut s.dropped),
                        drv_path: drv_path.unwrap_or_default().to_string(),
                    }),
                    JobOutput::Progress(p) => event::Kind::BuildProgress(proto::BuildProgress {
                        generation_uuid: generation_uuid.clone(),
                        done: p.done,
                        expected: p.expected,
                        running: p.running,
                        failed: p.failed,
                        building: p.building.clone(),
                    }),
                };
                s.tx.send(Event { kind: Some(kind), created_at }).is_ok()
            })
        })
    }
}
