//! Helpers shared by the integration tests: an executor made of shell commands, and
//! the checks that nothing a test started is left behind.
#![allow(dead_code)]

#[path = "alone.rs"]
mod alone_impl;
pub mod nix;
pub mod nix_shim;
pub mod remote;
pub mod store;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use genbuild::{
    proto, Builder, BuilderConfig, EvalOutput, EvalRequest, Executor, JobContext, JobError, Store,
};
use parking_lot::{Mutex, MutexGuard};

#[allow(unused_imports)] // not every test binary runs a test alone
pub use alone_impl::alone;

/// Bound on any wait that only guards against hangs.
pub const HANG: Duration = Duration::from_secs(20);

/// A marker unique to one test, put in its commands' argument lists so that its
/// processes can be found in /proc.
pub fn nonce() -> String {
    format!("{}", uuid::Uuid::new_v4().as_u128() % 1_000_000_000)
}

/// A `sleep` of about 300 s whose command line carries `nonce`.
pub fn long_sleep(nonce: &str) -> String {
    format!("sleep 300.{nonce}")
}

/// A command that ignores SIGTERM and runs about 300 s unless SIGKILLed (after the
/// grace period), its command line carrying `nonce`.
pub fn dies_slowly(nonce: &str) -> String {
    format!("trap '' TERM; exec sleep 300.{nonce}")
}

/// Waits until `condition` holds (a state another thread changes), failing after
/// [`HANG`].
pub fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + HANG;
    while !condition() {
        assert!(Instant::now() < deadline, "{what} never happened within {HANG:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// An executor whose evaluation and build run `sh -c SCRIPT`; `None` succeeds at once.
pub struct ShellExecutor {
    pub eval_script: Mutex<Option<String>>,
    pub build_script: Mutex<Option<String>>,
    pub output: EvalOutput,
    pub valid: Mutex<HashSet<String>>,
    pub panic_in_eval: bool,
}

impl ShellExecutor {
    pub fn new() -> Self {
        ShellExecutor {
            eval_script: Mutex::new(None),
            build_script: Mutex::new(None),
            output: EvalOutput {
                drv_path: "/nix/store/aaaa-test.drv".into(),
                out_path: "/nix/store/aaaa-test".into(),
                machine_id: String::new(),
            },
            valid: Mutex::new(HashSet::new()),
            panic_in_eval: false,
        }
    }

    pub fn eval_runs(self, script: impl Into<String>) -> Self {
        *self.eval_script.lock() = Some(script.into());
        self
    }

    pub fn build_runs(self, script: impl Into<String>) -> Self {
        *self.build_script.lock() = Some(script.into());
        self
    }

    fn run(script: &Option<String>, ctx: &JobContext) -> Result<(), JobError> {
        match script {
            Some(script) => ctx.run(sh(script)).map(drop),
            None => Ok(()),
        }
    }
}

/// `sh -c script` as genbuild's own [`genbuild::Command`], which genbuild may start
/// itself (a clone born in the command's cgroup).
pub fn sh(script: &str) -> genbuild::Command {
    let mut cmd = genbuild::Command::new("sh");
    cmd.arg("-c").arg(script);
    cmd
}

impl Executor for ShellExecutor {
    fn eval(&self, _req: &EvalRequest, ctx: &JobContext) -> Result<EvalOutput, JobError> {
        if self.panic_in_eval {
            panic!("the executor exploded");
        }
        let script = self.eval_script.lock().clone();
        Self::run(&script, ctx).map(|()| self.output.clone())
    }

    fn build(&self, _drv_path: &str, ctx: &JobContext) -> Result<(), JobError> {
        let script = self.build_script.lock().clone();
        Self::run(&script, ctx)?;
        self.valid.lock().insert(self.output.out_path.clone());
        Ok(())
    }

    fn is_store_path_valid(&self, path: &str) -> bool {
        self.valid.lock().contains(path)
    }
}

pub fn config() -> BuilderConfig {
    let mut config = BuilderConfig::new("host1", "/nonexistent/repo");
    config.process.kill_grace = Duration::from_millis(500);
    config
}

pub fn builder(executor: ShellExecutor) -> (Builder, Arc<Store>, Arc<ShellExecutor>) {
    builder_with(config(), executor)
}

pub fn builder_with(
    config: BuilderConfig,
    executor: ShellExecutor,
) -> (Builder, Arc<Store>, Arc<ShellExecutor>) {
    let store = Arc::new(Store::new());
    let executor = Arc::new(executor);
    (Builder::new(config, store.clone(), executor.clone()), store, executor)
}

pub fn rs(commit: &str) -> proto::RepositoryStatus {
    proto::RepositoryStatus {
        selected_commit_id: commit.into(),
        selected_branch_name: "main".into(),
        ..Default::default()
    }
}

pub fn recv<T>(rx: &Receiver<T>, what: &str) -> T {
    rx.recv_timeout(HANG).unwrap_or_else(|_| panic!("no {what} within {HANG:?}"))
}

/// No `what` (a notification channel of `builder`) came, and none can come: no job of
/// the builder runs, which is what sends them.
pub fn assert_quiet<T: std::fmt::Debug>(builder: &Builder, rx: &Receiver<T>, what: &str) {
    assert!(
        !builder.is_evaluating() && !builder.is_building(),
        "a job still runs, which may yet send {what}: {builder:?}"
    );
    assert!(rx.is_empty(), "unexpected {what}: {:?}", rx.try_recv());
}

/// Pids of live (non-zombie) processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            !zombie && String::from_utf8_lossy(&cmdline).contains(marker)
        })
        .collect()
}

/// Waits until `count` processes carrying `marker` run (a job has really started).
pub fn wait_for_processes(marker: &str, count: usize) {
    let deadline = Instant::now() + HANG;
    while processes_with(marker).len() < count {
        assert!(Instant::now() < deadline, "fewer than {count} processes with {marker} ever ran");
        std::thread::yield_now();
    }
}

/// Fails if a process carrying `marker` is alive now: what genbuild promises once the
/// call that ended its job (`stop()`, a job's `wait()`, the drop of a builder) returned.
/// A process that was killed is gone by then, or past the point where it has a command
/// line (or a zombie, which is not alive).
///
/// Through a `nix-daemon` (`NIX_REMOTE` set, as in the matrix's daemon pass), builders
/// are the daemon's children, out of genbuild's reach: the daemon ends them once their
/// client is gone, a moment later, which is awaited (for at most [`HANG`]).
pub fn assert_no_process(marker: &str) {
    if std::env::var("NIX_REMOTE").is_ok_and(|r| !r.is_empty() && r != "local") {
        let deadline = Instant::now() + HANG;
        while !processes_with(marker).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let left = processes_with(marker);
    assert!(left.is_empty(), "processes left alive with {marker}: {left:?}");
}

/// The number of open file descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A seeded xorshift64* generator: the same numbers on every machine and every run
/// (the fuzzers' seed corpus is made of its bytes).
pub struct XorShift(pub u64);

impl XorShift {
    /// The generator [`seeded_bytes`] draws from for `seed`.
    pub fn seeded(seed: u64) -> XorShift {
        XorShift(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next(&mut self) -> u64 {
        // The state must never be zero.
        let mut x = if self.0 == 0 { 0x2545_F491_4F6C_DD1D } else { self.0 };
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `len` bytes of [`XorShift::seeded`]`(seed)`.
pub fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = XorShift::seeded(seed);
    let mut bytes: Vec<u8> =
        std::iter::repeat_with(|| rng.next().to_le_bytes()).take(len.div_ceil(8)).flatten().collect();
    bytes.truncate(len);
    bytes
}

/// The number of genbuild's threads in this process (named `genbuild-…`): the test
/// harness's own threads, which come and go as other tests start, are not counted.
pub fn genbuild_thread_count() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("genbuild"))
        .count()
}

/// Waits until `count` (genbuild's threads, this process's descriptors) is at most
/// `at_most`: threads that returned and descriptors they held leave on their own, a
/// moment later; more after [`HANG`] is a leak.
fn await_at_most(what: &str, count: fn() -> usize, at_most: usize) {
    let deadline = Instant::now() + HANG;
    while count() > at_most {
        assert!(Instant::now() < deadline, "{} {what}, expected at most {at_most}", count());
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// [`await_at_most`] of genbuild's threads.
pub fn assert_genbuild_threads_at_most(at_most: usize) {
    await_at_most("of genbuild's threads alive", genbuild_thread_count, at_most);
}

/// [`await_at_most`] of this process's open file descriptors.
pub fn assert_fds_at_most(at_most: usize) {
    await_at_most("file descriptors open", fd_count, at_most);
}

/// The generation `uuid` as the store has it.
pub fn generation(store: &Store, uuid: &str) -> proto::Generation {
    store.generation(uuid).unwrap_or_else(|| panic!("no generation {uuid} in the store"))
}

/// Where `Containment::Auto` puts the commands' cgroups on this machine, if anywhere:
/// this process's cgroup v2 directory (from /proc/self/mountinfo and /proc/self/cgroup),
/// when a child cgroup can be created in it.
pub fn writable_cgroup() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = own.lines().find_map(|l| l.strip_prefix("0::"))?.to_string();
    let dir = mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        (fs.split(' ').next()? == "cgroup2").then_some(())?;
        let fields: Vec<&str> = mount.split(' ').collect();
        let relative = own.strip_prefix(fields.get(3)?.trim_end_matches('/'))?;
        Some(PathBuf::from(fields.get(4)?).join(relative.trim_start_matches('/')))
    })?;
    let probe = dir.join(format!("genbuild-probe-{}", nonce()));
    std::fs::create_dir(&probe).ok()?;
    std::fs::remove_dir(&probe).ok()?;
    Some(dir)
}

/// [`writable_cgroup`], or `None` and the reason printed; under `CI=true` (whose
/// machines have a writable cgroup v2) a test that finds none fails and says why.
pub fn require_cgroup(test: &str) -> Option<PathBuf> {
    let dir = writable_cgroup();
    if dir.is_none() {
        let why = format!("{test}: no writable cgroup v2 here (root, or a delegated systemd unit, needed)");
        assert!(std::env::var_os("CI").is_none_or(|ci| ci != "true"), "CI=true, but {why}");
        eprintln!("skipped: {why}");
    }
    dir
}

/// What `Containment::Auto` means on this machine, for a test to print.
pub fn auto_containment() -> String {
    match writable_cgroup() {
        Some(dir) => format!("Auto: a cgroup v2 per command under {}", dir.display()),
        None => "Auto: the process tree (no writable cgroup v2)".to_string(),
    }
}

/// A daemon the classic way, as a shell fragment: fork, `setsid`, fork again, the middle
/// process exits; the daemon ignores SIGTERM and sleeps 300 s carrying `nonce`.
/// `keep_pipes` decides whether it keeps the command's stdout and stderr.
pub fn daemon(nonce: &str, keep_pipes: bool) -> String {
    let redirect = if keep_pipes { "" } else { " </dev/null >/dev/null 2>&1" };
    format!(
        "setsid sh -c 'trap \"\" TERM; sh -c \"trap \\\"\\\" TERM; exec sleep 300.{nonce}\"{redirect} & exit 0'{redirect}; "
    )
}

/// Minutes of Nix evaluation on the CPU: nested `foldl'` over `genList`, 10^11 additions
/// without deep recursion (Nix 2.20 and later stop a 10,000-deep one at once:
/// `max-call-depth`).
pub const ENDLESS_EVAL: &str = "(let inner = builtins.genList (x: x) 100000; in toString (builtins.foldl' \
    (a: i: a + builtins.foldl' (b: j: b + j) 0 inner) 0 (builtins.genList (x: x) 1000000)))";

/// User + system CPU time of `pid`, in clock ticks (10 ms).
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)
}

/// Waits until a `program` carrying `marker` has burnt a quarter second of CPU (it is
/// deep in its work); returns its pid.
pub fn busy_process(marker: &str, program: &str) -> i32 {
    let deadline = Instant::now() + HANG * 3;
    loop {
        assert!(Instant::now() < deadline, "no {program} with {marker} ever got busy");
        let busy = processes_with(marker).into_iter().find(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default().to_vec();
            std::path::Path::new(&*String::from_utf8_lossy(&argv0)).file_name().is_some_and(|n| n == program)
                && cpu_ticks(pid) >= 25
        });
        if let Some(pid) = busy {
            return pid;
        }
        std::thread::yield_now();
    }
}

/// Waits (at most `bound`) until a log line containing `text` arrives on `events`.
pub fn wait_for_log(events: &Receiver<proto::Event>, text: &str, bound: Duration) {
    let deadline = Instant::now() + bound;
    loop {
        let event = events.recv_deadline(deadline).unwrap_or_else(|_| panic!("no log line with {text:?}"));
        if let Some(proto::event::Kind::LogLine(line)) = &event.kind {
            if line.line.contains(text) {
                return;
            }
        }
    }
}

/// The library's warnings logged in this test binary so far. The first call installs
/// the logger that captures them, the binary's only one.
pub fn warnings() -> MutexGuard<'static, Vec<String>> {
    static WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());
    struct Capture;
    impl log::Log for Capture {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            metadata.level() <= log::Level::Warn
        }
        fn log(&self, record: &log::Record<'_>) {
            if self.enabled(record.metadata()) {
                WARNINGS.lock().push(record.args().to_string());
            }
        }
        fn flush(&self) {}
    }
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&Capture).expect("the only logger of this binary");
        log::set_max_level(log::LevelFilter::Warn);
    });
    WARNINGS.lock()
}
