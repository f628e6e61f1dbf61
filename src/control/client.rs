//! The blocking control client, and auto-start of the node when it is not running.
//!
//! Clients are short-lived processes (a CLI command, the post-commit hook): plain std I/O over the
//! Unix socket, no async runtime, so a request costs about a millisecond. Auto-start takes a lock
//! so that racing clients start exactly one node, and learns about readiness (or the node's start
//! error) through a pipe on the child's stdout rather than by polling.
//!
//! A connection that goes away before a request's answer came (the node was killed and its
//! socket is not yet gone, or it hung up on a connection left idle) is replaced, starting a node
//! if the client may, and the request sent again: once a node took it, it answers it. Requests
//! are safe to repeat (the node de-duplicates messages and announcements, registering and
//! setting are idempotent). Answers that can be long are read page by page.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::marker::PhantomData;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::api::{
    ChatSent, KvFound, KvKey, KvStored, LogFilter, MirrorSynced, NodeStatus, NostrStatus, Page, PeerInfo, Published,
    Queued, RegisteredRepo,
};
use super::follow::Subscription;
use super::proto::{self, DecodeError, Request, RequestFrame, MAX_ANSWER};
use crate::paths::{PathError, Paths};
use crate::proto::announce::{Commit, FeedEntry};
use crate::proto::chat::ChatEntry;
use crate::proto::envelope::Envelope;
use crate::proto::repo::{RepoId, RepoInfo};

/// How long a request may wait for the node's answer before the client gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a mirror sync may take: a fetch of a large repository from peers (each provider's
/// attempt is bounded by the node too).
const SYNC_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long auto-start waits for a new node to say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// After this long without a ready node, tell the user what is taking time.
const START_PROGRESS_AFTER: Duration = Duration::from_secs(1);
/// How long a request keeps trying new connections when the one it was sent on went away
/// before the answer (a node killed a moment ago still accepts connections, then drops them).
const RECONNECT_WITHIN: Duration = Duration::from_secs(10);
/// While waiting for a node to start, how often to look whether some node answers already (one
/// started by someone else, whose lock ours then waits for).
const START_POLL: Duration = Duration::from_millis(20);

/// Set to 1 to keep commands (and the post-commit hook) from starting the node.
pub const NO_AUTOSTART_ENV: &str = "GIT_P2P_NO_AUTOSTART";

pub fn autostart_allowed() -> bool {
    std::env::var_os(NO_AUTOSTART_ENV).is_none_or(|v| v.is_empty() || v == "0")
}

/// The first line a node started with `--notify-ready` writes to stdout.
pub const READY_LINE: &str = "ready";
/// How that line starts when another node holds the data dir (it is starting, or still dying).
pub const RUNNING_PREFIX: &str = "running: ";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the node is not running (start it with: git p2p daemon start)")]
    NotRunning,
    #[error("cannot reach the node at {}: {source}", path.display())]
    Connect { path: std::path::PathBuf, source: io::Error },
    #[error("node failed to start: {0}")]
    StartFailed(String),
    #[error("lost connection to the node: {0}")]
    Io(#[from] io::Error),
    #[error("the node did not answer within {} s (see its log: git p2p daemon status)", REQUEST_TIMEOUT.as_secs())]
    Timeout,
    #[error(transparent)]
    Protocol(#[from] DecodeError),
    #[error("{0}")]
    Node(String),
    #[error(transparent)]
    Paths(#[from] PathError),
    /// The node's store is damaged: starting a node would only fail the same way.
    #[error("{0}")]
    StoreDamaged(String),
    #[error("the node went away and did not come back within {} s (start it with: git p2p daemon start)", .0.as_secs())]
    Gone(Duration),
    #[error("{name}={value:?}: {why}")]
    Setting { name: &'static str, value: String, why: &'static str },
}

impl ClientError {
    /// The connection went away (rather than the node saying no): the request may go again on
    /// a new one.
    fn connection_lost(&self) -> bool {
        matches!(self, Self::Io(e) if lost(e))
    }

    /// The node is not there (stopped, killed, restarting, or on its way out): one may come
    /// back on the same socket.
    pub fn node_away(&self) -> bool {
        match self {
            Self::NotRunning => true,
            Self::Node(why) => why == super::api::SHUTTING_DOWN,
            other => other.connection_lost(),
        }
    }
}

fn lost(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    matches!(e.kind(), K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::NotConnected)
}

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    paths: Paths,
    /// Whether a lost connection may be replaced by starting a node.
    autostart: bool,
}

impl Client {
    /// Connects to a running node; never starts one.
    pub fn connect(paths: &Paths) -> Result<Self, ClientError> {
        let path = paths.socket();
        let stream = UnixStream::connect(&path).map_err(|source| match source.kind() {
            // No socket file, or a stale one left by a dead node: nobody is listening.
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning,
            _ => ClientError::Connect { path: path.clone(), source },
        })?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        let writer = stream.try_clone()?;
        Ok(Self { reader: BufReader::new(stream), writer, next_id: 1, paths: paths.clone(), autostart: false })
    }

    /// Connects to the node, starting it (detached) first if it is not running, unless the
    /// environment says not to ([`NO_AUTOSTART_ENV`]). A node being started by someone else
    /// (its socket not bound yet) is waited for.
    pub fn connect_or_start(paths: &Paths) -> Result<Self, ClientError> {
        let mut client = match Self::connect(paths) {
            Err(ClientError::NotRunning) if autostart_allowed() => Self::start(paths)?,
            other => other?,
        };
        client.autostart = autostart_allowed();
        Ok(client)
    }

    fn start(paths: &Paths) -> Result<Self, ClientError> {
        paths.ensure()?;
        let lock = File::create(paths.start_lock())?;
        lock.lock()?;
        // Whoever held the lock before us may have started the node already.
        match Self::connect(paths) {
            Err(ClientError::NotRunning) => {}
            other => return other,
        }
        if let Some(problem) = crate::store::damage_report(&paths.store()) {
            return Err(ClientError::StoreDamaged(problem));
        }
        let found = wait_ready(spawn_node(true)?, || match Self::connect(paths) {
            Err(ClientError::NotRunning) => None,
            other => Some(other),
        })?;
        drop(lock);
        found.unwrap_or_else(|| Self::connect(paths))
    }

    /// Sends a request without waiting for its answer: requests pipeline, and [`Self::answer`]
    /// reads the answers in request order.
    pub fn send(&mut self, req: Request) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        self.writer.write_all(&proto::encode(&RequestFrame::new(id, req)))?;
        Ok(id)
    }

    /// The answer to request `id`, as `T` (the request's answer type in [`super::api`]).
    pub fn answer<T: DeserializeOwned>(&mut self, id: u64) -> Result<T, ClientError> {
        let line = self.read_line()?;
        let frame = proto::decode_response(&line)?;
        if frame.id == 0 {
            // About the connection: the node refused it, or could not read what we sent.
            if let Some(error) = frame.error {
                return Err(ClientError::Node(error));
            }
        }
        if frame.id != id {
            return Err(DecodeError::Malformed(format!("answer to request {} while waiting for {id}", frame.id)).into());
        }
        frame.answer()?.map_err(ClientError::Node)
    }

    /// Sends `req` and reads its answer; on a connection that went away first, again on a new
    /// one (see the module's header).
    fn call<T: DeserializeOwned>(&mut self, req: Request) -> Result<T, ClientError> {
        let deadline = Instant::now() + RECONNECT_WITHIN;
        let mut pause = Duration::from_millis(5);
        loop {
            match self.round_trip(&req) {
                Err(e) if e.connection_lost() && Instant::now() < deadline => {
                    tracing::debug!(error = %e, "connection to the node lost; trying a new one");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(200));
                    *self =
                        if self.autostart { Self::connect_or_start(&self.paths)? } else { Self::connect(&self.paths)? };
                }
                other => return other,
            }
        }
    }

    fn round_trip<T: DeserializeOwned>(&mut self, req: &Request) -> Result<T, ClientError> {
        match self.send(req.clone()) {
            Ok(id) => self.answer(id),
            // The node may have said why before it hung up (it refused the connection).
            Err(ClientError::Io(e)) if lost(&e) => match self.answer::<()>(0) {
                Err(refused @ ClientError::Node(_)) => Err(refused),
                _ => Err(ClientError::Io(e)),
            },
            Err(e) => Err(e),
        }
    }

    /// Every page of a paged answer, until `limit` items or the last page.
    fn pages<T: DeserializeOwned, C: DeserializeOwned>(
        &mut self,
        limit: usize,
        mut request: impl FnMut(usize, Option<C>) -> Request,
    ) -> Result<Vec<T>, ClientError> {
        let mut items = Vec::new();
        let mut next = None;
        while items.len() < limit {
            let page: Page<T, C> = self.call(request(limit - items.len(), next.take()))?;
            let empty = page.items.is_empty();
            items.extend(page.items);
            next = page.next;
            if next.is_none() || empty {
                break;
            }
        }
        items.truncate(limit);
        Ok(items)
    }

    pub fn status(&mut self) -> Result<NodeStatus, ClientError> {
        self.call(Request::Status)
    }

    pub fn peers(&mut self) -> Result<Vec<PeerInfo>, ClientError> {
        self.call(Request::Peers)
    }

    /// Registers `repo`; the answer is the registry's entry (its name is the one commands show).
    pub fn register_repo(&mut self, repo: RepoInfo) -> Result<RepoInfo, ClientError> {
        self.call(Request::RegisterRepo { repo })
    }

    /// Forgets `repo`; the answer is the entry it had.
    pub fn unregister_repo(&mut self, repo: RepoId) -> Result<RepoInfo, ClientError> {
        self.call(Request::UnregisterRepo { repo })
    }

    pub fn repos(&mut self) -> Result<Vec<RegisteredRepo>, ClientError> {
        self.call(Request::Repos)
    }

    /// Asks the node to stop; it may close the connection before its answer is out (which
    /// counts as done: the request is never repeated on another node).
    pub fn shutdown(&mut self) -> Result<(), ClientError> {
        match self.round_trip(&Request::Shutdown) {
            Err(e) if e.connection_lost() => Ok(()),
            other => other,
        }
    }

    pub fn announce(&mut self, repo: RepoInfo, envelope: Envelope) -> Result<Queued, ClientError> {
        self.call(Request::Announce { repo, envelope })
    }

    /// The newest `limit` announcements received for `repo`, newest first.
    pub fn log(&mut self, repo: RepoId, limit: usize) -> Result<Vec<FeedEntry>, ClientError> {
        self.log_filtered(repo, limit, &LogFilter::default())
    }

    /// The newest `limit` announcements received for `repo` that `filter` keeps, newest first.
    pub fn log_filtered(
        &mut self,
        repo: RepoId,
        limit: usize,
        filter: &LogFilter,
    ) -> Result<Vec<FeedEntry>, ClientError> {
        self.pages(limit, |limit, before| Request::Log { repo: repo.clone(), limit, before, filter: filter.clone() })
    }

    /// The commits peers announced for `repo` whose id starts with `prefix` (lowercase hex), at
    /// most `limit`.
    pub fn feed_commits(&mut self, repo: RepoId, prefix: &str, limit: usize) -> Result<Vec<Commit>, ClientError> {
        self.call(Request::FeedCommits { repo, prefix: prefix.to_string(), limit })
    }

    pub fn chat_send(
        &mut self,
        repo: RepoInfo,
        envelope: Envelope,
        thread: Option<String>,
    ) -> Result<ChatSent, ClientError> {
        self.call(Request::ChatSend { repo, envelope, thread })
    }

    /// The newest `limit` messages of a room, oldest first.
    pub fn chat_history(&mut self, room: &str, limit: usize) -> Result<Vec<ChatEntry>, ClientError> {
        let mut history: Vec<ChatEntry> = self.pages(limit, |limit, before| Request::ChatHistory {
            room: room.to_string(),
            limit,
            before,
            arrived_since: None,
        })?;
        history.reverse();
        Ok(history)
    }

    pub fn chat_join(&mut self, repo: RepoInfo, thread: Option<String>) -> Result<(), ClientError> {
        self.call(Request::ChatJoin { repo, thread })
    }

    /// Sets `key` (None: removes it); the node signs the entry as its user, named `name`.
    pub fn kv_put(
        &mut self,
        repo: RepoInfo,
        key: &str,
        value: Option<&[u8]>,
        name: Option<String>,
    ) -> Result<KvStored, ClientError> {
        self.call(Request::KvPut { repo, key: key.to_string(), value: value.map(hex::encode), name })
    }

    pub fn kv_get(&mut self, repo: RepoId, key: &str) -> Result<KvFound, ClientError> {
        self.call(Request::KvGet { repo, key: key.to_string() })
    }

    /// The keys this node wrote in `repo` that hold a value of ours; with `all`, every one.
    pub fn kv_list(&mut self, repo: RepoId, all: bool) -> Result<Vec<KvKey>, ClientError> {
        self.pages(usize::MAX, |_, after| Request::KvList { repo: repo.clone(), after, all })
    }

    /// Publishes our branches and tags (ref name -> object id), unpublishing those gone since.
    pub fn refs_publish(
        &mut self,
        repo: RepoInfo,
        refs: std::collections::BTreeMap<String, String>,
        name: Option<String>,
    ) -> Result<Published, ClientError> {
        self.call(Request::RefsPublish { repo, refs, name })
    }

    /// Publishes our note on `commit` in `notes_ref`.
    pub fn note_put(
        &mut self,
        repo: RepoInfo,
        notes_ref: &str,
        commit: &str,
        text: &[u8],
        name: Option<String>,
    ) -> Result<KvStored, ClientError> {
        let (notes_ref, commit, text) = (notes_ref.to_string(), commit.to_string(), hex::encode(text));
        self.call(Request::NotePut { repo, notes_ref, commit, text, name })
    }

    /// Publishes which commits our notes in `notes_ref` annotate, unpublishing notes gone since.
    pub fn notes_index(
        &mut self,
        repo: RepoInfo,
        notes_ref: &str,
        commits: std::collections::BTreeSet<String>,
        name: Option<String>,
    ) -> Result<Published, ClientError> {
        self.call(Request::NotesIndex { repo, notes_ref: notes_ref.to_string(), commits, name })
    }

    pub fn nostr_status(&mut self) -> Result<NostrStatus, ClientError> {
        self.call(Request::NostrStatus)
    }

    /// Brings the node's mirror of `repo` up to the tips its authors signed (`author`: one of
    /// them), fetching from peers; the answer may take as long as the fetch ([`SYNC_TIMEOUT`]).
    pub fn mirror_sync(&mut self, repo: RepoId, author: Option<String>) -> Result<MirrorSynced, ClientError> {
        self.reader.get_ref().set_read_timeout(Some(SYNC_TIMEOUT))?;
        let answer = self.call(Request::MirrorSync { repo, author });
        self.reader.get_ref().set_read_timeout(Some(REQUEST_TIMEOUT))?;
        answer
    }

    /// Our refs moved in `repo`'s working repository: the node copies them into its mirror
    /// and publishes them in the DHT.
    pub fn mirror_publish(
        &mut self,
        repo: RepoInfo,
        refs: Vec<(String, String)>,
        head: Option<String>,
    ) -> Result<(), ClientError> {
        self.call(Request::MirrorPublish { repo, refs, head })
    }

    /// Rings the node's doorbell: something is in the spool. Nobody waits for the answer (the
    /// post-commit hook must not).
    pub fn ring(paths: &Paths) -> Result<(), ClientError> {
        Self::connect(paths)?.send(Request::IngestSpool)?;
        Ok(())
    }

    /// Subscribes to `subscription` on a connection of its own, which then waits for items as
    /// long as it takes.
    pub fn follow<S: Subscription>(paths: &Paths, subscription: &S) -> Result<Follower<S::Item>, ClientError> {
        let mut client = Self::connect(paths)?;
        client.call::<()>(subscription.follow_request())?;
        client.reader.get_ref().set_read_timeout(None)?;
        let id = client.next_id - 1;
        Ok(Follower { client, id, item: PhantomData })
    }

    /// A page of a repository's announcements, newest first, before `before`.
    pub fn log_page(
        &mut self,
        repo: RepoId,
        limit: usize,
        before: Option<u64>,
        filter: &LogFilter,
    ) -> Result<Page<FeedEntry>, ClientError> {
        self.call(Request::Log { repo, limit, before, filter: filter.clone() })
    }

    /// A page of a room's messages, newest first, before `before` (those the node took at or
    /// after `arrived_since`, when given).
    pub fn chat_page(
        &mut self,
        room: &str,
        limit: usize,
        before: Option<u64>,
        arrived_since: Option<u64>,
    ) -> Result<Page<ChatEntry>, ClientError> {
        self.call(Request::ChatHistory { room: room.to_string(), limit, before, arrived_since })
    }

    fn read_line(&mut self) -> Result<Vec<u8>, ClientError> {
        let mut line = Vec::new();
        let read = (&mut self.reader).take(MAX_ANSWER as u64 + 1).read_until(b'\n', &mut line);
        match read {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the node closed the connection").into()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(ClientError::Timeout)
            }
            Err(e) => return Err(e.into()),
        }
        if line.last() != Some(&b'\n') {
            if line.len() > MAX_ANSWER {
                return Err(DecodeError::TooLong { max: MAX_ANSWER }.into());
            }
            // The node went away in the middle of a line: as lost as a connection gets.
            return Err(
                io::Error::new(io::ErrorKind::UnexpectedEof, "the node closed the connection mid-answer").into()
            );
        }
        line.pop();
        Ok(line)
    }
}

/// Items of a subscription as they arrive.
pub struct Follower<T> {
    client: Client,
    id: u64,
    item: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Follower<T> {
    /// The next item; waits as long as it takes.
    pub fn recv(&mut self) -> Result<T, ClientError> {
        self.client.answer(self.id)
    }
}

/// Spawns `git-p2p daemon run` in a new session, detached from our terminal. With `notify`, the
/// node reports readiness on a pipe (see [`wait_ready`]); without, nobody waits for it (the
/// post-commit hook, which must return at once).
pub fn spawn_node(notify: bool) -> Result<Child, ClientError> {
    let exe = std::env::current_exe()?;
    let mut command = Command::new(exe);
    command.args(["daemon", "run"]).current_dir("/").stdin(Stdio::null()).stderr(Stdio::null());
    if notify {
        command.arg("--notify-ready").stdout(Stdio::piped());
    } else {
        command.stdout(Stdio::null());
    }
    // SAFETY: setsid is async-signal-safe; it detaches the node from our terminal and process
    // group so that Ctrl-C in the shell that ran the client does not kill the node.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().map_err(|e| ClientError::StartFailed(format!("cannot run git-p2p: {e}")))
}

/// Waits for the first line of a node spawned with `notify`: "ready" or "error: ...". Meanwhile
/// `elsewhere` is asked whether some node answers already: one that someone else started (ours
/// then waits for its lock, and gives up), or one that was dying when we looked and whose lock
/// ours waits for.
fn wait_ready<T>(mut child: Child, mut elsewhere: impl FnMut() -> Option<T>) -> Result<Option<T>, ClientError> {
    let stdout = child.stdout.take().ok_or_else(|| ClientError::StartFailed("no pipe to the node".into()))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let result = BufReader::new(stdout).take(4096).read_line(&mut line).map(|_| line);
        let _ = tx.send(result);
    });
    let started = Instant::now();
    let mut told = false;
    let line = loop {
        match rx.recv_timeout(START_POLL) {
            Ok(Ok(line)) => break line,
            Ok(Err(e)) => return Err(ClientError::StartFailed(e.to_string())),
            Err(mpsc::RecvTimeoutError::Disconnected) => break String::new(),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(found) = elsewhere() {
            return Ok(Some(found));
        }
        if !told && started.elapsed() >= START_PROGRESS_AFTER {
            eprintln!("git-p2p: starting the node...");
            told = true;
        }
        if started.elapsed() >= START_TIMEOUT {
            return Err(ClientError::StartFailed(format!(
                "no answer within {}s (see the node's log file)",
                START_TIMEOUT.as_secs()
            )));
        }
    };
    let line = line.trim_end();
    if line == READY_LINE {
        return Ok(None);
    }
    // The node exits on a start error; reap it so it does not linger as a zombie.
    let _ = child.wait();
    if let Some(reason) = line.strip_prefix(RUNNING_PREFIX) {
        // Another node has the data dir: it is starting (and will answer) or was dying.
        while started.elapsed() < START_TIMEOUT {
            if let Some(found) = elsewhere() {
                return Ok(Some(found));
            }
            std::thread::sleep(START_POLL);
        }
        return Err(ClientError::StartFailed(reason.into()));
    }
    let reason = line.strip_prefix("error: ").unwrap_or(line);
    Err(ClientError::StartFailed(if reason.is_empty() {
        "the node exited during start-up".into()
    } else {
        reason.into()
    }))
}
