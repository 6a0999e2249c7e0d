//! Threads, file descriptors and processes before and after heavy churn. A binary of
//! its own, its tests one at a time: the counts are of the whole test process. Only
//! genbuild's threads are counted (the harness starts one per test, whenever it
//! likes), and every count may drop to its baseline a moment after the call that ends
//! the work: threads and descriptors that leave on their own are waited for, a leak
//! fails after a bound.

mod common;

use std::time::Instant;

use common::*;
use genbuild::{Containment, Job, JobContext, ProcessOptions, WaitStrategy};

/// The counts are of the whole process: one test at a time.
static ALONE: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

#[test]
fn a_thousand_preemptions_leave_no_thread_fd_or_process_behind() {
    let _alone = ALONE.lock();
    let (threads, fds) = (genbuild_thread_count(), fd_count());
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
    assert_genbuild_threads_at_most(threads);
    assert_fds_at_most(fds);
}

/// A command that exits 0 while a `setsid` grandchild holds its pipes: the job ends at
/// once, under either containment and wait strategy, and leaves no thread (pipe
/// reader, waiter) and no fd behind.
#[test]
fn a_grandchild_holding_the_pipes_leaves_no_thread_or_fd_behind() {
    let _alone = ALONE.lock();
    let (threads, fds) = (genbuild_thread_count(), fd_count());
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
            // The daemon would hold the pipes 300 s: this bound only catches waiting for it.
            assert!(started.elapsed() < HANG, "{containment:?} {wait:?}: {:?}", started.elapsed());
            assert_no_process(&n);
        }
    }
    assert_genbuild_threads_at_most(threads);
    assert_fds_at_most(fds);
}
