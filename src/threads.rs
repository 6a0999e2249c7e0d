//! The threads jobs run on, kept a moment for the next job.
//!
//! Each job runs on a thread of its own. Starting one per job cost the pre-empting
//! `eval()` about 60 µs (creation, then the new thread's first scheduling), and its
//! exit, concurrent with the next job's spawn, took the address space's lock the
//! spawning child needed. So a thread whose job ended waits a moment ([`IDLE`]) for
//! another, then exits: a builder whose commits come minutes apart keeps no thread
//! between them. Dropping a builder retires and joins the idle ones at once
//! ([`Pool::retire_idle`]).
//!
//! A job may name its **successor**: a job that runs next on the same thread, which is
//! already awake, instead of waking another (the builder's pre-empting `eval()`, handed
//! to the end of the job it cancelled). The successor is a value the job returns
//! ([`Successor`]); the thread runs `while let Some(next) = job()`. A successor that is
//! dropped unrun is started on a thread of the pool: it is never lost.
//!
//! A job gets the signal mask of the thread that started it, as a new thread would (its
//! commands inherit it); a successor gets the mask it was made with.
//!
//! A thread lists itself idle *before* it hands its job's result over: whoever received
//! the result of the last job of a builder finds the thread in the idle list, so that
//! [`Pool::retire_idle`] joins it (a thread between the two steps would be missed, and
//! outlive the builder).

use std::io;
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

/// How long a thread whose job ended waits for the next one.
pub(crate) const IDLE: Duration = Duration::from_millis(50);

/// The job threads of this process.
pub(crate) static POOL: Pool = Pool::new(IDLE);

/// What a thread of the pool runs: a job, which hands its result over and may name its
/// successor.
type Task = Box<dyn FnOnce() -> Ended + Send>;

/// What a [`Task`] gives back: how to hand its result to whoever waits for it, and the
/// job to run next on this thread, if any.
struct Ended {
    deliver: Box<dyn FnOnce() + Send>,
    next: Option<Successor>,
}

/// A job to run next on the current job thread, once the current job returned.
///
/// Made by [`JobThread::successor`] and returned by the job that starts it. Dropped
/// without being run, it is started on a thread of the pool instead: a successor is
/// never lost.
#[must_use = "a successor runs only when the job that made it returns it"]
pub(crate) struct Successor {
    task: Option<Task>,
}

impl Successor {
    fn take(mut self) -> Task {
        self.task.take().expect("a successor holds its task until taken")
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            if let Err(e) = POOL.run(task) {
                // Nobody can be told: the job's result never comes, and its waiter
                // gets "ended without a result".
                log::error!("cannot start a job thread for a job handed over ({e})");
            }
        }
    }
}

/// What an idle thread is sent.
enum Message {
    Run(Task),
    /// Exit now rather than after the idle wait.
    Retire,
}

/// A set of job threads: those waiting for a job, and the handles of all not joined.
pub(crate) struct Pool {
    idle_wait: Duration,
    /// The idle threads, each as the end a message is sent to.
    idle: Mutex<Vec<(Sender<Message>, ThreadId)>>,
    /// Every thread started and not joined yet. (A `Vec`: a static `HashMap` points
    /// into its table, which valgrind reports as possibly lost at exit.)
    handles: Mutex<Vec<(ThreadId, JoinHandle<()>)>>,
}

impl Pool {
    pub(crate) const fn new(idle_wait: Duration) -> Pool {
        Pool { idle_wait, idle: Mutex::new(Vec::new()), handles: Mutex::new(Vec::new()) }
    }

    /// Runs `task` on an idle thread, or on a new one named `genbuild-job`.
    fn run(&'static self, mut task: Task) -> io::Result<()> {
        loop {
            let Some((thread, _)) = self.idle.lock().pop() else { break };
            // A thread that gave up waiting takes itself out of the list first, so this
            // fails only if it died otherwise; then the next one is tried.
            match thread.send(Message::Run(task)) {
                Ok(()) => return Ok(()),
                Err(returned) => match returned.into_inner() {
                    Message::Run(returned) => task = returned,
                    Message::Retire => unreachable!("sent a task"),
                },
            }
        }
        let (sender, messages) = crossbeam_channel::bounded::<Message>(1);
        let thread = std::thread::Builder::new()
            .name("genbuild-job".into())
            .spawn(move || self.serve(task, sender, messages))?;
        let mut handles = self.handles.lock();
        // Those that exited on their own: their handles go, which frees what they held.
        handles.retain(|(_, h)| !h.is_finished());
        handles.push((thread.thread().id(), thread));
        Ok(())
    }

    /// A thread's life: its first task and their successors, then each task sent to it
    /// while it waits in the idle list, until it waited in vain or is retired.
    fn serve(&self, first: Task, sender: Sender<Message>, messages: Receiver<Message>) {
        let me = std::thread::current().id();
        let mut task = first;
        loop {
            let Ended { deliver, next } = task();
            if let Some(next) = next {
                // Busy with the successor: not idle between the two.
                deliver();
                task = next.take();
                continue;
            }
            self.idle.lock().push((sender.clone(), me));
            #[cfg(test)]
            tests::IDLE_SPELLS.set(tests::IDLE_SPELLS.get() + 1);
            deliver();
            task = match self.next_message(me, &messages) {
                Some(Message::Run(task)) => task,
                Some(Message::Retire) | None => return,
            };
        }
    }

    /// The next message to this idle thread; `None` once it waited in vain.
    fn next_message(&self, me: ThreadId, messages: &Receiver<Message>) -> Option<Message> {
        match messages.recv_timeout(self.idle_wait) {
            Ok(message) => Some(message),
            Err(RecvTimeoutError::Timeout) => {
                let mut idle = self.idle.lock();
                match idle.iter().position(|(_, id)| *id == me) {
                    // Still listed: nobody can send to it any more once it is removed.
                    Some(at) => {
                        idle.swap_remove(at);
                        None
                    }
                    // Taken off the list by a job's start or a retirement: its message
                    // is on the way.
                    None => {
                        drop(idle);
                        messages.recv().ok()
                    }
                }
            }
            Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Makes every idle thread exit now and joins it, with those that exited on their
    /// own: when the last builder goes, no thread of genbuild outlives it (a program
    /// that exits next, or valgrind, sees none).
    pub(crate) fn retire_idle(&self) {
        let idle = std::mem::take(&mut *self.idle.lock());
        for (thread, _) in &idle {
            let _ = thread.send(Message::Retire);
        }
        let done: Vec<(ThreadId, JoinHandle<()>)> = {
            let mut handles = self.handles.lock();
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

    #[cfg(test)]
    pub(crate) fn is_idle(&self, thread: ThreadId) -> bool {
        self.idle.lock().iter().any(|(_, id)| *id == thread)
    }

    #[cfg(test)]
    pub(crate) fn is_joined(&self, thread: ThreadId) -> bool {
        !self.handles.lock().iter().any(|(id, _)| *id == thread)
    }
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

/// What a job thread runs: a job, which gives its result and its successor, if any.
pub(crate) trait JobFn<T>: FnOnce() -> (T, Option<Successor>) + Send + 'static {}

impl<T, F: FnOnce() -> (T, Option<Successor>) + Send + 'static> JobFn<T> for F {}

/// A job's thread, from the job's start until its result is taken.
pub(crate) struct JobThread<T> {
    done: Receiver<std::thread::Result<T>>,
}

impl<T: Send + 'static> JobThread<T> {
    /// Runs `f` on a thread of `pool` with the calling thread's signal mask; `f`'s
    /// second value is the job to run next on that thread.
    pub(crate) fn spawn_in(pool: &'static Pool, f: impl JobFn<T>) -> io::Result<JobThread<T>> {
        let (thread, task) = Self::task(SignalMask::current(), f);
        pool.run(task)?;
        Ok(thread)
    }

    /// `f` as the successor of the job running on this thread, with signal mask `mask`:
    /// it runs there once that job returned the [`Successor`] given here.
    pub(crate) fn successor(mask: SignalMask, f: impl JobFn<T>) -> (JobThread<T>, Successor) {
        let (thread, task) = Self::task(mask, f);
        (thread, Successor { task: Some(task) })
    }

    fn task(mask: SignalMask, f: impl JobFn<T>) -> (JobThread<T>, Task) {
        let (send_done, done) = crossbeam_channel::bounded(1);
        let task: Task = Box::new(move || {
            mask.apply();
            let (result, next) = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                Ok((value, next)) => (Ok(value), next),
                Err(panic) => (Err(panic), None),
            };
            let deliver = Box::new(move || drop(send_done.send(result)));
            Ended { deliver, next }
        });
        (JobThread { done }, task)
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::Instant;

    thread_local! {
        /// How many times this thread listed itself idle: a job handed over runs
        /// within the same spell as the job before it.
        pub(crate) static IDLE_SPELLS: Cell<u64> = const { Cell::new(0) };
    }

    /// This job thread's identity and how many idle spells it had, for tests that
    /// check where a job ran.
    pub(crate) fn where_am_i() -> (ThreadId, u64) {
        (std::thread::current().id(), IDLE_SPELLS.get())
    }

    fn blocks_sigusr1() -> bool {
        // SAFETY: a membership test on a mask just read.
        unsafe { libc::sigismember(&SignalMask::current().0, libc::SIGUSR1) == 1 }
    }

    /// A mask that blocks SIGUSR1, unlike this thread's.
    fn usr1_blocked() -> SignalMask {
        let mut mask = SignalMask::current();
        // SAFETY: adds a signal to a mask held here.
        unsafe { libc::sigaddset(&mut mask.0, libc::SIGUSR1) };
        mask
    }

    /// A pool of its own for one test: no other test's job takes its threads.
    pub(crate) fn pool(idle_wait: Duration) -> &'static Pool {
        Box::leak(Box::new(Pool::new(idle_wait)))
    }

    fn plain<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> impl JobFn<T> {
        move || (f(), None)
    }

    /// A job started once another's result is in runs on the same thread, listed idle
    /// in between, with the signal mask of the thread that started it, not the one
    /// before.
    #[test]
    fn a_thread_is_kept_for_the_next_job_with_the_starters_signal_mask() {
        let pool = pool(Duration::from_secs(600));
        let first = std::thread::spawn(move || {
            // SAFETY: this thread's mask only.
            unsafe {
                let mut usr1: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut usr1);
                libc::sigaddset(&mut usr1, libc::SIGUSR1);
                libc::pthread_sigmask(libc::SIG_BLOCK, &usr1, std::ptr::null_mut());
            }
            JobThread::spawn_in(pool, plain(|| (where_am_i(), blocks_sigusr1()))).unwrap().join().unwrap()
        })
        .join()
        .unwrap();
        assert!(first.1, "the job did not get its starter's mask");
        assert!(pool.is_idle(first.0 .0), "the thread is listed idle before its result is handed over");
        let second =
            JobThread::spawn_in(pool, plain(|| (where_am_i(), blocks_sigusr1()))).unwrap().join().unwrap();
        assert_eq!(second.0 .0, first.0 .0, "the idle thread was not reused");
        assert_eq!(second.0 .1, first.0 .1 + 1, "it ran after an idle spell");
        assert!(!second.1, "the thread kept the former job's mask");
        pool.retire_idle();
        assert!(pool.is_joined(first.0 .0));
    }

    /// An idle thread that waited in vain exits on its own.
    #[test]
    fn an_idle_thread_exits_after_its_wait() {
        let pool = pool(Duration::ZERO);
        let (id, _) = JobThread::spawn_in(pool, plain(where_am_i)).unwrap().join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while pool.is_idle(id) {
            assert!(Instant::now() < deadline, "an idle job thread did not leave the idle list");
            std::thread::yield_now();
        }
        pool.retire_idle();
        assert!(pool.is_joined(id), "the thread that exited was not joined");
    }

    /// Once the result of a job is in, `retire_idle` joins its thread: no thread is
    /// left between handing the result over and listing itself idle.
    #[test]
    fn retire_idle_joins_the_thread_of_a_job_whose_result_is_in() {
        let pool = pool(Duration::from_secs(600));
        for _ in 0..200 {
            let (id, _) = JobThread::spawn_in(pool, plain(where_am_i)).unwrap().join().unwrap();
            pool.retire_idle();
            assert!(pool.is_joined(id), "the thread of a finished job outlived retire_idle");
        }
    }

    /// The successor a job returns runs next on its thread, after it returned, within
    /// the same idle spell and with the mask it was made with; a job started meanwhile
    /// by `spawn_in` runs elsewhere, with its starter's mask.
    #[test]
    fn a_successor_runs_next_on_the_same_thread() {
        let pool = pool(Duration::from_secs(600));
        let first = JobThread::spawn_in(pool, move || {
            let (next, successor) =
                JobThread::successor(usr1_blocked(), plain(|| (where_am_i(), blocks_sigusr1())));
            let other = JobThread::spawn_in(pool, plain(|| (where_am_i(), blocks_sigusr1()))).unwrap();
            let other = other.join().unwrap();
            ((where_am_i(), next, other), Some(successor))
        })
        .unwrap();
        let (here, next, other) = first.join().unwrap();
        let next = next.join().unwrap();
        assert_eq!(next, (here, true), "not run next here, in the same spell, with its mask");
        assert_ne!(other.0 .0, here.0);
        assert!(!other.1, "the other job got the successor's mask");
        pool.retire_idle();
    }

    /// A successor dropped unrun is not lost: it runs on another thread.
    #[test]
    fn a_successor_dropped_unrun_runs_elsewhere() {
        let (next, successor) = JobThread::successor(SignalMask::current(), plain(|| 7));
        drop(successor);
        assert_eq!(next.join().unwrap(), 7);
    }

    #[test]
    fn a_panic_is_the_joins_error_and_the_thread_goes_on() {
        let pool = pool(Duration::from_secs(600));
        let thread = JobThread::spawn_in(pool, plain(|| -> () { panic!("on purpose") })).unwrap();
        let panic = thread.join().unwrap_err();
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"on purpose"));
        assert_eq!(JobThread::spawn_in(pool, plain(|| 7)).unwrap().join().unwrap(), 7);
        pool.retire_idle();
    }

    #[test]
    fn is_finished_says_whether_the_result_is_there() {
        let pool = pool(Duration::from_secs(600));
        let (go, wait) = crossbeam_channel::bounded::<()>(0);
        let thread = JobThread::spawn_in(pool, plain(move || wait.recv().is_ok())).unwrap();
        assert!(!thread.is_finished());
        go.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !thread.is_finished() {
            assert!(Instant::now() < deadline);
            std::thread::yield_now();
        }
        thread.join().unwrap();
        pool.retire_idle();
    }
}
