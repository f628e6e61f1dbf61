//! Hostile peers beyond gossip: "mallory" is a bare rust-libp2p swarm (identify, gossipsub,
//! Kademlia on our private protocol, ping; over TCP or QUIC) that attacks bob, a real node:
//! forged, rolled-back, over-wide, oversized and foreign DHT records, record and announcement
//! floods from one or many peer ids, messages dated far off, connection and stream floods,
//! replays, identify address spam. After each attack bob answers promptly, stays within its
//! memory, and alice, an honest peer, still gets her announcement, chat message and DHT record
//! through. An honest burst of chat followed by a commit costs alice nothing at bob.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use git_p2p::proto::kv::{record_key, Entry, Record, MAX_ENTRIES};
use git_p2p::proto::repo::RepoId;
use git_p2p::proto::topic;
use libp2p::futures::StreamExt;
use libp2p::gossipsub::{self, TopicHash};
use libp2p::identity::Keypair;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, kad, noise, ping, tcp, yamux, Multiaddr, PeerId, Swarm};
use serde_json::Value;

use crate::evil::{announcement, bad_messages, chat_history, chat_message, now_ms, rss_kib};
use crate::support::*;

#[derive(NetworkBehaviour)]
struct MalloryBehaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    gossipsub: gossipsub::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
}

/// What the test runs on mallory's swarm, on its thread.
type Job = Box<dyn FnOnce(&mut Swarm<MalloryBehaviour>) + Send>;

/// What mallory's thread tells the test.
#[derive(Debug)]
enum Seen {
    Subscribed(PeerId, TopicHash),
    /// A DHT put finished (whatever bob made of it).
    Put,
    Connected(PeerId),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Over {
    Tcp,
    Quic,
}

struct Mallory {
    key: Keypair,
    jobs: libp2p::futures::channel::mpsc::UnboundedSender<Job>,
    seen: mpsc::Receiver<Seen>,
}

fn swarm(key: Keypair, over: Over) -> Swarm<MalloryBehaviour> {
    let behaviour = |key: &Keypair| {
        let gossip = gossipsub::ConfigBuilder::default()
            .heartbeat_initial_delay(Duration::from_millis(200))
            .heartbeat_interval(Duration::from_secs(1))
            .validation_mode(gossipsub::ValidationMode::Anonymous)
            .message_id_fn(git_p2p::node::behaviour::message_id)
            .max_transmit_size(4 << 20)
            // A flood is sent whole however slowly bob reads (by default gossipsub abandons what
            // waited 5 s in its queue: on a loaded machine, part of a flood of 1000).
            .publish_queue_duration(Duration::from_secs(120))
            .build()
            .expect("gossipsub config");
        let peer = key.public().to_peer_id();
        let mut kad_config = kad::Config::new(git_p2p::node::behaviour::KAD_PROTOCOL);
        kad_config.set_max_packet_size(4 << 20);
        kad_config.set_query_timeout(Duration::from_secs(10));
        MalloryBehaviour {
            identify: identify::Behaviour::new(
                identify::Config::new(git_p2p::node::behaviour::IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version("git-p2p/6.6.6 name=Mallory".into()),
            ),
            ping: ping::Behaviour::default(),
            gossipsub: gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip).expect("gossipsub"),
            kad: kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), kad_config),
        }
    };
    let builder = libp2p::SwarmBuilder::with_existing_identity(key).with_tokio();
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(300));
    match over {
        Over::Tcp => builder
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
            .expect("tcp")
            .with_behaviour(|k| behaviour(k))
            .expect("behaviour")
            .with_swarm_config(idle)
            .build(),
        Over::Quic => {
            builder.with_quic().with_behaviour(|k| behaviour(k)).expect("behaviour").with_swarm_config(idle).build()
        }
    }
}

impl Mallory {
    /// Mallory dials bob at `addr` (TCP or QUIC) and joins `topics`.
    fn spawn(bob: PeerId, addr: Multiaddr, over: Over, topics: Vec<gossipsub::Sha256Topic>) -> Self {
        let key = Keypair::generate_ed25519();
        let (jobs, mut job_rx) = libp2p::futures::channel::mpsc::unbounded::<Job>();
        let (seen_tx, seen) = mpsc::channel();
        let swarm_key = key.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let mut swarm = swarm(swarm_key, over);
                for t in &topics {
                    swarm.behaviour_mut().gossipsub.subscribe(t).expect("subscribe");
                }
                swarm.behaviour_mut().kad.add_address(&bob, addr.clone());
                swarm.dial(addr).expect("dial");
                loop {
                    tokio::select! {
                        job = job_rx.next() => match job {
                            Some(job) => job(&mut swarm),
                            None => return,
                        },
                        event = swarm.select_next_some() => {
                            let seen = match event {
                                SwarmEvent::Behaviour(MalloryBehaviourEvent::Gossipsub(
                                    gossipsub::Event::Subscribed { peer_id, topic },
                                )) => Some(Seen::Subscribed(peer_id, topic)),
                                SwarmEvent::Behaviour(MalloryBehaviourEvent::Kad(
                                    kad::Event::OutboundQueryProgressed { result: kad::QueryResult::PutRecord(_), .. },
                                )) => Some(Seen::Put),
                                SwarmEvent::ConnectionEstablished { peer_id, .. } => Some(Seen::Connected(peer_id)),
                                _ => None,
                            };
                            if seen.is_some_and(|s| seen_tx.send(s).is_err()) {
                                return;
                            }
                        }
                    }
                }
            });
        });
        Self { key, jobs, seen }
    }

    fn peer_id(&self) -> PeerId {
        self.key.public().to_peer_id()
    }

    fn run(&self, job: impl FnOnce(&mut Swarm<MalloryBehaviour>) + Send + 'static) {
        self.jobs.unbounded_send(Box::new(job)).expect("mallory's thread runs");
    }

    /// Waits (bounded) until `want` is seen.
    fn wait(&self, what: &str, mut want: impl FnMut(&Seen) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.seen.recv_timeout(left) {
                Ok(s) if want(&s) => return,
                Ok(_) => {}
                Err(e) => panic!("mallory never saw {what}: {e}"),
            }
        }
    }

    fn publish(&self, topic: gossipsub::Sha256Topic, data: Vec<u8>) {
        self.run(move |s| {
            let _ = s.behaviour_mut().gossipsub.publish(topic, data);
        });
    }

    /// Puts `records` on bob, each directly, and waits for every put to finish.
    fn put_all(&self, bob: PeerId, records: Vec<kad::Record>) {
        let n = records.len();
        self.run(move |s| {
            for r in records {
                s.behaviour_mut().kad.put_record_to(r, std::iter::once(bob), kad::Quorum::One);
            }
        });
        for i in 0..n {
            self.wait(&format!("put {i} of {n} to finish"), |s| matches!(s, Seen::Put));
        }
    }
}

/// Alice and bob (both real nodes in one repository), bob's pid and his addresses.
struct Scene {
    pair: Pair,
    bob_id: PeerId,
    bob_pid: i32,
    repo_id: RepoId,
}

fn scene() -> Scene {
    let pair = pair();
    eventually(Duration::from_secs(30), "alice and bob to connect", || (!pair.bob.peers().is_empty()).then_some(()));
    let bob_id = pair.bob.peer_id().parse().expect("a peer id");
    let bob_pid = pair.bob.pid().expect("bob's node runs");
    let root = pair.bob.git(&pair.bob_repo, &["rev-list", "--max-parents=0", "HEAD"]);
    let repo_id = RepoId::try_from(root.trim()).expect("a repo id");
    Scene { pair, bob_id, bob_pid, repo_id }
}

impl Scene {
    fn bob_addr(&self, over: Over) -> Multiaddr {
        let want = if over == Over::Quic { "/quic-v1" } else { "/tcp/" };
        let id = self.pair.bob.json(&["id", "--json"]);
        let addr =
            id["listen_addrs"].as_array().expect("addrs").iter().filter_map(Value::as_str).find(|a| a.contains(want));
        addr.expect("a listen address of that transport").parse().expect("a multiaddr")
    }

    fn mallory(&self, over: Over, topics: Vec<gossipsub::Sha256Topic>) -> Mallory {
        let m = Mallory::spawn(self.bob_id, self.bob_addr(over), over, topics.clone());
        m.wait("a connection to bob", |s| matches!(s, Seen::Connected(p) if *p == self.bob_id));
        let mut waiting: std::collections::HashSet<TopicHash> = topics.iter().map(|t| t.hash()).collect();
        while !waiting.is_empty() {
            m.wait("bob in the topics", |s| match s {
                Seen::Subscribed(p, h) if *p == self.bob_id => waiting.remove(h),
                _ => false,
            });
        }
        m
    }

    /// Bob's DHT records by whose they are.
    fn dht(&self) -> Value {
        self.pair.bob.status()["dht"].clone()
    }

    /// After an attack: bob is the same process, answers promptly, stays within its memory, and
    /// alice's commit, chat message and DHT record reach him.
    fn still_fine(&self, after: &str) {
        let Scene { pair, bob_pid, .. } = self;
        assert!(alive(*bob_pid) && pair.bob.pid() == Some(*bob_pid), "{after}: bob's node survived");
        let t = Instant::now();
        pair.bob.ok(&["peers"]);
        assert!(t.elapsed() < Duration::from_secs(3), "{after}: `peers` took {:?}", t.elapsed());
        let rss = rss_kib(*bob_pid);
        assert!(rss < 150 * 1024, "{after}: bob's node uses {rss} KiB");
        let n = now_ms();
        pair.alice.git(&pair.alice_repo, &["commit", "-q", "--allow-empty", "-m", &format!("honest {n}")]);
        let commit = pair.alice.git(&pair.alice_repo, &["rev-parse", "HEAD"]).trim().to_string();
        pair.alice.ok_in(&pair.alice_repo, &["chat", "--send", &format!("honest chat {n}")]);
        pair.alice.ok_in(&pair.alice_repo, &["kv", "set", "honest", &format!("v{n}")]);
        eventually(Duration::from_secs(20), &format!("{after}: alice's commit at bob"), || {
            // However many of a flood's messages came after it (the newest 50 may all be those).
            pair.bob.ok_in(&pair.bob_repo, &["log", "--json", "-n", "10000"]).contains(&commit).then_some(())
        });
        eventually(Duration::from_secs(20), &format!("{after}: alice's chat at bob"), || {
            pair.bob.ok_in(&pair.bob_repo, &["chat", "--tail"]).contains(&format!("honest chat {n}")).then_some(())
        });
        eventually(Duration::from_secs(20), &format!("{after}: alice's record at bob"), || {
            let out = pair.bob.run_in(&pair.bob_repo, &["kv", "get", "honest"]);
            String::from_utf8_lossy(&out.stdout).contains(&format!("v{n}")).then_some(())
        });
    }
}

/// A DHT record of `repo` for `key`, with one entry signed by `author`.
fn entry_record(author: &Keypair, repo: &RepoId, key: &str, value: &[u8], seq: u64) -> Record {
    let mut record = Record::new(repo, key);
    record
        .merge_entry(Entry::sign(author, repo, key, Some(value), seq, now_ms()).expect("signs"), now_ms())
        .expect("merges");
    record
}

fn kad_record(record: &Record) -> kad::Record {
    kad::Record::new(kad::RecordKey::new(&record_key(&record.repo, &record.key)), record.encode())
}

/// What `kv get KEY --json` at bob shows: (author, value) pairs.
fn bob_values(s: &Scene, key: &str) -> Vec<(String, String)> {
    let out = s.pair.bob.run_in(&s.pair.bob_repo, &["kv", "get", key, "--json"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| (v["author"].as_str().unwrap_or("").to_string(), v["value"].as_str().unwrap_or("").to_string()))
        .collect()
}

#[test]
fn dht_forgeries_rollbacks_over_wide_and_oversized_records_are_refused() {
    let s = scene();
    let m = s.mallory(Over::Tcp, vec![]);
    let victim = Keypair::generate_ed25519();
    let victim_id = victim.public().to_peer_id().to_string();
    // The victim's real value, then mallory's attempts on it.
    m.put_all(s.bob_id, vec![kad_record(&entry_record(&victim, &s.repo_id, "k", b"real v2", 2))]);
    eventually(Duration::from_secs(10), "the real value at bob", || {
        bob_values(&s, "k").contains(&(victim_id.clone(), "real v2".into())).then_some(())
    });
    // Forged: mallory's signature under the victim's name.
    let mut forged = entry_record(&m.key, &s.repo_id, "k", b"forged", 9);
    forged.entries[0].author = entry_record(&victim, &s.repo_id, "k", b"x", 1).entries[0].author.clone();
    // Rollback: the victim's own older entry.
    let rollback = entry_record(&victim, &s.repo_id, "k", b"old v1", 1);
    // Over-wide: more authors than a record holds.
    let mut wide = Record::new(&s.repo_id, "wide");
    for i in 0..MAX_ENTRIES + 1 {
        let e = Entry::sign(&Keypair::generate_ed25519(), &s.repo_id, "wide", Some(b"w"), 1, i as u64).expect("signs");
        wide.entries.push(e);
    }
    // Oversized: far beyond any record's bound.
    let mut big = kad_record(&entry_record(&m.key, &s.repo_id, "big", b"b", 1));
    big.value = vec![b' '; 3 << 20];
    m.put_all(s.bob_id, vec![kad_record(&forged), kad_record(&rollback), kad_record(&wide), big]);
    let values = bob_values(&s, "k");
    assert_eq!(values, [(victim_id.clone(), "real v2".to_string())], "neither the forgery nor the rollback");
    let out = s.pair.bob.run_in(&s.pair.bob_repo, &["kv", "get", "wide"]);
    assert!(!out.status.success(), "a record with too many authors is not taken");
    let out = s.pair.bob.run_in(&s.pair.bob_repo, &["kv", "get", "big"]);
    assert!(!out.status.success(), "an oversized record is not taken");
    // A refs entry with names git would refuse and a value that is not an object id: bob's
    // `refs` shows the one valid ref only (no escape sequence reaches his terminal).
    let head = s.pair.bob.git(&s.pair.bob_repo, &["rev-parse", "HEAD"]).trim().to_string();
    let forged = serde_json::json!({
        "refs/heads/ok": head,
        "refs/heads/evil\u{1b}]0;pwned\u{7}": head,
        "refs/heads/a..b": head,
        "refs/heads/not-an-id": "HEAD~1",
    });
    let refs = entry_record(&m.key, &s.repo_id, "refs", forged.to_string().as_bytes(), 1);
    m.put_all(s.bob_id, vec![kad_record(&refs)]);
    let mallory = m.peer_id().to_string();
    let table = s.pair.bob.ok_in(&s.pair.bob_repo, &["refs", "--author", &mallory]);
    assert_eq!(table, format!("{head}\trefs/heads/ok\t{mallory}\n"));
    s.still_fine("DHT forgeries");
}

#[test]
fn a_flood_of_dht_records_from_one_and_from_many_peers_is_bounded() {
    let s = scene();
    let before = s.dht();
    // One peer: records of a repository bob does not have, beyond its quota.
    let m = s.mallory(Over::Tcp, vec![]);
    let foreign = RepoId::try_from("f".repeat(40)).expect("a repo id");
    let flood: Vec<kad::Record> =
        (0..1_100).map(|i| kad_record(&entry_record(&m.key, &foreign, &format!("flood{i}"), b"x", 1))).collect();
    m.put_all(s.bob_id, flood);
    let held = s.dht()["strangers"].as_u64().expect("a count");
    assert_eq!(held, 1_000, "one peer has at most its quota held");
    // Many peers, records of bob's own repository: they go to its budget, bounded per peer,
    // and never push out what bob holds of his repository already (his own records).
    for p in 0..5 {
        let m = s.mallory(Over::Tcp, vec![]);
        let records =
            (0..50).map(|i| kad_record(&entry_record(&m.key, &s.repo_id, &format!("p{p}-{i}"), b"x", 1))).collect();
        m.put_all(s.bob_id, records);
    }
    let after = s.dht();
    assert_eq!(after["registered"].as_u64(), Some(before["registered"].as_u64().unwrap_or(0) + 250));
    assert_eq!(after["ours"], before["ours"], "bob's own records all still there");
    // A full store is never an error for bob's own writes.
    s.pair.bob.ok_in(&s.pair.bob_repo, &["kv", "set", "mine", "still works"]);
    s.still_fine("a record flood");
}

#[test]
fn a_flood_of_announcements_from_one_author_is_bounded_without_blame() {
    let s = scene();
    let commits = topic::commits(&s.repo_id);
    let m = s.mallory(Over::Tcp, vec![commits.clone()]);
    let start = Instant::now();
    let (burst, rate) = (git_p2p::node::service::ANNOUNCE_BURST, git_p2p::node::service::ANNOUNCE_RATE);
    for i in 0..(2.0 * burst) as usize {
        let env = git_p2p::proto::envelope::Envelope::sign(
            &m.key,
            git_p2p::proto::announce::KIND,
            &s.repo_id,
            now_ms(),
            announcement(&format!("flood {i}")).to_body(),
        );
        m.publish(commits.clone(), env.encode());
    }
    let mallory = m.peer_id().to_string();
    let from_mallory = || {
        let out = s.pair.bob.ok_in(&s.pair.bob_repo, &["log", "--json", "-n", "10000"]);
        out.lines().filter(|l| l.contains(&mallory)).count()
    };
    eventually(Duration::from_secs(30), "bob to take the flood's first burst", || {
        (from_mallory() as f64 >= burst).then_some(())
    });
    // Counted first, the bound taken after: what the rate let in while `log` ran counts too.
    let taken = from_mallory();
    let bound = burst + rate * start.elapsed().as_secs_f64() + 1.0;
    assert!((taken as f64) <= bound, "{taken} of mallory's announcements, at most {bound:.0}");
    let score = s.pair.bob.peers().iter().find(|p| p["peer_id"] == mallory.as_str()).and_then(|p| p["score"].as_f64());
    assert!(score.is_some_and(|s| s >= 0.0), "too many is not misconduct: {score:?}");
    s.still_fine("an announcement flood");
}

#[test]
fn messages_dated_far_ahead_or_long_ago_are_dropped_without_blame() {
    let s = scene();
    let (commits, chat) = (topic::commits(&s.repo_id), topic::chat(&s.repo_id));
    let m = s.mallory(Over::Tcp, vec![commits.clone(), chat.clone()]);
    let day = 24 * 3600 * 1000;
    for (label, ts) in [("future", now_ms() + day), ("past", now_ms() - 40 * day)] {
        let a = git_p2p::proto::envelope::Envelope::sign(
            &m.key,
            git_p2p::proto::announce::KIND,
            &s.repo_id,
            ts,
            announcement(&format!("dated {label}")).to_body(),
        );
        m.publish(commits.clone(), a.encode());
        let msg = git_p2p::proto::chat::ChatMessage {
            thread: None,
            text: format!("dated {label}"),
            name: None,
            nonce: label.into(),
        };
        let c =
            git_p2p::proto::envelope::Envelope::sign(&m.key, git_p2p::proto::chat::KIND, &s.repo_id, ts, msg.to_body());
        m.publish(chat.clone(), c.encode());
    }
    // Then something in time, which must arrive: the dated ones were sent before it.
    m.publish(chat.clone(), chat_message(&m.key, &s.repo_id, "in time", 7));
    eventually(Duration::from_secs(20), "mallory's message in time", || {
        chat_history(&s.pair.bob, s.repo_id.as_str()).iter().any(|m| m.text == "in time").then_some(())
    });
    let history = chat_history(&s.pair.bob, s.repo_id.as_str());
    assert!(history.iter().all(|m| !m.text.starts_with("dated")), "nothing dated far off is kept");
    let log = s.pair.bob.ok_in(&s.pair.bob_repo, &["log", "--json"]);
    assert!(!log.contains("dated"), "{log}");
    let mallory = m.peer_id().to_string();
    let score = s.pair.bob.peers().iter().find(|p| p["peer_id"] == mallory.as_str()).and_then(|p| p["score"].as_f64());
    assert!(score.is_some_and(|s| s >= 0.0), "a skewed clock is not misconduct: {score:?}");
    s.still_fine("messages dated far off");
}

#[test]
fn invalid_gossip_over_quic_is_refused_as_over_tcp() {
    let s = scene();
    let commits = topic::commits(&s.repo_id);
    let m = s.mallory(Over::Quic, vec![commits.clone()]);
    let (bad, _) = bad_messages(&m.key, &s.repo_id);
    for (_, data) in bad {
        m.publish(commits.clone(), data);
    }
    let mallory = m.peer_id().to_string();
    eventually(Duration::from_secs(30), "bob to penalise mallory", || {
        let score = s.pair.bob.peers().iter().find(|p| p["peer_id"] == mallory.as_str())?["score"].as_f64()?;
        (score < 0.0).then_some(())
    });
    let log = s.pair.bob.ok_in(&s.pair.bob_repo, &["log", "--json"]);
    assert!(!log.contains("EVIL"), "nothing invalid is kept: {log}");
    s.still_fine("invalid gossip over QUIC");
}

#[test]
fn replayed_messages_are_taken_once_even_across_a_restart() {
    let s = scene();
    let chat = topic::chat(&s.repo_id);
    let m = s.mallory(Over::Tcp, vec![chat.clone()]);
    let message = chat_message(&m.key, &s.repo_id, "said once", 1);
    m.publish(chat.clone(), message.clone());
    let count = || chat_history(&s.pair.bob, s.repo_id.as_str()).iter().filter(|m| m.text == "said once").count();
    eventually(Duration::from_secs(20), "the message at bob", || (count() == 1).then_some(()));
    // The same bytes again, then (gossipsub forgets ids after a while; a restarted bob has no
    // gossip cache at all) after bob restarted.
    m.publish(chat.clone(), message.clone());
    s.pair.bob.ok(&["daemon", "stop"]);
    s.pair.bob.start();
    let m2 = Mallory::spawn(s.bob_id, s.bob_addr(Over::Tcp), Over::Tcp, vec![chat.clone()]);
    let bob_id = s.bob_id;
    m2.wait("bob in the room again", |x| matches!(x, Seen::Subscribed(p, h) if *p == bob_id && *h == chat.hash()));
    m2.publish(chat.clone(), message);
    m2.publish(chat.clone(), chat_message(&m2.key, &s.repo_id, "after the replay", 2));
    eventually(Duration::from_secs(20), "the next message at bob", || {
        chat_history(&s.pair.bob, s.repo_id.as_str()).iter().any(|m| m.text == "after the replay").then_some(())
    });
    assert_eq!(count(), 1, "a replay is not a second message");
}

#[test]
fn connection_floods_from_one_and_from_many_peer_ids_are_bounded() {
    let s = scene();
    let addr = s.bob_addr(Over::Tcp);
    let dial = |m: &Mallory, n: usize| {
        let a = addr.clone();
        m.run(move |sw| {
            for _ in 0..n {
                let _ = sw.dial(libp2p::swarm::dial_opts::DialOpts::unknown_peer_id().address(a.clone()).build());
            }
        });
    };
    let connections_of = |m: &Mallory| {
        let id = m.peer_id().to_string();
        let peers = s.pair.bob.peers();
        peers.iter().find(|p| p["peer_id"] == id.as_str()).map(|p| p["addresses"].as_array().map_or(0, Vec::len))
    };
    // One peer id, a few connections too many: bob keeps 4 of them.
    let m = s.mallory(Over::Tcp, vec![]);
    dial(&m, 8);
    eventually(Duration::from_secs(20), "mallory's extra connections to be settled", || {
        (connections_of(&m)? >= 4).then_some(())
    });
    assert!(connections_of(&m).is_some_and(|n| n <= 4), "one peer holds at most 4: {:?}", connections_of(&m));
    // One peer id that keeps trying: cut off and refused for a while.
    let flooder = s.mallory(Over::Tcp, vec![]);
    dial(&flooder, 40);
    let flooder_id = flooder.peer_id().to_string();
    eventually(Duration::from_secs(20), "bob to cut the flooder off", || {
        let banned = s.pair.bob.status()["banned"].as_array()?.iter().any(|p| p == flooder_id.as_str());
        (banned && connections_of(&flooder).is_none()).then_some(())
    });
    let status = s.pair.bob.ok(&["daemon", "status"]);
    assert!(status.contains(&flooder_id) && status.contains("cut off"), "{status}");
    // Many peer ids, one connection each: bob holds `p2p.max-peers` (50) peers at most, alice
    // (a peer of its repository) among them.
    let many: Vec<Mallory> = (0..250).map(|_| Mallory::spawn(s.bob_id, addr.clone(), Over::Tcp, vec![])).collect();
    eventually(Duration::from_secs(60), "the flood to fill bob's slots", || {
        let n = s.pair.bob.status()["connected_peers"].as_u64()?;
        (n >= 45).then_some(())
    });
    let most = s.pair.bob.status()["peers_most"].as_u64().unwrap_or(u64::MAX);
    assert!(most <= 50, "bob had at most 50 peers at once: {most}");
    let alice = s.pair.alice.peer_id();
    assert!(s.pair.bob.peers().iter().any(|p| p["peer_id"] == alice.as_str()), "alice is kept");
    dial(&flooder, 1);
    assert!(connections_of(&flooder).is_none(), "the flooder is still refused");
    s.still_fine("a connection flood");
    drop(many);
}

#[test]
fn stream_floods_and_identify_address_spam_are_bounded() {
    let s = scene();
    let m = s.mallory(Over::Tcp, vec![]);
    let bob = s.bob_id;
    // Identify: thousands of addresses, pushed again and again.
    m.run(move |sw| {
        for i in 0..5_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            sw.add_external_address(format!("/ip4/{ip}/tcp/4001").parse().expect("an address"));
        }
        for _ in 0..200 {
            sw.behaviour_mut().identify.push(std::iter::once(bob));
        }
    });
    // Kademlia: thousands of requests at once.
    m.run(move |sw| {
        for i in 0..3_000u32 {
            sw.behaviour_mut().kad.get_record(kad::RecordKey::new(&format!("k{i}")));
        }
    });
    let mallory = m.peer_id().to_string();
    eventually(Duration::from_secs(30), "bob to know mallory's name", || {
        s.pair.bob.peers().iter().any(|p| p["peer_id"] == mallory.as_str() && p["name"] == "Mallory").then_some(())
    });
    let book = std::fs::read(s.pair.bob.data_dir().join("store.redb")).map(|b| b.len()).unwrap_or(0);
    assert!(book < 64 << 20, "bob's store stays small: {book} bytes");
    let known = s.pair.bob.status()["known_peers"].as_u64().unwrap_or(0);
    assert!(known <= 1_000, "{known} peers known");
    s.still_fine("stream floods and address spam");
}

#[test]
fn an_honest_burst_of_chat_then_a_commit_costs_alice_nothing() {
    let s = scene();
    let Pair { alice, bob, alice_repo, bob_repo } = &s.pair;
    let start = Instant::now();
    let mut queued = 0;
    for i in 0..300 {
        let out = alice.ok_in(alice_repo, &["chat", "--send", &format!("burst {i}"), "--json"]);
        queued += usize::from(out.contains("\"queued\":true"));
    }
    eprintln!("300 messages sent in {:?}, {queued} queued behind the pace", start.elapsed());
    alice.git(alice_repo, &["commit", "-q", "--allow-empty", "-m", "right after the burst"]);
    let commit = alice.git(alice_repo, &["rev-parse", "HEAD"]).trim().to_string();
    let t = Instant::now();
    eventually(Duration::from_secs(5), "the commit at bob within 5 s", || {
        bob.ok_in(bob_repo, &["log", "--json"]).contains(&commit).then_some(())
    });
    eprintln!("the commit reached bob {:?} after it was made", t.elapsed());
    eventually(Duration::from_secs(60), "the whole burst at bob", || {
        let n = chat_history(bob, s.repo_id.as_str()).iter().filter(|m| m.text.starts_with("burst ")).count();
        (n == 300).then_some(())
    });
    let alice_id = alice.peer_id();
    let score = bob.peers().iter().find(|p| p["peer_id"] == alice_id.as_str()).and_then(|p| p["score"].as_f64());
    assert!(score.is_some_and(|s| s >= 0.0), "alice in good standing at bob: {score:?}");
}
