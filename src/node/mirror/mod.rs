//! The node's mirrors: one bare repository per repository in `<data dir>/mirrors/<repo-id>.git`,
//! holding only what authors published (each author's refs in a git namespace of their own, and
//! once more in the all-authors view: [`crate::proto::remote`]). The working repositories are
//! never served: git's upload-pack hands out any object it has by id, so the one repository
//! peers may read must hold published objects alone.
//!
//! This is the worker the service's [`MirrorOp`]s are carried out by: it runs git (the only place
//! besides the remote helper that does), serves `/git-p2p/upload-pack/1` streams (`serve`) and
//! fetches through them into a quarantine (`fetch`). Each op runs in a task of its own; what it
//! found comes back to the event loop as a [`MirrorEvent`]. Writes to one mirror are serialised
//! by its lock, which serving waits for briefly, so a peer that heard of a commit of ours is
//! served the mirror with that commit in it.

pub mod fetch;
pub mod serve;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use libp2p::{PeerId, StreamProtocol};
use tokio::sync::mpsc;

use super::service::mirror::{AttemptReport, MirrorOp, Wanted};
use crate::control::api::{Failure, KvFound};
use crate::proto::remote::{author_ref, view_ref, ALL};
use crate::proto::repo::{RepoId, RepoInfo};

/// The stream protocol peers fetch git objects over.
pub const UPLOAD_PACK: StreamProtocol = StreamProtocol::new("/git-p2p/upload-pack/1");
/// Where a fetch's objects wait until the service accepted its tips.
pub const QUARANTINE: &str = "p2p-quarantine";
/// Reports the workers' tasks send back; they are few at a time (one per job step).
pub const EVENT_QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("git {what} failed: {stderr}")]
    Git { what: String, stderr: String },
    #[error("cannot run git {what}: {source}")]
    Spawn { what: String, source: std::io::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MirrorError {
    let what = what.into();
    move |source| MirrorError::Io { what, source }
}

/// What a task of the worker reports to the event loop.
#[derive(Debug)]
pub enum MirrorEvent {
    Lookup {
        job: u64,
        found: Result<KvFound, Failure>,
    },
    Attempted {
        job: u64,
        provider: Option<PeerId>,
        report: AttemptReport,
    },
    Settled {
        job: u64,
        result: Result<Vec<(String, String, String)>, String>,
    },
    /// The mirror of this repository holds something now (peers may fetch it).
    Holds(RepoId),
}

/// A git command with a cleared environment: nothing of the user's global or system config
/// (an `insteadOf`, a credential helper, hooks paths) and none of the variables git passes to
/// hooks reaches it.
pub fn git() -> tokio::process::Command {
    let mut c = tokio::process::Command::new(git_program());
    c.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        c.env("PATH", path);
    }
    c.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("LC_ALL", "C")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// git as found on our PATH, once. A command whose PATH is set and whose program is a bare name
/// is started by a fork of the whole node (the standard library cannot hand such a look-up to
/// `posix_spawn`): copying its page tables and then faulting on every page it writes until the
/// child has run `exec`. With the full path it is a `posix_spawn`, which shares them.
fn git_program() -> &'static std::ffi::OsStr {
    static GIT: std::sync::OnceLock<std::ffi::OsString> = std::sync::OnceLock::new();
    GIT.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join("git"))
            .find(|p| p.is_absolute() && p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
            .map_or_else(|| "git".into(), std::path::PathBuf::into_os_string)
    })
}

/// Runs `cmd` to its end; its stdout, or its stderr's first lines as the error.
async fn run(what: &str, cmd: &mut tokio::process::Command) -> Result<String, MirrorError> {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|source| MirrorError::Spawn { what: what.to_string(), source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).take(3).collect();
        return Err(MirrorError::Git { what: what.to_string(), stderr: stderr.join(" / ") });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The mirrors of one node.
pub struct Mirrors {
    root: PathBuf,
    locks: Mutex<HashMap<RepoId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Mirrors {
    /// `root`: `<data dir>/mirrors` ([`crate::paths::Paths::mirror`] names the same places).
    pub fn new(root: PathBuf) -> Self {
        Self { root, locks: Mutex::new(HashMap::new()) }
    }

    pub fn path(&self, repo: &RepoId) -> PathBuf {
        self.root.join(format!("{repo}.git"))
    }

    /// The repositories a mirror exists for.
    pub fn existing(&self) -> Vec<RepoId> {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return Vec::new() };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".git").and_then(|id| RepoId::try_from(id).ok()))
            .collect()
    }

    fn quarantine(&self, repo: &RepoId, job: u64) -> PathBuf {
        self.path(repo).join(QUARANTINE).join(job.to_string())
    }

    /// The lock of one mirror's writes.
    pub fn lock(&self, repo: &RepoId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(repo.clone()).or_default().clone()
    }

    /// The mirror of `repo`, made (empty) if there is none yet.
    pub async fn ensure(&self, repo: &RepoId) -> Result<PathBuf, MirrorError> {
        let path = self.path(repo);
        if path.join("HEAD").exists() {
            return Ok(path);
        }
        std::fs::create_dir_all(&self.root).map_err(io_err("cannot make the mirrors directory"))?;
        let tmp = self.root.join(format!(".{repo}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        init_bare(&tmp, repo).await?;
        // Made aside and renamed: a mirror is whole or absent.
        match std::fs::rename(&tmp, &path) {
            Ok(()) => Ok(path),
            Err(_) if path.join("HEAD").exists() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(path)
            }
            Err(e) => Err(io_err("cannot move the new mirror in place")(e)),
        }
    }
}

/// A bare repository of the object format the repository id says (40 or 64 hex digits), no
/// reflogs: what `git init --bare` makes, less its template (sample hooks, description), written
/// directly. A quarantine is made for every fetch, and `git init` (a process and a dozen files)
/// was a large part of a small fetch's time on a busy disk.
async fn init_bare(path: &Path, repo: &RepoId) -> Result<(), MirrorError> {
    let config = if repo.as_str().len() == 64 {
        "[core]\n\trepositoryformatversion = 1\n\tbare = true\n\tlogAllRefUpdates = false\n[extensions]\n\tobjectformat = sha256\n"
    } else {
        "[core]\n\trepositoryformatversion = 0\n\tbare = true\n\tlogAllRefUpdates = false\n"
    };
    for dir in ["objects/info", "objects/pack", "refs/heads", "refs/tags"] {
        std::fs::create_dir_all(path.join(dir)).map_err(io_err("cannot make a bare repository"))?;
    }
    std::fs::write(path.join("config"), config).map_err(io_err("cannot make a bare repository"))?;
    // HEAD last: git takes a directory with a HEAD for a repository.
    std::fs::write(path.join("HEAD"), "ref: refs/heads/main\n").map_err(io_err("cannot make a bare repository"))?;
    Ok(())
}

/// Carries out the service's mirror ops.
pub struct Worker {
    mirrors: Arc<Mirrors>,
    control: libp2p_stream::Control,
    events: mpsc::Sender<MirrorEvent>,
    /// Our PeerId: our own refs' namespace.
    me: String,
    limits: fetch::Limits,
    /// Our own refs to copy in, one after the other in the order they moved (two at once
    /// could end in either order: a commit's branch as HEAD after a publish that named
    /// another, an older value of a branch after a newer one).
    own: mpsc::UnboundedSender<OwnJob>,
}

/// Our refs to copy into the mirror, and whoever waits for it.
struct OwnJob {
    repo: RepoInfo,
    refs: Vec<(String, String)>,
    head: Option<String>,
    reply: Option<crate::control::api::Reply<()>>,
}

impl Worker {
    pub fn new(
        mirrors: Arc<Mirrors>,
        control: libp2p_stream::Control,
        events: mpsc::Sender<MirrorEvent>,
        me: PeerId,
        max_fetch_size: u64,
    ) -> Self {
        let limits = fetch::Limits { max_bytes: max_fetch_size, ..fetch::Limits::default() };
        let (own, jobs) = mpsc::unbounded_channel();
        tokio::spawn(copy_own(jobs, mirrors.clone(), events.clone(), me.to_string()));
        Self { mirrors, control, events, me: me.to_string(), limits, own }
    }

    pub fn carry_out(&self, op: MirrorOp) {
        let mirrors = self.mirrors.clone();
        let events = self.events.clone();
        match op {
            MirrorOp::Own { repo, refs, head, reply } => {
                if let Err(mpsc::error::SendError(job)) = self.own.send(OwnJob { repo, refs, head, reply }) {
                    tracing::warn!(repo = %job.repo.id.short(), "cannot copy our refs into the mirror: its task ended");
                }
            }
            MirrorOp::Attempt { job, repo, provider, want, background } => {
                let control = self.control.clone();
                let limits = fetch::Limits { background, ..self.limits.clone() };
                tokio::spawn(async move {
                    let report = match provider {
                        None => fetch::look(&mirrors, &repo, &want).await,
                        Some(peer) => fetch::attempt(&mirrors, control, peer, &repo, job, &want, &limits).await,
                    };
                    let report = report.unwrap_or_else(|e| AttemptReport::Failed(e.to_string()));
                    let _ = events.send(MirrorEvent::Attempted { job, provider, report }).await;
                });
            }
            MirrorOp::Settle { job, repo, accept } => {
                tokio::spawn(async move {
                    let result =
                        settle(&mirrors, &repo, job, &accept).await.map(|()| accept).map_err(|e| e.to_string());
                    if result.as_ref().is_ok_and(|a| !a.is_empty()) {
                        let _ = events.send(MirrorEvent::Holds(repo.clone())).await;
                    }
                    let _ = events.send(MirrorEvent::Settled { job, result }).await;
                    // Many small fetches leave many small packs: git repacks when they add up.
                    if let Ok(path) = mirrors.ensure(&repo).await {
                        let _ = run("gc", git().arg("--git-dir").arg(path).args(["gc", "--auto", "--quiet"])).await;
                    }
                });
            }
            MirrorOp::Discard { job, repo } => {
                let _ = std::fs::remove_dir_all(mirrors.quarantine(&repo, job));
            }
            MirrorOp::Forget { repo, refs } => {
                let me = self.me.clone();
                tokio::spawn(async move {
                    if let Err(e) = forget(&mirrors, &repo, &me, &refs).await {
                        tracing::warn!(repo = %repo.short(), error = %e, "cannot drop unpublished refs from the mirror");
                    }
                });
            }
        }
    }
}

/// Copies our refs into the mirror as they come, in order; tells the service the mirror holds
/// them, and whoever waits how it went.
async fn copy_own(
    mut jobs: mpsc::UnboundedReceiver<OwnJob>,
    mirrors: Arc<Mirrors>,
    events: mpsc::Sender<MirrorEvent>,
    me: String,
) {
    while let Some(OwnJob { repo, refs, head, reply }) = jobs.recv().await {
        let result = own(&mirrors, &repo, &me, &refs, head.as_deref()).await;
        match &result {
            Ok(()) => {
                let _ = events.send(MirrorEvent::Holds(repo.id.clone())).await;
            }
            Err(e) => tracing::warn!(repo = %repo.id.short(), error = %e, "cannot copy our refs into the mirror"),
        }
        if let Some(reply) = reply {
            let _ = reply.send(result.map_err(|e| Failure::of(&e)));
        }
    }
}

/// Copies our refs (name, object id) from the working repository into the mirror: exactly
/// the objects those values reach (copied, or pushed when many) and nothing else; `head` (a
/// branch) becomes our namespace's HEAD.
pub async fn own(
    mirrors: &Mirrors,
    repo: &RepoInfo,
    me: &str,
    refs: &[(String, String)],
    head: Option<&str>,
) -> Result<(), MirrorError> {
    let Some(work) = &repo.git_dir else { return Ok(()) };
    let lock = mirrors.lock(&repo.id);
    let _held = lock.lock().await;
    let path = mirrors.ensure(&repo.id).await?;
    let mut specs = Vec::new();
    for (name, oid) in refs {
        if !crate::git::is_ref_name(name) {
            continue;
        }
        let Some(view) = view_ref(me, name) else { continue };
        specs.push(format!("+{oid}:{}", author_ref(me, name)));
        specs.push(format!("+{oid}:{view}"));
    }
    if specs.is_empty() {
        return Ok(());
    }
    // A commit or two: their new objects copied with gix and the refs set by one update-ref
    // (a push is four processes: push, receive-pack, pack-objects, index-pack). Many objects
    // (a first publish): a push, which sends them as one pack.
    let tips: Vec<String> = refs.iter().map(|(_, oid)| oid.clone()).collect();
    let (from, to) = (work.as_path().to_path_buf(), path.clone());
    let copied = tokio::task::spawn_blocking(move || copy_new_objects(&from, &to, &tips, MAX_COPIED)).await;
    if matches!(copied, Ok(Ok(true))) {
        let updates: String = refs
            .iter()
            .filter(|(name, _)| crate::git::is_ref_name(name))
            .filter_map(|(name, oid)| {
                let view = view_ref(me, name)?;
                Some(format!("update {} {oid}\nupdate {view} {oid}\n", author_ref(me, name)))
            })
            .collect();
        update_refs(&path, &updates).await?;
    } else {
        if let Ok(Err(e)) = &copied {
            tracing::debug!(error = %e, "copying objects into the mirror failed; pushing instead");
        }
        push_refs(work.as_path(), &path, &specs).await?;
    }
    if let Some(head) = head.filter(|h| h.starts_with("refs/heads/")) {
        let target = author_ref(me, head);
        // Most commits leave it as it is.
        if symref_target(&path, &author_ref(me, "HEAD")).as_deref() != Some(target.as_str()) {
            let mut sym = git();
            sym.arg("--git-dir").arg(&path).args(["symbolic-ref", &author_ref(me, "HEAD"), &target]);
            run("symbolic-ref", &mut sym).await?;
        }
    }
    tracing::debug!(repo = %repo.id.short(), refs = refs.len(), "our refs are in the mirror");
    Ok(())
}

/// Drops refs of ours from the mirror (our namespace and the all-authors view); our HEAD there
/// goes too if it named one of them.
async fn forget(mirrors: &Mirrors, repo: &RepoId, me: &str, refs: &[String]) -> Result<(), MirrorError> {
    let path = mirrors.path(repo);
    if !path.join("HEAD").exists() {
        return Ok(());
    }
    let lock = mirrors.lock(repo);
    let _held = lock.lock().await;
    let updates: String = refs
        .iter()
        .filter(|name| crate::git::is_ref_name(name))
        .filter_map(|name| Some(format!("delete {}\ndelete {}\n", author_ref(me, name), view_ref(me, name)?)))
        .collect();
    update_refs(&path, &updates).await?;
    let head = path.join(author_ref(me, "HEAD"));
    let target = std::fs::read_to_string(&head).unwrap_or_default();
    if refs.iter().any(|name| target.trim_end().strip_prefix("ref: ") == Some(author_ref(me, name).as_str())) {
        let _ = std::fs::remove_file(&head);
    }
    Ok(())
}

/// Objects one publish copies one by one at most; beyond, a push sends them as a pack.
const MAX_COPIED: usize = 2000;

/// Copies into the mirror at `to` the objects `tips` reach in the repository at `from` that
/// the mirror lacks, children before parents (an object in the mirror has everything it
/// reaches there: a walk stops at the first one present). False, with nothing written, when
/// more than `max` are missing.
fn copy_new_objects(from: &Path, to: &Path, tips: &[String], max: usize) -> Result<bool, MirrorError> {
    use gix::objs::Write as _;
    let src = open_repo(from)?;
    let dst = open_repo(to)?;
    let hash = src.object_hash();
    let mut missing: Vec<(gix::objs::Kind, Vec<u8>)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack: Vec<gix::ObjectId> = Vec::new();
    for tip in tips {
        stack.push(gix::ObjectId::from_hex(tip.as_bytes()).map_err(|e| gix_err("read a ref value", e))?);
    }
    while let Some(id) = stack.pop() {
        if !seen.insert(id) || dst.has_object(id) {
            continue;
        }
        if missing.len() >= max {
            return Ok(false);
        }
        let object = src.find_object(id).map_err(|e| gix_err("read an object to publish", e))?;
        let data = object.data.clone();
        match object.kind {
            gix::objs::Kind::Commit => {
                let mut commit = gix::objs::CommitRefIter::from_bytes(&data, hash);
                stack.push(commit.tree_id().map_err(|e| gix_err("read a commit", e))?);
                stack.extend(gix::objs::CommitRefIter::from_bytes(&data, hash).parent_ids());
            }
            gix::objs::Kind::Tree => {
                for entry in gix::objs::TreeRefIter::from_bytes(&data, hash) {
                    let entry = entry.map_err(|e| gix_err("read a tree", e))?;
                    // A submodule's commit is not in this repository.
                    if !entry.mode.is_commit() {
                        stack.push(entry.oid.to_owned());
                    }
                }
            }
            gix::objs::Kind::Tag => {
                stack.push(
                    gix::objs::TagRefIter::from_bytes(&data, hash).target_id().map_err(|e| gix_err("read a tag", e))?,
                );
            }
            gix::objs::Kind::Blob => {}
        }
        missing.push((object.kind, data));
    }
    // Found parents first: written last, so that what is in the mirror is always whole.
    for (kind, data) in missing.iter().rev() {
        dst.objects.write_buf(*kind, data).map_err(|e| gix_err("write an object into the mirror", e))?;
    }
    Ok(true)
}

/// Sets refs in the repository at `path` (`git update-ref --stdin` lines).
async fn update_refs(path: &Path, updates: &str) -> Result<(), MirrorError> {
    use tokio::io::AsyncWriteExt;
    if updates.is_empty() {
        return Ok(());
    }
    let mut cmd = git();
    cmd.arg("--git-dir").arg(path).args(["update-ref", "--stdin"]).stdin(Stdio::piped());
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| MirrorError::Spawn { what: "update-ref".into(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(updates.as_bytes()).await.map_err(io_err("cannot write to git update-ref"))?;
    }
    let out = child.wait_with_output().await.map_err(io_err("git update-ref"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or_default().to_string();
        return Err(MirrorError::Git { what: "update-ref".into(), stderr });
    }
    Ok(())
}

/// A push of exactly `specs` from the working repository into the mirror.
async fn push_refs(work: &Path, path: &Path, specs: &[String]) -> Result<(), MirrorError> {
    let mut push = git();
    push.arg("--git-dir")
        .arg(work)
        .args(["-c", "push.gpgSign=false", "-c", "core.hooksPath=/dev/null", "push", "--quiet", "--no-verify"])
        .arg(path)
        .args(specs);
    run("push into the mirror", &mut push).await?;
    Ok(())
}

/// Where the symbolic ref `name` of the repository at `path` points (a symbolic ref is a file
/// of its own, never packed).
fn symref_target(path: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(path.join(name)).ok()?;
    text.trim().strip_prefix("ref: ").map(str::to_string)
}

/// Moves the quarantine's objects into the mirror and sets the accepted refs (author, name,
/// value) in the author's namespace and the all-authors view; each author's HEAD there is main
/// or master once there is one, else the branch it is on while it exists, else their first.
async fn settle(
    mirrors: &Mirrors,
    repo: &RepoId,
    job: u64,
    accept: &[(String, String, String)],
) -> Result<(), MirrorError> {
    let lock = mirrors.lock(repo);
    let _held = lock.lock().await;
    let path = mirrors.ensure(repo).await?;
    let quarantine = mirrors.quarantine(repo, job);
    if quarantine.exists() {
        migrate_objects(&quarantine.join("objects"), &path.join("objects"))?;
    }
    let mut updates = String::new();
    for (author, name, oid) in accept {
        let Some(view) = view_ref(author, name) else { continue };
        updates.push_str(&format!("update {} {oid}\nupdate {view} {oid}\n", author_ref(author, name)));
    }
    update_refs(&path, &updates).await?;
    let authors: std::collections::BTreeSet<&String> = accept.iter().map(|(a, _, _)| a).collect();
    for author in authors {
        if author == ALL {
            continue;
        }
        let head = author_ref(author, "HEAD");
        let now = symref_target(&path, &head);
        let best = ["main", "master"].map(|b| author_ref(author, &format!("refs/heads/{b}")));
        if now.as_ref().is_some_and(|n| best.contains(n)) {
            // Nothing better to look for: no git process (most settles).
            continue;
        }
        let listed = run(
            "for-each-ref",
            git().arg("--git-dir").arg(&path).args([
                "for-each-ref",
                "--format=%(refname)",
                &author_ref(author, "refs/heads/"),
            ]),
        )
        .await?;
        let branches: Vec<&str> = listed.lines().collect();
        // Main or master once there is one (the branch fetched first may have been another),
        // else the branch it is on while it exists, else the first.
        let pick = best
            .iter()
            .find(|b| branches.contains(&b.as_str()))
            .cloned()
            .or_else(|| now.clone().filter(|n| branches.contains(&n.as_str())))
            .or_else(|| branches.first().map(|b| b.to_string()));
        if let Some(target) = pick.filter(|p| Some(p) != now.as_ref()) {
            run("symbolic-ref", git().arg("--git-dir").arg(&path).args(["symbolic-ref", &head, &target])).await?;
        }
    }
    let _ = std::fs::remove_dir_all(&quarantine);
    Ok(())
}

/// Moves packs (each index last: git finds a pack by its index) and loose objects from a
/// quarantine's object directory into the mirror's.
fn migrate_objects(from: &Path, to: &Path) -> Result<(), MirrorError> {
    let pack_from = from.join("pack");
    if let Ok(entries) = std::fs::read_dir(&pack_from) {
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        // .pack, .rev before .idx.
        files.sort_by_key(|p| p.extension().is_some_and(|e| e == "idx"));
        std::fs::create_dir_all(to.join("pack")).map_err(io_err("cannot make the mirror's pack dir"))?;
        for file in files {
            let Some(name) = file.file_name() else { continue };
            if file.extension().is_some_and(|e| e == "keep") {
                continue;
            }
            std::fs::rename(&file, to.join("pack").join(name)).map_err(io_err("cannot move a pack into the mirror"))?;
        }
    }
    let entries = std::fs::read_dir(from).map_err(io_err("cannot read the quarantine"))?;
    for dir in entries.filter_map(|e| e.ok()) {
        let name = dir.file_name();
        let fan_out = name.to_str().is_some_and(|n| n.len() == 2 && n.bytes().all(|b| b.is_ascii_hexdigit()));
        if !fan_out {
            continue;
        }
        let target = to.join(&name);
        std::fs::create_dir_all(&target).map_err(io_err("cannot make an object dir in the mirror"))?;
        for object in
            std::fs::read_dir(dir.path()).map_err(io_err("cannot read the quarantine"))?.filter_map(|e| e.ok())
        {
            std::fs::rename(object.path(), target.join(object.file_name()))
                .map_err(io_err("cannot move an object into the mirror"))?;
        }
    }
    Ok(())
}

/// Every ref value of the mirror under `prefix`: (name, object id; a symbolic ref's target's).
/// Read with gix, off the runtime's threads: a fetch with nothing new reads the refs once, and
/// a process for it was a good part of that fetch's time.
pub async fn refs_under(path: &Path, prefix: &str) -> Result<Vec<(String, String)>, MirrorError> {
    let (path, prefix) = (path.to_path_buf(), prefix.to_string());
    tokio::task::spawn_blocking(move || read_refs(&path, &prefix)).await.map_err(|e| gix_err("read refs", e))?
}

fn read_refs(path: &Path, prefix: &str) -> Result<Vec<(String, String)>, MirrorError> {
    let repo = open_repo(path)?;
    let platform = repo.references().map_err(|e| gix_err("read refs", e))?;
    let mut refs = Vec::new();
    for r in platform.prefixed(prefix).map_err(|e| gix_err("read refs", e))? {
        let mut r = r.map_err(|e| gix_err("read refs", e))?;
        let name = r.name().as_bstr().to_string();
        // A dangling symbolic ref has no value: for-each-ref leaves it out too.
        if let Ok(id) = r.follow_to_object() {
            refs.push((name, id.to_string()));
        }
    }
    Ok(refs)
}

/// The authors (PeerIds) whose namespaces the mirror at `path` holds refs in; none if it cannot
/// be read (no mirror yet).
pub fn authors(path: &Path) -> Vec<String> {
    let mut authors: Vec<String> = read_refs(path, "refs/namespaces/")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, _)| name.strip_prefix("refs/namespaces/")?.split('/').next().map(str::to_string))
        .filter(|a| a != ALL)
        .collect();
    authors.dedup();
    authors
}

/// Which of `oids` the repository at `path` (with its alternates) has.
pub async fn present(path: &Path, oids: &[&str]) -> Result<std::collections::HashSet<String>, MirrorError> {
    let path = path.to_path_buf();
    let oids: Vec<String> = oids.iter().map(|o| o.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let repo = open_repo(&path)?;
        Ok(oids
            .into_iter()
            .filter(|o| gix::ObjectId::from_hex(o.as_bytes()).is_ok_and(|id| repo.has_object(id)))
            .collect())
    })
    .await
    .map_err(|e| gix_err("look for objects", e))?
}

/// A mirror or a quarantine, as gix reads it (no config but its own).
fn open_repo(path: &Path) -> Result<gix::Repository, MirrorError> {
    gix::open_opts(path, gix::open::Options::isolated()).map_err(|e| gix_err("open the mirror", e))
}

fn gix_err(what: &str, e: impl std::fmt::Display) -> MirrorError {
    MirrorError::Git { what: what.to_string(), stderr: e.to_string() }
}

/// Whether `old` is an ancestor of `new` in the repository at `path`.
pub async fn is_ancestor(path: &Path, old: &str, new: &str) -> bool {
    let mut cmd = git();
    cmd.arg("--git-dir").arg(path).args(["merge-base", "--is-ancestor", old, new]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    matches!(cmd.status().await, Ok(s) if s.success())
}

/// The wanted refs as facts about the repository at `path` (`advertised`: what `refs` holds).
pub async fn facts(
    path: &Path,
    want: &Wanted,
    advertised: impl Fn(&str, &str) -> Option<String>,
) -> Result<Vec<super::service::mirror::Fact>, MirrorError> {
    let oids: Vec<&str> = want.values().flat_map(|refs| refs.values().map(String::as_str)).collect();
    let have = present(path, &oids).await?;
    let mut facts = Vec::new();
    for (author, refs) in want {
        for (name, signed) in refs {
            let adv = advertised(author, name);
            let present = have.contains(signed);
            let older = match &adv {
                Some(a) if a != signed && present && have_object(path, a).await => is_ancestor(path, a, signed).await,
                _ => false,
            };
            facts.push(super::service::mirror::Fact {
                author: author.clone(),
                name: name.clone(),
                signed: signed.clone(),
                advertised: adv,
                present,
                older,
            });
        }
    }
    Ok(facts)
}

async fn have_object(path: &Path, oid: &str) -> bool {
    present(path, &[oid]).await.is_ok_and(|h| h.contains(oid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh_git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "a")
            .env("GIT_AUTHOR_EMAIL", "a@example.invalid")
            .env("GIT_COMMITTER_NAME", "a")
            .env("GIT_COMMITTER_EMAIL", "a@example.invalid")
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn commit(dir: &Path, file: &str, text: &str) -> String {
        std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
        std::fs::write(dir.join("sub").join(file), text).expect("write");
        sh_git(dir, &["add", "."]);
        sh_git(dir, &["commit", "-q", "-m", text]);
        sh_git(dir, &["rev-parse", "HEAD"])
    }

    #[tokio::test]
    async fn a_copy_brings_what_the_tips_reach_whole_and_nothing_else() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&work).expect("mkdir");
        sh_git(&work, &["init", "-q", "-b", "main"]);
        let one = commit(&work, "a", "one");
        let two = commit(&work, "b", "two");
        let secret = commit(&work, "c", "not published");
        let mirror = tmp.path().join("mirror.git");
        init_bare(&mirror, &RepoId::try_from(one.clone()).expect("an id")).await.expect("made");
        let (git_dir, to) = (work.join(".git"), mirror.clone());
        assert!(!copy_new_objects(&git_dir, &to, std::slice::from_ref(&two), 3).expect("walks"), "over the bound");
        assert!(present(&mirror, &[&one, &two]).await.expect("reads").is_empty(), "nothing written then");
        assert!(copy_new_objects(&git_dir, &to, std::slice::from_ref(&one), 100).expect("copies"));
        assert!(copy_new_objects(&git_dir, &to, std::slice::from_ref(&two), 100).expect("copies on top"));
        sh_git(&mirror, &["update-ref", "refs/heads/main", &two]);
        sh_git(&mirror, &["fsck", "--strict", "--no-dangling"]);
        let have = present(&mirror, &[&one, &two, &secret]).await.expect("reads");
        assert!(have.contains(&two) && have.contains(&one) && !have.contains(&secret), "{have:?}");
    }
}
