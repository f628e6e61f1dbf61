//! `git p2p peers`: the peers the node is connected to.

use std::io::Write;

use super::Ctx;
use crate::control::api::PeerInfo;

pub fn run(ctx: &Ctx, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let peers = ctx.client()?.peers()?;
    if json {
        // Like every --json output: JSON Lines, one object per peer.
        for p in &peers {
            writeln!(out, "{}", serde_json::to_string(p)?)?;
        }
        return Ok(());
    }
    print_table(&peers, out)
}

/// How the peer is reached: `direct`, `hole-punched`, or `relayed via <relay>`.
fn link(p: &PeerInfo) -> String {
    match (p.connection.as_str(), &p.relay) {
        ("relayed", Some(relay)) => format!("relayed via {}", crate::proto::peer::short(relay)),
        ("relayed", None) => "relayed".into(),
        ("holepunched", _) => "hole-punched".into(),
        _ => "direct".into(),
    }
}

fn print_table(peers: &[PeerInfo], out: &mut dyn Write) -> anyhow::Result<()> {
    if peers.is_empty() {
        writeln!(out, "no peers connected")?;
        return Ok(());
    }
    let name = |p: &PeerInfo| crate::tui::view::inert(p.name.as_deref().unwrap_or("-"));
    let name_width = peers.iter().map(|p| name(p).chars().count()).max().unwrap_or(1).max(4);
    let link_width = peers.iter().map(|p| link(p).len()).max().unwrap_or(0).max(10);
    writeln!(
        out,
        "{:<52}  {:<name_width$}  {:<5}  {:<link_width$}  {:>9}  {:<5}  ADDRESS",
        "PEER", "NAME", "VIA", "CONNECTION", "RTT", "REPOS"
    )?;
    for p in peers {
        let rtt = p.rtt_ms.map(|ms| format!("{ms:.2} ms")).unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<52}  {:<name_width$}  {:<5}  {:<link_width$}  {:>9}  {:<5}  {}",
            p.peer_id,
            name(p),
            p.transport,
            link(p),
            rtt,
            p.repos.len(),
            p.addresses.first().map(String::as_str).unwrap_or("-"),
        )?;
    }
    Ok(())
}
