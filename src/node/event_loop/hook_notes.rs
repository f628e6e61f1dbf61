//! What the post-commit hook leaves for the node, turned into announcements: spooled entries
//! (the hook's slow path), notes of the fast path (held until the hook's git has exited, then
//! read against the repository's HEAD reflog, a rebase as one), and, at start, the reflogs of
//! the hooked repositories (found by a survey thread that runs git for each).

use std::path::PathBuf;

use tokio::sync::oneshot;

use super::{EventLoop, SyncJob};
use crate::proto::announce::Announcement;
use crate::proto::outbox::OutboxEntry;
use crate::proto::repo::RepoInfo;

impl EventLoop {
    /// From a repository's registration on, the hook's notes are read against its HEAD reflog:
    /// remember where the reflog ends now (once), so that every later commit is found.
    pub(super) fn start_reflog(&mut self, repo: &RepoInfo) {
        let Some(dir) = &repo.git_dir else { return };
        // Through the cache: the hook's notes for this repository will find it open.
        match self.open_repos.open(std::path::Path::new(dir)) {
            Ok(ctx) if ctx.repo_id == repo.id => {
                let key = ctx.reflog_key();
                if matches!(self.store.reflog_pos(&key), Ok(Some(_))) {
                    return;
                }
                if let Err(e) = self.store.set_reflog_pos(&key, ctx.head_reflog_len(), true) {
                    tracing::warn!(error = %e, "cannot record the reflog position");
                }
            }
            Ok(_) => tracing::warn!(%dir, "the registered git dir holds another repository"),
            Err(e) => tracing::warn!(%dir, error = %e, "cannot open the registered repository"),
        }
    }

    /// At start: commits made in a hooked repository while no node ran to read the hook's notes
    /// (or with the hook skipped) are in its reflog; announce those not announced yet.
    pub(super) fn catch_up_reflogs(&mut self, hooked: Vec<PathBuf>) {
        for dir in hooked {
            let key = self.open_repos.open(&dir).map(|c| c.reflog_key());
            if !key.is_ok_and(|k| matches!(self.store.reflog_pos(&k), Ok(Some(_)))) {
                continue;
            }
            if let Err(e) = self.announce_or_defer(dir.clone()) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the repository's reflog");
            }
        }
    }

    /// Announces what the reflog of the repository at `dir` recorded since we last looked; while
    /// a rebase is under way there, looks again each tick until it has ended.
    fn announce_or_defer(&mut self, dir: std::path::PathBuf) -> Result<(), String> {
        if let Some(git_dir) = self.announce_from_reflog(&dir)? {
            self.rebasing.insert(git_dir);
        }
        Ok(())
    }

    /// Repositories whose rebase has ended since the last tick: read their reflogs now.
    pub(super) fn retry_rebasing(&mut self) {
        for dir in std::mem::take(&mut self.rebasing) {
            if let Err(e) = self.announce_or_defer(dir.clone()) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the repository's reflog");
            }
        }
    }

    /// Announces the commits the HEAD reflog of the repository at `dir` recorded since we last
    /// looked (those not announced yet by any path). While a rebase is under way nothing is read
    /// (its git dir is returned): its entries are read as one once it has ended.
    fn announce_from_reflog(&mut self, dir: &std::path::Path) -> Result<Option<PathBuf>, String> {
        let ctx = self.open_repos.open(dir).map_err(|e| e.to_string())?;
        if ctx.rebase_in_progress() {
            return Ok(Some(ctx.git_dir.clone()));
        }
        let repo = ctx.info();
        let key = ctx.reflog_key();
        let pos = self.store.reflog_pos(&key).map_err(|e| e.to_string())?;
        let (commits, new_pos) = ctx.head_reflog_commits(pos);
        // A commit is on HEAD's branch (the reflog does not say which branch it was then),
        // unless a rebase said where it returned to.
        let head_ref = ctx.branch.as_ref().map(|b| format!("refs/heads/{b}"));
        let moved_only = commits.is_empty() && pos.is_some_and(|p| new_pos > p);
        for commit in commits {
            if self.store.own_announced(&repo.id, &commit.id).map_err(|e| e.to_string())? {
                continue;
            }
            let mut info = ctx.commit_info(&commit.id).map_err(|e| e.to_string())?;
            info.ref_name = commit.ref_name.or_else(|| head_ref.clone());
            let envelope = Announcement::new(info, ctx.user_name.as_deref()).sign(
                &self.info.key,
                &repo.id,
                crate::clock::unix_now_ms(),
            );
            self.queue_announcement(OutboxEntry { repo: repo.clone(), envelope, thread: None }, false)
                .map_err(|e| e.to_string())?;
        }
        if let (true, Some(head_ref)) = (moved_only, head_ref) {
            self.branch_moved(&repo.id, head_ref, ctx.head_commit.clone());
        }
        self.unsynced = true;
        self.store.set_reflog_pos(&key, new_pos, false).map_err(|e| e.to_string())?;
        Ok(None)
    }

    /// Something arrived in the spool or a held note may go now.
    pub(super) fn spool_changed(&mut self) {
        self.ingest_spool();
        // Publish first, then make it durable off this thread.
        self.flush_outbox();
        if std::mem::take(&mut self.unsynced) && self.syncer.send(SyncJob::default()).is_err() {
            self.unsynced = true;
        }
    }

    /// Moves what the hook spooled into the outbox: whole announcements (made while the node was
    /// down) and notes of the fast path (announced from the reflog).
    pub(super) fn ingest_spool(&mut self) {
        use crate::spool::Item;
        for (path, item) in crate::spool::read(&self.info.data_dir_path, &self.info.notes_dir) {
            match item {
                Item::Entry(entry) if self.already_announced(&entry) => {}
                Item::Entry(entry) => {
                    if let Err(e) = self.queue_announcement(entry, true) {
                        tracing::warn!(error = %e, "cannot move a spooled announcement to the outbox");
                        return;
                    }
                }
                Item::Note(note) => {
                    if self.hold_note(&path, &note) {
                        continue;
                    }
                    if let Err(e) = self.announce_or_defer(note.repo_dir()) {
                        tracing::warn!(path = %path.display(), repo = %note.repo_dir().display(), error = %e,
                            "cannot announce from a hook note; set aside");
                        let _ = std::fs::rename(&path, path.with_extension("bad"));
                        continue;
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
    fn hold_note(&mut self, path: &std::path::Path, note: &crate::spool::Note) -> bool {
        let Some(pid) = note.waiter else { return false };
        let written = std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
        if !self.hook_waits.hold(pid, written) {
            return false;
        }
        mark_taken(path);
        true
    }
}

/// Which of the registered repositories at `dirs` have our hook, found on a thread of its own
/// (it runs git for each); a hook of ours from an earlier version is brought up to date on the
/// way (git-p2p was upgraded).
pub(super) fn survey_hooks(dirs: Vec<PathBuf>) -> oneshot::Receiver<Vec<PathBuf>> {
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
pub(super) async fn hooked_repos(survey: &mut Option<oneshot::Receiver<Vec<PathBuf>>>) -> Vec<PathBuf> {
    match survey {
        Some(rx) => rx.await.unwrap_or_default(),
        None => std::future::pending().await,
    }
}

/// A note the node keeps for later is renamed, so that the hook does not take it for one the
/// node is not reading.
fn mark_taken(path: &std::path::Path) {
    if path.extension().is_some_and(|x| x == crate::spool::NOTE) {
        if let Err(e) = std::fs::rename(path, path.with_extension(crate::spool::WAITING)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot mark a hook note taken");
        }
    }
}

/// Resolves when the spool changed; never without a watch.
pub(super) async fn spool_changed(watch: &Option<crate::node::spool_watch::SpoolWatch>) -> std::io::Result<()> {
    match watch {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}
