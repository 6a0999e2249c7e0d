//! What genbuild hands out and C gives back to free: strings (uuids, messages) and
//! buffers (serialized protobuf messages). Each is allocated here and freed here,
//! never with C's `free`.

use std::ffi::{c_char, CString};
use std::ptr;

use crate::panic::ffi_panic_boundary;

/// Bytes handed out by genbuild: a serialized protobuf message. Owned by the caller,
/// released with `genbuild_buffer_free`. `data` is NULL when `len` is 0.
#[repr(C)]
#[derive(Debug)]
pub struct genbuild_buffer {
    pub data: *mut u8,
    pub len: usize,
}

impl genbuild_buffer {
    /// `{NULL, 0}`: what an out-parameter holds until a call succeeds.
    pub(crate) const fn empty() -> genbuild_buffer {
        genbuild_buffer { data: ptr::null_mut(), len: 0 }
    }

    /// Hands `bytes` to C: freed by `genbuild_buffer_free`.
    pub(crate) fn new(bytes: Vec<u8>) -> genbuild_buffer {
        if bytes.is_empty() {
            return genbuild_buffer::empty();
        }
        let boxed = bytes.into_boxed_slice();
        let len = boxed.len();
        genbuild_buffer { data: Box::into_raw(boxed).cast::<u8>(), len }
    }
}

/// Hands `s` to C as a NUL-terminated string freed by `genbuild_string_free`; a NUL
/// byte inside `s` (a message quoting a caller's input) becomes U+FFFD.
pub(crate) fn c_string(s: String) -> *mut c_char {
    let c = CString::new(s).unwrap_or_else(|e| {
        let s = String::from_utf8_lossy(&e.into_vec()).replace('\0', "\u{fffd}");
        CString::new(s).expect("NUL bytes were replaced")
    });
    c.into_raw()
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
    // SAFETY: `data`/`len` come from `Box::<[u8]>::into_raw` in `genbuild_buffer::new`
    // and are freed once, by the contract.
    let boxed = unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(buffer.data, buffer.len)) };
    ffi_panic_boundary! {{ drop(boxed) }}
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
    // SAFETY: from `CString::into_raw` in `c_string`, freed once by the contract.
    let owned = unsafe { CString::from_raw(s) };
    ffi_panic_boundary! {{ drop(owned) }}
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    #[test]
    fn a_nul_inside_a_message_does_not_cut_it() {
        let s = c_string("before\0after".to_string());
        // SAFETY: from `c_string`, freed right after.
        assert_eq!(unsafe { CStr::from_ptr(s) }.to_str().unwrap(), "before\u{fffd}after");
        unsafe { genbuild_string_free(s) };
    }

    #[test]
    fn buffers_round_trip_and_empty_ones_hold_null() {
        let empty = genbuild_buffer::new(Vec::new());
        assert!(empty.data.is_null() && empty.len == 0);
        // SAFETY: `{NULL, 0}` is accepted.
        unsafe { genbuild_buffer_free(empty) };
        let buffer = genbuild_buffer::new(vec![1, 2, 3]);
        // SAFETY: a live buffer of 3 bytes, freed once right after.
        assert_eq!(unsafe { std::slice::from_raw_parts(buffer.data, buffer.len) }, [1, 2, 3]);
        unsafe { genbuild_buffer_free(buffer) };
    }
}
