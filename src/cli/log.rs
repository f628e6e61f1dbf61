//! `git p2p log [-f] [--json] [-n N]`: commits peers announced for this repository.

use std::io::Write;

use super::{Ctx, LogArgs};
use crate::control::Feed;
use crate::proto::announce::FeedEntry;

/// Entries shown by default; `-n` changes it.
const DEFAULT_COUNT: usize = 50;

pub fn run(ctx: &Ctx, args: &LogArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let repo = ctx.repo()?;
    let limit = args.max_count.unwrap_or(DEFAULT_COUNT);
    let mut tail = ctx.client()?.tail(ctx.paths()?, Feed(repo.repo_id.clone()), limit, args.follow)?;
    if tail.history.is_empty() && !args.json && !tail.is_following() {
        writeln!(out, "no commits announced by peers yet in {} (yours go to them, not here)", repo.room_name)?;
    }
    for entry in std::mem::take(&mut tail.history) {
        print_entry(&entry, args.json, out)?;
    }
    out.flush()?;
    while let Some(entry) = tail.recv()? {
        print_entry(&entry, args.json, out)?;
        out.flush()?;
    }
    Ok(())
}

fn print_entry(e: &FeedEntry, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(e)?)?;
        return Ok(());
    }
    let c = &e.commit;
    let branch = c.ref_name.as_deref().map(|r| r.strip_prefix("refs/heads/").unwrap_or(r)).unwrap_or("(detached)");
    let branch = crate::tui::view::inert(branch);
    let who = crate::tui::view::inert(e.name.as_deref().unwrap_or("?"));
    let peer_short = crate::proto::peer::short(&e.peer);
    writeln!(
        out,
        "{}  {who} (..{peer_short})  {branch}  {}  {}",
        super::fmt::local_time(e.announced_at / 1000),
        &c.id[..c.id.len().min(10)],
        crate::tui::view::inert(&c.summary)
    )?;
    Ok(())
}
