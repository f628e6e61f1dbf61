//! Faults of the store, with real nodes: a full disk (alice's data dir on a small tmpfs mounted
//! in a mount namespace of the test's own: the test runs itself again under `unshare`), a damaged
//! store file (truncated, pages overwritten at several offsets), and `git p2p daemon repair`.
//! The namespace needs root; without it the test fails, loudly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;

/// Set in the copy of the test binary that runs inside the mount namespace.
const IN_NAMESPACE: &str = "GIT_P2P_TEST_MOUNT_NAMESPACE";

/// In the test process: runs test `name` again in a private mount namespace and checks it
/// passed there (true: the caller is done). In that copy: false (the caller runs the test).
fn rerun_in_mount_namespace(name: &str) -> bool {
    if std::env::var_os(IN_NAMESPACE).is_some() {
        return false;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(IN_NAMESPACE, "1")
        .output()
        .expect("cannot run unshare (util-linux)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{name} in its mount namespace (needs root) failed:\n{text}");
    assert!(text.contains("1 passed"), "{name} did not run in its mount namespace:\n{text}");
    true
}

/// A tmpfs of `size` on `dir` (in this process's mount namespace), unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("cannot run mount");
        assert!(out.status.success(), "cannot mount a tmpfs on {} (needs root): {}", dir.display(), stderr(&out));
        Self(dir.to_path_buf())
    }

    /// Writes a file until the file system is full; the file, to free the space again.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let mut file = std::fs::File::create(&filler).expect("create the filler");
        let chunk = vec![0x5a_u8; 4096];
        loop {
            match file.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn commit(node: &Node, repo: &Path, text: &str) -> std::process::Output {
    std::fs::write(repo.join("file"), format!("{text}\n")).expect("write");
    node.git(repo, &["add", "file"]);
    let mut cmd = Command::new("git");
    cmd.args(["commit", "-q", "-m", text]).current_dir(repo);
    node.envs(&mut cmd);
    let out = cmd.output().expect("git commit");
    assert!(out.status.success(), "git commit: {}", stderr(&out));
    out
}

/// The summaries `node`'s feed shows for `repo`.
fn feed(node: &Node, repo: &Path) -> String {
    node.ok_in(repo, &["log", "-n", "100"])
}

#[test]
fn a_full_disk_is_reported_and_the_node_carries_on_once_there_is_space() {
    if rerun_in_mount_namespace("faults::a_full_disk_is_reported_and_the_node_carries_on_once_there_is_space") {
        return;
    }
    full_disk(false);
}

#[test]
fn a_full_disk_that_also_holds_the_runtime_dir_is_reported_by_the_hook_too() {
    if rerun_in_mount_namespace("faults::a_full_disk_that_also_holds_the_runtime_dir_is_reported_by_the_hook_too") {
        return;
    }
    full_disk(true);
}

/// Alice's data dir on a 4 MiB tmpfs (and her runtime dir, with `runtime_too`: then the hook's
/// note cannot be written either and its slow path speaks), bob a peer; the tmpfs fills up.
fn full_disk(runtime_too: bool) {
    let alice = Node::new("alice");
    let disk = Tmpfs::mount(&alice.data_dir(), "4m");
    if runtime_too {
        let run = alice.data_dir().join("run");
        std::fs::create_dir_all(&run).expect("mkdir");
        let link = alice.path("run");
        let _ = std::fs::remove_file(&link).or_else(|_| std::fs::remove_dir_all(&link));
        std::os::unix::fs::symlink(&run, &link).expect("the runtime dir on the tmpfs");
    }
    let Pair { alice, bob, alice_repo, bob_repo } = pair_of(alice, &[]);
    // Bound again after alice: dropped (unmounted) before her temporary dir, which holds the
    // mount point, is removed, even when the test fails.
    let disk = disk;
    let dir = alice.data_dir().display().to_string();
    let full = format!("the disk holding {dir} is full");
    eventually(Duration::from_secs(20), "alice and bob to connect", || (!alice.peers().is_empty()).then_some(()));
    commit(&alice, &alice_repo, "before the disk filled");
    eventually(Duration::from_secs(20), "bob to see the first commit", || {
        feed(&bob, &bob_repo).contains("before the disk filled").then_some(())
    });

    let filler = disk.fill();
    let out = commit(&alice, &alice_repo, "full 1");
    let marker = alice.path("run/git-p2p/store-problem");
    if runtime_too {
        // No note can be written: the hook's slow path finds the disk full itself.
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "one line from the hook: {err:?}");
        assert!(err.contains(&format!("git-p2p: {full}")), "{err}");
        eventually(Duration::from_secs(20), "the node to find its disk full", || {
            (alice.status()["store"]["state"] == "full").then_some(())
        });
    } else {
        // Nothing told the node yet: the first commit's note is taken, its store fails, and from
        // then on everyone is told.
        eventually(Duration::from_secs(20), "the node to find its disk full", || marker.exists().then_some(()));
    }
    let status = alice.status();
    assert_eq!(status["store"]["state"], "full", "{status}");
    let text = alice.ok(&["daemon", "status"]);
    assert!(text.contains("FULL") && text.contains(&full), "{text}");
    for i in 2..=5 {
        let out = commit(&alice, &alice_repo, &format!("full {i}"));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "one line from the hook: {err:?}");
        assert!(err.contains(&format!("git-p2p: {full}")), "{err}");
    }
    assert_one_line_error(&alice.run_in(&alice_repo, &["kv", "set", "k", "v"]), 1, &full);
    assert_one_line_error(&alice.run_in(&alice_repo, &["chat", "--send", "hello"]), 1, &full);
    assert_one_line_error(&alice.run_in(&alice_repo, &["announce"]), 1, &full);
    // Reads go on.
    alice.ok_in(&alice_repo, &["kv", "ls"]);
    alice.ok_in(&alice_repo, &["chat", "--tail"]);

    std::fs::remove_file(&filler).expect("free the space");
    // The node reopens its store by itself and announces every commit made meanwhile.
    eventually(Duration::from_secs(60), "bob to see the five commits made while the disk was full", || {
        let seen = feed(&bob, &bob_repo);
        (1..=5).all(|i| seen.contains(&format!("full {i}"))).then_some(())
    });
    let status = alice.status();
    assert_eq!(status["store"]["state"], "ok", "{status}");
    assert!(!marker.exists(), "the hook is not told any more");
    // A note left empty when the disk was full is not read as one: wait until the node has
    // taken every note, then the hook's fast path is silent again.
    let notes = alice.path("run/git-p2p/notes");
    eventually(Duration::from_secs(20), "the node to take the notes", || {
        let left = std::fs::read_dir(&notes)
            .map(|d| d.filter_map(|e| e.ok()).filter(|e| e.path().extension().is_some_and(|x| x == "note")).count());
        (left.unwrap_or(0) == 0).then_some(())
    });
    let out = commit(&alice, &alice_repo, "after the space came back");
    assert_eq!(stderr(&out), "", "the hook is silent again");
    alice.ok_in(&alice_repo, &["kv", "set", "k", "v"]);
    alice.ok_in(&alice_repo, &["chat", "--send", "hello again"]);
    eventually(Duration::from_secs(20), "bob to see the commit after", || {
        feed(&bob, &bob_repo).contains("after the space came back").then_some(())
    });
    // What it stored after the reopen is durable: a restarted node has it.
    alice.ok(&["daemon", "stop"]);
    let keys = alice.ok_in(&alice_repo, &["kv", "ls"]);
    assert!(keys.lines().any(|l| l.ends_with(" k")), "{keys}");
}

/// One way to damage the store file.
enum Damage {
    /// Cut the file to this many bytes.
    Truncate(u64),
    /// Overwrite the 4 KiB page at this offset with garbage.
    Page(u64),
}

fn damage(path: &Path, pristine: &[u8], how: &Damage) {
    let mut bytes = pristine.to_vec();
    match how {
        Damage::Truncate(len) => bytes.truncate(*len as usize),
        Damage::Page(at) => {
            let at = *at as usize;
            for (i, b) in bytes[at..(at + 4096).min(pristine.len())].iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(167) ^ 0xa5;
            }
        }
    }
    std::fs::write(path, bytes).expect("write the damaged store");
}

#[test]
fn a_damaged_store_is_one_line_with_the_way_out_and_never_restarted_in_a_loop() {
    let alice = Node::new("alice");
    let repo = alice.repo("proj", 1);
    alice.ok_in(&repo, &["init"]);
    for k in ["k1", "k2", "k3"] {
        alice.ok_in(&repo, &["kv", "set", k, "v"]);
    }
    alice.ok(&["daemon", "stop"]);
    let store = alice.data_dir().join("store.redb");
    let pristine = std::fs::read(&store).expect("the store");
    let len = pristine.len() as u64;
    let page = |n: u64| n * 4096;
    let mut cases = vec![
        Damage::Truncate(0),
        Damage::Truncate(100),
        Damage::Truncate(4096),
        Damage::Truncate(len / 2),
        Damage::Truncate(len - 4096),
    ];
    for n in [0, 1, 2, 3, 4, 6, 8, 12, 16, len / 4096 / 2] {
        if page(n) + 4096 <= len {
            cases.push(Damage::Page(page(n)));
        }
    }
    let store_text = store.display().to_string();
    let mut refused = 0;
    for (i, how) in cases.iter().enumerate() {
        damage(&store, &pristine, how);
        let out = alice.run_in(&repo, &["kv", "ls"]);
        if out.status.success() {
            // The damage hit a page the store does not use: then the whole listing is there.
            let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().last().map(str::to_string))
                .filter(|k| k.starts_with('k'))
                .collect();
            assert_eq!(keys, ["k1", "k2", "k3"], "case {i}: a listing that succeeds is complete");
            alice.ok(&["daemon", "stop"]);
            continue;
        }
        refused += 1;
        assert_one_line_error(&out, 1, &store_text);
        assert_one_line_error(&out, 1, "git p2p daemon repair");
        // However often it is asked, nobody starts a node that fails the same way: the pid in
        // the lock file (written by each node that starts) does not change.
        let pid = std::fs::read_to_string(alice.data_dir().join("node.lock")).unwrap_or_default();
        for args in [&["kv", "ls"][..], &["log"], &["chat", "--tail"], &["daemon", "start"]] {
            let again = alice.run_in(&repo, args);
            assert_one_line_error(&again, 1, "git p2p daemon repair");
        }
        let status = alice.run(&["daemon", "status"]);
        let text = String::from_utf8_lossy(&status.stdout);
        assert!(text.contains("damaged") && text.contains("git p2p daemon repair"), "case {i}: {text}");
        assert_eq!(
            std::fs::read_to_string(alice.data_dir().join("node.lock")).unwrap_or_default(),
            pid,
            "case {i}: no node was started again"
        );
        // A commit is not announced now, and git says why in one line (a node that found the
        // damage only while running tells the hook within a second).
        if alice.pid().is_some_and(alive) {
            let marker = alice.path("run/git-p2p/store-problem");
            eventually(Duration::from_secs(10), "the node to tell the hook", || marker.exists().then_some(()));
        }
        let out = commit(&alice, &repo, &format!("while damaged {i}"));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "case {i}: {err:?}");
        assert!(err.contains("git p2p daemon repair"), "case {i}: {err}");
        alice.run(&["daemon", "stop"]);
    }
    assert!(refused >= cases.len() / 2, "most of the damage is found: {refused} of {}", cases.len());
    // The file put back as it was is not damaged: the node starts on it (and announces the
    // commits spooled meanwhile, which puts our refs in the DHT too).
    std::fs::write(&store, &pristine).expect("put the store back");
    let keys = alice.ok_in(&repo, &["kv", "ls"]);
    assert_eq!(keys.lines().filter(|l| l.ends_with(" k1") || l.ends_with(" k2") || l.ends_with(" k3")).count(), 3);
}

/// Where in `bytes` a DHT record holding `needle` is: the store keeps a record's value as a
/// JSON array of byte values.
/// Where a stored record's JSON holds `needle`: every copy (a page freed by a later commit may
/// hold an older one; only one of them is live).
fn find_records(bytes: &[u8], needle: &str) -> Vec<u64> {
    let pattern: Vec<String> = needle.bytes().map(|b| b.to_string()).collect();
    let pattern = pattern.join(",").into_bytes();
    bytes
        .windows(pattern.len())
        .enumerate()
        .filter(|(_, w)| *w == pattern.as_slice())
        .map(|(at, _)| at as u64)
        .collect()
}

#[test]
fn repair_rebuilds_the_store_and_our_announcements_and_entries_come_back() {
    let Pair { alice, bob, alice_repo, bob_repo } = pair();
    eventually(Duration::from_secs(20), "alice and bob to connect", || (!alice.peers().is_empty()).then_some(()));
    eventually(Duration::from_secs(30), "alice's entry to reach bob", || {
        alice.ok_in(&alice_repo, &["kv", "set", "greeting", "hello"]).contains("(in the DHT)").then_some(())
    });
    commit(&alice, &alice_repo, "announced before");
    eventually(Duration::from_secs(20), "bob to see the first commit", || {
        feed(&bob, &bob_repo).contains("announced before").then_some(())
    });
    let peer_id = alice.peer_id();
    alice.ok(&["daemon", "stop"]);
    // A commit made with the node down and no hook: only the reflog knows it.
    std::fs::write(alice_repo.join("file"), "offline\n").expect("write");
    alice.git(&alice_repo, &["add", "file"]);
    alice
        .git(&alice_repo, &["-c", "core.hooksPath=/nonexistent", "commit", "-q", "-m", "made while the node was down"]);

    // The pages that hold alice's record of the key are overwritten.
    let store = alice.data_dir().join("store.redb");
    let copies = find_records(&std::fs::read(&store).expect("the store"), "\"key\":\"greeting\"");
    assert!(!copies.is_empty(), "the record in the store file");
    for at in copies {
        let bytes = std::fs::read(&store).expect("the store");
        damage(&store, &bytes, &Damage::Page(at & !4095));
    }
    assert_one_line_error(&alice.run_in(&alice_repo, &["kv", "ls"]), 1, "git p2p daemon repair");

    let out = alice.ok(&["daemon", "repair"]);
    assert!(out.contains("moved it to") && out.contains("node started"), "{out}");
    assert!(out.contains(" to fetch back from peers") && !out.contains("(0 to fetch back"), "{out}");
    let moved: Vec<_> = std::fs::read_dir(alice.data_dir())
        .expect("the data dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("store.redb.damaged-"))
        .collect();
    assert_eq!(moved.len(), 1, "the damaged file is kept aside");
    assert_eq!(alice.peer_id(), peer_id, "the same keys");

    // Our announcements come back from the registered repository's reflog.
    eventually(Duration::from_secs(30), "bob to see the commit made while the node was down", || {
        feed(&bob, &bob_repo).contains("made while the node was down").then_some(())
    });
    // Our entry comes back from bob's copy: once fetched, alice has it without bob.
    eventually(Duration::from_secs(60), "alice to fetch her entries back", || {
        (alice.status()["restoring"] == 0).then_some(())
    });
    assert!(alice.ok_in(&alice_repo, &["kv", "ls"]).contains("greeting"));
    bob.ok(&["daemon", "stop"]);
    let value = alice.ok_in(&alice_repo, &["kv", "get", "greeting", "--author", "me"]);
    assert!(value.contains("hello"), "{value}");
    // A repair of a healthy store changes nothing.
    let out = alice.ok(&["daemon", "repair"]);
    assert!(out.contains("not damaged, nothing to repair"), "{out}");
}

#[test]
fn registered_repositories_survive_a_store_damaged_beyond_reading() {
    let alice = Node::new("alice");
    let repo = alice.repo("proj", 1);
    alice.ok_in(&repo, &["init"]);
    alice.ok(&["daemon", "stop"]);
    let store = alice.data_dir().join("store.redb");
    let bytes = std::fs::read(&store).expect("the store");
    damage(&store, &bytes, &Damage::Page(0));
    let out = alice.ok(&["daemon", "repair"]);
    assert!(out.contains("nothing could be read from the old store"), "{out}");
    let status = alice.status();
    let repos = status["repos"].as_array().cloned().unwrap_or_default();
    assert_eq!(repos.len(), 1, "the repository is registered again: {status}");
}
