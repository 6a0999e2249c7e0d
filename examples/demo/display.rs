//! What a person sees while the builder works, made from the builder's events:
//! a line per lifecycle step, every log line prefixed by the short name of the
//! derivation that printed it, and the build's progress.
//!
//! On a terminal the progress is one status line at the bottom, rewritten in place
//! (`\r` and clear-line) with the elapsed time of the step; everything else scrolls
//! above it. Elsewhere (a pipe, a file, CI) there is no status line: a progress line
//! is printed each time the progress changes. Time is passed in, so the tests drive
//! it with synthetic events and instants.

use std::io::{self, Write};
use std::time::Instant;

use genbuild::{proto, BUILD_REASON_ALREADY_BUILT};

use crate::human;

/// Carriage return, then clear the whole line.
const CLEAR: &str = "\r\x1b[2K";

pub struct Display<W: Write> {
    out: W,
    /// `Some(columns)` on a terminal: progress goes on the live status line.
    live: Option<usize>,
    step: Step,
    step_started: Instant,
    progress: Option<proto::BuildProgress>,
    /// The status line on screen now, if any.
    shown: Option<String>,
}

/// What the builder does now.
enum Step {
    Idle,
    /// `host at commit`.
    Evaluating(String),
    /// The short name of the derivation being built.
    Building(String),
}

impl<W: Write> Display<W> {
    /// Writes to `out`; `live` is the terminal's width, `None` when `out` is no terminal.
    pub fn new(out: W, live: Option<usize>, now: Instant) -> Self {
        Display { out, live, step: Step::Idle, step_started: now, progress: None, shown: None }
    }

    /// The terminal was resized.
    pub fn set_width(&mut self, columns: usize) {
        if self.live.is_some() {
            self.live = Some(columns);
        }
    }

    pub fn event(&mut self, event: &proto::Event, now: Instant) -> io::Result<()> {
        use proto::event::Kind;
        let generation = |g: &Option<proto::Generation>| g.clone().unwrap_or_default();
        match &event.kind {
            Some(Kind::EvalStarted(e)) => {
                let g = generation(&e.generation);
                let what = format!("{} at {}", g.hostname, human::short_commit(&g.selected_commit_id));
                self.say(&format!("evaluating {what}"))?;
                self.start(Step::Evaluating(what), now);
            }
            Some(Kind::EvalFinished(e)) => {
                let g = generation(&e.generation);
                let took = human::eval_time(&g).map(human::duration).unwrap_or_default();
                self.step = Step::Idle;
                match g.eval_status.as_str() {
                    "evaluated" => self.say(&format!("evaluated in {took}: {}", g.drv_path))?,
                    _ => self.say(&format!("evaluation failed after {took}"))?,
                }
            }
            Some(Kind::BuildStarted(e)) => {
                let g = generation(&e.generation);
                if g.build_reason == BUILD_REASON_ALREADY_BUILT {
                    self.say(&format!("already built: {}", g.out_path))?;
                } else {
                    let name = human::short_name(&g.drv_path).to_string();
                    self.say(&format!("building {name}"))?;
                    self.start(Step::Building(name), now);
                }
            }
            Some(Kind::BuildFinished(e)) => {
                let g = generation(&e.generation);
                let took = human::build_time(&g).map(human::duration).unwrap_or_default();
                self.step = Step::Idle;
                match g.build_status.as_str() {
                    _ if g.build_reason == BUILD_REASON_ALREADY_BUILT => {}
                    "built" => self.say(&format!("built in {took}: {}", g.out_path))?,
                    _ => self.say(&format!("build failed after {took}"))?,
                }
            }
            Some(Kind::BuildProgress(p)) => {
                // Without a status line, a progress line each time its text changes.
                let changed = self.progress.as_ref().is_none_or(|last| progress(last) != progress(p));
                self.progress = Some(p.clone());
                if changed && self.live.is_none() {
                    self.say(&format!("progress: {}", progress(p)))?;
                }
            }
            Some(Kind::LogLine(l)) => {
                if l.dropped_before > 0 {
                    self.say(&format!("({} log lines dropped: the display fell behind)", l.dropped_before))?;
                }
                let text = human::plain(&l.line);
                match l.drv_path.as_str() {
                    "" => self.say(&text)?,
                    drv => self.say(&format!("{}> {text}", human::short_name(drv)))?,
                }
            }
            None => {}
        }
        self.redraw(now)
    }

    /// Brings the status line's clock up to date.
    pub fn tick(&mut self, now: Instant) -> io::Result<()> {
        self.redraw(now)
    }

    /// Prints a line of the caller's above the status line.
    pub fn note(&mut self, text: &str, now: Instant) -> io::Result<()> {
        self.say(text)?;
        self.redraw(now)
    }

    /// Removes the status line, leaving the cursor at the start of an empty line.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.shown.take().is_some() {
            self.out.write_all(CLEAR.as_bytes())?;
        }
        self.out.flush()
    }

    fn start(&mut self, step: Step, now: Instant) {
        self.step = step;
        self.step_started = now;
        self.progress = None;
    }

    /// A line that stays, printed over the status line (which `redraw` puts back).
    fn say(&mut self, text: &str) -> io::Result<()> {
        let clear = if self.shown.take().is_some() { CLEAR } else { "" };
        self.out.write_all(format!("{clear}{text}\n").as_bytes())
    }

    fn redraw(&mut self, now: Instant) -> io::Result<()> {
        if let Some(columns) = self.live {
            // One column short: a line filling the last column wraps on some terminals.
            let status = self.status(now).map(|s| human::fit(&s, columns.saturating_sub(1)).to_string());
            if status != self.shown {
                let text = format!("{CLEAR}{}", status.as_deref().unwrap_or_default());
                self.out.write_all(text.as_bytes())?;
                self.shown = status;
            }
        }
        self.out.flush()
    }

    fn status(&self, now: Instant) -> Option<String> {
        let clock = human::clock(now.saturating_duration_since(self.step_started));
        match (&self.step, &self.progress) {
            (Step::Idle, _) => None,
            (Step::Evaluating(what), _) => Some(format!("[{clock}] evaluating {what}")),
            (Step::Building(name), None) => Some(format!("[{clock}] building {name}")),
            (Step::Building(_), Some(p)) => Some(format!("[{clock}] {}", progress(p))),
        }
    }
}

/// `2/3 built, 1 failed, 1/2 copied, building b, c`; copies only when there are any,
/// and what is being copied when nothing builds.
fn progress(p: &proto::BuildProgress) -> String {
    let mut text = format!("{}/{} built", p.done, p.expected);
    if p.failed > 0 {
        text.push_str(&format!(", {} failed", p.failed));
    }
    if p.copies_expected > 0 {
        text.push_str(&format!(", {}/{} copied", p.copies_done, p.copies_expected));
    }
    let names = |paths: &[String]| paths.iter().map(|d| human::short_name(d)).collect::<Vec<_>>().join(", ");
    if !p.building.is_empty() {
        text.push_str(&format!(", building {}", names(&p.building)));
    } else if !p.copying.is_empty() {
        text.push_str(&format!(", copying {}", names(&p.copying)));
    } else if p.running > 0 {
        text.push_str(&format!(", {} running", p.running));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use proto::event::Kind;

    const HASH: &str = "0123456789abcdfghijklmnpqrsvwxyz";

    fn drv(name: &str) -> String {
        format!("/nix/store/{HASH}-{name}.drv")
    }

    fn at(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds: 1_700_000_000 + seconds, nanos: 0 })
    }

    fn generation() -> proto::Generation {
        proto::Generation {
            uuid: "6f1c".into(),
            hostname: "web1".into(),
            selected_commit_id: "3f2a1c0d9e8b7a6f5e4d3c2b1a0f9e8d7c6b5a49".into(),
            eval_status: "evaluating".into(),
            eval_started_at: at(0),
            ..Default::default()
        }
    }

    fn evaluated() -> proto::Generation {
        proto::Generation {
            eval_status: "evaluated".into(),
            eval_ended_at: at(1),
            drv_path: drv("system"),
            out_path: format!("/nix/store/{HASH}-system"),
            ..generation()
        }
    }

    fn event(kind: Kind) -> proto::Event {
        proto::Event { kind: Some(kind), created_at: None }
    }

    fn log(drv_path: &str, line: &str) -> proto::Event {
        event(Kind::LogLine(proto::LogLine {
            drv_path: drv_path.into(),
            line: line.into(),
            ..Default::default()
        }))
    }

    fn progress(done: u64, running: u64, failed: u64, building: &[&str]) -> proto::Event {
        event(Kind::BuildProgress(proto::BuildProgress {
            generation_uuid: "6f1c".into(),
            done,
            expected: 3,
            running,
            failed,
            building: building.iter().map(|n| drv(n)).collect(),
            ..Default::default()
        }))
    }

    /// A three-derivation build, event by event, one second apart.
    fn chain() -> Vec<proto::Event> {
        let building = proto::Generation {
            build_status: "building".into(),
            build_reason: "need to be built".into(),
            build_started_at: at(2),
            ..evaluated()
        };
        let built =
            proto::Generation { build_status: "built".into(), build_ended_at: at(5), ..building.clone() };
        vec![
            event(Kind::EvalStarted(proto::EvalStarted { generation: Some(generation()) })),
            log("", "\x1b[35;1mwarning:\x1b[0m Git tree is dirty"),
            event(Kind::EvalFinished(proto::EvalFinished { generation: Some(evaluated()) })),
            event(Kind::BuildStarted(proto::BuildStarted { generation: Some(building) })),
            progress(0, 1, 0, &["chain-a"]),
            log(&drv("chain-a"), "hello from a"),
            progress(1, 1, 0, &["chain-b"]),
            progress(1, 2, 0, &["chain-b"]),
            progress(2, 1, 0, &["chain-c"]),
            progress(3, 0, 0, &[]),
            event(Kind::BuildFinished(proto::BuildFinished { generation: Some(built) })),
        ]
    }

    /// What a terminal shows after `bytes`: the lines that scrolled, and the last one.
    fn screen(bytes: &[u8]) -> (Vec<String>, String) {
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let mut lines: Vec<String> =
            text.split('\n').map(|l| l.rsplit(CLEAR).next().unwrap().to_string()).collect();
        let last = lines.pop().unwrap();
        (lines, last)
    }

    #[test]
    fn plain_lines_when_not_a_terminal() {
        let t0 = Instant::now();
        let mut display = Display::new(Vec::new(), None, t0);
        for (i, e) in chain().iter().enumerate() {
            display.event(e, t0 + Duration::from_secs(i as u64)).unwrap();
        }
        display.finish().unwrap();
        let text = String::from_utf8(display.out).unwrap();
        assert!(!text.contains('\x1b') && !text.contains('\r'), "{text:?}");
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "evaluating web1 at 3f2a1c0d9e8b",
                "warning: Git tree is dirty",
                &format!("evaluated in 1.0 s: {}", drv("system")),
                "building system",
                "progress: 0/3 built, building chain-a",
                "chain-a> hello from a",
                "progress: 1/3 built, building chain-b",
                "progress: 2/3 built, building chain-c",
                "progress: 3/3 built",
                &format!("built in 3.0 s: /nix/store/{HASH}-system"),
            ]
        );
    }

    #[test]
    fn live_status_line_on_a_terminal() {
        let t0 = Instant::now();
        let mut display = Display::new(Vec::new(), Some(80), t0);
        let events = chain();
        let step = |display: &mut Display<Vec<u8>>, i: usize, secs: u64| {
            display.event(&events[i], t0 + Duration::from_secs(secs)).unwrap();
            screen(&display.out)
        };
        let (_, status) = step(&mut display, 0, 0);
        assert_eq!(status, "[0:00] evaluating web1 at 3f2a1c0d9e8b");
        display.tick(t0 + Duration::from_millis(2500)).unwrap();
        assert_eq!(screen(&display.out).1, "[0:02] evaluating web1 at 3f2a1c0d9e8b");
        let (lines, status) = step(&mut display, 1, 3);
        assert_eq!(lines.last().unwrap(), "warning: Git tree is dirty");
        assert_eq!(status, "[0:03] evaluating web1 at 3f2a1c0d9e8b");
        let (_, status) = step(&mut display, 2, 3);
        assert_eq!(status, "", "no status line between evaluation and build");
        assert_eq!(step(&mut display, 3, 10).1, "[0:00] building system");
        assert_eq!(step(&mut display, 4, 11).1, "[0:01] 0/3 built, building chain-a");
        let (lines, status) = step(&mut display, 5, 12);
        assert_eq!(lines.last().unwrap(), "chain-a> hello from a");
        assert_eq!(status, "[0:02] 0/3 built, building chain-a");
        assert_eq!(step(&mut display, 8, 13).1, "[0:03] 2/3 built, building chain-c");
        let (lines, status) = step(&mut display, 10, 14);
        assert_eq!(lines.last().unwrap(), &format!("built in 3.0 s: /nix/store/{HASH}-system"));
        assert_eq!(status, "");
        assert!(!lines.iter().any(|l| l.contains("progress")), "{lines:?}");
        display.finish().unwrap();
        assert!(!String::from_utf8_lossy(&display.out).ends_with("built"));
    }

    #[test]
    fn status_line_fits_the_terminal_and_redraws_only_on_change() {
        let t0 = Instant::now();
        let mut display = Display::new(Vec::new(), Some(30), t0);
        display.event(&chain()[0], t0).unwrap();
        display.event(&chain()[3], t0).unwrap();
        display.event(&progress(1, 2, 1, &["a-very-long-derivation-name", "b"]), t0).unwrap();
        assert_eq!(screen(&display.out).1, "[0:00] 1/3 built, 1 failed, b");
        let len = display.out.len();
        display.tick(t0 + Duration::from_millis(900)).unwrap();
        assert_eq!(display.out.len(), len, "same second, same text: nothing written");
        display.set_width(12);
        display.tick(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(screen(&display.out).1, "[0:01] 1/3 ");
    }

    #[test]
    fn failures_already_built_and_dropped_lines() {
        let t0 = Instant::now();
        let mut display = Display::new(Vec::new(), None, t0);
        let failed = proto::Generation {
            eval_status: "failed".into(),
            eval_ended_at: at(2),
            eval_err: "attribute 'nope' missing".into(),
            ..generation()
        };
        let already = proto::Generation {
            build_status: "built".into(),
            build_reason: BUILD_REASON_ALREADY_BUILT.into(),
            ..evaluated()
        };
        let events = [
            event(Kind::EvalFinished(proto::EvalFinished { generation: Some(failed) })),
            event(Kind::LogLine(proto::LogLine {
                line: "x".into(),
                dropped_before: 7,
                drv_path: drv("b"),
                ..Default::default()
            })),
            event(Kind::BuildStarted(proto::BuildStarted { generation: Some(already.clone()) })),
            event(Kind::BuildFinished(proto::BuildFinished { generation: Some(already) })),
            event(Kind::BuildProgress(proto::BuildProgress {
                expected: 2,
                running: 2,
                ..Default::default()
            })),
            proto::Event::default(),
        ];
        for e in &events {
            display.event(e, t0).unwrap();
        }
        assert_eq!(
            String::from_utf8(display.out).unwrap(),
            format!(
                "evaluation failed after 2.0 s\n(7 log lines dropped: the display fell behind)\nb> x\n\
                 already built: /nix/store/{HASH}-system\nprogress: 0/2 built, 2 running\n"
            )
        );
    }

    #[test]
    fn copies_show_when_there_are_any() {
        let remote = |done, copies_done, copying: &[&str]| {
            event(Kind::BuildProgress(proto::BuildProgress {
                done,
                expected: 1,
                copies_done,
                copies_expected: 1,
                copying: copying.iter().map(|n| format!("/nix/store/{HASH}-{n}")).collect(),
                ..Default::default()
            }))
        };
        let t0 = Instant::now();
        let mut display = Display::new(Vec::new(), Some(80), t0);
        display.event(&chain()[3], t0).unwrap();
        display.event(&progress(0, 1, 0, &["system"]), t0).unwrap();
        assert_eq!(screen(&display.out).1, "[0:00] 0/3 built, building system", "no copies: not shown");
        display.event(&remote(0, 0, &["system"]), t0).unwrap();
        assert_eq!(screen(&display.out).1, "[0:00] 0/1 built, 0/1 copied, copying system");
        display.event(&remote(1, 1, &[]), t0).unwrap();
        assert_eq!(screen(&display.out).1, "[0:00] 1/1 built, 1/1 copied");

        let mut plain = Display::new(Vec::new(), None, t0);
        for e in [chain()[3].clone(), remote(0, 0, &["system"]), remote(1, 1, &[])] {
            plain.event(&e, t0).unwrap();
        }
        let text = String::from_utf8(plain.out).unwrap();
        assert_eq!(
            text.lines().skip(1).collect::<Vec<_>>(),
            ["progress: 0/1 built, 0/1 copied, copying system", "progress: 1/1 built, 1/1 copied"]
        );
    }
}
