//! Our git notes in the DHT (`git p2p notes push`): each note under `notes/<ref>/<commit>`, and
//! our entry of `notes/<ref>`, the commits our notes annotate (what `notes pull` reads first).
//! A note removed since the last push is unpublished: a tombstone for its key, the index
//! without it.

use std::collections::BTreeSet;

use super::kv::{PutReply, Writer};
use super::{Disk, Service};
use crate::clock::Now;
use crate::control::api::{Failure, KvStored, Published, Reply};
use crate::proto::announce::is_object_id;
use crate::proto::kv::{notes_key, MAX_VALUE};
use crate::proto::repo::{RepoId, RepoInfo};

impl Service {
    /// Our note on `commit` in `notes_ref`; the answer waits for its put.
    #[allow(clippy::too_many_arguments)]
    pub fn note_put(
        &mut self,
        repo: RepoInfo,
        notes_ref: String,
        commit: String,
        text: Vec<u8>,
        name: Option<String>,
        reply: Reply<KvStored>,
        now: Now,
        disk: &mut dyn Disk,
    ) {
        if !is_object_id(&commit) {
            let _ = reply.send(Err(Failure::new(format!("cannot publish a note on {commit:?}: not a commit id"))));
            return;
        }
        let key = notes_key(&notes_ref, Some(&commit));
        self.put_own(&repo.id, &key, Some(&text), name, Writer::User(PutReply::new(reply, |s| s)), now, disk);
    }

    /// The commits our notes in `notes_ref` annotate; a note published before whose commit is
    /// not among them is unpublished. The answer waits for the index's put.
    #[allow(clippy::too_many_arguments)]
    pub fn notes_index(
        &mut self,
        repo: RepoInfo,
        notes_ref: String,
        commits: BTreeSet<String>,
        name: Option<String>,
        reply: Reply<Published>,
        now: Now,
        disk: &mut dyn Disk,
    ) {
        if let Some(bad) = commits.iter().find(|c| !is_object_id(c)) {
            let _ = reply.send(Err(Failure::new(format!("cannot publish a note on {bad:?}: not a commit id"))));
            return;
        }
        let index = serde_json::to_vec(&commits).expect("a set of strings serialises");
        if index.len() > MAX_VALUE {
            let _ = reply.send(Err(Failure::new(format!(
                "too many notes for one index ({} bytes, at most {MAX_VALUE})",
                index.len()
            ))));
            return;
        }
        let key = notes_key(&notes_ref, None);
        let removed: Vec<String> =
            self.own_notes(&repo.id, &key, disk).into_iter().filter(|c| !commits.contains(c)).collect();
        for commit in &removed {
            self.unpublish(&repo.id, &notes_key(&notes_ref, Some(commit)), now, disk);
        }
        let count = commits.len();
        let answer = PutReply::new(reply, move |stored| Published { count, removed, replicas: stored.replicas });
        self.put_own(&repo.id, &key, Some(&index), name, Writer::User(answer), now, disk);
    }

    /// The commits our entry of the notes index `key` lists (none if we have no entry).
    fn own_notes(&self, repo: &RepoId, key: &str, disk: &dyn Disk) -> BTreeSet<String> {
        self.own_entry(repo, key, disk)
            .and_then(|e| e.value_bytes())
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default()
    }
}
