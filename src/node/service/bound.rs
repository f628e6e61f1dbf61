//! At most `p2p.max-peers` peers: the swarm refuses a connection to one more (`node::bound`);
//! here, which peers the node keeps and how it leaves room. It keeps every peer that shares
//! one of our repositories, the relays it holds a slot on and the peers holding a slot on it,
//! the peers it dialled for a repository a moment ago, and the longest-connected others up to
//! [`keep_target`]: a few slots below the bound stay free for what comes and goes (a Kademlia
//! lookup dials whoever it is told of, a peer of a repository dials us). The connections of
//! any other peer close once idle (`node::bound`), or [`LINGER`] after they opened if
//! something keeps them busy. A peer of one of our repositories that finds the node full makes
//! room: the youngest peer it does not need is closed, and the dial waits for its slot.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::{Io, Service};
use crate::clock::Now;

/// A peer beyond what the node keeps whose connections something keeps open (a lookup's
/// requests, a relay's grace) is closed this long after it connected: long enough for a
/// lookup's requests, and for the peer to say what it shares with us.
pub const LINGER: Duration = Duration::from_secs(4);

/// How many peers a node keeps (and dials by itself) at most, with `max` its bound: a third of
/// it, at most 2, stays free.
pub fn keep_target(max: usize) -> usize {
    max - (max / 3).min(2)
}

#[derive(Debug, Default)]
pub struct Bound {
    /// Relays we hold a slot on and peers that hold one on us (kept whatever the bound).
    tied: HashSet<PeerId>,
    /// The peers we keep, as last told to the swarm.
    kept: HashSet<PeerId>,
    /// Peers of our repositories to dial once a slot is free (we closed one for them).
    waiting: Vec<PeerId>,
}

impl Service {
    /// The relays we hold a slot on and the peers that hold one on us, now.
    pub fn set_tied(&mut self, peers: impl IntoIterator<Item = PeerId>, now: Now) {
        self.discovery.bound.tied = peers.into_iter().collect();
        self.keep_bound(now, false, false);
    }

    /// Peers ranked by how much we need them: (not needed, connected since, peer), least
    /// needed last.
    fn ranked(&self, now: Now) -> Vec<(bool, Instant, PeerId)> {
        let ours: Vec<_> = self.repos.topics().into_iter().map(|(t, _)| t).collect();
        let bound = &self.discovery.bound;
        let repo_peers = &self.discovery.repo_peers;
        let mut ranked: Vec<(bool, Instant, PeerId)> = self
            .discovery
            .peers
            .each()
            .map(|(peer, since, topics)| {
                let needed = ours.iter().any(|t| topics.contains(t))
                    || bound.tied.contains(peer)
                    || repo_peers.dialled_lately(peer, now.mono);
                (!needed, since, *peer)
            })
            .collect();
        ranked.sort();
        ranked
    }

    /// Which peers we keep: the ones we need, then the longest connected up to
    /// [`keep_target`], told to the swarm when it changed (or with `tell`, anyway: a new
    /// connection stays open until it is told). With `close` (at a tick), peers beyond it that
    /// something kept busy for [`LINGER`] are closed.
    pub(super) fn keep_bound(&mut self, now: Now, close: bool, tell: bool) {
        let target = keep_target(self.discovery.max_peers);
        let ranked = self.ranked(now);
        let mut kept: HashSet<PeerId> = ranked
            .iter()
            .enumerate()
            .filter(|(i, (spare, _, _))| !*spare || *i < target)
            .map(|(_, (_, _, p))| *p)
            .collect();
        // And those we are dialling for a repository: the swarm makes room for them first.
        kept.extend(self.discovery.repo_peers.dialled_lately_all(now.mono));
        let mut io = Vec::new();
        let bound = &mut self.discovery.bound;
        if tell || kept != bound.kept {
            bound.kept = kept.clone();
            io.push(Io::Keep(kept.clone()));
        }
        if close {
            // (Peers we are closing already are no longer ranked: `PeerTable::leaving`.)
            for (_, since, peer) in &ranked {
                if !kept.contains(peer) && now.mono.saturating_duration_since(*since) >= LINGER {
                    tracing::debug!(%peer, target, "closing a peer beyond what we keep that stays busy");
                    self.discovery.peers.leaving(peer);
                    io.push(Io::Disconnect(*peer));
                }
            }
        }
        for i in io {
            self.push(i);
        }
    }

    /// Dials `peer`, a peer of one of our repositories. When the node is full of peers it
    /// keeps (the swarm closes one it does not keep by itself), the youngest it does not need is
    /// closed first and the dial waits for its slot; if it needs them all, no dial (the swarm
    /// would refuse the connection). True if the dial started now.
    pub(super) fn dial_needed(&mut self, peer: PeerId, now: Now) -> bool {
        self.keep_bound(now, false, false);
        let bound = &self.discovery.bound;
        let peers = &self.discovery.peers;
        // (Peers being closed are not counted, nor listed by `each`.)
        let full = peers.len() + bound.waiting.len() >= self.discovery.max_peers;
        let all_kept = peers.each().all(|(p, _, _)| bound.kept.contains(p));
        if !(full && all_kept) {
            let addrs = self.discovery.redial.untried(&peer, &[]);
            self.dial(peer, addrs, now);
            return true;
        }
        let victim = self.ranked(now).into_iter().rev().find(|(spare, _, _)| *spare);
        let Some((_, _, victim)) = victim else {
            tracing::debug!(%peer, "full of peers we need: not dialling a peer of a repository");
            return false;
        };
        tracing::debug!(%peer, %victim, "full: closing a peer we do not need to make room for a peer of a repository");
        self.discovery.peers.leaving(&victim);
        self.discovery.bound.waiting.push(peer);
        self.push(Io::Disconnect(victim));
        false
    }

    /// The swarm is closing `peer` to make room for another (`node::bound`).
    pub fn evicted(&mut self, peer: &PeerId, now: Now) {
        self.discovery.peers.leaving(peer);
        self.keep_bound(now, false, false);
    }

    /// `peer`'s last connection closed: its slot is free (for a peer waiting for one).
    pub(super) fn slot_freed(&mut self, peer: &PeerId, now: Now) {
        self.discovery.bound.waiting.retain(|p| p != peer);
        // One slot freed: one waiting peer (each had a peer closed for it).
        if self.discovery.peers.len() < self.discovery.max_peers && !self.discovery.bound.waiting.is_empty() {
            let next = self.discovery.bound.waiting.remove(0);
            if !self.discovery.peers.is_connected(&next) {
                let addrs = self.discovery.redial.untried(&next, &[]);
                self.dial(next, addrs, now);
            }
        }
        self.keep_bound(now, false, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_leaves_room_for_what_comes_and_goes() {
        assert_eq!(keep_target(1), 1);
        assert_eq!(keep_target(2), 2);
        assert_eq!(keep_target(3), 2);
        assert_eq!(keep_target(6), 4);
        assert_eq!(keep_target(50), 48);
    }
}
