//! `git p2p announce [REV] [--hook]`: sign an announcement of a commit and hand it to the node.
//!
//! In hook mode (the post-commit hook) this must never fail the commit nor make it wait for the
//! node or the network: the announcement is written to the spool (fsync'd), the node is rung
//! (a notification it need not answer) or, if it is not running, started in the background.
//! Measured: this costs less than a request the node acknowledges after its own fsync.

use std::io::Write;

use super::{one_line, AnnounceArgs, Ctx};
use crate::control::{client, Client, ClientError};
use crate::identity::Identity;
use crate::proto::announce::Announcement;
use crate::proto::outbox::OutboxEntry;

pub fn run(ctx: &Ctx, args: &AnnounceArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if args.hook {
        // The hook stays silent on every commit: settings are for commands to warn about.
        ctx.warned.set(true);
        if let Err(e) = announce(ctx, &args.rev, true, args.note) {
            // At most one line, and the commit still succeeds.
            match full_disk(ctx, &e) {
                // The reflog has the commit: the node reads it once it can store again.
                Some(dir) => eprintln!(
                    "git-p2p: the disk holding {dir} is full: commits are announced once there is space again"
                ),
                None => eprintln!("git-p2p: commit not announced: {}", one_line(&e)),
            }
        }
        return Ok(());
    }
    let (commit, queued) = announce(ctx, &args.rev, false, false)?;
    match queued {
        Some(pending) => writeln!(out, "announced {} ({pending} queued for peers)", &commit[..commit.len().min(12)])?,
        None => writeln!(out, "announced {} (spooled until the node runs)", &commit[..commit.len().min(12)])?,
    }
    Ok(())
}

/// Returns the commit id and, when the node took it, how many announcements it has queued.
fn announce(ctx: &Ctx, rev: &str, hook: bool, note: bool) -> anyhow::Result<(String, Option<usize>)> {
    let repo = ctx.repo()?;
    let paths = ctx.paths()?;
    paths.ensure()?;
    if hook && (note || repo.rebase_in_progress()) {
        // What a merge made, or a rebase's result once it has ended (its picks are steps), is
        // read by the node from the reflog (see git::reflog_commits). Leave it a note and make
        // sure it runs.
        let note = crate::spool::Note {
            cwd: repo.git_dir.clone(),
            git_dir: None,
            waiter: Some(std::os::unix::process::parent_id()),
        };
        crate::spool::write_note(&paths.notes_dir(), &note)?;
        ring_or_start(paths)?;
        return Ok((repo.head_commit.clone(), None));
    }
    let commit = repo.commit_info(rev)?;
    let commit_id = commit.id.clone();
    let key = Identity::load_or_create_libp2p(&paths.data_dir)?;
    let envelope =
        Announcement::new(commit, repo.user_name.as_deref()).sign(&key, &repo.repo_id, crate::clock::unix_now_ms());
    let repo_info = repo.info();
    if hook {
        if let Err(e) = crate::spool::write(&paths.data_dir, &OutboxEntry { repo: repo_info, envelope, thread: None }) {
            // The commit is in the reflog: a running node reads it from there when rung.
            let _ = Client::ring(paths);
            return Err(e.into());
        }
        ring_or_start(paths)?;
        return Ok((commit_id, None));
    }
    let queued = ctx.client()?.announce(repo_info, envelope)?;
    Ok((commit_id, Some(queued.pending)))
}

/// The data dir, when `e` is its disk being full.
fn full_disk(ctx: &Ctx, e: &anyhow::Error) -> Option<String> {
    let full = e.chain().filter_map(|c| c.downcast_ref::<std::io::Error>()).any(|io| {
        matches!(io.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
            || matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
    });
    full.then(|| ctx.paths().map(|p| p.data_dir.display().to_string()).unwrap_or_default())
}

/// Tells the node there is something for it, or starts it (in the background) if none runs.
fn ring_or_start(paths: &crate::paths::Paths) -> anyhow::Result<()> {
    match Client::ring(paths) {
        // Not rung: the node also looks at the spool every second.
        Ok(()) | Err(ClientError::Io(_)) => Ok(()),
        Err(ClientError::NotRunning) if client::autostart_allowed() => {
            if let Some(problem) = crate::store::damage_report(&paths.store()) {
                return Err(ClientError::StoreDamaged(problem).into());
            }
            client::spawn_node(false)?;
            Ok(())
        }
        Err(ClientError::NotRunning) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
