//! Received room messages and announcements go to the store on their own thread, in batches, so
//! that gossip forwarding and delivery to followers never wait for redb (or for an fsync holding
//! its lock). The service decides what is new with in-memory sets of recent ids and broadcasts
//! at once; the writer makes it durable about once a second. Reads of a room's history and of a
//! feed go through the same thread, after everything handed to it before: a client that saw a
//! message or an announcement streamed finds it in the history or the feed too.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::control::api::{Failure, Page, Reply};
use crate::control::proto::PAGE_BYTES;
use crate::proto::announce::FeedEntry;
use crate::proto::chat::ChatEntry;
use crate::proto::envelope::Envelope;
use crate::proto::sync::SyncItem;
use crate::store::Store;

/// Messages and announcements written per transaction at most.
const BATCH: usize = 512;
/// How often the writer makes what it wrote durable.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How long the writer waits for more after the first job of a batch. A received message is
/// streamed to followers and forwarded before it is written, and reads wait for what came
/// before them, so the wait is seen by nobody; it makes a burst one transaction (a redb commit
/// costs far more CPU than a message's check) and keeps the write out of the moments a message
/// is still being forwarded.
const LINGER: Duration = Duration::from_millis(50);

/// A read of the store that waits for every write handed over before it.
type Read = Box<dyn FnOnce(&Store) + Send>;

enum Job {
    Write(ChatEntry),
    /// A received announcement for the feed, and its envelope for the sync sets.
    Feed(Box<(FeedEntry, Envelope)>),
    /// An envelope for the sync sets (its item is made on the writer's thread).
    Keep(Box<Envelope>),
    Read(Read),
}

/// A page of a room's history, newest first, from before `before` on, at most `limit` long.
pub struct PageRead {
    pub room: String,
    pub before: Option<u64>,
    pub limit: usize,
    /// Only the messages taken at or after this (Unix ms): a follower back from a gap.
    pub arrived_since: Option<u64>,
    pub reply: Reply<Page<ChatEntry>>,
}

/// Hands received messages to the writer thread. Dropped, it waits for the thread to have
/// written (and synced) what it was handed, so that the store can then be closed.
pub struct HistoryWriter {
    tx: Option<mpsc::Sender<Job>>,
    store: Store,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Handed over but not yet sent to the thread: the event loop sends them once the swarm
    /// has had its turn ([`Self::flush`]), so that waking the writer never delays a message on
    /// its way out or to followers.
    pending: Vec<Job>,
}

impl Drop for HistoryWriter {
    fn drop(&mut self) {
        self.flush();
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl PageRead {
    fn answer(self, store: &Store) {
        let page = store
            .chat_page(&self.room, self.before, self.limit, PAGE_BYTES, self.arrived_since)
            .map(|(items, next)| Page { items, next })
            .map_err(|e| Failure::new(format!("cannot read the room's history: {e}")));
        let _ = self.reply.send(page);
    }
}

impl HistoryWriter {
    pub fn spawn(store: Store) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let writer_store = store.clone();
        let spawned = std::thread::Builder::new().name("history".into()).spawn(move || {
            super::priority::give_way_thread();
            write_loop(&writer_store, &rx)
        });
        match spawned {
            Ok(thread) => Self { tx: Some(tx), store, thread: Some(thread), pending: Vec::new() },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the history thread; writing inline");
                Self { tx: None, store, thread: None, pending: Vec::new() }
            }
        }
    }

    /// A received message for the history (sent to the writer at the next [`Self::flush`]).
    pub fn write(&mut self, entry: ChatEntry) {
        self.hand_over(Job::Write(entry));
    }

    /// A received announcement for the feed, with its envelope for the sync sets (the store
    /// keeps the first of each author and commit).
    pub fn feed(&mut self, entry: FeedEntry, envelope: Envelope) {
        self.hand_over(Job::Feed(Box::new((entry, envelope))));
    }

    /// Adds an envelope to the sync sets (in the writer's next batch).
    pub fn keep(&mut self, envelope: Envelope) {
        self.hand_over(Job::Keep(Box::new(envelope)));
    }

    /// Answers a page of a room's history, with every message handed to [`Self::write`]
    /// before. Sent at once: the client is waiting.
    pub fn read(&mut self, page: PageRead) {
        self.after_writes(move |store| page.answer(store));
    }

    /// Runs `read` on the writer's thread once everything handed over before is written (a
    /// page of a feed, say). Sent at once: a client is waiting.
    pub fn after_writes(&mut self, read: impl FnOnce(&Store) + Send + 'static) {
        self.hand_over(Job::Read(Box::new(read)));
        self.flush();
    }

    /// Whether jobs wait for [`Self::flush`].
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Sends the jobs handed over to the writer thread (done here when it is gone).
    pub fn flush(&mut self) {
        for job in std::mem::take(&mut self.pending) {
            let job = match &self.tx {
                Some(tx) => match tx.send(job) {
                    Ok(()) => continue,
                    Err(mpsc::SendError(job)) => job,
                },
                None => job,
            };
            self.inline(job);
        }
    }

    fn hand_over(&mut self, job: Job) {
        if self.tx.is_some() {
            self.pending.push(job);
        } else {
            self.inline(job);
        }
    }

    /// A job done on the caller's thread: the writer thread could not be started, or is gone.
    fn inline(&self, job: Job) {
        match job {
            Job::Read(read) => read(&self.store),
            job => {
                let mut batch = Batch::default();
                batch.take(job);
                batch.write(&self.store);
            }
        }
    }
}

/// What the writer takes together: one transaction for the messages, announcements and
/// envelopes, then the read that waited for them.
#[derive(Default)]
struct Batch {
    chat: Vec<ChatEntry>,
    feed: Vec<FeedEntry>,
    keep: Vec<SyncItem>,
    read_after: Option<Read>,
}

impl Batch {
    fn take(&mut self, job: Job) {
        match job {
            Job::Write(entry) => self.chat.push(entry),
            Job::Feed(received) => {
                let (entry, envelope) = *received;
                self.feed.push(entry);
                self.keep.extend(SyncItem::of(&envelope));
            }
            Job::Keep(envelope) => self.keep.extend(SyncItem::of(&envelope)),
            Job::Read(read) => self.read_after = Some(read),
        }
    }

    fn len(&self) -> usize {
        self.chat.len() + self.feed.len() + self.keep.len()
    }

    /// Writes what it holds; whether anything was new.
    fn write(&self, store: &Store) -> bool {
        match store.history_write(&self.keep, &self.chat, &self.feed) {
            Ok(new) => new > 0,
            Err(e) => {
                let what = format!(
                    "cannot store {} chat messages, {} announcements and {} envelopes for sync",
                    self.chat.len(),
                    self.feed.len(),
                    self.keep.len()
                );
                super::disk::log_store_error(&e, &what);
                false
            }
        }
    }
}

fn write_loop(store: &Store, rx: &mpsc::Receiver<Job>) {
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    loop {
        let first = match rx.recv_timeout(SYNC_EVERY) {
            Ok(job) => Some(job),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut next = first;
        let mut open = true;
        while let Some(job) = next.take() {
            let mut taken = Batch::default();
            taken.take(job);
            // What arrives within LINGER joins the batch: one transaction for a burst, and
            // none while a message is still on its way to followers and peers.
            let until = Instant::now() + LINGER;
            while taken.read_after.is_none() && taken.len() < BATCH {
                let job = match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok(job) => job,
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        open = false;
                        break;
                    }
                };
                taken.take(job);
            }
            unsynced |= taken.write(store);
            if let Some(read) = taken.read_after {
                read(store);
                // More may be queued behind the read.
                next = rx.try_recv().ok();
            }
        }
        if unsynced && (!open || last_sync.elapsed() >= SYNC_EVERY) {
            if let Err(e) = store.sync() {
                super::disk::log_store_error(&e, "cannot sync the chat history");
            }
            unsynced = false;
            last_sync = Instant::now();
        }
        if !open {
            break;
        }
    }
    if unsynced {
        let _ = store.sync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> ChatEntry {
        ChatEntry {
            room: "r".into(),
            id: format!("m{i}"),
            peer: "p".into(),
            name: None,
            text: format!("t{i}"),
            sent_at: i,
            received_at: i,
            own: false,
            via: None,
            thread: None,
        }
    }

    #[test]
    fn a_read_sees_every_message_written_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let mut writer = HistoryWriter::spawn(store);
        for round in 0..20u64 {
            for i in 0..50 {
                writer.write(entry(round * 50 + i));
            }
            let (reply, answer) = tokio::sync::oneshot::channel();
            writer.read(PageRead { room: "r".into(), before: None, limit: 10_000, arrived_since: None, reply });
            let Ok(Ok(page)) = answer.blocking_recv() else { panic!("no history") };
            assert_eq!(page.items.len() as u64, (round + 1) * 50, "round {round}: no read overtakes a write");
        }
    }

    #[test]
    fn a_feed_read_sees_every_announcement_handed_over_before_it_and_its_envelope_is_kept() {
        use crate::proto::announce::{Announcement, Commit};
        use crate::proto::repo::RepoId;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let mut writer = HistoryWriter::spawn(store.clone());
        let key = libp2p::identity::Keypair::ed25519_from_bytes([7; 32]).unwrap();
        let repo = RepoId::try_from("b".repeat(40)).unwrap();
        let mut handed = 0usize;
        for round in 0..10u64 {
            for i in 0..30 {
                let n = round * 30 + i;
                let commit = Commit {
                    ref_name: None,
                    id: format!("{n:040x}"),
                    parents: vec![],
                    author: "a".into(),
                    summary: format!("c{n}"),
                    time: n as i64,
                };
                let envelope = Announcement { commit: commit.clone(), name: None }.sign(&key, &repo, 1000 + n);
                let entry = FeedEntry {
                    repo: repo.clone(),
                    peer: key.public().to_peer_id().to_string(),
                    name: None,
                    commit,
                    announced_at: 1000 + n,
                    received_at: 1000 + n,
                };
                // Each twice: the store keeps the first.
                writer.feed(entry.clone(), envelope.clone());
                writer.feed(entry, envelope);
                handed += 1;
            }
            let (reply, answer) = tokio::sync::oneshot::channel();
            let for_repo = repo.clone();
            writer.after_writes(move |store| {
                let _ = reply.send(store.feed(&for_repo, 100_000).map(|f| f.len()));
            });
            assert_eq!(answer.blocking_recv().unwrap().unwrap(), handed, "round {round}: no read overtakes a write");
        }
        drop(writer);
        let kept = store.sync_ids(&repo, crate::proto::sync::Kind::Announcements, 0).unwrap().len();
        assert_eq!(kept, handed, "every announcement's envelope is in the sync set, once");
    }

    #[test]
    fn pages_go_back_from_the_newest_and_stay_within_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        store.chat_insert_all(&(0..25).map(entry).collect::<Vec<_>>()).unwrap();
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let (items, next) = store.chat_page("r", before, 10, usize::MAX, None).unwrap();
            seen.extend(items.into_iter().map(|m| m.sent_at));
            match next {
                Some(n) => before = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, (0..25).rev().collect::<Vec<_>>(), "each once, newest first");
        let one = serde_json::to_vec(&entry(24)).unwrap().len();
        let (items, next) = store.chat_page("r", None, 100, 3 * one, None).unwrap();
        assert_eq!((items.len(), next.is_some()), (3, true), "as many as fit");
        let (items, _) = store.chat_page("r", None, 100, 1, None).unwrap();
        assert_eq!(items.len(), 1, "one at least");
    }

    #[test]
    fn a_writer_dropped_with_jobs_still_pending_stores_them_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let mut writer = HistoryWriter::spawn(store.clone());
        for i in 0..10u64 {
            writer.write(entry(i));
        }
        drop(writer);
        assert_eq!(store.chat_history("r", 100).unwrap().len(), 10, "the node stopping loses none");
    }

    #[test]
    fn the_writer_stores_what_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let mut writer = HistoryWriter::spawn(store.clone());
        for i in 0..10u64 {
            writer.write(entry(i));
        }
        assert!(writer.has_pending(), "handed over, kept until the event loop flushes");
        writer.flush();
        assert!(!writer.has_pending());
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.chat_history("r", 100).unwrap().len() < 10 {
            assert!(Instant::now() < deadline, "written within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        let texts: Vec<String> = store.chat_history("r", 100).unwrap().into_iter().map(|m| m.text).collect();
        assert_eq!(texts, (0..10).map(|i| format!("t{i}")).collect::<Vec<_>>());
    }
}
