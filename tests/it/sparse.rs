//! A larger network: 30 nodes on loopback with at most 6 peers each (`p2p.max-peers`: the
//! node refuses a seventh, whoever dials), bootstrapped in a chain (each to the one before).
//! Two of them share a repository and are not connected when they register it; they find each
//! other (the DHT's provider records name them to each other) and an announcement of one
//! reaches the other. No node has more than 6 peers whenever we look: while the chain grows,
//! while the two look for each other, and after.

use std::time::{Duration, Instant};

use crate::support::*;

pub const NODES: usize = 30;
pub const MAX_PEERS: usize = 6;

/// `NODES` nodes started one after the other, each bootstrapped to the one before.
pub fn chain(tag: &str) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..NODES {
        // TCP only: half the connections to count, and the chain is about the DHT.
        let node = Node::listening(&format!("{tag}{i}"), &["/ip4/127.0.0.1/tcp/0"]);
        node.config(&["p2p.max-peers", &MAX_PEERS.to_string()]);
        if let Some(before) = nodes.last() {
            node.config(&["p2p.bootstrap", &before.tcp_addr()]);
        }
        node.start();
        nodes.push(node);
        if i % 10 == 9 {
            bounded(&nodes, "while the chain grows");
        }
    }
    nodes
}

/// Asserts that no node has had more than [`MAX_PEERS`] peers at once since it started (each
/// node counts its most, so no moment between two looks escapes); returns the peers each has
/// now.
pub fn bounded(nodes: &[Node], when: &str) -> Vec<u64> {
    let (mut now, mut most) = (Vec::new(), Vec::new());
    for node in nodes {
        let status = node.status();
        now.push(status["connected_peers"].as_u64().unwrap_or(u64::MAX));
        most.push(status["peers_most"].as_u64().unwrap_or(u64::MAX));
    }
    assert!(most.iter().all(|c| *c <= MAX_PEERS as u64), "more than {MAX_PEERS} peers {when}: {most:?}");
    now
}

#[test]
fn in_a_30_node_chain_two_peers_of_a_repository_find_each_other_and_announce() {
    let nodes = chain("sp");
    let a = &nodes[4];
    // The other: a node far down the chain that `a` is not connected to.
    let neighbours: Vec<String> = a.peers().iter().filter_map(|p| p["peer_id"].as_str().map(str::to_string)).collect();
    let b = nodes[5..].iter().rev().find(|n| !neighbours.contains(&n.peer_id())).expect("a node a is not connected to");
    let a_repo = a.repo("proj", 1);
    b.git(&b.path("home"), &["clone", "-q", a_repo.to_str().expect("utf-8 path"), "proj"]);
    let b_repo = b.path("home/proj");
    let b_id = b.peer_id();
    a.ok_in(&a_repo, &["init"]);
    b.ok_in(&b_repo, &["init"]);
    let started = Instant::now();
    let mut polls = 0;
    eventually(Duration::from_secs(45), "the two peers of the repository to connect", || {
        polls += 1;
        if polls % 10 == 0 {
            bounded(&nodes, "while the two look for each other");
        }
        a.shares_a_repo_with(&b_id).then_some(())
    });
    eprintln!("connected {:?} after the second init", started.elapsed());
    bounded(&nodes, "once the two are connected");
    let commit = a.commit(&a_repo, "found through the DHT");
    eventually(Duration::from_secs(20), "the announcement to reach the other peer", || {
        b.feed(&b_repo).iter().any(|e| e["commit"] == commit.as_str()).then_some(())
    });
    // What each node ended up connected to (others dial in, DHT lookups connect to whoever they
    // ask: `p2p.max-peers` bounds only the peers a node dials itself).
    let counts = bounded(&nodes, "after the announcement");
    eprintln!("connected peers per node: {counts:?}");
    let peers = a.peers();
    assert!(peers.iter().any(|p| p["peer_id"] == b_id.as_str()), "the peer of the repository is kept: {peers:?}");
}
