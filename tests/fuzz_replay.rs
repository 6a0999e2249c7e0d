//! Replays the fuzzers' committed corpus and crash files, and seeded random sequences,
//! through the checks of `genbuild::fuzzing`, so that every CI run on stable exercises
//! the very code the fuzzers run (cargo-fuzz itself needs a nightly-only sanitizer).
#![cfg(feature = "fuzzing")]

mod common;

use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use common::seeded_bytes;
use genbuild::fuzzing::{check_builder, check_decode, check_machine, Op};

fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files: Vec<PathBuf> = ["corpus", "artifacts"]
        .iter()
        .filter_map(|dir| std::fs::read_dir(fuzz.join(dir).join(target)).ok())
        .flatten()
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// What libfuzzer-sys hands a `|ops: Vec<Op>|` target for these bytes.
fn ops_of(bytes: &[u8]) -> Vec<Op> {
    Vec::<Op>::arbitrary_take_rest(Unstructured::new(bytes)).unwrap_or_default()
}

/// `count` sequences of `len` operations, drawn from [`seeded_bytes`] through
/// [`Unstructured`] as libFuzzer's inputs are.
fn seeded_sequences(seed: u64, count: usize, len: usize) -> Vec<Vec<Op>> {
    (0..count as u64)
        .map(|i| {
            let bytes = seeded_bytes(seed.wrapping_mul(0x1_0000_0001).wrapping_add(i), len * 16);
            let mut u = Unstructured::new(&bytes);
            (0..len).map(|_| Op::arbitrary(&mut u).expect("enough bytes for every operation")).collect()
        })
        .collect()
}

fn replay(target: &str, check: impl Fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no corpus for {target}");
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        eprintln!("replaying {}", file.display());
        check(&bytes);
    }
}

#[test]
fn state_transitions_corpus() {
    replay("state_transitions", |bytes| check_machine(&ops_of(bytes)));
}

#[test]
fn builder_ops_corpus() {
    replay("builder_ops", |bytes| check_builder(&ops_of(bytes)));
}

#[test]
fn decode_corpus() {
    replay("decode", check_decode);
}

#[test]
fn seeded_machine_sequences() {
    for (i, ops) in seeded_sequences(1, 3000, 40).iter().enumerate() {
        eprintln!("seeded machine sequence {i}: {ops:?}");
        check_machine(ops);
    }
}

#[test]
fn seeded_builder_sequences() {
    for ops in seeded_sequences(2, 300, 24) {
        check_builder(&ops);
    }
}

#[test]
fn seeded_decode_inputs() {
    for ops in seeded_sequences(3, 200, 4) {
        check_decode(format!("{ops:?}").as_bytes());
    }
}

/// Writes the seed corpus under fuzz/corpus/ (deterministic but for the time a
/// generation was found interrupted, in `decode/store-framed`). Run with
/// `cargo test --all-features --test fuzz_replay -- --ignored`.
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_seed_corpus() {
    use genbuild::proto::{self, event, Generation};
    use prost::Message;

    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    for (i, len) in [16, 64, 160, 320, 640].into_iter().enumerate() {
        write("state_transitions", &format!("seed-{i}"), &seeded_bytes(100 + i as u64, len));
        write("builder_ops", &format!("seed-{i}"), &seeded_bytes(200 + i as u64, len));
    }
    let generation = |status: &str| Generation {
        uuid: "2f0c1c1e-8a43-4c1b-9f57-1a0d1e0c7b11".into(),
        hostname: "host".into(),
        selected_commit_id: "0123456789abcdef0123456789abcdef01234567".into(),
        eval_status: status.into(),
        build_status: "building".into(),
        drv_path: "/nix/store/x-system.drv".into(),
        ..Default::default()
    };
    let store = proto::StoreState {
        generations: vec![generation("evaluated"), generation("evaluating")],
        last_eval_started: "2f0c1c1e-8a43-4c1b-9f57-1a0d1e0c7b11".into(),
        ..Default::default()
    };
    let event = proto::Event {
        kind: Some(event::Kind::EvalStarted(proto::EvalStarted {
            generation: Some(generation("evaluating")),
        })),
        created_at: Some(prost_types::Timestamp { seconds: 1, nanos: 2 }),
    };
    let state = proto::Builder {
        is_evaluating: Some(true),
        generation: Some(generation("evaluated")),
        hostname: "host".into(),
        ..Default::default()
    };
    let rs = proto::RepositoryStatus { selected_commit_id: "ab".repeat(20), ..Default::default() };
    write("decode", "empty", b"");
    write("decode", "store", &store.encode_to_vec());
    // The same state as the store writes it today: opening the legacy file marks the
    // evaluating generation interrupted, which rewrites it framed.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    std::fs::write(&path, store.encode_to_vec()).unwrap();
    drop(genbuild::Store::open(&path).unwrap());
    write("decode", "store-framed", &std::fs::read(&path).unwrap());
    write("decode", "event", &event.encode_to_vec());
    write("decode", "builder", &state.encode_to_vec());
    write("decode", "repository-status", &rs.encode_to_vec());
    write("decode", "garbage", &seeded_bytes(300, 64));
}
