//! Turning what C passes into Rust values, or into a [`Failure`] naming the argument:
//! NULL where a value is required is `GENBUILD_RESULT_NULL_ARGUMENT`; a string that
//! is not UTF-8 or a length no buffer can have is `GENBUILD_RESULT_INVALID_ARGUMENT`.
//!
//! What cannot be checked (a dangling pointer, a length longer than its buffer, a
//! string without its NUL) stays the caller's contract, written on each entry point.

use std::ffi::{c_char, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::ptr::NonNull;

use crate::error::Failure;

/// Returns `Err(Failure::null("ptr"))` from the enclosing body when one of the named
/// pointers is NULL, naming the first.
macro_rules! check_null {
    ($($ptr:ident),+ $(,)?) => {
        $(
            if $ptr.is_null() {
                return Err($crate::error::Failure::null(stringify!($ptr)));
            }
        )+
    };
}
pub(crate) use check_null;

/// The value behind `ptr` (a handle, a config), which must not be NULL.
///
/// # Safety
/// A non-NULL `ptr` points to a live `T` that is not mutated during the call.
pub(crate) unsafe fn ref_arg<'a, T>(ptr: *const T, name: &str) -> Result<&'a T, Failure> {
    // SAFETY: non-NULL means live and unaliased by a writer, by the caller's contract.
    unsafe { ptr.as_ref() }.ok_or_else(|| Failure::null(name))
}

/// The string at `ptr`, which must not be NULL and must be UTF-8.
///
/// # Safety
/// A non-NULL `ptr` points to a NUL-terminated string that lives and does not change
/// during the call.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, name: &str) -> Result<&'a str, Failure> {
    // SAFETY: forwarded contract.
    unsafe { opt_str_arg(ptr, name) }?.ok_or_else(|| Failure::null(name))
}

/// The string at `ptr`, or `None` when `ptr` is NULL.
///
/// # Safety
/// As [`str_arg`].
pub(crate) unsafe fn opt_str_arg<'a>(ptr: *const c_char, name: &str) -> Result<Option<&'a str>, Failure> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let c = unsafe { CStr::from_ptr(ptr) };
    let s = c.to_str().map_err(|e| Failure::invalid(format!("{name} is not UTF-8: {e}")))?;
    Ok(Some(s))
}

/// The path at `ptr` (any bytes but NUL: paths need not be UTF-8), or `None` when
/// `ptr` is NULL.
///
/// # Safety
/// As [`str_arg`].
pub(crate) unsafe fn opt_path_arg(ptr: *const c_char) -> Option<PathBuf> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let c = unsafe { CStr::from_ptr(ptr) };
    Some(PathBuf::from(OsStr::from_bytes(c.to_bytes())))
}

/// `len` values at `ptr`; NULL is accepted when `len` is 0. A `len` whose size in
/// bytes exceeds `isize::MAX` (as `SIZE_MAX` does) fits no buffer and is refused.
///
/// # Safety
/// A non-NULL `ptr` is valid for reading `len` values during the call.
pub(crate) unsafe fn slice_arg<'a, T>(ptr: *const T, len: usize, name: &str) -> Result<&'a [T], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::null(name));
    }
    if len > isize::MAX as usize / size_of::<T>().max(1) {
        return Err(Failure::invalid(format!("{name}: a length of {len} is larger than any buffer")));
    }
    // SAFETY: non-NULL, readable for `len` values by the caller's contract; the size
    // fits in isize, as `from_raw_parts` requires.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// An out-parameter: checked not to be NULL and set to its empty value on entry, so
/// that it holds that value on every failure; [`Out::set`] on success.
pub(crate) struct Out<T> {
    ptr: NonNull<T>,
}

impl<T> Out<T> {
    /// # Safety
    /// A non-NULL `ptr` is valid for writing a `T` until the call returns; the `Out` is
    /// not kept beyond the call. What `ptr` held is overwritten, never dropped.
    pub(crate) unsafe fn new(ptr: *mut T, name: &str, empty: T) -> Result<Out<T>, Failure> {
        let ptr = NonNull::new(ptr).ok_or_else(|| Failure::null(name))?;
        // SAFETY: non-NULL and writable by the contract.
        unsafe { ptr.as_ptr().write(empty) };
        Ok(Out { ptr })
    }

    pub(crate) fn set(self, value: T) {
        // SAFETY: writable for the duration of the call (`new`'s contract), which this
        // `Out` does not outlive.
        unsafe { self.ptr.as_ptr().write(value) };
    }
}

#[cfg(test)]
mod tests {
    use std::ptr;

    use super::*;
    use crate::error::genbuild_result;

    #[test]
    fn null_and_non_utf8_strings_are_refused_by_name() {
        // SAFETY: NULL, and static NUL-terminated strings.
        unsafe {
            assert_eq!(str_arg(ptr::null(), "uuid").unwrap_err().message, "uuid is NULL");
            assert_eq!(opt_str_arg(ptr::null(), "uuid").unwrap(), None);
            let bad = str_arg(c"\xc3\x28".as_ptr(), "uuid").unwrap_err();
            assert_eq!(bad.code, genbuild_result::InvalidArgument);
            assert!(bad.message.starts_with("uuid is not UTF-8"), "{}", bad.message);
            assert_eq!(str_arg(c"ok".as_ptr(), "uuid").unwrap(), "ok");
        }
    }

    #[test]
    fn a_path_may_be_any_bytes() {
        // SAFETY: a static NUL-terminated string.
        let path = unsafe { opt_path_arg(c"/tmp/\xff dir".as_ptr()) }.unwrap();
        assert_eq!(path.as_os_str().as_bytes(), b"/tmp/\xff dir");
    }

    #[test]
    fn lengths_no_buffer_can_have_are_refused() {
        let bytes = [1u8, 2];
        // SAFETY: each call either refuses before reading or reads within `bytes`.
        unsafe {
            assert_eq!(slice_arg::<u8>(ptr::null(), 0, "rs").unwrap(), &[] as &[u8]);
            assert_eq!(
                slice_arg::<u8>(ptr::null(), 5, "rs").unwrap_err().code,
                genbuild_result::NullArgument
            );
            let huge = slice_arg(bytes.as_ptr(), usize::MAX, "rs").unwrap_err();
            assert_eq!(huge.code, genbuild_result::InvalidArgument);
            assert!(huge.message.contains("larger than any buffer"), "{}", huge.message);
            let pointers = [ptr::null::<c_char>(); 1];
            let len = isize::MAX as usize / size_of::<*const c_char>() + 1;
            assert!(slice_arg(pointers.as_ptr(), len, "names").is_err());
            assert_eq!(slice_arg(bytes.as_ptr(), 2, "rs").unwrap(), &[1, 2]);
        }
    }

    #[test]
    fn an_out_parameter_is_cleared_on_entry() {
        let mut slot: *mut c_char = c"stale".as_ptr().cast_mut();
        // SAFETY: `slot` is writable for this test.
        let out = unsafe { Out::new(&mut slot, "uuid_out", ptr::null_mut()) }.unwrap();
        assert!(slot.is_null());
        out.set(c"new".as_ptr().cast_mut());
        assert!(!slot.is_null());
        // SAFETY: NULL is refused before any write.
        let null = unsafe { Out::<*mut c_char>::new(ptr::null_mut(), "uuid_out", ptr::null_mut()) };
        assert_eq!(null.err().unwrap().message, "uuid_out is NULL");
    }
}
