//! File descriptors genbuild hands to its commands' children.
//!
//! A program may run with stdin, stdout or stderr closed (a daemon often does): a file
//! opened then gets fd 0, 1 or 2, which a child's stdio setup (`dup2` onto 0–2)
//! overwrites before a `pre_exec` hook or the clone's child reads it. So nothing
//! genbuild hands a child sits below fd 3.

use rustix::fd::{AsRawFd, OwnedFd};

/// `fd`, or a copy of it numbered 3 or more (close-on-exec) if it is stdin, stdout or
/// stderr.
pub(super) fn above_stdio(fd: OwnedFd) -> rustix::io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    rustix::io::fcntl_dupfd_cloexec(&fd, 3)
}
