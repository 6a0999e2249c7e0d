//! The state file as the store tests see it from outside: the framed format's layout
//! (see `src/store/file.rs`) and state files written by hand.

use genbuild::proto::{status, Generation, StoreState};

/// A framed file: 16 bytes of magic, a `u32` version, a `u64` length, the data, a CRC-32.
pub const MAGIC: &[u8] = b"\0genbuild-state\n";
pub const HEADER_LEN: usize = MAGIC.len() + 4 + 8;

/// Whether `file` is a whole framed file: magic, version 1, a length that matches.
pub fn is_framed(file: &[u8]) -> bool {
    file.len() >= HEADER_LEN + 4
        && file.starts_with(MAGIC)
        && file[MAGIC.len()..MAGIC.len() + 4] == 1u32.to_le_bytes()
        && u64::from_le_bytes(file[HEADER_LEN - 8..HEADER_LEN].try_into().unwrap())
            == (file.len() - HEADER_LEN - 4) as u64
}

/// The protobuf data of framed `file`.
pub fn data_of(file: &[u8]) -> &[u8] {
    assert!(is_framed(file), "framed: {:?}", &file[..file.len().min(HEADER_LEN)]);
    &file[HEADER_LEN..file.len() - 4]
}

/// A state holding one generation, built, as host1 records it: every field a loaded
/// store checks is set.
pub fn one_built_generation(uuid: &str) -> StoreState {
    let now = Some(prost_types::Timestamp::from(std::time::SystemTime::now()));
    let generation = Generation {
        uuid: uuid.into(),
        hostname: "host1".into(),
        selected_commit_id: "f".repeat(40),
        eval_status: status::EVALUATED.into(),
        eval_started_at: now,
        eval_ended_at: now,
        drv_path: "/nix/store/hand-written.drv".into(),
        out_path: "/nix/store/hand-written".into(),
        build_status: status::BUILT.into(),
        build_started_at: now,
        build_ended_at: now,
        build_reason: genbuild::BUILD_REASON_NEED_BUILD.into(),
        ..Default::default()
    };
    StoreState {
        generations: vec![generation],
        last_eval_started: uuid.into(),
        last_eval_finished: uuid.into(),
        last_build_started: uuid.into(),
        last_build_finished: uuid.into(),
        ..Default::default()
    }
}
