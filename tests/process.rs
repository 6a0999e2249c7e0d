//! The subprocess protocol against processes that try to escape it: a double-forked
//! `setsid` daemon that ignores SIGTERM, a grandchild that keeps the pipes after its
//! parent exited, a command that closes its stdout early or floods its pipe, graces and
//! timeouts of `Duration::MAX`, cgroups that cannot be created, two jobs at once.
//!
//! Every test prints the containment it ran under (`containment: …`): a cgroup v2 of
//! each command's own where the hierarchy is writable (root here), the process tree
//! otherwise; tests that need the cgroup say so and are skipped, with the reason,
//! where there is none. Every test checks that no process carrying its nonce is left.

mod common;

use genbuild::Command;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use genbuild::{CancelReason, Containment, Job, JobContext, JobError, ProcessOptions, Stream, WaitStrategy};

/// The containments to try here, each printed as the test runs it.
/// The process tree, and a cgroup v2 (whose absence fails the test under `CI=true`).
fn containments(test: &str) -> Vec<Containment> {
    let mut all = vec![Containment::ProcessTree];
    all.extend(require_cgroup(test).map(Containment::Cgroup));
    all
}

fn describe(containment: &Containment) -> String {
    match containment {
        Containment::Cgroup(dir) => format!("cgroup v2 under {}", dir.display()),
        other => format!("{other:?}"),
    }
}

fn options(containment: &Containment, wait: WaitStrategy) -> ProcessOptions {
    let mut options = ProcessOptions::default();
    options.containment = containment.clone();
    options.wait = wait;
    options.kill_grace = Duration::from_millis(200);
    options
}

/// A job running `sh -c script` whose lines go to the returned channel.
fn shell_job(
    script: String,
    timeout: Duration,
    options: ProcessOptions,
) -> (Job, crossbeam_channel::Receiver<String>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let job = Job::new(
        move |ctx: &JobContext| {
            let tx = tx.clone();
            ctx.run_with(sh(&script), &mut |_, line| {
                let _ = tx.send(line.to_string());
            })
            .map(drop)
        },
        timeout,
    )
    .with_options(options);
    (job, rx)
}

fn wait_line(lines: &crossbeam_channel::Receiver<String>, prefix: &str) -> String {
    let deadline = Instant::now() + HANG;
    loop {
        let line =
            lines.recv_deadline(deadline).unwrap_or_else(|_| panic!("no line starting with {prefix:?}"));
        if line.starts_with(prefix) {
            return line;
        }
    }
}

/// Kills whatever carries `marker` (so that a failing test does not leak into others)
/// and fails if there was any.
/// None of the processes carrying `marker` is alive now (the job that ran them
/// ended); those that are get killed before the test fails.
fn assert_none_left(marker: &str, what: &str) {
    let left = processes_with(marker);
    for &pid in &left {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    assert!(left.is_empty(), "{what}: processes left alive: {left:?}");
}

#[test]
fn a_double_forked_setsid_daemon_that_ignores_sigterm_is_gone_after_stop() {
    for containment in containments("setsid daemon") {
        for keep_pipes in [false, true] {
            // The process tree cannot reach a daemon whose parent died and that let go of
            // the pipes: that is what the cgroup is for (Containment's docs say so).
            if containment == Containment::ProcessTree && !keep_pipes {
                continue;
            }
            let n = nonce();
            eprintln!("containment: {} (daemon keeps the pipes: {keep_pipes})", describe(&containment));
            let script = format!("{}echo started; exec sleep 300.{n}", daemon(&n, keep_pipes));
            let (mut job, lines) = shell_job(script, HANG, options(&containment, WaitStrategy::Pidfd));
            job.start();
            wait_line(&lines, "started");
            wait_for_processes(&format!("300.{n}"), 2);
            let started = Instant::now();
            job.stop();
            let took = started.elapsed();
            assert_eq!(job.error(), Some(&JobError::Cancelled(Some(CancelReason::Stopped))));
            assert_none_left(&n, &describe(&containment));
            assert!(took < Duration::from_secs(5), "stop() took {took:?}");
        }
    }
}

/// The thread and fd counts of this are checked in `tests/leaks.rs`, a binary where
/// nothing else runs beside.
#[test]
fn a_command_that_exits_while_a_setsid_grandchild_holds_its_pipes_ends_at_once() {
    for containment in containments("grandchild holding the pipes") {
        for wait in [WaitStrategy::Pidfd, WaitStrategy::Portable] {
            let n = nonce();
            eprintln!("containment: {} ({wait:?})", describe(&containment));
            let script = format!("{}echo exiting; exit 0", daemon(&n, true));
            let (mut job, lines) = shell_job(script, HANG, options(&containment, wait));
            let started = Instant::now();
            job.start();
            wait_line(&lines, "exiting");
            job.wait();
            let took = started.elapsed();
            assert_eq!(job.error(), None, "{containment:?}");
            // The command exits a few ms after it starts; its daemon would hold the pipes
            // for 300 s: this bound only catches waiting for it.
            assert!(took < HANG, "{containment:?} {wait:?}: the job took {took:?}");
            assert_none_left(&n, &describe(&containment));
        }
    }
}

/// The command exits normally, leaving a member of its process group alive, whose child
/// called `setsid` and let go of the pipes: "whatever it left running is killed", by the
/// process tree too (the child is below a living member of the group).
#[test]
fn a_setsid_child_of_a_group_member_left_running_is_killed_when_the_command_exits() {
    for containment in containments("setsid child of a group member") {
        let n = nonce();
        eprintln!("containment: {}", describe(&containment));
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("daemon-started");
        let script = format!(
            "( setsid sh -c 'echo $$ > \"$0\"; exec sleep 300.{n}' '{ready}' </dev/null >/dev/null 2>&1 & \
             exec sleep 301.{n} </dev/null >/dev/null 2>&1 ) & \
             until [ -s '{ready}' ]; do :; done; echo exiting; exit 0",
            ready = ready.display()
        );
        let (mut job, lines) = shell_job(script, HANG, options(&containment, WaitStrategy::Pidfd));
        job.start();
        wait_line(&lines, "exiting");
        job.wait();
        assert_eq!(job.error(), None);
        assert_none_left(&n, &describe(&containment));
    }
}

/// Where `Containment::Auto` puts cgroups here, printed; `None`, and why, where no
/// cgroup v2 is writable (a failure under `CI=true`).
fn auto_cgroup_parent() -> Option<PathBuf> {
    let dir = require_cgroup("a test of cgroups")?;
    eprintln!("containment: cgroup v2 under {} (Auto)", dir.display());
    Some(dir)
}

/// The cgroups the commands of one job ran in, each command running `script`; the job
/// is handed back, not dropped.
fn cgroups_of_commands(scripts: &[&str]) -> (Job, Vec<String>) {
    let scripts: Vec<String> = scripts.iter().map(|s| format!("{s}; cat /proc/self/cgroup")).collect();
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut job = Job::new(
        move |ctx: &JobContext| {
            for script in &scripts {
                let out = ctx.run(sh(script))?;
                let line = out.stdout.lines().find(|l| l.starts_with("0::")).unwrap_or_default().to_string();
                let _ = tx.send(line.rsplit('/').next().unwrap_or_default().to_string());
            }
            Ok(())
        },
        HANG,
    );
    job.start();
    job.wait();
    assert_eq!(job.error(), None);
    (job, rx.try_iter().collect())
}

/// Each command runs in a cgroup of its own, never shared with a running command; once
/// a command's processes are gone its empty cgroup is kept for the job's next command,
/// and removed with the job.
#[test]
fn commands_run_in_a_cgroup_kept_between_them_and_removed_with_the_job() {
    let Some(dir) = auto_cgroup_parent() else { return };
    let (job, names) = cgroups_of_commands(&["true", "true"]);
    assert!(names[0].starts_with(&format!("genbuild-{}-", std::process::id())), "{names:?}");
    assert_eq!(names[0], names[1], "the second command did not reuse the first one's cgroup");
    assert!(dir.join(&names[0]).exists(), "{} was not kept", names[0]);
    drop(job);
    assert!(!dir.join(&names[0]).exists(), "{} was not removed with the job", names[0]);
}

/// A command that left something in its cgroup (here a cgroup below it, which root may
/// create) does not pass it on: the cgroup is removed, with what is below it, and the
/// next command gets a fresh one.
#[test]
fn a_cgroup_left_with_a_cgroup_below_it_is_removed_not_kept() {
    let Some(dir) = auto_cgroup_parent() else { return };
    let own = "$(basename \"$(grep ^0:: /proc/self/cgroup | cut -d: -f3)\")";
    let below = format!("mkdir \"{}/{own}/below\"", dir.display());
    let (job, names) = cgroups_of_commands(&[&below, "true"]);
    assert_ne!(names[0], names[1]);
    assert!(!dir.join(&names[0]).exists(), "{} was kept or left", names[0]);
    drop(job);
    assert!(!dir.join(&names[1]).exists());
}

/// A command that left a `setsid` process behind (out of its group's reach) has its
/// whole cgroup killed, and a cgroup that got `cgroup.kill` is not kept: the next
/// command gets a fresh one.
#[test]
fn a_cgroup_killed_whole_for_an_escaped_process_is_not_kept() {
    let Some(dir) = auto_cgroup_parent() else { return };
    let n = nonce();
    let tmp = tempfile::tempdir().unwrap();
    let ready = tmp.path().join("escaped");
    // Once `ready` is written the sleeper has left the group (setsid runs before sh).
    let escape = format!(
        "( setsid sh -c 'echo $$ > \"$0\"; exec sleep 300.{n}' '{ready}' </dev/null >/dev/null 2>&1 & ); \
         until [ -s '{ready}' ]; do :; done",
        ready = ready.display()
    );
    let (job, names) = cgroups_of_commands(&[&escape, "true"]);
    assert_ne!(names[0], names[1]);
    assert!(!dir.join(&names[0]).exists(), "{} was kept or left", names[0]);
    assert_none_left(&n, "cgroup v2 (Auto)");
    drop(job);
}

/// Eight jobs starting commands at once, each in cgroups of its own: every command
/// gets its own arguments and output (the children's stacks and the job threads are
/// shared between jobs one after the other, never at once), and nothing is left.
#[test]
fn eight_jobs_starting_commands_at_once_each_get_their_own() {
    let Some(dir) = auto_cgroup_parent() else { return };
    let n = nonce();
    // (job, command, its stdout)
    type Outputs = crossbeam_channel::Receiver<(usize, usize, String)>;
    let jobs: Vec<(Job, Outputs)> = (0..8)
        .map(|j| {
            let (tx, rx) = crossbeam_channel::unbounded();
            let n = n.clone();
            let mut job = Job::new(
                move |ctx: &JobContext| {
                    for c in 0..30 {
                        let mut cmd = sh(&format!("echo \"$0 $1\"; sleep 0.001{n}"));
                        cmd.args([j.to_string(), c.to_string()]);
                        let _ = tx.send((j, c, ctx.run(cmd)?.stdout));
                    }
                    Ok(())
                },
                HANG,
            );
            job.start();
            (job, rx)
        })
        .collect();
    for (mut job, outputs) in jobs {
        job.wait();
        assert_eq!(job.error(), None);
        let outputs: Vec<_> = outputs.try_iter().collect();
        assert_eq!(outputs.len(), 30);
        for (j, c, out) in outputs {
            assert_eq!(out, format!("{j} {c}\n"));
        }
    }
    assert_none_left(&n, "cgroup v2 (Auto)");
    let prefix = format!("genbuild-{}-", std::process::id());
    let deadline = Instant::now() + HANG;
    // Cgroups of other tests running meanwhile come and go; none may stay.
    while std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
    {
        assert!(Instant::now() < deadline, "cgroups of this process left in {}", dir.display());
        std::thread::yield_now();
    }
}

/// The `sleep` processes carrying `marker`.
fn sleepers(marker: &str) -> Vec<i32> {
    processes_with(marker)
        .into_iter()
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"sleep\0")))
        .collect()
}

#[test]
fn two_jobs_at_once_each_keep_and_kill_their_own() {
    for containment in containments("two jobs") {
        eprintln!("containment: {}", describe(&containment));
        let (a, b) = (nonce(), nonce());
        let (mut first, first_lines) = shell_job(
            format!("{}echo started; sleep 300.{a}", daemon(&a, true)),
            HANG,
            options(&containment, WaitStrategy::Pidfd),
        );
        let (mut second, second_lines) = shell_job(
            format!("{}echo started; exit 0", daemon(&b, true)),
            HANG,
            options(&containment, WaitStrategy::Pidfd),
        );
        first.start();
        second.start();
        wait_line(&first_lines, "started");
        // The command's own `sleep` and the daemon, once it exec'd.
        let deadline = Instant::now() + HANG;
        while sleepers(&a).len() < 2 {
            assert!(Instant::now() < deadline, "the first job's sleepers never ran: {:?}", sleepers(&a));
            std::thread::yield_now();
        }
        let first_sleepers = sleepers(&a);
        wait_line(&second_lines, "started");
        second.wait();
        assert_eq!(second.error(), None);
        assert_none_left(&b, "the second job's daemon");
        assert_eq!(sleepers(&a), first_sleepers, "the first job's processes must be untouched");
        first.stop();
        assert_none_left(&a, "the first job's daemon");
    }
}

#[test]
fn a_command_that_closes_its_stdout_early_still_ends_with_its_exit() {
    for containment in containments("stdout closed early") {
        eprintln!("containment: {}", describe(&containment));
        let n = nonce();
        let script = format!("echo out; exec >&-; sleep 0.3; echo err-{n} >&2; exit 3");
        let (mut job, lines) = shell_job(script, HANG, options(&containment, WaitStrategy::Pidfd));
        job.start();
        job.wait();
        let Some(JobError::Command(failure)) = job.error() else { panic!("{:?}", job.error()) };
        assert_eq!(failure.exit, genbuild::Exit::Code(3));
        assert_eq!(failure.stderr_tail, format!("err-{n}"));
        assert_eq!(lines.try_iter().collect::<Vec<_>>(), ["out".to_string(), format!("err-{n}")]);
    }
}

#[test]
fn a_command_that_floods_its_pipe_and_never_exits_times_out() {
    for containment in containments("flood") {
        for wait in [WaitStrategy::Pidfd, WaitStrategy::Portable] {
            eprintln!("containment: {} ({wait:?})", describe(&containment));
            let n = nonce();
            let timeout = Duration::from_millis(500);
            let mut job = Job::new(
                move |ctx: &JobContext| {
                    let mut count = 0u64;
                    let result = ctx.run_with(sh(&format!("yes flood-{n}")), &mut |_, _| count += 1);
                    assert!(count > 1000, "only {count} lines were read");
                    result.map(drop)
                },
                timeout,
            )
            .with_options(options(&containment, wait));
            job.start();
            job.wait();
            assert_eq!(job.error(), Some(&JobError::TimedOut(timeout)));
        }
    }
}

/// A grace too large for an `Instant` means "never force": SIGTERM only. A command
/// that exits on SIGTERM is stopped as usual; one that ignores it keeps `stop()`
/// waiting until it ends some other way. Nothing panics on the overflow.
#[test]
fn a_grace_and_timeout_of_duration_max_never_force_and_never_panic() {
    for containment in containments("Duration::MAX") {
        eprintln!("containment: {}", describe(&containment));
        let mut options = options(&containment, WaitStrategy::Pidfd);
        options.kill_grace = Duration::MAX;

        let n = nonce();
        let (mut job, lines) = shell_job(
            format!("trap 'exit 7' TERM; echo started; sleep 300.{n} & wait"),
            Duration::MAX,
            options.clone(),
        );
        job.start();
        wait_line(&lines, "started");
        job.stop();
        assert_eq!(job.error(), Some(&JobError::Cancelled(Some(CancelReason::Stopped))));
        assert_none_left(&n, "a command that exits on SIGTERM");

        let n = nonce();
        let (mut job, lines) =
            shell_job(format!("trap '' TERM; echo started; exec sleep 300.{n}"), Duration::MAX, options);
        job.start();
        wait_line(&lines, "started");
        let (stopped_tx, stopped) = crossbeam_channel::bounded(1);
        let stopper = std::thread::spawn(move || {
            job.stop();
            let _ = stopped_tx.send(());
            job
        });
        assert!(
            stopped.recv_timeout(Duration::from_millis(700)).is_err(),
            "stop() forced a command with a grace of Duration::MAX"
        );
        assert_eq!(processes_with(&n).len(), 1, "the command must still run");
        let pid = processes_with(&n)[0];
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        stopped.recv_timeout(HANG).expect("stop() returns once the command ended");
        let job = stopper.join().unwrap();
        assert_eq!(job.error(), Some(&JobError::Cancelled(Some(CancelReason::Stopped))));
        assert_none_left(&n, "a command that ignores SIGTERM");
    }
}

/// Through the builder: `Duration::MAX` timeouts and build grace, a CPU-light
/// evaluation stopped with the (short) evaluation grace. No panic, nothing left.
#[test]
fn a_builder_with_duration_max_timeouts_and_grace_stops_its_evaluation() {
    let n = nonce();
    let mut config = config();
    config.eval_timeout = Duration::MAX;
    config.build_timeout = Duration::MAX;
    config.process.kill_grace = Duration::MAX;
    let (builder, store, _) =
        builder_with(config, ShellExecutor::new().eval_runs(format!("trap '' TERM; exec sleep 300.{n}")));
    let uuid = builder.eval(&rs("c1")).unwrap();
    wait_for_processes(&n, 1);
    let started = Instant::now();
    builder.stop();
    assert!(started.elapsed() < Duration::from_secs(5), "stop() took {:?}", started.elapsed());
    assert_eq!(generation(&store, &uuid).eval_err, "cancelled: stopped");
    assert_none_left(&n, "the evaluation");
}

/// 4,000 four-byte characters on one stderr line: the error keeps at most 4096 bytes
/// of it, cut on a character boundary.
#[test]
fn the_stderr_tail_of_an_error_is_bounded_in_bytes() {
    let (builder, store, _) =
        builder(ShellExecutor::new().eval_runs("printf '𝄞%.0s' $(seq 4000) >&2; exit 1"));
    let uuid = builder.eval(&rs("c1")).unwrap();
    assert_eq!(recv(&builder.evaluation_done(), "evaluation_done"), uuid);
    let err = generation(&store, &uuid).eval_err;
    let (head, tail) = err.split_once(":\n").unwrap_or_else(|| panic!("{err}"));
    assert!(head.ends_with("exited with status 1"), "{head}");
    assert!(tail.len() <= 4096 && tail.len() > 4096 - 4, "{} bytes", tail.len());
    assert!(tail.chars().all(|c| c == '𝄞'));
}

#[test]
fn a_cgroup_that_cannot_be_created_fails_the_command_and_leaves_nothing() {
    let n = nonce();
    // Not a cgroup directory: the child directory is created, its cgroup.procs is
    // missing, and the directory is removed again.
    let plain = tempfile::tempdir().unwrap();
    for parent in [PathBuf::from("/nonexistent/cgroup"), plain.path().to_path_buf()] {
        let mut options = ProcessOptions::default();
        options.containment = Containment::Cgroup(parent.clone());
        let (mut job, _) = shell_job(format!("sleep 300.{n}"), HANG, options);
        job.start();
        job.wait();
        let Some(JobError::Failed(message)) = job.error() else { panic!("{:?}", job.error()) };
        assert!(message.contains(&parent.display().to_string()), "{message}");
        assert!(message.contains("cgroup"), "{message}");
    }
    assert_eq!(std::fs::read_dir(plain.path()).unwrap().count(), 0, "a half-made cgroup was left");
    assert_none_left(&n, "a command that should not have started");
}

#[test]
fn a_command_that_cannot_start_leaves_no_cgroup_behind() {
    let Some(dir) = auto_cgroup_parent() else { return };
    let mine = |dir: &PathBuf| {
        let prefix = format!("genbuild-{}-", std::process::id());
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .count()
    };
    let mut job = Job::new(|ctx: &JobContext| ctx.run(Command::new("/nonexistent/program")).map(drop), HANG);
    job.start();
    job.wait();
    let Some(JobError::Failed(message)) = job.error() else { panic!("{:?}", job.error()) };
    assert!(message.contains("cannot start"), "{message}");
    // Other tests of this binary run beside: wait until none of ours is in flight.
    let deadline = Instant::now() + HANG;
    while mine(&dir) > 0 {
        assert!(Instant::now() < deadline, "cgroups of this process left in {}", dir.display());
        std::thread::yield_now();
    }
}

/// Tells this test binary, started again by the SIGCHLD test, that it is the child
/// whose kernel reaps its children: `ignored:DIR` or `nocldwait:DIR`, where DIR is
/// where its command would leave a trace.
const SIGCHLD_CHILD: &str = "GENBUILD_TEST_SIGCHLD";

extern "C" fn on_sigchld(_: libc::c_int) {}

/// An embedding program whose kernel reaps its children (SIGCHLD set to `SIG_IGN`, as
/// C daemons often do, or a handler with `SA_NOCLDWAIT`) would lose exit statuses:
/// `run` refuses with the reason and what to do instead, and starts nothing. Each
/// check runs in a child process of the test (this binary again): bash starts it with
/// SIGCHLD ignored, which `exec` keeps, or it installs the handler itself.
#[test]
fn a_program_whose_kernel_reaps_its_children_gets_a_clear_error_and_no_command_runs() {
    const TEST: &str = "a_program_whose_kernel_reaps_its_children_gets_a_clear_error_and_no_command_runs";
    if let Ok(how) = std::env::var(SIGCHLD_CHILD) {
        let (how, dir) = how.split_once(':').unwrap();
        let expected = match how {
            "ignored" => {
                let status = std::fs::read_to_string("/proc/self/status").unwrap();
                let ignored = status.lines().find_map(|l| l.strip_prefix("SigIgn:")).unwrap();
                let bit = 1u64 << (rustix::process::Signal::CHILD.as_raw() - 1);
                assert!(u64::from_str_radix(ignored.trim(), 16).unwrap() & bit != 0, "SigIgn: {ignored}");
                ["ignores SIGCHLD", "SIG_DFL"]
            }
            _ => {
                // SAFETY: a handler that does nothing, installed before any thread starts.
                unsafe {
                    let mut action: libc::sigaction = std::mem::zeroed();
                    action.sa_sigaction = on_sigchld as extern "C" fn(libc::c_int) as libc::sighandler_t;
                    action.sa_flags = libc::SA_NOCLDWAIT;
                    assert_eq!(libc::sigaction(libc::SIGCHLD, &action, std::ptr::null_mut()), 0);
                }
                ["SA_NOCLDWAIT", "without SA_NOCLDWAIT"]
            }
        };
        let trace = PathBuf::from(dir).join("ran");
        let script = format!("touch '{}'; exit 3", trace.display());
        let mut job = Job::new(move |ctx: &JobContext| ctx.run(sh(&script)).map(drop), HANG);
        job.start();
        job.wait();
        let Some(JobError::Failed(message)) = job.error() else { panic!("{:?}", job.error()) };
        assert!(expected.iter().all(|e| message.contains(e)), "{message}");
        assert!(!trace.exists(), "the command ran");
        println!("refused: {message}");
        return;
    }
    for (how, shell) in [("ignored", "trap '' CHLD; exec \"$0\" \"$@\""), ("nocldwait", "exec \"$0\" \"$@\"")]
    {
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let child = std::process::Command::new("bash")
            .args(["-c", shell])
            .arg(&exe)
            .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
            .env(SIGCHLD_CHILD, format!("{how}:{}", dir.path().display()))
            .output();
        let out = match child {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("skipped: no bash here to start a child with SIGCHLD ignored");
                return;
            }
            other => other.unwrap(),
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("refused: "),
            "{how}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!dir.path().join("ran").exists(), "{how}");
    }
}

/// Lines are handed to `on_line` on the job's own thread, in order, with `\r` ending
/// one.
#[test]
fn lines_reach_on_line_on_the_jobs_thread_in_order() {
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut job = Job::new(
        move |ctx: &JobContext| {
            let me = std::thread::current().id();
            let out =
                ctx.run_with(sh("printf 'a\\rb\\r\\nc\\n'; echo d >&2; echo e"), &mut |stream, line| {
                    assert_eq!(std::thread::current().id(), me);
                    let _ = tx.send((stream, line.to_string()));
                })?;
            assert_eq!(out.stdout, "a\rb\r\nc\ne\n");
            Ok(())
        },
        HANG,
    );
    job.start();
    job.wait();
    assert_eq!(job.error(), None);
    let lines: Vec<(Stream, String)> = rx.try_iter().collect();
    let stdout: Vec<&str> =
        lines.iter().filter(|(s, _)| *s == Stream::Stdout).map(|(_, l)| l.as_str()).collect();
    assert_eq!(stdout, ["a", "b", "c", "e"]);
    assert!(lines.contains(&(Stream::Stderr, "d".to_string())));
}

/// A job whose command left a grandchild holding its pipes: once the last `Builder`
/// handle is dropped, a subscriber's receiver disconnects (nothing of the builder
/// lingers with the grandchild), and the grandchild is gone.
#[test]
fn a_subscriber_disconnects_after_the_last_handle_drops() {
    for containment in containments("subscriber disconnect") {
        eprintln!("containment: {}", describe(&containment));
        let n = nonce();
        let mut config = config();
        config.process.containment = containment.clone();
        let script = format!("{}echo evaluated", daemon(&n, true));
        let (builder, _, _) = builder_with(config, ShellExecutor::new().eval_runs(script));
        let events = builder.subscribe();
        let uuid = builder.eval(&rs("c1")).unwrap();
        assert_eq!(recv(&builder.evaluation_done(), "evaluation_done"), uuid);
        drop(builder);
        let deadline = Instant::now() + HANG;
        loop {
            match events.recv_deadline(deadline) {
                Ok(_) => continue,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("{containment:?}: the subscriber never disconnected: {e}"),
            }
        }
        assert_none_left(&n, &describe(&containment));
    }
}

/// Runs `cmd` (genbuild's or std's) in a job under `options`; its stdout, or the job's
/// error.
fn output_of(cmd: impl Into<genbuild::AnyCommand>, options: ProcessOptions) -> Result<String, JobError> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let mut cmd = Some(cmd.into());
    let mut job = Job::new(
        move |ctx: &JobContext| {
            let _ = tx.send(ctx.run(cmd.take().expect("run once")).map(|out| out.stdout));
            Ok(())
        },
        HANG,
    )
    .with_options(options);
    job.start();
    job.wait();
    rx.recv_timeout(HANG).expect("the job sent nothing")
}

extern "C" fn on_sigusr2(_: libc::c_int) {}

/// In a cgroup, a command is started by genbuild itself (a `vfork`-style clone that
/// enters the cgroup before `exec`), elsewhere by std: both give it the same arguments,
/// environment changes (also after `env_clear`), working directory (with a space in
/// it), `PATH` lookup (the command's own `PATH`, past a file that is not executable),
/// stdin from `/dev/null`, the signal mask of the job's thread (which std keeps) and
/// SIGPIPE back to default, whatever the program handles or ignores.
#[test]
fn a_command_gets_the_same_start_under_every_containment() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("a dir");
    let tools = dir.path().join("tools");
    let hidden = dir.path().join("not executable");
    for d in [&cwd, &tools, &hidden] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(tools.join("gb-tool"), "#!/bin/sh\necho \"tool ran with $1\"\n").unwrap();
    std::fs::write(hidden.join("gb-tool"), "#!/bin/sh\necho wrong tool\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tools.join("gb-tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    // SAFETY: a handler that does nothing; a mask change on this thread only.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigusr2 as extern "C" fn(libc::c_int) as libc::sighandler_t;
        assert_eq!(libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut()), 0);
        let mut blocked: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut blocked);
        libc::sigaddset(&mut blocked, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &blocked, std::ptr::null_mut());
    }
    type MakeCommand<'a> = Box<dyn Fn() -> Command + 'a>;
    let commands: Vec<(&str, MakeCommand)> = vec![
        (
            "arguments, environment, directory, stdin, signals",
            Box::new(|| {
                let mut cmd = Command::new("sh");
                cmd.args([
                    "-c",
                    r#"printf '%s|%s|%s|%s|' "$0" "$1" "${GB_SET-unset}" "${HOME-unset}"; pwd
                       read line; echo "read: $?"; exec grep -E '^Sig(Blk|Ign)' /proc/self/status"#,
                    "zero",
                    "one two",
                ])
                .env("GB_SET", "set")
                .env_remove("HOME")
                .current_dir(&cwd);
                cmd
            }),
        ),
        (
            "env_clear",
            Box::new(|| {
                let mut cmd = Command::new("/usr/bin/env");
                cmd.env_clear().env("ONLY", "this");
                cmd
            }),
        ),
        (
            "PATH lookup",
            Box::new(|| {
                let mut cmd = Command::new("gb-tool");
                let path = format!("/nonexistent:{}:{}", hidden.display(), tools.display());
                cmd.arg("x y").env("PATH", path);
                cmd
            }),
        ),
    ];
    let cgroup = containments("a_command_gets_the_same_start_under_every_containment");
    for (what, command) in &commands {
        let outputs: Vec<String> = cgroup
            .iter()
            .map(|containment| {
                eprintln!("containment: {}", describe(containment));
                let out = output_of(command(), options(containment, WaitStrategy::Pidfd)).unwrap();
                standard_signals_only(&out)
            })
            .collect();
        println!("{what}: {:?}", outputs[0]);
        assert!(outputs.iter().all(|o| *o == outputs[0]), "{what}: {outputs:#?}");
    }
    let out = standard_signals_only(&output_of(commands[0].1(), ProcessOptions::default()).unwrap());
    assert!(out.starts_with(&format!("zero|one two|set|unset|{}\nread: 1\n", cwd.display())), "{out}");
    let usr1_blocked = format!("SigBlk:\t{:016x}\n", 1u64 << (libc::SIGUSR1 - 1));
    assert!(out.contains(&usr1_blocked) && out.contains("SigIgn:\t0000000000000000"), "{out}");
    let tool = output_of(commands[2].1(), ProcessOptions::default()).unwrap();
    assert_eq!(tool, "tool ran with x y\n");
}

/// `SigIgn` lines cut to signals 1–31: glibc's `posix_spawn` (std's way) leaves its
/// own internal signals 32 and 33 ignored in the child, a quirk not worth copying.
fn standard_signals_only(out: &str) -> String {
    let line = |l: &str| match l.strip_prefix("SigIgn:\t") {
        Some(mask) => format!("SigIgn:\t{:016x}", u64::from_str_radix(mask, 16).unwrap() & 0x7fff_ffff),
        None => l.to_string(),
    };
    out.lines().map(|l| line(l) + "\n").collect()
}

/// A program that cannot start gives the same error under every containment: one not
/// found, a nul byte in an argument (which std keeps as a placeholder); so does a
/// working directory that does not exist, as far as the reason goes.
#[test]
fn a_command_that_cannot_start_fails_alike_under_every_containment() {
    for containment in containments("a_command_that_cannot_start_fails_alike_under_every_containment") {
        eprintln!("containment: {}", describe(&containment));
        let options = || options(&containment, WaitStrategy::Pidfd);
        let missing = output_of(Command::new("gb-no-such-program"), options()).unwrap_err().to_string();
        assert_eq!(missing, "cannot start `gb-no-such-program`: No such file or directory (os error 2)");
        let mut cmd = Command::new("/bin/true");
        cmd.current_dir("/nonexistent/dir");
        let message = output_of(cmd, options()).unwrap_err().to_string();
        assert!(
            message.starts_with("cannot start `/bin/true`: ") && message.contains("No such file"),
            "{message}"
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo ran"]).arg("a\0b");
        let message = output_of(cmd, options()).unwrap_err().to_string();
        assert!(message.ends_with("nul byte found in provided data"), "{message}");
    }
}

/// What a command did, as far as std and a job can both tell: its status and stdout,
/// or the error that kept it from starting.
#[derive(Debug, PartialEq, Eq)]
enum Ran {
    Exited(i32, String),
    NotStarted(String),
}

/// Issue 21, item 5: genbuild starts a command as std does, on every way it starts
/// one: odd commands run by std's `Command::output` and through a job, under each
/// containment (the cgroup one is genbuild's own clone), give the same result.
#[test]
fn odd_commands_run_as_std_runs_them() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let [scripts, denied, plain_file] = ["scripts", "denied", "a file"].map(|d| root.join(d));
    std::fs::create_dir(&scripts).unwrap();
    std::fs::create_dir(&denied).unwrap();
    std::fs::write(&plain_file, "not a directory").unwrap();
    let write = |path: &std::path::Path, text: &str, mode: u32| {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    write(&scripts.join("gb-noshebang"), "echo \"no shebang: $0 $1\"\n", 0o755);
    write(&scripts.join("gb-shebang"), "#!/bin/sh\necho \"shebang: $1\"\n", 0o755);
    write(&denied.join("gb-shebang"), "#!/bin/sh\necho denied\n", 0o644);
    let path = |dirs: &[&std::path::Path]| {
        dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":")
    };
    let cmd = |program: &str, args: &[&str]| {
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd
    };
    let mut table: Vec<(&str, Command)> = vec![
        ("an empty name", cmd("", &[])),
        ("a name with a slash", cmd("/bin/echo", &["slash"])),
        ("a relative name with a slash", {
            let mut c = cmd("./scripts/gb-shebang", &["relative"]);
            c.current_dir(root);
            c
        }),
        ("an empty PATH", {
            let mut c = cmd("sh", &["-c", "echo found"]);
            c.env("PATH", "");
            c
        }),
        ("a PATH entry that is a file", {
            let mut c = cmd("gb-shebang", &["past a file"]);
            c.env("PATH", path(&[&plain_file, &scripts]));
            c
        }),
        ("a script without #! along its own PATH", {
            let mut c = cmd("gb-noshebang", &["arg"]);
            c.env("PATH", path(&[&scripts]));
            c
        }),
        (
            "a script without #! by its path",
            cmd(&scripts.join("gb-noshebang").display().to_string(), &["arg"]),
        ),
        ("EACCES before ENOENT", {
            let mut c = cmd("gb-shebang", &[]);
            c.env("PATH", path(&[&denied, std::path::Path::new("/nonexistent")]));
            c
        }),
        ("not executable, then found", {
            let mut c = cmd("gb-shebang", &["second"]);
            c.env("PATH", path(&[&denied, &scripts]));
            c
        }),
        ("a working directory that does not exist", {
            let mut c = cmd("/bin/true", &[]);
            c.current_dir(root.join("nonexistent"));
            c
        }),
        ("env_clear", {
            let mut c = cmd("/usr/bin/env", &[]);
            c.env("DROPPED", "1").env_clear().env("ONLY", "this");
            c
        }),
        ("env_remove", {
            let mut c = cmd("sh", &["-c", "echo \"${HOME-unset} ${GB_SET-unset}\""]);
            c.env_remove("HOME").env("GB_SET", "set");
            c
        }),
        ("a failing command", cmd("sh", &["-c", "echo out; exit 3"])),
    ];
    let by_std = |c: &Command| {
        let mut std = std::process::Command::new(c.get_program());
        std.args(c.get_args());
        if c.get_env_clear() {
            std.env_clear();
        }
        for (key, value) in c.get_envs() {
            match value {
                Some(value) => std.env(key, value),
                None => std.env_remove(key),
            };
        }
        if let Some(dir) = c.get_current_dir() {
            std.current_dir(dir);
        }
        match std.stdin(std::process::Stdio::null()).output() {
            Ok(out) => {
                Ran::Exited(out.status.code().unwrap(), String::from_utf8_lossy(&out.stdout).into_owned())
            }
            Err(e) => Ran::NotStarted(e.to_string()),
        }
    };
    for containment in containments("odd_commands_run_as_std_runs_them") {
        for (what, c) in &mut table {
            let expected = by_std(c);
            let got = match output_of(c.clone(), options(&containment, WaitStrategy::Pidfd)) {
                Ok(stdout) => Ran::Exited(0, stdout),
                Err(JobError::Command(failure)) => match failure.exit {
                    genbuild::Exit::Code(code) => Ran::Exited(code, "out\n".into()),
                    other => panic!("{what}: {other:?}"),
                },
                Err(e) => Ran::NotStarted(e.to_string()),
            };
            let same = match (&expected, &got) {
                // genbuild names the command and the step that failed around std's reason.
                (Ran::NotStarted(std), Ran::NotStarted(ours)) => ours.contains(std.as_str()),
                _ => expected == got,
            };
            assert!(same, "{what}, {}: std {expected:?}, genbuild {got:?}", describe(&containment));
        }
    }
}

/// A command and what it starts run at the nice value of `ProcessOptions::nice`, on
/// every way a command is started: genbuild's clone (cgroup, pidfd wait), std with its
/// hook (the portable wait; a std command), std without a cgroup.
#[test]
fn commands_run_at_the_nice_value_asked_for() {
    // Field 19 of /proc/PID/stat, of the shell and of a child it starts.
    let script = "cut -d' ' -f19 /proc/$$/stat; sh -c 'cut -d\" \" -f19 /proc/$$/stat'";
    for containment in containments("commands_run_at_the_nice_value_asked_for") {
        for wait in [WaitStrategy::Pidfd, WaitStrategy::Portable] {
            let mut options = options(&containment, wait);
            options.nice = Some(7);
            let out = output_of(sh(script), options.clone()).unwrap();
            assert_eq!(out, "7\n7\n", "{} {wait:?}", describe(&containment));
            let mut std_command = std::process::Command::new("sh");
            std_command.args(["-c", script]);
            let out = output_of(std_command, options).unwrap();
            assert_eq!(out, "7\n7\n", "a std command, {} {wait:?}", describe(&containment));
        }
    }
}

/// A command that acts only on a second SIGTERM (as Nix 2.34 may, having lost the
/// first while its builders were silent) ends within its grace: SIGTERM comes again
/// every second, even when the grace never forces.
#[test]
fn sigterm_is_sent_again_during_the_grace() {
    let n = nonce();
    let script = format!(
        "trap 'if [ -n \"$seen\" ]; then exit 0; fi; seen=1' TERM; echo started; \
         while :; do sleep 0.05 || :; done; : 300.{n}"
    );
    let mut options = options(&Containment::ProcessTree, WaitStrategy::Pidfd);
    options.kill_grace = Duration::MAX;
    let (mut job, lines) = shell_job(script, HANG, options);
    job.start();
    wait_line(&lines, "started");
    let (stopped, stopping) = crossbeam_channel::bounded(1);
    let stopper = std::thread::spawn(move || {
        job.stop();
        let _ = stopped.send(job.error().cloned());
    });
    let error = stopping.recv_timeout(HANG).expect("stop() never returned: one SIGTERM only");
    stopper.join().unwrap();
    assert_eq!(error, Some(JobError::Cancelled(Some(CancelReason::Stopped))));
    assert_none_left(&n, "a command that needed two SIGTERMs");
}

/// A command past its memory limit is killed at once and says so; one that passes it
/// during the grace of a cancellation is killed at once too, and the job's error stays
/// the cancellation's (the usage says the limit was reached).
#[test]
fn a_command_past_its_memory_limit_is_killed_at_once_also_in_its_grace() {
    for containment in containments("a_command_past_its_memory_limit_is_killed_at_once_also_in_its_grace") {
        let n = nonce();
        let grow = "x=$(head -c 300000000 /dev/zero | tr '\\0' a)";
        let script =
            format!("grow() {{ {grow}; }}; trap grow TERM; echo started; while :; do sleep 0.05 || :; done; : 300.{n}");
        let mut options = options(&containment, WaitStrategy::Pidfd);
        options.kill_grace = HANG * 3;
        let (usage_tx, usage) = crossbeam_channel::bounded(1);
        let (lines_tx, lines) = crossbeam_channel::unbounded();
        let mut job = Job::new(
            move |ctx: &JobContext| {
                let result = ctx.run_with(sh(&script), &mut |_, line| drop(lines_tx.send(line.to_string())));
                let _ = usage_tx.send(ctx.usage());
                result.map(drop)
            },
            HANG * 3,
        )
        .with_options(options)
        .with_memory_limit(Some(64 << 20));
        job.start();
        wait_line(&lines, "started");
        let started = Instant::now();
        job.stop();
        assert!(started.elapsed() < HANG, "the grace was not cut short: {:?}", started.elapsed());
        assert_eq!(job.error(), Some(&JobError::Cancelled(Some(CancelReason::Stopped))), "{containment:?}");
        let usage = usage.recv_timeout(HANG).unwrap().expect("the command's usage");
        assert!(usage.memory_limit_reached && usage.peak_memory_bytes > 64 << 20, "{usage:?}");
        assert_none_left(&n, "a command killed for its memory");

        let n = nonce();
        let script = format!("{grow}; echo never; : 300.{n}");
        let (tx, rx) = crossbeam_channel::bounded(1);
        let mut job = Job::new(
            move |ctx: &JobContext| {
                let _ = tx.send(ctx.run(sh(&script)).map(drop));
                Ok(())
            },
            HANG,
        )
        .with_options(options_of(&containment))
        .with_memory_limit(Some(64 << 20));
        job.start();
        job.wait();
        let error = rx.recv_timeout(HANG).unwrap().unwrap_err();
        let JobError::MemoryLimit { limit, peak, .. } = &error else { panic!("{containment:?}: {error:?}") };
        assert_eq!(*limit, 64 << 20);
        assert!(*peak > 64 << 20, "{error}");
        assert!(error.to_string().contains("was killed: it reached its memory limit of 64 MiB"), "{error}");
        assert_none_left(&n, "a command killed for its memory");
    }
}

fn options_of(containment: &Containment) -> ProcessOptions {
    options(containment, WaitStrategy::Pidfd)
}

/// Issue 21, item 4: settings of a `std::process::Command` that no getter shows
/// (`arg0`, `env_clear`, a `pre_exec` hook) are honoured under every containment: such
/// a command is started by std, never by genbuild's own clone, which would drop them.
#[test]
fn a_std_commands_hidden_settings_are_honoured_in_a_cgroup() {
    use std::os::unix::process::CommandExt;
    for containment in containments("a_std_commands_hidden_settings_are_honoured_in_a_cgroup") {
        for wait in [WaitStrategy::Pidfd, WaitStrategy::Portable] {
            let mut cmd = std::process::Command::new("/bin/sh");
            cmd.arg0("renamed-by-arg0")
                .args([
                    "-c",
                    r#"echo "$0 ${HOME-cleared} $(umask)"; grep -c genbuild- /proc/self/cgroup || :"#,
                ])
                .env_clear();
            // SAFETY: umask(2) in the child between fork and exec: async-signal-safe;
            // the test's way to see that the hook ran.
            unsafe {
                cmd.pre_exec(|| {
                    libc::umask(0o027);
                    Ok(())
                })
            };
            let out = output_of(cmd, options(&containment, wait)).unwrap();
            let in_cgroup = matches!(containment, Containment::Cgroup(_));
            let expected = format!("renamed-by-arg0 cleared 0027\n{}\n", if in_cgroup { 1 } else { 0 });
            assert_eq!(out, expected, "{} {wait:?}", describe(&containment));
        }
    }
}
