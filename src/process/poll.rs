//! One `poll` until a deadline, with a timeout every platform accepts, and what its
//! result means to the loops that wait with it.
//!
//! Where there is no `ppoll` (macOS), rustix hands `poll(2)` its timeout in `int`
//! milliseconds and fails with EINVAL past `i32::MAX` of them (24.8 days): a deadline
//! that means "never" (a `Duration::MAX` timeout or grace) would fail at once. Every
//! wait here is a loop that checks its own deadline again after each `poll`, so a
//! longer timeout is cut to [`MAX_TIMEOUT`] and the loop simply polls once more.
//!
//! A `poll` that fails is an error for the caller to report, never a timeout; EINTR is
//! a wake-up with nothing ready.

use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fd::BorrowedFd;
use rustix::io::Errno;

/// The longest timeout handed to one `poll`: `i32::MAX` milliseconds.
pub(super) const MAX_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// What one [`poll_until`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Polled {
    /// At least one fd has events (see each one's `revents`).
    Ready,
    /// Nothing yet (a timeout cut to [`MAX_TIMEOUT`], or a signal): check and poll again.
    Again,
    /// The deadline had passed; nothing was polled.
    Passed,
}

/// Polls `fds` until one has events or `deadline` passes (`None`: no deadline).
pub(super) fn poll_until(fds: &mut [PollFd<'_>], deadline: Option<Instant>) -> Result<Polled, Errno> {
    let timeout = match deadline {
        Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Some(timeout(left)),
            _ => return Ok(Polled::Passed),
        },
        None => None,
    };
    polled(rustix::event::poll(fds, timeout.as_ref()))
}

/// Polls `fd` until it is readable (`true`) or `deadline` passes (`false`): a pidfd
/// until its process exits, a wake fd until it is woken.
pub(super) fn readable_until(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> Result<bool, Errno> {
    loop {
        let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
        match poll_until(&mut fds, deadline)? {
            Polled::Ready => return Ok(true),
            Polled::Again => {}
            Polled::Passed => return Ok(false),
        }
    }
}

/// `left` as a `poll` timeout, at most [`MAX_TIMEOUT`].
fn timeout(left: Duration) -> Timespec {
    let left = left.min(MAX_TIMEOUT);
    Timespec { tv_sec: left.as_secs() as i64, tv_nsec: left.subsec_nanos() as _ }
}

/// A `poll` result as the loops take it.
fn polled(result: Result<usize, Errno>) -> Result<Polled, Errno> {
    match result {
        Ok(0) | Err(Errno::INTR) => Ok(Polled::Again),
        Ok(_) => Ok(Polled::Ready),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How rustix turns a timeout into `poll(2)`'s `int` milliseconds where there is no
    /// `ppoll` (seconds times 1000 plus the nanoseconds rounded up), and fails past
    /// `i32::MAX`.
    fn as_poll_millis(t: &Timespec) -> Option<i32> {
        let millis = t.tv_sec.checked_mul(1000)?.checked_add((t.tv_nsec + 999_999) / 1_000_000)?;
        i32::try_from(millis).ok()
    }

    #[test]
    fn a_timeout_of_duration_max_is_cut_to_what_poll_takes_in_milliseconds() {
        for left in
            [Duration::MAX, Duration::from_secs(100 * 365 * 86400), MAX_TIMEOUT + Duration::from_nanos(1)]
        {
            let t = timeout(left);
            assert_eq!(as_poll_millis(&t), Some(i32::MAX), "{left:?}");
        }
        let second = timeout(Duration::from_millis(1500));
        assert_eq!((second.tv_sec, second.tv_nsec), (1, 500_000_000));
        assert_eq!(as_poll_millis(&timeout(Duration::from_nanos(1))), Some(1));
    }

    #[test]
    fn a_failed_poll_is_an_error_and_eintr_a_wake_up() {
        assert_eq!(polled(Err(Errno::INTR)), Ok(Polled::Again));
        assert_eq!(polled(Ok(0)), Ok(Polled::Again));
        assert_eq!(polled(Ok(2)), Ok(Polled::Ready));
        assert_eq!(polled(Err(Errno::INVAL)), Err(Errno::INVAL));
        assert_eq!(polled(Err(Errno::NOMEM)), Err(Errno::NOMEM));
    }

    #[test]
    fn a_deadline_that_passed_polls_nothing_and_none_waits_for_an_event() {
        let (read, write) = rustix::pipe::pipe().unwrap();
        let mut fds = [PollFd::new(&read, rustix::event::PollFlags::IN)];
        assert_eq!(poll_until(&mut fds, Some(Instant::now())), Ok(Polled::Passed));
        rustix::io::write(&write, b"x").unwrap();
        assert_eq!(poll_until(&mut fds, None), Ok(Polled::Ready));
        // A deadline far past what poll(2) takes at once.
        let far = Instant::now().checked_add(Duration::from_secs(100 * 365 * 86400));
        assert_eq!(poll_until(&mut fds, far), Ok(Polled::Ready));
    }
}
