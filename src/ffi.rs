//! The C ABI: a thin wrapper over [`Builder`] that a C or Go program can embed.
//!
//! `include/genbuild.h` is generated from this file by cbindgen (`cbindgen --config
//! cbindgen.toml --output include/genbuild.h`) and committed; the doc comments here are
//! the header's documentation, so they are written for a C reader.
//!
//! Conventions, the ones of rustls-ffi:
//! * every entry point returns a [`genbuild_result`] and takes, last, an `err`
//!   out-parameter: NULL to ignore, otherwise it is set to NULL on success and to a
//!   message the caller frees with [`genbuild_string_free`] on any other result;
//! * no panic crosses the boundary: each body runs under `boundary()`, which turns a
//!   panic into [`genbuild_result::Panic`];
//! * a NULL pointer where a value is required is [`genbuild_result::NullArgument`],
//!   bytes that are not UTF-8 or not the expected protobuf message are
//!   [`genbuild_result::InvalidArgument`]: never undefined behaviour. What the C side
//!   can still get wrong (a dangling pointer, a length longer than its buffer, a handle
//!   freed twice) is written down next to each parameter;
//! * messages cross as protobuf bytes (`proto/genbuild.proto`): RepositoryStatus in,
//!   Builder (the state) and Event out, in a [`genbuild_buffer`];
//! * a blocking [`genbuild_next_event`] instead of callbacks, so no Rust thread ever
//!   calls into C.
//!
//! Ownership, per type:
//! * [`genbuild_builder`]: created by [`genbuild_builder_new`], owned by the caller,
//!   released by exactly one [`genbuild_builder_destroy`];
//! * `char *` handed out (uuids, error messages): owned by the caller, released by
//!   [`genbuild_string_free`];
//! * [`genbuild_buffer`] handed out: owned by the caller, released by
//!   [`genbuild_buffer_free`];
//! * everything the caller passes in (config, strings, bytes) is only borrowed for the
//!   duration of the call and copied if kept.
#![allow(non_camel_case_types)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::any::Any;
use std::ffi::{c_char, CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use prost::Message;

use crate::error::Error;
use crate::executor::Executor;
use crate::proto::{self, Event};
use crate::{Builder, BuilderConfig, FlakeExecutor, NixExecutor, NixOptions, Store};

/// What every genbuild call returns. On anything but `GENBUILD_RESULT_OK`, the call's
/// `err` out-parameter (when not NULL) holds a message saying more.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum genbuild_result {
    /// The call succeeded.
    Ok = 0,
    /// `genbuild_next_event`: no event arrived within the timeout.
    Timeout = 1,
    /// A pointer that must not be NULL was NULL; the message names it.
    NullArgument = 2,
    /// An argument has a wrong value: a string that is not UTF-8, bytes that do not
    /// decode as the expected protobuf message, an unknown executor kind. (A commit id
    /// or subdirectory Nix must not see fails the evaluation instead: its `eval_err`
    /// says why.)
    InvalidArgument = 3,
    /// The builder refused the request; the message is the builder's, e.g. "the
    /// builder is already building" or "no generation with uuid … has been found".
    Refused = 4,
    /// The state file cannot be read or does not decode (it is left untouched).
    StoreError = 5,
    /// genbuild panicked; this is a bug. The handle stays usable but its state may be
    /// surprising.
    Panic = 6,
    /// The event stream ended; does not happen while the builder lives.
    Disconnected = 7,
}

/// Which Nix front end evaluates and builds: the legacy commands
/// (`nix-instantiate`, `nix-store`) on `default.nix`, or flakes (`nix eval`, `nix
/// build`) on `flake.nix`. The values of `genbuild_config.executor`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum genbuild_executor_kind {
    /// `nix-instantiate` / `nix-store --realise` on the repository's `default.nix`.
    Legacy = 0,
    /// `nix eval` / `nix build` on the repository's flake.
    Flake = 1,
}

/// How a builder is made. Zero-initialise it (`genbuild_config cfg = {0};`), then set
/// at least `repository_path` and `hostname`: every zero or NULL field means "the
/// default". Strings are NUL-terminated and only read during `genbuild_builder_new`.
#[repr(C)]
#[derive(Debug)]
pub struct genbuild_config {
    /// A `genbuild_executor_kind` value; 0 is `GENBUILD_EXECUTOR_KIND_LEGACY`.
    pub executor: u32,
    /// The git repository to evaluate commits of. Required.
    pub repository_path: *const c_char,
    /// The directory of the repository holding `default.nix` / `flake.nix`; NULL, ""
    /// or "." for the root. Must not leave the repository.
    pub repository_subdir: *const c_char,
    /// Legacy: the attribute path holding `.toplevel`; flakes: the attribute holding
    /// the configurations. NULL: "nixosConfigurations".
    pub system_attr: *const c_char,
    /// The machine's hostname, passed to Nix as data. Required.
    pub hostname: *const c_char,
    /// Whether git submodules are part of the source.
    pub submodules: bool,
    /// Evaluation timeout in milliseconds; 0: 30 minutes.
    pub eval_timeout_ms: u64,
    /// Build timeout in milliseconds; 0: 30 minutes.
    pub build_timeout_ms: u64,
    /// Milliseconds between SIGTERM and SIGKILL when a job is cancelled; 0: 5 seconds.
    pub kill_grace_ms: u64,
    /// Where the generations are persisted (protobuf, written atomically); NULL: in
    /// memory only. A file that does not decode makes `genbuild_builder_new` fail with
    /// `GENBUILD_RESULT_STORE_ERROR`.
    pub state_file: *const c_char,
    /// The directory of gc roots owned by genbuild; NULL: /nix/var/nix/gcroots/genbuild.
    pub gc_root_dir: *const c_char,
    /// The directory of the Nix binaries; NULL: found through PATH.
    pub nix_bin_dir: *const c_char,
    /// The attribute path, relative to the system, of the expected machine id; NULL:
    /// "config.services.comin.machineId".
    pub machine_id_attr: *const c_char,
    /// `nix_options_len` names of extra Nix options (`--option NAME VALUE` on every
    /// Nix call, e.g. "substituters", "max-jobs", "builders"); may be NULL when
    /// `nix_options_len` is 0.
    pub nix_option_names: *const *const c_char,
    /// `nix_options_len` values, one per name.
    pub nix_option_values: *const *const c_char,
    /// The number of entries of `nix_option_names` and `nix_option_values`.
    pub nix_options_len: usize,
}

/// Bytes handed out by genbuild: a serialized protobuf message. Owned by the caller,
/// released with `genbuild_buffer_free`. `data` is NULL when `len` is 0.
#[repr(C)]
#[derive(Debug)]
pub struct genbuild_buffer {
    pub data: *mut u8,
    pub len: usize,
}

/// A builder: evaluates and builds one NixOS generation at a time on its own threads.
///
/// Created by `genbuild_builder_new`, released by one `genbuild_builder_destroy`.
/// Every other call may be made from any thread, concurrently with the others.
pub struct genbuild_builder {
    builder: Builder,
    /// Subscribed at creation, so the first event is already in it.
    events: Receiver<Event>,
}

/// What went wrong in a call, before it is handed to C.
struct Failure {
    code: genbuild_result,
    message: String,
}

impl Failure {
    fn new(code: genbuild_result, message: impl Into<String>) -> Failure {
        Failure { code, message: message.into() }
    }

    fn null(name: &str) -> Failure {
        Failure::new(genbuild_result::NullArgument, format!("{name} is NULL"))
    }

    fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(genbuild_result::InvalidArgument, message)
    }

    fn panic(payload: &(dyn Any + Send)) -> Failure {
        let what = crate::job::panic_message(payload);
        Failure::new(genbuild_result::Panic, format!("genbuild panicked (this is a bug): {what}"))
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::new(genbuild_result::Refused, e.to_string())
    }
}

impl From<crate::error::StoreError> for Failure {
    fn from(e: crate::error::StoreError) -> Failure {
        Failure::new(genbuild_result::StoreError, e.to_string())
    }
}

/// A C string owned by the caller; NUL bytes inside `s` become U+FFFD.
fn c_string(s: String) -> *mut c_char {
    let c = CString::new(s).unwrap_or_else(|e| {
        let s = String::from_utf8_lossy(&e.into_vec()).replace('\0', "\u{fffd}");
        CString::new(s).expect("NUL bytes were replaced")
    });
    c.into_raw()
}

fn buffer(bytes: Vec<u8>) -> genbuild_buffer {
    if bytes.is_empty() {
        return genbuild_buffer { data: std::ptr::null_mut(), len: 0 };
    }
    let boxed = bytes.into_boxed_slice();
    let len = boxed.len();
    genbuild_buffer { data: Box::into_raw(boxed).cast::<u8>(), len }
}

/// The panic boundary around every entry point: clears `*err`, runs `body`, catches
/// its panic, and turns a failure into its code and, when `err` is not NULL, a message.
///
/// # Safety
/// `err` is NULL or valid for writing one pointer.
unsafe fn boundary(err: *mut *mut c_char, body: impl FnOnce() -> Result<(), Failure>) -> genbuild_result {
    if !err.is_null() {
        // SAFETY: the caller guarantees a non-NULL `err` is writable.
        unsafe { err.write(std::ptr::null_mut()) };
    }
    let failure = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return genbuild_result::Ok,
        Ok(Err(failure)) => failure,
        Err(payload) => Failure::panic(&*payload),
    };
    if !err.is_null() {
        // Formatting a message allocates; an allocation failure aborts, it does not
        // unwind, so nothing here can panic across the boundary.
        let message = c_string(failure.message);
        // SAFETY: as above.
        unsafe { err.write(message) };
    }
    failure.code
}

/// Returns `NullArgument` from the enclosing closure, naming the first NULL pointer.
macro_rules! check_null {
    ($($ptr:expr),+ $(,)?) => {
        $(
            if $ptr.is_null() {
                return Err(Failure::null(stringify!($ptr)));
            }
        )+
    };
}

/// The string at `ptr`, which must not be NULL.
///
/// # Safety
/// `ptr` points to a NUL-terminated string that lives and does not change during the
/// call.
unsafe fn str_arg<'a>(ptr: *const c_char, name: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::null(name));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let c = unsafe { CStr::from_ptr(ptr) };
    c.to_str().map_err(|e| Failure::invalid(format!("{name} is not UTF-8: {e}")))
}

/// The string at `ptr`, or `None` when `ptr` is NULL.
///
/// # Safety
/// As [`str_arg`], NULL allowed.
unsafe fn opt_str_arg<'a>(ptr: *const c_char, name: &str) -> Result<Option<&'a str>, Failure> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded contract; non-NULL checked.
    unsafe { str_arg(ptr, name) }.map(Some)
}

/// The path at `ptr` (any bytes but NUL), or `None` when `ptr` is NULL.
///
/// # Safety
/// As [`str_arg`], NULL allowed.
unsafe fn opt_path_arg(ptr: *const c_char) -> Option<PathBuf> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let c = unsafe { CStr::from_ptr(ptr) };
    Some(PathBuf::from(OsStr::from_bytes(c.to_bytes())))
}

/// `len` bytes at `ptr`; NULL is accepted when `len` is 0.
///
/// # Safety
/// A non-NULL `ptr` is valid for reading `len` bytes during the call.
unsafe fn bytes_arg<'a>(ptr: *const u8, len: usize, name: &str) -> Result<&'a [u8], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::null(name));
    }
    if len > isize::MAX as usize {
        return Err(Failure::invalid(format!("{name}: length {len} is larger than any buffer")));
    }
    // SAFETY: non-NULL, and readable for `len` bytes by the caller's contract; `len`
    // fits in isize as `from_raw_parts` requires.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// The builder behind `handle`.
///
/// # Safety
/// `handle` is NULL or a live pointer from `genbuild_builder_new`.
unsafe fn handle_arg<'a>(handle: *const genbuild_builder) -> Result<&'a genbuild_builder, Failure> {
    // SAFETY: a non-NULL handle is live by the caller's contract; only shared
    // references are ever made to it, and `genbuild_builder` is Sync.
    unsafe { handle.as_ref() }.ok_or_else(|| Failure::null("builder"))
}

fn millis_or(ms: u64, default: Duration) -> Duration {
    if ms == 0 {
        default
    } else {
        Duration::from_millis(ms)
    }
}

/// Reads the config. Everything is copied: nothing of `config` is kept.
///
/// # Safety
/// `config` is valid for reading, its strings as in [`str_arg`], its option arrays
/// readable for `nix_options_len` pointers each.
unsafe fn read_config(config: &genbuild_config) -> Result<Parts, Failure> {
    let kind = match config.executor {
        0 => genbuild_executor_kind::Legacy,
        1 => genbuild_executor_kind::Flake,
        other => return Err(Failure::invalid(format!("config->executor: unknown executor kind {other}"))),
    };
    // SAFETY (for every string of the config below): the caller's contract.
    let hostname = unsafe { str_arg(config.hostname, "config->hostname") }?;
    let Some(repository_path) = (unsafe { opt_path_arg(config.repository_path) }) else {
        return Err(Failure::null("config->repository_path"));
    };
    let mut builder_config = BuilderConfig::new(hostname, repository_path);
    if let Some(subdir) = unsafe { opt_str_arg(config.repository_subdir, "config->repository_subdir") }? {
        builder_config.repository_subdir = subdir.to_string();
    }
    if let Some(attr) = unsafe { opt_str_arg(config.system_attr, "config->system_attr") }? {
        builder_config.system_attr = attr.to_string();
    }
    builder_config.submodules = config.submodules;
    builder_config.eval_timeout = millis_or(config.eval_timeout_ms, builder_config.eval_timeout);
    builder_config.build_timeout = millis_or(config.build_timeout_ms, builder_config.build_timeout);
    builder_config.process.kill_grace = millis_or(config.kill_grace_ms, builder_config.process.kill_grace);

    let mut nix = NixOptions::default();
    if let Some(dir) = unsafe { opt_path_arg(config.gc_root_dir) } {
        nix.gc_root_dir = dir;
    }
    nix.bin_dir = unsafe { opt_path_arg(config.nix_bin_dir) };
    if let Some(attr) = unsafe { opt_str_arg(config.machine_id_attr, "config->machine_id_attr") }? {
        nix.machine_id_attr = attr.to_string();
    }
    let len = config.nix_options_len;
    if len > 0 {
        if config.nix_option_names.is_null() {
            return Err(Failure::null("config->nix_option_names"));
        }
        if config.nix_option_values.is_null() {
            return Err(Failure::null("config->nix_option_values"));
        }
        if len > isize::MAX as usize / std::mem::size_of::<*const c_char>() {
            return Err(Failure::invalid(format!("config->nix_options_len: {len} is too large")));
        }
        // SAFETY: both arrays are non-NULL and hold `len` pointers by the caller's
        // contract; the size fits in isize (checked above).
        let (names, values) = unsafe {
            (
                std::slice::from_raw_parts(config.nix_option_names, len),
                std::slice::from_raw_parts(config.nix_option_values, len),
            )
        };
        for (i, (&name, &value)) in names.iter().zip(values).enumerate() {
            let name = unsafe { str_arg(name, &format!("config->nix_option_names[{i}]")) }?;
            let value = unsafe { str_arg(value, &format!("config->nix_option_values[{i}]")) }?;
            if name.is_empty() {
                return Err(Failure::invalid(format!("config->nix_option_names[{i}] is empty")));
            }
            nix.options.push((name.to_string(), value.to_string()));
        }
    }
    let executor: Arc<dyn Executor> = match kind {
        genbuild_executor_kind::Legacy => Arc::new(NixExecutor::new(nix)),
        genbuild_executor_kind::Flake => Arc::new(FlakeExecutor::new(nix)),
    };
    let state_file = unsafe { opt_path_arg(config.state_file) };
    Ok(Parts { config: builder_config, state_file, executor })
}

/// What a [`genbuild_config`] makes.
struct Parts {
    config: BuilderConfig,
    state_file: Option<PathBuf>,
    executor: Arc<dyn Executor>,
}

/// Creates a builder from `config` and stores it in `*builder_out`.
///
/// The builder is subscribed to its own events from this moment: every event is kept
/// for `genbuild_next_event` (lifecycle events without limit; log lines up to 4096
/// unread ones, further lines are dropped and counted).
///
/// On failure `*builder_out` is set to NULL.
///
/// Thread safety: may be called from any thread.
///
/// # Safety
/// `config` is NULL or points to a readable `genbuild_config` whose non-NULL strings
/// are NUL-terminated and whose option arrays hold `nix_options_len` pointers each;
/// `builder_out` is NULL or writable; `err` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn genbuild_builder_new(
    config: *const genbuild_config,
    builder_out: *mut *mut genbuild_builder,
    err: *mut *mut c_char,
) -> genbuild_result {
    let body = || {
        check_null!(builder_out);
        // SAFETY: non-NULL, writable by the contract.
        unsafe { builder_out.write(std::ptr::null_mut()) };
        check_null!(config);
        // SAFETY: non-NULL and readable by the contract; only borrowed for this call.
        let config = unsafe { &*config };
        // SAFETY: the contract on `config`'s fields.
        let parts = unsafe { read_config(config) }?;
        let store = match parts.state_file {
            Some(path) => Store::open(path)?,
            None => Store::new(),
        };
        let builder = Builder::new(parts.config, Arc::new(store), parts.executor);
        let events = builder.subscribe();
        let handle = Box::into_raw(Box::new(genbuild_builder { builder, events }));
        // SAFETY: as above.
        unsafe { builder_out.write(handle) };
        Ok(())
    };
    // SAFETY: `err` is NULL or writable by the contract.
    unsafe { boundary(err, body) }
}

/// Stops the builder (cancels what runs, kills its processes, joins its threads; blocks
/// until done) and frees it. A NULL `builder` is accepted and does nothing.
///
/// Thread safety: no other call on this builder may be running or start, on any thread
/// (a thread blocked in `genbuild_next_event` on it must have returned first).
///
/// # Safety
/// `builder` is NULL or a pointer from `genbuild_builder_new` not destroyed yet; it
/// is dangling afterwards.
#[no_mangle]
pub unsafe extern "C" fn genbuild_builder_destroy(builder: *mut genbuild_builder) {
    if builder.is_null() {
        return;
    }
    // SAFETY: a live pointer from `Box::into_raw` in `genbuild_builder_new`, destroyed
    // once, with no other call in flight, by the contract.
    let boxed = unsafe { Box::from_raw(builder) };
    // Dropping the last Builder handle stops and joins; a panic there must not unwind
    // into C. There is no `err` to report it to.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(boxed)));
}

/// Evaluates the commit of a RepositoryStatus (protobuf bytes, `rs_len` of them at
/// `rs`) as a new generation; stores its uuid in `*uuid_out` (free it with
/// `genbuild_string_free`).
///
/// Cancels a running evaluation or build and blocks until its result is recorded,
/// then starts the evaluation and returns without waiting for it: its end is an
/// EvalFinished event (or BuildStarted and BuildFinished when the output is already in
/// the store). Undecodable bytes give `GENBUILD_RESULT_INVALID_ARGUMENT`; `rs` may be
/// NULL when `rs_len` is 0 (an empty RepositoryStatus, whose evaluation then fails).
///
/// Thread safety: may be called from any thread, concurrently with other calls.
///
/// # Safety
/// `builder` is NULL or live; a non-NULL `rs` is readable for `rs_len` bytes;
/// `uuid_out` and `err` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn genbuild_eval(
    builder: *const genbuild_builder,
    rs: *const u8,
    rs_len: usize,
    uuid_out: *mut *mut c_char,
    err: *mut *mut c_char,
) -> genbuild_result {
    let body = || {
        check_null!(uuid_out);
        // SAFETY: non-NULL, writable by the contract.
        unsafe { uuid_out.write(std::ptr::null_mut()) };
        // SAFETY: the contract on `builder` and `rs`.
        let (handle, bytes) = unsafe { (handle_arg(builder)?, bytes_arg(rs, rs_len, "rs")?) };
        let status = proto::RepositoryStatus::decode(bytes)
            .map_err(|e| Failure::invalid(format!("rs does not decode as a RepositoryStatus: {e}")))?;
        let uuid = handle.builder.eval(&status)?;
        // SAFETY: as above.
        unsafe { uuid_out.write(c_string(uuid)) };
        Ok(())
    };
    // SAFETY: `err` is NULL or writable by the contract.
    unsafe { boundary(err, body) }
}

/// Builds the evaluated generation `uuid` (a NUL-terminated string), now or, when
/// suspended, on `genbuild_resume`. Returns once the build started or was queued; its
/// end is a BuildFinished event.
///
/// Refusals (`GENBUILD_RESULT_REFUSED`), checked in this order, with these messages:
/// "another generation is evaluating or evaluated", "no generation with uuid UUID has
/// been found", "the generation is not evaluated", "the builder is already building",
/// "the generation is already built".
///
/// Thread safety: may be called from any thread, concurrently with other calls.
///
/// # Safety
/// `builder` is NULL or live; `uuid` is NULL or NUL-terminated; `err` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn genbuild_submit_build(
    builder: *const genbuild_builder,
    uuid: *const c_char,
    err: *mut *mut c_char,
) -> genbuild_result {
    let body = || {
        // SAFETY: the contract on `builder` and `uuid`.
        let (handle, uuid) = unsafe { (handle_arg(builder)?, str_arg(uuid, "uuid")?) };
        handle.builder.submit_build(uuid)?;
        Ok(())
    };
    // SAFETY: `err` is NULL or writable by the contract.
    unsafe { boundary(err, body) }
}

/// Stops building until `genbuild_resume`: a running build is cancelled ("cancelled:
/// suspended", a BuildFinished event) and this blocks until its result is recorded. A
/// running evaluation goes on. Refused with "the builder is already suspended".
///
/// Thread safety: may be called from any thread, concurrently with other calls.
///
/// # Safety
/// `builder` is NULL or live; `err` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn genbuild_suspend(
    builder: *const genbuild_builder,
    err: *mut *mut c_char,
) -> genbuild_result {
    let body = || {
        // SAFETY: the contract on `builder`.
        unsafe { handle_arg(builder) }?.builder.suspend()?;
        Ok(())
    };
    // SAFETY: `err` is NULL or writable by the contract.
    unsafe { boundary(err, body) }
}

/// Builds again: the current generation is built if its build was submitted while
/// suspended or cancelled by the suspension; nothing else is. Refused with "the
/// builder is not suspended".
///
/// Thread safety: may be called from any thread, concurrently with other calls.
///
/// # Safety
/// `builder` is NULL or live; `err` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn genbuild_resume(
    builder: *const genbuild_builder,
    err: *mut *mut c_char,
) -> genbuild_result {
    let body = || {
        // SAFETY: the contract on `builder`.
        unsafe { handle_arg(builder) }?.builder.resume()?;
        Ok(())
    };
    // SAFETY: `err` is NULL or writable by the contract.
    unsafe { boundary(err, body) }
}

/// Cancels the running evaluation or build ("cancelled: stopped"), kills its processes
/// and joins its thread; blocks until all that is done. Not terminal: `genbuild_eval`
/// may follow.
///
/// Thread safety: may be called from any thread, concurrently with other calls.
///
/// # Safety
/// `builder` is NULL or live; `err` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn genbuild_stop(
    builder: *const genbuild_builder,
    err: *mut *mut c_char,
) -> genbuild_result {
    let body = || {
        // SAFETY: the contract on `builder`.
        unsafe { handle_arg(builder) }?.builder.stop();
        Ok(())
    };
    // SAFETY: `err` is NULL or writable by the contract.
    unsafe { boundary(err, body) }
}

/// Stores a snapshot of the builder in `*state_out`: a serialized `genbuild.Builder`
/// message (hostname, is_evaluating, is_building, is_suspended, generation_uuid and
/// the current generation). Free it with `genbuild_buffer_free`. On failure
/// `*state_out` is `{NULL, 0}`.
///
/// Thread safety: may be called from any thread, concurrently with other calls.
///
/// # Safety
/// `builder` is NULL or live; `state_out` and `err` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn genbuild_state(
    builder: *const genbuild_builder,
    state_out: *mut genbuild_buffer,
    err: *mut *mut c_char,
) -> genbuild_result {
    let body = || {
        check_null!(state_out);
        // SAFETY: non-NULL, writable by the contract.
        unsafe { state_out.write(buffer(Vec::new())) };
        // SAFETY: the contract on `builder`.
        let state = unsafe { handle_arg(builder) }?.builder.state();
        // SAFETY: as above.
        unsafe { state_out.write(buffer(state.encode_to_vec())) };
        Ok(())
    };
    // SAFETY: `err` is NULL or writable by the contract.
    unsafe { boundary(err, body) }
}

/// Waits up to `timeout_ms` milliseconds (0: do not wait; UINT64_MAX: without end)
/// for the builder's next event and stores it in `*event_out`: a serialized
/// `genbuild.Event` (EvalStarted, EvalFinished, BuildStarted, BuildFinished, each with
/// the generation; or a LogLine). Free it with `genbuild_buffer_free`.
///
/// Returns `GENBUILD_RESULT_TIMEOUT`, with `*event_out` `{NULL, 0}`, when none came.
/// Events are kept from `genbuild_builder_new` on and come in order.
///
/// Thread safety: may be called from any thread; with several threads waiting, each
/// event goes to exactly one of them. `genbuild_builder_destroy` must not be called
/// while a thread waits here.
///
/// # Safety
/// `builder` is NULL or live; `event_out` and `err` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn genbuild_next_event(
    builder: *const genbuild_builder,
    timeout_ms: u64,
    event_out: *mut genbuild_buffer,
    err: *mut *mut c_char,
) -> genbuild_result {
    let body = || {
        check_null!(event_out);
        // SAFETY: non-NULL, writable by the contract.
        unsafe { event_out.write(buffer(Vec::new())) };
        // SAFETY: the contract on `builder`.
        let handle = unsafe { handle_arg(builder) }?;
        // C callers learn of ends from the events; the done channels would only pile up.
        handle.builder.evaluation_done().try_iter().for_each(drop);
        handle.builder.build_done().try_iter().for_each(drop);
        let event = match handle.events.recv_timeout(Duration::from_millis(timeout_ms)) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => {
                return Err(Failure::new(
                    genbuild_result::Timeout,
                    format!("no event within {timeout_ms} ms"),
                ))
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Failure::new(genbuild_result::Disconnected, "the event stream ended"))
            }
        };
        // SAFETY: as above.
        unsafe { event_out.write(buffer(event.encode_to_vec())) };
        Ok(())
    };
    // SAFETY: `err` is NULL or writable by the contract.
    unsafe { boundary(err, body) }
}

/// Frees a buffer handed out by genbuild. `{NULL, 0}` is accepted and does nothing.
///
/// Thread safety: any thread; each buffer freed once.
///
/// # Safety
/// `buffer` is exactly as genbuild handed it out (same `data`, same `len`) and not
/// freed yet.
#[no_mangle]
pub unsafe extern "C" fn genbuild_buffer_free(buffer: genbuild_buffer) {
    if buffer.data.is_null() {
        return;
    }
    // SAFETY: `data`/`len` come from `Box::<[u8]>::into_raw` in `buffer()` and are
    // freed once, by the contract.
    let boxed = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(buffer.data, buffer.len)) };
    drop(boxed);
}

/// Frees a string handed out by genbuild (a uuid, an error message). NULL is accepted
/// and does nothing.
///
/// Thread safety: any thread; each string freed once.
///
/// # Safety
/// `s` is NULL or a string from genbuild, not freed yet.
#[no_mangle]
pub unsafe extern "C" fn genbuild_string_free(s: *mut c_char) {
    if s.is_null() {
        return;
    }
    // SAFETY: from `CString::into_raw` in `c_string()`, freed once by the contract.
    drop(unsafe { CString::from_raw(s) });
}

/// A static, NUL-terminated name of a result code ("GENBUILD_RESULT_OK", …; "unknown"
/// for a value that is none). Never free it.
///
/// Thread safety: any thread.
#[no_mangle]
pub extern "C" fn genbuild_result_name(result: u32) -> *const c_char {
    let name: &'static CStr = match result {
        0 => c"GENBUILD_RESULT_OK",
        1 => c"GENBUILD_RESULT_TIMEOUT",
        2 => c"GENBUILD_RESULT_NULL_ARGUMENT",
        3 => c"GENBUILD_RESULT_INVALID_ARGUMENT",
        4 => c"GENBUILD_RESULT_REFUSED",
        5 => c"GENBUILD_RESULT_STORE_ERROR",
        6 => c"GENBUILD_RESULT_PANIC",
        7 => c"GENBUILD_RESULT_DISCONNECTED",
        _ => c"unknown",
    };
    name.as_ptr()
}

/// The version of genbuild, a static NUL-terminated string. Never free it.
///
/// Thread safety: any thread.
#[no_mangle]
pub extern "C" fn genbuild_version() -> *const c_char {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => panic!("the version holds a NUL byte"),
        };
    VERSION.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(err: *mut c_char) -> String {
        assert!(!err.is_null());
        // SAFETY: a message from `boundary`, freed right after.
        let s = unsafe { CStr::from_ptr(err) }.to_str().unwrap().to_string();
        unsafe { genbuild_string_free(err) };
        s
    }

    #[test]
    fn panics_become_a_result() {
        let mut err = std::ptr::null_mut();
        // SAFETY: `err` is writable.
        let r = unsafe { boundary(&mut err, || panic!("boom")) };
        assert_eq!(r, genbuild_result::Panic);
        assert!(message(err).contains("boom"));
    }

    #[test]
    fn result_names_match_the_enum() {
        for (code, name) in [(genbuild_result::Ok, "OK"), (genbuild_result::Disconnected, "DISCONNECTED")] {
            // SAFETY: a static string.
            let got = unsafe { CStr::from_ptr(genbuild_result_name(code as u32)) };
            assert_eq!(got.to_str().unwrap(), format!("GENBUILD_RESULT_{name}"));
        }
    }

    #[test]
    fn null_and_garbage_are_errors() {
        let mut err = std::ptr::null_mut();
        let mut uuid = std::ptr::null_mut();
        // SAFETY: NULL builder is allowed; out-pointers are writable.
        let r = unsafe { genbuild_eval(std::ptr::null(), std::ptr::null(), 0, &mut uuid, &mut err) };
        assert_eq!(r, genbuild_result::NullArgument);
        assert_eq!(message(err), "builder is NULL");
        let mut handle = std::ptr::null_mut();
        let config = genbuild_config {
            executor: 9,
            repository_path: c"/r".as_ptr(),
            repository_subdir: std::ptr::null(),
            system_attr: std::ptr::null(),
            hostname: c"h".as_ptr(),
            submodules: false,
            eval_timeout_ms: 0,
            build_timeout_ms: 0,
            kill_grace_ms: 0,
            state_file: std::ptr::null(),
            gc_root_dir: std::ptr::null(),
            nix_bin_dir: std::ptr::null(),
            machine_id_attr: std::ptr::null(),
            nix_option_names: std::ptr::null(),
            nix_option_values: std::ptr::null(),
            nix_options_len: 1,
        };
        // SAFETY: a valid config, writable out-pointers.
        let r = unsafe { genbuild_builder_new(&config, &mut handle, &mut err) };
        assert_eq!(r, genbuild_result::InvalidArgument);
        assert!(message(err).contains("unknown executor kind 9"));
        let config = genbuild_config { executor: 0, ..config };
        // SAFETY: as above; the NULL option arrays are detected.
        let r = unsafe { genbuild_builder_new(&config, &mut handle, &mut err) };
        assert_eq!(r, genbuild_result::NullArgument);
        assert_eq!(message(err), "config->nix_option_names is NULL");
        let config = genbuild_config { nix_options_len: 0, ..config };
        // SAFETY: as above.
        let r = unsafe { genbuild_builder_new(&config, &mut handle, &mut err) };
        assert_eq!(r, genbuild_result::Ok);
        assert!(err.is_null());
        let garbage = [0xff_u8, 0xff, 0xff];
        // SAFETY: a live handle, a readable buffer.
        let r = unsafe { genbuild_eval(handle, garbage.as_ptr(), garbage.len(), &mut uuid, &mut err) };
        assert_eq!(r, genbuild_result::InvalidArgument);
        assert!(message(err).contains("RepositoryStatus"));
        assert!(uuid.is_null());
        // SAFETY: the handle from above, destroyed once.
        unsafe { genbuild_builder_destroy(handle) };
    }
}
