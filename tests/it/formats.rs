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

/// Bob runs; alice bootstraps to him. Alice's repository, in the directory of her home named
/// `alice_dir` (bytes), is made by `init_args` (one commit), bob clones it to `proj`; both run
/// `git p2p init`. Returns alice, bob, alice's repository and bob's.
fn pair_with_repo(alice_dir: &[u8], init_args: &[&str]) -> (Node, Node, PathBuf, PathBuf) {
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    let alice_dir = odd_dir(&alice, alice_dir);
    let alice_dir = alice_dir.as_path();
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
    (alice, bob, alice_dir.to_path_buf(), bob_repo)
}

fn wait_for_commit(node: &Node, repo: &Path, commit: &str) -> Value {
    eventually(Duration::from_secs(60), &format!("{commit} in {}'s feed", node.name), || {
        let out = node.run_in(repo, &["log", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["commit"] == commit)
    })
}

#[test]
fn a_sha256_repository_works_end_to_end() {
    let (alice, bob, alice_repo, bob_repo) = pair_with_repo(b"proj", &["--object-format=sha256"]);
    let root = alice.git(&alice_repo, &["rev-parse", "HEAD"]).trim().to_string();
    assert_eq!(root.len(), 64, "a SHA-256 id: {root}");
    let status = alice.status();
    let repos = status["repos"].as_array().expect("repos");
    assert!(repos.iter().any(|r| r["id"] == root.as_str()), "the repository is named by its root commit: {repos:?}");

    let id = alice.commit(&alice_repo, "a sha256 commit");
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

/// A directory of `node`'s home whose name is these bytes.
fn odd_dir(node: &Node, name: &[u8]) -> PathBuf {
    node.path("home").join(OsString::from_vec(name.to_vec()))
}

#[test]
fn repositories_at_paths_that_are_not_utf8_announce_every_commit() {
    // Latin-1 "café": not UTF-8. Alice's node runs: the hook's fast path leaves the node a note.
    let (alice, bob, latin1, bob_repo) = pair_with_repo(b"caf\xe9", &[]);
    let status = alice.status();
    let registered = status["repos"][0]["git_dir"].as_str().expect("a registered git dir");
    assert_eq!(
        git_p2p::proto::repo::LocalPath::decode(registered).expect("a path").as_path(),
        latin1.join(".git"),
        "registered byte for byte"
    );
    let id = alice.commit(&latin1, "from café");
    wait_for_commit(&bob, &bob_repo, &id);

    // Node down, hook skipped: the node reads the reflog of the git dir it has stored when it
    // starts again.
    alice.ok(&["daemon", "stop"]);
    alice.git(&latin1, &["-c", "core.hooksPath=/nonexistent", "commit", "-q", "--allow-empty", "-m", "hookless"]);
    let hookless = alice.git(&latin1, &["rev-parse", "HEAD"]).trim().to_string();
    alice.start();
    wait_for_commit(&bob, &bob_repo, &hookless);
    let notes = std::fs::read_dir(alice.path("run/git-p2p/notes")).expect("notes dir");
    let bad: Vec<_> =
        notes.filter_map(|e| e.ok()).filter(|e| e.path().extension().is_some_and(|x| x == "bad")).collect();
    assert!(bad.is_empty(), "no note set aside: {bad:?}");

    // A newline in the path cannot be a line of the hook's note: the hook takes its slow path.
    let odd = odd_dir(&alice, b"two\nlines\xff");
    let mut init = std::process::Command::new("git");
    init.args(["init", "-q", "-b", "main"]).arg(&odd);
    alice.envs(&mut init);
    assert!(init.status().expect("git init").success());
    alice.git(&odd, &["commit", "-q", "--allow-empty", "-m", "root"]);
    let mut clone = std::process::Command::new("git");
    clone.args(["clone", "-q"]).arg(&odd).arg(bob.path("home/two"));
    bob.envs(&mut clone);
    assert!(clone.status().expect("git clone").success());
    alice.ok_in(&odd, &["init"]);
    bob.ok_in(&bob.path("home/two"), &["init"]);
    let id = alice.commit(&odd, "from a path with a newline");
    wait_for_commit(&bob, &bob.path("home/two"), &id);
}
