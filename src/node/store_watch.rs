//! Follows the store's health for the event loop, once a tick: reopens a store whose writes
//! failed once its disk has space again (see `store::handle`), and says what is wrong where
//! those who cannot ask the node look: `store-problem` in the runtime dir (the line the hook's
//! fast path prints, since the node reads its note only after git has exited) and, for a damaged
//! store, the marker beside it (clients then report it instead of starting a node that would
//! fail the same way).

use std::path::PathBuf;

use crate::control::api::StoreStatus;
use crate::store::{Health, Store};

pub struct StoreWatch {
    /// The health and reopen count last seen.
    seen: (Health, u64),
    problem_file: PathBuf,
    data_dir: String,
}

impl StoreWatch {
    pub fn new(problem_file: PathBuf, data_dir: String) -> Self {
        Self { seen: (Health::Ok, 0), problem_file, data_dir }
    }

    /// Reopens the store if its writes failed and that may work now; tells of a change of its
    /// health. True when the store was reopened since the last look: the caller reads again
    /// what it holds of the store.
    pub fn look(&mut self, store: &Store) -> bool {
        if matches!(store.health(), Health::Full { .. } | Health::Failing { .. }) {
            store.reopen();
        }
        let (health, generation) = (store.health(), store.generation());
        let reopened = generation != self.seen.1;
        if health != self.seen.0 {
            self.tell(store, &health);
        }
        self.seen = (health, generation);
        reopened
    }

    fn tell(&self, store: &Store, health: &Health) {
        let path = store.path().display().to_string();
        let line = match health {
            Health::Ok => {
                let _ = std::fs::remove_file(&self.problem_file);
                return;
            }
            Health::Full { .. } => {
                format!("the disk holding {} is full: commits are announced once there is space again", self.data_dir)
            }
            Health::Failing { reason, .. } => {
                format!("cannot write the store {path} ({reason}): commits are announced once it works again")
            }
            Health::Damaged { .. } => {
                crate::store::record_damage(store.path(), &store.error_of(health).to_string());
                format!("the store {path} is damaged: commits are announced after: git p2p daemon repair")
            }
        };
        // The runtime dir may be on the full disk too: then the hook's slow path finds out itself.
        if let Err(e) = crate::store::write_atomically(&self.problem_file, format!("{line}\n").as_bytes()) {
            tracing::debug!(error = %e, "cannot tell the hook about the store");
        }
    }
}

/// The store as `daemon status` shows it.
pub fn status(store: &Store) -> StoreStatus {
    let health = store.health();
    let (state, since) = match &health {
        Health::Ok => ("ok", None),
        Health::Full { since } => ("full", Some(*since)),
        Health::Failing { since, .. } => ("failing", Some(*since)),
        Health::Damaged { .. } => ("damaged", None),
    };
    StoreStatus {
        state: state.into(),
        path: store.path().display().to_string(),
        problem: (health != Health::Ok).then(|| store.error_of(&health).to_string()),
        since,
        bytes: std::fs::metadata(store.path()).map(|m| m.len()).unwrap_or(0),
    }
}
