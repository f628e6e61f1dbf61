//! What the node knows about its peers, without I/O: open connections, names, sessions, RTT,
//! shared topics; and our dials: which are under way, where to dial a peer we lost and when
//! (backoff). The event loop feeds it swarm events and the current time; `peers` answers are
//! snapshots of it.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::gossipsub::TopicHash;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};

use crate::control::api::PeerInfo;
use crate::proto::repo::RepoId;

/// First redial delay after a failed dial; doubled per failure up to [`REDIAL_MAX`].
pub const REDIAL_MIN: Duration = Duration::from_secs(1);
/// Longest wait between redials of a known peer.
pub const REDIAL_MAX: Duration = Duration::from_secs(300);
/// A connection that lasted this long was a good one: the peer's failed dials are forgotten.
pub const STABLE: Duration = Duration::from_secs(10);
/// Our dials of one peer under way at once: a dial at its known addresses, and dials at
/// addresses learned while earlier ones hang (a peer found by mDNS after it moved).
pub const MAX_DIALS_PER_PEER: usize = 4;

#[derive(Debug)]
struct Conn {
    id: ConnectionId,
    addr: Multiaddr,
    since: Instant,
    /// Order of establishment among all connections (a later one has a higher number).
    order: u64,
    /// Made by hole punching (DCUtR) through NATs.
    holepunched: bool,
}

#[derive(Debug, Default)]
struct PeerState {
    conns: Vec<Conn>,
    /// When its first open connection was established (it has been connected since).
    since: Option<Instant>,
    agent: Option<String>,
    name: Option<String>,
    /// The peer's process, as its identify agent string names it.
    session: Option<String>,
    /// We are closing every connection to it (see [`PeerTable::reset`]).
    resetting: bool,
    /// We are letting it go to keep `p2p.max-peers` (it no longer counts nor shows).
    leaving: bool,
    rtt: Option<Duration>,
    topics: HashSet<TopicHash>,
}

/// Connected peers. A peer is present while it has at least one open connection.
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: HashMap<PeerId, PeerState>,
    established: u64,
}

/// What the loss of one connection means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    /// It was the peer's last connection.
    pub last: bool,
    /// How long the peer had been connected, when it was its last connection.
    pub lived: Option<Duration>,
    /// A connection to the peer established after it remains.
    pub superseded: bool,
}

/// Our dial of a peer ([`super::Io::Dial`]: at these addresses, even while other dials of it are
/// under way, but not when connected); the event loop reports how it ended to
/// [`super::Service::dial_ended`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DialRef(pub u64);

/// "quic" for QUIC addresses, "tcp" otherwise (the only two transports we run).
pub fn transport_of(addr: &Multiaddr) -> &'static str {
    if addr.iter().any(|p| matches!(p, Protocol::QuicV1)) {
        "quic"
    } else {
        "tcp"
    }
}

/// Whether an address goes through a relay (`.../p2p/<relay>/p2p-circuit...`).
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// The relay of a relayed address: the peer id just before `p2p-circuit`.
pub fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut relay = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(id) => relay = Some(id),
            Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
}

impl PeerTable {
    /// Returns false when the peer is being reset: this connection must be closed too.
    pub fn connected(&mut self, peer: PeerId, id: ConnectionId, addr: Multiaddr, now: Instant) -> bool {
        self.established += 1;
        let state = self.peers.entry(peer).or_default();
        state.since.get_or_insert(now);
        // Let in again while its old connections close: it counts again.
        state.leaving = false;
        state.conns.push(Conn { id, addr, since: now, order: self.established, holepunched: false });
        !state.resetting
    }

    /// The remote addresses of our open connections to `peer`.
    pub fn addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.peers.get(peer).map(|s| s.conns.iter().map(|c| c.addr.clone()).collect()).unwrap_or_default()
    }

    /// Hole punching made connection `id` to `peer`.
    pub fn hole_punched(&mut self, peer: &PeerId, id: ConnectionId) {
        if let Some(c) = self.peers.get_mut(peer).and_then(|s| s.conns.iter_mut().find(|c| c.id == id)) {
            c.holepunched = true;
        }
    }

    pub fn disconnected(&mut self, peer: &PeerId, id: ConnectionId, now: Instant) -> Lost {
        let nothing = Lost { last: false, lived: None, superseded: false };
        let Some(state) = self.peers.get_mut(peer) else {
            return nothing;
        };
        let Some(at) = state.conns.iter().position(|c| c.id == id) else {
            return nothing;
        };
        let gone = state.conns.remove(at);
        let superseded = state.conns.iter().any(|c| c.order > gone.order);
        if state.conns.is_empty() {
            let lived = state.since.map(|t| now.saturating_duration_since(t));
            self.peers.remove(peer);
            return Lost { last: true, lived, superseded };
        }
        Lost { last: false, lived: None, superseded }
    }

    /// The connected peers (not those leaving), with when each has been connected since and
    /// the topics it joined.
    pub fn each(&self) -> impl Iterator<Item = (&PeerId, Instant, &HashSet<TopicHash>)> {
        self.peers.iter().filter(|(_, s)| !s.leaving).filter_map(|(p, s)| Some((p, s.since?, &s.topics)))
    }

    /// We are closing `peer`'s connections to keep `p2p.max-peers`: it no longer counts, and
    /// `peers` no longer shows it.
    pub fn leaving(&mut self, peer: &PeerId) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.leaving = true;
        }
    }

    /// What the peer said about itself. Returns true when it names another session than
    /// before: the peer's process restarted, and the connections to its previous one are dead.
    pub fn identified(&mut self, peer: &PeerId, agent: String, name: Option<String>, session: Option<String>) -> bool {
        let Some(state) = self.peers.get_mut(peer) else {
            return false;
        };
        state.agent = Some(agent);
        state.name = name;
        let restarted = matches!((&state.session, &session), (Some(old), Some(new)) if old != new);
        if session.is_some() {
            state.session = session;
        }
        restarted
    }

    /// Whether the peer identified itself since it connected.
    pub fn is_identified(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|s| s.agent.is_some())
    }

    /// Starts closing every connection to `peer`, and those that arrive until they are all
    /// closed. Returns false if it is not connected (or is being reset already).
    pub fn reset(&mut self, peer: &PeerId) -> bool {
        match self.peers.get_mut(peer) {
            Some(state) if !state.resetting => {
                state.resetting = true;
                true
            }
            _ => false,
        }
    }

    /// Whether a connection to the peer runs over loopback (it is on our machine).
    pub fn over_loopback(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|s| s.conns.iter().any(|c| super::discovery::is_loopback(&c.addr)))
    }

    /// How many connections the peer has.
    pub fn connections(&self, peer: &PeerId) -> usize {
        self.peers.get(peer).map_or(0, |s| s.conns.len())
    }

    pub fn name(&self, peer: &PeerId) -> Option<&str> {
        self.peers.get(peer).and_then(|s| s.name.as_deref())
    }

    pub fn rtt(&mut self, peer: &PeerId, rtt: Duration) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.rtt = Some(rtt);
        }
    }

    pub fn subscribed(&mut self, peer: &PeerId, topic: TopicHash) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.topics.insert(topic);
        }
    }

    pub fn unsubscribed(&mut self, peer: &PeerId, topic: &TopicHash) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.topics.remove(topic);
        }
    }

    /// How many connected peers are subscribed to `topic`.
    pub fn audience(&self, topic: &TopicHash) -> usize {
        self.peers.values().filter(|s| s.topics.contains(topic)).count()
    }

    /// The connected peers subscribed to `topic`.
    pub fn subscribers(&self, topic: &TopicHash) -> Vec<PeerId> {
        self.peers.iter().filter(|(_, s)| s.topics.contains(topic)).map(|(p, _)| *p).collect()
    }

    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// Connected peers, not counting those leaving.
    pub fn len(&self) -> usize {
        self.peers.values().filter(|s| !s.leaving).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The peers as the control protocol shows them (not those leaving); `repos` maps a repo's
    /// marker topic to its id.
    pub fn snapshot(&self, now: Instant, repos: &[(TopicHash, RepoId)]) -> Vec<PeerInfo> {
        let mut out: Vec<PeerInfo> = self
            .peers
            .iter()
            .filter(|(_, s)| !s.leaving)
            .map(|(peer, s)| {
                let first = s.conns.iter().min_by_key(|c| c.since);
                let mut addresses: Vec<String> = s.conns.iter().map(|c| c.addr.to_string()).collect();
                addresses.dedup();
                // The best connection says how the peer is reached: a direct one wins over a
                // relayed one (which is closed once a direct one exists).
                let (connection, relay) = if s.conns.iter().any(|c| c.holepunched) {
                    ("holepunched", None)
                } else if s.conns.iter().any(|c| !is_relayed(&c.addr)) {
                    ("direct", None)
                } else {
                    ("relayed", s.conns.iter().find_map(|c| relay_of(&c.addr)).map(|r| r.to_string()))
                };
                PeerInfo {
                    peer_id: peer.to_string(),
                    name: s.name.clone(),
                    agent: s.agent.clone(),
                    addresses,
                    transport: first.map(|c| transport_of(&c.addr)).unwrap_or("tcp").to_string(),
                    rtt_ms: s.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    repos: repos.iter().filter(|(t, _)| s.topics.contains(t)).map(|(_, id)| id.clone()).collect(),
                    connected_secs: first.map(|c| now.saturating_duration_since(c.since).as_secs()).unwrap_or(0),
                    score: None,
                    connection: connection.to_string(),
                    relay,
                }
            })
            .collect();
        out.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        out
    }
}

/// Where and when to dial peers we know: their addresses (freshest first), our dials under way,
/// and exponential backoff per peer after failed dials of ours (failures of dials others make,
/// Kademlia's say, are not ours to count).
#[derive(Debug, Default)]
pub struct Redial {
    peers: HashMap<PeerId, RedialState>,
}

#[derive(Debug)]
struct RedialState {
    /// Freshest first.
    addrs: Vec<Multiaddr>,
    failures: u32,
    /// Connections to it in a row that ended before [`STABLE`].
    short: u32,
    next: Instant,
    /// Our dials under way, with the addresses each was given.
    pending: Vec<(DialRef, Vec<Multiaddr>)>,
    /// Dial as soon as its last connection is closed: we closed them on purpose, and the peer
    /// was up a moment ago.
    at_once: bool,
}

fn backoff(failures: u32) -> Duration {
    REDIAL_MIN.saturating_mul(1 << failures.min(16)).min(REDIAL_MAX)
}

impl Redial {
    /// Keeps `addrs` for `peer` so we can dial it (again): they go first, as the freshest, and
    /// the oldest beyond [`crate::store::MAX_ADDRS_PER_PEER`] are dropped. At most
    /// [`crate::store::MAX_KNOWN_PEERS`] peers are kept: a newcomer beyond that takes the place of
    /// the peer that failed most (many peer ids cannot grow the list without bound).
    pub fn learn(&mut self, peer: PeerId, addrs: impl IntoIterator<Item = Multiaddr>, now: Instant) {
        if !self.peers.contains_key(&peer) && self.peers.len() >= crate::store::MAX_KNOWN_PEERS {
            let worst = self
                .peers
                .iter()
                .filter(|(_, s)| s.pending.is_empty())
                .max_by_key(|(_, s)| (s.failures, s.next))
                .map(|(p, _)| *p);
            if let Some(worst) = worst {
                self.peers.remove(&worst);
            }
        }
        let state = self.peers.entry(peer).or_insert_with(|| RedialState {
            addrs: Vec::new(),
            failures: 0,
            short: 0,
            next: now,
            pending: Vec::new(),
            at_once: false,
        });
        let mut fresh: Vec<Multiaddr> = Vec::new();
        for a in addrs {
            if !fresh.contains(&a) {
                fresh.push(a);
            }
        }
        state.addrs.retain(|a| !fresh.contains(a));
        fresh.append(&mut state.addrs);
        fresh.truncate(crate::store::MAX_ADDRS_PER_PEER);
        state.addrs = fresh;
    }

    /// The addresses among `addrs` that none of our dials under way to `peer` is trying (none
    /// while [`MAX_DIALS_PER_PEER`] are under way; the next redial takes them all).
    pub fn untried(&self, peer: &PeerId, addrs: &[Multiaddr]) -> Vec<Multiaddr> {
        let pending = self.peers.get(peer).map(|s| s.pending.as_slice()).unwrap_or_default();
        if pending.len() >= MAX_DIALS_PER_PEER {
            return Vec::new();
        }
        addrs
            .iter()
            .filter(|a| !pending.iter().any(|(_, tried)| tried.contains(a)))
            .take(crate::store::MAX_ADDRS_PER_PEER)
            .cloned()
            .collect()
    }

    /// Our dial `dial` of `peer` at `addrs` is under way.
    pub fn started(&mut self, peer: PeerId, dial: DialRef, addrs: Vec<Multiaddr>, now: Instant) {
        self.learn(peer, [], now);
        if let Some(s) = self.peers.get_mut(&peer) {
            s.pending.push((dial, addrs));
        }
    }

    /// Our dial ended; `connected`: whether we are connected to the peer now (by this dial or
    /// another connection). A failure counts only when nothing else of ours is under way and we
    /// are not connected. A success wipes out no failures: the connection has to last first
    /// ([`Redial::lost`]).
    pub fn ended(&mut self, peer: &PeerId, dial: DialRef, ok: bool, connected: bool, now: Instant) {
        let Some(s) = self.peers.get_mut(peer) else { return };
        s.pending.retain(|(d, _)| *d != dial);
        if !(ok || connected) && s.pending.is_empty() {
            s.failures = s.failures.saturating_add(1);
            s.next = now + backoff(s.failures);
        }
    }

    /// We lost our last connection to `peer` after `lived`: one that lasted [`STABLE`] makes the
    /// peer good again; after a shorter one the peer is redialled as before the first time (it
    /// may have crashed), then with backoff as after failed dials (a peer that keeps closing
    /// us soon after we connect, being full, is asked less and less often).
    pub fn lost(&mut self, peer: &PeerId, lived: Duration, now: Instant) {
        let Some(s) = self.peers.get_mut(peer) else { return };
        if lived >= STABLE {
            s.failures = 0;
            s.short = 0;
        } else {
            s.short = s.short.saturating_add(1);
            if s.short > 1 {
                s.next = s.next.max(now + backoff(s.failures.max(s.short - 1)));
            }
        }
    }

    /// Forgets `peer` (it is not to be dialled).
    pub fn forget(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    /// Dial `peer` as soon as its last connection is closed.
    pub fn reconnect(&mut self, peer: &PeerId) {
        if let Some(s) = self.peers.get_mut(peer) {
            s.at_once = true;
        }
    }

    /// The peer's addresses, if it is to be dialled at once now that its last connection is
    /// closed.
    pub fn take_at_once(&mut self, peer: &PeerId) -> Option<Vec<Multiaddr>> {
        let s = self.peers.get_mut(peer)?;
        std::mem::take(&mut s.at_once).then(|| s.addrs.clone()).filter(|a| !a.is_empty())
    }

    /// Peers to dial now (not connected, no dial of ours under way, backoff elapsed), with
    /// their addresses. Marks each as attempted, so that it is dialled again only after the
    /// backoff even if the dial never reports back.
    pub fn due(&mut self, now: Instant, connected: impl Fn(&PeerId) -> bool) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let mut out = Vec::new();
        for (peer, s) in self.peers.iter_mut() {
            if s.next <= now && s.pending.is_empty() && !connected(peer) && !s.addrs.is_empty() {
                out.push((*peer, s.addrs.clone()));
                s.next = now + backoff(s.failures);
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_peer_is_listed_while_it_has_a_connection() {
        let (alice, t0) = (PeerId::random(), Instant::now());
        let mut table = PeerTable::default();
        let (c1, c2) = (ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2));
        table.connected(alice, c1, addr("/ip4/127.0.0.1/udp/9/quic-v1"), t0);
        table.connected(alice, c2, addr("/ip4/127.0.0.1/tcp/9"), t0 + Duration::from_secs(1));
        assert!(!table.identified(&alice, "git-p2p/0.1.0 name=Alice".into(), Some("Alice".into()), Some("1".into())));
        table.rtt(&alice, Duration::from_micros(1500));
        let r1 = crate::proto::repo::RepoId::try_from("1".repeat(40)).unwrap();
        let repo_topic = crate::proto::topic::repo_marker(&r1);
        table.subscribed(&alice, repo_topic.clone());
        let snap = table.snapshot(t0 + Duration::from_secs(5), &[(repo_topic, r1.clone())]);
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].transport, "quic", "the first connection's transport");
        assert_eq!(snap[0].rtt_ms, Some(1.5));
        assert_eq!(snap[0].repos, vec![r1]);
        assert_eq!(snap[0].connected_secs, 5);
        assert_eq!(snap[0].name.as_deref(), Some("Alice"));
        let later = t0 + Duration::from_secs(7);
        assert_eq!(table.disconnected(&alice, c1, later), Lost { last: false, lived: None, superseded: true });
        let lived = Some(Duration::from_secs(7));
        assert_eq!(table.disconnected(&alice, c2, later), Lost { last: true, lived, superseded: false });
        assert!(table.is_empty());
    }

    #[test]
    fn another_session_on_a_new_connection_is_a_restart_and_a_reset_takes_every_connection() {
        let (alice, t0) = (PeerId::random(), Instant::now());
        let mut table = PeerTable::default();
        let (c1, c2, c3) =
            (ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2), ConnectionId::new_unchecked(3));
        assert!(table.connected(alice, c1, addr("/ip4/127.0.0.1/udp/9/quic-v1"), t0));
        assert!(!table.identified(&alice, "a".into(), None, Some("1".into())), "the first session seen");
        assert!(table.connected(alice, c2, addr("/ip4/127.0.0.1/udp/9/quic-v1"), t0));
        assert!(!table.identified(&alice, "a".into(), None, None), "an agent without a session tells nothing");
        assert!(!table.identified(&alice, "a".into(), None, Some("1".into())), "a second connection of one process");
        assert!(table.identified(&alice, "a".into(), None, Some("2".into())), "another process");
        assert!(table.reset(&alice));
        assert!(!table.reset(&alice), "once");
        assert!(!table.connected(alice, c3, addr("/ip4/127.0.0.1/tcp/9"), t0), "one that arrives meanwhile goes too");
        assert!(!table.disconnected(&alice, c1, t0).last);
        assert!(!table.disconnected(&alice, c3, t0).last);
        assert!(table.disconnected(&alice, c2, t0).last);
        assert!(table.connected(alice, c1, addr("/ip4/127.0.0.1/tcp/9"), t0), "a fresh start");
    }

    #[test]
    fn redial_backs_off_after_our_failed_dials_and_skips_connected_peers() {
        let (bob, carol, t0) = (PeerId::random(), PeerId::random(), Instant::now());
        let mut redial = Redial::default();
        redial.learn(bob, [addr("/ip4/127.0.0.1/tcp/1")], t0);
        redial.learn(carol, [addr("/ip4/127.0.0.1/tcp/2")], t0);
        let due = redial.due(t0, |p| *p == carol);
        assert_eq!(due.iter().map(|d| d.0).collect::<Vec<_>>(), vec![bob]);
        assert!(redial.due(t0, |_| false).iter().all(|d| d.0 != bob), "attempted: not due again at once");
        let mut n = 0;
        let mut fail = |redial: &mut Redial| {
            n += 1;
            redial.started(bob, DialRef(n), vec![addr("/ip4/127.0.0.1/tcp/1")], t0);
            redial.ended(&bob, DialRef(n), false, false, t0);
        };
        fail(&mut redial);
        fail(&mut redial);
        assert!(redial.due(t0 + Duration::from_secs(3), |_| true).is_empty());
        assert!(redial.due(t0 + Duration::from_secs(3), |p| *p != bob).is_empty(), "4 s backoff after 2 failures");
        assert_eq!(redial.due(t0 + Duration::from_secs(5), |p| *p != bob).len(), 1);
        for _ in 0..40 {
            fail(&mut redial);
        }
        assert_eq!(redial.due(t0 + REDIAL_MAX, |p| *p != bob).len(), 1, "backoff is capped");
    }

    #[test]
    fn the_redial_list_is_bounded_and_the_worst_peer_gives_way() {
        let (t0, mut redial) = (Instant::now(), Redial::default());
        let failing = PeerId::random();
        redial.learn(failing, [addr("/ip4/127.0.0.1/tcp/1")], t0);
        redial.started(failing, DialRef(1), vec![addr("/ip4/127.0.0.1/tcp/1")], t0);
        redial.ended(&failing, DialRef(1), false, false, t0);
        for i in 0..crate::store::MAX_KNOWN_PEERS + 100 {
            redial.learn(PeerId::random(), [addr(&format!("/ip4/127.0.0.1/tcp/{}", i + 2))], t0);
        }
        assert_eq!(redial.len(), crate::store::MAX_KNOWN_PEERS);
        assert!(!redial.peers.contains_key(&failing), "the peer that failed went first");
    }

    #[test]
    fn a_dial_under_way_is_not_repeated_and_fails_only_with_the_last_of_ours() {
        let (bob, t0) = (PeerId::random(), Instant::now());
        let (stale, fresh) = (addr("/ip4/10.0.0.1/tcp/1"), addr("/ip4/10.0.0.9/tcp/1"));
        let mut redial = Redial::default();
        redial.learn(bob, [stale.clone()], t0);
        redial.started(bob, DialRef(1), vec![stale.clone()], t0);
        assert!(redial.due(t0 + REDIAL_MAX, |_| false).is_empty(), "under way: not dialled again");
        redial.learn(bob, [fresh.clone(), stale.clone()], t0);
        assert_eq!(redial.untried(&bob, &[fresh.clone(), stale.clone()]), std::slice::from_ref(&fresh));
        redial.started(bob, DialRef(2), vec![fresh.clone()], t0);
        redial.ended(&bob, DialRef(1), false, false, t0);
        assert!(redial.due(t0 + REDIAL_MAX, |_| false).is_empty(), "the fresh dial is still under way");
        redial.ended(&bob, DialRef(2), false, false, t0);
        let due = redial.due(t0 + REDIAL_MIN * 2, |_| false);
        assert_eq!(due, [(bob, vec![fresh, stale])], "one failure (2 s), freshest address first");
        for n in 10..10 + MAX_DIALS_PER_PEER as u64 {
            let addr = addr(&format!("/ip4/10.0.1.{n}/tcp/1"));
            assert_eq!(redial.untried(&bob, std::slice::from_ref(&addr)).len(), 1);
            redial.started(bob, DialRef(n), vec![addr], t0);
        }
        assert!(redial.untried(&bob, &[addr("/ip4/10.0.2.1/tcp/1")]).is_empty(), "bounded");
    }

    #[test]
    fn fresh_addresses_go_first_and_push_the_oldest_out() {
        let (bob, t0) = (PeerId::random(), Instant::now());
        let mut redial = Redial::default();
        let old: Vec<Multiaddr> =
            (0..crate::store::MAX_ADDRS_PER_PEER).map(|i| addr(&format!("/ip4/10.0.0.1/tcp/{}", i + 1))).collect();
        redial.learn(bob, old.clone(), t0);
        let fresh = addr("/ip4/10.0.0.2/tcp/9");
        redial.learn(bob, [fresh.clone()], t0);
        let (_, addrs) = redial.due(t0, |_| false).pop().expect("due");
        assert_eq!(addrs.len(), crate::store::MAX_ADDRS_PER_PEER);
        assert_eq!(addrs[0], fresh);
        assert!(!addrs.contains(old.last().unwrap()), "the oldest went");
    }
}
