//! Starting a [`Command`] born in its cgroup: a `vfork`-style clone, as glibc's
//! `posix_spawn` starts a child.
//!
//! std starts a command that must enter a cgroup before `exec` (a `pre_exec` hook)
//! with `fork`, which copies the parent's page tables; with the migration into the
//! cgroup (a write to `cgroup.procs`, which waits for an RCU grace period after a quiet
//! spell) that cost 3–6× the whole `posix_spawn`. Here the child is cloned with
//! `CLONE_VM | CLONE_VFORK | CLONE_PIDFD` on a stack of its own, all signals blocked
//! meanwhile, and on x86-64 by `clone3` with `CLONE_INTO_CGROUP`, so that it is born in
//! its cgroup. Elsewhere (or before Linux 5.7) glibc's `clone` starts it and it writes
//! to `cgroup.procs` first thing.
//!
//! The child makes only system calls, on data the parent prepared ([`Plan`]): (enter
//! the cgroup,) a process group of its own, stdin from `/dev/null` and the two pipes,
//! default handlers and the starting thread's signal mask (as std gives its children),
//! glibc's internal signals ignored (as glibc's `posix_spawn` ignores them), the
//! working directory, then `execve` along `PATH` as std would start the command (see
//! [`Plan::script_fallback`]). It writes that it ran, and which step failed, into the
//! parent's memory, read once it is gone. A child that never ran was killed as it was
//! born (Linux 6.18 does that in a cgroup that once got `cgroup.kill`, which is why
//! such a cgroup is not kept for the next command): the command is then started by std.
//!
//! Only a [`Command`] is started here: every setting it has is known and honoured.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use rustix::process::Pid;

use super::child::{reap, Child, Cloned};
use super::command::Command;
use super::fds::above_stdio;

/// Why [`clone_into_cgroup`] did not start the command.
#[derive(Debug)]
pub(super) enum CloneError {
    /// The child could not enter the cgroup; nothing ran.
    Enter(io::Error),
    /// The command cannot start at all (not found, not executable, bad directory…).
    Start(io::Error),
    /// This kernel needs std's way; nothing ran.
    Unsupported(String),
}

/// Where the child is to go.
#[derive(Clone, Copy)]
pub(super) struct Target<'c> {
    /// The cgroup's directory, for `clone3(CLONE_INTO_CGROUP)`.
    pub(super) dir: BorrowedFd<'c>,
    /// Its `cgroup.procs` (numbered 3 or more), for a child that enters after the clone.
    pub(super) procs: BorrowedFd<'c>,
}

/// Starts `cmd` in the cgroup `target`, in a process group of its own, stdin from
/// `/dev/null`, stdout and stderr into pipes.
pub(super) fn clone_into_cgroup(
    cmd: &Command,
    target: Target<'_>,
    nice: Option<i32>,
) -> Result<Child, CloneError> {
    let mut plan = Plan::new(cmd).map_err(CloneError::Start)?;
    plan.nice = nice;
    plan.start(target)
}

/// Everything the child needs, prepared by the parent: the child only reads it (and
/// patches the shell's argument vector) and makes system calls.
struct Plan {
    /// Where the program may be, tried in order as `execvp` tries them.
    candidates: Vec<CString>,
    /// Owners of what `argv` and `envp` point to.
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: Option<CString>,
    /// Whether a candidate that is not an executable format (`ENOEXEC`: a script
    /// without `#!`) is run by `/bin/sh`: see [`Plan::script_fallback`].
    script_fallback: bool,
    /// `/bin/sh`, the candidate (set by the child), then the arguments: what a script
    /// without `#!` is run with.
    sh_argv: Vec<*const libc::c_char>,
    /// The nice value to take, if any.
    nice: Option<i32>,
}

const SHELL: &std::ffi::CStr = c"/bin/sh";

impl Plan {
    fn new(cmd: &Command) -> io::Result<Plan> {
        let program = cmd.get_program();
        if program.is_empty() {
            // As `execvp`: an empty name names no file.
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        let env = cmd.environment();
        let cwd = cmd.get_current_dir().map(|dir| c_string(dir.as_os_str().to_owned())).transpose()?;
        let candidates = candidates(program, env.get(OsStr::new("PATH")))
            .into_iter()
            .map(|path| c_string(path.into_os_string()))
            .collect::<io::Result<_>>()?;
        let args = std::iter::once(program).chain(cmd.get_args());
        let args: Vec<CString> = args.map(|a| c_string(a.to_owned())).collect::<io::Result<_>>()?;
        let vars: Vec<CString> = env
            .into_iter()
            .map(|(mut key, value)| {
                key.push("=");
                key.push(value);
                c_string(key)
            })
            .collect::<io::Result<_>>()?;
        let pointers = |strings: &[CString]| -> Vec<*const libc::c_char> {
            strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
        };
        let (argv, envp) = (pointers(&args), pointers(&vars));
        let mut sh_argv = vec![SHELL.as_ptr(), std::ptr::null()];
        sh_argv.extend_from_slice(&argv[1..]);
        Ok(Plan {
            candidates,
            _strings: args.into_iter().chain(vars).collect(),
            argv,
            envp,
            cwd,
            script_fallback: Plan::script_fallback(cmd),
            sh_argv,
            nice: None,
        })
    }

    /// Whether std would start `cmd` with `execvp` (after a `fork`), which runs a file
    /// that is not an executable format with `/bin/sh`, rather than with
    /// `posix_spawnp`, which does not: std takes `execvp` for a program looked up along
    /// `PATH` when the command sets its own `PATH` (or clears the environment).
    fn script_fallback(cmd: &Command) -> bool {
        let looked_up = !cmd.get_program().as_bytes().contains(&b'/');
        let own_path = cmd.get_env_clear() || cmd.get_envs().any(|(key, _)| key == "PATH");
        looked_up && own_path
    }

    fn start(&self, target: Target<'_>) -> Result<Child, CloneError> {
        let start = |e: rustix::io::Errno| CloneError::Start(e.into());
        let null = rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(start)?;
        let (out_r, out_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(start)?;
        let (err_r, err_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(start)?;
        // Sources above 0–2, so that no `dup2` in the child overwrites one still to copy.
        let [null, out_w, err_w] = [null, out_w, err_w].map(above_stdio);
        let (null, out_w, err_w) = (null.map_err(start)?, out_w.map_err(start)?, err_w.map_err(start)?);
        let mut sh_argv = self.sh_argv.clone();
        let mut child = ChildData {
            plan: self,
            sh_argv: &mut sh_argv,
            procs: -1,
            stdio: [null.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()],
            // SAFETY: a plain C struct, filled before the child reads it.
            mask: unsafe { std::mem::zeroed() },
            alive: false,
            failed: None,
        };
        let (pid, pidfd) = clone(&mut child, target)?;
        drop((null, out_w, err_w));
        let failed = |e: CloneError| {
            // The child has exited: reap it, nothing else of it exists.
            let _ = reap(pid);
            Err(e)
        };
        let started = |pidfd| {
            Ok(Child::Cloned(Cloned { pid, pidfd: Some(pidfd), stdout: Some(out_r), stderr: Some(err_r) }))
        };
        match child.failed {
            None if child.alive => started(pidfd),
            None if killed_at_birth(&pidfd) => failed(CloneError::Unsupported(
                "the child was killed as it was cloned into the cgroup".into(),
            )),
            // It ran, in a copy of our memory: valgrind makes CLONE_VM a fork. Whatever
            // it does, its exit status will tell.
            None => started(pidfd),
            Some((step, errno)) => {
                let e = io::Error::from_raw_os_error(errno);
                let with = |what: &str| io::Error::new(e.kind(), format!("{what}: {e}"));
                failed(match step {
                    Step::Enter => CloneError::Enter(e),
                    Step::Group => CloneError::Start(with("cannot make it a process group")),
                    Step::Nice => CloneError::Start(with("cannot set its nice value")),
                    Step::Stdio => CloneError::Start(with("cannot give it its stdin, stdout and stderr")),
                    Step::Cwd => CloneError::Start(with("cannot enter its working directory")),
                    Step::Exec => CloneError::Start(e),
                })
            }
        }
    }
}

/// Whether the child that did not say it ran was killed before its first instruction
/// (Linux 6.18 kills a child cloned into a cgroup that once got `cgroup.kill`): then it
/// is dead of SIGKILL within moments.
fn killed_at_birth(pidfd: &OwnedFd) -> bool {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    let deadline = super::deadline_after(Duration::from_millis(20));
    if !matches!(super::poll::readable_until(pidfd.as_fd(), deadline), Ok(true)) {
        return false;
    }
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG;
    let status = waitid(WaitId::PidFd(pidfd.as_fd()), options).ok().flatten();
    status.is_some_and(|s| s.terminating_signal() == Some(libc::SIGKILL))
}

fn c_string(s: OsString) -> io::Result<CString> {
    CString::new(s.into_vec())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte found in provided data"))
}

/// Where `program` may be: itself if it names a path, else that name in each directory
/// of `path` (the command's own `PATH`; `/bin:/usr/bin` without one), an empty entry
/// being the working directory.
fn candidates(program: &OsStr, path: Option<&OsString>) -> Vec<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return vec![program.into()];
    }
    let path = path.map_or(OsStr::new("/bin:/usr/bin"), OsString::as_os_str);
    let dirs = path.as_bytes().split(|&b| b == b':');
    dirs.map(|dir| {
        if dir.is_empty() { Path::new(".") } else { Path::new(OsStr::from_bytes(dir)) }.join(program)
    })
    .collect()
}

/// The steps of the child, for what it reports when one fails.
#[derive(Debug, Clone, Copy)]
enum Step {
    Enter,
    Group,
    Nice,
    Stdio,
    Cwd,
    Exec,
}

/// What the child reads, and where it writes that it ran and which step failed: the
/// parent's memory, which the child shares until it calls `execve` or exits.
struct ChildData<'p> {
    plan: &'p Plan,
    /// A copy of the plan's `sh_argv` whose second entry the child sets.
    sh_argv: &'p mut [*const libc::c_char],
    /// `cgroup.procs` to write "0" to, or -1 when the child is born in its cgroup.
    procs: libc::c_int,
    stdio: [libc::c_int; 3],
    /// The starting thread's signal mask, for the command (std's spawn keeps it too).
    mask: libc::sigset_t,
    alive: bool,
    failed: Option<(Step, i32)>,
}

/// `struct clone_args` of `clone3(2)`, up to `cgroup` (Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
const STACK: usize = 64 << 10;

/// Clones the child (it runs [`child_entry`] on a stack of its own in our memory while
/// this thread waits until it called `execve` or exited; nothing is copied), with a
/// pidfd, all signals blocked in this thread meanwhile so that none is handled in the
/// child before it reset its handlers.
fn clone(child: &mut ChildData<'_>, target: Target<'_>) -> Result<(Pid, OwnedFd), CloneError> {
    let stack = Stack::take().map_err(|e| CloneError::Start(e.into()))?;
    // SAFETY: the stack is this clone's alone until it is given back, after the child
    // left it (it called execve or exited).
    let result = unsafe { clone_on(child, target, stack.bottom, STACK) };
    stack.give_back();
    result
}

/// A child's stack: [`STACK`] bytes above a guard page, mapped once and kept for the
/// next clone (mapping and unmapping one per command took the address space's lock
/// each time, while the child, sharing it, needed it too).
struct Stack {
    bottom: *mut u8,
}

// SAFETY: a stack is handed from thread to thread whole, never shared.
unsafe impl Send for Stack {}

/// The stacks not in use: one per thread that cloned at the same time, at most.
static STACKS: parking_lot::Mutex<Vec<Stack>> = parking_lot::Mutex::new(Vec::new());

impl Stack {
    fn take() -> rustix::io::Result<Stack> {
        if let Some(stack) = STACKS.lock().pop() {
            return Ok(stack);
        }
        let page = page_size();
        // SAFETY: a fresh private mapping, never unmapped: it is kept for the next clone.
        unsafe {
            let map = rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                STACK + page,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )?;
            if let Err(e) = rustix::mm::mprotect(map, page, rustix::mm::MprotectFlags::empty()) {
                let _ = rustix::mm::munmap(map, STACK + page);
                return Err(e);
            }
            Ok(Stack { bottom: map.cast::<u8>().add(page) })
        }
    }

    fn give_back(self) {
        STACKS.lock().push(self);
    }
}

/// # Safety
/// `stack` is `size` writable bytes nothing else uses, 16-byte aligned at its top;
/// `target`'s fds stay open until this returns.
unsafe fn clone_on(
    child: &mut ChildData<'_>,
    target: Target<'_>,
    stack: *mut u8,
    size: usize,
) -> Result<(Pid, OwnedFd), CloneError> {
    let mut all: libc::sigset_t = std::mem::zeroed();
    libc::sigfillset(&mut all);
    libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut child.mask);
    let mut pidfd: libc::c_int = -1;
    #[cfg(test)]
    let mut pid = match tests::WITHOUT_CLONE3.with(std::cell::Cell::get) {
        true => {
            *libc::__errno_location() = libc::ENOSYS;
            -1
        }
        false => clone3_into_cgroup(child, target.dir, stack, size, &mut pidfd),
    };
    #[cfg(not(test))]
    let mut pid = clone3_into_cgroup(child, target.dir, stack, size, &mut pidfd);
    let mut errno = io::Error::last_os_error();
    if pid < 0
        && matches!(errno.raw_os_error(), Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL | libc::EPERM))
    {
        // Before Linux 5.7 (or a seccomp filter refusing clone3): enter after the clone.
        child.procs = target.procs.as_raw_fd();
        let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD;
        let data = (child as *mut ChildData<'_>).cast();
        pid = libc::clone(child_entry, stack.add(size).cast(), flags, data, &mut pidfd as *mut libc::c_int)
            as i64;
        errno = io::Error::last_os_error();
    }
    libc::pthread_sigmask(libc::SIG_SETMASK, &child.mask, std::ptr::null_mut());
    match Pid::from_raw(pid as i32) {
        // SAFETY: the kernel gave this fd to this call alone.
        Some(pid) => Ok((pid, OwnedFd::from_raw_fd(pidfd))),
        // CLONE_PIDFD is Linux 5.2; a seccomp filter may refuse clone's flags.
        None if matches!(errno.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS | libc::EPERM)) => {
            Err(CloneError::Unsupported(format!("clone(CLONE_VFORK | CLONE_PIDFD) failed: {errno}")))
        }
        None if matches!(errno.raw_os_error(), Some(libc::EAGAIN | libc::ENOMEM)) => {
            Err(CloneError::Start(errno))
        }
        // The cgroup refused the child (removed, or in a state that takes no process).
        None => Err(CloneError::Enter(errno)),
    }
}

/// `clone3` with `CLONE_INTO_CGROUP` and the flags of [`clone`]; the child's first
/// instructions, on its new stack, are the few below (`clone3` has no libc wrapper to
/// run them). Returns the pid, or -1 with errno set.
///
/// # Safety
/// As [`clone_on`]; `child` and what it points to outlive the child's use of them
/// (this thread is suspended until then).
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_into_cgroup(
    child: &mut ChildData<'_>,
    cgroup: BorrowedFd<'_>,
    stack: *mut u8,
    size: usize,
    pidfd: &mut libc::c_int,
) -> i64 {
    let args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD) as u64 | CLONE_INTO_CGROUP,
        pidfd: pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack as u64,
        stack_size: size as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    let ret: i64;
    // SAFETY (the asm): the child starts at the instruction after `syscall` with rax 0
    // and the stack pointer at the top of its stack (aligned, as the call needs), and
    // never comes back: child_entry ends in execve or _exit. This thread does not touch
    // the stack.
    std::arch::asm!(
        "syscall",
        "test rax, rax",
        "jnz 2f",
        "xor ebp, ebp",
        "mov rdi, r13",
        "call r12",
        "ud2",
        "2:",
        inlateout("rax") libc::SYS_clone3 => ret,
        in("rdi") &args as *const CloneArgs,
        in("rsi") size_of::<CloneArgs>(),
        in("r12") child_entry as extern "C" fn(*mut libc::c_void) -> libc::c_int,
        in("r13") child as *mut ChildData<'_>,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    if ret < 0 {
        *libc::__errno_location() = -ret as i32;
        return -1;
    }
    ret
}

/// Elsewhere the asm above is not written: as a kernel without `clone3`.
///
/// # Safety
/// None needed; `unsafe` to match the x86-64 version.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3_into_cgroup(
    _: &mut ChildData<'_>,
    _: BorrowedFd<'_>,
    _: *mut u8,
    _: usize,
    _: &mut libc::c_int,
) -> i64 {
    *libc::__errno_location() = libc::ENOSYS;
    -1
}

/// Not rustix's page_size: it reads the auxiliary vector, which valgrind fakes.
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// The child, between the clone and `execve`: system calls only, no allocation, no
/// lock.
extern "C" fn child_entry(data: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `data` is the parent's `ChildData`, alive and untouched while the parent
    // is suspended; every call below is async-signal-safe.
    unsafe {
        let data = &mut *data.cast::<ChildData<'_>>();
        data.alive = true;
        let fail = |data: &mut ChildData<'_>, step| -> ! {
            data.failed = Some((step, *libc::__errno_location()));
            libc::_exit(127)
        };
        if data.procs >= 0 && libc::write(data.procs, b"0".as_ptr().cast(), 1) != 1 {
            fail(data, Step::Enter);
        }
        if libc::setpgid(0, 0) != 0 {
            fail(data, Step::Group);
        }
        if let Some(nice) = data.plan.nice {
            if libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0 {
                fail(data, Step::Nice);
            }
        }
        for (target, source) in data.stdio.into_iter().enumerate() {
            if libc::dup2(source, target as libc::c_int) < 0 {
                fail(data, Step::Stdio);
            }
        }
        default_signals(&data.mask);
        let plan = data.plan;
        if let Some(cwd) = &plan.cwd {
            if libc::chdir(cwd.as_ptr()) != 0 {
                fail(data, Step::Cwd);
            }
        }
        // As `execvp`: on to the next candidate past one that is not there or not
        // executable; EACCES is what is reported if no candidate runs.
        let mut denied = false;
        for path in &plan.candidates {
            libc::execve(path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
            if *libc::__errno_location() == libc::ENOEXEC && plan.script_fallback {
                data.sh_argv[1] = path.as_ptr();
                libc::execve(SHELL.as_ptr(), data.sh_argv.as_ptr(), plan.envp.as_ptr());
            }
            match *libc::__errno_location() {
                libc::EACCES => denied = true,
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => fail(data, Step::Exec),
            }
        }
        if denied {
            *libc::__errno_location() = libc::EACCES;
        }
        fail(data, Step::Exec)
    }
}

/// glibc's internal signals (SIGCANCEL and SIGSETXID, the first two real-time
/// signals), whose handlers its `sigaction` does not let anyone change.
const GLIBC_INTERNAL_SIGNALS: [libc::c_int; 2] = [32, 33];

/// The child's signals as std sets them for its children: handlers back to the default
/// (ignored signals stay ignored, except SIGPIPE, which Rust programs ignore), glibc's
/// internal signals ignored (their handlers would run on the parent's thread state; as
/// glibc's own `posix_spawn` does up to 2.36, so that the command starts with them
/// ignored, as there), and the mask of the thread that started it.
///
/// # Safety
/// Only in the child, before `execve`.
unsafe fn default_signals(mask: &libc::sigset_t) {
    let mut default: libc::sigaction = std::mem::zeroed();
    default.sa_sigaction = libc::SIG_DFL;
    for signal in 1..=64 {
        if GLIBC_INTERNAL_SIGNALS.contains(&signal) {
            ignore_internal(signal);
            continue;
        }
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(signal, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction != libc::SIG_DFL
            && (current.sa_sigaction != libc::SIG_IGN || signal == libc::SIGPIPE)
        {
            libc::sigaction(signal, &default, std::ptr::null_mut());
        }
    }
    libc::sigprocmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
}

/// `struct sigaction` as the kernel's `rt_sigaction` takes it on x86-64 and aarch64.
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// Sets `signal`'s disposition to ignored by the system call itself: glibc's
/// `sigaction` refuses its internal signals.
///
/// # Safety
/// Only in the child, before `execve`.
unsafe fn ignore_internal(signal: libc::c_int) {
    let ignore = KernelSigaction { handler: libc::SIG_IGN, flags: 0, restorer: 0, mask: 0 };
    libc::syscall(
        libc::SYS_rt_sigaction,
        signal,
        &ignore as *const KernelSigaction,
        std::ptr::null_mut::<KernelSigaction>(),
        size_of::<u64>(),
    );
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::process::cgroup::{tests::fresh_cgroup, Cgroup};
    use std::io::Read;
    use std::process::ExitStatus;

    thread_local! {
        /// Set: clones on this thread behave as on a kernel without `clone3` (before
        /// Linux 5.3) or an architecture without the asm: the child enters its cgroup
        /// by writing to `cgroup.procs`.
        pub(in crate::process) static WITHOUT_CLONE3: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn programs_are_looked_for_as_execvp_looks_for_them() {
        let path = |s: &str| Some(OsString::from(s));
        assert_eq!(
            candidates(OsStr::new("tool"), path("/a::b").as_ref()),
            [Path::new("/a/tool"), Path::new("./tool"), Path::new("b/tool")]
        );
        assert_eq!(candidates(OsStr::new("sh"), None), [Path::new("/bin/sh"), Path::new("/usr/bin/sh")]);
        assert_eq!(candidates(OsStr::new("./x"), path("/a").as_ref()), [Path::new("./x")]);
    }

    #[test]
    fn scripts_fall_back_to_the_shell_where_std_uses_execvp() {
        let mut cmd = Command::new("tool");
        assert!(!Plan::script_fallback(&cmd), "inherited PATH: std uses posix_spawnp");
        cmd.env("PATH", "/bin");
        assert!(Plan::script_fallback(&cmd));
        assert!(!Plan::script_fallback(Command::new("./tool").env("PATH", "/bin")));
        assert!(Plan::script_fallback(Command::new("tool").env_clear()));
        assert_eq!(
            Plan::new(&Command::new("")).err().map(|e| e.kind()),
            Some(io::ErrorKind::NotFound),
            "an empty program name is not found, as std says"
        );
    }

    /// `cmd` started by [`clone_into_cgroup`] in `cgroup`: its stdout and status.
    fn run_in(cgroup: &Cgroup, cmd: &Command) -> Result<(String, ExitStatus), CloneError> {
        let mut child = clone_into_cgroup(cmd, cgroup.target(), None)?;
        let [stdout, _] = child.take_output();
        let mut out = String::new();
        std::fs::File::from(stdout.unwrap()).read_to_string(&mut out).unwrap();
        let status = child.wait().unwrap();
        Ok((out, status))
    }

    /// Born in the cgroup by `clone3`, or entering it after glibc's `clone`: either way
    /// the command runs in it, with this thread's signal mask and glibc's internal
    /// signals ignored, and an exec that fails is reported as std reports it.
    #[test]
    fn the_child_starts_in_its_cgroup_with_the_threads_signal_mask_either_way() {
        for without_clone3 in [false, true] {
            WITHOUT_CLONE3.with(|w| w.set(without_clone3));
            let Some(cgroup) = fresh_cgroup() else { return };
            let (out, status) = run_in(&cgroup, Command::new("cat").arg("/proc/self/status")).unwrap();
            assert!(status.success());
            assert!(out.contains("SigBlk:\t0000000000000000"), "{out}");
            // What a command finds ignored among the standard signals is what std's
            // posix_spawn leaves ignored; glibc's internal signals (32 and 33) were
            // ignored in the child before its exec, and stay so.
            let by_std = std::process::Command::new("cat").arg("/proc/self/status").output().unwrap();
            let ignored = |out: &str| {
                let mask = out.lines().find_map(|l| l.strip_prefix("SigIgn:\t")).unwrap();
                u64::from_str_radix(mask.trim(), 16).unwrap()
            };
            let (ours, std) = (ignored(&out), ignored(&String::from_utf8_lossy(&by_std.stdout)));
            assert_eq!(ours & 0x7fff_ffff, std & 0x7fff_ffff, "{ours:x} {std:x}");
            assert_eq!(ours & (3 << 31), 3 << 31, "glibc's internal signals are not ignored: {ours:x}");
            let (out, _) = run_in(&cgroup, Command::new("cat").arg("/proc/self/cgroup")).unwrap();
            let name = cgroup.dir().file_name().unwrap().to_string_lossy().into_owned();
            assert!(out.lines().any(|l| l.starts_with("0::") && l.ends_with(&name)), "{out}");
            let missing = run_in(&cgroup, &Command::new("/nonexistent/program"));
            assert!(
                matches!(&missing, Err(CloneError::Start(e)) if e.kind() == io::ErrorKind::NotFound),
                "{missing:?}"
            );
            WITHOUT_CLONE3.with(|w| w.set(false));
            cgroup.remove().unwrap();
        }
    }

    /// Linux 6.18 kills a child cloned into a cgroup that once got `cgroup.kill` before
    /// its first instruction: that is reported as a reason to start the command the std
    /// way (which enters by writing to `cgroup.procs`, where nothing is killed), not as
    /// the command's failure; elsewhere the command simply runs.
    #[test]
    fn a_child_killed_as_it_is_born_sends_the_command_the_std_way() {
        let Some(cgroup) = fresh_cgroup() else { return };
        cgroup.kill().unwrap();
        match run_in(&cgroup, Command::new("echo").arg("ran")) {
            Ok((out, status)) => {
                eprintln!("this kernel lets a child be born in a cgroup once killed");
                assert!(status.success() && out == "ran\n", "{status:?} {out:?}");
            }
            Err(CloneError::Unsupported(why)) => assert!(why.contains("killed as it was cloned"), "{why}"),
            Err(e) => panic!("{e:?}"),
        }
        assert!(!cgroup.reusable(), "a cgroup that got cgroup.kill is not kept");
        cgroup.remove().unwrap();
    }
}
