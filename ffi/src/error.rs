//! What a call returns: the [`genbuild_result`] codes, their names, and [`Failure`],
//! the Rust side of a failed call (a code and the message handed to C).
//!
//! The codes are a plain `repr(u32)` enum, so cbindgen writes them into the header as
//! they are; `#[apply(result_codes!)]` derives everything else from that one variant
//! list (the list of all codes, and each code's name as the header spells it), so no
//! number or name is written twice.

use std::ffi::{c_char, CStr};

use genbuild::{Error, StoreError};
use macro_rules_attribute::apply;

use crate::panic::ffi_panic_boundary;

/// Re-emits a `repr(u32)` enum and gives it `ALL` (every variant, in order) and
/// `name()` (`ENUM_NAME_VARIANT_NAME`, the identifier cbindgen gives the variant with
/// `rename_variants = "ScreamingSnakeCase"` and `prefix_with_name`).
macro_rules! result_codes {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident = $value:literal, )+
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$variant_meta])* $variant = $value, )+
        }

        impl $name {
            /// Every code, in declaration order.
            pub(crate) const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The code's name in the header, e.g. `GENBUILD_RESULT_NULL_ARGUMENT`.
            pub(crate) const fn name(self) -> &'static CStr {
                match self {
                    $($name::$variant => {
                        const LEN: usize = c_identifier_len(stringify!($name), stringify!($variant));
                        const BYTES: [u8; LEN] = c_identifier(stringify!($name), stringify!($variant));
                        const NAME: &CStr = match CStr::from_bytes_with_nul(&BYTES) {
                            Ok(name) => name,
                            Err(_) => panic!("an identifier holds no NUL byte"),
                        };
                        NAME
                    })+
                }
            }
        }
    };
}

/// The length, NUL included, of [`c_identifier`]`(prefix, variant)`.
const fn c_identifier_len(prefix: &str, variant: &str) -> usize {
    let variant = variant.as_bytes();
    let mut len = prefix.len() + 1 + variant.len() + 1;
    let mut i = 1;
    while i < variant.len() {
        if variant[i].is_ascii_uppercase() {
            len += 1;
        }
        i += 1;
    }
    len
}

/// `PREFIX_VARIANT\0` in SCREAMING_SNAKE_CASE: `prefix` (snake_case) upper-cased, then
/// `variant` (CamelCase) with a `_` before each inner capital, as cbindgen renames.
const fn c_identifier<const N: usize>(prefix: &str, variant: &str) -> [u8; N] {
    let (prefix, variant) = (prefix.as_bytes(), variant.as_bytes());
    let mut out = [0u8; N];
    let mut o = 0;
    let mut i = 0;
    while i < prefix.len() {
        out[o] = prefix[i].to_ascii_uppercase();
        o += 1;
        i += 1;
    }
    out[o] = b'_';
    o += 1;
    i = 0;
    while i < variant.len() {
        if i > 0 && variant[i].is_ascii_uppercase() {
            out[o] = b'_';
            o += 1;
        }
        out[o] = variant[i].to_ascii_uppercase();
        o += 1;
        i += 1;
    }
    out
}

#[apply(result_codes!)]
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
    /// decode as the expected protobuf message, an unknown executor kind, a length no
    /// buffer can have. (A commit id or subdirectory Nix must not see fails the
    /// evaluation instead: its `eval_err` says why.)
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

impl genbuild_result {
    fn from_u32(value: u32) -> Option<genbuild_result> {
        genbuild_result::ALL.iter().copied().find(|&code| code as u32 == value)
    }
}

/// A static, NUL-terminated name of a result code ("GENBUILD_RESULT_OK", …; "unknown"
/// for a value that is none). Never free it.
///
/// Thread safety: any thread.
#[no_mangle]
pub extern "C" fn genbuild_result_name(result: u32) -> *const c_char {
    ffi_panic_boundary! {{
        genbuild_result::from_u32(result).map_or(c"unknown", genbuild_result::name).as_ptr()
    }}
}

/// Why a call failed, before it is handed to C: its code and its message.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: genbuild_result,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: genbuild_result, message: impl Into<String>) -> Failure {
        Failure { code, message: message.into() }
    }

    /// `name` (an argument, or a field as `config->hostname`) was NULL.
    pub(crate) fn null(name: &str) -> Failure {
        Failure::new(genbuild_result::NullArgument, format!("{name} is NULL"))
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Failure {
        Failure::new(genbuild_result::InvalidArgument, message)
    }
}

/// The builder's refusals: the message is the builder's own.
impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::new(genbuild_result::Refused, e.to_string())
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::new(genbuild_result::StoreError, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_of(value: u32) -> String {
        // SAFETY: a static NUL-terminated string.
        unsafe { CStr::from_ptr(genbuild_result_name(value)) }.to_str().unwrap().to_string()
    }

    /// SCREAMING_SNAKE_CASE of a CamelCase identifier, written independently of
    /// `c_identifier` (on `char`s, at run time).
    fn screaming(camel: &str) -> String {
        let mut out = String::new();
        for (i, c) in camel.chars().enumerate() {
            if i > 0 && c.is_uppercase() {
                out.push('_');
            }
            out.extend(c.to_uppercase());
        }
        out
    }

    #[test]
    fn every_code_is_named_after_its_identifier() {
        assert!(genbuild_result::ALL.len() >= 8, "{:?}", genbuild_result::ALL);
        for &code in genbuild_result::ALL {
            let want = format!("GENBUILD_RESULT_{}", screaming(&format!("{code:?}")));
            assert_eq!(name_of(code as u32), want, "{code:?}");
            assert_eq!(genbuild_result::from_u32(code as u32), Some(code));
        }
    }

    #[test]
    fn a_value_that_is_no_code_is_unknown() {
        let max = genbuild_result::ALL.iter().map(|&c| c as u32).max().unwrap();
        for value in (0..=max + 2).chain([u32::MAX / 2, u32::MAX]) {
            if genbuild_result::from_u32(value).is_none() {
                assert_eq!(name_of(value), "unknown", "{value}");
            }
        }
        assert_eq!(name_of(max + 1), "unknown");
        assert_eq!(name_of(u32::MAX), "unknown");
    }

    /// The header is what C sees: each `GENBUILD_RESULT_*` enumerator it declares has
    /// the name `genbuild_result_name` gives its value, and it declares every code.
    #[test]
    fn the_header_spells_every_code_as_its_name() {
        let header = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/genbuild.h"))
            .expect("ffi/include/genbuild.h");
        let mut declared = Vec::new();
        for line in header.lines().map(str::trim) {
            let Some((ident, value)) = line.strip_suffix(',').and_then(|l| l.split_once(" = ")) else {
                continue;
            };
            if ident.starts_with("GENBUILD_RESULT_") {
                let value: u32 = value.parse().unwrap_or_else(|e| panic!("{line}: {e}"));
                assert_eq!(name_of(value), ident, "the header's {line}");
                declared.push(value);
            }
        }
        let all: Vec<u32> = genbuild_result::ALL.iter().map(|&c| c as u32).collect();
        assert_eq!(declared, all, "the header's codes against genbuild_result::ALL");
    }
}
