//! The DHT key-value store across a loopback network of real daemons: set on one node, get on
//! another; two authors; tombstones; persistence across kill -9; late joiners; bad input.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// `n` nodes, all bootstrapping to the first, each with a clone of the first one's repository.
fn network(n: usize) -> (Vec<Node>, Vec<PathBuf>) {
    let names = ["n1", "n2", "n3", "n4", "n5", "n6", "n7"];
    let nodes: Vec<Node> = names[..n].iter().map(|name| Node::new(name)).collect();
    nodes[0].start();
    let boot = nodes[0].tcp_addr();
    let origin = nodes[0].repo("proj", 1);
    let mut repos = vec![origin.clone()];
    for node in &nodes[1..] {
        node.config(&["p2p.bootstrap", &boot]);
        node.git(&node.path("home"), &["clone", "-q", origin.to_str().unwrap(), "proj"]);
        repos.push(node.path("home/proj"));
        node.start();
    }
    for (node, repo) in nodes.iter().zip(&repos) {
        node.ok_in(repo, &["init"]);
    }
    (nodes, repos)
}

fn get(node: &Node, repo: &std::path::Path, key: &str) -> Vec<Value> {
    let out = node.run_in(repo, &["kv", "get", key, "--json"]);
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn wait_values(node: &Node, repo: &std::path::Path, key: &str, expected: &[&str]) -> Vec<Value> {
    eventually(Duration::from_secs(40), &format!("{key} = {expected:?} on {}", node.name), || {
        let values = get(node, repo, key);
        let mut got: Vec<&str> = values.iter().filter_map(|v| v["value"].as_str()).collect();
        got.sort();
        let mut want = expected.to_vec();
        want.sort();
        (got == want).then_some(values.clone())
    })
}

/// Sets until a peer took it (right after start the routing tables may still be empty).
fn set(node: &Node, repo: &std::path::Path, key: &str, value: &str) {
    eventually(Duration::from_secs(30), &format!("{} to store {key} on a peer", node.name), || {
        let out = node.ok_in(repo, &["kv", "set", key, value]);
        out.contains("(in the DHT)").then_some(())
    });
}

#[test]
fn records_travel_merge_and_survive() {
    let (nodes, repos) = network(6);
    let (n1, n6) = (&nodes[0], &nodes[5]);
    set(n1, &repos[0], "refs/heads/main", "abc123");
    let values = wait_values(n6, &repos[5], "refs/heads/main", &["abc123"]);
    assert_eq!(values[0]["author"], n1.peer_id().as_str());
    assert_eq!(values[0]["name"], "n1", "the author's name travels, signed, with the entry");
    let npub = n1.json(&["id", "--json"])["npub"].as_str().unwrap().to_string();
    assert_eq!(values[0]["npub"], npub.as_str());

    // A second author, same key: both values are kept, one per author.
    set(&nodes[2], &repos[2], "refs/heads/main", "def456");
    wait_values(n6, &repos[5], "refs/heads/main", &["abc123", "def456"]);
    let by_npub = n6.ok_in(&repos[5], &["kv", "get", "refs/heads/main", "--author", &npub]);
    assert!(by_npub.contains("abc123") && !by_npub.contains("def456") && by_npub.contains("n1 (.."), "{by_npub}");

    // rm: n1's tombstone hides n1's value, n3's stays.
    let out = n1.ok_in(&repos[0], &["kv", "rm", "refs/heads/main"]);
    assert!(out.starts_with("removed"), "{out}");
    wait_values(n6, &repos[5], "refs/heads/main", &["def456"]);

    // kv ls: what n1 wrote.
    let ls = n1.ok_in(&repos[0], &["kv", "ls", "--json"]);
    assert!(ls.contains("\"refs/heads/main\""), "{ls}");

    // The value survives kill -9 and a restart of the node that published it.
    set(n1, &repos[0], "notes/abc", "a note");
    n1.kill9();
    n1.start();
    wait_values(n1, &repos[0], "notes/abc", &["a note"]);

    // A node that joins later reads what was published before.
    let late = Node::new("n7");
    late.config(&["p2p.bootstrap", &nodes[1].tcp_addr()]);
    late.git(&late.path("home"), &["clone", "-q", repos[0].to_str().unwrap(), "proj"]);
    let late_repo = late.path("home/proj");
    late.start();
    wait_values(&late, &late_repo, "notes/abc", &["a note"]);
    let human = late.ok_in(&late_repo, &["kv", "get", "notes/abc"]);
    assert!(human.contains("a note") && human.contains(".."), "{human}");
}

#[test]
fn bad_kv_input_is_a_one_line_error() {
    let alice = Node::new("alice");
    let repo = alice.repo("proj", 1);
    assert_one_line_error(&alice.run_in(&repo, &["kv", "set", "", "v"]), 1, "empty key");
    assert_one_line_error(&alice.run_in(&repo, &["kv", "set", "a\u{1b}b", "v"]), 1, "control characters");
    let big = "x".repeat(8 * 1024 + 1);
    assert_one_line_error(&alice.run_in(&repo, &["kv", "set", "k", &big]), 1, "value too large (8193 bytes");
    assert_one_line_error(&alice.run_in(&alice.path("home"), &["kv", "get", "k"]), 1, "not a git repository");
    assert_one_line_error(&alice.run_in(&repo, &["kv", "get", "nothing-here"]), 1, "no value of \"nothing-here\"");
    alice.ok_in(&repo, &["kv", "set", "k", "v"]);
    let stranger = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
    assert_one_line_error(&alice.run_in(&repo, &["kv", "get", "k", "--author", stranger]), 1, "no value of \"k\" from");
    let mut cmd = alice.command(&["kv", "get", "k"]);
    cmd.current_dir(&repo).env("GIT_P2P_NO_AUTOSTART", "1");
    alice.ok(&["daemon", "stop"]);
    assert_one_line_error(&cmd.output().unwrap(), 1, "the node is not running");
}

#[test]
fn commits_publish_refs_and_refs_publish_adds_tags() {
    let (nodes, repos) = network(2);
    let (alice, bob) = (&nodes[0], &nodes[1]);
    // The hook announces the commit and the node puts alice's branch into the DHT.
    eventually(Duration::from_secs(30), "bob in the DHT", || (!alice.peers().is_empty()).then_some(()));
    alice.git(&repos[0], &["commit", "-q", "--allow-empty", "-m", "on main"]);
    let head = alice.git(&repos[0], &["rev-parse", "HEAD"]).trim().to_string();
    let alice_id = alice.peer_id();
    let refs = |node: &Node, repo: &std::path::Path| -> Vec<Value> {
        let out = node.run_in(repo, &["refs", "--json"]);
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    };
    eventually(Duration::from_secs(40), "alice's main in bob's view of the refs", || {
        refs(bob, &repos[1])
            .iter()
            .any(|r| r["ref"] == "refs/heads/main" && r["oid"] == head.as_str() && r["author"] == alice_id.as_str())
            .then_some(())
    });
    wait_values(bob, &repos[1], "refs/heads/main", &[&head]);

    alice.git(&repos[0], &["tag", "v1.0"]);
    let out = alice.ok_in(&repos[0], &["refs", "publish"]);
    assert!(out.starts_with("published 2 refs"), "{out}");
    eventually(Duration::from_secs(40), "the tag in bob's view", || {
        refs(bob, &repos[1]).iter().any(|r| r["ref"] == "refs/tags/v1.0" && r["oid"] == head.as_str()).then_some(())
    });
    let table = bob.ok_in(&repos[1], &["refs", "--author", &alice_id]);
    assert!(table.contains(&format!("{head}\trefs/heads/main\t{alice_id}")), "{table}");
    assert_one_line_error(&bob.run_in(&repos[1], &["refs", "--author", "me"]), 1, "no refs published by me");

    // A fast-forward makes no commit (nothing announced), but alice's main moved: the DHT learns.
    alice.git(&repos[0], &["checkout", "-q", "-b", "ahead"]);
    alice.git(&repos[0], &["commit", "-q", "--allow-empty", "-m", "ahead"]);
    let ahead = alice.git(&repos[0], &["rev-parse", "HEAD"]).trim().to_string();
    alice.git(&repos[0], &["checkout", "-q", "main"]);
    alice.git(&repos[0], &["merge", "-q", "--ff-only", "ahead"]);
    eventually(Duration::from_secs(40), "alice's fast-forwarded main in bob's view", || {
        refs(bob, &repos[1]).iter().any(|r| r["ref"] == "refs/heads/main" && r["oid"] == ahead.as_str()).then_some(())
    });

    // Alice's refs entry, written by hand with names git would refuse and a non-id: bob shows
    // the one valid ref only (no escape sequence reaches his terminal).
    let forged = serde_json::json!({
        "refs/heads/ok": head,
        "refs/heads/evil\u{1b}]0;pwned\u{7}": head,
        "refs/heads/a..b": head,
        "refs/heads/not-an-id": "HEAD~1",
    });
    set(alice, &repos[0], "refs", &forged.to_string());
    let table = eventually(Duration::from_secs(40), "the hand-written entry in bob's view", || {
        let table = bob.ok_in(&repos[1], &["refs", "--author", &alice_id]);
        table.contains("refs/heads/ok").then_some(table)
    });
    assert_eq!(table.lines().count(), 1, "{table:?}");
    assert!(!table.contains('\u{1b}'));
}

#[test]
fn notes_pushed_by_alice_are_pulled_into_bobs_p2p_notes_ref() {
    let (nodes, repos) = network(2);
    let (alice, bob) = (&nodes[0], &nodes[1]);
    let head = alice.git(&repos[0], &["rev-parse", "HEAD"]).trim().to_string();
    alice.git(&repos[0], &["notes", "add", "-m", "reviewed by alice: LGTM", "HEAD"]);
    bob.git(&repos[1], &["notes", "add", "-m", "bob's own note", "HEAD"]);
    eventually(Duration::from_secs(30), "alice's notes in the DHT", || {
        alice.ok_in(&repos[0], &["notes", "push"]).starts_with("pushed 1 note").then_some(())?;
        let peers_have_it = !get(bob, &repos[1], &format!("notes/commits/{head}")).is_empty();
        peers_have_it.then_some(())
    });
    let alice_id = alice.peer_id();
    let short = &alice_id[alice_id.len() - 12..];
    eventually(Duration::from_secs(30), "bob to pull alice's note", || {
        bob.ok_in(&repos[1], &["notes", "pull"]).starts_with("pulled 1 note").then_some(())
    });
    let note = bob.git(&repos[1], &["notes", "--ref", &format!("p2p/{short}"), "show", &head]);
    assert_eq!(note.trim(), "reviewed by alice: LGTM");
    let own = bob.git(&repos[1], &["notes", "show", &head]);
    assert_eq!(own.trim(), "bob's own note", "the user's own notes are never touched");
    let log = bob.git(&repos[1], &["log", "-1", &format!("--notes=p2p/{short}")]);
    assert!(log.contains("reviewed by alice"), "{log}");
}
