//! `git p2p log [-f] [--json] [-n N] [--author A] [--branch B] [--since WHEN]`: commits peers
//! announced for this repository. The node filters the history (so `-n 20 --author X` finds 20
//! of X's however many others came since); what `-f` streams is filtered here the same way.

use std::io::Write;

use super::{Ctx, LogArgs};
use crate::control::api::LogFilter;
use crate::control::client::Client;
use crate::control::Feed;
use crate::proto::announce::FeedEntry;
use crate::proto::peer::Author;

/// Entries shown by default; `-n` changes it.
const DEFAULT_COUNT: usize = 50;

pub fn run(ctx: &Ctx, args: &LogArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let repo = ctx.repo()?;
    let limit = args.max_count.unwrap_or(DEFAULT_COUNT);
    let mut client = ctx.client()?;
    let filter = filter(ctx, args, &mut client, &repo.info())?;
    let feed = Feed { repo: repo.repo_id.clone(), filter: filter.clone() };
    let mut tail = client.tail(ctx.paths()?, feed, limit, args.follow)?;
    if tail.history.is_empty() && !args.json && !tail.is_following() {
        if filter.is_empty() {
            writeln!(out, "no commits announced by peers yet in {} (yours go to them, not here)", repo.room_name)?;
        } else {
            writeln!(out, "no commits announced by peers in {} match", repo.room_name)?;
        }
    }
    for entry in std::mem::take(&mut tail.history) {
        print_entry(&entry, args.json, out)?;
    }
    out.flush()?;
    while let Some(entry) = tail.recv()? {
        if !filter.matches(&entry) {
            continue;
        }
        print_entry(&entry, args.json, out)?;
        out.flush()?;
    }
    Ok(())
}

/// The filter the arguments ask for: `me` is our PeerId, an npub the PeerIds that signed it
/// into this repository's refs (the one place peers say which npub is theirs).
fn filter(
    ctx: &Ctx,
    args: &LogArgs,
    client: &mut Client,
    repo: &crate::proto::repo::RepoInfo,
) -> anyhow::Result<LogFilter> {
    let authors = match args.author.as_deref().map(|spec| (spec, Author::parse(spec))) {
        None => Vec::new(),
        Some((_, Author::Me)) => vec![me(ctx)?],
        Some((spec, Author::Npub(npub))) => {
            let record = client.kv_get(repo.id.clone(), crate::proto::kv::REFS_KEY)?.record;
            let mut peers: Vec<String> = record
                .iter()
                .flat_map(|r| r.entries.iter().map(move |e| (r, e)))
                .filter(|(_, e)| e.who.npub.as_deref() == Some(npub.as_str()))
                .filter_map(|(r, e)| e.verify(&r.repo, &r.key).ok().map(|p| p.to_string()))
                .collect();
            let identity = crate::identity::Identity::load_or_create(&ctx.paths()?.data_dir)?;
            if identity.npub() == npub {
                peers.push(identity.peer_id().to_string());
            }
            if peers.is_empty() {
                anyhow::bail!(
                    "no peer of this repository is known as {spec} (a peer's npub is learned from the refs it \
                     publishes): give its PeerId"
                );
            }
            peers
        }
        Some((spec, Author::Peer(peer))) => {
            let base58 = |c: char| c.is_ascii_alphanumeric() && !"0OIl".contains(c);
            if peer.len() < crate::proto::peer::SHORT || !peer.chars().all(base58) {
                anyhow::bail!(
                    "--author {spec:?}: not a PeerId, the short form of one (its last {} characters), an npub \
                     or \"me\"",
                    crate::proto::peer::SHORT
                );
            }
            vec![peer]
        }
    };
    let branch = match args.branch.as_deref() {
        None => None,
        Some(b) if b.starts_with("refs/") => Some(b.to_string()),
        Some(b) => Some(format!("refs/heads/{b}")),
    };
    if let Some(b) = branch.as_deref().filter(|b| !crate::git::is_ref_name(b)) {
        anyhow::bail!("--branch {b:?}: not a branch name git takes");
    }
    Ok(LogFilter { authors, branch, since: args.since, arrived_since: None })
}

fn me(ctx: &Ctx) -> anyhow::Result<String> {
    let key = crate::identity::Identity::load_or_create_libp2p(&ctx.paths()?.data_dir)?;
    Ok(key.public().to_peer_id().to_string())
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
