//! genbuild evaluates and builds **one NixOS generation at a time**, the way a GitOps
//! agent needs it: a new commit arrives, [`Builder::eval`] evaluates it, the caller
//! confirms with [`Builder::submit_build`], and a newer commit pre-empts whatever was
//! running. Plain OS threads, no async runtime.
//!
//! Layers, one direction:
//! * [`machine`]: the pure state machine holding every rule (no threads, clocks, I/O);
//! * [`Builder`]: the thread-safe driver performing what the machine decides;
//! * [`Job`] / [`JobContext`]: jobs on threads of their own, commands in their own
//!   process group, cancelled and timed out without polling;
//! * [`Executor`]: what the jobs ask of Nix ([`NixExecutor`], [`FlakeExecutor`]);
//! * [`Store`]: the generations, optionally persisted atomically.
#![doc = include_str!("../README.md")]

mod builder;
mod error;
pub mod executor;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod job;
pub mod machine;
mod process;
pub mod proto;
pub mod store;

pub use builder::{Builder, BuilderConfig, BUILD_REASON_ALREADY_BUILT, BUILD_REASON_NEED_BUILD};
pub use error::{CancelReason, Error, JobError, StoreError};
pub use executor::{EvalOutput, EvalRequest, Executor, FlakeExecutor, NixExecutor, NixOptions};
pub use job::{Job, JobContext, JobOutput, LogSink, Progress, Work};
pub use process::{CommandOutput, Containment, ProcessOptions, Stream, WaitStrategy};
pub use store::Store;
