//! The node's side of the control socket: accepts clients, decodes their requests, hands each
//! to the node as a typed [`Command`] and writes the answers back. Subscriptions are served here,
//! from the node's event broadcast. It never touches the swarm and does not know the node.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};

use super::api::{Command, Failure, NodeEvent, Reply};
use super::proto::{self, Request, ResponseFrame, MAX_FRAME};
use crate::proto::repo::RepoId;

/// Clients served at once; more wait in the listen backlog.
const MAX_CLIENTS: usize = 128;

/// Accepts control clients until the task is aborted.
pub async fn serve(listener: UnixListener, commands: mpsc::Sender<Command>, feed: broadcast::Sender<NodeEvent>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let commands = commands.clone();
                let feed = feed.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_client(stream, commands, feed).await {
                        tracing::debug!(error = %e, "control client ended");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
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

/// Where a request goes: to the node as a command (its answer on the way), or a subscription
/// served here.
enum Routed {
    Command(Box<Command>, Answer),
    Subscribe(Subscription),
}

/// The command for a request, with a reply channel of the request's answer type.
fn route(req: Request) -> Routed {
    match req {
        Request::Status => ask(Command::Status),
        Request::Peers => ask(Command::Peers),
        Request::RegisterRepo { repo } => ask(|reply| Command::RegisterRepo { repo, reply }),
        Request::Shutdown => ask(Command::Shutdown),
        Request::Announce { repo, envelope } => ask(|reply| Command::Announce { repo, envelope, reply }),
        Request::IngestSpool => ask(Command::IngestSpool),
        Request::Log { repo, limit } => ask(|reply| Command::Log { repo, limit, reply }),
        Request::ChatSend { repo, envelope, thread } => {
            ask(|reply| Command::ChatSend { repo, envelope, thread, reply })
        }
        Request::ChatHistory { room, limit } => ask(|reply| Command::ChatHistory { room, limit, reply }),
        Request::ChatJoin { repo, thread } => ask(|reply| Command::ChatJoin { repo, thread, reply }),
        Request::KvPut { repo, key, entry } => ask(|reply| Command::KvPut { repo, key, entry, reply }),
        Request::KvGet { repo, key } => ask(|reply| Command::KvGet { repo, key, reply }),
        Request::KvList { repo } => ask(|reply| Command::KvList { repo, reply }),
        Request::NostrStatus => ask(Command::NostrStatus),
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
            Err(_) => Err(Failure::new("the node is shutting down")),
        }
    });
    Routed::Command(Box::new(command(reply)), answer)
}

/// Serves one client. Requests are pipelined: each is handed to the node as soon as it is read
/// (so requests of one client share the node's group commit), and the answers are written in
/// request order by a writer task. A subscription takes over the connection once the answers
/// before it are out.
async fn serve_client(
    stream: UnixStream,
    commands: mpsc::Sender<Command>,
    feed: broadcast::Sender<NodeEvent>,
) -> std::io::Result<()> {
    let (read, write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let (out, pending) = mpsc::channel(PIPELINE);
    let writer = tokio::spawn(write_answers(write, pending));
    let mut line = Vec::new();
    let mut follow = None;
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_FRAME as u64 + 1).read_until(b'\n', &mut line).await?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') {
            let frame = ResponseFrame::error(0, proto::DecodeError::TooLong(line.len()).to_string());
            let _ = out.send(Out::Frame(Box::new(frame))).await;
            break;
        }
        line.pop();
        let frame = match proto::decode_request(&line) {
            Ok(frame) => frame,
            Err((id, err)) => {
                if out.send(Out::Frame(Box::new(ResponseFrame::error(id, err.to_string())))).await.is_err() {
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
        };
        if commands.send(*command).await.is_err() {
            let _ = out.send(Out::Frame(Box::new(ResponseFrame::error(frame.id, "the node is shutting down")))).await;
            break;
        }
        if out.send(Out::Answer(frame.id, answer)).await.is_err() {
            break;
        }
    }
    drop(out);
    let write = writer.await.map_err(std::io::Error::other)??;
    match follow {
        Some((id, subscription)) => stream_events(write, reader, id, subscription, feed).await,
        None => Ok(()),
    }
}

/// Writes answers in request order, each once the node gave it.
async fn write_answers(
    mut write: tokio::net::unix::OwnedWriteHalf,
    mut pending: mpsc::Receiver<Out>,
) -> std::io::Result<tokio::net::unix::OwnedWriteHalf> {
    while let Some(next) = pending.recv().await {
        let frame = match next {
            Out::Frame(frame) => *frame,
            Out::Answer(id, answer) => match answer.await {
                Ok(ok) => ResponseFrame { v: proto::PROTOCOL_VERSION, id, ok: Some(ok), error: None },
                Err(failure) => ResponseFrame::error(id, failure.message()),
            },
        };
        write.write_all(&proto::encode(&frame)).await?;
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
    let mut line = Vec::new();
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
                write.write_all(&proto::encode(&frame)).await?;
            }
            // Anything from the client (or its hang-up) ends the stream.
            _ = reader.read_until(b'\n', &mut line) => return Ok(()),
        }
    }
}
