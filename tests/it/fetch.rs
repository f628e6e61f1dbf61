//! `git clone p2p://`, `git fetch`/`pull` from peers and `git push` through the remote helper:
//! real nodes, real git, objects over `/git-p2p/upload-pack/1` streams between the nodes'
//! mirrors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::{eventually, pair, Node, Pair};

const WAIT: Duration = Duration::from_secs(20);

/// The repository id of `repo` (its root commit).
fn repo_id(node: &Node, repo: &Path) -> String {
    node.git(repo, &["rev-list", "--max-parents=0", "HEAD"]).trim().to_string()
}

fn rev(node: &Node, repo: &Path, rev: &str) -> String {
    node.git(repo, &["rev-parse", rev]).trim().to_string()
}

/// `git ARGS` in `dir` with the node's environment, whatever its outcome.
fn git_out(node: &Node, dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new("git");
    cmd.args(args).current_dir(dir);
    node.envs(&mut cmd);
    cmd.output().expect("git")
}

fn commit(node: &Node, repo: &Path, file: &str, text: &str) -> String {
    std::fs::write(repo.join(file), text).expect("write");
    node.git(repo, &["add", file]);
    node.git(repo, &["commit", "-q", "-m", &format!("{file}: {text}")]);
    rev(node, repo, "HEAD")
}

/// The node's mirror of `id`.
fn mirror(node: &Node, id: &str) -> PathBuf {
    node.data_dir().join("mirrors").join(format!("{id}.git"))
}

/// Whether the mirror has `ref_name` of `author` at `oid`.
fn mirror_has(node: &Node, id: &str, author: &str, ref_name: &str, oid: &str) -> bool {
    let path = mirror(node, id);
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(&path)
        .args(["rev-parse", "-q", "--verify", &format!("refs/namespaces/{author}/{ref_name}")])
        .output();
    out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == oid)
}

/// Alice with a second branch and everything published; Bob's node knows her refs.
fn published() -> (Pair, String, String) {
    let p = pair();
    commit(&p.alice, &p.alice_repo, "a", "on main");
    p.alice.git(&p.alice_repo, &["checkout", "-q", "-b", "dev"]);
    commit(&p.alice, &p.alice_repo, "d", "on dev");
    p.alice.git(&p.alice_repo, &["checkout", "-q", "main"]);
    p.alice.ok_in(&p.alice_repo, &["refs", "publish"]);
    let id = repo_id(&p.alice, &p.alice_repo);
    let alice = p.alice.peer_id();
    (p, id, alice)
}

#[test]
fn bob_clones_alices_published_branches_with_her_head() {
    let (p, id, alice) = published();
    let dest = p.bob.path("home/cloned");
    let url = format!("p2p://{id}/{alice}");
    let out = git_out(&p.bob, &p.bob.path("home"), &["clone", &url, dest.to_str().expect("utf-8")]);
    assert!(out.status.success(), "clone failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rev(&p.bob, &dest, "HEAD"), rev(&p.alice, &p.alice_repo, "main"));
    assert_eq!(p.bob.git(&dest, &["symbolic-ref", "HEAD"]).trim(), "refs/heads/main", "her HEAD's branch");
    assert_eq!(rev(&p.bob, &dest, "origin/dev"), rev(&p.alice, &p.alice_repo, "dev"));
    assert_eq!(rev(&p.bob, &dest, "origin/main"), rev(&p.alice, &p.alice_repo, "main"));
    // By her short name too, and the all-authors view names her branches by it.
    let short = &alice[alice.len() - 12..];
    let out = git_out(&p.bob, &dest, &["ls-remote", &format!("p2p://{id}/{short}")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("refs/heads/dev"), "{out:?}");
    let out = git_out(&p.bob, &dest, &["ls-remote", &format!("p2p://{id}")]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("refs/heads/{short}/dev")), "{out:?}");
}

#[test]
fn alices_commit_reaches_bobs_mirror_by_itself_and_pull_fast_forwards() {
    let (p, id, alice) = published();
    let dest = p.bob.path("home/cloned");
    p.bob.git(&p.bob.path("home"), &["clone", "-q", &format!("p2p://{id}/{alice}"), dest.to_str().expect("utf-8")]);
    let new = commit(&p.alice, &p.alice_repo, "b", "later");
    eventually(WAIT, "alice's commit in bob's mirror without bob doing anything", || {
        mirror_has(&p.bob, &id, &alice, "refs/heads/main", &new).then_some(())
    });
    p.bob.git(&dest, &["pull", "-q", "--ff-only"]);
    assert_eq!(rev(&p.bob, &dest, "HEAD"), new);
    // The all-authors remote: refs/remotes/peers/<short>/<branch>, and pull by that name.
    let short = &alice[alice.len() - 12..];
    p.bob.git(&dest, &["remote", "add", "peers", &format!("p2p://{id}")]);
    p.bob.git(&dest, &["fetch", "-q", "peers"]);
    assert_eq!(rev(&p.bob, &dest, &format!("refs/remotes/peers/{short}/main")), new);
    p.bob.git(&dest, &["pull", "-q", "--ff-only", "peers", &format!("{short}/main")]);
}
