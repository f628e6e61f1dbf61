//! Chat rooms headless (`--send`, `--tail`): delivery between nodes, threads per commit, bounds,
//! and a message sent while the only other peer is down.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

fn tail(node: &Node, repo: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["chat", "--tail", "--json"];
    args.extend_from_slice(extra);
    node.ok_in(repo, &args).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

fn wait_for_text(node: &Node, repo: &Path, extra: &[&str], text: &str) -> Value {
    eventually(Duration::from_secs(30), &format!("{text:?} in {}'s room", node.name), || {
        tail(node, repo, extra).into_iter().find(|m| m["text"] == text)
    })
}

#[test]
fn a_message_sent_by_alice_reaches_bobs_room() {
    let Pair { alice, bob, alice_repo, bob_repo } = pair();
    // Wait until the room has a peer, so the message goes out at once.
    let sent = eventually(Duration::from_secs(20), "bob in alice's room", || {
        let out = alice.ok_in(&alice_repo, &["chat", "--send", "warm-up"]);
        out.starts_with("sent to").then_some(out)
    });
    assert_eq!(sent.trim(), "sent to 1 peer");
    alice.ok_in(&alice_repo, &["chat", "--send", "hello bob, ça va? 世界"]);
    let m = wait_for_text(&bob, &bob_repo, &[], "hello bob, ça va? 世界");
    assert_eq!(m["name"], "alice");
    assert_eq!(m["own"], false);
    assert_eq!(m["peer"], alice.peer_id().as_str());
    let mine = tail(&alice, &alice_repo, &[]);
    assert!(mine.iter().any(|m| m["text"] == "hello bob, ça va? 世界" && m["own"] == true), "own history");
    let human = bob.ok_in(&bob_repo, &["chat", "--tail"]);
    assert!(human.contains("alice") && human.contains("hello bob"), "{human}");
}

#[test]
fn a_commits_thread_is_its_own_room() {
    let Pair { alice, bob, alice_repo, bob_repo } = pair();
    bob.ok_in(&bob_repo, &["chat", "--tail", "--commit"]);
    eventually(Duration::from_secs(20), "bob in the thread", || {
        alice
            .ok_in(&alice_repo, &["chat", "--commit", "HEAD", "--send", "about this commit"])
            .starts_with("sent")
            .then_some(())
    });
    wait_for_text(&bob, &bob_repo, &["--commit", "HEAD"], "about this commit");
    let head = bob.git(&bob_repo, &["rev-parse", "HEAD"]).trim().to_string();
    let room = tail(&bob, &bob_repo, &[]);
    let told: Vec<&Value> = room.iter().filter(|m| m["text"] == "about this commit").collect();
    assert_eq!(told.len(), 1, "the main room tells of it once: {room:?}");
    assert_eq!(told[0]["thread"], head.as_str(), "as the notice of a reply in the thread, not as a message");
}

#[test]
fn follow_streams_new_messages() {
    let Pair { alice, bob, alice_repo, bob_repo } = pair();
    let mut cmd = bob.command(&["chat", "--tail", "-f", "--json"]);
    cmd.current_dir(&bob_repo).stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_line = |needle: &str| loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("a line from chat --tail -f");
        if line.contains(needle) {
            break line;
        }
    };
    eventually(Duration::from_secs(20), "bob in the room", || {
        alice.ok_in(&alice_repo, &["chat", "--send", "first"]).starts_with("sent").then_some(())
    });
    wait_line("\"first\"");
    alice.ok_in(&alice_repo, &["chat", "--send", "second, streamed"]);
    wait_line("second, streamed");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_message_sent_while_the_only_peer_is_down_arrives_when_it_returns() {
    let Pair { alice, bob, alice_repo, bob_repo } = pair();
    eventually(Duration::from_secs(20), "bob in the room", || {
        alice.ok_in(&alice_repo, &["chat", "--send", "before"]).starts_with("sent").then_some(())
    });
    bob.ok(&["daemon", "stop"]);
    eventually(Duration::from_secs(20), "alice to notice bob left", || alice.peers().is_empty().then_some(()));
    let out = alice.ok_in(&alice_repo, &["chat", "--send", "while you were away"]);
    assert!(out.starts_with("queued"), "{out}");
    bob.start();
    wait_for_text(&bob, &bob_repo, &[], "while you were away");
}

#[test]
fn bad_messages_are_refused_with_one_line() {
    let alice = Node::new("alice");
    let repo = alice.repo("proj", 1);
    let long = "x".repeat(4001);
    assert_one_line_error(&alice.run_in(&repo, &["chat", "--send", &long]), 1, "message too long (4001 characters");
    assert_one_line_error(&alice.run_in(&repo, &["chat", "--send", "\u{1b}[2Jgotcha"]), 1, "control characters");
    assert_one_line_error(&alice.run_in(&repo, &["chat", "--send", "   "]), 1, "empty message");
    assert_one_line_error(&alice.run_in(&alice.path("home"), &["chat", "--tail"]), 1, "not a git repository");
    assert_one_line_error(&alice.run_in(&repo, &["chat"]), 1, "needs a terminal");
    assert!(alice.pid().is_none(), "refused before the node was needed");
}
