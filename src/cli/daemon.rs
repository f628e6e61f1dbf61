//! `git p2p daemon run|start|stop|status|repair`.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::{Ctx, DaemonCommand};
use crate::control::api::NodeStatus;
use crate::control::{Client, ClientError};

/// How long `daemon stop` waits for the node to release its data dir.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

pub fn run(ctx: &Ctx, command: DaemonCommand, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let paths = ctx.paths()?;
    match command {
        DaemonCommand::Run { notify_ready } => {
            crate::node::run(paths, crate::node::RunOptions { notify_ready, verbosity: ctx.verbosity })?;
        }
        DaemonCommand::Start => {
            let already = Client::connect(paths).is_ok();
            let status = ctx.client()?.status()?;
            let what = if already { "already running" } else { "started" };
            writeln!(out, "node {what} (pid {}, peer id {})", status.pid, status.peer_id)?;
            if let Some(problem) = status.store.problem {
                // Running, but not able to do what it is for.
                anyhow::bail!(problem);
            }
        }
        DaemonCommand::Stop => match stop(paths)? {
            Some(pid) => writeln!(out, "node stopped (pid {pid})")?,
            None => writeln!(out, "the node is not running")?,
        },
        DaemonCommand::Repair { force } => repair(paths, force, out)?,
        DaemonCommand::Status(args) => {
            let status = match Client::connect(paths) {
                Ok(mut client) => client.status()?,
                Err(ClientError::NotRunning) => {
                    let damaged = crate::store::damage_report(&paths.store());
                    if args.json {
                        let mut value = serde_json::json!({ "running": false });
                        if let Some(problem) = &damaged {
                            value["store"] = serde_json::json!({
                                "state": "damaged", "path": paths.store().display().to_string(), "problem": problem,
                            });
                        }
                        writeln!(out, "{value}")?;
                    } else {
                        match &damaged {
                            Some(problem) => writeln!(out, "the node is not running: {problem}")?,
                            None => writeln!(out, "the node is not running")?,
                        }
                    }
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => return Err(e.into()),
            };
            if args.json {
                let mut value = serde_json::to_value(&status)?;
                value["running"] = true.into();
                writeln!(out, "{value}")?;
            } else {
                print_status(&status, out)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Stops the node if it runs; its pid if it did.
fn stop(paths: &crate::paths::Paths) -> anyhow::Result<Option<u32>> {
    let mut client = match Client::connect(paths) {
        Ok(client) => client,
        Err(ClientError::NotRunning) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let pid = client.status()?.pid;
    match client.shutdown() {
        // The node may close the socket before its answer is out; its exit is what counts.
        Ok(_) | Err(ClientError::Io(_)) => {}
        Err(e) => return Err(e.into()),
    }
    wait_for_exit(paths)?;
    Ok(Some(pid))
}

/// `daemon repair`: stop the node, rebuild a damaged store, start the node again.
fn repair(paths: &crate::paths::Paths, force: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    use crate::node::repair::Outcome;
    if let Some(pid) = stop(paths)? {
        writeln!(out, "stopped the node (pid {pid})")?;
    }
    let store = paths.store();
    match crate::node::repair::repair(paths, force)? {
        Outcome::NoStore => writeln!(out, "no store in {} yet: nothing to repair", paths.data_dir.display())?,
        Outcome::Healthy => writeln!(
            out,
            "the store {} verified: it is not damaged, nothing to repair (--force rebuilds it anyway)",
            store.display()
        )?,
        Outcome::Repaired(r) => {
            writeln!(out, "the store {} was not usable: {}", store.display(), r.reason)?;
            writeln!(out, "moved it to {} (remove it once you no longer need it)", r.moved_to.display())?;
            let reread = r.repos.iter().filter(|repo| repo.git_dir.is_some()).count();
            writeln!(
                out,
                "new store, same keys: {} registered repositories, {} DHT records, {} keys of yours ({} to fetch \
                 back from peers), {} announcements and {} Nostr events queued, {} known peers",
                r.repos.len(),
                r.dht_records,
                r.own_keys,
                r.to_fetch,
                r.outbox,
                r.nostr,
                r.peers
            )?;
            writeln!(
                out,
                "your announcements of the last {} days are read again from the reflogs of {reread} repositories",
                crate::node::repair::REREAD.as_secs() / 86_400
            )?;
            if let Some(why) = &r.unopenable {
                writeln!(out, "nothing could be read from the old store ({why}): run git p2p init in each repository you use with git-p2p")?;
            } else if !r.cut_short.is_empty() {
                writeln!(out, "parts of the old store could not be read: {}", r.cut_short.join(", "))?;
            }
            if r.repos_dropped > 0 {
                writeln!(
                    out,
                    "{} registered repositories were left out (their git dir is gone or holds another repository)",
                    r.repos_dropped
                )?;
            }
            writeln!(
                out,
                "not carried over: peers' announcements and room messages received before (they cannot be checked)"
            )?;
        }
    }
    if crate::control::client::autostart_allowed() {
        let status = Client::connect_or_start(paths)?.status()?;
        writeln!(out, "node started (pid {}, peer id {})", status.pid, status.peer_id)?;
    } else {
        writeln!(out, "start the node with: git p2p daemon start")?;
    }
    Ok(())
}

/// The node releases its data-dir lock as it exits; wait for that, so that `stop` returning
/// means the node is gone and a new one can start at once.
fn wait_for_exit(paths: &crate::paths::Paths) -> anyhow::Result<()> {
    let lock = std::fs::OpenOptions::new().read(true).write(true).open(paths.data_lock())?;
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                anyhow::bail!("the node did not stop within {}s", STOP_TIMEOUT.as_secs())
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
    }
}

/// Reachability (what AutoNAT found), our relay reservations and the relay service.
fn print_nat(n: &crate::control::api::NatStatus, out: &mut dyn Write) -> anyhow::Result<()> {
    let reach = if n.reachability.is_empty() { "unknown" } else { n.reachability.as_str() };
    match reach {
        "public" => writeln!(out, "reachable  public (AutoNAT confirmed {})", n.confirmed.join(", "))?,
        "private" => writeln!(out, "reachable  private: behind a NAT or firewall (peers reach us through relays)")?,
        _ => writeln!(out, "reachable  unknown (AutoNAT has not tested an address of ours yet)")?,
    }
    for (i, r) in n.reservations.iter().enumerate() {
        let state = if r.active { "reserved" } else { "asking" };
        writeln!(out, "{:<10} {} {state}", if i == 0 { "via relay" } else { "" }, r.address)?;
    }
    let serving = if n.serving {
        format!("serving ({} circuit(s), {} reservation(s) of others)", n.circuits, n.reserved_for_others)
    } else {
        "not serving".to_string()
    };
    writeln!(out, "relaying   {serving} (p2p.relay-service={})", n.relay_service)?;
    if n.hole_punched + n.hole_punch_failed > 0 {
        writeln!(out, "holepunch  {} made a direct connection, {} failed", n.hole_punched, n.hole_punch_failed)?;
    }
    Ok(())
}

fn print_status(s: &NodeStatus, out: &mut dyn Write) -> anyhow::Result<()> {
    let on_off = |b: bool| if b { "on" } else { "off" };
    writeln!(out, "node       running (pid {}, git-p2p {}, protocol {})", s.pid, s.version, s.protocol)?;
    writeln!(out, "peer id    {}", s.peer_id)?;
    writeln!(out, "npub       {}", s.npub)?;
    writeln!(out, "name       {}", s.name.as_deref().unwrap_or("-"))?;
    writeln!(
        out,
        "peers      {} connected (at most {}, {} at once so far), {} known",
        s.connected_peers, s.config.max_peers, s.peers_most, s.known_peers
    )?;
    for (i, addr) in s.listen_addrs.iter().enumerate() {
        writeln!(out, "{:<10} {addr}", if i == 0 { "listening" } else { "" })?;
    }
    writeln!(out, "mdns       {}", on_off(s.config.mdns))?;
    writeln!(out, "dht mode   {}", s.config.dht_mode)?;
    print_nat(&s.nat, out)?;
    if s.config.bootstrap.is_empty() {
        writeln!(out, "bootstrap  (none: set git config p2p.bootstrap)")?;
    }
    for (i, b) in s.config.bootstrap.iter().enumerate() {
        writeln!(out, "{:<10} {b}", if i == 0 { "bootstrap" } else { "" })?;
    }
    if s.config.relays.is_empty() {
        writeln!(out, "nostr      off (no p2p.relay configured)")?;
    } else {
        writeln!(out, "nostr      {}", s.nostr.summary())?;
        for r in &s.nostr.relays {
            let error = r.last_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default();
            writeln!(out, "           {} {}{error}", r.url, r.state)?;
        }
    }
    for (i, r) in s.repos.iter().enumerate() {
        writeln!(out, "{:<10} {} ({})", if i == 0 { "repos" } else { "" }, r.name, r.id.short())?;
    }
    for (i, r) in s.sync.repos.iter().enumerate() {
        let name = s.repos.iter().find(|x| x.id == r.repo).map_or(r.repo.short(), |x| x.name.as_str());
        let when = match r.last_sync {
            Some(ms) => format!("caught up {} with {} peer(s)", super::fmt::local_time(ms / 1000), r.peers),
            None => "not synced with a peer yet".to_string(),
        };
        writeln!(out, "{:<10} {name}: {when}", if i == 0 { "sync" } else { "" })?;
    }
    writeln!(
        out,
        "dht        {} record(s) of ours, {} of our repositories, {} held for others",
        s.dht.ours, s.dht.registered, s.dht.strangers
    )?;
    for (i, peer) in s.banned.iter().enumerate() {
        writeln!(
            out,
            "{:<10} {peer} (flooded us with connections; refused for 10 minutes)",
            if i == 0 { "cut off" } else { "" }
        )?;
    }
    if s.outbox > 0 {
        writeln!(out, "outbox     {} announcement(s) waiting for a peer in their repository", s.outbox)?;
    }
    if s.restoring > 0 {
        writeln!(out, "restoring  {} DHT entries of yours from peers' copies (after a repair)", s.restoring)?;
    }
    match &s.store.problem {
        None => writeln!(out, "store      ok, {:.1} MiB", s.store.bytes as f64 / 1_048_576.0)?,
        Some(problem) => {
            let since =
                s.store.since.map(|ms| format!(" since {}", super::fmt::local_time(ms / 1000))).unwrap_or_default();
            writeln!(out, "store      {}{since}: {problem}", s.store.state.to_uppercase())?;
        }
    }
    for dir in &s.rebasing {
        writeln!(out, "waiting    for the rebase in {dir} to end (its result is announced then)")?;
    }
    writeln!(out, "data dir   {}", s.data_dir)?;
    writeln!(out, "socket     {}", s.socket)?;
    writeln!(out, "log        {}", s.log_file)?;
    Ok(())
}
