//! Threads, file descriptors and processes before and after heavy churn. A binary of
//! its own: the counts are of the whole test process, so nothing else may run beside.

mod common;

use common::*;

#[test]
fn a_thousand_preemptions_leave_no_thread_fd_or_process_behind() {
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
