//! Fetching from one provider: a `/git-p2p/upload-pack/1` stream to it, and a real `git fetch`
//! into a quarantine repository (its own object directory, the mirror's objects borrowed as
//! alternates) that speaks git's protocol v2 through that stream. git reaches the stream
//! through the remote helper in relay mode (`git-remote-p2p` with `GIT_P2P_RELAY_FD`: one end
//! of a socket pair the node splices with the stream), so the whole of git's negotiation,
//! `fetch.fsckObjects` and connectivity check run as in any fetch. Then the facts of the wanted
//! refs go back to the service, which judges them; nothing enters the mirror before that.
//!
//! Bounded: opening the stream and the provider's first answer ([`Limits::open`]), the whole
//! fetch ([`Limits::total`]), and the bytes the provider may send ([`Limits::max_bytes`],
//! `p2p.max-fetch-size`).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libp2p::futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::PeerId;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{facts, git, init_bare, refs_under, MirrorError, Mirrors, UPLOAD_PACK};
use crate::node::service::mirror::{AttemptReport, Wanted};
use crate::proto::remote::{author_ref, namespace_prefix};
use crate::proto::repo::RepoId;

/// The variable that puts the remote helper in relay mode: the fd to relay git's pipe to.
pub const RELAY_FD_ENV: &str = "GIT_P2P_RELAY_FD";
/// The fd the relay's socket has in git and the helper.
const RELAY_FD: i32 = 3;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Opening the stream and the provider's first line.
    pub open: Duration,
    /// The whole fetch.
    pub total: Duration,
    /// What the provider may send in one fetch.
    pub max_bytes: u64,
    /// A provider silent this long in the middle of a fetch has stalled.
    pub idle: Duration,
    /// Nobody waits for the fetch (background replication): git runs at a low CPU priority on
    /// both ends ([`crate::node::priority::BACKGROUND_NICE`]).
    pub background: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            open: Duration::from_secs(10),
            total: Duration::from_secs(30 * 60),
            max_bytes: crate::config::DEFAULT_MAX_FETCH_SIZE,
            idle: Duration::from_secs(20),
            background: false,
        }
    }
}

/// The mirror alone: what it holds of the wanted refs.
pub async fn look(mirrors: &Mirrors, repo: &RepoId, want: &Wanted) -> Result<AttemptReport, MirrorError> {
    if want.is_empty() {
        return Ok(AttemptReport::Facts(Vec::new()));
    }
    let path = mirrors.ensure(repo).await?;
    let held = refs_under(&path, "refs/namespaces/").await?;
    let held: std::collections::HashMap<String, String> = held.into_iter().collect();
    let found = facts(&path, want, |author, name| held.get(&author_ref(author, name)).cloned()).await?;
    Ok(AttemptReport::Facts(found))
}

/// One attempt: fetch the wanted authors' branches and tags from `peer` into quarantine `job`.
pub async fn attempt(
    mirrors: &Mirrors,
    control: libp2p_stream::Control,
    peer: PeerId,
    repo: &RepoId,
    job: u64,
    want: &Wanted,
    limits: &Limits,
) -> Result<AttemptReport, MirrorError> {
    let path = mirrors.ensure(repo).await?;
    let quarantine = mirrors.quarantine(repo, job);
    let _ = std::fs::remove_dir_all(&quarantine);
    forget_old_progress(&quarantine);
    init_bare(&quarantine, repo).await?;
    let alternates = quarantine.join("objects/info/alternates");
    let objects = path.join("objects");
    std::fs::write(&alternates, format!("{}\n", objects.display()))
        .map_err(super::io_err("cannot write alternates"))?;
    let stream = match tokio::time::timeout(limits.open, open(control, peer, repo, limits.background)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(why)) => return Ok(AttemptReport::Failed(why)),
        Err(_) => return Ok(AttemptReport::Failed(format!("no answer within {} s", limits.open.as_secs()))),
    };
    let mut refspecs = Vec::new();
    for author in want.keys() {
        let ns = namespace_prefix(author);
        refspecs.push(format!("+{ns}refs/heads/*:refs/p2p/{author}/refs/heads/*"));
        refspecs.push(format!("+{ns}refs/tags/*:refs/p2p/{author}/refs/tags/*"));
    }
    match tokio::time::timeout(limits.total, fetch_through(stream, &quarantine, repo, &refspecs, limits)).await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => return Ok(AttemptReport::Failed(why)),
        Err(_) => return Ok(AttemptReport::Failed(format!("the fetch took more than {} s", limits.total.as_secs()))),
    }
    let fetched = refs_under(&quarantine, "refs/p2p/").await?;
    let fetched: std::collections::HashMap<String, String> = fetched.into_iter().collect();
    let found =
        facts(&quarantine, want, |author, name| fetched.get(&format!("refs/p2p/{author}/{name}")).cloned()).await?;
    Ok(AttemptReport::Facts(found))
}

/// Opens the stream and asks for `repo`; the provider answers `ok` or why not.
async fn open(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    repo: &RepoId,
    background: bool,
) -> Result<libp2p::Stream, String> {
    let mut stream = control.open_stream(peer, UPLOAD_PACK).await.map_err(|e| e.to_string())?;
    // `background`: the provider runs its upload-pack at a low priority too (older nodes ignore it).
    let header = serde_json::json!({ "repo": repo, "protocol": "version=2", "background": background });
    let mut line = serde_json::to_vec(&header).expect("a header serialises");
    line.push(b'\n');
    stream.write_all(&line).await.map_err(|e| format!("cannot send the request: {e}"))?;
    stream.flush().await.map_err(|e| format!("cannot send the request: {e}"))?;
    let answer = super::serve::read_line(&mut stream).await.map_err(|e| format!("no answer: {e}"))?;
    match answer.as_str() {
        "ok" => Ok(stream),
        other => Err(other.strip_prefix("error: ").unwrap_or(other).chars().take(200).collect()),
    }
}

/// Runs `git fetch` in the quarantine with the relay's socket as fd 3, splicing it with the
/// stream; fails when git does, or when the provider sends more than `max_bytes`.
async fn fetch_through(
    stream: libp2p::Stream,
    quarantine: &std::path::Path,
    repo: &RepoId,
    refspecs: &[String],
    limits: &Limits,
) -> Result<(), String> {
    let background = limits.background;
    let max_bytes = limits.max_bytes;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    let child_fd = theirs.as_raw_fd();
    let mut cmd = git();
    // The helper is installed beside the node's binary (and is found there in tests too).
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.to_path_buf())) {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let joined = std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(&path)))
            .map_err(|e| e.to_string())?;
        cmd.env("PATH", joined);
    }
    if let Some(trace) = std::env::var_os("GIT_P2P_DEBUG_TRACE") {
        cmd.env("GIT_TRACE", &trace).env("GIT_TRACE_PACKET", &trace);
    }
    cmd.env(RELAY_FD_ENV, RELAY_FD.to_string())
        .arg("--git-dir")
        .arg(quarantine)
        .args([
            "-c",
            "protocol.version=2",
            "-c",
            "fetch.fsckObjects=true",
            "-c",
            "fetch.unpackLimit=1",
            "fetch",
            "--progress",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-auto-gc",
            &format!("{}{repo}", crate::proto::remote::SCHEME),
        ])
        .args(refspecs)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: dup2 and fcntl are async-signal-safe; they only put the socket at fd 3 in the
    // child (without close-on-exec), where git and the helper it runs inherit it.
    unsafe {
        cmd.pre_exec(move || {
            if child_fd == RELAY_FD {
                let flags = libc::fcntl(RELAY_FD, libc::F_GETFD);
                if flags == -1 || libc::fcntl(RELAY_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(child_fd, RELAY_FD) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    if background {
        crate::node::priority::own_group(&mut cmd);
    }
    let mut child = cmd.spawn().map_err(|e| format!("cannot run git fetch: {e}"))?;
    if background {
        crate::node::priority::give_way_group(child.id());
    }
    drop(theirs);
    ours.set_nonblocking(true).map_err(|e| e.to_string())?;
    let local = tokio::net::UnixStream::from_std(ours).map_err(|e| e.to_string())?;
    let received = Arc::new(AtomicU64::new(0));
    let splice = tokio::spawn(splice(stream, local, received.clone(), max_bytes, limits.idle));
    // git's progress goes to a file the remote helper of a waiting `git fetch` shows; the
    // last lines of what git said are kept for an error.
    let said = child.stderr.take().map(|err| tokio::spawn(progress(err, progress_file(quarantine))));
    let status = child.wait().await.map_err(|e| e.to_string())?;
    // git is done; what the splice still holds is of no use any more.
    let stalled = if splice.is_finished() {
        matches!(splice.await, Ok(Err(Splice::Stalled)))
    } else {
        splice.abort();
        false
    };
    if stalled {
        return Err(format!("the provider stalled (nothing for {} s)", limits.idle.as_secs()));
    }
    if received.load(Ordering::Relaxed) > max_bytes {
        return Err(format!(
            "the provider sent more than p2p.max-fetch-size ({} bytes); raise it to fetch this repository",
            max_bytes
        ));
    }
    if !status.success() {
        let text = match said {
            Some(task) => task.await.unwrap_or_default(),
            None => String::new(),
        };
        let text: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).take(2).collect();
        return Err(if text.is_empty() { format!("git fetch failed ({status})") } else { text.join(" / ") });
    }
    Ok(())
}

/// The extension of the file beside a quarantine that holds its `git fetch`'s progress, as git
/// prints it (beside it, not in it: it outlives the quarantine, for the remote helper of a
/// `git fetch` that waited for it to read to the end).
pub const PROGRESS: &str = "progress";
/// Progress files older than this are of no fetch anyone still waits for.
const PROGRESS_KEPT: Duration = Duration::from_secs(10 * 60);

fn progress_file(quarantine: &std::path::Path) -> std::path::PathBuf {
    quarantine.with_extension(PROGRESS)
}

/// Removes the progress files of the quarantines beside `quarantine` that are old.
fn forget_old_progress(quarantine: &std::path::Path) {
    let Some(dir) = quarantine.parent() else { return };
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let old = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if path.extension().is_some_and(|e| e == PROGRESS) && old.is_some_and(|age| age > PROGRESS_KEPT) {
            let _ = std::fs::remove_file(path);
        }
    }
}
/// What is kept of git's messages (not progress) for an error.
const MAX_SAID: usize = 4096;

/// Copies git's stderr into `file` as it comes (progress lines end in `\r`); returns the lines
/// that are not progress (git's errors), at most [`MAX_SAID`] bytes of them.
async fn progress(mut stderr: tokio::process::ChildStderr, file: std::path::PathBuf) -> String {
    // The file is shown to whoever waits; a failure to write it loses only the show. Writes of
    // a few bytes into the page cache: not worth a blocking thread.
    // Appended to: a job's next attempt (another provider) adds to what its waiter reads.
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(&file).ok();
    let mut said = String::new();
    let mut line = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if let Some(f) = out.as_mut() {
            if std::io::Write::write_all(f, &buf[..n]).is_err() {
                out = None;
            }
        }
        for &b in &buf[..n] {
            match b {
                b'\r' => line.clear(),
                b'\n' => {
                    let text = String::from_utf8_lossy(&line);
                    if !is_progress(&text) && said.len() + text.len() < MAX_SAID {
                        said.push_str(&text);
                        said.push('\n');
                    }
                    line.clear();
                }
                _ if line.len() < MAX_SAID => line.push(b),
                _ => {}
            }
        }
    }
    said
}

/// A line of git's progress ("Receiving objects: 100% (5/5), done.", "remote: Counting ...").
fn is_progress(line: &str) -> bool {
    let line = line.strip_prefix("remote: ").unwrap_or(line);
    line.contains("% (")
        || line.contains(", done.")
        || line.starts_with("Enumerating objects")
        || line.starts_with("Total ")
}

/// Why a splice ended early.
#[derive(Debug)]
enum Splice {
    Io,
    /// The provider sent more than the limit: the relay is cut, and git fails.
    TooLarge,
    /// The provider sent nothing for too long: the relay is cut.
    Stalled,
}

/// Copies between the stream and the relay's socket until the provider is done; counts what
/// the provider sends against `max_bytes`.
async fn splice(
    stream: libp2p::Stream,
    local: tokio::net::UnixStream,
    received: Arc<AtomicU64>,
    max_bytes: u64,
    idle: Duration,
) -> Result<(), Splice> {
    let (mut remote_read, mut remote_write) = stream.split();
    let (mut local_read, mut local_write) = local.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = local_read.read(&mut buf).await.map_err(|_| Splice::Io)?;
            tracing::trace!(n, "from git fetch");
            if n == 0 {
                let _ = remote_write.close().await;
                return Ok::<(), Splice>(());
            }
            remote_write.write_all(&buf[..n]).await.map_err(|_| Splice::Io)?;
            remote_write.flush().await.map_err(|_| Splice::Io)?;
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match tokio::time::timeout(idle, remote_read.read(&mut buf)).await {
                Ok(read) => read.map_err(|_| Splice::Io)?,
                Err(_) => return Err(Splice::Stalled),
            };
            tracing::trace!(n, "from the provider");
            if n == 0 {
                let _ = local_write.shutdown().await;
                return Ok::<(), Splice>(());
            }
            if received.fetch_add(n as u64, Ordering::Relaxed) + n as u64 > max_bytes {
                return Err(Splice::TooLarge);
            }
            local_write.write_all(&buf[..n]).await.map_err(|_| Splice::Io)?;
        }
    };
    tokio::pin!(up, down);
    tokio::select! {
        r = &mut down => r,
        r = &mut up => { r?; down.await }
    }
}
