//! The reference model: the builder's semantics restated from its documentation
//! (the `Builder` methods' docs and the crate's "Guarantees"), without looking at the
//! machine's code. Where the two disagree, either the machine has a bug or the rules
//! are ambiguous; both deserve a look.
//!
//! The rules it implements, in its own words:
//! * `eval` cancels whatever runs, forgets any build wanted of the generation it
//!   replaces, waits for the job to end, then creates a new current generation and
//!   starts evaluating it. A successful evaluation whose output is already in the
//!   store is recorded built ("already built") and announced on `build_done`;
//!   otherwise the end is announced on `evaluation_done`.
//! * `submit_build` checks, in order: another current generation, unknown, not
//!   evaluated, a build running, already built. Suspended: the build is remembered;
//!   otherwise it starts.
//! * `suspend` cancels a running build, whose build is wanted again on resume if the
//!   suspend is what ended it; `resume` starts a wanted build of the current
//!   generation if nothing runs.
//! * `stop` forgets every wanted build, cancels whatever runs and waits for it; an
//!   `eval` that was waiting when `stop` was called gives up ("stopped"). Until it
//!   returns, no job starts: an `eval` waits for it, a build that would start ends at
//!   once ("cancelled: stopped"), and a build wanted meanwhile is forgotten when it
//!   returns.
//! * A job cancelled several times records the strongest reason: stopped, then
//!   superseded, then suspended. A job that ends on its own records its own error.
//! * A job's end starts a wanted build of the current generation if not suspended.
//! * An evaluation that succeeds with a reuse key is kept, by that key, with its
//!   generation's uuid and its output. An evaluation whose key is kept and whose
//!   `.drv` is still valid does not run: the generation is evaluated at once from
//!   what was kept, naming its source (`eval_reused_from`), and the rest is as after
//!   any evaluation. Kept but no longer valid: it is forgotten, and the evaluation
//!   runs. Failed and cancelled evaluations are never kept. Only the
//!   [`MAX_REUSABLE_EVALUATIONS`] keys last evaluated or reused are kept.

use crate::executor::EvalOutput;
use crate::fuzzing::JobEnd;
use crate::status::{BUILD_REASON_ALREADY_BUILT, BUILD_REASON_NEED_BUILD};
use crate::store::MAX_REUSABLE_EVALUATIONS;
use crate::Error;

/// An error text as recorded on a generation; `Any` where the rules leave it open.
#[derive(Debug, Clone)]
pub(super) enum Text {
    Exact(String),
    Any,
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        match (self, other) {
            (Text::Exact(a), Text::Exact(b)) => a == b,
            _ => true,
        }
    }
}

/// A successful evaluation as recorded: its output, the reuse key it was kept under
/// (if any), and the generation it was reused from (if it was).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Evaluated {
    pub(super) output: EvalOutput,
    pub(super) key: Option<String>,
    pub(super) reused_from: Option<String>,
}

/// An evaluation kept for reuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Kept {
    pub(super) key: String,
    pub(super) source: String,
    pub(super) output: EvalOutput,
}

/// What the outside world sees of a step: store records, notifications, and (machine
/// check only) job starts and cancellations.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Ev {
    EvalStarted(String),
    EvalFinished(String, Result<Evaluated, Text>),
    BuildStarted(String, &'static str),
    BuildFinished(String, Result<(), Text>),
    EvaluationDone(String),
    BuildDone(String),
    StartEval(String),
    StartBuild(String, String),
    Cancel(String),
}

impl Ev {
    pub(super) fn is_visible_to_builder_check(&self) -> bool {
        !matches!(self, Ev::StartEval(_) | Ev::StartBuild(..) | Ev::Cancel(_))
    }
}

pub(super) const INITIALIZED: &str = "initialized";
pub(super) const EVALUATING: &str = "evaluating";
pub(super) const EVALUATED: &str = "evaluated";
pub(super) const BUILDING: &str = "building";
pub(super) const BUILT: &str = "built";
pub(super) const FAILED: &str = "failed";

#[derive(Debug, Clone)]
pub(super) struct RefGen {
    pub(super) uuid: String,
    /// What the fake executor derives its output from.
    pub(super) key: String,
    pub(super) eval: &'static str,
    pub(super) build: &'static str,
    pub(super) eval_err: Text,
    pub(super) build_err: Text,
    pub(super) drv_path: String,
    /// The generation whose evaluation this one reused.
    pub(super) reused_from: Option<String>,
    /// A build submitted while suspended, or cancelled by a suspend.
    pub(super) wanted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Eval,
    Build,
}

/// Why a job was cancelled, strongest last.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Why {
    Suspended,
    Superseded(String),
    Stopped,
}

impl Why {
    fn rank(&self) -> u8 {
        match self {
            Why::Suspended => 0,
            Why::Superseded(_) => 1,
            Why::Stopped => 2,
        }
    }

    fn text(&self) -> String {
        match self {
            Why::Suspended => "cancelled: suspended".into(),
            Why::Superseded(uuid) => format!("cancelled: superseded by generation {uuid}"),
            Why::Stopped => "cancelled: stopped".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct RefJob {
    pub(super) kind: Kind,
    cancelled: Option<Why>,
}

/// A call that waits for the running job to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Blocked {
    Eval { uuid: String, key: String, stops: u64, drv_valid: bool },
    Suspend,
    Stop,
}

/// What a call does at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    Returned(Result<(), Error>),
    Blocked(Blocked),
}

#[derive(Debug, Default)]
pub(super) struct Reference {
    pub(super) current: Option<RefGen>,
    pub(super) running: Option<RefJob>,
    pub(super) suspended: bool,
    stops: u64,
    /// Stops under way.
    stopping: u32,
    /// Every generation created, oldest first.
    pub(super) known: Vec<String>,
    /// The evaluations kept for reuse, least recently used first.
    pub(super) kept: Vec<Kept>,
    evs: Vec<Ev>,
}

/// The reuse key the fake executors give an evaluation of `commit`: none for commits
/// whose name ends in `0`.
pub(super) fn fake_reuse_key(commit: &str) -> Option<String> {
    (!commit.ends_with('0')).then(|| format!("reuse-key-of-{commit}"))
}

pub(super) fn fake_output(key: &str, already_built: bool) -> EvalOutput {
    EvalOutput {
        drv_path: format!("/nix/store/{key}-system.drv"),
        out_path: format!("/nix/store/{key}-system{}", if already_built { "-valid" } else { "" }),
        machine_id: String::new(),
    }
}

pub(super) fn fake_failure(key: &str) -> String {
    format!("fake failure of {key}")
}

pub(super) const FAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(7);

impl Reference {
    pub(super) fn take_evs(&mut self) -> Vec<Ev> {
        std::mem::take(&mut self.evs)
    }

    pub(super) fn is_running(&self, kind: Kind) -> bool {
        self.running.as_ref().is_some_and(|r| r.kind == kind)
    }

    fn cancel(&mut self, why: Why) {
        let uuid = self.current.as_ref().expect("a running job has a current generation").uuid.clone();
        let job = self.running.as_mut().expect("cancel a running job");
        match &job.cancelled {
            None => {
                job.cancelled = Some(why);
                self.evs.push(Ev::Cancel(uuid));
            }
            Some(earlier) if why.rank() > earlier.rank() => job.cancelled = Some(why),
            Some(_) => {}
        }
    }

    /// `eval()` of generation `uuid`, whose commit is `key`; `drv_valid`: whether the
    /// `.drv` of an evaluation kept for its reuse key is still valid.
    pub(super) fn eval(&mut self, uuid: &str, key: &str, drv_valid: bool) -> Reply {
        if let Some(g) = &mut self.current {
            g.wanted = false;
        }
        if self.running.is_some() || self.stopping > 0 {
            if self.running.is_some() {
                self.cancel(Why::Superseded(uuid.to_string()));
            }
            let (uuid, key, stops) = (uuid.into(), key.into(), self.stops);
            return Reply::Blocked(Blocked::Eval { uuid, key, stops, drv_valid });
        }
        self.create(uuid, key, drv_valid);
        Reply::Returned(Ok(()))
    }

    fn create(&mut self, uuid: &str, key: &str, drv_valid: bool) {
        self.current = Some(RefGen {
            uuid: uuid.to_string(),
            key: key.to_string(),
            eval: EVALUATING,
            build: INITIALIZED,
            eval_err: Text::Exact(String::new()),
            build_err: Text::Exact(String::new()),
            drv_path: String::new(),
            reused_from: None,
            wanted: false,
        });
        self.known.push(uuid.to_string());
        self.running = Some(RefJob { kind: Kind::Eval, cancelled: None });
        self.evs.push(Ev::EvalStarted(uuid.to_string()));
        self.evs.push(Ev::StartEval(uuid.to_string()));
        let Some(reuse_key) = fake_reuse_key(key) else { return };
        let Some(at) = self.kept.iter().position(|k| k.key == reuse_key) else { return };
        let kept = self.kept.remove(at);
        if drv_valid {
            self.running = None;
            let evaluated =
                Evaluated { output: kept.output, key: Some(reuse_key), reused_from: Some(kept.source) };
            self.evaluated(evaluated);
        }
    }

    /// Keeps `evaluated` for reuse (the most recent), if it has a key.
    fn keep(&mut self, uuid: &str, evaluated: &Evaluated) {
        let Some(key) = &evaluated.key else { return };
        self.kept.retain(|k| &k.key != key);
        let source = evaluated.reused_from.clone().unwrap_or_else(|| uuid.to_string());
        self.kept.push(Kept { key: key.clone(), source, output: evaluated.output.clone() });
        if self.kept.len() > MAX_REUSABLE_EVALUATIONS {
            self.kept.remove(0);
        }
    }

    pub(super) fn submit_build(&mut self, uuid: &str) -> Result<(), Error> {
        let building = self.is_running(Kind::Build);
        let Some(g) = &mut self.current else {
            // No current generation: only the store could know `uuid`, and every
            // generation this model created is or was current.
            return Err(Error::UnknownGeneration(uuid.to_string()));
        };
        if g.uuid != uuid {
            return Err(Error::AnotherGeneration);
        }
        if g.eval != EVALUATED {
            return Err(Error::NotEvaluated);
        }
        if building {
            return Err(Error::AlreadyBuilding);
        }
        if g.build == BUILT {
            return Err(Error::AlreadyBuilt);
        }
        g.wanted = true;
        self.start_wanted_build();
        Ok(())
    }

    fn start_wanted_build(&mut self) {
        if self.suspended || self.running.is_some() {
            return;
        }
        let Some(g) = &mut self.current else { return };
        if !g.wanted || g.eval != EVALUATED || g.build == BUILT {
            return;
        }
        g.wanted = false;
        self.evs.push(Ev::BuildStarted(g.uuid.clone(), BUILD_REASON_NEED_BUILD));
        if self.stopping > 0 {
            let text = Why::Stopped.text();
            g.build = FAILED;
            g.build_err = Text::Exact(text.clone());
            self.evs.push(Ev::BuildFinished(g.uuid.clone(), Err(Text::Exact(text))));
            self.evs.push(Ev::BuildDone(g.uuid.clone()));
            return;
        }
        g.build = BUILDING;
        g.build_err = Text::Exact(String::new());
        self.running = Some(RefJob { kind: Kind::Build, cancelled: None });
        self.evs.push(Ev::StartBuild(g.uuid.clone(), g.drv_path.clone()));
    }

    pub(super) fn suspend(&mut self) -> Reply {
        if self.suspended {
            return Reply::Returned(Err(Error::AlreadySuspended));
        }
        self.suspended = true;
        if self.is_running(Kind::Build) {
            self.cancel(Why::Suspended);
            return Reply::Blocked(Blocked::Suspend);
        }
        Reply::Returned(Ok(()))
    }

    pub(super) fn resume(&mut self) -> Result<(), Error> {
        if !self.suspended {
            return Err(Error::NotSuspended);
        }
        self.suspended = false;
        self.start_wanted_build();
        Ok(())
    }

    /// A lone `stop()`: it waits for the job it cancels, if one runs.
    pub(super) fn stop(&mut self) -> Reply {
        if self.stop_begin() {
            return Reply::Blocked(Blocked::Stop);
        }
        self.stop_end();
        Reply::Returned(Ok(()))
    }

    /// A stop begins: every wanted build is forgotten, whatever runs is cancelled;
    /// whether a job runs, for the stop to wait for.
    pub(super) fn stop_begin(&mut self) -> bool {
        self.stops += 1;
        self.stopping += 1;
        if let Some(g) = &mut self.current {
            g.wanted = false;
        }
        if self.running.is_some() {
            self.cancel(Why::Stopped);
        }
        self.running.is_some()
    }

    /// A stop returns: what was wanted meanwhile is forgotten.
    pub(super) fn stop_end(&mut self) {
        self.stopping -= 1;
        if let Some(g) = &mut self.current {
            g.wanted = false;
        }
    }

    /// Gives generation `placeholder`, created by an `eval` whose uuid was not known
    /// yet, its real uuid `uuid`, everywhere it appears.
    pub(super) fn rename(&mut self, placeholder: &str, uuid: &str) {
        let fix = |s: &mut String| *s = s.replace(placeholder, uuid);
        if let Some(g) = &mut self.current {
            fix(&mut g.uuid);
            for text in [&mut g.eval_err, &mut g.build_err] {
                if let Text::Exact(s) = text {
                    fix(s);
                }
            }
            g.reused_from.iter_mut().for_each(fix);
        }
        self.known.iter_mut().for_each(fix);
        self.kept.iter_mut().for_each(|k| fix(&mut k.source));
        for ev in &mut self.evs {
            match ev {
                Ev::EvalFinished(u, Ok(evaluated)) => {
                    fix(u);
                    evaluated.reused_from.iter_mut().for_each(fix);
                }
                Ev::EvalFinished(u, Err(Text::Exact(s))) | Ev::BuildFinished(u, Err(Text::Exact(s))) => {
                    fix(u);
                    fix(s);
                }
                Ev::EvalStarted(u)
                | Ev::EvaluationDone(u)
                | Ev::BuildDone(u)
                | Ev::StartEval(u)
                | Ev::Cancel(u) => fix(u),
                Ev::EvalFinished(u, _)
                | Ev::BuildFinished(u, _)
                | Ev::BuildStarted(u, _)
                | Ev::StartBuild(u, _) => fix(u),
            }
        }
        if let Some(RefJob { cancelled: Some(Why::Superseded(u)), .. }) = &mut self.running {
            fix(u);
        }
    }

    /// The key of the current generation, whose job runs if one does.
    pub(super) fn current_key(&self) -> Option<&str> {
        self.current.as_ref().map(|g| g.key.as_str())
    }

    /// A blocked call, once the job it waited for has ended.
    pub(super) fn unblock(&mut self, blocked: Blocked) -> Result<(), Error> {
        assert!(
            self.running.is_none() || !matches!(blocked, Blocked::Eval { .. }),
            "no job starts while an eval waits"
        );
        match blocked {
            Blocked::Eval { stops, .. } if stops != self.stops => Err(Error::Stopped),
            Blocked::Eval { uuid, key, drv_valid, .. } => {
                assert_eq!(self.stopping, 0, "an eval waits for every stop under way");
                self.create(&uuid, &key, drv_valid);
                Ok(())
            }
            Blocked::Suspend => Ok(()),
            Blocked::Stop => {
                self.stop_end();
                Ok(())
            }
        }
    }

    /// The running job ends. `wrong_kind`: it reports the other kind's success.
    pub(super) fn finish(&mut self, ending: JobEnd, wrong_kind: bool) {
        let job = self.running.take().expect("finish with a running job");
        let g = self.current.as_mut().expect("a running job has a current generation");
        let uuid = g.uuid.clone();
        let result = match (ending, wrong_kind) {
            (JobEnd::Ok { .. }, true) => Err(Text::Any),
            (JobEnd::Ok { already_built }, false) => Ok(already_built),
            (JobEnd::Failed, _) => Err(Text::Exact(fake_failure(&g.key))),
            (JobEnd::TimedOut, _) => Err(Text::Exact("timed out after 7s".into())),
            (JobEnd::Cancelled, _) => {
                Err(Text::Exact(job.cancelled.as_ref().map_or("cancelled".into(), Why::text)))
            }
        };
        match (job.kind, result) {
            (Kind::Eval, Ok(already_built)) => {
                let output = fake_output(&g.key, already_built);
                let key = fake_reuse_key(&g.key);
                self.evaluated(Evaluated { output, key, reused_from: None });
                return;
            }
            (Kind::Eval, Err(text)) => {
                g.eval = FAILED;
                g.eval_err = text.clone();
                self.evs.push(Ev::EvalFinished(uuid.clone(), Err(text)));
                self.evs.push(Ev::EvaluationDone(uuid));
            }
            (Kind::Build, Ok(_)) => {
                g.build = BUILT;
                self.evs.push(Ev::BuildFinished(uuid.clone(), Ok(())));
                self.evs.push(Ev::BuildDone(uuid));
            }
            (Kind::Build, Err(text)) => {
                g.build = FAILED;
                g.build_err = text.clone();
                // Wanted again only when the suspend is what ended it.
                if ending == JobEnd::Cancelled && job.cancelled == Some(Why::Suspended) {
                    g.wanted = true;
                }
                self.evs.push(Ev::BuildFinished(uuid.clone(), Err(text)));
                self.evs.push(Ev::BuildDone(uuid));
            }
        }
        self.start_wanted_build();
    }

    /// The running evaluation of the current generation succeeded (or was reused)
    /// with `evaluated`.
    fn evaluated(&mut self, evaluated: Evaluated) {
        let g = self.current.as_mut().expect("an evaluation has a current generation");
        let uuid = g.uuid.clone();
        // The fake executors' store holds exactly the outputs named so.
        let already_built = evaluated.output.out_path.ends_with("-valid");
        g.eval = EVALUATED;
        g.drv_path = evaluated.output.drv_path.clone();
        g.reused_from = evaluated.reused_from.clone();
        self.keep(&uuid, &evaluated);
        self.evs.push(Ev::EvalFinished(uuid.clone(), Ok(evaluated)));
        let g = self.current.as_mut().expect("still there");
        if already_built {
            g.build = BUILT;
            g.build_err = Text::Exact(String::new());
            self.evs.push(Ev::BuildStarted(uuid.clone(), BUILD_REASON_ALREADY_BUILT));
            self.evs.push(Ev::BuildFinished(uuid.clone(), Ok(())));
            self.evs.push(Ev::BuildDone(uuid));
        } else {
            self.evs.push(Ev::EvaluationDone(uuid));
        }
        self.start_wanted_build();
    }
}
