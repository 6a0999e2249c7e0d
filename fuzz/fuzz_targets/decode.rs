//! Arbitrary bytes as a store file and as every protobuf message genbuild decodes.
#![no_main]

use genbuild::fuzzing::check_decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| check_decode(bytes));
