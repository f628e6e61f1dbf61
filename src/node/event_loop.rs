//! The event loop: the only owner of the Swarm. It waits for swarm events, control commands,
//! the hook, the Nostr bridge and a maintenance tick, hands each to the [`Service`] (which holds
//! the node's logic and does no I/O), and carries out the [`Io`] the service returns.
//!
//! States: Running -> (Shutdown command, SIGTERM or SIGINT, data dir deleted) -> Stopping, where
//! it answers what it was asked last, drops the swarm (closing connections) and returns; the
//! store is synced on the way out. While the store takes no writes (a full disk, a damaged
//! file) the loop runs on; each tick `store_watch` reopens a store whose disk has space again,
//! and the loop then takes back what it holds of the store and reads the reflogs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use libp2p::futures::StreamExt;
use libp2p::swarm::ConnectionId;
use libp2p::{kad, Swarm};
use tokio::sync::{broadcast, mpsc};

use super::behaviour::Behaviour;
use super::disk::{load, Durability, NodeDisk};
use super::history::{HistoryWriter, PageRead};
use super::hook_notes::HookNotes;
use super::service::{DialRef, Me, QueryRef, Service};
use super::store_watch::StoreWatch;
use crate::bridge::{Bridge, Inbound};
use crate::clock::Now;
use crate::control::api::{Announced, Command, ConfigInForce, Failure, NodeEvent, Page, RegisteredRepo};
use crate::control::proto::PAGE_BYTES;
use crate::store::Store;

/// How often the loop looks for peers to redial, published entries past their grace, the spool.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);
/// Control requests handled together before one group commit.
const COMMAND_BATCH: usize = 64;
/// Turns of a loop that is never idle after which waiting writes go to the disk threads anyway.
const MAX_DISK_WAIT: u32 = 16;
/// Commits one prefix lookup answers at most (enough to list the candidates of an ambiguous
/// prefix; a prefix of 4 digits matches a few in a feed of 10 000).
const MAX_FEED_COMMITS: usize = 100;

/// What the node says about itself that does not change while it runs.
pub struct NodeInfo {
    pub data_dir_path: PathBuf,
    /// Where the hook's fast path leaves notes ([`crate::paths::Paths::notes_dir`]).
    pub notes_dir: PathBuf,
    /// Where the node tells the hook that its store takes no writes
    /// ([`crate::paths::Paths::store_problem`]).
    pub store_problem: PathBuf,
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
    /// `p2p.relay-service` and `p2p.circuit-relay`.
    pub relay_service: crate::config::RelayService,
    pub circuit_relays: Vec<crate::config::Bootstrap>,
    /// `p2p.max-peers`.
    pub max_peers: usize,
}

pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    service: Service,
    store: Store,
    info: NodeInfo,
    durability: Durability,
    /// Received room messages are stored by this writer thread, off the event loop.
    history: HistoryWriter,
    hooks: HookNotes,
    /// New feed entries and chat messages, for followers (`log -f`, `chat --tail -f`, the TUI).
    events: broadcast::Sender<NodeEvent>,
    /// Kademlia's ids of the service's queries.
    queries: HashMap<kad::QueryId, QueryRef>,
    /// The service's dials under way (each ends in an established connection or an error).
    dials: HashMap<ConnectionId, (libp2p::PeerId, DialRef)>,
    /// The Nostr bridge, when relays are configured.
    bridge: Option<Bridge>,
    /// What the bridge heard from relays. The sender is kept so the channel never closes.
    inbound: mpsc::Receiver<Inbound>,
    _inbound_tx: mpsc::Sender<Inbound>,
    /// The store's health as last seen.
    store_watch: StoreWatch,
    /// The mirrors' worker and what is under way for them.
    mirror: mirror::MirrorLink,
    /// Our sync sessions and the peers' (catching up on feeds and rooms).
    sync: sync::SyncLink,
    /// Reachability, relays, relayed connections (`node::nat`, carried out by `nat`).
    nat: super::nat::Nat,
    /// Which transport a dial of a peer takes (`node::transport`): told of our relayed peers.
    race: super::transport::DialRace,
    /// Kademlia's ids of the lookups of our repositories' peers.
    repo_queries: HashMap<kad::QueryId, crate::proto::repo::RepoId>,
    /// Turns of the loop that writes for the disk threads have waited ([`Self::flush_disk`]).
    disk_waited: u32,
    /// Our room messages to queue for Nostr once they left for the peers ([`Self::flush_disk`]):
    /// signing the event and writing it to the queue is not on a message's way out.
    nostr_comments: Vec<crate::node::service::Comment>,
}

/// The service's view of the store for one call (the fields it borrows are the event loop's).
macro_rules! disk {
    ($loop:ident) => {
        &mut NodeDisk {
            store: &$loop.store,
            records: $loop.swarm.behaviour_mut().kad.store_mut(),
            durability: &mut $loop.durability,
            history: &mut $loop.history,
        }
    };
}

mod hooks;
mod io;
mod mirror;
mod nat;
mod status;
mod swarm;
mod sync;

impl EventLoop {
    pub fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        store: Store,
        info: NodeInfo,
        bootstrap: &[crate::config::Bootstrap],
        events: broadcast::Sender<NodeEvent>,
        race: super::transport::DialRace,
    ) -> Self {
        let (inbound_tx, inbound) = mpsc::channel(crate::bridge::INBOUND_QUEUE);
        let bridge = Bridge::start(store.clone(), info.nostr.clone(), &info.config.relays, inbound_tx.clone());
        let me = Me::new(info.key.clone(), info.name.clone(), info.npub.clone());
        let bootstrap: Vec<_> = bootstrap.iter().map(|b| (b.peer_id, b.addr.clone())).collect();
        let service = Service::new(me, &bootstrap, load(&store), Now::system());
        let store_watch = StoreWatch::new(info.store_problem.clone(), info.data_dir.clone());
        let mut service = service;
        service.set_max_peers(info.max_peers);
        let mirror = mirror::MirrorLink::start(&swarm, &info, &mut service);
        let sync = sync::SyncLink::start(&swarm, &store);
        // Bootstrap peers (like any peer) become relays of ours when they offer to relay.
        let relays: Vec<_> = info.circuit_relays.iter().map(|b| (b.peer_id, b.addr.clone())).collect();
        let nat = super::nat::Nat::new(info.relay_service, &relays);
        let mut this = Self {
            swarm,
            commands,
            service,
            durability: Durability::spawn(store.clone()),
            history: HistoryWriter::spawn(store.clone()),
            hooks: HookNotes::new(info.data_dir_path.clone(), info.notes_dir.clone()),
            store,
            info,
            events,
            queries: HashMap::new(),
            dials: HashMap::new(),
            bridge,
            inbound,
            _inbound_tx: inbound_tx,
            store_watch,
            mirror,
            sync,
            nat,
            race,
            repo_queries: HashMap::new(),
            disk_waited: 0,
            nostr_comments: Vec::new(),
        };
        // The relay service waits for our own word (`node::nat`), never for libp2p's own rule
        // (which would count a relayed address of ours as reachability).
        if let Some(relay) = this.swarm.behaviour_mut().relay.as_mut() {
            relay.set_status(Some(libp2p::relay::Status::Disable));
        }
        let loopback_only = this.swarm.listeners().all(super::service::discovery::is_loopback);
        this.nat.set_loopback_only(loopback_only);
        this.nat_plan();
        this.run_io();
        this.hooks.ingest(&mut this.service, disk!(this), &this.store);
        this.run_io();
        this
    }

    pub fn local_peer_id(&self) -> libp2p::PeerId {
        *self.swarm.local_peer_id()
    }

    /// Runs until a shutdown command or `stop` resolves.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        // As many as the rooms' histories and the feeds hold: read off this thread, after "ready".
        let mut seen = Some(super::disk::read_seen(self.store.clone()));
        // After "ready", off this thread: it runs git for each repository.
        self.hooks.survey(self.service.repos());
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
                Some(message) = self.inbound.recv() => self.service.from_nostr(message, Now::system(), disk!(self)),
                Some(event) = self.mirror.events.recv() => self.mirror_event(event),
                Some(event) = self.sync.events.recv() => self.sync_event(event),
                wake = self.hooks.next() => self.hook_wake(wake),
                ids = super::disk::seen_read(&mut seen) => self.service.remember_seen(ids),
                // Last: the disk threads' work once everything ready has run, the connections'
                // tasks that send what was just published included.
                _ = tokio::task::yield_now(), if self.disk_waits() => self.flush_disk(false),
                _ = tick.tick() => {
                    if !self.info.data_dir_path.exists() {
                        tracing::warn!("the data dir is gone, stopping");
                        break;
                    }
                    if self.store_watch.look(&self.store) {
                        self.store_reopened();
                        seen = Some(super::disk::read_seen(self.store.clone()));
                    }
                    self.maintain();
                    self.nat_plan();
                }
            }
            self.run_io();
            if self.disk_waits() {
                // A loop that is never idle still hands them over, a few turns late.
                self.disk_waited += 1;
                if self.disk_waited >= MAX_DISK_WAIT {
                    self.flush_disk(false);
                }
            }
        }
        self.flush_disk(true);
        // Whatever was written without fsync since the last sync.
        if let Err(e) = self.store.sync() {
            tracing::warn!(error = %e, "cannot sync the store");
        }
    }

    /// Handles `first` and whatever else is queued (up to [`COMMAND_BATCH`]), publishes, and
    /// makes the batch's writes durable with one fsync (group commit) before the answers that
    /// wait for it go out. Returns true when one of them asked the node to stop.
    fn handle_commands(&mut self, first: Command) -> bool {
        let mut stopping = false;
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(command) = next.take() {
            stopping |= self.handle_command(command);
            handled += 1;
            if handled < COMMAND_BATCH {
                next = self.commands.try_recv().ok();
            }
        }
        // Publish first: a message that left before a crash is not lost to anyone, and the room
        // does not wait for our disk. Once the swarm has sent what was just published, the sync
        // thread fsyncs and answers ([`Self::flush_disk`]).
        self.service.flush(Now::system(), disk!(self));
        self.run_io();
        if stopping {
            self.flush_disk(true);
        }
        stopping
    }

    /// Whether writes wait to be handed to the disk threads.
    fn disk_waits(&self) -> bool {
        self.history.has_pending() || self.durability.has_batch() || !self.nostr_comments.is_empty()
    }

    /// Hands the waiting writes to the disk threads: received messages to the history writer,
    /// our room messages to the Nostr queue, the command batch's published messages and answers
    /// to the sync thread (which fsyncs, then answers: the queued events are durable by then). The event loop does this when nothing else is ready, so that waking those
    /// threads (and their CPU time, on a busy machine) comes after the messages went out.
    /// `inline` (the node is stopping): the batch is made durable and answered here and now.
    fn flush_disk(&mut self, inline: bool) {
        if !inline {
            // Whoever our sends and writes just woke (a peer's node or a follower on this
            // machine, over loopback or the control socket) was queued on this CPU, the kernel
            // expecting the waker to sleep: it runs now, not after our bookkeeping.
            std::thread::yield_now();
        }
        self.disk_waited = 0;
        self.queue_nostr_comments();
        self.history.flush();
        self.durability.commit_batch(&self.store, inline);
    }

    /// One command: the service's, or answered here from the store, the swarm or the bridge.
    /// Returns true for a shutdown.
    fn handle_command(&mut self, command: Command) -> bool {
        let now = Now::system();
        match command {
            Command::Status(reply) => {
                let _ = reply.send(Ok(self.status()));
            }
            Command::Peers(reply) => {
                let mut peers = self.service.peers(now);
                let gossipsub = &self.swarm.behaviour().gossipsub;
                for p in &mut peers {
                    p.score = p.peer_id.parse().ok().and_then(|id| gossipsub.peer_score(&id));
                }
                let _ = reply.send(Ok(peers));
            }
            Command::RegisterRepo { repo, reply } => {
                self.service.register(repo, reply, disk!(self));
                self.service.repo_peers_tick(now);
            }
            Command::UnregisterRepo { repo, reply } => self.service.unregister(repo, reply, disk!(self)),
            Command::Repos(reply) => {
                let last = |r: &crate::proto::repo::RepoInfo| self.store.last_announced(&r.id).ok().flatten();
                let repos = self.service.repos().iter().map(|r| RegisteredRepo {
                    repo: r.clone(),
                    last_announced: last(r).map(|(commit, at)| Announced { commit, at }),
                });
                let _ = reply.send(Ok(repos.collect()));
            }
            Command::Shutdown(reply) => {
                let _ = reply.send(Ok(()));
                return true;
            }
            Command::Announce { repo, envelope, reply } => {
                self.service.announce(repo, envelope, reply, now, disk!(self))
            }
            Command::IngestSpool(reply) => {
                // The hook's slow path rang: what it could not spool (a full disk) is in a reflog.
                self.spool_changed(true);
                let _ = reply.send(Ok(()));
            }
            Command::Log { repo, limit, before, filter, reply } => {
                if before.is_none() {
                    self.service.sync_if_stale(&repo, now);
                }
                // Read by the history thread, after the announcements it still has to write.
                self.history.after_writes(move |store| {
                    let page = store.feed_page(&repo, before, limit, PAGE_BYTES, |e| filter.matches_json(e));
                    let page = page.map(|(items, next)| Page { items, next });
                    let _ = reply.send(page.map_err(|e| Failure::new(format!("cannot read the feed: {e}"))));
                });
            }
            Command::FeedCommits { repo, prefix, limit, reply } => {
                if !crate::proto::announce::is_id_prefix(&prefix) {
                    let e = format!("{prefix:?} is not the start of a commit id (hex digits)");
                    let _ = reply.send(Err(Failure::new(e)));
                    return false;
                }
                self.history.after_writes(move |store| {
                    let found = store.feed_commits(&repo, &prefix, limit.min(MAX_FEED_COMMITS));
                    let _ = reply.send(found.map_err(|e| Failure::new(format!("cannot read the feed: {e}"))));
                });
            }
            Command::ChatSend { repo, envelope, thread, reply } => {
                self.service.chat_send(repo, envelope, thread, reply, now, disk!(self))
            }
            // Read by the history thread, after the received messages it still has to write.
            Command::ChatHistory { room, limit, before, arrived_since, reply } => {
                self.history.read(PageRead { room, before, limit, arrived_since, reply })
            }
            Command::ChatJoin { repo, thread, reply } => {
                self.service.sync_if_stale(&repo.id, now);
                self.service.chat_join(repo, thread, reply)
            }
            Command::KvPut { repo, key, value, name, reply } => {
                self.service.kv_put(repo, key, value, name, reply, now, disk!(self))
            }
            Command::KvGet { repo, key, reply } => self.service.kv_get(repo, key, reply, now, disk!(self)),
            Command::KvList { repo, after, all, reply } => self.service.kv_list(&repo, after, all, reply, disk!(self)),
            Command::RefsPublish { repo, refs, name, reply } => {
                self.service.refs_publish(repo, refs, name, reply, now, disk!(self))
            }
            Command::NotePut { repo, notes_ref, commit, text, name, reply } => {
                self.service.note_put(repo, notes_ref, commit, text, name, reply, now, disk!(self))
            }
            Command::NotesIndex { repo, notes_ref, commits, name, reply } => {
                self.service.notes_index(repo, notes_ref, commits, name, reply, now, disk!(self))
            }
            Command::NostrStatus(reply) => {
                let _ = reply.send(Ok(self.nostr_status()));
            }
            Command::MirrorSync { repo, author, reply } => {
                self.service.mirror_sync(repo, author, reply, now, disk!(self))
            }
            Command::MirrorPublish { repo, refs, head, reply } => {
                self.service.mirror_publish(repo, refs, head, reply, now, disk!(self))
            }
        }
        self.run_io();
        false
    }

    /// Carries out what the service asked for; what that brings back (a publish's answer) may
    /// ask for more.
    fn maintain(&mut self) {
        self.durability.sync_soon(&self.store);
        self.hooks.ingest(&mut self.service, disk!(self), &self.store);
        self.hooks.retry_rebasing(&mut self.service, disk!(self), &self.store);
        self.hooks.unpublish_gone_refs(&mut self.service, disk!(self));
        self.service.tick(Now::system(), disk!(self));
        if self.hooks.take_wrote() {
            self.durability.wrote();
        }
    }

    /// The store was reopened (a full disk had space again): it went back to its last durable
    /// state, so the outbox in memory is read back, the seen sets are forgotten (the caller reads
    /// them again; the feed is asked meanwhile), the DHT records it could not take are stored,
    /// and the reflogs are read for the commits made meanwhile.
    fn store_reopened(&mut self) {
        self.service.store_rolled_back();
        match self.store.outbox() {
            Ok(stored) => self.service.reload_outbox(stored),
            Err(e) => tracing::warn!(error = %e, "cannot read the outbox back"),
        }
        self.swarm.behaviour_mut().kad.store_mut().persist_pending();
        self.spool_changed(true);
    }
}
