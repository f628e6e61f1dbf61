//! The service's [`Disk`] over the node's store, and the `store-sync` thread that makes it
//! durable. Writes are committed without fsync; the answers that need them durable wait in the
//! command batch's [`SyncJob`], and the sync thread fsyncs once for the batch and only then sends
//! them, so the swarm never waits for the disk (a group commit). What needs no answer is synced
//! on the next tick. Received room messages and announcements go to the history thread instead.

use libp2p::kad::store::RecordStore;
use libp2p::{kad, Multiaddr, PeerId};

use super::history::HistoryWriter;
use super::kad_store::PersistentStore;
use super::service::{Ack, Disk, Loaded, RecordError};
use crate::control::api::Failure;
use crate::proto::announce::FeedEntry;
use crate::proto::chat::ChatEntry;
use crate::proto::envelope::Envelope;
use crate::proto::outbox::OutboxEntry;
use crate::proto::repo::{RepoId, RepoInfo};
use crate::store::{KeysPage, SeenIds, Store, StoreError};

/// What the sync thread does for one command batch: write our published room messages to the
/// history, fsync, then send the answers that waited for it.
#[derive(Default)]
struct SyncJob {
    history: Vec<ChatEntry>,
    acks: Vec<Ack>,
}

/// What the event loop keeps between writes: whether a sync is owed, and the command batch's
/// answers waiting for durability.
pub struct Durability {
    syncer: Option<std::sync::mpsc::Sender<SyncJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Written without fsync since the last sync.
    unsynced: bool,
    batch: SyncJob,
}

/// Dropped, it waits for the sync thread to be done (the store is closed after it).
impl Drop for Durability {
    fn drop(&mut self) {
        self.syncer = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Durability {
    /// Starts the sync thread.
    pub fn spawn(store: Store) -> Self {
        let (syncer, thread) = spawn_syncer(store);
        Self { syncer: Some(syncer), thread, unsynced: false, batch: SyncJob::default() }
    }

    fn send(&self, job: SyncJob) -> Result<(), SyncJob> {
        match &self.syncer {
            Some(syncer) => syncer.send(job).map_err(|std::sync::mpsc::SendError(job)| job),
            None => Err(job),
        }
    }

    /// Whether published messages or answers wait for [`Self::commit_batch`].
    pub fn has_batch(&self) -> bool {
        !self.batch.acks.is_empty() || !self.batch.history.is_empty()
    }

    /// The end of a command batch: the sync thread writes our published messages, fsyncs and
    /// answers. `inline` (the node is stopping, or the thread is gone): here and now.
    pub fn commit_batch(&mut self, store: &Store, inline: bool) {
        let job = std::mem::take(&mut self.batch);
        if job.acks.is_empty() && job.history.is_empty() {
            return;
        }
        self.unsynced = false;
        let job = if inline {
            job
        } else {
            match self.send(job) {
                Ok(()) => return,
                Err(job) => job,
            }
        };
        run_job(store, job);
    }

    /// What was written without fsync since the last sync is made durable (off this thread).
    pub fn sync_soon(&mut self, store: &Store) {
        if std::mem::take(&mut self.unsynced) && self.send(SyncJob::default()).is_err() {
            if let Err(e) = store.sync() {
                log_store_error(&e, "cannot sync the store");
            }
        }
    }

    /// A write was made without fsync.
    pub fn wrote(&mut self) {
        self.unsynced = true;
    }
}

/// The service's view of the store (and of Kademlia's record store, which the swarm owns), for
/// the length of one call.
pub struct NodeDisk<'a> {
    pub store: &'a Store,
    pub records: &'a mut PersistentStore,
    pub durability: &'a mut Durability,
    pub history: &'a mut HistoryWriter,
}

impl NodeDisk<'_> {
    fn wrote<T>(&mut self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        self.durability.unsynced = true;
        result
    }
}

impl Disk for NodeDisk<'_> {
    fn add_repo(&mut self, repo: &RepoInfo) -> Result<(), StoreError> {
        self.store.add_repo(repo)?;
        self.records.protect(&repo.id);
        Ok(())
    }

    fn remove_repo(&mut self, repo: &RepoId) -> Result<(), StoreError> {
        self.store.remove_repo(repo)?;
        self.records.unprotect(repo);
        Ok(())
    }

    fn outbox_push(&mut self, entry: &OutboxEntry, durable: bool) -> Result<u64, StoreError> {
        let result = self.store.outbox_push_with(entry, durable);
        self.wrote(result)
    }

    fn outbox_remove(&mut self, seqs: &[u64]) -> Result<(), StoreError> {
        let result = self.store.outbox_remove(seqs);
        self.wrote(result)
    }

    fn mark_announced(&mut self, repo: &RepoId, commit: &str) -> Result<(), StoreError> {
        let result = self.store.mark_announced(repo, commit);
        self.wrote(result)
    }

    fn prune_announced(&mut self, before_ms: u64) -> Result<usize, StoreError> {
        let result = self.store.prune_announced(before_ms);
        self.wrote(result)
    }

    fn prune_seen(&mut self, before_ms: u64) -> Result<usize, StoreError> {
        let result = self.store.prune_seen(before_ms);
        self.wrote(result)
    }

    fn feed_received(&mut self, entry: FeedEntry, envelope: Envelope) {
        self.history.feed(entry, envelope);
    }

    fn feed_has(&self, entry: &FeedEntry) -> bool {
        self.store.feed_has(entry).unwrap_or_else(|e| {
            log_store_error(&e, "cannot look an announcement up in the feed");
            false
        })
    }

    fn chat_received(&mut self, entry: ChatEntry) {
        self.history.write(entry);
    }

    fn chat_has(&self, id: &str) -> bool {
        self.store.chat_has(id).unwrap_or_else(|e| {
            log_store_error(&e, "cannot look a room message up in the history");
            false
        })
    }

    fn chat_insert(&mut self, entry: &ChatEntry) -> Result<bool, StoreError> {
        let result = self.store.chat_insert(entry);
        self.wrote(result)
    }

    fn sync_keep(&mut self, envelope: Envelope) {
        self.history.keep(envelope);
    }

    fn sync_prune(&mut self, before_ms: u64) -> Result<usize, StoreError> {
        let result = self.store.sync_prune(before_ms);
        self.wrote(result)
    }

    fn chat_published(&mut self, entry: ChatEntry) {
        self.durability.batch.history.push(entry);
    }

    fn reply_when_durable(&mut self, ack: Ack) {
        self.durability.batch.acks.push(ack);
    }

    fn kv_own(&mut self, repo: &RepoId, key: &str, ts: u64, durable: bool) -> Result<(), StoreError> {
        let result = self.store.kv_own(repo, key, ts, durable);
        self.wrote(result)
    }

    fn kv_own_page(&self, repo: &RepoId, after: Option<&str>, limit: usize) -> Result<KeysPage, StoreError> {
        self.store.kv_own_page(repo, after, limit)
    }

    fn record(&self, key: &kad::RecordKey) -> Option<kad::Record> {
        self.records.get(key).map(|r| r.into_owned())
    }

    fn put_record(&mut self, record: kad::Record) -> Result<(), RecordError> {
        self.durability.unsynced = true;
        self.records.put_stored(record)
    }

    fn remember_peer(&mut self, peer: &PeerId, addrs: &[Multiaddr], name: Option<&str>) -> Result<(), StoreError> {
        let addrs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        self.store.remember_peer(&peer.to_string(), &addrs, name)
    }

    fn writable(&self) -> Result<(), StoreError> {
        self.store.writable()
    }

    fn restore_done(&mut self, repo: &RepoId, key: &str) -> Result<(), StoreError> {
        let result = self.store.restore_done(repo, key);
        self.wrote(result)
    }
}

fn run_job(store: &Store, job: SyncJob) {
    match store.chat_insert_all_synced(&job.history).map(|_| ()) {
        Ok(()) => job.acks.into_iter().for_each(|ack| ack.settle(Ok(()))),
        Err(e) => {
            log_store_error(&e, "cannot sync the store");
            let failure = Failure::new(format!("cannot store: {e}"));
            job.acks.into_iter().for_each(|ack| ack.settle(Err(failure.clone())));
        }
    }
}

/// Logs a failed store operation: quietly when the store as a whole is down (a full disk, a
/// damaged file: it said so once, loudly, and every operation fails until it is back).
pub fn log_store_error(e: &StoreError, what: &str) {
    if e.is_store_down() {
        tracing::debug!(error = %e, "{what}");
    } else {
        tracing::warn!(error = %e, "{what}");
    }
}

/// What the service needs to know of the store at start; what cannot be read is logged and
/// left out (the node still starts). The seen sets are read later ([`read_seen`]): start-up
/// must not grow with the histories and feeds.
pub fn load(store: &Store) -> Loaded {
    fn read<T>(what: &str, result: Result<Vec<T>, crate::store::StoreError>) -> Vec<T> {
        result.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read {what}");
            Vec::new()
        })
    }
    let known_peers = read("the address book", store.known_peers())
        .into_iter()
        .filter_map(|(peer, entry)| {
            let peer = peer.parse().ok()?;
            Some((peer, entry.addrs.iter().filter_map(|a| a.parse().ok()).collect()))
        })
        .collect();
    Loaded {
        repos: read("the registered repositories", store.repos()),
        outbox: read("the outbox", store.outbox()),
        known_peers,
        seen: None,
        restore: read("the keys to fetch back", store.restore_pending()),
    }
}

/// The seen sets (the ids of the room messages the histories have, the keys of the
/// announcements the feeds have), read on a thread of its own; nothing when they cannot be read
/// (the feed is then asked about each announcement, and a room message may be shown twice).
pub fn read_seen(store: Store) -> tokio::sync::oneshot::Receiver<SeenIds> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let read = move || match store.seen_ids() {
        Ok(seen) => {
            let _ = tx.send(seen);
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the seen messages and announcements"),
    };
    if let Err(e) = std::thread::Builder::new().name("seen".into()).spawn(read) {
        tracing::warn!(error = %e, "cannot read the seen messages and announcements");
    }
    rx
}

/// The sets [`read_seen`] read, once they are (never, if they cannot be).
pub async fn seen_read(pending: &mut Option<tokio::sync::oneshot::Receiver<SeenIds>>) -> SeenIds {
    let Some(rx) = pending else { return std::future::pending().await };
    let read = rx.await;
    *pending = None;
    match read {
        Ok(seen) => seen,
        Err(_) => std::future::pending().await,
    }
}

/// The thread that makes the store durable (one fsync for whatever is queued) and then sends the
/// answers that waited for it. Exits when the event loop drops its sender.
fn spawn_syncer(store: Store) -> (std::sync::mpsc::Sender<SyncJob>, Option<std::thread::JoinHandle<()>>) {
    let (tx, rx) = std::sync::mpsc::channel::<SyncJob>();
    let spawned = std::thread::Builder::new().name("store-sync".into()).spawn(move || {
        super::priority::give_way_thread();
        while let Ok(mut job) = rx.recv() {
            while let Ok(more) = rx.try_recv() {
                job.history.extend(more.history);
                job.acks.extend(more.acks);
            }
            run_job(&store, job);
        }
    });
    match spawned {
        Ok(thread) => (tx, Some(thread)),
        Err(e) => {
            // The receiver is gone with the closure: every send fails and the loop syncs itself.
            tracing::warn!(error = %e, "cannot start the store's sync thread; syncing inline");
            (tx, None)
        }
    }
}
