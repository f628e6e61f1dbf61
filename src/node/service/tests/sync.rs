//! Catching up in the simulated network: who syncs with whom and when, what a sync brings
//! (each item once, in signed-time order, checked as gossip), and what a peer that cheats gets.

use super::*;
use crate::node::service::sync::{SyncOutcome, Synced, MAX_SYNCS, PEER_BURST, RESYNC_EVERY, RETRY_FIRST};
use crate::proto::sync::{Kind, SyncItem};

impl Sim {
    /// Runs the sync sessions `name` asked for, as the event loop and `node::reconcile` would:
    /// each side hands the other what its set lacks (set difference standing in for
    /// negentropy, which `reconcile`'s own tests and the integration tests cover).
    fn run_syncs(&mut self, name: &str) -> usize {
        let syncs = std::mem::take(&mut self.peer(name).syncs);
        let count = syncs.len();
        for io in syncs {
            let Io::Sync { session, peer, repos, since } = io else { continue };
            let other = *self.peers.iter().find(|(_, p)| p.id == peer).map(|(n, _)| n).expect("a peer of the sim");
            let me = self.id(name);
            for repo in &repos {
                // Each side's part of what the other lacks, all kinds together (as a session
                // hands them over).
                let (mut give, mut take) = (Vec::new(), Vec::new());
                for kind in Kind::ALL {
                    let set = |p: &Peer| -> BTreeMap<[u8; 32], Vec<u8>> {
                        p.disk
                            .sync_set
                            .iter()
                            .filter(|((r, k, ts, _), _)| r == repo && *k == kind && *ts >= since)
                            .map(|((_, _, _, id), e)| (*id, e.clone()))
                            .collect()
                    };
                    let (mine, theirs) = (set(&self.peers[name]), set(&self.peers[other]));
                    let lacking = |a: &BTreeMap<[u8; 32], Vec<u8>>, b: &BTreeMap<[u8; 32], Vec<u8>>| {
                        a.iter()
                            .filter(|(id, _)| !b.contains_key(*id))
                            .map(|(_, e)| Synced::new(kind, Envelope::decode(e).expect("an envelope")))
                            .collect::<Vec<_>>()
                    };
                    give.extend(lacking(&mine, &theirs));
                    take.extend(lacking(&theirs, &mine));
                }
                let now = self.now;
                if !give.is_empty() {
                    let p = self.peer(other);
                    p.service.sync_received(me, repo, give, now, &mut p.disk);
                    self.settle(other);
                }
                if !take.is_empty() {
                    let p = self.peer(name);
                    p.service.sync_received(peer, repo, take, now, &mut p.disk);
                    self.settle(name);
                }
            }
            let (now, outcome) = (self.now, SyncOutcome { repos: repos.clone(), ..SyncOutcome::default() });
            self.peer(other).service.sync_served(me, outcome.clone(), now);
            self.peer(name).service.sync_done(session, outcome, now);
            self.settle(name);
        }
        count
    }

    /// `name` sends a room message (in `thread`, if any) dated now.
    fn say(&mut self, name: &str, text: &str, thread: Option<&str>) {
        let now = self.now;
        let peer = self.peer(name);
        let m = ChatMessage {
            thread: thread.map(str::to_string),
            text: text.into(),
            name: None,
            nonce: format!("{text}{}", now.unix_ms),
        };
        let envelope = Envelope::sign(&peer.key, CHAT, &repo().id, now.unix_ms, m.to_body());
        let (reply, _answer) = oneshot::channel::<Result<ChatSent, Failure>>();
        peer.service.chat_send(repo(), envelope, thread.map(str::to_string), reply, now, &mut peer.disk);
        self.end_of_batch(name);
    }

    fn texts(&mut self, name: &str, room: &str) -> Vec<String> {
        self.peer(name).disk.chat.iter().filter(|m| m.room == room).map(|m| m.text.clone()).collect()
    }

    fn banned(&mut self, name: &str, who: &str) -> bool {
        let id = self.id(who);
        self.peer(name).service.banned().contains(&id)
    }
}

/// Alice's items, said while bob was away (gossip lost them all), reach bob by sync alone when
/// he is back: each once, in signed-time order, shown to his followers, not gossiped again.
#[test]
fn a_peer_back_from_away_catches_up_on_the_feed_the_room_and_the_threads() {
    let mut sim = Sim::new(&["alice", "bob", "carol"]);
    for name in ["alice", "bob", "carol"] {
        sim.init(name);
    }
    // Carol takes alice's gossip, so alice's outbox empties; bob is away.
    sim.connect("alice", "carol");
    assert_eq!(sim.run_syncs("alice") + sim.run_syncs("carol"), 1, "on connect, one for both ways");
    let commit = "c".repeat(40);
    for i in 0..5 {
        sim.advance(Duration::from_millis(10));
        sim.say("alice", &format!("room {i}"), None);
        sim.advance(Duration::from_millis(10));
        sim.say("alice", &format!("thread {i}"), Some(&commit));
        sim.advance(Duration::from_millis(10));
        sim.announce("alice", &format!("commit {i}")).expect("queued");
    }
    sim.peer("alice").in_flight.clear();
    sim.advance(PUBLISH_GRACE);
    sim.tick("alice");
    assert_eq!(sim.peer("alice").service.outbox_len(), 0, "carol took everything");
    sim.connect("alice", "bob");
    assert!(sim.peer("alice").in_flight.is_empty(), "nothing left to gossip to bob");
    let ran = sim.run_syncs("alice") + sim.run_syncs("bob");
    assert_eq!(ran, 1, "one session on connect: it goes both ways");
    let room = repo().id.to_string();
    let expect: Vec<String> = (0..5).map(|i| format!("room {i}")).collect();
    let notices: Vec<String> = (0..5).flat_map(|i| [format!("room {i}"), format!("thread {i}")]).collect();
    assert_eq!(sim.texts("bob", &room), notices, "room messages and thread notices, in time order, once");
    assert_eq!(
        sim.texts("bob", &format!("{room}/{commit}")),
        expect.iter().map(|t| t.replace("room", "thread")).collect::<Vec<_>>()
    );
    let commits: Vec<String> = (0..5).map(|i| format!("commit {i}")).collect();
    assert_eq!(sim.peer("bob").announcements(), commits);
    let shown = sim.peer("bob").events.len();
    assert_eq!(shown, 5 + 5 + 5 + 5, "followers saw each item (and each thread notice) as it came");
    assert!(sim.peer("bob").in_flight.is_empty(), "what came by sync is not gossiped again");
    // Nothing more to do: a second round brings nothing new.
    sim.advance(RESYNC_EVERY);
    sim.tick("alice");
    sim.tick("bob");
    let again = sim.run_syncs("alice") + sim.run_syncs("bob") + sim.run_syncs("carol");
    assert_eq!(again, 2, "connected peers (alice and bob, alice and carol) sync again now and then");
    assert_eq!(sim.peer("bob").events.len(), shown, "nothing twice");
    let now = sim.now;
    let status = sim.peer("bob").service.sync_status(now);
    assert_eq!(status.repos.len(), 1);
    assert_eq!(status.repos[0].peers, 1);
    assert_eq!(status.repos[0].last_sync, Some(sim.now.unix_ms));
}

/// Bob's store went back to its last durable state (a reopen after a full disk) and lost what
/// he had taken since: the next sync brings it again, into his room and his feed.
#[test]
fn what_a_store_rolled_back_lost_comes_back_with_the_next_sync() {
    let mut sim = Sim::new(&["alice", "bob"]);
    sim.init("alice");
    sim.init("bob");
    sim.connect("alice", "bob");
    sim.run_syncs("alice");
    sim.run_syncs("bob");
    sim.say("alice", "said before the disk filled", None);
    sim.announce("alice", "announced before the disk filled").expect("queued");
    sim.deliver("alice");
    let room = repo().id.to_string();
    assert_eq!(sim.texts("bob", &room), ["said before the disk filled"]);
    assert_eq!(sim.peer("bob").announcements(), ["announced before the disk filled"]);
    // None of it was durable yet: the reopened store holds nothing of it.
    let bob = sim.peer("bob");
    bob.disk.chat.clear();
    bob.disk.feed.clear();
    bob.disk.sync_set.clear();
    bob.service.store_rolled_back();
    sim.advance(RESYNC_EVERY);
    sim.tick("alice");
    sim.tick("bob");
    sim.run_syncs("alice");
    sim.run_syncs("bob");
    assert_eq!(sim.texts("bob", &room), ["said before the disk filled"], "taken again");
    assert_eq!(sim.peer("bob").announcements(), ["announced before the disk filled"]);
}

/// Carol never met alice, and gets alice's messages from bob, verified by alice's signature.
#[test]
fn catching_up_is_transitive_and_each_item_keeps_its_authors_signature() {
    let mut sim = Sim::new(&["alice", "bob", "carol"]);
    for name in ["alice", "bob", "carol"] {
        sim.init(name);
    }
    sim.connect("alice", "bob");
    sim.say("alice", "hello bob", None);
    sim.deliver("alice");
    sim.run_syncs("alice");
    sim.run_syncs("bob");
    sim.crash("alice");
    sim.connect("bob", "carol");
    sim.run_syncs("bob");
    sim.run_syncs("carol");
    let room = repo().id.to_string();
    assert_eq!(sim.texts("carol", &room), ["hello bob"]);
    let alice = sim.id("alice").to_string();
    assert!(sim.peer("carol").disk.chat.iter().all(|m| m.peer == alice), "alice's, not bob's");
}

/// A peer whose sync hands us a forged item (or an item of another repository) is cut off, and
/// nothing of what it handed us is kept or shown.
#[test]
fn a_peer_that_hands_us_forged_items_is_cut_off_and_nothing_of_it_is_kept() {
    let mut sim = Sim::new(&["bob", "eve"]);
    sim.init("bob");
    let (now, eve_key, eve) = (sim.now, sim.peer("eve").key.clone(), sim.id("eve"));
    let good = Envelope::decode(&chat(&eve_key, "fine", 1, now.unix_ms)).unwrap();
    let mut forged = Envelope::decode(&chat(&eve_key, "forged", 2, now.unix_ms)).unwrap();
    forged.body = forged.body.replace("forged", "FORGED");
    let bob = sim.peer("bob");
    assert!(!bob.service.sync_received(
        eve,
        &repo().id,
        vec![Synced::new(Kind::Room, forged), Synced::new(Kind::Room, good.clone())],
        now,
        &mut bob.disk
    ));
    sim.settle("bob");
    assert!(sim.banned("bob", "eve"), "cut off");
    let bob = sim.peer("bob");
    assert!(bob.disk.chat.is_empty() && bob.events.is_empty() && bob.disk.sync_set.is_empty());
    assert!(
        !bob.service.sync_received(eve, &repo().id, vec![Synced::new(Kind::Room, good)], now, &mut bob.disk),
        "nothing more is taken"
    );
    assert!(bob.disk.chat.is_empty());

    // An honest envelope handed as another kind than it is: off-topic, cut off too.
    let mut sim = Sim::new(&["bob", "mallory"]);
    sim.init("bob");
    let (now, key, mallory) = (sim.now, sim.peer("mallory").key.clone(), sim.id("mallory"));
    let room_message = Envelope::decode(&chat(&key, "room", 1, now.unix_ms)).unwrap();
    let bob = sim.peer("bob");
    assert!(!bob.service.sync_received(
        mallory,
        &repo().id,
        vec![Synced::new(Kind::Threads, room_message)],
        now,
        &mut bob.disk
    ));
    assert!(sim.banned("bob", "mallory"));
}

/// A peer's syncs may hand us a repository's worth of items at once, not more.
#[test]
fn a_peer_over_its_budget_is_cut_off() {
    let mut sim = Sim::new(&["bob", "eve"]);
    sim.init("bob");
    let (now, eve_key, eve) = (sim.now, sim.peer("eve").key.clone(), sim.id("eve"));
    let one = Envelope::decode(&chat(&eve_key, "x", 1, now.unix_ms)).unwrap();
    let many = vec![Synced::new(Kind::Room, one); PEER_BURST as usize + 1];
    let bob = sim.peer("bob");
    assert!(!bob.service.sync_received(eve, &repo().id, many, now, &mut bob.disk));
    assert!(sim.banned("bob", "eve"));
}

/// Items in the sync sets are what the stores hold: ours, what gossip brought, what a sync
/// brought; sessions run [`MAX_SYNCS`] at once, one per peer, and the rest wait their turn.
#[test]
fn sessions_are_capped_and_the_rest_start_as_others_end() {
    let names = ["hub", "p1", "p2", "p3", "p4", "p5", "p6"];
    let mut sim = Sim::new(&names);
    for name in names {
        sim.init(name);
    }
    for name in &names[1..] {
        sim.connect("hub", name);
    }
    // A client reads the repository: the hub syncs with every peer of it, whoever's turn.
    let now = sim.now;
    sim.peer("hub").service.sync_if_stale(&repo().id, now);
    sim.settle("hub");
    let started = sim.peer("hub").syncs.len();
    assert_eq!(started, MAX_SYNCS, "no more at once");
    let first = sim.peer("hub").syncs.remove(0);
    let Io::Sync { session, .. } = first else { unreachable!() };
    let now = sim.now;
    sim.peer("hub").service.sync_done(session, SyncOutcome::default(), now);
    sim.settle("hub");
    assert_eq!(sim.peer("hub").syncs.len(), MAX_SYNCS, "one ended, the next started");
    sim.say("hub", "kept", None);
    let hub = sim.peer("hub");
    assert_eq!(hub.disk.sync_set.len(), 1, "our own message is in our set");
    let item = SyncItem::of(&Envelope::decode(hub.disk.sync_set.values().next().unwrap()).unwrap()).unwrap();
    assert_eq!(item.kind, Kind::Room);
}

/// Our own announcement, handed back by a peer's sync (a session that ran before our own sync
/// set had it), is not news: our feed holds what peers announced, and nobody is blamed.
#[test]
fn our_own_announcement_back_from_a_sync_stays_out_of_our_feed() {
    let mut sim = Sim::new(&["alice", "bob"]);
    sim.init("alice");
    sim.init("bob");
    sim.connect("alice", "bob");
    sim.announce("alice", "mine").expect("published");
    assert!(sim.deliver("alice").iter().all(|v| *v == MessageAcceptance::Accept));
    assert_eq!(sim.peer("bob").announcements(), ["mine"]);
    let theirs: Vec<Synced> = sim
        .peer("bob")
        .disk
        .sync_set
        .iter()
        .filter(|((_, kind, _, _), _)| *kind == Kind::Announcements)
        .map(|(_, e)| Synced::new(Kind::Announcements, Envelope::decode(e).expect("an envelope")))
        .collect();
    assert_eq!(theirs.len(), 1);
    let (now, bob) = (sim.now, sim.id("bob"));
    let alice = sim.peer("alice");
    alice.disk.sync_set.clear();
    assert!(alice.service.sync_received(bob, &repo().id, theirs, now, &mut alice.disk), "not cut off");
    sim.settle("alice");
    assert!(sim.peer("alice").announcements().is_empty(), "alice's feed holds peers' announcements only");
    assert_eq!(sim.peer("alice").disk.sync_set.len(), 1, "her set has it again: it is not offered twice");
    assert!(!sim.banned("alice", "bob"));
}

/// The syncs `name` started since the last call: (session, peer).
fn syncs_started(sim: &mut Sim, name: &str) -> Vec<(u64, PeerId)> {
    std::mem::take(&mut sim.peer(name).syncs)
        .into_iter()
        .filter_map(|io| match io {
            Io::Sync { session, peer, .. } => Some((session, peer)),
            _ => None,
        })
        .collect()
}

/// `starter`'s session ends with `outcome`: the syncs it starts again, ticking `wait` later
/// (and none a second before).
fn ended_then_due(
    sim: &mut Sim,
    starter: &str,
    session: u64,
    outcome: SyncOutcome,
    wait: Duration,
) -> Vec<(u64, PeerId)> {
    let now = sim.now;
    sim.peer(starter).service.sync_done(session, outcome, now);
    sim.settle(starter);
    sim.advance(wait - Duration::from_secs(1));
    sim.tick(starter);
    assert!(syncs_started(sim, starter).is_empty(), "not before {wait:?}");
    sim.advance(Duration::from_secs(1));
    sim.tick(starter);
    syncs_started(sim, starter)
}

#[test]
fn a_sync_that_ended_early_is_started_again_soon_and_later_after_each_early_end() {
    let mut sim = Sim::new(&["alice", "bob"]);
    sim.init("alice");
    sim.init("bob");
    sim.connect("alice", "bob");
    // Of two peers, the one with the lower id starts the session.
    let (starter, other) = if sim.id("alice") < sim.id("bob") { ("alice", "bob") } else { ("bob", "alice") };
    let peer = sim.id(other);
    let started = syncs_started(&mut sim, starter);
    assert_eq!(started.iter().map(|(_, p)| *p).collect::<Vec<_>>(), [peer], "due as the peer joins");
    assert!(syncs_started(&mut sim, other).is_empty(), "not the other's turn");
    let mut session = started[0].0;
    let early = || SyncOutcome { error: Some("the peer went away".into()), ..SyncOutcome::default() };
    // Each early end in a row: not before its wait (5 s, then 10 s, then 20 s), then at once.
    for wait in [RETRY_FIRST, RETRY_FIRST * 2, RETRY_FIRST * 4] {
        let again = ended_then_due(&mut sim, starter, session, early(), wait);
        assert_eq!(again.iter().map(|(_, p)| *p).collect::<Vec<_>>(), [peer], "again after {wait:?}");
        session = again[0].0;
    }
    // One that ends well: the next is a round later, and an early end after it waits 5 s again.
    let done = SyncOutcome { repos: vec![repo().id], ..SyncOutcome::default() };
    let again = ended_then_due(&mut sim, starter, session, done, RESYNC_EVERY);
    assert_eq!(again.len(), 1, "a round later");
    let again = ended_then_due(&mut sim, starter, again[0].0, early(), RETRY_FIRST);
    assert_eq!(again.len(), 1, "the early ends in a row start again from 5 s");
}
