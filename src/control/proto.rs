//! The control protocol between clients (CLI, hooks, TUI) and the node: types and framing.
//!
//! JSON lines over a Unix socket. A client writes a [`RequestFrame`]; the node answers with one
//! [`ResponseFrame`] carrying the same `id`. Every frame carries the protocol version `v`: a node
//! and a client that disagree fail with a clear error instead of misreading each other. Later
//! requests (subscriptions) answer with a stream of frames for the same `id`.

use serde::{Deserialize, Serialize};

use crate::proto::announce::FeedEntry;
use crate::proto::chat::ChatEntry;
use crate::proto::envelope::Envelope;
use crate::proto::repo::{RepoId, RepoInfo};

/// Bumped on any incompatible change of the types below.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest frame either side accepts; a longer line is a protocol error, not an allocation.
pub const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestFrame {
    pub v: u32,
    pub id: u64,
    pub req: Request,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Who the node is and what is in force.
    Status,
    /// Connected peers.
    Peers,
    /// Tell the node about a repository of ours: it joins the repo's topics.
    RegisterRepo { repo: RepoInfo },
    /// Graceful shutdown (flush the store, close connections).
    Shutdown,
    /// Queue a signed announcement in the node's durable outbox; answered once it is stored.
    Announce { repo: RepoInfo, envelope: Envelope },
    /// New files are in the spool: move them to the outbox now (the hook's fast path).
    IngestSpool,
    /// The newest `limit` announcements received for a repo, newest first.
    Log { repo: RepoId, limit: usize },
    /// Stream announcements for a repo as they arrive: answered with `following`, then one
    /// `announcement` frame per arrival, same request id, until the client hangs up.
    Follow { repo: RepoId },
    /// Send a signed chat message to a room (`thread`: a commit's thread, else the repo's room).
    ChatSend { repo: RepoInfo, envelope: Envelope, thread: Option<String> },
    /// The newest `limit` messages of a room, oldest first.
    ChatHistory { room: String, limit: usize },
    /// Join a room (subscribe to its topic) without sending: for reading a commit's thread.
    ChatJoin { repo: RepoInfo, thread: Option<String> },
    /// Stream a room's messages as they arrive (`following`, then `chat` frames).
    FollowChat { room: String },
    /// Merge a signed entry into the repo's record for `key` and put it in the DHT.
    KvPut { repo: RepoInfo, key: String, entry: crate::proto::kv::Entry },
    /// Look `key` up in the DHT (merging what every peer answers with our own copy).
    KvGet { repo: RepoId, key: String },
    /// The keys this node wrote in the repo.
    KvList { repo: RepoId },
    /// The Nostr bridge: relays, their state, events waiting.
    NostrStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResponseFrame {
    pub v: u32,
    pub id: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(Response),
    Error(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    Status(Box<NodeStatus>),
    Peers {
        peers: Vec<PeerInfo>,
    },
    Done,
    Queued {
        pending: usize,
    },
    Feed {
        entries: Vec<FeedEntry>,
    },
    Following,
    Announcement {
        entry: FeedEntry,
    },
    /// A chat message was stored; `peers` is how many peers are in the room right now
    /// (0: it waits in the outbox until someone joins).
    ChatSent {
        id: String,
        peers: usize,
    },
    ChatHistory {
        messages: Vec<ChatEntry>,
    },
    Chat {
        message: ChatEntry,
    },
    /// Stored; `replicas` is how many peers took it (0: only here so far).
    /// `requests`: how many peers the DHT query asked.
    KvStored {
        replicas: usize,
        requests: u32,
    },
    KvRecord {
        record: Option<crate::proto::kv::Record>,
        requests: u32,
    },
    /// (key, unix ms of our last write)
    KvKeys {
        keys: Vec<(String, u64)>,
    },
    Nostr(NostrStatus),
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

/// What the node streams to followers.
#[derive(Debug, Clone)]
pub enum NodeEvent {
    Announcement(FeedEntry),
    Chat(ChatEntry),
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
}

/// The settings the node started with (it re-reads git config only on restart).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfigInForce {
    pub listen: Vec<String>,
    pub bootstrap: Vec<String>,
    pub mdns: bool,
    pub dht_mode: String,
    pub relays: Vec<String>,
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
}

impl RequestFrame {
    pub fn new(id: u64, req: Request) -> Self {
        Self { v: PROTOCOL_VERSION, id, req }
    }
}

impl ResponseFrame {
    pub fn ok(id: u64, response: Response) -> Self {
        Self { v: PROTOCOL_VERSION, id, outcome: Outcome::Ok(response) }
    }
    pub fn error(id: u64, message: impl Into<String>) -> Self {
        Self { v: PROTOCOL_VERSION, id, outcome: Outcome::Error(message.into()) }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("control frame too long ({0} bytes, at most {MAX_FRAME})")]
    TooLong(usize),
    #[error("control protocol version mismatch: node speaks {node}, client speaks {client} (restart the node: git p2p daemon stop)")]
    Version { node: u32, client: u32 },
    #[error("malformed control frame: {0}")]
    Malformed(String),
}

/// Decodes a request; a version mismatch is detected before the body is interpreted, so an old
/// node can tell a new client what is wrong even if it cannot parse the request.
pub fn decode_request(line: &[u8]) -> Result<RequestFrame, (u64, DecodeError)> {
    if line.len() > MAX_FRAME {
        return Err((0, DecodeError::TooLong(line.len())));
    }
    #[derive(Deserialize)]
    struct Head {
        v: u32,
        #[serde(default)]
        id: u64,
    }
    let head: Head = serde_json::from_slice(line).map_err(|e| (0, DecodeError::Malformed(e.to_string())))?;
    if head.v != PROTOCOL_VERSION {
        return Err((head.id, DecodeError::Version { node: PROTOCOL_VERSION, client: head.v }));
    }
    serde_json::from_slice(line).map_err(|e| (head.id, DecodeError::Malformed(e.to_string())))
}

/// Decodes a response, checking the node's version first for the same reason.
pub fn decode_response(line: &[u8]) -> Result<ResponseFrame, DecodeError> {
    if line.len() > MAX_FRAME {
        return Err(DecodeError::TooLong(line.len()));
    }
    #[derive(Deserialize)]
    struct Head {
        v: u32,
    }
    let head: Head = serde_json::from_slice(line).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if head.v != PROTOCOL_VERSION {
        return Err(DecodeError::Version { node: head.v, client: PROTOCOL_VERSION });
    }
    serde_json::from_slice(line).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// One frame as a line of JSON, newline included.
pub fn encode<T: Serialize>(frame: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(frame).expect("control frames always serialise");
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for req in [
            Request::Status,
            Request::Peers,
            Request::Shutdown,
            Request::RegisterRepo {
                repo: RepoInfo {
                    id: RepoId::try_from("ab".repeat(20)).unwrap(),
                    name: "github.com/a/b".into(),
                    git_dir: None,
                },
            },
        ] {
            let line = encode(&RequestFrame::new(7, req.clone()));
            assert_eq!(line.last(), Some(&b'\n'));
            let frame = decode_request(&line[..line.len() - 1]).unwrap();
            assert_eq!(frame, RequestFrame::new(7, req));
        }
    }

    #[test]
    fn responses_round_trip() {
        let frame = ResponseFrame::error(3, "nope");
        assert_eq!(decode_response(&encode(&frame)).unwrap(), frame);
        let frame = ResponseFrame::ok(4, Response::Peers { peers: vec![] });
        assert_eq!(decode_response(&encode(&frame)).unwrap(), frame);
    }

    #[test]
    fn version_mismatch_is_reported_with_the_request_id() {
        let (id, err) = decode_request(br#"{"v":99,"id":5,"req":{"op":"teleport"}}"#).unwrap_err();
        assert_eq!(id, 5);
        assert_eq!(err, DecodeError::Version { node: PROTOCOL_VERSION, client: 99 });
        let err = decode_response(br#"{"v":0,"id":5,"ok":{"kind":"done"}}"#).unwrap_err();
        assert!(err.to_string().contains("version mismatch"), "{err}");
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for line in [&b""[..], b"{", b"null", b"[]", b"{\"v\":1,\"id\":1,\"req\":{\"op\":\"nope\"}}", b"\xff\xfe"] {
            assert!(decode_request(line).is_err(), "{line:?}");
            assert!(decode_response(line).is_err(), "{line:?}");
        }
        let long = vec![b' '; MAX_FRAME + 1];
        assert!(matches!(decode_request(&long), Err((_, DecodeError::TooLong(_)))));
    }
}
