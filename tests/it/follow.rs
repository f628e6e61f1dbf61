//! Followers across restarts of their node: `log -f` and `chat --tail -f` keep printing through
//! `daemon stop` / `daemon start` and through kill -9 and a restart. What a peer announced or
//! said while our node was down reaches it afterwards through the peer's outbox, and the
//! follower prints everything once, in order: before, during the gap, after.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

fn commit(node: &Node, repo: &Path, message: &str) -> String {
    node.git(repo, &["commit", "-q", "--allow-empty", "-m", message]);
    node.git(repo, &["rev-parse", "HEAD"]).trim().to_string()
}

/// Asserts that `field` of the JSON lines printed, among the `expected` values, lists each of
/// them exactly once, in this order.
fn assert_once_in_order(lines: &[String], field: &str, expected: &[String]) {
    let printed: Vec<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("a JSON line: {e}: {l}")))
        .filter_map(|v| v[field].as_str().map(str::to_string))
        .filter(|v| expected.contains(v))
        .collect();
    assert_eq!(printed, expected, "each printed once, in order; all lines: {lines:#?}");
}

/// How a node is taken down for a while.
#[derive(Clone, Copy, Debug)]
enum Down {
    Stop,
    Kill9,
}

/// Takes bob's node down, waits until alice noticed (so that what she makes meanwhile waits in
/// her outbox), runs `meanwhile`, and starts bob's node again.
fn bob_away(pair: &Pair, down: Down, meanwhile: impl FnOnce()) {
    match down {
        Down::Stop => {
            pair.bob.ok(&["daemon", "stop"]);
        }
        Down::Kill9 => pair.bob.kill9(),
    }
    eventually(Duration::from_secs(20), "alice to notice that bob is gone", || {
        pair.alice.peers().is_empty().then_some(())
    });
    meanwhile();
    pair.bob.start();
}

#[test]
fn log_follow_prints_every_commit_once_across_stop_start_and_kill9() {
    let pair = pair();
    let Pair { alice, bob, alice_repo, bob_repo } = &pair;
    let mut follower = Running::spawn(bob, bob_repo, &["log", "-f", "--json"], &[]);
    let mut commits = vec![commit(alice, alice_repo, "before the restarts")];
    follower.wait_for(&[&commits[0]], "the first commit");
    for down in [Down::Stop, Down::Kill9] {
        bob_away(&pair, down, || {
            commits.push(commit(alice, alice_repo, &format!("while bob is down ({down:?}) 1")));
            commits.push(commit(alice, alice_repo, &format!("while bob is down ({down:?}) 2")));
        });
        commits.push(commit(alice, alice_repo, &format!("after the restart ({down:?})")));
        let all: Vec<&str> = commits.iter().map(String::as_str).collect();
        follower.wait_for(&all, &format!("every commit after {down:?}"));
    }
    assert!(follower.child.try_wait().expect("try_wait").is_none(), "the follower still runs");
    assert_once_in_order(&follower.lines, "commit", &commits);
    let resumed = |said: &[String]| said.iter().filter(|l| l.as_str() == "git-p2p: node restarted; resumed").count();
    let said = follower.stderr_once("both restarts told", |said| resumed(said) >= 2);
    assert_eq!(resumed(&said), 2, "one line per restart on stderr: {said:#?}");
}

#[test]
fn chat_tail_follow_prints_every_message_once_across_stop_start_and_kill9() {
    let pair = pair();
    let Pair { alice, bob, alice_repo, bob_repo } = &pair;
    let mut follower = Running::spawn(bob, bob_repo, &["chat", "--tail", "-f", "--json"], &[]);
    eventually(Duration::from_secs(20), "bob in alice's room", || {
        alice.ok_in(alice_repo, &["chat", "--send", "before the restarts"]).starts_with("sent").then_some(())
    });
    let mut texts = vec!["before the restarts".to_string()];
    follower.wait_for(&["before the restarts"], "the first message");
    let send = |text: &str| {
        alice.ok_in(alice_repo, &["chat", "--send", text]);
        text.to_string()
    };
    for down in [Down::Stop, Down::Kill9] {
        bob_away(&pair, down, || {
            texts.push(send(&format!("while bob is down ({down:?}) 1")));
            texts.push(send(&format!("while bob is down ({down:?}) 2")));
        });
        texts.push(send(&format!("after the restart ({down:?})")));
        let all: Vec<&str> = texts.iter().map(String::as_str).collect();
        follower.wait_for(&all, &format!("every message after {down:?}"));
    }
    assert!(follower.child.try_wait().expect("try_wait").is_none(), "the follower still runs");
    assert_once_in_order(&follower.lines, "text", &texts);
    let said =
        follower.stderr_once("a restart told", |said| said.iter().any(|l| l == "git-p2p: node restarted; resumed"));
    assert!(said.iter().any(|l| l == "git-p2p: node restarted; resumed"), "{said:#?}");
}

#[test]
fn a_follower_gives_up_on_a_node_stopped_for_good_and_never_starts_one() {
    let alice = Node::new("alice");
    let repo = alice.repo("proj", 1);
    alice.ok_in(&repo, &["init"]);
    // A message in the room's history: once it is printed, the follower is subscribed.
    alice.ok_in(&repo, &["chat", "--send", "anyone?"]);
    let mut follower = Running::spawn(&alice, &repo, &["chat", "--tail", "-f"], &[("GIT_P2P_FOLLOW_WAIT", "2")]);
    follower.wait_for(&["anyone?"], "the history");
    let stopped = Instant::now();
    alice.ok(&["daemon", "stop"]);
    let status =
        eventually(Duration::from_secs(20), "the follower to give up", || follower.child.try_wait().expect("try_wait"));
    assert!(stopped.elapsed() >= Duration::from_secs(2), "it waited for the node first");
    assert_eq!(status.code(), Some(1));
    let said =
        follower.stderr_once("the follower's last word", |said| said.iter().any(|l| l.starts_with("git-p2p: error:")));
    assert_eq!(said[0], "git-p2p: lost the node; waiting up to 2 s for it to come back (Ctrl-C to stop)");
    assert_eq!(
        said.last().map(String::as_str),
        Some(
            "git-p2p: error: the node went away and did not come back within 2 s (start it with: git p2p daemon start)"
        ),
        "{said:#?}"
    );
    assert!(!said.iter().any(|l| l.contains("panicked")), "{said:#?}");
    assert!(alice.pid().is_none_or(|pid| !alive(pid)), "the follower did not start a node");

    let mut cmd = alice.command(&["chat", "--tail", "-f"]);
    cmd.current_dir(&repo).env("GIT_P2P_FOLLOW_WAIT", "soon");
    assert_one_line_error(&cmd.output().expect("run"), 1, "GIT_P2P_FOLLOW_WAIT=\"soon\": not a number of seconds");
}
