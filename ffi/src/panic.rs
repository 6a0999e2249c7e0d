//! No panic crosses into C: the body of every entry point runs inside
//! [`ffi_panic_boundary!`], which catches a panic and turns it into a value the C
//! caller can handle.
//!
//! (Since Rust 1.81 a panic unwinding out of an `extern "C"` function aborts the
//! process instead of being undefined behaviour; aborting the host program for a bug
//! of ours is still not acceptable.)

use std::any::Any;
use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use crate::error::{genbuild_result, Failure};
use crate::memory::c_string;

/// Wraps the body of an entry point.
///
/// * `ffi_panic_boundary! { err => { …; Ok(()) } }`, in an entry point returning a
///   [`genbuild_result`] whose last parameter `err: *mut *mut c_char` is NULL or valid
///   for writing (every such entry point's contract): `*err` is cleared, the body
///   (returning `Result<(), Failure>`) runs, and a failure or a panic becomes its code
///   and, when `err` is not NULL, a message for C to free.
/// * `ffi_panic_boundary! {{ … }}`, in an entry point without `err`: a panic makes it
///   return [`Fallback::on_panic`] of its return type (nothing, or NULL).
macro_rules! ffi_panic_boundary {
    ($err:ident => $body:block) => {{
        let err: *mut *mut ::std::ffi::c_char = $err;
        let body = || -> ::std::result::Result<(), $crate::error::Failure> { $body };
        // SAFETY: the entry point's contract: `err` is NULL or writable.
        unsafe { $crate::panic::report(err, body) }
    }};
    ($body:block) => {
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| $body)) {
            Ok(value) => value,
            Err(_) => $crate::panic::Fallback::on_panic(),
        }
    };
}
pub(crate) use ffi_panic_boundary;

/// What an entry point without `err` returns when its body panicked.
pub(crate) trait Fallback {
    fn on_panic() -> Self;
}

impl Fallback for () {
    fn on_panic() {}
}

impl<T> Fallback for *const T {
    fn on_panic() -> Self {
        ptr::null()
    }
}

/// Clears `*err`, runs `body` catching a panic, and reports its outcome: the code,
/// and on failure a message in `*err`.
///
/// # Safety
/// `err` is NULL or valid for writing one pointer.
pub(crate) unsafe fn report(
    err: *mut *mut c_char,
    body: impl FnOnce() -> Result<(), Failure>,
) -> genbuild_result {
    if !err.is_null() {
        // SAFETY: non-NULL, writable by the caller's contract.
        unsafe { err.write(ptr::null_mut()) };
    }
    let failure = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return genbuild_result::Ok,
        Ok(Err(failure)) => failure,
        Err(payload) => panicked(&*payload),
    };
    if !err.is_null() {
        // Formatting allocates; an allocation failure aborts rather than unwinds, so
        // nothing here can panic across the boundary.
        let message = c_string(failure.message);
        // SAFETY: as above.
        unsafe { err.write(message) };
    }
    failure.code
}

fn panicked(payload: &(dyn Any + Send)) -> Failure {
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    Failure::new(genbuild_result::Panic, format!("genbuild panicked (this is a bug): {what}"))
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;
    use crate::memory::genbuild_string_free;

    /// The message in `err`, freed.
    fn take(err: *mut c_char) -> String {
        assert!(!err.is_null(), "no message");
        // SAFETY: a message from `report`, freed right after.
        let message = unsafe { CStr::from_ptr(err) }.to_str().unwrap().to_string();
        unsafe { genbuild_string_free(err) };
        message
    }

    /// Stands for an entry point: `err` NULL or writable.
    unsafe fn entry(err: *mut *mut c_char, body: impl FnOnce() -> Result<(), Failure>) -> genbuild_result {
        ffi_panic_boundary! { err => { body() } }
    }

    #[test]
    fn a_panic_becomes_a_result_and_a_message() {
        let mut err = c"stale".as_ptr().cast_mut();
        // SAFETY: `err` is writable.
        let r = unsafe { entry(&mut err, || panic!("boom {}", 42)) };
        assert_eq!(r, genbuild_result::Panic);
        assert_eq!(take(err), "genbuild panicked (this is a bug): boom 42");
    }

    #[test]
    fn success_clears_err_and_a_failure_fills_it() {
        let mut err = c"stale".as_ptr().cast_mut();
        // SAFETY: `err` is writable.
        assert_eq!(unsafe { entry(&mut err, || Ok(())) }, genbuild_result::Ok);
        assert!(err.is_null());
        // SAFETY: as above.
        let r = unsafe { entry(&mut err, || Err(Failure::null("thing"))) };
        assert_eq!(r, genbuild_result::NullArgument);
        assert_eq!(take(err), "thing is NULL");
        // SAFETY: NULL `err` is allowed.
        let r = unsafe { entry(ptr::null_mut(), || panic!("unreported")) };
        assert_eq!(r, genbuild_result::Panic);
    }

    #[test]
    fn an_entry_point_without_err_returns_its_fallback() {
        fn name() -> *const c_char {
            ffi_panic_boundary! {{ panic!("no name") }}
        }
        assert!(name().is_null());
    }
}
