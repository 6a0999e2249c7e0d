//! genbuild's C ABI: a thin wrapper over `genbuild::Builder` that a C or Go program
//! embeds as `libgenbuild.so` or `libgenbuild.a`.
//!
//! `include/genbuild.h` is generated from this crate by cbindgen (`cbindgen --config
//! cbindgen.toml --output include/genbuild.h`, run in this directory) and committed;
//! the doc comments of the exported items are the header's documentation, so they are
//! written for a C reader.
//!
//! # Conventions (those of rustls-ffi)
//! * Every entry point returns a `genbuild_result` ([`error`]) and takes, last, an
//!   `err` out-parameter: NULL to ignore, otherwise set to NULL on success and to a
//!   message the caller frees with `genbuild_string_free` on any other result.
//! * No panic crosses the boundary: every body runs inside `ffi_panic_boundary!`
//!   ([`panic`]), which turns a panic into `GENBUILD_RESULT_PANIC` (or a NULL/no-op
//!   for the few calls without `err`).
//! * NULL where a value is required is `GENBUILD_RESULT_NULL_ARGUMENT`; a string that
//!   is not UTF-8, bytes that are not the expected protobuf message, a length no
//!   buffer can have are `GENBUILD_RESULT_INVALID_ARGUMENT` ([`args`]): never
//!   undefined behaviour. What C can still get wrong (a dangling pointer, a length
//!   longer than its buffer, a handle freed twice) is written next to each parameter.
//! * An out-parameter is set to its empty value (NULL, `{NULL, 0}`) on entry, so it
//!   holds that on every failure.
//! * Messages cross as protobuf bytes (`proto/genbuild.proto`): RepositoryStatus in,
//!   Builder (the state) and Event out, in a `genbuild_buffer` ([`memory`]).
//! * A blocking `genbuild_next_event` instead of callbacks: no Rust thread ever calls
//!   into C.
//! * Durations are milliseconds in a `uint64_t`; UINT64_MAX means "without end" and
//!   overflows nothing.
//!
//! # Ownership, per type
//! * `genbuild_builder` ([`builder`]): created by `genbuild_builder_new`, owned by the
//!   caller, released by exactly one `genbuild_builder_destroy` once no other call on
//!   it runs; every other call may be made from any thread, concurrently.
//! * `char *` handed out (uuids, error messages): owned by the caller, released by
//!   `genbuild_string_free`.
//! * `genbuild_buffer` handed out: owned by the caller, released by
//!   `genbuild_buffer_free`.
//! * `const char *` from `genbuild_result_name` and `genbuild_version`: static, never
//!   freed.
//! * Everything the caller passes in (the `genbuild_config` ([`config`]), strings,
//!   bytes) is only borrowed for the duration of the call, and copied if kept.
#![allow(non_camel_case_types)]
#![deny(unsafe_op_in_unsafe_fn)]

mod args;
mod builder;
mod config;
mod error;
mod memory;
mod panic;

use std::ffi::{c_char, CStr};

use crate::panic::ffi_panic_boundary;

/// The version of genbuild, a static NUL-terminated string. Never free it.
///
/// Thread safety: any thread.
#[no_mangle]
pub extern "C" fn genbuild_version() -> *const c_char {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(version) => version,
            Err(_) => panic!("the version holds a NUL byte"),
        };
    ffi_panic_boundary! {{ VERSION.as_ptr() }}
}
