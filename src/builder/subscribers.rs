//! The fan-out of events to subscribers, with memory bounded in bytes.
//!
//! Every subscriber gets every lifecycle event (never dropped: a caller counts on
//! them). Log lines and progress reports are many and large: each subscriber's backlog
//! of them is bounded in bytes, and beyond it they are dropped (lines counted in the
//! next line's `dropped_before`) until the subscriber catches up. Sending never blocks
//! a job or the builder.
//!
//! The backlog is measured exactly, without any help from the receiver (a plain
//! crossbeam `Receiver`): the size of every event sent is queued beside the channel,
//! and as many sizes as the receiver took since (the channel's length tells) are
//! forgotten, oldest first.
//!
//! Progress is coalesced: a job reports it as often as Nix prints it, a subscriber
//! gets it at most every [`PROGRESS_INTERVAL`]. A report held back is sent once the
//! interval since the last one passed: with the job's next output, or by the job's
//! flusher, a thread that sleeps until then (a long build prints nothing for minutes,
//! and its state must not wait for the next line); at the latest just before the job's
//! end is published, never dropped. The flusher starts with the first report held back
//! and ends with the job's log sink. The latest report is always at hand for the
//! builder's state.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use prost::Message;

use crate::job::{JobOutput, LogSink, Progress};
use crate::machine::JobId;
use crate::process::Stream;
use crate::proto::{self, event, log_line, Event};

/// The shortest time between two progress events of a job.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Every subscriber, and the latest progress of the running job.
pub(super) struct Subscribers {
    backlog_bytes: usize,
    inner: Mutex<Inner>,
    /// Wakes the flushers: a report was held back, or a sink went.
    held_back: Condvar,
}

#[derive(Default)]
struct Inner {
    list: Vec<Subscriber>,
    progress: Option<LatestProgress>,
    /// Jobs whose log sink went: their flushers end.
    sinks_gone: Vec<JobId>,
}

struct Subscriber {
    tx: Sender<Event>,
    /// The size of every event in the channel, oldest first.
    queued: VecDeque<usize>,
    queued_bytes: usize,
    /// Log lines dropped since the last one sent.
    dropped_lines: u64,
}

struct LatestProgress {
    job: JobId,
    report: proto::BuildProgress,
    /// When this job's progress was last sent.
    sent_at: Option<Instant>,
    /// Whether `report` is newer than what was sent.
    held_back: bool,
}

/// Whether a subscriber may lose an event when its backlog is full.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Always,
    WhileRoom,
}

impl Subscribers {
    pub(super) fn new(backlog_bytes: usize) -> Subscribers {
        Subscribers { backlog_bytes, inner: Mutex::default(), held_back: Condvar::new() }
    }

    pub(super) fn subscribe(&self) -> Receiver<Event> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let subscriber = Subscriber { tx, queued: VecDeque::new(), queued_bytes: 0, dropped_lines: 0 };
        self.inner.lock().list.push(subscriber);
        rx
    }

    /// Sends a lifecycle event to every subscriber; never dropped.
    pub(super) fn lifecycle(&self, kind: event::Kind) {
        let mut inner = self.inner.lock();
        let event = Event { kind: Some(kind), created_at: Some(SystemTime::now().into()) };
        inner.broadcast(&event, Delivery::Always, self.backlog_bytes);
    }

    /// Sends the held-back progress of generation `uuid`'s job, never dropped, and
    /// forgets it: the job ended, and its end is published next.
    pub(super) fn job_ended(&self, uuid: &str) {
        let mut inner = self.inner.lock();
        let Some(latest) = inner.progress.take_if(|p| p.report.generation_uuid == uuid) else { return };
        if latest.held_back {
            let event = progress_event(latest.report);
            inner.broadcast(&event, Delivery::Always, self.backlog_bytes);
        }
    }

    /// The latest progress reported by the running job, if it reported any.
    pub(super) fn latest_progress(&self) -> Option<proto::BuildProgress> {
        self.inner.lock().progress.as_ref().map(|p| p.report.clone())
    }

    /// Where job `job` of generation `generation_uuid` sends its output.
    pub(super) fn log_sink(
        self: &Arc<Self>,
        job: JobId,
        generation_uuid: String,
        phase: log_line::Phase,
    ) -> LogSink {
        let subscribers = self.clone();
        let flusher = FlusherGuard { subscribers: self.clone(), job, thread: OnceLock::new() };
        Arc::new(move |output| {
            let bound = subscribers.backlog_bytes;
            let mut inner = subscribers.inner.lock();
            match output {
                JobOutput::Line { stream, drv_path, text } => {
                    inner.send_held_back_progress(job, bound);
                    if inner.list.is_empty() {
                        return;
                    }
                    let line = proto::LogLine {
                        generation_uuid: generation_uuid.clone(),
                        phase: phase.into(),
                        stream: match stream {
                            Stream::Stdout => log_line::Stream::Stdout,
                            Stream::Stderr => log_line::Stream::Stderr,
                        }
                        .into(),
                        line: text.to_string(),
                        dropped_before: 0,
                        drv_path: drv_path.unwrap_or_default().to_string(),
                    };
                    inner.broadcast_line(line, bound);
                }
                JobOutput::Progress(progress) => {
                    if inner.progress(job, &generation_uuid, progress, bound) {
                        drop(inner);
                        flusher.start();
                        subscribers.held_back.notify_all();
                    }
                }
            }
        })
    }

    /// Sends job `job`'s held-back progress once the interval since the last report
    /// passed, until the job's sink goes.
    fn flush(&self, job: JobId) {
        let mut inner = self.inner.lock();
        while !inner.sinks_gone.contains(&job) {
            let held = inner.progress.as_ref().filter(|p| p.job == job && p.held_back);
            match held.map(|p| p.sent_at.map_or(Instant::now(), |at| at + PROGRESS_INTERVAL)) {
                Some(due) if Instant::now() >= due => inner.send_held_back_progress(job, self.backlog_bytes),
                Some(due) => drop(self.held_back.wait_until(&mut inner, due)),
                None => self.held_back.wait(&mut inner),
            }
        }
        inner.sinks_gone.retain(|gone| *gone != job);
    }
}

/// A job's flusher thread, started with the first report held back; ended and joined
/// when the job's log sink goes.
struct FlusherGuard {
    subscribers: Arc<Subscribers>,
    job: JobId,
    thread: OnceLock<Option<JoinHandle<()>>>,
}

impl FlusherGuard {
    fn start(&self) {
        self.thread.get_or_init(|| {
            let (subscribers, job) = (self.subscribers.clone(), self.job);
            let spawned = std::thread::Builder::new()
                .name("genbuild-progress".into())
                .spawn(move || subscribers.flush(job));
            // Without a flusher, held-back progress goes with the next output, as before.
            spawned.map_err(|e| log::warn!("cannot start a progress flusher: {e}")).ok()
        });
    }
}

impl Drop for FlusherGuard {
    fn drop(&mut self) {
        let Some(Some(thread)) = self.thread.take() else { return };
        self.subscribers.inner.lock().sinks_gone.push(self.job);
        self.subscribers.held_back.notify_all();
        let _ = thread.join();
    }
}

impl Inner {
    /// Sends `event` to every subscriber; forgets those whose receiver is gone.
    fn broadcast(&mut self, event: &Event, delivery: Delivery, bound: usize) {
        self.list.retain_mut(|s| {
            if delivery == Delivery::WhileRoom && !s.has_room(bound) {
                return true;
            }
            s.send(event.clone())
        });
    }

    fn broadcast_line(&mut self, mut line: proto::LogLine, bound: usize) {
        let created_at = Some(SystemTime::now().into());
        self.list.retain_mut(|s| {
            if !s.has_room(bound) {
                s.dropped_lines += 1;
                return true;
            }
            line.dropped_before = std::mem::take(&mut s.dropped_lines);
            s.send(Event { kind: Some(event::Kind::LogLine(line.clone())), created_at })
        });
    }

    /// Takes job `job`'s latest report; true when it is held back for later.
    fn progress(&mut self, job: JobId, generation_uuid: &str, progress: &Progress, bound: usize) -> bool {
        let report = proto::BuildProgress {
            generation_uuid: generation_uuid.to_string(),
            done: progress.done,
            expected: progress.expected,
            running: progress.running,
            failed: progress.failed,
            building: progress.building.clone(),
            copies_done: progress.copies_done,
            copies_expected: progress.copies_expected,
            copying: progress.copying.clone(),
            copy_bytes_done: progress.copy_bytes_done,
            copy_bytes_expected: progress.copy_bytes_expected,
        };
        let sent_at = self.progress.as_ref().filter(|p| p.job == job).and_then(|p| p.sent_at);
        self.progress = Some(LatestProgress { job, report, sent_at, held_back: true });
        self.send_held_back_progress(job, bound);
        self.progress.as_ref().is_some_and(|p| p.held_back)
    }

    /// Sends job `job`'s held-back progress if the interval since the last one passed.
    fn send_held_back_progress(&mut self, job: JobId, bound: usize) {
        let Some(latest) = self.progress.as_mut().filter(|p| p.job == job && p.held_back) else { return };
        let now = Instant::now();
        if latest.sent_at.is_some_and(|at| now.saturating_duration_since(at) < PROGRESS_INTERVAL) {
            return;
        }
        latest.sent_at = Some(now);
        latest.held_back = false;
        let event = progress_event(latest.report.clone());
        self.broadcast(&event, Delivery::WhileRoom, bound);
    }
}

impl Subscriber {
    /// Whether the events of this subscriber's backlog weigh less than `bound` bytes.
    fn has_room(&mut self, bound: usize) -> bool {
        // Sizes are forgotten oldest first: the receiver took the oldest events.
        let in_channel = self.tx.len();
        while self.queued.len() > in_channel {
            self.queued_bytes -= self.queued.pop_front().unwrap_or_default();
        }
        self.queued_bytes < bound
    }

    /// Sends `event`; false when the receiver is gone.
    fn send(&mut self, event: Event) -> bool {
        // What the event holds in the channel: its slot and its heap data.
        let size = std::mem::size_of::<Event>() + event.encoded_len();
        if self.tx.send(event).is_err() {
            return false;
        }
        self.queued.push_back(size);
        self.queued_bytes += size;
        true
    }
}

fn progress_event(report: proto::BuildProgress) -> Event {
    Event { kind: Some(event::Kind::BuildProgress(report)), created_at: Some(SystemTime::now().into()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sink: &LogSink, text: &str) {
        sink(JobOutput::Line { stream: Stream::Stdout, drv_path: None, text });
    }

    #[test]
    fn a_subscriber_that_reads_gets_room_again() {
        let subscribers = Arc::new(Subscribers::new(4096));
        let events = subscribers.subscribe();
        let sink = subscribers.log_sink(JobId(1), "g".into(), log_line::Phase::Build);
        let text = "x".repeat(1000);
        for _ in 0..100 {
            line(&sink, &text);
        }
        let kept = events.len();
        assert!((2..10).contains(&kept), "{kept} lines of 1000 bytes within 4096 bytes");
        events.try_iter().for_each(drop);
        line(&sink, "after");
        let Some(event::Kind::LogLine(after)) = events.try_recv().unwrap().kind else { panic!() };
        assert_eq!((after.line.as_str(), after.dropped_before), ("after", 100 - kept as u64));
    }

    #[test]
    fn lifecycle_events_are_never_dropped() {
        let subscribers = Subscribers::new(0);
        let events = subscribers.subscribe();
        for _ in 0..10 {
            subscribers.lifecycle(event::Kind::EvalStarted(proto::EvalStarted::default()));
        }
        assert_eq!(events.len(), 10);
    }

    #[test]
    fn progress_maps_to_build_progress_field_by_field() {
        let subscribers = Arc::new(Subscribers::new(1 << 20));
        let events = subscribers.subscribe();
        let sink = subscribers.log_sink(JobId(1), "g".into(), log_line::Phase::Build);
        let mut progress = Progress::default();
        (progress.done, progress.expected, progress.running, progress.failed) = (1, 4, 2, 1);
        (progress.copies_done, progress.copies_expected) = (3, 5);
        (progress.copy_bytes_done, progress.copy_bytes_expected) = (10, 11);
        progress.building = vec!["/nix/store/x-b.drv".into()];
        progress.copying = vec!["/nix/store/x-a".into()];
        sink(JobOutput::Progress(&progress));
        let expected = proto::BuildProgress {
            generation_uuid: "g".into(),
            done: 1,
            expected: 4,
            running: 2,
            failed: 1,
            building: vec!["/nix/store/x-b.drv".into()],
            copies_done: 3,
            copies_expected: 5,
            copying: vec!["/nix/store/x-a".into()],
            copy_bytes_done: 10,
            copy_bytes_expected: 11,
        };
        assert_eq!(subscribers.latest_progress().as_ref(), Some(&expected));
        let Some(event::Kind::BuildProgress(sent)) = events.try_recv().unwrap().kind else { panic!() };
        assert_eq!(sent, expected);
    }

    #[test]
    fn progress_is_coalesced_and_the_last_one_sent_when_the_job_ends() {
        let subscribers = Arc::new(Subscribers::new(1 << 20));
        let events = subscribers.subscribe();
        let sink = subscribers.log_sink(JobId(1), "g".into(), log_line::Phase::Build);
        for done in 1..=1000 {
            sink(JobOutput::Progress(&Progress { done, expected: 1000, ..Default::default() }));
        }
        assert_eq!(subscribers.latest_progress().map(|p| p.done), Some(1000));
        subscribers.job_ended("g");
        let sent: Vec<u64> = events
            .try_iter()
            .map(|e| match e.kind {
                Some(event::Kind::BuildProgress(p)) => p.done,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sent.first(), Some(&1), "the first report goes out at once");
        assert_eq!(sent.last(), Some(&1000), "the last one always");
        assert!(sent.len() <= 3, "a burst is coalesced: {sent:?}");
        assert_eq!(subscribers.latest_progress(), None, "forgotten once the job ended");
    }

    #[test]
    fn a_held_back_report_is_sent_without_further_output_and_the_flusher_ends_with_the_sink() {
        let subscribers = Arc::new(Subscribers::new(1 << 20));
        let events = subscribers.subscribe();
        let sink = subscribers.log_sink(JobId(1), "g".into(), log_line::Phase::Build);
        for done in 1..=3 {
            sink(JobOutput::Progress(&Progress { done, expected: 3, ..Default::default() }));
        }
        let done = |event: Event| match event.kind {
            Some(event::Kind::BuildProgress(p)) => p.done,
            other => panic!("{other:?}"),
        };
        assert_eq!(done(events.recv_timeout(Duration::from_secs(5)).unwrap()), 1, "the first at once");
        // Nothing else comes from the job: the flusher sends the latest after the interval.
        assert_eq!(done(events.recv_timeout(Duration::from_secs(5)).unwrap()), 3, "the latest, flushed");
        assert!(events.is_empty());
        assert_eq!(Arc::strong_count(&subscribers), 4, "the sink, its guard and its flusher hold it");
        drop(sink);
        assert_eq!(Arc::strong_count(&subscribers), 1, "the flusher ended and was joined with the sink");
        assert!(subscribers.inner.lock().sinks_gone.is_empty());
    }
}
