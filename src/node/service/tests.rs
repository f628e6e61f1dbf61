//! The service driven without sockets, daemons or a clock: named simulated peers (alice, bob,
//! eve) with in-memory disks, a fake clock moved by hand, and a simulated network that carries
//! what one service publishes to the peers it is connected to that joined the topic. A crash
//! loses what a node had not synced and what its connections had not delivered yet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use libp2p::gossipsub::{MessageAcceptance, TopicHash};
use libp2p::identity::Keypair;
use libp2p::swarm::ConnectionId;
use libp2p::{kad, Multiaddr, PeerId};
use sha2::Digest;
use tokio::sync::oneshot;

use super::*;
use crate::control::api::{ChatSent, KvFound, KvStored, Queued};
use crate::proto::announce::{Announcement, Commit};
use crate::proto::chat::{ChatMessage, KIND as CHAT};
use crate::proto::kv::{record_key, Entry};

/// A disk in memory. Writes not made durable are lost in a crash unless a sync came first.
#[derive(Default)]
struct MemDisk {
    repos: Vec<RepoInfo>,
    /// seq -> (entry, durable)
    outbox: BTreeMap<u64, (OutboxEntry, bool)>,
    next_seq: u64,
    announced: HashSet<(RepoId, String)>,
    feed: Vec<FeedEntry>,
    chat: Vec<ChatEntry>,
    acks: Vec<Ack>,
    records: HashMap<kad::RecordKey, kad::Record>,
    /// The record store refuses new records (it holds as many as it keeps).
    records_full: bool,
    peers: HashMap<PeerId, Vec<Multiaddr>>,
    /// No space left: every write fails, as a full disk makes the store's.
    full: bool,
    /// The keys we wrote: (repo, key) -> time.
    own_keys: BTreeMap<(RepoId, String), u64>,
    /// The sync sets: (repo, kind, signed time, id) -> envelope.
    sync_set: BTreeMap<(RepoId, crate::proto::sync::Kind, u64, [u8; 32]), Vec<u8>>,
}

impl MemDisk {
    /// An fsync: what waited for it is answered.
    fn sync(&mut self) {
        for (_, durable) in self.outbox.values_mut() {
            *durable = true;
        }
        self.acks.drain(..).for_each(|ack| ack.settle(Ok(())));
    }

    /// What survives a crash.
    fn after_crash(&mut self) {
        self.outbox.retain(|_, (_, durable)| *durable);
        self.acks.clear();
    }

    fn loaded(&self) -> Loaded {
        Loaded {
            repos: self.repos.clone(),
            outbox: self.outbox.iter().map(|(seq, (e, _))| (*seq, e.clone())).collect(),
            known_peers: self.peers.iter().map(|(p, a)| (*p, a.clone())).collect(),
            seen: Some(crate::store::SeenIds {
                chat: self.chat.iter().map(|m| m.id.clone()).collect(),
                feed: self.feed.iter().map(FeedEntry::seen_key).collect(),
            }),
            restore: Vec::new(),
        }
    }
}

impl MemDisk {
    fn room(&self) -> Result<(), StoreError> {
        if self.full {
            return Err(StoreError::Full { dir: "/sim".into() });
        }
        Ok(())
    }
}

impl Disk for MemDisk {
    fn add_repo(&mut self, repo: &RepoInfo) -> Result<(), StoreError> {
        self.room()?;
        if !self.repos.contains(repo) {
            self.repos.push(repo.clone());
        }
        Ok(())
    }
    fn remove_repo(&mut self, repo: &RepoId) -> Result<(), StoreError> {
        self.repos.retain(|r| r.id != *repo);
        Ok(())
    }
    fn outbox_push(&mut self, entry: &OutboxEntry, durable: bool) -> Result<u64, StoreError> {
        self.room()?;
        self.next_seq += 1;
        self.outbox.insert(self.next_seq, (entry.clone(), durable));
        Ok(self.next_seq)
    }
    fn outbox_remove(&mut self, seqs: &[u64]) -> Result<(), StoreError> {
        seqs.iter().for_each(|s| {
            self.outbox.remove(s);
        });
        Ok(())
    }
    fn mark_announced(&mut self, repo: &RepoId, commit: &str) -> Result<(), StoreError> {
        self.room()?;
        self.announced.insert((repo.clone(), commit.to_string()));
        Ok(())
    }
    fn prune_announced(&mut self, _before_ms: u64) -> Result<usize, StoreError> {
        Ok(0)
    }
    fn prune_seen(&mut self, _before_ms: u64) -> Result<usize, StoreError> {
        Ok(0)
    }
    fn feed_received(&mut self, entry: FeedEntry, envelope: Envelope) {
        self.sync_keep(envelope);
        if !self.feed_has(&entry) {
            self.feed.push(entry);
        }
    }
    fn feed_has(&self, entry: &FeedEntry) -> bool {
        self.feed.iter().any(|e| e.seen_key() == entry.seen_key())
    }
    fn chat_received(&mut self, entry: ChatEntry) {
        self.chat.push(entry);
    }
    fn chat_has(&self, id: &str) -> bool {
        self.chat.iter().any(|m| m.id == id)
    }
    fn chat_insert(&mut self, entry: &ChatEntry) -> Result<bool, StoreError> {
        self.room()?;
        if self.chat.iter().any(|m| m.id == entry.id) {
            return Ok(false);
        }
        self.chat.push(entry.clone());
        Ok(true)
    }
    fn chat_published(&mut self, entry: ChatEntry) {
        self.chat.push(entry);
    }
    fn sync_keep(&mut self, envelope: Envelope) {
        let Some(item) = crate::proto::sync::SyncItem::of(&envelope) else { return };
        self.sync_set.insert((item.repo, item.kind, item.ts, item.id), item.envelope);
    }
    fn sync_prune(&mut self, before_ms: u64) -> Result<usize, StoreError> {
        let before = self.sync_set.len();
        self.sync_set.retain(|(_, _, ts, _), _| *ts >= before_ms);
        Ok(before - self.sync_set.len())
    }
    fn reply_when_durable(&mut self, ack: Ack) {
        self.acks.push(ack);
    }
    fn kv_own(&mut self, repo: &RepoId, key: &str, ts: u64, _durable: bool) -> Result<(), StoreError> {
        self.own_keys.insert((repo.clone(), key.to_string()), ts);
        Ok(())
    }
    fn kv_own_page(&self, repo: &RepoId, after: Option<&str>, limit: usize) -> Result<KeysPage, StoreError> {
        let mut keys: Vec<(String, u64)> = self
            .own_keys
            .iter()
            .filter(|((r, k), _)| r == repo && after.is_none_or(|a| k.as_str() > a))
            .map(|((_, k), t)| (k.clone(), *t))
            .collect();
        let next = (keys.len() > limit).then(|| keys[limit - 1].0.clone());
        keys.truncate(limit);
        Ok((keys, next))
    }
    fn record(&self, key: &kad::RecordKey) -> Option<kad::Record> {
        self.records.get(key).cloned()
    }
    fn put_record(&mut self, record: kad::Record) -> Result<(), RecordError> {
        self.room()?;
        if self.records_full && !self.records.contains_key(&record.key) {
            return Err(RecordError::Kad(kad::store::Error::MaxRecords));
        }
        self.records.insert(record.key.clone(), record);
        Ok(())
    }
    fn remember_peer(&mut self, peer: &PeerId, addrs: &[Multiaddr], _name: Option<&str>) -> Result<(), StoreError> {
        self.peers.insert(*peer, addrs.to_vec());
        Ok(())
    }
    fn writable(&self) -> Result<(), StoreError> {
        self.room()
    }
    fn restore_done(&mut self, _repo: &RepoId, _key: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

/// One simulated node.
struct Peer {
    key: Keypair,
    id: PeerId,
    service: Service,
    disk: MemDisk,
    /// Topics this node joined.
    topics: HashSet<TopicHash>,
    /// Peers it is connected to.
    links: HashSet<PeerId>,
    /// Messages it published that its connections have not delivered yet: (topic, bytes).
    in_flight: Vec<(TopicHash, Vec<u8>)>,
    /// What it handed to followers.
    events: Vec<NodeEvent>,
    /// Dials it asked for.
    dials: Vec<Dialled>,
    /// Peers it asked to disconnect from, and single connections it asked to close.
    disconnects: Vec<PeerId>,
    /// The peers whose connections stay open while idle, as last told.
    kept: HashSet<PeerId>,
    closes: Vec<ConnectionId>,
    /// DHT queries it started.
    queries: Vec<Io>,
    /// While false, every publish fails (as when all peers graylist it).
    can_publish: bool,
    /// What it asked the mirror worker and the DHT's provider records for.
    mirror: Vec<Io>,
    /// Sync sessions it asked for and that the simulation has not run yet.
    syncs: Vec<Io>,
}

impl Peer {
    fn new(seed: u8, now: Now) -> Self {
        let key = Keypair::ed25519_from_bytes([seed; 32]).expect("32 bytes are an ed25519 secret");
        let id = key.public().to_peer_id();
        Self {
            service: Service::new(me(&key), &[], Loaded::default(), now),
            key,
            id,
            disk: MemDisk::default(),
            topics: HashSet::new(),
            links: HashSet::new(),
            in_flight: Vec::new(),
            events: Vec::new(),
            dials: Vec::new(),
            disconnects: Vec::new(),
            kept: HashSet::new(),
            closes: Vec::new(),
            queries: Vec::new(),
            can_publish: true,
            mirror: Vec::new(),
            syncs: Vec::new(),
        }
    }

    /// The peers it dialled, in order.
    fn dialled(&self) -> Vec<PeerId> {
        self.dials.iter().map(|d| d.peer).collect()
    }

    fn announcements(&self) -> Vec<String> {
        self.disk.feed.iter().map(|e| e.commit.summary.clone()).collect()
    }
}

/// A dial a service asked for.
#[derive(Debug, Clone)]
struct Dialled {
    dial: DialRef,
    peer: PeerId,
    addrs: Vec<Multiaddr>,
}

fn me(key: &Keypair) -> Me {
    Me::new(key.clone(), Some("sim".into()), "npub1sim".into())
}

fn repo() -> RepoInfo {
    RepoInfo { id: RepoId::try_from("a".repeat(40)).expect("a repo id"), name: "proj".into(), git_dir: None }
}

/// A network of named peers and a clock that moves only when told.
struct Sim {
    now: Now,
    peers: HashMap<&'static str, Peer>,
}

impl Sim {
    fn new(names: &[&'static str]) -> Self {
        let now = Now::system();
        let peers = names.iter().zip(1u8..).map(|(name, seed)| (*name, Peer::new(seed, now))).collect();
        Self { now, peers }
    }

    fn peer(&mut self, name: &str) -> &mut Peer {
        self.peers.get_mut(name).expect("a peer of this simulation")
    }

    fn id(&self, name: &str) -> PeerId {
        self.peers[name].id
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now.after(d);
    }

    /// Carries out what `name`'s service asked for, until it asks nothing more.
    fn settle(&mut self, name: &str) {
        let now = self.now;
        while let Some(io) = self.peer(name).service.next_io() {
            match io {
                Io::Subscribe(topic) => {
                    let (me, hash) = (self.id(name), topic.hash());
                    self.peer(name).topics.insert(hash.clone());
                    for other in self.linked(name) {
                        let peer = self.peer(other);
                        peer.service.subscribed(&me, hash.clone(), now, &mut peer.disk);
                        self.settle(other);
                    }
                }
                Io::Unsubscribe(topic) => {
                    let (me, hash) = (self.id(name), topic.hash());
                    self.peer(name).topics.remove(&hash);
                    for other in self.linked(name) {
                        self.peer(other).service.unsubscribed(&me, &hash);
                    }
                }
                Io::Publish { ticket, topic, data } => {
                    let peer = self.peer(name);
                    let audience =
                        peer.can_publish && self.linked(name).iter().any(|o| self.peers[o].topics.contains(&topic));
                    let result = if audience {
                        self.peer(name).in_flight.push((topic, data));
                        Ok(())
                    } else {
                        Err(libp2p::gossipsub::PublishError::NoPeersSubscribedToTopic)
                    };
                    let peer = self.peer(name);
                    peer.service.published(ticket, result, now, &mut peer.disk);
                }
                Io::Dial { dial, peer, addrs } => self.peer(name).dials.push(Dialled { dial, peer, addrs }),
                Io::Disconnect(peer) => self.peer(name).disconnects.push(peer),
                Io::Keep(peers) => self.peer(name).kept = peers,
                Io::Close(connection) => self.peer(name).closes.push(connection),
                Io::Emit(event) => self.peer(name).events.push(event),
                io @ (Io::PutRecord { .. } | Io::GetRecord { .. } | Io::FinishQuery(_)) => {
                    self.peer(name).queries.push(io)
                }
                io @ (Io::Mirror(_) | Io::Provide(_) | Io::FindProviders { .. } | Io::FindRepoPeers { .. }) => {
                    self.peer(name).mirror.push(io)
                }
                io @ Io::Sync { .. } => self.peer(name).syncs.push(io),
                Io::KadAddress { .. }
                | Io::KadBootstrap
                | Io::WatchReflog(_)
                | Io::Bridge(_)
                | Io::MirrorLookup { .. }
                | Io::Ban(_)
                | Io::Unban(_) => {}
            }
        }
    }

    fn linked(&self, name: &str) -> Vec<&'static str> {
        let links = &self.peers[name].links;
        self.peers.iter().filter(|(_, p)| links.contains(&p.id)).map(|(n, _)| *n).collect()
    }

    /// Connects two peers: each learns the other's topics.
    fn connect(&mut self, a: &'static str, b: &'static str) {
        let now = self.now;
        for (x, y) in [(a, b), (b, a)] {
            let (yid, ytopics) = (self.id(y), self.peers[y].topics.clone());
            let peer = self.peer(x);
            peer.links.insert(yid);
            peer.service.connected(yid, ConnectionId::new_unchecked(1), "/ip4/10.0.0.1/tcp/1".parse().unwrap(), now);
            for topic in ytopics {
                let peer = self.peer(x);
                peer.service.subscribed(&yid, topic, now, &mut peer.disk);
            }
        }
        self.settle(a);
        self.settle(b);
    }

    /// Delivers what `name` published to its linked peers in the topic; their verdicts.
    fn deliver(&mut self, name: &str) -> Vec<MessageAcceptance> {
        let (now, from) = (self.now, self.id(name));
        let messages = std::mem::take(&mut self.peer(name).in_flight);
        let mut verdicts = Vec::new();
        for (topic, data) in messages {
            for other in self.linked(name) {
                let peer = self.peer(other);
                if peer.topics.contains(&topic) {
                    verdicts.push(peer.service.gossip(&topic, &data, Some(from), now, &mut peer.disk));
                    self.settle(other);
                }
            }
        }
        verdicts
    }

    /// `name` dies: unsynced writes and undelivered messages are gone, links drop.
    fn crash(&mut self, name: &str) {
        let (id, now) = (self.id(name), self.now);
        for other in self.linked(name) {
            let peer = self.peer(other);
            peer.links.remove(&id);
            peer.service.disconnected(&id, ConnectionId::new_unchecked(1), true, now);
        }
        let peer = self.peer(name);
        peer.disk.after_crash();
        peer.in_flight.clear();
        peer.links.clear();
        peer.topics.clear();
    }

    /// `name` starts again from what its disk kept.
    fn restart(&mut self, name: &str) {
        let now = self.now;
        let peer = self.peer(name);
        peer.service = Service::new(me(&peer.key), &[], peer.disk.loaded(), now);
        self.settle(name);
    }

    fn tick(&mut self, name: &str) {
        let now = self.now;
        let peer = self.peer(name);
        peer.service.tick(now, &mut peer.disk);
        self.settle(name);
    }

    /// `name` announces a commit (as `git p2p announce` does); the answer once it is durable.
    fn announce(&mut self, name: &str, summary: &str) -> Result<Queued, Failure> {
        let now = self.now;
        let peer = self.peer(name);
        let envelope = announcement(&peer.key, name, summary, now.unix_ms);
        let (reply, answer) = oneshot::channel();
        peer.service.announce(repo(), envelope, reply, now, &mut peer.disk);
        self.end_of_batch(name);
        answer.blocking_recv().expect("an answer")
    }

    /// What the event loop does after a batch of commands: publish, then sync and answer.
    fn end_of_batch(&mut self, name: &str) {
        let now = self.now;
        let peer = self.peer(name);
        peer.service.flush(now, &mut peer.disk);
        self.settle(name);
        self.peer(name).disk.sync();
    }

    /// `name`'s user joins the repository (`git p2p init`).
    fn init(&mut self, name: &str) {
        let peer = self.peer(name);
        let (reply, _) = oneshot::channel();
        peer.service.register(repo(), reply, &mut peer.disk);
        self.settle(name);
    }
}

/// `key`'s announcement of a commit on main (its id made of its summary), signed at `ts`.
fn announcement(key: &Keypair, author: &str, summary: &str, ts: u64) -> Envelope {
    let commit = Commit {
        ref_name: Some("refs/heads/main".into()),
        id: hex::encode(&sha2::Sha256::digest(summary.as_bytes())[..20]),
        parents: vec![],
        author: author.into(),
        summary: summary.into(),
        time: 1_700_000_000,
    };
    Announcement { commit, name: None }.sign(key, &repo().id, ts)
}

fn chat(key: &Keypair, text: &str, nonce: u64, ts: u64) -> Vec<u8> {
    let m = ChatMessage { thread: None, text: text.into(), name: None, nonce: format!("{nonce:x}") };
    Envelope::sign(key, CHAT, &repo().id, ts, m.to_body()).encode()
}

#[test]
fn an_announcement_waits_for_a_peer_and_goes_when_one_joins_in_order() {
    let mut sim = Sim::new(&["alice", "bob"]);
    sim.init("alice");
    for summary in ["one", "two", "three"] {
        assert_eq!(sim.announce("alice", summary).map(|q| q.pending > 0), Ok(true), "queued, durably");
    }
    assert_eq!(sim.peer("alice").service.outbox_len(), 3, "nobody to give them to");
    sim.init("bob");
    sim.connect("alice", "bob");
    // Bob's subscription alone flushed the outbox: no tick needed.
    assert_eq!(sim.peer("alice").service.outbox_len(), 0);
    assert!(sim.deliver("alice").iter().all(|v| *v == MessageAcceptance::Accept));
    assert_eq!(sim.peer("bob").announcements(), ["one", "two", "three"], "in order");
}

#[test]
fn a_published_announcement_survives_a_crash_within_its_grace_and_then_leaves_the_disk() {
    let mut sim = Sim::new(&["alice", "bob"]);
    sim.init("alice");
    sim.init("bob");
    sim.connect("alice", "bob");
    sim.announce("alice", "fix").expect("queued");
    assert_eq!(sim.peer("alice").service.outbox_len(), 0, "published at once");
    assert_eq!(sim.peer("alice").disk.outbox.len(), 1, "kept on disk during the grace");
    // Killed before its connections delivered it: the message was in flight only.
    sim.advance(Duration::from_secs(1));
    sim.crash("alice");
    sim.restart("alice");
    assert_eq!(sim.peer("alice").service.outbox_len(), 1, "the restarted node has it again");
    sim.connect("alice", "bob");
    let sent = sim.peer("alice").in_flight.clone();
    assert_eq!(sent.len(), 1, "published again as soon as bob is back");
    sim.deliver("alice");
    assert_eq!(sim.peer("bob").announcements(), ["fix"]);
    // A second copy (as when the first had arrived after all) is taken once.
    let (now, alice) = (sim.now, sim.id("alice"));
    let bob = sim.peer("bob");
    let verdict = bob.service.gossip(&sent[0].0, &sent[0].1, Some(alice), now, &mut bob.disk);
    assert_eq!(verdict, MessageAcceptance::Ignore);
    assert_eq!(sim.peer("bob").announcements(), ["fix"]);
    sim.advance(PUBLISH_GRACE - Duration::from_millis(1));
    sim.tick("alice");
    assert_eq!(sim.peer("alice").disk.outbox.len(), 1, "still within the grace");
    sim.advance(Duration::from_millis(1));
    sim.tick("alice");
    assert!(sim.peer("alice").disk.outbox.is_empty(), "gone once the grace has passed");
}

#[test]
fn a_refused_publish_stays_first_and_is_retried_on_the_next_tick() {
    let mut sim = Sim::new(&["alice", "bob"]);
    sim.init("alice");
    sim.init("bob");
    sim.connect("alice", "bob");
    sim.peer("alice").can_publish = false;
    sim.announce("alice", "first").expect("queued");
    sim.announce("alice", "second").expect("queued");
    assert_eq!(sim.peer("alice").service.outbox_len(), 2, "refused: both wait");
    sim.tick("alice");
    assert_eq!(sim.peer("alice").service.outbox_len(), 2, "still refused");
    sim.peer("alice").can_publish = true;
    sim.advance(Duration::from_secs(1));
    sim.tick("alice");
    assert_eq!(sim.peer("alice").service.outbox_len(), 0);
    sim.deliver("alice");
    assert_eq!(sim.peer("bob").announcements(), ["first", "second"]);
}

#[test]
fn an_announcement_is_news_once_whether_or_not_the_seen_sets_are_read_and_not_taken_while_the_disk_is_full() {
    use MessageAcceptance::{Accept, Ignore};
    let mut sim = Sim::new(&["alice", "bob"]);
    sim.init("bob");
    let topic = crate::proto::topic::commits(&repo().id).hash();
    let (alice, alice_key) = (sim.id("alice"), sim.peer("alice").key.clone());
    let gossip = |sim: &mut Sim, summary: &str, ts: u64| {
        let data = announcement(&alice_key, "alice", summary, ts).encode();
        let now = sim.now;
        let bob = sim.peer("bob");
        let verdict = bob.service.gossip(&topic, &data, Some(alice), now, &mut bob.disk);
        sim.settle("bob");
        verdict
    };
    let shown =
        |sim: &mut Sim| sim.peer("bob").events.iter().filter(|e| matches!(e, NodeEvent::Announcement(_))).count();
    let t = sim.now.unix_ms;
    // A node that has not read its seen sets yet (the simulation starts so) asks the feed.
    assert_eq!(gossip(&mut sim, "first", t), Accept);
    assert_eq!(gossip(&mut sim, "first", t), Ignore, "the same message again");
    assert_eq!(gossip(&mut sim, "first", t + 1), Ignore, "the same commit signed again");
    assert_eq!((sim.peer("bob").announcements(), shown(&mut sim)), (vec!["first".to_string()], 1));
    // Restarted, before the seen sets are read: the feed still says it is no news.
    let loaded = Loaded { seen: None, ..sim.peer("bob").disk.loaded() };
    let now = sim.now;
    let bob = sim.peer("bob");
    bob.service = Service::new(me(&bob.key), &[], loaded, now);
    sim.settle("bob");
    assert_eq!(gossip(&mut sim, "first", t + 2), Ignore, "asked the feed");
    let seen = sim.peer("bob").disk.loaded().seen.expect("the seen sets");
    sim.peer("bob").service.remember_seen(seen);
    assert_eq!(gossip(&mut sim, "first", t + 3), Ignore, "from the seen set");
    // A full disk: neither forwarded nor taken as seen; once there is space, it is news.
    sim.peer("bob").disk.full = true;
    assert_eq!(gossip(&mut sim, "second", t), Ignore);
    sim.peer("bob").disk.full = false;
    assert_eq!(gossip(&mut sim, "second", t), Accept, "taken once it can be stored");
    assert_eq!(sim.peer("bob").announcements(), ["first", "second"]);
    // The store went back to its last durable state without the second: it is news again.
    let bob = sim.peer("bob");
    bob.disk.feed.retain(|e| e.commit.summary != "second");
    bob.service.store_rolled_back();
    assert_eq!(gossip(&mut sim, "first", t + 4), Ignore, "the feed has it");
    assert_eq!(gossip(&mut sim, "second", t + 1), Accept, "the feed lost it");
    assert_eq!((sim.peer("bob").announcements(), shown(&mut sim)), (vec!["first".to_string(), "second".into()], 3));
}

#[test]
fn a_room_message_is_shown_once_across_a_restart_before_the_seen_sets_are_read() {
    use MessageAcceptance::{Accept, Ignore};
    let mut sim = Sim::new(&["alice", "bob"]);
    sim.init("bob");
    let topic = crate::proto::topic::chat(&repo().id).hash();
    let (alice, now) = (sim.id("alice"), sim.now);
    let data = chat(&sim.peer("alice").key, "hello", 1, now.unix_ms);
    let gossip = |sim: &mut Sim| {
        let bob = sim.peer("bob");
        let verdict = bob.service.gossip(&topic, &data, Some(alice), now, &mut bob.disk);
        sim.settle("bob");
        verdict
    };
    let shown = |sim: &mut Sim| sim.peer("bob").events.iter().filter(|e| matches!(e, NodeEvent::Chat(_))).count();
    assert_eq!(gossip(&mut sim), Accept);
    assert_eq!(gossip(&mut sim), Ignore, "the same again");
    let loaded = Loaded { seen: None, ..sim.peer("bob").disk.loaded() };
    let bob = sim.peer("bob");
    bob.service = Service::new(me(&bob.key), &[], loaded, now);
    sim.settle("bob");
    assert_eq!(gossip(&mut sim), Ignore, "restarted: the history has it");
    assert_eq!((sim.peer("bob").disk.chat.len(), shown(&mut sim)), (1, 1));
}

#[test]
fn a_flooding_author_is_rate_limited_and_an_honest_one_is_not() {
    let mut sim = Sim::new(&["alice", "bob", "eve"]);
    for name in ["alice", "bob", "eve"] {
        sim.init(name);
    }
    sim.connect("eve", "bob");
    sim.connect("alice", "bob");
    let topic = crate::proto::topic::chat(&repo().id).hash();
    let (now, eve_key, eve) = (sim.now, sim.peer("eve").key.clone(), sim.id("eve"));
    let mut verdicts = Vec::new();
    for i in 0..300 {
        let bob = sim.peer("bob");
        verdicts.push(bob.service.gossip(
            &topic,
            &chat(&eve_key, "flood", i, now.unix_ms),
            Some(eve),
            now,
            &mut bob.disk,
        ));
    }
    let accepted = verdicts.iter().filter(|v| **v == MessageAcceptance::Accept).count();
    assert_eq!(accepted, CHAT_BURST as usize, "a burst, then nothing");
    assert!(
        verdicts[CHAT_BURST as usize..].iter().all(|v| *v == MessageAcceptance::Ignore),
        "dropped without blame: too fast is not invalid"
    );
    let alice_key = sim.peer("alice").key.clone();
    let bob = sim.peer("bob");
    let honest = bob.service.gossip(&topic, &chat(&alice_key, "hello", 1, now.unix_ms), None, now, &mut bob.disk);
    assert_eq!(honest, MessageAcceptance::Accept, "another author has a bucket of its own");
    sim.advance(Duration::from_secs(1));
    let now = sim.now;
    let bob = sim.peer("bob");
    let later: Vec<_> = (1000..1050)
        .map(|i| bob.service.gossip(&topic, &chat(&eve_key, "flood", i, now.unix_ms), Some(eve), now, &mut bob.disk))
        .collect();
    assert_eq!(later.iter().filter(|v| **v == MessageAcceptance::Accept).count(), CHAT_RATE as usize);
    assert_eq!(bob.disk.chat.len(), CHAT_BURST as usize + 1 + CHAT_RATE as usize, "only what was accepted is kept");
}

#[test]
fn our_message_goes_out_at_once_with_peers_in_the_room_and_through_the_outbox_without() {
    let mut sim = Sim::new(&["alice", "bob"]);
    sim.init("alice");
    let send = |sim: &mut Sim, text: &str, n: u64| {
        let now = sim.now;
        let alice = sim.peer("alice");
        let envelope = Envelope::decode(&chat(&alice.key, text, n, now.unix_ms)).expect("an envelope");
        let (reply, answer) = oneshot::channel::<Result<ChatSent, Failure>>();
        alice.service.chat_send(repo(), envelope, None, reply, now, &mut alice.disk);
        sim.end_of_batch("alice");
        answer.blocking_recv().expect("an answer").expect("sent")
    };
    assert_eq!(send(&mut sim, "alone", 1).peers, 0);
    assert_eq!(sim.peer("alice").service.outbox_len(), 1, "waits for someone to join");
    sim.init("bob");
    sim.connect("alice", "bob");
    assert_eq!(send(&mut sim, "together", 2).peers, 1);
    sim.deliver("alice");
    let texts: Vec<String> = sim.peer("bob").disk.chat.iter().map(|m| m.text.clone()).collect();
    assert_eq!(texts, ["alone", "together"], "the waiting one first");
    let own: Vec<bool> = sim.peer("alice").disk.chat.iter().map(|m| m.own).collect();
    assert_eq!(own, [true, true], "ours are in our history, marked as ours");
}

#[test]
fn our_client_s_message_tampered_or_forged_in_our_name_is_refused_and_nothing_leaves() {
    let mut sim = Sim::new(&["alice", "bob", "eve"]);
    sim.init("alice");
    sim.init("bob");
    sim.connect("alice", "bob");
    let (now, eve_key) = (sim.now, sim.peer("eve").key.clone());
    let alice_key = sim.peer("alice").key.clone();
    let mut tampered = Envelope::decode(&chat(&alice_key, "said", 1, now.unix_ms)).expect("an envelope");
    tampered.body = tampered.body.replace("said", "SAID");
    let mut forged = Envelope::decode(&chat(&eve_key, "forged", 2, now.unix_ms)).expect("an envelope");
    forged.author = Envelope::decode(&chat(&alice_key, "x", 3, now.unix_ms)).expect("an envelope").author;
    let mut upper = Envelope::decode(&chat(&alice_key, "upper", 4, now.unix_ms)).expect("an envelope");
    upper.sig = upper.sig.to_uppercase();
    for bad in [tampered, forged, upper] {
        let alice = sim.peer("alice");
        let (reply, answer) = oneshot::channel::<Result<ChatSent, Failure>>();
        alice.service.chat_send(repo(), bad, None, reply, now, &mut alice.disk);
        let refused = answer.blocking_recv().expect("an answer").expect_err("refused");
        assert!(refused.to_string().contains("bad signature"), "{refused}");
    }
    // A good one of ours goes (checked by signing it again), and only it reaches bob.
    let good = Envelope::decode(&chat(&alice_key, "good", 5, now.unix_ms)).expect("an envelope");
    let alice = sim.peer("alice");
    let (reply, answer) = oneshot::channel::<Result<ChatSent, Failure>>();
    alice.service.chat_send(repo(), good, None, reply, now, &mut alice.disk);
    sim.end_of_batch("alice");
    assert_eq!(answer.blocking_recv().expect("an answer").expect("sent").peers, 1);
    sim.deliver("alice");
    let texts: Vec<String> = sim.peer("bob").disk.chat.iter().map(|m| m.text.clone()).collect();
    assert_eq!(texts, ["good"]);
}

#[test]
fn a_message_for_another_repository_or_mis_signed_is_rejected() {
    let mut sim = Sim::new(&["bob", "eve"]);
    sim.init("bob");
    let (now, eve_key) = (sim.now, sim.peer("eve").key.clone());
    let topic = crate::proto::topic::chat(&repo().id).hash();
    let other = RepoId::try_from("b".repeat(40)).expect("a repo id");
    let m = ChatMessage { thread: None, text: "elsewhere".into(), name: None, nonce: "1".into() };
    let elsewhere = Envelope::sign(&eve_key, CHAT, &other, now.unix_ms, m.to_body()).encode();
    let mut forged = Envelope::decode(&chat(&eve_key, "forged", 2, now.unix_ms)).expect("an envelope");
    forged.body = forged.body.replace("forged", "FORGED");
    let bob = sim.peer("bob");
    for bad in [elsewhere, forged.encode(), b"not json".to_vec()] {
        assert_eq!(bob.service.gossip(&topic, &bad, None, now, &mut bob.disk), MessageAcceptance::Reject);
    }
    sim.settle("bob");
    let bob = sim.peer("bob");
    assert!(bob.disk.chat.is_empty() && bob.events.is_empty(), "nothing refused is kept or shown");
}

#[test]
fn a_thread_reply_reaches_every_node_of_the_repository_and_leaves_a_notice_in_its_room() {
    let mut sim = Sim::new(&["alice", "bob"]);
    sim.init("alice");
    sim.init("bob");
    sim.connect("alice", "bob");
    let (now, commit) = (sim.now, "c".repeat(40));
    let alice = sim.peer("alice");
    let m = ChatMessage { thread: Some(commit.clone()), text: "looks good".into(), name: None, nonce: "1".into() };
    let envelope = Envelope::sign(&alice.key, CHAT, &repo().id, now.unix_ms, m.to_body());
    let (reply, answer) = oneshot::channel::<Result<ChatSent, Failure>>();
    alice.service.chat_send(repo(), envelope, Some(commit.clone()), reply, now, &mut alice.disk);
    sim.end_of_batch("alice");
    let sent = answer.blocking_recv().expect("an answer").expect("sent");
    assert_eq!((sent.peers, sent.queued), (1, false), "bob never opened the thread, and is in its audience");
    assert!(sim.deliver("alice").iter().all(|v| *v == MessageAcceptance::Accept));
    let (thread_room, room) = (format!("{}/{commit}", repo().id), repo().id.to_string());
    let kept = |peer: &Peer| -> Vec<(String, Option<String>, String)> {
        peer.disk.chat.iter().map(|m| (m.room.clone(), m.thread.clone(), m.text.clone())).collect()
    };
    let expected = [
        (thread_room.clone(), None, "looks good".to_string()),
        (room.clone(), Some(commit.clone()), "looks good".to_string()),
    ];
    assert_eq!(kept(sim.peer("bob")), expected, "the reply in its thread, its notice in the room");
    assert_eq!(kept(sim.peer("alice")), expected, "the sender's node keeps both too");
    let shown: Vec<String> = sim
        .peer("bob")
        .events
        .iter()
        .filter_map(|e| match e {
            NodeEvent::Chat(m) => Some(m.room.clone()),
            NodeEvent::Announcement(_) => None,
        })
        .collect();
    assert_eq!(shown, [thread_room, room], "followers of the thread and of the room are told");
    // The threads topic carries thread messages only.
    let (now, alice_key) = (sim.now, sim.peer("alice").key.clone());
    let topic = crate::proto::topic::threads(&repo().id).hash();
    let bob = sim.peer("bob");
    let verdict =
        bob.service.gossip(&topic, &chat(&alice_key, "not in a thread", 2, now.unix_ms), None, now, &mut bob.disk);
    assert_eq!(verdict, MessageAcceptance::Reject);
}

/// A signed entry of `key` for `k` in the repository, as a DHT copy holding only it.
fn copy(key: &Keypair, k: &str, value: &str, seq: u64) -> kad::Record {
    let entry = Entry::sign(key, &repo().id, k, Some(value.as_bytes()), seq, seq).expect("an entry");
    let mut record = crate::proto::kv::Record::new(&repo().id, k);
    record.merge_entry(entry, u64::MAX).expect("merges");
    kad::Record::new(kad::RecordKey::new(&record_key(&repo().id, k)), record.encode())
}

fn values(found: &KvFound) -> Vec<String> {
    let record = found.record.as_ref().expect("a record");
    let mut v: Vec<String> =
        record.values().iter().filter_map(|e| e.value_bytes()).map(|b| String::from_utf8_lossy(&b).into()).collect();
    v.sort();
    v
}

#[test]
fn a_lookup_merges_ours_with_copies_and_answers_after_three_peers() {
    let mut sim = Sim::new(&["alice", "bob", "carol", "dave", "eve"]);
    let now = sim.now;
    let keys: Vec<Keypair> = ["alice", "bob", "carol", "dave", "eve"].iter().map(|n| sim.peer(n).key.clone()).collect();
    let ours = copy(&keys[0], "k", "from alice", 1);
    sim.peer("alice").disk.records.insert(ours.key.clone(), ours);
    let alice = sim.peer("alice");
    let (reply, mut answer) = oneshot::channel();
    alice.service.kv_get(repo().id, "k".into(), reply, now, &mut alice.disk);
    sim.settle("alice");
    let Some(Io::GetRecord { query, .. }) = sim.peer("alice").queries.pop() else { panic!("a lookup") };
    let alice = sim.peer("alice");
    // Kademlia hands our own copy first (no peer), then peers' copies.
    let local = alice.disk.records.values().next().cloned().expect("ours");
    alice.service.kv_found(query, None, &local, 1, now, &mut alice.disk);
    for (i, key) in keys[1..3].iter().enumerate() {
        alice.service.kv_found(
            query,
            Some(PeerId::random()),
            &copy(key, "k", &format!("copy {i}"), 1),
            2,
            now,
            &mut alice.disk,
        );
    }
    assert!(answer.try_recv().is_err(), "two copies are not enough");
    let forged = kad::Record::new(kad::RecordKey::new(&record_key(&repo().id, "k")), b"{\"garbage\":1}".to_vec());
    alice.service.kv_found(query, Some(PeerId::random()), &forged, 3, now, &mut alice.disk);
    assert!(answer.try_recv().is_err(), "a copy that does not verify does not count");
    alice.service.kv_found(query, Some(PeerId::random()), &copy(&keys[3], "k", "copy 2", 1), 4, now, &mut alice.disk);
    let found = answer.try_recv().expect("answered").expect("found");
    assert_eq!(values(&found), ["copy 0", "copy 1", "copy 2", "from alice"], "every author's newest value");
    assert_eq!(found.requests, 4);
    sim.settle("alice");
    assert!(matches!(sim.peer("alice").queries.last(), Some(Io::FinishQuery(q)) if *q == query), "the lookup stops");
    // Late copies and Kademlia's own end change nothing.
    let alice = sim.peer("alice");
    alice.service.kv_found(query, Some(PeerId::random()), &copy(&keys[4], "k", "late", 1), 5, now, &mut alice.disk);
    alice.service.kv_query_done(query, 5, now, &mut alice.disk);
}

#[test]
fn a_query_past_its_deadline_is_answered_with_what_it_has() {
    let mut sim = Sim::new(&["alice", "bob"]);
    let now = sim.now;
    let bob_key = sim.peer("bob").key.clone();
    let alice = sim.peer("alice");
    let (get_reply, mut got) = oneshot::channel();
    alice.service.kv_get(repo().id, "k".into(), get_reply, now, &mut alice.disk);
    let (put_reply, mut put) = oneshot::channel();
    alice.service.kv_put(repo(), "mine".into(), Some(b"v".to_vec()), None, put_reply, now, &mut alice.disk);
    sim.settle("alice");
    let queries: Vec<QueryRef> = sim
        .peer("alice")
        .queries
        .iter()
        .filter_map(|io| match io {
            Io::GetRecord { query, .. } | Io::PutRecord { query, .. } => Some(*query),
            _ => None,
        })
        .collect();
    assert_eq!(queries.len(), 2);
    let alice = sim.peer("alice");
    alice.service.kv_found(
        queries[0],
        Some(PeerId::random()),
        &copy(&bob_key, "k", "bob's", 1),
        1,
        now,
        &mut alice.disk,
    );
    alice.service.kv_put_done(queries[1], 2);
    sim.advance(kv::QUERY_DEADLINE - Duration::from_millis(1));
    sim.tick("alice");
    assert!(got.try_recv().is_err() && put.try_recv().is_err(), "not before the deadline");
    sim.advance(Duration::from_millis(1));
    sim.tick("alice");
    assert_eq!(values(&got.try_recv().expect("answered").expect("found")), ["bob's"]);
    assert_eq!(put.try_recv().expect("answered").expect("stored").replicas, 2, "what it had reached");
    let finished =
        sim.peer("alice").queries.iter().filter(|io| matches!(io, Io::FinishQuery(q) if queries.contains(q))).count();
    assert_eq!(finished, 2, "both stopped");
    assert!(sim.peer("alice").disk.records.contains_key(&kad::RecordKey::new(&record_key(&repo().id, "mine"))));
}

#[test]
fn our_refs_follow_our_announcements_and_two_in_one_millisecond_do_not_tie() {
    let mut sim = Sim::new(&["alice"]);
    sim.init("alice");
    sim.announce("alice", "one").expect("queued");
    sim.announce("alice", "two").expect("queued");
    sim.advance(super::refs::SETTLE);
    sim.tick("alice");
    let alice = sim.peer("alice");
    let index_key = kad::RecordKey::new(&record_key(&repo().id, crate::proto::kv::REFS_KEY));
    let record =
        crate::proto::kv::Record::decode(&alice.disk.records[&index_key].value, &repo().id, index_key.as_ref())
            .expect("our refs index");
    let refs: BTreeMap<String, String> =
        serde_json::from_slice(&record.entries[0].value_bytes().expect("a value")).expect("a map");
    let announced: Vec<&OutboxEntry> = alice.disk.outbox.values().map(|(e, _)| e).collect();
    let last = Announcement::from_envelope(&announced[1].envelope).expect("an announcement");
    assert_eq!(refs.get("refs/heads/main"), Some(&last.commit.id), "the index names the newest commit");
}

/// The puts of our refs that `name` started since the last call, by key.
fn ref_puts(sim: &mut Sim, name: &str) -> Vec<String> {
    let queries = std::mem::take(&mut sim.peer(name).queries);
    let repo_id = repo().id;
    let key_of = |key: &kad::RecordKey| {
        ["refs/heads/main", crate::proto::kv::REFS_KEY]
            .into_iter()
            .find(|k| kad::RecordKey::new(&record_key(&repo_id, k)) == *key)
            .map(str::to_string)
    };
    queries
        .iter()
        .filter_map(|io| if let Io::PutRecord { record, .. } = io { key_of(&record.key) } else { None })
        .collect()
}

#[test]
fn a_burst_of_commits_puts_its_branch_once_settled_and_a_steady_stream_within_the_longest_wait() {
    let mut sim = Sim::new(&["alice", "bob"]);
    sim.init("alice");
    sim.init("bob");
    sim.connect("alice", "bob");
    sim.settle("alice");
    ref_puts(&mut sim, "alice");
    // A rebase: ten commits 100 ms apart; nothing is put while the branch moves.
    for i in 0..10 {
        sim.announce("alice", &format!("patch {i}")).expect("queued");
        sim.advance(Duration::from_millis(100));
        sim.tick("alice");
        assert_eq!(ref_puts(&mut sim, "alice"), Vec::<String>::new(), "put while the branch moves ({i})");
    }
    sim.advance(super::refs::SETTLE);
    sim.tick("alice");
    assert_eq!(ref_puts(&mut sim, "alice"), ["refs/heads/main", "refs"], "once, settled");
    let newest = sim.peer("alice").disk.outbox.values().map(|(e, _)| e.envelope.clone()).next_back().expect("queued");
    let newest = Announcement::from_envelope(&newest).expect("an announcement").commit.id;
    let put = own_entry(sim.peer("alice"), "refs/heads/main").value_bytes();
    assert_eq!(put, Some(newest.into_bytes()), "at the newest commit");
    sim.tick("alice");
    assert_eq!(ref_puts(&mut sim, "alice"), Vec::<String>::new(), "nothing moved since");

    // A commit every half second never settles; its branch is put at the longest wait.
    let start = sim.now;
    let mut puts = Vec::new();
    while sim.now.mono.duration_since(start.mono) < super::refs::SETTLE_AT_MOST * 2 {
        sim.announce("alice", &format!("at {:?}", sim.now.mono.duration_since(start.mono))).expect("queued");
        sim.advance(Duration::from_millis(500));
        sim.tick("alice");
        if !ref_puts(&mut sim, "alice").is_empty() {
            puts.push(sim.now.mono.duration_since(start.mono));
        }
    }
    assert_eq!(puts, [super::refs::SETTLE_AT_MOST, super::refs::SETTLE_AT_MOST * 2], "within the longest wait");

    // A branch deleted before its put: unpublished, and its put never comes.
    sim.advance(super::refs::SETTLE);
    sim.tick("alice");
    sim.announce("alice", "doomed").expect("queued");
    let now = sim.now;
    let alice = sim.peer("alice");
    assert_eq!(alice.service.published_refs(&repo().id, &alice.disk), ["refs/heads/main"]);
    alice.service.refs_gone(&repo().id, &["refs/heads/main".to_string()], now, &mut alice.disk);
    sim.settle("alice");
    assert_eq!(ref_puts(&mut sim, "alice"), ["refs/heads/main", "refs"], "a tombstone and the index");
    assert_eq!(own_entry(sim.peer("alice"), "refs/heads/main").value, None);
    sim.advance(super::refs::SETTLE_AT_MOST);
    sim.tick("alice");
    assert_eq!(ref_puts(&mut sim, "alice"), Vec::<String>::new(), "the deleted branch is not put again");
}

/// What bob's identify tells alice: his listen address and the session of his process.
fn bob_info(sim: &mut Sim, session: &str) -> libp2p::identify::Info {
    libp2p::identify::Info {
        public_key: sim.peer("bob").key.public(),
        protocol_version: crate::node::behaviour::IDENTIFY_PROTOCOL.into(),
        agent_version: crate::node::behaviour::agent_string(session, Some("Bob")),
        listen_addrs: vec!["/ip4/10.0.0.2/tcp/4001".parse().unwrap()],
        protocols: vec![],
        observed_addr: "/ip4/10.0.0.1/tcp/1".parse().unwrap(),
        signed_peer_record: None,
    }
}

#[test]
fn lost_peers_are_redialled_with_backoff_and_connected_ones_are_not() {
    let mut sim = Sim::new(&["alice", "bob"]);
    let (now, bob) = (sim.now, sim.id("bob"));
    let info = bob_info(&mut sim, "b0b");
    sim.connect("alice", "bob");
    let alice = sim.peer("alice");
    alice.service.identified(bob, info, now, &mut alice.disk);
    assert_eq!(alice.disk.peers.get(&bob).map(Vec::len), Some(1), "in the address book");
    sim.tick("alice");
    assert!(sim.peer("alice").dials.is_empty(), "connected: no dial");
    sim.crash("bob");
    sim.advance(Duration::from_secs(1));
    sim.tick("alice");
    assert_eq!(sim.peer("alice").dialled(), [bob], "lost: dialled");
    let start = sim.now;
    let first = sim.peer("alice").dials.pop().expect("a dial");
    sim.peer("alice").service.dial_ended(&bob, first.dial, Some("refused".into()), start);
    let mut dialled_at = Vec::new();
    for s in 1..=20 {
        sim.now = start.after(Duration::from_secs(s));
        sim.tick("alice");
        if let Some(d) = sim.peer("alice").dials.pop() {
            dialled_at.push(s);
            let now = sim.now;
            sim.peer("alice").service.dial_ended(&bob, d.dial, Some("refused".into()), now);
        }
    }
    assert_eq!(dialled_at, [2, 6, 14], "2 s after one failure, 4 s after two, 8 s after three");
}

#[test]
fn the_address_book_is_dialled_at_start_without_waiting_for_a_tick() {
    let mut sim = Sim::new(&["alice", "bob"]);
    let bob = sim.id("bob");
    sim.peer("alice").disk.peers.insert(bob, vec!["/ip4/10.0.0.2/tcp/4001".parse().unwrap()]);
    sim.restart("alice");
    assert_eq!(sim.peer("alice").dialled(), [bob]);
}

#[test]
fn an_address_just_learned_is_dialled_while_a_stale_dial_hangs_and_a_late_failure_costs_nothing() {
    let mut sim = Sim::new(&["alice", "bob"]);
    let bob = sim.id("bob");
    let (stale, fresh): (Multiaddr, Multiaddr) =
        ("/ip4/10.0.0.2/udp/4001/quic-v1".parse().unwrap(), "/ip4/10.0.0.102/udp/4001/quic-v1".parse().unwrap());
    sim.peer("alice").disk.peers.insert(bob, vec![stale.clone()]);
    sim.restart("alice");
    let hanging = sim.peer("alice").dials.pop().expect("the address book, dialled at start");
    assert_eq!(hanging.addrs, std::slice::from_ref(&stale));
    // mDNS finds bob at his new address while that dial waits for a handshake that never comes.
    let now = sim.now;
    sim.peer("alice").service.discovered(vec![(bob, fresh.clone()), (bob, stale.clone())], now);
    sim.settle("alice");
    let quick = sim.peer("alice").dials.pop().expect("the fresh address, at once");
    assert_eq!(quick.addrs, std::slice::from_ref(&fresh), "only what no dial is trying");
    sim.connect("alice", "bob");
    let alice = sim.peer("alice");
    alice.service.dial_ended(&bob, quick.dial, None, now);
    sim.advance(Duration::from_secs(5));
    let now = sim.now;
    sim.peer("alice").service.dial_ended(&bob, hanging.dial, Some("timed out".into()), now);
    // Bob goes away: redialled at the next tick, freshest address first, with no backoff.
    sim.crash("bob");
    sim.advance(Duration::from_secs(1));
    sim.tick("alice");
    let again = sim.peer("alice").dials.pop().expect("redialled");
    assert_eq!(again.addrs, [fresh, stale]);
}

#[test]
fn a_peer_that_restarts_behind_a_dead_connection_gets_every_connection_closed_and_is_dialled_again() {
    let mut sim = Sim::new(&["alice", "bob"]);
    let (now, bob) = (sim.now, sim.id("bob"));
    let addr: Multiaddr = "/ip4/10.0.0.2/udp/4001/quic-v1".parse().unwrap();
    let (dead, fresh, meanwhile) =
        (ConnectionId::new_unchecked(11), ConnectionId::new_unchecked(12), ConnectionId::new_unchecked(13));
    let before = bob_info(&mut sim, "1");
    let same = bob_info(&mut sim, "1");
    let after = bob_info(&mut sim, "2");
    let alice = sim.peer("alice");
    alice.service.connected(bob, dead, addr.clone(), now);
    alice.service.identified(bob, before, now, &mut alice.disk);
    // Bob is killed; alice's connection to him looks alive. His new process connects.
    alice.service.connected(bob, fresh, addr.clone(), now);
    alice.service.identified(bob, same, now, &mut alice.disk);
    sim.settle("alice");
    assert!(sim.peer("alice").disconnects.is_empty(), "the same process twice: two live connections, kept");
    let alice = sim.peer("alice");
    alice.service.identified(bob, after, now, &mut alice.disk);
    sim.settle("alice");
    assert_eq!(sim.peer("alice").disconnects, [bob], "another process: every connection goes");
    let alice = sim.peer("alice");
    alice.service.connected(bob, meanwhile, addr.clone(), now);
    sim.settle("alice");
    assert_eq!(sim.peer("alice").closes, [meanwhile], "one that arrives meanwhile would be gossipsub's second");
    let alice = sim.peer("alice");
    for c in [dead, fresh] {
        alice.service.disconnected(&bob, c, false, now);
    }
    sim.settle("alice");
    assert!(sim.peer("alice").dials.is_empty(), "not before the last one is closed");
    let alice = sim.peer("alice");
    alice.service.disconnected(&bob, meanwhile, false, now);
    sim.settle("alice");
    assert_eq!(sim.peer("alice").dialled(), [bob], "then at once, without waiting for a tick");
    assert_eq!(sim.peer("alice").disconnects, [bob], "once");
}

#[test]
fn a_broken_older_connection_or_a_failed_ping_next_to_another_connection_resets_the_peer() {
    let mut sim = Sim::new(&["alice", "bob", "carol"]);
    let (now, bob, carol) = (sim.now, sim.id("bob"), sim.id("carol"));
    let addr: Multiaddr = "/ip4/10.0.0.2/tcp/4001".parse().unwrap();
    let c = ConnectionId::new_unchecked;
    let alice = sim.peer("alice");
    alice.service.connected(bob, c(1), addr.clone(), now);
    alice.service.connected(bob, c(2), addr.clone(), now);
    alice.service.disconnected(&bob, c(2), true, now);
    sim.settle("alice");
    assert!(sim.peer("alice").disconnects.is_empty(), "the newer one broke: the older one is the peer's too");
    let alice = sim.peer("alice");
    alice.service.connected(bob, c(3), addr.clone(), now);
    alice.service.disconnected(&bob, c(1), true, now);
    sim.settle("alice");
    assert_eq!(sim.peer("alice").disconnects, [bob], "the peer had replaced the one that broke");

    let alice = sim.peer("alice");
    alice.service.connected(carol, c(4), addr.clone(), now);
    alice.service.ping_failed(carol, c(4));
    sim.settle("alice");
    assert_eq!(sim.peer("alice").closes, [c(4)], "a lone connection that stopped answering is closed");
    let alice = sim.peer("alice");
    alice.service.connected(carol, c(5), addr.clone(), now);
    alice.service.ping_failed(carol, c(5));
    sim.settle("alice");
    assert_eq!(sim.peer("alice").disconnects, [bob, carol], "next to another: all of them");
}

#[test]
fn an_honest_burst_is_paced_so_that_peers_take_all_of_it_and_a_commit_is_not_held_up() {
    let mut sim = Sim::new(&["alice", "bob"]);
    sim.init("alice");
    sim.init("bob");
    sim.connect("alice", "bob");
    let mut queued = 0;
    for i in 0..300 {
        let now = sim.now;
        let alice = sim.peer("alice");
        let envelope = Envelope::decode(&chat(&alice.key, &format!("burst {i}"), i, now.unix_ms)).expect("an envelope");
        let (reply, answer) = oneshot::channel::<Result<ChatSent, Failure>>();
        alice.service.chat_send(repo(), envelope, None, reply, now, &mut alice.disk);
        sim.end_of_batch("alice");
        queued += usize::from(answer.blocking_recv().expect("an answer").expect("stored").queued);
        let verdicts = sim.deliver("alice");
        assert!(verdicts.iter().all(|v| *v == MessageAcceptance::Accept), "bob takes every one it is sent");
        // A message every 10 ms, as fast as a script sends them one by one.
        sim.advance(Duration::from_millis(10));
        if i % 100 == 99 {
            sim.tick("alice");
        }
    }
    assert!(queued > 0, "a burst beyond what peers take waits in the outbox");
    sim.announce("alice", "the commit right after").expect("queued");
    sim.deliver("alice");
    assert!(sim.peer("bob").announcements() == ["the commit right after"], "not held up behind the chat");
    for _ in 0..30 {
        sim.advance(Duration::from_secs(1));
        sim.tick("alice");
        let verdicts = sim.deliver("alice");
        assert!(verdicts.iter().all(|v| *v == MessageAcceptance::Accept), "bob takes every one it is sent");
    }
    assert_eq!(sim.peer("alice").service.outbox_len(), 0, "all sent in the end");
    let burst = sim.peer("bob").disk.chat.iter().filter(|m| m.text.starts_with("burst ")).count();
    assert_eq!(burst, 300, "bob has the whole burst");
}

#[test]
fn a_patch_series_is_announced_at_once_and_peers_take_all_of_it() {
    let mut sim = Sim::new(&["alice", "bob"]);
    sim.init("alice");
    sim.init("bob");
    sim.connect("alice", "bob");
    // `git am` of 400 patches: a commit every 5 ms, each announced as it is made.
    let series = 400;
    for i in 0..series {
        sim.announce("alice", &format!("patch {i}")).expect("queued");
        let verdicts = sim.deliver("alice");
        assert_eq!(verdicts, [MessageAcceptance::Accept], "patch {i} goes out at once and bob takes it");
        sim.advance(Duration::from_millis(5));
    }
    assert_eq!(sim.peer("alice").service.outbox_len(), 0);
    assert_eq!(sim.peer("bob").announcements().len(), series);
    // Beyond the burst, the pace: what peers take, never more.
    let mut held = 0;
    for i in 0..200 {
        sim.announce("alice", &format!("more {i}")).expect("queued");
        let verdicts = sim.deliver("alice");
        assert!(verdicts.iter().all(|v| *v == MessageAcceptance::Accept), "bob takes every one it is sent");
        held += usize::from(verdicts.is_empty());
    }
    assert!(held > 0, "a series beyond the burst waits for the pace");
}

/// Our own entry of `key`, as alice's copy of the record has it.
fn own_entry(peer: &Peer, key: &str) -> Entry {
    let dht_key = kad::RecordKey::new(&record_key(&repo().id, key));
    let record = crate::proto::kv::Record::decode(&peer.disk.records[&dht_key].value, &repo().id, dht_key.as_ref())
        .expect("our copy");
    let author = hex::encode(peer.key.public().encode_protobuf());
    record.entries.into_iter().find(|e| e.author == author).expect("our entry")
}

#[test]
fn a_write_after_the_clock_was_set_back_follows_the_last_one() {
    let mut sim = Sim::new(&["alice"]);
    let now = sim.now;
    let day = Duration::from_secs(86_400);
    let alice = sim.peer("alice");
    // Written while the clock was a day ahead; then the clock is right again.
    let (reply, mut answer) = oneshot::channel();
    alice.service.kv_put(repo(), "k".into(), Some(b"ahead".to_vec()), None, reply, now.after(day), &mut alice.disk);
    sim.settle("alice");
    assert!(answer.try_recv().is_err(), "waits for the put");
    let ahead = own_entry(sim.peer("alice"), "k");
    let alice = sim.peer("alice");
    let (reply, mut answer) = oneshot::channel();
    alice.service.kv_put(repo(), "k".into(), Some(b"now".to_vec()), None, reply, now, &mut alice.disk);
    assert!(!matches!(answer.try_recv(), Ok(Err(_))), "not refused as a rollback");
    let set = own_entry(sim.peer("alice"), "k");
    assert_eq!((set.seq, set.ts), (ahead.seq + 1, now.unix_ms), "after the last one; dated by the clock");
    assert_eq!(set.value_bytes().as_deref(), Some(&b"now"[..]));
    let alice = sim.peer("alice");
    let (reply, mut answer) = oneshot::channel();
    alice.service.kv_put(repo(), "k".into(), None, None, reply, now, &mut alice.disk);
    assert!(!matches!(answer.try_recv(), Ok(Err(_))), "rm works too");
    assert_eq!(own_entry(sim.peer("alice"), "k").seq, ahead.seq + 2);
}

#[test]
fn a_record_dated_far_ahead_is_not_kept_from_a_peer() {
    let mut sim = Sim::new(&["alice", "bob"]);
    let now = sim.now;
    let bob_key = sim.peer("bob").key.clone();
    let day_ahead = now.unix_ms + 86_400_000;
    let entry = Entry::sign(&bob_key, &repo().id, "k", Some(b"future"), day_ahead, day_ahead).expect("an entry");
    let mut record = crate::proto::kv::Record::new(&repo().id, "k");
    record.entries.push(entry);
    let put = kad::Record::new(kad::RecordKey::new(&record_key(&repo().id, "k")), record.encode());
    let alice = sim.peer("alice");
    alice.service.kad_inbound(sim_peer_id(&bob_key), put.clone(), now, &mut alice.disk);
    assert!(alice.disk.records.is_empty(), "refused");
    // A lookup does not take it from a copy either.
    let (reply, mut answer) = oneshot::channel();
    alice.service.kv_get(repo().id, "k".into(), reply, now, &mut alice.disk);
    sim.settle("alice");
    let Some(Io::GetRecord { query, .. }) = sim.peer("alice").queries.pop() else { panic!("a lookup") };
    let alice = sim.peer("alice");
    alice.service.kv_found(query, Some(PeerId::random()), &put, 1, now, &mut alice.disk);
    alice.service.kv_query_done(query, 1, now, &mut alice.disk);
    assert_eq!(answer.try_recv().expect("answered").expect("no failure").record, None, "nothing found");
}

fn sim_peer_id(key: &Keypair) -> PeerId {
    key.public().to_peer_id()
}

#[test]
fn a_full_record_store_is_said_in_words() {
    let mut sim = Sim::new(&["alice"]);
    let now = sim.now;
    let alice = sim.peer("alice");
    alice.disk.records_full = true;
    let (reply, mut answer) = oneshot::channel();
    alice.service.kv_put(repo(), "k".into(), Some(b"v".to_vec()), None, reply, now, &mut alice.disk);
    let failure = answer.try_recv().expect("answered at once").expect_err("refused");
    assert_eq!(failure.message(), "this node's DHT store is full; not stored");
}

#[test]
fn on_a_full_disk_nothing_is_sent_that_was_not_stored_and_the_outbox_follows_the_store_back() {
    let mut sim = Sim::new(&["alice", "bob"]);
    sim.init("alice");
    sim.init("bob");
    sim.connect("alice", "bob");
    sim.peer("alice").disk.full = true;
    let refused = sim.announce("alice", "while full").expect_err("refused");
    assert!(refused.message().contains("cannot store the announcement: the disk holding /sim is full"), "{refused}");
    let now = sim.now;
    let alice = sim.peer("alice");
    let envelope = Envelope::decode(&chat(&alice.key, "hello", 1, now.unix_ms)).expect("an envelope");
    let (reply, answer) = oneshot::channel::<Result<ChatSent, Failure>>();
    alice.service.chat_send(repo(), envelope, None, reply, now, &mut alice.disk);
    let (reply, kv_answer) = oneshot::channel();
    alice.service.kv_put(repo(), "k".into(), Some(b"v".to_vec()), None, reply, now, &mut alice.disk);
    sim.end_of_batch("alice");
    let failed = answer.blocking_recv().expect("an answer").expect_err("not sent");
    assert!(failed.message().contains("is full"), "{failed}");
    assert!(kv_answer.blocking_recv().expect("an answer").expect_err("not stored").message().contains("is full"));
    assert!(sim.peer("alice").in_flight.is_empty(), "nothing published");
    assert!(sim.peer("alice").queries.is_empty(), "nothing put in the DHT");
    // Space again; the store, reopened, holds what was durable: the outbox follows it.
    let alice = sim.peer("alice");
    alice.disk.full = false;
    let stored: Vec<(u64, OutboxEntry)> = alice.disk.outbox.iter().map(|(s, (e, _))| (*s, e.clone())).collect();
    alice.service.reload_outbox(stored);
    assert_eq!(sim.announce("alice", "after").map(|_| ()), Ok(()));
    sim.deliver("alice");
    assert_eq!(sim.peer("bob").announcements(), ["after"]);
}

#[test]
fn after_a_repair_our_entries_are_fetched_back_from_peers_copies() {
    let mut sim = Sim::new(&["alice", "bob"]);
    let (now, alice_key) = (sim.now, sim.peer("alice").key.clone());
    let loaded = Loaded { restore: vec![(repo().id, "k".to_string())], ..Loaded::default() };
    sim.peer("alice").service = Service::new(me(&alice_key), &[], loaded, now);
    assert_eq!(sim.peer("alice").service.restoring(), 1);
    sim.tick("alice");
    assert!(sim.peer("alice").queries.is_empty(), "no lookup without peers to ask");
    sim.connect("alice", "bob");
    sim.tick("alice");
    let Some(Io::GetRecord { query, .. }) = sim.peer("alice").queries.pop() else { panic!("a lookup") };
    // Bob's copy holds alice's entry (and his own).
    let mut record = crate::proto::kv::Record::new(&repo().id, "k");
    let bob_key = sim.peer("bob").key.clone();
    for (key, value) in [(&alice_key, "alice's"), (&bob_key, "bob's")] {
        record
            .merge_entry(Entry::sign(key, &repo().id, "k", Some(value.as_bytes()), 5, 5).expect("an entry"), 5)
            .expect("merges");
    }
    let copy = kad::Record::new(kad::RecordKey::new(&record_key(&repo().id, "k")), record.encode());
    let alice = sim.peer("alice");
    alice.service.kv_found(query, Some(sim_peer_id(&bob_key)), &copy, 1, now, &mut alice.disk);
    alice.service.kv_query_done(query, 1, now, &mut alice.disk);
    assert_eq!(alice.service.restoring(), 0);
    let kept = alice.disk.records.get(&copy.key).expect("kept as our copy");
    let kept = crate::proto::kv::Record::decode(&kept.value, &repo().id, copy.key.as_ref()).expect("a record");
    assert_eq!(kept.entries.len(), 2, "ours and bob's");
    assert_eq!(kept.values().len(), 2);
}

#[test]
fn a_key_no_peer_has_is_looked_up_three_times_then_given_up() {
    let mut sim = Sim::new(&["alice", "bob"]);
    let (now, alice_key) = (sim.now, sim.peer("alice").key.clone());
    let loaded = Loaded { restore: vec![(repo().id, "gone".to_string())], ..Loaded::default() };
    sim.peer("alice").service = Service::new(me(&alice_key), &[], loaded, now);
    sim.connect("alice", "bob");
    for round in 1..=3 {
        sim.advance(Duration::from_secs(10));
        sim.tick("alice");
        let Some(Io::GetRecord { query, .. }) = sim.peer("alice").queries.pop() else { panic!("lookup {round}") };
        let alice = sim.peer("alice");
        alice.service.kv_query_done(query, 1, now, &mut alice.disk);
    }
    assert_eq!(sim.peer("alice").service.restoring(), 0, "given up");
    sim.advance(Duration::from_secs(10));
    sim.tick("alice");
    assert!(!sim.peer("alice").queries.iter().any(|q| matches!(q, Io::GetRecord { .. })), "no fourth lookup");
}

/// The provider of each fetch attempt `name` asked its mirror worker for, in order (None: the
/// mirror alone), and forgets them.
fn attempts(sim: &mut Sim, name: &str) -> Vec<(u64, Option<PeerId>)> {
    let ops = std::mem::take(&mut sim.peer(name).mirror);
    ops.into_iter()
        .filter_map(|io| match io {
            Io::Mirror(mirror::MirrorOp::Attempt { job, provider, .. }) => Some((job, provider)),
            _ => None,
        })
        .collect()
}

fn fact(author: PeerId, signed: &str, advertised: &str) -> mirror::Fact {
    mirror::Fact {
        author: author.to_string(),
        name: "refs/heads/main".into(),
        signed: signed.into(),
        advertised: Some(advertised.into()),
        present: true,
        older: false,
    }
}

#[test]
fn an_announced_commit_is_fetched_from_its_author_first_and_a_liar_is_distrusted() {
    let mut sim = Sim::new(&["alice", "bob", "carol"]);
    for name in ["alice", "bob", "carol"] {
        sim.init(name);
    }
    sim.peer("bob").service.set_replicate(true);
    sim.connect("alice", "bob");
    sim.connect("carol", "bob");
    sim.announce("alice", "one").expect("queued");
    sim.deliver("alice");
    let alice = sim.id("alice");
    let carol = sim.id("carol");
    let tried = attempts(&mut sim, "bob");
    assert_eq!(tried.iter().map(|(_, p)| *p).collect::<Vec<_>>(), [Some(alice)], "the author first");
    let job = tried[0].0;
    let signed = hex::encode(&sha2::Sha256::digest(b"one")[..20]);
    // Alice's stream breaks: carol, the topic's other peer, is asked.
    let now = sim.now;
    let broke = mirror::AttemptReport::Failed("connection reset".into());
    sim.peer("bob").service.mirror_attempted(job, Some(alice), broke, now);
    sim.settle("bob");
    assert_eq!(attempts(&mut sim, "bob"), [(job, Some(carol))], "then the topic's next peer");
    // Carol says alice's main is something alice never signed: dropped, what she sent thrown away.
    let report = mirror::AttemptReport::Facts(vec![fact(alice, &signed, "forged")]);
    sim.peer("bob").service.mirror_attempted(job, Some(carol), report, now);
    sim.settle("bob");
    let ops = std::mem::take(&mut sim.peer("bob").mirror);
    assert!(matches!(ops[0], Io::Mirror(mirror::MirrorOp::Discard { .. })), "what she sent is thrown away");
    assert_eq!(sim.peer("bob").service.distrusted(now), [carol.to_string()]);
    // Nobody else (the DHT knows no one): a background job tries again a moment later, and
    // never carol.
    let asked: Vec<u64> = ops
        .iter()
        .filter_map(|io| match io {
            Io::FindProviders { job, .. } => Some(*job),
            _ => None,
        })
        .collect();
    assert_eq!(asked, [job], "then the DHT: {ops:?}");
    sim.peer("bob").service.mirror_providers(job, vec![carol], true, now);
    sim.settle("bob");
    assert!(attempts(&mut sim, "bob").is_empty(), "carol is not asked again");
    sim.advance(Duration::from_secs(1));
    sim.tick("bob");
    assert_eq!(attempts(&mut sim, "bob"), [(job, Some(alice))], "alice again, not carol");
    let now = sim.now;
    let report = mirror::AttemptReport::Facts(vec![fact(alice, &signed, &signed)]);
    sim.peer("bob").service.mirror_attempted(job, Some(alice), report, now);
    sim.settle("bob");
    let ops = std::mem::take(&mut sim.peer("bob").mirror);
    assert!(matches!(&ops[..], [Io::Mirror(mirror::MirrorOp::Settle { accept, .. })] if accept.len() == 1), "{ops:?}");
    let accepted = vec![(alice.to_string(), "refs/heads/main".to_string(), signed.clone())];
    sim.peer("bob").service.mirror_settled(job, Ok(accepted), now);
    sim.settle("bob");
    assert!(sim.peer("bob").mirror.is_empty(), "nothing more to do");
    // An author's own node is never a liar about its refs: ahead of the signed tip, it is not
    // blamed, and the signed value is what is taken.
    sim.announce("alice", "two").expect("queued");
    sim.deliver("alice");
    let tried = attempts(&mut sim, "bob");
    assert_eq!(tried.iter().map(|(_, p)| *p).collect::<Vec<_>>(), [Some(alice)]);
    let signed = hex::encode(&sha2::Sha256::digest(b"two")[..20]);
    let report = mirror::AttemptReport::Facts(vec![fact(alice, &signed, "three")]);
    let now = sim.now;
    sim.peer("bob").service.mirror_attempted(tried[0].0, Some(alice), report, now);
    sim.settle("bob");
    let ops = std::mem::take(&mut sim.peer("bob").mirror);
    assert!(
        matches!(&ops[..], [Io::Mirror(mirror::MirrorOp::Settle { accept, .. })] if accept[0].2 == signed),
        "{ops:?}"
    );
    assert_eq!(sim.peer("bob").service.distrusted(now), [carol.to_string()], "alice is not distrusted");
}

#[test]
fn without_replication_an_announcement_fetches_nothing() {
    let mut sim = Sim::new(&["alice", "bob"]);
    sim.init("alice");
    sim.init("bob");
    sim.peer("bob").service.set_replicate(false);
    sim.connect("alice", "bob");
    sim.announce("alice", "one").expect("queued");
    sim.deliver("alice");
    assert!(attempts(&mut sim, "bob").is_empty());
}

#[test]
fn a_sync_tries_the_mirror_then_the_topic_then_the_dht_then_says_what_is_missing() {
    let mut sim = Sim::new(&["alice", "bob"]);
    sim.init("alice");
    sim.init("bob");
    sim.connect("alice", "bob");
    let alice = sim.id("alice");
    let key = sim.peer("alice").key.clone();
    let signed = "c".repeat(40);
    let refs = format!("{{\"refs/heads/main\":\"{signed}\"}}");
    let record = copy(&key, crate::proto::kv::REFS_KEY, &refs, 1);
    let record = crate::proto::kv::Record::decode(&record.value, &repo().id, record.key.as_ref()).expect("decodes");
    let now = sim.now;
    let (reply, mut answer) = oneshot::channel();
    let bob = sim.peer("bob");
    bob.service.mirror_sync(repo().id, None, reply, now, &mut bob.disk);
    let job = 1;
    bob.service.mirror_lookup_done(job, Ok(KvFound { record: Some(record), requests: 1 }), &mut bob.disk);
    sim.settle("bob");
    assert_eq!(attempts(&mut sim, "bob"), [(job, None)], "the mirror alone first");
    let absent = mirror::Fact { present: false, advertised: None, ..fact(alice, &signed, &signed) };
    sim.peer("bob").service.mirror_attempted(job, None, mirror::AttemptReport::Facts(vec![absent]), now);
    sim.settle("bob");
    assert_eq!(attempts(&mut sim, "bob"), [(job, Some(alice))], "then the topic's peers");
    let failed = mirror::AttemptReport::Failed("connection reset".into());
    sim.peer("bob").service.mirror_attempted(job, Some(alice), failed, now);
    sim.settle("bob");
    let ops = std::mem::take(&mut sim.peer("bob").mirror);
    assert!(ops.iter().any(|io| matches!(io, Io::FindProviders { .. })), "then the DHT: {ops:?}");
    sim.peer("bob").service.mirror_providers(job, vec![], true, now);
    sim.settle("bob");
    let failure = answer.try_recv().expect("answered").expect_err("nothing could be had");
    assert!(failure.message().contains("refs/heads/main"), "{failure}");
    assert!(failure.message().contains("connection reset"), "{failure}");
}

#[test]
fn a_sync_that_reaches_no_peer_looks_again_before_it_says_so() {
    let mut sim = Sim::new(&["alice", "bob"]);
    sim.init("alice");
    sim.init("bob");
    let alice = sim.id("alice");
    let key = sim.peer("alice").key.clone();
    let signed = "c".repeat(40);
    let refs = format!("{{\"refs/heads/main\":\"{signed}\"}}");
    let decoded = || {
        let record = copy(&key, crate::proto::kv::REFS_KEY, &refs, 1);
        crate::proto::kv::Record::decode(&record.value, &repo().id, record.key.as_ref()).expect("decodes")
    };
    let absent = mirror::Fact { present: false, advertised: None, ..fact(alice, &signed, &signed) };
    let unreachable = || mirror::AttemptReport::Failed("no addresses for the peer".into());
    let now = sim.now;
    let (reply, mut answer) = oneshot::channel();
    let bob = sim.peer("bob");
    bob.service.mirror_sync(repo().id, None, reply, now, &mut bob.disk);
    let job = 1;
    bob.service.mirror_lookup_done(job, Ok(KvFound { record: Some(decoded()), requests: 1 }), &mut bob.disk);
    sim.settle("bob");
    assert_eq!(attempts(&mut sim, "bob"), [(job, None)], "the mirror alone first");
    sim.peer("bob").service.mirror_attempted(job, None, mirror::AttemptReport::Facts(vec![absent.clone()]), now);
    sim.settle("bob");
    assert_eq!(attempts(&mut sim, "bob"), [(job, Some(alice))], "no topic peer: the author herself");
    sim.peer("bob").service.mirror_attempted(job, Some(alice), unreachable(), now);
    sim.settle("bob");
    sim.peer("bob").service.mirror_providers(job, vec![], true, now);
    sim.settle("bob");
    assert!(answer.try_recv().is_err(), "not answered while it may still reach a peer");
    // Alice is connected now (the node had just started): the next look reaches her.
    sim.connect("alice", "bob");
    sim.peer("bob").mirror.clear();
    sim.advance(Duration::from_secs(1));
    sim.tick("bob");
    assert_eq!(attempts(&mut sim, "bob"), [(job, Some(alice))], "tried again once connected");
    let now = sim.now;
    let failed = mirror::AttemptReport::Failed("connection reset".into());
    sim.peer("bob").service.mirror_attempted(job, Some(alice), failed, now);
    sim.settle("bob");
    assert!(answer.try_recv().expect("answered").is_err(), "a peer was reached and failed: no more looks");

    // Reaching nobody, it says so after a few looks (1 + 2 + 3 s), the DHT asked once.
    let mut sim = Sim::new(&["alice", "bob"]);
    sim.init("bob");
    let (reply, mut answer) = oneshot::channel();
    let now = sim.now;
    let bob = sim.peer("bob");
    bob.service.mirror_sync(repo().id, None, reply, now, &mut bob.disk);
    bob.service.mirror_lookup_done(job, Ok(KvFound { record: Some(decoded()), requests: 1 }), &mut bob.disk);
    sim.settle("bob");
    sim.peer("bob").service.mirror_attempted(job, None, mirror::AttemptReport::Facts(vec![absent]), now);
    sim.settle("bob");
    let mut waited = 0;
    loop {
        for (job, provider) in attempts(&mut sim, "bob") {
            let now = sim.now;
            sim.peer("bob").service.mirror_attempted(job, provider, unreachable(), now);
        }
        let asked: Vec<u64> = std::mem::take(&mut sim.peer("bob").mirror)
            .into_iter()
            .filter_map(|io| match io {
                Io::FindProviders { job, .. } => Some(job),
                _ => None,
            })
            .collect();
        let now = sim.now;
        for job in &asked {
            sim.peer("bob").service.mirror_providers(*job, vec![], true, now);
        }
        sim.settle("bob");
        if answer.try_recv().is_ok() {
            break;
        }
        waited += 1;
        assert!(waited <= 7, "answered within the looks");
        sim.advance(Duration::from_secs(1));
        sim.tick("bob");
    }
    assert!(waited >= 6, "looked for 1 + 2 + 3 s: {waited}");
}

/// The answer to a request that waits for one put: the put is carried out (it reached no peer),
/// and Kademlia said it is done.
fn answered<T>(sim: &mut Sim, name: &str, answer: &mut oneshot::Receiver<Result<T, Failure>>) -> Result<T, Failure> {
    sim.settle(name);
    let puts: Vec<QueryRef> = sim
        .peer(name)
        .queries
        .iter()
        .filter_map(|io| match io {
            Io::PutRecord { query, .. } => Some(*query),
            _ => None,
        })
        .collect();
    let now = sim.now;
    let peer = sim.peer(name);
    for query in puts {
        peer.service.kv_query_done(query, 0, now, &mut peer.disk);
    }
    answer.try_recv().expect("answered")
}

fn kv_put(sim: &mut Sim, key: &str, value: Option<&str>) -> Result<KvStored, Failure> {
    let now = sim.now;
    let alice = sim.peer("alice");
    let (reply, mut answer) = oneshot::channel();
    alice.service.kv_put(repo(), key.into(), value.map(|v| v.as_bytes().to_vec()), None, reply, now, &mut alice.disk);
    answered(sim, "alice", &mut answer)
}

fn kv_list(sim: &mut Sim, all: bool) -> Vec<(String, bool, bool)> {
    let alice = sim.peer("alice");
    let (reply, mut answer) = oneshot::channel();
    alice.service.kv_list(&repo().id, None, all, reply, &mut alice.disk);
    let page = answer.try_recv().expect("answered").expect("a page");
    page.items.into_iter().map(|k| (k.key, k.removed, k.internal)).collect()
}

#[test]
fn git_p2ps_own_keys_are_not_the_users_and_ls_shows_only_live_keys_of_ours() {
    let mut sim = Sim::new(&["alice", "bob"]);
    sim.init("alice");
    sim.announce("alice", "one").expect("queued");
    sim.advance(super::refs::SETTLE);
    sim.tick("alice");
    for key in ["refs", "refs/heads/main", "notes/commits", "notes/commits/abc"] {
        for value in [Some("garbage"), None] {
            let refused = kv_put(&mut sim, key, value).expect_err("refused");
            assert!(refused.message().contains("reserved"), "{key}: {refused}");
        }
    }
    let alice = sim.peer("alice");
    let refs = own_entry(alice, crate::proto::kv::REFS_KEY).value_bytes().expect("our refs index");
    assert!(String::from_utf8_lossy(&refs).contains("refs/heads/main"), "the refs are intact");

    // rm: only a key that holds a value of ours.
    let none = kv_put(&mut sim, "nosuchkey", None).expect_err("nothing to remove");
    assert!(none.message().starts_with("no such key"), "{none}");
    kv_put(&mut sim, "status", Some("green")).expect("set");
    kv_put(&mut sim, "gone", Some("soon")).expect("set");
    kv_put(&mut sim, "gone", None).expect("removed");
    let again = kv_put(&mut sim, "gone", None).expect_err("removed already");
    assert!(again.message().starts_with("no such key"), "{again}");
    // Bob's value of a key alice never set: hers to keep, not alice's to remove.
    let now = sim.now;
    let bob_key = sim.peer("bob").key.clone();
    let alice = sim.peer("alice");
    alice.service.kad_inbound(sim_peer_id(&bob_key), copy(&bob_key, "bobs", "his", 1), now, &mut alice.disk);
    let others = kv_put(&mut sim, "bobs", None).expect_err("not ours");
    assert!(others.message().contains("1 other author"), "{others}");

    let keys: Vec<String> = kv_list(&mut sim, false).into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(keys, ["status"], "neither the removed key nor git-p2p's own");
    let all = kv_list(&mut sim, true);
    assert!(all.contains(&("gone".into(), true, false)), "{all:?}");
    assert!(all.contains(&("refs".into(), false, true)) && all.contains(&("refs/heads/main".into(), false, true)));
}

#[test]
fn refs_published_again_unpublish_what_is_gone_and_so_does_a_deleted_branch() {
    let mut sim = Sim::new(&["alice"]);
    let oid = |c: char| c.to_string().repeat(40);
    let publish = |sim: &mut Sim, refs: &[(&str, String)]| {
        let now = sim.now;
        let refs: BTreeMap<String, String> = refs.iter().map(|(r, o)| (r.to_string(), o.clone())).collect();
        let alice = sim.peer("alice");
        let (reply, mut answer) = oneshot::channel();
        alice.service.refs_publish(repo(), refs, None, reply, now, &mut alice.disk);
        answered(sim, "alice", &mut answer)
    };
    let index = |sim: &mut Sim| -> Vec<String> {
        let value = own_entry(sim.peer("alice"), crate::proto::kv::REFS_KEY).value_bytes().expect("an index");
        serde_json::from_slice::<BTreeMap<String, String>>(&value).expect("a map").into_keys().collect()
    };
    let all = [("refs/heads/main", oid('a')), ("refs/heads/topic", oid('b')), ("refs/tags/v1", oid('c'))];
    let published = publish(&mut sim, &all).expect("published");
    assert_eq!((published.count, published.removed.len()), (3, 0));
    let published = publish(&mut sim, &all[..1]).expect("published");
    assert_eq!(published.removed, ["refs/heads/topic", "refs/tags/v1"]);
    assert_eq!(index(&mut sim), ["refs/heads/main"]);
    assert_eq!(own_entry(sim.peer("alice"), "refs/heads/topic").value, None, "a tombstone");
    assert_eq!(own_entry(sim.peer("alice"), "refs/heads/main").value_bytes(), Some(oid('a').into_bytes()));
    let bad = publish(&mut sim, &[("refs/heads/a..b", oid('a'))]).expect_err("not a ref");
    assert!(bad.message().contains("not a ref"), "{bad}");

    // The hook's side found a branch we published gone from the repository.
    publish(&mut sim, &all[..2]).expect("published");
    let now = sim.now;
    let alice = sim.peer("alice");
    assert_eq!(alice.service.published_refs(&repo().id, &alice.disk), ["refs/heads/main", "refs/heads/topic"]);
    alice.service.refs_gone(&repo().id, &["refs/heads/topic".to_string()], now, &mut alice.disk);
    assert_eq!(index(&mut sim), ["refs/heads/main"]);
    assert_eq!(own_entry(sim.peer("alice"), "refs/heads/topic").value, None);
}

#[test]
fn an_unregistered_repository_leaves_its_topics_and_the_store() {
    let mut sim = Sim::new(&["alice"]);
    sim.init("alice");
    sim.settle("alice");
    let alice = sim.peer("alice");
    assert!(!alice.topics.is_empty());
    let (reply, mut answer) = oneshot::channel();
    alice.service.unregister(repo().id, reply, &mut alice.disk);
    assert_eq!(answer.try_recv().expect("answered").expect("unregistered").name, "proj");
    sim.settle("alice");
    let alice = sim.peer("alice");
    assert!(alice.topics.is_empty(), "every topic of it left");
    assert!(alice.service.repos().is_empty() && alice.disk.repos.is_empty());
    let (reply, mut answer) = oneshot::channel();
    alice.service.unregister(repo().id, reply, &mut alice.disk);
    let failure = answer.try_recv().expect("answered").expect_err("not registered");
    assert!(failure.message().contains("not registered"), "{failure}");
}

mod sync;
/// How many lookups of the repository's peers `name` started since the last call.
fn repo_lookups(sim: &mut Sim, name: &str) -> usize {
    let ops = std::mem::take(&mut sim.peer(name).mirror);
    ops.iter().filter(|io| matches!(io, Io::FindRepoPeers { .. })).count()
}

#[test]
fn a_repositorys_providers_are_looked_up_and_dialled_until_a_peer_of_it_is_connected() {
    let mut sim = Sim::new(&["alice", "bob", "carol"]);
    sim.init("alice");
    sim.init("bob");
    sim.tick("alice");
    let provided = sim.peer("alice").mirror.iter().any(|io| matches!(io, Io::Provide(_)));
    assert!(provided, "a registered repository is provided: {:?}", sim.peer("alice").mirror);
    assert_eq!(repo_lookups(&mut sim, "alice"), 1, "and its peers looked up at once");

    // The DHT names bob, carol and alice herself: the others are dialled (no addresses: the
    // swarm asks Kademlia and identify where they are), and the lookup may end there.
    let (now, ids) = (sim.now, [sim.id("alice"), sim.id("bob"), sim.id("carol")]);
    let enough = sim.peer("alice").service.repo_providers(&repo().id, ids.to_vec(), false, now);
    assert!(enough, "a lookup that found providers to dial ends");
    sim.settle("alice");
    assert_eq!(sim.peer("alice").dialled(), ids[1..].to_vec());
    assert!(sim.peer("alice").dials.iter().all(|d| d.addrs.is_empty()));
    sim.peer("alice").service.repo_providers(&repo().id, vec![], true, now);

    // A provider just dialled is not dialled again by the next lookup (others are); one that
    // names nobody new goes on.
    let dave = PeerId::random();
    assert!(!sim.peer("alice").service.repo_providers(&repo().id, vec![ids[1]], false, now), "nobody new");
    sim.peer("alice").service.repo_providers(&repo().id, vec![ids[1], dave], false, now);
    sim.settle("alice");
    assert_eq!(sim.peer("alice").dialled().last(), Some(&dave), "only the one not dialled lately");

    // Nobody connected yet: looked up again 500 ms after the last lookup ended for 10 s, one
    // lookup at a time (one that does not end holds back the next for 10 s), then later each
    // time (1 s, 2 s, ...). Provided again meanwhile, after 5 s, 10 s, ...
    let provides = |sim: &mut Sim| sim.peer("alice").mirror.iter().filter(|io| matches!(io, Io::Provide(_))).count();
    let (mut lookups, mut provided) = (0, 0);
    for _ in 0..16 {
        sim.advance(Duration::from_millis(500));
        sim.tick("alice");
        provided += provides(&mut sim);
        lookups += repo_lookups(&mut sim, "alice");
        let now = sim.now;
        sim.peer("alice").service.repo_providers(&repo().id, vec![], true, now);
    }
    assert!((14..=16).contains(&lookups), "often at first: {lookups}");
    let mut stuck = 0;
    for _ in 0..20 {
        sim.advance(Duration::from_millis(500));
        sim.tick("alice");
        provided += provides(&mut sim);
        stuck += repo_lookups(&mut sim, "alice");
    }
    assert_eq!(stuck, 1, "a lookup that does not end holds back the next for 10 s");
    let mut slow = 0;
    for _ in 0..20 {
        sim.advance(Duration::from_millis(500));
        sim.tick("alice");
        provided += provides(&mut sim);
        let now = sim.now;
        sim.peer("alice").service.repo_providers(&repo().id, vec![], true, now);
        slow += repo_lookups(&mut sim, "alice");
    }
    assert!((3..=5).contains(&slow), "then after 1, 2, 4 s: {slow}");
    assert_eq!(provided, 2, "provided again after 5 s and 15 s while nobody is connected");
    let now = sim.now;
    sim.peer("alice").service.repo_providers(&repo().id, vec![], true, now);

    // Bob, a peer of the repository, connected: no more lookups for 10 minutes.
    sim.connect("alice", "bob");
    for _ in 0..60 {
        sim.advance(Duration::from_secs(5));
        sim.tick("alice");
    }
    assert_eq!(repo_lookups(&mut sim, "alice"), 0, "a peer of the repository is connected");
    sim.advance(Duration::from_secs(600));
    sim.tick("alice");
    assert_eq!(repo_lookups(&mut sim, "alice"), 1, "looked up again after 10 minutes");

    // Our addresses changed (a relay reserved a slot): provided again with them.
    let now = sim.now;
    sim.peer("alice").service.our_addresses_changed(now);
    sim.tick("alice");
    assert!(sim.peer("alice").mirror.iter().any(|io| matches!(io, Io::Provide(_))), "provided again");
}

#[test]
fn in_a_crowd_an_announced_commit_is_fetched_seconds_later_with_what_came_meanwhile() {
    let others = ["carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"];
    let names: Vec<&str> = ["alice", "bob"].into_iter().chain(others).collect();
    let mut sim = Sim::new(&names);
    for name in &names {
        sim.init(name);
    }
    sim.peer("bob").service.set_replicate(true);
    for name in names.iter().filter(|n| **n != "bob") {
        sim.connect(name, "bob");
    }
    assert!(names.len() - 1 > mirror::HERD, "bob is in a crowd");
    sim.announce("alice", "one").expect("queued");
    sim.deliver("alice");
    assert_eq!(attempts(&mut sim, "bob"), [], "not while every peer hears of it at once");
    sim.advance(Duration::from_millis(300));
    sim.announce("alice", "two").expect("queued");
    sim.deliver("alice");
    assert_eq!(attempts(&mut sim, "bob"), [], "the next commit joins the waiting fetch");
    sim.advance(Duration::from_millis(700));
    sim.tick("bob");
    assert_eq!(attempts(&mut sim, "bob"), [], "the crowd waits a few seconds");
    sim.advance(mirror::CROWD_WAIT + mirror::CROWD_SPREAD);
    sim.tick("bob");
    let tried = attempts(&mut sim, "bob");
    assert_eq!(
        tried.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
        [Some(sim.id("alice"))],
        "one fetch, the author first"
    );
}

#[test]
fn among_few_peers_an_announced_commit_is_fetched_at_once() {
    let mut sim = Sim::new(&["alice", "bob"]);
    sim.init("alice");
    sim.init("bob");
    sim.peer("bob").service.set_replicate(true);
    sim.connect("alice", "bob");
    sim.announce("alice", "one").expect("queued");
    sim.deliver("alice");
    assert_eq!(attempts(&mut sim, "bob").len(), 1, "at once");
}

#[test]
fn over_max_peers_a_node_keeps_its_repositorys_peers_and_the_oldest_others_and_closes_busy_newcomers() {
    let mut sim = Sim::new(&["alice", "bob", "carol", "dave", "erin"]);
    sim.init("alice");
    sim.init("bob");
    // At most 3 peers: 2 kept, one slot left for what comes and goes.
    sim.peer("alice").service.set_max_peers(3);
    let (bob, carol, dave, erin) = (sim.id("bob"), sim.id("carol"), sim.id("dave"), sim.id("erin"));
    for name in ["carol", "dave", "bob", "erin"] {
        sim.connect("alice", name);
        sim.advance(Duration::from_millis(100));
    }
    assert_eq!(sim.peer("alice").kept, HashSet::from([bob, carol]), "bob shares a repository; carol came first");
    sim.tick("alice");
    assert!(sim.peer("alice").disconnects.is_empty(), "the others' connections close once idle");
    // Something keeps using dave's and erin's connections: closed after a while, once.
    sim.advance(bound::LINGER);
    sim.tick("alice");
    sim.tick("alice");
    let mut closed = sim.peer("alice").disconnects.clone();
    closed.sort();
    let mut expected = vec![dave, erin];
    expected.sort();
    assert_eq!(closed, expected);
    let now = sim.now;
    for peer in [dave, erin] {
        sim.peer("alice").service.disconnected(&peer, ConnectionId::new_unchecked(1), false, now);
    }
    sim.settle("alice");
    // Kademlia names dave again: alice has her 2, she does not dial more by herself.
    sim.peer("alice").service.routing_updated(dave, vec!["/ip4/10.0.0.9/tcp/1".parse().unwrap()], now);
    sim.settle("alice");
    assert!(sim.peer("alice").dialled().is_empty(), "no room: {:?}", sim.peer("alice").dialled());
}

#[test]
fn a_node_full_of_peers_it_keeps_closes_the_youngest_it_does_not_need_for_a_peer_of_its_repository() {
    let mut sim = Sim::new(&["alice", "bob", "carol", "dave"]);
    sim.init("alice");
    sim.tick("alice");
    sim.peer("alice").service.set_max_peers(2);
    let (bob, carol, dave) = (sim.id("bob"), sim.id("carol"), sim.id("dave"));
    for name in ["carol", "dave"] {
        sim.connect("alice", name);
        sim.advance(Duration::from_millis(100));
    }
    assert_eq!(sim.peer("alice").kept, HashSet::from([carol, dave]));
    // The DHT names bob as a peer of alice's repository: dave (the younger) makes room for him.
    let now = sim.now;
    sim.peer("alice").service.repo_providers(&repo().id, vec![bob], false, now);
    sim.settle("alice");
    let dialled = sim.peer("alice").dialled();
    assert_eq!(sim.peer("alice").disconnects, vec![dave], "dialled: {dialled:?} bob {bob} carol {carol}");
    assert!(sim.peer("alice").dialled().is_empty(), "bob waits for dave's slot");
    assert!(sim.peer("alice").kept.contains(&bob), "the swarm may close others for bob");
    sim.peer("alice").service.disconnected(&dave, ConnectionId::new_unchecked(1), false, now);
    sim.settle("alice");
    assert_eq!(sim.peer("alice").dialled(), vec![bob], "dialled once the slot is free");
}
