//! Topics and what each carries: a repository's commits, its room, its threads (every commit
//! thread's messages, which every node of the repository hears), one commit's thread (where
//! nodes before the threads topic publish). Whatever arrives (by gossip or through a Nostr
//! relay) is checked here before anything else sees it: well-formed, validly signed in its one
//! spelling, for the topic's repository and thread, within bounds, and within its author's rate.
//! New announcements go to the feed, new room messages to followers and the history; a thread's
//! message also leaves a notice (its first words) in the repository's room, so that replies are
//! seen there without the thread filling the room. Our own room messages leave from here too.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use libp2p::gossipsub::{MessageAcceptance, PublishError, Sha256Topic, TopicHash};
use libp2p::PeerId;

use super::{Ack, BridgeOp, Comment, Disk, Io, Service, Ticket};
use crate::bridge::Inbound;
use crate::clock::Now;
use crate::control::api::{ChatSent, Failure, NodeEvent, Reply};
use crate::proto::announce::{AnnounceError, Announcement, FeedEntry};
use crate::proto::chat::{room_id, ChatEntry, ChatError, ChatMessage};
use crate::proto::envelope::{Envelope, EnvelopeError};
use crate::proto::outbox::OutboxEntry;
use crate::proto::repo::{RepoId, RepoInfo};
use crate::store::SeenIds;

/// Messages (of each kind) one author may have taken per second on average, and in a burst:
/// more is dropped, not stored, shown or forwarded. Being over the rate is not misconduct (a
/// busy user, a clock burst): it costs the forwarding peer no score. Our own node holds what we
/// send to the same rate, so that peers take all of it.
pub const CHAT_RATE: f64 = 20.0;
pub const CHAT_BURST: f64 = 100.0;
/// The same for announcements: a commit is rarer than a line of chat, but a patch series applied
/// with `git am` or a script makes hundreds at once, and each is small.
pub const ANNOUNCE_RATE: f64 = 50.0;
pub const ANNOUNCE_BURST: f64 = 500.0;
/// The share of what receivers take that our node sends at, per author and kind.
pub const SEND_SHARE: f64 = 0.9;
/// How far ahead of our clock a message may be dated: further, it is dropped (it would sit at
/// the top of a feed or room for as long as it claims).
pub const MAX_AHEAD: Duration = Duration::from_secs(10 * 60);
/// How old a message may be: older, it is dropped (a replay of something the room has long
/// forgotten; the window of the stores and of catching up).
pub const MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Authors tracked by the rate limiter before it starts afresh (bounded memory).
const CHAT_RATE_AUTHORS: usize = 10_000;
/// Room message ids remembered in memory to tell new from repeated (about 100 bytes each), and
/// as many announcement keys (about 150 bytes each).
const RECENT_IDS: usize = crate::store::MAX_SEEN;

/// What a subscribed topic carries: a repository's commits, its room or one commit's thread
/// (`Chat`), or every commit thread of it (`Threads`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Room {
    Commits { repo: RepoId },
    Chat { repo: RepoId, thread: Option<String> },
    Threads { repo: RepoId },
}

impl Room {
    fn repo(&self) -> &RepoId {
        match self {
            Room::Commits { repo } | Room::Chat { repo, .. } | Room::Threads { repo } => repo,
        }
    }

    pub fn topic(&self) -> Sha256Topic {
        use crate::proto::topic;
        match self {
            Room::Commits { repo } => topic::commits(repo),
            Room::Chat { repo, thread: None } => topic::chat(repo),
            Room::Chat { repo, thread: Some(commit) } => topic::commit_thread(repo, commit),
            Room::Threads { repo } => topic::threads(repo),
        }
    }
}

/// Why something that arrived was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("not for this topic's repository or thread")]
    OffTopic,
    #[error(transparent)]
    Announcement(#[from] AnnounceError),
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error("{0} sends faster than {CHAT_RATE} messages/s")]
    Flood(String),
    #[error("a Nostr comment over {} characters", crate::proto::chat::MAX_TEXT)]
    TooLong,
    #[error("dated {0} s ahead of our clock")]
    Ahead(u64),
    #[error("dated {0} days ago")]
    Stale(u64),
}

impl Refused {
    /// Whether the message was invalid (malformed, mis-signed, off-topic, out of bounds): only
    /// that costs the peer who forwarded it. Too fast or out of our time window is dropped
    /// without blame: an honest peer can forward it (a busy author, a skewed clock).
    pub fn is_invalid(&self) -> bool {
        !matches!(self, Refused::Flood(_) | Refused::TooLong | Refused::Ahead(_) | Refused::Stale(_))
    }
}

/// Whether a message dated `ts` (Unix ms) may be taken now.
fn in_window(ts: u64, now: Now) -> Result<(), Refused> {
    let ahead = ts.saturating_sub(now.unix_ms);
    if ahead > MAX_AHEAD.as_millis() as u64 {
        return Err(Refused::Ahead(ahead / 1000));
    }
    let age = now.unix_ms.saturating_sub(ts);
    if age > MAX_AGE.as_millis() as u64 {
        return Err(Refused::Stale(age / 86_400_000));
    }
    Ok(())
}

/// Which room messages a topic (or a relay) carries.
enum Expect {
    /// The repository's room, or this commit's thread.
    Exactly(Option<String>),
    /// Any commit thread of the repository.
    AnyThread,
    /// Whichever room the signed message names (a relay has no topics).
    Named,
}

/// What a message that arrived turned out to be.
#[derive(Debug)]
pub enum Arrival {
    /// An announcement not taken before, with its envelope (for the sync set); taken only once
    /// the disk can store it ([`Rooms::took`]).
    Announcement(FeedEntry, Box<Envelope>),
    /// A room message not seen before, with its envelope (none for a plain Nostr comment).
    Chat(ChatEntry, Option<Box<Envelope>>),
    /// A room message or an announcement we have (or one of ours).
    Seen,
    Refused(Refused),
}

/// One of our room messages published at once, until the network answered.
pub struct Sending {
    entry: ChatEntry,
    outbox: OutboxEntry,
    peers: usize,
    reply: Reply<ChatSent>,
}

pub struct Rooms {
    topics: HashMap<TopicHash, Room>,
    /// Per author: room messages, and separately announcements.
    chat_limiter: RateLimiter,
    announce_limiter: RateLimiter,
    /// The room messages taken, and the announcements ([`FeedEntry::seen_key`]): those since
    /// start, and once read ([`Self::remember`]) those the histories and feeds hold. Until then
    /// the store is asked too.
    seen: Recent,
    feed_seen: Recent,
    pub seen_complete: bool,
    /// Authors' clocks against ours, read off what they signed.
    pub clocks: super::clocks::Clocks,
}

impl Rooms {
    /// Rooms that know the seen sets, or (`None`) will be told them ([`Self::remember`]).
    pub fn new(seen: Option<SeenIds>) -> Self {
        let mut this = Self {
            topics: HashMap::new(),
            chat_limiter: RateLimiter::default(),
            announce_limiter: RateLimiter::new(ANNOUNCE_RATE, ANNOUNCE_BURST),
            seen: Recent::new(RECENT_IDS, []),
            feed_seen: Recent::new(RECENT_IDS, []),
            seen_complete: false,
            clocks: super::clocks::Clocks::default(),
        };
        if let Some(seen) = seen {
            this.remember(seen);
        }
        this
    }

    /// Remembers the ids of the messages the histories have and the keys of the announcements
    /// the feeds have: from now on the store is not asked.
    pub fn remember(&mut self, seen: SeenIds) {
        for id in seen.chat {
            self.seen.insert(id);
        }
        for key in seen.feed {
            self.feed_seen.insert(key);
        }
        self.seen_complete = true;
    }

    /// Forgets what was taken: the store went back to its last durable state (a reopen after
    /// a full disk), and some of it may not be in the histories and feeds after all (a peer's
    /// sync brings it again). The store is asked until [`Self::remember`] is told what it holds
    /// now.
    pub fn forget_seen(&mut self) {
        self.seen = Recent::new(RECENT_IDS, []);
        self.feed_seen = Recent::new(RECENT_IDS, []);
        self.seen_complete = false;
    }

    /// An announcement taken (given to the feed): a repeat of it is no news.
    pub fn took(&mut self, entry: &FeedEntry) {
        self.feed_seen.insert(entry.seen_key());
    }

    /// Joins `room`: its topic's hash, and the topic to subscribe to if the room is new to us.
    pub fn join(&mut self, room: Room) -> (TopicHash, Option<Sha256Topic>) {
        // A topic's hash is a SHA-256 and a base64: made once, as each message of ours joins.
        let topic = room.topic();
        let hash = topic.hash();
        if self.topics.contains_key(&hash) {
            return (hash, None);
        }
        self.topics.insert(hash.clone(), room);
        (hash, Some(topic))
    }

    /// Leaves every room of `repo` (its commits, its room, its commits' threads); their topics,
    /// to unsubscribe from.
    pub fn leave_repo(&mut self, repo: &RepoId) -> Vec<Sha256Topic> {
        let mut left = Vec::new();
        self.topics.retain(|_, room| {
            let leave = room.repo() == repo;
            if leave {
                left.push(room.topic());
            }
            !leave
        });
        left
    }

    /// A gossip message on `topic`, checked.
    pub fn arrival(&mut self, topic: &TopicHash, data: &[u8], me: &PeerId, now: Now) -> Arrival {
        let envelope = match Envelope::decode(data) {
            Ok(envelope) => envelope,
            Err(e) => return Arrival::Refused(e.into()),
        };
        match self.topics.get(topic) {
            Some(Room::Commits { repo }) if *repo == envelope.repo => self.announcement(envelope, me, now, None),
            Some(Room::Chat { repo, thread }) if *repo == envelope.repo => {
                let thread = thread.clone();
                self.chat(envelope, Expect::Exactly(thread), me, now, None)
            }
            Some(Room::Threads { repo }) if *repo == envelope.repo => {
                self.chat(envelope, Expect::AnyThread, me, now, None)
            }
            _ => Arrival::Refused(Refused::OffTopic),
        }
    }

    /// A room message or a plain comment that came through a Nostr relay.
    pub fn bridged(&mut self, inbound: Inbound, me: &PeerId, now: Now) -> Arrival {
        match inbound {
            Inbound::Envelope(envelope) => self.chat(envelope, Expect::Named, me, now, None),
            Inbound::Comment { repo, id, npub, text, created_at } => {
                // A plain Nostr client's text: no escape sequence reaches a reader's terminal.
                let text = crate::proto::chat::tame(&text);
                if text.chars().count() > crate::proto::chat::MAX_TEXT {
                    return Arrival::Refused(Refused::TooLong);
                }
                if let Err(why) = in_window(created_at.saturating_mul(1000), now) {
                    return Arrival::Refused(why);
                }
                if !self.chat_limiter.allow(&npub, now.mono) {
                    return Arrival::Refused(Refused::Flood(npub));
                }
                let entry = ChatEntry {
                    room: room_id(&repo, None),
                    id,
                    peer: npub,
                    name: None,
                    text,
                    sent_at: created_at.saturating_mul(1000),
                    received_at: now.unix_ms,
                    own: false,
                    via: Some("nostr".to_string()),
                    thread: None,
                };
                self.fresh(entry, None)
            }
        }
    }

    /// An envelope a peer's sync handed us as one of `kind`, whose signature the caller
    /// verified (`author`): the same checks as gossip (room, bounds, time window, seen ids), but
    /// not its author's rate: a catch-up brings in a burst what was said over days, and the
    /// sending peer's own budget ([`super::sync`]) bounds it instead.
    pub fn synced(
        &mut self,
        kind: crate::proto::sync::Kind,
        envelope: Envelope,
        author: PeerId,
        me: &PeerId,
        now: Now,
    ) -> Arrival {
        use crate::proto::sync::Kind;
        match kind {
            Kind::Announcements => self.announcement(envelope, me, now, Some(author)),
            Kind::Room => self.chat(envelope, Expect::Exactly(None), me, now, Some(author)),
            Kind::Threads => self.chat(envelope, Expect::AnyThread, me, now, Some(author)),
        }
    }

    /// A room message (in the room or thread `expect`ed): verified, within bounds and rate, and
    /// new? `synced`: its author, verified by the caller (a sync's item: no rate limit).
    fn chat(&mut self, envelope: Envelope, expect: Expect, me: &PeerId, now: Now, synced: Option<PeerId>) -> Arrival {
        let limit = synced.is_none();
        let author = match synced.map_or_else(|| envelope.verify(), Ok) {
            Ok(author) => author,
            Err(e) => return Arrival::Refused(e.into()),
        };
        let message = match ChatMessage::from_envelope(&envelope) {
            Ok(m) => m,
            Err(e) => return Arrival::Refused(e.into()),
        };
        let fits = match &expect {
            Expect::Exactly(thread) => message.thread == *thread,
            Expect::AnyThread => message.thread.is_some(),
            Expect::Named => true,
        };
        if !fits {
            return Arrival::Refused(Refused::OffTopic);
        }
        let author_id = author.to_string();
        self.clocks.observe(&author_id, envelope.ts, now);
        if let Err(why) = in_window(envelope.ts, now) {
            return Arrival::Refused(why);
        }
        if limit && !self.chat_limiter.allow(&author_id, now.mono) {
            return Arrival::Refused(Refused::Flood(author_id));
        }
        let entry = ChatEntry::new(&envelope, author_id, message, author == *me, now.unix_ms);
        self.fresh(entry, Some(Box::new(envelope)))
    }

    /// An announcement, verified, within bounds, time and its author's rate, as the feed keeps
    /// it. `synced`: as for [`Rooms::chat`].
    fn announcement(&mut self, envelope: Envelope, me: &PeerId, now: Now, synced: Option<PeerId>) -> Arrival {
        let limit = synced.is_none();
        let author = match synced.map_or_else(|| envelope.verify(), Ok) {
            Ok(author) => author,
            Err(e) => return Arrival::Refused(e.into()),
        };
        // Ours, back from a peer (a sync that ran before our own set had it): the feed holds
        // what peers announced, and the sync set has it already or takes it now.
        if author == *me {
            return Arrival::Seen;
        }
        let a = match Announcement::from_envelope(&envelope) {
            Ok(a) => a,
            Err(e) => return Arrival::Refused(e.into()),
        };
        let peer = author.to_string();
        self.clocks.observe(&peer, envelope.ts, now);
        if let Err(why) = in_window(envelope.ts, now) {
            return Arrival::Refused(why);
        }
        if limit && !self.announce_limiter.allow(&peer, now.mono) {
            return Arrival::Refused(Refused::Flood(peer));
        }
        let entry = FeedEntry {
            repo: envelope.repo.clone(),
            peer,
            name: a.name,
            commit: a.commit,
            announced_at: envelope.ts,
            received_at: now.unix_ms,
        };
        if self.feed_seen.contains(&entry.seen_key()) {
            return Arrival::Seen;
        }
        Arrival::Announcement(entry, Box::new(envelope))
    }

    fn fresh(&mut self, entry: ChatEntry, envelope: Option<Box<Envelope>>) -> Arrival {
        if self.seen.insert(entry.id.clone()) {
            Arrival::Chat(entry, envelope)
        } else {
            Arrival::Seen
        }
    }
}

impl Service {
    /// Joins a room; subscribes when it is new.
    pub(super) fn join(&mut self, room: Room) -> TopicHash {
        let (hash, new) = self.rooms.join(room);
        if let Some(topic) = new {
            self.push(Io::Subscribe(topic));
        }
        hash
    }

    /// Joins a repository's room (or a commit's thread) without sending.
    pub fn chat_join(&mut self, repo: RepoInfo, thread: Option<String>, reply: Reply<()>) {
        let id = repo.id.clone();
        self.join_repo(repo);
        self.join(Room::Chat { repo: id, thread });
        let _ = reply.send(Ok(()));
    }

    /// A gossip message: the verdict gossipsub forwards (or not) by. New announcements and room
    /// messages go to followers at once, and to the feed and the history off the event loop.
    pub fn gossip(
        &mut self,
        topic: &TopicHash,
        data: &[u8],
        source: Option<PeerId>,
        now: Now,
        disk: &mut dyn Disk,
    ) -> MessageAcceptance {
        let arrival = self.rooms.arrival(topic, data, &self.me.peer, now);
        self.take(arrival, source, now, disk)
    }

    /// A room message or comment from a Nostr relay.
    pub fn from_nostr(&mut self, inbound: Inbound, now: Now, disk: &mut dyn Disk) {
        let arrival = self.rooms.bridged(inbound, &self.me.peer, now);
        self.take(arrival, None, now, disk);
    }

    pub(super) fn take(
        &mut self,
        arrival: Arrival,
        source: Option<PeerId>,
        now: Now,
        disk: &mut dyn Disk,
    ) -> MessageAcceptance {
        match arrival {
            Arrival::Announcement(entry, envelope) => {
                // Neither forwarded nor taken while it cannot be stored: a sync brings it
                // once there is space again. A store that is down said so once.
                if let Err(e) = disk.writable() {
                    tracing::debug!(error = %e, "cannot store an announcement");
                    return MessageAcceptance::Ignore;
                }
                self.rooms.took(&entry);
                // Peers catching up get it from us: the envelope goes to the sync sets with it.
                if !self.rooms.seen_complete && disk.feed_has(&entry) {
                    disk.sync_keep(*envelope);
                    return MessageAcceptance::Ignore;
                }
                self.announced(&entry, now);
                self.push(Io::Emit(NodeEvent::Announcement(entry.clone())));
                disk.feed_received(entry, *envelope);
                MessageAcceptance::Accept
            }
            Arrival::Chat(entry, envelope) => {
                if let Some(envelope) = envelope {
                    disk.sync_keep(*envelope);
                }
                // Before the seen sets are read, the history is asked: a restart shows nothing
                // twice.
                if !self.rooms.seen_complete && disk.chat_has(&entry.id) {
                    return MessageAcceptance::Ignore;
                }
                let notice = entry.notice();
                self.push(Io::Emit(NodeEvent::Chat(entry.clone())));
                disk.chat_received(entry);
                if let Some(notice) = notice {
                    self.push(Io::Emit(NodeEvent::Chat(notice.clone())));
                    disk.chat_received(notice);
                }
                MessageAcceptance::Accept
            }
            Arrival::Seen => MessageAcceptance::Ignore,
            Arrival::Refused(why) if why.is_invalid() => {
                tracing::debug!(?source, error = %why, "rejected a message");
                MessageAcceptance::Reject
            }
            Arrival::Refused(why) => {
                tracing::debug!(?source, error = %why, "dropped a message");
                MessageAcceptance::Ignore
            }
        }
    }

    /// Our room message: with peers in the room and nothing of it waiting, published at once
    /// (its history is written before the answer); else stored and queued in the outbox.
    pub fn chat_send(
        &mut self,
        repo: RepoInfo,
        envelope: Envelope,
        thread: Option<String>,
        reply: Reply<ChatSent>,
        now: Now,
        disk: &mut dyn Disk,
    ) {
        // Not even published: a message the sender is told failed must not reach the room.
        if let Err(e) = disk.writable() {
            let _ = reply.send(Err(Failure::new(format!("cannot store the message: {e}"))));
            return;
        }
        if let Err(e) = envelope.verify_as(&self.me.key, &self.me.author) {
            let _ = reply.send(Err(Failure::new(format!("refusing to send a message with a {e}"))));
            return;
        }
        let message = match ChatMessage::from_envelope(&envelope) {
            Ok(m) if m.thread == thread && envelope.repo == repo.id => m,
            Ok(_) => {
                let _ = reply.send(Err(Failure::new("message, repo and thread disagree")));
                return;
            }
            Err(e) => {
                let _ = reply.send(Err(Failure::of(&e)));
                return;
            }
        };
        self.join_repo(repo.clone());
        // A thread's message goes where every node of the repository hears it.
        let room = match thread {
            Some(_) => Room::Threads { repo: repo.id.clone() },
            None => Room::Chat { repo: repo.id.clone(), thread: None },
        };
        let topic = self.join(room);
        self.push(Io::Bridge(BridgeOp::Comment(Comment {
            repo: repo.clone(),
            text: message.text.clone(),
            envelope: Box::new(envelope.clone()),
            thread: thread.clone(),
        })));
        disk.sync_keep(envelope.clone());
        let entry = ChatEntry::new(&envelope, self.me.peer_id.clone(), message, true, now.unix_ms);
        let peers = self.discovery.peers.audience(&topic);
        let outbox = OutboxEntry { repo, envelope, thread };
        if peers > 0 && !self.outbox.waits_for(&topic) && self.pacer.allow(&outbox.envelope, now.mono) {
            let n = self.ticket();
            let data = outbox.envelope.encode();
            self.sending.insert(n, Sending { entry, outbox, peers, reply });
            self.push(Io::Publish { ticket: Ticket::Chat(n), topic, data });
            return;
        }
        self.queue_chat(entry, outbox, peers, reply, disk);
    }

    /// The network's answer to a room message published at once.
    pub(super) fn chat_published(&mut self, n: u64, result: Result<(), PublishError>, disk: &mut dyn Disk) {
        let Some(Sending { entry, outbox, peers, reply }) = self.sending.remove(&n) else { return };
        if let Err(e) = result {
            tracing::debug!(error = %e, "message goes to the outbox");
            self.queue_chat(entry, outbox, peers, reply, disk);
            return;
        }
        let id = entry.id.clone();
        if self.rooms.seen.insert(id.clone()) {
            let notice = entry.notice();
            self.push(Io::Emit(NodeEvent::Chat(entry.clone())));
            disk.chat_published(entry);
            if let Some(notice) = notice {
                self.push(Io::Emit(NodeEvent::Chat(notice.clone())));
                disk.chat_published(notice);
            }
        }
        disk.reply_when_durable(Ack::new(reply, ChatSent { id, peers, queued: false }));
    }

    /// Our room message into the history and the outbox, until a peer is in the room (or, when
    /// we send faster than peers take, until it is its turn).
    fn queue_chat(
        &mut self,
        entry: ChatEntry,
        outbox: OutboxEntry,
        peers: usize,
        reply: Reply<ChatSent>,
        disk: &mut dyn Disk,
    ) {
        let id = entry.id.clone();
        self.rooms.seen.insert(id.clone());
        let notice = entry.notice();
        match disk.chat_insert(&entry) {
            Ok(true) => self.push(Io::Emit(NodeEvent::Chat(entry))),
            Ok(false) => {}
            Err(e) => {
                let _ = reply.send(Err(Failure::new(format!("cannot store the message: {e}"))));
                return;
            }
        }
        // The room's notice of it; the message itself is what must not be lost.
        match notice.map(|notice| disk.chat_insert(&notice).map(|new| new.then_some(notice))) {
            Some(Ok(Some(notice))) => self.push(Io::Emit(NodeEvent::Chat(notice))),
            Some(Err(e)) => tracing::warn!(error = %e, "cannot store a thread reply's notice in the room"),
            _ => {}
        }
        match disk.outbox_push(&outbox, false) {
            Ok(seq) => self.outbox.push(seq, outbox),
            Err(e) => {
                let _ = reply.send(Err(Failure::new(format!("cannot queue the message: {e}"))));
                return;
            }
        }
        disk.reply_when_durable(Ack::new(reply, ChatSent { id, peers, queued: true }));
    }
}

/// What our node sends, per author and kind: [`SEND_SHARE`] of what receivers take, so that a
/// message bunched with others on the way still finds a token at every peer.
pub struct Pacer {
    chat: RateLimiter,
    announcements: RateLimiter,
}

impl Default for Pacer {
    fn default() -> Self {
        Self {
            chat: RateLimiter::new(CHAT_RATE * SEND_SHARE, CHAT_BURST * SEND_SHARE),
            announcements: RateLimiter::new(ANNOUNCE_RATE * SEND_SHARE, ANNOUNCE_BURST * SEND_SHARE),
        }
    }
}

impl Pacer {
    /// True if `envelope` may go now.
    pub fn allow(&mut self, envelope: &Envelope, now: Instant) -> bool {
        let limiter =
            if envelope.kind == crate::proto::announce::KIND { &mut self.announcements } else { &mut self.chat };
        limiter.allow(&envelope.author, now)
    }
}

/// Token bucket per author: `burst` at once, then `rate` a second.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: HashMap<String, (f64, Instant)>,
}

impl Default for RateLimiter {
    /// What a receiver takes from an author: [`CHAT_BURST`], then [`CHAT_RATE`] a second.
    fn default() -> Self {
        Self::new(CHAT_RATE, CHAT_BURST)
    }
}

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self { rate, burst, tokens: HashMap::new() }
    }

    /// True if `author` may have one more message taken now.
    pub fn allow(&mut self, author: &str, now: Instant) -> bool {
        if !self.tokens.contains_key(author) && self.tokens.len() >= CHAT_RATE_AUTHORS {
            // Forget authors whose bucket has refilled anyway; active ones keep their state.
            let full = Duration::from_secs_f64(self.burst / self.rate);
            self.tokens.retain(|_, (_, last)| now.saturating_duration_since(*last) < full);
            if self.tokens.len() >= CHAT_RATE_AUTHORS {
                return false;
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        // Looked up by `&str`: an author already known costs no allocation.
        if !self.tokens.contains_key(author) {
            self.tokens.insert(author.to_string(), (burst, now));
        }
        let Some((tokens, last)) = self.tokens.get_mut(author) else { return false };
        *tokens = (*tokens + now.saturating_duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }
}

/// The ids seen lately, at most `cap` of them (the oldest are forgotten first).
pub struct Recent {
    set: HashSet<String>,
    order: VecDeque<String>,
    cap: usize,
}

impl Recent {
    pub fn new(cap: usize, known: impl IntoIterator<Item = String>) -> Self {
        let mut this = Self { set: HashSet::new(), order: VecDeque::new(), cap };
        for id in known {
            this.insert(id);
        }
        this
    }

    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    /// True if `id` was not seen before.
    pub fn insert(&mut self, id: String) -> bool {
        if self.set.contains(&id) {
            return false;
        }
        if self.order.len() >= self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(id.clone());
        self.order.push_back(id);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_are_bounded_and_forget_the_oldest() {
        let mut r = Recent::new(3, ["a".to_string()]);
        assert!(!r.insert("a".into()));
        assert!(r.insert("b".into()) && r.insert("c".into()) && r.insert("d".into()));
        assert!(r.insert("a".into()), "the oldest was forgotten");
        assert!(!r.insert("d".into()));
        assert_eq!(r.set.len(), 3);
    }

    #[test]
    fn the_limiter_allows_a_burst_then_the_rate() {
        let (mut limiter, t0) = (RateLimiter::default(), Instant::now());
        let allowed = (0..150).filter(|_| limiter.allow("eve", t0)).count();
        assert_eq!(allowed, CHAT_BURST as usize);
        assert!(limiter.allow("bob", t0), "another author has a bucket of their own");
        let later = t0 + Duration::from_secs(1);
        let refilled = (0..50).filter(|_| limiter.allow("eve", later)).count();
        assert_eq!(refilled, CHAT_RATE as usize, "one second refills {CHAT_RATE} messages");
    }
}
