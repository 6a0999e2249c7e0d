//! Arbitrary bytes as a store file and as every protobuf message genbuild decodes.

use std::sync::atomic::{AtomicU64, Ordering};

use prost::Message;

use crate::StoreError;

/// Decodes `bytes` as every message a caller or a store file can hand genbuild:
/// errors are fine, panics are not; a store file that does not decode is reported
/// naming the file and left as it was.
pub fn check_decode(bytes: &[u8]) {
    use crate::proto;
    if let Ok(m) = proto::RepositoryStatus::decode(bytes) {
        assert_eq!(
            proto::RepositoryStatus::decode(m.encode_to_vec().as_slice()).ok(),
            Some(m),
            "re-encoding"
        );
    }
    let _ = proto::Builder::decode(bytes);
    let _ = proto::Event::decode(bytes);
    let _ = proto::Generation::decode(bytes);

    static FILES: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir();
    let path = dir.join(format!(
        "genbuild-fuzz-{}-{}.store",
        std::process::id(),
        FILES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, bytes).expect("cannot write the store file to decode");
    let opened = crate::Store::open(&path);
    match &opened {
        Ok(store) => {
            let _ = store.generations();
        }
        Err(e @ (StoreError::Corrupt { .. } | StoreError::NewerVersion { .. })) => {
            assert!(e.to_string().contains(&path.display().to_string()), "the error names the file: {e}");
            let left = std::fs::read(&path).expect("the corrupt store file is still there");
            assert_eq!(left, bytes, "a store file that does not decode is left untouched");
        }
        Err(e) => panic!("a store file that does not decode gives StoreError::Corrupt, got: {e}"),
    }
    drop(opened);
    let _ = std::fs::remove_file(&path);
}
