//! What became of our latest dial of each peer, in words: `git p2p doctor` shows it for the
//! bootstrap peers and the address book, because "it does not connect" is the question people
//! ask first, and the answer (refused, timed out, another peer answered) is in the dial's error.

use std::collections::{HashMap, HashSet};

use libp2p::{Multiaddr, PeerId};

use crate::clock::Now;
use crate::control::api::{DialOutcome, DialResult};

/// Peers whose latest dial is kept, besides the bootstrap peers (always kept).
const KEPT: usize = 64;

pub struct DialLog {
    latest: HashMap<PeerId, DialOutcome>,
    bootstrap: HashSet<PeerId>,
}

impl DialLog {
    pub fn new(bootstrap: impl IntoIterator<Item = PeerId>) -> Self {
        Self { latest: HashMap::new(), bootstrap: bootstrap.into_iter().collect() }
    }

    pub fn started(&mut self, peer: PeerId, addrs: &[Multiaddr], now: Now) {
        if !self.latest.contains_key(&peer) && self.latest.len() >= KEPT + self.bootstrap.len() {
            let oldest = self
                .latest
                .iter()
                .filter(|(p, _)| !self.bootstrap.contains(p))
                .min_by_key(|(_, o)| o.at)
                .map(|(p, _)| *p);
            if let Some(oldest) = oldest {
                self.latest.remove(&oldest);
            }
        }
        self.latest.insert(
            peer,
            DialOutcome {
                peer: peer.to_string(),
                addrs: addrs.iter().map(|a| a.to_string()).collect(),
                at: now.unix_ms,
                bootstrap: self.bootstrap.contains(&peer),
                result: DialResult::UnderWay,
            },
        );
    }

    /// The dial of `peer` ended: connected (`error` None), or failed for `error`.
    pub fn ended(&mut self, peer: &PeerId, error: Option<String>, now: Now) {
        if let Some(outcome) = self.latest.get_mut(peer) {
            outcome.at = now.unix_ms;
            outcome.result = match error {
                None => DialResult::Connected,
                Some(error) => DialResult::Failed { error },
            };
        }
    }

    /// Every kept outcome, bootstrap peers first, then the most recent first.
    pub fn outcomes(&self) -> Vec<DialOutcome> {
        let mut all: Vec<DialOutcome> = self.latest.values().cloned().collect();
        all.sort_by(|a, b| b.bootstrap.cmp(&a.bootstrap).then(b.at.cmp(&a.at)).then_with(|| a.peer.cmp(&b.peer)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix_ms: u64) -> Now {
        Now { mono: std::time::Instant::now(), unix_ms }
    }

    #[test]
    fn the_latest_dial_of_each_peer_is_kept_and_bootstrap_peers_stay() {
        let boot = PeerId::random();
        let mut log = DialLog::new([boot]);
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/9".parse().expect("an address");
        log.started(boot, std::slice::from_ref(&addr), at(1));
        log.ended(&boot, Some("connection refused".into()), at(2));
        for i in 0..KEPT as u64 + 5 {
            let peer = PeerId::random();
            log.started(peer, std::slice::from_ref(&addr), at(10 + i));
            log.ended(&peer, None, at(10 + i));
        }
        let outcomes = log.outcomes();
        assert_eq!(outcomes.len(), KEPT + 1);
        assert_eq!(outcomes[0].peer, boot.to_string());
        assert!(outcomes[0].bootstrap);
        assert_eq!(outcomes[0].result, DialResult::Failed { error: "connection refused".into() });
        assert_eq!(outcomes[1].result, DialResult::Connected);
        assert_eq!(outcomes[1].at, 10 + KEPT as u64 + 4, "most recent first");
    }
}
