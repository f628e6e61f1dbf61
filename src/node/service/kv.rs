//! DHT records: our writes (signed here, merged into our copy, then put), lookups (every copy
//! found merged with ours), the control requests waiting for their queries, and what peers ask
//! us to store (every entry verified and merged before it is kept; one dated too far ahead of
//! our clock is refused). A query is answered when Kademlia says it is done, when
//! [`GET_COPIES`] peers sent a copy, or at [`QUERY_DEADLINE`], whichever is first.
//!
//! Our entries' sequence numbers are max(now, last + 1): the clock when it moves forward, one
//! more than our last entry when the clock was set back (or had been ahead when we wrote it), so
//! that a write never becomes a rollback that every node would refuse.
//! After a repair, our entries the damaged store lost are fetched back from peers' copies (the
//! keys the repair could name): looked up once peers are there, kept when found.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{kad, PeerId};

use super::{Disk, Io, RecordError, Service};
use crate::clock::Now;
use crate::control::api::{Failure, KvFound, KvKey, KvStored, Page, Reply};
use crate::proto::kv::{record_key, reserved, user_key, validate_key, Entry, Record, Who};
use crate::proto::repo::{RepoId, RepoInfo};

/// A `kv get` answers once this many peers sent their copy (merged with ours), without waiting
/// for the lookup to ask all 20 closest peers: a writer's put reached several of them.
pub const GET_COPIES: usize = 3;
/// A query not done by then is answered with what it has (Kademlia's own timeout is 10 s).
pub const QUERY_DEADLINE: Duration = Duration::from_secs(12);
/// A key to fetch back is looked up this many times (while peers are few, a lookup may miss).
const RESTORE_TRIES: u8 = 3;
/// Between rounds of lookups of keys to fetch back.
const RESTORE_EVERY: Duration = Duration::from_secs(10);
/// Lookups of keys to fetch back in flight at most.
const RESTORE_AT_ONCE: usize = 32;
/// Keys read from the store per step of a `kv ls` page (a key is at most 256 bytes: far below
/// a page's bytes, whatever is kept).
const KV_LIST_PAGE: usize = 500;

/// Who writes an entry: a user (`kv set`: the write is durable before the put, and the answer
/// waits for it), or the node itself (our refs: synced with the next batch, nobody waits).
pub(super) enum Writer {
    User(PutReply),
    Node,
}

/// Where the outcome of a user's put goes: a `kv set`'s answer, or the answer of a request that
/// made several puts (`refs publish`), told by its last.
pub(super) struct PutReply(Box<dyn FnOnce(Result<KvStored, Failure>) + Send>);

impl PutReply {
    /// The put's outcome as `reply`'s answer, made by `answer`.
    pub(super) fn new<T: Send + 'static>(reply: Reply<T>, answer: impl FnOnce(KvStored) -> T + Send + 'static) -> Self {
        Self(Box::new(move |result| {
            let _ = reply.send(result.map(answer));
        }))
    }

    pub(super) fn send(self, result: Result<KvStored, Failure>) {
        (self.0)(result)
    }
}

/// A query of ours, as the service names it (the event loop maps it to Kademlia's id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueryRef(u64);

enum Pending {
    /// `reply`: None for our own refs, which nobody waits for.
    Put {
        reply: Option<PutReply>,
        replicas: usize,
        deadline: Instant,
    },
    Get {
        asker: Asker,
        merged: Record,
        found: bool,
        copies: usize,
        deadline: Instant,
    },
}

/// Who waits for a lookup.
enum Asker {
    User(Reply<KvFound>),
    /// The node fetching back an entry of ours (after a repair).
    Restore(Restoring),
}

/// A key whose entry of ours is to be fetched back from peers.
struct Restoring {
    repo: RepoId,
    key: String,
    tries: u8,
}

#[derive(Default)]
pub struct Kv {
    pending: HashMap<QueryRef, Pending>,
    next: u64,
    /// Keys to fetch back, not being looked up right now.
    restore: Vec<Restoring>,
    restore_next: Option<Instant>,
}

impl Kv {
    fn start(&mut self, pending: Pending) -> QueryRef {
        self.next += 1;
        let query = QueryRef(self.next);
        self.pending.insert(query, pending);
        query
    }

    /// A copy of the record from `peer` (None: our own). True when the lookup has enough.
    fn found(&mut self, query: QueryRef, peer: Option<PeerId>, record: &kad::Record, now: Now) -> bool {
        let Some(Pending::Get { merged, found, copies, .. }) = self.pending.get_mut(&query) else { return false };
        match Record::decode(&record.value, &merged.repo, record.key.as_ref()) {
            Ok(copy) => {
                merged.merge(copy, now.unix_ms);
                // A copy whose every entry was refused (dated too far ahead) found nothing.
                *found |= !merged.entries.is_empty();
                if peer.is_some() {
                    *copies += 1;
                }
            }
            Err(e) => tracing::debug!(?peer, error = %e, "refused a DHT answer"),
        }
        *copies >= GET_COPIES
    }

    /// Keys still to fetch back from peers, looked up now or later.
    pub fn restoring(&self) -> usize {
        let looking = self.pending.values().filter(|p| matches!(p, Pending::Get { asker: Asker::Restore(_), .. }));
        self.restore.len() + looking.count()
    }

    /// Keys to fetch back from peers (a repair's list).
    pub fn restore(&mut self, keys: Vec<(RepoId, String)>) {
        self.restore.extend(keys.into_iter().map(|(repo, key)| Restoring { repo, key, tries: 0 }));
    }

    /// Answers the request waiting for `query`, with what it has; a fetch-back's result is
    /// returned for the service to keep.
    fn answer(&mut self, query: QueryRef, requests: u32) -> Option<(Restoring, Option<Record>)> {
        match self.pending.remove(&query) {
            Some(Pending::Put { reply: Some(reply), replicas, .. }) => reply.send(Ok(KvStored { replicas, requests })),
            Some(Pending::Get { asker: Asker::User(reply), merged, found, .. }) => {
                let _ = reply.send(Ok(KvFound { record: found.then_some(merged), requests }));
            }
            Some(Pending::Get { asker: Asker::Restore(restoring), merged, found, .. }) => {
                return Some((restoring, found.then_some(merged)));
            }
            Some(Pending::Put { reply: None, .. }) | None => {}
        }
        None
    }

    /// Queries past their deadline.
    fn overdue(&self, now: Instant) -> Vec<QueryRef> {
        let deadline = |p: &Pending| match p {
            Pending::Put { deadline, .. } | Pending::Get { deadline, .. } => *deadline,
        };
        self.pending.iter().filter(|(_, p)| deadline(p) <= now).map(|(q, _)| *q).collect()
    }
}

/// Our copy of `key`'s record in `repo`, if we hold a valid one.
fn local(disk: &dyn Disk, repo: &RepoId, dht_key: &kad::RecordKey) -> Option<Record> {
    let stored = disk.record(dht_key)?;
    Record::decode(&stored.value, repo, dht_key.as_ref()).ok()
}

/// Why our record store refused a record, in the user's words.
fn store_refused(error: &RecordError) -> Failure {
    use crate::node::kad_store::MAX_RECORD_BYTES;
    Failure::new(match error {
        RecordError::Kad(kad::store::Error::MaxRecords) => "this node's DHT store is full; not stored".to_string(),
        RecordError::Kad(kad::store::Error::ValueTooLarge) => {
            format!("the record is larger than the DHT takes ({} KiB); not stored", MAX_RECORD_BYTES / 1024)
        }
        RecordError::Kad(kad::store::Error::MaxProvidedKeys) => {
            "this node provides as many keys as it keeps; not stored".to_string()
        }
        RecordError::Store(e) => format!("cannot store the record: {e}"),
    })
}

impl Service {
    /// A `kv set` (or `rm`, with no value): our entry, signed here as our user (named `name`),
    /// merged into our copy, stored durably, and put in the DHT; the answer waits for the put.
    /// git-p2p's own keys ([`crate::proto::kv::reserved`]) are refused, whoever asks; so is
    /// removing a key that holds no value of ours (a tombstone only ever hides its author's
    /// own value: others' stay, and a second one would hide nothing).
    #[allow(clippy::too_many_arguments)]
    pub fn kv_put(
        &mut self,
        repo: RepoInfo,
        key: String,
        value: Option<Vec<u8>>,
        name: Option<String>,
        reply: Reply<KvStored>,
        now: Now,
        disk: &mut dyn Disk,
    ) {
        if let Err(e) = disk.writable() {
            let _ = reply.send(Err(Failure::new(format!("cannot store: {e}"))));
            return;
        }
        if let Err(e) = user_key(&key) {
            let _ = reply.send(Err(Failure::of(&e)));
            return;
        }
        if value.is_none() {
            if let Err(failure) = self.removable(&repo.id, &key, disk) {
                let _ = reply.send(Err(failure));
                return;
            }
        }
        let entry = match self.sign_own(&repo.id, &key, value.as_deref(), name, now, disk) {
            Ok(entry) => entry,
            Err(e) => {
                let _ = reply.send(Err(Failure::of(&e)));
                return;
            }
        };
        if let Err(e) = self.put_entry(&repo.id, &key, entry, Writer::User(PutReply::new(reply, |s| s)), now, disk) {
            tracing::debug!(%key, error = %e, "kv put refused");
        }
    }

    /// Whether `key` holds a value of ours to remove; if not, why not, naming what others hold.
    fn removable(&self, repo: &RepoId, key: &str, disk: &dyn Disk) -> Result<(), Failure> {
        let record = local(disk, repo, &kad::RecordKey::new(&record_key(repo, key)));
        let values = record.as_ref().map(|r| r.values()).unwrap_or_default();
        if values.iter().any(|e| e.author == self.me.author) {
            return Ok(());
        }
        let others = match values.len() {
            0 => String::new(),
            n => format!(" (the values of {n} other author(s) stay: each author removes only their own)"),
        };
        Err(Failure::new(format!("no such key: {key:?} holds no value of yours to remove{others}")))
    }

    /// A page of the keys we wrote in `repo`, after `after`: those that hold a value of ours,
    /// or with `all` also our tombstones and git-p2p's own keys (marked). A page is empty only
    /// when it is the last: the store is read on until a key is kept.
    pub fn kv_list(
        &self,
        repo: &RepoId,
        mut after: Option<String>,
        all: bool,
        reply: Reply<Page<KvKey, String>>,
        disk: &mut dyn Disk,
    ) {
        loop {
            let (keys, next) = match disk.kv_own_page(repo, after.as_deref(), KV_LIST_PAGE) {
                Ok(page) => page,
                Err(e) => {
                    let _ = reply.send(Err(Failure::new(format!("cannot read the keys you wrote: {e}"))));
                    return;
                }
            };
            let items: Vec<KvKey> = keys
                .into_iter()
                .map(|(key, time)| {
                    let internal = reserved(&key).is_some();
                    let removed = self.removed(repo, &key, &*disk);
                    KvKey { key, time, removed, internal }
                })
                .filter(|k| all || !(k.removed || k.internal))
                .collect();
            if !items.is_empty() || next.is_none() {
                let _ = reply.send(Ok(Page { items, next }));
                return;
            }
            after = next;
        }
    }

    /// Whether our entry for `key` is a tombstone (a key whose record we no longer hold counts
    /// as written: nothing says it was removed).
    fn removed(&self, repo: &RepoId, key: &str, disk: &dyn Disk) -> bool {
        self.own_entry(repo, key, disk).is_some_and(|e| e.value.is_none())
    }

    /// An entry of ours for `key` (None: a tombstone), signed with our user's key. Its sequence
    /// number is the time, or one more than our last entry's if that is later: after a clock
    /// set back, and for two writes in one millisecond (a tie keeps the entry with the greater
    /// signature, maybe the older one).
    pub(super) fn sign_own(
        &self,
        repo: &RepoId,
        key: &str,
        value: Option<&[u8]>,
        name: Option<String>,
        now: Now,
        disk: &dyn Disk,
    ) -> Result<Entry, crate::proto::kv::KvError> {
        validate_key(key)?;
        let dht_key = kad::RecordKey::new(&record_key(repo, key));
        let last = local(disk, repo, &dht_key)
            .and_then(|r| r.entries.into_iter().find(|e| e.author == self.me.author))
            .map_or(0, |e| e.seq);
        let seq = now.unix_ms.max(last.saturating_add(1));
        let who = Who { name, npub: Some(self.me.npub.clone()) };
        Entry::sign_as(&self.me.key, repo, key, value, seq, now.unix_ms, who)
    }

    /// Stores and puts one entry; on failure the user (if one waits) got the reason.
    pub(super) fn put_entry(
        &mut self,
        repo: &RepoId,
        key: &str,
        entry: Entry,
        writer: Writer,
        now: Now,
        disk: &mut dyn Disk,
    ) -> Result<(), Failure> {
        let (reply, durable) = match writer {
            Writer::User(reply) => (Some(reply), true),
            Writer::Node => (None, false),
        };
        let fail = |reply: Option<PutReply>, failure: Failure| {
            if let Some(reply) = reply {
                reply.send(Err(failure.clone()));
            }
            Err(failure)
        };
        let dht_key = kad::RecordKey::new(&record_key(repo, key));
        let mut record = local(disk, repo, &dht_key).unwrap_or_else(|| Record::new(repo, key));
        let ts = entry.ts;
        if let Err(e) = record.merge_entry(entry, now.unix_ms) {
            return fail(reply, Failure::of(&e));
        }
        // Stored here at once (as Kademlia's put would), so that the next write of this key,
        // even in the same batch, merges into this one; then the key in our list, whose durable
        // commit (a user's write) makes the record durable too.
        let mut stored = kad::Record::new(dht_key, record.encode());
        stored.publisher = Some(self.me.peer);
        if let Err(e) = disk.put_record(stored.clone()) {
            return fail(reply, store_refused(&e));
        }
        if let Err(e) = disk.kv_own(repo, key, ts, durable) {
            return fail(reply, Failure::new(format!("cannot store: {e}")));
        }
        let deadline = now.mono + QUERY_DEADLINE;
        let query = self.kv.start(Pending::Put { reply, replicas: 0, deadline });
        self.push(Io::PutRecord { query, record: stored });
        Ok(())
    }

    /// A `kv get`: a DHT lookup, every copy found merged with ours.
    pub fn kv_get(&mut self, repo: RepoId, key: String, reply: Reply<KvFound>, now: Now, disk: &mut dyn Disk) {
        if let Err(e) = validate_key(&key) {
            let _ = reply.send(Err(Failure::of(&e)));
            return;
        }
        let dht_key = kad::RecordKey::new(&record_key(&repo, &key));
        let ours = local(disk, &repo, &dht_key);
        let found = ours.is_some();
        let merged = ours.unwrap_or_else(|| Record::new(&repo, &key));
        let deadline = now.mono + QUERY_DEADLINE;
        let query = self.kv.start(Pending::Get { asker: Asker::User(reply), merged, found, copies: 0, deadline });
        self.push(Io::GetRecord { query, key: dht_key });
    }

    /// Looks up the keys to fetch back, once peers are there to ask (a round every
    /// [`RESTORE_EVERY`]).
    pub(super) fn restore_own(&mut self, now: Now) {
        if self.kv.restore.is_empty()
            || self.discovery.peers.is_empty()
            || self.kv.restore_next.is_some_and(|at| now.mono < at)
        {
            return;
        }
        self.kv.restore_next = Some(now.mono + RESTORE_EVERY);
        let round = self.kv.restore.len().min(RESTORE_AT_ONCE);
        for mut restoring in self.kv.restore.drain(..round).collect::<Vec<_>>() {
            restoring.tries += 1;
            let dht_key = kad::RecordKey::new(&record_key(&restoring.repo, &restoring.key));
            let merged = Record::new(&restoring.repo, &restoring.key);
            let deadline = now.mono + QUERY_DEADLINE;
            let asker = Asker::Restore(restoring);
            let query = self.kv.start(Pending::Get { asker, merged, found: false, copies: 0, deadline });
            self.push(Io::GetRecord { query, key: dht_key });
        }
    }

    /// What a fetch-back found: our entry (with everyone else's) is kept as our copy, and the
    /// key in our list; not found, it is looked up again, [`RESTORE_TRIES`] times at most.
    fn restored(&mut self, restoring: Restoring, found: Option<Record>, now: Now, disk: &mut dyn Disk) {
        let ours = found.as_ref().and_then(|r| r.entries.iter().find(|e| e.author == self.me.author)).map(|e| e.ts);
        if let (Some(record), Some(ts)) = (found.as_ref(), ours) {
            let dht_key = kad::RecordKey::new(&record_key(&restoring.repo, &restoring.key));
            let local = local(disk, &restoring.repo, &dht_key);
            let mut merged = record.clone();
            if let Some(local) = local {
                merged.merge(local, now.unix_ms);
            }
            let mut stored = kad::Record::new(dht_key, merged.encode());
            stored.publisher = Some(self.me.peer);
            let kept = disk
                .put_record(stored)
                .map_err(|e| e.to_string())
                .and_then(|()| disk.kv_own(&restoring.repo, &restoring.key, ts, false).map_err(|e| e.to_string()));
            match kept {
                Ok(()) => tracing::info!(key = %restoring.key, "fetched our DHT entry back from peers"),
                Err(e) => {
                    // Tried again with the next round (the store may be full for now).
                    tracing::warn!(key = %restoring.key, error = %e, "cannot keep a DHT entry fetched back");
                    self.kv.restore.push(restoring);
                    return;
                }
            }
        } else if restoring.tries < RESTORE_TRIES {
            self.kv.restore.push(restoring);
            return;
        } else {
            tracing::info!(key = %restoring.key, "no peer has our DHT entry; not fetched back");
        }
        if let Err(e) = disk.restore_done(&restoring.repo, &restoring.key) {
            tracing::debug!(error = %e, "cannot record a fetched-back key");
        }
    }

    /// Kademlia refused to start a put (our own store refused the record).
    pub fn kv_failed(&mut self, query: QueryRef, error: kad::store::Error) {
        if let Some(Pending::Put { reply: Some(reply), .. }) = self.kv.pending.remove(&query) {
            reply.send(Err(store_refused(&RecordError::Kad(error))));
        }
    }

    /// A lookup found a copy (from `peer`, or ours when None).
    pub fn kv_found(
        &mut self,
        query: QueryRef,
        peer: Option<PeerId>,
        record: &kad::Record,
        requests: u32,
        now: Now,
        disk: &mut dyn Disk,
    ) {
        if self.kv.found(query, peer, record, now) {
            self.push(Io::FinishQuery(query));
            self.answer(query, requests, now, disk);
        }
    }

    /// Answers whoever waits for `query`.
    fn answer(&mut self, query: QueryRef, requests: u32, now: Now, disk: &mut dyn Disk) {
        if let Some((restoring, found)) = self.kv.answer(query, requests) {
            self.restored(restoring, found, now, disk);
        }
    }

    /// A put reached `replicas` peers.
    pub fn kv_put_done(&mut self, query: QueryRef, replicas: usize) {
        if let Some(Pending::Put { replicas: r, .. }) = self.kv.pending.get_mut(&query) {
            *r = replicas;
        }
    }

    /// Kademlia is done with a query: the request waiting for it is answered.
    pub fn kv_query_done(&mut self, query: QueryRef, requests: u32, now: Now, disk: &mut dyn Disk) {
        self.answer(query, requests, now, disk);
    }

    /// Queries past their deadline are answered with what they have, and stopped.
    pub(super) fn expire_queries(&mut self, now: Now, disk: &mut dyn Disk) {
        for query in self.kv.overdue(now.mono) {
            tracing::debug!(?query, "DHT query past its deadline");
            self.answer(query, 0, now, disk);
            self.push(Io::FinishQuery(query));
        }
    }

    /// A peer asks us to store a record: every entry verified and merged with our copy (one
    /// dated too far ahead of our clock is left out), kept.
    pub fn kad_inbound(&mut self, source: PeerId, record: kad::Record, now: Now, disk: &mut dyn Disk) {
        let incoming = match Record::decode_any(&record.value, record.key.as_ref()) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%source, error = %e, "refused a DHT record");
                return;
            }
        };
        let mut merged =
            local(disk, &incoming.repo, &record.key).unwrap_or_else(|| Record::new(&incoming.repo, &incoming.key));
        let offered = incoming.entries.len();
        if merged.merge(incoming, now.unix_ms) == 0 && offered > 0 && merged.entries.is_empty() {
            tracing::debug!(%source, "refused a DHT record: no entry we can keep");
            return;
        }
        let mut stored = kad::Record::new(record.key, merged.encode());
        // The peer that sent it answers for it (the quotas count per peer): a record's own
        // publisher field is whatever the sender wrote there.
        stored.publisher = Some(source);
        stored.expires = record.expires;
        if let Err(e) = disk.put_record(stored) {
            tracing::debug!(%source, error = ?e, "cannot store a DHT record");
        }
    }
}
