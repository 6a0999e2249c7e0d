//! Text cut to size for a failure's message: the last lines of a stream, the head or
//! the end of a string on a character boundary, and terminal escape codes removed.

use std::borrow::Cow;
use std::collections::VecDeque;

use super::{FAILURE_BYTES, TAIL_LINE_BYTES};

/// The last lines of a stream, at most [`FAILURE_BYTES`] joined with `\n`; of a line
/// longer than [`TAIL_LINE_BYTES`], its end, so that one long line leaves room for the
/// lines before it (also in the smaller share a failure gives plain lines).
#[derive(Debug, Default)]
pub(super) struct Tail {
    lines: VecDeque<String>,
    /// Bytes of the lines plus one separator each.
    bytes: usize,
}

impl Tail {
    pub(super) fn push(&mut self, line: &str) {
        let line = last_bytes(line, TAIL_LINE_BYTES);
        self.bytes += line.len() + 1;
        self.lines.push_back(line.to_string());
        // The line just pushed always stays.
        while self.bytes > FAILURE_BYTES + 1 && self.lines.len() > 1 {
            let Some(old) = self.lines.pop_front() else { break };
            self.bytes -= old.len() + 1;
        }
    }

    pub(super) fn text(&self) -> String {
        self.lines.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }
}

/// At most `max` bytes from the start of `s`, cut on a character boundary.
pub(super) fn head(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// At most `max` bytes from the end of `s`, cut on a character boundary.
pub(super) fn last_bytes(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// At most `max` bytes from the end of `s`, whole lines when a line boundary is in it.
pub(super) fn last_lines(s: &str, max: usize) -> &str {
    let tail = last_bytes(s, max);
    if tail.len() == s.len() {
        return tail;
    }
    match tail.find('\n') {
        Some(i) if i + 1 < tail.len() => &tail[i + 1..],
        _ => tail,
    }
}

/// `text` without terminal escape sequences: CSI (`ESC [ … final`), OSC/DCS/SOS/PM/APC
/// strings (ended by BEL or `ESC \`), and other two-character escapes.
pub(crate) fn strip_ansi(text: &str) -> Cow<'_, str> {
    if !text.contains('\x1b') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.peek().copied() {
            Some('[') => {
                chars.next();
                while chars.next_if(|c| ('\x30'..='\x3f').contains(c)).is_some() {}
                while chars.next_if(|c| ('\x20'..='\x2f').contains(c)).is_some() {}
                chars.next_if(|c| ('\x40'..='\x7e').contains(c));
            }
            Some(']' | 'P' | 'X' | '^' | '_') => {
                chars.next();
                while let Some(c) = chars.next() {
                    if c == '\x07' || (c == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                        break;
                    }
                }
            }
            Some('\x20'..='\x2f') => {
                while chars.next_if(|c| ('\x20'..='\x2f').contains(c)).is_some() {}
                chars.next_if(|c| ('\x30'..='\x7e').contains(c));
            }
            Some('\x30'..='\x7e') => {
                chars.next();
            }
            _ => {}
        }
    }
    Cow::Owned(out)
}
