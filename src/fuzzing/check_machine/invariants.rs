//! What the checker holds after every step, besides comparing with the reference: the
//! machine's state against the reference's, the store's records, and what a returned
//! `stop` leaves.

use super::MachineDriver;
use crate::fuzzing::reference::{Kind, BUILT};

impl MachineDriver {
    /// What holds when `stop` returns (before any later call took effect).
    pub(super) fn check_stopped(&self) {
        if self.machine.running_job().is_some() || self.machine.is_build_wanted() {
            self.fail(
                "when stop() returns nothing runs and nothing is wanted",
                format!(
                    "running {:?}, build wanted {}",
                    self.machine.running_job(),
                    self.machine.is_build_wanted()
                ),
            );
        }
    }

    /// The machine's state, the stored current generation and the evaluations kept for
    /// reuse, against the reference's.
    pub(super) fn check_state(&self) {
        let r = &self.reference;
        let m = &self.machine;
        let want = (r.is_running(Kind::Eval), r.is_running(Kind::Build), r.suspended);
        let got = (m.is_evaluating(), m.is_building(), m.is_suspended());
        if want != got {
            self.fail("is_evaluating, is_building, is_suspended", format!("expected {want:?}, got {got:?}"));
        }
        if m.generation_uuid() != r.current.as_ref().map(|g| g.uuid.as_str()) {
            self.fail(
                "the current generation",
                format!("expected {:?}, got {:?}", r.current, m.generation_uuid()),
            );
        }
        if m.running_job().map(|(id, _)| id) != self.running.as_ref().map(|r| r.id) {
            self.fail("the running job is the last one started", format!("{:?}", m.running_job()));
        }
        // Once built, a wanted build is moot: the flag is not compared.
        let built = r.current.as_ref().is_some_and(|g| g.build == BUILT);
        let wanted = r.current.as_ref().is_some_and(|g| g.wanted);
        if !built && m.is_build_wanted() != wanted {
            self.fail(
                "a build is wanted exactly when submitted while suspended or cancelled by a suspend alone",
                wanted,
            );
        }
        if let Some(g) = &r.current {
            let stored = self.stored(&g.uuid);
            let statuses = (stored.eval.as_str(), stored.build.as_str());
            if statuses != (g.eval, g.build) {
                self.fail(
                    "the current generation's statuses",
                    format!("expected {:?}, got {statuses:?}", (g.eval, g.build)),
                );
            }
            let reused_from =
                self.records.generation(&g.uuid).map(|g| g.eval_reused_from).unwrap_or_default();
            if reused_from != g.reused_from.clone().unwrap_or_default() {
                self.fail(
                    "a reused evaluation names its source, and only a reused one",
                    format!("expected {:?}, got {reused_from:?}", g.reused_from),
                );
            }
        }
        let kept: Vec<(String, String, String, String)> = self
            .records
            .reusable_evaluations()
            .into_iter()
            .map(|e| (e.key, e.source_uuid, e.drv_path, e.out_path))
            .collect();
        let want: Vec<(String, String, String, String)> = r
            .kept
            .iter()
            .map(|k| (k.key.clone(), k.source.clone(), k.output.drv_path.clone(), k.output.out_path.clone()))
            .collect();
        if kept != want {
            self.fail("the evaluations kept for reuse", format!("expected {want:?}, got {kept:?}"));
        }
    }
}
