//! The control protocol between clients (CLI, hooks, TUI) and the node: the wire.
//!
//! JSON lines over a Unix socket. A client writes a [`RequestFrame`]; the node answers with one
//! [`ResponseFrame`] carrying the same `id`: `ok` with the request's answer (its type is paired
//! with the request in [`super::api`]) or `error` with one line for the user. A subscription
//! (`follow`, `follow_chat`) is answered with `ok: null`, then one frame per item, same `id`,
//! until the client hangs up. An `error` with id 0 is about the connection itself (the node
//! refused it, or could not read a frame) and is the last frame on it. Every frame carries the
//! protocol version `v`: a node and a client that disagree fail with a clear error instead of
//! misreading each other.
//!
//! Frames are bounded both ways: a request by [`MAX_REQUEST`], an answer by [`MAX_ANSWER`].
//! Answers that grow with what the node holds (the feed, a room's history, the keys written)
//! come in pages: the client asks again from where the last page ended.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::api::LogFilter;
use crate::proto::envelope::Envelope;
use crate::proto::repo::{RepoId, RepoInfo};

/// Bumped on any incompatible change of the types here or in [`super::api`].
/// 2: typed answers (`ok` carries the answer itself).
/// 3: `kv_put` carries the value and the node signs it; `log`, `chat_history` and `kv_list`
/// answer in pages; frames bounded per direction; id 0 errors.
/// 4: `register_repo` answers with the registry's entry; `unregister_repo`, `repos`,
/// `refs_publish`, `note_put`, `notes_index`; `log` filters; `kv_list` hides what is not ours
/// to show unless `all`; `kv_put` refuses git-p2p's own keys.
pub const PROTOCOL_VERSION: u32 = 4;
/// Longest request the node reads; a longer line is a protocol error, not an allocation. The
/// largest real request (a chat message of 4000 characters, or a DHT value of 8 KiB, in JSON)
/// is a fraction of it, and it bounds what a flood of clients can make the node hold.
pub const MAX_REQUEST: usize = 128 * 1024;
/// Longest answer a client reads: the largest is a DHT record (64 authors of 8 KiB, hex, at
/// most 1 MiB in the node's store) in JSON; pages stay far below ([`PAGE_BYTES`]).
pub const MAX_ANSWER: usize = 2 << 20;
/// What one page of a paged answer holds at most (its items' JSON), at least one item.
pub const PAGE_BYTES: usize = 256 * 1024;

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
    /// The node forgets a repository of ours: it leaves the repo's topics.
    UnregisterRepo { repo: RepoId },
    /// The registered repositories.
    Repos,
    /// Graceful shutdown (flush the store, close connections).
    Shutdown,
    /// Queue a signed announcement in the node's durable outbox; answered once it is stored.
    Announce { repo: RepoInfo, envelope: Envelope },
    /// New files are in the spool: move them to the outbox now (the hook's fast path).
    IngestSpool,
    /// The newest announcements received for a repo (those before `before`, a page's `next`)
    /// that `filter` keeps, newest first: a page of at most `limit`.
    Log {
        repo: RepoId,
        limit: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        #[serde(default, skip_serializing_if = "LogFilter::is_empty")]
        filter: LogFilter,
    },
    /// Stream announcements for a repo as they arrive.
    Follow { repo: RepoId },
    /// The commits peers announced for a repo whose id starts with `prefix` (lowercase hex), at
    /// most `limit`, each once, in id order: what `--commit` resolves against.
    FeedCommits { repo: RepoId, prefix: String, limit: usize },
    /// Send a signed chat message to a room (`thread`: a commit's thread, else the repo's room).
    ChatSend { repo: RepoInfo, envelope: Envelope, thread: Option<String> },
    /// The newest messages of a room (those before `before`; with `arrived_since`, only those
    /// the node took at or after it, Unix ms), newest first: a page of at most `limit`.
    ChatHistory {
        room: String,
        limit: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        arrived_since: Option<u64>,
    },
    /// Join a room (subscribe to its topic) without sending: for reading a commit's thread.
    ChatJoin { repo: RepoInfo, thread: Option<String> },
    /// Stream a room's messages as they arrive.
    FollowChat { room: String },
    /// Set `key` to `value` (hex; None: remove it) in the repo's DHT namespace: the node signs
    /// the entry as its user, named `name`, with a sequence number after its last one.
    /// git-p2p's own keys (`refs`, `refs/...`, `notes/...`) are refused: the requests below
    /// write them.
    KvPut { repo: RepoInfo, key: String, value: Option<String>, name: Option<String> },
    /// Publish our branches and tags (ref name -> object id), unpublishing those gone since.
    RefsPublish { repo: RepoInfo, refs: BTreeMap<String, String>, name: Option<String> },
    /// Publish our note (`text`, hex) on `commit` in `notes_ref`.
    NotePut { repo: RepoInfo, notes_ref: String, commit: String, text: String, name: Option<String> },
    /// Publish the commits our notes in `notes_ref` annotate, unpublishing notes gone since.
    NotesIndex { repo: RepoInfo, notes_ref: String, commits: BTreeSet<String>, name: Option<String> },
    /// Look `key` up in the DHT (merging what every peer answers with our own copy).
    KvGet { repo: RepoId, key: String },
    /// The keys this node wrote in the repo, in order, from after `after` (a page's `next`):
    /// those holding a value of ours, or with `all` every one.
    KvList {
        repo: RepoId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        all: bool,
    },
    /// The Nostr bridge: relays, their state, events waiting.
    NostrStatus,
    /// Bring the repository's mirror up to its authors' signed tips (`author`: one of them).
    MirrorSync {
        repo: RepoId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        author: Option<String>,
    },
    /// Our refs moved: copy them from the working repository into the mirror, publish them.
    MirrorPublish {
        repo: RepoInfo,
        refs: Vec<(String, String)>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        head: Option<String>,
    },
}

/// An answer (`ok`, the answer's JSON as it was written) or a failure (`error`).
#[derive(Debug, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub v: u32,
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub ok: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A present `ok` is an answer even when it is `null` (the answer of a request that returns
/// nothing); only a missing one is None.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

impl RequestFrame {
    pub fn new(id: u64, req: Request) -> Self {
        Self { v: PROTOCOL_VERSION, id, req }
    }
}

impl ResponseFrame {
    /// An answer: `value` serialised.
    pub fn ok<T: Serialize + ?Sized>(id: u64, value: &T) -> Self {
        let ok = serde_json::value::to_raw_value(value).expect("answers always serialise");
        Self { v: PROTOCOL_VERSION, id, ok: Some(ok), error: None }
    }

    pub fn error(id: u64, message: impl Into<String>) -> Self {
        Self { v: PROTOCOL_VERSION, id, ok: None, error: Some(message.into()) }
    }

    /// The answer as `T`, or the node's one-line failure.
    pub fn answer<T: serde::de::DeserializeOwned>(&self) -> Result<Result<T, String>, DecodeError> {
        if let Some(error) = &self.error {
            return Ok(Err(error.clone()));
        }
        let json = self.ok.as_deref().ok_or_else(|| DecodeError::Malformed("neither ok nor error".into()))?;
        serde_json::from_str(json.get()).map(Ok).map_err(|e| DecodeError::Malformed(format!("answer: {e}")))
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("control frame too long (more than {max} bytes)")]
    TooLong { max: usize },
    #[error("incomplete control frame: the connection ended after {0} bytes, before the end of the line")]
    Incomplete(usize),
    #[error("control protocol version mismatch: node speaks {node}, client speaks {client} (restart the node: git p2p daemon stop)")]
    Version { node: u32, client: u32 },
    #[error("malformed control frame: {0}")]
    Malformed(String),
}

/// What a frame names of itself, read without the rest (which may be of another version).
#[derive(Deserialize)]
struct Head {
    v: u32,
    #[serde(default)]
    id: u64,
}

/// The head of a line that did not parse as a frame of ours.
fn head(line: &[u8]) -> Result<Head, DecodeError> {
    serde_json::from_slice(line).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Decodes a request. A request of another protocol version is told so, with its id, even when
/// this node cannot parse it; the line is read a second time only then (or when it is
/// malformed): a request's body (a signed message's text) is most of what decoding costs.
pub fn decode_request(line: &[u8]) -> Result<RequestFrame, (u64, DecodeError)> {
    if line.len() > MAX_REQUEST {
        return Err((0, DecodeError::TooLong { max: MAX_REQUEST }));
    }
    let other = |v| DecodeError::Version { node: PROTOCOL_VERSION, client: v };
    let error = match serde_json::from_slice::<RequestFrame>(line) {
        Ok(frame) if frame.v == PROTOCOL_VERSION => return Ok(frame),
        Ok(frame) => return Err((frame.id, other(frame.v))),
        Err(e) => e,
    };
    let Head { v, id } = head(line).map_err(|e| (0, e))?;
    Err((id, if v == PROTOCOL_VERSION { DecodeError::Malformed(error.to_string()) } else { other(v) }))
}

/// Decodes a response, telling a node of another protocol version apart as
/// [`decode_request`] does.
pub fn decode_response(line: &[u8]) -> Result<ResponseFrame, DecodeError> {
    if line.len() > MAX_ANSWER {
        return Err(DecodeError::TooLong { max: MAX_ANSWER });
    }
    let other = |v| DecodeError::Version { node: v, client: PROTOCOL_VERSION };
    let frame = match serde_json::from_slice::<ResponseFrame>(line) {
        Ok(frame) if frame.v == PROTOCOL_VERSION => frame,
        Ok(frame) => return Err(other(frame.v)),
        Err(error) => {
            let v = head(line)?.v;
            return Err(if v == PROTOCOL_VERSION { DecodeError::Malformed(error.to_string()) } else { other(v) });
        }
    };
    if frame.ok.is_some() == frame.error.is_some() {
        return Err(DecodeError::Malformed("a response has either ok or error".into()));
    }
    Ok(frame)
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
    fn answers_round_trip_typed() {
        let frame = decode_response(&encode(&ResponseFrame::error(3, "nope"))).unwrap();
        assert_eq!(frame.id, 3);
        assert_eq!(frame.answer::<Vec<String>>().unwrap(), Err("nope".to_string()));
        let frame = decode_response(&encode(&ResponseFrame::ok(4, &vec!["a".to_string()]))).unwrap();
        assert_eq!(frame.answer::<Vec<String>>().unwrap(), Ok(vec!["a".to_string()]));
        let frame = decode_response(&encode(&ResponseFrame::ok(5, &()))).unwrap();
        assert_eq!(frame.answer::<()>().unwrap(), Ok(()));
        assert!(matches!(frame.answer::<Vec<String>>(), Err(DecodeError::Malformed(_))), "another type: malformed");
    }

    #[test]
    fn version_mismatch_is_reported_with_the_request_id() {
        let (id, err) = decode_request(br#"{"v":99,"id":5,"req":{"op":"teleport"}}"#).unwrap_err();
        assert_eq!(id, 5);
        assert_eq!(err, DecodeError::Version { node: PROTOCOL_VERSION, client: 99 });
        // One this node could read is refused all the same: its meaning may have changed.
        let (id, err) = decode_request(br#"{"v":99,"id":6,"req":{"op":"status"}}"#).unwrap_err();
        assert_eq!((id, err), (6, DecodeError::Version { node: PROTOCOL_VERSION, client: 99 }));
        let line = format!(r#"{{"v":{PROTOCOL_VERSION},"id":8,"req":{{"op":"teleport"}}}}"#);
        let (id, err) = decode_request(line.as_bytes()).unwrap_err();
        assert_eq!(id, 8, "our version, a request we do not know: malformed, with its id");
        assert!(matches!(err, DecodeError::Malformed(ref m) if m.contains("teleport")), "{err}");
        let err = decode_response(br#"{"v":99,"id":5,"ok":{"kind":"done"}}"#).unwrap_err();
        assert_eq!(err, DecodeError::Version { node: 99, client: PROTOCOL_VERSION });
        let err = decode_response(br#"{"v":1,"id":5,"ok":{"kind":"done"}}"#).unwrap_err();
        assert!(err.to_string().contains("version mismatch"), "{err}");
        assert!(!err.to_string().contains('\n'), "one line");
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for line in [&b""[..], b"{", b"null", b"[]", b"{\"v\":2,\"id\":1,\"req\":{\"op\":\"nope\"}}", b"\xff\xfe"] {
            assert!(decode_request(line).is_err(), "{line:?}");
            assert!(decode_response(line).is_err(), "{line:?}");
        }
        let long = vec![b' '; MAX_REQUEST + 1];
        assert!(matches!(decode_request(&long), Err((_, DecodeError::TooLong { .. }))));
    }
}
