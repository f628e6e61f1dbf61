//! Our refs in the DHT. Each announcement of ours on a branch puts `refs/heads/<b>` → commit and
//! our entry of the repository's `refs` index (all our refs, for `git p2p refs`), once the
//! announcement itself went out; a branch that moved without a commit of ours (a fast-forward
//! after `git pull`) is put the same way. The node signs these entries with the user's key;
//! nobody waits for their puts.

use std::collections::BTreeMap;

use libp2p::kad;

use super::kv::Writer;
use super::{Disk, Service};
use crate::clock::Now;
use crate::proto::announce::Commit;
use crate::proto::kv::{record_key, Entry, Record, REFS_KEY};
use crate::proto::repo::RepoId;

#[derive(Default)]
pub struct Refs {
    /// Commits of our announcements, whose refs are put once the announcement was published.
    after_publish: Vec<(RepoId, Commit)>,
}

impl Refs {
    pub fn after_publish(&mut self, repo: RepoId, commit: Commit) {
        self.after_publish.push((repo, commit));
    }
}

impl Service {
    /// Puts the refs that announcements queued since the last flush move.
    pub(super) fn publish_refs(&mut self, now: Now, disk: &mut dyn Disk) {
        for (repo, commit) in std::mem::take(&mut self.refs.after_publish) {
            if let Some(ref_name) = commit.ref_name {
                self.put_ref(&repo, ref_name, commit.id, now, disk);
            }
        }
    }

    /// Our branch moved without a commit of ours (a fast-forward): the DHT learns where it is
    /// now, unless it knows already.
    pub fn branch_moved(&mut self, repo: &RepoId, ref_name: String, commit: String, now: Now, disk: &mut dyn Disk) {
        if self.own_refs(repo, disk).get(&ref_name) != Some(&commit) {
            self.put_ref(repo, ref_name, commit, now, disk);
        }
    }

    /// Puts our `ref_name` → `commit`, and our entry of the repository's refs index.
    fn put_ref(&mut self, repo: &RepoId, ref_name: String, commit: String, now: Now, disk: &mut dyn Disk) {
        self.put_own(repo, &ref_name, commit.as_bytes(), now, disk);
        let mut refs = self.own_refs(repo, disk);
        refs.insert(ref_name, commit);
        let index = serde_json::to_vec(&refs).expect("a map of strings serialises");
        self.put_own(repo, REFS_KEY, &index, now, disk);
    }

    /// Our entry of a repository's refs index, as our copy of the record has it (empty if none).
    fn own_refs(&self, repo: &RepoId, disk: &dyn Disk) -> BTreeMap<String, String> {
        self.own_entry(repo, REFS_KEY, disk)
            .and_then(|e| e.value_bytes())
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default()
    }

    /// Our entry for `key`, as our copy of the record has it.
    fn own_entry(&self, repo: &RepoId, key: &str, disk: &dyn Disk) -> Option<Entry> {
        let dht_key = kad::RecordKey::new(&record_key(repo, key));
        let record = Record::decode(&disk.record(&dht_key)?.value, repo, dht_key.as_ref()).ok()?;
        record.entries.into_iter().find(|e| e.author == self.me.author)
    }

    /// Signs ([`Service::sign_own`]) and puts an entry of ours.
    fn put_own(&mut self, repo: &RepoId, key: &str, value: &[u8], now: Now, disk: &mut dyn Disk) {
        let entry = match self.sign_own(repo, key, Some(value), self.me.name.clone(), now, disk) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(%key, error = %e, "cannot sign a ref");
                return;
            }
        };
        if let Err(e) = self.put_entry(repo, key, entry, Writer::Node, now, disk) {
            tracing::warn!(%key, error = %e, "cannot publish a ref");
        }
    }
}
