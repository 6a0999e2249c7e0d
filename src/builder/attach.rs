//! One live [`Builder`](crate::Builder) per [`Store`](crate::Store): what a second
//! one is told.
//!
//! The store's rules are store-wide: it keeps the last generations of each kind,
//! whoever made them, so a second builder's evaluations collect the first one's
//! generations; and the store's id names the owner of the gc roots, so the Nix
//! executors of a second builder release the first one's roots. Builders over one
//! store one after the other (a restart) are the intended use. Two at once are a
//! misuse that `Builder::new` cannot refuse (it returns no error, and existing callers
//! must keep compiling): it logs a warning naming the store instead.
//!
//! Stores are counted by id, so two `Store`s opened over one file (which overwrite each
//! other's file) count as one.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use crate::store::Store;

/// Live builders by store id.
static LIVE: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

/// A builder's hold on its store; released when dropped.
#[derive(Debug)]
pub(super) struct Attached {
    store_id: String,
}

/// Counts a new builder over `store`, warning when another one is alive.
pub(super) fn attach(store: &Store) -> Attached {
    let store_id = store.id().to_string();
    let mut live = LIVE.lock();
    let count = live.entry(store_id.clone()).or_default();
    *count += 1;
    if *count > 1 {
        log::warn!(
            "{} live Builders use the store {store_id} (one Store, or two over one file): they drop \
             each other's generations and, with the Nix executors, each other's gc roots; \
             use one Builder per Store at a time",
            *count
        );
    }
    Attached { store_id }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut live = LIVE.lock();
        if let Some(count) = live.get_mut(&self.store_id) {
            *count -= 1;
            if *count == 0 {
                live.remove(&self.store_id);
            }
        }
    }
}
