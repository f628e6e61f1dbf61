//! `/git-p2p/sync/1` sessions (issue 15), both ends: the frames of `proto::sync` over a
//! libp2p-stream stream (the node's upload-pack streams use the same behaviour), negentropy
//! (range-based set reconciliation, the protocol of Nostr's NIP-77) over the sync sets the
//! store keeps, and the envelopes that each side lacks. Nothing that arrives is taken here: it
//! goes to the event loop, whose service checks it as gossip ([`SyncEvent::Items`]), and the
//! session waits for the verdict (so a peer cut off for what it sent gets nothing more done).
//!
//! A stream rather than request-response: a session is a conversation (a `Hello`, negentropy
//! rounds, then items both ways) whose state (the sets read from the store) lives for its
//! length, and item batches flow back to back without one request per batch.
//!
//! Bounded: frames ([`MAX_FRAME`]), what one session may read ([`MAX_SESSION_BYTES`]), the wait
//! for each frame ([`IDLE`]), a session's length ([`SESSION_TIME`]), negentropy rounds per set
//! ([`MAX_ROUNDS`]), sessions served at once ([`MAX_SERVING`], one per peer). Breaking a bound,
//! or sending items it was not asked for, is misconduct ([`SyncOutcome::misbehaved`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use negentropy::{Id, Negentropy, NegentropyStorageVector};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::service::sync::{SyncOutcome, Synced};
use crate::proto::envelope::Envelope;
use crate::proto::repo::RepoId;
use crate::proto::sync::{item_id, Entry, Frame, Kind, MAX_FRAME, MAX_WANT};
use crate::store::Store;

/// The stream protocol.
pub const SYNC: StreamProtocol = StreamProtocol::new(crate::proto::sync::PROTOCOL);
/// Sessions of peers served at once.
pub const MAX_SERVING: usize = 8;
/// The longest a session may take.
pub const SESSION_TIME: Duration = Duration::from_secs(120);
/// Each frame must come this soon.
pub const IDLE: Duration = Duration::from_secs(20);
/// Negentropy rounds per set (each halves what is left to compare; 10 000 items need 3 or 4).
pub const MAX_ROUNDS: usize = 64;
/// Largest negentropy message (the crate splits its answers to fit).
const NEG_FRAME: u64 = 64 * 1024;
/// Envelope bytes per `Items` frame.
const ITEMS_BYTES: usize = 256 * 1024;
/// What one session may read from the peer: every set of a few repositories, whole. A session
/// that needs more ends there; the next one goes on from what this one stored.
pub const MAX_SESSION_BYTES: u64 = 64 * 1024 * 1024;
/// What arrived is handed over once this much has come (or the repository changes, or the
/// session ends), all kinds together in signed-time order.
const HAND_OVER_BYTES: usize = 4 * 1024 * 1024;
/// Reports waiting for the event loop.
pub const EVENT_QUEUE: usize = 64;

/// What a session hands the event loop.
pub enum SyncEvent {
    /// Envelopes of a repository's sets (each with its set's kind) that the peer sent us; the
    /// verdict says whether to go on.
    Items { peer: PeerId, repo: RepoId, items: Vec<Synced>, verdict: oneshot::Sender<bool> },
    /// One of our sessions ended.
    Done { session: u64, outcome: SyncOutcome },
    /// A session a peer started ended.
    Served { peer: PeerId, outcome: SyncOutcome },
}

/// Why a session ended early.
enum Fault {
    /// The peer went away, was slow, refused, or we were cut off from taking more.
    Ended(String),
    /// The peer broke the protocol.
    Misbehaved(String),
}

fn ended(e: impl std::fmt::Display) -> Fault {
    Fault::Ended(e.to_string())
}

fn misbehaved(e: impl std::fmt::Display) -> Fault {
    Fault::Misbehaved(e.to_string())
}

/// A stream with what went each way counted.
struct Conn {
    stream: libp2p::Stream,
    sent: u64,
    received: u64,
}

impl Conn {
    async fn send(&mut self, frame: &Frame) -> Result<(), Fault> {
        let bytes = frame.encode();
        self.stream.write_all(&bytes).await.map_err(ended)?;
        self.stream.flush().await.map_err(ended)?;
        self.sent += bytes.len() as u64;
        Ok(())
    }

    /// The next frame; None when the peer closed the stream between frames.
    async fn recv_or_end(&mut self) -> Result<Option<Frame>, Fault> {
        let read = async {
            let mut len = [0u8; 4];
            match self.stream.read_exact(&mut len).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(ended(e)),
            }
            let len = u32::from_be_bytes(len) as usize;
            if len > MAX_FRAME {
                return Err(misbehaved(format!("a frame of {len} bytes")));
            }
            self.received += 4 + len as u64;
            if self.received > MAX_SESSION_BYTES {
                return Err(ended("the session brought as much as one may; the next goes on"));
            }
            let mut body = vec![0u8; len];
            self.stream.read_exact(&mut body).await.map_err(ended)?;
            Frame::decode(&body).map(Some).map_err(misbehaved)
        };
        tokio::time::timeout(IDLE, read).await.map_err(|_| ended("the peer went silent"))?
    }

    async fn recv(&mut self) -> Result<Frame, Fault> {
        self.recv_or_end().await?.ok_or_else(|| ended("the peer closed the stream"))
    }
}

/// One sync set as read from the store.
struct Set {
    repo: RepoId,
    kind: Kind,
    storage: NegentropyStorageVector,
    /// Each item's signed time, by id.
    times: HashMap<[u8; 32], u64>,
}

impl Set {
    fn read(store: &Store, repo: RepoId, kind: Kind, since: u64) -> Result<Self, String> {
        let items = store.sync_ids(&repo, kind, since).map_err(|e| e.to_string())?;
        let mut storage = NegentropyStorageVector::with_capacity(items.len());
        for (ts, id) in &items {
            storage.insert(*ts, Id::from_byte_array(*id)).map_err(|e| e.to_string())?;
        }
        storage.seal().map_err(|e| e.to_string())?;
        Ok(Self { repo, kind, storage, times: items.into_iter().map(|(ts, id)| (id, ts)).collect() })
    }
}

/// A set read off the async threads.
async fn read_set(store: &Store, repo: RepoId, kind: Kind, since: u64) -> Result<Set, Fault> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || Set::read(&store, repo, kind, since)).await.map_err(ended)?.map_err(ended)
}

/// How each set looks (`Hello`'s entries), from the totals the store keeps with it: no set is
/// read whole. None for a repository not registered here.
async fn summaries(store: &Store, wanted: Vec<(RepoId, Kind, u64)>) -> Result<Vec<Option<Entry>>, Fault> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let registered: HashSet<RepoId> = store.repos().map_err(ended)?.into_iter().map(|r| r.id).collect();
        wanted
            .into_iter()
            .map(|(repo, kind, since)| {
                if !registered.contains(&repo) {
                    return Ok(None);
                }
                let (count, sum) = store.sync_summary(&repo, kind, since).map_err(ended)?;
                let fingerprint = crate::proto::sync::fingerprint(count, &sum);
                Ok(Some(Entry { repo, kind, since, count: count as u32, fingerprint }))
            })
            .collect()
    })
    .await
    .map_err(ended)?
}

/// Sends the envelopes of these items of `set`, in frames of at most [`ITEMS_BYTES`].
async fn give(conn: &mut Conn, store: &Store, index: u16, set: &Set, ids: &[[u8; 32]]) -> Result<(), Fault> {
    let mut items: Vec<(u64, [u8; 32])> = ids.iter().filter_map(|id| set.times.get(id).map(|ts| (*ts, *id))).collect();
    items.sort();
    for chunk in items.chunks(MAX_WANT) {
        let (store, repo, kind, chunk) = (store.clone(), set.repo.clone(), set.kind, chunk.to_vec());
        let envelopes = tokio::task::spawn_blocking(move || store.sync_envelopes(&repo, kind, &chunk))
            .await
            .map_err(ended)?
            .map_err(ended)?;
        let mut frame = Vec::new();
        let mut bytes = 0;
        for envelope in envelopes {
            if !frame.is_empty() && bytes + envelope.len() > ITEMS_BYTES {
                conn.send(&Frame::Items { index, envelopes: std::mem::take(&mut frame) }).await?;
                bytes = 0;
            }
            bytes += envelope.len();
            frame.push(envelope);
        }
        if !frame.is_empty() {
            conn.send(&Frame::Items { index, envelopes: frame }).await?;
        }
    }
    Ok(())
}

/// What arrived and is not handed over yet: one repository's, all kinds together, so that the
/// service stores them in signed-time order (a room's messages and its threads' notices
/// interleaved as they were said).
struct Arrived<'a> {
    events: &'a mpsc::Sender<SyncEvent>,
    peer: PeerId,
    repo: Option<RepoId>,
    items: Vec<(Kind, Envelope)>,
    bytes: usize,
}

impl<'a> Arrived<'a> {
    fn new(events: &'a mpsc::Sender<SyncEvent>, peer: PeerId) -> Self {
        Self { events, peer, repo: None, items: Vec::new(), bytes: 0 }
    }

    /// Envelopes of `set` (`bytes` long on the wire).
    async fn add(&mut self, set: &Set, envelopes: Vec<Envelope>, bytes: usize) -> Result<(), Fault> {
        if self.repo.as_ref().is_some_and(|r| *r != set.repo) {
            self.hand_over().await?;
        }
        self.repo = Some(set.repo.clone());
        self.items.extend(envelopes.into_iter().map(|e| (set.kind, e)));
        self.bytes += bytes;
        if self.bytes >= HAND_OVER_BYTES {
            self.hand_over().await?;
        }
        Ok(())
    }

    /// Hands what arrived to the event loop and waits for its verdict.
    async fn hand_over(&mut self) -> Result<(), Fault> {
        self.bytes = 0;
        let items = std::mem::take(&mut self.items);
        let Some(repo) = self.repo.clone() else { return Ok(()) };
        if items.is_empty() {
            return Ok(());
        }
        // Signatures are checked here, on a thread of their own, so that the event loop (which
        // decides on them) is not held up by thousands of them.
        let items = tokio::task::spawn_blocking(move || {
            items.into_iter().map(|(kind, envelope)| Synced::new(kind, envelope)).collect::<Vec<_>>()
        })
        .await
        .map_err(ended)?;
        let (verdict, answer) = oneshot::channel();
        let event = SyncEvent::Items { peer: self.peer, repo, items, verdict };
        self.events.send(event).await.map_err(|_| ended("the node is stopping"))?;
        match answer.await {
            Ok(true) => Ok(()),
            _ => Err(ended("the peer was cut off")),
        }
    }
}

fn decode(bytes: &[u8]) -> Result<Envelope, Fault> {
    Envelope::decode(bytes).map_err(|e| misbehaved(format!("an item that is no envelope: {e}")))
}

/// Our session with `peer` over `repos`: runs it and reports its end.
#[allow(clippy::too_many_arguments)]
pub async fn initiate(
    mut control: libp2p_stream::Control,
    store: Store,
    events: mpsc::Sender<SyncEvent>,
    session: u64,
    peer: PeerId,
    repos: Vec<RepoId>,
    since: u64,
) {
    let (mut counts, started) = ((0, 0), std::time::Instant::now());
    let result = tokio::time::timeout(
        SESSION_TIME,
        run_initiator(&mut control, &store, &events, peer, &repos, since, &mut counts),
    )
    .await
    .unwrap_or_else(|_| Err(ended("the session took too long")));
    let millis = started.elapsed().as_millis() as u64;
    let mut outcome = SyncOutcome { repos, sent: counts.0, received: counts.1, millis, ..SyncOutcome::default() };
    match result {
        Ok(()) => {}
        Err(Fault::Ended(e)) => outcome.error = Some(e),
        Err(Fault::Misbehaved(e)) => outcome.misbehaved = Some(e),
    }
    let _ = events.send(SyncEvent::Done { session, outcome }).await;
}

async fn run_initiator(
    control: &mut libp2p_stream::Control,
    store: &Store,
    events: &mpsc::Sender<SyncEvent>,
    peer: PeerId,
    repos: &[RepoId],
    since: u64,
    counts: &mut (u64, u64),
) -> Result<(), Fault> {
    let wanted = repos.iter().flat_map(|r| Kind::ALL.map(|k| (r.clone(), k, since))).collect();
    let entries: Vec<Entry> = summaries(store, wanted).await?.into_iter().flatten().collect();
    let stream = control.open_stream(peer, SYNC).await.map_err(ended)?;
    let mut conn = Conn { stream, sent: 0, received: 0 };
    let result = converse(&mut conn, store, events, peer, entries).await;
    *counts = (conn.sent, conn.received);
    let _ = conn.stream.close().await;
    result
}

/// The initiator's side once the stream is open.
async fn converse(
    conn: &mut Conn,
    store: &Store,
    events: &mpsc::Sender<SyncEvent>,
    peer: PeerId,
    entries: Vec<Entry>,
) -> Result<(), Fault> {
    conn.send(&Frame::Hello(entries.clone())).await?;
    let mut arrived = Arrived::new(events, peer);
    let differ = match conn.recv().await? {
        Frame::Differ(indices) => indices,
        Frame::Refused(why) => return Err(ended(format!("refused: {why}"))),
        _ => return Err(misbehaved("no answer to our hello")),
    };
    let mut done = HashSet::new();
    for index in differ {
        let entry = entries.get(index as usize).ok_or_else(|| misbehaved("a set we did not offer"))?;
        if !done.insert(index) {
            return Err(misbehaved("a set named twice"));
        }
        let set = &read_set(store, entry.repo.clone(), entry.kind, entry.since).await?;
        let mut neg = Negentropy::borrowed(&set.storage, NEG_FRAME).map_err(ended)?;
        let mut msg = neg.initiate().map_err(ended)?;
        let (mut have, mut need) = (Vec::new(), Vec::new());
        let mut rounds = 0;
        loop {
            rounds += 1;
            if rounds > MAX_ROUNDS {
                return Err(misbehaved("too many negentropy rounds"));
            }
            conn.send(&Frame::Neg { index, msg }).await?;
            let reply = match conn.recv().await? {
                Frame::Neg { index: i, msg } if i == index => msg,
                _ => return Err(misbehaved("not the negentropy answer")),
            };
            match neg.reconcile_with_ids(&reply, &mut have, &mut need) {
                Ok(Some(next)) => msg = next,
                Ok(None) => break,
                Err(e) => return Err(misbehaved(format!("negentropy: {e}"))),
            }
        }
        let have: Vec<[u8; 32]> = have.into_iter().map(|id| *id).collect();
        give(conn, store, index, set, &have).await?;
        for chunk in need.chunks(MAX_WANT) {
            let ids: Vec<[u8; 32]> = chunk.iter().map(|id| **id).collect();
            let mut wanted: HashSet<[u8; 32]> = ids.iter().copied().collect();
            conn.send(&Frame::Want { index, ids }).await?;
            loop {
                match conn.recv().await? {
                    Frame::Items { index: i, envelopes } if i == index => {
                        let bytes = envelopes.iter().map(Vec::len).sum();
                        let mut got = Vec::with_capacity(envelopes.len());
                        for bytes in envelopes {
                            let envelope = decode(&bytes)?;
                            if !wanted.remove(&item_id(&envelope)) {
                                return Err(misbehaved("an item we did not ask for"));
                            }
                            got.push(envelope);
                        }
                        arrived.add(set, got, bytes).await?;
                    }
                    Frame::End { index: i } if i == index => break,
                    _ => return Err(misbehaved("not the items asked for")),
                }
            }
        }
    }
    arrived.hand_over().await
}

/// Serves every sync stream `incoming` brings until the node stops.
pub async fn serve(mut incoming: libp2p_stream::IncomingStreams, store: Store, events: mpsc::Sender<SyncEvent>) {
    let serving = Arc::new(Semaphore::new(MAX_SERVING));
    let peers: Arc<Mutex<HashSet<PeerId>>> = Arc::default();
    while let Some((peer, stream)) = incoming.next().await {
        let mut conn = Conn { stream, sent: 0, received: 0 };
        let Ok(permit) = serving.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = conn.send(&Frame::Refused("busy: too many syncs at once".into())).await;
                let _ = conn.stream.close().await;
            });
            continue;
        };
        if !peers.lock().unwrap_or_else(|e| e.into_inner()).insert(peer) {
            tokio::spawn(async move {
                let _ = conn.send(&Frame::Refused("a sync of yours is under way".into())).await;
                let _ = conn.stream.close().await;
            });
            continue;
        }
        let (store, events, peers) = (store.clone(), events.clone(), peers.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = tokio::time::timeout(SESSION_TIME, respond(&mut conn, &store, &events, peer))
                .await
                .unwrap_or_else(|_| Err(ended("the session took too long")));
            let _ = conn.stream.close().await;
            let millis = started.elapsed().as_millis() as u64;
            let mut outcome =
                SyncOutcome { sent: conn.sent, received: conn.received, millis, ..SyncOutcome::default() };
            match result {
                Ok(repos) => outcome.repos = repos,
                Err(Fault::Ended(e)) => outcome.error = Some(e),
                Err(Fault::Misbehaved(e)) => outcome.misbehaved = Some(e),
            }
            peers.lock().unwrap_or_else(|e| e.into_inner()).remove(&peer);
            drop(permit);
            let _ = events.send(SyncEvent::Served { peer, outcome }).await;
        });
    }
}

/// The responder's side: answers the hello, negentropy rounds and wants, takes what the
/// initiator gives. Returns the repositories reconciled.
async fn respond(
    conn: &mut Conn,
    store: &Store,
    events: &mpsc::Sender<SyncEvent>,
    peer: PeerId,
) -> Result<Vec<RepoId>, Fault> {
    let entries = match conn.recv().await? {
        Frame::Hello(entries) => entries,
        _ => return Err(misbehaved("no hello")),
    };
    let wanted = entries.iter().map(|e| (e.repo.clone(), e.kind, e.since)).collect();
    let ours = summaries(store, wanted).await?;
    let mut differ = Vec::new();
    for (i, (entry, ours)) in entries.iter().zip(&ours).enumerate() {
        let Some(ours) = ours else { continue };
        if ours.count != entry.count || ours.fingerprint != entry.fingerprint {
            differ.push(i as u16);
        }
    }
    conn.send(&Frame::Differ(differ.clone())).await?;
    let mut rounds: HashMap<u16, usize> = HashMap::new();
    let mut arrived = Arrived::new(events, peer);
    // The sets that differ, read when the initiator first asks about them.
    let mut sets: HashMap<u16, Set> = HashMap::new();
    while let Some(frame) = conn.recv_or_end().await? {
        let index = match &frame {
            Frame::Neg { index, .. } | Frame::Items { index, .. } | Frame::Want { index, .. } => *index,
            _ => return Err(misbehaved("an unexpected frame")),
        };
        if !differ.contains(&index) {
            return Err(misbehaved("a set that does not differ"));
        }
        let set = match sets.entry(index) {
            std::collections::hash_map::Entry::Occupied(set) => set.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                let entry = &entries[index as usize];
                slot.insert(read_set(store, entry.repo.clone(), entry.kind, entry.since).await?)
            }
        };
        let set = &*set;
        match frame {
            Frame::Neg { index, msg } => {
                let n = rounds.entry(index).or_default();
                *n += 1;
                if *n > MAX_ROUNDS {
                    return Err(misbehaved("too many negentropy rounds"));
                }
                let mut neg = Negentropy::borrowed(&set.storage, NEG_FRAME).map_err(ended)?;
                let answer = neg.reconcile(&msg).map_err(|e| misbehaved(format!("negentropy: {e}")))?;
                conn.send(&Frame::Neg { index, msg: answer }).await?;
            }
            Frame::Items { envelopes, .. } => {
                let bytes = envelopes.iter().map(Vec::len).sum();
                let envelopes = envelopes.iter().map(|b| decode(b)).collect::<Result<Vec<_>, _>>()?;
                arrived.add(set, envelopes, bytes).await?;
            }
            Frame::Want { index, ids } => {
                give(conn, store, index, set, &ids).await?;
                conn.send(&Frame::End { index }).await?;
            }
            _ => return Err(misbehaved("an unexpected frame")),
        }
    }
    arrived.hand_over().await?;
    let mut repos: Vec<RepoId> = ours.into_iter().flatten().map(|e| e.repo).collect();
    repos.dedup();
    Ok(repos)
}
