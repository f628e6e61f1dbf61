//! `git p2p nostr status`: the Nostr bridge's relays, their state and the events waiting.

use std::io::Write;

use super::{Ctx, NostrCommand};
use crate::control::api::NostrStatus;

pub fn run(ctx: &Ctx, command: NostrCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    let NostrCommand::Status(args) = command;
    let status = ctx.client()?.nostr_status()?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&status)?)?;
        return Ok(());
    }
    print(&status, out)
}

pub(super) fn print(s: &NostrStatus, out: &mut dyn Write) -> anyhow::Result<()> {
    if !s.enabled {
        writeln!(out, "nostr off: no relay configured (git config --global --add p2p.relay wss://...)")?;
        return Ok(());
    }
    writeln!(out, "signing as {}", s.npub)?;
    writeln!(out, "{} event(s) waiting for a relay", s.pending)?;
    let width = s.relays.iter().map(|r| r.url.chars().count()).max().unwrap_or(5).max(5);
    writeln!(out, "{:<width$}  {:<12}  {:>8}  {:>7}  LAST ERROR", "RELAY", "STATE", "ACCEPTED", "PENDING")?;
    for r in &s.relays {
        writeln!(
            out,
            "{:<width$}  {:<12}  {:>8}  {:>7}  {}",
            r.url,
            r.state,
            r.accepted,
            r.pending,
            r.last_error.as_deref().unwrap_or("-")
        )?;
    }
    Ok(())
}
