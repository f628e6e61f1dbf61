//! `git p2p log` filters through the real binary: by author (PeerId, short form, npub), branch
//! and time, with `-n` counting what matches however many others came since, and with `-f`
//! streaming only what matches.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use git_p2p::proto::announce::{Commit, FeedEntry};
use git_p2p::proto::repo::RepoId;
use serde_json::Value;

use crate::support::*;

const XAVIER: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
const YVONNE: &str = "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X";

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis() as u64
}

fn lines(out: &str) -> Vec<Value> {
    out.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

/// Xavier's 25 announcements on `feature`, ten days old, then 3000 of Yvonne's and four other
/// peers' on main (600 each: one author keeps at most 1000 in a feed), an hour old, written
/// into alice's store while her node is down.
fn fill_feed(alice: &Node, repo: &RepoId) {
    alice.ok(&["daemon", "stop"]);
    // The node's last threads may hold the store a moment after its lock was released.
    let store = eventually(Duration::from_secs(10), "the stopped node's store", || {
        git_p2p::store::Store::open(&alice.data_dir().join("store.redb")).ok()
    });
    let day = 86_400_000;
    let entry = |i: usize, peer: &str, branch: &str, at: u64| FeedEntry {
        repo: repo.clone(),
        peer: peer.into(),
        name: Some(if peer == XAVIER { "xavier" } else { "yvonne and co" }.into()),
        commit: Commit {
            id: format!("{i:040x}"),
            parents: Vec::new(),
            author: "someone".into(),
            summary: format!("commit {i}"),
            time: (at / 1000) as i64,
            ref_name: Some(format!("refs/heads/{branch}")),
        },
        announced_at: at,
        received_at: at,
    };
    let now = now_ms();
    for i in 0..25 {
        assert!(store.feed_insert(&entry(i, XAVIER, "feature", now - 10 * day + i as u64)).expect("insert"));
    }
    let others: Vec<String> =
        std::iter::once(YVONNE.to_string()).chain((0..4).map(|_| libp2p::PeerId::random().to_string())).collect();
    // In one transaction: one each takes a debug build seconds.
    let rest: Vec<FeedEntry> =
        (25..3025).map(|i| entry(i, &others[i % others.len()], "main", now - 3_600_000 + i as u64)).collect();
    assert!(store.feed_insert_all(&rest).expect("insert").iter().all(|&new| new));
    store.sync().expect("sync");
}

#[test]
fn filters_find_what_matches_however_many_others_came_since() {
    let alice = Node::new("alice");
    let repo_dir = alice.repo("proj", 1);
    alice.ok_in(&repo_dir, &["init"]);
    let root = alice.git(&repo_dir, &["rev-list", "--max-parents=0", "HEAD"]);
    fill_feed(&alice, &RepoId::try_from(root.trim()).expect("an id"));
    let log = |args: &[&str]| lines(&alice.ok_in(&repo_dir, &[&["log", "--json"], args].concat()));
    let short = &XAVIER[XAVIER.len() - 12..];

    for author in [XAVIER, short, &format!("..{short}")] {
        let got = log(&["-n", "20", "--author", author]);
        assert_eq!(got.len(), 20, "{author}: 20 of xavier's, past 3000 of the others'");
        assert!(got.iter().all(|e| e["peer"] == XAVIER));
        assert_eq!(got[0]["summary"], "commit 24", "newest first");
    }
    assert_eq!(log(&["--author", XAVIER, "-n", "100"]).len(), 25, "all of them, no more");
    assert_eq!(log(&["--branch", "feature", "-n", "100"]).len(), 25);
    assert_eq!(log(&["--branch", "refs/heads/feature", "-n", "3"]).len(), 3);
    assert_eq!(log(&["--branch", "main", "--author", XAVIER]).len(), 0, "both must match");
    for since in ["2.days", "2 days ago", "yesterday", "3.hours.ago"] {
        let got = log(&["--since", since, "-n", "5000"]);
        assert_eq!(got.len(), 3000, "--since {since}: the others', an hour old");
    }
    let got = log(&["--since", "2.weeks", "--author", short, "-n", "10"]);
    assert_eq!(got.len(), 10);
    assert_eq!(log(&["--since", "now"]).len(), 0);
    let human = alice.ok_in(&repo_dir, &["log", "--author", short, "--since", "now"]);
    assert!(human.starts_with("no commits announced by peers in proj match"), "{human}");

    let out = alice.run_in(&repo_dir, &["log", "--since", "last blue moon"]);
    assert_one_line_error(&out, 2, "cannot read \"last blue moon\" as a time");
    assert_one_line_error(&alice.run_in(&repo_dir, &["log", "--author", "bob"]), 1, "not a PeerId");
    assert_one_line_error(&alice.run_in(&repo_dir, &["log", "--branch", "a..b"]), 1, "not a branch name");
}

#[test]
fn an_npub_names_a_peer_and_followed_announcements_are_filtered_too() {
    let Pair { alice, bob, alice_repo, bob_repo } = pair();
    let commit = |node: &Node, repo: &Path, message: &str| {
        node.git(repo, &["commit", "-q", "--allow-empty", "-m", message]);
        node.git(repo, &["rev-parse", "HEAD"]).trim().to_string()
    };
    let first = commit(&bob, &bob_repo, "first");
    let bob_npub = bob.json(&["id", "--json"])["npub"].as_str().expect("an npub").to_string();
    // Bob's refs entry, which names his npub, reaches alice with his commit.
    eventually(Duration::from_secs(40), "bob's commit and refs at alice", || {
        let out = alice.run_in(&alice_repo, &["refs", "--author", &bob_npub]);
        out.status.success().then_some(())
    });
    let history = lines(&alice.ok_in(&alice_repo, &["log", "--json", "--author", &bob_npub]));
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["commit"], first.as_str());
    let stranger = "npub1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqzzzzzz";
    assert_one_line_error(&alice.run_in(&alice_repo, &["log", "--author", stranger]), 1, "no peer of this repository");

    let mut follower = alice.command(&["log", "-f", "--json", "--branch", "main", "--author", &bob_npub]);
    follower.current_dir(&alice_repo).stdout(std::process::Stdio::piped());
    let mut child = follower.spawn().expect("log -f");
    let stdout = child.stdout.take().expect("a pipe");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = || rx.recv_timeout(Duration::from_secs(40)).expect("a line from log -f");
    assert!(next().contains(&first), "the history first");
    // Bob's commits go out in order: one on another branch, then one on main.
    bob.git(&bob_repo, &["checkout", "-q", "-b", "side"]);
    let side = commit(&bob, &bob_repo, "on side");
    bob.git(&bob_repo, &["checkout", "-q", "main"]);
    let main = commit(&bob, &bob_repo, "on main");
    let line = next();
    assert!(line.contains(&main), "the next line is the commit on main, not {side}: {line}");
    let _ = child.kill();
    let _ = child.wait();
    // Both did reach alice: the follower left one out.
    let all = lines(&alice.ok_in(&alice_repo, &["log", "--json"]));
    assert!(all.iter().any(|e| e["commit"] == side.as_str()), "{all:?}");
}
