//! `git p2p announce [REV] [--hook]`: sign an announcement of a commit and hand it to the node.
//!
//! In hook mode (the post-commit hook) this must never fail the commit nor make it wait for the
//! network: if the node is not running, the announcement is spooled durably and the node is
//! started in the background, without waiting for it.

use std::io::Write;

use super::{one_line, AnnounceArgs, Ctx};
use crate::control::proto::{RepoInfo, Request, Response};
use crate::control::{client, Client, ClientError};
use crate::identity::Identity;
use crate::proto::announce::{Announcement, KIND};
use crate::proto::envelope::Envelope;
use crate::store::OutboxEntry;

/// Longest the hook waits for a running node before it spools instead: a hung node must not
/// stall `git commit`.
const HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

pub fn run(ctx: &Ctx, args: &AnnounceArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if args.hook {
        if let Err(e) = announce(ctx, &args.rev, true) {
            // At most one line, and the commit still succeeds.
            eprintln!("git-p2p: commit not announced: {}", one_line(&e));
        }
        return Ok(());
    }
    let (commit, queued) = announce(ctx, &args.rev, false)?;
    match queued {
        Some(pending) => writeln!(out, "announced {} ({pending} queued for peers)", &commit[..commit.len().min(12)])?,
        None => writeln!(out, "announced {} (spooled until the node runs)", &commit[..commit.len().min(12)])?,
    }
    Ok(())
}

/// Returns the commit id and, when the node took it, how many announcements it has queued.
fn announce(ctx: &Ctx, rev: &str, hook: bool) -> anyhow::Result<(String, Option<usize>)> {
    let repo = ctx.repo()?;
    let commit = repo.commit_info(rev)?;
    let paths = ctx.paths()?;
    paths.ensure()?;
    let key = Identity::load_or_create_libp2p(&paths.data_dir)?;
    let announcement = Announcement::new(&commit, repo.user_name.as_deref());
    let envelope =
        Envelope::sign(&key, KIND, repo.repo_id.as_str(), crate::store::unix_now_ms(), announcement.to_body());
    let repo_info = RepoInfo { id: repo.repo_id.to_string(), name: repo.room_name.clone() };
    let request = Request::Announce { repo: repo_info.clone(), envelope: envelope.clone() };

    let sent = Client::connect(paths).and_then(|mut client| {
        if hook {
            client.set_timeout(HOOK_TIMEOUT)?;
        }
        client.request(request.clone())
    });
    match sent {
        Ok(Response::Queued { pending }) => Ok((commit.id, Some(pending))),
        Ok(_) => anyhow::bail!("unexpected answer from the node"),
        Err(ClientError::Node(message)) => anyhow::bail!(message),
        Err(e) if hook => {
            // The node is down (or went down mid-request): keep the announcement on disk; the node
            // picks it up when it runs. A node that did store it too yields a duplicate, which
            // receivers drop.
            crate::spool::write(&paths.data_dir, &OutboxEntry { repo: repo_info, envelope })?;
            if matches!(e, ClientError::NotRunning) && client::autostart_allowed() {
                client::spawn_node(false)?;
            }
            Ok((commit.id, None))
        }
        Err(ClientError::NotRunning) => match ctx.client()?.request(request)? {
            Response::Queued { pending } => Ok((commit.id, Some(pending))),
            _ => anyhow::bail!("unexpected answer from the node"),
        },
        Err(e) => Err(e.into()),
    }
}
