//! Operation sequences against the threaded Builder with a fake executor.
#![no_main]

use genbuild::fuzzing::{check_builder, Op};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|ops: Vec<Op>| check_builder(&ops));
