//! `git p2p doctor`: why peers do not connect, in one screen. Each check says what it found
//! (ok, warn, FAIL, or a note) and, when something is wrong, the command that fixes it. The node
//! is asked for what it knows (listeners, the latest dial of each peer and why it failed,
//! peers' clocks); the repository the command runs in is checked too. Exit status 1 when a check
//! failed.

use std::io::Write;
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{Ctx, JsonArgs};
use crate::clock::unix_now_ms;
use crate::control::api::{ClockReading, DialOutcome, DialResult, NodeStatus, PeerInfo};
use crate::control::{Client, ClientError};
use crate::proto::peer::short;

/// How long doctor waits for the bootstrap dials under way to end before it reports them.
const DIAL_WAIT: Duration = Duration::from_secs(5);
/// A clock further off than this is worth a warning (messages carry the sender's time).
const CLOCK_WARN_MS: i64 = 60_000;
/// Beyond this, the node refuses a message as dated in the future (see the rooms' window).
const CLOCK_REFUSED_MS: i64 = 10 * 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Ok,
    Warn,
    Fail,
    /// A fact, neither good nor bad.
    Note,
}

#[derive(Debug, Serialize)]
struct Finding {
    check: &'static str,
    verdict: Verdict,
    text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

fn finding(check: &'static str, verdict: Verdict, text: impl Into<String>) -> Finding {
    Finding { check, verdict, text: text.into(), fix: None }
}

impl Finding {
    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

pub fn run(ctx: &Ctx, args: &JsonArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let mut findings = Vec::new();
    if let Some((mut client, status)) = node(ctx, &mut findings) {
        let status = wait_for_bootstrap_dials(&mut client, status);
        let peers = client.peers()?;
        findings.extend(checks(ctx, &status, &peers));
    }
    for f in &findings {
        if args.json {
            writeln!(out, "{}", serde_json::to_string(f)?)?;
        } else {
            let mark = match f.verdict {
                Verdict::Ok => "ok",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
                Verdict::Note => "--",
            };
            writeln!(out, "{mark:<5} {:<11} {}", f.check, f.text)?;
            if let Some(fix) = &f.fix {
                writeln!(out, "{:<17} fix: {fix}", "")?;
            }
        }
    }
    let failed = findings.iter().any(|f| f.verdict == Verdict::Fail);
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Whether the node runs (started now if it did not), and the client to ask it.
fn node(ctx: &Ctx, findings: &mut Vec<Finding>) -> Option<(Client, NodeStatus)> {
    let paths = match ctx.paths() {
        Ok(paths) => paths,
        Err(e) => {
            findings.push(finding("node", Verdict::Fail, e.to_string()));
            return None;
        }
    };
    let (client, started) = match Client::connect(paths) {
        Ok(client) => (Ok(client), false),
        Err(ClientError::NotRunning) => (Client::connect_or_start(paths), true),
        Err(e) => (Err(e), false),
    };
    let mut client = match client {
        Ok(client) => client,
        Err(e) => {
            findings.push(finding("node", Verdict::Fail, format!("cannot reach the node: {e}")));
            return None;
        }
    };
    let status = match client.status() {
        Ok(status) => status,
        Err(e) => {
            findings.push(finding("node", Verdict::Fail, format!("the node does not answer: {e}")));
            return None;
        }
    };
    let up = unix_now_ms().saturating_sub(status.started_at.saturating_mul(1000)) / 1000;
    let how = if started { "started now".to_string() } else { format!("up {}", ago(up)) };
    findings.push(finding(
        "node",
        Verdict::Ok,
        format!("running (pid {}, git-p2p {}, {how})", status.pid, status.version),
    ));
    if status.version != env!("CARGO_PKG_VERSION") {
        findings.push(
            finding(
                "version",
                Verdict::Warn,
                format!("the node runs git-p2p {}, this command is {}", status.version, env!("CARGO_PKG_VERSION")),
            )
            .fix("git p2p daemon stop && git p2p daemon start"),
        );
    }
    Some((client, status))
}

/// The node dials its bootstrap peers as it starts: give those dials a moment to end, so that
/// what doctor says of them is their outcome.
fn wait_for_bootstrap_dials(client: &mut Client, mut status: NodeStatus) -> NodeStatus {
    let deadline = Instant::now() + DIAL_WAIT;
    let under_way = |s: &NodeStatus| s.dials.iter().any(|d| d.bootstrap && d.result == DialResult::UnderWay);
    let undialled = |s: &NodeStatus| {
        s.config.bootstrap.iter().any(|b| match peer_of(b) {
            Some(peer) => !s.dials.iter().any(|d| d.peer == peer),
            None => false,
        })
    };
    while (under_way(&status) || undialled(&status)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        match client.status() {
            Ok(s) => status = s,
            Err(_) => break,
        }
    }
    status
}

fn checks(ctx: &Ctx, status: &NodeStatus, peers: &[PeerInfo]) -> Vec<Finding> {
    let mut findings = Vec::new();
    if status.store.state != "ok" && !status.store.state.is_empty() {
        let problem = status.store.problem.clone().unwrap_or_else(|| status.store.state.clone());
        findings.push(finding("store", Verdict::Fail, problem));
    }
    findings.extend(listening(status));
    findings.extend(discovery(status));
    findings.extend(bootstrap(status, peers));
    findings.extend(address_book(status, peers));
    findings.extend(connected(status, peers));
    findings.extend(repository(ctx, status, peers));
    findings.extend(clocks(&status.clocks, peers));
    findings.push(nat(&status.nat));
    findings.extend(nostr(status));
    findings
}

/// Reachability as AutoNAT (or a peer from outside) found it, and the relays that reach us.
fn nat(n: &crate::control::api::NatStatus) -> Finding {
    let active: Vec<&str> = n.reservations.iter().filter(|r| r.active).map(|r| r.relay.as_str()).collect();
    let serving = if n.serving { "; relaying for others" } else { "" };
    match (n.reachability.as_str(), active.is_empty()) {
        ("public", _) => {
            finding("nat", Verdict::Ok, format!("reachable from outside at {}{serving}", n.confirmed.join(", ")))
        }
        (_, false) => finding(
            "nat",
            Verdict::Ok,
            format!(
                "not directly reachable; reachable through relay {} (hole punching upgrades to direct)",
                active.join(", ")
            ),
        ),
        ("private", true) => finding(
            "nat",
            Verdict::Warn,
            "behind a NAT or firewall and no relay holds a slot for you: peers outside your network cannot reach you",
        )
        .fix(
            "bootstrap to a public node that relays (p2p.relay-service on it), or name one: git config --global \
             --add p2p.circuit-relay <multiaddr>/p2p/<PeerId>",
        ),
        _ => finding("nat", Verdict::Note, "reachability not known yet (AutoNAT asks peers to dial you back)"),
    }
}

/// Where an address can be reached from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reach {
    Internet,
    Lan,
    /// Link-local: dialable only with the interface named, which multiaddrs cannot say.
    LinkLocal,
    ThisMachine,
}

fn reach_of(addr: &str) -> Option<Reach> {
    let ip: IpAddr = addr.split('/').nth(2)?.parse().ok()?;
    Some(match ip {
        IpAddr::V4(ip) if ip.is_loopback() => Reach::ThisMachine,
        IpAddr::V4(ip) if ip.is_link_local() => Reach::LinkLocal,
        IpAddr::V4(ip) if ip.is_private() || ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64 => Reach::Lan,
        IpAddr::V6(ip) if ip.is_loopback() => Reach::ThisMachine,
        IpAddr::V6(ip) if (ip.segments()[0] & 0xffc0) == 0xfe80 => Reach::LinkLocal,
        IpAddr::V6(ip) if (ip.segments()[0] & 0xfe00) == 0xfc00 => Reach::Lan,
        _ => Reach::Internet,
    })
}

/// Whether `git p2p id` shows the address to give to others (a link-local address is useless
/// to them).
pub fn shareable(addr: &str) -> bool {
    reach_of(addr) != Some(Reach::LinkLocal)
}

fn listening(status: &NodeStatus) -> Vec<Finding> {
    if status.listen_addrs.is_empty() {
        return vec![finding("listening", Verdict::Fail, "on no address: no peer can connect to this node")
            .fix("check p2p.listen (git config --global --get-all p2p.listen) and the node's log")];
    }
    let mut by_reach: Vec<(Reach, Vec<&str>)> = Vec::new();
    for addr in &status.listen_addrs {
        let reach = reach_of(addr).unwrap_or(Reach::Internet);
        match by_reach.iter_mut().find(|(r, _)| *r == reach) {
            Some((_, addrs)) => addrs.push(addr),
            None => by_reach.push((reach, vec![addr])),
        }
    }
    by_reach.sort();
    let mut findings = Vec::new();
    for (reach, addrs) in &by_reach {
        let whom = match reach {
            Reach::Internet => "public: reachable from anywhere the network lets through",
            Reach::Lan => "private: reachable from your local network",
            Reach::LinkLocal => "link-local: not given to peers (they need an interface name to dial it)",
            Reach::ThisMachine => "loopback: this machine only",
        };
        let verdict = if *reach == Reach::LinkLocal { Verdict::Note } else { Verdict::Ok };
        findings.push(finding("listening", verdict, format!("{} ({whom})", addrs.join(", "))));
    }
    if by_reach.iter().all(|(r, _)| matches!(r, Reach::ThisMachine | Reach::LinkLocal)) {
        findings.push(
            finding(
                "listening",
                Verdict::Warn,
                "only on this machine's own addresses: peers elsewhere cannot reach you",
            )
            .fix("git config --global --replace-all p2p.listen /ip4/0.0.0.0/tcp/0 && git p2p daemon stop"),
        );
    }
    findings
}

fn discovery(status: &NodeStatus) -> Vec<Finding> {
    let mut findings = Vec::new();
    if status.config.mdns {
        findings.push(finding("mdns", Verdict::Ok, "on: nodes on your local network find each other"));
    } else {
        findings.push(finding("mdns", Verdict::Note, "off: only bootstrap peers and the address book are dialled"));
    }
    if !status.config.mdns && status.config.bootstrap.is_empty() && status.known_peers == 0 {
        findings.push(
            finding("discovery", Verdict::Fail, "no way to find a peer: mDNS is off, no bootstrap peer, no known peer")
                .fix(
                    "git config --global --add p2p.bootstrap <address that `git p2p id` prints on another node>, \
                     or git config --global p2p.mdns true; then git p2p daemon stop",
                ),
        );
    }
    findings
}

/// The peer id a bootstrap address ends with.
fn peer_of(addr: &str) -> Option<String> {
    let (_, peer) = addr.rsplit_once("/p2p/")?;
    Some(peer.to_string())
}

fn bootstrap(status: &NodeStatus, peers: &[PeerInfo]) -> Vec<Finding> {
    let mut findings = Vec::new();
    if status.config.bootstrap.is_empty() {
        findings.push(finding("bootstrap", Verdict::Note, "none configured (p2p.bootstrap)"));
    }
    for addr in &status.config.bootstrap {
        let Some(peer) = peer_of(addr) else {
            findings.push(finding("bootstrap", Verdict::Fail, format!("{addr}: no /p2p/<peer id> at its end")));
            continue;
        };
        if peers.iter().any(|p| p.peer_id == peer) {
            findings.push(finding("bootstrap", Verdict::Ok, format!("{addr}: connected")));
            continue;
        }
        let outcome = status.dials.iter().find(|d| d.peer == peer);
        findings.push(match outcome.map(|d| (&d.result, d.at)) {
            Some((DialResult::Failed { error }, at)) => finding(
                "bootstrap",
                Verdict::Fail,
                format!("{addr}: not reached {}: {error}", since(at)),
            )
            .fix(
                "check that the node there runs and that the address (and peer id) is the one its `git p2p id` prints",
            ),
            Some((DialResult::Connected, at)) => finding(
                "bootstrap",
                Verdict::Warn,
                format!("{addr}: reached {}, not connected now (it is dialled again)", since(at)),
            ),
            Some((DialResult::UnderWay, at)) => {
                finding("bootstrap", Verdict::Warn, format!("{addr}: dialling since {} (no answer yet)", since(at)))
            }
            None => finding("bootstrap", Verdict::Warn, format!("{addr}: not dialled yet")),
        });
    }
    findings
}

fn address_book(status: &NodeStatus, peers: &[PeerInfo]) -> Vec<Finding> {
    let others: Vec<&DialOutcome> = status.dials.iter().filter(|d| !d.bootstrap).collect();
    let failed: Vec<&&DialOutcome> = others
        .iter()
        .filter(|d| matches!(d.result, DialResult::Failed { .. }) && !peers.iter().any(|p| p.peer_id == d.peer))
        .collect();
    // The address book holds the bootstrap peers too.
    let known = status.known_peers.saturating_sub(status.config.bootstrap.len());
    let text = if known == 0 && others.is_empty() {
        "no other peer known yet (the address book fills as you meet peers)".to_string()
    } else {
        format!("{known} other peer(s) known; {} dialled lately, {} of them not reached", others.len(), failed.len())
    };
    let mut findings = vec![finding("known", Verdict::Note, text)];
    for d in failed.iter().take(5) {
        if let DialResult::Failed { error } = &d.result {
            findings.push(finding(
                "known",
                Verdict::Note,
                format!("{}: not reached {}: {error}", short(&d.peer), since(d.at)),
            ));
        }
    }
    findings
}

fn connected(status: &NodeStatus, peers: &[PeerInfo]) -> Vec<Finding> {
    if peers.is_empty() {
        let text = "no peer connected: announcements and chat wait in the outbox until one is";
        let verdict =
            if status.config.bootstrap.is_empty() && status.known_peers == 0 { Verdict::Warn } else { Verdict::Fail };
        return vec![finding("peers", verdict, text)];
    }
    let sharing = peers.iter().filter(|p| !p.repos.is_empty()).count();
    let names: Vec<String> = peers.iter().take(5).map(|p| name_of(&p.peer_id, peers)).collect();
    let more = if peers.len() > 5 { format!(" and {} more", peers.len() - 5) } else { String::new() };
    let mut findings = vec![finding(
        "peers",
        Verdict::Ok,
        format!("{} connected ({}{more}), {sharing} sharing a repository of yours", peers.len(), names.join(", ")),
    )];
    if sharing == 0 && !status.repos.is_empty() {
        findings.push(finding(
            "peers",
            Verdict::Warn,
            "none of them has your repositories: announcements wait until a peer that has one connects",
        ));
    }
    findings
}

fn repository(ctx: &Ctx, status: &NodeStatus, peers: &[PeerInfo]) -> Vec<Finding> {
    let Ok(repo) = crate::git::open(&ctx.dir) else {
        return vec![finding(
            "repository",
            Verdict::Note,
            "not in a git repository: run doctor in one to check it too",
        )];
    };
    let name = &repo.room_name;
    if !status.repos.iter().any(|r| r.id == repo.repo_id) {
        return vec![
            finding("repository", Verdict::Warn, format!("{name} is not registered with the node")).fix("git p2p init")
        ];
    }
    let mut findings = Vec::new();
    let hooked = crate::hooks::hooks_dir(repo.workdir.as_deref().unwrap_or(&repo.git_dir))
        .map(|dir| crate::hooks::is_installed(&dir))
        .unwrap_or(false);
    if hooked {
        let sharing = peers.iter().filter(|p| p.repos.contains(&repo.repo_id)).count();
        let verdict = if sharing > 0 { Verdict::Ok } else { Verdict::Warn };
        findings.push(finding(
            "repository",
            verdict,
            format!(
                "{name} ({}): registered, hooks installed, {sharing} connected peer(s) have it",
                repo.repo_id.short()
            ),
        ));
    } else {
        findings.push(
            finding("repository", Verdict::Warn, format!("{name}: registered, but the hooks are not installed"))
                .fix("git p2p hooks install"),
        );
    }
    if status.outbox > 0 {
        findings.push(finding(
            "outbox",
            Verdict::Warn,
            format!("{} announcement(s) or message(s) wait for a peer in their repository", status.outbox),
        ));
    }
    findings
}

fn clocks(readings: &[ClockReading], peers: &[PeerInfo]) -> Vec<Finding> {
    let connected: Vec<&ClockReading> = readings.iter().filter(|r| peers.iter().any(|p| p.peer_id == r.peer)).collect();
    if connected.is_empty() {
        return vec![finding("clock", Verdict::Note, "no message from a connected peer yet to compare clocks with")];
    }
    let mut findings = Vec::new();
    for r in &connected {
        let who = name_of(&r.peer, peers);
        let off = ago((r.offset_ms.unsigned_abs()) / 1000);
        if r.offset_ms > CLOCK_REFUSED_MS {
            findings.push(
                finding(
                    "clock",
                    Verdict::Fail,
                    format!("{who}'s clock is {off} ahead of yours: their messages are refused as dated in the future"),
                )
                .fix("set the clock right on the machine that is wrong (timedatectl set-ntp true)"),
            );
        } else if r.offset_ms > CLOCK_WARN_MS {
            findings.push(finding("clock", Verdict::Warn, format!("{who}'s clock is {off} ahead of yours")));
        } else if r.offset_ms < -CLOCK_WARN_MS {
            findings.push(finding(
                "clock",
                Verdict::Warn,
                format!("{who}'s messages arrive {off} late: their clock is behind yours, or they were held back"),
            ));
        }
    }
    let agree = |f: &dyn Fn(i64) -> bool| connected.len() >= 2 && connected.iter().all(|r| f(r.offset_ms));
    if agree(&|o| o > CLOCK_WARN_MS) || agree(&|o| o < -CLOCK_WARN_MS) {
        findings.push(
            finding(
                "clock",
                Verdict::Warn,
                "every peer's clock disagrees with yours the same way: yours is likely off",
            )
            .fix("timedatectl set-ntp true"),
        );
    }
    if findings.is_empty() {
        findings.push(finding(
            "clock",
            Verdict::Ok,
            format!("within a minute of {} connected peer(s)", connected.len()),
        ));
    }
    findings
}

fn nostr(status: &NodeStatus) -> Vec<Finding> {
    status
        .nostr
        .relays
        .iter()
        .map(|r| match &r.last_error {
            Some(error) => finding("nostr", Verdict::Warn, format!("{} {}: {error}", r.url, r.state)),
            None => finding("nostr", Verdict::Ok, format!("{} {}", r.url, r.state)),
        })
        .collect()
}

/// A peer as people know it: its name and short id, or the short id.
fn name_of(peer: &str, peers: &[PeerInfo]) -> String {
    match peers.iter().find(|p| p.peer_id == peer).and_then(|p| p.name.as_deref()) {
        Some(name) => format!("{name} ({})", short(peer)),
        None => short(peer).to_string(),
    }
}

/// "3 s ago", "5 min ago" for a Unix ms time.
fn since(at_ms: u64) -> String {
    match unix_now_ms().saturating_sub(at_ms) / 1000 {
        0..=1 => "just now".to_string(),
        secs => format!("{} ago", ago(secs)),
    }
}

fn ago(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        7200..=172_799 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_told_apart_by_who_can_reach_them() {
        assert_eq!(reach_of("/ip4/127.0.0.1/tcp/4001"), Some(Reach::ThisMachine));
        assert_eq!(reach_of("/ip4/192.168.1.5/udp/4001/quic-v1"), Some(Reach::Lan));
        assert_eq!(reach_of("/ip4/100.64.0.1/tcp/1"), Some(Reach::Lan), "carrier-grade NAT");
        assert_eq!(reach_of("/ip4/203.0.113.7/tcp/4001"), Some(Reach::Internet));
        assert_eq!(reach_of("/ip6/fe80::1/tcp/4001"), Some(Reach::LinkLocal));
        assert_eq!(reach_of("/ip6/fd00::1/tcp/4001"), Some(Reach::Lan));
        assert_eq!(reach_of("/ip6/::1/tcp/4001"), Some(Reach::ThisMachine));
        assert_eq!(reach_of("/ip6/2001:db8::1/tcp/4001"), Some(Reach::Internet));
        assert!(!shareable("/ip6/fe80::1/tcp/4001"));
        assert!(shareable("/ip4/10.0.0.2/tcp/4001"));
    }

    #[test]
    fn a_clock_far_ahead_fails_and_one_agreed_on_by_all_is_ours() {
        let peer = |id: &str| PeerInfo {
            peer_id: id.into(),
            name: None,
            agent: None,
            addresses: vec![],
            transport: "tcp".into(),
            rtt_ms: None,
            repos: vec![],
            connected_secs: 1,
            score: None,
            connection: "direct".into(),
            relay: None,
        };
        let reading = |id: &str, offset_ms: i64| ClockReading { peer: id.into(), offset_ms, samples: 1, at: 0 };
        let peers = [peer("aaaaaaaaaaaaaaaa"), peer("bbbbbbbbbbbbbbbb")];
        let found = clocks(&[reading("aaaaaaaaaaaaaaaa", 11 * 60_000), reading("bbbbbbbbbbbbbbbb", 500)], &peers);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].verdict, Verdict::Fail);
        assert!(found[0].text.contains("11 min ahead"), "{}", found[0].text);
        let found = clocks(&[reading("aaaaaaaaaaaaaaaa", -90_000), reading("bbbbbbbbbbbbbbbb", -95_000)], &peers);
        assert!(found.iter().any(|f| f.text.contains("yours is likely off")));
        let found = clocks(&[reading("aaaaaaaaaaaaaaaa", 200)], &peers);
        assert_eq!(found[0].verdict, Verdict::Ok);
    }
}
