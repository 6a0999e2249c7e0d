//! genbuild evaluates and builds **one NixOS generation at a time**, the way a GitOps
//! agent needs it: a new commit arrives, [`Builder::eval`] evaluates it, the caller
//! confirms with [`Builder::submit_build`], and a newer commit pre-empts whatever was
//! running. Plain OS threads, no async runtime: any program can embed it.
//!
//! # A tour
//!
//! A [`Builder`] asks an [`Executor`] to evaluate and build: [`NixExecutor`] and
//! [`FlakeExecutor`] run Nix; this tour uses one that answers at once.
//!
//! ```
//! use std::sync::Arc;
//! use genbuild::{Builder, BuilderConfig, EvalOutput, EvalRequest, Executor, JobContext, JobError, Store};
//!
//! struct Instant;
//!
//! impl Executor for Instant {
//!     fn eval(&self, _: &EvalRequest, _: &JobContext) -> Result<EvalOutput, JobError> {
//!         Ok(EvalOutput {
//!             drv_path: "/nix/store/abc-nixos-system.drv".into(),
//!             out_path: "/nix/store/abc-nixos-system".into(),
//!             machine_id: String::new(),
//!         })
//!     }
//!     fn build(&self, _: &str, _: &JobContext) -> Result<(), JobError> {
//!         Ok(())
//!     }
//!     fn is_store_path_valid(&self, _: &str) -> bool {
//!         false
//!     }
//! }
//!
//! let config = BuilderConfig::new("web1", "/srv/infra");
//! let builder = Builder::new(config, Arc::new(Store::new()), Arc::new(Instant));
//! assert_eq!(builder.generation_uuid(), None);
//! ```
//!
//! [`eval`](Builder::eval) creates a generation for a commit and starts evaluating it;
//! it returns the generation's uuid without waiting. The evaluation's end is announced
//! on [`evaluation_done`](Builder::evaluation_done):
//!
//! ```
//! # use std::sync::Arc;
//! # use genbuild::*;
//! # struct Instant;
//! # impl Executor for Instant {
//! #     fn eval(&self, _: &EvalRequest, _: &JobContext) -> Result<EvalOutput, JobError> {
//! #         Ok(EvalOutput { drv_path: "/nix/store/abc-nixos-system.drv".into(),
//! #             out_path: "/nix/store/abc-nixos-system".into(), machine_id: String::new() })
//! #     }
//! #     fn build(&self, _: &str, _: &JobContext) -> Result<(), JobError> { Ok(()) }
//! #     fn is_store_path_valid(&self, _: &str) -> bool { false }
//! # }
//! # let builder = Builder::new(BuilderConfig::new("web1", "/srv/infra"), Arc::new(Store::new()), Arc::new(Instant));
//! use genbuild::proto::{status, RepositoryStatus};
//!
//! let rs = RepositoryStatus {
//!     selected_commit_id: "0123456789abcdef0123456789abcdef01234567".into(),
//!     selected_branch_name: "main".into(),
//!     ..Default::default()
//! };
//! let uuid = builder.eval(&rs)?;
//! assert_eq!(builder.evaluation_done().recv()?, uuid);
//!
//! let generation = builder.state().generation.unwrap();
//! assert_eq!(generation.eval_status, status::EVALUATED);
//! assert_eq!(generation.drv_path, "/nix/store/abc-nixos-system.drv");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Nothing is built until the caller says so with
//! [`submit_build`](Builder::submit_build); the build's end comes on
//! [`build_done`](Builder::build_done). Refusals are [`Error`]s with fixed messages:
//!
//! ```
//! # use std::sync::Arc;
//! # use genbuild::*;
//! # struct Instant;
//! # impl Executor for Instant {
//! #     fn eval(&self, _: &EvalRequest, _: &JobContext) -> Result<EvalOutput, JobError> {
//! #         Ok(EvalOutput { drv_path: "/nix/store/abc-nixos-system.drv".into(),
//! #             out_path: "/nix/store/abc-nixos-system".into(), machine_id: String::new() })
//! #     }
//! #     fn build(&self, _: &str, _: &JobContext) -> Result<(), JobError> { Ok(()) }
//! #     fn is_store_path_valid(&self, _: &str) -> bool { false }
//! # }
//! # let builder = Builder::new(BuilderConfig::new("web1", "/srv/infra"), Arc::new(Store::new()), Arc::new(Instant));
//! # let uuid = builder.eval(&Default::default())?;
//! # builder.evaluation_done().recv()?;
//! builder.submit_build(&uuid)?;
//! assert_eq!(builder.build_done().recv()?, uuid);
//! assert_eq!(builder.state().generation.unwrap().build_status, genbuild::proto::status::BUILT);
//!
//! let again = builder.submit_build(&uuid).unwrap_err();
//! assert_eq!(again.to_string(), "the generation is already built");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`subscribe`](Builder::subscribe) streams what happens as [`proto::Event`]s: the
//! lifecycle of every generation, the jobs' log lines, the builds' progress. And
//! [`stop`](Builder::stop) cancels what runs and returns once it is gone:
//!
//! ```
//! # use std::sync::Arc;
//! # use genbuild::*;
//! # struct Instant;
//! # impl Executor for Instant {
//! #     fn eval(&self, _: &EvalRequest, _: &JobContext) -> Result<EvalOutput, JobError> {
//! #         Ok(EvalOutput { drv_path: "/nix/store/abc-nixos-system.drv".into(),
//! #             out_path: "/nix/store/abc-nixos-system".into(), machine_id: String::new() })
//! #     }
//! #     fn build(&self, _: &str, _: &JobContext) -> Result<(), JobError> { Ok(()) }
//! #     fn is_store_path_valid(&self, _: &str) -> bool { false }
//! # }
//! # let builder = Builder::new(BuilderConfig::new("web1", "/srv/infra"), Arc::new(Store::new()), Arc::new(Instant));
//! use genbuild::proto::event::Kind;
//!
//! let events = builder.subscribe();
//! let uuid = builder.eval(&Default::default())?;
//! builder.stop();
//! assert!(!builder.is_evaluating());
//!
//! let lifecycle: Vec<&str> = events
//!     .try_iter()
//!     .filter_map(|event| match event.kind? {
//!         Kind::EvalStarted(_) => Some("eval started"),
//!         Kind::EvalFinished(_) => Some("eval finished"),
//!         _ => None,
//!     })
//!     .collect();
//! assert_eq!(lifecycle, ["eval started", "eval finished"]);
//! // Stopped or finished first, the evaluation announced its end exactly once.
//! assert_eq!(builder.evaluation_done().try_iter().collect::<Vec<_>>(), [uuid]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Guarantees
//!
//! * **One job at a time.** An [`eval`](Builder::eval) cancels the running evaluation
//!   or build ("cancelled: superseded by generation …") and waits until its result is
//!   recorded and its processes are gone. Cancelling terminates a job's whole process
//!   tree: SIGTERM, then SIGKILL after a grace period (see [`ProcessOptions`]).
//! * **stop() is stronger than every request made before it.** When
//!   [`stop`](Builder::stop) returns, in every thread that called it, and when the
//!   last handle is dropped: no job runs, none is queued, and a later
//!   [`resume`](Builder::resume) builds nothing that was wanted before the stop; an
//!   `eval` that was waiting for the cancelled job gives up with [`Error::Stopped`].
//!   No job starts while it waits: an `eval` from another thread starts after it, a
//!   build submitted or resumed meanwhile ends at once, "cancelled: stopped". A job
//!   cancelled several times records the strongest reason: stopped, then superseded,
//!   then suspended. The builder stays usable: `eval` may follow.
//! * **Notifications are never dropped.** Every started evaluation yields exactly one
//!   `evaluation_done` (or one `build_done` when its output is already in the store),
//!   every started build exactly one `build_done`, in order; each names the generation
//!   whose job ended. The channels are unbounded.
//! * **Memory is bounded in bytes.** A subscriber that does not read loses log lines
//!   and progress events beyond
//!   [`subscriber_backlog_bytes`](BuilderConfig::subscriber_backlog_bytes) (16 MiB by
//!   default; lost lines are counted in the next line's `dropped_before`), never a
//!   lifecycle event; progress is coalesced to about ten events a second per build,
//!   the last one of a build always delivered. Sending never blocks a job.
//! * **Calls from inside a job never wedge the builder.** An executor may hold a
//!   [`Builder`] and call it from its own job: [`eval`](Builder::eval) and
//!   [`suspend`](Builder::suspend), which would wait for that very job, are refused at
//!   once with [`Error::CalledFromJob`]; [`stop`](Builder::stop) and dropping the last
//!   handle cancel everything without waiting for the calling job (it ends when its
//!   work returns, and cannot be promised gone before); [`submit_build`](Builder::submit_build),
//!   [`resume`](Builder::resume) and every getter work as anywhere.
//! * **A commit is not evaluated twice.** An evaluation with the same inputs as an
//!   earlier successful one (the same reuse key, see [`Executor::eval_reuse_key`]:
//!   flakes always, legacy Nix when asked) whose `.drv` is still in the Nix store is
//!   recorded from that result without running an evaluator: a commit promoted from a
//!   testing branch, the commit re-evaluated after a restart (the [`Store`] keeps the
//!   results). The generation names its source in `eval_reused_from`. A failed or
//!   cancelled evaluation is never reused; a collected `.drv` means a real evaluation.
//!   See [`Builder::eval`].
//! * **Which calls block.** `eval`, `suspend` and `stop` wait for the running job when
//!   they cancel it; the other calls, and the getters, take the state lock only, which
//!   is never held while a job runs user code. A cancelled command gets SIGTERM, then
//!   SIGKILL if it is still there after the grace period
//!   ([`ProcessOptions::kill_grace`], 5 s, for builds;
//!   [`eval_kill_grace`](ProcessOptions::eval_kill_grace), 100 ms, for evaluations; a
//!   grace of `Duration::MAX` never forces, and the wait lasts until the command ends).
//!   On top of the grace come bounds that only processes SIGKILL cannot end at once
//!   (uninterruptible sleep) reach, at which a reaper thread takes them over: 2 s for
//!   the command to be reaped, 2 s for its cgroup to empty; then 200 ms at most for
//!   pipes held by a process outside the command's reach, which is then killed. Work
//!   of an executor that is not a command (Rust code between commands) is not
//!   interrupted: the wait lasts until it checks [`JobContext::is_cancelled`] or runs
//!   its next command, which then returns at once.
//! * **SIGCHLD must not be ignored.** genbuild reaps its own commands, after killing
//!   what they left behind. A program that sets SIGCHLD to `SIG_IGN` (as C daemons
//!   often do) or uses `SA_NOCLDWAIT` lets the kernel reap them first: exit statuses
//!   are lost and process group ids are no longer reserved. Commands are then not
//!   started and fail with a [`JobError::Failed`] that says so; see
//!   [`ProcessOptions`].
//!
//! # Layers, one direction
//!
//! * [`Builder`]: the thread-safe driver performing what its state machine (a private
//!   module, pure: no threads, clocks or I/O, fuzzed) decides;
//! * [`Job`] / [`JobContext`]: jobs on threads of their own, commands in their own
//!   process group, cancelled and timed out without polling;
//! * [`Executor`]: what the jobs ask of Nix ([`NixExecutor`], [`FlakeExecutor`]);
//! * [`Store`]: the generations, optionally persisted atomically.

mod builder;
mod error;
pub mod executor;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod job;
mod machine;
mod process;
pub mod proto;
mod status;
pub mod store;
mod threads;

#[cfg(test)]
#[path = "../tests/common/alone.rs"]
mod alone;

pub use builder::{Builder, BuilderConfig};
pub use error::{CancelReason, CommandFailure, Error, Exit, JobError, StoreError};
pub use executor::{EvalOutput, EvalRequest, Executor, FlakeExecutor, NixExecutor, NixOptions};
pub use job::{Job, JobContext, JobOutput, LogSink, Progress, Work};
pub use process::{
    AnyCommand, Command, CommandOutput, Containment, ProcessOptions, ResourceUsage, Stream, WaitStrategy,
};
pub use status::{
    BuildReason, BuildStatus, EvalStatus, UnknownStatus, BUILD_REASON_ALREADY_BUILT, BUILD_REASON_NEED_BUILD,
};
pub use store::Store;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
