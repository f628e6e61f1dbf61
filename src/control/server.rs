//! The node's side of the control socket: accepts clients, decodes their requests, hands each
//! to the node as a typed [`Command`] and writes the answers back. Subscriptions are served here,
//! from the node's event broadcast. It never touches the swarm and does not know the node.
//!
//! Capacity, and what a client meets at its edges (a hostile or broken client must not lock
//! the others out, and nobody waits in silence):
//! - every connection is accepted at once; one beyond [`MAX_CLIENTS`] gets an id-0 error saying
//!   so and is hung up on. None waits in the listen backlog, where its request would be read,
//!   and carried out, after its client had given up and reported a failure;
//! - a subscription (`log -f`, `chat --tail -f`, the chat window) moves its connection from the
//!   clients to the followers ([`MAX_FOLLOWERS`]): a stream never takes a request's place;
//! - a client that sends nothing for [`IDLE_TIMEOUT`] while none of its answers is pending is
//!   hung up on (the client library reconnects by itself), and so is one that does not read
//!   what it is sent ([`WRITE_TIMEOUT`]);
//! - a request the node cannot queue within [`QUEUE_WAIT`] is answered with an error and never
//!   carried out, so that it cannot take effect after its client gave up;
//! - frames are bounded both ways ([`MAX_REQUEST`], [`MAX_ANSWER`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::api::{Command, Failure, NodeEvent, Reply};
use super::proto::{self, DecodeError, Request, ResponseFrame, MAX_ANSWER, MAX_REQUEST};
use crate::proto::repo::RepoId;

/// Clients served at once (connections making requests). A person runs a handful at a time;
/// scripts and editors a few dozen: this is far above any real use, and bounded so that a
/// runaway script meets a clear error instead of exhausting the node's file descriptors.
pub const MAX_CLIENTS: usize = 512;
/// Followers served at once (`log -f`, `chat --tail -f`, chat windows), apart from the clients.
pub const MAX_FOLLOWERS: usize = 512;
/// A client that sends nothing this long, with no answer of its pending, is hung up on. Clients
/// write their request as soon as they connect; one that keeps a connection between requests
/// reconnects when it finds it closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// An answer the client does not take within this long ends its connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A stream item a follower does not take within this long ends its subscription (its buffers,
/// some hundred KiB, are full by then: it stopped reading).
const FOLLOWER_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a request may wait for room in the node's command queue before it is refused,
/// unexecuted. Well within the client's 30 s, which also covers the command itself.
const QUEUE_WAIT: Duration = Duration::from_secs(10);
/// Open files the node asks for (its soft limit is raised towards this, within the hard one).
const WANTED_OPEN_FILES: u64 = 8192;

/// Accepts control clients until the task is aborted.
pub async fn serve(listener: UnixListener, commands: mpsc::Sender<Command>, feed: broadcast::Sender<NodeEvent>) {
    let (max_clients, max_followers) = capacity(raise_open_files());
    let clients = Arc::new(Semaphore::new(max_clients));
    let followers = Arc::new(Semaphore::new(max_followers));
    tracing::debug!(max_clients, max_followers, "control socket capacity");
    // Kept open so that, out of file descriptors, the node can still accept a client to tell it
    // why (closing this frees one), instead of leaving it in the backlog.
    let mut reserve = std::fs::File::open("/dev/null").ok();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                tracing::warn!(error = %e, "out of file descriptors: refusing a control client");
                drop(reserve.take());
                if let Ok((stream, _)) = listener.accept().await {
                    refuse(&stream, "the node has run out of file descriptors; try again in a moment".into());
                }
                reserve = std::fs::File::open("/dev/null").ok();
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = clients.clone().try_acquire_owned() else {
            refuse(
                &stream,
                format!("the node is serving as many clients as it takes ({max_clients}); try again in a moment"),
            );
            continue;
        };
        let client =
            Client { commands: commands.clone(), feed: feed.clone(), followers: followers.clone(), max_followers };
        tokio::spawn(async move {
            if let Err(e) = client.serve(stream, permit).await {
                tracing::debug!(error = %e, "control client ended");
            }
        });
    }
}

/// Tells a client we do not serve why, in an id-0 error, and hangs up. The socket is new and
/// its buffer empty: the line goes out without waiting.
fn refuse(stream: &UnixStream, why: String) {
    let _ = stream.try_write(&proto::encode(&ResponseFrame::error(0, why)));
}

/// Raises the soft limit of open files towards [`WANTED_OPEN_FILES`] (within the hard limit);
/// returns the limit in force.
fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct we own, for this call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        let wanted = WANTED_OPEN_FILES.min(limit.rlim_max);
        if limit.rlim_cur < wanted {
            let raised = libc::rlimit { rlim_cur: wanted, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = wanted;
            }
        }
    }
    limit.rlim_cur
}

/// Clients and followers for `open_files`: together at most half of them (the swarm's
/// connections, the store and the logs need the rest), each at most its maximum.
fn capacity(open_files: u64) -> (usize, usize) {
    let each = usize::try_from(open_files / 4).unwrap_or(usize::MAX).max(16);
    (each.min(MAX_CLIENTS), each.min(MAX_FOLLOWERS))
}

/// What a client's connection needs from the node.
struct Client {
    commands: mpsc::Sender<Command>,
    feed: broadcast::Sender<NodeEvent>,
    followers: Arc<Semaphore>,
    max_followers: usize,
}

/// Requests of one client in the node at once; the client's further lines wait in the socket.
const PIPELINE: usize = 32;

/// An answer on its way: the node's typed answer, serialised once it comes.
type Answer = Pin<Box<dyn Future<Output = Result<Box<serde_json::value::RawValue>, Failure>> + Send>>;

/// What the writer half sends next, in request order.
enum Out {
    Frame(Box<ResponseFrame>),
    Answer(u64, Answer),
}

/// A subscription: what a follower is streamed.
enum Subscription {
    Feed(RepoId),
    Room(String),
}

/// Where a request goes: to the node as a command (its answer on the way), a subscription
/// served here, or nowhere (it cannot be one: the failure is its answer).
enum Routed {
    Command(Box<Command>, Answer),
    Subscribe(Subscription),
    Refused(Failure),
}

/// The command for a request, with a reply channel of the request's answer type.
fn route(req: Request) -> Routed {
    match req {
        Request::Status => ask(Command::Status),
        Request::Peers => ask(Command::Peers),
        Request::RegisterRepo { repo } => ask(|reply| Command::RegisterRepo { repo, reply }),
        Request::UnregisterRepo { repo } => ask(|reply| Command::UnregisterRepo { repo, reply }),
        Request::Repos => ask(Command::Repos),
        Request::Shutdown => ask(Command::Shutdown),
        Request::Announce { repo, envelope } => ask(|reply| Command::Announce { repo, envelope, reply }),
        Request::IngestSpool => ask(Command::IngestSpool),
        Request::Log { repo, limit, before, filter } => {
            ask(|reply| Command::Log { repo, limit, before, filter, reply })
        }
        Request::FeedCommits { repo, prefix, limit } => {
            ask(|reply| Command::FeedCommits { repo, prefix, limit, reply })
        }
        Request::ChatSend { repo, envelope, thread } => {
            ask(|reply| Command::ChatSend { repo, envelope, thread, reply })
        }
        Request::ChatHistory { room, limit, before, arrived_since } => {
            ask(|reply| Command::ChatHistory { room, limit, before, arrived_since, reply })
        }
        Request::ChatJoin { repo, thread } => ask(|reply| Command::ChatJoin { repo, thread, reply }),
        Request::KvPut { repo, key, value, name } => match value.map(hex::decode).transpose() {
            Ok(value) => ask(|reply| Command::KvPut { repo, key, value, name, reply }),
            Err(_) => Routed::Refused(Failure::new("malformed control frame: the value is not hex")),
        },
        Request::KvGet { repo, key } => ask(|reply| Command::KvGet { repo, key, reply }),
        Request::KvList { repo, after, all } => ask(|reply| Command::KvList { repo, after, all, reply }),
        Request::RefsPublish { repo, refs, name } => ask(|reply| Command::RefsPublish { repo, refs, name, reply }),
        Request::NotePut { repo, notes_ref, commit, text, name } => match hex::decode(text) {
            Ok(text) => ask(|reply| Command::NotePut { repo, notes_ref, commit, text, name, reply }),
            Err(_) => Routed::Refused(Failure::new("malformed control frame: the note is not hex")),
        },
        Request::NotesIndex { repo, notes_ref, commits, name } => {
            ask(|reply| Command::NotesIndex { repo, notes_ref, commits, name, reply })
        }
        Request::NostrStatus => ask(Command::NostrStatus),
        Request::MirrorSync { repo, author } => ask(|reply| Command::MirrorSync { repo, author, reply }),
        Request::MirrorPublish { repo, refs, head } => ask(|reply| Command::MirrorPublish { repo, refs, head, reply }),
        Request::Follow { repo } => Routed::Subscribe(Subscription::Feed(repo)),
        Request::FollowChat { room } => Routed::Subscribe(Subscription::Room(room)),
    }
}

/// A command whose answer (of type `T`) is serialised for the wire when it comes.
fn ask<T: Serialize + Send + 'static>(command: impl FnOnce(Reply<T>) -> Command) -> Routed {
    let (reply, answer) = oneshot::channel();
    let answer: Answer = Box::pin(async move {
        match answer.await {
            Ok(Ok(value)) => Ok(serde_json::value::to_raw_value(&value).expect("answers always serialise")),
            Ok(Err(failure)) => Err(failure),
            Err(_) => Err(Failure::new(super::api::SHUTTING_DOWN)),
        }
    });
    Routed::Command(Box::new(command(reply)), answer)
}

/// How reading a request line ended.
enum Line {
    /// A whole line (newline removed).
    Request,
    /// The client hung up between requests.
    End,
    /// Nothing from the client for [`IDLE_TIMEOUT`], and nothing of it pending.
    Idle,
    /// What the client sent cannot be a request; it is told why, and the connection ends.
    Broken(DecodeError),
}

impl Client {
    /// Serves one connection. Requests are pipelined: each is handed to the node as soon as it
    /// is read (so requests of one client share the node's group commit), and the answers are
    /// written in request order by a writer task. A subscription takes over the connection once
    /// the answers before it are out.
    async fn serve(self, stream: UnixStream, permit: OwnedSemaphorePermit) -> std::io::Result<()> {
        let (read, write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let (out, pending) = mpsc::channel(PIPELINE);
        let unanswered = Arc::new(AtomicUsize::new(0));
        let writer = tokio::spawn(write_answers(write, pending, unanswered.clone()));
        let mut line = Vec::new();
        let mut follow = None;
        loop {
            match read_line(&mut reader, &mut line, &unanswered, &out).await? {
                Line::Request => {}
                Line::End => break,
                Line::Idle => {
                    tracing::debug!("idle control client hung up on");
                    break;
                }
                Line::Broken(e) => {
                    send(&out, &unanswered, Out::Frame(Box::new(ResponseFrame::error(0, e.to_string())))).await;
                    break;
                }
            }
            let frame = match proto::decode_request(&line) {
                Ok(frame) => frame,
                Err((id, err)) => {
                    if !send(&out, &unanswered, Out::Frame(Box::new(ResponseFrame::error(id, err.to_string())))).await {
                        break;
                    }
                    continue;
                }
            };
            let (command, answer) = match route(frame.req) {
                Routed::Command(command, answer) => (command, answer),
                Routed::Subscribe(subscription) => {
                    follow = Some((frame.id, subscription));
                    break;
                }
                Routed::Refused(failure) => {
                    let frame = ResponseFrame::error(frame.id, failure.message());
                    if !send(&out, &unanswered, Out::Frame(Box::new(frame))).await {
                        break;
                    }
                    continue;
                }
            };
            let queued = match tokio::time::timeout(QUEUE_WAIT, self.commands.send(*command)).await {
                Ok(Ok(())) => Out::Answer(frame.id, answer),
                Ok(Err(_)) => Out::Frame(Box::new(ResponseFrame::error(frame.id, super::api::SHUTTING_DOWN))),
                Err(_) => Out::Frame(Box::new(ResponseFrame::error(
                    frame.id,
                    format!(
                        "the node is too busy to take the request (its queue stayed full for {} s); nothing was done, try again",
                        QUEUE_WAIT.as_secs()
                    ),
                ))),
            };
            if !send(&out, &unanswered, queued).await {
                break;
            }
        }
        drop(out);
        let write = writer.await.map_err(std::io::Error::other)??;
        let Some((id, subscription)) = follow else { return Ok(()) };
        // A follower leaves the clients' places to requests, and takes one of the followers'.
        drop(permit);
        let Ok(_follower) = self.followers.clone().try_acquire_owned() else {
            let why = format!(
                "the node streams to as many followers as it takes ({}): close one (log -f, chat --tail -f, a chat window) or try again later",
                self.max_followers
            );
            let mut write = write;
            let _ = write.write_all(&proto::encode(&ResponseFrame::error(id, why))).await;
            return Ok(());
        };
        stream_events(write, reader, id, subscription, self.feed).await
    }
}

/// Hands the writer its next frame; false once the writer is gone (the client hung up).
async fn send(out: &mpsc::Sender<Out>, unanswered: &AtomicUsize, next: Out) -> bool {
    unanswered.fetch_add(1, Ordering::Relaxed);
    out.send(next).await.is_ok()
}

/// Reads the next request line into `line`, bounded by [`MAX_REQUEST`]. A client is idle when
/// it sent nothing for [`IDLE_TIMEOUT`] and none of its answers is pending (while one is, it
/// may wait as long as the node takes).
async fn read_line(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    line: &mut Vec<u8>,
    unanswered: &AtomicUsize,
    out: &mpsc::Sender<Out>,
) -> std::io::Result<Line> {
    line.clear();
    loop {
        let room = (MAX_REQUEST + 1).saturating_sub(line.len()) as u64;
        // Cancel-safe: on a timeout what was read stays in `line`, and the next read goes on.
        match tokio::time::timeout(IDLE_TIMEOUT, reader.take(room).read_until(b'\n', line)).await {
            Ok(result) => {
                result?;
                break;
            }
            Err(_) if unanswered.load(Ordering::Relaxed) > 0 && !out.is_closed() => continue,
            Err(_) => return Ok(Line::Idle),
        }
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        return Ok(Line::Request);
    }
    Ok(match line.len() {
        0 => Line::End,
        n if n > MAX_REQUEST => Line::Broken(DecodeError::TooLong { max: MAX_REQUEST }),
        n => Line::Broken(DecodeError::Incomplete(n)),
    })
}

/// Writes answers in request order, each once the node gave it.
async fn write_answers(
    mut write: tokio::net::unix::OwnedWriteHalf,
    mut pending: mpsc::Receiver<Out>,
    unanswered: Arc<AtomicUsize>,
) -> std::io::Result<tokio::net::unix::OwnedWriteHalf> {
    while let Some(next) = pending.recv().await {
        let frame = match next {
            Out::Frame(frame) => *frame,
            Out::Answer(id, answer) => match answer.await {
                Ok(ok) => ResponseFrame { v: proto::PROTOCOL_VERSION, id, ok: Some(ok), error: None },
                Err(failure) => ResponseFrame::error(id, failure.message()),
            },
        };
        let mut line = proto::encode(&frame);
        if line.len() > MAX_ANSWER {
            // Never a frame the client would refuse to read: it learns what happened instead.
            let why = format!("the answer is too large to send ({} bytes, at most {MAX_ANSWER})", line.len());
            line = proto::encode(&ResponseFrame::error(frame.id, why));
        }
        match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&line)).await {
            Ok(written) => written?,
            Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading")),
        }
        unanswered.fetch_sub(1, Ordering::Relaxed);
    }
    Ok(write)
}

/// Streams a repository's announcements (or a room's messages) to a follower until it sends
/// anything or hangs up.
async fn stream_events(
    mut write: tokio::net::unix::OwnedWriteHalf,
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    id: u64,
    subscription: Subscription,
    feed: broadcast::Sender<NodeEvent>,
) -> std::io::Result<()> {
    let mut rx = feed.subscribe();
    write.write_all(&proto::encode(&ResponseFrame::ok(id, &()))).await?;
    let mut byte = [0u8; 1];
    loop {
        tokio::select! {
            event = rx.recv() => {
                let frame = match (event, &subscription) {
                    (Ok(NodeEvent::Announcement(entry)), Subscription::Feed(repo)) if entry.repo == *repo => {
                        ResponseFrame::ok(id, &entry)
                    }
                    (Ok(NodeEvent::Chat(message)), Subscription::Room(room)) if message.room == *room => {
                        ResponseFrame::ok(id, &message)
                    }
                    (Ok(_), _) => continue,
                    (Err(broadcast::error::RecvError::Lagged(n)), _) => {
                        ResponseFrame::error(id, format!("too slow: {n} items skipped"))
                    }
                    (Err(broadcast::error::RecvError::Closed), _) => return Ok(()),
                };
                match tokio::time::timeout(FOLLOWER_WRITE_TIMEOUT, write.write_all(&proto::encode(&frame))).await {
                    Ok(written) => written?,
                    Err(_) => return Ok(()),
                }
            }
            // Anything from the client (or its hang-up) ends the stream; nothing is buffered.
            _ = reader.read(&mut byte) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_leaves_half_the_open_files_to_the_rest_of_the_node() {
        assert_eq!(capacity(1 << 20), (MAX_CLIENTS, MAX_FOLLOWERS));
        assert_eq!(capacity(1024), (256, 256));
        assert_eq!(capacity(10), (16, 16), "a floor, whatever the limit says");
    }
}
