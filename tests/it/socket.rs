//! The control socket under faults: floods of idle clients and followers, a client beyond the
//! node's capacity, answers larger than a frame, a node killed a moment before the next command,
//! and what a broken client or a bad setting is told. Real nodes, the real CLI, and raw
//! connections where a hostile client would use them.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use git_p2p::control::proto::{self, Request, RequestFrame, PROTOCOL_VERSION};
use git_p2p::control::server::{IDLE_TIMEOUT, MAX_CLIENTS, MAX_FOLLOWERS};
use git_p2p::proto::repo::RepoId;
use serde_json::Value;

use crate::support::*;

/// Lets this test process (and the nodes it starts) hold a thousand connections and more: its
/// soft limit may be 1024; as root, the hard one is raised too if it is low.
fn raise_open_files() {
    const NEEDED: libc::rlim_t = 8192;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct we own, for this call.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0, "getrlimit");
        let wanted = libc::rlimit { rlim_cur: limit.rlim_max.max(NEEDED), rlim_max: limit.rlim_max.max(NEEDED) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
            limit = wanted;
        } else {
            limit.rlim_cur = limit.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0, "setrlimit");
        }
    }
    assert!(limit.rlim_cur >= NEEDED, "this test needs {NEEDED} open files; the hard limit is {}", limit.rlim_cur);
}

fn socket(node: &Node) -> std::path::PathBuf {
    node.path("run/git-p2p/control.sock")
}

/// A raw connection that says nothing.
fn idle(node: &Node) -> UnixStream {
    UnixStream::connect(socket(node)).expect("connect to the control socket")
}

fn send(stream: &mut UnixStream, id: u64, req: Request) {
    stream.write_all(&proto::encode(&RequestFrame::new(id, req))).expect("write a request");
}

/// The next frame on a raw connection (None: the node hung up).
fn frame(stream: &UnixStream, timeout: Duration) -> Option<Value> {
    stream.set_read_timeout(Some(timeout)).expect("read timeout");
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(0) => None,
        Ok(_) => Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("a JSON frame: {e}: {line:?}"))),
        Err(e) => panic!("no frame within {timeout:?}: {e}"),
    }
}

/// A raw follower of `repo`'s announcements, acknowledged.
fn follower(node: &Node, repo: &RepoId) -> UnixStream {
    let mut stream = idle(node);
    send(&mut stream, 1, Request::Follow { repo: repo.clone() });
    let ack = frame(&stream, Duration::from_secs(10)).expect("an answer");
    assert!(ack.get("ok").is_some(), "subscribed: {ack}");
    stream
}

fn repo_id(node: &Node, repo: &Path) -> RepoId {
    let root = node.git(repo, &["rev-list", "--max-parents=0", "HEAD"]);
    RepoId::try_from(root.trim()).expect("a root commit")
}

#[test]
fn idle_clients_and_followers_do_not_lock_others_out() {
    raise_open_files();
    let Pair { alice, bob, alice_repo, bob_repo } = pair();
    let repo = repo_id(&bob, &bob_repo);
    // More idle connections and more followers than the node used to serve at once in all.
    let idle_ones: Vec<UnixStream> = (0..200).map(|_| idle(&bob)).collect();
    let followers: Vec<UnixStream> = (0..200).map(|_| follower(&bob, &repo)).collect();
    let mut log_f = bob.command(&["log", "-f", "--json"]);
    log_f.current_dir(&bob_repo).stdout(std::process::Stdio::piped());
    let mut log_f = log_f.spawn().expect("git p2p log -f");

    // Every other client is served at once.
    bob.ok_in(&bob_repo, &["chat", "--send", "still here"]);
    bob.ok_in(&bob_repo, &["kv", "set", "status", "fine"]);
    assert_eq!(bob.status()["running"], true);

    // Idle ones are hung up on; followers are not, and still get what arrives.
    for mut stream in idle_ones {
        stream.set_read_timeout(Some(IDLE_TIMEOUT * 3)).expect("read timeout");
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).expect("hung up, not timed out"), 0, "the node closed an idle client");
    }
    alice.git(&alice_repo, &["commit", "-q", "--allow-empty", "-m", "after the flood"]);
    let id = alice.git(&alice_repo, &["rev-parse", "HEAD"]).trim().to_string();
    for stream in followers.iter().step_by(40) {
        let item = frame(stream, Duration::from_secs(60)).expect("an announcement, not a hang-up");
        assert_eq!(item["ok"]["commit"], id.as_str(), "{item}");
    }
    let mut line = String::new();
    BufReader::new(log_f.stdout.take().expect("stdout")).read_line(&mut line).expect("log -f prints");
    assert!(line.contains(&id), "{line}");
    let _ = log_f.kill();
    let _ = log_f.wait();
}

#[test]
fn beyond_capacity_a_client_is_refused_at_once_and_its_command_never_runs() {
    raise_open_files();
    let Pair { alice, bob, alice_repo, bob_repo } = pair();
    let repo = repo_id(&alice, &alice_repo);
    // Every place for requests taken by clients that say nothing.
    let mut idle_ones: Vec<UnixStream> = (0..MAX_CLIENTS).map(|_| idle(&alice)).collect();
    let started = Instant::now();
    let out = alice.run_in(&alice_repo, &["chat", "--send", "sent while full"]);
    assert_one_line_error(&out, 1, "as many clients as it takes");
    assert!(started.elapsed() < IDLE_TIMEOUT, "refused at once, not after waiting: {:?}", started.elapsed());
    let extra = idle(&alice);
    let refusal = frame(&extra, Duration::from_secs(10)).expect("a reason before the hang-up");
    assert_eq!(refusal["id"], 0, "{refusal}");
    assert!(refusal["error"].as_str().is_some_and(|e| e.contains("try again")), "{refusal}");
    assert_eq!(frame(&extra, Duration::from_secs(10)), None, "then the hang-up");

    // Places free up: what failed was not done, what comes next is.
    idle_ones.clear();
    eventually(Duration::from_secs(30), "alice's node to serve again", || {
        alice.run_in(&alice_repo, &["chat", "--send", "sent after"]).status.success().then_some(())
    });
    let tail = eventually(Duration::from_secs(30), "bob to get the message sent after", || {
        let tail = bob.ok_in(&bob_repo, &["chat", "--tail"]);
        tail.contains("sent after").then_some(tail)
    });
    let own = alice.ok_in(&alice_repo, &["chat", "--tail"]);
    assert!(!tail.contains("sent while full") && !own.contains("sent while full"), "{tail}\n{own}");

    // Followers have places of their own: all taken, a new follower is refused at once, and
    // requests are still served.
    let followers: Vec<UnixStream> = (0..MAX_FOLLOWERS).map(|_| follower(&alice, &repo)).collect();
    let out = alice.run_in(&alice_repo, &["log", "-f"]);
    assert_one_line_error(&out, 1, "as many followers as it takes");
    alice.ok_in(&alice_repo, &["kv", "set", "still", "served"]);
    drop(followers);
}

/// Alice's store gets `n` announcements by "peer" of `repo`, each with a long summary (about
/// 1.3 KB of JSON each, as in the report), while her node is stopped.
fn fill_feed(alice: &Node, repo: &RepoId, n: usize) {
    alice.ok(&["daemon", "stop"]);
    // The node's last threads may hold the store a moment after its lock was released.
    let store = eventually(Duration::from_secs(10), "the stopped node's store", || {
        git_p2p::store::Store::open(&alice.data_dir().join("store.redb")).ok()
    });
    // In transactions of a thousand: one each takes a debug build a minute for 10 000.
    let entries: Vec<_> = (0..n)
        .map(|i| git_p2p::proto::announce::FeedEntry {
            repo: repo.clone(),
            // Twenty authors: one alone keeps at most its share of the feed.
            peer: format!("12D3KooWPeer{}", i % 20),
            name: Some("peer".into()),
            commit: git_p2p::proto::announce::Commit {
                id: format!("{i:040x}"),
                parents: vec![format!("{:040x}", i + 1)],
                author: "peer".into(),
                summary: format!("commit {i} {}", "x".repeat(1000)),
                time: i as i64,
                ref_name: Some("refs/heads/main".into()),
            },
            announced_at: i as u64,
            received_at: i as u64,
        })
        .collect();
    for chunk in entries.chunks(1000) {
        assert!(store.feed_insert_all(chunk).expect("insert").iter().all(|&new| new), "new");
    }
    for i in 0..8000 {
        store.kv_own(repo, &format!("review/{i:0>250}"), i, false).expect("a key");
    }
    store.sync().expect("sync");
}

#[test]
fn log_and_kv_ls_of_any_size_are_answered_in_pages() {
    let alice = Node::new("alice");
    let repo_dir = alice.repo("proj", 1);
    alice.ok_in(&repo_dir, &["init"]);
    let repo = repo_id(&alice, &repo_dir);
    fill_feed(&alice, &repo, 10_000);
    for (n, expected) in [(3000, 3000), (20_000, 10_000)] {
        let out = alice.run_in(&repo_dir, &["log", "--json", "-n", &n.to_string()]);
        assert!(out.status.success(), "log -n {n}: {}", stderr(&out));
        let lines: Vec<Value> =
            String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
        assert_eq!(lines.len(), expected, "log -n {n}");
        assert_eq!(lines[0]["summary"].as_str().map(|s| s.starts_with("commit 9999 ")), Some(true), "newest first");
        let ids: std::collections::HashSet<&str> = lines.iter().filter_map(|l| l["commit"].as_str()).collect();
        assert_eq!(ids.len(), expected, "each once");
    }
    let keys = alice.ok_in(&repo_dir, &["kv", "ls"]);
    assert_eq!(keys.lines().count(), 8000, "every key: more than an answer holds");
}

#[test]
fn right_after_kill9_the_next_command_starts_a_new_node() {
    let alice = Node::new("alice");
    alice.start();
    for round in 0..8 {
        let pid = alice.pid().expect("a node");
        unsafe_kill(pid, 9);
        // At once: the killed node's socket may still take the connection, then drop it.
        let out = alice.run(&["peers", "--json"]);
        assert!(out.status.success(), "round {round}: {}", stderr(&out));
        let new = alice.pid().expect("a new node");
        assert_ne!(new, pid, "round {round}: a new node");
        assert!(alive(new), "round {round}");
    }
    // Three commands at once after a kill -9: all served, by one new node.
    let pid = alice.pid().expect("a node");
    unsafe_kill(pid, 9);
    let racing: Vec<_> = (0..3).map(|_| alice.command(&["id", "--json"]).spawn().expect("spawn")).collect();
    for child in racing {
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let node = alice.pid().expect("a new node");
    assert_ne!(node, pid);
    // A node started in the race and beaten to the lock gives up (after waiting for it a while).
    eventually(Duration::from_secs(10), "one node process for alice's data dir", || {
        (node_processes(&alice) == [node]).then_some(())
    });
}

/// The live `git-p2p daemon run` processes of this node's environment.
fn node_processes(node: &Node) -> Vec<i32> {
    let marker = format!("XDG_DATA_HOME={}", node.path("data").display());
    let pids = std::fs::read_dir("/proc").expect("/proc").filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok());
    pids.filter(|pid: &i32| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        alive(*pid)
            && String::from_utf8_lossy(&cmdline).contains("daemon\0run")
            && environ.split(|b| *b == 0).any(|kv| kv == marker.as_bytes())
    })
    .collect()
}

#[test]
fn broken_clients_and_bad_settings_are_told_what_is_wrong() {
    let alice = Node::new("alice");
    alice.start();
    // An unterminated line, then the end: incomplete, not "too long".
    let mut stream = idle(&alice);
    stream.write_all(format!("{{\"v\":{PROTOCOL_VERSION},\"id\":1,\"req\":{{\"op\":\"status\"}}").as_bytes()).unwrap();
    stream.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let answer = frame(&stream, Duration::from_secs(10)).expect("a reason");
    let error = answer["error"].as_str().expect("an error");
    assert!(error.contains("incomplete") && !error.contains("too long"), "{error}");
    // A line longer than any request: too long, said at once.
    let mut stream = idle(&alice);
    let long = vec![b'x'; proto::MAX_REQUEST + 10];
    let _ = stream.write_all(&long);
    let answer = frame(&stream, Duration::from_secs(10)).expect("a reason");
    assert!(answer["error"].as_str().is_some_and(|e| e.contains("too long")), "{answer}");

    // A listen address this machine does not have (TEST-NET-1 is never assigned).
    let bob = Node::bare("bob");
    bob.config(&["p2p.mdns", "false"]);
    bob.config(&["p2p.listen", "/ip4/192.0.2.1/tcp/0"]);
    let out = bob.run(&["daemon", "start"]);
    assert_one_line_error(
        &out,
        1,
        "cannot listen on /ip4/192.0.2.1/tcp/0: no network interface of this machine has that address",
    );
}

#[test]
fn a_dht_store_full_of_others_records_still_takes_ours() {
    let alice = Node::new("alice");
    let repo_dir = alice.repo("proj", 1);
    alice.ok_in(&repo_dir, &["init"]);
    alice.ok(&["daemon", "stop"]);
    // As many records as a node holds for strangers (stored while the node is stopped).
    let store = git_p2p::store::Store::open(&alice.data_dir().join("store.redb")).expect("the store");
    let held = git_p2p::store::DhtRecord { value: b"{}".to_vec(), publisher: None, expires: None };
    for i in 0..git_p2p::node::kad_store::MAX_STRANGERS {
        store.dht_put(format!("held-{i}").as_bytes(), &held).expect("a record");
    }
    store.sync().expect("sync");
    drop(store);
    // Our own writes are never refused for others' records.
    alice.ok_in(&repo_dir, &["kv", "set", "k", "v"]);
    let found = alice.ok_in(&repo_dir, &["kv", "get", "k"]);
    assert!(found.trim_end().ends_with("you  v"), "{found}");
}
