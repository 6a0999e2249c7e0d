//! Nix's structured log (`--log-format internal-json`), read line by line: what to log,
//! how far the build has come, and a clean error text when the command fails.
//!
//! Every Nix command of the executors (`nix-instantiate`, `nix-store`, `nix eval`,
//! `nix build`; Nix 2.8 accepts the flag on all of them) prints its log on stderr as
//! `@nix {json}` lines:
//! * `start`/`stop` of activities, each with an id, a type and often a text: 104 the
//!   builds of a command, 105 one build (`fields[0]`: its `.drv`), 103 copy-paths, 100
//!   copy-path (`fields[0]`: the store path), 108 substitute, 110 post-build-hook
//!   (`fields[0]`: the `.drv`);
//! * `result`s of an activity: 101 a build log line (`fields[0]`), attributed through
//!   the activity to its derivation; 105 the progress `[done, expected, running,
//!   failed]` of the builds activity (and of the copy-paths activity of
//!   substitutions; `[bytes, total]` of a copy-path activity from Nix 2.26 on); 106
//!   set-expected and others, not shown;
//! * `msg`: Nix's own messages, level 0 for errors (also `trace:` output), with
//!   terminal colour codes in `msg` and `raw_msg` (the message without its `error:`
//!   prefix and location), the location in `file`, `line`, `column`.
//!
//! **Progress** is what this parser observes, not Nix's counters as they come: Nix
//! updates its counters before the build activity they count stops (so a derivation
//! would show built and still building), and from Nix 2.30 on its `expected` is one
//! too high after each build and at the end (a chain of three ends `[3,4,0,0]`). A
//! derivation is building from its build activity's start to its stop (a remote
//! build's two activities, the local one and the remote's, count once); it is built,
//! or failed, once its last activity stopped: failed when Nix counted a failure it has
//! not yet been given, built otherwise. `expected` is the number of derivations Nix
//! announced to build (`these N derivations will be built:` is followed by one message
//! per `.drv` path; only the paths are read), or Nix's own count where it announced
//! none (`nix build` on 2.8), and never less than built + building + failed. So every
//! report is one consistent snapshot, and a build of N derivations ends at N of N.
//!
//! **Locations.** From Nix 2.20 on `file` holds the location again (`…/default.nix:1:7`
//! beside `line` 1 and `column` 7), and a flake's file is named by its origin
//! (`«git+file:///repo?ref=…&rev=…»/flake.nix`); 2.8 gives a plain path. An error's
//! location is shown once, `(at PATH:LINE:COLUMN)`, with PATH relative to the
//! repository where it is a file of the evaluated source ([`SourceRoot`]), as Nix
//! shows it otherwise; an `--expr`'s own locations (`«string»`) are not shown.
//!
//! With a remote builder, the build hook's activities come through too, and so do the
//! remote Nix's own (its builds activity, with counters of its own, and a build
//! activity for the derivation the local one already shows). The hook copies the
//! inputs to the remote and the outputs back: a copy-paths activity "copying N paths"
//! (the number only in its text: Nix 2.8 reports no progress on it) and a copy-path
//! activity per path (no byte counts either). Copies are therefore counted in paths.
//!
//! A line that is not `@nix` JSON (a builder writing to the terminal, git run by Nix,
//! an older Nix) is logged as it is: no line is lost, and no raw JSON is shown. The
//! parser is pure: [`NixLog::feed`] takes one stderr line and reports through a
//! callback, [`NixLog::failure`] gives the error text.
//!
//! **Long lines.** The pipe reader hands a line longer than
//! [`MAX_LINE`](crate::process::pipes::MAX_LINE) (64 KiB) in pieces, each cut on a
//! character boundary, so at most 3 bytes short of it; no piece of a long `@nix` line
//! (a builder's long line, a long evaluation error) parses alone. So a piece that
//! starts with `@nix `, is that long, and ends before its JSON does (serde's "EOF
//! while parsing", or no closing `}` yet) is held, and the pieces after it are
//! appended until the JSON is whole, up to [`LONG_LINE_BYTES`] (4 MiB). A longer one
//! is dropped (its remaining pieces with it), with the notice "a Nix log line of more
//! than 4 MiB was cut" in its place, never raw JSON; pieces that turn out not to make
//! JSON are logged as they came.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::Value;

use crate::job::Progress;
use crate::process::pipes::MAX_LINE;

mod text;

pub(crate) use text::strip_ansi;
use text::{head, last_lines, Tail};

/// Activity types (Nix's `ActivityType`).
const ACT_COPY_PATH: u64 = 100;
const ACT_COPY_PATHS: u64 = 103;
const ACT_BUILDS: u64 = 104;
const ACT_BUILD: u64 = 105;
const ACT_POST_BUILD_HOOK: u64 = 110;
/// Result types (Nix's `ResultType`).
const RES_BUILD_LOG_LINE: u64 = 101;
const RES_PROGRESS: u64 = 105;
const RES_POST_BUILD_LOG_LINE: u64 = 107;
/// Verbosity levels: errors, and up to which an activity's text is shown (Nix's own
/// default verbosity).
const LVL_ERROR: u64 = 0;
const LVL_INFO: u64 = 3;

/// Bound of a failure's text (besides the failed builds' names): Nix's error messages
/// take at most half, plain lines a quarter, the failed builds' last lines the rest.
const FAILURE_BYTES: usize = 4096;
/// What a failure keeps of one long line: its last 512 bytes.
const TAIL_LINE_BYTES: usize = FAILURE_BYTES / 8;
/// Builds whose last lines are kept after they stopped (an error may name them later).
const RECENTLY_STOPPED: usize = 16;
/// Failed builds whose last lines go into a failure.
const FAILED_SHOWN: usize = 4;
/// The longest `@nix` line joined back from the pipe reader's pieces.
const LONG_LINE_BYTES: usize = 4 << 20;
/// The shortest piece the pipe reader cuts a long line into (a cut keeps back up to 3
/// bytes of a character).
const CUT_PIECE_BYTES: usize = MAX_LINE - 3;

/// Where the evaluated source is, so that a location in it is shown relative to the
/// repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SourceRoot {
    /// A directory holding the repository's tree (the legacy checkout).
    Dir(String),
    /// A flake origin, `git+file:///path` (Nix adds the query).
    Origin(String),
}

/// What one line of Nix's log gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event<'a> {
    /// A line to log; `drv_path` is the derivation whose builder printed it, `None`
    /// for Nix's own messages and plain lines.
    Line { drv_path: Option<&'a str>, text: &'a str },
    /// The build's progress changed.
    Progress(&'a Progress),
}

/// The state of one command's log.
#[derive(Debug, Default)]
pub(crate) struct NixLog {
    activities: HashMap<u64, Activity>,
    /// The command's own builds activity: the first one (a remote's comes later).
    builds: Option<u64>,
    /// `[done, expected, running, failed]` of that builds activity.
    counters: [u64; 4],
    /// Derivations Nix announced to build.
    planned: HashSet<String>,
    /// Builds running now: activity id and derivation, in start order.
    building: Vec<(u64, String)>,
    /// Derivations whose builds ended, built and failed.
    built: HashSet<String>,
    failed_builds: HashSet<String>,
    /// Copy-path activities that ended.
    copies_done: u64,
    /// Paths that the copy-paths activities that ended announced to copy.
    copies_announced_ended: u64,
    /// Copies running now: activity id and store path, in start order.
    copying: Vec<(u64, String)>,
    /// Bytes copied and to copy by the copy-path activities that ended.
    copy_bytes_ended: (u64, u64),
    reported: Progress,
    /// Where the evaluated source is.
    sources: Vec<SourceRoot>,
    /// Last lines of running and recently stopped builds, by derivation.
    tails: HashMap<String, Tail>,
    stopped: VecDeque<String>,
    errors: Vec<String>,
    /// Derivations named by an error, with their last lines then.
    failed: Vec<(String, String)>,
    /// Last lines that were not `@nix` JSON.
    plain: Tail,
    /// A long `@nix` line being joined back from its pieces, and where each piece ends.
    held: Option<(String, Vec<usize>)>,
    /// The rest of a line past [`LONG_LINE_BYTES`] is dropped until the line ends.
    dropping: bool,
}

#[derive(Debug)]
struct Activity {
    kind: u64,
    drv_path: Option<String>,
    /// Of a copy-paths activity: the paths it announced to copy.
    announced: u64,
    /// Of a copy-path activity: bytes copied and to copy, as far as Nix said.
    bytes: (u64, u64),
}

impl NixLog {
    #[cfg(test)]
    pub(crate) fn new() -> NixLog {
        NixLog::default()
    }

    /// A log whose error locations in `sources` are shown relative to the repository.
    pub(crate) fn with_sources(sources: Vec<SourceRoot>) -> NixLog {
        NixLog { sources, ..NixLog::default() }
    }

    /// Reads one stderr line of a Nix command (or a piece of a long one, as the pipe
    /// reader hands it), reporting what it gives to `emit`.
    pub(crate) fn feed(&mut self, piece: &str, emit: &mut dyn FnMut(Event<'_>)) {
        // A piece this long was cut: the line goes on in the next one.
        let cut = piece.len() >= CUT_PIECE_BYTES;
        if self.dropping {
            self.dropping = cut;
            return;
        }
        let (line, ends) = match self.held.take() {
            Some((mut line, mut ends)) => {
                line.push_str(piece);
                ends.push(line.len());
                (line, ends)
            }
            None if cut && piece.starts_with("@nix ") => (piece.to_string(), vec![piece.len()]),
            None => return self.feed_line(piece, emit),
        };
        // Only a piece ending in `}` can end the JSON: the line is not parsed again
        // before (that would only say "EOF" once more, over a longer line each time).
        let parsed = (!cut || line.ends_with('}')).then(|| parse(&line));
        let unfinished = match &parsed {
            None => true,
            Some(Err(e)) => e.is_eof() && cut,
            Some(Ok(_)) => false,
        };
        match parsed {
            Some(Ok(value)) if value.is_object() => self.feed_value(&value, emit),
            _ if unfinished && line.len() <= LONG_LINE_BYTES => self.held = Some((line, ends)),
            _ if unfinished => {
                self.dropping = true;
                self.feed_line("a Nix log line of more than 4 MiB was cut", emit);
            }
            // Not Nix's JSON after all: the pieces as they came.
            _ => self.feed_pieces(&line, &ends, emit),
        }
    }

    /// The command's stderr ended: a line still held (its last piece was as long as a
    /// cut one) is logged in its pieces.
    pub(crate) fn finish(&mut self, emit: &mut dyn FnMut(Event<'_>)) {
        if let Some((line, ends)) = self.held.take() {
            self.feed_pieces(&line, &ends, emit);
        }
    }

    fn feed_pieces(&mut self, line: &str, ends: &[usize], emit: &mut dyn FnMut(Event<'_>)) {
        let mut start = 0;
        for &end in ends {
            self.feed_line(&line[start..end], emit);
            start = end;
        }
    }

    /// Reads one whole line.
    fn feed_line(&mut self, line: &str, emit: &mut dyn FnMut(Event<'_>)) {
        match line.strip_prefix("@nix ").and_then(|_| parse(line).ok()).filter(Value::is_object) {
            Some(value) => self.feed_value(&value, emit),
            None => {
                self.plain.push(line);
                emit(Event::Line { drv_path: None, text: line });
            }
        }
    }

    /// Reads one `@nix` JSON object.
    fn feed_value(&mut self, value: &Value, emit: &mut dyn FnMut(Event<'_>)) {
        let id = value["id"].as_u64().unwrap_or_default();
        match value["action"].as_str() {
            Some("start") => self.start(id, value, emit),
            Some("stop") => self.stop(id, emit),
            Some("result") => self.result(id, value, emit),
            Some("msg") => self.msg(value, emit),
            // Actions of a later Nix: nothing a person needs.
            _ => {}
        }
    }

    fn start(&mut self, id: u64, value: &Value, emit: &mut dyn FnMut(Event<'_>)) {
        let kind = value["type"].as_u64().unwrap_or_default();
        let drv_path = match kind {
            ACT_BUILD | ACT_POST_BUILD_HOOK => value["fields"][0].as_str().map(str::to_string),
            _ => None,
        };
        let text = value["text"].as_str().unwrap_or_default();
        if !text.is_empty() && value["level"].as_u64().unwrap_or(LVL_INFO) <= LVL_INFO {
            emit_lines(&strip_ansi(text), None, emit);
        }
        let mut announced = 0;
        match (kind, &drv_path) {
            (ACT_BUILD, Some(drv)) => {
                self.building.push((id, drv.clone()));
                self.tails.entry(drv.clone()).or_default();
                self.report(emit);
            }
            (ACT_BUILDS, _) => {
                self.builds.get_or_insert(id);
            }
            (ACT_COPY_PATHS, _) => announced = paths_announced(text),
            (ACT_COPY_PATH, _) => {
                if let Some(path) = value["fields"][0].as_str() {
                    self.copying.push((id, path.to_string()));
                    self.report(emit);
                }
            }
            _ => {}
        }
        self.activities.insert(id, Activity { kind, drv_path, announced, bytes: (0, 0) });
        if announced > 0 {
            self.report(emit);
        }
    }

    fn stop(&mut self, id: u64, emit: &mut dyn FnMut(Event<'_>)) {
        let Some(activity) = self.activities.remove(&id) else { return };
        self.copies_announced_ended = self.copies_announced_ended.saturating_add(activity.announced);
        if activity.kind == ACT_COPY_PATH {
            let copying = self.copying.len();
            self.copying.retain(|(copy, _)| *copy != id);
            if self.copying.len() < copying {
                self.copies_done += 1;
                let (done, total) = activity.bytes;
                let (ended_done, ended_total) = self.copy_bytes_ended;
                self.copy_bytes_ended =
                    (ended_done.saturating_add(done.max(total)), ended_total.saturating_add(total));
                self.report(emit);
            }
            return;
        }
        if let (ACT_BUILD, Some(drv)) = (activity.kind, activity.drv_path) {
            self.building.retain(|(building, _)| *building != id);
            // A remote build's other activity still runs: not ended yet.
            if !self.building.iter().any(|(_, d)| *d == drv) {
                self.ended(&drv);
            }
            self.stopped.push_back(drv);
            while self.stopped.len() > RECENTLY_STOPPED {
                if let Some(old) = self.stopped.pop_front() {
                    if !self.building.iter().any(|(_, d)| *d == old) {
                        self.tails.remove(&old);
                    }
                }
            }
            self.report(emit);
        }
    }

    /// The build of `drv` ended: failed when Nix counted a failure not yet given to a
    /// derivation (it counts before the activity stops) or an error named it, built
    /// otherwise.
    fn ended(&mut self, drv: &str) {
        if self.built.contains(drv) || self.failed_builds.contains(drv) {
            return;
        }
        let unattributed_failure = self.counters[3] > self.failed_builds.len() as u64;
        if unattributed_failure || self.failed.iter().any(|(d, _)| d == drv) {
            self.failed_builds.insert(drv.to_string());
        } else {
            self.built.insert(drv.to_string());
        }
    }

    fn result(&mut self, id: u64, value: &Value, emit: &mut dyn FnMut(Event<'_>)) {
        let Some(activity) = self.activities.get_mut(&id) else { return };
        let field = |i: usize| value["fields"][i].as_u64().unwrap_or_default();
        match value["type"].as_u64() {
            Some(RES_BUILD_LOG_LINE | RES_POST_BUILD_LOG_LINE) => {
                let Some(text) = value["fields"][0].as_str() else { return };
                let drv = activity.drv_path.as_deref();
                if let Some(tail) = drv.and_then(|d| self.tails.get_mut(d)) {
                    tail.push(text);
                }
                emit(Event::Line { drv_path: drv, text });
            }
            Some(RES_PROGRESS) if activity.kind == ACT_BUILDS && self.builds == Some(id) => {
                self.counters = [field(0), field(1), field(2), field(3)];
                self.report(emit);
            }
            // The paths to copy, counted anew (the substitutions of a command).
            Some(RES_PROGRESS) if activity.kind == ACT_COPY_PATHS => {
                activity.announced = field(1);
                self.report(emit);
            }
            // Bytes of one copy (Nix 2.26 and later).
            Some(RES_PROGRESS) if activity.kind == ACT_COPY_PATH => {
                activity.bytes = (field(0), field(1).max(field(0)));
                self.report(emit);
            }
            _ => {}
        }
    }

    fn msg(&mut self, value: &Value, emit: &mut dyn FnMut(Event<'_>)) {
        let shown = value["msg"].as_str().unwrap_or_default();
        emit_lines(&strip_ansi(shown), None, emit);
        let level = value["level"].as_u64();
        if level == Some(LVL_INFO) {
            // One derivation of the plan (`these N derivations will be built:` and
            // then each path, indented, as a message of its own).
            if let Some(drv) = planned_derivation(shown) {
                if self.planned.insert(drv.to_string()) {
                    self.report(emit);
                }
            }
            return;
        }
        if level != Some(LVL_ERROR) {
            return;
        }
        let raw = value["raw_msg"].as_str().unwrap_or(shown);
        let text = strip_ansi(raw).trim().to_string();
        if text.starts_with("trace: ") || text.starts_with("(use '--show-trace'") || text.is_empty() {
            return;
        }
        for (drv, tail) in &self.tails {
            if text.contains(drv.as_str()) && !self.failed.iter().any(|(d, _)| d == drv) {
                self.failed.push((drv.clone(), tail.text()));
            }
        }
        let location = self.location(value).map(|at| format!(" (at {at})")).unwrap_or_default();
        self.errors.push(format!("{text}{location}"));
    }

    /// `PATH:LINE:COLUMN` of a message, if it has a location in a file.
    fn location(&self, value: &Value) -> Option<String> {
        let (file, line) = (value["file"].as_str()?, value["line"].as_u64()?);
        let column = value["column"].as_u64().unwrap_or_default();
        // From Nix 2.20 on, `file` ends with the location again.
        let file = file.strip_suffix(&format!(":{line}:{column}")).unwrap_or(file);
        if file.contains('\n') {
            return None;
        }
        let path = if let Some(origin) = file.strip_prefix('«') {
            // `«ORIGIN»/PATH`; an origin without a path is an expression (`«string»`).
            let (origin, path) = origin.split_once("»/")?;
            let ours = self.sources.iter().any(|source| match source {
                SourceRoot::Origin(url) => {
                    origin == url
                        || origin.strip_prefix(url.as_str()).is_some_and(|rest| rest.starts_with('?'))
                }
                SourceRoot::Dir(_) => false,
            });
            if ours {
                path.to_string()
            } else {
                file.to_string()
            }
        } else if file.starts_with('/') {
            let relative = self.sources.iter().find_map(|source| match source {
                SourceRoot::Dir(dir) => file.strip_prefix(dir.as_str())?.strip_prefix('/'),
                SourceRoot::Origin(_) => None,
            });
            relative.unwrap_or(file).to_string()
        } else {
            return None;
        };
        Some(format!("{path}:{line}:{column}"))
    }

    /// Reports the progress if it changed: one snapshot of what was observed.
    fn report(&mut self, emit: &mut dyn FnMut(Event<'_>)) {
        // A remote build shows twice: the local build activity and the remote's.
        let mut building: Vec<String> = Vec::with_capacity(self.building.len());
        for (_, drv) in &self.building {
            if !building.contains(drv) {
                building.push(drv.clone());
            }
        }
        let (done, failed, running) =
            (self.built.len() as u64, self.failed_builds.len() as u64, building.len() as u64);
        let announced = if self.planned.is_empty() { self.counters[1] } else { self.planned.len() as u64 };
        let expected = announced.max(done + running + failed);
        let copying: Vec<String> = self.copying.iter().map(|(_, path)| path.clone()).collect();
        let copies_done = self.copies_done;
        let copies_announced =
            self.activities.values().fold(self.copies_announced_ended, |n, a| n.saturating_add(a.announced));
        let copies_expected = copies_announced.max(copies_done.saturating_add(copying.len() as u64));
        let (mut copy_bytes_done, mut copy_bytes_expected) = self.copy_bytes_ended;
        for (id, _) in &self.copying {
            if let Some(Activity { bytes: (done, total), .. }) = self.activities.get(id) {
                copy_bytes_done = copy_bytes_done.saturating_add(*done);
                copy_bytes_expected = copy_bytes_expected.saturating_add(*total);
            }
        }
        let progress = Progress {
            done,
            expected,
            running,
            failed,
            building,
            copies_done,
            copies_expected,
            copying,
            copy_bytes_done,
            copy_bytes_expected,
        };
        if progress != self.reported {
            self.reported = progress;
            emit(Event::Progress(&self.reported));
        }
    }

    /// The error text of a failed command, without escape codes, bounded by
    /// [`FAILURE_BYTES`]: the last lines that were not Nix's JSON (git run by Nix says
    /// why a fetch failed), Nix's error messages, then the last log lines of each
    /// failed build.
    pub(crate) fn failure(&self) -> String {
        let plain = strip_ansi(&self.plain.text()).into_owned();
        let plain = last_lines(&plain, FAILURE_BYTES / 4);
        let errors = self.errors.join("\n");
        let errors = head(&errors, FAILURE_BYTES / 2);
        let mut parts: Vec<String> =
            [plain, errors].into_iter().filter(|p| !p.is_empty()).map(str::to_string).collect();
        let failed = &self.failed[..self.failed.len().min(FAILED_SHOWN)];
        let budget = FAILURE_BYTES - plain.len() - errors.len();
        for (drv, tail) in failed {
            let tail = strip_ansi(tail);
            let tail = last_lines(&tail, budget / failed.len());
            if !tail.is_empty() {
                parts.push(format!("last log lines of {drv}:\n{tail}"));
            }
        }
        parts.join("\n")
    }
}

/// The JSON of a `@nix` line (only an object is one of Nix's).
fn parse(line: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str(line.strip_prefix("@nix ").unwrap_or(line))
}

/// The number of paths a copy-paths activity announces in its text, "copying N paths"
/// (Nix's `copyPaths`); 0 for another text (the copy-path activities still count).
fn paths_announced(text: &str) -> u64 {
    let count = text.strip_prefix("copying ").and_then(|t| t.strip_suffix(" paths"));
    count.and_then(|n| n.parse().ok()).unwrap_or_default()
}

/// The `.drv` path a message of Nix's plan consists of (`  /nix/store/…-x.drv`).
fn planned_derivation(msg: &str) -> Option<&str> {
    let path = msg.trim();
    let name = path.strip_prefix('/')?.rsplit('/').next()?;
    let plain = !path.contains(char::is_whitespace) && !path.contains('\x1b');
    (plain && name.ends_with(".drv") && path.len() > name.len() + 1).then_some(path)
}

/// Emits each line of `text`.
fn emit_lines(text: &str, drv_path: Option<&str>, emit: &mut dyn FnMut(Event<'_>)) {
    for line in text.lines() {
        emit(Event::Line { drv_path, text: line });
    }
}

#[cfg(test)]
mod tests;
