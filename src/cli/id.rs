//! `git p2p id`: who this node is.

use std::io::{Read, Write};

use super::{Ctx, IdArgs};
use crate::identity::Identity;

pub fn run(ctx: &Ctx, args: &IdArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if args.import_nsec {
        return import_nsec(ctx, out);
    }
    let mut status = ctx.client()?.status()?;
    // A link-local address is of no use to a peer (dialling it needs our interface's name).
    status.listen_addrs.retain(|a| super::doctor::shareable(a));
    if args.json {
        let json = serde_json::json!({
            "peer_id": status.peer_id,
            "npub": status.npub,
            "name": status.name,
            "listen_addrs": status.listen_addrs,
            "data_dir": status.data_dir,
        });
        writeln!(out, "{json}")?;
        return Ok(());
    }
    writeln!(out, "peer id    {}", status.peer_id)?;
    writeln!(out, "npub       {}", status.npub)?;
    writeln!(out, "name       {}", status.name.as_deref().unwrap_or("(none: set git config p2p.name or user.name)"))?;
    writeln!(out, "data dir   {}", status.data_dir)?;
    for (i, addr) in status.listen_addrs.iter().enumerate() {
        let label = if i == 0 { "listening" } else { "" };
        writeln!(out, "{label:<10} {addr}/p2p/{}", status.peer_id)?;
    }
    Ok(())
}

/// Reads an nsec from stdin (never argv: it would land in shell history and `ps`).
fn import_nsec(ctx: &Ctx, out: &mut dyn Write) -> anyhow::Result<()> {
    let paths = ctx.paths()?;
    paths.ensure()?;
    let mut secret = String::new();
    std::io::stdin().take(4096).read_to_string(&mut secret)?;
    let keys = Identity::import_nostr(&paths.data_dir, &secret)?;
    let npub = nostr::nips::nip19::ToBech32::to_bech32(&keys.public_key())?;
    writeln!(out, "imported Nostr key {npub}")?;
    if crate::control::Client::connect(paths).is_ok() {
        eprintln!("git-p2p: the running node still uses the old key; restart it: git p2p daemon stop");
    }
    Ok(())
}
