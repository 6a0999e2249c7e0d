//! The threads jobs run on, kept a moment for the next job.
//!
//! Each job runs on a thread of its own. Starting one per job cost the pre-empting
//! `eval()` about 60 µs (creation, then the new thread's first scheduling), and its
//! exit, concurrent with the next job's spawn, took the address space's lock the
//! spawning child needed. A thread whose job ended waits [`IDLE`] for another, then
//! exits: a builder whose commits come minutes apart keeps no thread between them.
//! Dropping a builder retires and joins the idle ones at once ([`retire_idle`]).
//!
//! A job whose end starts the next one (the builder's pre-empting `eval()`, handed over
//! to the job it waits for: see [`as_last_act`]) has its successor run next on the same
//! thread, which is already awake: no other thread is woken on the way from one
//! command's death to the next one's start.
//!
//! A job's thread gets the signal mask of the thread that started the job, as a new
//! thread would (its commands inherit it).

use std::cell::{Cell, RefCell};
use std::io;
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

/// How long a thread whose job ended waits for the next one.
const IDLE: Duration = Duration::from_millis(50);

type Job = Box<dyn FnOnce() + Send>;

/// What an idle thread is sent.
enum Task {
    Run(Job),
    /// Exit now rather than after [`IDLE`].
    Retire,
}

/// The idle threads, each as the end a task is sent to.
static IDLE_THREADS: Mutex<Vec<(Sender<Task>, ThreadId)>> = Mutex::new(Vec::new());

thread_local! {
    /// Whether this is a job thread, which runs [`NEXT`] once its job returned.
    static JOB_THREAD: Cell<bool> = const { Cell::new(false) };
    /// While [`as_last_act`] runs: the signal mask the job it starts gets.
    static LAST_ACT: Cell<Option<SignalMask>> = const { Cell::new(None) };
    /// The job started by this thread's job's last act, to run here next.
    static NEXT: RefCell<Option<Job>> = const { RefCell::new(None) };
}

/// A thread's signal mask, which the jobs it starts get.
#[derive(Clone, Copy)]
pub(crate) struct SignalMask(libc::sigset_t);

impl SignalMask {
    /// The calling thread's.
    pub(crate) fn current() -> SignalMask {
        // SAFETY: a query of this thread's mask into a zeroed plain C struct.
        unsafe {
            let mut mask: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut mask);
            SignalMask(mask)
        }
    }

    fn apply(&self) {
        // SAFETY: sets this thread's mask to one read from another thread.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// Runs `f` as the last thing the current job does, on behalf of a thread whose signal
/// mask is `mask`: the first job `f` starts gets `mask` and runs next on this same
/// thread, once the current job returned, instead of on another thread. Nothing may
/// wait for that job's end between `f` and the current job's return, or it would wait
/// for ever; the builder's `finish`, which hands a job's outcome over and returns, is
/// the one caller. Elsewhere than on a job thread, jobs started by `f` run as any
/// other.
pub(crate) fn as_last_act<T>(mask: SignalMask, f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            LAST_ACT.set(None);
        }
    }
    LAST_ACT.set(JOB_THREAD.get().then_some(mask));
    let _reset = Reset;
    f()
}

/// Every job thread started and not joined yet. (A `Vec`: a static `HashMap` points
/// into its table, which valgrind reports as possibly lost at exit.)
static HANDLES: Mutex<Vec<(ThreadId, JoinHandle<()>)>> = Mutex::new(Vec::new());

/// Makes every idle job thread exit now and joins it, with those that exited on their
/// own: when the last builder goes, no thread of genbuild outlives it (a program that
/// exits next, or valgrind, sees none), and the fuzzer's builder check need not wait
/// [`IDLE`] before it counts the threads left.
pub(crate) fn retire_idle() {
    let idle = std::mem::take(&mut *IDLE_THREADS.lock());
    for (thread, _) in &idle {
        let _ = thread.send(Task::Retire);
    }
    let done: Vec<(ThreadId, JoinHandle<()>)> = {
        let mut handles = HANDLES.lock();
        let retired =
            |id: &ThreadId, h: &JoinHandle<()>| h.is_finished() || idle.iter().any(|(_, i)| i == id);
        let (done, busy) = std::mem::take(&mut *handles).into_iter().partition(|(id, h)| retired(id, h));
        *handles = busy;
        done
    };
    for (_, thread) in done {
        let _ = thread.join();
    }
}

/// A job's thread, from the job's start until its result is taken.
pub(crate) struct JobThread<T> {
    done: Receiver<std::thread::Result<T>>,
}

impl<T: Send + 'static> JobThread<T> {
    /// Runs `f` on an idle thread, or on a new one named `genbuild-job`; within
    /// [`as_last_act`] on a job thread, next on this one.
    pub(crate) fn spawn(f: impl FnOnce() -> T + Send + 'static) -> io::Result<JobThread<T>> {
        let (send_done, done) = crossbeam_channel::bounded(1);
        let last_act = LAST_ACT.take();
        let mask = last_act.unwrap_or_else(SignalMask::current);
        let mut job: Job = Box::new(move || {
            mask.apply();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = send_done.send(result);
        });
        if last_act.is_some() {
            NEXT.set(Some(job));
            return Ok(JobThread { done });
        }
        loop {
            let Some((thread, _)) = IDLE_THREADS.lock().pop() else { break };
            // A thread that gave up waiting takes itself out of the list first, so this
            // fails only if it died otherwise; then the next one is tried.
            match thread.send(Task::Run(job)) {
                Ok(()) => return Ok(JobThread { done }),
                Err(returned) => match returned.into_inner() {
                    Task::Run(returned) => job = returned,
                    Task::Retire => unreachable!("sent a job"),
                },
            }
        }
        let (sender, tasks) = crossbeam_channel::bounded::<Task>(1);
        let thread =
            std::thread::Builder::new().name("genbuild-job".into()).spawn(move || run(job, sender, tasks))?;
        let mut handles = HANDLES.lock();
        // Those that exited on their own: their handles go, which frees what they held.
        handles.retain(|(_, h)| !h.is_finished());
        handles.push((thread.thread().id(), thread));
        Ok(JobThread { done })
    }

    /// Blocks until the job returned (or panicked) and gives its result.
    pub(crate) fn join(self) -> std::thread::Result<T> {
        self.done.recv().unwrap_or_else(|_| Err(Box::new("the job's thread ended without a result")))
    }

    /// Whether the job returned (or panicked), without waiting.
    pub(crate) fn is_finished(&self) -> bool {
        !self.done.is_empty()
    }
}

/// A job thread's life: its first task, then each task sent to it while it waits in
/// [`IDLE_THREADS`], until it waited [`IDLE`] in vain.
fn run(first: Job, sender: Sender<Task>, tasks: Receiver<Task>) {
    let me = std::thread::current().id();
    JOB_THREAD.set(true);
    run_with_successors(first);
    loop {
        IDLE_THREADS.lock().push((sender.clone(), me));
        let task = match tasks.recv_timeout(IDLE) {
            Ok(task) => task,
            Err(RecvTimeoutError::Timeout) => {
                let mut idle = IDLE_THREADS.lock();
                match idle.iter().position(|(_, id)| *id == me) {
                    // Still listed: nobody can send to it any more once it is removed.
                    Some(at) => {
                        idle.swap_remove(at);
                        return;
                    }
                    // Taken off the list by a job's start: its task is on the way.
                    None => {
                        drop(idle);
                        match tasks.recv() {
                            Ok(task) => task,
                            Err(_) => return,
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        match task {
            Task::Run(job) => run_with_successors(job),
            Task::Retire => return,
        }
    }
}

/// Runs `job`, then the job its last act started, if any, and so on.
fn run_with_successors(job: Job) {
    let mut next = Some(job);
    while let Some(job) = next {
        job();
        next = NEXT.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    fn os_thread_id() -> i32 {
        // SAFETY: no preconditions.
        unsafe { libc::gettid() }
    }

    fn blocks_sigusr1() -> bool {
        // SAFETY: a membership test on a mask just read.
        unsafe { libc::sigismember(&SignalMask::current().0, libc::SIGUSR1) == 1 }
    }

    /// A job started right after another ended runs on the same thread, with the
    /// signal mask of the thread that started it, not the one before; an idle thread
    /// exits after [`IDLE`].
    #[test]
    fn a_thread_is_kept_a_moment_for_the_next_job_with_the_starters_signal_mask() {
        let blocked = std::thread::spawn(|| {
            // SAFETY: this thread's mask only.
            unsafe {
                let mut usr1: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut usr1);
                libc::sigaddset(&mut usr1, libc::SIGUSR1);
                libc::pthread_sigmask(libc::SIG_BLOCK, &usr1, std::ptr::null_mut());
            }
            JobThread::spawn(|| (os_thread_id(), blocks_sigusr1())).unwrap().join().unwrap()
        })
        .join()
        .unwrap();
        assert!(blocked.1, "the job did not get its starter's mask");
        // Other tests start jobs too: among a few tries, one lands on that thread.
        let reused = (0..50).find_map(|_| {
            let (tid, usr1) =
                JobThread::spawn(|| (os_thread_id(), blocks_sigusr1())).unwrap().join().unwrap();
            (tid == blocked.0).then_some(usr1)
        });
        assert_eq!(reused, Some(false), "the thread was not reused, or kept the former mask");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::path::Path::new(&format!("/proc/self/task/{}", blocked.0)).exists() {
            assert!(Instant::now() < deadline, "an idle job thread did not exit");
            std::thread::yield_now();
        }
    }

    /// After `retire_idle`, an idle job thread is not only told to go: it is joined,
    /// so that nothing of it is left when the last builder is dropped.
    #[test]
    fn retire_idle_joins_the_idle_threads() {
        let id = JobThread::spawn(|| std::thread::current().id()).unwrap().join().unwrap();
        // It lists itself as idle right after its job; others' jobs may take it.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !IDLE_THREADS.lock().iter().any(|(_, i)| *i == id) {
            if !HANDLES.lock().iter().any(|(i, _)| *i == id) {
                return eprintln!("skipped: another test's job took the thread, which then exited");
            }
            assert!(Instant::now() < deadline);
            std::thread::yield_now();
        }
        retire_idle();
        assert!(!HANDLES.lock().iter().any(|(i, _)| *i == id), "the retired thread was not joined");
    }

    /// A mask that blocks SIGUSR1, unlike this thread's.
    fn usr1_blocked() -> SignalMask {
        let mut mask = SignalMask::current();
        // SAFETY: adds a signal to a mask held here.
        unsafe { libc::sigaddset(&mut mask.0, libc::SIGUSR1) };
        mask
    }

    /// The first job started by a job's last act runs on that job's thread once that
    /// job returned, with the mask the act was done for; a second one started in the
    /// same act runs elsewhere, meanwhile, with the mask of the thread that started it.
    #[test]
    fn a_job_started_as_the_last_act_runs_next_on_the_same_thread() {
        let (handles, handed) = crossbeam_channel::bounded(1);
        let returned = Arc::new(AtomicBool::new(false));
        let first = {
            let returned = returned.clone();
            JobThread::spawn(move || {
                let next = {
                    let returned = returned.clone();
                    move || (os_thread_id(), returned.load(Ordering::SeqCst), blocks_sigusr1())
                };
                let (next, other) = as_last_act(usr1_blocked(), || {
                    let other = || (os_thread_id(), blocks_sigusr1());
                    (JobThread::spawn(next).unwrap(), JobThread::spawn(other).unwrap())
                });
                // The other one runs while this job has not returned.
                let other = other.join().unwrap();
                handles.send(next).unwrap();
                returned.store(true, Ordering::SeqCst);
                (os_thread_id(), other)
            })
            .unwrap()
        };
        let (tid, other) = first.join().unwrap();
        let next = handed.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(
            next.join().unwrap(),
            (tid, true, true),
            "not run next here, after the job, with its mask"
        );
        assert_ne!(other.0, tid);
        assert!(!other.1, "the other job got the act's mask");
    }

    /// Outside a job thread, a job started in `as_last_act` runs as any other, with
    /// the mask of the thread that started it.
    #[test]
    fn as_last_act_outside_a_job_thread_changes_nothing() {
        let thread =
            as_last_act(usr1_blocked(), || JobThread::spawn(|| (os_thread_id(), blocks_sigusr1())).unwrap());
        let (tid, usr1) = thread.join().unwrap();
        assert_ne!(tid, os_thread_id());
        assert!(!usr1, "the job got the act's mask, not its starter's");
        assert!(LAST_ACT.get().is_none());
    }

    #[test]
    fn a_panic_is_the_joins_error_and_the_thread_goes_on() {
        let thread = JobThread::spawn(|| -> () { panic!("on purpose") }).unwrap();
        let panic = thread.join().unwrap_err();
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"on purpose"));
        assert_eq!(JobThread::spawn(|| 7).unwrap().join().unwrap(), 7);
    }

    #[test]
    fn is_finished_says_whether_the_result_is_there() {
        let (go, wait) = crossbeam_channel::bounded::<()>(0);
        let thread = JobThread::spawn(move || wait.recv().is_ok()).unwrap();
        assert!(!thread.is_finished());
        go.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !thread.is_finished() {
            assert!(Instant::now() < deadline);
            std::thread::yield_now();
        }
        thread.join().unwrap();
    }
}
