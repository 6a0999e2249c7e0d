//! The state file: its framed format, the atomic write, symbolic links, and what a
//! newer genbuild wrote that this one does not know.
//!
//! Layout (format version 1), all integers little-endian:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 16 | magic `\0genbuild-state\n` |
//! | 16 | 4 | format version (`u32`) |
//! | 20 | 8 | length `n` of the data (`u64`) |
//! | 28 | n | the data: a [`StoreState`] protobuf message |
//! | 28 + n | 4 | CRC-32 (IEEE, as zlib computes it) of every byte before it |
//!
//! The length in the header makes every cut file shorter than it says it is, so a
//! truncation is found whatever byte it falls on (a bare protobuf cut between two
//! generations decodes as a smaller, valid store); the checksum finds damage inside.
//! A protobuf message cannot start with a zero byte (field number 0 is invalid), so the
//! magic's first byte tells the framed format from the legacy one, a bare
//! [`StoreState`] as genbuild wrote it before, which is still read (a cut in it cannot
//! be detected) and is rewritten framed on the next change.
//!
//! Versions: fields added to the messages keep the version; a genbuild that does not
//! know them keeps their bytes ([`Unknown`]) and writes them back, so that running an
//! older genbuild for a while (a NixOS rollback) loses nothing. The version changes
//! only when a file would not mean the same to an older reader; an older genbuild
//! refuses such a file ([`StoreError::NewerVersion`]) rather than rewrite it.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use prost::Message;

use super::reusable::ReuseIndex;
use crate::error::StoreError;
use crate::proto::{Generation, ReusableEvaluation, StoreState};

/// The first bytes of a framed state file.
const MAGIC: [u8; 16] = *b"\0genbuild-state\n";
/// The format this genbuild writes, and the newest it reads.
pub(super) const FORMAT_VERSION: u32 = 1;
/// Magic, version and data length.
const HEADER_LEN: usize = MAGIC.len() + 4 + 8;
/// The checksum.
const TRAILER_LEN: usize = 4;
/// `StoreState.generations`, encoded by hand to append each generation's unknown fields.
const GENERATIONS_FIELD: u32 = 1;
/// `StoreState.reusable_evaluations`, encoded by hand for the same reason.
const REUSABLE_FIELD: u32 = 6;
/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;
/// Bounds the nesting of groups (prost's own recursion limit).
const MAX_GROUP_DEPTH: u32 = 100;
/// Linux's limit on symbolic links followed in one lookup.
const MAX_SYMLINKS: usize = 40;

/// Fields of a state file that this genbuild does not know, as their encoded bytes:
/// those of the [`StoreState`], those of each generation, by uuid, and those of each
/// reusable evaluation, by key.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Unknown {
    pub(super) top: Vec<u8>,
    pub(super) generations: HashMap<String, Vec<u8>>,
    pub(super) reusable: HashMap<String, Vec<u8>>,
}

impl Unknown {
    /// Forgets the fields of the generations `state` and the evaluations `index` no
    /// longer hold.
    pub(super) fn retain_of(&mut self, state: &StoreState, index: &ReuseIndex) {
        self.generations.retain(|uuid, _| state.generations.iter().any(|g| &g.uuid == uuid));
        self.reusable.retain(|key, _| index.contains(key));
    }
}

/// What a state file holds.
#[derive(Debug)]
pub(super) struct Contents {
    pub(super) state: StoreState,
    pub(super) unknown: Unknown,
    /// Written by a genbuild from before the framed format.
    pub(super) legacy: bool,
}

/// The file `path` stands for: `path` itself, or, when it is a symbolic link, the end
/// of its chain of links, whether that exists or not (a dangling link names the file to
/// create). Only the last component is followed: links among the directories are
/// resolved by the kernel and do not change which directory holds the file.
pub(super) fn resolve(path: &Path) -> Result<PathBuf, StoreError> {
    let mut current = path.to_path_buf();
    for _ in 0..=MAX_SYMLINKS {
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let next = fs::read_link(&current).map_err(io("read the symbolic link", &current))?;
                current = match current.parent() {
                    Some(dir) => dir.join(next),
                    None => next,
                };
            }
            Ok(_) => return Ok(current),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(current),
            Err(e) => return Err(io("inspect", &current)(e)),
        }
    }
    Err(io("follow the symbolic links of", path)(rustix::io::Errno::LOOP.into()))
}

/// `file-` and a hash of the resolved file's absolute path (its directory canonical),
/// so that every spelling of one file, through links or not, gives one id.
pub(super) fn store_id(target: &Path) -> String {
    let (dir, _, _) = temp_file_pattern(target);
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let full = dir.join(target.file_name().unwrap_or_default());
    let hash = full
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("file-{hash:016x}")
}

/// Reads the resolved state file `target`; `None` when it does not exist yet.
pub(super) fn read(target: &Path) -> Result<Option<Contents>, StoreError> {
    let meta = match fs::metadata(target) {
        Ok(meta) => meta,
        // "" or "missing/..": nothing a write could create.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && target.file_name().is_none() => {
            return Err(StoreError::NotAFile {
                path: target.to_path_buf(),
                found: "a path without a file name",
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("inspect", target)(e)),
    };
    // Checked before reading: opening a FIFO would block, a device would never end.
    if !meta.is_file() {
        return Err(StoreError::NotAFile { path: target.to_path_buf(), found: describe(meta.file_type()) });
    }
    let bytes = fs::read(target).map_err(io("read", target))?;
    decode(target, &bytes).map(Some)
}

fn describe(kind: fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// The state in the framed format, with the unknown fields put back where they were.
pub(super) fn encode(state: &StoreState, unknown: &Unknown) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + state.encoded_len() + unknown.top.len() + TRAILER_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    encode_data(state, unknown, &mut out);
    let len = (out.len() - HEADER_LEN) as u64;
    out[HEADER_LEN - 8..HEADER_LEN].copy_from_slice(&len.to_le_bytes());
    let checksum = crc32(&out);
    out.extend_from_slice(&checksum.to_le_bytes());
    out
}

/// `state` as prost encodes it (fields in the order of their numbers), each generation
/// and reusable evaluation followed by its unknown fields and the message by its own.
fn encode_data(state: &StoreState, unknown: &Unknown, out: &mut Vec<u8>) {
    for g in &state.generations {
        put_message(out, GENERATIONS_FIELD, g, extra(&unknown.generations, &g.uuid));
    }
    // Every field named, so that a field added to the message fails to compile here.
    let rest = StoreState {
        generations: Vec::new(),
        last_eval_started: state.last_eval_started.clone(),
        last_eval_finished: state.last_eval_finished.clone(),
        last_build_started: state.last_build_started.clone(),
        last_build_finished: state.last_build_finished.clone(),
        reusable_evaluations: Vec::new(),
    };
    out.extend_from_slice(&rest.encode_to_vec());
    for e in &state.reusable_evaluations {
        put_message(out, REUSABLE_FIELD, e, extra(&unknown.reusable, &e.key));
    }
    out.extend_from_slice(&unknown.top);
}

/// Field `number` holding `message` followed by the bytes `extra` (its unknown fields).
fn put_message(out: &mut Vec<u8>, number: u32, message: &impl Message, extra: &[u8]) {
    put_varint(out, u64::from(number << 3 | u32::from(LEN)));
    put_varint(out, (message.encoded_len() + extra.len()) as u64);
    out.extend_from_slice(&message.encode_to_vec());
    out.extend_from_slice(extra);
}

/// The unknown fields kept for the message `id` names.
fn extra<'a>(fields: &'a HashMap<String, Vec<u8>>, id: &str) -> &'a [u8] {
    fields.get(id).map_or(&[], Vec::as_slice)
}

/// Reads a state file's bytes, framed or legacy.
fn decode(path: &Path, bytes: &[u8]) -> Result<Contents, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt { path: path.to_path_buf(), reason };
    let Some(&first) = bytes.first() else {
        return Err(corrupt("it is empty, and genbuild never writes an empty file: it was cut short".into()));
    };
    if first != 0 {
        let (state, unknown) = decode_data(bytes).map_err(corrupt)?;
        return Ok(Contents { state, unknown, legacy: true });
    }
    let header = &bytes[..bytes.len().min(HEADER_LEN)];
    if !header.starts_with(&MAGIC) && !MAGIC.starts_with(header) {
        return Err(corrupt("it does not start with genbuild's magic bytes: it is not a state file".into()));
    }
    if let Some(version) = header.get(MAGIC.len()..MAGIC.len() + 4) {
        let version = u32::from_le_bytes(version.try_into().expect("4 bytes"));
        if version > FORMAT_VERSION {
            return Err(StoreError::NewerVersion {
                path: path.to_path_buf(),
                version,
                supported: FORMAT_VERSION,
            });
        }
        if version == 0 {
            return Err(corrupt("its format version is 0, which no genbuild writes".into()));
        }
    }
    if header.len() < HEADER_LEN {
        return Err(corrupt(format!("it is cut short in its header, after {} bytes", bytes.len())));
    }
    let len = u64::from_le_bytes(header[HEADER_LEN - 8..].try_into().expect("8 bytes"));
    let size = bytes.len() as u64;
    match len.checked_add((HEADER_LEN + TRAILER_LEN) as u64) {
        Some(expected) if expected == size => {}
        Some(expected) if expected < size => {
            return Err(corrupt(format!("it has {} bytes after its end", size - expected)));
        }
        _ => {
            return Err(corrupt(format!(
                "it is cut short: its header announces {len} bytes of data, and the file holds {size} bytes in all"
            )));
        }
    }
    let (framed, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
    let stored = u32::from_le_bytes(trailer.try_into().expect("4 bytes"));
    let computed = crc32(framed);
    if stored != computed {
        return Err(corrupt(format!(
            "its checksum does not match (stored {stored:08x}, computed {computed:08x}): it was damaged"
        )));
    }
    let (state, unknown) = decode_data(&framed[HEADER_LEN..]).map_err(corrupt)?;
    Ok(Contents { state, unknown, legacy: false })
}

/// A [`StoreState`] message and the fields of it this genbuild does not know.
fn decode_data(bytes: &[u8]) -> Result<(StoreState, Unknown), String> {
    let state = StoreState::decode(bytes).map_err(|e| format!("its data does not decode: {e}"))?;
    let mut unknown = Unknown::default();
    let mut generations = state.generations.iter();
    let mut reusable = state.reusable_evaluations.iter();
    for field in fields(bytes)? {
        // One entry per occurrence: repeated messages are not merged.
        if field.number == GENERATIONS_FIELD && field.wire_type == LEN {
            let generation = generations.next().ok_or("a generation is missing")?;
            let extra = unknown_fields::<Generation>(field.payload)?;
            if !extra.is_empty() {
                unknown.generations.insert(generation.uuid.clone(), extra);
            }
        } else if field.number == REUSABLE_FIELD && field.wire_type == LEN {
            let evaluation = reusable.next().ok_or("a reusable evaluation is missing")?;
            let extra = unknown_fields::<ReusableEvaluation>(field.payload)?;
            if !extra.is_empty() {
                unknown.reusable.insert(evaluation.key.clone(), extra);
            }
        } else if is_unknown::<StoreState>(field.number, field.wire_type) {
            unknown.top.extend_from_slice(field.raw);
        }
    }
    Ok((state, unknown))
}

/// The encoded fields of message `bytes` that `M` does not know.
fn unknown_fields<M: Message + Default + PartialEq>(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for field in fields(bytes)? {
        if is_unknown::<M>(field.number, field.wire_type) {
            out.extend_from_slice(field.raw);
        }
    }
    Ok(out)
}

/// Whether `M` skips field `number` sent with `wire_type`. prost keeps no list of
/// field numbers, so ask it: a known field given a value that is not the default
/// either decodes to a message that is not the default or fails (wrong wire type); an
/// unknown one is skipped. The value for `LEN`, bytes `08 01`, is a non-empty string, a
/// message with field 1 set, and packed numbers all at once.
fn is_unknown<M: Message + Default + PartialEq>(number: u32, wire_type: u8) -> bool {
    let mut probe = Vec::new();
    put_varint(&mut probe, u64::from(number << 3 | u32::from(wire_type)));
    match wire_type {
        VARINT => probe.push(1),
        FIXED64 => probe.extend_from_slice(&1u64.to_le_bytes()),
        FIXED32 => probe.extend_from_slice(&1u32.to_le_bytes()),
        LEN => probe.extend_from_slice(&[2, 0x08, 0x01]),
        START_GROUP => put_varint(&mut probe, u64::from(number << 3 | u32::from(END_GROUP))),
        _ => return false,
    }
    matches!(M::decode(probe.as_slice()), Ok(m) if m == M::default())
}

/// One encoded field of a message.
struct Field<'a> {
    number: u32,
    wire_type: u8,
    /// The whole field, key included.
    raw: &'a [u8],
    /// The content of a `LEN` field.
    payload: &'a [u8],
}

/// The fields of message `bytes`, in order.
fn fields(bytes: &[u8]) -> Result<Vec<Field<'_>>, String> {
    let mut rest = bytes;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let start = bytes.len() - rest.len();
        let (number, wire_type) = read_key(&mut rest)?;
        let payload = skip_value(&mut rest, number, wire_type, MAX_GROUP_DEPTH)?;
        let raw = &bytes[start..bytes.len() - rest.len()];
        out.push(Field { number, wire_type, raw, payload });
    }
    Ok(out)
}

fn read_key(buf: &mut &[u8]) -> Result<(u32, u8), String> {
    let key = read_varint(buf)?;
    let number = u32::try_from(key >> 3).map_err(|_| format!("the field key {key} is too large"))?;
    Ok((number, (key & 7) as u8))
}

/// Moves `buf` past a field's value; returns the content of a `LEN` field.
fn skip_value<'a>(buf: &mut &'a [u8], number: u32, wire_type: u8, depth: u32) -> Result<&'a [u8], String> {
    match wire_type {
        VARINT => read_varint(buf).map(|_| &[][..]),
        FIXED64 => take(buf, 8).map(|_| &[][..]),
        FIXED32 => take(buf, 4).map(|_| &[][..]),
        LEN => {
            let len = read_varint(buf)?;
            take(buf, usize::try_from(len).map_err(|_| format!("a length of {len} bytes"))?)
        }
        START_GROUP => {
            let depth = depth.checked_sub(1).ok_or("groups are nested too deeply")?;
            loop {
                let (inner, inner_type) = read_key(buf)?;
                if inner_type == END_GROUP {
                    return if inner == number {
                        Ok(&[])
                    } else {
                        Err("a group ends with another's tag".into())
                    };
                }
                skip_value(buf, inner, inner_type, depth)?;
            }
        }
        _ => Err(format!("field {number} has the invalid wire type {wire_type}")),
    }
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if buf.len() < n {
        return Err(format!("a field of {n} bytes is cut short"));
    }
    let (taken, rest) = buf.split_at(n);
    *buf = rest;
    Ok(taken)
}

fn read_varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for i in 0..10 {
        let (&byte, rest) = buf.split_first().ok_or("a number is cut short")?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err("a number is longer than 10 bytes".into())
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// CRC-32 as zlib, PNG and Ethernet compute it (reflected polynomial 0xEDB88320).
/// Written out because nothing in the dependency tree provides it and a table of
/// 256 entries does not justify a new dependency.
fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut bit = 0;
            while bit < 8 {
                c = if c & 1 == 1 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                bit += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |c, &b| TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

/// The directory of `path` and the prefix and suffix of its temporary files.
fn temp_file_pattern(path: &Path) -> (&Path, String, &'static str) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    (dir, format!(".{name}."), ".tmp")
}

/// Removes the temporary files that writes of `target` left when a crash interrupted
/// them before their rename: `.NAME.<32 hex digits>.tmp` beside it.
pub(super) fn remove_interrupted_writes(target: &Path) {
    let (dir, prefix, suffix) = temp_file_pattern(target);
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let random = name.strip_prefix(prefix.as_str()).and_then(|n| n.strip_suffix(suffix));
        if random.is_some_and(|r| r.len() == 32 && r.bytes().all(|b| b.is_ascii_hexdigit())) {
            log::info!("removing {}, left by an interrupted write", entry.path().display());
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Replaces the file `path` stands for (see [`resolve`]; resolved anew on every write,
/// so a link retargeted meanwhile is followed) with `bytes`: a temporary file beside
/// it, fsync, rename over it, fsync of its directory. A crash leaves the old file or
/// the new one. An existing file's permission bits are kept.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let target = resolve(path)?;
    let (dir, prefix, suffix) = temp_file_pattern(&target);
    let tmp = dir.join(format!("{prefix}{}{suffix}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io("create a temporary file beside", &target))?;
        if let Ok(meta) = fs::metadata(&target) {
            file.set_permissions(meta.permissions()).map_err(io("copy the permissions of", &target))?;
        }
        file.write_all(bytes).map_err(io("write", &target))?;
        file.sync_all().map_err(io("sync", &target))?;
        fs::rename(&tmp, &target).map_err(io("replace", &target))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync the directory of", &target))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { action, path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::status;

    fn state(generations: usize) -> StoreState {
        let generations: Vec<Generation> = (0..generations)
            .map(|i| Generation {
                uuid: format!("generation-{i}"),
                hostname: "host".into(),
                eval_status: status::EVALUATED.into(),
                drv_path: format!("/nix/store/{i}.drv"),
                eval_started_at: Some(prost_types::Timestamp { seconds: 1_700_000_000 + i as i64, nanos: 0 }),
                ..Default::default()
            })
            .collect();
        let last = |i: usize| generations.get(i).map(|g| g.uuid.clone()).unwrap_or_default();
        let reusable_evaluations = generations
            .iter()
            .map(|g| ReusableEvaluation {
                key: format!("key-of-{}", g.uuid),
                source_uuid: g.uuid.clone(),
                drv_path: g.drv_path.clone(),
                out_path: format!("{}-out", g.drv_path),
                machine_id: String::new(),
            })
            .collect();
        StoreState {
            last_eval_started: last(0),
            last_eval_finished: last(1),
            last_build_started: last(2),
            last_build_finished: last(3),
            generations,
            reusable_evaluations,
        }
    }

    fn decoded(bytes: &[u8]) -> Result<Contents, StoreError> {
        decode(Path::new("/state/file"), bytes)
    }

    #[test]
    fn crc32_is_the_ieee_one() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn without_unknown_fields_the_data_is_prosts_encoding() {
        for n in 0..4 {
            let state = state(n);
            let mut data = Vec::new();
            encode_data(&state, &Unknown::default(), &mut data);
            assert_eq!(data, state.encode_to_vec());
            let contents = decoded(&encode(&state, &Unknown::default())).unwrap();
            assert_eq!(
                (contents.state, contents.unknown, contents.legacy),
                (state, Unknown::default(), false)
            );
        }
    }

    /// Where each generation's record ends in the framed file.
    fn generation_boundaries(state: &StoreState) -> Vec<usize> {
        let mut end = HEADER_LEN;
        state
            .generations
            .iter()
            .map(|g| {
                end += 1 + prost::length_delimiter_len(g.encoded_len()) + g.encoded_len();
                end
            })
            .collect()
    }

    #[test]
    fn a_framed_file_cut_at_any_byte_is_corrupt() {
        let state = state(4);
        let bytes = encode(&state, &Unknown::default());
        let boundaries = generation_boundaries(&state);
        for &end in &boundaries {
            // Why the frame: the bare data cut between two generations is a valid store.
            let shorter = StoreState::decode(&bytes[HEADER_LEN..end]).expect("a cut at a boundary decodes");
            assert_ne!(shorter, state);
        }
        for cut in 0..bytes.len() {
            match decoded(&bytes[..cut]) {
                Err(StoreError::Corrupt { path, reason }) => {
                    assert_eq!(path, Path::new("/state/file"));
                    assert!(!reason.is_empty());
                }
                other => panic!("cut at {cut} of {} (boundaries {boundaries:?}): {other:?}", bytes.len()),
            }
        }
    }

    #[test]
    fn every_flipped_bit_is_refused() {
        let bytes = encode(&state(2), &Unknown::default());
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let result = decoded(&damaged);
            assert!(
                matches!(result, Err(StoreError::Corrupt { .. } | StoreError::NewerVersion { .. })),
                "bit {bit}: {result:?}"
            );
        }
    }

    #[test]
    fn lengths_that_do_not_fit_the_file_are_corrupt() {
        let bytes = encode(&state(1), &Unknown::default());
        for len in [u64::MAX, u64::MAX - 31, 1 << 40, 0] {
            let mut wrong = bytes.clone();
            wrong[HEADER_LEN - 8..HEADER_LEN].copy_from_slice(&len.to_le_bytes());
            let err = decoded(&wrong).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt { .. }), "{len}: {err}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let err = decoded(&longer).unwrap_err().to_string();
        assert!(err.contains("1 bytes after its end"), "{err}");
    }

    #[test]
    fn newer_and_invalid_versions_are_refused() {
        let mut bytes = encode(&state(1), &Unknown::default());
        bytes[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(decoded(&bytes), Err(StoreError::NewerVersion { version: 2, supported: 1, .. })));
        // Even cut short: the version is all an older genbuild needs to know.
        assert!(matches!(decoded(&bytes[..MAGIC.len() + 4]), Err(StoreError::NewerVersion { .. })));
        bytes[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(decoded(&bytes), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn the_legacy_format_and_odd_starts() {
        let state = state(3);
        let contents = decoded(&state.encode_to_vec()).unwrap();
        assert!(contents.legacy);
        assert_eq!(contents.state, state);
        for bytes in [&b""[..], b"\0", b"\0genbuild-sta", b"\0something else entirely....", b"\xff\xff"] {
            assert!(matches!(decoded(bytes), Err(StoreError::Corrupt { .. })), "{bytes:?}");
        }
    }

    /// The field numbers a message of `proto/genbuild.proto` declares.
    fn declared_numbers(message: &str) -> Vec<u32> {
        let proto = include_str!("../../proto/genbuild.proto");
        let start = proto.find(&format!("message {message} {{")).expect("the message is declared");
        let body = &proto[start..start + proto[start..].find("\n}").expect("it ends")];
        body.lines()
            .filter_map(|line| {
                line.split("//").next()?.split_once('=')?.1.trim().strip_suffix(';')?.parse().ok()
            })
            .collect()
    }

    #[test]
    fn the_probe_tells_exactly_the_declared_fields_from_unknown_ones() {
        for (message, declared, probe) in [
            ("Generation", declared_numbers("Generation"), is_unknown::<Generation> as fn(u32, u8) -> bool),
            ("StoreState", declared_numbers("StoreState"), is_unknown::<StoreState>),
            ("ReusableEvaluation", declared_numbers("ReusableEvaluation"), is_unknown::<ReusableEvaluation>),
        ] {
            assert!(declared.len() >= 5, "{message}: {declared:?}");
            for number in 1..300 {
                for wire_type in [VARINT, FIXED64, LEN, START_GROUP, FIXED32] {
                    assert_eq!(
                        probe(number, wire_type),
                        !declared.contains(&number),
                        "{message} field {number}, wire type {wire_type}"
                    );
                }
            }
        }
    }

    #[test]
    fn unknown_fields_of_every_wire_type_round_trip() {
        let state = state(2);
        let mut unknown = Unknown::default();
        // 200: varint 300; 201: fixed64; 202: bytes; 203: a group holding a varint; 204: fixed32.
        let mut fields = vec![0xc0, 0x0c, 0xac, 0x02];
        fields.extend_from_slice(&[0xc9, 0x0c, 1, 2, 3, 4, 5, 6, 7, 8]);
        fields.extend_from_slice(&[0xd2, 0x0c, 2, 0xff, 0x00]);
        fields.extend_from_slice(&[0xdb, 0x0c, 0x08, 0x01, 0xdc, 0x0c]);
        fields.extend_from_slice(&[0xe5, 0x0c, 9, 9, 9, 9]);
        unknown.top = fields.clone();
        unknown.generations.insert("generation-1".into(), fields.clone());
        unknown.reusable.insert("key-of-generation-0".into(), fields);
        let bytes = encode(&state, &unknown);
        let contents = decoded(&bytes).unwrap();
        assert_eq!((contents.state, contents.unknown), (state, unknown));
    }
}
