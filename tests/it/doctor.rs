//! `git p2p doctor` on real nodes: an unreachable bootstrap peer, a bootstrap address that
//! answers as another peer, and a healthy pair.

use std::process::Output;

use serde_json::Value;

use crate::support::{eventually, pair, stderr, Node};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The doctor's lines for one check.
fn lines_of<'a>(text: &'a str, check: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.get(6..).is_some_and(|rest| rest.starts_with(&format!("{check} ")))).collect()
}

#[test]
fn an_unreachable_bootstrap_peer_is_named_with_the_reason() {
    let alice = Node::new("alice");
    // A port nothing listens on (taken, then given back), and a peer id nobody has.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a port").local_addr().expect("addr").port();
    let nobody = libp2p::PeerId::random();
    let bootstrap = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{nobody}");
    alice.config(&["p2p.bootstrap", &bootstrap]);
    let repo = alice.repo("proj", 1);
    alice.ok_in(&repo, &["init"]);

    let out = alice.run_in(&repo, &["doctor"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "a failed check exits 1:\n{text}{}", stderr(&out));
    let boot = lines_of(&text, "bootstrap");
    assert_eq!(boot.len(), 1, "{text}");
    assert!(boot[0].starts_with("FAIL"), "{text}");
    assert!(boot[0].contains(&bootstrap), "{text}");
    assert!(boot[0].contains(&format!("/ip4/127.0.0.1/tcp/{port}: Connection refused")), "{text}");
    assert!(!boot[0].contains("os error"), "in words: {text}");
    assert!(text.contains("fix: check that the node there runs"), "{text}");
    assert!(lines_of(&text, "peers")[0].starts_with("FAIL"), "{text}");
    assert!(lines_of(&text, "node")[0].starts_with("ok    node        running (pid "), "{text}");
    let listening = lines_of(&text, "listening");
    assert!(listening.iter().any(|l| l.starts_with("warn") && l.contains("only on this machine")), "{text}");
    assert!(lines_of(&text, "repository")[0].starts_with("warn"), "no peer has it: {text}");

    // The same as JSON Lines.
    let out = alice.run_in(&repo, &["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let findings: Vec<Value> =
        stdout(&out).lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    let boot = findings.iter().find(|f| f["check"] == "bootstrap").expect("a bootstrap finding");
    assert_eq!(boot["verdict"], "fail");
    assert!(boot["text"].as_str().expect("text").contains("Connection refused"));
    assert!(boot["fix"].is_string());
}

#[test]
fn a_bootstrap_address_of_another_peer_is_said_so() {
    let bob = Node::new("bob");
    bob.start();
    let alice = Node::new("alice");
    let real = bob.tcp_addr();
    let (addr, _) = real.rsplit_once("/p2p/").expect("a /p2p/ address");
    let wrong = format!("{addr}/p2p/{}", libp2p::PeerId::random());
    alice.config(&["p2p.bootstrap", &wrong]);
    let out = alice.run(&["doctor"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let boot = lines_of(&text, "bootstrap");
    assert!(boot[0].starts_with("FAIL") && boot[0].contains("is another peer"), "{text}");
    assert!(boot[0].contains(&bob.peer_id()), "names who answered: {text}");
}

#[test]
fn a_healthy_pair_passes_and_compares_clocks() {
    let p = pair();
    eventually(std::time::Duration::from_secs(10), "alice and bob share the repository", || {
        p.alice.peers().iter().any(|peer| peer["repos"].as_array().is_some_and(|r| !r.is_empty())).then_some(())
    });
    // A message of bob's gives alice a reading of his clock.
    p.bob.ok_in(&p.bob_repo, &["chat", "--send", "hello"]);
    eventually(std::time::Duration::from_secs(10), "bob's message at alice", || {
        p.alice.ok_in(&p.alice_repo, &["chat", "--tail"]).contains("hello").then_some(())
    });
    let out = p.alice.run_in(&p.alice_repo, &["doctor"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(lines_of(&text, "bootstrap")[0].starts_with("ok") && text.contains(": connected"), "{text}");
    assert!(lines_of(&text, "peers")[0].starts_with("ok    peers       1 connected (bob ("), "{text}");
    assert!(lines_of(&text, "repository")[0].contains("hooks installed, 1 connected peer(s) have it"), "{text}");
    assert!(lines_of(&text, "clock")[0].starts_with("ok    clock       within a minute of 1"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
}
