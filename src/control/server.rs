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

async fn serve_client(
    stream: UnixStream,
    commands: mpsc::Sender<Command>,
    feed: broadcast::Sender<NodeEvent>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_FRAME as u64 + 1).read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            let frame = ResponseFrame::error(0, proto::DecodeError::TooLong(line.len()).to_string());
            write.write_all(&proto::encode(&frame)).await?;
            return Ok(());
        }
        line.pop();
        let frame = match proto::decode_request(&line) {
            Ok(frame) => frame,
            Err((id, err)) => {
                write.write_all(&proto::encode(&ResponseFrame::error(id, err.to_string()))).await?;
                continue;
            }
        };
        let stream = match &frame.req {
            Request::Follow { repo } => Some((repo.clone(), false)),
            Request::FollowChat { room } => Some((room.clone(), true)),
            _ => None,
        };
        if let Some((wanted, chat)) = stream {
            let mut rx = feed.subscribe();
            write.write_all(&proto::encode(&ResponseFrame::ok(frame.id, Response::Following))).await?;
            loop {
                tokio::select! {
                    event = rx.recv() => match event {
                        Ok(NodeEvent::Announcement(entry)) if !chat && entry.repo == wanted => {
                            let frame = ResponseFrame::ok(frame.id, Response::Announcement { entry });
                            write.write_all(&proto::encode(&frame)).await?;
                        }
                        Ok(NodeEvent::Chat(message)) if chat && message.room == wanted => {
                            let frame = ResponseFrame::ok(frame.id, Response::Chat { message });
                            write.write_all(&proto::encode(&frame)).await?;
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let frame = ResponseFrame::error(frame.id, format!("too slow: {n} announcements skipped"));
                            write.write_all(&proto::encode(&frame)).await?;
                        }
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    },
                    // Anything from the client (or its hang-up) ends the stream.
                    _ = reader.read_until(b'\n', &mut line) => return Ok(()),
                }
            }
        }
        let (reply, answer) = oneshot::channel();
        if commands.send(Command { req: frame.req, reply }).await.is_err() {
            let frame = ResponseFrame::error(frame.id, "the node is shutting down");
            write.write_all(&proto::encode(&frame)).await?;
            return Ok(());
        }
        let response = match answer.await {
            Ok(outcome) => ResponseFrame { v: proto::PROTOCOL_VERSION, id: frame.id, outcome },
            Err(_) => ResponseFrame::error(frame.id, "the node is shutting down"),
        };
        write.write_all(&proto::encode(&response)).await?;
    }
}
