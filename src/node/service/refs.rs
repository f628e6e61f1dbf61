//! Our refs in the DHT. Each announcement of ours on a branch puts `refs/heads/<b>` → commit and
//! our entry of the repository's `refs` index (all our refs, for `git p2p refs`), once the
//! announcement itself went out; a branch that moved without a commit of ours (a fast-forward
//! after `git pull`) is put the same way, and a ref deleted since is unpublished (a tombstone
//! for its key, the index without it). `git p2p refs publish` puts every branch and tag and
//! unpublishes the rest. The node signs these entries with the user's key; nobody waits for
//! the puts of the announcement path.

use std::collections::BTreeMap;

use libp2p::kad;

use super::kv::{PutReply, Writer};
use super::{Disk, Service};
use crate::clock::Now;
use crate::control::api::{Failure, Published, Reply};
use crate::proto::announce::{is_object_id, Commit};
use crate::proto::kv::{record_key, validate_key, Entry, Record, MAX_VALUE, REFS_KEY};
use crate::proto::repo::{RepoId, RepoInfo};

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
        let name = self.me.name.clone();
        self.put_own(repo, &ref_name, Some(commit.as_bytes()), name.clone(), Writer::Node, now, disk);
        let mut refs = self.own_refs(repo, disk);
        refs.insert(ref_name, commit);
        let index = serde_json::to_vec(&refs).expect("a map of strings serialises");
        self.put_own(repo, REFS_KEY, Some(&index), name, Writer::Node, now, disk);
    }

    /// The refs our index publishes in `repo`, for the hook's side to check they still exist.
    pub fn published_refs(&self, repo: &RepoId, disk: &dyn Disk) -> Vec<String> {
        self.own_refs(repo, disk).into_keys().collect()
    }

    /// Refs of ours that are gone from the repository (a deleted branch): unpublished.
    pub fn refs_gone(&mut self, repo: &RepoId, gone: &[String], now: Now, disk: &mut dyn Disk) {
        let mut refs = self.own_refs(repo, disk);
        let before = refs.len();
        refs.retain(|name, _| !gone.contains(name));
        if refs.len() == before {
            return;
        }
        for name in gone {
            self.unpublish(repo, name, now, disk);
        }
        self.mirror_forget(repo, gone);
        let index = serde_json::to_vec(&refs).expect("a map of strings serialises");
        self.put_own(repo, REFS_KEY, Some(&index), self.me.name.clone(), Writer::Node, now, disk);
    }

    /// `git p2p refs publish`: every ref given is put, each ref published before and not given
    /// any more is unpublished, and the index says exactly what is given. The answer waits for
    /// the index's put.
    #[allow(clippy::too_many_arguments)]
    pub fn refs_publish(
        &mut self,
        repo: RepoInfo,
        refs: BTreeMap<String, String>,
        name: Option<String>,
        reply: Reply<Published>,
        now: Now,
        disk: &mut dyn Disk,
    ) {
        let bad =
            refs.iter().find(|(r, oid)| !crate::git::is_ref_name(r) || validate_key(r).is_err() || !is_object_id(oid));
        if let Some((r, oid)) = bad {
            let _ =
                reply.send(Err(Failure::new(format!("cannot publish {r:?} at {oid:?}: not a ref and an object id"))));
            return;
        }
        let index = serde_json::to_vec(&refs).expect("a map of strings serialises");
        if index.len() > MAX_VALUE {
            let _ = reply.send(Err(Failure::new(format!(
                "too many refs to publish ({} bytes of refs, at most {MAX_VALUE})",
                index.len()
            ))));
            return;
        }
        let removed: Vec<String> =
            self.own_refs(&repo.id, disk).into_keys().filter(|r| !refs.contains_key(r)).collect();
        for (r, oid) in &refs {
            self.put_own(&repo.id, r, Some(oid.as_bytes()), name.clone(), Writer::Node, now, disk);
        }
        for r in &removed {
            self.unpublish(&repo.id, r, now, disk);
        }
        self.mirror_forget(&repo.id, &removed);
        let count = refs.len();
        let answer = PutReply::new(reply, move |stored| Published { count, removed, replicas: stored.replicas });
        self.put_own(&repo.id, REFS_KEY, Some(&index), name, Writer::User(answer), now, disk);
    }

    /// Our entry of a repository's refs index, as our copy of the record has it (empty if none).
    fn own_refs(&self, repo: &RepoId, disk: &dyn Disk) -> BTreeMap<String, String> {
        self.own_entry(repo, REFS_KEY, disk)
            .and_then(|e| e.value_bytes())
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default()
    }

    /// Our entry for `key`, as our copy of the record has it.
    pub(super) fn own_entry(&self, repo: &RepoId, key: &str, disk: &dyn Disk) -> Option<Entry> {
        let dht_key = kad::RecordKey::new(&record_key(repo, key));
        Record::entry_of(&disk.record(&dht_key)?.value, repo, dht_key.as_ref(), &self.me.author)
    }

    /// A tombstone for our value of `key`, if we have one there.
    pub(super) fn unpublish(&mut self, repo: &RepoId, key: &str, now: Now, disk: &mut dyn Disk) {
        if self.own_entry(repo, key, disk).is_some_and(|e| e.value.is_some()) {
            self.put_own(repo, key, None, self.me.name.clone(), Writer::Node, now, disk);
        }
    }

    /// Signs ([`Service::sign_own`]) and puts an entry of ours (None: a tombstone); a failure
    /// goes to the user who waits, if one does.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn put_own(
        &mut self,
        repo: &RepoId,
        key: &str,
        value: Option<&[u8]>,
        name: Option<String>,
        writer: Writer,
        now: Now,
        disk: &mut dyn Disk,
    ) {
        let entry = match self.sign_own(repo, key, value, name, now, disk) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(%key, error = %e, "cannot sign an entry of ours");
                if let Writer::User(reply) = writer {
                    reply.send(Err(Failure::of(&e)));
                }
                return;
            }
        };
        if let Err(e) = self.put_entry(repo, key, entry, writer, now, disk) {
            tracing::warn!(%key, error = %e, "cannot publish an entry of ours");
        }
    }
}
