//! The node's logic, without I/O: a state machine that takes the time and an input (a control
//! command, a swarm event, a tick) and returns what to do: [`Io`] (subscribe, publish, dial, put
//! or get a DHT record, hand an event to followers, ask the Nostr bridge). What it keeps durably
//! goes through [`Disk`], which the event loop implements over the store and tests over memory.
//! It never reads a clock, a socket or a file itself. Radicle's radicle-node `service` is the
//! model; `tests` drives several services through a simulated network with a fake clock.
//!
//! One concern per file, each with its constants: `repos` (the registry), `rooms` (topics, what
//! arrives on them, chat), `outbox` (our messages until a peer took them), `kv` (DHT records and
//! the queries waiting for the network), `refs` (our refs in the DHT), `notes` (our git notes
//! in the DHT), `discovery` (peers, who to dial), `bound` (at most `p2p.max-peers` of them:
//! which to keep), `repo_peers` (finding the peers of our repositories), `dial_log` (what
//! became of our dials, in words), `peers` (the peer table and redial backoff), `conduct` (peers cut off for flooding
//! us), `clocks` (peers' clocks against ours), `sync` (catching up with peers: when, with
//! whom, what to take).

mod bound;
mod clocks;
mod conduct;
mod dial_log;
pub mod discovery;
mod kv;
pub mod mirror;
mod notes;
mod outbox;
pub mod peers;
mod refs;
mod repo_peers;
mod repos;
mod rooms;
pub mod sync;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use libp2p::gossipsub::{PublishError, Sha256Topic, TopicHash};
use libp2p::identity::Keypair;
use libp2p::swarm::ConnectionId;
use libp2p::{kad, Multiaddr, PeerId};

use crate::clock::Now;
use crate::control::api::{Failure, NodeEvent, PeerInfo, Reply};
use crate::proto::announce::FeedEntry;
use crate::proto::chat::ChatEntry;
use crate::proto::envelope::Envelope;
use crate::proto::outbox::OutboxEntry;
use crate::proto::repo::{RepoId, RepoInfo};
use crate::store::{KeysPage, StoreError};

pub use discovery::strip_p2p;
pub use kv::QueryRef;
pub use outbox::PUBLISH_GRACE;
pub use peers::DialRef;
pub use rooms::{ANNOUNCE_BURST, ANNOUNCE_RATE, CHAT_BURST, CHAT_RATE, SEND_SHARE};

/// How often, and for how long, our announced commits are remembered (against announcing one
/// twice through the hook's two paths and the reflog; those meet within seconds).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
pub const ANNOUNCED_KEPT: Duration = Duration::from_secs(30 * 24 * 3600);

/// Who this node is: it signs the DHT entries it writes for its own announcements.
pub struct Me {
    pub key: Keypair,
    pub peer: PeerId,
    /// `peer` as the store, the wire and people read it (base58), made once.
    pub peer_id: String,
    /// Our key as envelopes and DHT entries name their author (protobuf, hex).
    pub author: String,
    pub name: Option<String>,
    pub npub: String,
}

impl Me {
    pub fn new(key: Keypair, name: Option<String>, npub: String) -> Self {
        let peer = key.public().to_peer_id();
        let author = hex::encode(key.public().encode_protobuf());
        Self { key, peer_id: peer.to_string(), peer, author, name, npub }
    }
}

/// What the node keeps on disk, as the service sees it. Writes not marked `durable` become
/// durable with the next sync (at most a second later); an answer that must wait for what its
/// command wrote goes through [`Disk::reply_when_durable`].
pub trait Disk {
    fn add_repo(&mut self, repo: &RepoInfo) -> Result<(), StoreError>;
    /// Forgets a registered repository (and where its reflogs were read).
    fn remove_repo(&mut self, repo: &RepoId) -> Result<(), StoreError>;
    fn outbox_push(&mut self, entry: &OutboxEntry, durable: bool) -> Result<u64, StoreError>;
    fn outbox_remove(&mut self, seqs: &[u64]) -> Result<(), StoreError>;
    fn mark_announced(&mut self, repo: &RepoId, commit: &str) -> Result<(), StoreError>;
    fn prune_announced(&mut self, before_ms: u64) -> Result<usize, StoreError>;
    /// Forgets the ids of announcements and room messages dated before `before_ms` (a replay
    /// of one is refused as too old anyway).
    fn prune_seen(&mut self, before_ms: u64) -> Result<usize, StoreError>;
    /// A received announcement, known to be new, and its envelope for the sync sets peers
    /// reconcile with ours: stored off the event loop, in batches, in one write.
    fn feed_received(&mut self, entry: FeedEntry, envelope: Envelope);
    /// Whether the feed took this announcement before (asked only until the seen sets are
    /// read, after start; one that cannot be read is taken as news).
    fn feed_has(&self, entry: &FeedEntry) -> bool;
    /// A received room message, known to be new: stored off the event loop, in batches.
    fn chat_received(&mut self, entry: ChatEntry);
    /// Whether a history has this room message (asked only until the seen sets are read).
    fn chat_has(&self, id: &str) -> bool;
    /// One of our room messages going through the outbox; false if the history has it.
    fn chat_insert(&mut self, entry: &ChatEntry) -> Result<bool, StoreError>;
    /// One of our room messages published at once: stored before the batch's answers go out.
    fn chat_published(&mut self, entry: ChatEntry);
    /// An envelope for the sync sets peers reconcile with ours (its item is made and stored off
    /// the event loop; one of no kind the sets hold is left out).
    fn sync_keep(&mut self, envelope: Envelope);
    /// Forgets the sync sets' items signed before `before_ms`.
    fn sync_prune(&mut self, before_ms: u64) -> Result<usize, StoreError>;
    /// Sends `ack` once everything written so far is durable.
    fn reply_when_durable(&mut self, ack: Ack);
    /// Remembers that we wrote `key` (for `kv ls`).
    fn kv_own(&mut self, repo: &RepoId, key: &str, ts: u64, durable: bool) -> Result<(), StoreError>;
    /// A page of the keys we wrote in `repo` (with the time of our last write), in order, after
    /// `after`: at most `limit`, and where the next page starts.
    fn kv_own_page(&self, repo: &RepoId, after: Option<&str>, limit: usize) -> Result<KeysPage, StoreError>;
    /// Our copy of a DHT record.
    fn record(&self, key: &kad::RecordKey) -> Option<kad::Record>;
    fn put_record(&mut self, record: kad::Record) -> Result<(), RecordError>;
    fn remember_peer(&mut self, peer: &PeerId, addrs: &[Multiaddr], name: Option<&str>) -> Result<(), StoreError>;
    /// Fails (with the reason: a full disk, a damaged store) when writes cannot succeed now. A
    /// command asks first, so that nothing goes out that could not be stored.
    fn writable(&self) -> Result<(), StoreError>;
    /// A key a repair asked to fetch back from peers is done with.
    fn restore_done(&mut self, repo: &RepoId, key: &str) -> Result<(), StoreError>;
}

/// Why a DHT record was not stored.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0:?}")]
    Kad(kad::store::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An answer that waits until what its command wrote is durable.
pub struct Ack(Box<dyn FnOnce(Result<(), Failure>) + Send>);

impl Ack {
    pub fn new<T: Send + 'static>(reply: Reply<T>, value: T) -> Self {
        Self(Box::new(move |result| {
            let _ = reply.send(result.map(|()| value));
        }))
    }

    /// Sends the answer, or `failure` in its place.
    pub fn settle(self, result: Result<(), Failure>) {
        (self.0)(result)
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ack")
    }
}

/// Which publish the network's answer is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ticket {
    /// An outbox entry (its sequence number).
    Outbox(u64),
    /// A room message of ours published at once.
    Chat(u64),
}

/// What the service asks the event loop to do.
#[derive(Debug)]
pub enum Io {
    /// Subscribe to a topic (with our topic score parameters).
    Subscribe(Sha256Topic),
    Unsubscribe(Sha256Topic),
    /// Publish; the answer goes to [`Service::published`].
    Publish {
        ticket: Ticket,
        topic: TopicHash,
        data: Vec<u8>,
    },
    Dial {
        dial: DialRef,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    /// Close every connection to the peer.
    Disconnect(PeerId),
    /// Keep these peers' connections open while idle (others close once idle).
    Keep(std::collections::HashSet<PeerId>),
    /// Close one connection.
    Close(ConnectionId),
    /// Tell Kademlia where a peer listens.
    KadAddress {
        peer: PeerId,
        addr: Multiaddr,
    },
    /// A Kademlia self-lookup, to find peers near us.
    KadBootstrap,
    /// Put a record (stored here too) and replicate it; progress goes to [`Service::kv_put_done`]
    /// and [`Service::kv_query_done`], a refusal to [`Service::kv_failed`].
    PutRecord {
        query: QueryRef,
        record: kad::Record,
    },
    /// Look a record up; copies go to [`Service::kv_found`].
    GetRecord {
        query: QueryRef,
        key: kad::RecordKey,
    },
    /// Stop a query: it has what it needs.
    FinishQuery(QueryRef),
    /// Hand a new feed entry or room message to followers.
    Emit(NodeEvent),
    /// Close every connection to this peer and refuse new ones (until [`Io::Unban`]).
    Ban(PeerId),
    Unban(PeerId),
    /// Read this repository's HEAD reflog from its end on (it was just registered).
    WatchReflog(RepoInfo),
    /// Tell the Nostr bridge.
    Bridge(BridgeOp),
    /// Run git on a mirror, or fetch into one ([`mirror::MirrorOp`]); reports come back to
    /// [`Service::mirror_attempted`] and [`Service::mirror_settled`].
    Mirror(mirror::MirrorOp),
    /// Hand the answer of the DHT lookup of a mirror job's `refs` record to
    /// [`Service::mirror_lookup_done`] when it comes.
    MirrorLookup {
        job: u64,
        found: tokio::sync::oneshot::Receiver<Result<crate::control::api::KvFound, Failure>>,
    },
    /// Tell the DHT that we hold a mirror of a repository (a Kademlia provider record).
    Provide(kad::RecordKey),
    /// Look for the peers of a registered repository; found ones go to
    /// [`Service::repo_providers`].
    FindRepoPeers {
        repo: crate::proto::repo::RepoId,
        key: kad::RecordKey,
    },
    /// Look for the nodes that provide a mirror; found ones go to [`Service::mirror_providers`].
    FindProviders {
        job: u64,
        key: kad::RecordKey,
    },
    /// Reconcile these repositories' sync sets with a peer (items signed `since` or later);
    /// what arrives goes to [`Service::sync_received`], the end to [`Service::sync_done`].
    Sync {
        session: u64,
        peer: PeerId,
        repos: Vec<RepoId>,
        since: u64,
    },
}

#[derive(Debug)]
pub enum BridgeOp {
    /// Listen for comments on these repositories.
    Watch(Vec<RepoInfo>),
    /// The repository may look different now: re-read it.
    Refresh(RepoInfo),
    /// Our room message, as a comment.
    Comment(Comment),
}

/// Our room message, to be queued for the Nostr relays as a comment once it left for the peers.
#[derive(Debug)]
pub struct Comment {
    pub repo: RepoInfo,
    pub text: String,
    pub envelope: Box<Envelope>,
    pub thread: Option<String>,
}

/// What the store had at start.
#[derive(Default)]
pub struct Loaded {
    pub repos: Vec<RepoInfo>,
    pub outbox: Vec<(u64, OutboxEntry)>,
    /// The address book.
    pub known_peers: Vec<(PeerId, Vec<Multiaddr>)>,
    /// The seen sets (room messages and announcements we have), when read at start; `None`:
    /// read later and told ([`Service::remember_seen`]), the feed asked until then.
    pub seen: Option<crate::store::SeenIds>,
    /// DHT keys whose entries of ours a repair asked to fetch back from peers.
    pub restore: Vec<(RepoId, String)>,
}

pub struct Service {
    me: Me,
    repos: repos::Repos,
    rooms: rooms::Rooms,
    outbox: outbox::Outbox,
    kv: kv::Kv,
    refs: refs::Refs,
    discovery: discovery::Discovery,
    /// Room messages of ours published at once, until the network answered.
    sending: HashMap<u64, rooms::Sending>,
    /// What we send, per author and kind, at the pace peers take it.
    pacer: rooms::Pacer,
    /// Peers cut off for flooding us.
    conduct: conduct::Conduct,
    /// Signed tips and the fetches of the mirror.
    mirror: mirror::MirrorState,
    /// Catching up with peers.
    sync: sync::SyncState,
    next_ticket: u64,
    last_prune: Option<Instant>,
    io: VecDeque<Io>,
}

impl Service {
    /// A service that knows what the store had; `bootstrap`: the configured bootstrap peers.
    pub fn new(me: Me, bootstrap: &[(PeerId, Multiaddr)], loaded: Loaded, now: Now) -> Self {
        let mut service = Self {
            me,
            repos: repos::Repos::default(),
            rooms: rooms::Rooms::new(loaded.seen),
            outbox: outbox::Outbox::default(),
            kv: kv::Kv::default(),
            refs: refs::Refs::default(),
            discovery: discovery::Discovery::new(bootstrap.iter().map(|(p, _)| *p)),
            sending: HashMap::new(),
            pacer: rooms::Pacer::default(),
            conduct: conduct::Conduct::default(),
            mirror: mirror::MirrorState::default(),
            sync: sync::SyncState::default(),
            next_ticket: 0,
            last_prune: None,
            io: VecDeque::new(),
        };
        for (peer, addr) in bootstrap {
            service.io.push_back(Io::KadAddress { peer: *peer, addr: addr.clone() });
            service.discovery.redial.learn(*peer, [addr.clone()], now.mono);
        }
        // Learned after the bootstrap addresses, so first: what the peer told us last is fresher
        // than what the config says.
        for (peer, addrs) in loaded.known_peers.into_iter().take(discovery::ADDRESS_BOOK_DIALS) {
            service.discovery.redial.learn(peer, addrs, now.mono);
        }
        // At once, not at the first tick.
        service.redial(now);
        for repo in loaded.repos {
            service.join_repo(repo);
        }
        for (seq, entry) in loaded.outbox {
            service.join_repo(entry.repo.clone());
            service.outbox.push(seq, entry);
        }
        service.kv.restore(loaded.restore);
        service
    }

    /// The store was reopened after its writes failed (a full disk): it holds what was durable,
    /// and the outbox in memory becomes what the store has. Entries that were only in memory
    /// were never acknowledged (their sync failed) or are read again from the reflog.
    pub fn reload_outbox(&mut self, stored: Vec<(u64, OutboxEntry)>) {
        for (_, entry) in &stored {
            self.join_repo(entry.repo.clone());
        }
        self.outbox.reload(stored);
    }

    /// The next thing to do, if any. Carrying one out may add more.
    pub fn next_io(&mut self) -> Option<Io> {
        self.io.pop_front()
    }

    pub fn me(&self) -> &Me {
        &self.me
    }

    pub fn repos(&self) -> &[RepoInfo] {
        self.repos.all()
    }

    /// Announcements and messages waiting for a peer.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// The seen sets the store has (a node reads them after it said it is ready: they grow
    /// with the rooms and feeds). What arrives in between is looked up in the store.
    pub fn remember_seen(&mut self, seen: crate::store::SeenIds) {
        self.rooms.remember(seen);
    }

    /// The store went back to its last durable state (reopened after a full disk): what the
    /// service took for the histories and the feed since may not be there, and is news again
    /// when a peer's sync brings it. The store is asked until the seen sets are read again.
    pub fn store_rolled_back(&mut self) {
        self.rooms.forget_seen();
    }

    /// DHT keys of ours still to fetch back from peers (after a repair).
    pub fn restoring(&self) -> usize {
        self.kv.restoring()
    }

    pub fn connected_peers(&self) -> usize {
        self.discovery.peers.len()
    }

    /// Peers cut off for flooding us.
    pub fn banned(&self) -> Vec<PeerId> {
        self.conduct.banned()
    }

    /// Our latest dial of each peer we dialled lately, in words.
    pub fn dials(&self) -> Vec<crate::control::api::DialOutcome> {
        self.discovery.dials.outcomes()
    }

    /// Peers' clocks against ours, read off what they signed.
    pub fn clocks(&self) -> Vec<crate::control::api::ClockReading> {
        self.rooms.clocks.readings()
    }

    pub fn known_peers(&self) -> usize {
        self.discovery.redial.len()
    }

    /// The connected peers as `git p2p peers` shows them (without gossip scores).
    pub fn peers(&self, now: Now) -> Vec<PeerInfo> {
        self.discovery.peers.snapshot(now.mono, &self.repos.topics())
    }

    /// The network answered a publish. A duplicate (this exact envelope went out before: a
    /// restart re-sends it) counts as taken.
    pub fn published(&mut self, ticket: Ticket, result: Result<(), PublishError>, now: Now, disk: &mut dyn Disk) {
        let result = match result {
            Err(PublishError::Duplicate) => Ok(()),
            other => other,
        };
        match ticket {
            Ticket::Outbox(seq) => self.outbox_published(seq, result, now),
            Ticket::Chat(n) => self.chat_published(n, result, disk),
        }
    }

    /// What is due now: the outbox, published entries past their grace, DHT queries past their
    /// deadline, peers to redial; and, hourly, forgetting old announced commits.
    pub fn tick(&mut self, now: Now, disk: &mut dyn Disk) {
        self.flush(now, disk);
        let done = self.outbox.expired(now.mono);
        if !done.is_empty() {
            if let Err(e) = disk.outbox_remove(&done) {
                tracing::warn!(error = %e, "cannot clear published announcements; a restart sends them again");
            }
        }
        if self.last_prune.is_none_or(|at| now.mono.duration_since(at) >= PRUNE_EVERY) {
            self.last_prune = Some(now.mono);
            let before = now.unix_ms.saturating_sub(ANNOUNCED_KEPT.as_millis() as u64);
            if let Err(e) = disk.prune_announced(before) {
                tracing::warn!(error = %e, "cannot prune the announced commits");
            }
            let window = now.unix_ms.saturating_sub(rooms::MAX_AGE.as_millis() as u64);
            if let Err(e) = disk.prune_seen(window) {
                tracing::warn!(error = %e, "cannot prune the seen ids");
            }
            if let Err(e) = disk.sync_prune(window) {
                tracing::warn!(error = %e, "cannot prune the sync sets");
            }
        }
        self.expire_queries(now, disk);
        self.lift_bans(now);
        self.restore_own(now);
        self.mirror_tick(now);
        self.sync_start(now);
        self.repo_peers_tick(now);
        self.keep_bound(now, true, false);
        self.redial(now);
    }

    fn push(&mut self, io: Io) {
        self.io.push_back(io);
    }

    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }
}
