//! A command's stdout and stderr, read by the job's own thread and cut into lines with
//! memory bounded in bytes, whatever the command prints.
//!
//! * A line ends at `\n`, `\r` or `\r\n`: progress bars redraw with `\r`, and each
//!   redraw is a line of its own for the log.
//! * A line longer than [`MAX_LINE`] (64 KiB) is handed out in pieces of at most that
//!   many bytes, cut on a UTF-8 character boundary: every byte reaches the log, and a
//!   256 MiB line without a newline costs 64 KiB, not 256 MiB.
//! * Stdout is also kept as printed, up to 64 MiB (what the executors parse); the bytes
//!   past that only reach the log.
//! * Of stderr, the last lines are kept for the error of a failing command, at most
//!   [`STDERR_TAIL_BYTES`] in all, a longer line cut to its beginning on a character
//!   boundary.

use std::collections::VecDeque;
use std::os::unix::fs::MetadataExt;

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};

use super::Stream;

/// How much of a failing command's stderr ends up in its error message.
pub(super) const STDERR_TAIL_BYTES: usize = 4096;
/// The longest line handed out whole.
pub(crate) const MAX_LINE: usize = 64 << 10;
const STDOUT_LIMIT: usize = 64 << 20;

/// One of the command's output pipes, our reading end.
pub(super) struct Pipe {
    pub(super) stream: Stream,
    fd: OwnedFd,
    lines: Lines,
}

impl Pipe {
    pub(super) fn new(stream: Stream, fd: impl Into<OwnedFd>) -> Pipe {
        Pipe { stream, fd: fd.into(), lines: Lines::default() }
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The pipe's inode, shared by both ends: how a holder of the other end is found.
    pub(super) fn inode(&self) -> Option<u64> {
        let file = std::fs::File::from(self.fd.try_clone().ok()?);
        file.metadata().ok().map(|m| m.ino())
    }

    /// One read (the pipe polled readable, so it does not block); `false` once the pipe
    /// is at its end, after the last line without a line end was handed out.
    pub(super) fn read(&mut self, buf: &mut [u8], output: &mut Output<'_>) -> bool {
        let n = loop {
            match rustix::io::read(&self.fd, &mut *buf) {
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => return true,
                Ok(n) => break n,
                Err(e) => {
                    log::debug!("reading the command's {:?}: {e}", self.stream);
                    break 0;
                }
            }
        };
        let stream = self.stream;
        if n == 0 {
            self.lines.finish(&mut |line| output.line(stream, line));
            return false;
        }
        output.bytes(stream, &buf[..n]);
        self.lines.push(&buf[..n], &mut |line| output.line(stream, line));
        true
    }

    /// The pipe was given up on: what is buffered is handed out as a last line.
    pub(super) fn close(mut self, output: &mut Output<'_>) {
        let stream = self.stream;
        self.lines.finish(&mut |line| output.line(stream, line));
    }
}

/// Where a command's output goes: each line to the caller, stdout kept, stderr's tail
/// kept.
pub(super) struct Output<'a> {
    on_line: &'a mut dyn FnMut(Stream, &str),
    stdout: Vec<u8>,
    stdout_dropped: u64,
    tail: Tail,
}

impl<'a> Output<'a> {
    pub(super) fn new(on_line: &'a mut dyn FnMut(Stream, &str)) -> Self {
        Output { on_line, stdout: Vec::new(), stdout_dropped: 0, tail: Tail::default() }
    }

    fn bytes(&mut self, stream: Stream, bytes: &[u8]) {
        if stream == Stream::Stdout {
            let room = STDOUT_LIMIT - self.stdout.len();
            let kept = bytes.len().min(room);
            self.stdout.extend_from_slice(&bytes[..kept]);
            self.stdout_dropped += (bytes.len() - kept) as u64;
        }
    }

    fn line(&mut self, stream: Stream, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        if stream == Stream::Stderr {
            self.tail.push(&text);
        }
        (self.on_line)(stream, &text);
    }

    /// The stdout kept and the stderr tail.
    pub(super) fn finish(&mut self, description: &str) -> (String, String) {
        if self.stdout_dropped > 0 {
            log::warn!(
                "`{description}` printed {} bytes of stdout past the {STDOUT_LIMIT} kept; they only reached the log",
                self.stdout_dropped
            );
        }
        let stdout = String::from_utf8(std::mem::take(&mut self.stdout))
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        (stdout, std::mem::take(&mut self.tail).text())
    }
}

/// Cuts a byte stream into lines of at most [`MAX_LINE`] bytes.
#[derive(Default)]
struct Lines {
    /// The line so far, never longer than `MAX_LINE`.
    partial: Vec<u8>,
    /// The last byte was `\r`: a `\n` right after it ends nothing more.
    after_cr: bool,
}

impl Lines {
    fn push(&mut self, mut data: &[u8], emit: &mut dyn FnMut(&[u8])) {
        while !data.is_empty() {
            if std::mem::take(&mut self.after_cr) && data[0] == b'\n' {
                data = &data[1..];
                continue;
            }
            let room = MAX_LINE - self.partial.len();
            // A line end right after a full line still ends that line.
            let window = &data[..data.len().min(room + 1)];
            if let Some(end) = window.iter().position(|&b| b == b'\n' || b == b'\r') {
                if self.partial.is_empty() {
                    emit(&window[..end]);
                } else {
                    self.partial.extend_from_slice(&window[..end]);
                    emit(&self.partial);
                    self.partial.clear();
                }
                self.after_cr = window[end] == b'\r';
                data = &data[end + 1..];
                continue;
            }
            let taken = data.len().min(room);
            self.partial.extend_from_slice(&data[..taken]);
            data = &data[taken..];
            if !data.is_empty() {
                // Full, and the line goes on.
                self.cut(emit);
            }
        }
    }

    /// Hands out the full partial line, keeping an incomplete UTF-8 character at its
    /// end for the next piece.
    fn cut(&mut self, emit: &mut dyn FnMut(&[u8])) {
        let keep = incomplete_char_len(&self.partial);
        let at = self.partial.len() - keep;
        emit(&self.partial[..at]);
        self.partial.drain(..at);
    }

    fn finish(&mut self, emit: &mut dyn FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit(&self.partial);
            self.partial.clear();
        }
    }
}

/// How many bytes at the end of `bytes` begin a UTF-8 character that is not complete.
fn incomplete_char_len(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - back];
        if b & 0xC0 == 0x80 {
            continue;
        }
        let len = match b {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if len > back { back } else { 0 };
    }
    0
}

/// The last lines of stderr, at most [`STDERR_TAIL_BYTES`] joined with `\n`.
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    /// Bytes of the lines plus one separator each.
    bytes: usize,
}

impl Tail {
    fn push(&mut self, line: &str) {
        let line = &line[..floor_char_boundary(line, STDERR_TAIL_BYTES)];
        self.bytes += line.len() + 1;
        self.lines.push_back(line.to_string());
        while self.bytes > STDERR_TAIL_BYTES + 1 {
            self.bytes -= self.lines.pop_front().map_or(0, |l| l.len() + 1);
        }
    }

    fn text(self) -> String {
        self.lines.into_iter().collect::<Vec<_>>().join("\n")
    }
}

/// The largest index ≤ `max` that is a character boundary of `s`.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    (0..=max).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        for chunk in chunks {
            lines.push(chunk, &mut |l| out.push(l.to_vec()));
        }
        lines.finish(&mut |l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn newline_carriage_return_and_both_end_a_line() {
        let got = lines_of(&[b"a\nb\rc\r", b"\nd\n\ne"]);
        assert_eq!(got, [&b"a"[..], b"b", b"c", b"d", b"", b"e"]);
    }

    #[test]
    fn a_long_line_comes_in_pieces_that_keep_every_byte() {
        let line = vec![b'x'; MAX_LINE * 2 + 10];
        let got = lines_of(&[&line[..1000], &line[1000..], b"\nnext\n"]);
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [MAX_LINE, MAX_LINE, 10, 4]);
        // Exactly full, then its line end: no empty piece.
        let got = lines_of(&[&line[..MAX_LINE], b"\n"]);
        assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [MAX_LINE]);
    }

    #[test]
    fn a_piece_never_splits_a_character() {
        // One byte short of the cut, then a 4-byte character straddling it.
        let mut line = vec![b'a'; MAX_LINE - 1];
        line.extend("𝄞".repeat(3).as_bytes());
        let got = lines_of(&[&line]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), MAX_LINE - 1);
        assert!(std::str::from_utf8(&got[1]).is_ok(), "{:?}", &got[1][..4]);
        assert_eq!(incomplete_char_len("a€".as_bytes()), 0);
        assert_eq!(incomplete_char_len(&"a€".as_bytes()[..2]), 1);
        assert_eq!(incomplete_char_len(&"a𝄞".as_bytes()[..4]), 3);
    }

    #[test]
    fn the_tail_is_bounded_in_bytes_on_a_character_boundary() {
        let mut tail = Tail::default();
        tail.push(&"𝄞".repeat(4000));
        let text = tail.text();
        assert!(text.len() <= STDERR_TAIL_BYTES && text.len() > STDERR_TAIL_BYTES - 4, "{}", text.len());
        let mut tail = Tail::default();
        for i in 0..2000 {
            tail.push(&format!("€€€ line {i}"));
        }
        let text = tail.text();
        assert!(text.len() <= STDERR_TAIL_BYTES, "{}", text.len());
        assert!(text.ends_with("€€€ line 1999"));
    }
}
