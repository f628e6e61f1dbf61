//! What the node answers, typed: one answer type per request kind, and the [`Command`] the
//! control server hands the node for each request, carrying a reply channel of that type.
//!
//! This is where a request and its answer are paired (as in rust-libp2p's file-sharing example:
//! commands carry `oneshot` senders of their own answer type). The control client decodes each
//! answer as the same type; the wire (JSON lines, [`super::proto`]) carries the answer as it
//! serialises.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::proto::announce::{Commit, FeedEntry};
use crate::proto::chat::ChatEntry;
use crate::proto::envelope::Envelope;
use crate::proto::kv::Record;
use crate::proto::repo::{RepoId, RepoInfo};

/// Why the node could not do what it was asked, in one line for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure(String);

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into().replace(['\n', '\r'], " "))
    }

    /// An error and its causes on one line (a cause whose text the message already has is
    /// left out: many of our errors quote their source).
    pub fn of(error: &dyn std::error::Error) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        Self::new(message)
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The answer to a request the node took but will not carry out: it is stopping.
pub const SHUTTING_DOWN: &str = "the node is shutting down";

/// Where the answer to a command goes.
pub type Reply<T> = oneshot::Sender<Result<T, Failure>>;

/// A control request as the node receives it: the request and the channel for its typed answer.
#[derive(Debug)]
pub enum Command {
    /// Who the node is and what is in force.
    Status(Reply<NodeStatus>),
    /// Connected peers.
    Peers(Reply<Vec<PeerInfo>>),
    /// A repository of ours: the node joins its topics and reads its reflog from now on;
    /// answered with the registry's entry (the name every command shows).
    RegisterRepo { repo: RepoInfo, reply: Reply<RepoInfo> },
    /// The repository leaves the registry: its topics are left, its reflog no longer read.
    /// Answered with the entry it had.
    UnregisterRepo { repo: RepoId, reply: Reply<RepoInfo> },
    /// The registered repositories, with our last announcement in each.
    Repos(Reply<Vec<RegisteredRepo>>),
    /// Graceful shutdown; answered just before the node stops.
    Shutdown(Reply<()>),
    /// A signed announcement for the durable outbox; answered once it is stored.
    Announce { repo: RepoInfo, envelope: Envelope, reply: Reply<Queued> },
    /// The hook left something in the spool.
    IngestSpool(Reply<()>),
    /// A page of the announcements received for a repository that `filter` keeps, newest
    /// first, from `before` on.
    Log { repo: RepoId, limit: usize, before: Option<u64>, filter: LogFilter, reply: Reply<Page<FeedEntry>> },
    /// The commits announced for a repository whose id starts with `prefix`, at most `limit`.
    FeedCommits { repo: RepoId, prefix: String, limit: usize, reply: Reply<Vec<Commit>> },
    /// A signed room message of ours (in a commit's thread with `thread`).
    ChatSend { repo: RepoInfo, envelope: Envelope, thread: Option<String>, reply: Reply<ChatSent> },
    /// A page of a room's messages, newest first, from `before` on.
    ChatHistory {
        room: String,
        limit: usize,
        before: Option<u64>,
        arrived_since: Option<u64>,
        reply: Reply<Page<ChatEntry>>,
    },
    /// Join a room without sending.
    ChatJoin { repo: RepoInfo, thread: Option<String>, reply: Reply<()> },
    /// Sign `value` (None: a tombstone) for `key` as our user, named `name`, merge it into the
    /// repository's record and put it in the DHT.
    KvPut { repo: RepoInfo, key: String, value: Option<Vec<u8>>, name: Option<String>, reply: Reply<KvStored> },
    /// Look `key` up in the DHT (every copy found merged with ours).
    KvGet { repo: RepoId, key: String, reply: Reply<KvFound> },
    /// A page of the keys this node wrote in the repository, in order, from after `after`:
    /// those that hold a value of ours, or with `all` every one (tombstones and git-p2p's own
    /// keys marked).
    KvList { repo: RepoId, after: Option<String>, all: bool, reply: Reply<Page<KvKey, String>> },
    /// Publish our branches and tags (ref name -> object id): each ref's key, the refs index,
    /// and a tombstone for each ref published before that is not there any more.
    RefsPublish { repo: RepoInfo, refs: BTreeMap<String, String>, name: Option<String>, reply: Reply<Published> },
    /// Publish our note on `commit` in `notes_ref`.
    NotePut {
        repo: RepoInfo,
        notes_ref: String,
        commit: String,
        text: Vec<u8>,
        name: Option<String>,
        reply: Reply<KvStored>,
    },
    /// Publish the list of the commits our notes in `notes_ref` annotate, and a tombstone for
    /// each note published before whose commit is not in it any more.
    NotesIndex {
        repo: RepoInfo,
        notes_ref: String,
        commits: BTreeSet<String>,
        name: Option<String>,
        reply: Reply<Published>,
    },
    /// The Nostr bridge: relays, their state, events waiting.
    NostrStatus(Reply<NostrStatus>),
    /// Bring the mirror of `repo` up to the tips its authors signed (`author`: one of them,
    /// else all), fetching from peers what it lacks; answered once it has them.
    MirrorSync { repo: RepoId, author: Option<String>, reply: Reply<MirrorSynced> },
    /// Our refs (name, object id) moved in the working repository `repo.git_dir`: copy them into
    /// the mirror and publish them in the DHT.
    MirrorPublish { repo: RepoInfo, refs: Vec<(String, String)>, head: Option<String>, reply: Reply<()> },
}

/// The mirror has every signed tip asked for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MirrorSynced {
    /// The git namespace of the mirror that serves what was asked for: an author's PeerId, or
    /// `_all` for every author ([`crate::proto::remote::ALL`]).
    pub namespace: String,
    /// Peers (short names) the fetch got objects from.
    pub fetched_from: Vec<String>,
    /// Peers dropped for advertising tips their authors never signed.
    pub dropped: Vec<String>,
}

/// One page of an answer that can be long: its items, and where the next page starts (None:
/// this was the last). See [`super::proto::PAGE_BYTES`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Page<T, C = u64> {
    pub items: Vec<T>,
    pub next: Option<C>,
}

/// An announcement is in the durable outbox.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Queued {
    /// Announcements waiting for a peer, this one included.
    pub pending: usize,
}

/// A room message was stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatSent {
    pub id: String,
    /// Peers in the room right now (0: it waits in the outbox until someone joins).
    pub peers: usize,
    /// It waits in the outbox: nobody is in the room, or earlier messages go first (peers take
    /// at most 20 messages a second from one author, and the node sends at that pace).
    #[serde(default)]
    pub queued: bool,
}

/// A DHT entry of ours was stored.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvStored {
    /// Peers that took it (0: only here so far; it is republished later).
    pub replicas: usize,
    /// Peers the DHT query asked.
    pub requests: u32,
}

/// What a DHT lookup found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KvFound {
    /// Every copy found, merged with ours; None when nobody has the key.
    pub record: Option<Record>,
    /// Peers the DHT query asked.
    pub requests: u32,
}

/// A key this node wrote.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvKey {
    pub key: String,
    /// Unix ms of our last write.
    pub time: u64,
    /// Our last write was a tombstone (`kv rm`).
    #[serde(default)]
    pub removed: bool,
    /// One of git-p2p's own keys (refs, notes: [`crate::proto::kv::reserved`]).
    #[serde(default)]
    pub internal: bool,
}

/// A set of our records (refs, notes) was published.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Published {
    /// How many are published now.
    pub count: usize,
    /// What was published before and is not any more (each got a tombstone).
    pub removed: Vec<String>,
    /// Peers that took the index (0: only here so far; it is republished later).
    pub replicas: usize,
}

/// A registered repository, as `git p2p repos` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegisteredRepo {
    pub repo: RepoInfo,
    /// Our last announcement in it.
    pub last_announced: Option<Announced>,
}

/// One of our announcements.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Announced {
    pub commit: String,
    /// Unix ms.
    pub at: u64,
}

/// Which announcements `git p2p log` shows; the node applies it to the feed (so that `-n 20`
/// finds 20 matching ones however many others came since) and the client to what it follows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogFilter {
    /// By one of these authors: PeerIds, or their short forms ([`crate::proto::peer::short`]);
    /// empty: by anyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authors: Vec<String>,
    /// Made on this branch (a full ref name, `refs/heads/main`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Announced at or after this time (Unix ms, the author's clock: the time `log` shows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Taken by the node at or after this time (Unix ms, the node's clock): what a follower
    /// back from a gap missed, wherever in time it sorts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrived_since: Option<u64>,
}

impl LogFilter {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn matches(&self, entry: &FeedEntry) -> bool {
        self.keeps(&entry.peer, entry.commit.ref_name.as_deref(), entry.announced_at)
            && self.arrived_since.is_none_or(|t| entry.received_at >= t)
    }

    /// [`LogFilter::matches`] of a feed entry as the store keeps it (its JSON), reading only
    /// the fields it looks at: the node runs through the whole feed for a filter few match.
    pub fn matches_json(&self, json: &[u8]) -> bool {
        #[derive(Deserialize)]
        struct Head<'a> {
            #[serde(borrow)]
            peer: std::borrow::Cow<'a, str>,
            #[serde(borrow, default)]
            ref_name: Option<std::borrow::Cow<'a, str>>,
            announced_at: u64,
            #[serde(default)]
            received_at: u64,
        }
        serde_json::from_slice::<Head>(json).is_ok_and(|h| {
            self.keeps(&h.peer, h.ref_name.as_deref(), h.announced_at)
                && self.arrived_since.is_none_or(|t| h.received_at >= t)
        })
    }

    fn keeps(&self, peer: &str, ref_name: Option<&str>, announced_at: u64) -> bool {
        use crate::proto::peer::Author;
        let by = |a: &String| Author::Peer(a.clone()).matches(peer, None, "");
        (self.authors.is_empty() || self.authors.iter().any(by))
            && self.branch.as_ref().is_none_or(|b| ref_name == Some(b.as_str()))
            && self.since.is_none_or(|t| announced_at >= t)
    }
}

/// What the node streams to followers.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    Announcement(FeedEntry),
    Chat(ChatEntry),
}

/// The Nostr bridge as the node sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NostrStatus {
    /// False when no relay is configured (`p2p.relay`): nothing is published.
    pub enabled: bool,
    /// The key events are signed with.
    pub npub: String,
    pub relays: Vec<RelayState>,
    /// Events not yet accepted by every relay they are for.
    pub pending: usize,
}

impl NostrStatus {
    /// One line for `daemon status` and the chat header: "1/2 relay(s) connected, 3 event(s) pending".
    pub fn summary(&self) -> String {
        if !self.enabled {
            return "off".to_string();
        }
        let connected = self.relays.iter().filter(|r| r.state == "connected").count();
        format!("{connected}/{} relay(s) connected, {} event(s) pending", self.relays.len(), self.pending)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RelayState {
    pub url: String,
    /// connected, connecting, disconnected, invalid (a URL that cannot be a relay), ...
    pub state: String,
    /// Events this relay accepted (OK true) since the node started.
    pub accepted: u64,
    /// Events waiting for this relay.
    pub pending: usize,
    /// The last refusal or failure, as the relay or the connection put it.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    /// git-p2p version of the node binary.
    pub version: String,
    pub protocol: u32,
    pub pid: u32,
    pub peer_id: String,
    pub npub: String,
    pub name: Option<String>,
    pub data_dir: String,
    pub socket: String,
    pub log_file: String,
    /// Addresses the node listens on (concrete, ports resolved).
    pub listen_addrs: Vec<String>,
    pub started_at: u64,
    pub connected_peers: usize,
    /// The most peers connected at once since the node started (`p2p.max-peers` bounds it;
    /// peers being closed to make room do not count).
    #[serde(default)]
    pub peers_most: usize,
    pub known_peers: usize,
    pub repos: Vec<RepoInfo>,
    pub config: ConfigInForce,
    #[serde(default)]
    pub nostr: NostrStatus,
    /// Announcements waiting for a peer in their repository's topic.
    #[serde(default)]
    pub outbox: usize,
    /// Repositories (their git dirs) whose new commits wait for a rebase there to end.
    #[serde(default)]
    pub rebasing: Vec<String>,
    /// The DHT records this node holds.
    #[serde(default)]
    pub dht: DhtRecords,
    /// Peers cut off for flooding this node with connections (refused for a while).
    #[serde(default)]
    pub banned: Vec<String>,
    /// The store: whether it takes writes (a full disk, a damaged file).
    #[serde(default)]
    pub store: StoreStatus,
    /// DHT keys of ours still to fetch back from peers' copies (after a repair).
    #[serde(default)]
    pub restoring: usize,
    /// Our latest dial of each peer we dialled lately (bootstrap peers first).
    #[serde(default)]
    pub dials: Vec<DialOutcome>,
    /// How far the clocks of peers we heard from lately are from ours.
    #[serde(default)]
    pub clocks: Vec<ClockReading>,
    /// Peers not asked for git objects for a while: they advertised tips their authors never
    /// signed.
    #[serde(default)]
    pub distrusted: Vec<String>,
    /// Reachability, relay reservations and the relay service.
    #[serde(default)]
    pub nat: NatStatus,
    /// Catching up with peers (`/git-p2p/sync/1`).
    #[serde(default)]
    pub sync: SyncStatus,
}

/// Catching up with peers: per repository when it last synced and with how many peers, and
/// what the node's syncs exchanged since it started.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncStatus {
    pub repos: Vec<SyncRepoStatus>,
    /// Our sessions under way.
    pub running: usize,
    /// Our sessions ended since start.
    pub sessions: u64,
    /// How long the last session that ended took (ms), ours or a peer's.
    #[serde(default)]
    pub last_session_ms: Option<u64>,
    /// Bytes of sync sent and received (both ends of every session, ours and peers').
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// New items syncs brought.
    pub items: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncRepoStatus {
    pub repo: RepoId,
    /// When a sync of it last ended well (Unix ms).
    pub last_sync: Option<u64>,
    /// Peers it synced with in the last 20 minutes.
    pub peers: usize,
}

/// What became of our latest dial of a peer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DialOutcome {
    pub peer: String,
    /// The addresses dialled.
    pub addrs: Vec<String>,
    /// When the dial started, or ended (Unix ms).
    pub at: u64,
    /// A configured bootstrap peer.
    pub bootstrap: bool,
    pub result: DialResult,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DialResult {
    UnderWay,
    Connected,
    Failed { error: String },
}

/// A peer's clock against ours, read off the times it signs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClockReading {
    pub peer: String,
    /// Their clock minus ours, at most (a message is never early, only late): positive when
    /// theirs is ahead.
    pub offset_ms: i64,
    /// Messages the estimate rests on.
    pub samples: usize,
    /// When the latest arrived (Unix ms).
    pub at: u64,
}

/// The DHT records a node holds, by whose they are.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DhtRecords {
    /// Published by this node.
    pub ours: usize,
    /// Of repositories registered here, published by peers.
    pub registered: usize,
    /// Held for others (bounded; the farthest from our key give way first).
    pub strangers: usize,
    /// Still being counted after start (the numbers are not in yet).
    #[serde(default)]
    pub counting: bool,
}

/// The node's store, as `daemon status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StoreStatus {
    /// "ok"; "full" (the disk is full: nothing more is stored until there is space, reads go
    /// on); "failing" (writes fail with another I/O error); "damaged" (the file is: nothing is
    /// read or written until `git p2p daemon repair`).
    pub state: String,
    pub path: String,
    /// What commands report while the store is not ok, in one line.
    pub problem: Option<String>,
    /// Since when it is not ok (Unix ms).
    pub since: Option<u64>,
    /// Size of the file in bytes.
    pub bytes: u64,
}

/// The settings the node started with (it re-reads git config only on restart).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigInForce {
    pub listen: Vec<String>,
    pub bootstrap: Vec<String>,
    pub mdns: bool,
    pub dht_mode: String,
    pub relays: Vec<String>,
    /// Other authors' announced work is fetched into the mirror as it is announced.
    #[serde(default = "yes")]
    pub replicate: bool,
    /// The largest pack one fetch from a peer may bring, in bytes.
    #[serde(default)]
    pub max_fetch_size: u64,
    /// `p2p.relay-service` (auto, on, off).
    #[serde(default)]
    pub relay_service: String,
    /// `p2p.circuit-relay`.
    #[serde(default)]
    pub circuit_relays: Vec<String>,
    /// `p2p.max-peers`.
    #[serde(default)]
    pub max_peers: usize,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerInfo {
    pub peer_id: String,
    pub name: Option<String>,
    pub agent: Option<String>,
    /// Addresses of our open connections to this peer.
    pub addresses: Vec<String>,
    /// "tcp" or "quic": the transport of the first open connection.
    pub transport: String,
    pub rtt_ms: Option<f64>,
    /// Ids of our registered repos that this peer has too.
    pub repos: Vec<RepoId>,
    /// Seconds since the first open connection was established.
    pub connected_secs: u64,
    /// Our gossipsub score of the peer: negative after it sent messages we rejected.
    pub score: Option<f64>,
    /// How we reach it: "direct", "relayed" (through `relay`) or "holepunched" (a direct
    /// connection that hole punching made through NATs).
    #[serde(default = "direct")]
    pub connection: String,
    /// The relay's peer id, for a relayed connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
}

fn direct() -> String {
    "direct".into()
}

/// The node's view of its reachability and of relays (NAT traversal).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NatStatus {
    /// "public" (AutoNAT confirmed an address), "private" (AutoNAT found none reachable) or
    /// "unknown" (not tested yet).
    pub reachability: String,
    /// Our addresses AutoNAT confirmed reachable from outside.
    pub confirmed: Vec<String>,
    /// Our reservations on relays (while we are not reachable).
    pub reservations: Vec<Reservation>,
    /// `p2p.relay-service`: auto, on or off.
    pub relay_service: String,
    /// Whether we relay for others now.
    pub serving: bool,
    /// Circuits we relay now, and reservations we hold for others.
    pub circuits: usize,
    pub reserved_for_others: usize,
    /// Hole punches that made a direct connection, and those that failed, since start.
    pub hole_punched: u64,
    pub hole_punch_failed: u64,
}

/// A slot on a relay.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reservation {
    pub relay: String,
    /// Our address through it (`.../p2p/<relay>/p2p-circuit`).
    pub address: String,
    /// The relay accepted it.
    pub active: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_filter_reads_an_entry_and_its_json_alike() {
        let entry: FeedEntry = serde_json::from_value(serde_json::json!({
            "repo": "a".repeat(40), "peer": "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X", "name": "bob",
            "ref_name": "refs/heads/main", "commit": "b".repeat(40), "parents": [], "author": "bob",
            "summary": "s \"quoted\"", "commit_time": 1, "announced_at": 5000, "received_at": 5001,
        }))
        .unwrap();
        let json = serde_json::to_vec(&entry).unwrap();
        let short = |p: &str| LogFilter { authors: vec![p.into()], ..LogFilter::default() };
        let branch = |b: &str| LogFilter { branch: Some(b.into()), ..LogFilter::default() };
        let since = |t: u64| LogFilter { since: Some(t), ..LogFilter::default() };
        for (filter, keeps) in [
            (LogFilter::default(), true),
            (short("aaaaNft9HyQ6X"), false),
            (short("YbU1Nft9HyQ6X"), true),
            (short("bU1Nft9HyQ6X"), true),
            (short("12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"), false),
            (branch("refs/heads/main"), true),
            (branch("refs/heads/mai"), false),
            (since(5000), true),
            (since(5001), false),
        ] {
            assert_eq!(filter.matches(&entry), keeps, "{filter:?}");
            assert_eq!(filter.matches_json(&json), keeps, "{filter:?} on JSON");
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot store: {0}")]
    struct Outer(#[source] Inner);
    #[derive(Debug, thiserror::Error)]
    #[error("disk full\nretry later")]
    struct Inner;

    #[test]
    fn a_failure_is_one_line_without_repeated_causes() {
        let f = Failure::of(&Outer(Inner));
        assert_eq!(f.message(), "cannot store: disk full retry later");
    }
}
