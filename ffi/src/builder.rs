//! The builder handle, [`genbuild_builder`], and the entry points that drive it: each
//! checks its arguments, makes one call to `genbuild::Builder`, and hands the result
//! out as a uuid string or protobuf bytes.

use std::ffi::c_char;
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use genbuild::proto::{self, Event};
use genbuild::{Builder, Store};
use prost::Message;

use crate::args::{check_null, ref_arg, slice_arg, str_arg, Out};
use crate::config::{genbuild_config, read_config};
use crate::error::{genbuild_result, Failure};
use crate::memory::{c_string, genbuild_buffer};
use crate::panic::ffi_panic_boundary;

/// A builder: evaluates and builds one NixOS generation at a time on its own threads.
///
/// Created by `genbuild_builder_new`, released by one `genbuild_builder_destroy`.
/// Every other call may be made from any thread, concurrently with the others.
pub struct genbuild_builder {
    builder: Builder,
    /// Subscribed at creation, so the first event is already in it.
    events: Receiver<Event>,
}

// Every entry point but destroy shares the handle between the caller's threads: a
// compile-time fact.
const _: () = {
    const fn shared_between_threads<T: Send + Sync>() {}
    shared_between_threads::<genbuild_builder>();
};

/// The builder behind `handle`.
///
/// # Safety
/// `handle` is NULL or a live pointer from `genbuild_builder_new`.
unsafe fn handle_arg<'a>(handle: *const genbuild_builder) -> Result<&'a genbuild_builder, Failure> {
    // SAFETY: the contract; only shared references are ever made to a live handle,
    // and `genbuild_builder` is Sync.
    unsafe { ref_arg(handle, "builder") }
}

/// Creates a builder from `config` and stores it in `*builder_out`.
///
/// The builder is subscribed to its own events from this moment: every event is kept
/// for `genbuild_next_event` (lifecycle events without limit; log lines and progress
/// while less than 16 MiB of them wait unread, further ones are dropped, the lines
/// counted in the next line's `dropped_before`).
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
    ffi_panic_boundary! { err => {
        // SAFETY: the contract on `builder_out` and `config`.
        let builder_out = unsafe { Out::new(builder_out, "builder_out", ptr::null_mut()) }?;
        check_null!(config);
        let parts = unsafe { read_config(&*config) }?;
        let store = match parts.state_file {
            Some(path) => Store::open(path)?,
            None => Store::new(),
        };
        let builder = Builder::new(parts.config, Arc::new(store), parts.executor);
        let events = builder.subscribe();
        builder_out.set(Box::into_raw(Box::new(genbuild_builder { builder, events })));
        Ok(())
    }}
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
    // Dropping the last Builder handle stops and joins. A panic there is caught:
    // there is no `err` to report it to.
    ffi_panic_boundary! {{ drop(boxed) }}
}

/// Evaluates the commit of a RepositoryStatus (protobuf bytes, `rs_len` of them at
/// `rs`) as a new generation; stores its uuid in `*uuid_out` (free it with
/// `genbuild_string_free`; NULL on failure).
///
/// Cancels a running evaluation or build and blocks until its result is recorded,
/// then starts the evaluation and returns without waiting for it: its end is an
/// EvalFinished event (or BuildStarted and BuildFinished when the output is already in
/// the store). Undecodable bytes give `GENBUILD_RESULT_INVALID_ARGUMENT`; `rs` may be
/// NULL when `rs_len` is 0 (an empty RepositoryStatus, whose evaluation then fails).
/// A `genbuild_stop` made while this waits (for the running job, or for a stop under
/// way) makes it give up: `GENBUILD_RESULT_REFUSED`, no generation created.
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
    ffi_panic_boundary! { err => {
        // SAFETY: the contract on `uuid_out`, `builder` and `rs`.
        let uuid_out = unsafe { Out::new(uuid_out, "uuid_out", ptr::null_mut()) }?;
        let (handle, bytes) = unsafe { (handle_arg(builder)?, slice_arg(rs, rs_len, "rs")?) };
        let status = proto::RepositoryStatus::decode(bytes)
            .map_err(|e| Failure::invalid(format!("rs does not decode as a RepositoryStatus: {e}")))?;
        uuid_out.set(c_string(handle.builder.eval(&status)?));
        Ok(())
    }}
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
    ffi_panic_boundary! { err => {
        // SAFETY: the contract on `builder` and `uuid`.
        let (handle, uuid) = unsafe { (handle_arg(builder)?, str_arg(uuid, "uuid")?) };
        handle.builder.submit_build(uuid)?;
        Ok(())
    }}
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
    ffi_panic_boundary! { err => {
        // SAFETY: the contract on `builder`.
        unsafe { handle_arg(builder) }?.builder.suspend()?;
        Ok(())
    }}
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
    ffi_panic_boundary! { err => {
        // SAFETY: the contract on `builder`.
        unsafe { handle_arg(builder) }?.builder.resume()?;
        Ok(())
    }}
}

/// Cancels the running evaluation or build ("cancelled: stopped"), kills its processes
/// and joins its thread; blocks until all that is done, also when several threads call
/// it at once (each returns only when nothing runs). Stronger than a pending suspend,
/// resume or submission: a later `genbuild_resume` builds nothing wanted before the
/// stop. No job starts while it waits: a `genbuild_eval` called meanwhile starts after
/// it, one that was already waiting for the cancelled job gives up
/// (`GENBUILD_RESULT_REFUSED`), a build submitted or resumed meanwhile ends at once
/// ("cancelled: stopped"). Not terminal: `genbuild_eval` may follow.
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
    ffi_panic_boundary! { err => {
        // SAFETY: the contract on `builder`.
        unsafe { handle_arg(builder) }?.builder.stop();
        Ok(())
    }}
}

/// Stores a snapshot of the builder in `*state_out`: a serialized `genbuild.Builder`
/// message (hostname 6, is_evaluating 1, is_building 2, is_suspended 5 (BoolValues),
/// generation_uuid 4, the current generation 3, and while a build runs its latest
/// progress, build_progress 17: see `genbuild_next_event`). Free it with
/// `genbuild_buffer_free`. On failure `*state_out` is `{NULL, 0}`.
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
    ffi_panic_boundary! { err => {
        // SAFETY: the contract on `state_out` and `builder`.
        let state_out = unsafe { Out::new(state_out, "state_out", genbuild_buffer::empty()) }?;
        let state = unsafe { handle_arg(builder) }?.builder.state();
        state_out.set(genbuild_buffer::new(state.encode_to_vec()));
        Ok(())
    }}
}

/// Waits up to `timeout_ms` milliseconds (0: do not wait; UINT64_MAX: without end)
/// for the builder's next event and stores it in `*event_out`: a serialized
/// `genbuild.Event`. Free it with `genbuild_buffer_free`.
///
/// Returns `GENBUILD_RESULT_TIMEOUT`, with `*event_out` `{NULL, 0}`, when none came.
/// Events are kept from `genbuild_builder_new` on and come in order.
///
/// The Event (proto/genbuild.proto) holds `created_at` 15 (a
/// google.protobuf.Timestamp) and one of these kinds, by field number:
/// * 1 EvalStarted, 2 EvalFinished, 3 BuildStarted, 4 BuildFinished: each a message
///   whose field 1 is the Generation as it is now (uuid 1, eval_status 13, eval_err
///   16, out_path 17, drv_path 18, build_status 20, build_err 23, build_reason 27, …);
/// * 16 LogLine: generation_uuid 1, phase 2 (0 EVAL, 1 BUILD), stream 3 (0 STDOUT,
///   1 STDERR), line 4, dropped_before 5 (log lines lost before this one because
///   the reader lagged), drv_path 6 (the derivation whose builder printed the line;
///   empty for Nix's own messages);
/// * 17 BuildProgress (during a build, at most about ten a second, the last one
///   always sent, each one consistent snapshot): generation_uuid 1, then the
///   derivations of the build as uint64s: done 2, expected 3, running 4, failed 5,
///   and building 6 (repeated string: the .drv paths building now, as many as
///   running); then the store paths Nix copies (to and from remote
///   builders, from substituters), counted in paths as uint64s: copies_done 7,
///   copies_expected 8 (as far as known yet), and copying 9 (repeated string: the
///   paths being copied now); then the bytes of those copies, 0 where Nix reports
///   none: copy_bytes_done 10, copy_bytes_expected 11.
///
/// Later versions may add kinds and fields: skip the ones you do not know, as
/// protobuf decoders do.
///
/// Thread safety: may be called from any thread, also while another thread calls
/// `genbuild_stop` (the stop's BuildFinished then arrives here); with several threads
/// waiting, each event goes to exactly one of them. `genbuild_builder_destroy` must
/// not be called while a thread waits here.
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
    ffi_panic_boundary! { err => {
        // SAFETY: the contract on `event_out` and `builder`.
        let event_out = unsafe { Out::new(event_out, "event_out", genbuild_buffer::empty()) }?;
        let handle = unsafe { handle_arg(builder) }?;
        // C callers learn of ends from the events; the done channels would only pile up.
        handle.builder.evaluation_done().try_iter().for_each(drop);
        handle.builder.build_done().try_iter().for_each(drop);
        // crossbeam waits without end when now + timeout overflows an Instant.
        let event = handle.events.recv_timeout(Duration::from_millis(timeout_ms)).map_err(|e| match e {
            RecvTimeoutError::Timeout => {
                Failure::new(genbuild_result::Timeout, format!("no event within {timeout_ms} ms"))
            }
            RecvTimeoutError::Disconnected => Failure::new(genbuild_result::Disconnected, "the event stream ended"),
        })?;
        event_out.set(genbuild_buffer::new(event.encode_to_vec()));
        Ok(())
    }}
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;
    use crate::config::test_config;
    use crate::memory::{genbuild_buffer_free, genbuild_string_free};

    /// Calls `f` with an `err` slot; returns the code and the message (freed).
    fn call(f: impl FnOnce(*mut *mut c_char) -> genbuild_result) -> (genbuild_result, String) {
        let mut err = ptr::null_mut();
        let code = f(&mut err);
        if err.is_null() {
            return (code, String::new());
        }
        // SAFETY: a message handed out by the call, freed once.
        let message = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
        unsafe { genbuild_string_free(err) };
        (code, message)
    }

    fn config(state_file: *const c_char) -> genbuild_config {
        genbuild_config { state_file, ..test_config() }
    }

    /// What needs no Nix: NULL handles and out-parameters, garbage bytes, a corrupt
    /// state file, an idle builder's state, stop and empty event stream.
    #[test]
    fn null_garbage_and_an_idle_builder_without_nix() {
        let mut uuid = c"stale".as_ptr().cast_mut();
        // SAFETY (every call below): NULL or live handles, writable out-parameters,
        // buffers as long as their lengths.
        let (code, message) =
            call(|err| unsafe { genbuild_eval(ptr::null(), ptr::null(), 0, &mut uuid, err) });
        assert_eq!((code, message.as_str()), (genbuild_result::NullArgument, "builder is NULL"));
        assert!(uuid.is_null(), "uuid_out is cleared on failure");

        let dir = tempfile::tempdir().unwrap();
        let corrupt = dir.path().join("state.pb");
        std::fs::write(&corrupt, b"\xff\xff\xff\xff not protobuf").unwrap();
        let corrupt = std::ffi::CString::new(corrupt.to_str().unwrap()).unwrap();
        let mut handle = c"stale".as_ptr().cast_mut().cast::<genbuild_builder>();
        let (code, message) =
            call(|err| unsafe { genbuild_builder_new(&config(corrupt.as_ptr()), &mut handle, err) });
        assert_eq!(code, genbuild_result::StoreError, "{message}");
        assert!(message.contains("state.pb"), "{message}");
        assert!(handle.is_null());

        let (code, message) =
            call(|err| unsafe { genbuild_builder_new(&config(ptr::null()), &mut handle, err) });
        assert_eq!((code, message.as_str()), (genbuild_result::Ok, ""));
        let garbage = [0x0a_u8, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01];
        let (code, message) =
            call(|err| unsafe { genbuild_eval(handle, garbage.as_ptr(), garbage.len(), &mut uuid, err) });
        assert_eq!(code, genbuild_result::InvalidArgument);
        assert!(message.contains("RepositoryStatus"), "{message}");
        let (code, message) = call(|err| unsafe { genbuild_resume(handle, err) });
        assert_eq!((code, message.as_str()), (genbuild_result::Refused, "the builder is not suspended"));
        assert_eq!(call(|err| unsafe { genbuild_stop(handle, err) }).0, genbuild_result::Ok);

        let mut buffer = genbuild_buffer { data: ptr::NonNull::dangling().as_ptr(), len: 7 };
        let (code, _) = call(|err| unsafe { genbuild_next_event(handle, 0, &mut buffer, err) });
        assert_eq!(code, genbuild_result::Timeout);
        assert!(buffer.data.is_null() && buffer.len == 0, "event_out is cleared on failure");
        assert_eq!(call(|err| unsafe { genbuild_state(handle, &mut buffer, err) }).0, genbuild_result::Ok);
        // SAFETY: the buffer just handed out, read then freed once.
        let state = proto::Builder::decode(unsafe { std::slice::from_raw_parts(buffer.data, buffer.len) });
        assert_eq!(state.unwrap().hostname, "h");
        unsafe { genbuild_buffer_free(buffer) };
        let (code, message) = call(|err| unsafe { genbuild_state(handle, ptr::null_mut(), err) });
        assert_eq!((code, message.as_str()), (genbuild_result::NullArgument, "state_out is NULL"));
        // SAFETY: the handle from above, destroyed once; NULL is accepted.
        unsafe { genbuild_builder_destroy(handle) };
        unsafe { genbuild_builder_destroy(ptr::null_mut()) };
    }
}
