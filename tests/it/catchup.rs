//! Catching up (issue 15) with real nodes: what was said and announced while a node was down
//! reaches it when it starts again, by sync alone (gossip has no memory, and the outboxes are
//! empty), from its author or from any peer that has it; two nodes in sync spend a few hundred
//! bytes finding that out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// Alice, bob and carol on loopback, each with the repository `proj` initialised; alice and bob
/// bootstrap to carol.
pub struct Trio {
    pub alice: Node,
    pub bob: Node,
    pub carol: Node,
    pub alice_repo: PathBuf,
    pub bob_repo: PathBuf,
    pub carol_repo: PathBuf,
    /// The repository's id (its root commit).
    pub root: String,
}

pub fn trio() -> Trio {
    let carol = Node::new("carol");
    carol.start();
    let (alice, bob) = (Node::new("alice"), Node::new("bob"));
    for node in [&alice, &bob] {
        node.config(&["p2p.bootstrap", &carol.addr_with("/tcp/")]);
    }
    let alice_repo = alice.repo("proj", 1);
    let root = alice.git(&alice_repo, &["rev-parse", "HEAD"]).trim().to_string();
    let clone = |node: &Node| {
        node.git(&node.path("home"), &["clone", "-q", alice_repo.to_str().expect("utf-8 path"), "proj"]);
        node.path("home/proj")
    };
    let (bob_repo, carol_repo) = (clone(&bob), clone(&carol));
    for (node, repo) in [(&alice, &alice_repo), (&bob, &bob_repo), (&carol, &carol_repo)] {
        node.ok_in(repo, &["init"]);
    }
    let trio = Trio { alice, bob, carol, alice_repo, bob_repo, carol_repo, root };
    for node in [&trio.alice, &trio.bob] {
        eventually(Duration::from_secs(30), &format!("{} to share the repository with carol", node.name), || {
            shares(node, &trio.carol.peer_id(), &trio.root).then_some(())
        });
    }
    trio
}

/// Whether `node` lists `peer` as connected and sharing the repository `root`.
pub fn shares(node: &Node, peer: &str, root: &str) -> bool {
    node.peers()
        .iter()
        .any(|p| p["peer_id"] == peer && p["repos"].as_array().is_some_and(|r| r.iter().any(|id| id == root)))
}

pub fn tail(node: &Node, repo: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["chat", "--tail", "--json"];
    args.extend_from_slice(extra);
    node.ok_in(repo, &args).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

fn texts(messages: &[Value]) -> Vec<String> {
    messages.iter().map(|m| m["text"].as_str().expect("a text").to_string()).collect()
}

/// The node's sync record in `daemon status --json`.
pub fn sync_status(node: &Node) -> Value {
    node.status()["sync"].clone()
}

/// What alice says and announces while bob is down: 20 messages in the root commit's thread,
/// 50 in the room, 20 commits. Returns the commits.
fn alice_talks_while_bob_is_away(t: &Trio) -> Vec<String> {
    for i in 0..20 {
        t.alice.ok_in(&t.alice_repo, &["chat", "--commit", &t.root, "--send", &format!("thread {i:02}")]);
    }
    for i in 0..50 {
        t.alice.ok_in(&t.alice_repo, &["chat", "--send", &format!("room {i:02}")]);
    }
    (0..20).map(|i| t.alice.commit(&t.alice_repo, &format!("commit {i:02}"))).collect()
}

/// Carol has everything alice said, and alice's outbox is empty: nothing is left to gossip.
fn carol_took_it_all(t: &Trio) {
    eventually(Duration::from_secs(30), "carol to have alice's 20 commits", || {
        (t.carol.feed(&t.carol_repo).len() == 20).then_some(())
    });
    eventually(Duration::from_secs(30), "carol to have alice's 50 room messages", || {
        (tail(&t.carol, &t.carol_repo, &[]).iter().filter(|m| m["thread"].is_null()).count() == 50).then_some(())
    });
    eventually(Duration::from_secs(30), "alice's outbox to empty", || (t.alice.status()["outbox"] == 0).then_some(()));
}

/// Bob has every item alice sent, each once, in order, and his node says it synced.
fn bob_has_it_all(t: &Trio, commits: &[String]) {
    // Without any command but `daemon status` (which starts nothing): a sync ends, bringing
    // alice's items (gossip may bring the newest of them too, when bob is back within a few
    // heartbeats: what counts is that all are there, each once).
    eventually(Duration::from_secs(30), "bob's syncs to bring alice's items", || {
        let status = sync_status(&t.bob);
        (status["repos"][0]["last_sync"].as_u64().is_some() && status["items"].as_u64() > Some(0)).then_some(())
    });
    // The sync that ended is fresh: the reads below start no other.
    eventually(Duration::from_secs(30), "alice's 90 items at bob's", || {
        let room = tail(&t.bob, &t.bob_repo, &[]).len();
        let thread = tail(&t.bob, &t.bob_repo, &["--commit", &t.root]).len();
        (room == 50 && thread == 20 && t.bob.feed(&t.bob_repo).len() == commits.len()).then_some(())
    });
    let room = tail(&t.bob, &t.bob_repo, &[]);
    let expected: Vec<String> = (0..50).map(|i| format!("room {i:02}")).collect();
    assert_eq!(texts(&room), expected, "the room's last 50: alice's messages, each once, in order");
    let thread = tail(&t.bob, &t.bob_repo, &["--commit", &t.root]);
    let expected: Vec<String> = (0..20).map(|i| format!("thread {i:02}")).collect();
    assert_eq!(texts(&thread), expected, "the thread, each once, in order");
    let alice_id = t.alice.peer_id();
    assert!(room.iter().chain(&thread).all(|m| m["peer"] == alice_id.as_str()), "alice's, signed by her");
    let feed = t.bob.feed(&t.bob_repo);
    let listed: Vec<String> = feed.iter().rev().map(|e| e["commit"].as_str().expect("a commit").to_string()).collect();
    let times: Vec<&Value> = feed.iter().rev().map(|e| &e["announced_at"]).collect();
    assert_eq!(listed, commits, "every commit once, in order (signed at {times:?})");
    let status = sync_status(&t.bob);
    let repo = &status["repos"][0];
    assert_eq!(repo["repo"], t.root.as_str());
    assert!(repo["last_sync"].as_u64().is_some() && repo["peers"].as_u64() >= Some(1), "{status}");
    let human = t.bob.ok(&["daemon", "status"]);
    assert!(human.lines().any(|l| l.starts_with("sync") && l.contains("proj")), "{human}");
}

#[test]
fn a_node_down_while_its_peer_talks_has_everything_once_it_starts() {
    let t = trio();
    t.bob.ok(&["daemon", "stop"]);
    let commits = alice_talks_while_bob_is_away(&t);
    carol_took_it_all(&t);
    t.bob.start();
    bob_has_it_all(&t, &commits);
}

#[test]
fn with_the_author_down_a_node_catches_up_from_a_peer_that_saw_it_all() {
    let t = trio();
    t.bob.ok(&["daemon", "stop"]);
    let commits = alice_talks_while_bob_is_away(&t);
    carol_took_it_all(&t);
    t.alice.ok(&["daemon", "stop"]);
    t.bob.start();
    bob_has_it_all(&t, &commits);
}

/// Two nodes that have the same items meet again: finding that out costs a few hundred bytes
/// (counted by the nodes), however many items they hold.
#[test]
fn two_nodes_in_sync_spend_under_a_kibibyte_finding_it_out() {
    let Pair { alice, bob, alice_repo, bob_repo } = pair();
    eventually(Duration::from_secs(20), "bob in alice's room", || {
        alice.ok_in(&alice_repo, &["chat", "--send", "warm-up"]).starts_with("sent to").then_some(())
    });
    for i in 0..60 {
        alice.ok_in(&alice_repo, &["chat", "--send", &format!("message {i}")]);
    }
    for i in 0..10 {
        alice.commit(&alice_repo, &format!("commit {i}"));
    }
    eventually(Duration::from_secs(30), "bob to have it all by gossip", || {
        let room = tail(&bob, &bob_repo, &[]);
        (room.last().is_some_and(|m| m["text"] == "message 59") && bob.feed(&bob_repo).len() == 10).then_some(())
    });
    eventually(Duration::from_secs(30), "alice's outbox to empty", || (alice.status()["outbox"] == 0).then_some(()));
    bob.ok(&["daemon", "stop"]);
    bob.start();
    let status = eventually(Duration::from_secs(30), "bob and alice to sync", || {
        let status = sync_status(&bob);
        status["repos"][0]["last_sync"].as_u64().map(|_| status)
    });
    let bytes = status["bytes_sent"].as_u64().expect("counted") + status["bytes_received"].as_u64().expect("counted");
    assert!(bytes > 0 && bytes <= 1024, "71 items each, in sync: {bytes} bytes both ways ({status})");
    assert_eq!(status["items"], 0, "nothing new");
    eprintln!("two nodes in sync: {bytes} bytes of sync both ways");
}
