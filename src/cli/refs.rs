//! `git p2p refs [--author PEER] [--json]` and `git p2p refs publish`: branches and tags
//! through the DHT, per author, like `git ls-remote`. Publishing hands the node the whole set:
//! it unpublishes what was published before and is gone now.

use std::collections::BTreeMap;
use std::io::Write;

use super::{Ctx, RefsArgs, RefsCommand};
use crate::identity::Identity;
use crate::proto::announce::is_object_id;
use crate::proto::kv::{MAX_VALUE, REFS_KEY};

pub fn run(ctx: &Ctx, args: RefsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let repo = ctx.repo()?;
    let info = repo.info();
    if let Some(RefsCommand::Publish) = args.command {
        let refs: BTreeMap<String, String> = repo.branches_and_tags()?.into_iter().collect();
        let index = serde_json::to_vec(&refs)?;
        if index.len() > MAX_VALUE {
            anyhow::bail!("too many refs to publish ({} bytes of refs, at most {MAX_VALUE})", index.len());
        }
        let published = ctx.client()?.refs_publish(info.clone(), refs.clone(), repo.user_name.clone())?;
        // Peers fetch the objects from the node's mirror (never from this repository).
        let head = repo.branch.as_ref().map(|b| format!("refs/heads/{b}"));
        ctx.client()?.mirror_publish(info, refs.into_iter().collect(), head)?;
        let where_ = if published.replicas == 0 { "on this node only (no peer reachable yet)" } else { "to the DHT" };
        let n = published.count;
        write!(out, "published {n} ref{} {where_}", if n == 1 { "" } else { "s" })?;
        match published.removed.as_slice() {
            [] => writeln!(out)?,
            gone => writeln!(out, "; unpublished {} gone since: {}", gone.len(), gone.join(", "))?,
        }
        return Ok(());
    }
    let record = ctx.client()?.kv_get(info.id, REFS_KEY)?.record;
    let me = Identity::load_or_create_libp2p(&ctx.paths()?.data_dir)?.public().to_peer_id().to_string();
    let mut shown = 0;
    for entry in record.as_ref().map(|r| r.values()).unwrap_or_default() {
        let Some(record) = &record else { break };
        let Ok(author) = entry.verify(&record.repo, &record.key).map(|p| p.to_string()) else { continue };
        let npub = entry.who.npub.as_deref();
        let wanted = args.author.as_deref().map(crate::proto::peer::Author::parse);
        if wanted.is_some_and(|a| !a.matches(&author, npub, &me)) {
            continue;
        }
        let refs: BTreeMap<String, String> =
            entry.value_bytes().and_then(|v| serde_json::from_slice(&v).ok()).unwrap_or_default();
        // A peer's entry says what it likes: only ref names git accepts and object ids are
        // shown (nothing that could steer a terminal or a script reading the output).
        let valid = |(name, oid): &(String, String)| crate::git::is_ref_name(name) && is_object_id(oid);
        for (name, oid) in refs.into_iter().filter(valid) {
            shown += 1;
            if args.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "author": author, "own": author == me, "ref": name, "oid": oid })
                )?;
            } else {
                writeln!(out, "{oid}\t{name}\t{author}")?;
            }
        }
    }
    if shown == 0 {
        match &args.author {
            Some(a) => anyhow::bail!("no refs published by {a}"),
            None => anyhow::bail!("no refs published for this repository yet"),
        }
    }
    Ok(())
}
