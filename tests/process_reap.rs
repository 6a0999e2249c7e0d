//! The bounded reap: a process that SIGKILL cannot end (uninterruptible sleep, as on a
//! hung NFS mount) must not block `stop()` for ever.
//!
//! What this really exercises: the command is put in a cgroup v1 *freezer* and frozen
//! (a frozen task shows as `D`, uninterruptible, and a SIGKILL stays pending until it
//! is thawed), then its job is stopped. The job sends SIGTERM, waits the grace, sends
//! SIGKILL (through `cgroup.kill` or the tree), waits the reap limit (2 s) for the
//! exit, hands the process (and its cgroup v2) to a detached reaper thread, logs it,
//! and returns `Cancelled`. Thawed, the process dies of the pending SIGKILL; the reaper
//! reaps it (no zombie is left) and removes its cgroup. Both wait strategies are run:
//! the pidfd's bounded `poll` and the portable path's `wait-timeout`.
//!
//! Needs the cgroup v1 freezer mounted and writable (root on hybrid hosts); skipped,
//! with the reason, elsewhere. A binary of its own: it installs a logger.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use genbuild::{CancelReason, Containment, Job, JobContext, JobError, ProcessOptions, WaitStrategy};

/// A writable cgroup v1 freezer hierarchy, from /proc/self/mountinfo.
fn freezer() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let dir = mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let mut fs = fs.split(' ');
        (fs.next()? == "cgroup" && fs.nth(1)?.split(',').any(|o| o == "freezer")).then_some(())?;
        Some(PathBuf::from(mount.split(' ').nth(4)?))
    })?;
    let probe = dir.join(format!("genbuild-probe-{}", nonce()));
    std::fs::create_dir(&probe).ok()?;
    std::fs::remove_dir(&probe).ok()?;
    Some(dir)
}

/// A frozen cgroup v1 holding `pid`; thawed and removed on drop.
struct Frozen(PathBuf);

impl Frozen {
    fn new(freezer: &std::path::Path, pid: i32) -> Frozen {
        let dir = freezer.join(format!("genbuild-test-{}", nonce()));
        std::fs::create_dir(&dir).unwrap();
        let frozen = Frozen(dir);
        std::fs::write(frozen.0.join("cgroup.procs"), pid.to_string()).unwrap();
        std::fs::write(frozen.0.join("freezer.state"), "FROZEN").unwrap();
        let deadline = Instant::now() + HANG;
        while std::fs::read_to_string(frozen.0.join("freezer.state")).unwrap().trim() != "FROZEN" {
            assert!(Instant::now() < deadline, "the freezer never froze");
            std::thread::yield_now();
        }
        frozen
    }

    fn thaw(&self) {
        let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
        let deadline = Instant::now() + HANG;
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::yield_now();
        }
    }
}

#[test]
fn a_process_that_sigkill_cannot_end_is_handed_to_a_reaper_and_stop_returns() {
    let Some(freezer) = freezer() else {
        eprintln!("skipped: no writable cgroup v1 freezer here to hold a process after SIGKILL");
        return;
    };
    let mut runs = vec![
        (Containment::ProcessTree, WaitStrategy::Pidfd),
        (Containment::ProcessTree, WaitStrategy::Portable),
    ];
    if let Some(dir) = writable_cgroup() {
        runs.push((Containment::Cgroup(dir.clone()), WaitStrategy::Pidfd));
        runs.push((Containment::Cgroup(dir), WaitStrategy::Portable));
    }
    for (containment, wait) in runs {
        eprintln!("containment: {containment:?} ({wait:?})");
        warnings().clear();
        let n = nonce();
        let mut options = ProcessOptions::default();
        options.containment = containment.clone();
        options.wait = wait;
        options.kill_grace = Duration::from_millis(100);
        let (tx, pids) = crossbeam_channel::unbounded();
        let script = format!("echo $$; exec sleep 300.{n}");
        let mut job = Job::new(
            move |ctx: &JobContext| {
                let tx = tx.clone();
                ctx.run_with(sh(&script), &mut |_, line| {
                    let _ = tx.send(line.to_string());
                })
                .map(drop)
            },
            HANG,
        )
        .with_options(options);
        job.start();
        let pid: i32 = pids.recv_timeout(HANG).unwrap().parse().unwrap();
        wait_for_processes(&n, 1);
        let frozen = Frozen::new(&freezer, pid);

        let started = Instant::now();
        job.stop();
        let took = started.elapsed();
        assert_eq!(job.error(), Some(&JobError::Cancelled(Some(CancelReason::Stopped))));
        // It waited the reap limit (2 s) before the reaper took over; the upper bound only
        // catches a wait for the frozen process itself.
        assert!(took >= Duration::from_secs(2) && took < HANG, "{containment:?}: stop() took {took:?}");
        assert_eq!(processes_with(&n), [pid], "the frozen process is still there, killed but not dead");
        let logged = warnings().join("\n");
        assert!(logged.contains("did not exit within") && logged.contains("reaper thread"), "{logged}");

        frozen.thaw();
        let deadline = Instant::now() + HANG;
        // Gone from /proc altogether: dead and reaped by the reaper thread.
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "{containment:?}: {pid} was never reaped");
            std::thread::yield_now();
        }
        if let Containment::Cgroup(dir) = &containment {
            let prefix = format!("genbuild-{}-", std::process::id());
            while std::fs::read_dir(dir)
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            {
                assert!(Instant::now() < deadline, "the reaper did not remove the cgroup");
                std::thread::yield_now();
            }
        }
        drop(frozen);
        assert_no_process(&n);
    }
}
