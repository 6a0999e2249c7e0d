//! A host that is hostile to its children's containment: stdio closed, file
//! descriptors exhausted. Each case runs in a process of its own (see
//! `common::alone`): it changes what the whole process shares.

mod common;

use std::os::fd::OwnedFd;

use common::*;
use genbuild::{Containment, Job, JobContext, JobError, ProcessOptions, WaitStrategy};
use rustix::fs::{Mode, OFlags};

/// Which stdio descriptors a case closes.
const CLOSED: [&[i32]; 4] = [&[0], &[1], &[2], &[0, 1, 2]];

/// How a case starts its command.
#[derive(Debug, Clone, Copy)]
enum Path_ {
    /// genbuild's Command, the pidfd wait: the clone born in the cgroup.
    Clone,
    /// genbuild's Command, the portable wait: std with the entry hook.
    Portable,
    /// A std::process::Command: std with the entry hook.
    StdCommand,
}

/// A script that prints its cgroup, starts a `setsid` daemon that ignores SIGTERM and
/// carries `nonce`, and exits once the daemon runs.
fn escaping_script(nonce: &str) -> String {
    format!(
        "cat /proc/self/cgroup; setsid sh -c 'trap \"\" TERM; exec sleep 300.{nonce}' </dev/null >/dev/null 2>&1 & \
         while ! grep -qs 300.{nonce} /proc/[0-9]*/cmdline; do :; done; echo started"
    )
}

/// Placeholders at the descriptors a case closes, held by this test alone: closed
/// (dropped) inside a job, so that what genbuild opens next lands on them, as it does in
/// a daemon with its stdio closed. A descriptor some part of genbuild holds already
/// (a waiter of an earlier case) is left to it.
fn placeholders(fds: &[i32]) -> Vec<OwnedFd> {
    let null = rustix::fs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).unwrap();
    fds.iter()
        .filter(|&&fd| {
            // SAFETY: a query of a descriptor number, whoever holds it.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            flags < 0
        })
        .map(|&fd| {
            // SAFETY: `fd` is free (checked above): the copy is this test's alone.
            unsafe {
                assert_eq!(libc::dup3(std::os::fd::AsRawFd::as_raw_fd(&null), fd, libc::O_CLOEXEC), fd);
                std::os::fd::FromRawFd::from_raw_fd(fd)
            }
        })
        .collect()
}

/// Runs `script` in a job started the `path` way, under `containment`, with the
/// descriptors `closed` free when it starts the command; its stdout.
fn run_job(script: &str, path: Path_, containment: Containment, closed: &[i32]) -> Result<String, JobError> {
    let mut held = Some(placeholders(closed));
    let mut options = ProcessOptions::default();
    options.containment = containment;
    options.wait = match path {
        Path_::Portable => WaitStrategy::Portable,
        _ => WaitStrategy::Pidfd,
    };
    let script = script.to_string();
    let (tx, rx) = crossbeam_channel::bounded(1);
    let mut job = Job::new(
        move |ctx: &JobContext| {
            drop(held.take());
            let out = match path {
                Path_::StdCommand => {
                    let mut cmd = std::process::Command::new("sh");
                    cmd.arg("-c").arg(&script);
                    ctx.run(cmd)
                }
                _ => ctx.run(sh(&script)),
            };
            let _ = tx.send(out.map(|o| o.stdout));
            Ok(())
        },
        HANG,
    )
    .with_options(options);
    job.start();
    job.wait();
    rx.recv_timeout(HANG).expect("the job sent nothing")
}

const CLOSED_ENV: &str = "GENBUILD_TEST_CLOSED_FDS";

/// Issue 21, item 1: in a host that runs with stdin, stdout or stderr closed (a
/// daemon), a command still runs in its own cgroup on every way genbuild starts one,
/// prints nothing it did not print, and the `setsid` daemon it leaves dies with it.
///
/// Each set of closed descriptors is a process of its own (this test again), which
/// closes them for good before it starts anything, as such a daemon does, and reports
/// through a copy of stderr made before.
#[test]
fn with_stdio_closed_every_command_runs_in_its_cgroup_and_leaves_nothing() {
    let test = "with_stdio_closed_every_command_runs_in_its_cgroup_and_leaves_nothing";
    let Some(parent) = require_cgroup(test) else { return };
    if let Ok(closed) = std::env::var(CLOSED_ENV) {
        let closed: Vec<i32> = closed.split(',').map(|fd| fd.parse().unwrap()).collect();
        run_with_fds_closed(&closed, parent);
    }
    for closed in CLOSED {
        let list = closed.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(CLOSED_ENV, &list)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stderr.contains("PASSED"),
            "fds {closed:?} closed: {}\n{stderr}",
            output.status
        );
    }
}

/// The cases of the test above, in a process whose `closed` descriptors are closed
/// from here on; exits (libtest would print to a closed stdout).
fn run_with_fds_closed(closed: &[i32], parent: std::path::PathBuf) -> ! {
    use std::io::Write;
    // SAFETY: a borrow of stderr, open in the process that started this test.
    let stderr = unsafe { std::os::fd::BorrowedFd::borrow_raw(2) };
    let report = std::fs::File::from(rustix::io::fcntl_dupfd_cloexec(stderr, 10).unwrap());
    let for_hook = report.try_clone().unwrap();
    std::panic::set_hook(Box::new(move |info| {
        let _ = writeln!(&for_hook, "{info}");
        std::process::exit(1);
    }));
    for &fd in closed {
        // SAFETY: closes a standard descriptor of this process; placeholders of the
        // test's own take the numbers back until each job starts.
        unsafe { libc::close(fd) };
    }
    let containments = [Containment::Auto, Containment::Cgroup(parent)];
    for path in [Path_::Clone, Path_::Portable, Path_::StdCommand] {
        for containment in &containments {
            let n = nonce();
            let result = run_job(&escaping_script(&n), path, containment.clone(), closed);
            let case = format!("fds {closed:?} closed, {path:?}, {containment:?}");
            let left = processes_with(&n);
            for &pid in &left {
                // SAFETY: kills a leftover of this test.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let out = result.unwrap_or_else(|e| panic!("{case}: {e}"));
            let own = out.lines().find(|l| l.starts_with("0::")).unwrap_or_default();
            assert!(own.contains("/genbuild-"), "{case}: ran in {out:?}");
            // Every line is the command's: `ID:CONTROLLERS:PATH`, then "started".
            let (cgroups, last) = out.trim_end().rsplit_once('\n').unwrap_or_default();
            let well_formed =
                |l: &str| l.split(':').count() == 3 && l.split(':').next().unwrap().parse::<u32>().is_ok();
            assert!(cgroups.lines().all(well_formed) && last == "started", "{case}: {out:?}");
            assert!(left.is_empty(), "{case}: the daemon outlived the job: {left:?}");
        }
    }
    let _ = writeln!(&report, "PASSED");
    std::process::exit(0);
}

/// Every descriptor this process may still open, taken until dropped.
fn exhaust_descriptors() -> Vec<OwnedFd> {
    let mut taken = Vec::new();
    while let Ok(fd) = rustix::fs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
        taken.push(fd);
    }
    taken
}

/// Issue 21, item 2: a builder whose process is at its limit of open files when
/// `stop()` runs still kills the `setsid` daemon of its job before returning.
#[test]
fn stop_at_the_file_descriptor_limit_leaves_no_daemon_alive() {
    let test = "stop_at_the_file_descriptor_limit_leaves_no_daemon_alive";
    if require_cgroup(test).is_none() || !alone(test) {
        return;
    }
    let n = nonce();
    let script = format!(
        "setsid sh -c 'trap \"\" TERM; exec sleep 300.{n}' </dev/null >/dev/null 2>&1 & exec sleep 301.{n}"
    );
    let (builder, _, _) = builder(ShellExecutor::new().eval_runs(script));
    builder.eval(&rs("c1")).unwrap();
    wait_for_processes(&n, 2);
    let taken = exhaust_descriptors();
    builder.stop();
    let left = processes_with(&n);
    drop(taken);
    assert_eq!(left, Vec::<i32>::new(), "alive when stop() returned");
    assert_no_process(&n);
}
