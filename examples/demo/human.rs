//! How values read for a person: short derivation names, durations, and text made
//! safe to print on a terminal.

use std::time::Duration;

use genbuild::proto;

/// `/nix/store/<hash>-hello-2.12.drv` → `hello-2.12`; anything else unchanged.
pub fn short_name(store_path: &str) -> &str {
    let base = store_path.rsplit('/').next().unwrap_or(store_path);
    let base = base.strip_suffix(".drv").unwrap_or(base);
    match base.split_once('-') {
        Some((hash, name)) if hash.len() == 32 && !name.is_empty() => name,
        _ => base,
    }
}

/// The first 12 characters of a commit id, as `git log --abbrev=12` shows it.
pub fn short_commit(id: &str) -> &str {
    fit(id, 12)
}

/// `0.4 s`, `12.3 s`, `2 min 05 s`, `1 h 02 min`.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..60 => format!("{:.1} s", d.as_secs_f64()),
        60..3600 => format!("{} min {:02} s", secs / 60, secs % 60),
        _ => format!("{} h {:02} min", secs / 3600, secs % 3600 / 60),
    }
}

/// `256 MiB`, `1.1 GiB`: a size in binary units.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let (mut value, mut unit) = (n as f64 / 1024.0, 0);
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match value {
        v if v >= 100.0 || v.fract() < 0.05 => format!("{v:.0} {}", UNITS[unit]),
        v => format!("{v:.1} {}", UNITS[unit]),
    }
}

/// `0:07`, `12:34`, `1:02:03`: a clock that ticks once a second.
pub fn clock(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..3600 => format!("{}:{:02}", secs / 60, secs % 60),
        _ => format!("{}:{:02}:{:02}", secs / 3600, secs % 3600 / 60, secs % 60),
    }
}

/// The time from `start` to `end`, when both are recorded and in order.
pub fn between(
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
) -> Option<Duration> {
    let (start, end) = (start?, end?);
    let nanos = |t: &prost_types::Timestamp| i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    let elapsed = u64::try_from(nanos(end) - nanos(start)).ok()?;
    Some(Duration::from_nanos(elapsed))
}

/// How long the evaluation of `g` took.
pub fn eval_time(g: &proto::Generation) -> Option<Duration> {
    between(g.eval_started_at.as_ref(), g.eval_ended_at.as_ref())
}

/// How long the build of `g` took.
pub fn build_time(g: &proto::Generation) -> Option<Duration> {
    between(g.build_started_at.as_ref(), g.build_ended_at.as_ref())
}

/// `text` without terminal escape sequences and control characters (tabs kept), so
/// that a line cannot move the cursor or recolour what follows it.
pub fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                // CSI: parameters up to a final byte (colours, cursor moves).
                Some('[') => while chars.next().is_some_and(|c| !('@'..='~').contains(&c)) {},
                // OSC (titles, hyperlinks): up to BEL or ESC \.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\x07' || (c == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                // Intermediate bytes, then a final one (`ESC ( B`).
                Some(' '..='/') => while chars.next().is_some_and(|c| (' '..='/').contains(&c)) {},
                _ => {}
            },
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A failed command's error with the command shortened to its program: in
/// ``"`nix-store --option … --realise /nix/store/…` exited with status 1:\n…"`` the
/// arguments genbuild chose are noise to a person (`--json` keeps them).
pub fn short_command(error: &str) -> String {
    let Some(rest) = error.strip_prefix('`') else { return error.to_string() };
    for outcome in ["` exited with status ", "` killed by signal "] {
        if let Some(end) = rest.find(outcome) {
            let program = rest[..end].split_whitespace().next().unwrap_or_default();
            return format!("{program}{}", &rest[end + 1..]);
        }
    }
    error.to_string()
}

/// [`plain`], line by line: newlines stay.
pub fn plain_lines(text: &str) -> String {
    text.lines().map(plain).collect::<Vec<_>>().join("\n")
}

/// The first `width` characters of `text`.
pub fn fit(text: &str, width: usize) -> &str {
    match text.char_indices().nth(width) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_drop_the_store_and_the_hash() {
        let hash = "0123456789abcdfghijklmnpqrsvwxyz";
        assert_eq!(short_name(&format!("/nix/store/{hash}-hello-2.12.drv")), "hello-2.12");
        assert_eq!(short_name(&format!("/nix/store/{hash}-nixos-system-web1")), "nixos-system-web1");
        assert_eq!(short_name("/nix/store/short-x.drv"), "short-x");
        assert_eq!(short_name("nix"), "nix");
        assert_eq!(short_name(""), "");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(Duration::from_millis(420)), "0.4 s");
        assert_eq!(duration(Duration::from_millis(59_940)), "59.9 s");
        assert_eq!(duration(Duration::from_secs(125)), "2 min 05 s");
        assert_eq!(duration(Duration::from_secs(3720)), "1 h 02 min");
        assert!(duration(Duration::MAX).ends_with(" h 00 min"), "{}", duration(Duration::MAX));
        assert_eq!(clock(Duration::from_millis(7_900)), "0:07");
        assert_eq!(clock(Duration::from_secs(754)), "12:34");
        assert_eq!(clock(Duration::from_secs(3723)), "1:02:03");
    }

    #[test]
    fn times_between_timestamps() {
        let t = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(between(Some(&t(10, 500_000_000)), Some(&t(12, 0))), Some(Duration::from_millis(1500)));
        assert_eq!(between(Some(&t(12, 0)), Some(&t(10, 0))), None);
        assert_eq!(between(None, Some(&t(10, 0))), None);
    }

    #[test]
    fn failed_commands_are_named_by_their_program() {
        let error = "`nix-instantiate --expr '{ x }:\n  x' --argstr a b` exited with status 1:\nerror: boom";
        assert_eq!(short_command(error), "nix-instantiate exited with status 1:\nerror: boom");
        assert_eq!(
            short_command("`nix-store --realise /x` killed by signal 9"),
            "nix-store killed by signal 9"
        );
        assert_eq!(short_command("cancelled: stopped"), "cancelled: stopped");
        assert_eq!(short_command("`unterminated"), "`unterminated");
    }

    #[test]
    fn plain_text_has_no_escape_codes() {
        assert_eq!(plain("\x1b[31;1merror:\x1b[0m attribute 'x' missing"), "error: attribute 'x' missing");
        assert_eq!(plain("a\tb\r\x07c\x1b(B"), "a\tbc");
        assert_eq!(plain("cut \x1b["), "cut ");
        assert_eq!(plain("\x1b]8;;http://x\x1b\\link\x1b]8;;\x07 \x1b7saved"), "link saved");
        assert_eq!(plain("é ✓"), "é ✓");
        assert_eq!(plain_lines("a\x1b[1m\r\nb\n"), "a\nb");
        assert_eq!(fit("héllo", 2), "hé");
        assert_eq!(fit("hi", 10), "hi");
    }
}
