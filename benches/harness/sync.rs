//! Part `sync` (issue 15): catching up. (1) Alice's node holds 10 000 items bob's lacks (1 000
//! room messages, 4 000 thread messages, 5 000 announcements, by 100 authors, written into her
//! stopped node's store); bob's node starts: until his node has taken them all. (2) Bob's node
//! restarts, the two now in sync: how long their session took and the bytes each way. (3) A
//! network of `BENCH_NODES` nodes (default 50), one of them down while four others send 200
//! room messages: from its start until it has all 200.

use std::time::{Duration, Instant};

use git_p2p::proto::announce::{Announcement, Commit, FeedEntry};
use git_p2p::proto::chat::{ChatEntry, ChatMessage, KIND};
use git_p2p::proto::envelope::Envelope;
use git_p2p::proto::repo::RepoId;
use git_p2p::proto::sync::SyncItem;
use libp2p::identity::Keypair;

use super::support::{self, Node};
use super::{ms, repo_id_of, Metric};

pub fn sync_bench(metrics: &mut Vec<Metric>, smoke: bool) {
    two_nodes(metrics, smoke);
    let nodes: usize = std::env::var("BENCH_NODES").ok().and_then(|n| n.parse().ok()).unwrap_or(50);
    one_of_many(metrics, if smoke { 4 } else { nodes }, if smoke { 20 } else { 200 });
}

/// Items signed by 100 authors over the last hour: `room` room messages, `thread` thread
/// messages (over 100 commits' threads), `announced` announcements.
fn items(
    repo: &RepoId,
    room: usize,
    thread: usize,
    announced: usize,
) -> (Vec<SyncItem>, Vec<ChatEntry>, Vec<FeedEntry>) {
    let authors: Vec<Keypair> = (0..100).map(|_| Keypair::generate_ed25519()).collect();
    let now = git_p2p::clock::unix_now_ms();
    let total = room + thread + announced;
    let (mut sync, mut chat, mut feed) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..total {
        let key = &authors[i % authors.len()];
        let ts = now - 3_600_000 + (i as u64 * 3_000_000 / total as u64);
        let envelope = if i < room + thread {
            let thread = (i >= room).then(|| format!("{:040x}", i % 100 + 1));
            let m = ChatMessage { thread, text: format!("message {i}"), name: None, nonce: i.to_string() };
            let envelope = Envelope::sign(key, KIND, repo, ts, m.to_body());
            let author = key.public().to_peer_id();
            chat.push(ChatEntry::new(&envelope, author.to_string(), m, false, ts));
            envelope
        } else {
            let commit = Commit {
                ref_name: Some("refs/heads/main".into()),
                id: format!("{i:040x}"),
                parents: vec![format!("{:040x}", i + 1)],
                author: "someone".into(),
                summary: format!("commit {i}"),
                time: 1_700_000_000,
            };
            let a = Announcement { commit: commit.clone(), name: None };
            let envelope = a.sign(key, repo, ts);
            let peer = key.public().to_peer_id().to_string();
            feed.push(FeedEntry { repo: repo.clone(), peer, name: None, commit, announced_at: ts, received_at: ts });
            envelope
        };
        sync.push(SyncItem::of(&envelope).expect("an item"));
    }
    (sync, chat, feed)
}

fn items_taken(node: &Node) -> u64 {
    node.status()["sync"]["items"].as_u64().unwrap_or(0)
}

/// (1) and (2).
fn two_nodes(metrics: &mut Vec<Metric>, smoke: bool) {
    let (room, thread, announced) = if smoke { (100, 400, 500) } else { (1000, 4000, 5000) };
    let total = (room + thread + announced) as u64;
    let alice = Node::new("alice");
    let repo = alice.repo("proj", 1);
    alice.ok_in(&repo, &["init"]);
    let repo_id = repo_id_of(&alice, &repo);
    alice.ok(&["daemon", "stop"]);
    {
        let store = support::eventually(Duration::from_secs(10), "the stopped node's store", || {
            git_p2p::store::Store::open(&alice.data_dir().join("store.redb")).ok()
        });
        let (sync, chat, feed) = items(&repo_id, room, thread, announced);
        store.sync_keep_all(&sync).expect("sync sets");
        store.chat_insert_all(&chat).expect("histories");
        for entry in &feed {
            store.feed_insert(entry).expect("feed");
        }
        store.sync().expect("sync");
        store.close();
    }
    alice.start();
    let bob = Node::new("bob");
    bob.config(&["p2p.bootstrap", &alice.tcp_addr()]);
    bob.git(&bob.path("home"), &["clone", "-q", repo.to_str().expect("utf-8"), "proj"]);
    let bob_repo = bob.path("home/proj");
    bob.ok_in(&bob_repo, &["init"]);
    // From here on bob's node reconciles on its own (it just met alice, or meets her now).
    let t0 = Instant::now();
    support::eventually(Duration::from_secs(30), "bob to meet alice", || (!bob.peers().is_empty()).then_some(()));
    let met = Instant::now();
    support::eventually(Duration::from_secs(60), "bob to take alice's items", || {
        (items_taken(&bob) >= total).then_some(())
    });
    // A history read is answered after every write handed to the history thread before it:
    // once it returns, all is stored.
    bob.ok_in(&bob_repo, &["chat", "--tail", "--json"]);
    let caught_up = ms(met.elapsed());
    let session = bob.status()["sync"]["last_session_ms"].as_u64().unwrap_or(0);
    eprintln!(
        "harness: sync: {total} items stored {caught_up:.0} ms after bob met alice ({:.0} ms after init; \
         the session took {session} ms)",
        ms(t0.elapsed())
    );
    metrics.push(Metric {
        name: "sync_catch_up_10k",
        unit: "ms",
        samples: vec![caught_up],
        nodes: 2,
        goal: "<= 2000 (10 000 items, from the connection)",
    });

    let rounds = if smoke { 2 } else { 10 };
    let (mut took, mut sent, mut received) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        bob.ok(&["daemon", "stop"]);
        bob.start();
        let status = support::eventually(Duration::from_secs(30), "bob and alice to sync again", || {
            let sync = bob.status()["sync"].clone();
            sync["last_session_ms"].as_u64().map(|_| sync)
        });
        took.push(status["last_session_ms"].as_f64().unwrap_or(f64::NAN));
        sent.push(status["bytes_sent"].as_f64().unwrap_or(f64::NAN));
        received.push(status["bytes_received"].as_f64().unwrap_or(f64::NAN));
        assert_eq!(status["items"], 0, "in sync: nothing new");
    }
    metrics.push(Metric { name: "sync_in_sync_10k", unit: "ms", samples: took, nodes: 2, goal: "<= 20" });
    metrics.push(Metric { name: "sync_in_sync_sent", unit: "B", samples: sent, nodes: 2, goal: "<= 1024" });
    metrics.push(Metric { name: "sync_in_sync_received", unit: "B", samples: received, nodes: 2, goal: "<= 1024" });
}

/// (3): `nodes` nodes bootstrap to the first; the last is down while four others send
/// `messages` room messages (a quarter each: within their authors' rate, so gossip takes them
/// all at once); it starts again: until it has them all.
fn one_of_many(metrics: &mut Vec<Metric>, nodes: usize, messages: usize) {
    let all: Vec<Node> = (0..nodes).map(|i| Node::new(&format!("s{i}"))).collect();
    all[0].start();
    let boot = all[0].tcp_addr();
    let repo = all[0].repo("proj", 1);
    all[0].ok_in(&repo, &["init"]);
    let repos: Vec<std::path::PathBuf> = std::iter::once(repo.clone())
        .chain(all[1..].iter().map(|n| {
            n.config(&["p2p.bootstrap", &boot]);
            n.git(&n.path("home"), &["clone", "-q", repo.to_str().expect("utf-8"), "proj"]);
            let dir = n.path("home/proj");
            n.ok_in(&dir, &["init"]);
            dir
        }))
        .collect();
    let last = nodes - 1;
    support::eventually(Duration::from_secs(60), "the last node to meet the network", || {
        (!all[last].peers().is_empty()).then_some(())
    });
    all[last].ok(&["daemon", "stop"]);
    let senders = 4.min(nodes - 1);
    for i in 0..messages {
        let s = i % senders;
        all[s].ok_in(&repos[s], &["chat", "--send", &format!("while away {i}")]);
    }
    for (i, node) in all.iter().enumerate().take(senders) {
        support::eventually(Duration::from_secs(60), &format!("s{i}'s outbox to empty"), || {
            (node.status()["outbox"] == 0).then_some(())
        });
    }
    let t0 = Instant::now();
    all[last].start();
    let up = ms(t0.elapsed());
    support::eventually(Duration::from_secs(60), "the last node to reconnect", || {
        (!all[last].peers().is_empty()).then_some(())
    });
    let connected = Instant::now();
    let mut told = false;
    support::eventually(Duration::from_secs(60), "the last node to have every message", || {
        let done = items_taken(&all[last]) >= messages as u64;
        if !done && !told && connected.elapsed() > Duration::from_secs(50) {
            // Once, before the timeout: where its catching up stands, and its log's last lines.
            told = true;
            let node = &all[last];
            eprintln!(
                "harness: sync: node {last} after 50 s: {} peers, sync {}\nits log ends:\n{}",
                node.peers().len(),
                node.status()["sync"],
                node.log_tail(40)
            );
        }
        done.then_some(())
    });
    let (took, since_start) = (ms(connected.elapsed()), ms(t0.elapsed()));
    eprintln!(
        "harness: sync: node {last} of {nodes} had the {messages} messages {took:.0} ms after it reconnected \
         ({since_start:.0} ms after `daemon start`, which took {up:.0} ms)"
    );
    metrics.push(Metric {
        name: "sync_rejoin_200_of_50",
        unit: "ms",
        samples: vec![took],
        nodes,
        goal: "<= 1000 (from its first connection)",
    });
}
