//! What the checker's actions do: the records applied to its stores, and the jobs'
//! ends handed to the machine (a reused evaluation's at once).

use super::MachineDriver;
use crate::fuzzing::reference::{
    fake_failure, fake_output, fake_reuse_key, Ev, Evaluated, Text, FAKE_TIMEOUT,
};
use crate::fuzzing::JobEnd;
use crate::machine::{JobKind, Outcome, Record};
use crate::proto::RepositoryStatus;
use crate::status::Provenance;
use crate::status::{BuildStatus, EvalStatus};
use crate::store::NewGeneration;
use crate::JobError;

/// A generation as the driver's store holds it, built from `Record` actions only.
#[derive(Debug, Clone)]
pub(super) struct Stored {
    pub(super) eval: EvalStatus,
    pub(super) build: BuildStatus,
    pub(super) drv_path: String,
    /// The evaluation request (the fake executor's key) it was created with.
    pub(super) key: String,
}

impl MachineDriver {
    /// What the evaluation job just started does first: look for a reusable evaluation
    /// of its key, and end at once if it finds one whose `.drv` is valid.
    pub(super) fn look_for_reuse(&mut self) -> Vec<Ev> {
        let Some(job) = self.running.as_mut().filter(|r| r.lookup_pending) else { return Vec::new() };
        job.lookup_pending = false;
        let commit = job.key.clone();
        let Some(key) = fake_reuse_key(&commit) else { return Vec::new() };
        let Some((from, output)) = self.records.reusable_evaluation(&key) else { return Vec::new() };
        if !self.drv_valid.get(&commit).copied().unwrap_or(true) {
            self.records.forget_reusable_evaluation(&key, &from);
            return Vec::new();
        }
        let already_built = output.out_path.ends_with("-valid");
        self.end_running(Outcome::Evaluated {
            output,
            already_built,
            provenance: Provenance::Reused { key, from },
        })
    }

    pub(super) fn apply_record(&mut self, record: Record<String>) -> Ev {
        let text = |r: Result<(), String>| r.map_err(Text::Exact);
        match record {
            Record::EvalStarted { uuid, request } => {
                let rs = RepositoryStatus { selected_commit_id: request.clone(), ..Default::default() };
                self.records
                    .generation_eval_started(NewGeneration { uuid: &uuid, ..Default::default() }, &rs);
                let g = Stored {
                    eval: EvalStatus::Evaluating,
                    build: BuildStatus::Initialized,
                    drv_path: "".into(),
                    key: request,
                };
                if self.store.insert(uuid.clone(), g).is_some() {
                    self.fail("a generation is created once", &uuid);
                }
                self.newest = Some(uuid.clone());
                Ev::EvalStarted(uuid)
            }
            Record::EvalFinished { uuid, result, usage } => {
                self.records.generation_eval_finished(&uuid, &result, usage);
                let g = self.stored(&uuid);
                if g.eval != EvalStatus::Evaluating {
                    self.fail(
                        "an evaluation finishes once, after it started",
                        format!("{uuid}: {:?}", g.eval),
                    );
                }
                let g = self.store.get_mut(&uuid).expect("checked above");
                match &result {
                    Ok((output, _)) => {
                        g.eval = EvalStatus::Evaluated;
                        g.drv_path = output.drv_path.clone();
                    }
                    Err(_) => g.eval = EvalStatus::Failed,
                }
                let result = result.map(|(output, provenance)| match provenance {
                    Provenance::Evaluated { key } => Evaluated { output, key, reused_from: None },
                    Provenance::Reused { key, from } => {
                        Evaluated { output, key: Some(key), reused_from: Some(from) }
                    }
                });
                Ev::EvalFinished(uuid, result.map_err(Text::Exact))
            }
            Record::BuildStarted { uuid, reason } => {
                self.records.generation_build_started(&uuid, reason);
                let g = self.stored(&uuid);
                if g.eval != EvalStatus::Evaluated
                    || g.build == BuildStatus::Built
                    || g.build == BuildStatus::Building
                {
                    self.fail(
                        "a build starts only of an evaluated, unbuilt generation",
                        format!("{uuid}: {g:?}"),
                    );
                }
                self.store.get_mut(&uuid).expect("checked above").build = BuildStatus::Building;
                Ev::BuildStarted(uuid, reason.as_str())
            }
            Record::BuildFinished { uuid, result, usage } => {
                self.records.generation_build_finished(&uuid, &result, usage);
                if self.stored(&uuid).build != BuildStatus::Building {
                    self.fail("a build finishes once, after it started", &uuid);
                }
                let built = if result.is_ok() { BuildStatus::Built } else { BuildStatus::Failed };
                self.store.get_mut(&uuid).expect("checked above").build = built;
                Ev::BuildFinished(uuid, text(result))
            }
        }
    }

    pub(super) fn stored(&self, uuid: &str) -> Stored {
        match self.store.get(uuid) {
            Some(g) => g.clone(),
            None => self.fail("records are about created generations", uuid),
        }
    }

    /// Hands the running job's end to the machine, as the job would.
    pub(super) fn finish_running(&mut self, ending: JobEnd, wrong_kind: bool) -> Vec<Ev> {
        let job = self.running.clone().expect("a running job");
        let outcome = match (ending, job.kind == JobKind::Eval) {
            (JobEnd::Ok { already_built }, is_eval) if is_eval != wrong_kind => Outcome::Evaluated {
                output: fake_output(&job.key, already_built),
                already_built,
                provenance: Provenance::Evaluated { key: fake_reuse_key(&job.key) },
            },
            (JobEnd::Ok { .. }, _) => Outcome::Built,
            (JobEnd::Failed, _) => Outcome::Failed(JobError::Failed(fake_failure(&job.key))),
            (JobEnd::TimedOut, _) => Outcome::Failed(JobError::TimedOut(FAKE_TIMEOUT)),
            (JobEnd::Cancelled, _) => Outcome::Failed(JobError::Cancelled(self.cancelled.clone())),
        };
        self.end_running(outcome)
    }

    /// Hands `outcome` to the machine as the running job's end.
    fn end_running(&mut self, outcome: Outcome) -> Vec<Ev> {
        let job = self.running.clone().expect("a running job");
        if !self.machine.handle_finished(job.id, outcome) {
            self.fail("the running job's completion is accepted", format!("{job:?}"));
        }
        self.running = None;
        self.ended.push(job.id);
        self.drain(Some(&job))
    }
}
