//! Repositories git allows that are not the everyday kind: SHA-256 object ids, and paths that
//! are not UTF-8 (Unix paths are bytes). Each must work end to end between real nodes: register,
//! announce through the hook (node up: the fast path's note; node down: the reflog at start), log,
//! kv and chat.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// Bob runs; alice bootstraps to him. Alice's repository `proj` is made by `init_args` (one
/// commit), bob clones it; both run `git p2p init`.
fn pair_with_repo(alice_dir: &Path, init_args: &[&str]) -> (Node, Node, PathBuf) {
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    bob.start();
    alice.config(&["p2p.bootstrap", &bob.tcp_addr()]);
    let mut args = vec!["init", "-q", "-b", "main"];
    args.extend_from_slice(init_args);
    let mut init = std::process::Command::new("git");
    init.args(&args).arg(alice_dir);
    alice.envs(&mut init);
    assert!(init.status().expect("git init").success());
    alice.git(alice_dir, &["commit", "-q", "--allow-empty", "-m", "root"]);
    let bob_repo = bob.path("home/proj");
    let mut clone = std::process::Command::new("git");
    clone.args(["clone", "-q"]).arg(alice_dir).arg(&bob_repo);
    bob.envs(&mut clone);
    assert!(clone.status().expect("git clone").success());
    alice.ok_in(alice_dir, &["init"]);
    bob.ok_in(&bob_repo, &["init"]);
    (alice, bob, bob_repo)
}

fn commit(node: &Node, repo: &Path, message: &str) -> String {
    let out = node.git(repo, &["commit", "-q", "--allow-empty", "-m", message]);
    assert!(out.is_empty(), "the hook is silent: {out}");
    node.git(repo, &["rev-parse", "HEAD"]).trim().to_string()
}

fn wait_for_commit(node: &Node, repo: &Path, commit: &str) -> Value {
    eventually(Duration::from_secs(60), &format!("{commit} in {}'s feed", node.name), || {
        let out = node.run_in(repo, &["log", "--json"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["commit"] == commit)
    })
}

#[test]
fn a_sha256_repository_works_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice_repo = dir.path().join("proj");
    let (alice, bob, bob_repo) = pair_with_repo(&alice_repo, &["--object-format=sha256"]);
    let root = alice.git(&alice_repo, &["rev-parse", "HEAD"]).trim().to_string();
    assert_eq!(root.len(), 64, "a SHA-256 id: {root}");
    let status = alice.status();
    let repos = status["repos"].as_array().expect("repos");
    assert!(repos.iter().any(|r| r["id"] == root.as_str()), "the repository is named by its root commit: {repos:?}");

    let id = commit(&alice, &alice_repo, "a sha256 commit");
    assert_eq!(id.len(), 64);
    let entry = wait_for_commit(&bob, &bob_repo, &id);
    assert_eq!(entry["parents"], serde_json::json!([root]));

    alice.ok_in(&alice_repo, &["kv", "set", "greeting", "hello"]);
    eventually(Duration::from_secs(30), "bob to read alice's value", || {
        bob.ok_in(&bob_repo, &["kv", "get", "greeting"]).contains("hello").then_some(())
    });
    alice.git(&alice_repo, &["notes", "add", "-m", "reviewed", &root]);
    let alice_id = alice.peer_id();
    eventually(Duration::from_secs(30), "bob to pull alice's note", || {
        alice.ok_in(&alice_repo, &["notes", "push"]);
        bob.ok_in(&bob_repo, &["notes", "pull"]).starts_with("pulled 1 note").then_some(())
    });
    let notes_ref = format!("p2p/{}", &alice_id[alice_id.len() - 12..]);
    assert_eq!(bob.git(&bob_repo, &["notes", "--ref", &notes_ref, "show", &root]).trim(), "reviewed");
    bob.ok_in(&bob_repo, &["chat", "--send", "hi alice"]);
    eventually(Duration::from_secs(30), "alice to see bob's message", || {
        alice.ok_in(&alice_repo, &["chat", "--tail"]).contains("hi alice").then_some(())
    });
}
