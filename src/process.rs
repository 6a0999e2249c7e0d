//! The subprocess protocol: how a job runs a command so that it can always be stopped.
//!
//! * Every command gets its own process group and a closed stdin; two threads drain
//!   stdout and stderr line by line, keeping all of stdout and a bounded tail of
//!   stderr, and hand each line to the caller's thread, in order.
//! * "Finished" means the child exited, never that its pipes closed: a leftover
//!   grandchild can hold a pipe open for ever.
//! * The exit is awaited without polling: `poll([pidfd, cancel eventfd], deadline)` on
//!   Linux, a `waitid(WNOWAIT)` thread and a channel select elsewhere. Either way the
//!   exit is *observed* without reaping, and only this thread signals and reaps the
//!   child, so a signal never reaches a recycled pid.
//! * Cancel or timeout: the descendants are listed, the group gets SIGTERM (Nix then
//!   stops its own builders), and after the grace period the tree is listed again and
//!   every descendant still alive, and the group, get SIGKILL. Nix builders call
//!   `setsid`, so a group kill alone would leave them running; a builder whose parent
//!   died is re-parented and lost, hence the listing before the first signal.
//! * Leftovers of the group are killed before the leader is reaped, so the group id
//!   cannot have been recycled.
//!
//! This module knows nothing of jobs: [`crate::job`] hands it a [`Limits`] (deadline,
//! cancellation, grace) and a line callback.

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use parking_lot::Mutex;
use rustix::process::{Pid, Signal};

use crate::error::{CancelReason, JobError};

/// How much of a failing command's stderr ends up in its error message.
pub(crate) const STDERR_TAIL_BYTES: usize = 4096;
const STDOUT_LIMIT: usize = 64 << 20;
/// How long to wait for the pipes to close once the child is gone; past it the
/// holder of the pipe is some process outside our reach and the readers are left.
const PIPE_DRAIN_GRACE: Duration = Duration::from_secs(2);

/// The output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The command's standard output.
    Stdout,
    /// The command's standard error.
    Stderr,
}

/// How a command's exit is awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WaitStrategy {
    /// Linux: `poll` on a pidfd and the job's cancel eventfd; no extra thread.
    /// Falls back to [`WaitStrategy::Portable`] where pidfds are missing.
    #[default]
    Pidfd,
    /// Any Unix (macOS for nix-darwin hosts): a waiter thread blocks in
    /// `waitid(WNOWAIT)`, which observes the exit without reaping, so the owner
    /// can still signal the process group safely. Installs no signal handler.
    Portable,
}

/// What keeps a command's processes together so that all of them can be killed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Containment {
    /// A cgroup of its own where a writable cgroup v2 hierarchy exists, the process
    /// tree otherwise.
    #[default]
    Auto,
    /// A child cgroup of this cgroup v2 directory for every command.
    Cgroup(PathBuf),
    /// The process group and the descendants found by walking the process tree.
    ProcessTree,
}

/// Knobs of the subprocess protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessOptions {
    /// Builds: between SIGTERM to the group and SIGKILL to the group and every
    /// descendant. 5 s by default.
    pub kill_grace: Duration,
    /// Evaluations, which have nothing to shut down gracefully: the same, 100 ms by
    /// default.
    pub eval_kill_grace: Duration,
    /// How the exit of a command is awaited.
    pub wait: WaitStrategy,
    /// How a command's processes are kept together.
    pub containment: Containment,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        ProcessOptions {
            kill_grace: Duration::from_secs(5),
            eval_kill_grace: Duration::from_millis(100),
            wait: WaitStrategy::Pidfd,
            containment: Containment::Auto,
        }
    }
}

/// What a successful command printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// All of stdout (up to 64 MiB; lines past that only reach the log).
    pub stdout: String,
    /// The last lines of stderr, at most 4 KiB.
    pub stderr_tail: String,
}

/// The cancel switch shared by a job's owner and whoever cancels it. Cancelling wakes
/// a waiting [`run`] at once: through an eventfd on Linux, through a disconnected
/// channel on the portable path.
pub(crate) struct CancelToken {
    flag: AtomicBool,
    reason: Mutex<Option<CancelReason>>,
    eventfd: Option<rustix::fd::OwnedFd>,
    wake: Mutex<Option<Sender<()>>>,
    woken: Receiver<()>,
}

impl CancelToken {
    pub(crate) fn new() -> Arc<Self> {
        let (wake, woken) = crossbeam_channel::bounded(0);
        let eventfd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .ok();
        Arc::new(CancelToken {
            flag: AtomicBool::new(false),
            reason: Mutex::new(None),
            eventfd,
            wake: Mutex::new(Some(wake)),
            woken,
        })
    }

    /// The first reason given is kept; later calls only wake again.
    pub(crate) fn cancel(&self, reason: Option<CancelReason>) {
        {
            let mut current = self.reason.lock();
            if current.is_none() {
                *current = reason;
            }
        }
        self.flag.store(true, Ordering::SeqCst);
        if let Some(fd) = &self.eventfd {
            // Never read back: the fd stays readable for every later poll.
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
        self.wake.lock().take();
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    pub(crate) fn error(&self) -> JobError {
        JobError::Cancelled(self.reason.lock().clone())
    }

    fn eventfd(&self) -> Option<&rustix::fd::OwnedFd> {
        self.eventfd.as_ref()
    }

    /// Disconnects (returns at once) when the token is cancelled.
    fn woken(&self) -> &Receiver<()> {
        &self.woken
    }
}

/// The bounds a command runs within.
pub(crate) struct Limits<'a> {
    /// The job's whole timeout, for the error message.
    pub timeout: Duration,
    pub deadline: Instant,
    pub cancel: &'a CancelToken,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
    pub options: &'a ProcessOptions,
}

enum Ending {
    Exited,
    Cancelled,
    TimedOut,
}

/// Runs `cmd` under `limits`, handing every line it prints to `on_line` on this thread.
pub(crate) fn run(
    mut cmd: Command,
    limits: &Limits<'_>,
    on_line: &mut dyn FnMut(Stream, &str),
) -> Result<CommandOutput, JobError> {
    if limits.cancel.is_cancelled() {
        return Err(limits.cancel.error());
    }
    if Instant::now() >= limits.deadline {
        return Err(JobError::TimedOut(limits.timeout));
    }
    let description = describe(&cmd);
    cmd.process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child =
        cmd.spawn().map_err(|e| JobError::Failed(format!("cannot start `{description}`: {e}")))?;
    log::debug!("started `{description}` as pid {}", child.id());
    let (messages_tx, messages) = crossbeam_channel::bounded(1024);
    Readers::start(&mut child, messages_tx);
    let (exited_tx, exited) = crossbeam_channel::bounded(1);
    let (ending, status, stdout, stderr_tail) = std::thread::scope(|scope| {
        let child = &mut child;
        let waiting = scope.spawn(move || {
            let mut waiter = Waiter::new(child, limits.options.wait);
            let ending = waiter.wait(limits);
            if !matches!(ending, Ending::Exited) {
                terminate(child, &mut waiter, limits.grace);
            }
            // Leftovers of the group; the leader is a zombie at most, so the id is still ours.
            let _ = rustix::process::kill_process_group(pid_of(child), Signal::KILL);
            let status = child.wait();
            let _ = exited_tx.send(());
            (ending, status)
        });
        let (stdout, stderr_tail) = forward(&messages, &exited, on_line, &description);
        let (ending, status) = waiting.join().expect("the waiting thread does not panic");
        (ending, status, stdout, stderr_tail)
    });
    let status = status.map_err(|e| JobError::Failed(format!("cannot reap `{description}`: {e}")))?;
    match ending {
        Ending::Cancelled => Err(limits.cancel.error()),
        Ending::TimedOut => Err(JobError::TimedOut(limits.timeout)),
        Ending::Exited if status.success() => Ok(CommandOutput { stdout, stderr_tail }),
        Ending::Exited => Err(JobError::Failed(failure_message(&description, status, &stderr_tail))),
    }
}

/// Hands the readers' lines to `on_line` until both pipes closed, or until the child
/// is gone and a short grace passed; returns stdout and the stderr tail.
fn forward(
    messages: &Receiver<Message>,
    exited: &Receiver<()>,
    on_line: &mut dyn FnMut(Stream, &str),
    description: &str,
) -> (String, String) {
    let (mut stdout, mut stderr) = (None, None);
    let mut drain_deadline: Option<Instant> = None;
    while stdout.is_none() || stderr.is_none() {
        let message = match drain_deadline {
            None => select! {
                recv(messages) -> m => m.ok(),
                recv(exited) -> _ => {
                    drain_deadline = Some(Instant::now() + PIPE_DRAIN_GRACE);
                    continue;
                }
            },
            Some(deadline) => match messages.recv_deadline(deadline) {
                Ok(m) => Some(m),
                Err(_) => {
                    log::warn!(
                        "`{description}` exited but a process outside its group holds its output open"
                    );
                    None
                }
            },
        };
        match message {
            Some(Message::Line(stream, line)) => on_line(stream, &line),
            Some(Message::Done(Stream::Stdout, kept)) => stdout = Some(kept),
            Some(Message::Done(Stream::Stderr, kept)) => stderr = Some(kept),
            None => break,
        }
    }
    (stdout.unwrap_or_default(), stderr.unwrap_or_default())
}

fn failure_message(description: &str, status: ExitStatus, stderr_tail: &str) -> String {
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    };
    let tail = stderr_tail.trim_end();
    if tail.is_empty() {
        format!("`{description}` {how}")
    } else {
        format!("`{description}` {how}:\n{tail}")
    }
}

/// The command line as a person would type it, shortened to stay readable in errors.
fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:@+,%^#".contains(c)) {
            a.into_owned()
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    }));
    let line = words.join(" ");
    if line.chars().count() > 300 {
        format!("{}…", line.chars().take(300).collect::<String>())
    } else {
        line
    }
}

fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(child.id() as i32).expect("a child's pid is positive")
}

/// SIGTERM to the group, grace, SIGKILL to the group and every descendant.
fn terminate(child: &Child, waiter: &mut Waiter, grace: Duration) {
    let leader = pid_of(child);
    let mut known =
        descendants(&[leader.as_raw_nonzero().get()].into_iter().map(|p| (p, start_time(p))).collect());
    log::debug!("terminating pid {leader} and {} descendants", known.len());
    let _ = rustix::process::kill_process_group(leader, Signal::TERM);
    if waiter.wait_exit(Some(grace)) {
        // The leader is gone; its descendants may not be (setsid builders).
        known = descendants(&known).union(&known).copied().collect();
    } else {
        let mut roots = known.clone();
        roots.insert((leader.as_raw_nonzero().get(), start_time(leader.as_raw_nonzero().get())));
        known = descendants(&roots).union(&known).copied().collect();
    }
    for &(pid, started) in &known {
        if start_time(pid) == started {
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        }
    }
    let _ = rustix::process::kill_process_group(leader, Signal::KILL);
    waiter.wait_exit(None);
}

type ProcId = (i32, Option<u64>);

/// Every process below `roots` (not including them unless they are below another
/// root), with its start time so that a recycled pid is never mistaken for it.
fn descendants(roots: &HashSet<ProcId>) -> HashSet<ProcId> {
    walk(roots, has_children_lists())
}

fn walk(roots: &HashSet<ProcId>, children_lists: bool) -> HashSet<ProcId> {
    let mut found = HashSet::new();
    let mut queue: VecDeque<i32> = roots.iter().map(|&(pid, _)| pid).collect();
    // Without the kernel's children lists, one scan of /proc serves the whole walk.
    let table = if children_lists { Vec::new() } else { process_table() };
    while let Some(parent) = queue.pop_front() {
        let children: Vec<(i32, Option<u64>)> = if children_lists {
            children_of(parent).into_iter().map(|pid| (pid, start_time(pid))).collect()
        } else {
            table
                .iter()
                .filter(|&&(_, ppid, _)| ppid == parent)
                .map(|&(pid, _, started)| (pid, Some(started)))
                .collect()
        };
        for child in children {
            if child.1.is_some() && found.insert(child) {
                queue.push_back(child.0);
            }
        }
    }
    found
}

/// Whether the kernel lists each task's children (`/proc/PID/task/TID/children`,
/// CONFIG_PROC_CHILDREN): a walk then reads only the subtree, not every process.
fn has_children_lists() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| {
        let me = std::process::id();
        std::path::Path::new(&format!("/proc/{me}/task/{me}/children")).exists()
    })
}

/// The children of every thread of `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<i32>>())
        .collect()
}

/// `(pid, ppid, start time)` of every process, from /proc.
fn process_table() -> Vec<(i32, i32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|entry| {
        let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let (ppid, started) = stat_fields(pid)?;
        Some((pid, ppid, started))
    })
    .collect()
}

fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid).map(|(_, started)| started)
}

/// `(ppid, starttime)` from `/proc/PID/stat`; the command name may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn stat_fields(pid: i32) -> Option<(i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, starttime field 22.
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// Observes the child's exit without reaping it.
enum Waiter {
    Pidfd(rustix::fd::OwnedFd, bool),
    Thread(Receiver<()>, bool),
}

impl Waiter {
    fn new(child: &Child, strategy: WaitStrategy) -> Waiter {
        let pid = pid_of(child);
        if strategy == WaitStrategy::Pidfd {
            match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
                Ok(fd) => return Waiter::Pidfd(fd, false),
                Err(e) => log::debug!("pidfd_open failed ({e}); using the portable wait"),
            }
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name("genbuild-waitid".into())
            .spawn(move || {
                let options = rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOWAIT;
                while let Err(rustix::io::Errno::INTR) =
                    rustix::process::waitid(rustix::process::WaitId::Pid(pid), options)
                {}
                let _ = tx.send(());
            })
            .expect("cannot start a waiter thread");
        Waiter::Thread(rx, false)
    }

    /// Until the child exits, the job is cancelled or its deadline passes.
    fn wait(&mut self, limits: &Limits<'_>) -> Ending {
        loop {
            let now = Instant::now();
            if limits.cancel.is_cancelled() {
                return Ending::Cancelled;
            }
            if now >= limits.deadline {
                return Ending::TimedOut;
            }
            let remaining = limits.deadline - now;
            match self {
                Waiter::Pidfd(pidfd, exited) => {
                    use rustix::event::{PollFd, PollFlags};
                    let mut fds = vec![PollFd::new(pidfd, PollFlags::IN)];
                    if let Some(eventfd) = limits.cancel.eventfd() {
                        fds.push(PollFd::new(eventfd, PollFlags::IN));
                    }
                    match rustix::event::poll(&mut fds, Some(&timespec(remaining))) {
                        Ok(_) if !fds[0].revents().is_empty() => {
                            *exited = true;
                            return Ending::Exited;
                        }
                        // Cancelled, timed out or interrupted: the checks above decide.
                        _ => continue,
                    }
                }
                Waiter::Thread(rx, exited) => {
                    select! {
                        recv(rx) -> _ => {
                            *exited = true;
                            return Ending::Exited;
                        }
                        recv(limits.cancel.woken()) -> _ => continue,
                        default(remaining) => continue,
                    }
                }
            }
        }
    }

    /// Whether the child exited within `limit` (`None`: no limit).
    fn wait_exit(&mut self, limit: Option<Duration>) -> bool {
        let deadline = limit.map(|l| Instant::now() + l);
        match self {
            Waiter::Pidfd(_, true) | Waiter::Thread(_, true) => true,
            Waiter::Pidfd(pidfd, exited) => loop {
                use rustix::event::{PollFd, PollFlags};
                let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
                let timeout = deadline.map(|d| timespec(d.saturating_duration_since(Instant::now())));
                match rustix::event::poll(&mut fds, timeout.as_ref()) {
                    Ok(_) if !fds[0].revents().is_empty() => {
                        *exited = true;
                        return true;
                    }
                    Err(rustix::io::Errno::INTR) => continue,
                    _ if deadline.is_some_and(|d| Instant::now() >= d) => return false,
                    _ => continue,
                }
            },
            Waiter::Thread(rx, exited) => {
                let got = match deadline {
                    Some(d) => rx.recv_deadline(d).is_ok(),
                    None => rx.recv().is_ok(),
                };
                *exited = got;
                got
            }
        }
    }
}

fn timespec(d: Duration) -> rustix::event::Timespec {
    rustix::event::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: d.subsec_nanos() as _,
    }
}

/// What a pipe reader sends: each line, then what it kept once the pipe closed.
enum Message {
    Line(Stream, String),
    Done(Stream, String),
}

/// The two threads draining a child's pipes.
struct Readers;

impl Readers {
    fn start(child: &mut Child, messages: Sender<Message>) {
        let pipes: [(Stream, Option<Box<dyn Read + Send>>); 2] = [
            (Stream::Stdout, child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
            (Stream::Stderr, child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
        ];
        for (stream, pipe) in pipes {
            let Some(pipe) = pipe else {
                let _ = messages.send(Message::Done(stream, String::new()));
                continue;
            };
            let messages = messages.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("genbuild-{stream:?}").to_lowercase())
                .spawn(move || {
                    let kept = drain(pipe, stream, &messages);
                    let _ = messages.send(Message::Done(stream, kept));
                });
            if let Err(e) = spawned {
                log::error!("cannot start a pipe reader: {e}");
            }
        }
    }
}

/// Reads `pipe` to its end, line by line. Keeps all of stdout (bounded) and the tail
/// of stderr.
fn drain(pipe: Box<dyn Read + Send>, stream: Stream, messages: &Sender<Message>) -> String {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    let mut kept = String::new();
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut tail_bytes = 0;
    let mut forwarding = true;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        // Once the receiving side is gone, the pipe is still drained so the child
        // never blocks on a full pipe.
        forwarding = forwarding && messages.send(Message::Line(stream, text.to_string())).is_ok();
        match stream {
            Stream::Stdout if kept.len() + line.len() <= STDOUT_LIMIT => {
                kept.push_str(&String::from_utf8_lossy(&line))
            }
            Stream::Stdout => {}
            Stream::Stderr => {
                let text: String = text.chars().take(STDERR_TAIL_BYTES).collect();
                tail_bytes += text.len() + 1;
                tail.push_back(text);
                while tail_bytes > STDERR_TAIL_BYTES && tail.len() > 1 {
                    tail_bytes -= tail.pop_front().map_or(0, |l| l.len() + 1);
                }
            }
        }
    }
    if stream == Stream::Stderr {
        kept = tail.into_iter().collect::<Vec<_>>().join("\n");
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let me = std::process::id() as i32;
        let (ppid, _) = stat_fields(me).expect("own stat");
        assert_eq!(ppid, rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get()));
    }

    #[test]
    fn both_tree_walks_find_the_same_descendants() {
        let mut child =
            Command::new("sh").args(["-c", "sleep 30 & (sleep 30 & wait) & wait"]).spawn().unwrap();
        let root: HashSet<ProcId> = [(child.id() as i32, None)].into();
        let deadline = Instant::now() + Duration::from_secs(10);
        let found = loop {
            let found = walk(&root, false);
            if found.len() == 3 || Instant::now() > deadline {
                break found;
            }
        };
        assert_eq!(found.len(), 3, "below sh: its subshell and two sleeps: {found:?}");
        if has_children_lists() {
            assert_eq!(walk(&root, true), found);
        }
        for &(pid, _) in &found {
            let _ = rustix::process::kill_process(Pid::from_raw(pid).unwrap(), Signal::KILL);
        }
        let _ = child.kill();
        child.wait().unwrap();
    }

    #[test]
    fn describe_quotes_what_a_shell_would_split() {
        let mut cmd = Command::new("nix-instantiate");
        cmd.args(["--eval", "a b", "it's"]);
        assert_eq!(describe(&cmd), r"nix-instantiate --eval 'a b' 'it'\''s'");
    }

    #[test]
    fn failure_message_names_command_status_and_tail() {
        let status = ExitStatus::from_raw(1 << 8);
        assert_eq!(failure_message("false", status, "oops\n"), "`false` exited with status 1:\noops");
        assert_eq!(failure_message("x", ExitStatus::from_raw(9), ""), "`x` killed by signal 9");
    }
}
