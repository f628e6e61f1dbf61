//! Peers: who we are connected to and what they told us (identify, ping, subscriptions), and
//! who to dial: bootstrap peers, the address book, peers that mDNS, identify or Kademlia tell
//! us about, redialled with backoff when lost. Small networks become fully connected (up to
//! [`TARGET_PEERS`]), so that `peers` shows everyone and gossip needs no relaying.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::gossipsub::TopicHash;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{identify, Multiaddr, PeerId};

use super::peers::{PeerTable, Redial};
use super::{Disk, Io, Service};
use crate::clock::Now;

/// Beyond this many connected peers we stop dialling peers that Kademlia or mDNS tell us about.
pub const TARGET_PEERS: usize = 50;
/// How many address-book peers are dialled at start.
pub const ADDRESS_BOOK_DIALS: usize = 50;
/// Kademlia bootstrap (a self-lookup that discovers peers near us) at most this often when
/// triggered by new peers; Kademlia also bootstraps by itself every 5 minutes.
const KAD_BOOTSTRAP_MIN_INTERVAL: Duration = Duration::from_secs(5);
/// While we have this few peers, every identified git-p2p peer triggers a Kademlia bootstrap.
const FEW_PEERS: usize = 8;

pub struct Discovery {
    pub peers: PeerTable,
    pub redial: Redial,
    /// The configured bootstrap peers: meeting one is worth a Kademlia bootstrap.
    bootstrap: HashSet<PeerId>,
    last_kad_bootstrap: Option<Instant>,
}

impl Discovery {
    pub fn new(bootstrap: impl IntoIterator<Item = PeerId>) -> Self {
        Self {
            peers: PeerTable::default(),
            redial: Redial::default(),
            bootstrap: bootstrap.into_iter().collect(),
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

    /// Whether to dial a peer we just heard of.
    fn wants(&self, peer: &PeerId) -> bool {
        !self.peers.is_connected(peer) && self.peers.len() < TARGET_PEERS
    }
}

/// Drops a trailing `/p2p/<id>`; we keep peer ids beside addresses, not inside them.
pub fn strip_p2p(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

/// Unspecified addresses (0.0.0.0, ::) and relayed ones cannot be dialled directly.
pub fn is_dialable(addr: &Multiaddr) -> bool {
    addr.iter().all(|p| match p {
        Protocol::Ip4(ip) => !ip.is_unspecified(),
        Protocol::Ip6(ip) => !ip.is_unspecified(),
        Protocol::P2pCircuit => false,
        _ => true,
    })
}

impl Service {
    pub fn connected(&mut self, peer: PeerId, connection: ConnectionId, addr: Multiaddr, now: Now) {
        self.discovery.peers.connected(peer, connection, strip_p2p(addr), now.mono);
        self.discovery.redial.succeeded(&peer);
    }

    pub fn disconnected(&mut self, peer: &PeerId, connection: ConnectionId) {
        self.discovery.peers.disconnected(peer, connection);
    }

    pub fn dial_failed(&mut self, peer: &PeerId, now: Now) {
        self.discovery.redial.failed(peer, now.mono);
    }

    pub fn rtt(&mut self, peer: &PeerId, rtt: Duration) {
        self.discovery.peers.rtt(peer, rtt);
    }

    /// A peer joined a topic: someone to deliver to, perhaps; waiting messages need not wait a
    /// tick.
    pub fn subscribed(&mut self, peer: &PeerId, topic: TopicHash, now: Now, disk: &mut dyn Disk) {
        self.discovery.peers.subscribed(peer, topic);
        self.flush(now, disk);
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
        let name = crate::node::behaviour::name_from_agent(&info.agent_version);
        self.discovery.peers.identified(&peer, info.agent_version, name.clone());
        if info.protocol_version != crate::node::behaviour::IDENTIFY_PROTOCOL {
            tracing::debug!(%peer, protocol = %info.protocol_version, "not a git-p2p node");
            return;
        }
        let addrs: Vec<Multiaddr> = info
            .listen_addrs
            .into_iter()
            .map(strip_p2p)
            .filter(is_dialable)
            .take(crate::store::MAX_ADDRS_PER_PEER)
            .collect();
        if info.protocols.contains(&crate::node::behaviour::KAD_PROTOCOL) {
            for addr in &addrs {
                self.push(Io::KadAddress { peer, addr: addr.clone() });
            }
        }
        self.discovery.redial.learn(peer, addrs.clone(), now.mono);
        if let Err(e) = disk.remember_peer(&peer, &addrs, name.as_deref()) {
            tracing::warn!(%peer, error = %e, "cannot update the address book");
        }
        let worth = self.discovery.bootstrap.contains(&peer) || self.discovery.peers.len() <= FEW_PEERS;
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
        self.push(Io::Dial { peer, addrs });
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
            if self.discovery.wants(&peer) {
                self.push(Io::Dial { peer, addrs });
            }
        }
    }

    /// Peers we lost and whose backoff has passed.
    pub(super) fn redial(&mut self, now: Now) {
        let peers = &self.discovery.peers;
        for (peer, addrs) in self.discovery.redial.due(now.mono, |p| peers.is_connected(p)) {
            tracing::debug!(%peer, ?addrs, "dialling");
            self.push(Io::Dial { peer, addrs });
        }
    }
}
