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

/// The HEAD of `author`'s namespace in `node`'s mirror of `id` (a branch), if any.
fn mirror_head(node: &Node, id: &str, author: &str) -> Option<String> {
    let head = std::fs::read_to_string(mirror(node, id).join(format!("refs/namespaces/{author}/HEAD"))).ok()?;
    head.trim().strip_prefix(&format!("ref: refs/namespaces/{author}/")).map(str::to_string)
}

#[test]
fn a_clone_checks_out_main_even_when_a_topic_branch_reached_the_mirror_first() {
    let p = pair();
    let id = repo_id(&p.alice, &p.alice_repo);
    let alice = p.alice.peer_id();
    p.alice.git(&p.alice_repo, &["checkout", "-q", "-b", "topic"]);
    let topic = commit(&p.alice, &p.alice_repo, "t", "on topic");
    eventually(WAIT, "topic in bob's mirror, her HEAD there (her only branch so far)", || {
        (mirror_has(&p.bob, &id, &alice, "refs/heads/topic", &topic)
            && mirror_head(&p.bob, &id, &alice).as_deref() == Some("refs/heads/topic"))
        .then_some(())
    });
    p.alice.git(&p.alice_repo, &["checkout", "-q", "main"]);
    let main = commit(&p.alice, &p.alice_repo, "a", "on main");
    // (A settle sets her refs, then her HEAD.)
    eventually(WAIT, "main in bob's mirror, her HEAD there", || {
        (mirror_has(&p.bob, &id, &alice, "refs/heads/main", &main)
            && mirror_head(&p.bob, &id, &alice).as_deref() == Some("refs/heads/main"))
        .then_some(())
    });
    let dest = p.bob.path("home/cloned");
    p.bob.git(&p.bob.path("home"), &["clone", "-q", &format!("p2p://{id}/{alice}"), dest.to_str().expect("utf-8")]);
    assert_eq!(p.bob.git(&dest, &["symbolic-ref", "HEAD"]).trim(), "refs/heads/main");
    assert_eq!(rev(&p.bob, &dest, "HEAD"), main);
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

/// Three nodes: carol runs first, alice and bob bootstrap to her; each has `proj` (alice's,
/// one commit) registered. Bob does not replicate unless `bob_replicates`.
struct Trio {
    alice: Node,
    bob: Node,
    carol: Node,
    alice_repo: PathBuf,
    bob_repo: PathBuf,
    id: String,
}

fn trio(bob_replicates: bool) -> Trio {
    let carol = Node::new("carol");
    carol.start();
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    alice.config(&["p2p.bootstrap", &carol.tcp_addr()]);
    bob.config(&["p2p.bootstrap", &carol.tcp_addr()]);
    if !bob_replicates {
        bob.config(&["p2p.replicate", "false"]);
    }
    let alice_repo = alice.repo("proj", 1);
    let src = alice_repo.to_str().expect("utf-8 path");
    for node in [&bob, &carol] {
        node.git(&node.path("home"), &["clone", "-q", src, "proj"]);
        node.ok_in(&node.path("home/proj"), &["init"]);
    }
    alice.ok_in(&alice_repo, &["init"]);
    alice.ok_in(&alice_repo, &["refs", "publish"]);
    let id = repo_id(&alice, &alice_repo);
    let bob_repo = bob.path("home/proj");
    // Everyone sees everyone in the repository's topic.
    for node in [&alice, &bob, &carol] {
        eventually(WAIT, "two peers with the repository", || {
            (node.peers().iter().filter(|p| p["repos"].as_array().is_some_and(|r| !r.is_empty())).count() >= 2)
                .then_some(())
        });
    }
    Trio { alice, bob, carol, alice_repo, bob_repo, id }
}

#[test]
fn with_alice_stopped_bob_fetches_her_newest_commit_from_carol() {
    let t = trio(false);
    let alice = t.alice.peer_id();
    let new = commit(&t.alice, &t.alice_repo, "n", "newest");
    eventually(WAIT, "carol replicated alice's commit", || {
        mirror_has(&t.carol, &t.id, &alice, "refs/heads/main", &new).then_some(())
    });
    assert!(!mirror_has(&t.bob, &t.id, &alice, "refs/heads/main", &new), "bob does not replicate");
    t.alice.ok(&["daemon", "stop"]);
    let url = format!("p2p://{}/{alice}", t.id);
    let out = git_out(&t.bob, &t.bob_repo, &["fetch", "--progress", &url, "main:refs/remotes/alice/main"]);
    assert!(out.status.success(), "fetch failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rev(&t.bob, &t.bob_repo, "refs/remotes/alice/main"), new);
    // The transfer from carol shows as git shows any: objects, and how far it got.
    let err = String::from_utf8_lossy(&out.stderr);
    let (_, from_peers) = err.split_once("Fetching from peers").unwrap_or_else(|| panic!("no progress: {err}"));
    assert!(from_peers.contains("objects: 100% ("), "{err}");
}

#[test]
fn a_provider_that_forges_alices_tip_is_dropped_and_not_believed() {
    let t = trio(false);
    let alice = t.alice.peer_id();
    let carol = t.carol.peer_id();
    let tip = commit(&t.alice, &t.alice_repo, "t", "signed tip");
    eventually(WAIT, "carol replicated alice's tip", || {
        mirror_has(&t.carol, &t.id, &alice, "refs/heads/main", &tip).then_some(())
    });
    // Carol turns evil: her mirror says alice's main is a commit alice never made.
    let carol_mirror = mirror(&t.carol, &t.id);
    let m = carol_mirror.to_str().expect("utf-8");
    let tree = t.carol.git(&t.carol.path("home"), &["--git-dir", m, "rev-parse", &format!("{tip}^{{tree}}")]);
    let forged = t.carol.git(
        &t.carol.path("home"),
        &["--git-dir", m, "commit-tree", tree.trim(), "-p", &tip, "-m", "alice never signed this"],
    );
    let forged = forged.trim();
    t.carol.git(
        &t.carol.path("home"),
        &["--git-dir", m, "update-ref", &format!("refs/namespaces/{alice}/refs/heads/main"), forged],
    );
    // With alice away, carol is the only provider: bob takes nothing from her.
    t.alice.ok(&["daemon", "stop"]);
    let url = format!("p2p://{}/{alice}", t.id);
    let out = git_out(&t.bob, &t.bob_repo, &["fetch", &url, "main:refs/remotes/alice/main"]);
    assert!(!out.status.success(), "a forged tip must not be fetched");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("never signed"), "{err}");
    let status = t.bob.status();
    let distrusted: Vec<&str> =
        status["distrusted"].as_array().expect("distrusted").iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(distrusted, [carol.as_str()], "carol is dropped");
    assert!(!mirror_has(&t.bob, &t.id, &alice, "refs/heads/main", forged));
    let bob_mirror = mirror(&t.bob, &t.id);
    let has_forged = Command::new("git")
        .arg("--git-dir")
        .arg(&bob_mirror)
        .args(["cat-file", "-e", forged])
        .status()
        .is_ok_and(|s| s.success());
    assert!(!has_forged, "what carol sent was thrown away");
    // Alice is back: bob gets the signed tip from her, and carol is not asked.
    t.alice.start();
    eventually(WAIT, "alice back in the repository's topic", || t.bob.shares_a_repo_with(&alice).then_some(()));
    t.bob.git(&t.bob_repo, &["fetch", "-q", &url, "main:refs/remotes/alice/main"]);
    assert_eq!(rev(&t.bob, &t.bob_repo, "refs/remotes/alice/main"), tip);
}

#[test]
fn an_unpublished_branch_cannot_be_fetched_even_by_id() {
    let (p, id, alice) = published();
    // A branch made without a commit on HEAD (no hook, no reflog entry): never published.
    let tree = p.alice.git(&p.alice_repo, &["rev-parse", "HEAD^{tree}"]);
    let secret = p.alice.git(&p.alice_repo, &["commit-tree", tree.trim(), "-p", "HEAD", "-m", "secret"]);
    let secret = secret.trim().to_string();
    p.alice.git(&p.alice_repo, &["update-ref", "refs/heads/secret", &secret]);
    // Alice publishes main again (a new commit): the secret branch stays hers alone.
    let main = commit(&p.alice, &p.alice_repo, "c", "public");
    let alice_mirror = mirror(&p.alice, &id);
    eventually(WAIT, "alice's new commit in her mirror", || {
        mirror_has(&p.alice, &id, &alice, "refs/heads/main", &main).then_some(())
    });
    let in_mirror = Command::new("git")
        .arg("--git-dir")
        .arg(&alice_mirror)
        .args(["cat-file", "-e", &secret])
        .status()
        .is_ok_and(|s| s.success());
    assert!(!in_mirror, "the mirror holds published objects only");
    let url = format!("p2p://{id}/{alice}");
    let out = git_out(&p.bob, &p.bob_repo, &["fetch", &url, &secret]);
    assert!(!out.status.success(), "fetched an unpublished commit: {out:?}");
    let out = git_out(&p.bob, &p.bob_repo, &["fetch", &url, "refs/heads/secret"]);
    assert!(!out.status.success(), "fetched an unpublished branch: {out:?}");
    // What was published is there.
    p.bob.git(&p.bob_repo, &["fetch", "-q", &url, &main]);
}

#[test]
fn bob_pushes_his_branch_as_his_own_and_cannot_push_into_alices() {
    let (p, id, alice) = published();
    let bob = p.bob.peer_id();
    let short = |peer: &str| peer[peer.len() - 12..].to_string();
    p.bob.git(&p.bob_repo, &["remote", "add", "peers", &format!("p2p://{id}")]);
    p.bob.git(&p.bob_repo, &["fetch", "-q", "peers"]);
    p.bob.git(&p.bob_repo, &["checkout", "-q", "-b", "topic"]);
    let topic = commit(&p.bob, &p.bob_repo, "bob", "bob's work");
    // Into alice's namespace: refused, in one line that says why.
    let out = git_out(&p.bob, &p.bob_repo, &["push", "peers", &format!("+topic:refs/heads/{}/main", short(&alice))]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another author"), "{err}");
    let out = git_out(&p.bob, &p.bob_repo, &["push", &format!("p2p://{id}/{alice}"), "+topic:main"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another author"), "{out:?}");
    assert_eq!(
        rev(&p.alice, &p.alice_repo, "main"),
        rev(&p.bob, &p.bob_repo, &format!("peers/{}/main", short(&alice)))
    );
    // His own: published, and alice can fetch it.
    p.bob.git(&p.bob_repo, &["push", "-q", "peers", "topic"]);
    let out = git_out(&p.alice, &p.alice_repo, &["ls-remote", &format!("p2p://{id}/{bob}")]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(&format!("{topic}\trefs/heads/topic")), "{out:?}");
    p.alice.git(&p.alice_repo, &["fetch", "-q", &format!("p2p://{id}/{bob}"), "topic:refs/remotes/bob/topic"]);
    assert_eq!(rev(&p.alice, &p.alice_repo, "refs/remotes/bob/topic"), topic);
}

#[test]
fn bad_urls_unknown_repositories_and_no_provider_fail_in_one_line_soon() {
    let (p, id, alice) = published();
    let home = p.bob.path("home");
    for (url, words) in [
        ("p2p://zz".to_string(), "bad repository id"),
        (format!("p2p://{id}/not!an/author"), "p2p://"),
        (format!("p2p://{}", "0".repeat(40)), "unknown repository"),
    ] {
        let started = std::time::Instant::now();
        let out = git_out(&p.bob, &home, &["clone", &url, "x"]);
        assert!(!out.status.success(), "{url}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(words), "{url}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(20), "{url}: took {:?}", started.elapsed());
    }
    // Bob learns of a commit he cannot get from anyone: a clear error, not a hang.
    p.bob.config(&["p2p.replicate", "false"]);
    p.bob.ok(&["daemon", "stop"]);
    p.bob.ok(&["daemon", "start"]);
    eventually(WAIT, "bob and alice connected again", || (!p.bob.peers().is_empty()).then_some(()));
    let new = commit(&p.alice, &p.alice_repo, "x", "unreachable");
    eventually(WAIT, "bob heard of alice's commit", || {
        p.bob.ok_in(&p.bob_repo, &["log", "--json"]).contains(&new).then_some(())
    });
    p.alice.kill9();
    let started = std::time::Instant::now();
    let out = git_out(&p.bob, &home, &["clone", &format!("p2p://{id}/{alice}"), "y"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot fetch"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}

/// Pids of `git upload-pack` processes serving a mirror under `node`'s data dir.
fn serving(node: &Node) -> Vec<i32> {
    let marker = node.data_dir().join("mirrors").display().to_string();
    let pids: Vec<i32> = std::fs::read_dir("/proc")
        .map(|d| d.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    pids.into_iter()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("upload-pack") && cmdline.contains(&marker)
        })
        .collect()
}

/// Bytes of the packs being received in `node`'s quarantines.
fn receiving(node: &Node, id: &str) -> u64 {
    let quarantines = mirror(node, id).join("p2p-quarantine");
    let mut bytes = 0;
    for q in std::fs::read_dir(quarantines).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(q.path().join("objects/pack")).into_iter().flatten().flatten() {
            if f.file_name().to_string_lossy().starts_with("tmp_pack_") {
                bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    bytes
}

#[test]
fn a_provider_killed_in_the_middle_of_a_pack_and_the_fetch_completes_from_another() {
    let t = trio(false);
    let alice = t.alice.peer_id();
    // Big and incompressible, so that the pack takes a while to travel.
    let mut data = vec![0u8; 48 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(t.alice_repo.join("big.bin"), &data).expect("write");
    t.alice.git(&t.alice_repo, &["add", "big.bin"]);
    t.alice.git(&t.alice_repo, &["commit", "-q", "-m", "big"]);
    let tip = rev(&t.alice, &t.alice_repo, "HEAD");
    eventually(Duration::from_secs(60), "carol replicated the big commit", || {
        mirror_has(&t.carol, &t.id, &alice, "refs/heads/main", &tip).then_some(())
    });
    let dest = t.bob.path("home/big");
    let mut clone = Command::new("git");
    clone.args(["clone", "-q", &format!("p2p://{}/{alice}", t.id), dest.to_str().expect("utf-8")]);
    clone.current_dir(t.bob.path("home")).stderr(std::process::Stdio::piped());
    t.bob.envs(&mut clone);
    let clone = clone.spawn().expect("git clone");
    // Whoever serves first dies once part of the pack has arrived.
    let (victim, survivor) = eventually(Duration::from_secs(30), "a provider in the middle of the pack", || {
        if receiving(&t.bob, &t.id) == 0 {
            return None;
        }
        if !serving(&t.alice).is_empty() {
            Some((&t.alice, &t.carol))
        } else if !serving(&t.carol).is_empty() {
            Some((&t.carol, &t.alice))
        } else {
            None
        }
    });
    let pids = serving(victim);
    for &pid in &pids {
        crate::support::unsafe_kill(pid, 19);
    }
    let partial = receiving(&t.bob, &t.id);
    assert!(partial > 0 && partial < data.len() as u64, "in the middle of the pack: {partial} bytes");
    victim.kill9();
    for pid in pids {
        crate::support::unsafe_kill(pid, 9);
    }
    let out = clone.wait_with_output().expect("git clone");
    assert!(
        out.status.success(),
        "the clone must complete from {}: {}",
        survivor.name,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(rev(&t.bob, &dest, "HEAD"), tip);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("Fetching from peers") && !err.contains("objects:"), "-q shows no progress: {err}");
    assert_eq!(std::fs::read(dest.join("big.bin")).expect("read").len(), data.len());
}

#[test]
fn a_node_outside_the_topic_that_holds_a_mirror_is_found_through_the_dht() {
    let alice = Node::new("alice");
    alice.start();
    let repo = alice.repo("proj", 2);
    alice.ok_in(&repo, &["init"]);
    let id = repo_id(&alice, &repo);
    let alice_id = alice.peer_id();
    let dave = Node::new("dave");
    dave.config(&["p2p.bootstrap", &alice.tcp_addr()]);
    dave.start();
    eventually(WAIT, "dave connected to alice", || (!dave.peers().is_empty()).then_some(()));
    alice.ok_in(&repo, &["refs", "publish"]);
    // Dave clones without `git p2p init`: he holds a mirror, and is in no topic of it.
    let url = format!("p2p://{id}/{alice_id}");
    dave.git(&dave.path("home"), &["clone", "-q", &url, "proj"]);
    let erin = Node::new("erin");
    erin.config(&["p2p.bootstrap", &dave.tcp_addr()]);
    alice.ok(&["daemon", "stop"]);
    erin.start();
    eventually(WAIT, "erin connected to dave", || (!erin.peers().is_empty()).then_some(()));
    assert!(erin.peers().iter().all(|p| p["repos"].as_array().is_none_or(|r| r.is_empty())), "nobody in the topic");
    erin.git(&erin.path("home"), &["clone", "-q", &url, "proj"]);
    assert_eq!(rev(&erin, &erin.path("home/proj"), "HEAD"), rev(&alice, &repo, "HEAD"));
}

#[test]
fn git_p2p_clone_by_id_or_room_name_clones_registers_and_adds_the_peers_remote() {
    let (p, id, alice) = published();
    let home = p.bob.path("home");
    // By the room name of the repository bob registered (his clone of alice's proj).
    p.bob.ok_in(&home, &["clone", "-q", "proj", "by-name", "--author", &alice[alice.len() - 12..]]);
    assert_eq!(rev(&p.bob, &home.join("by-name"), "HEAD"), rev(&p.alice, &p.alice_repo, "main"));
    // By id, the author left out: alice is the only one who published.
    let out = p.bob.ok_in(&home, &["clone", &id, "by-id"]);
    assert!(out.contains(&format!("cloned p2p://{id}/{alice}")), "{out}");
    assert!(out.contains(&format!("git remote add peers p2p://{id}")), "init offers the remote: {out}");
    let by_id = home.join("by-id");
    assert_eq!(rev(&p.bob, &by_id, "HEAD"), rev(&p.alice, &p.alice_repo, "main"), "alice's work");
    assert_eq!(p.bob.git(&by_id, &["remote", "get-url", "peers"]).trim(), format!("p2p://{id}"));
    assert!(by_id.join(".git/hooks/post-commit").exists(), "git p2p init ran there");
    assert!(p.bob.ok(&["repos"]).contains(by_id.to_str().expect("utf-8")), "registered");
    let out = p.bob.run_in(&home, &["clone", "no-such-room"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("neither a repository id") && err.lines().count() == 1, "{err}");
}

#[test]
fn a_pack_larger_than_max_fetch_size_is_refused_with_the_setting_named() {
    let p = pair();
    p.bob.config(&["p2p.max-fetch-size", "16k"]);
    p.bob.ok(&["daemon", "stop"]);
    p.bob.ok(&["daemon", "start"]);
    // 256 KiB that do not compress.
    let mut data = vec![0u8; 256 << 10];
    let mut x: u64 = 0x2545f4914f6cdd1d;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(p.alice_repo.join("big.bin"), &data).expect("write");
    p.alice.git(&p.alice_repo, &["add", "big.bin"]);
    p.alice.git(&p.alice_repo, &["commit", "-q", "-m", "big"]);
    p.alice.ok_in(&p.alice_repo, &["refs", "publish"]);
    let id = repo_id(&p.alice, &p.alice_repo);
    let alice = p.alice.peer_id();
    eventually(WAIT, "bob connected to alice", || (!p.bob.peers().is_empty()).then_some(()));
    let out = git_out(&p.bob, &p.bob.path("home"), &["clone", &format!("p2p://{id}/{alice}"), "big"]);
    assert!(!out.status.success(), "a pack over the limit was taken");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("p2p.max-fetch-size"), "{err}");
    assert!(!mirror_has(&p.bob, &id, &alice, "refs/heads/main", &rev(&p.alice, &p.alice_repo, "main")));
}

#[test]
fn a_branch_deleted_and_unpublished_leaves_the_authors_mirror() {
    let (p, id, alice) = published();
    let dev = rev(&p.alice, &p.alice_repo, "dev");
    assert!(mirror_has(&p.alice, &id, &alice, "refs/heads/dev", &dev), "published: in her mirror");
    p.alice.git(&p.alice_repo, &["branch", "-q", "-D", "dev"]);
    let out = p.alice.ok_in(&p.alice_repo, &["refs", "publish"]);
    assert!(out.contains("unpublished 1 gone since: refs/heads/dev"), "{out}");
    let listed = |node: &Node| {
        let m = mirror(node, &id);
        node.git(&node.path("home"), &["--git-dir", m.to_str().expect("utf-8"), "for-each-ref", "--format=%(refname)"])
    };
    eventually(WAIT, "dev out of alice's mirror, in her namespace and the all-authors view", || {
        (!listed(&p.alice).contains("refs/heads/dev") && !listed(&p.alice).contains("/dev\n")).then_some(())
    });
    assert!(listed(&p.alice).contains("refs/heads/main"), "main stays");
}
