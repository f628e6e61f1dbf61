//! Peers: who we are connected to and what they told us (identify, ping, subscriptions), and
//! who to dial: bootstrap peers and the address book at once at start, peers that mDNS, identify
//! or Kademlia tell us about, redialled with backoff when lost, up to the peers we keep
//! (`service::bound`). Small networks become fully connected (up to `p2p.max-peers`), so that
//! `peers` shows everyone and gossip needs no relaying.
//!
//! Dials: an address just learned (mDNS, Kademlia) is dialled at once even while a dial of the
//! same peer at older, perhaps stale, addresses is under way (those can hang for seconds: a QUIC
//! handshake to a port nobody answers on, a TCP connect to an address nobody has any more).
//! Only our own dials' failures grow a peer's backoff.
//!
//! Restarts: gossipsub introduces itself (sends our topics) only on a peer's *first*
//! connection, and shares one send queue among all of a peer's connections. A peer killed with
//! kill -9 leaves us a QUIC connection that looks alive until its 10 s idle timeout (over TCP
//! the peer's kernel closes it at once, but a machine that vanished is noticed only when a ping
//! fails); when the restarted peer connects again, its new connection is our second: we would
//! never send it our topics (its announcements would wait forever for a subscriber), and what
//! we send it could go down the dead one. So when a peer names another session (its identify agent string carries one per
//! process), or an older connection to it breaks while a newer one remains, or a connection
//! stops answering pings, we close every connection to it and dial it again at once: the next
//! connection is the first on both sides.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::gossipsub::TopicHash;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{identify, Multiaddr, PeerId};

use super::peers::{DialRef, PeerTable, Redial};
use super::{Disk, Io, Service};
use crate::clock::Now;

/// How many address-book peers are dialled at start.
pub const ADDRESS_BOOK_DIALS: usize = 50;
/// Kademlia bootstrap (a self-lookup that discovers peers near us) at most this often when
/// triggered by new peers; Kademlia also bootstraps by itself every 5 minutes.
const KAD_BOOTSTRAP_MIN_INTERVAL: Duration = Duration::from_secs(5);
/// While we have this few peers, every git-p2p peer identified for the first time since start
/// triggers a Kademlia bootstrap.
const FEW_PEERS: usize = 8;

pub struct Discovery {
    /// Connected peers at most (`p2p.max-peers`, see `service::bound`); we dial peers that
    /// Kademlia or the address book name only below [`super::bound::keep_target`] of it (peers
    /// of our repositories whatever the count, making room).
    pub max_peers: usize,
    pub bound: super::bound::Bound,
    /// Lookups of our repositories' peers (`service::repo_peers`).
    pub repo_peers: super::repo_peers::RepoPeers,
    pub peers: PeerTable,
    pub redial: Redial,
    pub dials: super::dial_log::DialLog,
    /// The configured bootstrap peers: meeting one is worth a Kademlia bootstrap.
    bootstrap: HashSet<PeerId>,
    /// Peers identified since start: only meeting a peer for the first time is worth a
    /// Kademlia bootstrap (peers come and go all the time under `p2p.max-peers`).
    met: HashSet<PeerId>,
    last_kad_bootstrap: Option<Instant>,
}

impl Discovery {
    pub fn new(bootstrap: impl IntoIterator<Item = PeerId>) -> Self {
        let bootstrap: HashSet<PeerId> = bootstrap.into_iter().collect();
        Self {
            max_peers: crate::config::DEFAULT_MAX_PEERS,
            bound: Default::default(),
            repo_peers: Default::default(),
            peers: PeerTable::default(),
            redial: Redial::default(),
            dials: super::dial_log::DialLog::new(bootstrap.iter().copied()),
            bootstrap,
            met: HashSet::new(),
            last_kad_bootstrap: None,
        }
    }

    /// Whether a Kademlia bootstrap may run now (and, if so, that it did).
    fn kad_bootstrap_due(&mut self, now: Instant) -> bool {
        if self.last_kad_bootstrap.is_some_and(|t| now.saturating_duration_since(t) < KAD_BOOTSTRAP_MIN_INTERVAL) {
            return false;
        }
        self.last_kad_bootstrap = Some(now);
        true
    }

    /// Whether we have room for peers we dial by ourselves.
    fn room(&self) -> bool {
        self.peers.len() < super::bound::keep_target(self.max_peers)
    }

    /// Whether to dial a peer we just heard of.
    fn wants(&self, peer: &PeerId) -> bool {
        !self.peers.is_connected(peer) && self.room()
    }
}

/// Drops a trailing `/p2p/<id>`; we keep peer ids beside addresses, not inside them.
pub fn strip_p2p(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

/// Unspecified addresses (0.0.0.0, ::) cannot be dialled; a relayed one
/// (`<relay's address>/p2p/<relay>/p2p-circuit`) can when it names its relay.
pub fn is_dialable(addr: &Multiaddr) -> bool {
    let specified = addr.iter().all(|p| match p {
        Protocol::Ip4(ip) => !ip.is_unspecified(),
        Protocol::Ip6(ip) => !ip.is_unspecified(),
        _ => true,
    });
    specified && (!super::peers::is_relayed(addr) || super::peers::relay_of(addr).is_some())
}

/// The IP address in `addr`, if it has one.
pub fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(ip.into()),
        Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}

/// An address of the internet at large: not loopback, private (RFC 1918, unique local), link
/// local, shared (CGNAT, 100.64/10) or unspecified.
pub fn is_outside(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let shared = v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64;
            !(v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified() || shared)
        }
        std::net::IpAddr::V6(v6) => {
            let unique_local = (v6.segments()[0] & 0xfe00) == 0xfc00;
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            !(v6.is_loopback() || v6.is_unspecified() || unique_local || link_local)
        }
    }
}

/// Whether `addr` can reach its peer from where we reach the peer (`from`: the remote addresses
/// of our connections to it). A peer that reaches us only across the internet (from outside
/// our networks, or through a relay) is behind another network's edge: its private addresses
/// (its LAN's, or a NAT's inside) lead elsewhere from here, and handed on (Kademlia gives the
/// addresses it holds to whoever asks) they cost every dialler a timeout (a QUIC handshake
/// waits 5 s for an answer that never comes).
pub fn reachable_from_here(addr: &Multiaddr, from: &[Multiaddr]) -> bool {
    let only_outside = !from.is_empty() && from.iter().all(|a| ip_of(a).is_some_and(is_outside));
    !only_outside || super::peers::is_relayed(addr) || ip_of(addr).is_none_or(is_outside)
}

/// A loopback address: it reaches the peer only from its own machine.
pub fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

impl Service {
    pub fn connected(&mut self, peer: PeerId, connection: ConnectionId, addr: Multiaddr, now: Now) {
        let keep = self.discovery.peers.connected(peer, connection, strip_p2p(addr), now.mono);
        // Told even if nothing changed: the new connection waits for the word.
        self.keep_bound(now, false, true);
        if !keep {
            // We are closing every connection to this peer: this one would be gossipsub's second.
            self.push(Io::Close(connection));
        }
    }

    /// A connection closed; `broke`: not by us (an error, a timeout, or the peer closed it).
    pub fn disconnected(&mut self, peer: &PeerId, connection: ConnectionId, broke: bool, now: Now) {
        let lost = self.discovery.peers.disconnected(peer, connection, now.mono);
        if let Some(lived) = lost.lived {
            self.discovery.redial.lost(peer, lived, now.mono);
            self.slot_freed(peer, now);
        }
        if lost.last {
            if let Some(addrs) = self.discovery.redial.take_at_once(peer) {
                self.dial(*peer, addrs, now);
            }
        } else if broke && lost.superseded {
            // The peer opened a newer connection, then this one broke: it had lost this one
            // already (its side timed out, or it restarted), and the newer one never had our
            // topics.
            self.reset(*peer, "an older connection broke");
        }
    }

    /// How our dial `dial` ended: connected (or was not needed: the peer was connected already),
    /// or failed for `error` (in words).
    pub fn dial_ended(&mut self, peer: &PeerId, dial: DialRef, error: Option<String>, now: Now) {
        let connected = self.discovery.peers.is_connected(peer);
        self.discovery.redial.ended(peer, dial, error.is_none(), connected, now.mono);
        self.discovery.dials.ended(peer, error.filter(|_| !connected), now);
    }

    /// The remote addresses of our open connections to `peer`.
    pub fn peer_addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.discovery.peers.addrs(peer)
    }

    /// Hole punching (DCUtR) made `connection` to `peer`: `peers` says so.
    pub fn hole_punched(&mut self, peer: &PeerId, connection: ConnectionId) {
        self.discovery.peers.hole_punched(peer, connection);
    }

    pub fn rtt(&mut self, peer: &PeerId, rtt: Duration) {
        self.discovery.peers.rtt(peer, rtt);
    }

    /// A connection stopped answering pings (libp2p's ping leaves it open): close it, or, if
    /// the peer has others, all of them (see the module's header).
    pub fn ping_failed(&mut self, peer: PeerId, connection: ConnectionId) {
        if self.discovery.peers.connections(&peer) > 1 {
            self.reset(peer, "a connection stopped answering pings");
        } else {
            tracing::debug!(%peer, "the connection stopped answering pings; closing it");
            self.push(Io::Close(connection));
        }
    }

    /// Closes every connection to `peer` (and any that arrives until they are all closed), then
    /// dials it again: the next connection is the first on both sides, and gossipsub sends our
    /// topics on it.
    fn reset(&mut self, peer: PeerId, why: &str) {
        if self.discovery.peers.reset(&peer) {
            tracing::debug!(%peer, why, "closing every connection to the peer to start afresh");
            self.discovery.redial.reconnect(&peer);
            self.push(Io::Disconnect(peer));
        }
    }

    /// Dials `peer` at `addrs` (none: wherever the swarm's behaviours know it to be).
    pub(super) fn dial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, now: Now) {
        let dial = DialRef(self.ticket());
        tracing::debug!(%peer, ?addrs, "dialling");
        self.discovery.dials.started(peer, &addrs, now);
        self.discovery.redial.started(peer, dial, addrs.clone(), now.mono);
        self.push(Io::Dial { dial, peer, addrs });
    }

    /// Dials `peer` at those of `addrs` (just learned) that no dial of ours is trying, if we
    /// want the peer.
    fn dial_new(&mut self, peer: PeerId, addrs: &[Multiaddr], now: Now) {
        if !self.discovery.wants(&peer) || self.conduct.is_banned(&peer) {
            return;
        }
        let untried = self.discovery.redial.untried(&peer, addrs);
        if !untried.is_empty() {
            self.dial(peer, untried, now);
        }
    }

    /// A peer joined a topic: someone to deliver to, perhaps; waiting messages need not wait a
    /// tick.
    pub fn subscribed(&mut self, peer: &PeerId, topic: TopicHash, now: Now, disk: &mut dyn Disk) {
        self.discovery.peers.subscribed(peer, topic.clone());
        self.keep_bound(now, false, false);
        self.flush(now, disk);
        self.sync_subscribed(peer, &topic, now);
    }

    pub fn unsubscribed(&mut self, peer: &PeerId, topic: &TopicHash) {
        self.discovery.peers.unsubscribed(peer, topic);
    }

    /// What a peer said about itself. A git-p2p node's listen addresses go to Kademlia (if it
    /// speaks ours), the redial list and the address book.
    pub fn identified(&mut self, peer: PeerId, info: identify::Info, now: Now, disk: &mut dyn Disk) {
        if self.conduct.is_banned(&peer) {
            return;
        }
        use crate::node::behaviour::{name_from_agent, session_from_agent};
        let (name, session) = (name_from_agent(&info.agent_version), session_from_agent(&info.agent_version));
        if self.discovery.peers.identified(&peer, info.agent_version, name.clone(), session) {
            self.reset(peer, "the peer restarted");
        }
        if info.protocol_version != crate::node::behaviour::IDENTIFY_PROTOCOL {
            tracing::debug!(%peer, protocol = %info.protocol_version, "not a git-p2p node");
            return;
        }
        // A peer's loopback addresses lead to it only from its own machine; elsewhere they
        // lead to whatever listens there (ourselves, perhaps). Its private ones, likewise, only
        // from its own networks.
        let local = self.discovery.peers.over_loopback(&peer);
        let from = self.discovery.peers.addrs(&peer);
        let addrs: Vec<Multiaddr> = info
            .listen_addrs
            .into_iter()
            .map(strip_p2p)
            .filter(|a| is_dialable(a) && (local || !is_loopback(a)) && reachable_from_here(a, &from))
            .take(crate::store::MAX_ADDRS_PER_PEER)
            .collect();
        if info.protocols.contains(&crate::node::behaviour::KAD_PROTOCOL) {
            for addr in &addrs {
                self.push(Io::KadAddress { peer, addr: addr.clone() });
            }
        }
        // Kademlia hands on the addresses through us as relay (the peer's slot here); we reach
        // the peer only directly.
        let me = self.me.peer;
        let addrs: Vec<Multiaddr> = addrs.into_iter().filter(|a| super::peers::relay_of(a) != Some(me)).collect();
        self.discovery.redial.learn(peer, addrs.clone(), now.mono);
        if let Err(e) = disk.remember_peer(&peer, &addrs, name.as_deref()) {
            tracing::warn!(%peer, error = %e, "cannot update the address book");
        }
        // (With a small `p2p.max-peers`, "few" is a third of it: every bootstrap connects to
        // a dozen peers, each taking the slot of another.)
        let few = FEW_PEERS.min(self.discovery.max_peers / 3);
        if self.discovery.met.len() >= crate::store::MAX_KNOWN_PEERS {
            self.discovery.met.clear();
        }
        let first = self.discovery.met.insert(peer);
        let worth = first && (self.discovery.bootstrap.contains(&peer) || self.discovery.peers.len() <= few);
        if worth && self.discovery.kad_bootstrap_due(now.mono) {
            self.push(Io::KadBootstrap);
        }
    }

    /// Kademlia found a peer (typically through a bootstrap lookup): connect.
    pub fn routing_updated(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, now: Now) {
        if !self.discovery.wants(&peer) || self.conduct.is_banned(&peer) {
            return;
        }
        self.discovery.redial.learn(peer, addrs.clone(), now.mono);
        self.dial_new(peer, &addrs, now);
    }

    /// mDNS found peers on the LAN (it never dials by itself).
    pub fn discovered(&mut self, found: Vec<(PeerId, Multiaddr)>, now: Now) {
        let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        for (peer, addr) in found {
            by_peer.entry(peer).or_default().push(addr);
        }
        by_peer.retain(|p, _| !self.conduct.is_banned(p));
        for (peer, addrs) in by_peer {
            tracing::debug!(%peer, ?addrs, "discovered on the LAN");
            for addr in &addrs {
                self.push(Io::KadAddress { peer, addr: addr.clone() });
            }
            self.discovery.redial.learn(peer, addrs.clone(), now.mono);
            self.dial_new(peer, &addrs, now);
        }
    }

    /// Peers we know, are not connected to nor dialling, and whose backoff has passed, while we
    /// have room for them (bootstrap peers also while we have no peer at all).
    pub(super) fn redial(&mut self, now: Now) {
        let peers = &self.discovery.peers;
        let room = self.discovery.room();
        let alone = peers.is_empty();
        let bootstrap = &self.discovery.bootstrap;
        let due = self
            .discovery
            .redial
            .due(now.mono, |p| peers.is_connected(p) || !(room || (alone && bootstrap.contains(p))));
        for (peer, addrs) in due {
            self.dial(peer, addrs, now);
        }
    }

    /// `p2p.max-peers`.
    pub fn set_max_peers(&mut self, max: usize) {
        self.discovery.max_peers = max.max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_peer_met_across_the_internet_is_not_told_to_others_at_its_private_addresses() {
        let lan = addr("/ip4/10.78.0.10/udp/4001/quic-v1");
        let public = addr("/ip4/198.51.100.7/tcp/4001");
        let relayed =
            addr("/ip4/198.51.100.10/tcp/4001/p2p/12D3KooWC1MwFPDwsTXNCaWbFGSQ2dKnyNFph55XDBUHyYumv5VF/p2p-circuit");
        let from_outside = [addr("/ip4/198.51.100.100/tcp/50123")];
        assert!(!reachable_from_here(&lan, &from_outside), "its LAN is not ours");
        assert!(reachable_from_here(&public, &from_outside) && reachable_from_here(&relayed, &from_outside));
        let from_lan = [addr("/ip4/10.78.0.11/tcp/50123")];
        assert!(reachable_from_here(&lan, &from_lan), "met on a private network: its private addresses may reach it");
        assert!(reachable_from_here(&lan, &[]), "not connected: nothing to go by");
        assert!(!is_outside("100.64.1.1".parse().unwrap()) && !is_outside("fd00::1".parse().unwrap()));
        assert!(is_outside("2001:db8::1".parse().unwrap()));
    }
}
