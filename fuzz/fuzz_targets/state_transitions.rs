//! Operation sequences against the pure state machine, checked against the reference model.
#![no_main]

use genbuild::fuzzing::{check_machine, Op};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|ops: Vec<Op>| check_machine(&ops));
