//! What the node knows about its peers, without I/O: open connections, names, RTT, shared
//! topics, and when to redial a peer we lost. The event loop feeds it swarm events and the
//! current time; `peers` answers are snapshots of it.

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

#[derive(Debug)]
struct Conn {
    id: ConnectionId,
    addr: Multiaddr,
    since: Instant,
}

#[derive(Debug, Default)]
struct PeerState {
    conns: Vec<Conn>,
    agent: Option<String>,
    name: Option<String>,
    rtt: Option<Duration>,
    topics: HashSet<TopicHash>,
}

/// Connected peers. A peer is present while it has at least one open connection.
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: HashMap<PeerId, PeerState>,
}

/// "quic" for QUIC addresses, "tcp" otherwise (the only two transports we run).
pub fn transport_of(addr: &Multiaddr) -> &'static str {
    if addr.iter().any(|p| matches!(p, Protocol::QuicV1)) {
        "quic"
    } else {
        "tcp"
    }
}

impl PeerTable {
    pub fn connected(&mut self, peer: PeerId, id: ConnectionId, addr: Multiaddr, now: Instant) {
        self.peers.entry(peer).or_default().conns.push(Conn { id, addr, since: now });
    }

    /// Returns true when this was the peer's last connection.
    pub fn disconnected(&mut self, peer: &PeerId, id: ConnectionId) -> bool {
        let Some(state) = self.peers.get_mut(peer) else {
            return false;
        };
        state.conns.retain(|c| c.id != id);
        if state.conns.is_empty() {
            self.peers.remove(peer);
            return true;
        }
        false
    }

    pub fn identified(&mut self, peer: &PeerId, agent: String, name: Option<String>) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.agent = Some(agent);
            state.name = name;
        }
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

    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The peers as the control protocol shows them; `repos` maps a repo's marker topic to its id.
    pub fn snapshot(&self, now: Instant, repos: &[(TopicHash, RepoId)]) -> Vec<PeerInfo> {
        let mut out: Vec<PeerInfo> = self
            .peers
            .iter()
            .map(|(peer, s)| {
                let first = s.conns.iter().min_by_key(|c| c.since);
                let mut addresses: Vec<String> = s.conns.iter().map(|c| c.addr.to_string()).collect();
                addresses.dedup();
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
                }
            })
            .collect();
        out.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        out
    }
}

/// When to dial peers we know but are not connected to, with exponential backoff per peer.
#[derive(Debug, Default)]
pub struct Redial {
    peers: HashMap<PeerId, RedialState>,
}

#[derive(Debug)]
struct RedialState {
    addrs: Vec<Multiaddr>,
    failures: u32,
    next: Instant,
}

impl Redial {
    /// Keeps `addrs` for `peer` (merged with what we had) so we can dial it again when lost.
    /// At most [`crate::store::MAX_KNOWN_PEERS`] peers are kept: a newcomer beyond that takes
    /// the place of the peer that failed most (many peer ids cannot grow the list without bound).
    pub fn learn(&mut self, peer: PeerId, addrs: impl IntoIterator<Item = Multiaddr>, now: Instant) {
        if !self.peers.contains_key(&peer) && self.peers.len() >= crate::store::MAX_KNOWN_PEERS {
            let worst = self.peers.iter().max_by_key(|(_, s)| (s.failures, s.next)).map(|(p, _)| *p);
            if let Some(worst) = worst {
                self.peers.remove(&worst);
            }
        }
        let state = self.peers.entry(peer).or_insert_with(|| RedialState { addrs: Vec::new(), failures: 0, next: now });
        for a in addrs {
            if !state.addrs.contains(&a) {
                state.addrs.push(a);
            }
        }
        state.addrs.truncate(crate::store::MAX_ADDRS_PER_PEER);
    }

    /// Forgets `peer` (it is not to be dialled).
    pub fn forget(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    pub fn succeeded(&mut self, peer: &PeerId) {
        if let Some(s) = self.peers.get_mut(peer) {
            s.failures = 0;
        }
    }

    pub fn failed(&mut self, peer: &PeerId, now: Instant) {
        if let Some(s) = self.peers.get_mut(peer) {
            s.failures = s.failures.saturating_add(1);
            let backoff = REDIAL_MIN.saturating_mul(1 << s.failures.min(16)).min(REDIAL_MAX);
            s.next = now + backoff;
        }
    }

    /// Peers to dial now (not connected, backoff elapsed), with their addresses. Marks each as
    /// attempted, so a dial that never reports back is retried only after the backoff.
    pub fn due(&mut self, now: Instant, connected: impl Fn(&PeerId) -> bool) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let mut out = Vec::new();
        for (peer, s) in self.peers.iter_mut() {
            if s.next <= now && !connected(peer) && !s.addrs.is_empty() {
                out.push((*peer, s.addrs.clone()));
                s.next = now + REDIAL_MIN.saturating_mul(1 << s.failures.min(16)).min(REDIAL_MAX);
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
        table.identified(&alice, "git-p2p/0.1.0 name=Alice".into(), Some("Alice".into()));
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
        assert!(!table.disconnected(&alice, c1));
        assert!(table.disconnected(&alice, c2));
        assert!(table.is_empty());
    }

    #[test]
    fn redial_backs_off_and_skips_connected_peers() {
        let (bob, carol, t0) = (PeerId::random(), PeerId::random(), Instant::now());
        let mut redial = Redial::default();
        redial.learn(bob, [addr("/ip4/127.0.0.1/tcp/1")], t0);
        redial.learn(carol, [addr("/ip4/127.0.0.1/tcp/2")], t0);
        let due = redial.due(t0, |p| *p == carol);
        assert_eq!(due.iter().map(|d| d.0).collect::<Vec<_>>(), vec![bob]);
        assert!(redial.due(t0, |_| false).iter().all(|d| d.0 != bob), "attempted: not due again at once");
        redial.failed(&bob, t0);
        redial.failed(&bob, t0);
        assert!(redial.due(t0 + Duration::from_secs(3), |_| true).is_empty());
        assert!(redial.due(t0 + Duration::from_secs(3), |p| *p != bob).is_empty(), "4 s backoff after 2 failures");
        assert_eq!(redial.due(t0 + Duration::from_secs(5), |p| *p != bob).len(), 1);
        for _ in 0..40 {
            redial.failed(&bob, t0);
        }
        assert_eq!(redial.due(t0 + REDIAL_MAX, |p| *p != bob).len(), 1, "backoff is capped");
    }

    #[test]
    fn the_redial_list_is_bounded_and_the_worst_peer_gives_way() {
        let (t0, mut redial) = (Instant::now(), Redial::default());
        let failing = PeerId::random();
        redial.learn(failing, [addr("/ip4/127.0.0.1/tcp/1")], t0);
        redial.failed(&failing, t0);
        for i in 0..crate::store::MAX_KNOWN_PEERS + 100 {
            redial.learn(PeerId::random(), [addr(&format!("/ip4/127.0.0.1/tcp/{}", i + 2))], t0);
        }
        assert_eq!(redial.len(), crate::store::MAX_KNOWN_PEERS);
        assert!(!redial.peers.contains_key(&failing), "the peer that failed went first");
    }
}
