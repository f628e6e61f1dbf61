//! What the post-commit hook leaves for the node, turned into announcements: spooled entries
//! (the hook's slow path), notes of the fast path (held until the hook's git has exited, then
//! read against the repository's HEAD reflog, a rebase as one), and, at start, the reflogs of
//! the hooked repositories (found by a survey thread that runs git for each). This is I/O (files,
//! git): what it finds goes to the service as announcements of ours, and as refs of ours that
//! are gone from the repository (to unpublish).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tokio::sync::oneshot;

use super::hook_wait::HookWaits;
use super::repo_cache::RepoCache;
use super::service::{Disk, Service};
use super::spool_watch::SpoolWatch;
use crate::clock::Now;
use crate::proto::announce::Announcement;
use crate::proto::outbox::OutboxEntry;
use crate::proto::repo::RepoInfo;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(transparent)]
    Git(#[from] crate::git::GitError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl HookError {
    /// The store cannot take anything now (a full disk): not this note's fault.
    fn is_store_down(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_store_down())
    }
}

/// What woke the hook side of the node.
pub enum Wake {
    /// The start-up survey found these hooked repositories.
    Survey(Vec<PathBuf>),
    /// Something arrived in the spool or the notes dir (an error: the watch is gone).
    Spool(std::io::Result<()>),
    /// A held note's git process has exited.
    Released,
}

pub struct HookNotes {
    data_dir: PathBuf,
    notes_dir: PathBuf,
    /// Wakes us when the hook leaves something (None if inotify is unavailable: the spool is
    /// then read every second).
    watch: Option<SpoolWatch>,
    /// Notes held until the git process that wrote them has exited.
    waits: HookWaits,
    /// Repositories kept open between notes.
    repos: RepoCache,
    /// Git dirs of repositories whose reflog waits for a rebase to end (looked at each tick).
    rebasing: HashSet<PathBuf>,
    survey: Option<oneshot::Receiver<Vec<PathBuf>>>,
    /// A reflog position was written without fsync since [`Self::take_wrote`].
    wrote: bool,
    /// The time the last announcement read from a reflog was signed at: each one is signed
    /// later than the one before (several commits read at once would otherwise share a
    /// millisecond, and peers that catch up order them by that time).
    last_signed: u64,
    /// Repositories whose notes came while the store could not take announcements: their
    /// reflogs are read once it can again.
    after_reopen: HashSet<PathBuf>,
    /// Repositories read since the last tick, whose refs we published may be gone
    /// ([`Self::unpublish_gone_refs`]).
    refs_to_check: HashSet<PathBuf>,
    /// Repositories whose reflog was read since the node started: at the first read, the branch
    /// HEAD is on goes to the DHT if our refs there say otherwise (a put that waited to settle
    /// when the node stopped).
    read_since_start: HashSet<PathBuf>,
}

impl HookNotes {
    pub fn new(data_dir: PathBuf, notes_dir: PathBuf) -> Self {
        let spool_dir = crate::spool::dir(&data_dir);
        let watch = crate::paths::ensure_private_dir(&spool_dir)
            .and_then(|()| crate::paths::ensure_private_dir(&notes_dir))
            .map_err(std::io::Error::other)
            .and_then(|()| SpoolWatch::new(&spool_dir, &notes_dir))
            .inspect_err(|e| tracing::warn!(error = %e, "cannot watch the spool; reading it every second"))
            .ok();
        Self {
            data_dir,
            notes_dir,
            watch,
            waits: HookWaits::default(),
            repos: RepoCache::default(),
            rebasing: HashSet::new(),
            survey: None,
            wrote: false,
            last_signed: 0,
            after_reopen: HashSet::new(),
            refs_to_check: HashSet::new(),
            read_since_start: HashSet::new(),
        }
    }

    /// Looks (on a thread of its own: it runs git for each) which registered repositories have
    /// our hook, bringing a hook of an earlier version up to date on the way.
    pub fn survey(&mut self, repos: &[RepoInfo]) {
        let dirs = repos.iter().filter_map(|r| r.git_dir.as_ref().map(|d| d.as_path().to_path_buf())).collect();
        self.survey = Some(survey_hooks(dirs));
    }

    /// Resolves when the hook side has something to do.
    pub async fn next(&mut self) -> Wake {
        tokio::select! {
            hooked = hooked_repos(&mut self.survey) => {
                self.survey = None;
                Wake::Survey(hooked)
            }
            changed = spool_changed(&self.watch) => Wake::Spool(changed),
            _ = self.waits.done() => Wake::Released,
        }
    }

    /// The spool watch failed: read the spool every second from now on.
    pub fn unwatch(&mut self) {
        self.watch = None;
    }

    /// Whether something was written without fsync since the last call (a reflog position).
    pub fn take_wrote(&mut self) -> bool {
        std::mem::take(&mut self.wrote)
    }

    /// Repositories waiting for a rebase to end, for `daemon status`.
    pub fn rebasing(&self) -> Vec<String> {
        self.rebasing.iter().map(|d| d.display().to_string()).collect()
    }

    /// From a repository's registration on, the hook's notes are read against its HEAD reflog:
    /// remember where the reflog ends now (once), so that every later commit is found.
    pub fn start_reflog(&mut self, repo: &RepoInfo, store: &Store) {
        let Some(dir) = &repo.git_dir else { return };
        // Through the cache: the hook's notes for this repository will find it open.
        match self.repos.open(dir.as_path()) {
            Ok(ctx) if ctx.repo_id == repo.id => {
                let key = ctx.reflog_key();
                if matches!(store.reflog_pos(&key), Ok(Some(_))) {
                    return;
                }
                if let Err(e) = store.set_reflog_pos(&key, ctx.head_reflog_len(), true) {
                    tracing::warn!(error = %e, "cannot record the reflog position");
                }
            }
            Ok(_) => tracing::warn!(dir = %dir.display(), "the registered git dir holds another repository"),
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot open the registered repository"),
        }
    }

    /// At start: commits made in a hooked repository while no node ran to read the hook's notes
    /// (or with the hook skipped) are in its reflog; announce those not announced yet.
    pub fn catch_up(&mut self, hooked: Vec<PathBuf>, service: &mut Service, disk: &mut dyn Disk, store: &Store) {
        for dir in hooked {
            let key = self.repos.open(&dir).map(|c| c.reflog_key());
            if !key.is_ok_and(|k| matches!(store.reflog_pos(&k), Ok(Some(_)))) {
                continue;
            }
            if let Err(e) = self.announce_or_defer(dir.clone(), service, disk, store) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the repository's reflog");
            }
        }
    }

    /// Reads the reflogs of the registered repositories (and of those whose notes came while the
    /// store could not take announcements) from where the store's durable state says we were:
    /// after the store was reopened (a full disk), and when the hook's slow path rings (its spool
    /// may have failed for the same reason), so that every commit made meanwhile is announced.
    pub fn read_reflogs(&mut self, repos: &[RepoInfo], service: &mut Service, disk: &mut dyn Disk, store: &Store) {
        let mut dirs: Vec<PathBuf> = std::mem::take(&mut self.after_reopen).into_iter().collect();
        dirs.extend(repos.iter().filter_map(|r| r.git_dir.as_ref().map(|d| d.as_path().to_path_buf())));
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            let key = self.repos.open(&dir).map(|c| c.reflog_key());
            if !key.is_ok_and(|k| matches!(store.reflog_pos(&k), Ok(Some(_)))) {
                continue;
            }
            if let Err(e) = self.announce_or_defer(dir.clone(), service, disk, store) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the repository's reflog");
                if e.is_store_down() {
                    self.after_reopen.insert(dir);
                }
            }
        }
    }

    /// Repositories whose rebase has ended since the last tick: read their reflogs now.
    pub fn retry_rebasing(&mut self, service: &mut Service, disk: &mut dyn Disk, store: &Store) {
        for dir in std::mem::take(&mut self.rebasing) {
            if let Err(e) = self.announce_or_defer(dir.clone(), service, disk, store) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the repository's reflog");
            }
        }
    }

    /// Announces what the reflog of the repository at `dir` recorded since we last looked; while
    /// a rebase is under way there, looks again each tick until it has ended.
    fn announce_or_defer(
        &mut self,
        dir: PathBuf,
        service: &mut Service,
        disk: &mut dyn Disk,
        store: &Store,
    ) -> Result<(), HookError> {
        if let Some(git_dir) = self.announce_from_reflog(&dir, service, disk, store)? {
            self.rebasing.insert(git_dir);
        }
        Ok(())
    }

    /// Announces the commits the HEAD reflog of the repository at `dir` recorded since we last
    /// looked (those not announced yet by any path). While a rebase is under way nothing is read
    /// (its git dir is returned): its entries are read as one once it has ended.
    fn announce_from_reflog(
        &mut self,
        dir: &Path,
        service: &mut Service,
        disk: &mut dyn Disk,
        store: &Store,
    ) -> Result<Option<PathBuf>, HookError> {
        let ctx = self.repos.open(dir)?;
        if ctx.rebase_in_progress() {
            return Ok(Some(ctx.git_dir.clone()));
        }
        let now = Now::system();
        let repo = ctx.info();
        let key = ctx.reflog_key();
        let pos = store.reflog_pos(&key)?;
        let (commits, new_pos) = ctx.head_reflog_commits(pos);
        // A commit is on HEAD's branch (the reflog does not say which branch it was then),
        // unless a rebase said where it returned to.
        let head_ref = ctx.branch.as_ref().map(|b| format!("refs/heads/{b}"));
        let first_read = self.read_since_start.insert(ctx.git_dir.clone());
        let moved_only = commits.is_empty() && pos.is_some_and(|p| first_read || new_pos > p);
        for commit in commits {
            if store.own_announced(&repo.id, &commit.id)? {
                continue;
            }
            let mut info = ctx.commit_info(&commit.id)?;
            info.ref_name = commit.ref_name.or_else(|| head_ref.clone());
            self.last_signed = now.unix_ms.max(self.last_signed + 1);
            let envelope =
                Announcement::new(info, ctx.user_name.as_deref()).sign(&service.me().key, &repo.id, self.last_signed);
            service.queue_announcement(OutboxEntry { repo: repo.clone(), envelope, thread: None }, false, now, disk)?;
        }
        if let (true, Some(head_ref)) = (moved_only, head_ref) {
            service.branch_moved(&repo.id, head_ref, ctx.head_commit.clone(), now, disk);
        }
        // Whether a branch or tag we published is gone now (`git branch -D`) is looked at later,
        // off the announcement's path.
        self.refs_to_check.insert(dir.to_path_buf());
        store.set_reflog_pos(&key, new_pos, false)?;
        self.wrote = true;
        Ok(None)
    }

    /// The refs we published in the repositories read since the last call that are gone from
    /// them now (a branch deleted, a tag removed) are unpublished. Called on the tick, so that
    /// the reads never delay an announcement (a record's JSON holds up to 64 authors' entries).
    pub fn unpublish_gone_refs(&mut self, service: &mut Service, disk: &mut dyn Disk) {
        for dir in std::mem::take(&mut self.refs_to_check) {
            let Ok(ctx) = self.repos.open(&dir) else { continue };
            let gone: Vec<String> =
                service.published_refs(&ctx.repo_id, disk).into_iter().filter(|r| !ctx.has_ref(r)).collect();
            if !gone.is_empty() {
                service.refs_gone(&ctx.repo_id, &gone, Now::system(), disk);
            }
        }
    }

    /// Moves what the hook spooled into the outbox: whole announcements (made while the node was
    /// down) and notes of the fast path (announced from the reflog).
    pub fn ingest(&mut self, service: &mut Service, disk: &mut dyn Disk, store: &Store) {
        use crate::spool::Item;
        for (path, item) in crate::spool::read(&self.data_dir, &self.notes_dir) {
            match item {
                Item::Entry(entry) if already_announced(&entry, service, store) => {}
                Item::Entry(entry) => {
                    if let Err(e) = service.queue_announcement(entry, true, Now::system(), disk) {
                        super::disk::log_store_error(&e, "cannot move a spooled announcement to the outbox");
                        return;
                    }
                }
                Item::Note(note) => {
                    if self.hold(&path, &note) {
                        continue;
                    }
                    match self.announce_or_defer(note.repo_dir(), service, disk, store) {
                        Ok(()) => {}
                        // The reflog is the record: read once the store takes writes again.
                        Err(e) if e.is_store_down() => {
                            tracing::debug!(repo = %note.repo_dir().display(), error = %e, "announced later");
                            self.after_reopen.insert(note.repo_dir());
                        }
                        Err(e) => {
                            tracing::warn!(path = %path.display(), repo = %note.repo_dir().display(), error = %e,
                                "cannot announce from a hook note; set aside");
                            let _ = std::fs::rename(&path, path.with_extension("bad"));
                            continue;
                        }
                    }
                }
            }
            // Stored durably: now the file may go. A crash in between queues it twice, which
            // the announced-commits set (and the receivers) de-duplicate.
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove spool file");
            }
        }
    }

    /// Whether a note must wait for the hook's git process to exit (see `hook_wait`); a held
    /// note is marked taken, so that the next hook does not think the node is not reading.
    fn hold(&mut self, path: &Path, note: &crate::spool::Note) -> bool {
        let Some(pid) = note.waiter else { return false };
        let written = std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
        if !self.waits.hold(pid, written) {
            return false;
        }
        mark_taken(path);
        true
    }
}

/// A spooled announcement of ours whose commit went out already (a note's reflog read found it
/// first): not queued twice.
fn already_announced(entry: &OutboxEntry, service: &Service, store: &Store) -> bool {
    entry.envelope.author == service.me().author
        && Announcement::from_envelope(&entry.envelope)
            .is_ok_and(|a| store.own_announced(&entry.repo.id, &a.commit.id).unwrap_or(false))
}

/// Which of the registered repositories at `dirs` have our hook, found on a thread of its own
/// (it runs git for each); a hook of ours from an earlier version is brought up to date on the
/// way (git-p2p was upgraded).
fn survey_hooks(dirs: Vec<PathBuf>) -> oneshot::Receiver<Vec<PathBuf>> {
    let (tx, rx) = oneshot::channel();
    let survey = move || {
        let mut hooked = Vec::new();
        for dir in dirs {
            let Ok(hooks) = crate::hooks::hooks_dir(&dir) else { continue };
            if crate::hooks::is_outdated(&hooks) {
                match crate::hooks::install(&hooks) {
                    Ok(_) => tracing::info!(hooks = %hooks.display(), "updated the git-p2p hooks"),
                    Err(e) => {
                        tracing::warn!(hooks = %hooks.display(), error = %e, "cannot update the git-p2p hooks")
                    }
                }
            }
            if crate::hooks::is_installed(&hooks) {
                hooked.push(dir);
            }
        }
        let _ = tx.send(hooked);
    };
    if let Err(e) = std::thread::Builder::new().name("hook-survey".into()).spawn(survey) {
        tracing::warn!(error = %e, "cannot look for hooked repositories");
    }
    rx
}

/// The survey's answer once; never again after it came (or if it could not run).
async fn hooked_repos(survey: &mut Option<oneshot::Receiver<Vec<PathBuf>>>) -> Vec<PathBuf> {
    match survey {
        Some(rx) => rx.await.unwrap_or_default(),
        None => std::future::pending().await,
    }
}

/// A note the node keeps for later is renamed, so that the hook does not take it for one the
/// node is not reading.
fn mark_taken(path: &Path) {
    if path.extension().is_some_and(|x| x == crate::spool::NOTE) {
        if let Err(e) = std::fs::rename(path, path.with_extension(crate::spool::WAITING)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot mark a hook note taken");
        }
    }
}

/// Resolves when the spool changed; never without a watch.
async fn spool_changed(watch: &Option<SpoolWatch>) -> std::io::Result<()> {
    match watch {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}
