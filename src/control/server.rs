//! The node's side of the control socket: accepts clients, decodes their requests, hands them to
//! the event loop and writes the answers back. It never touches the swarm itself.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};

use super::proto::{self, NodeEvent, Request, Response, ResponseFrame, MAX_FRAME};
use crate::node::event_loop::Command;

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

/// What the writer half sends next, in request order.
enum Out {
    Frame(Box<ResponseFrame>),
    Answer(u64, oneshot::Receiver<proto::Outcome>),
}

/// Serves one client. Requests are pipelined: each is handed to the event loop as soon as it is
/// read (so requests of one client share the event loop's group commit), and the answers are
/// written in request order by a writer task. A stream request (`Follow`, `FollowChat`) takes
/// over the connection once the answers before it are out.
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
        match &frame.req {
            Request::Follow { repo } => {
                follow = Some((frame.id, repo.to_string(), false));
                break;
            }
            Request::FollowChat { room } => {
                follow = Some((frame.id, room.clone(), true));
                break;
            }
            _ => {}
        }
        let (reply, answer) = oneshot::channel();
        if commands.send(Command { req: frame.req, reply }).await.is_err() {
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
        Some((id, wanted, chat)) => stream_events(write, reader, id, wanted, chat, feed).await,
        None => Ok(()),
    }
}

/// Writes answers in request order, each once the event loop gave it.
async fn write_answers(
    mut write: tokio::net::unix::OwnedWriteHalf,
    mut pending: mpsc::Receiver<Out>,
) -> std::io::Result<tokio::net::unix::OwnedWriteHalf> {
    while let Some(next) = pending.recv().await {
        let frame = match next {
            Out::Frame(frame) => *frame,
            Out::Answer(id, answer) => match answer.await {
                Ok(outcome) => ResponseFrame { v: proto::PROTOCOL_VERSION, id, outcome },
                Err(_) => ResponseFrame::error(id, "the node is shutting down"),
            },
        };
        write.write_all(&proto::encode(&frame)).await?;
    }
    Ok(write)
}

/// Streams announcements (or a room's messages) to a follower until it sends anything or hangs up.
async fn stream_events(
    mut write: tokio::net::unix::OwnedWriteHalf,
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    id: u64,
    wanted: String,
    chat: bool,
    feed: broadcast::Sender<NodeEvent>,
) -> std::io::Result<()> {
    let mut rx = feed.subscribe();
    write.write_all(&proto::encode(&ResponseFrame::ok(id, Response::Following))).await?;
    let mut line = Vec::new();
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Ok(NodeEvent::Announcement(entry)) if !chat && entry.repo.as_str() == wanted => {
                    let frame = ResponseFrame::ok(id, Response::Announcement { entry });
                    write.write_all(&proto::encode(&frame)).await?;
                }
                Ok(NodeEvent::Chat(message)) if chat && message.room == wanted => {
                    let frame = ResponseFrame::ok(id, Response::Chat { message });
                    write.write_all(&proto::encode(&frame)).await?;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let frame = ResponseFrame::error(id, format!("too slow: {n} announcements skipped"));
                    write.write_all(&proto::encode(&frame)).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            // Anything from the client (or its hang-up) ends the stream.
            _ = reader.read_until(b'\n', &mut line) => return Ok(()),
        }
    }
}
