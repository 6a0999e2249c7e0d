//! The evaluations a later one may reuse: by their executor's reuse key, the result
//! itself (the generation it came from may have been collected since), bounded to the
//! [`MAX_REUSABLE_EVALUATIONS`] most recently used keys.
//!
//! A lookup is a hash map access, whatever the store holds: an `eval()` never scans
//! the store. The file keeps the entries least recently used first
//! (`StoreState.reusable_evaluations`), so that the order survives a restart.

use std::collections::HashMap;

use crate::executor::EvalOutput;
use crate::proto::ReusableEvaluation;

/// How many keys are kept: the most recently used (evaluated or reused) ones. A NixOS
/// host rarely goes back further than a few commits; 64 entries are about 16 KiB of
/// store file.
pub const MAX_REUSABLE_EVALUATIONS: usize = 64;

/// The index; see the module documentation.
#[derive(Debug, Default)]
pub(super) struct ReuseIndex {
    entries: HashMap<String, Entry>,
    /// Counts uses; each entry holds the count of its last use.
    clock: u64,
}

#[derive(Debug)]
struct Entry {
    evaluation: ReusableEvaluation,
    last_used: u64,
}

impl ReuseIndex {
    /// The index of the entries a store file holds, least recently used first. Entries
    /// missing a key, a source or a path are skipped (genbuild never writes them); of
    /// two with one key the later wins; beyond [`MAX_REUSABLE_EVALUATIONS`] the oldest go.
    pub(super) fn load(persisted: Vec<ReusableEvaluation>) -> ReuseIndex {
        let mut index = ReuseIndex::default();
        for evaluation in persisted {
            let complete =
                [&evaluation.key, &evaluation.source_uuid, &evaluation.drv_path, &evaluation.out_path]
                    .iter()
                    .all(|field| !field.is_empty());
            if complete {
                index.record(evaluation);
            } else {
                log::warn!(
                    "the store file holds an incomplete reusable evaluation ({evaluation:?}); it is dropped"
                );
            }
        }
        index
    }

    /// The evaluation recorded under `key`: the generation it came from and its result.
    pub(super) fn get(&self, key: &str) -> Option<(String, EvalOutput)> {
        let e = &self.entries.get(key)?.evaluation;
        let output = EvalOutput {
            drv_path: e.drv_path.clone(),
            out_path: e.out_path.clone(),
            machine_id: e.machine_id.clone(),
        };
        Some((e.source_uuid.clone(), output))
    }

    pub(super) fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Records `evaluation` as the most recently used, replacing its key's entry, and
    /// drops the least recently used beyond [`MAX_REUSABLE_EVALUATIONS`].
    pub(super) fn record(&mut self, evaluation: ReusableEvaluation) {
        self.clock += 1;
        let entry = Entry { evaluation, last_used: self.clock };
        self.entries.insert(entry.evaluation.key.clone(), entry);
        if self.entries.len() > MAX_REUSABLE_EVALUATIONS {
            let oldest = self.entries.values().min_by_key(|e| e.last_used).map(|e| e.evaluation.key.clone());
            if let Some(key) = oldest {
                self.entries.remove(&key);
            }
        }
    }

    /// Drops `key`'s entry if it still holds the evaluation of generation `source_uuid`
    /// (not one recorded since); returns whether it did.
    pub(super) fn remove(&mut self, key: &str, source_uuid: &str) -> bool {
        let holds = self.entries.get(key).is_some_and(|e| e.evaluation.source_uuid == source_uuid);
        if holds {
            self.entries.remove(key);
        }
        holds
    }

    /// The entries as the file keeps them: least recently used first.
    pub(super) fn to_persisted(&self) -> Vec<ReusableEvaluation> {
        let mut entries: Vec<&Entry> = self.entries.values().collect();
        entries.sort_by_key(|e| e.last_used);
        entries.into_iter().map(|e| e.evaluation.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evaluation(key: &str, source: &str) -> ReusableEvaluation {
        ReusableEvaluation {
            key: key.into(),
            source_uuid: source.into(),
            drv_path: format!("/nix/store/{key}.drv"),
            out_path: format!("/nix/store/{key}"),
            machine_id: String::new(),
        }
    }

    fn keys(index: &ReuseIndex) -> Vec<String> {
        index.to_persisted().into_iter().map(|e| e.key).collect()
    }

    #[test]
    fn the_least_recently_used_key_goes_first() {
        let mut index = ReuseIndex::default();
        for i in 0..MAX_REUSABLE_EVALUATIONS {
            index.record(evaluation(&format!("k{i}"), "g"));
        }
        // A reuse of k0 makes it the most recent; k1 is then the oldest.
        index.record(evaluation("k0", "g"));
        index.record(evaluation("new", "g"));
        assert_eq!(index.entries.len(), MAX_REUSABLE_EVALUATIONS);
        assert!(index.contains("k0") && index.contains("new") && !index.contains("k1"));
        let persisted = keys(&index);
        assert_eq!(persisted.first().map(String::as_str), Some("k2"));
        assert_eq!(&persisted[MAX_REUSABLE_EVALUATIONS - 2..], ["k0", "new"]);
    }

    #[test]
    fn loading_keeps_the_order_the_bound_and_complete_entries_only() {
        let mut persisted: Vec<ReusableEvaluation> =
            (0..MAX_REUSABLE_EVALUATIONS + 3).map(|i| evaluation(&format!("k{i}"), "g")).collect();
        persisted.push(evaluation("k5", "later"));
        persisted.push(ReusableEvaluation { drv_path: String::new(), ..evaluation("no-drv", "g") });
        persisted.push(ReusableEvaluation { source_uuid: String::new(), ..evaluation("no-source", "g") });
        let index = ReuseIndex::load(persisted);
        let keys = keys(&index);
        assert_eq!(keys.len(), MAX_REUSABLE_EVALUATIONS);
        assert_eq!(keys.first().map(String::as_str), Some("k3"), "the three oldest went");
        assert_eq!(
            keys.last().map(String::as_str),
            Some("k5"),
            "the later duplicate wins, as the most recent"
        );
        assert_eq!(index.get("k5").map(|(source, _)| source), Some("later".into()));
        assert!(!index.contains("no-drv") && !index.contains("no-source"));
    }

    #[test]
    fn an_entry_is_removed_only_while_it_holds_that_source() {
        let mut index = ReuseIndex::default();
        index.record(evaluation("k", "old"));
        index.record(evaluation("k", "new"));
        assert!(!index.remove("k", "old"), "recorded again since");
        assert_eq!(
            index.get("k").map(|(source, output)| (source, output.drv_path)),
            Some(("new".into(), "/nix/store/k.drv".into()))
        );
        assert!(index.remove("k", "new"));
        assert!(index.get("k").is_none());
    }
}
