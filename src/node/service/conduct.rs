//! Peers that flood us with connections: beyond what the connection limits take, a peer that
//! keeps trying is cut off (its connections closed) and refused for a while, and we do not dial
//! it meanwhile. Messages are not a reason here: gossipsub's scoring already stops listening to
//! a peer whose messages are invalid, and what is merely too much is dropped without blame.
//! A peer that breaks the rules of sync (`sync`: forged items, over its budget) is banned the
//! same way.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::{Io, Service};
use crate::clock::Now;

/// Connections of one peer refused by the limits within [`WINDOW`] that get it banned.
pub const DENIED_BEFORE_BAN: usize = 20;
pub const WINDOW: Duration = Duration::from_secs(60);
/// How long a banned peer is refused.
pub const BAN: Duration = Duration::from_secs(10 * 60);
/// Peers whose refusals we count at once (a flood from many peer ids must not grow this).
const TRACKED: usize = 10_000;

#[derive(Default)]
pub struct Conduct {
    /// When each peer's connections were refused lately.
    denied: HashMap<PeerId, VecDeque<Instant>>,
    /// Banned peers, until when.
    banned: HashMap<PeerId, Instant>,
}

impl Conduct {
    /// A connection of `peer` was refused; true when that gets it banned now.
    fn denied(&mut self, peer: PeerId, now: Instant) -> bool {
        if self.banned.contains_key(&peer) {
            return false;
        }
        if !self.denied.contains_key(&peer) && self.denied.len() >= TRACKED {
            self.denied.retain(|_, times| times.back().is_some_and(|t| now.saturating_duration_since(*t) < WINDOW));
            if self.denied.len() >= TRACKED {
                return false;
            }
        }
        let times = self.denied.entry(peer).or_default();
        times.push_back(now);
        while times.front().is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW) {
            times.pop_front();
        }
        if times.len() < DENIED_BEFORE_BAN {
            return false;
        }
        self.denied.remove(&peer);
        self.banned.insert(peer, now + BAN);
        true
    }

    /// Bans `peer` now (it broke a protocol's rules); false if it was banned already.
    pub fn ban(&mut self, peer: PeerId, now: Instant) -> bool {
        self.denied.remove(&peer);
        self.banned.insert(peer, now + BAN).is_none()
    }

    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned.contains_key(peer)
    }

    pub fn banned(&self) -> Vec<PeerId> {
        self.banned.keys().copied().collect()
    }

    /// Bans that have run out.
    fn expired(&mut self, now: Instant) -> Vec<PeerId> {
        let over: Vec<PeerId> = self.banned.iter().filter(|(_, until)| **until <= now).map(|(p, _)| *p).collect();
        for p in &over {
            self.banned.remove(p);
        }
        over
    }
}

impl Service {
    /// The connection limits refused a connection of `peer`.
    pub fn connection_denied(&mut self, peer: PeerId, now: Now) {
        if self.conduct.denied(peer, now.mono) {
            tracing::info!(%peer, ban = ?BAN, "peer floods us with connections: cut off");
            self.discovery.redial.forget(&peer);
            self.push(Io::Ban(peer));
        }
    }

    /// Bans that ran out are lifted.
    pub(super) fn lift_bans(&mut self, now: Now) {
        for peer in self.conduct.expired(now.mono) {
            self.push(Io::Unban(peer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_that_keeps_trying_is_banned_for_a_while() {
        let (mut conduct, t0, eve) = (Conduct::default(), Instant::now(), PeerId::random());
        for i in 0..DENIED_BEFORE_BAN - 1 {
            assert!(!conduct.denied(eve, t0 + Duration::from_millis(i as u64)));
        }
        // Spread out, refusals do not add up.
        let later = t0 + WINDOW + Duration::from_secs(1);
        assert!(!conduct.denied(eve, later), "the old refusals are outside the window");
        let banned = (0..DENIED_BEFORE_BAN).any(|i| conduct.denied(eve, later + Duration::from_millis(i as u64)));
        assert!(banned && conduct.is_banned(&eve));
        assert!(conduct.expired(later + BAN - Duration::from_secs(1)).is_empty());
        assert_eq!(conduct.expired(later + BAN + Duration::from_secs(1)), [eve]);
        assert!(!conduct.is_banned(&eve));
    }
}
