//! `git p2p log [-f] [--json] [-n N]`: commits peers announced for this repository.

use std::io::Write;

use super::{Ctx, LogArgs};
use crate::control::proto::{Request, Response};
use crate::control::Client;
use crate::proto::announce::FeedEntry;

/// Entries shown by default; `-n` changes it.
const DEFAULT_COUNT: usize = 50;

pub fn run(ctx: &Ctx, args: &LogArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let repo = ctx.repo()?;
    let repo_id = repo.repo_id.clone();
    let mut client = ctx.client()?;
    // Subscribe before reading the history, so nothing falls between the two.
    let follow = if args.follow {
        let mut follower = Client::connect(ctx.paths()?)?;
        follower.wait_forever()?;
        let id = follower.send(Request::Follow { repo: repo_id.clone() })?;
        match follower.next(id)? {
            Response::Following => Some((follower, id)),
            _ => anyhow::bail!("unexpected answer from the node"),
        }
    } else {
        None
    };
    let limit = args.max_count.unwrap_or(DEFAULT_COUNT);
    let Response::Feed { entries } = client.request(Request::Log { repo: repo_id, limit })? else {
        anyhow::bail!("unexpected answer from the node");
    };
    let mut shown: std::collections::HashSet<(String, String)> = Default::default();
    if entries.is_empty() && !args.json && follow.is_none() {
        writeln!(out, "no commits announced by peers yet in {} (yours go to them, not here)", repo.room_name)?;
    }
    for entry in &entries {
        shown.insert((entry.commit.id.clone(), entry.peer.clone()));
        print_entry(entry, args.json, out)?;
    }
    out.flush()?;
    let Some((mut follower, id)) = follow else { return Ok(()) };
    loop {
        let Response::Announcement { entry } = follower.next(id)? else {
            anyhow::bail!("unexpected answer from the node");
        };
        if shown.insert((entry.commit.id.clone(), entry.peer.clone())) {
            print_entry(&entry, args.json, out)?;
            out.flush()?;
        }
    }
}

fn print_entry(e: &FeedEntry, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(e)?)?;
        return Ok(());
    }
    let c = &e.commit;
    let branch = c.ref_name.as_deref().map(|r| r.strip_prefix("refs/heads/").unwrap_or(r)).unwrap_or("(detached)");
    let who = e.name.as_deref().unwrap_or("?");
    let peer_short = &e.peer[e.peer.len().saturating_sub(6)..];
    writeln!(
        out,
        "{}  {who} (..{peer_short})  {branch}  {}  {}",
        super::fmt::utc_time(e.announced_at / 1000),
        &c.id[..c.id.len().min(10)],
        c.summary
    )?;
    Ok(())
}
