//! The process killed with SIGKILL at random points while it persists its state, 200
//! times: every state file left behind must open (`Store::open`) to a consistent state.
//!
//! Why: the reference truncates its state file and rewrites it in place, so a crash
//! mid-write loses everything. genbuild writes a temporary file, fsyncs, renames. The
//! only honest test of that is to crash a real process at arbitrary instants.
//!
//! How: the parent test re-executes this very test binary (`current_exe()`) running
//! only the ignored [`persist_child`] test, with the state file's path in
//! [`STATE_ENV`]. The child opens the store (the previous child's crash left it), says
//! "started" on stdout, and loops creating, evaluating, building and pre-empting
//! generations; every one of those steps rewrites the file. The parent waits for the
//! "started" line (synchronisation on a channel, not a sleep), then waits a
//! pseudo-random delay from a seeded xorshift (the kill point: that delay is what is
//! under test) and sends SIGKILL. It then opens a copy of the file and checks it, and
//! leaves the original for the next child to load, so that the load of a crashed file
//! and its "interrupted" rewrite are exercised too.
//!
//! The run starts from a file in the legacy format (a bare protobuf, as genbuild wrote
//! it before the framed format): the first child migrates it, and from then on every
//! file left behind must be framed (magic, version, length, data, checksum) and whole.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::store::{is_framed, one_built_generation};
use common::*;
use genbuild::proto::{status, Generation};
use genbuild::{Builder, Store};
use prost::Message;

/// Where the child persists; unset, the child test does nothing.
const STATE_ENV: &str = "GENBUILD_PERSIST_CRASH_STATE";
const STARTED: &str = "GENBUILD-PERSIST-CHILD-STARTED";
const KILLS: usize = 200;
/// The kill lands within this long after the child said it started.
const MAX_DELAY_MICROS: u64 = 40_000;
/// Not a test of its own: the body of the child process the parent kills.
#[test]
#[ignore = "run by persisted_state_survives_sigkill_at_random_points in a child process"]
fn persist_child() {
    let Some(path) = std::env::var_os(STATE_ENV) else { return };
    let store = Arc::new(Store::open(&path).expect("the state file left by the last crash opens"));
    let executor = Arc::new(ShellExecutor::new());
    let builder = Builder::new(config(), store, executor.clone());
    let (evaluated, built) = (builder.evaluation_done(), builder.build_done());
    let mut rng = XorShift(std::process::id() as u64 | 1);
    println!("{STARTED}");
    // Bounded, so that an orphaned child ends on its own.
    let end = Instant::now() + Duration::from_secs(30);
    let mut i = 0u64;
    // Generations pre-empted before their notification was read: each still gets
    // exactly one, on either channel, possibly after a later generation's on the other.
    let mut abandoned: Vec<String> = Vec::new();
    // The next notification for `uuid`, on either channel, skipping abandoned ones.
    let next_for = |uuid: &str, abandoned: &mut Vec<String>| loop {
        let (got, evaluation) = crossbeam_channel::select! {
            recv(evaluated) -> got => (got.unwrap(), true),
            recv(built) -> got => (got.unwrap(), false),
            default(HANG) => panic!("no notification for {uuid} within {HANG:?}"),
        };
        if got == uuid {
            return evaluation;
        }
        let at = abandoned.iter().position(|a| *a == got);
        let at = at.unwrap_or_else(|| panic!("a notification for {got}: neither {uuid} nor pre-empted"));
        abandoned.remove(at);
    };
    while Instant::now() < end {
        i += 1;
        if rng.below(4) == 0 {
            executor.valid.lock().clear();
        }
        let uuid = builder.eval(&rs(&format!("{i:040x}"))).unwrap();
        match rng.below(4) {
            // Pre-empted by the next eval at once.
            0 => {
                abandoned.push(uuid);
                continue;
            }
            1 => {
                builder.suspend().unwrap();
                builder.resume().unwrap();
            }
            _ => {}
        }
        if next_for(&uuid, &mut abandoned) {
            builder.submit_build(&uuid).unwrap();
            assert!(!next_for(&uuid, &mut abandoned), "a second evaluation_done for {uuid}");
        }
    }
    panic!("the parent never killed this child");
}

/// What a store loaded after a crash must look like.
fn check_consistent(generations: &[Generation], kill: usize) {
    assert!(generations.len() <= 4, "kill {kill}: the store keeps at most 4 generations: {generations:#?}");
    let mut uuids: Vec<&str> = generations.iter().map(|g| g.uuid.as_str()).collect();
    uuids.sort();
    uuids.dedup();
    assert_eq!(uuids.len(), generations.len(), "kill {kill}: duplicate uuids: {generations:#?}");
    for g in generations {
        let context = || format!("kill {kill}: {g:#?}");
        assert!(!g.uuid.is_empty() && g.hostname == "host1", "{}", context());
        assert_eq!(g.selected_commit_id.len(), 40, "{}", context());
        assert!(g.eval_started_at.is_some(), "{}", context());
        // Nothing is running after a load: an interrupted step is recorded failed.
        assert!([status::EVALUATED, status::FAILED].contains(&g.eval_status.as_str()), "{}", context());
        assert!(
            [status::INITIALIZED, status::BUILT, status::FAILED].contains(&g.build_status.as_str()),
            "{}",
            context()
        );
        assert!(g.eval_ended_at.is_some(), "{}", context());
        if g.eval_status == status::EVALUATED {
            assert!(!g.drv_path.is_empty() && !g.out_path.is_empty(), "{}", context());
        } else {
            assert!(!g.eval_err.is_empty(), "{}", context());
        }
        if g.build_status == status::BUILT {
            assert_eq!(g.eval_status, status::EVALUATED, "{}", context());
        }
        if g.build_status != status::INITIALIZED {
            assert!(g.build_started_at.is_some() && g.build_ended_at.is_some(), "{}", context());
            assert!(!g.build_reason.is_empty(), "{}", context());
        }
        if g.build_status == status::FAILED {
            assert!(!g.build_err.is_empty(), "{}", context());
        }
    }
}

/// Temporary files of interrupted writes in `dir`.
fn temp_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count()
}

#[test]
fn persisted_state_survives_sigkill_at_random_points() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.pb");
    let exe = std::env::current_exe().unwrap();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let seed = one_built_generation("00000000-0000-4000-8000-000000000000").encode_to_vec();
    std::fs::write(&path, &seed).unwrap();
    let (mut mid_write, mut generations_seen, mut migrated_at) = (0, 0, None);
    for kill in 0..KILLS {
        let mut child = Command::new(&exe)
            .args(["--exact", "persist_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env(STATE_ENV, &path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (started_tx, started) = crossbeam_channel::bounded(1);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains(STARTED) {
                    let _ = started_tx.send(());
                }
            }
        });
        if started.recv_timeout(HANG).is_err() {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!("kill {kill}: the child never started: {}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_micros(rng.below(MAX_DELAY_MICROS)));
        child.kill().unwrap();
        let output = child.wait_with_output().unwrap();
        reader.join().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            output.status.signal(),
            Some(9),
            "kill {kill}: the child ended on its own: {}",
            String::from_utf8_lossy(&output.stderr)
        );

        mid_write += usize::from(temp_files(dir.path()) > 0);
        let bytes = std::fs::read(&path).unwrap();
        if is_framed(&bytes) {
            migrated_at.get_or_insert(kill);
        } else {
            assert!(
                migrated_at.is_none() && bytes == seed,
                "kill {kill}: neither framed nor the legacy seed"
            );
        }
        let store = Store::open(&path).unwrap_or_else(|e| panic!("kill {kill}: {e}"));
        assert_eq!(temp_files(dir.path()), 0, "kill {kill}: opening removes what interrupted writes left");
        let generations = store.generations();
        generations_seen += generations.len();
        check_consistent(&generations, kill);
    }
    eprintln!(
        "{KILLS} kills, {mid_write} of them between a temporary file's creation and its rename; \
         {generations_seen} generations checked; the legacy file was migrated by child {migrated_at:?}"
    );
    assert!(migrated_at.is_some(), "no child ever rewrote the legacy file");
    assert!(generations_seen > 0, "the children never persisted anything");
    // Every child was reaped above, and its jobs start no process; none may be left.
    assert_no_process("persist_child");
}
