//! Part `nat` (issue 16), in the NAT lab (`tests/it/natlab.rs`, root): Alice and Bob behind
//! cone NATs with 20 ms of WAN latency each way, bootstrapped to a public node: from both
//! nodes started (`init` returned on both) until Alice's `peers` shows Bob hole-punched, over
//! `runs` runs (fresh nodes each, the same lab and public node), with the share of runs that
//! got there within 15 s; announcement latency (a commit until it is in the other's feed) over
//! the hole-punched connection and, with Bob behind a symmetric NAT, over the relay, in the
//! same run. (The sparse network is part `sparse`.)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::natlab::{NatKind, NatLab};
use super::support::{self, Node};
use super::{ms, Metric};

/// Alice and Bob in the lab's sites, sharing a repository, not started.
fn pair(lab: &NatLab, boot: &str, run: usize) -> (Node, Node, PathBuf, PathBuf) {
    let alice = lab.node("h0", &format!("nat-a{run}"));
    let bob = lab.node("h1", &format!("nat-b{run}"));
    for n in [&alice, &bob] {
        n.config(&["p2p.bootstrap", boot]);
    }
    let alice_repo = alice.repo("proj", 1);
    bob.git(&bob.path("home"), &["clone", "-q", alice_repo.to_str().expect("utf-8"), "proj"]);
    let bob_repo = bob.path("home/proj");
    (alice, bob, alice_repo, bob_repo)
}

fn start_both(alice: &Node, bob: &Node, alice_repo: &Path, bob_repo: &Path) -> Instant {
    std::thread::scope(|s| {
        s.spawn(|| alice.ok_in(alice_repo, &["init"]));
        s.spawn(|| bob.ok_in(bob_repo, &["init"]));
    });
    Instant::now()
}

fn connection(node: &Node, peer: &str) -> Option<String> {
    let peers = node.peers();
    let p = peers.iter().find(|p| p["peer_id"] == peer)?;
    p["connection"].as_str().map(str::to_string)
}

/// Commits in Alice's repository until each is in Bob's feed.
fn announce(alice: &Node, bob: &Node, alice_repo: &Path, bob_repo: &Path, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let t = Instant::now();
            let commit = alice.commit(alice_repo, &format!("nat bench {i}"));
            support::eventually(Duration::from_secs(20), "the commit in bob's feed", || {
                bob.feed(bob_repo).iter().any(|e| e["commit"] == commit.as_str()).then_some(())
            });
            ms(t.elapsed())
        })
        .collect()
}

pub fn nat_bench(metrics: &mut Vec<Metric>, smoke: bool) {
    let runs = if smoke { 2 } else { 20 };
    let commits = if smoke { 3 } else { 20 };
    let mut lab = NatLab::up("b").unwrap_or_else(|e| super::natlab::needs_root(&e));
    lab.delay(20).unwrap_or_else(|e| super::natlab::needs_root(&e));
    let public = lab.node("p", "nat-relay");
    public.start();
    let boot = public.tcp_addr();

    let mut direct = Vec::new();
    let mut succeeded = 0;
    let mut announce_direct = Vec::new();
    for run in 0..runs {
        let (alice, bob, alice_repo, bob_repo) = pair(&lab, &boot, run);
        let started = start_both(&alice, &bob, &alice_repo, &bob_repo);
        let bob_id = bob.peer_id();
        let deadline = started + Duration::from_secs(15);
        let mut last = None;
        while Instant::now() < deadline {
            last = connection(&alice, &bob_id);
            if last.as_deref() == Some("holepunched") {
                direct.push(ms(started.elapsed()));
                succeeded += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if last.as_deref() != Some("holepunched") {
            eprintln!("harness: nat: run {run}: no direct connection in 15 s (alice sees bob: {last:?})");
        } else if announce_direct.is_empty() {
            // Over the direct connection alone: the relayed one closes a few seconds later.
            support::eventually(Duration::from_secs(10), "the relayed connection closed", || {
                let peers = alice.peers();
                let p = peers.iter().find(|p| p["peer_id"] == bob_id.as_str())?;
                p["addresses"]
                    .as_array()?
                    .iter()
                    .all(|a| !a.as_str().unwrap_or("").contains("p2p-circuit"))
                    .then_some(())
            });
            announce_direct = announce(&alice, &bob, &alice_repo, &bob_repo, commits);
        }
    }
    eprintln!("harness: nat: {succeeded} of {runs} runs hole-punched");
    metrics.push(Metric {
        name: "nat_cone_20ms_until_holepunched",
        unit: "ms",
        samples: direct,
        nodes: 3,
        goal: "p50 <= 2000 (both started -> direct)",
    });
    metrics.push(Metric {
        name: "nat_cone_20ms_holepunched_runs",
        unit: "%",
        samples: vec![100.0 * succeeded as f64 / runs as f64],
        nodes: 3,
        goal: "100 % of runs",
    });
    metrics.push(Metric {
        name: "nat_announce_holepunched",
        unit: "ms",
        samples: announce_direct,
        nodes: 3,
        goal: "(commit -> in the other's feed)",
    });

    lab.nat(1, NatKind::Symmetric).unwrap_or_else(|e| super::natlab::needs_root(&e));
    let (alice, bob, alice_repo, bob_repo) = pair(&lab, &boot, runs);
    start_both(&alice, &bob, &alice_repo, &bob_repo);
    let bob_id = bob.peer_id();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut relayed = false;
    while !relayed && Instant::now() < deadline {
        relayed = connection(&alice, &bob_id).as_deref() == Some("relayed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let samples = if relayed { announce(&alice, &bob, &alice_repo, &bob_repo, commits) } else { Vec::new() };
    if !relayed {
        eprintln!("harness: nat: symmetric: no relayed connection in 30 s");
    }
    metrics.push(Metric {
        name: "nat_announce_relayed",
        unit: "ms",
        samples,
        nodes: 3,
        goal: "(same run, over the relay)",
    });
    drop((alice, bob, public));
    drop(lab);
}
