//! Part `sparse` (issue 16): 30 nodes on loopback with at most 6 peers each (`p2p.max-peers`),
//! a chain of bootstraps (each to the one before). Pairs of nodes not connected to each other
//! register a repository they share, one pair after the other: the time from the later `init`
//! until the two are connected and know they share it (they find each other in the DHT's
//! provider records), then a commit of one until it is in the other's feed; and the most peers
//! any node had at once over the whole run (each node counts its own most).

use std::time::{Duration, Instant};

use super::support::{self, Node};
use super::{ms, Metric};

const MAX_PEERS: &str = "6";

pub fn sparse_bench(metrics: &mut Vec<Metric>, smoke: bool) {
    let (count, pairs) = if smoke { (8, 1) } else { (30, 5) };
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..count {
        let node = Node::listening(&format!("sp{i}"), &["/ip4/127.0.0.1/tcp/0"]);
        node.config(&["p2p.max-peers", MAX_PEERS]);
        if let Some(before) = nodes.last() {
            node.config(&["p2p.bootstrap", &before.tcp_addr()]);
        }
        node.start();
        nodes.push(node);
    }
    let (mut connected, mut announced) = (Vec::new(), Vec::new());
    let mut used = Vec::new();
    for k in 0..pairs {
        // Two nodes not connected, neither in a pair yet: one from the start of the chain, one
        // from its end.
        let Some(a) = nodes.iter().skip(k).find(|n| !used.contains(&n.peer_id())) else { continue };
        let neighbours: Vec<String> =
            a.peers().iter().filter_map(|p| p["peer_id"].as_str().map(str::to_string)).collect();
        let far = nodes.iter().rev().find(|n| {
            let id = n.peer_id();
            id != a.peer_id() && !neighbours.contains(&id) && !used.contains(&id)
        });
        let Some(b) = far else { continue };
        used.extend([a.peer_id(), b.peer_id()]);
        let name = format!("proj{k}");
        let a_repo = a.repo(&name, 1);
        b.git(&b.path("home"), &["clone", "-q", a_repo.to_str().expect("utf-8"), &name]);
        let b_repo = b.path(&format!("home/{name}"));
        a.ok_in(&a_repo, &["init"]);
        b.ok_in(&b_repo, &["init"]);
        let t = Instant::now();
        let b_id = b.peer_id();
        eprintln!("harness: sparse: pair {k}: {} and {}", a.name, b.name);
        support::eventually(Duration::from_secs(60), "the two peers of the repository to connect", || {
            // A connection the other side refuses at once does not count.
            a.shares_a_repo_with(&b_id).then_some(())
        });
        connected.push(ms(t.elapsed()));
        eprintln!("harness: sparse: pair {k} ({} and {}) connected after {:?}", a.name, b.name, t.elapsed());
        let t = Instant::now();
        let commit = a.commit(&a_repo, &format!("sparse {k}"));
        support::eventually(Duration::from_secs(30), "the announcement to reach the other", || {
            b.feed(&b_repo).iter().any(|e| e["commit"] == commit.as_str()).then_some(())
        });
        announced.push(ms(t.elapsed()));
    }
    let most: f64 =
        nodes.iter().map(|n| n.status()["peers_most"].as_f64().unwrap_or(f64::INFINITY)).fold(0.0, f64::max);
    metrics.push(Metric {
        name: "sparse_until_connected",
        unit: "ms",
        samples: connected,
        nodes: count,
        goal: "<= 5000 (later init -> connected)",
    });
    metrics.push(Metric {
        name: "sparse_announce",
        unit: "ms",
        samples: announced,
        nodes: count,
        goal: "(commit -> in the other's feed)",
    });
    metrics.push(Metric {
        name: "sparse_most_peers_of_any_node",
        unit: "peers",
        samples: vec![most],
        nodes: count,
        goal: "<= 6 (p2p.max-peers)",
    });
}
