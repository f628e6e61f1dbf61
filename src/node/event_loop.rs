//! The event loop: the only owner of the Swarm. It reacts to swarm events, control commands and
//! a maintenance tick, one at a time.
//!
//! States: Running -> (Shutdown command, SIGTERM or SIGINT) -> Stopping, where it replies to the
//! command, drops the swarm (closing connections) and returns; the store is flushed on drop.

mod hook_notes;

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use libp2p::futures::StreamExt;
use libp2p::gossipsub::TopicHash;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, identify, kad, mdns, ping, Multiaddr, PeerId, Swarm};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::behaviour::{name_from_agent, Behaviour, BehaviourEvent, IDENTIFY_PROTOCOL, KAD_PROTOCOL};
use super::peers::{PeerTable, Redial};
use crate::bridge::{Bridge, Inbound};
use crate::control::proto::{ConfigInForce, NodeEvent, NodeStatus, NostrStatus, Outcome, Request, Response};
use crate::proto::announce::{Announcement, FeedEntry};
use crate::proto::chat::{ChatEntry, ChatMessage};
use crate::proto::envelope::Envelope;
use crate::proto::outbox::OutboxEntry;
use crate::proto::repo::{RepoId, RepoInfo};
use crate::store::Store;
use hook_notes::{hooked_repos, spool_changed, survey_hooks};

/// How often the loop looks for peers to redial.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);
/// Kademlia bootstrap (a self-lookup that discovers peers near us) at most this often when
/// triggered by new peers; Kademlia also bootstraps by itself every 5 minutes.
const KAD_BOOTSTRAP_MIN_INTERVAL: Duration = Duration::from_secs(5);
/// Beyond this many connected peers we stop dialling peers that Kademlia or mDNS tell us about.
const TARGET_PEERS: usize = 50;
/// How many address-book peers are dialled at start.
const ADDRESS_BOOK_DIALS: usize = 50;

/// A control request with the channel its answer goes back on.
pub struct Command {
    pub req: Request,
    pub reply: oneshot::Sender<Outcome>,
}

/// A published announcement stays in the durable outbox this long. gossipsub's `publish` only
/// queues the message on the connections: a node killed right after it would lose it, so
/// until then a restarted node publishes it again (receivers drop what they already have).
const PUBLISH_GRACE: Duration = Duration::from_secs(5);

/// Chat messages one author may have stored per second on average, and in a burst: a flood
/// from one peer is dropped (and penalised) instead of filling the history.
const CHAT_RATE: f64 = 20.0;
const CHAT_BURST: f64 = 100.0;
/// Authors tracked by the rate limiter before it starts afresh (bounded memory).
const CHAT_RATE_AUTHORS: usize = 10_000;

/// A control request waiting for a Kademlia query.
enum PendingKad {
    Put { reply: oneshot::Sender<Outcome> },
    Get { reply: oneshot::Sender<Outcome>, merged: crate::proto::kv::Record, found: bool, copies: usize },
}

/// A `kv get` answers once this many peers sent their copy (merged with ours), without waiting
/// for the lookup to ask all 20 closest peers: a writer's put reached several of them.
const GET_COPIES: usize = 3;

/// What `handle_request` decided: answer now, or when a DHT query finishes.
enum Answer {
    Now(Outcome),
    Later(libp2p::kad::QueryId, PendingKadKind),
}

enum PendingKadKind {
    Put,
    Get(crate::proto::kv::Record, bool),
}

/// What a subscribed topic carries.
#[derive(Debug, Clone)]
enum Room {
    Commits { repo: RepoId },
    Chat { repo: RepoId, thread: Option<String> },
}

/// Control requests handled together before one group commit.
const COMMAND_BATCH: usize = 64;

/// Most announcements `log` returns in one answer.
const MAX_LOG: usize = 10_000;

/// What the node says about itself that does not change while it runs.
pub struct NodeInfo {
    pub data_dir_path: PathBuf,
    /// Where the hook's fast path leaves notes ([`crate::paths::Paths::notes_dir`]).
    pub notes_dir: PathBuf,
    /// The user's libp2p key: signs the DHT entries the node writes for its own announcements.
    pub key: libp2p::identity::Keypair,
    pub npub: String,
    /// The user's Nostr key: signs what the bridge publishes.
    pub nostr: nostr::Keys,
    pub name: Option<String>,
    pub data_dir: String,
    pub socket: String,
    pub log_file: String,
    pub started_at: u64,
    pub config: ConfigInForce,
}

pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    store: Store,
    info: NodeInfo,
    peers: PeerTable,
    redial: Redial,
    bootstrap_peers: HashSet<PeerId>,
    repos: Vec<RepoInfo>,
    /// Each registered repo's marker topic, to tell which repos a peer shares with us.
    repo_topics: Vec<(TopicHash, RepoId)>,
    last_kad_bootstrap: Option<Instant>,
    /// Mirror of the store's outbox (oldest first) without what was published, so publishing does
    /// not re-read the store.
    outbox: VecDeque<(u64, OutboxEntry)>,
    /// Published, still in the store until [`PUBLISH_GRACE`] has passed.
    published: VecDeque<(u64, Instant)>,
    /// New feed entries and chat messages, for followers (`log -f`, `chat --tail -f`, the TUI).
    events: broadcast::Sender<NodeEvent>,
    /// Every topic we are subscribed to, and what it carries.
    rooms: std::collections::HashMap<TopicHash, Room>,
    /// Chat rate limiter: author -> (tokens, last refill).
    chat_tokens: std::collections::HashMap<String, (f64, Instant)>,
    /// Chat history was written without fsync since the last tick.
    unsynced: bool,
    /// Writes of the current command batch that must be synced before it is answered.
    unsynced_acks: bool,
    /// The store's fsyncs happen on this thread, so that the swarm never waits for the disk.
    syncer: std::sync::mpsc::Sender<SyncJob>,
    /// Our own room messages published by this command batch: the sync thread writes them to
    /// the history before it fsyncs and answers.
    own_history: Vec<ChatEntry>,
    /// Control requests waiting for a DHT query.
    pending_kad: std::collections::HashMap<libp2p::kad::QueryId, PendingKad>,
    /// When the announced-commits set was last pruned.
    last_prune: Option<Instant>,
    /// Received room messages are stored by this writer thread, off the event loop.
    history: super::history::HistoryWriter,
    /// Ids of the room messages seen lately (loaded from the histories at start): what is new.
    chat_seen: super::history::Recent,
    /// Wakes us when the hook leaves something in the spool (None if inotify is unavailable:
    /// the spool is then read every second).
    spool_watch: Option<super::spool_watch::SpoolWatch>,
    /// Git dirs of repositories whose reflog waits for a rebase to end (looked at each tick).
    rebasing: HashSet<std::path::PathBuf>,
    /// Repositories kept open between hook notes.
    open_repos: super::repo_cache::RepoCache,
    /// Announcements just queued whose refs are published in the DHT after them.
    pending_refs: Vec<OutboxEntry>,
    /// Hook notes held until the git process that wrote them has exited.
    hook_waits: super::hook_wait::HookWaits,
    /// The Nostr bridge, when relays are configured.
    bridge: Option<Bridge>,
    /// What the bridge heard from relays. The sender is kept so the channel never closes.
    inbound: mpsc::Receiver<Inbound>,
    _inbound_tx: mpsc::Sender<Inbound>,
}

impl EventLoop {
    pub fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        store: Store,
        info: NodeInfo,
        bootstrap: &[crate::config::Bootstrap],
        events: broadcast::Sender<NodeEvent>,
    ) -> Self {
        let (inbound_tx, inbound) = mpsc::channel(crate::bridge::INBOUND_QUEUE);
        let syncer = spawn_syncer(store.clone());
        let history = super::history::HistoryWriter::spawn(store.clone());
        let known = store.chat_seen_ids().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the seen messages");
            Vec::new()
        });
        let chat_seen = super::history::Recent::new(RECENT_CHAT_IDS, known);
        let spool_dir = crate::spool::dir(&info.data_dir_path);
        let spool_watch = crate::paths::ensure_private_dir(&spool_dir)
            .and_then(|()| crate::paths::ensure_private_dir(&info.notes_dir))
            .map_err(|e| e.to_string())
            .and_then(|()| super::spool_watch::SpoolWatch::new(&spool_dir, &info.notes_dir).map_err(|e| e.to_string()))
            .inspect_err(|e| tracing::warn!(error = %e, "cannot watch the spool; reading it every second"))
            .ok();
        let bridge = Bridge::start(store.clone(), info.nostr.clone(), &info.config.relays, inbound_tx.clone());
        let mut this = Self {
            swarm,
            commands,
            store,
            info,
            peers: PeerTable::default(),
            redial: Redial::default(),
            bootstrap_peers: bootstrap.iter().map(|b| b.peer_id).collect(),
            repos: Vec::new(),
            repo_topics: Vec::new(),
            last_kad_bootstrap: None,
            outbox: VecDeque::new(),
            published: VecDeque::new(),
            events,
            rooms: Default::default(),
            chat_tokens: Default::default(),
            unsynced: false,
            unsynced_acks: false,
            pending_kad: Default::default(),
            syncer,
            own_history: Vec::new(),
            last_prune: None,
            history,
            chat_seen,
            spool_watch,
            hook_waits: Default::default(),
            pending_refs: Vec::new(),
            open_repos: Default::default(),
            rebasing: HashSet::new(),
            bridge,
            inbound,
            _inbound_tx: inbound_tx,
        };
        let now = Instant::now();
        for b in bootstrap {
            this.swarm.behaviour_mut().kad.add_address(&b.peer_id, b.addr.clone());
            this.redial.learn(b.peer_id, [b.addr.clone()], now);
        }
        match this.store.known_peers() {
            Ok(known) => {
                for (peer, entry) in known.into_iter().take(ADDRESS_BOOK_DIALS) {
                    let Ok(peer) = peer.parse::<PeerId>() else {
                        continue;
                    };
                    let addrs: Vec<Multiaddr> = entry.addrs.iter().filter_map(|a| a.parse().ok()).collect();
                    this.redial.learn(peer, addrs, now);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the address book"),
        }
        match this.store.repos() {
            Ok(repos) => {
                for repo in repos {
                    this.join_repo(repo);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read registered repos"),
        }
        match this.store.outbox() {
            Ok(entries) => this.outbox.extend(entries),
            Err(e) => tracing::warn!(error = %e, "cannot read the outbox"),
        }
        this.ingest_spool();
        this
    }

    pub fn local_peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// A node whose data dir was deleted has nothing left to serve (and no lock to protect).
    fn orphaned(&self) -> bool {
        !self.info.data_dir_path.exists()
    }

    /// Runs until a shutdown command or `stop` resolves.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        // After "ready", off this thread: it runs git for each repository.
        let dirs: Vec<PathBuf> = self.repos.iter().filter_map(|r| r.git_dir.as_ref().map(PathBuf::from)).collect();
        let mut survey = Some(survey_hooks(dirs));
        let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => {
                    tracing::info!("signal received, stopping");
                    break;
                }
                command = self.commands.recv() => {
                    let Some(first) = command else { break };
                    if self.handle_commands(first) {
                        tracing::info!("shutdown requested, stopping");
                        break;
                    }
                }
                event = self.swarm.select_next_some() => self.handle_swarm_event(event),
                Some(message) = self.inbound.recv() => self.receive_from_nostr(message),
                hooked = hooked_repos(&mut survey) => {
                    survey = None;
                    self.catch_up_reflogs(hooked);
                }
                changed = spool_changed(&self.spool_watch) => {
                    if let Err(e) = changed {
                        tracing::warn!(error = %e, "spool watch failed; reading the spool every second");
                        self.spool_watch = None;
                    }
                    self.spool_changed();
                }
                _ = self.hook_waits.done() => self.spool_changed(),
                _ = tick.tick() => {
                    if self.orphaned() {
                        tracing::warn!("the data dir is gone, stopping");
                        break;
                    }
                    self.maintain();
                }
            }
        }
        // Whatever was written without fsync since the last sync.
        if let Err(e) = self.store.sync() {
            tracing::warn!(error = %e, "cannot sync the store");
        }
    }

    /// Handles `first` and whatever else is queued (up to [`COMMAND_BATCH`]), makes their writes
    /// durable with one fsync (group commit), and only then answers them. Returns true when one
    /// of them asked the node to stop.
    fn handle_commands(&mut self, first: Command) -> bool {
        let mut batch = vec![first];
        while batch.len() < COMMAND_BATCH {
            match self.commands.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        let mut stopping = false;
        let mut answers = Vec::with_capacity(batch.len());
        for Command { req, reply } in batch {
            stopping |= matches!(req, Request::Shutdown);
            // Read by the history writer, after the received messages it still has to write.
            if let Request::ChatHistory { room, limit } = req {
                self.history.read(room, limit.min(MAX_LOG), reply);
                continue;
            }
            match self.answer(req) {
                Answer::Now(outcome) => answers.push((reply, outcome)),
                Answer::Later(query, PendingKadKind::Put) => {
                    self.pending_kad.insert(query, PendingKad::Put { reply });
                }
                Answer::Later(query, PendingKadKind::Get(merged, found)) => {
                    self.pending_kad.insert(query, PendingKad::Get { reply, merged, found, copies: 0 });
                }
            }
        }
        // Publish first: a message that left before a crash is not lost to anyone, and the
        // room does not wait for our disk. The clients get their answers only once what they
        // asked for is durable: the syncer thread fsyncs and then answers, while the event loop
        // goes back to the swarm (which sends what was just published).
        self.flush_outbox();
        let needs_sync = std::mem::take(&mut self.unsynced_acks);
        let mut job = SyncJob { history: std::mem::take(&mut self.own_history), acks: answers };
        if needs_sync && !stopping {
            match self.syncer.send(job) {
                Ok(()) => return stopping,
                Err(std::sync::mpsc::SendError(back)) => job = back,
            }
        }
        let answers = job.acks;
        if needs_sync {
            if let Err(e) = self.store.chat_insert_all(&job.history).and_then(|_| self.store.sync()) {
                for (reply, _) in answers {
                    let _ = reply.send(Outcome::Error(format!("cannot store: {e}")));
                }
                return stopping;
            }
        }
        for (reply, outcome) in answers {
            let _ = reply.send(outcome);
        }
        stopping
    }

    /// Requests answered by a DHT query are started here; everything else is answered now.
    fn answer(&mut self, req: Request) -> Answer {
        match req {
            Request::KvPut { repo, key, entry } => self.kv_put(repo, key, entry, true),
            Request::KvGet { repo, key } => self.kv_get(repo, key),
            other => Answer::Now(self.handle_request(other)),
        }
    }

    /// Merges our entry into our copy of the record and puts the result in the DHT.
    /// Stores and publishes one entry of ours; `durable`: fsync'd before the answer (a user's
    /// `kv set`), else synced with the next batch (refs derived from an announcement).
    fn kv_put(&mut self, repo: RepoInfo, key: String, entry: crate::proto::kv::Entry, durable: bool) -> Answer {
        use crate::proto::kv::{record_key, Record};
        let dht_key = record_key(&repo.id, &key);
        let mut record = self.local_kv(&repo.id, &key, &dht_key).unwrap_or_else(|| Record::new(&repo.id, &key));
        let ts = entry.ts;
        if let Err(e) = record.merge_entry(entry) {
            return Answer::Now(Outcome::Error(e.to_string()));
        }
        if let Err(e) = self.store.kv_own(&repo.id, &key, ts, durable) {
            return Answer::Now(Outcome::Error(format!("cannot store: {e}")));
        }
        self.unsynced |= !durable;
        let kad_record = libp2p::kad::Record::new(libp2p::kad::RecordKey::new(&dht_key), record.encode());
        match self.swarm.behaviour_mut().kad.put_record(kad_record, libp2p::kad::Quorum::One) {
            Ok(query) => Answer::Later(query, PendingKadKind::Put),
            Err(e) => Answer::Now(Outcome::Error(format!("cannot store the record: {e:?}"))),
        }
    }

    /// Starts a DHT lookup; the answer merges every copy found with our own.
    fn kv_get(&mut self, repo: RepoId, key: String) -> Answer {
        use crate::proto::kv::{record_key, Record};
        if let Err(e) = crate::proto::kv::validate_key(&key) {
            return Answer::Now(Outcome::Error(e.to_string()));
        }
        let dht_key = record_key(&repo, &key);
        let local = self.local_kv(&repo, &key, &dht_key);
        let found = local.is_some();
        let merged = local.unwrap_or_else(|| Record::new(&repo, &key));
        let query = self.swarm.behaviour_mut().kad.get_record(libp2p::kad::RecordKey::new(&dht_key));
        Answer::Later(query, PendingKadKind::Get(merged, found))
    }

    /// Our stored copy of a KV record, if we hold a valid one.
    fn local_kv(&mut self, repo: &RepoId, key: &str, dht_key: &[u8]) -> Option<crate::proto::kv::Record> {
        use libp2p::kad::store::RecordStore;
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let stored = store.get(&libp2p::kad::RecordKey::new(&dht_key))?;
        let _ = key;
        crate::proto::kv::Record::decode(&stored.value, repo, dht_key).ok()
    }

    /// A peer asks us to store a record: verify every entry, merge with our copy, store that.
    fn inbound_put(&mut self, source: PeerId, record: libp2p::kad::Record) {
        use libp2p::kad::store::RecordStore;
        let incoming = match crate::proto::kv::Record::decode_any(&record.value, record.key.as_ref()) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%source, error = %e, "refused a DHT record");
                return;
            }
        };
        let dht_key = record.key.to_vec();
        let merged = match self.local_kv(&incoming.repo, &incoming.key, &dht_key) {
            Some(mut mine) => {
                mine.merge(incoming);
                mine
            }
            None => incoming,
        };
        let mut stored = libp2p::kad::Record::new(record.key.clone(), merged.encode());
        stored.publisher = record.publisher;
        stored.expires = record.expires;
        if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().put(stored) {
            tracing::debug!(%source, error = ?e, "cannot store a DHT record");
        }
        self.unsynced = true;
    }

    /// A DHT query moved on: answer the control request waiting for it when it is done.
    fn kad_progress(
        &mut self,
        id: libp2p::kad::QueryId,
        result: libp2p::kad::QueryResult,
        last: bool,
        stats: &libp2p::kad::QueryStats,
    ) {
        let requests = stats.num_requests();
        use libp2p::kad::{GetRecordOk, QueryResult};
        match result {
            QueryResult::PutRecord(result) => {
                let Some(PendingKad::Put { reply }) = self.pending_kad.remove(&id) else { return };
                let replicas = match result {
                    Ok(_) => 1,
                    Err(libp2p::kad::PutRecordError::QuorumFailed { success, .. }) => success.len(),
                    Err(e) => {
                        tracing::debug!(error = %e, "DHT put failed");
                        0
                    }
                };
                let _ = reply.send(Outcome::Ok(Response::KvStored { replicas, requests }));
            }
            QueryResult::GetRecord(result) => {
                let mut enough = false;
                if let Some(PendingKad::Get { merged, found, copies, .. }) = self.pending_kad.get_mut(&id) {
                    if let Ok(GetRecordOk::FoundRecord(peer_record)) = result {
                        let key = peer_record.record.key.to_vec();
                        match crate::proto::kv::Record::decode(&peer_record.record.value, &merged.repo, &key) {
                            Ok(record) => {
                                merged.merge(record);
                                *found = true;
                                // Copies from peers (our own local one has no peer).
                                if peer_record.peer.is_some() {
                                    *copies += 1;
                                }
                            }
                            Err(e) => tracing::debug!(peer = ?peer_record.peer, error = %e, "refused a DHT answer"),
                        }
                    }
                    enough = *copies >= GET_COPIES;
                }
                if enough {
                    if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        query.finish();
                    }
                }
                if last || enough {
                    if let Some(PendingKad::Get { reply, merged, found, .. }) = self.pending_kad.remove(&id) {
                        let record = found.then_some(merged);
                        let _ = reply.send(Outcome::Ok(Response::KvRecord { record, requests }));
                    }
                }
            }
            _ => {}
        }
    }

    fn handle_request(&mut self, req: Request) -> Outcome {
        match req {
            Request::KvPut { .. } | Request::KvGet { .. } => {
                Outcome::Error("DHT requests are answered by their query".into())
            }
            Request::KvList { repo } => match self.store.kv_own_keys(&repo) {
                Ok(keys) => Outcome::Ok(Response::KvKeys { keys }),
                Err(e) => Outcome::Error(format!("cannot read: {e}")),
            },
            Request::Status => Outcome::Ok(Response::Status(Box::new(self.status()))),
            Request::Peers => {
                let mut peers = self.peers.snapshot(Instant::now(), &self.repo_topics);
                let gossipsub = &self.swarm.behaviour().gossipsub;
                for p in &mut peers {
                    p.score = p.peer_id.parse().ok().and_then(|id| gossipsub.peer_score(&id));
                }
                Outcome::Ok(Response::Peers { peers })
            }
            Request::RegisterRepo { repo } => {
                if let Err(e) = self.store.add_repo(&repo) {
                    return Outcome::Error(format!("cannot register the repo: {e}"));
                }
                self.start_reflog(&repo);
                self.join_repo(repo.clone());
                self.repo_changed(&repo);
                Outcome::Ok(Response::Done)
            }
            Request::NostrStatus => Outcome::Ok(Response::Nostr(self.nostr_status())),
            Request::Shutdown => Outcome::Ok(Response::Done),
            Request::Announce { repo, envelope } => self.announce(repo, envelope),
            Request::IngestSpool => {
                self.ingest_spool();
                Outcome::Ok(Response::Done)
            }
            Request::Log { repo, limit } => match self.store.feed(&repo, limit.min(MAX_LOG)) {
                Ok(entries) => Outcome::Ok(Response::Feed { entries }),
                Err(e) => Outcome::Error(format!("cannot read the feed: {e}")),
            },
            Request::ChatSend { repo, envelope, thread } => self.chat_send(repo, envelope, thread),
            Request::ChatHistory { .. } => Outcome::Error("room histories are read by the history writer".into()),
            Request::ChatJoin { repo, thread } => {
                self.join_repo(repo.clone());
                self.join_room(&repo.id, thread);
                Outcome::Ok(Response::Done)
            }
            // Streams are served by the control server from the event broadcast.
            Request::Follow { .. } | Request::FollowChat { .. } => {
                Outcome::Error("streams are served by the control server".into())
            }
        }
    }

    /// Stores our own chat message in the room's history and queues it for the room's peers.
    fn chat_send(&mut self, repo: RepoInfo, envelope: Envelope, thread: Option<String>) -> Outcome {
        let author = match envelope.verify() {
            Ok(author) => author,
            Err(e) => return Outcome::Error(format!("refusing to send a message with a {e}")),
        };
        let message = match ChatMessage::from_envelope(&envelope) {
            Ok(m) if m.thread == thread && envelope.repo == repo.id => m,
            Ok(_) => return Outcome::Error("message, repo and thread disagree".into()),
            Err(e) => return Outcome::Error(e.to_string()),
        };
        self.join_repo(repo.clone());
        let topic = self.join_room(&repo.id, thread.clone());
        if let Some(bridge) = &self.bridge {
            match bridge.comment(&repo, &message.text, &envelope, thread.as_deref()) {
                Ok(()) => self.unsynced_acks = true,
                Err(e) => tracing::warn!(error = %e, "cannot queue the message for Nostr"),
            }
        }
        let entry = chat_entry(&envelope, author, message, true);
        let id = entry.id.clone();
        let new = self.chat_seen.insert(id.clone());
        let peers = self.swarm.behaviour().gossipsub.all_peers().filter(|(_, topics)| topics.contains(&&topic)).count();
        // Peers are in the room and nothing of it waits in the outbox: publish now, and let the
        // sync thread write the history (off this thread) before the answer goes out.
        let waiting = self.outbox.iter().any(|(_, e)| e.topic().hash() == topic);
        if peers > 0 && !waiting {
            match self.swarm.behaviour_mut().gossipsub.publish(topic.clone(), envelope.encode()) {
                Ok(_) | Err(gossipsub::PublishError::Duplicate) => {
                    if new {
                        let _ = self.events.send(NodeEvent::Chat(entry.clone()));
                        self.own_history.push(entry);
                    }
                    self.unsynced_acks = true;
                    return Outcome::Ok(Response::ChatSent { id, peers });
                }
                Err(e) => tracing::debug!(error = %e, "message goes to the outbox"),
            }
        }
        match self.store.chat_insert(&entry) {
            Ok(true) => {
                let _ = self.events.send(NodeEvent::Chat(entry));
            }
            Ok(false) => {}
            Err(e) => return Outcome::Error(format!("cannot store the message: {e}")),
        }
        let outbox_entry = OutboxEntry { repo, envelope, thread };
        match self.store.outbox_push_with(&outbox_entry, false) {
            Ok(seq) => {
                self.unsynced_acks = true;
                self.outbox.push_back((seq, outbox_entry));
            }
            Err(e) => return Outcome::Error(format!("cannot queue the message: {e}")),
        }
        Outcome::Ok(Response::ChatSent { id, peers })
    }

    /// Subscribes to a chat room's topic; returns its hash.
    fn join_room(&mut self, repo: &RepoId, thread: Option<String>) -> TopicHash {
        let topic = match &thread {
            Some(commit) => crate::proto::topic::commit_thread(repo, commit),
            None => crate::proto::topic::chat(repo),
        };
        let hash = topic.hash();
        if !self.rooms.contains_key(&hash) {
            self.subscribe(topic, Room::Chat { repo: repo.clone(), thread });
        }
        hash
    }

    fn subscribe(&mut self, topic: libp2p::gossipsub::Sha256Topic, room: Room) {
        let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
        if let Err(e) = gossipsub.set_topic_params(topic.clone(), super::behaviour::topic_score_params()) {
            tracing::warn!(?room, error = %e, "cannot set the topic's score parameters");
        }
        if let Err(e) = gossipsub.subscribe(&topic) {
            tracing::warn!(?room, error = %e, "cannot subscribe");
        }
        self.rooms.insert(topic.hash(), room);
    }

    /// Token bucket per author: true if this message may be stored.
    fn chat_allowed(&mut self, author: String, now: Instant) -> bool {
        if self.chat_tokens.len() >= CHAT_RATE_AUTHORS {
            // Forget authors whose bucket has refilled anyway; active ones keep their state.
            let full = Duration::from_secs_f64(CHAT_BURST / CHAT_RATE);
            self.chat_tokens.retain(|_, (_, last)| now.duration_since(*last) < full);
            if self.chat_tokens.len() >= CHAT_RATE_AUTHORS {
                return false;
            }
        }
        let (tokens, last) = self.chat_tokens.entry(author).or_insert((CHAT_BURST, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * CHAT_RATE).min(CHAT_BURST);
        *last = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }

    /// Queues a local announcement durably, then tries to publish it at once.
    fn announce(&mut self, repo: RepoInfo, envelope: Envelope) -> Outcome {
        if let Err(e) = envelope.verify() {
            return Outcome::Error(format!("refusing to publish an announcement with a {e}"));
        }
        if envelope.repo != repo.id {
            return Outcome::Error("announcement and repo disagree on the repo id".into());
        }
        match self.queue_announcement(OutboxEntry { repo, envelope, thread: None }, true) {
            Ok(()) => Outcome::Ok(Response::Queued { pending: self.outbox.len() }),
            Err(e) => Outcome::Error(format!("cannot store the announcement: {e}")),
        }
    }

    /// Queues one of our announcements durably: outbox, our refs in the DHT, the repo registered
    /// (at its git dir) and re-read for Nostr, the commit marked as announced.
    /// Not `durable`: the caller has the store synced soon (an announcement read from the reflog
    /// is found there again after a crash).
    fn queue_announcement(&mut self, entry: OutboxEntry, durable: bool) -> Result<(), crate::store::StoreError> {
        if !self.knows_repo_at(&entry.repo) {
            self.store.add_repo(&entry.repo)?;
            self.start_reflog(&entry.repo);
        }
        let ours = entry.envelope.author == hex::encode(self.info.key.public().encode_protobuf());
        if let (true, Ok(a)) = (ours, Announcement::from_envelope(&entry.envelope)) {
            // Not fsync'd by itself: the outbox push below makes it durable too.
            self.store.mark_announced(&entry.repo.id, &a.commit.id)?;
        }
        let seq = self.store.outbox_push_with(&entry, durable)?;
        if !durable {
            self.unsynced = true;
        }
        // The refs in the DHT follow once the announcement itself went out (`flush_outbox`).
        self.pending_refs.push(entry.clone());
        self.repo_changed(&entry.repo);
        self.outbox.push_back((seq, entry));
        Ok(())
    }

    /// Our own announcement of a commit on a branch also updates our refs in the DHT: the key
    /// `refs/heads/<b>` and our entry in the repo's `refs` index (all our refs, for `git p2p refs`).
    fn publish_ref(&mut self, entry: &OutboxEntry) {
        if entry.envelope.kind != crate::proto::announce::KIND
            || entry.envelope.author != hex::encode(self.info.key.public().encode_protobuf())
        {
            return;
        }
        let Ok(announcement) = Announcement::from_envelope(&entry.envelope) else { return };
        let Some(ref_name) = announcement.commit.ref_name else { return };
        self.put_ref(&entry.repo.id, ref_name, announcement.commit.id);
    }

    /// Puts our `ref_name` → `commit` in the DHT, and in our entry of the repo's refs index.
    fn put_ref(&mut self, repo: &RepoId, ref_name: String, commit: String) {
        self.put_own(repo, &ref_name, commit.as_bytes());
        let mut refs = self.own_refs(repo);
        refs.insert(ref_name, commit);
        let index = serde_json::to_vec(&refs).expect("a map of strings serialises");
        self.put_own(repo, crate::proto::kv::REFS_KEY, &index);
    }

    /// Our branch moved without a commit of ours (a fast-forward, a reset): the DHT learns
    /// where it is now, unless it knows already.
    pub(super) fn branch_moved(&mut self, repo: &RepoId, ref_name: String, commit: String) {
        if self.own_refs(repo).get(&ref_name) != Some(&commit) {
            self.put_ref(repo, ref_name, commit);
        }
    }

    /// Our current entry in a repo's refs index (empty if we have none).
    fn own_refs(&mut self, repo: &RepoId) -> std::collections::BTreeMap<String, String> {
        let key = crate::proto::kv::REFS_KEY;
        let me = hex::encode(self.info.key.public().encode_protobuf());
        self.local_kv(repo, key, &crate::proto::kv::record_key(repo, key))
            .and_then(|r| r.entries.into_iter().find(|e| e.author == me))
            .and_then(|e| e.value_bytes())
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default()
    }

    /// Signs and puts an entry of ours; nobody waits for the DHT's answer.
    fn put_own(&mut self, repo: &RepoId, key: &str, value: &[u8]) {
        let now = crate::clock::unix_now_ms();
        let who = crate::proto::kv::Who { name: self.info.name.clone(), npub: Some(self.info.npub.clone()) };
        match crate::proto::kv::Entry::sign_as(&self.info.key, repo, key, Some(value), now, now, who) {
            Ok(entry) => {
                let info = RepoInfo::bare(repo.clone());
                if let Answer::Now(Outcome::Error(e)) = self.kv_put(info, key.to_string(), entry, false) {
                    tracing::warn!(%key, error = %e, "cannot publish a ref");
                }
            }
            Err(e) => tracing::warn!(%key, error = %e, "cannot sign a ref"),
        }
    }

    /// Publishes queued announcements, then the refs in the DHT that our new ones move.
    fn flush_outbox(&mut self) {
        self.publish_outbox();
        for entry in std::mem::take(&mut self.pending_refs) {
            self.publish_ref(&entry);
        }
    }

    /// One announcement stays queued until a publish succeeds with at least one peer subscribed
    /// to its topic; later ones of the same topic wait behind it (order).
    fn publish_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let mut delivered = Vec::new();
        let mut blocked: HashSet<TopicHash> = HashSet::new();
        let entries: Vec<(u64, OutboxEntry)> = self.outbox.iter().cloned().collect();
        for (seq, entry) in entries {
            self.join_repo(entry.repo.clone());
            let topic = entry.topic();
            if blocked.contains(&topic.hash()) {
                continue;
            }
            match self.swarm.behaviour_mut().gossipsub.publish(topic.clone(), entry.envelope.encode()) {
                // Duplicate: this exact envelope went out before (a restart re-sends it).
                Ok(_) | Err(gossipsub::PublishError::Duplicate) => delivered.push(seq),
                Err(e) => {
                    tracing::debug!(repo = %entry.repo.id, error = %e, "announcement stays queued");
                    blocked.insert(topic.hash());
                }
            }
        }
        if delivered.is_empty() {
            return;
        }
        let now = Instant::now();
        self.published.extend(delivered.iter().map(|seq| (*seq, now)));
        self.outbox.retain(|(seq, _)| !delivered.contains(seq));
        tracing::debug!(delivered = delivered.len(), pending = self.outbox.len(), "outbox flushed");
    }

    /// Drops announcements from the durable outbox once they were published long enough ago.
    fn forget_published(&mut self, now: Instant) {
        let mut done = Vec::new();
        while let Some((seq, at)) = self.published.front() {
            if now.duration_since(*at) < PUBLISH_GRACE {
                break;
            }
            done.push(*seq);
            self.published.pop_front();
        }
        if done.is_empty() {
            return;
        }
        match self.store.outbox_remove(&done) {
            Ok(()) => self.unsynced = true,
            Err(e) => tracing::warn!(error = %e, "cannot clear published announcements; a restart sends them again"),
        }
    }

    /// Checks a gossip message before anything else sees it: well-formed, on a topic we are in
    /// and for that topic's repo, validly signed, within bounds. New announcements go to the
    /// feed, new chat messages to their room's history.
    fn receive(&mut self, message: &gossipsub::Message) -> gossipsub::MessageAcceptance {
        use gossipsub::MessageAcceptance::Reject;
        let envelope = match Envelope::decode(&message.data) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::debug!(source = ?message.source, error = %e, "rejected gossip message");
                return Reject;
            }
        };
        let room = self.rooms.get(&message.topic).cloned();
        match room {
            Some(Room::Commits { repo }) if repo == envelope.repo => self.receive_announcement(message, envelope),
            Some(Room::Chat { repo, thread }) if repo == envelope.repo => self.receive_chat(message, envelope, thread),
            _ => {
                tracing::debug!(source = ?message.source, repo = %envelope.repo, "rejected message for another topic");
                Reject
            }
        }
    }

    fn receive_chat(
        &mut self,
        message: &gossipsub::Message,
        envelope: Envelope,
        thread: Option<String>,
    ) -> gossipsub::MessageAcceptance {
        self.accept_chat(message.source, envelope, thread)
    }

    /// A received room message: if new, to followers at once and to the history thread.
    fn keep_received(&mut self, entry: ChatEntry) -> bool {
        if !self.chat_seen.insert(entry.id.clone()) {
            return false;
        }
        let _ = self.events.send(NodeEvent::Chat(entry.clone()));
        self.history.write(entry);
        true
    }

    /// Checks a room message (from gossip, or bridged through Nostr) and stores it if new.
    fn accept_chat(
        &mut self,
        source: Option<PeerId>,
        envelope: Envelope,
        thread: Option<String>,
    ) -> gossipsub::MessageAcceptance {
        use gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
        let author = match envelope.verify() {
            Ok(author) => author,
            Err(e) => {
                tracing::debug!(?source, error = %e, "rejected chat message");
                return Reject;
            }
        };
        let chat = match ChatMessage::from_envelope(&envelope) {
            Ok(m) if m.thread == thread => m,
            Ok(_) => {
                tracing::debug!(?source, "rejected chat message for another thread");
                return Reject;
            }
            Err(e) => {
                tracing::debug!(?source, error = %e, "rejected chat message");
                return Reject;
            }
        };
        if !self.chat_allowed(author.to_string(), Instant::now()) {
            tracing::debug!(%author, "chat flood: message dropped");
            return Reject;
        }
        let own = author == self.local_peer_id();
        let entry = chat_entry(&envelope, author, chat, own);
        if self.keep_received(entry) {
            Accept
        } else {
            Ignore
        }
    }

    fn receive_announcement(
        &mut self,
        message: &gossipsub::Message,
        envelope: Envelope,
    ) -> gossipsub::MessageAcceptance {
        use gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
        let author = match envelope.verify() {
            Ok(author) => author,
            Err(e) => {
                tracing::debug!(source = ?message.source, error = %e, "rejected announcement");
                return Reject;
            }
        };
        let announcement = match Announcement::from_envelope(&envelope) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(source = ?message.source, error = %e, "rejected announcement");
                return Reject;
            }
        };
        let entry = FeedEntry {
            repo: envelope.repo,
            peer: author.to_string(),
            name: announcement.name,
            commit: announcement.commit,
            announced_at: envelope.ts,
            received_at: crate::clock::unix_now_ms(),
        };
        match self.store.feed_insert(&entry) {
            Ok(true) => {
                self.unsynced = true;
                let _ = self.events.send(NodeEvent::Announcement(entry));
                Accept
            }
            Ok(false) => Ignore,
            Err(e) => {
                tracing::warn!(error = %e, "cannot store an announcement");
                Ignore
            }
        }
    }

    fn status(&self) -> NodeStatus {
        let mut listen_addrs: Vec<String> = self.swarm.listeners().map(|a| a.to_string()).collect();
        listen_addrs.sort();
        NodeStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: crate::control::proto::PROTOCOL_VERSION,
            pid: std::process::id(),
            peer_id: self.local_peer_id().to_string(),
            npub: self.info.npub.clone(),
            name: self.info.name.clone(),
            data_dir: self.info.data_dir.clone(),
            socket: self.info.socket.clone(),
            log_file: self.info.log_file.clone(),
            listen_addrs,
            started_at: self.info.started_at,
            connected_peers: self.peers.len(),
            known_peers: self.redial.len(),
            repos: self.repos.clone(),
            config: self.info.config.clone(),
            nostr: self.nostr_status(),
            outbox: self.outbox.len(),
            rebasing: self.rebasing.iter().map(|d| d.display().to_string()).collect(),
        }
    }

    fn nostr_status(&self) -> NostrStatus {
        match &self.bridge {
            Some(bridge) => bridge.status(),
            None => NostrStatus { npub: self.info.npub.clone(), ..NostrStatus::default() },
        }
    }

    /// A spooled announcement of ours whose commit went out already (a note's reflog read found
    /// it first): not queued twice.
    fn already_announced(&self, entry: &OutboxEntry) -> bool {
        let ours = entry.envelope.author == hex::encode(self.info.key.public().encode_protobuf());
        ours && Announcement::from_envelope(&entry.envelope)
            .is_ok_and(|a| self.store.own_announced(&entry.repo.id, &a.commit.id).unwrap_or(false))
    }

    /// Whether `repo` is registered already, at the same git dir (or the caller names none).
    fn knows_repo_at(&self, repo: &RepoInfo) -> bool {
        self.repos.iter().any(|r| r.id == repo.id && (repo.git_dir.is_none() || r.git_dir == repo.git_dir))
    }

    /// A repository of ours may look different now: tell the Nostr bridge.
    fn repo_changed(&mut self, repo: &RepoInfo) {
        if let Some(known) = self.repos.iter_mut().find(|r| r.id == repo.id) {
            if repo.git_dir.is_some() {
                known.git_dir = repo.git_dir.clone();
            }
        }
        if let (Some(bridge), Some(known)) = (&self.bridge, self.repos.iter().find(|r| r.id == repo.id)) {
            bridge.refresh(known);
        }
    }

    /// A room message that came through a Nostr relay.
    fn receive_from_nostr(&mut self, message: Inbound) {
        match message {
            Inbound::Envelope(envelope) => {
                // The room is the one the signed message names (a relay has no topics).
                let thread = ChatMessage::from_envelope(&envelope).ok().and_then(|m| m.thread);
                self.accept_chat(None, envelope, thread);
            }
            Inbound::Comment { repo, id, npub, text, created_at } => {
                // A plain Nostr client's text: no escape sequence reaches a reader's terminal.
                let text = crate::proto::chat::tame(&text);
                if text.len() > crate::proto::chat::MAX_TEXT || !self.chat_allowed(npub.clone(), Instant::now()) {
                    tracing::debug!(%id, "Nostr comment dropped (too long or flooding)");
                    return;
                }
                let entry = ChatEntry {
                    room: crate::proto::chat::room_id(&repo, None),
                    id,
                    peer: npub,
                    name: None,
                    text,
                    sent_at: created_at.saturating_mul(1000),
                    received_at: crate::clock::unix_now_ms(),
                    own: false,
                    via: Some("nostr".to_string()),
                };
                self.keep_received(entry);
            }
        }
    }

    fn join_repo(&mut self, repo: RepoInfo) {
        if self.repos.iter().any(|r| r.id == repo.id) {
            return;
        }
        let topic = crate::proto::topic::commits(&repo.id);
        self.repo_topics.push((topic.hash(), repo.id.clone()));
        self.subscribe(topic, Room::Commits { repo: repo.id.clone() });
        self.join_room(&repo.id, None);
        self.repos.push(repo.clone());
        if let Some(bridge) = &self.bridge {
            bridge.watch(&self.repos);
            bridge.refresh(&repo);
        }
    }

    fn maintain(&mut self) {
        if std::mem::take(&mut self.unsynced) && self.syncer.send(SyncJob::default()).is_err() {
            if let Err(e) = self.store.sync() {
                tracing::warn!(error = %e, "cannot sync the store");
            }
        }
        self.ingest_spool();
        self.retry_rebasing();
        self.flush_outbox();
        let now = Instant::now();
        self.forget_published(now);
        if self.last_prune.is_none_or(|at| now.duration_since(at) >= PRUNE_EVERY) {
            self.last_prune = Some(now);
            let before = crate::clock::unix_now_ms().saturating_sub(ANNOUNCED_KEPT.as_millis() as u64);
            match self.store.prune_announced(before) {
                Ok(n) if n > 0 => self.unsynced = true,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot prune the announced commits"),
            }
        }
        let peers = &self.peers;
        for (peer, addrs) in self.redial.due(now, |p| peers.is_connected(p)) {
            tracing::debug!(%peer, ?addrs, "dialling");
            self.dial(peer, addrs);
        }
    }

    fn dial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        // A new port per dial: when two nodes dial each other at once with port reuse, the two
        // attempts merge and both handshakes fail.
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .allocate_new_port()
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "dial not started");
        }
    }

    fn maybe_kad_bootstrap(&mut self) {
        let now = Instant::now();
        if self.last_kad_bootstrap.is_some_and(|t| now.duration_since(t) < KAD_BOOTSTRAP_MIN_INTERVAL) {
            return;
        }
        if self.swarm.behaviour_mut().kad.bootstrap().is_ok() {
            self.last_kad_bootstrap = Some(now);
        }
    }

    fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                let addr = endpoint.get_remote_address().clone();
                tracing::debug!(peer = %peer_id, %addr, "connected");
                self.peers.connected(peer_id, connection_id, strip_p2p(addr), Instant::now());
                self.redial.succeeded(&peer_id);
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, cause, .. } => {
                tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                self.peers.disconnected(&peer_id, connection_id);
            }
            SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } => {
                tracing::debug!(%peer, %error, "dial failed");
                self.redial.failed(&peer, Instant::now());
            }
            SwarmEvent::NewListenAddr { address, .. } => tracing::info!(%address, "listening"),
            SwarmEvent::ListenerError { error, .. } => tracing::warn!(%error, "listener error"),
            SwarmEvent::Behaviour(event) => self.handle_behaviour_event(event),
            _ => {}
        }
    }

    fn handle_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => self.identified(peer_id, info),
            BehaviourEvent::Ping(ping::Event { peer, result: Ok(rtt), .. }) => self.peers.rtt(&peer, rtt),
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic }) => {
                self.peers.subscribed(&peer_id, topic);
                // Someone to deliver to, perhaps: queued announcements need not wait a tick.
                self.flush_outbox();
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message_id, message }) => {
                let acceptance = self.receive(&message);
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    acceptance,
                );
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Unsubscribed { peer_id, topic }) => {
                self.peers.unsubscribed(&peer_id, &topic)
            }
            // Kademlia found a peer (typically through a bootstrap lookup): connect, so that
            // small networks become fully connected and `peers` shows everyone.
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, is_new_peer: true, addresses, .. })
                if !self.peers.is_connected(&peer) && self.peers.len() < TARGET_PEERS =>
            {
                let addrs = addresses.into_vec();
                self.redial.learn(peer, addrs.clone(), Instant::now());
                self.dial(peer, addrs);
            }
            BehaviourEvent::Kad(kad::Event::InboundRequest {
                request: kad::InboundRequest::PutRecord { source, record: Some(record), .. },
            }) => self.inbound_put(source, record),
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed { id, result, step, stats }) => {
                self.kad_progress(id, result, step.last, &stats)
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                let now = Instant::now();
                let mut by_peer: std::collections::HashMap<PeerId, Vec<Multiaddr>> = Default::default();
                for (peer, addr) in found {
                    by_peer.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in by_peer {
                    tracing::debug!(%peer, ?addrs, "discovered on the LAN");
                    for a in &addrs {
                        self.swarm.behaviour_mut().kad.add_address(&peer, a.clone());
                    }
                    self.redial.learn(peer, addrs.clone(), now);
                    // mDNS never dials by itself.
                    if !self.peers.is_connected(&peer) && self.peers.len() < TARGET_PEERS {
                        self.dial(peer, addrs);
                    }
                }
            }
            _ => {}
        }
    }

    fn identified(&mut self, peer: PeerId, info: identify::Info) {
        let name = name_from_agent(&info.agent_version);
        self.peers.identified(&peer, info.agent_version.clone(), name.clone());
        if info.protocol_version != IDENTIFY_PROTOCOL {
            tracing::debug!(%peer, protocol = %info.protocol_version, "not a git-p2p node");
            return;
        }
        let addrs: Vec<Multiaddr> = info
            .listen_addrs
            .into_iter()
            .map(strip_p2p)
            .filter(is_dialable)
            .take(crate::store::MAX_ADDRS_PER_PEER)
            .collect();
        if info.protocols.contains(&KAD_PROTOCOL) {
            for a in &addrs {
                self.swarm.behaviour_mut().kad.add_address(&peer, a.clone());
            }
        }
        self.redial.learn(peer, addrs.clone(), Instant::now());
        let addr_strings: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        if let Err(e) = self.store.remember_peer(&peer.to_string(), &addr_strings, name.as_deref()) {
            tracing::warn!(%peer, error = %e, "cannot update the address book");
        }
        if self.bootstrap_peers.contains(&peer) || self.peers.len() <= 8 {
            self.maybe_kad_bootstrap();
        }
    }
}

/// How often, and for how long, our announced commits are remembered (against announcing one
/// twice through the hook's two paths and the reflog; those meet within seconds).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
const ANNOUNCED_KEPT: Duration = Duration::from_secs(30 * 24 * 3600);

/// Room message ids remembered in memory to tell new from repeated (about 100 bytes each).
const RECENT_CHAT_IDS: usize = 100_000;

/// What the sync thread does for one command batch: write our published room messages to the
/// history, fsync, then send the answers that waited for it.
#[derive(Default)]
struct SyncJob {
    history: Vec<ChatEntry>,
    acks: Vec<(oneshot::Sender<Outcome>, Outcome)>,
}

/// The thread that makes the store durable (one fsync for whatever is queued) and then sends the
/// answers that waited for it. Exits when the event loop drops its sender.
fn spawn_syncer(store: Store) -> std::sync::mpsc::Sender<SyncJob> {
    let (tx, rx) = std::sync::mpsc::channel::<SyncJob>();
    let spawned = std::thread::Builder::new().name("store-sync".into()).spawn(move || {
        while let Ok(mut job) = rx.recv() {
            while let Ok(more) = rx.try_recv() {
                job.history.extend(more.history);
                job.acks.extend(more.acks);
            }
            let acks = job.acks;
            match store.chat_insert_all(&job.history).and_then(|_| store.sync()) {
                Ok(()) => {
                    for (reply, outcome) in acks {
                        let _ = reply.send(outcome);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot sync the store");
                    for (reply, _) in acks {
                        let _ = reply.send(Outcome::Error(format!("cannot store: {e}")));
                    }
                }
            }
        }
    });
    if let Err(e) = spawned {
        // The receiver is gone with the closure: every send fails and the loop syncs itself.
        tracing::warn!(error = %e, "cannot start the store's sync thread; syncing inline");
    }
    tx
}

fn chat_entry(envelope: &Envelope, author: PeerId, message: ChatMessage, own: bool) -> ChatEntry {
    ChatEntry {
        room: crate::proto::chat::room_id(&envelope.repo, message.thread.as_deref()),
        id: envelope.id(),
        peer: author.to_string(),
        name: message.name,
        text: message.text,
        sent_at: envelope.ts,
        received_at: crate::clock::unix_now_ms(),
        own,
        via: None,
    }
}

/// Drops a trailing `/p2p/<id>`; we keep peer ids beside addresses, not inside them.
fn strip_p2p(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

/// Unspecified addresses (0.0.0.0, ::) and relayed ones cannot be dialled directly.
fn is_dialable(addr: &Multiaddr) -> bool {
    addr.iter().all(|p| match p {
        Protocol::Ip4(ip) => !ip.is_unspecified(),
        Protocol::Ip6(ip) => !ip.is_unspecified(),
        Protocol::P2pCircuit => false,
        _ => true,
    })
}
