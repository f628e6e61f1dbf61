//! The command line's contract: exit codes, one-line errors, repo context errors, -C.

use std::io::Write;
use std::process::Stdio;

use crate::support::*;

#[test]
fn usage_errors_exit_2_with_one_line() {
    let alice = Node::new("alice");
    assert_one_line_error(&alice.run(&["frobnicate"]), 2, "unrecognized subcommand 'frobnicate'");
    assert_one_line_error(&alice.run(&["peers", "--bogus"]), 2, "unexpected argument '--bogus'");
    let out = alice.run(&[]);
    assert_eq!(out.status.code(), Some(2), "no command: help and usage exit");
    let out = alice.run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("git p2p"));
    assert!(alice.pid().is_none(), "no command above needed or started the node");
}

#[test]
fn repo_context_errors_are_clear() {
    let alice = Node::new("alice");
    let not_repo = alice.path("home");
    assert_one_line_error(
        &alice.run_in(&not_repo, &["init"]),
        1,
        "not a git repository (run inside a repo or pass -C DIR)",
    );

    let empty = alice.path("home/empty");
    alice.git(&alice.path("home"), &["init", "-q", "empty"]);
    assert_one_line_error(&alice.run_in(&empty, &["init"]), 1, "no commit yet");

    let repo = alice.repo("proj", 1);
    alice.git(&alice.path("home"), &["clone", "-q", "--bare", repo.to_str().unwrap(), "bare.git"]);
    assert_one_line_error(&alice.run_in(&alice.path("home/bare.git"), &["init"]), 1, "bare repository");
    assert!(alice.pid().is_none(), "errors in the repo are found before the node is started");
}

#[test]
fn dash_c_runs_in_another_directory_and_detached_head_is_fine() {
    let alice = Node::new("alice");
    let repo = alice.repo("proj", 2);
    alice.git(&repo, &["checkout", "-q", "--detach", "HEAD~1"]);
    let out = alice.run(&["-C", repo.to_str().unwrap(), "init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let root = alice.git(&repo, &["rev-list", "--max-parents=0", "HEAD"]).trim().to_string();
    let status = alice.status();
    assert_eq!(status["repos"][0]["id"], root.as_str());
    assert_eq!(status["repos"][0]["name"], "proj", "no origin: the directory names the room");
}

#[test]
fn without_relays_nostr_is_off_and_says_how_to_turn_it_on() {
    let alice = Node::new("alice");
    let human = alice.ok(&["nostr", "status"]);
    assert!(human.starts_with("nostr off: no relay configured") && human.contains("p2p.relay"), "{human}");
    let json = alice.json(&["nostr", "status", "--json"]);
    assert_eq!(json["enabled"], false);
    assert_eq!(json["npub"], alice.json(&["id", "--json"])["npub"]);
    assert!(alice.ok(&["daemon", "status"]).contains("nostr      off (no p2p.relay configured)"));
}

#[test]
fn id_shows_identity_and_import_nsec_reads_stdin() {
    let alice = Node::new("alice");
    let id = alice.json(&["id", "--json"]);
    assert!(id["peer_id"].as_str().unwrap().starts_with("12D3KooW"));
    assert!(id["npub"].as_str().unwrap().starts_with("npub1"));
    assert_eq!(id["name"], "alice");
    assert!(id["listen_addrs"].as_array().unwrap().iter().any(|a| a.as_str().unwrap().contains("/quic-v1")));
    assert_eq!(id["data_dir"], alice.data_dir().to_str().unwrap());
    alice.ok(&["daemon", "stop"]);

    // A throwaway key (secret = 1), only ever used in this test.
    let hex = format!("{:064x}", 1);
    let mut child = alice
        .command(&["id", "--import-nsec"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(hex.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let npub = alice.json(&["id", "--json"])["npub"].as_str().unwrap().to_string();
    assert_ne!(npub, id["npub"].as_str().unwrap());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&npub));
    let mut child = alice
        .command(&["id", "--import-nsec"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"not a key").unwrap();
    assert_one_line_error(&child.wait_with_output().unwrap(), 1, "not a valid Nostr secret key");
}
