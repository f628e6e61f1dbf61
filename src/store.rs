//! The node's embedded persistent store (redb): address book, registered repos, the outbox of
//! announcements not yet delivered, and the feed of announcements received per repo.
//!
//! Every write is its own durable transaction (redb fsyncs on commit), so what the store has
//! acknowledged survives kill -9. Values are JSON so that the format can grow fields without a
//! migration; readers skip records they cannot parse instead of failing the whole node.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::clock::{unix_now, unix_now_ms};
use crate::proto::announce::FeedEntry;
use crate::proto::chat::ChatEntry;
use crate::proto::outbox::OutboxEntry;
use crate::proto::repo::{LocalPath, RepoId, RepoInfo};

/// peer id -> [`KnownPeer`] (JSON)
const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers");
/// repo id -> room name
const REPOS: TableDefinition<&str, &str> = TableDefinition::new("repos");

/// seq -> [`OutboxEntry`] (JSON), in the order the announcements were made
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// (repo id, seq) -> [`FeedEntry`] (JSON); seq grows with arrival
const FEED: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("feed");
/// "repo/commit/author" -> feed seq: an announcement is shown once, however often it arrives
const SEEN: TableDefinition<&str, u64> = TableDefinition::new("seen");

/// (room, seq) -> [`ChatEntry`] (JSON)
const CHAT: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("chat");
/// message id -> seq in its room: a message is kept once, however often it arrives
const CHAT_SEEN: TableDefinition<&str, u64> = TableDefinition::new("chat_seen");

/// A room keeps this many messages; older ones are dropped first.
pub const MAX_CHAT_PER_ROOM: usize = 1000;

/// DHT key -> [`DhtRecord`] (JSON): the Kademlia records this node holds, ours and others'
const DHT: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dht");
/// (repo, key) -> unix ms of our last write: the keys this node published (`kv ls`)
const KV_OWN: TableDefinition<(&str, &str), u64> = TableDefinition::new("kv_own");
/// Repo id -> its git dir on this machine (read by the Nostr bridge; never published).
const REPO_DIRS: TableDefinition<&str, &str> = TableDefinition::new("repo_dirs");
/// Our own announced commits: (repo id, commit) -> unix ms. The hook's fast and slow paths and
/// the reflog all lead here, so each commit is announced once.
const OWN_ANNOUNCED: TableDefinition<(&str, &str), u64> = TableDefinition::new("own_announced");
/// Our last announcement per repository: repo id -> (commit, unix ms), for `git p2p repos`
/// (the set above forgets after 30 days).
const LAST_ANNOUNCED: TableDefinition<&str, (&str, u64)> = TableDefinition::new("last_announced");
/// Repo id -> how far (bytes) the node has read the repository's HEAD reflog.
const REFLOG_POS: TableDefinition<&str, u64> = TableDefinition::new("reflog_pos");
/// Signed Nostr events waiting for relays to accept them: seq -> JSON [`NostrPending`].
const NOSTR_OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("nostr_outbox");
/// What we last queued for each replaceable event (`kind:d`): JSON [`NostrLast`].
const NOSTR_LAST: TableDefinition<&str, &[u8]> = TableDefinition::new("nostr_last");

/// A Kademlia record as stored: the expiry is wall-clock time, so it survives restarts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DhtRecord {
    pub value: Vec<u8>,
    pub publisher: Option<String>,
    /// Unix ms after which the record is dropped; None: never.
    pub expires: Option<u64>,
}

/// The feed keeps this many announcements per repo; older ones are dropped first.
pub const MAX_FEED_PER_REPO: usize = 10_000;

/// At most this many addresses are kept per peer; peers announce many (every interface).
pub const MAX_ADDRS_PER_PEER: usize = 16;
/// At most this many peers are kept in the address book; the least recently seen go first.
pub const MAX_KNOWN_PEERS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store {path} is in use by another process (is another node running on this data dir?)")]
    Busy { path: String },
    #[error("store error: {0}")]
    Db(#[from] redb::Error),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KnownPeer {
    pub addrs: Vec<String>,
    pub name: Option<String>,
    /// Unix seconds of the last time we were connected.
    pub last_seen: u64,
}

/// Keys we wrote, with the time of our last write, and where the next page starts.
pub type KeysPage = (Vec<(String, u64)>, Option<String>);

/// Cheap to clone: the Kademlia record store holds a handle too.
#[derive(Clone)]
pub struct Store {
    db: std::sync::Arc<Database>,
}

fn db<T, E: Into<redb::Error>>(r: Result<T, E>) -> Result<T, StoreError> {
    r.map_err(|e| StoreError::Db(e.into()))
}

/// The highest sequence number under `key` in a `(key, seq)` table (0 when there is none).
fn last_seq(table: &impl ReadableTable<(&'static str, u64), &'static [u8]>, key: &str) -> Result<u64, StoreError> {
    let last =
        db(table.range((key, 0)..=(key, u64::MAX)))?.next_back().transpose().map_err(|e| StoreError::Db(e.into()))?;
    Ok(last.map_or(0, |(k, _)| k.value().1))
}

impl Store {
    /// A write transaction; without `durable` its commit is not fsync'd and becomes durable with
    /// the next durable commit (see [`Store::sync`]).
    fn write(&self, durable: bool) -> Result<redb::WriteTransaction, StoreError> {
        let mut txn = db(self.db.begin_write())?;
        if !durable {
            // Only fails for a transaction that already wrote with another durability; this one is new.
            let _ = txn.set_durability(redb::Durability::None);
        }
        Ok(txn)
    }

    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let database = match Database::create(path) {
            Ok(database) => database,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Busy { path: path.display().to_string() })
            }
            Err(e) => return Err(StoreError::Db(e.into())),
        };
        let txn = db(database.begin_write())?;
        db(txn.open_table(PEERS))?;
        db(txn.open_table(REPOS))?;
        db(txn.open_table(OUTBOX))?;
        db(txn.open_table(FEED))?;
        db(txn.open_table(SEEN))?;
        db(txn.open_table(CHAT))?;
        db(txn.open_table(CHAT_SEEN))?;
        db(txn.open_table(DHT))?;
        db(txn.open_table(KV_OWN))?;
        db(txn.open_table(REPO_DIRS))?;
        db(txn.open_table(OWN_ANNOUNCED))?;
        db(txn.open_table(LAST_ANNOUNCED))?;
        db(txn.open_table(REFLOG_POS))?;
        db(txn.open_table(NOSTR_OUTBOX))?;
        db(txn.open_table(NOSTR_LAST))?;
        db(txn.commit())?;
        Ok(Self { db: std::sync::Arc::new(database) })
    }

    /// Records that we are connected to `peer` at `addrs` (most useful first).
    pub fn remember_peer(&self, peer: &str, addrs: &[String], name: Option<&str>) -> Result<(), StoreError> {
        let txn = self.write(true)?;
        {
            let mut table = db(txn.open_table(PEERS))?;
            let old = db(table.get(peer))?.and_then(|v| serde_json::from_slice::<KnownPeer>(v.value()).ok());
            let mut merged: Vec<String> = addrs.to_vec();
            for a in old.iter().flat_map(|o| o.addrs.iter()) {
                if !merged.contains(a) {
                    merged.push(a.clone());
                }
            }
            merged.truncate(MAX_ADDRS_PER_PEER);
            let entry = KnownPeer {
                addrs: merged,
                name: name.map(str::to_string).or_else(|| old.and_then(|o| o.name)),
                last_seen: unix_now(),
            };
            let bytes = serde_json::to_vec(&entry).expect("KnownPeer always serialises");
            db(table.insert(peer, bytes.as_slice()))?;
            let len = db(table.len())? as usize;
            if len > MAX_KNOWN_PEERS {
                let mut all: Vec<(String, u64)> = Vec::with_capacity(len);
                for item in db(table.iter())? {
                    let (k, v) = db(item)?;
                    let seen = serde_json::from_slice::<KnownPeer>(v.value()).map(|p| p.last_seen).unwrap_or(0);
                    all.push((k.value().to_string(), seen));
                }
                all.sort_by_key(|(_, seen)| *seen);
                for (k, _) in all.iter().take(len - MAX_KNOWN_PEERS) {
                    db(table.remove(k.as_str()))?;
                }
            }
        }
        db(txn.commit())
    }

    /// The address book, most recently seen first.
    pub fn known_peers(&self) -> Result<Vec<(String, KnownPeer)>, StoreError> {
        let txn = db(self.db.begin_read())?;
        let table = db(txn.open_table(PEERS))?;
        let mut out = Vec::new();
        for item in db(table.iter())? {
            let (k, v) = db(item)?;
            if let Ok(peer) = serde_json::from_slice::<KnownPeer>(v.value()) {
                out.push((k.value().to_string(), peer));
            }
        }
        out.sort_by_key(|(_, p)| std::cmp::Reverse(p.last_seen));
        Ok(out)
    }

    pub fn add_repo(&self, repo: &RepoInfo) -> Result<(), StoreError> {
        let txn = self.write(true)?;
        db(db(txn.open_table(REPOS))?.insert(repo.id.as_str(), repo.name.as_str()))?;
        if let Some(dir) = &repo.git_dir {
            db(db(txn.open_table(REPO_DIRS))?.insert(repo.id.as_str(), dir.encode().as_str()))?;
        }
        db(txn.commit())
    }

    /// Forgets a registered repository, and where its reflogs were read (a repository
    /// registered again later is read from its reflog's end then, not from where it was left).
    pub fn remove_repo(&self, repo: &RepoId) -> Result<(), StoreError> {
        let txn = self.write(true)?;
        {
            db(db(txn.open_table(REPOS))?.remove(repo.as_str()))?;
            db(db(txn.open_table(REPO_DIRS))?.remove(repo.as_str()))?;
            let mut positions = db(txn.open_table(REFLOG_POS))?;
            // The main work tree's key is the id; a linked one's is "<id>:<git dir>".
            let linked = format!("{repo}:");
            let keys: Vec<String> = db(positions.range(repo.as_str()..))?
                .filter_map(|item| item.ok().map(|(k, _)| k.value().to_string()))
                .take_while(|k| k == repo.as_str() || k.starts_with(&linked))
                .collect();
            for key in keys {
                db(positions.remove(key.as_str()))?;
            }
        }
        db(txn.commit())
    }

    pub fn repos(&self) -> Result<Vec<RepoInfo>, StoreError> {
        let txn = db(self.db.begin_read())?;
        let table = db(txn.open_table(REPOS))?;
        let dirs = db(txn.open_table(REPO_DIRS))?;
        let mut out = Vec::new();
        for item in db(table.iter())? {
            let (k, v) = db(item)?;
            let git_dir = db(dirs.get(k.value()))?.and_then(|d| LocalPath::decode(d.value()).ok());
            // An id that is not one cannot have been registered by this version: skip it.
            let Ok(id) = RepoId::try_from(k.value()) else { continue };
            out.push(RepoInfo { id, name: v.value().to_string(), git_dir });
        }
        Ok(out)
    }
}

impl Store {
    pub fn own_announced(&self, repo: &RepoId, commit: &str) -> Result<bool, StoreError> {
        let txn = db(self.db.begin_read())?;
        Ok(db(db(txn.open_table(OWN_ANNOUNCED))?.get((repo.as_str(), commit)))?.is_some())
    }

    /// Records that we announced `commit` (not fsync'd: it is written with the outbox entry's
    /// durable commit, or the next one).
    pub fn mark_announced(&self, repo: &RepoId, commit: &str) -> Result<(), StoreError> {
        let txn = self.write(false)?;
        let now = unix_now_ms();
        db(db(txn.open_table(OWN_ANNOUNCED))?.insert((repo.as_str(), commit), now))?;
        db(db(txn.open_table(LAST_ANNOUNCED))?.insert(repo.as_str(), (commit, now)))?;
        db(txn.commit())
    }

    /// Our last announcement in `repo` (commit, unix ms), if we made one.
    pub fn last_announced(&self, repo: &RepoId) -> Result<Option<(String, u64)>, StoreError> {
        let txn = db(self.db.begin_read())?;
        if let Some(last) = db(db(txn.open_table(LAST_ANNOUNCED))?.get(repo.as_str()))? {
            let (commit, at) = last.value();
            return Ok(Some((commit.to_string(), at)));
        }
        // Announced by a version that did not keep the last one: the newest of the set.
        let table = db(txn.open_table(OWN_ANNOUNCED))?;
        let mut newest: Option<(String, u64)> = None;
        for item in db(table.range((repo.as_str(), "")..))? {
            let (k, v) = db(item)?;
            let (r, commit) = k.value();
            if r != repo.as_str() {
                break;
            }
            if newest.as_ref().is_none_or(|(_, at)| v.value() > *at) {
                newest = Some((commit.to_string(), v.value()));
            }
        }
        Ok(newest)
    }

    /// Forgets announced commits older than `before` (unix ms): the reflog is only read forward
    /// from where the node stopped, so an old commit does not come back. Returns how many went.
    pub fn prune_announced(&self, before: u64) -> Result<usize, StoreError> {
        let txn = self.write(false)?;
        let removed = {
            let mut table = db(txn.open_table(OWN_ANNOUNCED))?;
            let old: Vec<(String, String)> = db(table.iter())?
                .filter_map(|item| item.ok())
                .filter(|(_, at)| at.value() < before)
                .map(|(k, _)| (k.value().0.to_string(), k.value().1.to_string()))
                .collect();
            for (repo, commit) in &old {
                db(table.remove((repo.as_str(), commit.as_str())))?;
            }
            old.len()
        };
        db(txn.commit())?;
        Ok(removed)
    }

    pub fn reflog_pos(&self, repo: &str) -> Result<Option<u64>, StoreError> {
        let txn = db(self.db.begin_read())?;
        Ok(db(db(txn.open_table(REFLOG_POS))?.get(repo))?.map(|v| v.value()))
    }

    /// Without `durable` the caller syncs soon: a position lost in a crash only means reading
    /// part of the reflog again, and the announced-commits set (or the receivers) drop repeats.
    pub fn set_reflog_pos(&self, repo: &str, pos: u64, durable: bool) -> Result<(), StoreError> {
        let txn = self.write(durable)?;
        db(db(txn.open_table(REFLOG_POS))?.insert(repo, pos))?;
        db(txn.commit())
    }
}

/// A signed Nostr event and the relays that have not accepted it yet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NostrPending {
    /// The event's id (hex).
    pub id: String,
    /// The event as JSON, signed once: retries send exactly these bytes.
    pub event: String,
    pub relays: Vec<String>,
    /// For a replaceable event, its `kind:d`: a newer one of the same replaces it in the queue.
    pub replaces: Option<String>,
}

/// The last replaceable event queued under a `kind:d`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NostrLast {
    /// Digest of what the event says, to tell whether a new one is needed.
    pub digest: String,
    pub created_at: u64,
}

impl Store {
    /// Queues a signed event. A replaceable event (`replaces` set) drops queued older ones of the
    /// same `kind:d` (relays keep only the newest anyway) and records `last`. With `durable`
    /// false the caller syncs before acknowledging (group commit).
    pub fn nostr_queue(
        &self,
        pending: &NostrPending,
        last: Option<&NostrLast>,
        durable: bool,
    ) -> Result<u64, StoreError> {
        let txn = self.write(durable)?;
        let seq = {
            let mut table = db(txn.open_table(NOSTR_OUTBOX))?;
            // Taken before dropping replaced entries: a number is never used twice, so a sender
            // still holding a replaced entry cannot mark its successor as accepted.
            let seq = next_seq(&table)?;
            if let Some(key) = &pending.replaces {
                let mut stale = Vec::new();
                for item in db(table.iter())? {
                    let (k, v) = db(item)?;
                    if serde_json::from_slice::<NostrPending>(v.value()).is_ok_and(|p| p.replaces.as_ref() == Some(key))
                    {
                        stale.push(k.value());
                    }
                }
                for seq in stale {
                    db(table.remove(seq))?;
                }
                if let Some(last) = last {
                    let bytes = serde_json::to_vec(last).expect("plain structs serialise");
                    db(db(txn.open_table(NOSTR_LAST))?.insert(key.as_str(), bytes.as_slice()))?;
                }
            }
            let bytes = serde_json::to_vec(pending).expect("plain structs serialise");
            db(table.insert(seq, bytes.as_slice()))?;
            seq
        };
        db(txn.commit())?;
        Ok(seq)
    }

    pub fn nostr_last(&self, key: &str) -> Result<Option<NostrLast>, StoreError> {
        let txn = db(self.db.begin_read())?;
        let table = db(txn.open_table(NOSTR_LAST))?;
        Ok(db(table.get(key))?.and_then(|v| serde_json::from_slice(v.value()).ok()))
    }

    /// Every queued event, oldest first.
    pub fn nostr_pending(&self) -> Result<Vec<(u64, NostrPending)>, StoreError> {
        self.queue(NOSTR_OUTBOX)
    }

    /// `relay` accepted event `id` queued as `seq`; the entry goes once every relay has. Durable.
    pub fn nostr_accepted(&self, seq: u64, id: &str, relay: &str) -> Result<(), StoreError> {
        let txn = self.write(true)?;
        {
            let mut table = db(txn.open_table(NOSTR_OUTBOX))?;
            let current: Option<NostrPending> =
                db(table.get(seq))?.and_then(|v| serde_json::from_slice(v.value()).ok());
            if let Some(mut p) = current.filter(|p| p.id == id) {
                p.relays.retain(|r| r != relay);
                put_or_drop(&mut table, seq, &p)?;
            }
        }
        db(txn.commit())
    }

    /// Forgets relays no longer configured, so their events do not wait forever.
    pub fn nostr_keep_relays(&self, relays: &[String]) -> Result<(), StoreError> {
        let txn = self.write(true)?;
        {
            let mut table = db(txn.open_table(NOSTR_OUTBOX))?;
            let mut changed = Vec::new();
            for item in db(table.iter())? {
                let (k, v) = db(item)?;
                if let Ok(mut p) = serde_json::from_slice::<NostrPending>(v.value()) {
                    let before = p.relays.len();
                    p.relays.retain(|r| relays.contains(r));
                    if p.relays.len() != before {
                        changed.push((k.value(), p));
                    }
                }
            }
            for (seq, p) in changed {
                put_or_drop(&mut table, seq, &p)?;
            }
        }
        db(txn.commit())
    }
}

/// The number after the last one of a queue.
fn next_seq(table: &redb::Table<u64, &[u8]>) -> Result<u64, StoreError> {
    Ok(db(table.last())?.map(|(k, _)| k.value()).unwrap_or(0) + 1)
}

/// Writes a queued event back, or drops it once no relay is waiting for it.
fn put_or_drop(table: &mut redb::Table<u64, &[u8]>, seq: u64, p: &NostrPending) -> Result<(), StoreError> {
    if p.relays.is_empty() {
        db(table.remove(seq))?;
    } else {
        let bytes = serde_json::to_vec(p).expect("plain structs serialise");
        db(table.insert(seq, bytes.as_slice()))?;
    }
    Ok(())
}

impl Store {
    /// Appends to the outbox durably; returns the entry's sequence number.
    pub fn outbox_push(&self, entry: &OutboxEntry) -> Result<u64, StoreError> {
        self.outbox_push_with(entry, true)
    }

    /// Like [`Store::outbox_push`]; with `durable` false the caller must [`Store::sync`] before
    /// it acknowledges the entry to anyone (group commit: one fsync for a batch of requests).
    pub fn outbox_push_with(&self, entry: &OutboxEntry, durable: bool) -> Result<u64, StoreError> {
        let txn = self.write(durable)?;
        let seq = {
            let mut table = db(txn.open_table(OUTBOX))?;
            let seq = next_seq(&table)?;
            let bytes = serde_json::to_vec(entry).expect("outbox entries always serialise");
            db(table.insert(seq, bytes.as_slice()))?;
            seq
        };
        db(txn.commit())?;
        Ok(seq)
    }

    /// Every undelivered entry, oldest first.
    pub fn outbox(&self) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        self.queue(OUTBOX)
    }

    /// The entries of a numbered queue (JSON values), oldest first; unreadable ones are reported
    /// and left in place.
    fn queue<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<u64, &[u8]>,
    ) -> Result<Vec<(u64, T)>, StoreError> {
        let txn = db(self.db.begin_read())?;
        let table = db(txn.open_table(table))?;
        let mut out = Vec::new();
        for item in db(table.iter())? {
            let (k, v) = db(item)?;
            match serde_json::from_slice(v.value()) {
                Ok(entry) => out.push((k.value(), entry)),
                Err(e) => tracing::warn!(seq = k.value(), error = %e, "unreadable queued entry kept"),
            }
        }
        Ok(out)
    }

    /// Not fsync'd (the caller syncs later): an entry whose removal is lost in a crash is only
    /// sent again, and receivers drop the repeat.
    pub fn outbox_remove(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let txn = self.write(false)?;
        {
            let mut table = db(txn.open_table(OUTBOX))?;
            for seq in seqs {
                db(table.remove(seq))?;
            }
        }
        db(txn.commit())
    }

    /// Adds an announcement to its repo's feed unless the same author announced the same commit
    /// before. Returns false for such a duplicate. Not durable until the next [`Store::sync`].
    pub fn feed_insert(&self, entry: &FeedEntry) -> Result<bool, StoreError> {
        let seen_key = format!("{}/{}/{}", entry.repo, entry.commit.id, entry.peer);
        let txn = self.write(false)?;
        {
            let mut seen = db(txn.open_table(SEEN))?;
            if db(seen.get(seen_key.as_str()))?.is_some() {
                return Ok(false);
            }
            let mut feed = db(txn.open_table(FEED))?;
            let seq = last_seq(&feed, entry.repo.as_str())? + 1;
            let bytes = serde_json::to_vec(entry).expect("feed entries always serialise");
            db(feed.insert((entry.repo.as_str(), seq), bytes.as_slice()))?;
            db(seen.insert(seen_key.as_str(), seq))?;
            if seq > MAX_FEED_PER_REPO as u64 {
                let old = db(feed.remove((entry.repo.as_str(), seq - MAX_FEED_PER_REPO as u64)))?;
                let old = old.and_then(|v| serde_json::from_slice::<FeedEntry>(v.value()).ok());
                if let Some(old) = old {
                    db(seen.remove(format!("{}/{}/{}", old.repo, old.commit.id, old.peer).as_str()))?;
                }
            }
        }
        db(txn.commit())?;
        Ok(true)
    }

    /// Adds a message to its room's history unless it is there already; false for a duplicate.
    ///
    /// Not fsync'd on its own: chat history is made durable by the next durable commit (an
    /// outbox write, or [`Store::sync`] on the node's next tick), so a crash loses at most the
    /// last second of *received* history. One fsync per message would cap a room at a few
    /// hundred messages a second.
    pub fn chat_insert(&self, entry: &ChatEntry) -> Result<bool, StoreError> {
        Ok(self.chat_insert_all(std::slice::from_ref(entry))? == 1)
    }

    /// Adds messages to their rooms' histories in one transaction (not fsync'd), skipping ids
    /// seen before. Returns how many were new.
    pub fn chat_insert_all(&self, entries: &[ChatEntry]) -> Result<usize, StoreError> {
        let txn = self.write(false)?;
        let mut added = 0;
        {
            let mut seen = db(txn.open_table(CHAT_SEEN))?;
            let mut chat = db(txn.open_table(CHAT))?;
            for entry in entries {
                if db(seen.get(entry.id.as_str()))?.is_some() {
                    continue;
                }
                let room = entry.room.as_str();
                let seq = last_seq(&chat, room)? + 1;
                let bytes = serde_json::to_vec(entry).expect("chat entries always serialise");
                db(chat.insert((room, seq), bytes.as_slice()))?;
                db(seen.insert(entry.id.as_str(), seq))?;
                if seq > MAX_CHAT_PER_ROOM as u64 {
                    // The oldest message leaves the history, and its id the seen set (bounded too).
                    let old = db(chat.remove((room, seq - MAX_CHAT_PER_ROOM as u64)))?;
                    let old_id = old.and_then(|v| serde_json::from_slice::<ChatEntry>(v.value()).ok()).map(|e| e.id);
                    if let Some(old_id) = old_id {
                        db(seen.remove(old_id.as_str()))?;
                    }
                }
                added += 1;
            }
        }
        db(txn.commit())?;
        Ok(added)
    }

    /// The ids of the messages the histories hold (the seen set), newest last per room.
    pub fn chat_seen_ids(&self) -> Result<Vec<String>, StoreError> {
        let txn = db(self.db.begin_read())?;
        let table = db(txn.open_table(CHAT_SEEN))?;
        let mut out = Vec::new();
        for item in db(table.iter())? {
            out.push(db(item)?.0.value().to_string());
        }
        Ok(out)
    }

    /// Stores (or replaces) a DHT record; durable with the next sync.
    pub fn dht_put(&self, key: &[u8], record: &DhtRecord) -> Result<(), StoreError> {
        let txn = self.write(false)?;
        {
            let mut table = db(txn.open_table(DHT))?;
            let bytes = serde_json::to_vec(record).expect("DHT records always serialise");
            db(table.insert(key, bytes.as_slice()))?;
        }
        db(txn.commit())
    }

    pub fn dht_remove(&self, key: &[u8]) -> Result<(), StoreError> {
        let txn = self.write(false)?;
        db(db(txn.open_table(DHT))?.remove(key))?;
        db(txn.commit())
    }

    /// Every stored DHT record.
    pub fn dht_records(&self) -> Result<Vec<(Vec<u8>, DhtRecord)>, StoreError> {
        let txn = db(self.db.begin_read())?;
        let table = db(txn.open_table(DHT))?;
        let mut out = Vec::new();
        for item in db(table.iter())? {
            let (k, v) = db(item)?;
            if let Ok(r) = serde_json::from_slice(v.value()) {
                out.push((k.value().to_vec(), r));
            }
        }
        Ok(out)
    }

    /// Remembers that we wrote `key` in `repo` (for `kv ls`).
    pub fn kv_own(&self, repo: &RepoId, key: &str, ts: u64, durable: bool) -> Result<(), StoreError> {
        let txn = self.write(durable)?;
        db(db(txn.open_table(KV_OWN))?.insert((repo.as_str(), key), ts))?;
        db(txn.commit())
    }

    /// The keys we wrote in `repo`, with the time of our last write.
    pub fn kv_own_keys(&self, repo: &RepoId) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self.kv_own_page(repo, None, usize::MAX)?.0)
    }

    /// A page of the keys we wrote in `repo` (with the time of our last write), in order, after
    /// `after`: at most `limit`; with where the next page starts, if there is more.
    pub fn kv_own_page(&self, repo: &RepoId, after: Option<&str>, limit: usize) -> Result<KeysPage, StoreError> {
        use std::ops::Bound;
        let repo = repo.as_str();
        let txn = db(self.db.begin_read())?;
        let table = db(txn.open_table(KV_OWN))?;
        let mut out: Vec<(String, u64)> = Vec::new();
        let start = match after {
            Some(key) => Bound::Excluded((repo, key)),
            None => Bound::Included((repo, "")),
        };
        for item in db(table.range::<(&str, &str)>((start, Bound::Unbounded)))? {
            let (k, v) = db(item)?;
            let (r, key) = k.value();
            if r != repo {
                break;
            }
            if out.len() >= limit {
                let next = out.last().map(|(k, _)| k.clone());
                return Ok((out, next));
            }
            out.push((key.to_string(), v.value()));
        }
        Ok((out, None))
    }

    /// Makes every earlier non-durable commit durable (one fsync).
    pub fn sync(&self) -> Result<(), StoreError> {
        let txn = self.write(true)?;
        db(txn.commit())
    }

    /// The newest `limit` messages of a room, oldest first (the order a chat shows them in).
    pub fn chat_history(&self, room: &str, limit: usize) -> Result<Vec<ChatEntry>, StoreError> {
        let mut out = self.newest(CHAT, room, None, limit, usize::MAX)?.0;
        out.reverse();
        Ok(out)
    }

    /// The newest `limit` announcements of a repo, newest first.
    pub fn feed(&self, repo: &RepoId, limit: usize) -> Result<Vec<FeedEntry>, StoreError> {
        Ok(self.newest(FEED, repo.as_str(), None, limit, usize::MAX)?.0)
    }

    /// A page of a room's messages, newest first, from before `before` on: at most `limit`, and
    /// only as many as fit in `budget` bytes (one at least); with where the next page starts.
    pub fn chat_page(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
        budget: usize,
    ) -> Result<(Vec<ChatEntry>, Option<u64>), StoreError> {
        self.newest(CHAT, room, before, limit, budget)
    }

    /// A page of a repo's announcements that `keep` keeps (it is handed each one's JSON, so that
    /// those left out are never decoded whole), newest first (as [`Store::chat_page`]; the page
    /// goes on past those it leaves out).
    pub fn feed_page(
        &self,
        repo: &RepoId,
        before: Option<u64>,
        limit: usize,
        budget: usize,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<(Vec<FeedEntry>, Option<u64>), StoreError> {
        self.newest_kept(FEED, repo.as_str(), before, limit, budget, keep)
    }

    /// The readable entries under `prefix` of a (prefix, seq) table, newest first, below
    /// `before`: at most `limit`, as many as fit in `budget` bytes (one at least). Also returns
    /// where the next page starts, if there is more.
    fn newest<T: serde::de::DeserializeOwned>(
        &self,
        def: TableDefinition<(&str, u64), &[u8]>,
        prefix: &str,
        before: Option<u64>,
        limit: usize,
        budget: usize,
    ) -> Result<(Vec<T>, Option<u64>), StoreError> {
        self.newest_kept(def, prefix, before, limit, budget, |_| true)
    }

    /// [`Store::newest`] of the entries `keep` keeps (it sees their stored bytes).
    fn newest_kept<T: serde::de::DeserializeOwned>(
        &self,
        def: TableDefinition<(&str, u64), &[u8]>,
        prefix: &str,
        before: Option<u64>,
        limit: usize,
        budget: usize,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<(Vec<T>, Option<u64>), StoreError> {
        let txn = db(self.db.begin_read())?;
        let table = db(txn.open_table(def))?;
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut last = None;
        let end = before.unwrap_or(u64::MAX);
        for item in db(table.range((prefix, 0)..(prefix, end)))?.rev() {
            let (k, v) = db(item)?;
            if out.len() >= limit || (!out.is_empty() && bytes + v.value().len() > budget) {
                return Ok((out, last));
            }
            last = Some(k.value().1);
            if !keep(v.value()) {
                continue;
            }
            if let Ok(entry) = serde_json::from_slice(v.value()) {
                bytes += v.value().len();
                out.push(entry);
            }
        }
        Ok((out, None))
    }
}

/// A configured listen address with port 0 (`/ip4/0.0.0.0/tcp/0`) -> the port the node took for
/// it, so that it listens on the same one after a restart and the addresses peers saved of it
/// stay good. Created on first write, so that older stores open unchanged.
const LISTEN_PORTS: TableDefinition<&str, u16> = TableDefinition::new("listen_ports");

impl Store {
    /// The ports the node listened on last time, per configured listen address.
    pub fn listen_ports(&self) -> Result<Vec<(String, u16)>, StoreError> {
        let txn = db(self.db.begin_read())?;
        let table = match txn.open_table(LISTEN_PORTS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::Db(e.into())),
        };
        let mut out = Vec::new();
        for item in db(table.iter())? {
            let (k, v) = db(item)?;
            out.push((k.value().to_string(), v.value()));
        }
        Ok(out)
    }

    /// Replaces the stored ports with these: the listen addresses in force now.
    pub fn set_listen_ports(&self, ports: &[(String, u16)]) -> Result<(), StoreError> {
        let txn = self.write(true)?;
        {
            let mut table = db(txn.open_table(LISTEN_PORTS))?;
            db(table.retain(|_, _| false))?;
            for (addr, port) in ports {
                db(table.insert(addr.as_str(), *port))?;
            }
        }
        db(txn.commit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(id: &str, relays: &[&str], replaces: Option<&str>) -> NostrPending {
        NostrPending {
            id: id.into(),
            event: format!("{{\"id\":\"{id}\"}}"),
            relays: relays.iter().map(|r| r.to_string()).collect(),
            replaces: replaces.map(str::to_string),
        }
    }

    #[test]
    fn announced_commits_are_remembered_until_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let r = RepoId::try_from("e".repeat(40)).unwrap();
        store.mark_announced(&r, "c1").unwrap();
        assert!(store.own_announced(&r, "c1").unwrap());
        assert!(!store.own_announced(&r, "c2").unwrap());
        assert_eq!(store.prune_announced(0).unwrap(), 0, "nothing older than the epoch");
        assert_eq!(store.prune_announced(unix_now_ms() + 1).unwrap(), 1);
        assert!(!store.own_announced(&r, "c1").unwrap());
    }

    #[test]
    fn nostr_outbox_replaces_states_and_never_reuses_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open(&path).unwrap();
        let last = |t| NostrLast { digest: format!("d{t}"), created_at: t };
        let a = store.nostr_queue(&pending("ann", &["r1", "r2"], Some("30617:p")), Some(&last(1)), true).unwrap();
        let s1 = store.nostr_queue(&pending("s1", &["r1", "r2"], Some("30618:p")), Some(&last(2)), true).unwrap();
        let c = store.nostr_queue(&pending("c", &["r1", "r2"], None), None, false).unwrap();
        let s2 = store.nostr_queue(&pending("s2", &["r1", "r2"], Some("30618:p")), Some(&last(3)), true).unwrap();
        assert!(a < s1 && s1 < c && c < s2);
        let ids: Vec<String> = store.nostr_pending().unwrap().into_iter().map(|(_, p)| p.id).collect();
        assert_eq!(ids, ["ann", "c", "s2"], "the newer state replaced the older one, in place at the end");
        assert_eq!(store.nostr_last("30618:p").unwrap(), Some(last(3)));

        // A sender that still held s1 reports it accepted: s2 stays.
        store.nostr_accepted(s1, "s1", "r1").unwrap();
        store.nostr_accepted(s2, "s1", "r1").unwrap();
        store.nostr_accepted(a, "ann", "r1").unwrap();
        let left: Vec<(String, Vec<String>)> =
            store.nostr_pending().unwrap().into_iter().map(|(_, p)| (p.id, p.relays)).collect();
        assert_eq!(left[0], ("ann".into(), vec!["r2".into()]), "waits for the other relay");
        assert_eq!(left[2], ("s2".into(), vec!["r1".into(), "r2".into()]));

        // r2 is no longer configured: nothing waits for it; fully accepted entries go.
        store.nostr_keep_relays(&["r1".into()]).unwrap();
        store.nostr_accepted(s2, "s2", "r1").unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        let left: Vec<String> = store.nostr_pending().unwrap().into_iter().map(|(_, p)| p.id).collect();
        assert_eq!(left, ["c"], "kept across a reopen");
    }

    #[test]
    fn address_book_survives_reopen_and_merges_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let store = Store::open(&path).unwrap();
            store.remember_peer("alice", &["/ip4/127.0.0.1/tcp/1".into()], Some("Alice")).unwrap();
            store.remember_peer("alice", &["/ip4/127.0.0.1/tcp/2".into()], None).unwrap();
            store
                .add_repo(&RepoInfo {
                    id: RepoId::try_from("a".repeat(40)).unwrap(),
                    name: "proj".into(),
                    git_dir: Some("/tmp/proj/.git".into()),
                })
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let peers = store.known_peers().unwrap();
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].1.addrs, vec!["/ip4/127.0.0.1/tcp/2", "/ip4/127.0.0.1/tcp/1"]);
        assert_eq!(peers[0].1.name.as_deref(), Some("Alice"), "a name is kept when a later update has none");
        assert_eq!(
            store.repos().unwrap(),
            vec![RepoInfo {
                id: RepoId::try_from("a".repeat(40)).unwrap(),
                name: "proj".into(),
                git_dir: Some("/tmp/proj/.git".into())
            }]
        );
    }

    #[test]
    fn address_book_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        let many: Vec<String> = (0..40).map(|i| format!("/ip4/127.0.0.1/tcp/{i}")).collect();
        store.remember_peer("bob", &many, None).unwrap();
        assert_eq!(store.known_peers().unwrap()[0].1.addrs.len(), MAX_ADDRS_PER_PEER);
    }

    #[test]
    fn a_second_open_of_the_same_store_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let _first = Store::open(&path).unwrap();
        let err = Store::open(&path).err().unwrap();
        assert!(matches!(err, StoreError::Busy { .. }), "{err}");
    }

    #[test]
    fn listen_ports_are_kept_and_replaced_as_a_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        assert!(Store::open(&path).unwrap().listen_ports().unwrap().is_empty(), "none before the first start");
        {
            let store = Store::open(&path).unwrap();
            store
                .set_listen_ports(&[("/ip4/0.0.0.0/tcp/0".into(), 4001), ("/ip4/0.0.0.0/udp/0/quic-v1".into(), 4002)])
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let mut ports = store.listen_ports().unwrap();
        ports.sort();
        assert_eq!(ports, [("/ip4/0.0.0.0/tcp/0".to_string(), 4001), ("/ip4/0.0.0.0/udp/0/quic-v1".to_string(), 4002)]);
        store.set_listen_ports(&[("/ip6/::/tcp/0".into(), 4003)]).unwrap();
        assert_eq!(
            store.listen_ports().unwrap(),
            [("/ip6/::/tcp/0".to_string(), 4003)],
            "addresses no longer configured go"
        );
    }
}
