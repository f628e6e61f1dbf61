//! Finding a repository's peers in a network larger than our connections: every registered
//! repository's key is provided in Kademlia (the same provider key as the mirrors', so a peer
//! found here can also serve git), again at once when our addresses change (a provider record
//! carries the addresses we had then: a NATed node's relayed one arrives with its reservation)
//! and hourly; while no peer of the repository is connected, again after 5 s, doubling (a
//! provide made before the node knew the network, or one most DHT nodes were too busy to take,
//! reached few). Its providers are looked up and some of them dialled. While no peer of a
//! repository is connected the lookups come often: 500 ms after the last one ended for 10 s
//! after the repository is registered or our addresses change (two peers that start together
//! find each other's records as soon as they are put), then after 1 s, doubling up to 2 min;
//! once one is connected, every 10 min. One lookup at a time per repository, ended as soon as
//! it found a provider to dial (each lookup asks some 20 DHT nodes, each over a connection
//! that takes one of their few slots). A provider just dialled is not dialled again for 5 s,
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
/// A lookup under way this long no longer holds back the next one (Kademlia's query timeout
/// ends it by then).
const STALE: Duration = Duration::from_secs(10);
/// Our provider records are put again this often (Kademlia keeps them 48 h by default; nodes
/// that held them leave).
const REPROVIDE: Duration = Duration::from_secs(3600);
/// While no peer of the repository is connected, they are put again after this, doubling up to
/// [`REPROVIDE`].
const PROVIDE_AGAIN: Duration = Duration::from_secs(5);
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
    /// Wait before providing again while no peer of the repository is connected.
    provide_wait: Duration,
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
                provide_wait: PROVIDE_AGAIN,
                fast_until: now.mono + FAST_FOR,
            });
            let connected = self.discovery.peers.audience(&topic) > 0;
            let provide_every = if connected { REPROVIDE } else { lookup.provide_wait };
            if lookup.provided.is_none_or(|at| now.mono.saturating_duration_since(at) >= provide_every) {
                if lookup.provided.is_some() && !connected {
                    lookup.provide_wait = (lookup.provide_wait * 2).min(REPROVIDE);
                }
                lookup.provided = Some(now.mono);
                io.push(Io::Provide(key(&repo)));
            }
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
    /// connected to (nor dialled for it lately). True if the lookup may end: it found a
    /// provider we are connected to or dial.
    pub fn repo_providers(&mut self, repo: &RepoId, found: Vec<PeerId>, done: bool, now: Now) -> bool {
        let me = self.me.peer;
        let mut to_dial = Vec::new();
        let mut enough = false;
        let state = &mut self.discovery.repo_peers;
        if let Some(lookup) = state.repos.get_mut(repo) {
            for peer in found {
                if peer != me && self.discovery.peers.is_connected(&peer) {
                    enough = true;
                }
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
            if done || enough || !to_dial.is_empty() {
                lookup.in_flight = None;
                // The next lookup waits from the end of this one.
                lookup.next = lookup.next.max(now.mono + FAST_WAIT);
            }
        }
        for peer in to_dial {
            tracing::debug!(%peer, repo = %repo.short(), "dialling a peer of the repository");
            // No addresses: the swarm asks Kademlia (the lookup's, ended only after this
            // dial started) and identify's cache.
            enough |= self.dial_needed(peer, now);
        }
        enough
    }

    /// Our addresses changed (a relay reserved us a slot, AutoNAT confirmed one): provide again
    /// at once, so the records carry them, and look again, often, for repositories without
    /// peers.
    pub fn our_addresses_changed(&mut self, now: Now) {
        for lookup in self.discovery.repo_peers.repos.values_mut() {
            lookup.provided = None;
            lookup.provide_wait = PROVIDE_AGAIN;
            if lookup.wait < CONNECTED_WAIT {
                lookup.wait = FIRST_WAIT;
                lookup.fast_until = now.mono + FAST_FOR;
                lookup.next = now.mono;
            }
        }
        self.repo_peers_tick(now);
    }
}
