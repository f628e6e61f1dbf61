//! Received room messages go to the store on their own thread, in batches, so that gossip
//! forwarding and delivery to followers never wait for redb (or for an fsync holding its lock).
//! The service decides what is new with an in-memory set of recent ids and broadcasts at once; the writer makes it durable about once a second. Reads of a room's history
//! go through the same thread, after every message handed to it before: a client that saw a
//! message streamed finds it in the history too.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::control::api::{Failure, Page, Reply};
use crate::control::proto::PAGE_BYTES;
use crate::proto::chat::ChatEntry;
use crate::proto::envelope::Envelope;
use crate::proto::sync::SyncItem;
use crate::store::Store;

/// Messages written per transaction at most.
const BATCH: usize = 512;
/// How often the writer makes what it wrote durable.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How long the writer waits for more after the first job of a batch. A received message is
/// streamed to followers and forwarded before it is written, and reads wait for what came
/// before them, so the wait is seen by nobody; it makes a burst one transaction (a redb commit
/// costs far more CPU than a message's check) and keeps the write out of the moments a message
/// is still being forwarded.
const LINGER: Duration = Duration::from_millis(50);

enum Job {
    Write(ChatEntry),
    /// An envelope for the sync sets (its item is made on the writer's thread).
    Keep(Box<Envelope>),
    /// A page of `room`'s history, once what came before is written.
    Read(PageRead),
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

fn read(store: &Store, read: PageRead) {
    let page = store
        .chat_page(&read.room, read.before, read.limit, PAGE_BYTES, read.arrived_since)
        .map(|(items, next)| Page { items, next })
        .map_err(|e| Failure::new(format!("cannot read the room's history: {e}")));
    let _ = read.reply.send(page);
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

    /// Adds an envelope to the sync sets (in the writer's next batch).
    pub fn keep(&mut self, envelope: Envelope) {
        self.hand_over(Job::Keep(Box::new(envelope)));
    }

    /// Answers a page of a room's history, with every message handed to [`Self::write`]
    /// before. Sent at once: the client is waiting.
    pub fn read(&mut self, page: PageRead) {
        self.hand_over(Job::Read(page));
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
            Job::Write(entry) => {
                if let Err(e) = self.store.chat_insert(&entry) {
                    tracing::warn!(error = %e, "cannot store a chat message");
                }
            }
            Job::Keep(envelope) => {
                let Some(item) = SyncItem::of(&envelope) else { return };
                if let Err(e) = self.store.sync_keep_all(std::slice::from_ref(&item)) {
                    tracing::warn!(error = %e, "cannot keep an envelope for sync");
                }
            }
            Job::Read(page) => read(&self.store, page),
        }
    }
}

/// What the writer takes together: one transaction for the messages and envelopes, then the
/// read that waited for them.
#[derive(Default)]
struct Batch {
    entries: Vec<ChatEntry>,
    keep: Vec<SyncItem>,
    read_after: Option<PageRead>,
}

impl Batch {
    fn take(&mut self, job: Job) {
        match job {
            Job::Write(entry) => self.entries.push(entry),
            Job::Keep(envelope) => self.keep.extend(SyncItem::of(&envelope)),
            Job::Read(page) => self.read_after = Some(page),
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
            while taken.read_after.is_none() && taken.entries.len() + taken.keep.len() < BATCH {
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
            let Batch { entries: batch, keep, read_after } = taken;
            match store.history_write(&keep, &batch) {
                Ok((0, 0)) => {}
                Ok(_) => unsynced = true,
                Err(e) => super::disk::log_store_error(
                    &e,
                    &format!("cannot store {} chat messages and {} envelopes for sync", batch.len(), keep.len()),
                ),
            }
            if let Some(page) = read_after {
                read(store, page);
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
