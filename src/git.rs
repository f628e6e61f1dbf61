//! Everything git-p2p needs to know about the local repository (identity, room, HEAD, user); the only module that talks to gix.

use std::fmt;
use std::path::{Path, PathBuf};

use gix::bstr::ByteSlice;
use gix::ObjectId;

use crate::proto::announce::Commit;
use crate::proto::repo::RepoId;
use crate::proto::repo::{LocalPath, RepoInfo};

/// Failures when inspecting the repository; messages are shown to the user as-is.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("not a git repository (run inside a repo or pass -C DIR): {}", dir.display())]
    NotARepo { dir: PathBuf },
    #[error("this repository has no commit yet: commit first, its root commit names the repository")]
    EmptyRepo,
    #[error("{0}")]
    Git(String),
}

/// Wraps a gix error with what we were doing; gix errors may span lines, the user gets one.
fn ctx<E: fmt::Display>(context: &str) -> impl FnOnce(E) -> GitError + '_ {
    move |err| GitError::Git(format!("{context}: {}", err.to_string().replace('\n', " ")))
}

/// A snapshot of the repository state git-p2p works with.
#[derive(Debug, Clone)]
pub struct RepoContext {
    /// The open repository, kept so later questions (commit_info) need not open it again.
    handle: gix::Repository,
    pub git_dir: PathBuf,
    /// The git dir the work trees share (the main one's; `git_dir` itself but in a linked
    /// work tree, `git worktree add`).
    pub common_dir: PathBuf,
    pub workdir: Option<PathBuf>,
    pub repo_id: RepoId,
    pub room_name: String,
    pub head_commit: String,
    pub branch: Option<String>,
    pub user_name: Option<String>,
    pub remote_urls: Vec<String>,
}

/// Equal when they describe the same repository state; the open handle is not compared.
impl PartialEq for RepoContext {
    fn eq(&self, other: &Self) -> bool {
        (&self.git_dir, &self.workdir, &self.repo_id, &self.room_name, &self.head_commit)
            == (&other.git_dir, &other.workdir, &other.repo_id, &other.room_name, &other.head_commit)
            && (&self.branch, &self.user_name, &self.remote_urls)
                == (&other.branch, &other.user_name, &other.remote_urls)
    }
}

impl RepoContext {
    pub fn is_bare(&self) -> bool {
        self.workdir.is_none()
    }

    /// What the node is told about this repository.
    pub fn info(&self) -> RepoInfo {
        RepoInfo {
            id: self.repo_id.clone(),
            name: self.room_name.clone(),
            // Absolute: the node runs elsewhere (a hook sees GIT_DIR=.git).
            git_dir: Some(LocalPath::new(std::path::absolute(&self.git_dir).unwrap_or_else(|_| self.git_dir.clone()))),
        }
    }

    /// `p2p.description` from the repository's config (local, then global), or empty.
    pub fn description(&self) -> String {
        self.handle
            .config_snapshot()
            .string("p2p.description")
            .map(|d| d.to_str_lossy().trim().to_owned())
            .unwrap_or_default()
    }

    /// The node-wide `p2p.*` settings (which the node reads from the user's global config only)
    /// that this repository's own config sets, and so are not in force.
    pub fn node_settings_set_here(&self) -> Vec<String> {
        use gix::config::Source;
        let snapshot = self.handle.config_snapshot();
        let local = |m: &gix::config::file::Metadata| matches!(m.source, Source::Local | Source::Worktree);
        let mut keys: Vec<String> = snapshot
            .plumbing()
            .sections_by_name_and_filter("p2p", local)
            .into_iter()
            .flatten()
            .flat_map(|s| s.value_names().collect::<Vec<_>>())
            .map(|k| format!("p2p.{}", k.to_ascii_lowercase()))
            .filter(|k| crate::config::NODE_WIDE.contains(&k.as_str()))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// What an announcement says about the commit `rev` names (HEAD, a branch, an id...).
    pub fn commit_info(&self, rev: &str) -> Result<Commit, GitError> {
        let repo = &self.handle;
        let id = repo.rev_parse_single(rev).map_err(ctx(&format!("unknown revision {rev:?}")))?;
        let commit = id.object().map_err(ctx("cannot read commit"))?.peel_to_commit().map_err(ctx("not a commit"))?;
        let parents = commit.parent_ids().map(|p| p.to_string()).collect();
        let author = commit.author().map_err(ctx("cannot read the commit's author"))?;
        let author = author.name.to_str_lossy().into_owned();
        let time = commit.time().map_err(ctx("cannot read the commit's time"))?.seconds;
        let message = commit.message().map_err(ctx("cannot read the commit's message"))?;
        let summary = message.title.to_str_lossy().trim().to_owned();
        // The ref the commit was made on: HEAD's branch for HEAD, the ref itself for a ref name.
        let ref_name = if rev == "HEAD" {
            self.branch.as_ref().map(|b| format!("refs/heads/{b}"))
        } else {
            repo.find_reference(rev).ok().map(|r| r.name().as_bstr().to_str_lossy().into_owned())
        };
        Ok(Commit { id: commit.id.to_string(), parents, author, summary, time, ref_name })
    }
}

/// Reflog messages of the entries that made a commit on HEAD: `git commit` (initial, amend,
/// merge), `git cherry-pick` and `git revert`, the commands that run the post-commit hook.
const COMMIT_ENTRIES: [&str; 3] = ["commit", "cherry-pick", "revert"];

/// A commit to announce, read from HEAD's reflog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReflogCommit {
    pub id: String,
    /// The branch a rebase returned to (`refs/heads/topic`); None: HEAD's branch now.
    pub ref_name: Option<String>,
}

/// The commits a stretch of HEAD's reflog made, oldest first. A rebase (`rebase (start)` ..
/// `rebase (finish): returning to refs/heads/b`, also `pull --rebase`) counts once, as its
/// result on the branch it returned to: its picks and anything committed while it stopped
/// (an `edit`) are steps, not news. An aborted rebase made nothing, and so did one that picked
/// nothing (its result is the upstream's commit, not ours).
pub fn reflog_commits(text: &str) -> Vec<ReflogCommit> {
    let mut out = Vec::new();
    let (mut in_rebase, mut picked) = (false, false);
    for line in text.lines() {
        let Some((head, message)) = line.split_once('\t') else { continue };
        let Some(new) = head.split(' ').nth(1).filter(|n| n.len() >= 40 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        else {
            continue;
        };
        let action = message.split_once(": ").map_or(message, |(a, _)| a);
        if action.contains("rebase") && action.ends_with(')') {
            if action.ends_with("(start)") {
                (in_rebase, picked) = (true, false);
            } else if action.ends_with("(finish)") {
                let target = message.split_once("returning to ").map(|(_, r)| r.trim());
                if let Some(branch) = target.filter(|r| picked && r.starts_with("refs/heads/")) {
                    out.push(ReflogCommit { id: new.to_string(), ref_name: Some(branch.to_string()) });
                }
                in_rebase = false;
            } else if action.ends_with("(abort)") {
                in_rebase = false;
            } else {
                // pick, reword, squash, fixup, continue...
                picked = true;
            }
            continue;
        }
        // A merge `git merge` or `git pull` made is a new commit of ours (a fast-forward is
        // not); the post-merge hook leaves the note.
        let made = COMMIT_ENTRIES.iter().any(|k| message.starts_with(k))
            || ((action.starts_with("merge ") || action.starts_with("pull")) && message.contains(": Merge made by"));
        if in_rebase {
            picked |= made;
        } else if made {
            out.push(ReflogCommit { id: new.to_string(), ref_name: None });
        }
    }
    out
}

/// [`RepoContext::head_reflog_offset_since`] over a reflog's bytes. A line is `<old> <new>
/// <name> <<email>> <time> <zone>\t<message>`; an unreadable time counts as recent.
fn reflog_offset_since(bytes: &[u8], since: i64) -> u64 {
    let mut offset = 0;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let head = line.split(|&b| b == b'\t').next().unwrap_or(line);
        let time = String::from_utf8_lossy(head).split_whitespace().rev().nth(1).and_then(|t| t.parse::<i64>().ok());
        if time.is_none_or(|t| t >= since) {
            return offset;
        }
        offset += line.len() as u64;
    }
    offset
}

impl RepoContext {
    /// Re-reads HEAD (its commit and branch) through the open handle: what changes from one
    /// commit to the next. The identity, room name, remotes and user stay as read at open.
    pub fn reread_head(&mut self) -> Result<(), GitError> {
        let head = self.handle.head().map_err(ctx("cannot read HEAD"))?;
        if head.is_unborn() {
            return Err(GitError::EmptyRepo);
        }
        self.branch = (!head.is_detached()).then(|| head.referent_name().map(|n| n.shorten().to_string())).flatten();
        drop(head);
        let commit = self.handle.head_commit().map_err(ctx("cannot resolve HEAD to a commit"))?;
        self.head_commit = commit.id.to_string();
        Ok(())
    }

    /// How long HEAD's reflog is now (bytes; 0 without one): where to start reading later.
    pub fn head_reflog_len(&self) -> u64 {
        std::fs::metadata(self.git_dir.join("logs").join("HEAD")).map(|m| m.len()).unwrap_or(0)
    }

    /// Where HEAD's reflog entries made at or after `since` (Unix seconds) begin (bytes; the
    /// reflog's length if none were): a repair reads the recent ones again.
    pub fn head_reflog_offset_since(&self, since: i64) -> u64 {
        let Ok(bytes) = std::fs::read(self.git_dir.join("logs").join("HEAD")) else { return 0 };
        reflog_offset_since(&bytes, since)
    }

    /// Names this work tree's HEAD reflog (where the node keeps its reading position): the
    /// repository id for the main work tree; with the work tree's git dir for a linked one
    /// (`git worktree add`), which has a HEAD and a reflog of its own.
    pub fn reflog_key(&self) -> String {
        if self.handle.git_dir() == self.handle.common_dir() {
            self.repo_id.to_string()
        } else {
            // The path as the store keeps paths: bytes, even where they are not UTF-8.
            format!("{}:{}", self.repo_id, LocalPath::new(self.git_dir.clone()).encode())
        }
    }

    /// Whether a rebase is under way (stopped or running): its reflog entries are read once it
    /// has ended, as one.
    pub fn rebase_in_progress(&self) -> bool {
        ["rebase-merge", "rebase-apply"].iter().any(|d| self.git_dir.join(d).is_dir())
    }

    /// Commits HEAD's reflog recorded after byte `offset` ([`reflog_commits`]), oldest first,
    /// and the reflog's length now. With no offset (first look) or a reflog shorter than it
    /// (expired, rewritten), only the newest counts. No reflog (`core.logAllRefUpdates` off):
    /// HEAD's commit.
    pub fn head_reflog_commits(&self, offset: Option<u64>) -> (Vec<ReflogCommit>, u64) {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.git_dir.join("logs").join("HEAD");
        let Ok(mut file) = std::fs::File::open(&path) else {
            return (vec![ReflogCommit { id: self.head_commit.clone(), ref_name: None }], 0);
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let (start, newest_only) = match offset {
            Some(o) if o <= len => (o, false),
            _ => (0, true),
        };
        // Bytes: a commit subject in the log need not be UTF-8 (ids and actions are ASCII).
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
            return (Vec::new(), start);
        }
        // Only up to the last complete line: a line being appended is read next time.
        let complete = &bytes[..bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)];
        let mut commits = reflog_commits(&String::from_utf8_lossy(complete));
        if newest_only {
            commits = commits.pop().into_iter().collect();
        }
        let end = start + complete.len() as u64;
        (commits, if newest_only { len } else { end })
    }
}

impl RepoContext {
    /// Whether the ref `name` (full, `refs/heads/main`) exists. A ref that cannot be read counts
    /// as there: only one known to be gone is unpublished.
    pub fn has_ref(&self, name: &str) -> bool {
        !matches!(self.handle.try_find_reference(name), Ok(None))
    }

    /// Branches and tags (`refs/heads/*`, `refs/tags/*`) with the object each points to.
    pub fn branches_and_tags(&self) -> Result<Vec<(String, String)>, GitError> {
        let platform = self.handle.references().map_err(ctx("cannot list refs"))?;
        let mut out = Vec::new();
        for prefix in ["refs/heads/", "refs/tags/"] {
            let iter = platform.prefixed(prefix).map_err(ctx("cannot list refs"))?;
            for reference in iter {
                let Ok(reference) = reference else { continue };
                if let Some(id) = reference.try_id() {
                    out.push((reference.name().as_bstr().to_str_lossy().into_owned(), id.to_string()));
                }
            }
        }
        Ok(out)
    }
}

impl RepoContext {
    fn git(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new("git");
        cmd.arg("--git-dir").arg(&self.git_dir);
        cmd
    }

    /// The notes in `notes_ref` (e.g. `refs/notes/commits`): (annotated commit, note text).
    pub fn notes(&self, notes_ref: &str) -> Result<Vec<(String, Vec<u8>)>, GitError> {
        let out =
            self.git().args(["notes", "--ref", notes_ref, "list"]).output().map_err(ctx("cannot run git notes"))?;
        if !out.status.success() {
            // No notes ref yet: no notes.
            return Ok(Vec::new());
        }
        let mut notes = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((blob, commit)) = line.split_once(' ') else { continue };
            let Ok(blob) = ObjectId::from_hex(blob.as_bytes()) else { continue };
            let object = self.handle.find_object(blob).map_err(ctx("cannot read a note"))?;
            notes.push((commit.to_string(), object.data.clone()));
        }
        Ok(notes)
    }

    /// The commits of this repository whose id starts with `prefix` (4 to 64 hex digits), in id
    /// order; other objects (trees, blobs) with such an id are not commits and are left out.
    pub fn commits_with_prefix(&self, prefix: &str) -> Result<Vec<Commit>, GitError> {
        let repo = &self.handle;
        let not_a_prefix = || GitError::Git(format!("{prefix:?} is not the start of an id (4 hex digits at least)"));
        let width = repo.object_hash().len_in_hex();
        if prefix.len() < gix::hash::Prefix::MIN_HEX_LEN || prefix.len() > width {
            return Err(not_a_prefix());
        }
        // Of the repository's own hash (a short prefix alone would be taken for SHA-1).
        let padded = format!("{prefix:0<width$}");
        let full = ObjectId::from_hex(padded.as_bytes()).map_err(|_| not_a_prefix())?;
        let start = gix::hash::Prefix::new(&full, prefix.len()).map_err(|_| not_a_prefix())?;
        let mut ids = std::collections::HashSet::new();
        repo.objects.lookup_prefix(start, Some(&mut ids)).map_err(ctx("cannot look up objects"))?;
        let mut ids: Vec<String> = ids
            .into_iter()
            .filter(|id| repo.find_commit(*id).is_ok())
            .map(|id| id.to_string())
            .filter(|id| id.starts_with(prefix))
            .collect();
        ids.sort();
        ids.iter().map(|id| self.commit_info(id)).collect()
    }

    /// Whether the repository has this commit.
    pub fn has_commit(&self, id: &str) -> bool {
        ObjectId::from_hex(id.as_bytes()).ok().is_some_and(|oid| self.handle.find_commit(oid).is_ok())
    }

    /// Writes (or replaces) the note on `commit` in `notes_ref`.
    pub fn set_note(&self, notes_ref: &str, commit: &str, text: &[u8]) -> Result<(), GitError> {
        use std::io::Write;
        let mut child = self
            .git()
            .args(["notes", "--ref", notes_ref, "add", "-f", "-F", "-", commit])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(ctx("cannot run git notes"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(text).map_err(ctx("cannot write a note"))?;
        }
        let out = child.wait_with_output().map_err(ctx("cannot run git notes"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(GitError::Git(format!("git notes failed: {}", err.lines().next().unwrap_or(""))));
        }
        Ok(())
    }
}

/// Whether `name` is a full ref name git accepts (`refs/...` by check-ref-format's rules: no
/// control characters, spaces, `..`, `~^:?*[\`...): what peers say about their refs is held to it.
pub fn is_ref_name(name: &str) -> bool {
    name.starts_with("refs/") && gix::refs::FullName::try_from(name).is_ok()
}

/// Discovers the repository containing `dir` (searching upwards like git) and reads its context.
pub fn open(dir: &Path) -> Result<RepoContext, GitError> {
    open_with(dir, None)
}

/// `options` lets tests shut out the user's and system's config; production uses gix's trust-based defaults.
fn open_with(dir: &Path, options: Option<gix::open::Options>) -> Result<RepoContext, GitError> {
    // An absolute start keeps git_dir/workdir absolute, so `-C .` still yields a directory name.
    let start = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let repo = match options {
        None => gix::discover(&start),
        Some(options) => gix::discover_opts(&start, Default::default(), options),
    };
    let repo = repo.map_err(|err| {
        use gix::discover::upwards::Error as E;
        match err.downcast_any_ref::<E>() {
            Some(
                E::NoGitRepository { .. } | E::NoGitRepositoryWithinCeiling { .. } | E::NoGitRepositoryWithinFs { .. },
            ) => GitError::NotARepo { dir: dir.to_path_buf() },
            _ => ctx(&format!("cannot open repository at {}", dir.display()))(err),
        }
    })?;

    let head = repo.head().map_err(ctx("cannot read HEAD"))?;
    if head.is_unborn() {
        return Err(GitError::EmptyRepo);
    }
    let branch = (!head.is_detached()).then(|| head.referent_name().map(|n| n.shorten().to_string())).flatten();
    let head_commit = repo.head_commit().map_err(ctx("cannot resolve HEAD to a commit"))?;
    let head_parents: Vec<ObjectId> = head_commit.parent_ids().map(|id| id.detach()).collect();
    let repo_id = root_commit(&repo, head_commit.id, &head_parents)?;

    let git_dir = repo.git_dir().to_path_buf();
    // gix names a linked work tree's common dir through its own (`.git/worktrees/wt/../..`).
    let common_dir = repo.common_dir().canonicalize().unwrap_or_else(|_| repo.common_dir().to_path_buf());
    let workdir = repo.workdir().map(Path::to_path_buf);
    let config = repo.config_snapshot();
    let user_name = ["p2p.name", "user.name"]
        .iter()
        .filter_map(|key| config.string(*key))
        .map(|v| v.to_str_lossy().trim().to_owned())
        .find(|v| !v.is_empty());

    let mut names: Vec<_> = repo.remote_names().into_iter().collect();
    // `origin` names the room, so callers get it first; the rest stay sorted.
    names.sort_by_key(|n| n != "origin");
    let urls = names.iter().filter_map(|name| {
        let urls = config.plumbing().strings_by("remote", Some(name.as_bstr()), "url");
        // git fetches from the first configured url; later ones are push-only mirrors.
        let url = urls?.into_iter().next()?.to_str_lossy().into_owned();
        Some((name == "origin", url))
    });
    let urls: Vec<(bool, String)> = urls.collect();
    let room_name = match urls.first() {
        Some((true, origin)) => normalize_remote_url(origin),
        // Named by the main work tree's directory, from any of its work trees: one repository,
        // one name (a linked work tree's own directory names a checkout, not the repository).
        _ if repo.git_dir() != repo.common_dir() => {
            dir_room_name(&main_work_tree(&repo).unwrap_or_else(|| common_dir.clone()))
        }
        _ => dir_room_name(workdir.as_deref().unwrap_or(&git_dir)),
    };
    let remote_urls = urls.into_iter().map(|(_, url)| url).collect();
    let head_commit_id = head_commit.id.to_string();
    drop((config, head, head_commit));

    Ok(RepoContext {
        handle: repo,
        git_dir,
        common_dir,
        workdir,
        repo_id,
        room_name,
        head_commit: head_commit_id,
        branch,
        user_name,
        remote_urls,
    })
}

/// The main work tree of a repository opened from a linked one (None for a bare main
/// repository, or one that cannot be opened).
fn main_work_tree(repo: &gix::Repository) -> Option<PathBuf> {
    repo.main_repo().ok()?.workdir().map(Path::to_path_buf)
}

/// Where a git dir's work tree is, and the git dir its work trees share (None: it cannot be
/// opened as a repository, it is gone, say). For `git p2p repos` and `deinit`, which look at
/// the git dirs the node has registered.
pub fn locate(git_dir: &Path) -> Option<(Option<PathBuf>, PathBuf)> {
    let repo = gix::open(git_dir).ok()?;
    let common_dir = repo.common_dir().canonicalize().unwrap_or_else(|_| repo.common_dir().to_path_buf());
    Some((repo.workdir().map(Path::to_path_buf), common_dir))
}

fn dir_room_name(dir: &Path) -> String {
    let name = dir.file_name().unwrap_or(dir.as_os_str()).to_string_lossy();
    let stem = name.strip_suffix(".git").filter(|s| !s.is_empty());
    stem.unwrap_or(&name).to_owned()
}

/// The user's git configuration outside any repository (system, global and `GIT_CONFIG_*`
/// overrides): what the per-user node reads its `p2p.*` settings from.
pub struct GlobalConfig(gix::config::File);

impl GlobalConfig {
    pub fn load() -> Result<Self, GitError> {
        let mut file = gix::config::File::from_globals().map_err(ctx("cannot read git config"))?;
        let overrides = gix::config::File::from_environment_overrides().map_err(ctx("cannot read git config"))?;
        file.append(overrides).map_err(ctx("cannot read git config"))?;
        Ok(Self(file))
    }
}

impl crate::config::ConfigSource for GlobalConfig {
    fn get_all(&self, key: &str) -> Vec<String> {
        self.0.strings(key).unwrap_or_default().into_iter().map(|v| v.to_string()).collect()
    }
}

/// Turns any spelling of a remote URL into a stable room name, so that clones over
/// https, ssh or scp-like syntax of the same project meet in the same room.
pub fn normalize_remote_url(url: &str) -> String {
    let url = url.trim();
    let scheme_end = url
        .find("://")
        .filter(|&i| i > 0 && url[..i].bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)));
    let (authority, path) = match scheme_end {
        Some(i) if url[..i].eq_ignore_ascii_case("file") => return local_path_name(&url[i + 3..]),
        Some(i) => {
            let rest = &url[i + 3..];
            rest.split_once('/').unwrap_or((rest, ""))
        }
        None => {
            let colon = url.find(':');
            let slash = url.find('/');
            match colon {
                // scp-like `[user@]host:path`; a one-letter "host" is a Windows drive.
                Some(c) if c > 1 && slash.is_none_or(|s| c < s) => (&url[..c], &url[c + 1..]),
                _ => return local_path_name(url),
            }
        }
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let mut out = host.to_ascii_lowercase();
    let path = trim_repo_suffix(path.trim_start_matches('/'));
    if !path.is_empty() {
        out.push('/');
        out.push_str(path);
    }
    out
}

fn trim_repo_suffix(path: &str) -> &str {
    let path = path.trim_end_matches('/');
    path.strip_suffix(".git").unwrap_or(path).trim_end_matches('/')
}

fn local_path_name(path: &str) -> String {
    let trimmed = path.trim_end_matches(['/', '\\']);
    let last = trimmed.rsplit(['/', '\\']).next().unwrap_or(trimmed);
    match last.strip_suffix(".git").unwrap_or(last) {
        "" => path.to_owned(),
        name => name.to_owned(),
    }
}

const CACHE_FILE: &str = "root-cache";

/// Finds the repository id, using the cache so a post-commit hook does not walk all of history.
fn root_commit(repo: &gix::Repository, head: ObjectId, head_parents: &[ObjectId]) -> Result<RepoId, GitError> {
    let cache_path = repo.git_dir().join("p2p").join(CACHE_FILE);
    if let Some((cached_commit, root)) = read_cache(&cache_path) {
        if cached_commit == head {
            return Ok(root);
        }
        // One new commit on top of the cached one cannot add a root, so its root carries over.
        if head_parents == [cached_commit] {
            write_cache(&cache_path, head, &root);
            return Ok(root);
        }
    }
    let root = walk_for_root(repo, head)?;
    write_cache(&cache_path, head, &root);
    Ok(root)
}

fn walk_for_root(repo: &gix::Repository, head: ObjectId) -> Result<RepoId, GitError> {
    let walk = repo.rev_walk([head]).all().map_err(ctx("cannot walk history"))?;
    let mut best: Option<(i64, ObjectId)> = None;
    for info in walk {
        let info = info.map_err(ctx("cannot walk history"))?;
        if info.parent_ids.is_empty() {
            let time = repo.find_commit(info.id).and_then(|c| c.time());
            let time = time.map_err(ctx("cannot read root commit"))?;
            let candidate = (time.seconds, info.id);
            // Oldest committer time wins; the id breaks ties so every peer picks the same root.
            if best.is_none_or(|b| candidate < b) {
                best = Some(candidate);
            }
        }
    }
    let Some((_, id)) = best else {
        // A shallow clone cuts history above the root; naming the repo after the cut would split its peers.
        return Err(GitError::Git(match repo.is_shallow() {
            Ok(true) => {
                "shallow clone: the root commit naming the repository is missing (run git fetch --unshallow)".into()
            }
            _ => "history reachable from HEAD has no root commit".into(),
        }));
    };
    RepoId::try_from(id.to_string()).map_err(|e| GitError::Git(e.to_string()))
}

fn read_cache(path: &Path) -> Option<(ObjectId, RepoId)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (commit, root) = text.strip_suffix('\n')?.split_once(' ')?;
    let commit = ObjectId::from_hex(commit.as_bytes()).ok()?;
    Some((commit, RepoId::try_from(root).ok()?))
}

/// Best effort: a read-only repository just pays for the walk next time.
fn write_cache(path: &Path, commit: ObjectId, root: &RepoId) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    // Rename is atomic, so a concurrent reader never sees a half-written line.
    let tmp = dir.join(format!("{CACHE_FILE}.{}.tmp", std::process::id()));
    let written = std::fs::write(&tmp, format!("{commit} {root}\n")).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A temp dir holding repositories plus a private global git config, so neither the
    /// developer's config nor other tests leak in (process env is never touched).
    struct Sandbox(tempfile::TempDir);

    impl Sandbox {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            let config = "[user]\nname = G\nemail = g@x\n[init]\ndefaultBranch = main\n";
            std::fs::write(tmp.path().join("gitconfig"), config).unwrap();
            Sandbox(tmp)
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.0.path().join(rel)
        }

        fn run(&self, cwd: &Path, date: Option<&str>, args: &[&str]) -> String {
            let dates = date.map(|d| [("GIT_COMMITTER_DATE", d), ("GIT_AUTHOR_DATE", d)]);
            let mut cmd = Command::new("git");
            cmd.current_dir(cwd).args(args).envs(dates.into_iter().flatten());
            cmd.env("GIT_CONFIG_GLOBAL", self.path("gitconfig")).env("HOME", self.0.path());
            cmd.env("GIT_CONFIG_NOSYSTEM", "1").env_remove("GIT_DIR").env_remove("GIT_WORK_TREE");
            let out = cmd.output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "git {args:?} failed: {stderr}");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        }

        /// `args` split on whitespace, for the common case without spaces in arguments.
        fn git(&self, cwd: &Path, args: &str) -> String {
            self.run(cwd, None, &args.split_whitespace().collect::<Vec<_>>())
        }

        fn init(&self, name: &str) -> PathBuf {
            let dir = self.path(name);
            std::fs::create_dir_all(&dir).unwrap();
            self.git(&dir, "init -q");
            dir
        }

        fn commit(&self, repo: &Path, date: Option<&str>) -> String {
            self.run(repo, date, &["commit", "-q", "--allow-empty", "-m", "msg"]);
            self.git(repo, "rev-parse HEAD")
        }
    }

    fn open_isolated(dir: &Path) -> Result<RepoContext, GitError> {
        open_with(dir, Some(gix::open::Options::isolated()))
    }

    fn fresh_walk(dir: &Path) -> RepoId {
        let repo = gix::open_opts(dir, gix::open::Options::isolated()).unwrap();
        let head = repo.head_id().unwrap().detach();
        walk_for_root(&repo, head).unwrap()
    }

    fn cache_of(ctx: &RepoContext) -> PathBuf {
        ctx.git_dir.join("p2p").join(CACHE_FILE)
    }

    #[test]
    fn the_reflog_offset_since_a_time_is_where_its_entries_begin() {
        let z = "0".repeat(40);
        let line = |t: i64| format!("{z} {z} A U Thor <a@example.com> {t} +0100\tcommit: at {t}\n");
        let log = format!("{}{}{}", line(100), line(200), line(300));
        let bytes = log.as_bytes();
        assert_eq!(reflog_offset_since(bytes, 0), 0);
        assert_eq!(reflog_offset_since(bytes, 150), line(100).len() as u64);
        assert_eq!(reflog_offset_since(bytes, 300), (line(100).len() + line(200).len()) as u64);
        assert_eq!(reflog_offset_since(bytes, 301), bytes.len() as u64, "none: the end");
        assert_eq!(reflog_offset_since(b"garbage without a time\n", 500), 0, "unreadable counts as recent");
    }

    #[test]
    fn commits_are_found_by_the_start_of_their_id_in_sha1_and_sha256_repositories() {
        let sb = Sandbox::new();
        for format in ["sha1", "sha256"] {
            let dir = sb.path(format);
            std::fs::create_dir_all(&dir).unwrap();
            sb.git(&dir, &format!("init -q --object-format={format}"));
            let first = sb.commit(&dir, Some("1700000000 +0000"));
            let second = sb.commit(&dir, Some("1700000100 +0000"));
            let tree = sb.git(&dir, "rev-parse HEAD^{tree}");
            let ctx = open_isolated(&dir).unwrap();
            let ids = |prefix: &str| -> Vec<String> {
                ctx.commits_with_prefix(prefix).unwrap().into_iter().map(|c| c.id).collect()
            };
            assert_eq!(ids(&first[..7]), vec![first.as_str()], "{format}");
            assert_eq!(ids(&second), vec![second.as_str()], "{format}: a whole id");
            assert!(ids(&tree[..12]).is_empty(), "{format}: a tree is not a commit");
            assert!(ctx.commits_with_prefix("abc").is_err(), "fewer than 4 digits");
        }
    }

    #[test]
    fn a_rebase_counts_once_as_its_result_on_its_branch() {
        let id = |c: char| c.to_string().repeat(40);
        let line = |old: char, new: char, msg: &str| format!("{} {} A <a@x> 1 +0000\t{msg}\n", id(old), id(new));
        let log = [
            line('0', '1', "commit (initial): root"),
            line('1', '2', "commit: work"),
            line('2', '3', "rebase (start): checkout main"),
            line('3', '4', "rebase (pick): work"),
            line('4', '5', "commit (amend): edited while stopped"),
            line('5', '6', "rebase (continue): more"),
            line('6', '6', "rebase (finish): returning to refs/heads/topic"),
            line('6', '7', "pull --rebase (start): checkout origin/main"),
            line('7', '8', "pull --rebase (pick): x"),
            line('8', '8', "pull --rebase (finish): returning to refs/heads/main"),
            line('8', '9', "rebase (start): checkout main"),
            line('9', '8', "rebase (abort): returning to refs/heads/main"),
            // Everything was upstream already: the result is not ours.
            line('8', 'd', "rebase (start): checkout origin/main"),
            line('d', 'd', "rebase (finish): returning to refs/heads/main"),
            line('d', 'e', "pull: Fast-forward"),
            line('e', '8', "reset: moving to HEAD~1"),
            line('8', 'a', "cherry-pick: fix"),
            line('a', 'b', "checkout: moving from main to other"),
            line('b', 'c', "merge topic: Merge made by the 'ort' strategy."),
            line('c', 'f', "merge other: Fast-forward"),
            line('f', 'e', "pull origin main: Merge made by the 'ort' strategy."),
            "not a reflog line\n".to_string(),
        ]
        .concat();
        let got: Vec<(String, Option<String>)> = reflog_commits(&log).into_iter().map(|c| (c.id, c.ref_name)).collect();
        let on = |b: &str| Some(format!("refs/heads/{b}"));
        assert_eq!(
            got,
            [
                (id('1'), None),
                (id('2'), None),
                (id('6'), on("topic")),
                (id('8'), on("main")),
                (id('a'), None),
                (id('c'), None),
                (id('e'), None)
            ]
        );
    }

    #[test]
    fn ref_names_are_held_to_gits_rules() {
        for good in ["refs/heads/main", "refs/tags/v1.0", "refs/heads/feature/x-y_z", "refs/heads/caf\u{e9}"] {
            assert!(is_ref_name(good), "{good}");
        }
        for bad in ["main", "refs/heads/a\u{1b}[2J", "refs/heads/a b", "refs/heads/a..b", "refs/heads/a~1", "refs/", ""]
        {
            assert!(!is_ref_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn each_work_tree_has_its_own_reflog_key() {
        let sb = Sandbox::new();
        let repo = sb.init("proj");
        sb.commit(&repo, None);
        sb.git(&repo, &format!("worktree add -q -b feature {}", sb.path("wt").display()));
        let main = open_isolated(&repo).unwrap();
        let linked = open_isolated(&sb.path("wt")).unwrap();
        assert_eq!(main.repo_id, linked.repo_id, "one repository");
        assert_eq!(main.reflog_key(), main.repo_id.as_str(), "the main work tree keeps the plain id");
        assert_ne!(linked.reflog_key(), main.reflog_key());
        assert_eq!(open_isolated(&linked.git_dir).unwrap().reflog_key(), linked.reflog_key(), "from its git dir too");
        assert!(linked.git_dir.join("logs/HEAD").exists() && main.git_dir.join("logs/HEAD").exists());
        assert_eq!((main.room_name.as_str(), linked.room_name.as_str()), ("proj", "proj"), "one repository, one name");
        assert_eq!(linked.common_dir, main.git_dir.canonicalize().unwrap());
        assert!(linked.has_ref("refs/heads/feature") && !linked.has_ref("refs/heads/gone"));
    }

    #[test]
    fn a_real_rebase_is_read_once_it_has_ended() {
        let sb = Sandbox::new();
        let repo = sb.init("proj");
        sb.commit(&repo, None);
        sb.git(&repo, "checkout -q -b topic");
        sb.commit(&repo, None);
        sb.commit(&repo, None);
        sb.git(&repo, "checkout -q main");
        sb.commit(&repo, None);
        sb.git(&repo, "checkout -q topic");
        let ctx = open_isolated(&repo).unwrap();
        let pos = ctx.head_reflog_len();
        // Stop at the first pick (`edit`), amend it, go on.
        sb.run(&repo, None, &["-c", "sequence.editor=sed -i 1s/^pick/edit/", "rebase", "-q", "-i", "main"]);
        assert!(ctx.rebase_in_progress());
        sb.run(&repo, None, &["commit", "-q", "--allow-empty", "--amend", "-m", "amended"]);
        sb.run(&repo, None, &["-c", "core.editor=true", "rebase", "--continue"]);
        assert!(!ctx.rebase_in_progress());
        let tip = sb.git(&repo, "rev-parse HEAD");
        let (commits, _) = ctx.head_reflog_commits(Some(pos));
        assert_eq!(commits, [ReflogCommit { id: tip, ref_name: Some("refs/heads/topic".into()) }]);
    }

    #[test]
    fn a_subject_that_is_not_utf8_does_not_hide_the_reflog() {
        let sb = Sandbox::new();
        let repo = sb.init("proj");
        sb.commit(&repo, None);
        let ctx = open_isolated(&repo).unwrap();
        let pos = ctx.head_reflog_len();
        let msg = repo.join("msg");
        std::fs::write(&msg, b"caf\xe9 in latin-1\n").unwrap();
        sb.run(&repo, None, &["-c", "i18n.commitEncoding=latin1", "commit", "-q", "--allow-empty", "-F", "msg"]);
        let head = sb.git(&repo, "rev-parse HEAD");
        let (commits, end) = ctx.head_reflog_commits(Some(pos));
        assert_eq!(commits.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [head.as_str()]);
        assert_eq!(end, ctx.head_reflog_len());
    }

    #[test]
    fn an_open_repository_sees_new_commits_and_branch_switches() {
        let sb = Sandbox::new();
        let repo = sb.init("proj");
        sb.commit(&repo, None);
        let mut ctx = open_isolated(&repo).unwrap();
        sb.git(&repo, "checkout -q -b topic");
        let new = sb.commit(&repo, None);
        ctx.reread_head().unwrap();
        assert_eq!((ctx.branch.as_deref(), ctx.head_commit.as_str()), (Some("topic"), new.as_str()));
        // Objects written after the open are found through the same handle.
        assert_eq!(ctx.commit_info(&new).unwrap().id, new);
        sb.git(&repo, "checkout -q --detach");
        ctx.reread_head().unwrap();
        assert_eq!(ctx.branch, None);
    }

    #[test]
    fn single_root_branch_subdirectory_and_detached_head() {
        let sb = Sandbox::new();
        let repo = sb.init("proj");
        let root = sb.commit(&repo, None);
        sb.commit(&repo, None);
        let ctx = open_isolated(&repo).unwrap();
        assert_eq!(ctx.repo_id.as_str(), root);
        assert_eq!(ctx.head_commit, sb.git(&repo, "rev-parse HEAD"));
        let branch = sb.git(&repo, "symbolic-ref --short HEAD");
        assert_eq!(ctx.branch.as_deref(), Some(branch.as_str()));
        assert_eq!((&*ctx.room_name, ctx.user_name.as_deref()), ("proj", None));
        assert!(ctx.remote_urls.is_empty() && !ctx.is_bare());

        let sub = repo.join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        assert_eq!(open_isolated(&sub).unwrap(), ctx);

        sb.git(&repo, "checkout -q --detach HEAD~1");
        let detached = open_isolated(&repo).unwrap();
        assert_eq!(detached.branch, None);
        assert_eq!(detached.head_commit, root);
        assert_eq!(detached.repo_id.as_str(), root);
    }

    /// Merges two unrelated histories whose roots are committed at the given times.
    fn merged_roots(main_date: &str, other_date: &str) -> (Sandbox, PathBuf, [String; 2]) {
        let sb = Sandbox::new();
        let repo = sb.init("merged");
        let main_root = sb.commit(&repo, Some(main_date));
        sb.git(&repo, "checkout -q --orphan other");
        let other_root = sb.commit(&repo, Some(other_date));
        sb.git(&repo, "checkout -q main");
        sb.git(&repo, "merge -q --allow-unrelated-histories -m merge other");
        (sb, repo, [main_root, other_root])
    }

    #[test]
    fn several_roots_oldest_then_smallest_id_wins() {
        let (_sb, repo, [_, other]) = merged_roots("@1700000000 +0000", "@1600000000 +0000");
        assert_eq!(open_isolated(&repo).unwrap().repo_id.as_str(), other);

        let (_sb, repo, roots) = merged_roots("@1600000000 +0000", "@1600000000 +0000");
        let smallest = roots.iter().min().unwrap();
        assert_eq!(open_isolated(&repo).unwrap().repo_id.as_str(), smallest);
    }

    #[test]
    fn empty_repo_and_not_a_repo() {
        let sb = Sandbox::new();
        let repo = sb.init("empty");
        assert!(matches!(open_isolated(&repo), Err(GitError::EmptyRepo)));

        let plain = sb.path("plain");
        std::fs::create_dir_all(&plain).unwrap();
        let err = open_isolated(&plain).unwrap_err();
        assert!(matches!(&err, GitError::NotARepo { dir } if dir == &plain), "{err:?}");
        assert!(err.to_string().starts_with("not a git repository"));
    }

    #[test]
    fn bare_clone_has_same_id_shallow_clone_is_refused() {
        let sb = Sandbox::new();
        let src = sb.init("src");
        let root = sb.commit(&src, None);
        sb.commit(&src, None);
        sb.git(sb.0.path(), "clone -q --bare src dst.git");
        let bare = sb.path("dst.git");
        let ctx = open_isolated(&bare).unwrap();
        assert!(ctx.is_bare() && ctx.workdir.is_none());
        assert_eq!(ctx.repo_id.as_str(), root);
        // The clone's origin is the local source path.
        assert_eq!(ctx.room_name, "src");
        sb.git(&bare, "remote remove origin");
        assert_eq!(open_isolated(&bare).unwrap().room_name, "dst");

        sb.git(sb.0.path(), &format!("clone -q --depth 1 file://{} shallow", src.display()));
        let err = open_isolated(&sb.path("shallow")).unwrap_err();
        assert!(err.to_string().contains("git fetch --unshallow"), "{err}");
    }

    #[test]
    fn cache_hit_for_child_commit_and_malformed_cache() {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        let sb = Sandbox::new();
        let repo = sb.init("c");
        let c1 = sb.commit(&repo, None);
        let cache = cache_of(&open_isolated(&repo).unwrap());
        assert_eq!(read(&cache), format!("{c1} {c1}\n"));

        // A planted root only comes back if the cache, not a walk, answered.
        let planted = "ab".repeat(20);
        std::fs::write(&cache, format!("{c1} {planted}\n")).unwrap();
        let c2 = sb.commit(&repo, None);
        assert_eq!(open_isolated(&repo).unwrap().repo_id.as_str(), planted);
        assert_eq!(read(&cache), format!("{c2} {planted}\n"));

        // Malformed caches are ignored; the walk's answer replaces them.
        for junk in ["garbage", "", "zz zz\n", &format!("{c2} {c1}")] {
            std::fs::write(&cache, junk).unwrap();
            assert_eq!(open_isolated(&repo).unwrap().repo_id.as_str(), c1);
            assert_eq!(read(&cache), format!("{c2} {c1}\n"));
        }
    }

    #[test]
    fn cache_never_hides_a_new_root() {
        let sb = Sandbox::new();
        let repo = sb.init("o");
        sb.commit(&repo, None);
        sb.commit(&repo, None);
        open_isolated(&repo).unwrap();
        sb.git(&repo, "checkout -q --orphan fresh");
        let new_root = sb.commit(&repo, None);
        let ctx = open_isolated(&repo).unwrap();
        assert_eq!(ctx.repo_id.as_str(), new_root);
        assert_eq!(ctx.repo_id, fresh_walk(&repo));
        sb.commit(&repo, None);
        assert_eq!(open_isolated(&repo).unwrap().repo_id, fresh_walk(&repo));
        sb.git(&repo, "checkout -q main");
        assert_eq!(open_isolated(&repo).unwrap().repo_id, fresh_walk(&repo));
    }

    #[test]
    fn remotes_and_room_from_origin() {
        let sb = Sandbox::new();
        let repo = sb.init("r");
        sb.commit(&repo, None);
        sb.git(&repo, "remote add backup git@x.org:y/z.git");
        sb.git(&repo, "remote add origin https://GitHub.com/Foo/Bar.git");
        sb.git(&repo, "remote add aaa /srv/git/a.git");
        let ctx = open_isolated(&repo).unwrap();
        assert_eq!(ctx.room_name, "github.com/Foo/Bar");
        // origin first, then the others in name order (aaa, backup).
        let want = ["https://GitHub.com/Foo/Bar.git", "/srv/git/a.git", "git@x.org:y/z.git"];
        assert_eq!(ctx.remote_urls, want);
    }

    #[test]
    fn user_name_prefers_p2p_name() {
        let sb = Sandbox::new();
        let repo = sb.init("u");
        sb.commit(&repo, None);
        let name_after = |key: &str, value: &str| {
            sb.run(&repo, None, &["config", key, value]);
            open_isolated(&repo).unwrap().user_name
        };
        assert_eq!(name_after("user.name", "Alice").as_deref(), Some("Alice"));
        assert_eq!(name_after("p2p.name", "  Bob  ").as_deref(), Some("Bob"));
        assert_eq!(name_after("p2p.name", "  ").as_deref(), Some("Alice"));
        assert_eq!(name_after("user.name", ""), None);
    }

    #[test]
    fn normalize_remote_url_examples() {
        let cases = [
            ("https://github.com/Foo/Bar.git", "github.com/Foo/Bar"),
            ("git@github.com:foo/bar.git", "github.com/foo/bar"),
            ("ssh://git@host.xz:2222/a/b/", "host.xz:2222/a/b"),
            ("/srv/git/proj.git", "proj"),
            ("/srv/git/proj.git/", "proj"),
            ("../rel/proj", "proj"),
            ("file:///srv/git/proj.git", "proj"),
            ("git://Example.COM/x/y.git/", "example.com/x/y"),
            ("https://user:pass@GitLab.com/g/p", "gitlab.com/g/p"),
            ("http://host/", "host"),
            ("git+ssh://me@Host/p.git", "host/p"),
            ("Host.xz:~user/repo.git", "host.xz/~user/repo"),
            ("  https://github.com/a/b.git\n", "github.com/a/b"),
            ("C:\\src\\proj.git", "proj"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_remote_url(input), want, "input {input:?}");
        }
    }
}
