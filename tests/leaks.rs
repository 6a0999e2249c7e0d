//! Threads, file descriptors and processes before and after heavy churn. A binary of
//! its own: the counts are of the whole test process, so nothing else may run beside.

mod common;

use std::time::{Duration, Instant};

use common::*;
use genbuild::{Containment, Job, JobContext, ProcessOptions, WaitStrategy};

/// The counts are of the whole process: one test at a time.
static ALONE: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

#[test]
fn a_thousand_preemptions_leave_no_thread_fd_or_process_behind() {
    let _alone = ALONE.lock();
    let (threads, fds) = (thread_count(), fd_count());
    let n = nonce();
    let (builder, store, executor) =
        builder(ShellExecutor::new().eval_runs(long_sleep(&n)).build_runs(long_sleep(&n)));
    let events = builder.subscribe();
    for i in 0..1000 {
        builder.eval(&rs(&format!("c{i}"))).unwrap();
    }
    // A running build is pre-empted the same way.
    *executor.eval_script.lock() = None;
    let uuid = builder.eval(&rs("last")).unwrap();
    assert_eq!(builder.evaluation_done().iter().nth(1000), Some(uuid.clone()));
    builder.submit_build(&uuid).unwrap();
    builder.eval(&rs("after-build")).unwrap();
    builder.stop();
    assert_no_process(&n);
    assert_eq!(store.generation(&uuid).unwrap().build_status, "failed");
    drop(events);
    drop(builder);
    assert_threads_at_most(threads);
    assert_eq!(fd_count(), fds, "file descriptors leaked");
}

/// A command that exits 0 while a `setsid` grandchild holds its pipes: the job ends at
/// once, under either containment and wait strategy, and leaves no thread (pipe
/// reader, waiter) and no fd behind.
#[test]
fn a_grandchild_holding_the_pipes_leaves_no_thread_or_fd_behind() {
    let _alone = ALONE.lock();
    let (threads, fds) = (thread_count(), fd_count());
    for containment in [Containment::Auto, Containment::ProcessTree] {
        for wait in [WaitStrategy::Pidfd, WaitStrategy::Portable] {
            let n = nonce();
            let mut options = ProcessOptions::default();
            options.containment = containment.clone();
            options.wait = wait;
            let script = format!(
                "setsid sh -c 'trap \"\" TERM; sh -c \"exec sleep 300.{n}\" & exit 0'; echo exiting; exit 0"
            );
            let mut job =
                Job::new(move |ctx: &JobContext| ctx.run(sh(&script)).map(drop), HANG).with_options(options);
            let started = Instant::now();
            job.start();
            job.wait();
            assert_eq!(job.error(), None);
            assert!(
                started.elapsed() < Duration::from_millis(1200),
                "{containment:?} {wait:?}: {:?}",
                started.elapsed()
            );
            assert_no_process(&n);
        }
    }
    assert_threads_at_most(threads);
    assert_eq!(fd_count(), fds, "file descriptors leaked");
}
