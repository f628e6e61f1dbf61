//! The node on loopback: discovery through bootstrap, the address book, and the daemon's life
//! cycle (auto-start, races, stale sockets, stop, SIGTERM).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::*;

/// Waits until `node` lists exactly `expected` among its peers, each with a transport and an RTT.
fn wait_for_peers(node: &Node, expected: &[&str]) {
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    eventually(Duration::from_secs(30), &format!("{} to list {expected:?} with RTTs", node.name), || {
        let peers = node.peers();
        let ready: BTreeSet<String> = peers
            .iter()
            .filter(|p| p["rtt_ms"].is_number() && matches!(p["transport"].as_str(), Some("tcp" | "quic")))
            .filter_map(|p| p["peer_id"].as_str().map(str::to_string))
            .collect();
        expected.is_subset(&ready).then_some(())
    });
}

#[test]
fn three_nodes_find_each_other_through_one_bootstrap_and_reconnect_after_kill9() {
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    let carol = Node::new("carol");
    alice.start();
    let boot = alice.tcp_addr();
    bob.config(&["p2p.bootstrap", &boot]);
    carol.config(&["p2p.bootstrap", &boot]);
    bob.start();
    carol.start();
    let (a, b, c) = (alice.peer_id(), bob.peer_id(), carol.peer_id());

    wait_for_peers(&alice, &[&b, &c]);
    wait_for_peers(&bob, &[&a, &c]);
    wait_for_peers(&carol, &[&a, &b]);
    let bob_seen_by_alice = alice.peers().into_iter().find(|p| p["peer_id"] == b.as_str()).unwrap();
    assert_eq!(bob_seen_by_alice["name"], "bob", "names travel with identify");

    // Carol dies hard and comes back without any bootstrap config: her address book suffices.
    carol.kill9();
    carol.config(&["--unset", "p2p.bootstrap"]);
    let status = carol.start();
    assert_eq!(status["peer_id"], c.as_str(), "same identity after restart");
    assert!(carol.status()["config"]["bootstrap"].as_array().unwrap().is_empty());
    wait_for_peers(&carol, &[&a, &b]);
    wait_for_peers(&alice, &[&b, &c]);
}

#[test]
fn shared_repos_are_shown_per_peer() {
    let alice = Node::new("alice");
    let bob = Node::new("bob");
    alice.start();
    bob.config(&["p2p.bootstrap", &alice.tcp_addr()]);
    bob.start();
    let repo = alice.repo("proj", 2);
    let root = alice.git(&repo, &["rev-list", "--max-parents=0", "HEAD"]).trim().to_string();
    bob.git(&bob.path("home"), &["clone", "-q", repo.to_str().unwrap(), "proj"]);
    let bob_repo = bob.path("home/proj");
    let out = alice.run_in(&repo, &["init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = bob.run_in(&bob_repo, &["init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(bob.status()["repos"][0]["id"] == root.as_str());
    let b = bob.peer_id();
    eventually(Duration::from_secs(20), "alice to see that bob has the repo", || {
        let peers = alice.peers();
        let bob = peers.iter().find(|p| p["peer_id"] == b.as_str())?;
        (bob["repos"].as_array()? == &vec![serde_json::Value::from(root.clone())]).then_some(())
    });
    let table = alice.ok(&["peers"]);
    assert!(table.contains("bob") && table.contains(&b), "{table}");
}

#[test]
fn racing_commands_start_exactly_one_node() {
    let alice = Node::new("alice");
    let children: Vec<_> = (0..6)
        .map(|_| {
            let mut cmd = alice.command(&["id", "--json"]);
            cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
            cmd.spawn().expect("spawn")
        })
        .collect();
    let outputs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().expect("wait")).collect();
    let pids: BTreeSet<u64> = outputs
        .iter()
        .map(|o| {
            assert!(o.status.success(), "{}", stderr(o));
            assert!(stderr(o).is_empty(), "auto-start is quiet: {}", stderr(o));
            alice.status()["pid"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(pids.len(), 1, "one node for all: {pids:?}");
    let ids: BTreeSet<String> = outputs
        .iter()
        .map(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("id --json")["peer_id"].to_string())
        .collect();
    assert_eq!(ids.len(), 1, "every command met the same node: {ids:?}");
    let running = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
            let cmdline = std::fs::read_to_string(e.path().join("cmdline")).unwrap_or_default();
            cmdline.contains("daemon\0run")
                && String::from_utf8_lossy(&environ).contains(alice.data_dir().parent().unwrap().to_str().unwrap())
        })
        .count();
    assert_eq!(running, 1, "exactly one daemon process for this data dir");
}

#[test]
fn stop_is_graceful_and_idempotent_and_sigterm_stops_too() {
    let alice = Node::new("alice");
    alice.start();
    let socket = alice.path("run/git-p2p/control.sock");
    assert!(socket.exists());
    let out = alice.ok(&["daemon", "stop"]);
    assert!(out.starts_with("node stopped"), "{out}");
    assert!(!socket.exists(), "socket removed on graceful stop");
    assert_eq!(alice.ok(&["daemon", "stop"]).trim(), "the node is not running");
    let out = alice.run(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "the node is not running");

    alice.start();
    let pid = alice.pid().unwrap();
    unsafe_kill(pid, 15);
    eventually(Duration::from_secs(10), "SIGTERM to stop the node", || (!alive(pid)).then_some(()));
    assert!(!socket.exists(), "socket removed on SIGTERM");
    let log = std::fs::read_to_string(alice.data_dir().join("node.log")).unwrap();
    assert!(log.contains("signal received, stopping") && log.contains("stopped"), "{log}");
}

#[test]
fn a_stale_socket_from_a_dead_node_is_recovered() {
    let alice = Node::new("alice");
    let first = alice.start()["peer_id"].clone();
    alice.kill9();
    assert!(alice.path("run/git-p2p/control.sock").exists(), "kill -9 leaves the socket behind");
    let id = alice.json(&["id", "--json"]);
    assert_eq!(id["peer_id"], first, "auto-started again on the same identity");
}

#[test]
fn a_second_daemon_on_the_same_data_dir_is_refused() {
    let alice = Node::new("alice");
    alice.start();
    let pid = alice.pid().unwrap();
    let out = alice.run(&["daemon", "run"]);
    assert_one_line_error(&out, 1, "a node is already running on");
    assert!(stderr(&out).contains(&pid.to_string()), "{}", stderr(&out));
    assert!(alive(pid), "the first node is untouched");
    alice.ok(&["peers"]);
}

#[test]
fn bad_bootstrap_config_is_a_one_line_error() {
    let alice = Node::new("alice");
    alice.config(&["p2p.bootstrap", "/ip4/127.0.0.1/tcp/notaport"]);
    let out = alice.run(&["peers"]);
    assert_one_line_error(&out, 1, "bad multiaddr in p2p.bootstrap");
    let out = alice.run(&["daemon", "run"]);
    assert_one_line_error(&out, 1, "bad multiaddr in p2p.bootstrap");
    alice.config(&["p2p.bootstrap", "/ip4/127.0.0.1/tcp/1"]);
    assert_one_line_error(&alice.run(&["id"]), 1, "must end with /p2p/");
}

#[test]
fn unwritable_data_dir_is_a_one_line_error() {
    let alice = Node::new("alice");
    // A regular file where the data dir's parent should be: not writable, even for root.
    std::fs::write(alice.path("blocker"), b"").unwrap();
    let mut cmd = alice.command(&["id"]);
    cmd.env("XDG_DATA_HOME", alice.path("blocker/data"));
    let out = cmd.output().unwrap();
    assert_one_line_error(&out, 1, "cannot create directory");
}

#[test]
fn logs_go_to_a_file_and_secrets_never_do() {
    let alice = Node::new("alice");
    alice.start();
    let mut cmd = alice.command(&["daemon", "stop"]);
    cmd.env("RUST_LOG", "trace");
    cmd.output().unwrap();
    let mut cmd = alice.command(&["daemon", "start"]);
    cmd.env("RUST_LOG", "trace");
    assert!(cmd.output().unwrap().status.success());
    alice.ok(&["daemon", "stop"]);
    let log = std::fs::read_to_string(alice.data_dir().join("node.log")).unwrap();
    assert!(log.contains("ready"), "{log}");
    let nostr_secret = std::fs::read_to_string(alice.data_dir().join("nostr.key")).unwrap();
    assert!(!log.contains(nostr_secret.trim()), "the Nostr secret key leaked into the log");
}

#[test]
fn pipelined_requests_are_answered_in_order_and_a_stream_follows_them() {
    use std::io::{BufRead, Write};
    let alice = Node::new("alice");
    alice.start();
    let socket = alice.path("run/git-p2p/control.sock");
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    // Five requests in one write, a malformed line among them, then a stream request.
    let v = git_p2p::control::proto::PROTOCOL_VERSION;
    let mut batch = String::new();
    for (id, op) in [(1, "status"), (2, "peers"), (3, "status")] {
        batch.push_str(&format!("{{\"v\":{v},\"id\":{id},\"req\":{{\"op\":\"{op}\"}}}}\n"));
    }
    batch.push_str(&format!("{{\"v\":{v},\"id\":4,\"req\":{{\"op\":\"no_such_op\"}}}}\n"));
    batch.push_str(&format!("{{\"v\":{v},\"id\":5,\"req\":{{\"op\":\"peers\"}}}}\n"));
    batch.push_str(&format!("{{\"v\":{v},\"id\":6,\"req\":{{\"op\":\"follow_chat\",\"room\":\"r\"}}}}\n"));
    stream.write_all(batch.as_bytes()).expect("write");
    let mut reader = std::io::BufReader::new(stream);
    let mut ids = Vec::new();
    for _ in 0..6 {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read");
        let frame: serde_json::Value = serde_json::from_str(&line).expect("JSON frame");
        if frame["id"] == 4 {
            assert!(frame["error"].as_str().is_some(), "{frame}");
        }
        if frame["id"] == 6 {
            // A stream is acknowledged with an empty answer before its items.
            assert!(frame.get("ok").is_some_and(|ok| ok.is_null()) && frame.get("error").is_none(), "{frame}");
        }
        ids.push(frame["id"].as_u64().expect("id"));
    }
    assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
}

#[test]
fn a_client_of_another_protocol_version_gets_one_clear_line() {
    use std::io::{BufRead, Write};
    let alice = Node::new("alice");
    alice.start();
    let socket = alice.path("run/git-p2p/control.sock");
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    // What a client of protocol 1 sent.
    stream.write_all(b"{\"v\":1,\"id\":9,\"req\":{\"op\":\"status\"}}\n").expect("write");
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line).expect("read");
    let frame: serde_json::Value = serde_json::from_str(&line).expect("JSON frame");
    assert_eq!(frame["id"], 9, "{frame}");
    let error = frame["error"].as_str().expect("an error");
    assert!(error.contains("version mismatch") && error.contains("daemon stop"), "{error}");
    assert!(!error.contains('\n'), "one line: {error}");
}

#[test]
fn a_foreground_node_logs_to_the_terminal_too() {
    use std::io::BufRead;
    let alice = Node::new("alice");
    let mut child = alice
        .command(&["-v", "daemon", "run"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the node in the foreground");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let ready = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(line) if line.contains("ready") => break line,
            Ok(_) => {}
            Err(e) => panic!("no \"ready\" line on the terminal: {e}"),
        }
    };
    assert!(ready.contains("INFO"), "a log line: {ready}");
    alice.ok(&["daemon", "stop"]);
    assert!(child.wait().expect("the node exits").success());
    let log = std::fs::read_to_string(alice.data_dir().join("node.log")).expect("the log file");
    assert!(log.contains("ready"), "the file has it too");
}
