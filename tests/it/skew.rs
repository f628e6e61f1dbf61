//! A clock that is wrong, then corrected. Alice's node and commands run a day ahead (under
//! libfaketime: the machine's clock is left alone), then right again: her DHT writes must go on
//! working, and bob, whose clock is right, must never take an entry dated a day in his future.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// libfaketime's preload library: the test needs it (`apt-get install faketime`), and fails
/// rather than skips without it.
fn libfaketime() -> PathBuf {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/lib64/faketime/libfaketime.so.1",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("this test needs libfaketime (apt-get install faketime); looked in {candidates:?}"))
}

fn values(node: &Node, repo: &Path, key: &str) -> Vec<Value> {
    let out = node.run_in(repo, &["kv", "get", key, "--json"]);
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn value_of(node: &Node, repo: &Path, key: &str, author: &str) -> Option<String> {
    values(node, repo, key)
        .into_iter()
        .find(|v| v["author"] == author)
        .and_then(|v| v["value"].as_str().map(String::from))
}

#[test]
fn a_clock_a_day_ahead_then_corrected_keeps_kv_working_and_peers_refuse_its_entries() {
    let Pair { mut alice, bob, alice_repo, bob_repo } = pair();
    let alice_id = alice.peer_id();
    alice.ok(&["daemon", "stop"]);
    let preload = format!("LD_PRELOAD={}", libfaketime().display());
    alice.wrapper = vec!["env".into(), preload, "FAKETIME=+1d".into()];
    alice.ok(&["daemon", "start"]);
    let started = alice.status()["started_at"].as_u64().expect("started_at");
    assert!(started > git_p2p::clock::unix_now() + 80_000, "alice's node runs a day ahead");

    // Written a day ahead, and put to bob (the DHT's only other node): he refuses it, and his
    // lookups, which ask alice too, do not take it from her copy either.
    eventually(Duration::from_secs(30), "alice's put to reach bob", || {
        alice.ok_in(&alice_repo, &["kv", "set", "greeting", "from tomorrow"]).contains("(in the DHT)").then_some(())
    });
    assert_eq!(value_of(&alice, &alice_repo, "greeting", &alice_id).as_deref(), Some("from tomorrow"));
    assert_eq!(value_of(&bob, &bob_repo, "greeting", &alice_id), None, "bob took an entry dated a day ahead");

    // The clock is right again: setting and removing the key still work, and bob takes them.
    alice.ok(&["daemon", "stop"]);
    alice.wrapper.clear();
    let out = alice.ok_in(&alice_repo, &["kv", "set", "greeting", "from today"]);
    assert!(out.starts_with("stored greeting"), "{out}");
    eventually(Duration::from_secs(30), "bob to read alice's corrected value", || {
        (value_of(&bob, &bob_repo, "greeting", &alice_id).as_deref() == Some("from today")).then_some(())
    });
    let shown = values(&bob, &bob_repo, "greeting");
    let time = shown[0]["time"].as_u64().expect("time");
    assert!(time <= git_p2p::clock::unix_now_ms(), "dated by the corrected clock: {shown:?}");
    let out = alice.ok_in(&alice_repo, &["kv", "rm", "greeting"]);
    assert!(out.starts_with("removed greeting"), "{out}");
    eventually(Duration::from_secs(30), "bob to see alice's value removed", || {
        value_of(&bob, &bob_repo, "greeting", &alice_id).is_none().then_some(())
    });
}
