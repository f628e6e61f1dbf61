//! The Nostr bridge against a real relay on 127.0.0.1 (started here): NIP-34 events from real
//! commits, a relay that goes away during commits and a node killed meanwhile, relays that are
//! malformed, refuse or hang up, and room messages both ways.

use std::path::Path;
use std::time::Duration;

use nostr_sdk::{Alphabet, Event, Filter, Kind, PublicKey, SingleLetterTag};
use serde_json::Value;

use crate::relay::TestRelay;
use crate::support::*;

fn tags(e: &Event) -> Vec<Vec<String>> {
    e.tags.iter().map(|t| t.as_slice().to_vec()).collect()
}

fn pubkey(node: &Node) -> PublicKey {
    let id = node.json(&["id", "--json"]);
    PublicKey::parse(id["npub"].as_str().expect("npub")).expect("valid npub")
}

fn commit(node: &Node, repo: &Path, message: &str) -> String {
    node.git(repo, &["commit", "-q", "--allow-empty", "-m", message]);
    node.git(repo, &["rev-parse", "HEAD"]).trim().to_string()
}

fn nostr_status(node: &Node) -> Value {
    node.json(&["nostr", "status", "--json"])
}

/// The newest state (30618) `author` has on the relay.
fn latest_state(relay: &TestRelay, author: PublicKey) -> Option<Event> {
    relay.fetch(Filter::new().kind(Kind::RepoState).author(author)).into_iter().max_by_key(|e| e.created_at)
}

fn points_main_at(state: &Event, commit: &str) -> bool {
    tags(state).contains(&vec!["refs/heads/main".to_string(), commit.to_string()])
}

/// A node with the relay configured and a repository `proj` with an https origin, initialised.
fn node_with_repo(name: &str, relays: &[&str]) -> (Node, std::path::PathBuf) {
    let node = Node::new(name);
    for r in relays {
        node.config(&["--add", "p2p.relay", r]);
    }
    let repo = node.repo("proj", 1);
    node.git(&repo, &["remote", "add", "origin", "https://example.com/acme/proj.git"]);
    node.git(&repo, &["config", "p2p.description", "the frobnicator"]);
    node.ok_in(&repo, &["init"]);
    (node, repo)
}

#[test]
fn a_commit_reaches_the_relay_as_nip34_announcement_and_state() {
    let relay = TestRelay::start();
    let (alice, repo) = node_with_repo("alice", &[&relay.url()]);
    let root = alice.git(&repo, &["rev-list", "--max-parents=0", "HEAD"]).trim().to_string();
    let head = commit(&alice, &repo, "second");
    let me = pubkey(&alice);

    let state = eventually(Duration::from_secs(30), "the state with the new commit on the relay", || {
        latest_state(&relay, me).filter(|s| points_main_at(s, &head))
    });
    let t = tags(&state);
    assert!(t.contains(&vec!["HEAD".into(), "ref: refs/heads/main".into()]), "{t:?}");
    assert!(t.contains(&vec!["r".into(), root.clone(), "euc".into()]), "{t:?}");
    let d = state.tags.identifier().expect("d tag").to_string();

    let announcements = relay.fetch(Filter::new().kind(Kind::GitRepoAnnouncement).author(me));
    assert_eq!(announcements.len(), 1, "one announcement: nothing it says changed");
    let a = tags(&announcements[0]);
    assert!(a.contains(&vec!["d".into(), d.clone()]), "{a:?}");
    assert!(a.contains(&vec!["r".into(), root, "euc".into()]), "{a:?}");
    assert!(a.contains(&vec!["clone".into(), "https://example.com/acme/proj.git".into()]), "{a:?}");
    assert!(a.contains(&vec!["relays".into(), relay.url()]), "{a:?}");
    assert!(a.contains(&vec!["description".into(), "the frobnicator".into()]), "{a:?}");
    assert!(a.contains(&vec!["maintainers".into(), me.to_hex()]), "{a:?}");
    assert!(a.contains(&vec!["name".into(), "proj".into()]), "{a:?}");

    let status = eventually(Duration::from_secs(10), "nothing pending", || {
        let s = nostr_status(&alice);
        (s["pending"] == 0).then_some(s)
    });
    assert_eq!(status["enabled"], true);
    assert_eq!(status["relays"][0]["state"], "connected", "{status}");
    assert!(status["relays"][0]["accepted"].as_u64().unwrap_or(0) >= 2, "{status}");
    let daemon = alice.ok(&["daemon", "status"]);
    assert!(daemon.contains("1/1 relay(s) connected"), "{daemon}");

    // A tag changes the state too; the same state is never published twice.
    alice.git(&repo, &["tag", "v1"]);
    let tagged = commit(&alice, &repo, "third");
    let state = eventually(Duration::from_secs(30), "the state with the tag", || {
        latest_state(&relay, me).filter(|s| points_main_at(s, &tagged))
    });
    let tag_target = alice.git(&repo, &["rev-parse", "v1"]).trim().to_string();
    assert!(tags(&state).contains(&vec!["refs/tags/v1".into(), tag_target]), "{:?}", tags(&state));
}

#[test]
fn relay_down_during_20_commits_and_a_killed_node_lose_nothing() {
    let mut relay = TestRelay::start();
    let (alice, repo) = node_with_repo("alice", &[&relay.url()]);
    let me = pubkey(&alice);
    let first = commit(&alice, &repo, "before the outage");
    eventually(Duration::from_secs(30), "the first state on the relay", || {
        latest_state(&relay, me).filter(|s| points_main_at(s, &first))
    });
    let before = latest_state(&relay, me).expect("a state").created_at;

    relay.down();
    let mut last = String::new();
    for i in 0..20 {
        last = commit(&alice, &repo, &format!("offline {i}"));
    }
    let status = eventually(Duration::from_secs(30), "the state queued, the relay seen down", || {
        let s = nostr_status(&alice);
        (s["pending"].as_u64().unwrap_or(0) >= 1 && s["relays"][0]["state"] != "connected").then_some(s)
    });
    assert!(status["relays"][0]["pending"].as_u64().unwrap_or(0) >= 1, "{status}");
    // Replaceable events are coalesced: the queue holds the newest state, not 20.
    assert!(status["pending"].as_u64().unwrap_or(0) <= 2, "{status}");

    // The node dies with the queue full, and comes back after the relay.
    alice.kill9();
    relay.up();
    alice.start();
    let state = eventually(Duration::from_secs(60), "the newest state on the relay after the outage", || {
        latest_state(&relay, me).filter(|s| points_main_at(s, &last))
    });
    assert!(state.created_at > before, "states strictly increase");
    eventually(Duration::from_secs(30), "the queue empty", || (nostr_status(&alice)["pending"] == 0).then_some(()));
}

#[test]
fn malformed_refusing_and_hanging_up_relays_give_a_clear_status_and_keep_the_outbox() {
    // Its reason carries an escape sequence and a line break: shown, but inert, on one line.
    let refusing = TestRelay::refusing("blocked: not on the list \u{1b}[2J\nsecond line");
    // Accepts TCP and closes at once: a relay that hangs up. The wss:// one makes the node set
    // up TLS (it panics without a rustls crypto provider).
    let hang_up = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hang_up_port = hang_up.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in hang_up.incoming() {
            drop(stream);
        }
    });
    let ws = format!("ws://127.0.0.1:{hang_up_port}");
    let wss = format!("wss://127.0.0.1:{hang_up_port}");
    let (alice, repo) = node_with_repo("alice", &["not a relay url", &refusing.url(), &ws, &wss]);
    commit(&alice, &repo, "refused");

    let status = eventually(Duration::from_secs(30), "the refusal in the status", || {
        let s = nostr_status(&alice);
        let relays = s["relays"].as_array()?.clone();
        let refused = relays.iter().find(|r| r["url"].as_str().is_some_and(|u| u.contains(&refusing.url()[5..])))?;
        refused["last_error"].as_str()?.contains("blocked: not on the list").then_some(s)
    });
    let relays = status["relays"].as_array().expect("relays");
    assert_eq!(relays.len(), 4, "{status}");
    let reason =
        relays.iter().find_map(|r| r["last_error"].as_str().filter(|e| e.contains("blocked"))).expect("reason");
    assert!(!reason.contains('\u{1b}') && !reason.contains('\n'), "{reason:?}");
    let human = alice.ok(&["nostr", "status"]);
    assert!(human.contains("blocked: not on the list") && !human.contains('\u{1b}'), "{human}");
    let invalid = relays.iter().find(|r| r["url"] == "not a relay url").expect("the malformed one listed");
    assert_eq!(invalid["state"], "invalid");
    assert!(invalid["last_error"].as_str().unwrap_or("").contains("not a relay URL"), "{invalid}");
    for url in [&ws, &wss] {
        let r = relays.iter().find(|r| r["url"].as_str().is_some_and(|u| u.starts_with(url.as_str()))).expect("listed");
        assert_ne!(r["state"], "connected", "{r}");
    }
    assert!(status["pending"].as_u64().unwrap_or(0) >= 2, "refused events stay queued: {status}");

    // Still running, still answering, nothing panicked.
    let again = nostr_status(&alice);
    assert!(again["pending"].as_u64().unwrap_or(0) >= 2, "{again}");
    alice.ok(&["daemon", "status"]);
    let log = std::fs::read_to_string(alice.data_dir().join("node.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn room_messages_cross_through_the_relay_and_plain_comments_show_up() {
    let relay = TestRelay::start();
    // Alice and Bob share no network: only the relay connects them.
    let (alice, alice_repo) = node_with_repo("alice", &[&relay.url()]);
    let bob = Node::new("bob");
    bob.config(&["p2p.relay", &relay.url()]);
    bob.git(&bob.path("home"), &["clone", "-q", alice_repo.to_str().expect("utf-8"), "proj"]);
    let bob_repo = bob.path("home/proj");
    bob.ok_in(&bob_repo, &["init"]);

    // Bob's node is down when Alice writes: the relay keeps the message for him.
    bob.ok(&["daemon", "stop"]);
    let sent = alice.json_in(&alice_repo, &["chat", "--send", "hello over nostr", "--json"]);
    // And one in the thread of her HEAD commit.
    alice.json_in(&alice_repo, &["chat", "--commit", "HEAD", "--send", "about this commit", "--json"]);
    eventually(Duration::from_secs(30), "alice's comments accepted", || {
        (nostr_status(&alice)["pending"] == 0).then_some(())
    });
    let comments = relay.fetch(Filter::new().kind(Kind::Comment).author(pubkey(&alice)));
    assert_eq!(comments.len(), 2);
    let head = alice.git(&alice_repo, &["rev-parse", "HEAD"]).trim().to_string();
    let room = comments.iter().find(|c| c.content == "hello over nostr").expect("the room's message");
    assert!(room.tags.iter().all(|t| t.as_slice()[0] != "commit"), "no commit tag in the room's message");
    let thread = comments.iter().find(|c| c.content == "about this commit").expect("the thread's message");
    assert!(thread.tags.iter().any(|t| t.as_slice() == ["commit".to_string(), head.clone()]), "{:?}", thread.tags);

    let tail = |node: &Node, repo: &Path| -> Vec<Value> {
        let out = node.run_in(repo, &["chat", "--tail", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    };
    bob.start();
    let got = eventually(Duration::from_secs(30), "alice's message in bob's room", || {
        let messages = tail(&bob, &bob_repo);
        messages.iter().any(|m| m["text"] == "hello over nostr").then_some(messages)
    });
    let m = got.iter().find(|m| m["text"] == "hello over nostr").expect("found");
    assert_eq!(m["peer"], alice.peer_id().as_str(), "verified as alice's git-p2p message");
    assert_eq!(m["id"], sent["id"], "the same message id both ways");
    assert!(m.get("via").is_none_or(|v| v.is_null()), "{m}");
    // The thread's message is in the thread; the room has at most its notice.
    let in_room = got.iter().filter(|m| m["text"] == "about this commit");
    assert!(in_room.into_iter().all(|m| m["thread"] == head.as_str()), "only as a notice: {got:?}");
    eventually(Duration::from_secs(30), "alice's thread message in bob's thread", || {
        let out = bob.run_in(&bob_repo, &["chat", "--tail", "--commit", &head, "--json"]);
        String::from_utf8_lossy(&out.stdout).contains("about this commit").then_some(())
    });

    // A plain Nostr client comments on Bob's repository announcement.
    let bob_key = pubkey(&bob);
    let announcement = eventually(Duration::from_secs(30), "bob's announcement on the relay", || {
        relay.fetch(Filter::new().kind(Kind::GitRepoAnnouncement).author(bob_key)).into_iter().next()
    });
    let carol = nostr_sdk::Keys::generate();
    let coordinate = announcement.coordinate().expect("addressable").into_owned();
    let target = || nostr_sdk::nips::nip22::CommentTarget::coordinate(std::borrow::Cow::Borrowed(&coordinate), None);
    let comment = nostr_sdk::EventBuilder::comment("hi from gitworkshop", target(), Some(target()))
        .sign_with_keys(&carol)
        .expect("sign");
    relay.publish(&carol, &comment);
    let got = eventually(Duration::from_secs(30), "carol's comment in bob's room", || {
        let messages = tail(&bob, &bob_repo);
        messages.iter().any(|m| m["text"] == "hi from gitworkshop").then_some(messages)
    });
    let c = got.iter().find(|m| m["text"] == "hi from gitworkshop").expect("found");
    assert_eq!(c["via"], "nostr");
    assert_eq!(c["peer"], nostr_sdk::ToBech32::to_bech32(&carol.public_key()).expect("npub"));
    assert_eq!(got.iter().filter(|m| m["text"] == "hello over nostr").count(), 1, "no duplicates");

    // A comment carrying an escape sequence (and CR LF line ends): kept, but inert.
    let evil = nostr_sdk::EventBuilder::comment("evil \u{1b}[2J\r\nsecond line", target(), Some(target()))
        .sign_with_keys(&carol)
        .expect("sign");
    relay.publish(&carol, &evil);
    eventually(Duration::from_secs(30), "carol's second comment in bob's room", || {
        tail(&bob, &bob_repo).iter().any(|m| m["text"] == "evil \u{fffd}[2J\nsecond line").then_some(())
    });
    let human = bob.run_in(&bob_repo, &["chat", "--tail"]);
    assert!(human.status.success() && !human.stdout.contains(&0x1b), "{}", String::from_utf8_lossy(&human.stdout));

    // The r tag filter: the comment is found by the repository's root commit too.
    let root = alice.git(&alice_repo, &["rev-list", "--max-parents=0", "HEAD"]).trim().to_string();
    let by_root =
        relay.fetch(Filter::new().kind(Kind::Comment).custom_tag(SingleLetterTag::lowercase(Alphabet::R), root));
    assert_eq!(by_root.len(), 2, "alice's comments carry the root commit");
}

#[test]
fn a_message_seen_both_ways_is_kept_once() {
    let relay = TestRelay::start();
    let Pair { alice, bob, alice_repo, bob_repo } = pair_with(&[&relay.url()]);
    alice.ok_in(&alice_repo, &["chat", "--send", "both ways"]);
    eventually(Duration::from_secs(30), "accepted by the relay", || {
        (nostr_status(&alice)["pending"] == 0).then_some(())
    });
    // A later comment on the relay: once Bob has it, he has also had the relay's copy of the first.
    let carol = nostr_sdk::Keys::generate();
    let root = alice.git(&alice_repo, &["rev-list", "--max-parents=0", "HEAD"]).trim().to_string();
    let marker = nostr_sdk::EventBuilder::new(Kind::Comment, "marker")
        .tag(nostr_sdk::Tag::custom(nostr_sdk::TagKind::custom("r"), [root]))
        .sign_with_keys(&carol)
        .expect("sign");
    relay.publish(&carol, &marker);
    let messages = eventually(Duration::from_secs(30), "the marker in bob's room", || {
        let out = bob.run_in(&bob_repo, &["chat", "--tail", "--json"]);
        let messages: Vec<Value> =
            String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        messages.iter().any(|m| m["text"] == "marker").then_some(messages)
    });
    assert_eq!(messages.iter().filter(|m| m["text"] == "both ways").count(), 1, "{messages:#?}");
}
