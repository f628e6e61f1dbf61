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
    set(n1, &repos[0], "review/main", "abc123");
    let values = wait_values(n6, &repos[5], "review/main", &["abc123"]);
    assert_eq!(values[0]["author"], n1.peer_id().as_str());
    assert_eq!(values[0]["name"], "n1", "the author's name travels, signed, with the entry");
    let npub = n1.json(&["id", "--json"])["npub"].as_str().unwrap().to_string();
    assert_eq!(values[0]["npub"], npub.as_str());

    // A second author, same key: both values are kept, one per author.
    set(&nodes[2], &repos[2], "review/main", "def456");
    wait_values(n6, &repos[5], "review/main", &["abc123", "def456"]);
    let by_npub = n6.ok_in(&repos[5], &["kv", "get", "review/main", "--author", &npub]);
    assert!(by_npub.contains("abc123") && !by_npub.contains("def456") && by_npub.contains("n1 (.."), "{by_npub}");

    // rm: n1's tombstone hides n1's value, n3's stays.
    let out = n1.ok_in(&repos[0], &["kv", "rm", "review/main"]);
    assert!(out.starts_with("removed"), "{out}");
    wait_values(n6, &repos[5], "review/main", &["def456"]);

    // kv ls --all: what n1 wrote, the removed key marked.
    let ls = n1.ok_in(&repos[0], &["kv", "ls", "--json", "--all"]);
    assert!(ls.contains("\"review/main\""), "{ls}");

    // The value survives kill -9 and a restart of the node that published it.
    set(n1, &repos[0], "todo/abc", "a note");
    n1.kill9();
    n1.start();
    wait_values(n1, &repos[0], "todo/abc", &["a note"]);

    // A node that joins later reads what was published before.
    let late = Node::new("n7");
    late.config(&["p2p.bootstrap", &nodes[1].tcp_addr()]);
    late.git(&late.path("home"), &["clone", "-q", repos[0].to_str().unwrap(), "proj"]);
    let late_repo = late.path("home/proj");
    late.start();
    wait_values(&late, &late_repo, "todo/abc", &["a note"]);
    let human = late.ok_in(&late_repo, &["kv", "get", "todo/abc"]);
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

/// One request written on the control socket as any client could, and the node's answer.
fn raw_request(node: &Node, req: git_p2p::control::proto::Request) -> Result<Value, String> {
    use git_p2p::control::proto::{self, RequestFrame};
    use std::io::{BufRead, Write};
    let mut socket =
        std::os::unix::net::UnixStream::connect(node.path("run/git-p2p/control.sock")).expect("the socket");
    socket.write_all(&proto::encode(&RequestFrame::new(1, req))).expect("a request");
    let mut line = String::new();
    std::io::BufReader::new(socket).read_line(&mut line).expect("an answer");
    let frame = proto::decode_response(line.trim_end().as_bytes()).expect("a response frame");
    frame.answer::<Value>().expect("decodes")
}

#[test]
fn git_p2ps_own_keys_are_refused_and_kv_shows_and_removes_only_what_is_yours() {
    let alice = Node::new("alice");
    let repo = alice.repo("proj", 1);
    alice.ok_in(&repo, &["init"]);
    alice.git(&repo, &["commit", "-q", "--allow-empty", "-m", "second"]);
    let head = alice.git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    let published = alice.ok_in(&repo, &["refs", "publish"]);
    assert!(published.starts_with("published 1 ref"), "{published}");

    // Through the CLI: one line naming the command that manages the key, exit 1.
    for (args, command) in [
        (&["kv", "set", "refs", "garbage"][..], "git p2p refs publish"),
        (&["kv", "set", "refs/heads/main", "0000"], "git p2p refs publish"),
        (&["kv", "rm", "refs"], "git p2p refs publish"),
        (&["kv", "rm", "refs/tags/v1"], "git p2p refs publish"),
        (&["kv", "set", "notes/commits", "[]"], "git p2p notes push"),
        (&["kv", "rm", &format!("notes/commits/{head}")], "git p2p notes push"),
    ] {
        assert_one_line_error(&alice.run_in(&repo, args), 1, command);
    }
    // Through the control socket, as any client: the node itself refuses.
    let root = alice.git(&repo, &["rev-list", "--max-parents=0", "HEAD"]).trim().to_string();
    let info = git_p2p::proto::repo::RepoInfo {
        id: git_p2p::proto::repo::RepoId::try_from(root.as_str()).expect("an id"),
        name: "proj".into(),
        git_dir: None,
    };
    for (key, value) in [("refs", Some(hex::encode("garbage"))), ("refs/heads/main", None)] {
        let req = git_p2p::control::proto::Request::KvPut { repo: info.clone(), key: key.into(), value, name: None };
        let refused = raw_request(&alice, req).expect_err("refused by the node");
        assert!(refused.contains("reserved") && refused.contains("git p2p refs publish"), "{refused}");
    }
    // The published refs are intact.
    let refs = alice.ok_in(&repo, &["refs", "--author", "me"]);
    assert_eq!(refs.lines().collect::<Vec<_>>(), [format!("{head}\trefs/heads/main\t{}", alice.peer_id())]);

    // rm of a key with no value of yours: exit 1, "no such key".
    assert_one_line_error(&alice.run_in(&repo, &["kv", "rm", "nosuchkey"]), 1, "no such key");
    alice.ok_in(&repo, &["kv", "set", "status", "green"]);
    alice.ok_in(&repo, &["kv", "set", "old", "soon gone"]);
    let removed = alice.ok_in(&repo, &["kv", "rm", "old"]);
    assert!(removed.starts_with("removed old"), "{removed}");
    assert_one_line_error(&alice.run_in(&repo, &["kv", "rm", "old"]), 1, "no such key");

    // ls: only the keys that hold a value of yours; --all marks the rest.
    let ls = alice.ok_in(&repo, &["kv", "ls"]);
    let keys: Vec<&str> = ls.lines().filter_map(|l| l.rsplit("  ").next()).collect();
    assert_eq!(keys, ["status"], "{ls}");
    let all = alice.ok_in(&repo, &["kv", "ls", "--all", "--json"]);
    let all: Vec<Value> = all.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    let marked =
        |key: &str| all.iter().find(|k| k["key"] == key).map(|k| (k["removed"].clone(), k["internal"].clone()));
    assert_eq!(marked("old"), Some((true.into(), false.into())));
    assert_eq!(marked("status"), Some((false.into(), false.into())));
    assert_eq!(marked("refs"), Some((false.into(), true.into())));
    assert_eq!(marked("refs/heads/main"), Some((false.into(), true.into())));
    let human = alice.ok_in(&repo, &["kv", "ls", "--all"]);
    assert!(human.lines().any(|l| l.ends_with("old  (removed)")), "{human}");
    assert!(human.lines().any(|l| l.ends_with("refs  (git p2p refs publish)")), "{human}");
}

/// The refs `node` published in `repo` (`refs --author me`): ref → object id.
fn own_refs(node: &Node, repo: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let out = node.run_in(repo, &["refs", "--author", "me", "--json"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|r| Some((r["ref"].as_str()?.to_string(), r["oid"].as_str()?.to_string())))
        .collect()
}

#[test]
fn a_deleted_branch_is_unpublished_by_refs_publish_and_by_the_next_commit() {
    let alice = Node::new("alice");
    let repo = alice.repo("proj", 1);
    alice.ok_in(&repo, &["init"]);
    let mine = |alice: &Node| -> Vec<String> { own_refs(alice, &repo).into_keys().collect() };
    alice.git(&repo, &["branch", "topic"]);
    alice.git(&repo, &["tag", "v1"]);
    alice.ok_in(&repo, &["refs", "publish"]);
    assert_eq!(mine(&alice), ["refs/heads/main", "refs/heads/topic", "refs/tags/v1"]);
    alice.git(&repo, &["branch", "-D", "topic"]);
    alice.git(&repo, &["tag", "-d", "v1"]);
    let out = alice.ok_in(&repo, &["refs", "publish"]);
    assert!(out.contains("unpublished 2 gone since: refs/heads/topic, refs/tags/v1"), "{out}");
    assert_eq!(mine(&alice), ["refs/heads/main"]);
    assert_one_line_error(&alice.run_in(&repo, &["kv", "get", "refs/heads/topic"]), 1, "no value");

    // The hook publishes a branch a commit is made on; deleted, it goes with the next commit.
    alice.git(&repo, &["checkout", "-q", "-b", "feature"]);
    alice.git(&repo, &["commit", "-q", "--allow-empty", "-m", "on feature"]);
    eventually(Duration::from_secs(20), "feature published by the hook", || {
        mine(&alice).contains(&"refs/heads/feature".to_string()).then_some(())
    });
    alice.git(&repo, &["checkout", "-q", "main"]);
    alice.git(&repo, &["branch", "-D", "feature"]);
    alice.git(&repo, &["commit", "-q", "--allow-empty", "-m", "on main"]);
    eventually(Duration::from_secs(20), "feature unpublished after the next commit", || {
        (mine(&alice) == ["refs/heads/main"]).then_some(())
    });
    assert_one_line_error(&alice.run_in(&repo, &["kv", "get", "refs/heads/feature"]), 1, "no value");
}

#[test]
fn a_branch_whose_put_had_not_settled_when_the_node_was_killed_is_put_at_its_next_start() {
    let alice = Node::new("alice");
    let repo = alice.repo("proj", 1);
    alice.ok_in(&repo, &["init"]);
    let main = |alice: &Node| own_refs(alice, &repo).remove("refs/heads/main");
    let first = alice.commit(&repo, "first");
    eventually(Duration::from_secs(20), "main published", || (main(&alice) == Some(first.clone())).then_some(()));
    // The node takes the next commit (no peer: both wait in its outbox) and waits for the
    // branch to settle; killed meanwhile.
    let second = alice.commit(&repo, "second");
    eventually(Duration::from_secs(10), "the commit taken", || (alice.status()["outbox"] == 2).then_some(()));
    alice.kill9();
    // The next command starts the node again; it finds main moved since its last put.
    eventually(Duration::from_secs(20), "main at the second commit", || {
        (main(&alice) == Some(second.clone())).then_some(())
    });
}
