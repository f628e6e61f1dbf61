//! Finding a repository's peers in a network larger than our connections: every registered
//! repository's key is provided in Kademlia (the same provider key as the mirrors', so a peer
//! found here can also serve git), again at once when our addresses change (a provider record
//! carries the addresses we had then: a NATed node's relayed one arrives with its reservation)
//! and hourly; and its providers are looked up and some of them dialled. While no peer of a
//! repository is connected the lookups come often: every 500 ms for 10 s after the repository
//! is registered or our addresses change (two peers that start together find each other's
//! records as soon as they are put), then after 1 s, doubling up to 2 min; once one is
//! connected, every 10 min. A lookup still under way after 2 s (a DHT node that does not
//! answer) does not hold back the next. A provider just dialled is not dialled again for 5 s,
//! so that the next lookup tries others (records of nodes that are gone stay in the DHT for
//! a while). A peer that shares a repository of ours is dialled even when we have
//! `p2p.max-peers` connections already (one we do not need gives up its slot, `service::bound`):
//! it is the reason the node runs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{kad, PeerId};

use super::{Io, Service};
use crate::clock::Now;
use crate::proto::repo::RepoId;

/// Wait between lookups while no peer of the repository is connected, for [`FAST_FOR`] after
/// it is registered or our addresses change.
const FAST_WAIT: Duration = Duration::from_millis(500);
const FAST_FOR: Duration = Duration::from_secs(10);
/// Wait between lookups after that, while no peer is connected: doubled each time up to
/// [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_secs(1);
const LONGEST_WAIT: Duration = Duration::from_secs(120);
/// Wait between lookups while a peer of the repository is connected.
const CONNECTED_WAIT: Duration = Duration::from_secs(600);
/// A lookup under way this long no longer holds back the next one.
const STALE: Duration = Duration::from_secs(2);
/// Our provider records are put again this often (Kademlia keeps them 48 h by default; nodes
/// that held them leave).
const REPROVIDE: Duration = Duration::from_secs(3600);
/// Providers dialled per lookup at most: a few peers of a repository are enough for gossip to
/// reach everyone of it.
const DIALS_PER_LOOKUP: usize = 3;
/// A provider dialled for a repository is not dialled again for it before this.
const PROVIDER_REDIAL: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Lookup {
    next: Instant,
    wait: Duration,
    /// When the latest lookup started, while it is under way.
    in_flight: Option<Instant>,
    dialled: usize,
    provided: Option<Instant>,
    /// Lookups come every [`FAST_WAIT`] until then (while no peer is connected).
    fast_until: Instant,
}

#[derive(Debug, Default)]
pub struct RepoPeers {
    repos: HashMap<RepoId, Lookup>,
    /// Providers we dialled lately, and when.
    dialled: HashMap<PeerId, Instant>,
}

impl RepoPeers {
    /// Whether we dialled `peer` for a repository a moment ago (it is kept whatever the bound
    /// until it says what it shares with us).
    pub fn dialled_lately(&self, peer: &PeerId, now: Instant) -> bool {
        self.dialled.get(peer).is_some_and(|at| now.saturating_duration_since(*at) < PROVIDER_REDIAL)
    }

    /// The peers we dialled for a repository a moment ago.
    pub fn dialled_lately_all(&self, now: Instant) -> impl Iterator<Item = PeerId> + '_ {
        self.dialled.iter().filter(move |(p, _)| self.dialled_lately(p, now)).map(|(p, _)| *p)
    }
}

fn key(repo: &RepoId) -> kad::RecordKey {
    kad::RecordKey::new(&crate::proto::remote::provider_key(repo))
}

impl Service {
    /// Provides and looks up the registered repositories whose time has come (also right after
    /// a repository is registered, not at the next tick).
    pub fn repo_peers_tick(&mut self, now: Now) {
        let topics = self.repos.topics();
        let state = &mut self.discovery.repo_peers;
        state.repos.retain(|repo, _| topics.iter().any(|(_, r)| r == repo));
        state.dialled.retain(|_, at| now.mono.saturating_duration_since(*at) < PROVIDER_REDIAL);
        let mut io = Vec::new();
        for (topic, repo) in topics {
            let lookup = state.repos.entry(repo.clone()).or_insert(Lookup {
                next: now.mono,
                wait: FIRST_WAIT,
                in_flight: None,
                dialled: 0,
                provided: None,
                fast_until: now.mono + FAST_FOR,
            });
            if lookup.provided.is_none_or(|at| now.mono.saturating_duration_since(at) >= REPROVIDE) {
                lookup.provided = Some(now.mono);
                io.push(Io::Provide(key(&repo)));
            }
            let connected = self.discovery.peers.audience(&topic) > 0;
            if connected && lookup.wait < CONNECTED_WAIT {
                lookup.wait = CONNECTED_WAIT;
                lookup.next = now.mono + CONNECTED_WAIT;
            } else if !connected && lookup.wait >= CONNECTED_WAIT {
                // The repository's last peer left: look again soon.
                lookup.wait = FIRST_WAIT;
                lookup.next = lookup.next.min(now.mono + FIRST_WAIT);
            }
            let blocked = lookup.in_flight.is_some_and(|at| now.mono.saturating_duration_since(at) < STALE);
            if !blocked && now.mono >= lookup.next {
                lookup.in_flight = Some(now.mono);
                lookup.dialled = 0;
                let wait = if !connected && now.mono < lookup.fast_until {
                    FAST_WAIT
                } else {
                    let wait = lookup.wait;
                    if !connected {
                        lookup.wait = (lookup.wait * 2).min(LONGEST_WAIT);
                    }
                    wait
                };
                lookup.next = now.mono + wait;
                io.push(Io::FindRepoPeers { repo: repo.clone(), key: key(&repo) });
            }
        }
        for i in io {
            self.push(i);
        }
    }

    /// Kademlia found providers of `repo` (`done`: the lookup ended): dial some we are not
    /// connected to (nor dialled for it lately).
    pub fn repo_providers(&mut self, repo: &RepoId, found: Vec<PeerId>, done: bool, now: Now) {
        let me = self.me.peer;
        let mut to_dial = Vec::new();
        let state = &mut self.discovery.repo_peers;
        if let Some(lookup) = state.repos.get_mut(repo) {
            for peer in found {
                if lookup.dialled >= DIALS_PER_LOOKUP {
                    break;
                }
                let recent = state
                    .dialled
                    .get(&peer)
                    .is_some_and(|at| now.mono.saturating_duration_since(*at) < PROVIDER_REDIAL);
                if peer != me && !recent && !self.discovery.peers.is_connected(&peer) && !self.conduct.is_banned(&peer)
                {
                    lookup.dialled += 1;
                    state.dialled.insert(peer, now.mono);
                    to_dial.push(peer);
                }
            }
            if done {
                lookup.in_flight = None;
            }
        }
        for peer in to_dial {
            tracing::debug!(%peer, repo = %repo.short(), "dialling a peer of the repository");
            // No addresses: the swarm asks Kademlia (the lookup's) and identify's cache.
            self.dial_needed(peer, now);
        }
    }

    /// Our addresses changed (a relay reserved us a slot, AutoNAT confirmed one): provide again
    /// at once, so the records carry them, and look again, often, for repositories without
    /// peers.
    pub fn our_addresses_changed(&mut self, now: Now) {
        for lookup in self.discovery.repo_peers.repos.values_mut() {
            lookup.provided = None;
            if lookup.wait < CONNECTED_WAIT {
                lookup.wait = FIRST_WAIT;
                lookup.fast_until = now.mono + FAST_FOR;
                lookup.next = now.mono;
            }
        }
        self.repo_peers_tick(now);
    }
}
