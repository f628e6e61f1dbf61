//! Restarts and reconnection on loopback: a node killed with kill -9 again and again, over TCP
//! and over QUIC, loses no announcement and knows its peer's topics again at once; two nodes
//! restarted together find each other again on the ports they kept.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::*;

/// kill -9 restarts in a row in one test.
const RESTARTS: usize = 20;

/// Whether `node` lists `peer` as connected and sharing the repository `root`.
fn shares(node: &Node, peer: &str, root: &str) -> bool {
    node.peers()
        .iter()
        .any(|p| p["peer_id"] == peer && p["repos"].as_array().is_some_and(|r| r.iter().any(|id| id == root)))
}

/// Alice is killed with kill -9 [`RESTARTS`] times, with a commit just before each kill and one
/// while she is down (its hook spools it and starts her node again). After each restart, within
/// seconds, Bob has every announcement so far and Alice sees Bob's repository again; in the end
/// Bob's feed lists each commit exactly once.
fn kill9_restarts_lose_nothing(listen: &str, via: &str) {
    let Pair { alice, bob, alice_repo, bob_repo } =
        pair_between(Node::listening("alice", &[listen]), Node::listening("bob", &[listen]), via);
    let root = alice.git(&alice_repo, &["rev-list", "--max-parents=0", "HEAD"]).trim().to_string();
    let bob_id = bob.peer_id();
    eventually(Duration::from_secs(20), "alice to see bob's repository", || {
        shares(&alice, &bob_id, &root).then_some(())
    });
    let mut commits = Vec::new();
    for round in 0..RESTARTS {
        commits.push(alice.commit(&alice_repo, &format!("round {round}, before the kill")));
        alice.kill9();
        commits.push(alice.commit(&alice_repo, &format!("round {round}, while down")));
        eventually(Duration::from_secs(10), &format!("round {round}: every announcement so far at bob"), || {
            let entries = bob.feed(&bob_repo);
            commits.iter().all(|c| entries.iter().any(|e| e["commit"] == c.as_str())).then_some(())
        });
        eventually(Duration::from_secs(5), &format!("round {round}: alice to see bob's repository again"), || {
            shares(&alice, &bob_id, &root).then_some(())
        });
    }
    let entries = bob.feed(&bob_repo);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &entries {
        *counts.entry(e["commit"].as_str().expect("a commit id")).or_default() += 1;
    }
    for c in &commits {
        assert_eq!(counts.get(c.as_str()), Some(&1), "commit {c} listed once");
    }
    assert_eq!(entries.len(), commits.len(), "nothing else in the feed");
}

#[test]
fn twenty_kill9_restarts_over_tcp_lose_no_announcement() {
    kill9_restarts_lose_nothing("/ip4/127.0.0.1/tcp/0", "/tcp/");
}

#[test]
fn twenty_kill9_restarts_over_quic_lose_no_announcement() {
    kill9_restarts_lose_nothing("/ip4/127.0.0.1/udp/0/quic-v1", "/quic-v1");
}

/// Whether `node` lists `peer` among its connected peers.
fn lists(node: &Node, peer: &str) -> bool {
    node.peers().iter().any(|p| p["peer_id"] == peer)
}

/// Waits until each node lists the other, at most until `deadline`.
fn until_connected(alice: &Node, bob: &Node, deadline: Instant, what: &str) {
    let (a, b) = (alice.peer_id(), bob.peer_id());
    let left = deadline.saturating_duration_since(Instant::now());
    eventually(left, what, || (lists(alice, &b) && lists(bob, &a)).then_some(()));
}

#[test]
fn two_nodes_restarted_together_reconnect_within_five_seconds_on_the_ports_they_kept() {
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    bob.start();
    alice.config(&["p2p.bootstrap", &bob.tcp_addr()]);
    alice.start();
    until_connected(&alice, &bob, Instant::now() + Duration::from_secs(20), "the first meeting");
    let (alice_addrs, bob_addrs) = (alice.listen_addrs(), bob.listen_addrs());
    alice.kill9();
    bob.ok(&["daemon", "stop"]);
    // Bootstrap addresses are needed the first time only.
    alice.config(&["--unset", "p2p.bootstrap"]);
    let restarted = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| alice.start());
        s.spawn(|| bob.start());
    });
    until_connected(&alice, &bob, restarted + Duration::from_secs(5), "both to reconnect within 5 s of the restart");
    assert_eq!(alice.listen_addrs(), alice_addrs, "alice kept her ports (configured as port 0)");
    assert_eq!(bob.listen_addrs(), bob_addrs, "bob kept his ports");
}

/// Holds the sockets of `addrs` (`/ip4/A/tcp/P` or `/ip4/A/udp/P/quic-v1`), as another program
/// that took the ports would.
fn occupy(addrs: &[String]) -> Vec<Box<dyn std::any::Any>> {
    addrs
        .iter()
        .map(|addr| {
            let parts: Vec<&str> = addr.split('/').collect();
            let socket = format!("{}:{}", parts[2], parts[4]);
            let held: Box<dyn std::any::Any> = if parts[3] == "tcp" {
                Box::new(std::net::TcpListener::bind(&socket).expect("take the TCP port"))
            } else {
                Box::new(std::net::UdpSocket::bind(&socket).expect("take the UDP port"))
            };
            held
        })
        .collect()
}

/// Bob moves to other ports (his were taken while he was down) and finds Alice through his
/// address book; then Alice crashes and comes back on other ports too, so Bob cannot reach
/// her: she must find Bob herself, at once, although her bootstrap address for him is stale.
#[test]
fn a_node_whose_ports_were_taken_listens_on_others_and_finds_a_moved_peer_at_once() {
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    bob.start();
    alice.config(&["p2p.bootstrap", &bob.addr_with("/quic-v1")]);
    alice.start();
    until_connected(&alice, &bob, Instant::now() + Duration::from_secs(20), "the first meeting");

    let bob_old = bob.listen_addrs();
    bob.ok(&["daemon", "stop"]);
    let taken = occupy(&bob_old);
    let restarted = Instant::now();
    bob.start();
    let bob_new = bob.listen_addrs();
    assert!(bob_new.iter().all(|a| !bob_old.contains(a)), "other ports: {bob_old:?} -> {bob_new:?}");
    until_connected(&alice, &bob, restarted + Duration::from_secs(5), "bob to find alice through his address book");
    drop(taken);

    let alice_old = alice.listen_addrs();
    alice.kill9();
    let _taken = occupy(&alice_old);
    let restarted = Instant::now();
    alice.start();
    assert!(alice.listen_addrs().iter().all(|a| !alice_old.contains(a)), "alice on other ports");
    until_connected(&alice, &bob, restarted + Duration::from_secs(5), "alice to find bob through her address book");
}
