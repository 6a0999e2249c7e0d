//! The thread-safe driver around the pure state machine: [`Builder`] and its
//! configuration.
//!
//! The driver decides nothing: what to cancel, start, record and notify, and when a
//! call must wait, comes from the machine (`machine.rs`). What it owns is the plumbing:
//! one mutex around the machine (every call feeds the machine and performs every queued
//! action before unlocking, as quinn's `Connection` driver does; a waiting call does so
//! again when woken), the jobs ([`Job`](crate::Job)), the store writes, the channels.
//!
//! * `attach`: one live builder per store; a second one is warned about.
//! * `driver`: the shared state behind every handle and the commands' locking and
//!   waiting; the one owner of the jobs' bookkeeping.
//! * `job_body`: what a builder's job does on its thread, and how it reports back.
//! * `reentry`: knowing, on a thread, that it runs one of this builder's jobs.
//! * `subscribers`: the fan-out of events, bounded in bytes, with progress coalesced.
//!
//! Locking rule: never join a job's thread or wait for a child while holding the state
//! mutex, because the job needs the mutex to record its result. Waiting for a
//! cancelled job is a condition-variable wait (the mutex is released); `stop()` begins
//! the stop under the lock, waits on the condition variable, ends it, then joins the
//! finished jobs outside the lock.

mod attach;
mod driver;
mod job_body;
mod reentry;
mod subscribers;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::error::Error;
use crate::executor::Executor;
use crate::process::ProcessOptions;
use crate::proto::{self, Event};
use crate::store::Store;
use driver::Shared;

/// What a [`Builder`] evaluates, and how long it lets jobs run.
///
/// Made with [`BuilderConfig::new`], then adjusted by assigning fields (the struct is
/// `#[non_exhaustive]`: fields may be added).
///
/// ```
/// use std::time::Duration;
/// let mut config = genbuild::BuilderConfig::new("web1", "/srv/infra");
/// config.system_attr = "nixosConfigurations".into();
/// config.build_timeout = Duration::from_secs(3600);
/// config.process.kill_grace = Duration::from_secs(10);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BuilderConfig {
    /// The machine's name: the configuration evaluated is the one of this host.
    pub hostname: String,
    /// The git repository holding the configuration.
    pub repository_path: PathBuf,
    /// The directory of the configuration inside the repository; `""` or `"."` for
    /// the repository root.
    pub repository_subdir: String,
    /// Legacy Nix: the attribute holding `.toplevel`; flakes: `nixosConfigurations`.
    pub system_attr: String,
    /// Whether the repository's submodules are part of the configuration.
    pub submodules: bool,
    /// How long an evaluation may run before it is killed ("timed out after …").
    /// Any duration is accepted; one too long to represent means "never".
    pub eval_timeout: Duration,
    /// How long a build may run before it is killed. Any duration is accepted.
    pub build_timeout: Duration,
    /// Bytes of memory each command of an evaluation may use, its processes together
    /// (`nix-instantiate` or `nix eval`, which is what grows); past it the command is
    /// killed and the evaluation fails: "… was killed: it reached its memory limit of
    /// …". `None` (the default): no limit. Enforced by the kernel (`memory.max`) where
    /// the commands' cgroups have the memory controller, by a watchdog sampling every
    /// 50 ms elsewhere (it may overshoot by what is allocated in one interval): see
    /// [`Job::with_memory_limit`](crate::Job::with_memory_limit).
    pub eval_memory_limit: Option<u64>,
    /// The same for each command of a build. Through a `nix-daemon`, the builders are
    /// the daemon's children, outside the command's reach: the limit then bounds the
    /// Nix client only.
    pub build_memory_limit: Option<u64>,
    /// Grace periods, wait strategy and containment of the jobs' processes.
    pub process: ProcessOptions,
    /// The bytes of log lines and progress events queued for one subscriber beyond
    /// which further ones are dropped until it catches up (16 MiB by default).
    /// Lifecycle events are never dropped and may exceed it.
    pub subscriber_backlog_bytes: usize,
}

impl BuilderConfig {
    /// A configuration for `hostname`'s system in the repository at
    /// `repository_path`, with the defaults: repository root, `nixosConfigurations`,
    /// no submodules, 30 minute timeouts, no memory limits, [`ProcessOptions::default`],
    /// 16 MiB of backlog per subscriber.
    pub fn new(hostname: impl Into<String>, repository_path: impl Into<PathBuf>) -> Self {
        BuilderConfig {
            hostname: hostname.into(),
            repository_path: repository_path.into(),
            repository_subdir: String::new(),
            system_attr: "nixosConfigurations".into(),
            submodules: false,
            eval_timeout: Duration::from_secs(30 * 60),
            build_timeout: Duration::from_secs(30 * 60),
            eval_memory_limit: None,
            build_memory_limit: None,
            process: ProcessOptions::default(),
            subscriber_backlog_bytes: 16 << 20,
        }
    }
}

/// Evaluates and builds one generation at a time; see the [crate documentation](crate)
/// for a tour, and its "Guarantees" section for what holds under racing calls.
///
/// A cheap handle: clone it freely, share it between threads (it is `Send + Sync`).
/// Dropping the last handle stops the running job and waits for it, as
/// [`stop`](Builder::stop) does; the receivers handed out then disconnect once they
/// are empty.
///
/// Calls made on a job's own thread (from an [`Executor`] of this builder) never
/// wedge it: [`eval`](Builder::eval) and [`suspend`](Builder::suspend), which would
/// wait for that very job, are refused with [`Error::CalledFromJob`];
/// [`stop`](Builder::stop) and dropping the last handle cancel without waiting for
/// the calling job; everything else works as anywhere.
#[derive(Clone)]
pub struct Builder {
    shared: Arc<StopOnDrop>,
}

/// Shared by every clone of a [`Builder`]: dropping the last one stops the builder
/// (and lets go of its store). Jobs hold the [`Shared`] state only, so that a running
/// job does not keep the builder alive.
struct StopOnDrop {
    shared: Arc<Shared>,
    _attached: attach::Attached,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Builder>();
    send_and_sync::<Store>();
};

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("Builder")
            .field("hostname", &state.hostname)
            .field("generation_uuid", &state.generation_uuid)
            .field("is_evaluating", &state.is_evaluating.unwrap_or_default())
            .field("is_building", &state.is_building.unwrap_or_default())
            .field("is_suspended", &state.is_suspended.unwrap_or_default())
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// A builder with no current generation, evaluating and building with
    /// `executor` and recording generations in `store`. Starts no thread.
    ///
    /// **One builder per store at a time.** The store's rules are store-wide (it keeps
    /// the last generations of each kind, whoever made them) and its
    /// [`id`](Store::id) names the owner of the Nix executors' gc roots: two live
    /// builders over one store (or over two stores of one file) drop each other's
    /// generations and release each other's roots. A builder made after the last handle
    /// of the previous one was dropped (a restart) takes over its generations, roots and
    /// reusable evaluations. A second live builder is not refused (this returns no
    /// error): a warning naming the store is logged.
    ///
    /// # Examples
    /// ```
    /// use std::sync::Arc;
    /// use genbuild::{Builder, BuilderConfig, NixExecutor, NixOptions, Store};
    ///
    /// let builder = Builder::new(
    ///     BuilderConfig::new("web1", "/srv/infra"),
    ///     Arc::new(Store::new()),
    ///     Arc::new(NixExecutor::new(NixOptions::default())),
    /// );
    /// assert!(!builder.is_evaluating());
    /// assert_eq!(builder.generation_uuid(), None);
    /// ```
    pub fn new(config: BuilderConfig, store: Arc<Store>, executor: Arc<dyn Executor>) -> Builder {
        let attached = attach::attach(&store);
        let shared = Arc::new(Shared::new(config, store, executor));
        Builder { shared: Arc::new(StopOnDrop { shared, _attached: attached }) }
    }

    /// A builder around `shared`, for tests that set up its state themselves.
    #[cfg(test)]
    fn from_shared(shared: Arc<Shared>) -> Builder {
        let attached = attach::attach(&shared.store);
        Builder { shared: Arc::new(StopOnDrop { shared, _attached: attached }) }
    }

    fn driver(&self) -> &Arc<Shared> {
        &self.shared.shared
    }

    /// Evaluates the commit of `rs` as a new generation, which becomes the current
    /// one, and returns its uuid.
    ///
    /// Blocks while a job runs: cancels it ("cancelled: superseded by generation …")
    /// and waits until its result is recorded and its processes are gone, then starts
    /// the evaluation and returns without waiting for it. The evaluation's end is
    /// announced on [`evaluation_done`](Builder::evaluation_done), or on
    /// [`build_done`](Builder::build_done) when its output is already in the store.
    ///
    /// # Reused evaluations
    ///
    /// When the executor gives the request a reuse key
    /// ([`Executor::eval_reuse_key`]: the commit and every other input that can change
    /// the result; [`FlakeExecutor`](crate::FlakeExecutor) always,
    /// [`NixExecutor`](crate::NixExecutor) only when
    /// [`reuse_legacy_evaluations`](crate::NixOptions::reuse_legacy_evaluations) is on),
    /// and the store keeps a successful evaluation under that key (from this builder,
    /// or from an earlier one over the same store: before a restart), and the executor finds
    /// its `.drv` still valid ([`Executor::reuse_evaluation`], which roots it again for
    /// this builder): the generation is recorded evaluated from that result, with no
    /// evaluator process, and `eval_reused_from` names the generation that was
    /// evaluated. The rest is as after any evaluation: `evaluation_done`, or the
    /// "already built" shortcut. The new generation keeps its own repository status
    /// (branch, remote, message, testing flag are not inputs) and the timestamps of
    /// the reuse. The reuse runs as the evaluation job (the lookup is I/O), so this
    /// still returns at once, and [`stop`](Builder::stop) or a newer `eval` cancel it as
    /// any evaluation.
    ///
    /// Never reused: an evaluation that failed, timed out or was cancelled; one whose
    /// `.drv` is no longer valid (collected; it is then forgotten, and the commit is
    /// evaluated); one with any input different. The store keeps the
    /// [`MAX_REUSABLE_EVALUATIONS`](crate::store::MAX_REUSABLE_EVALUATIONS) keys last
    /// evaluated or reused.
    ///
    /// # Errors
    /// [`Error::Stopped`] when [`stop`](Builder::stop) was called while this waited for
    /// the running job (no generation is created); [`Error::CalledFromJob`] when called
    /// from one of this builder's own jobs.
    ///
    /// # Examples
    /// ```
    /// # use std::sync::Arc;
    /// # use genbuild::*;
    /// # struct Instant;
    /// # impl Executor for Instant {
    /// #     fn eval(&self, _: &EvalRequest, _: &JobContext) -> Result<EvalOutput, JobError> {
    /// #         Ok(EvalOutput { drv_path: "/nix/store/x.drv".into(), out_path: "/nix/store/x".into(),
    /// #             machine_id: String::new() })
    /// #     }
    /// #     fn build(&self, _: &str, _: &JobContext) -> Result<(), JobError> { Ok(()) }
    /// #     fn is_store_path_valid(&self, _: &str) -> bool { false }
    /// # }
    /// # let builder = Builder::new(BuilderConfig::new("web1", "/srv/infra"), Arc::new(Store::new()), Arc::new(Instant));
    /// let rs = genbuild::proto::RepositoryStatus {
    ///     selected_commit_id: "0123456789abcdef0123456789abcdef01234567".into(),
    ///     ..Default::default()
    /// };
    /// let uuid = builder.eval(&rs)?;
    /// assert_eq!(builder.generation_uuid(), Some(uuid.clone()));
    /// assert_eq!(builder.evaluation_done().recv()?, uuid);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn eval(&self, rs: &proto::RepositoryStatus) -> Result<String, Error> {
        self.driver().eval(rs)
    }

    /// Builds the evaluated generation `generation_uuid`: now, or on
    /// [`resume`](Builder::resume) when suspended. Never blocks: returns once the build
    /// started (or was queued); its end is announced on
    /// [`build_done`](Builder::build_done).
    ///
    /// A generation found in the store (evaluated before a restart) may be built while
    /// the builder has no current generation; it then becomes the current one.
    ///
    /// # Errors
    /// Checked in this order: [`Error::AnotherGeneration`],
    /// [`Error::UnknownGeneration`], [`Error::NotEvaluated`], [`Error::AlreadyBuilding`],
    /// [`Error::AlreadyBuilt`].
    ///
    /// # Examples
    /// ```
    /// # use std::sync::Arc;
    /// # use genbuild::*;
    /// # struct Instant;
    /// # impl Executor for Instant {
    /// #     fn eval(&self, _: &EvalRequest, _: &JobContext) -> Result<EvalOutput, JobError> {
    /// #         Ok(EvalOutput { drv_path: "/nix/store/x.drv".into(), out_path: "/nix/store/x".into(),
    /// #             machine_id: String::new() })
    /// #     }
    /// #     fn build(&self, _: &str, _: &JobContext) -> Result<(), JobError> { Ok(()) }
    /// #     fn is_store_path_valid(&self, _: &str) -> bool { false }
    /// # }
    /// # let builder = Builder::new(BuilderConfig::new("web1", "/srv/infra"), Arc::new(Store::new()), Arc::new(Instant));
    /// # let uuid = builder.eval(&Default::default())?;
    /// # builder.evaluation_done().recv()?;
    /// builder.submit_build(&uuid)?;
    /// assert_eq!(builder.build_done().recv()?, uuid);
    /// assert_eq!(builder.submit_build(&uuid), Err(genbuild::Error::AlreadyBuilt));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn submit_build(&self, generation_uuid: &str) -> Result<(), Error> {
        self.driver().submit_build(generation_uuid)
    }

    /// Stops building until [`resume`](Builder::resume). A running build is cancelled
    /// ("cancelled: suspended", announced on `build_done`) and started again on
    /// resume; a running evaluation goes on.
    ///
    /// Blocks while a build runs, until its result is recorded and its processes are
    /// gone.
    ///
    /// # Errors
    /// [`Error::AlreadySuspended`]; [`Error::CalledFromJob`] when called from one of
    /// this builder's own jobs.
    pub fn suspend(&self) -> Result<(), Error> {
        self.driver().suspend()
    }

    /// Builds again: the current generation is built if a build of it was submitted
    /// while suspended, or was cancelled by [`suspend`](Builder::suspend) (and not
    /// stopped or superseded since). Never builds a generation nobody submitted.
    /// Never blocks.
    ///
    /// # Errors
    /// [`Error::NotSuspended`].
    pub fn resume(&self) -> Result<(), Error> {
        self.driver().resume()
    }

    /// Cancels the running evaluation or build ("cancelled: stopped") and forgets
    /// every pending request; blocks until the job's processes are gone and its result
    /// is recorded. Not terminal: [`eval`](Builder::eval) may follow.
    ///
    /// Stronger than every request made before it: when it returns, in every thread
    /// that called it, no job runs and none is queued, a later
    /// [`resume`](Builder::resume) builds nothing that was wanted before, and an
    /// [`eval`](Builder::eval) that was waiting for the job gives up with
    /// [`Error::Stopped`]. No job starts while it waits: an `eval` made meanwhile (from
    /// another thread) waits until it returned, then starts; a build that
    /// [`submit_build`](Builder::submit_build) or `resume` (which never block) start
    /// meanwhile ends at once, "cancelled: stopped", announced on
    /// [`build_done`](Builder::build_done). Calls made after it returned take effect
    /// after it.
    ///
    /// Called from one of this builder's own jobs, it cancels that job and returns at
    /// once: it cannot wait for its own caller, which ends when its work returns.
    ///
    /// # Examples
    /// ```
    /// # use std::sync::Arc;
    /// # use genbuild::*;
    /// # struct Instant;
    /// # impl Executor for Instant {
    /// #     fn eval(&self, _: &EvalRequest, _: &JobContext) -> Result<EvalOutput, JobError> {
    /// #         Ok(EvalOutput { drv_path: "/nix/store/x.drv".into(), out_path: "/nix/store/x".into(),
    /// #             machine_id: String::new() })
    /// #     }
    /// #     fn build(&self, _: &str, _: &JobContext) -> Result<(), JobError> { Ok(()) }
    /// #     fn is_store_path_valid(&self, _: &str) -> bool { false }
    /// # }
    /// # let builder = Builder::new(BuilderConfig::new("web1", "/srv/infra"), Arc::new(Store::new()), Arc::new(Instant));
    /// let uuid = builder.eval(&Default::default())?;
    /// builder.stop();
    /// assert!(!builder.is_evaluating());
    /// // The evaluation was either stopped or had already ended: it announced its end.
    /// assert_eq!(builder.evaluation_done().recv()?, uuid);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stop(&self) {
        self.driver().stop();
    }

    /// A snapshot of the builder: hostname, what runs, whether suspended, the current
    /// generation (a copy from the store), the last store error, and the latest
    /// progress of the running build. Never blocks on a job.
    pub fn state(&self) -> proto::Builder {
        self.driver().state()
    }

    /// Whether an evaluation runs (also one cancelled that has not ended yet).
    pub fn is_evaluating(&self) -> bool {
        self.driver().state.lock().machine.is_evaluating()
    }

    /// Whether a build runs (also one cancelled that has not ended yet).
    pub fn is_building(&self) -> bool {
        self.driver().state.lock().machine.is_building()
    }

    /// Whether the builder is suspended.
    pub fn is_suspended(&self) -> bool {
        self.driver().state.lock().machine.is_suspended()
    }

    /// The current generation's uuid: the last one evaluated, or the one a build was
    /// submitted for; `None` before either.
    pub fn generation_uuid(&self) -> Option<String> {
        self.driver().state.lock().machine.generation_uuid().map(str::to_string)
    }

    /// Receives the uuid of every generation whose evaluation ended (succeeded, failed
    /// or cancelled) without its output being already in the store, in order.
    ///
    /// Unbounded: nothing is dropped however long nobody reads. Every call returns the
    /// same channel, so a message goes to exactly one of its receivers. Disconnects
    /// (once empty) only after the last handle of the builder was dropped.
    pub fn evaluation_done(&self) -> Receiver<String> {
        self.driver().evaluation_done.rx.clone()
    }

    /// Receives the uuid of every generation whose build ended (built, failed,
    /// cancelled), including the "already built" shortcut of an evaluation, in order.
    /// Same guarantees as [`evaluation_done`](Builder::evaluation_done).
    pub fn build_done(&self) -> Receiver<String> {
        self.driver().build_done.rx.clone()
    }

    /// A new stream of events from now on: every lifecycle event (evaluation and build
    /// started and finished), in order and never dropped; the jobs' log lines and the
    /// builds' progress, which are dropped while more than
    /// [`subscriber_backlog_bytes`](BuilderConfig::subscriber_backlog_bytes) of them wait
    /// unread (dropped lines are counted in the next line's `dropped_before`).
    /// Progress is coalesced to about ten events a second per build, the last one of a
    /// build always sent before its end.
    ///
    /// Sending never blocks the builder or a job. Dropping the receiver unsubscribes;
    /// the receiver disconnects (once empty) after the last handle of the builder was
    /// dropped.
    ///
    /// # Examples
    /// ```
    /// use genbuild::proto::event::Kind;
    /// # use std::sync::Arc;
    /// # use genbuild::*;
    /// # struct Instant;
    /// # impl Executor for Instant {
    /// #     fn eval(&self, _: &EvalRequest, _: &JobContext) -> Result<EvalOutput, JobError> {
    /// #         Ok(EvalOutput { drv_path: "/nix/store/x.drv".into(), out_path: "/nix/store/x".into(),
    /// #             machine_id: String::new() })
    /// #     }
    /// #     fn build(&self, _: &str, _: &JobContext) -> Result<(), JobError> { Ok(()) }
    /// #     fn is_store_path_valid(&self, _: &str) -> bool { false }
    /// # }
    /// # let builder = Builder::new(BuilderConfig::new("web1", "/srv/infra"), Arc::new(Store::new()), Arc::new(Instant));
    /// let events = builder.subscribe();
    /// let uuid = builder.eval(&Default::default())?;
    /// let Some(Kind::EvalStarted(started)) = events.recv()?.kind else { panic!() };
    /// assert_eq!(started.generation.unwrap().uuid, uuid);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn subscribe(&self) -> Receiver<Event> {
        self.driver().subscribers.subscribe()
    }

    /// How many calls wait for a job to end right now (for the fuzzing checks, which
    /// need to know that a racing call has reached its wait).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn waiting_calls(&self) -> usize {
        self.driver().state.lock().waiting_calls
    }
}
