//! A file descriptor that becomes readable once woken and stays so: how another thread
//! interrupts a `poll` (the job's cancel switch; the portable path's exit observer).
//!
//! An eventfd on Linux, a pipe elsewhere. It is never read back, so every later `poll`
//! sees it ready at once; and it owns both ends, so a late wake never writes into a
//! closed pipe (SIGPIPE would kill an embedding program that does not ignore it).

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};

pub(super) struct Wake {
    read: OwnedFd,
    #[cfg(not(target_os = "linux"))]
    write: OwnedFd,
}

impl Wake {
    #[cfg(target_os = "linux")]
    pub(super) fn new() -> std::io::Result<Wake> {
        use rustix::event::{eventfd, EventfdFlags};
        Ok(Wake { read: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)? })
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn new() -> std::io::Result<Wake> {
        let (read, write) = rustix::pipe::pipe()?;
        for fd in [&read, &write] {
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)?;
            rustix::io::ioctl_fionbio(fd, true)?;
        }
        Ok(Wake { read, write })
    }

    /// Makes [`fd`](Wake::fd) readable, for good.
    pub(super) fn wake(&self) {
        #[cfg(target_os = "linux")]
        let (fd, bytes) = (&self.read, 1u64.to_ne_bytes());
        #[cfg(not(target_os = "linux"))]
        let (fd, bytes) = (&self.write, [1u8]);
        // Full (EAGAIN) means already readable.
        let _ = rustix::io::write(fd, &bytes);
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}
