//! The same sequences against the threaded [`Builder`](crate::Builder), with a fake
//! executor.
//!
//! The fake executor (see `fake`) lets the checker decide when and how each job ends.
//!
//! In a race the job a call cancels gets no directive until every call was made: it
//! dies slowly, as a build ignoring SIGTERM does for its grace period. Calls that wait
//! for it run on threads of their own; the checker knows one has reached its wait from
//! the builder's count of waiting calls (a crate-internal getter), so the order of the
//! calls is the sequence's, not the scheduler's.
//!
//! A cancellation the reference does not predict leaves a fake job waiting and shows
//! up as the watchdog's "deadlock" panic; a job the reference does not start shows up
//! when it registers. The machine check sees every `Cancel` action and names such
//! bugs precisely; this check is there for the driver's own plumbing (locking,
//! waiting, joining, channels).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use super::fake::{genbuild_threads, Caller, Directive, DrvValidity, FakeExecutor, FakeJob, CALL_BOUND};
use super::reference::{Blocked, Ev, Kind, Reference, Reply, Text, EVALUATED};
use super::{earlier_commit, error_mismatch, Call, JobEnd, Op, Target};
use crate::{Builder, BuilderConfig, Error, Store};

/// What a call answered.
#[derive(Debug)]
enum Answer {
    Done(Result<(), Error>),
    Evaluated(Result<String, Error>),
    /// `stop()` returned; what ran right after it returned, seen from its thread.
    Stopped {
        evaluating: bool,
        building: bool,
    },
    /// `resume()` returned; whether a build ran right after that did not before.
    Resumed {
        result: Result<(), Error>,
        started_a_build: bool,
    },
}

impl Answer {
    fn result(&self) -> Result<(), Error> {
        match self {
            Answer::Done(r) | Answer::Resumed { result: r, .. } => r.clone(),
            Answer::Evaluated(r) => r.clone().map(drop),
            Answer::Stopped { .. } => Ok(()),
        }
    }
}

/// A call blocked in a race, on a thread of its own.
struct BlockedCall {
    call: Call,
    expected: Blocked,
    answer: Receiver<Answer>,
}

/// Builder checks run one at a time per process, so that thread counts are theirs.
static BUILDER_CHECK: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// The longest sequence [`check_builder`] runs; the rest of a longer input is ignored
/// (every step costs real threads).
pub const BUILDER_MAX_OPS: usize = 64;

struct BuilderChecker {
    builder: Option<Builder>,
    store: Arc<Store>,
    drvs: DrvValidity,
    /// The commits `eval` was called with, oldest first.
    asked: Vec<String>,
    caller: Caller,
    reference: Reference,
    jobs: Receiver<FakeJob>,
    /// The running job, once it reached the executor.
    running: Option<FakeJob>,
    /// The keys of the jobs that ended in this step.
    ended: Vec<String>,
    /// Each generation's key (its commit).
    keys: HashMap<String, String>,
    evaluation_done: Receiver<String>,
    build_done: Receiver<String>,
    events: Receiver<crate::proto::Event>,
    commits: u64,
    /// A `stop` was called and no build was asked for since.
    stopped: bool,
    step: usize,
    op: Op,
}

impl BuilderChecker {
    fn fail(&self, rule: &str, detail: impl fmt::Display) -> ! {
        panic!("rule violated (builder): {rule}\n  at step {} ({:?})\n  {detail}", self.step, self.op)
    }

    fn builder(&self) -> Builder {
        self.builder.clone().expect("the builder lives until the end")
    }

    /// Takes a job's registration: it must be the one the reference runs.
    fn registered(&mut self, job: FakeJob) {
        let expected = self.reference.running.as_ref().map(|r| r.kind).zip(self.reference.current_key());
        if self.running.is_some() || expected != Some((job.kind, job.key.as_str())) {
            self.fail(
                "no job of a generation starts once a newer one was asked for, nor one nobody asked for",
                format!("{:?} of {} started; expected {expected:?}", job.kind, job.key),
            );
        }
        self.running = Some(job);
    }

    /// The running job (waiting for it to reach the executor).
    fn running_job(&mut self) -> &FakeJob {
        if self.running.is_none() {
            match self.jobs.recv_timeout(CALL_BOUND) {
                Ok(job) => self.registered(job),
                Err(_) => self.fail("a started job reaches the executor", "none within 10 s"),
            }
        }
        self.running.as_ref().expect("just set")
    }

    /// Ends the running job (`AwaitCancel`: through the cancellation to come).
    fn direct(&mut self, directive: Directive) {
        let job = self.running_job();
        let key = job.key.clone();
        if job.directive.send(directive).is_err() {
            self.fail("a job waits for its end", "the fake job is gone");
        }
        self.running = None;
        self.ended.push(key);
    }

    fn new_commit(&mut self) -> String {
        self.commits += 1;
        format!("{:040x}", self.commits)
    }

    /// The reference's side of a lone call: a call that waits sees its job end
    /// cancelled (the builder check lets the cancellation win), then returns.
    fn settle_reference(&mut self, reply: Reply) -> Result<(), Error> {
        match reply {
            Reply::Returned(result) => result,
            Reply::Blocked(blocked) => {
                self.reference.finish(JobEnd::Cancelled, false);
                self.reference.unblock(blocked)
            }
        }
    }

    /// Makes `call` on the builder, as a closure for any thread.
    fn call_fn(&mut self, call: Call) -> (String, Box<dyn FnOnce() -> Answer + Send>) {
        let builder = self.builder();
        match call {
            Call::Eval(choice) => {
                let commit = match earlier_commit(choice, &self.asked) {
                    Some((commit, drv_valid)) => {
                        self.drvs.set(&commit, drv_valid);
                        commit
                    }
                    None => self.new_commit(),
                };
                self.asked.push(commit.clone());
                let rs = crate::proto::RepositoryStatus {
                    selected_commit_id: commit.clone(),
                    ..Default::default()
                };
                (commit, Box::new(move || Answer::Evaluated(builder.eval(&rs))))
            }
            Call::SubmitCurrent => {
                let uuid = self.reference.current.as_ref().map(|g| g.uuid.clone());
                let uuid = uuid.unwrap_or_else(|| format!("00000000-0000-4000-8000-{:012}", self.step));
                (uuid.clone(), Box::new(move || Answer::Done(builder.submit_build(&uuid))))
            }
            Call::Suspend => (String::new(), Box::new(move || Answer::Done(builder.suspend()))),
            Call::Resume => (
                String::new(),
                Box::new(move || {
                    // A build dying meanwhile does not end: the checker holds it.
                    let building_before = builder.is_building();
                    let result = builder.resume();
                    Answer::Resumed { result, started_a_build: !building_before && builder.is_building() }
                }),
            ),
            Call::Stop => (
                String::new(),
                Box::new(move || {
                    builder.stop();
                    Answer::Stopped { evaluating: builder.is_evaluating(), building: builder.is_building() }
                }),
            ),
        }
    }

    /// The reference's side of `call`; `arg` is what `call_fn` chose.
    fn reference_call(&mut self, call: Call, arg: &str) -> Reply {
        match call {
            Call::Eval(_) => self.reference.eval(&placeholder(arg), arg, self.drvs.of_commit(arg)),
            Call::SubmitCurrent => Reply::Returned(self.reference.submit_build(arg)),
            Call::Suspend => self.reference.suspend(),
            Call::Resume => Reply::Returned(self.reference.resume()),
            Call::Stop => {
                self.stopped = true;
                self.reference.stop()
            }
        }
    }

    /// Checks what a call answered against what the reference expected of it.
    fn check_answer(
        &mut self,
        call: Call,
        arg: &str,
        answer: Answer,
        expected: Result<(), Error>,
        later_eval: bool,
    ) {
        if let Some((rule, detail)) = error_mismatch(&answer.result(), &expected) {
            self.fail(rule, detail);
        }
        match answer {
            Answer::Evaluated(Ok(uuid)) => {
                self.reference.rename(&placeholder(arg), &uuid);
                self.keys.insert(uuid, arg.to_string());
                self.stopped = false;
            }
            Answer::Done(Ok(())) if call == Call::SubmitCurrent => self.stopped = false,
            Answer::Stopped { evaluating, building } if !later_eval && (evaluating || building) => self.fail(
                "when stop() returns nothing runs",
                format!("is_evaluating {evaluating}, is_building {building}"),
            ),
            Answer::Resumed { started_a_build: true, .. } if self.stopped => {
                self.fail("a resume after a stop starts nothing", "a build started")
            }
            _ => {}
        }
    }

    fn apply(&mut self, op: Op) {
        self.ended.clear();
        match op {
            Op::Eval { commit, .. } => self.lone_call(Call::Eval(commit)),
            Op::SubmitCurrent => self.lone_call(Call::SubmitCurrent),
            Op::Suspend { .. } => self.lone_call(Call::Suspend),
            Op::Resume => self.lone_call(Call::Resume),
            Op::Stop { .. } => self.lone_call(Call::Stop),
            Op::SubmitStale(_) | Op::SubmitUnknown => {
                let uuid = match op {
                    Op::SubmitStale(back) => {
                        self.reference.known.iter().rev().nth(1 + back as usize % 4).cloned()
                    }
                    _ => None,
                };
                let uuid = uuid.unwrap_or_else(|| format!("00000000-0000-4000-8000-{:012}", self.step));
                let (builder, u) = (self.builder(), uuid.clone());
                let result = self.caller.call(format!("{op:?}"), move || builder.submit_build(&u));
                let expected = self.reference.submit_build(&uuid);
                if let Some((rule, detail)) = error_mismatch(&result, &expected) {
                    self.fail(rule, detail);
                }
            }
            Op::Complete { job: Target::Running, ending } if self.reference.running.is_some() => {
                self.direct(Directive::Finish(ending));
                self.reference.finish(ending, false);
            }
            // Stale, unknown and mistyped completions cannot reach a Builder: its
            // jobs report only their own end, once.
            Op::Complete { .. } => {}
            Op::Race { calls, cancelled_job_ends } => self.race(&Op::race_calls(&calls), cancelled_job_ends),
            Op::StopWindow { calls, .. } => {
                self.lone_call(Call::Stop);
                for call in Op::race_calls(&calls) {
                    self.lone_call(call);
                }
            }
        }
        let expected: Vec<Ev> =
            self.reference.take_evs().into_iter().filter(Ev::is_visible_to_builder_check).collect();
        for ev in &expected {
            // A reused evaluation ends on its own, without reaching the executor.
            if let Ev::EvalFinished(uuid, Ok(evaluated)) = ev {
                if evaluated.reused_from.is_some() {
                    self.ended.extend(self.keys.get(uuid).cloned());
                }
            }
        }
        self.check_observed(&expected);
        if self.reference.running.is_some() {
            // Settled: the running job is past its reuse lookup before the next step
            // says anew whether a `.drv` is valid.
            self.running_job();
        }
        self.check_state();
    }

    /// A call alone: a job it cancels ends through the real cancellation.
    fn lone_call(&mut self, call: Call) {
        let cancels = match call {
            Call::Eval(_) | Call::Stop => self.reference.running.is_some(),
            Call::Suspend => !self.reference.suspended && self.reference.is_running(Kind::Build),
            Call::SubmitCurrent | Call::Resume => false,
        };
        if cancels {
            self.direct(Directive::AwaitCancel);
        }
        let (arg, f) = self.call_fn(call);
        let answer = self.caller.call(format!("{call:?}"), f);
        let reply = self.reference_call(call, &arg);
        let expected = self.settle_reference(reply);
        self.check_answer(call, &arg, answer, expected, false);
    }

    /// `calls` made while the job the first waiting one cancels is dying; then that
    /// job ends with `ending`.
    fn race(&mut self, calls: &[Call], ending: JobEnd) {
        let mut blocked: Vec<(BlockedCall, String)> = Vec::new();
        for (i, &call) in calls.iter().enumerate() {
            let (arg, f) = self.call_fn(call);
            match self.reference_call(call, &arg) {
                Reply::Returned(expected) => {
                    let answer = self.caller.call(format!("{call:?} in a race"), f);
                    let later_eval = calls[i + 1..].iter().any(|c| matches!(c, Call::Eval(_)));
                    self.check_answer(call, &arg, answer, expected, later_eval);
                    if matches!(call, Call::Eval(_)) && self.reference.running.is_none() {
                        self.await_reused_evaluation();
                    }
                }
                Reply::Blocked(expected) => {
                    let (tx, answer) = crossbeam_channel::bounded(1);
                    std::thread::Builder::new()
                        .name("fuzz-race".into())
                        .spawn(move || drop(tx.send(f())))
                        .expect("cannot start a racing caller");
                    self.await_waiting(blocked.len() + 1, call, &answer);
                    blocked.push((BlockedCall { call, expected, answer }, arg));
                }
            }
        }
        if blocked.is_empty() {
            return;
        }
        self.direct(Directive::Finish(ending));
        self.reference.finish(ending, false);
        let expected: Vec<Result<(), Error>> =
            blocked.iter().map(|(b, _)| self.reference.unblock(b.expected.clone())).collect();
        let calls_made: Vec<Call> = blocked.iter().map(|(b, _)| b.call).collect();
        for (i, ((b, arg), expected)) in blocked.into_iter().zip(expected).enumerate() {
            let answer = self.await_answer(&b);
            let later_eval = calls_made[i + 1..].iter().any(|c| matches!(c, Call::Eval(_)));
            self.check_answer(b.call, &arg, answer, expected, later_eval);
        }
    }

    /// Until `count` calls wait for the dying job; `call` (the last one made) must not
    /// return before.
    fn await_waiting(&self, count: usize, call: Call, answer: &Receiver<Answer>) {
        let builder = self.builder();
        let deadline = Instant::now() + CALL_BOUND;
        while builder.waiting_calls() < count {
            if let Ok(answer) = answer.try_recv() {
                self.fail(
                    "a call that cancels a job returns only once the job ended",
                    format!("{call:?} returned {answer:?} while the job still runs"),
                );
            }
            if Instant::now() > deadline {
                self.fail("a call that cancels a job waits for it", format!("{call:?} never waited"));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Until the reused evaluation the reference ended at once has ended in the builder
    /// too (on its job's thread), so that the next call of a race cannot cancel it.
    fn await_reused_evaluation(&self) {
        let builder = self.builder();
        let deadline = Instant::now() + CALL_BOUND;
        while builder.is_evaluating() {
            if Instant::now() > deadline {
                self.fail("a reused evaluation ends at once", "it still runs after 10 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// A blocked call's answer, once its job ended; a job starting meanwhile must be
    /// one the reference starts.
    fn await_answer(&mut self, b: &BlockedCall) -> Answer {
        let deadline = Instant::now() + CALL_BOUND;
        loop {
            select! {
                recv(b.answer) -> answer => return answer.expect("the racing caller answers"),
                recv(self.jobs) -> job => match job {
                    Ok(job) => self.registered(job),
                    Err(_) => self.fail("the executor lives", "its channel closed"),
                },
                default(deadline.saturating_duration_since(Instant::now())) => {
                    self.fail("every blocked call returns once its job ended", format!("deadlock: {:?}", b.call))
                }
            }
        }
    }

    /// Compares what the caller's channels received with `expected`, waiting for the
    /// notifications a job's end sends from its thread.
    fn check_observed(&self, expected: &[Ev]) {
        for ev in expected {
            let (rx, uuid, name) = match ev {
                Ev::EvaluationDone(uuid) => (&self.evaluation_done, uuid, "evaluation_done"),
                Ev::BuildDone(uuid) => (&self.build_done, uuid, "build_done"),
                _ => continue,
            };
            match rx.recv_timeout(CALL_BOUND) {
                Ok(got) if &got == uuid => {}
                Ok(got) => self.fail("notifications in order", format!("{name}: expected {uuid}, got {got}")),
                Err(_) => {
                    self.fail("every job ends with exactly one notification", format!("no {name} for {uuid}"))
                }
            }
            if !self.keys.get(uuid).is_some_and(|key| self.ended.contains(key)) {
                self.fail(
                    "a notification names the generation whose job ended",
                    format!("{name} {uuid} (commit {:?}); jobs ended: {:?}", self.keys.get(uuid), self.ended),
                );
            }
        }
        let extra: Vec<String> = self.evaluation_done.try_iter().chain(self.build_done.try_iter()).collect();
        if !extra.is_empty() {
            self.fail("every job ends with exactly one notification", format!("unexpected {extra:?}"));
        }
        let events: Vec<(&str, String)> = self
            .events
            .try_iter()
            .filter_map(|e| {
                use crate::proto::event::Kind as K;
                Some(match e.kind? {
                    K::EvalStarted(e) => ("eval started", e.generation?.uuid),
                    K::EvalFinished(e) => ("eval finished", e.generation?.uuid),
                    K::BuildStarted(e) => ("build started", e.generation?.uuid),
                    K::BuildFinished(e) => ("build finished", e.generation?.uuid),
                    _ => return None,
                })
            })
            .collect();
        let want: Vec<(&str, String)> = expected
            .iter()
            .filter_map(|ev| match ev {
                Ev::EvalStarted(u) => Some(("eval started", u.clone())),
                Ev::EvalFinished(u, _) => Some(("eval finished", u.clone())),
                Ev::BuildStarted(u, _) => Some(("build started", u.clone())),
                Ev::BuildFinished(u, _) => Some(("build finished", u.clone())),
                _ => None,
            })
            .collect();
        if events != want {
            self.fail(
                "every lifecycle event is published, in order",
                format!("expected {want:?}, got {events:?}"),
            );
        }
    }

    fn check_state(&self) {
        let builder = self.builder();
        let state = self.caller.call("state()", move || builder.state());
        let r = &self.reference;
        let want = (r.is_running(Kind::Eval), r.is_running(Kind::Build), r.suspended);
        let got = (
            state.is_evaluating.unwrap_or_default(),
            state.is_building.unwrap_or_default(),
            state.is_suspended.unwrap_or_default(),
        );
        if want != got {
            self.fail("is_evaluating, is_building, is_suspended", format!("expected {want:?}, got {got:?}"));
        }
        let uuid = r.current.as_ref().map(|g| g.uuid.clone()).unwrap_or_default();
        if state.generation_uuid != uuid {
            self.fail(
                "the current generation",
                format!("expected {uuid:?}, got {:?}", state.generation_uuid),
            );
        }
        let Some(g) = &r.current else { return };
        let Some(stored) = state.generation else {
            self.fail("the current generation is in the store", uuid)
        };
        let want = (g.eval, g.build, g.eval_err.clone(), g.build_err.clone());
        let got = (
            stored.eval_status.as_str(),
            stored.build_status.as_str(),
            Text::Exact(stored.eval_err.clone()),
            Text::Exact(stored.build_err.clone()),
        );
        if want.0 != got.0 || want.1 != got.1 || want.2 != got.2 || want.3 != got.3 {
            self.fail("the current generation as stored", format!("expected {want:?}, got {got:?}"));
        }
        if g.eval == EVALUATED && stored.drv_path != g.drv_path {
            self.fail(
                "the evaluation's output is recorded",
                format!("expected {}, got {}", g.drv_path, stored.drv_path),
            );
        }
        if stored.eval_reused_from != g.reused_from.clone().unwrap_or_default() {
            self.fail(
                "a reused evaluation names its source, and only a reused one",
                format!("expected {:?}, got {:?}", g.reused_from, stored.eval_reused_from),
            );
        }
        let kept: Vec<(String, String, String)> = self
            .store
            .reusable_evaluations()
            .into_iter()
            .map(|e| (e.key, e.source_uuid, e.drv_path))
            .collect();
        let want: Vec<(String, String, String)> =
            r.kept.iter().map(|k| (k.key.clone(), k.source.clone(), k.output.drv_path.clone())).collect();
        if kept != want {
            self.fail("the evaluations kept for reuse", format!("expected {want:?}, got {kept:?}"));
        }
    }
}

/// What the reference calls the generation of commit `key` until `eval` returned its
/// uuid.
fn placeholder(key: &str) -> String {
    format!("<generation of {key}>")
}

/// Applies `ops` (at most [`BUILDER_MAX_OPS`]) to a real [`Builder`] with the fake
/// executor described in the module documentation; panics, naming the rule, on a
/// divergence from the documented semantics, a call that does not return within
/// 10 s, or a thread left behind once the builder is dropped.
pub fn check_builder(ops: &[Op]) {
    let _one_at_a_time = BUILDER_CHECK.lock();
    let threads_before = genbuild_threads();
    let (jobs_tx, jobs) = crossbeam_channel::unbounded();
    let mut config = BuilderConfig::new("fuzz-host", std::env::temp_dir());
    config.process.kill_grace = Duration::from_millis(500);
    let (store, drvs) = (Arc::new(Store::new()), DrvValidity::default());
    let executor = FakeExecutor { jobs: jobs_tx, drvs: drvs.clone() };
    let builder = Builder::new(config, store.clone(), Arc::new(executor));
    let mut c = BuilderChecker {
        store,
        drvs,
        asked: Vec::new(),
        evaluation_done: builder.evaluation_done(),
        build_done: builder.build_done(),
        events: builder.subscribe(),
        builder: Some(builder),
        caller: Caller::new(),
        reference: Reference::default(),
        jobs,
        running: None,
        ended: Vec::new(),
        keys: HashMap::new(),
        commits: 0,
        stopped: false,
        step: 0,
        op: Op::SubmitUnknown,
    };
    let last = Op::Stop { cancelled_job_ends: JobEnd::Cancelled };
    let ops = &ops[..ops.len().min(BUILDER_MAX_OPS)];
    for (step, &op) in ops.iter().chain(std::iter::once(&last)).enumerate() {
        c.step = step;
        c.op = op;
        c.apply(op);
    }
    let builder = c.builder.take().expect("the builder lives until the end");
    c.caller.call("drop(Builder)", move || drop(builder));
    if let Ok(job) = c.jobs.try_recv() {
        c.fail(
            "a job reaches the executor only when the reference starts one",
            format!("{} registered", job.key),
        );
    }
    drop(c);
    crate::threads::POOL.retire_idle();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let now = genbuild_threads();
        if now <= threads_before {
            break;
        }
        if Instant::now() > deadline {
            panic!("rule violated (builder): no thread outlives the builder: {threads_before} before, {now} after");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
