//! NAT traversal in the NAT lab (`natlab`): Alice and Bob, each behind a NAT with 20 ms of WAN
//! latency, bootstrapped only to a public node. They meet through it (relay v2); behind cone NATs
//! hole punching (DCUtR) makes a direct connection, behind a symmetric NAT the relayed one stays;
//! either way a commit, a chat message and a kv record travel between them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::natlab::{needs_root, NatKind, NatLab};
use crate::support::*;

/// Fields drop in order: the nodes stop before the lab (kept for its `Drop`) goes.
pub struct Sites {
    pub public: Node,
    pub alice: Node,
    pub bob: Node,
    pub alice_repo: PathBuf,
    pub bob_repo: PathBuf,
    pub _lab: NatLab,
}

/// The lab with site 1 behind `bob_nat`, a public node, and Alice and Bob (bootstrapped to the
/// public node only) sharing a repository, both started.
pub fn sites(tag: &str, bob_nat: NatKind) -> Sites {
    let mut lab = NatLab::up(tag).unwrap_or_else(|e| needs_root(&e));
    lab.nat(1, bob_nat).unwrap_or_else(|e| needs_root(&e));
    lab.delay(20).unwrap_or_else(|e| needs_root(&e));
    let public = lab.node("p", "relay");
    public.start();
    let boot = public.tcp_addr();
    let alice = lab.node("h0", "alice");
    let bob = lab.node("h1", "bob");
    for n in [&alice, &bob] {
        n.config(&["p2p.bootstrap", &boot]);
    }
    let alice_repo = alice.repo("proj", 1);
    bob.git(&bob.path("home"), &["clone", "-q", alice_repo.to_str().expect("utf-8 path"), "proj"]);
    let bob_repo = bob.path("home/proj");
    std::thread::scope(|s| {
        s.spawn(|| alice.ok_in(&alice_repo, &["init"]));
        s.spawn(|| bob.ok_in(&bob_repo, &["init"]));
    });
    Sites { public, alice, bob, alice_repo, bob_repo, _lab: lab }
}

/// How `node` is connected to `peer` (the `peers --json` entry), once it is.
pub fn link(node: &Node, peer: &str) -> Option<Value> {
    node.peers().into_iter().find(|p| p["peer_id"] == peer)
}

/// A commit, a chat message and a kv record from Alice reach Bob.
fn three_things_travel(s: &Sites, what: &str) {
    let commit = s.alice.commit(&s.alice_repo, &format!("across the NATs ({what})"));
    eventually(Duration::from_secs(20), &format!("{what}: bob to hear of alice's commit"), || {
        s.bob.feed(&s.bob_repo).iter().any(|e| e["commit"] == commit.as_str()).then_some(())
    });
    let text = format!("hello through the NATs ({what})");
    s.alice.ok_in(&s.alice_repo, &["chat", "--send", &text]);
    eventually(Duration::from_secs(20), &format!("{what}: bob to read alice's message"), || {
        s.bob.ok_in(&s.bob_repo, &["chat", "--tail"]).contains(&text).then_some(())
    });
    s.alice.ok_in(&s.alice_repo, &["kv", "set", "nat/test", what]);
    eventually(Duration::from_secs(20), &format!("{what}: bob to get alice's kv record"), || {
        let out = s.bob.run_in(&s.bob_repo, &["kv", "get", "nat/test"]);
        String::from_utf8_lossy(&out.stdout).contains(what).then_some(())
    });
}

#[test]
fn behind_cone_nats_peers_hole_punch_a_direct_connection() {
    let s = sites("c", NatKind::Cone);
    let started = Instant::now();
    let (alice_id, bob_id, relay_id) = (s.alice.peer_id(), s.bob.peer_id(), s.public.peer_id());
    for (node, other) in [(&s.alice, &bob_id), (&s.bob, &alice_id)] {
        eventually(Duration::from_secs(20), &format!("{} to hole-punch to the other", node.name), || {
            let peer = link(node, other)?;
            (peer["connection"] == "holepunched").then_some(())
        });
        // The relayed connection is closed once the direct one is up: one way to reach the peer.
        eventually(Duration::from_secs(10), &format!("{}: the relayed connection closed", node.name), || {
            let peer = link(node, other)?;
            let addrs = peer["addresses"].as_array()?;
            addrs.iter().all(|a| !a.as_str().unwrap_or("").contains("p2p-circuit")).then_some(())
        });
    }
    eprintln!("direct connection {:?} after both started", started.elapsed());
    let public = s.public.status();
    assert_eq!(public["nat"]["reachability"], "public", "{}", public["nat"]);
    assert_eq!(public["nat"]["serving"], true, "auto: a public node relays for others");
    for node in [&s.alice, &s.bob] {
        let nat = &node.status()["nat"];
        assert_ne!(nat["reachability"], "public", "{}: behind a NAT: {nat}", node.name);
        assert_eq!(nat["serving"], false, "{}: a NATed node relays for nobody", node.name);
        let reservations = nat["reservations"].as_array().expect("reservations");
        assert!(reservations.iter().any(|r| r["relay"] == relay_id.as_str()), "{}: {nat}", node.name);
    }
    three_things_travel(&s, "hole-punched");
    let peer = link(&s.bob, &alice_id).expect("still connected");
    assert_eq!(peer["connection"], "holepunched", "the direct connection carried them: {peer}");
}

#[test]
fn behind_a_symmetric_nat_the_relayed_connection_stays_and_carries_everything() {
    let s = sites("s", NatKind::Symmetric);
    let (alice_id, bob_id, relay_id) = (s.alice.peer_id(), s.bob.peer_id(), s.public.peer_id());
    for (node, other) in [(&s.alice, &bob_id), (&s.bob, &alice_id)] {
        eventually(Duration::from_secs(20), &format!("{} to reach the other through the relay", node.name), || {
            let peer = link(node, other)?;
            (peer["connection"] == "relayed" && peer["relay"] == relay_id.as_str()).then_some(())
        });
    }
    // The punch was tried and failed (a symmetric NAT picks another port for every
    // destination); the relayed connection stays.
    eventually(Duration::from_secs(30), "a failed hole punch", || {
        let failed = |n: &Node| n.status()["nat"]["hole_punch_failed"].as_u64().unwrap_or(0);
        (failed(&s.alice) + failed(&s.bob) > 0).then_some(())
    });
    three_things_travel(&s, "relayed");
    for (node, other) in [(&s.alice, &bob_id), (&s.bob, &alice_id)] {
        let peer = link(node, other).expect("still connected");
        assert_eq!(peer["connection"], "relayed", "{}: {peer}", node.name);
    }
    let relay = s.public.status();
    assert!(relay["nat"]["circuits"].as_u64().unwrap_or(0) >= 1, "the relay carries a circuit: {}", relay["nat"]);
}
