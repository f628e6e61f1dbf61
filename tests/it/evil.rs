//! An adversarial peer: "eve" is a bare rust-libp2p swarm (not our binary) that joins bob's repo
//! topic and publishes forged, tampered, malformed, off-topic, out-of-bounds and oversized
//! messages, each after an honest announcement that proves the path works. Bob must reject each
//! (the sender's gossipsub score turns negative), store only the honest ones and keep running.
//! Eve also floods bob's chat room with valid messages: bob's per-author limiter must bound what
//! he stores, and the room must keep working for others.

use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use git_p2p::control::Client;
use git_p2p::paths::Paths;
use git_p2p::proto::announce::{Announcement, KIND};
use git_p2p::proto::chat::ChatEntry;
use git_p2p::proto::chat::{self, ChatMessage};
use git_p2p::proto::envelope::Envelope;
use git_p2p::proto::repo::RepoId;
use git_p2p::proto::topic;
use libp2p::futures::StreamExt;
use libp2p::gossipsub::{self, Sha256Topic, TopicHash};
use libp2p::identity::Keypair;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, tcp, yamux, Multiaddr, PeerId};

use crate::support::*;

/// Larger than the node's 64 KiB, so that eve can send what bob must refuse.
const EVE_MAX_TRANSMIT: usize = 256 * 1024;

#[derive(NetworkBehaviour)]
struct EveBehaviour {
    identify: identify::Behaviour,
    gossipsub: gossipsub::Behaviour,
}

/// What the test asks of eve's thread.
enum Command {
    /// Publish these bytes on the topic.
    Publish(Vec<u8>),
    /// Close the connection to bob and dial him again.
    Reconnect,
}

/// What eve's thread tells the test.
#[derive(Debug)]
enum Report {
    /// A reconnect command was taken.
    Reconnecting,
    /// A peer subscribed to a topic.
    Subscribed(PeerId, TopicHash),
    /// The result of a publish command.
    Published(Result<gossipsub::MessageId, gossipsub::PublishError>),
}

/// Eve's swarm, driven on its own thread; publishes what it is sent on `topic`.
struct Eve {
    key: Keypair,
    bob: PeerId,
    topic: TopicHash,
    commands: libp2p::futures::channel::mpsc::UnboundedSender<Command>,
    reports: mpsc::Receiver<Report>,
}

impl Eve {
    fn spawn(bob_addr: Multiaddr, bob: PeerId, topic: Sha256Topic) -> Self {
        let key = Keypair::generate_ed25519();
        let (cmd_tx, mut cmd_rx) = libp2p::futures::channel::mpsc::unbounded::<Command>();
        let (report_tx, reports) = mpsc::channel();
        let swarm_key = key.clone();
        let topic_hash = topic.hash();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let mut swarm = libp2p::SwarmBuilder::with_existing_identity(swarm_key)
                    .with_tokio()
                    .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
                    .expect("tcp transport")
                    .with_behaviour(|key| {
                        let gossip_config = gossipsub::ConfigBuilder::default()
                            .heartbeat_initial_delay(Duration::from_millis(200))
                            .heartbeat_interval(Duration::from_secs(1))
                            // As our nodes do: the envelope is what is signed.
                            .validation_mode(gossipsub::ValidationMode::Anonymous)
                            .message_id_fn(git_p2p::node::behaviour::message_id)
                            .max_transmit_size(EVE_MAX_TRANSMIT)
                            .build()
                            .expect("gossipsub config");
                        let gossipsub =
                            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_config)
                                .expect("gossipsub");
                        let identify = identify::Behaviour::new(
                            identify::Config::new("/git-p2p/1.0.0".to_string(), key.public())
                                .with_agent_version("evil/6.6.6".to_string()),
                        );
                        EveBehaviour { identify, gossipsub }
                    })
                    .expect("behaviour")
                    .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
                    .build();
                swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).expect("listen");
                swarm.behaviour_mut().gossipsub.subscribe(&topic).expect("subscribe");
                swarm.dial(bob_addr.clone()).expect("dial");
                let mut redial_when_closed = false;
                loop {
                    tokio::select! {
                        command = cmd_rx.next() => {
                            let report = match command {
                                // The test dropped its sender: it is over.
                                None => break,
                                Some(Command::Publish(data)) => {
                                    Report::Published(swarm.behaviour_mut().gossipsub.publish(topic.clone(), data))
                                }
                                Some(Command::Reconnect) => {
                                    if swarm.disconnect_peer_id(bob).is_ok() {
                                        redial_when_closed = true;
                                    } else {
                                        swarm.dial(bob_addr.clone()).expect("dial");
                                    }
                                    Report::Reconnecting
                                }
                            };
                            if report_tx.send(report).is_err() {
                                break;
                            }
                        }
                        event = swarm.select_next_some() => {
                            let report = match event {
                                SwarmEvent::Behaviour(EveBehaviourEvent::Gossipsub(
                                    gossipsub::Event::Subscribed { peer_id, topic },
                                )) => Some(Report::Subscribed(peer_id, topic)),
                                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. }
                                    if peer_id == bob && redial_when_closed =>
                                {
                                    redial_when_closed = false;
                                    swarm.dial(bob_addr.clone()).expect("dial");
                                    None
                                }
                                _ => None,
                            };
                            if report.is_some_and(|r| report_tx.send(r).is_err()) {
                                break;
                            }
                        }
                    }
                }
            });
        });
        Self { key, bob, topic: topic_hash, commands: cmd_tx, reports }
    }

    fn peer_id(&self) -> PeerId {
        self.key.public().to_peer_id()
    }

    /// Waits (bounded) until `peer` is known to be subscribed to `topic`.
    fn wait_subscribed(&self, peer: PeerId, topic: &TopicHash) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.reports.recv_timeout(left) {
                Ok(Report::Subscribed(p, t)) if p == peer && &t == topic => return,
                Ok(_) => {}
                Err(e) => panic!("bob never subscribed to the repo topic as seen by eve: {e}"),
            }
        }
    }

    /// Publishes `data` on the topic; returns gossipsub's answer.
    fn publish(&self, data: Vec<u8>) -> Result<gossipsub::MessageId, gossipsub::PublishError> {
        self.commands.unbounded_send(Command::Publish(data)).expect("eve's thread is running");
        loop {
            match self.reports.recv_timeout(Duration::from_secs(10)).expect("eve answers a publish") {
                Report::Published(result) => return result,
                Report::Subscribed(..) | Report::Reconnecting => {}
            }
        }
    }

    /// Drops the connection to bob, dials him again and waits until he is subscribed again.
    fn reconnect(&self) {
        self.commands.unbounded_send(Command::Reconnect).expect("eve's thread is running");
        loop {
            match self.reports.recv_timeout(Duration::from_secs(10)).expect("eve answers a reconnect") {
                Report::Reconnecting => break,
                Report::Subscribed(..) | Report::Published(_) => {}
            }
        }
        self.wait_subscribed(self.bob, &self.topic);
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// An announcement of a made-up commit: a 40-hex id derived from `summary`, since bob's feed
/// keeps one entry per (repo, commit, peer).
pub(crate) fn announcement(summary: &str) -> Announcement {
    use sha2::Digest;
    Announcement {
        commit: git_p2p::proto::announce::Commit {
            ref_name: Some("refs/heads/main".into()),
            id: hex::encode(&sha2::Sha256::digest(summary.as_bytes())[..20]),
            parents: vec!["b".repeat(40)],
            author: "Eve".into(),
            summary: summary.into(),
            time: 1_700_000_000,
        },
        name: Some("eve".into()),
    }
}

/// A named bad message.
pub(crate) type Bad = (&'static str, Vec<u8>);

/// The bad messages, each distinct and each with an `EVIL-` marker where it has a summary; and,
/// apart, the oversized one (bob's gossipsub drops the stream it came on).
pub(crate) fn bad_messages(eve: &Keypair, repo_id: &RepoId) -> (Vec<Bad>, Bad) {
    let ts = now_ms();
    let signed = |repo: &RepoId, a: &Announcement| Envelope::sign(eve, KIND, repo, ts, a.to_body());
    let mallory = Keypair::generate_ed25519();

    // 1. Forged: signed by eve, claiming another author.
    let mut forged = signed(repo_id, &announcement("EVIL-1 forged author"));
    forged.author = hex::encode(mallory.public().encode_protobuf());
    assert!(forged.verify().is_err(), "the forgery does not verify");

    // 2. Tampered: body changed after signing.
    let mut tampered = signed(repo_id, &announcement("honest-looking original"));
    tampered.body = announcement("EVIL-2 tampered body").to_body();
    assert!(tampered.verify().is_err(), "the tampered envelope does not verify");

    // 5. Off-topic: valid announcement for another repo, sent on bob's repo topic.
    let off_topic = signed(&RepoId::try_from("e".repeat(40)).expect("a repo id"), &announcement("EVIL-5 another repo"));
    assert!(off_topic.verify().is_ok());

    // 6. Out of bounds: valid signature, fails validate().
    let mut bad_commit = announcement("EVIL-6a bad commit id");
    bad_commit.commit.id = "xyz".into();
    let escape = announcement("EVIL-6b \u{1b}[2J escape");
    for a in [&bad_commit, &escape] {
        assert!(a.validate().is_err(), "{a:?} is out of bounds");
    }

    // 7. Re-encoded: a valid envelope with its signature's hex in upper case (the same signature
    // bytes, another message id): the one encoding is the only valid one.
    let mut re_encoded = signed(repo_id, &announcement("EVIL-7 re-encoded signature"));
    re_encoded.sig = re_encoded.sig.to_uppercase();
    assert!(re_encoded.verify().is_err(), "a second spelling of a signature does not verify");

    // 4. Oversized: valid signature, encoded far beyond bob's 64 KiB gossip limit.
    let padded = announcement(&format!("EVIL-4 {}", "x".repeat(100 * 1024)));
    let oversized = signed(repo_id, &padded).encode();
    assert!(oversized.len() > 64 * 1024 && oversized.len() < EVE_MAX_TRANSMIT - 1024, "{}", oversized.len());

    let bad = vec![
        ("forged", forged.encode()),
        ("tampered", tampered.encode()),
        ("not JSON", b"EVIL-3a \x00\xff not json {".to_vec()),
        ("not an envelope", br#"{"EVIL-3b":"not an envelope","v":1}"#.to_vec()),
        ("off-topic", off_topic.encode()),
        ("bad commit id", signed(repo_id, &bad_commit).encode()),
        ("escape sequence", signed(repo_id, &escape).encode()),
        ("re-encoded", re_encoded.encode()),
    ];
    (bad, ("oversized", oversized))
}

/// Bob: a real node with an initialised repository (so it is in the repo's topics).
struct Bob {
    bob: Node,
    repo: std::path::PathBuf,
    repo_id: RepoId,
    peer: PeerId,
    pid: i32,
}

fn bob() -> Bob {
    let bob = Node::new("bob");
    bob.start();
    let repo = bob.repo("proj", 1);
    bob.ok_in(&repo, &["init"]);
    let repo_id = RepoId::try_from(bob.git(&repo, &["rev-list", "--max-parents=0", "HEAD"]).trim())
        .expect("the root commit is a repo id");
    let peer = bob.peer_id().parse().expect("bob's peer id");
    let pid = bob.pid().expect("bob's node runs");
    Bob { bob, repo, repo_id, peer, pid }
}

#[test]
fn an_adversarial_peer_is_refused_and_the_node_keeps_running() {
    let Bob { bob, repo, repo_id, peer: bob_peer, pid: bob_pid } = bob();

    let topic = topic::commits(&repo_id);
    let topic_hash = topic.hash();
    let spawn_eve = || {
        let eve = Eve::spawn(bob.tcp_addr().parse().expect("bob's address"), bob_peer, topic.clone());
        eve.wait_subscribed(bob_peer, &topic_hash);
        eve
    };
    let probe = Keypair::generate_ed25519();
    let (bad, oversized) = bad_messages(&probe, &repo_id);
    let mut seen = std::collections::HashSet::new();
    for (what, data) in bad.iter().chain([&oversized]) {
        assert!(seen.insert(data.clone()), "{what}: distinct bytes");
    }

    // Each bad message comes from a fresh eve, after an honest announcement of hers has reached
    // bob (her path works). Bob must reject it: her gossipsub score there turns negative (a
    // rejected message is penalised, and then she is graylisted). Nothing of hers but the honest
    // announcement may reach his feed.
    let mut honest = 0;
    for (i, (what, _)) in bad.iter().enumerate() {
        let eve = spawn_eve();
        let (bad, _) = bad_messages(&eve.key, &repo_id);
        let summary = format!("honest eve {i}");
        wait_for_honest(&bob, &repo, &eve, &repo_id, &summary, None);
        honest += 1;
        let result = eve.publish(bad[i].1.clone());
        assert!(result.is_ok(), "{what}: eve could send it: {result:?}");
        let eve_peer = eve.peer_id().to_string();
        eventually(Duration::from_secs(20), &format!("bob to penalise eve for {what}"), || {
            let peers = bob.peers();
            let score = peers.iter().find(|p| p["peer_id"] == eve_peer.as_str())?["score"].as_f64()?;
            (score < 0.0).then_some(())
        });
        let feed = bob.ok_in(&repo, &["log", "--json", "-n", "1000"]);
        assert!(!feed.contains("EVIL-"), "{what}: a bad message reached bob's feed: {feed}");
    }

    // Oversized: bob's gossipsub refuses the frame and drops the stream it came on; eve's side
    // does not notice, so what she sends next on it is lost. She reconnects when her next honest
    // message does not show up, as any peer would after a restart.
    let eve = spawn_eve();
    let (_, (what, data)) = bad_messages(&eve.key, &repo_id);
    wait_for_honest(&bob, &repo, &eve, &repo_id, "honest eve before", None);
    let result = eve.publish(data);
    assert!(result.is_ok(), "{what}: eve could send it: {result:?}");
    let feed = wait_for_honest(&bob, &repo, &eve, &repo_id, "honest eve again", Some(Duration::from_secs(5)));
    honest += 2;
    assert!(!feed.contains("EVIL-"), "a bad message reached bob's feed: {feed}");
    let entries: Vec<serde_json::Value> = feed.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(entries.len(), honest, "only the honest announcements: {feed}");

    assert!(alive(bob_pid), "bob's node survived");
    assert_eq!(bob.pid(), Some(bob_pid), "the same node, not a restarted one");
    bob.ok(&["peers"]);
    let human = bob.ok_in(&repo, &["log"]);
    assert!(human.contains("honest eve") && !human.contains("EVIL-"), "{human}");
}

/// Publishes an honest announcement with `summary` until bob's feed lists it (re-sent every 3 s
/// with a new time, so new bytes); with `reconnect_after`, eve reconnects once if it has not
/// arrived by then. Returns bob's feed (`log --json`).
fn wait_for_honest(
    bob: &Node,
    repo: &std::path::Path,
    eve: &Eve,
    repo_id: &RepoId,
    summary: &str,
    mut reconnect_after: Option<Duration>,
) -> String {
    let eve_peer = eve.peer_id().to_string();
    let started = Instant::now();
    let mut last_sent: Option<Instant> = None;
    eventually(Duration::from_secs(60), &format!("{summary:?} from eve in bob's log"), || {
        if reconnect_after.is_some_and(|after| started.elapsed() > after) {
            reconnect_after = None;
            eve.reconnect();
            last_sent = None;
        }
        if last_sent.is_none_or(|t| t.elapsed() > Duration::from_secs(3)) {
            let env = Envelope::sign(&eve.key, KIND, repo_id, now_ms(), announcement(summary).to_body());
            match eve.publish(env.encode()) {
                Ok(_) | Err(gossipsub::PublishError::Duplicate) => {}
                Err(e) => eprintln!("eve: honest publish: {e:?}"),
            }
            last_sent = Some(Instant::now());
        }
        let out = bob.run_in(repo, &["log", "--json", "-n", "1000"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut entries = text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"));
        entries.any(|e| e["summary"] == summary && e["peer"] == eve_peer.as_str()).then_some(text)
    })
}

/// The node's chat limiter (`node::service::rooms`): a full bucket, then this many a second.
const CHAT_BURST: f64 = 100.0;
const CHAT_RATE: f64 = 20.0;
/// Messages eve floods bob's chat room with. Bob takes some time to store each accepted one (a
/// durable write), and his bucket refills meanwhile: 100 / (1 - 20/s × write time) are stored
/// before it runs dry (about 250 at 30 ms a write). The flood is far larger, so that the limiter
/// bites well before its end even on a slower disk.
const FLOOD: usize = 1000;

/// A chat message in the repository's room, signed by `key`; `nonce` makes it distinct.
pub(crate) fn chat_message(key: &Keypair, repo_id: &RepoId, text: &str, nonce: u64) -> Vec<u8> {
    let message =
        ChatMessage { thread: None, text: text.into(), name: Some("eve".into()), nonce: format!("{nonce:016x}") };
    Envelope::sign(key, chat::KIND, repo_id, now_ms(), message.to_body()).encode()
}

/// Bob's whole history of the room (`--tail` shows only the last 50), read over his control socket.
pub(crate) fn chat_history(bob: &Node, room: &str) -> Vec<ChatEntry> {
    let env = bob.env_pairs();
    let paths = Paths::from_vars(|name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.into())).expect("paths");
    let mut client = Client::connect(&paths).expect("bob's node answers");
    client.chat_history(room, 10_000).expect("chat history")
}

/// Publishes chat `text` from eve until bob's `chat --tail --json` lists it (re-sent every 3 s
/// with a new nonce, so new bytes).
fn wait_for_chat(bob: &Node, repo: &std::path::Path, eve: &Eve, repo_id: &RepoId, text: &str) {
    let eve_peer = eve.peer_id().to_string();
    let mut last_sent: Option<Instant> = None;
    eventually(Duration::from_secs(60), &format!("{text:?} from eve in bob's chat"), || {
        if last_sent.is_none_or(|t| t.elapsed() > Duration::from_secs(3)) {
            if let Err(e) = eve.publish(chat_message(&eve.key, repo_id, text, now_ms())) {
                eprintln!("eve: honest chat publish: {e:?}");
            }
            last_sent = Some(Instant::now());
        }
        let tail = bob.ok_in(repo, &["chat", "--tail", "--json"]);
        let mut messages = tail.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"));
        messages.any(|m| m["text"] == text && m["peer"] == eve_peer.as_str()).then_some(())
    });
}

/// The `N`s of the `flood N` messages in `history`, in the order bob stored them.
fn flood_numbers(history: &[ChatEntry], eve: &str) -> Vec<usize> {
    history.iter().filter(|m| m.peer == eve).filter_map(|m| m.text.strip_prefix("flood ")?.parse().ok()).collect()
}

/// Resident memory of a process, in KiB.
pub(crate) fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("VmRSS in kB")
}

#[test]
fn a_flood_of_chat_messages_is_rate_limited() {
    let Bob { bob, repo, repo_id, peer: bob_peer, pid: bob_pid } = bob();

    let topic = topic::chat(&repo_id);
    let topic_hash = topic.hash();
    let spawn_eve = || {
        let eve = Eve::spawn(bob.tcp_addr().parse().expect("bob's address"), bob_peer, topic.clone());
        eve.wait_subscribed(bob_peer, &topic_hash);
        eve
    };
    let score_at_bob = |peer: &str| {
        let peers = bob.peers();
        peers.iter().find(|p| p["peer_id"] == peer)?["score"].as_f64()
    };

    // The path works: an honest message of eve's reaches bob's room.
    let eve = spawn_eve();
    let eve_peer = eve.peer_id().to_string();
    wait_for_chat(&bob, &repo, &eve, &repo_id, "honest hello");

    // The flood: distinct, valid, signed messages, as fast as eve can send them. Bob's bucket
    // holds at most CHAT_BURST tokens when it starts, and refills at CHAT_RATE from then on.
    let flood_start = Instant::now();
    let mut sent = 0;
    for i in 0..FLOOD {
        match eve.publish(chat_message(&eve.key, &repo_id, &format!("flood {i}"), i as u64)) {
            Ok(_) => sent += 1,
            Err(e) if i < 5 => panic!("eve could not start the flood: {e:?}"),
            Err(_) => {}
        }
    }
    let publishing = flood_start.elapsed();
    assert!(sent as f64 > CHAT_BURST + 50.0, "the flood exceeds the burst: only {sent} sent");

    // Bob's limiter drops the excess: bob has taken a full bucket, and no more.
    eventually(Duration::from_secs(60), "bob to take the flood's first burst", || {
        (flood_numbers(&chat_history(&bob, repo_id.as_str()), &eve_peer).len() as f64 >= CHAT_BURST).then_some(())
    });
    // Being over the rate is not misconduct (an honest busy author looks the same): it costs
    // the peer who forwarded it nothing (it is ignored, not rejected).
    assert!(score_at_bob(&eve_peer).is_some_and(|s| s >= 0.0), "eve not penalised: {:?}", score_at_bob(&eve_peer));

    // What bob stored of it is bounded by the bucket (checked over the whole history, and again
    // at the end, when anything still queued at bob has long been processed).
    let check_history = |when: &str| {
        let history = chat_history(&bob, repo_id.as_str());
        let bound = CHAT_BURST + CHAT_RATE * flood_start.elapsed().as_secs_f64() + 1.0;
        let flood = flood_numbers(&history, &eve_peer);
        let stored: Vec<_> = history.iter().filter(|m| m.text.starts_with("flood ")).map(|m| m.received_at).collect();
        let storing = stored.last().zip(stored.first()).map(|(last, first)| last - first);
        eprintln!(
            "{when}: eve sent {sent} in {publishing:?}; bob stored {} (bound {bound:.0}) in {storing:?} ms, highest {:?}",
            flood.len(),
            flood.iter().max()
        );
        assert!((flood.len() as f64) <= bound, "{when}: bob stored {} flood messages, at most {bound:.0}", flood.len());
        assert!(flood.len() < sent, "{when}: some of the flood was dropped");
        assert!(!flood.contains(&(FLOOD - 1)), "{when}: the last flood message got through: {flood:?}");
        let distinct: std::collections::HashSet<_> = flood.iter().collect();
        assert_eq!(distinct.len(), flood.len(), "{when}: each stored once: {flood:?}");
        let tail = bob.ok_in(&repo, &["chat", "--tail", "--json"]);
        assert!(!tail.contains(&format!("\"flood {}\"", FLOOD - 1)), "{when}: {tail}");
    };
    check_history("after the flood");

    // Bob's node is unharmed: same process, answering, memory bounded.
    assert!(alive(bob_pid), "bob's node survived");
    assert_eq!(bob.pid(), Some(bob_pid), "the same node, not a restarted one");
    bob.ok(&["peers"]);
    let rss = rss_kib(bob_pid);
    assert!(rss < 100 * 1024, "bob's node uses {rss} KiB after the flood");
    eprintln!("bob's node: {rss} KiB resident after the flood");

    // The room still works for others: a fresh honest peer's message gets through.
    let carol = spawn_eve();
    wait_for_chat(&bob, &repo, &carol, &repo_id, "carol after the flood");
    assert!(score_at_bob(&carol.peer_id().to_string()).is_some_and(|s| s >= 0.0), "carol is in good standing");
    check_history("at the end");
    assert!(alive(bob_pid), "bob's node survived");
    let rss = rss_kib(bob_pid);
    assert!(rss < 100 * 1024, "bob's node uses {rss} KiB at the end");
}
