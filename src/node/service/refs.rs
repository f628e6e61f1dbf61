//! Our refs in the DHT. Each announcement of ours on a branch puts `refs/heads/<b>` → commit and
//! our entry of the repository's `refs` index (all our refs, for `git p2p refs`); a branch that
//! moved without a commit of ours (a fast-forward after `git pull`) is put the same way, and a
//! ref deleted since is unpublished (a tombstone for its key, the index without it). `git p2p
//! refs publish` puts every branch and tag and unpublishes the rest. The node signs these
//! entries with the user's key; nobody waits for the puts of the announcement path.
//!
//! The puts of announcements wait until their branches settle ([`SETTLE`], at most
//! [`SETTLE_AT_MOST`]): a put is a DHT query and a store at 20 nodes, each of which checks the
//! signature, and it would run while the announcement is still spreading. A burst of commits
//! (`git am`, a rebase) puts each branch once, at its newest commit. The announcement carries
//! the commit; the DHT is for those who look a branch up later. A node stopped before the put
//! puts the branch HEAD is on at its next start (`hook_notes`, the first read of a reflog).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use libp2p::kad;

use super::kv::{PutReply, Writer};
use super::{Disk, Service};
use crate::clock::Now;
use crate::control::api::{Failure, Published, Reply};
use crate::proto::announce::{is_object_id, Commit};
use crate::proto::kv::{record_key, validate_key, Entry, Record, MAX_VALUE, REFS_KEY};
use crate::proto::repo::{RepoId, RepoInfo};

/// How long a branch of ours stays where an announcement moved it before it is put.
pub const SETTLE: Duration = Duration::from_secs(1);
/// The longest a moved branch waits for its put, however often it moves.
pub const SETTLE_AT_MOST: Duration = Duration::from_secs(5);

/// Branches our announcements moved, not yet put.
#[derive(Default)]
pub struct Refs {
    /// Per repository, each moved branch at its newest commit.
    pending: BTreeMap<RepoId, BTreeMap<String, String>>,
    /// When the oldest of them moved and when the newest did.
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Refs {
    pub fn after_publish(&mut self, repo: RepoId, commit: Commit, at: Instant) {
        let Some(ref_name) = commit.ref_name else { return };
        self.pending.entry(repo).or_default().insert(ref_name, commit.id);
        self.first.get_or_insert(at);
        self.last = Some(at);
    }

    /// Whether the branches waiting are due for their puts at `now`.
    fn due(&self, now: Instant) -> bool {
        match (self.first, self.last) {
            (Some(first), Some(last)) => {
                now.saturating_duration_since(last) >= SETTLE || now.saturating_duration_since(first) >= SETTLE_AT_MOST
            }
            _ => false,
        }
    }

    /// The branches of `repo` waiting for their puts, taken out of the wait.
    fn take(&mut self, repo: &RepoId) -> BTreeMap<String, String> {
        let taken = self.pending.remove(repo).unwrap_or_default();
        if self.pending.is_empty() {
            (self.first, self.last) = (None, None);
        }
        taken
    }

    /// Forgets a waiting branch (put or unpublished by other means meanwhile).
    fn forget(&mut self, repo: &RepoId, ref_name: &str) {
        if let Some(refs) = self.pending.get_mut(repo) {
            refs.remove(ref_name);
            if refs.is_empty() {
                self.take(repo);
            }
        }
    }

    fn waiting(&self, repo: &RepoId) -> impl Iterator<Item = &String> {
        self.pending.get(repo).into_iter().flat_map(|refs| refs.keys())
    }
}

impl Service {
    /// Puts the branches our announcements moved, once they settled ([`SETTLE`]).
    pub(super) fn publish_refs(&mut self, now: Now, disk: &mut dyn Disk) {
        if !self.refs.due(now.mono) {
            return;
        }
        let repos: Vec<RepoId> = self.refs.pending.keys().cloned().collect();
        for repo in repos {
            let moved = self.refs.take(&repo);
            self.put_refs(&repo, moved, now, disk);
        }
    }

    /// Our branch moved without a commit of ours (a fast-forward): the DHT learns where it is
    /// now, unless it knows already.
    pub fn branch_moved(&mut self, repo: &RepoId, ref_name: String, commit: String, now: Now, disk: &mut dyn Disk) {
        self.refs.forget(repo, &ref_name);
        if self.own_refs(repo, disk).get(&ref_name) != Some(&commit) {
            self.put_refs(repo, BTreeMap::from([(ref_name, commit)]), now, disk);
        }
    }

    /// Puts each of our `moved` refs (name → commit), then our entry of the repository's refs
    /// index with them.
    fn put_refs(&mut self, repo: &RepoId, moved: BTreeMap<String, String>, now: Now, disk: &mut dyn Disk) {
        if moved.is_empty() {
            return;
        }
        let name = self.me.name.clone();
        for (ref_name, commit) in &moved {
            self.put_own(repo, ref_name, Some(commit.as_bytes()), name.clone(), Writer::Node, now, disk);
        }
        let mut refs = self.own_refs(repo, disk);
        refs.extend(moved);
        let index = serde_json::to_vec(&refs).expect("a map of strings serialises");
        self.put_own(repo, REFS_KEY, Some(&index), name, Writer::Node, now, disk);
    }

    /// The refs our index publishes in `repo` and those waiting for their puts, for the hook's
    /// side to check they still exist.
    pub fn published_refs(&self, repo: &RepoId, disk: &dyn Disk) -> Vec<String> {
        let mut refs: BTreeSet<String> = self.own_refs(repo, disk).into_keys().collect();
        refs.extend(self.refs.waiting(repo).cloned());
        refs.into_iter().collect()
    }

    /// Refs of ours that are gone from the repository (a deleted branch): unpublished.
    pub fn refs_gone(&mut self, repo: &RepoId, gone: &[String], now: Now, disk: &mut dyn Disk) {
        for name in gone {
            self.refs.forget(repo, name);
        }
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
        // What it says replaces what our announcements moved and was not put yet.
        self.refs.take(&repo.id);
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
