//! Serving peers: each `/git-p2p/upload-pack/1` stream names a repository in one JSON line
//! (`{"repo": "<id>", "protocol": "version=2"}`); the node answers `ok` and runs a real
//! `git upload-pack --strict --timeout=..` over its mirror of that repository (never a working
//! repository: only the mirror holds nothing but published objects), with a cleared
//! environment and `GIT_PROTOCOL` passed on, the stream as its stdin and stdout. Anything else
//! gets one `error: ...` line and the stream is closed.
//!
//! Bounded: streams served at once ([`MAX_SERVING`]) and per peer ([`MAX_PER_PEER`]), the
//! request line ([`MAX_LINE`], [`HEADER_WITHIN`]), git's own inactivity timeout
//! ([`IDLE_TIMEOUT`]) and the time one fetch may take ([`MAX_FETCH_TIME`]).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::PeerId;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Semaphore;

use super::{git, Mirrors};
use crate::proto::repo::RepoId;

/// Streams served at once: each runs a git process; a busy node refuses more with a reason.
pub const MAX_SERVING: usize = 16;
/// Streams of one peer served at once.
pub const MAX_PER_PEER: usize = 2;
/// Longest request line.
pub const MAX_LINE: usize = 1024;
/// The request line must come this soon.
pub const HEADER_WITHIN: Duration = Duration::from_secs(10);
/// upload-pack's own timeout: a client silent this long is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest one fetch may take (a large repository over a slow link fits).
pub const MAX_FETCH_TIME: Duration = Duration::from_secs(30 * 60);
/// How long serving waits for a write of the mirror under way (our own commit, being copied in
/// as its announcement goes out), so that the peer that heard of it finds it.
const WRITE_WAIT: Duration = Duration::from_secs(5);

/// A peer's request.
#[derive(Debug, serde::Deserialize)]
struct Request {
    repo: RepoId,
    #[serde(default)]
    protocol: Option<String>,
    /// The fetch is a background replication: served at a low CPU priority.
    #[serde(default)]
    background: bool,
}

/// Serves every stream `incoming` brings until the node stops.
pub async fn run(mut incoming: libp2p_stream::IncomingStreams, mirrors: Arc<Mirrors>) {
    let serving = Arc::new(Semaphore::new(MAX_SERVING));
    let per_peer: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
    while let Some((peer, mut stream)) = incoming.next().await {
        let Ok(permit) = serving.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "refusing an upload-pack stream: busy");
            tokio::spawn(async move { refuse(&mut stream, "busy: too many fetches at once; try another peer").await });
            continue;
        };
        {
            let mut counts = per_peer.lock().unwrap_or_else(|e| e.into_inner());
            let count = counts.entry(peer).or_default();
            if *count >= MAX_PER_PEER {
                drop(counts);
                tokio::spawn(async move { refuse(&mut stream, "too many fetches of yours at once").await });
                continue;
            }
            *count += 1;
        }
        let mirrors = mirrors.clone();
        let per_peer = per_peer.clone();
        tokio::spawn(async move {
            let served = tokio::time::timeout(MAX_FETCH_TIME, serve(peer, stream, &mirrors)).await;
            match served {
                Ok(Ok(())) => tracing::debug!(%peer, "served a fetch"),
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "a fetch ended early"),
                Err(_) => tracing::info!(%peer, "a fetch took too long; cut"),
            }
            let mut counts = per_peer.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = counts.get_mut(&peer) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&peer);
                }
            }
            drop(permit);
        });
    }
}

async fn refuse(stream: &mut libp2p::Stream, why: &str) {
    let _ = stream.write_all(format!("error: {why}\n").as_bytes()).await;
    let _ = stream.close().await;
}

/// Reads one line (without its newline), at most [`MAX_LINE`] bytes.
pub async fn read_line(stream: &mut libp2p::Stream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the stream ended before a line"));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_LINE {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "line too long"));
        }
    }
    String::from_utf8(line).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
}

async fn serve(peer: PeerId, mut stream: libp2p::Stream, mirrors: &Mirrors) -> std::io::Result<()> {
    let line = match tokio::time::timeout(HEADER_WITHIN, read_line(&mut stream)).await {
        Ok(Ok(line)) => line,
        Ok(Err(e)) => {
            refuse(&mut stream, "malformed request").await;
            return Err(e);
        }
        Err(_) => {
            refuse(&mut stream, "no request").await;
            return Ok(());
        }
    };
    let request: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(_) => {
            refuse(&mut stream, "malformed request").await;
            return Ok(());
        }
    };
    let path = mirrors.path(&request.repo);
    if !path.join("HEAD").exists() {
        refuse(&mut stream, &format!("no mirror of repository {} here", request.repo.short())).await;
        return Ok(());
    }
    {
        let lock = mirrors.lock(&request.repo);
        let _ = tokio::time::timeout(WRITE_WAIT, lock.lock()).await;
    }
    let mut cmd = git();
    cmd.arg("upload-pack")
        .arg("--strict")
        .arg(format!("--timeout={}", IDLE_TIMEOUT.as_secs()))
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // Only the protocol versions git knows; anything else would be passed to git as is.
    if let Some(p) = request.protocol.filter(|p| matches!(p.as_str(), "version=2" | "version=1" | "version=0")) {
        cmd.env("GIT_PROTOCOL", p);
    }
    if request.background {
        crate::node::priority::own_group(&mut cmd);
    }
    let mut child = cmd.spawn()?;
    if request.background {
        crate::node::priority::give_way_group(child.id());
    }
    stream.write_all(b"ok\n").await?;
    stream.flush().await?;
    tracing::debug!(%peer, repo = %request.repo.short(), "serving a fetch");
    let mut stdin = child.stdin.take().ok_or_else(|| std::io::Error::other("no stdin"))?;
    let mut stdout = child.stdout.take().ok_or_else(|| std::io::Error::other("no stdout"))?;
    let (mut remote_read, mut remote_write) = stream.split();
    let inward = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = remote_read.read(&mut buf).await?;
            tracing::trace!(n, "from the fetching peer");
            if n == 0 {
                drop(stdin);
                return Ok::<(), std::io::Error>(());
            }
            stdin.write_all(&buf[..n]).await?;
        }
    };
    let outward = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stdout.read(&mut buf).await?;
            tracing::trace!(n, "from upload-pack");
            if n == 0 {
                remote_write.close().await?;
                return Ok::<(), std::io::Error>(());
            }
            remote_write.write_all(&buf[..n]).await?;
            remote_write.flush().await?;
        }
    };
    tokio::pin!(inward, outward);
    // Done when upload-pack has said all it will (its stdout closed); the peer closing its side
    // first only means no more requests.
    let result = tokio::select! {
        r = &mut outward => r,
        r = &mut inward => match r {
            Ok(()) => outward.await,
            Err(e) => Err(e),
        },
    };
    let _ = child.kill().await;
    result
}
