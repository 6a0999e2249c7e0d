//! A host that is hostile to its children's containment: stdio closed, file
//! descriptors exhausted. Each case runs in a process of its own (see
//! `common::alone`): it changes what the whole process shares.

mod common;

use std::os::fd::{AsRawFd, OwnedFd};

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

/// Runs `script` in a job started the `path` way, under `containment`, with the
/// descriptors `closed` closed while it starts (after the job's own, made with it);
/// its stdout.
fn run_job(
    script: &str,
    path: Path_,
    containment: Containment,
    closed: &'static [i32],
) -> Result<String, JobError> {
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
            let _closed = Closed::close(closed);
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

/// Closes `fds` until dropped, then puts them back.
struct Closed(Vec<(i32, OwnedFd)>);

impl Closed {
    fn close(fds: &[i32]) -> Closed {
        let saved = fds
            .iter()
            .map(|&fd| {
                // SAFETY: a borrow of a standard descriptor open in a test process.
                let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                let copy = rustix::io::fcntl_dupfd_cloexec(borrowed, 10).unwrap();
                // SAFETY: closes a descriptor of ours; the copy puts it back.
                unsafe { libc::close(fd) };
                (fd, copy)
            })
            .collect();
        Closed(saved)
    }
}

impl Drop for Closed {
    fn drop(&mut self) {
        for (fd, copy) in &self.0 {
            // SAFETY: puts a copy of the descriptor back at its number.
            unsafe { libc::dup2(copy.as_raw_fd(), *fd) };
        }
    }
}

/// Issue 21, item 1: with stdin, stdout or stderr closed in the host (a daemon), a
/// command still runs in its own cgroup on every way genbuild starts one, prints
/// nothing it did not print, and the `setsid` daemon it leaves dies with it.
#[test]
fn with_stdio_closed_every_command_runs_in_its_cgroup_and_leaves_nothing() {
    let test = "with_stdio_closed_every_command_runs_in_its_cgroup_and_leaves_nothing";
    let Some(parent) = require_cgroup(test) else { return };
    if !alone(test) {
        return;
    }
    let containments = [Containment::Auto, Containment::Cgroup(parent.clone())];
    for closed in CLOSED {
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
                let well_formed = |l: &str| {
                    l.split(':').count() == 3 && l.split(':').next().unwrap().parse::<u32>().is_ok()
                };
                assert!(cgroups.lines().all(well_formed) && last == "started", "{case}: {out:?}");
                assert!(left.is_empty(), "{case}: the daemon outlived the job: {left:?}");
            }
        }
    }
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
