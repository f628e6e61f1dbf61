//! The node's embedded persistent store (redb): address book, registered repos, the outbox of
//! announcements not yet delivered, and the feed of announcements received per repo.
//!
//! Every write is its own transaction, durable (fsync'd on commit) or made durable by the next
//! durable one, so what the store has acknowledged survives kill -9. Values are JSON so that the
//! format can grow fields without a migration. A record that cannot be read is damage, never
//! skipped: no read passes for complete when it is not. How the file's health (a full disk, a
//! damaged file) is followed, and how the file is reopened, is `handle`'s; `salvage` reads what
//! it can out of a damaged file.

mod handle;
mod order;
pub mod salvage;
pub mod sync_set;

use std::path::Path;
use std::sync::Arc;

use redb::{
    ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
    WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use handle::{beside, clear_damage, damage_report, record_damage, write_atomically, Fingerprint, Health};
use handle::{Access, Handle};

use crate::clock::{unix_now, unix_now_ms};
use crate::proto::announce::{Commit, FeedEntry};
use crate::proto::chat::ChatEntry;
use crate::proto::outbox::OutboxEntry;
use crate::proto::repo::{LocalPath, RepoId, RepoInfo};
use crate::proto::sync::SyncItem;

/// peer id -> [`KnownPeer`] (JSON)
const PEERS: TableDefinition<&str, &[u8]> = TableDefinition::new("peers");
/// repo id -> room name
const REPOS: TableDefinition<&str, &str> = TableDefinition::new("repos");

/// seq -> [`OutboxEntry`] (JSON), in the order the announcements were made
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// (repo id, key) -> [`FeedEntry`] (JSON); keys in time order ([`order`])
const FEED: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("feed");
/// "repo/commit/author" -> the time the announcement carries (Unix ms): an announcement is
/// shown once, however often it arrives, for as long as it could arrive (its time window), even
/// after the feed dropped it
const SEEN: TableDefinition<&str, u64> = TableDefinition::new("seen");
/// (time, "repo/commit/author") -> (): the feed's seen set in time order, to forget it
const SEEN_AT: TableDefinition<(u64, &str), ()> = TableDefinition::new("seen_at");
/// (repo id, author, key) -> (): each author's announcements in a repo's feed, oldest first
const FEED_BY_AUTHOR: TableDefinition<(&str, &str, u64), ()> = TableDefinition::new("feed_by_author");
/// "repo/commit/author" -> feed key: the feed's announcements by commit id (what the feed holds
/// now; the seen set also knows what it dropped)
const FEED_BY_COMMIT: TableDefinition<&str, u64> = TableDefinition::new("feed_by_commit");

/// (room, key) -> [`ChatEntry`] (JSON); keys in time order ([`order`])
const CHAT: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("chat");
/// message id -> the time it carries (Unix ms): a message is kept once, however often it
/// arrives, for as long as it could arrive, even after its room's history dropped it
const CHAT_SEEN: TableDefinition<&str, u64> = TableDefinition::new("chat_seen");
/// (time, message id) -> (): the rooms' seen set in time order, to forget it
const CHAT_SEEN_AT: TableDefinition<(u64, &str), ()> = TableDefinition::new("chat_seen_at");

/// Ids kept in each seen set at most (the oldest go first); the node's memory of recent room
/// message ids holds as many.
pub const MAX_SEEN: usize = 100_000;
/// One author's share of a repository's feed: beyond it, that author's oldest give way (not
/// everyone else's).
pub const MAX_FEED_PER_AUTHOR: usize = 1000;

/// A room keeps this many messages; older ones are dropped first.
pub const MAX_CHAT_PER_ROOM: usize = 1000;
/// Events waiting for Nostr relays (a relay away for weeks, or one that refuses them): beyond
/// this many, the oldest comments give way. Replaceable events stay (one per `kind:d`, the
/// newest).
pub const MAX_NOSTR_QUEUE: usize = 10_000;
/// (repo id, key) -> (thread room, key in it, the same): the messages kept in a repository's
/// commit threads, oldest first. Every node keeps every thread of its repositories, and anyone can
/// start threads, so their number is not bounded: the messages of all of them are, together.
const THREAD_LOG: TableDefinition<(&str, u64), (&str, u64)> = TableDefinition::new("thread_log");
/// The commit threads of one repository keep this many messages together; the oldest go first.
pub const MAX_THREAD_MESSAGES_PER_REPO: usize = 10_000;

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
/// (repo id, key) -> unix ms: DHT keys whose entries of ours a repair fetches back from peers.
const RESTORE: TableDefinition<(&str, &str), u64> = TableDefinition::new("restore");

/// Every table, by name: an open creates those missing.
const TABLES: [&str; 21] = [
    "peers",
    "repos",
    "outbox",
    "feed",
    "seen",
    "chat",
    "chat_seen",
    "dht",
    "kv_own",
    "repo_dirs",
    "own_announced",
    "reflog_pos",
    "nostr_outbox",
    "nostr_last",
    "restore",
    "last_announced",
    "thread_log",
    "seen_at",
    "chat_seen_at",
    "feed_by_author",
    "feed_by_commit",
];

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
    #[error("the disk holding {dir} is full: nothing more can be stored until there is space again")]
    Full { dir: String },
    #[error("the store {path} is damaged ({reason}): move it aside and rebuild it with: git p2p daemon repair")]
    Damaged { path: String, reason: String },
    #[error("cannot write the store {path} ({reason}); the node retries")]
    Unwritable { path: String, reason: String },
    #[error("the store {path} is closed")]
    Closed { path: String },
    /// A record that does not parse (turned into `Damaged` by the handle).
    #[error("an unreadable record in the {0} table")]
    Unreadable(&'static str),
    #[error("store error: {0}")]
    Db(#[from] redb::Error),
}

impl StoreError {
    /// Whether the store as a whole cannot do this now (full, damaged, failing), as opposed to
    /// this one operation failing.
    pub fn is_store_down(&self) -> bool {
        matches!(self, Self::Full { .. } | Self::Damaged { .. } | Self::Unwritable { .. } | Self::Closed { .. })
    }
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

/// What [`Store::seen_ids`] reads: the seen sets of the rooms and of the feeds.
#[derive(Debug, Default)]
pub struct SeenIds {
    pub chat: Vec<String>,
    pub feed: Vec<String>,
}

/// Cheap to clone: the history and sync threads, Kademlia's record store and the Nostr bridge
/// hold handles too; all of them reach the same file, reopened or not.
#[derive(Clone)]
pub struct Store {
    handle: Arc<Handle>,
}

fn db<T, E: Into<redb::Error>>(r: Result<T, E>) -> Result<T, StoreError> {
    r.map_err(|e| StoreError::Db(e.into()))
}

/// A stored JSON value, or the damage it is.
fn parse<T: DeserializeOwned>(bytes: &[u8], table: &'static str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|_| StoreError::Unreadable(table))
}

/// Adds announcements to the feed in `txn`; whether each was new.
fn feed_in(txn: &WriteTransaction, entries: &[FeedEntry]) -> Result<Vec<bool>, StoreError> {
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let seen_key = entry.seen_key();
        let (repo, author) = (entry.repo.as_str(), entry.peer.as_str());
        let mut seen = db(txn.open_table(SEEN))?;
        if db(seen.get(seen_key.as_str()))?.is_some() {
            out.push(false);
            continue;
        }
        let mut feed = db(txn.open_table(FEED))?;
        let mut by_author = db(txn.open_table(FEED_BY_AUTHOR))?;
        let mut by_commit = db(txn.open_table(FEED_BY_COMMIT))?;
        let mut counts = order::Counts::open(txn)?;
        let at = order::order_time(entry.announced_at, entry.received_at);
        let seq = order::free_key(&feed, repo, at)?;
        let bytes = serde_json::to_vec(entry).expect("feed entries always serialise");
        db(feed.insert((repo, seq), bytes.as_slice()))?;
        db(by_author.insert((repo, author, seq), ()))?;
        db(by_commit.insert(seen_key.as_str(), seq))?;
        db(seen.insert(seen_key.as_str(), entry.announced_at))?;
        db(db(txn.open_table(SEEN_AT))?.insert((entry.announced_at, seen_key.as_str()), ()))?;
        let count = counts.grew(order::History::Feed, repo, &feed)?;
        // The author's oldest gives way when they have more than their share; the feed keeps
        // the newest MAX_FEED_PER_REPO (fewer where an author's gave way).
        let mine = db(by_author.range((repo, author, 0)..=(repo, author, u64::MAX)))?;
        let (mine, oldest_mine) = mine
            .fold((0usize, None), |(n, first), item| (n + 1, first.or_else(|| item.ok().map(|(k, _)| k.value().2))));
        let mut gone = Vec::new();
        gone.extend(oldest_mine.filter(|_| mine > MAX_FEED_PER_AUTHOR));
        if count > MAX_FEED_PER_REPO as u64 + gone.len() as u64 {
            gone.extend(order::oldest(&feed, repo)?.filter(|k| !gone.contains(k)));
        }
        for old_seq in gone {
            let old = db(feed.remove((repo, old_seq)))?;
            let old: Option<FeedEntry> = old.map(|v| parse(v.value(), "feed")).transpose()?;
            if let Some(old) = old {
                // Its id stays seen: a replay of it is no news.
                db(by_author.remove((repo, old.peer.as_str(), old_seq)))?;
                db(by_commit.remove(old.seen_key().as_str()))?;
                counts.shrank(order::History::Feed, repo, &feed)?;
            }
        }
        out.push(true);
    }
    Ok(out)
}

impl Store {
    /// Reads in one transaction.
    fn read<T>(&self, f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.handle.run(Access::Read, |database| f(&db(database.begin_read())?))
    }

    /// Writes in one transaction, committed when `f` succeeds (dropped, so aborted, when it
    /// fails). Without `durable` the commit is not fsync'd and becomes durable with the next
    /// durable commit (see [`Store::sync`]).
    fn update<T>(
        &self,
        durable: bool,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.handle.run(Access::Write, |database| {
            let mut txn = db(database.begin_write())?;
            if !durable {
                // Only fails for a transaction that already wrote with another durability; this one is new.
                let _ = txn.set_durability(redb::Durability::None);
            }
            let value = f(&txn)?;
            db(txn.commit())?;
            Ok(value)
        })
    }

    /// Opens the store at `path`, creating it if missing. A file this code did not close cleanly
    /// (a crash, or a change made outside the node) is verified page by page first.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let store = Self { handle: Arc::new(Handle::open(path)?) };
        let missing = store.read(|txn| {
            let names: Vec<String> = db(txn.list_tables())?.map(|t| t.name().to_string()).collect();
            Ok(TABLES.iter().any(|t| !names.iter().any(|n| n == t)))
        })?;
        if missing {
            store.update(true, |txn| {
                db(txn.open_table(PEERS))?;
                db(txn.open_table(REPOS))?;
                db(txn.open_table(OUTBOX))?;
                db(txn.open_table(FEED))?;
                db(txn.open_table(SEEN))?;
                db(txn.open_table(CHAT))?;
                db(txn.open_table(CHAT_SEEN))?;
                db(txn.open_table(THREAD_LOG))?;
                db(txn.open_table(FEED_BY_COMMIT))?;
                db(txn.open_table(DHT))?;
                db(txn.open_table(KV_OWN))?;
                db(txn.open_table(REPO_DIRS))?;
                db(txn.open_table(OWN_ANNOUNCED))?;
                db(txn.open_table(LAST_ANNOUNCED))?;
                db(txn.open_table(REFLOG_POS))?;
                db(txn.open_table(NOSTR_OUTBOX))?;
                db(txn.open_table(NOSTR_LAST))?;
                db(txn.open_table(RESTORE))?;
                index_seen_and_authors(txn)?;
                Ok(())
            })?;
        }
        Ok(store)
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        self.handle.path()
    }

    /// What the store can do now (a full disk, a damaged file).
    pub fn health(&self) -> Health {
        self.handle.health()
    }

    /// The error operations report in `health`.
    pub fn error_of(&self, health: &Health) -> StoreError {
        self.handle.error_of(health)
    }

    /// Fails (with the reason) when writes cannot succeed now: a command checks before it
    /// does anything, so that nothing is published that could not be stored.
    pub fn writable(&self) -> Result<(), StoreError> {
        match self.health() {
            Health::Ok => Ok(()),
            health => Err(self.error_of(&health)),
        }
    }

    /// How many times the store was reopened after its writes failed: each reopen rolls back to
    /// the last durable commit, so copies of what it held must be read again.
    pub fn generation(&self) -> u64 {
        self.handle.generation()
    }

    /// After writes failed: reopens the file if that may work now (space is free again).
    /// Returns whether the store is writable again.
    pub fn reopen(&self) -> bool {
        self.handle.reopen()
    }

    /// Marks the store damaged (found by a reader above the store).
    pub fn set_damaged(&self, reason: String) -> StoreError {
        self.handle.set_damaged(reason)
    }

    /// Closes the file (every handle's operations fail from now on); a store closed healthy is
    /// trusted without being verified at the next open.
    pub fn close(&self) {
        self.handle.close()
    }

    /// Verifies the file at `path` page by page (as an open of a file not closed cleanly does),
    /// then closes it again.
    pub fn verify(path: &Path) -> Result<(), StoreError> {
        let _ = std::fs::remove_file(beside(path, handle::CLEAN));
        Self::open(path)?.close();
        Ok(())
    }

    /// Records that we are connected to `peer` at `addrs` (most useful first).
    pub fn remember_peer(&self, peer: &str, addrs: &[String], name: Option<&str>) -> Result<(), StoreError> {
        self.update(true, |txn| {
            let mut table = db(txn.open_table(PEERS))?;
            let old: Option<KnownPeer> = db(table.get(peer))?.map(|v| parse(v.value(), "peers")).transpose()?;
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
                    let seen = parse::<KnownPeer>(v.value(), "peers")?.last_seen;
                    all.push((k.value().to_string(), seen));
                }
                all.sort_by_key(|(_, seen)| *seen);
                for (k, _) in all.iter().take(len - MAX_KNOWN_PEERS) {
                    db(table.remove(k.as_str()))?;
                }
            }
            Ok(())
        })
    }

    /// The address book, most recently seen first.
    pub fn known_peers(&self) -> Result<Vec<(String, KnownPeer)>, StoreError> {
        let mut out = self.read(|txn| {
            let table = db(txn.open_table(PEERS))?;
            let mut out = Vec::new();
            for item in db(table.iter())? {
                let (k, v) = db(item)?;
                out.push((k.value().to_string(), parse::<KnownPeer>(v.value(), "peers")?));
            }
            Ok(out)
        })?;
        out.sort_by_key(|(_, p)| std::cmp::Reverse(p.last_seen));
        Ok(out)
    }

    pub fn add_repo(&self, repo: &RepoInfo) -> Result<(), StoreError> {
        self.update(true, |txn| {
            db(db(txn.open_table(REPOS))?.insert(repo.id.as_str(), repo.name.as_str()))?;
            if let Some(dir) = &repo.git_dir {
                db(db(txn.open_table(REPO_DIRS))?.insert(repo.id.as_str(), dir.encode().as_str()))?;
            }
            Ok(())
        })?;
        self.copy_registry();
        Ok(())
    }

    /// A copy of the registry outside the file: what a repair of a store damaged beyond reading
    /// rebuilds from (a registration is rare; the copy is best effort).
    fn copy_registry(&self) {
        let copy = self.repos().map(|all| serde_json::to_vec_pretty(&all).expect("plain structs serialise"));
        if let Err(e) = copy
            .map_err(|e| e.to_string())
            .and_then(|bytes| write_atomically(&self.registry_copy(), &bytes).map_err(|e| e.to_string()))
        {
            tracing::warn!(error = %e, "cannot copy the registry of repositories");
        }
    }

    /// The copy of the registered repositories kept beside the store.
    fn registry_copy(&self) -> std::path::PathBuf {
        registry_copy(self.path())
    }

    /// Forgets a registered repository, and where its reflogs were read (a repository
    /// registered again later is read from its reflog's end then, not from where it was left).
    pub fn remove_repo(&self, repo: &RepoId) -> Result<(), StoreError> {
        self.update(true, |txn| {
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
            Ok(())
        })?;
        self.copy_registry();
        Ok(())
    }

    pub fn repos(&self) -> Result<Vec<RepoInfo>, StoreError> {
        self.read(|txn| {
            let table = db(txn.open_table(REPOS))?;
            let dirs = db(txn.open_table(REPO_DIRS))?;
            let mut out = Vec::new();
            for item in db(table.iter())? {
                let (k, v) = db(item)?;
                let git_dir = db(dirs.get(k.value()))?.and_then(|d| LocalPath::decode(d.value()).ok());
                let id = RepoId::try_from(k.value()).map_err(|_| StoreError::Unreadable("repos"))?;
                out.push(RepoInfo { id, name: v.value().to_string(), git_dir });
            }
            Ok(out)
        })
    }
}

impl Store {
    pub fn own_announced(&self, repo: &RepoId, commit: &str) -> Result<bool, StoreError> {
        self.read(|txn| Ok(db(db(txn.open_table(OWN_ANNOUNCED))?.get((repo.as_str(), commit)))?.is_some()))
    }

    /// Records that we announced `commit` (not fsync'd: it is written with the outbox entry's
    /// durable commit, or the next one).
    pub fn mark_announced(&self, repo: &RepoId, commit: &str) -> Result<(), StoreError> {
        self.update(false, |txn| {
            let now = unix_now_ms();
            db(db(txn.open_table(OWN_ANNOUNCED))?.insert((repo.as_str(), commit), now))?;
            db(db(txn.open_table(LAST_ANNOUNCED))?.insert(repo.as_str(), (commit, now)))?;
            Ok(())
        })
    }

    /// Our last announcement in `repo` (commit, unix ms), if we made one.
    pub fn last_announced(&self, repo: &RepoId) -> Result<Option<(String, u64)>, StoreError> {
        self.read(|txn| {
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
        })
    }

    /// Forgets announced commits older than `before` (unix ms): the reflog is only read forward
    /// from where the node stopped, so an old commit does not come back. Returns how many went.
    pub fn prune_announced(&self, before: u64) -> Result<usize, StoreError> {
        self.update(false, |txn| {
            let mut table = db(txn.open_table(OWN_ANNOUNCED))?;
            let mut old: Vec<(String, String)> = Vec::new();
            for item in db(table.iter())? {
                let (k, at) = db(item)?;
                if at.value() < before {
                    old.push((k.value().0.to_string(), k.value().1.to_string()));
                }
            }
            for (repo, commit) in &old {
                db(table.remove((repo.as_str(), commit.as_str())))?;
            }
            Ok(old.len())
        })
    }

    pub fn reflog_pos(&self, repo: &str) -> Result<Option<u64>, StoreError> {
        self.read(|txn| Ok(db(db(txn.open_table(REFLOG_POS))?.get(repo))?.map(|v| v.value())))
    }

    /// Without `durable` the caller syncs soon: a position lost in a crash only means reading
    /// part of the reflog again, and the announced-commits set (or the receivers) drop repeats.
    pub fn set_reflog_pos(&self, repo: &str, pos: u64, durable: bool) -> Result<(), StoreError> {
        self.update(durable, |txn| {
            db(db(txn.open_table(REFLOG_POS))?.insert(repo, pos))?;
            Ok(())
        })
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
    /// Where in the queue it went (set by [`Store::nostr_queue`]; none in older stores): the
    /// next one of its `kind:d` replaces it there without reading the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
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
        self.nostr_queue_at_most(pending, last, durable, MAX_NOSTR_QUEUE)
    }

    /// [`Store::nostr_queue`] with a queue of at most `max` events (comments give way, oldest first).
    fn nostr_queue_at_most(
        &self,
        pending: &NostrPending,
        last: Option<&NostrLast>,
        durable: bool,
        max: usize,
    ) -> Result<u64, StoreError> {
        self.update(durable, |txn| {
            let mut table = db(txn.open_table(NOSTR_OUTBOX))?;
            // Taken before dropping replaced entries: a number is never used twice, so a sender
            // still holding a replaced entry cannot mark its successor as accepted.
            let seq = next_seq(&table)?;
            if let Some(key) = &pending.replaces {
                let mut lasts = db(txn.open_table(NOSTR_LAST))?;
                let before: Option<NostrLast> =
                    db(lasts.get(key.as_str()))?.map(|v| parse(v.value(), "nostr_last")).transpose()?;
                // Where the one queued before went; a store that did not keep it (or a caller
                // that gave no `last`) has the queue read. The queue grows while relays are
                // away, and this runs for every commit announced.
                let candidates: Vec<u64> = match before.and_then(|b| b.seq) {
                    Some(at) => vec![at],
                    None => db(table.iter())?
                        .map(|item| item.map(|(k, _)| k.value()))
                        .collect::<Result<_, _>>()
                        .map_err(|e| StoreError::Db(e.into()))?,
                };
                let mut stale = Vec::new();
                for at in candidates {
                    let Some(v) = db(table.get(at))? else { continue };
                    if parse::<NostrPending>(v.value(), "nostr_outbox")?.replaces.as_ref() == Some(key) {
                        stale.push(at);
                    }
                }
                for at in stale {
                    db(table.remove(at))?;
                }
                if let Some(last) = last {
                    let last = NostrLast { seq: Some(seq), ..last.clone() };
                    let bytes = serde_json::to_vec(&last).expect("plain structs serialise");
                    db(lasts.insert(key.as_str(), bytes.as_slice()))?;
                }
            }
            let bytes = serde_json::to_vec(pending).expect("plain structs serialise");
            db(table.insert(seq, bytes.as_slice()))?;
            let excess = (db(table.len())? as usize).saturating_sub(max);
            if excess > 0 {
                let mut oldest = Vec::with_capacity(excess);
                for item in db(table.iter())? {
                    let (k, v) = db(item)?;
                    if parse::<NostrPending>(v.value(), "nostr_outbox")?.replaces.is_none() {
                        oldest.push(k.value());
                        if oldest.len() == excess {
                            break;
                        }
                    }
                }
                for at in &oldest {
                    db(table.remove(*at))?;
                }
                if !oldest.is_empty() {
                    tracing::warn!(dropped = oldest.len(), "Nostr queue full ({max} events): oldest comments dropped");
                }
            }
            Ok(seq)
        })
    }

    pub fn nostr_last(&self, key: &str) -> Result<Option<NostrLast>, StoreError> {
        self.read(|txn| {
            let table = db(txn.open_table(NOSTR_LAST))?;
            db(table.get(key))?.map(|v| parse(v.value(), "nostr_last")).transpose()
        })
    }

    /// Every queued event, oldest first.
    pub fn nostr_pending(&self) -> Result<Vec<(u64, NostrPending)>, StoreError> {
        self.queue(NOSTR_OUTBOX, "nostr_outbox")
    }

    /// How many events are queued (none of them read).
    pub fn nostr_pending_len(&self) -> Result<usize, StoreError> {
        self.read(|txn| Ok(db(db(txn.open_table(NOSTR_OUTBOX))?.len())? as usize))
    }

    /// `relay` accepted event `id` queued as `seq`; the entry goes once every relay has. Durable.
    pub fn nostr_accepted(&self, seq: u64, id: &str, relay: &str) -> Result<(), StoreError> {
        self.update(true, |txn| {
            let mut table = db(txn.open_table(NOSTR_OUTBOX))?;
            let current: Option<NostrPending> =
                db(table.get(seq))?.map(|v| parse(v.value(), "nostr_outbox")).transpose()?;
            if let Some(mut p) = current.filter(|p| p.id == id) {
                p.relays.retain(|r| r != relay);
                put_or_drop(&mut table, seq, &p)?;
            }
            Ok(())
        })
    }

    /// Forgets relays no longer configured, so their events do not wait forever.
    pub fn nostr_keep_relays(&self, relays: &[String]) -> Result<(), StoreError> {
        self.update(true, |txn| {
            let mut table = db(txn.open_table(NOSTR_OUTBOX))?;
            let mut changed = Vec::new();
            for item in db(table.iter())? {
                let (k, v) = db(item)?;
                let mut p = parse::<NostrPending>(v.value(), "nostr_outbox")?;
                let before = p.relays.len();
                p.relays.retain(|r| relays.contains(r));
                if p.relays.len() != before {
                    changed.push((k.value(), p));
                }
            }
            for (seq, p) in changed {
                put_or_drop(&mut table, seq, &p)?;
            }
            Ok(())
        })
    }
}

/// The copy of the registered repositories kept beside the store at `path`.
pub fn registry_copy(path: &Path) -> std::path::PathBuf {
    path.with_file_name("repos.json")
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
        self.update(durable, |txn| {
            let mut table = db(txn.open_table(OUTBOX))?;
            let seq = next_seq(&table)?;
            let bytes = serde_json::to_vec(entry).expect("outbox entries always serialise");
            db(table.insert(seq, bytes.as_slice()))?;
            Ok(seq)
        })
    }

    /// Every undelivered entry, oldest first.
    pub fn outbox(&self) -> Result<Vec<(u64, OutboxEntry)>, StoreError> {
        self.queue(OUTBOX, "outbox")
    }

    /// The entries of a numbered queue (JSON values), oldest first.
    fn queue<T: DeserializeOwned>(
        &self,
        def: TableDefinition<u64, &[u8]>,
        name: &'static str,
    ) -> Result<Vec<(u64, T)>, StoreError> {
        self.read(|txn| {
            let table = db(txn.open_table(def))?;
            let mut out = Vec::new();
            for item in db(table.iter())? {
                let (k, v) = db(item)?;
                out.push((k.value(), parse(v.value(), name)?));
            }
            Ok(out)
        })
    }

    /// Not fsync'd (the caller syncs later): an entry whose removal is lost in a crash is only
    /// sent again, and receivers drop the repeat.
    pub fn outbox_remove(&self, seqs: &[u64]) -> Result<(), StoreError> {
        self.update(false, |txn| {
            let mut table = db(txn.open_table(OUTBOX))?;
            for seq in seqs {
                db(table.remove(seq))?;
            }
            Ok(())
        })
    }

    /// Adds an announcement to its repo's feed unless the same author announced the same commit
    /// before. Returns false for such a duplicate. Not durable until the next [`Store::sync`].
    pub fn feed_insert(&self, entry: &FeedEntry) -> Result<bool, StoreError> {
        Ok(self.feed_insert_all(std::slice::from_ref(entry))?.first().copied().unwrap_or(false))
    }

    /// [`Store::feed_insert`] of several announcements in one transaction; whether each was
    /// new. (The node writes received ones with their envelopes: [`Store::history_write`].)
    pub fn feed_insert_all(&self, entries: &[FeedEntry]) -> Result<Vec<bool>, StoreError> {
        self.update(false, |txn| feed_in(txn, entries))
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
    /// seen before. Returns how many were new. A room keeps [`MAX_CHAT_PER_ROOM`], and the commit
    /// threads of a repository [`MAX_THREAD_MESSAGES_PER_REPO`] together.
    pub fn chat_insert_all(&self, entries: &[ChatEntry]) -> Result<usize, StoreError> {
        self.update(false, |txn| chat_in(txn, entries))
    }

    /// [`Store::chat_insert_all`] in a durable transaction: the messages and every write made
    /// without fsync before them are durable when it returns (one commit where an insert and a
    /// [`Store::sync`] would take two).
    pub fn chat_insert_all_synced(&self, entries: &[ChatEntry]) -> Result<usize, StoreError> {
        self.update(true, |txn| chat_in(txn, entries))
    }

    /// What the history thread hands the store: envelopes for the sync sets, received room
    /// messages and received announcements, in one transaction (not fsync'd); how many items
    /// were new in all.
    pub fn history_write(
        &self,
        keep: &[SyncItem],
        chat: &[ChatEntry],
        feed: &[FeedEntry],
    ) -> Result<usize, StoreError> {
        if keep.is_empty() && chat.is_empty() && feed.is_empty() {
            return Ok(0);
        }
        self.update(false, |txn| {
            let kept = sync_set::keep_in(txn, keep)?;
            let said = chat_in(txn, chat)?;
            let announced = feed_in(txn, feed)?.into_iter().filter(|new| *new).count();
            Ok(kept + said + announced)
        })
    }

    /// Forgets the seen ids dated before `before_ms` (past the window in which a message is
    /// taken at all) and, beyond [`MAX_SEEN`], the oldest; returns how many went.
    pub fn prune_seen(&self, before_ms: u64) -> Result<usize, StoreError> {
        self.prune_seen_to(before_ms, MAX_SEEN)
    }

    fn prune_seen_to(&self, before_ms: u64, max: usize) -> Result<usize, StoreError> {
        self.update(false, |txn| {
            let mut pruned = 0;
            for (ids, by_time) in [(SEEN, SEEN_AT), (CHAT_SEEN, CHAT_SEEN_AT)] {
                let mut ids = db(txn.open_table(ids))?;
                let mut by_time = db(txn.open_table(by_time))?;
                let over = (db(by_time.len())? as usize).saturating_sub(max);
                let mut gone: Vec<(u64, String)> = Vec::new();
                for (i, item) in db(by_time.iter())?.enumerate() {
                    let (k, _) = db(item)?;
                    let (at, id) = k.value();
                    if at >= before_ms && i >= over {
                        break;
                    }
                    gone.push((at, id.to_string()));
                }
                for (at, id) in &gone {
                    db(by_time.remove((*at, id.as_str())))?;
                    // A newer arrival of the same id may have moved it; only its own time goes.
                    if db(ids.get(id.as_str()))?.is_some_and(|v| v.value() == *at) {
                        db(ids.remove(id.as_str()))?;
                    }
                }
                pruned += gone.len();
            }
            Ok(pruned)
        })
    }

    /// The seen sets: the ids of the room messages the histories hold, and the keys
    /// ([`FeedEntry::seen_key`]) of the announcements the feeds took.
    pub fn seen_ids(&self) -> Result<SeenIds, StoreError> {
        self.read(|txn| {
            let mut seen = SeenIds::default();
            for (table, out) in [(CHAT_SEEN, &mut seen.chat), (SEEN, &mut seen.feed)] {
                for item in db(db(txn.open_table(table))?.iter())? {
                    out.push(db(item)?.0.value().to_string());
                }
            }
            Ok(seen)
        })
    }

    /// Whether a room's history took the message with this id (it stays seen for its window
    /// after the history let it go).
    pub fn chat_has(&self, id: &str) -> Result<bool, StoreError> {
        self.read(|txn| Ok(db(db(txn.open_table(CHAT_SEEN))?.get(id))?.is_some()))
    }

    /// Whether the feed took this announcement (by its author, of its commit) before.
    pub fn feed_has(&self, entry: &FeedEntry) -> Result<bool, StoreError> {
        self.read(|txn| Ok(db(db(txn.open_table(SEEN))?.get(entry.seen_key().as_str()))?.is_some()))
    }

    /// Stores (or replaces) a DHT record; durable with the next sync.
    pub fn dht_put(&self, key: &[u8], record: &DhtRecord) -> Result<(), StoreError> {
        self.update(false, |txn| {
            let mut table = db(txn.open_table(DHT))?;
            let bytes = serde_json::to_vec(record).expect("DHT records always serialise");
            db(table.insert(key, bytes.as_slice()))?;
            Ok(())
        })
    }

    pub fn dht_remove(&self, key: &[u8]) -> Result<(), StoreError> {
        self.update(false, |txn| {
            db(db(txn.open_table(DHT))?.remove(key))?;
            Ok(())
        })
    }

    /// One stored DHT record.
    pub fn dht_get(&self, key: &[u8]) -> Result<Option<DhtRecord>, StoreError> {
        self.read(|txn| db(db(txn.open_table(DHT))?.get(key))?.map(|v| parse(v.value(), "dht")).transpose())
    }

    /// How many DHT records are stored.
    pub fn dht_len(&self) -> Result<u64, StoreError> {
        self.read(|txn| db(db(txn.open_table(DHT))?.len()))
    }

    /// Every stored DHT record.
    pub fn dht_records(&self) -> Result<Vec<(Vec<u8>, DhtRecord)>, StoreError> {
        self.read(|txn| {
            let table = db(txn.open_table(DHT))?;
            let mut out = Vec::new();
            for item in db(table.iter())? {
                let (k, v) = db(item)?;
                out.push((k.value().to_vec(), parse(v.value(), "dht")?));
            }
            Ok(out)
        })
    }

    /// Hands every stored DHT record to `f`, one at a time (a census, without holding them all).
    pub fn dht_for_each(&self, mut f: impl FnMut(&[u8], DhtRecord)) -> Result<(), StoreError> {
        self.read(|txn| {
            let table = db(txn.open_table(DHT))?;
            for item in db(table.iter())? {
                let (k, v) = db(item)?;
                f(k.value(), parse(v.value(), "dht")?);
            }
            Ok(())
        })
    }

    /// Remembers that we wrote `key` in `repo` (for `kv ls`).
    pub fn kv_own(&self, repo: &RepoId, key: &str, ts: u64, durable: bool) -> Result<(), StoreError> {
        self.update(durable, |txn| {
            db(db(txn.open_table(KV_OWN))?.insert((repo.as_str(), key), ts))?;
            Ok(())
        })
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
        self.read(|txn| {
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
        })
    }

    /// Keys (repo, key) whose entries of ours are to be fetched back from peers' copies (after
    /// a repair: the DHT still has what the damaged store lost).
    pub fn restore_pending(&self) -> Result<Vec<(RepoId, String)>, StoreError> {
        self.read(|txn| {
            let table = db(txn.open_table(RESTORE))?;
            let mut out = Vec::new();
            for item in db(table.iter())? {
                let (k, _) = db(item)?;
                let (repo, key) = k.value();
                let repo = RepoId::try_from(repo).map_err(|_| StoreError::Unreadable("restore"))?;
                out.push((repo, key.to_string()));
            }
            Ok(out)
        })
    }

    /// Adds keys to fetch back from peers (durable).
    pub fn restore_add(&self, keys: &[(RepoId, String)]) -> Result<(), StoreError> {
        self.update(true, |txn| {
            let mut table = db(txn.open_table(RESTORE))?;
            for (repo, key) in keys {
                db(table.insert((repo.as_str(), key.as_str()), unix_now_ms()))?;
            }
            Ok(())
        })
    }

    /// A key was fetched back (or given up on); synced with the next batch.
    pub fn restore_done(&self, repo: &RepoId, key: &str) -> Result<(), StoreError> {
        self.update(false, |txn| {
            db(db(txn.open_table(RESTORE))?.remove((repo.as_str(), key)))?;
            Ok(())
        })
    }

    /// Makes every earlier non-durable commit durable (one fsync).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.update(true, |_| Ok(()))
    }

    /// The newest `limit` messages of a room, oldest first (the order a chat shows them in).
    pub fn chat_history(&self, room: &str, limit: usize) -> Result<Vec<ChatEntry>, StoreError> {
        let mut out = self.newest(CHAT, "chat", room, None, limit, usize::MAX)?.0;
        out.reverse();
        Ok(out)
    }

    /// The newest `limit` announcements of a repo, newest first.
    pub fn feed(&self, repo: &RepoId, limit: usize) -> Result<Vec<FeedEntry>, StoreError> {
        Ok(self.newest(FEED, "feed", repo.as_str(), None, limit, usize::MAX)?.0)
    }

    /// A page of a room's messages, newest first, from before `before` on: at most `limit`, and
    /// only as many as fit in `budget` bytes (one at least); with where the next page starts.
    /// With `arrived_since`, only the messages this node took at or after it (Unix ms): a
    /// follower back from a gap reads what it missed, wherever in time it sorts.
    pub fn chat_page(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
        budget: usize,
        arrived_since: Option<u64>,
    ) -> Result<(Vec<ChatEntry>, Option<u64>), StoreError> {
        match arrived_since {
            None => self.newest(CHAT, "chat", room, before, limit, budget),
            Some(t) => self.newest_kept(CHAT, "chat", room, before, limit, budget, |json| received_at(json) >= t),
        }
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
        self.newest_kept(FEED, "feed", repo.as_str(), before, limit, budget, keep)
    }

    /// The commits announced for `repo` whose id starts with `prefix`, at most `limit`, each
    /// once (however many peers announced it), in id order. Read through the feed's index of
    /// (commit, author), not the feed itself: a lookup costs the matches, not the feed's size.
    pub fn feed_commits(&self, repo: &RepoId, prefix: &str, limit: usize) -> Result<Vec<Commit>, StoreError> {
        self.read(|txn| {
            let by_commit = db(txn.open_table(FEED_BY_COMMIT))?;
            let feed = db(txn.open_table(FEED))?;
            let start = format!("{repo}/{prefix}");
            let mut out: Vec<Commit> = Vec::new();
            for item in db(by_commit.range(start.as_str()..))? {
                let (key, seq) = db(item)?;
                if !key.value().starts_with(&start) || out.len() >= limit {
                    break;
                }
                let Some(bytes) = db(feed.get((repo.as_str(), seq.value())))? else { continue };
                let entry: FeedEntry = parse(bytes.value(), "feed")?;
                if out.last().is_none_or(|last| last.id != entry.commit.id) {
                    out.push(entry.commit);
                }
            }
            Ok(out)
        })
    }

    /// The readable entries under `prefix` of a (prefix, seq) table, newest first, below
    /// `before`: at most `limit`, as many as fit in `budget` bytes (one at least). Also returns
    /// where the next page starts, if there is more.
    fn newest<T: DeserializeOwned>(
        &self,
        def: TableDefinition<(&str, u64), &[u8]>,
        name: &'static str,
        prefix: &str,
        before: Option<u64>,
        limit: usize,
        budget: usize,
    ) -> Result<(Vec<T>, Option<u64>), StoreError> {
        self.newest_kept(def, name, prefix, before, limit, budget, |_| true)
    }

    /// [`Store::newest`] of the entries `keep` keeps (it sees their stored bytes).
    #[allow(clippy::too_many_arguments)]
    fn newest_kept<T: DeserializeOwned>(
        &self,
        def: TableDefinition<(&str, u64), &[u8]>,
        name: &'static str,
        prefix: &str,
        before: Option<u64>,
        limit: usize,
        budget: usize,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<(Vec<T>, Option<u64>), StoreError> {
        self.read(|txn| {
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
                bytes += v.value().len();
                out.push(parse(v.value(), name)?);
            }
            Ok((out, None))
        })
    }
}

/// When this node took a history's item, read off its stored JSON without decoding the rest (0
/// when unreadable: such an item is left out of what arrived since).
pub fn received_at(json: &[u8]) -> u64 {
    #[derive(Deserialize)]
    struct Head {
        #[serde(default)]
        received_at: u64,
    }
    serde_json::from_slice::<Head>(json).map_or(0, |h| h.received_at)
}

/// A configured listen address with port 0 (`/ip4/0.0.0.0/tcp/0`) -> the port the node took for
/// it, so that it listens on the same one after a restart and the addresses peers saved of it
/// stay good. Created on first write, so that older stores open unchanged.
const LISTEN_PORTS: TableDefinition<&str, u16> = TableDefinition::new("listen_ports");

impl Store {
    /// The ports the node listened on last time, per configured listen address.
    pub fn listen_ports(&self) -> Result<Vec<(String, u16)>, StoreError> {
        self.read(|txn| {
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
        })
    }

    /// Replaces the stored ports with these: the listen addresses in force now.
    pub fn set_listen_ports(&self, ports: &[(String, u16)]) -> Result<(), StoreError> {
        self.update(true, |txn| {
            let mut table = db(txn.open_table(LISTEN_PORTS))?;
            db(table.retain(|_, _| false))?;
            for (addr, port) in ports {
                db(table.insert(addr.as_str(), *port))?;
            }
            Ok(())
        })
    }
}

/// A store made before the seen sets were kept by time and the feed by author: index what it
/// has (the seen ids as of now, so they are kept a full window).
fn index_seen_and_authors(txn: &WriteTransaction) -> Result<(), StoreError> {
    let now = crate::clock::unix_now_ms();
    for (ids, by_time) in [(SEEN, SEEN_AT), (CHAT_SEEN, CHAT_SEEN_AT)] {
        let mut by_time = db(txn.open_table(by_time))?;
        if db(by_time.len())? > 0 {
            continue;
        }
        let mut ids = db(txn.open_table(ids))?;
        let all: Vec<String> = db(ids.iter())?
            .map(|item| item.map(|(k, _)| k.value().to_string()))
            .collect::<Result<_, _>>()
            .map_err(|e| StoreError::Db(e.into()))?;
        for id in &all {
            db(ids.insert(id.as_str(), now))?;
            db(by_time.insert((now, id.as_str()), ()))?;
        }
    }
    let mut by_author = db(txn.open_table(FEED_BY_AUTHOR))?;
    let mut by_commit = db(txn.open_table(FEED_BY_COMMIT))?;
    if db(by_author.len())? == 0 || db(by_commit.len())? == 0 {
        let feed = db(txn.open_table(FEED))?;
        for item in db(feed.iter())? {
            let (k, v) = db(item)?;
            let (repo, seq) = k.value();
            let entry: FeedEntry = parse(v.value(), "feed")?;
            db(by_author.insert((repo, entry.peer.as_str(), seq), ()))?;
            db(by_commit.insert(entry.seen_key().as_str(), seq))?;
        }
    }
    Ok(())
}

/// [`Store::chat_insert_all`] inside a write transaction.
fn chat_in(txn: &WriteTransaction, entries: &[ChatEntry]) -> Result<usize, StoreError> {
    let mut added = 0;
    let mut seen = db(txn.open_table(CHAT_SEEN))?;
    let mut seen_at = db(txn.open_table(CHAT_SEEN_AT))?;
    let mut chat = db(txn.open_table(CHAT))?;
    let mut threads = db(txn.open_table(THREAD_LOG))?;
    let mut counts = order::Counts::open(txn)?;
    for entry in entries {
        if db(seen.get(entry.id.as_str()))?.is_some() {
            continue;
        }
        let room = entry.room.as_str();
        let thread_repo = room.split_once('/').map(|(repo, _)| repo);
        let at = order::order_time(entry.sent_at, entry.received_at);
        let mut seq = order::free_key(&chat, room, at)?;
        if let Some(repo) = thread_repo {
            // The thread log's key is the message's own: free in both.
            seq = seq.max(order::free_key(&threads, repo, at)?);
        }
        let bytes = serde_json::to_vec(entry).expect("chat entries always serialise");
        db(chat.insert((room, seq), bytes.as_slice()))?;
        db(seen.insert(entry.id.as_str(), entry.sent_at))?;
        db(seen_at.insert((entry.sent_at, entry.id.as_str()), ()))?;
        // The oldest messages (by time) leave the history when it is over its bound (unless
        // they left already); their ids stay seen (see prune_seen). Each goes as (room, key in
        // it, key in the thread log when the log is what is over its bound).
        let mut gone: Vec<(String, u64, Option<u64>)> = Vec::new();
        if counts.grew(order::History::Chat, room, &chat)? > MAX_CHAT_PER_ROOM as u64 {
            gone.extend(order::oldest(&chat, room)?.map(|k| (room.to_string(), k, None)));
        }
        if let Some(repo) = thread_repo {
            db(threads.insert((repo, seq), (room, seq)))?;
            if counts.grew(order::History::Threads, repo, &threads)? > MAX_THREAD_MESSAGES_PER_REPO as u64 {
                if let Some(k) = order::oldest(&threads, repo)? {
                    let entry = db(threads.get((repo, k)))?.map(|v| (v.value().0.to_string(), v.value().1));
                    gone.extend(entry.map(|(room, key)| (room, key, Some(k))));
                }
            }
        }
        for (room, key, log_key) in gone {
            if db(chat.remove((room.as_str(), key)))?.is_some() {
                counts.shrank(order::History::Chat, &room, &chat)?;
            }
            let Some((repo, _)) = room.split_once('/') else { continue };
            // A thread message leaves the thread log with its room: under the message's own key
            // (an older store's entry, under another, goes when the log's bound reaches it).
            let log_key = log_key.unwrap_or(key);
            let logged = db(threads.get((repo, log_key)))?.is_some_and(|v| v.value() == (room.as_str(), key));
            if logged {
                db(threads.remove((repo, log_key)))?;
                counts.shrank(order::History::Threads, repo, &threads)?;
            }
        }
        added += 1;
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a replaceable event's `last` records, made at `t`.
    fn last(t: u64) -> NostrLast {
        NostrLast { digest: format!("d{t}"), created_at: t, seq: None }
    }

    /// The ids of the queued Nostr events, oldest first.
    fn queued_ids(store: &Store) -> Vec<String> {
        store.nostr_pending().unwrap().into_iter().map(|(_, p)| p.id).collect()
    }

    fn pending(id: &str, relays: &[&str], replaces: Option<&str>) -> NostrPending {
        NostrPending {
            id: id.into(),
            event: format!("{{\"id\":\"{id}\"}}"),
            relays: relays.iter().map(|r| r.to_string()).collect(),
            replaces: replaces.map(str::to_string),
        }
    }

    #[test]
    fn a_synced_insert_takes_what_an_insert_takes_and_the_writes_before_it_last() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let message = |i: u64| ChatEntry { own: true, ..message("r", i) };
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.chat_insert_all(&[message(1)]).unwrap(), 1, "without fsync");
            assert_eq!(store.chat_insert_all_synced(&[message(1), message(2)]).unwrap(), 1, "a repeat is no news");
        }
        let store = Store::open(&path).unwrap();
        let texts: Vec<String> = store.chat_history("r", 10).unwrap().into_iter().map(|m| m.text).collect();
        assert_eq!(texts, ["message 1", "message 2"]);
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
        let a = store.nostr_queue(&pending("ann", &["r1", "r2"], Some("30617:p")), Some(&last(1)), true).unwrap();
        let s1 = store.nostr_queue(&pending("s1", &["r1", "r2"], Some("30618:p")), Some(&last(2)), true).unwrap();
        let c = store.nostr_queue(&pending("c", &["r1", "r2"], None), None, false).unwrap();
        let s2 = store.nostr_queue(&pending("s2", &["r1", "r2"], Some("30618:p")), Some(&last(3)), true).unwrap();
        assert!(a < s1 && s1 < c && c < s2);
        assert_eq!(
            queued_ids(&store),
            ["ann", "c", "s2"],
            "the newer state replaced the older one, in place at the end"
        );
        assert_eq!(store.nostr_last("30618:p").unwrap(), Some(NostrLast { seq: Some(s2), ..last(3) }));

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
        assert_eq!(queued_ids(&store), ["c"], "kept across a reopen");
    }

    #[test]
    fn a_full_nostr_queue_drops_its_oldest_comments_and_keeps_the_states() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let queue = |p: &NostrPending, last: Option<&NostrLast>| store.nostr_queue_at_most(p, last, false, 5).unwrap();
        queue(&pending("ann", &["r1"], Some("30617:p")), Some(&last(1)));
        for i in 0..4 {
            queue(&pending(&format!("c{i}"), &["r1"], None), None);
        }
        assert_eq!(queued_ids(&store), ["ann", "c0", "c1", "c2", "c3"], "at the bound: nothing dropped");
        queue(&pending("c4", &["r1"], None), None);
        queue(&pending("c5", &["r1"], None), None);
        assert_eq!(
            queued_ids(&store),
            ["ann", "c2", "c3", "c4", "c5"],
            "the oldest comments gave way, the state stayed"
        );
        // A state queued into a full queue: the oldest comment gives way to it too.
        queue(&pending("state", &["r1"], Some("30618:p")), Some(&last(2)));
        assert_eq!(queued_ids(&store), ["ann", "c3", "c4", "c5", "state"]);
    }

    #[test]
    fn a_state_replaces_the_one_queued_before_whether_or_not_the_store_kept_where_it_went() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        store.nostr_queue(&pending("s1", &["r1"], Some("30618:p")), Some(&last(1)), true).unwrap();
        // As an older store kept it: where s1 went is not known.
        store
            .update(true, |txn| {
                let old = br#"{"digest":"d1","created_at":1}"#;
                db(db(txn.open_table(NOSTR_LAST))?.insert("30618:p", &old[..]))?;
                Ok(())
            })
            .unwrap();
        for i in 0..50 {
            store.nostr_queue(&pending(&format!("c{i}"), &["r1"], None), None, false).unwrap();
        }
        let s2 = store.nostr_queue(&pending("s2", &["r1"], Some("30618:p")), Some(&last(2)), true).unwrap();
        assert_eq!(queued_ids(&store).first().map(String::as_str), Some("c0"), "s1 went: the queue was read");
        assert_eq!(store.nostr_last("30618:p").unwrap().and_then(|l| l.seq), Some(s2), "where s2 went is kept");
        store.nostr_queue(&pending("s3", &["r1"], Some("30618:p")), Some(&last(3)), true).unwrap();
        let left = queued_ids(&store);
        assert_eq!((left.len(), left.last().map(String::as_str)), (51, Some("s3")), "s2 went, found where it was");
        assert!(!left.contains(&"s2".to_string()) && !left.contains(&"s1".to_string()));
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
    fn announced_commits_are_found_by_the_start_of_their_id_each_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        let (repo, other) = (RepoId::try_from("a".repeat(40)).unwrap(), RepoId::try_from("b".repeat(40)).unwrap());
        let entry = |repo: &RepoId, id: &str, peer: &str, summary: &str| FeedEntry {
            repo: repo.clone(),
            peer: peer.into(),
            name: None,
            commit: Commit {
                ref_name: None,
                id: id.into(),
                parents: vec![],
                author: "a".into(),
                summary: summary.into(),
                time: 0,
            },
            announced_at: 1,
            received_at: 1,
        };
        let (c1, c2, c3) = (format!("abcd1{}", "0".repeat(35)), format!("abcd2{}", "0".repeat(35)), "f".repeat(40));
        for e in [
            entry(&repo, &c1, "alice", "one"),
            entry(&repo, &c1, "bob", "one"),
            entry(&repo, &c2, "alice", "two"),
            entry(&repo, &c3, "alice", "three"),
            entry(&other, &format!("abcd3{}", "0".repeat(35)), "alice", "elsewhere"),
        ] {
            store.feed_insert(&e).unwrap();
        }
        let found = |prefix: &str, limit| -> Vec<String> {
            store.feed_commits(&repo, prefix, limit).unwrap().into_iter().map(|c| c.summary).collect()
        };
        assert_eq!(found("abcd", 10), ["one", "two"], "each commit once, this repository's only");
        assert_eq!(found("abcd2", 10), ["two"]);
        assert_eq!(found(&c3, 10), ["three"], "a whole id");
        assert_eq!(found("abcd", 1), ["one"], "at most the limit");
        assert!(found("0", 10).is_empty());
    }

    #[test]
    fn the_threads_of_a_repository_keep_a_bounded_number_of_messages_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        let (repo, other) = ("a".repeat(40), "b".repeat(40));
        let message = |room: String, i: usize| ChatEntry {
            room,
            id: format!("m{i}"),
            peer: "p".into(),
            name: None,
            text: "x".into(),
            sent_at: 1,
            received_at: 1,
            own: false,
            via: None,
            thread: None,
        };
        store.chat_insert(&message(format!("{other}/{}", "c".repeat(40)), 0)).unwrap();
        let extra = 10;
        // Many threads (anyone can start one), a few messages each.
        let all: Vec<ChatEntry> =
            (1..=MAX_THREAD_MESSAGES_PER_REPO + extra).map(|i| message(format!("{repo}/{:040x}", i / 3), i)).collect();
        assert_eq!(store.chat_insert_all(&all).unwrap(), all.len());
        let kept: usize =
            (0..=all.len() / 3).map(|t| store.chat_history(&format!("{repo}/{t:040x}"), 10).unwrap().len()).sum();
        assert_eq!(kept, MAX_THREAD_MESSAGES_PER_REPO, "the threads together keep the bound");
        let oldest = store.chat_history(&format!("{repo}/{:040x}", 0), 10).unwrap();
        assert!(oldest.is_empty(), "the oldest went first");
        let first_kept = store.chat_history(&format!("{repo}/{:040x}", (extra + 1) / 3), 10).unwrap();
        assert!(first_kept.iter().all(|m| m.id != "m1"));
        assert_eq!(
            store.chat_history(&format!("{other}/{}", "c".repeat(40)), 10).unwrap().len(),
            1,
            "another repository's thread stays"
        );
        // Their ids stay seen (a replay is no news) for their window.
        assert!(!store.chat_insert(&message(format!("{repo}/{:040x}", 0), 1)).unwrap());
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

    fn feed_entry(i: u64) -> FeedEntry {
        FeedEntry {
            repo: RepoId::try_from("a".repeat(40)).unwrap(),
            peer: "p".into(),
            name: None,
            commit: crate::proto::announce::Commit {
                ref_name: None,
                id: format!("{i:040x}"),
                parents: vec![],
                author: "a".into(),
                summary: format!("c{i}"),
                time: 0,
            },
            announced_at: i,
            received_at: i,
        }
    }

    fn by(peer: &str, i: u64) -> FeedEntry {
        FeedEntry { peer: peer.into(), ..feed_entry(i) }
    }

    #[test]
    fn a_received_announcement_and_its_sync_item_are_one_write() {
        use crate::proto::sync::{Kind, SyncItem};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let repo = RepoId::try_from("a".repeat(40)).unwrap();
        let item = |ts: u64, n: u8| SyncItem {
            repo: repo.clone(),
            kind: Kind::Announcements,
            ts,
            id: [n; 32],
            envelope: vec![n],
        };
        let both = store.history_write(&[item(1, 1), item(2, 2)], &[], &[feed_entry(1), feed_entry(2)]).unwrap();
        assert_eq!(both, 4, "two announcements and their two items, all new");
        assert_eq!(store.feed(&repo, 10).unwrap().len(), 2);
        assert_eq!(store.sync_ids(&repo, Kind::Announcements, 0).unwrap(), [(1, [1; 32]), (2, [2; 32])]);
        // The feed has it already, under another envelope: the set takes that one too (a peer
        // that holds it has what ours has).
        assert_eq!(store.history_write(&[item(2, 3)], &[], &[feed_entry(2)]).unwrap(), 1, "only the envelope is new");
        assert_eq!(store.sync_ids(&repo, Kind::Announcements, 0).unwrap().len(), 3);
        let (count, _) = store.sync_summary(&repo, Kind::Announcements, 0).unwrap();
        assert_eq!(count, 3, "the set's count is kept in the same write");
    }

    fn message(room: &str, i: u64) -> ChatEntry {
        ChatEntry {
            room: room.into(),
            id: format!("m{i}"),
            peer: "p".into(),
            name: None,
            text: format!("message {i}"),
            sent_at: i,
            received_at: i,
            own: false,
            via: None,
            thread: None,
        }
    }

    /// What a peer caught us up on (dated before what we have) arrives last.
    fn late(mut m: ChatEntry, received_at: u64) -> ChatEntry {
        m.received_at = received_at;
        m
    }

    #[test]
    fn histories_are_in_time_order_however_late_items_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        for i in [10, 40] {
            store.chat_insert(&message("room", i)).unwrap();
        }
        // A partition heals: what the other side said meanwhile arrives now, dated then.
        store.chat_insert_all(&[late(message("room", 20), 50), late(message("room", 30), 50)]).unwrap();
        // A clock ahead sorts where the message arrived, not in the future.
        store.chat_insert(&ChatEntry { sent_at: 1000, ..message("room", 45) }).unwrap();
        store.chat_insert(&message("room", 60)).unwrap();
        let ids: Vec<String> = store.chat_history("room", 10).unwrap().into_iter().map(|m| m.id).collect();
        assert_eq!(ids, ["m10", "m20", "m30", "m40", "m45", "m60"]);
        // Pages read on from where the last ended, in the same order.
        let (first, next) = store.chat_page("room", None, 4, usize::MAX, None).unwrap();
        let (rest, end) = store.chat_page("room", next, 4, usize::MAX, None).unwrap();
        let ids: Vec<&str> = first.iter().chain(&rest).map(|m| m.id.as_str()).collect();
        assert_eq!((ids, end), (vec!["m60", "m45", "m40", "m30", "m20", "m10"], None));
        // What arrived since a time, wherever it sorts: what a follower back from a gap reads.
        let (arrived, _) = store.chat_page("room", None, 10, usize::MAX, Some(50)).unwrap();
        let ids: Vec<&str> = arrived.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["m60", "m30", "m20"]);

        for (i, received) in [(5, 5), (1, 9), (3, 9), (7, 7)] {
            store.feed_insert(&FeedEntry { received_at: received, ..feed_entry(i) }).unwrap();
        }
        let feed: Vec<u64> = store.feed(&feed_entry(0).repo, 10).unwrap().iter().map(|e| e.announced_at).collect();
        assert_eq!(feed, [7, 5, 3, 1], "newest first, by time");
        let (page, _) = store.feed_page(&feed_entry(0).repo, None, 10, usize::MAX, |_| true).unwrap();
        assert_eq!(page.len(), 4);
    }

    #[test]
    fn a_full_history_drops_the_oldest_by_time_not_by_arrival() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let all: Vec<ChatEntry> = (100..100 + MAX_CHAT_PER_ROOM as u64).map(|i| message("room", i)).collect();
        store.chat_insert_all(&all).unwrap();
        // Caught up late: one older than all (it is the one that goes), one among them.
        let among = ChatEntry { id: "late".into(), ..message("room", 150) };
        assert_eq!(store.chat_insert_all(&[late(message("room", 50), 5000), late(among, 5000)]).unwrap(), 2);
        let kept = store.chat_history("room", usize::MAX).unwrap();
        assert_eq!(kept.len(), MAX_CHAT_PER_ROOM);
        assert!(kept.iter().all(|m| m.id != "m50" && m.id != "m100"), "the two oldest by time went");
        assert!(kept.windows(2).all(|w| w[0].sent_at <= w[1].sent_at));
        assert!(kept.iter().any(|m| m.id == "late"));

        let repo = feed_entry(0).repo;
        let authors = 100;
        let feed: Vec<FeedEntry> = (0..MAX_FEED_PER_REPO as u64)
            .map(|i| FeedEntry { received_at: 100_000, ..by(&format!("a{}", i as usize % authors), 1000 + i) })
            .collect();
        store.feed_insert_all(&feed).unwrap();
        store.feed_insert(&FeedEntry { received_at: 200_000, ..by("late", 999) }).unwrap();
        store.feed_insert(&FeedEntry { received_at: 200_000, ..by("late", 5000) }).unwrap();
        let kept = store.feed(&repo, usize::MAX).unwrap();
        assert_eq!(kept.len(), MAX_FEED_PER_REPO);
        assert!(kept.windows(2).all(|w| w[0].announced_at >= w[1].announced_at));
        assert!(!kept.iter().any(|e| e.announced_at == 999 || e.announced_at == 1000), "the two oldest by time went");
        assert!(kept.iter().any(|e| e.peer == "late"));
    }

    #[test]
    fn histories_written_before_the_time_order_keep_their_order_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        // As an older store wrote them: sequence numbers, no counts.
        store
            .update(true, |txn| {
                let mut chat = db(txn.open_table(CHAT))?;
                for i in 1..=MAX_CHAT_PER_ROOM as u64 {
                    let bytes = serde_json::to_vec(&message("room", i)).unwrap();
                    db(chat.insert(("room", i), bytes.as_slice()))?;
                }
                Ok(())
            })
            .unwrap();
        store.chat_insert(&message("room", 5000)).unwrap();
        let kept = store.chat_history("room", usize::MAX).unwrap();
        assert_eq!(kept.len(), MAX_CHAT_PER_ROOM, "counted once, then bounded");
        assert_eq!((kept[0].id.as_str(), kept[kept.len() - 1].id.as_str()), ("m2", "m5000"));
    }

    #[test]
    fn one_author_cannot_push_the_others_out_of_a_feed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        for i in 0..10 {
            assert!(store.feed_insert(&by("honest", i)).unwrap());
        }
        for i in 10..10 + MAX_FEED_PER_AUTHOR as u64 + 500 {
            assert!(store.feed_insert(&by("flood", i)).unwrap());
        }
        let feed = store.feed(&feed_entry(0).repo, usize::MAX).unwrap();
        assert_eq!(feed.iter().filter(|e| e.peer == "honest").count(), 10, "the honest author's stay");
        let flood: Vec<u64> = feed.iter().filter(|e| e.peer == "flood").map(|e| e.announced_at).collect();
        assert_eq!(flood.len(), MAX_FEED_PER_AUTHOR, "the flood keeps its share");
        assert_eq!(flood.last(), Some(&510), "its newest stay, its oldest went");
        // What gave way is still known: a replay of it is no news.
        assert!(!store.feed_insert(&by("flood", 10)).unwrap(), "a replay of a dropped announcement");
    }

    #[test]
    fn a_message_dropped_from_the_history_stays_seen_for_its_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let all: Vec<ChatEntry> = (0..MAX_CHAT_PER_ROOM as u64 + 5).map(|i| message("room", i)).collect();
        assert_eq!(store.chat_insert_all(&all).unwrap(), all.len());
        assert_eq!(store.chat_history("room", usize::MAX).unwrap().len(), MAX_CHAT_PER_ROOM);
        assert!(!store.chat_insert(&message("room", 0)).unwrap(), "a replay of a message the history dropped");
        // Past the window, the ids go (a replay is refused as too old before it gets here).
        assert_eq!(store.prune_seen(3).unwrap(), 3, "m0, m1 and m2");
        assert!(store.chat_insert(&message("room", 0)).unwrap());
        // And beyond the bound, the oldest go first.
        store.prune_seen_to(0, 10).unwrap();
        assert_eq!(store.seen_ids().unwrap().chat.len(), 10);
        assert!(store.seen_ids().unwrap().chat.contains(&format!("m{}", MAX_CHAT_PER_ROOM + 4)));
    }

    #[test]
    fn an_older_store_gets_its_seen_ids_and_authors_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let store = Store::open(&path).unwrap();
            store.feed_insert(&by("a", 1)).unwrap();
            store.chat_insert(&message("room", 1)).unwrap();
            // As a store made before the indexes: the tables are not there.
            store
                .update(true, |txn| {
                    for name in ["seen_at", "chat_seen_at"] {
                        db(txn.delete_table(TableDefinition::<(u64, &str), ()>::new(name)))?;
                    }
                    db(txn.delete_table(FEED_BY_AUTHOR))?;
                    Ok(())
                })
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let (seen, authors) = store
            .read(|txn| Ok((db(db(txn.open_table(SEEN_AT))?.len())?, db(db(txn.open_table(FEED_BY_AUTHOR))?.len())?)))
            .unwrap();
        assert_eq!((seen, authors), (1, 1));
        let chat_seen = store.read(|txn| db(db(txn.open_table(CHAT_SEEN_AT))?.len())).unwrap();
        assert_eq!(chat_seen, 1);
        assert!(!store.feed_insert(&by("a", 1)).unwrap());
    }

    #[test]
    fn a_disk_full_error_stops_writes_not_reads_until_the_store_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        store.feed_insert(&feed_entry(1)).unwrap();
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let err = store.update(false, |_| -> Result<(), StoreError> { Err(StoreError::Db(redb::Error::Io(full))) });
        let dir_text = dir.path().display().to_string();
        assert!(matches!(&err, Err(StoreError::Full { dir }) if *dir == dir_text), "{err:?}");
        assert!(matches!(store.health(), Health::Full { .. }));
        assert!(matches!(store.writable(), Err(StoreError::Full { .. })));
        assert!(matches!(store.feed_insert(&feed_entry(2)), Err(StoreError::Full { .. })), "writes fail at once");
        assert_eq!(store.feed(&feed_entry(1).repo, 10).unwrap().len(), 1, "reads go on");
        assert!(store.reopen(), "there is space here: reopened");
        assert_eq!(store.health(), Health::Ok);
        assert_eq!(store.generation(), 1);
        assert!(store.feed_insert(&feed_entry(2)).unwrap());
        assert_eq!(store.feed(&feed_entry(1).repo, 10).unwrap().len(), 2);
    }

    #[test]
    fn a_panic_or_an_unreadable_record_makes_the_store_damaged_and_nothing_is_read_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open(&path).unwrap();
        store.feed_insert(&feed_entry(1)).unwrap();
        let caught = store.read(|_| -> Result<(), StoreError> { panic!("garbage page") });
        assert!(
            matches!(&caught, Err(StoreError::Damaged { reason, .. }) if reason.contains("garbage page")),
            "{caught:?}"
        );
        let err = store.feed(&feed_entry(1).repo, 10).unwrap_err();
        assert!(err.to_string().contains("git p2p daemon repair"), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");

        let other = Store::open(&dir.path().join("other.redb")).unwrap();
        other.feed_insert(&feed_entry(1)).unwrap();
        other
            .update(true, |txn| {
                db(db(txn.open_table(FEED))?.insert((feed_entry(1).repo.as_str(), 2), &b"{not json"[..]))?;
                Ok(())
            })
            .unwrap();
        assert!(matches!(other.feed(&feed_entry(1).repo, 10), Err(StoreError::Damaged { .. })), "not skipped");
        assert!(matches!(other.health(), Health::Damaged { .. }));
    }

    #[test]
    fn only_a_file_closed_cleanly_is_trusted_without_being_verified() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open(&path).unwrap();
        for i in 0..200 {
            store.feed_insert(&feed_entry(i)).unwrap();
        }
        store.close();
        assert!(beside(&path, handle::CLEAN).exists(), "a clean close is recorded");
        let pristine = std::fs::read(&path).unwrap();
        // Trusted: opens, and the mark is used up.
        Store::open(&path).unwrap().close();
        // Changed outside the node (a page of the feed overwritten): found at the open.
        let mut bytes = pristine.clone();
        let at = 4096 * 2;
        bytes[at..at + 4096].fill(0xa5);
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(Store::open(&path), Err(StoreError::Damaged { .. })));
        std::fs::write(&path, &pristine).unwrap();
        assert!(Store::open(&path).is_ok(), "the same bytes put back verify");
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(Store::open(&path), Err(StoreError::Damaged { reason, .. }) if reason.contains("empty")));
    }

    #[test]
    fn damage_written_while_the_store_is_open_is_found_when_it_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open(&path).unwrap();
        for i in 0..200 {
            store.feed_insert(&feed_entry(i)).unwrap();
        }
        store.sync().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[4096 * 2..4096 * 3].fill(0xa5);
        std::fs::write(&path, &bytes).unwrap();
        store.close();
        assert!(matches!(store.health(), Health::Damaged { .. }));
        assert!(!beside(&path, handle::CLEAN).exists(), "not trusted at the next open");
        // redb went back to an earlier state to close it: what it says now is not the store.
        let said = damage_report(&path).expect("recorded for the next start and the repair");
        assert!(said.contains("git p2p daemon repair"), "{said}");
    }

    #[test]
    fn the_damage_marker_holds_for_the_same_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        std::fs::write(&path, b"damaged bytes").unwrap();
        record_damage(&path, "the store is damaged:\nrepair it");
        assert_eq!(damage_report(&path).as_deref(), Some("the store is damaged: repair it"), "one line");
        std::fs::write(&path, b"another file put in its place").unwrap();
        assert_eq!(damage_report(&path), None);
        assert!(!beside(&path, handle::DAMAGED).exists(), "the stale marker is gone");
    }

    #[test]
    fn salvage_reads_what_it_can_and_the_registry_copy_survives_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = Store::open(&path).unwrap();
        let repo =
            RepoInfo { id: RepoId::try_from("b".repeat(40)).unwrap(), name: "proj".into(), git_dir: Some("/x".into()) };
        store.add_repo(&repo).unwrap();
        store.kv_own(&repo.id, "k", 7, true).unwrap();
        store.dht_put(b"key", &DhtRecord { value: b"v".to_vec(), publisher: None, expires: None }).unwrap();
        store.close();
        let whole = salvage::salvage(&path, &path);
        assert_eq!(whole.unopenable, None);
        assert!(whole.cut_short.is_empty(), "{:?}", whole.cut_short);
        assert_eq!(whole.repos, vec![(repo.id.to_string(), "proj".to_string(), Some(LocalPath::new("/x")))]);
        assert_eq!(whole.kv_own, vec![(repo.id.to_string(), "k".to_string(), 7)]);
        assert_eq!(whole.dht.len(), 1);
        // The header gone: nothing of the file, the registry from its copy.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..4096].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let none = salvage::salvage(&path, &path);
        assert!(none.unopenable.is_some());
        assert_eq!(none.repos, whole.repos);
        assert!(none.kv_own.is_empty());
    }
}
