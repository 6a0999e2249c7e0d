//! Waiting for the builder while showing what it does: the builder's events go to the
//! [`Display`] as they come, its clock ticks while nothing comes, and Ctrl-C (or
//! SIGTERM) ends the wait so that the builder can be stopped cleanly.

use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};
use genbuild::{proto, Builder};

use crate::display::Display;

/// How often the status line's clock is brought up to date.
const TICK: Duration = Duration::from_millis(250);

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    EvaluationDone,
    BuildDone,
    Interrupted,
}

pub struct Watch {
    events: Receiver<proto::Event>,
    evaluated: Receiver<String>,
    built: Receiver<String>,
    interrupts: Receiver<()>,
    display: Display<Box<dyn Write>>,
    to_stderr: bool,
}

impl Watch {
    /// Subscribes to `builder`. The display goes to stdout, or to stderr when stdout
    /// is kept for something else (JSON).
    pub fn new(builder: &Builder, to_stderr: bool) -> Watch {
        let out: Box<dyn Write> =
            if to_stderr { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) };
        Watch {
            events: builder.subscribe(),
            evaluated: builder.evaluation_done(),
            built: builder.build_done(),
            interrupts: interrupts(),
            display: Display::new(out, columns(to_stderr), Instant::now()),
            to_stderr,
        }
    }

    /// Shows the builder's events until an evaluation or a build ends, or the user
    /// interrupts.
    pub fn until_done(&mut self) -> Result<Ended, String> {
        let ended = loop {
            select! {
                recv(self.events) -> event => {
                    if let Ok(event) = event {
                        self.display.event(&event, Instant::now()).map_err(output_error)?;
                    }
                }
                recv(self.evaluated) -> _ => break Ended::EvaluationDone,
                recv(self.built) -> _ => break Ended::BuildDone,
                recv(self.interrupts) -> _ => break Ended::Interrupted,
                default(TICK) => {
                    if let Some(width) = columns(self.to_stderr) {
                        self.display.set_width(width);
                    }
                    self.display.tick(Instant::now()).map_err(output_error)?;
                }
            }
        };
        self.show_pending()?;
        Ok(ended)
    }

    /// Shows the events already sent: every event of a job is sent before its `done`
    /// notification.
    fn show_pending(&mut self) -> Result<(), String> {
        for event in self.events.try_iter() {
            self.display.event(&event, Instant::now()).map_err(output_error)?;
        }
        Ok(())
    }

    /// A line of ours among the builder's.
    pub fn note(&mut self, text: &str) -> Result<(), String> {
        self.display.note(text, Instant::now()).map_err(output_error)
    }

    /// Shows the events sent so far, then removes the status line.
    pub fn finish(&mut self) -> Result<(), String> {
        self.show_pending()?;
        self.display.finish().map_err(output_error)
    }
}

fn output_error(e: std::io::Error) -> String {
    format!("cannot write the output: {e}")
}

/// The terminal's width when the display goes to a terminal that understands
/// clear-line; `None` for plain lines.
fn columns(to_stderr: bool) -> Option<usize> {
    fn of(out: impl AsFd + IsTerminal) -> Option<usize> {
        if !out.is_terminal() || std::env::var_os("TERM").is_some_and(|t| t == "dumb") {
            return None;
        }
        let columns = rustix::termios::tcgetwinsize(out).map(|size| usize::from(size.ws_col));
        Some(columns.ok().filter(|&c| c > 0).unwrap_or(80))
    }
    if to_stderr {
        of(std::io::stderr())
    } else {
        of(std::io::stdout())
    }
}

/// A message on each SIGINT or SIGTERM, from now on (they no longer end the process).
fn interrupts() -> Receiver<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let (tx, rx) = crossbeam_channel::bounded(1);
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                for _ in signals.forever() {
                    let _ = tx.try_send(());
                }
            });
        }
        Err(e) => eprintln!("demo: cannot catch Ctrl-C ({e}); it will leave Nix running"),
    }
    rx
}
