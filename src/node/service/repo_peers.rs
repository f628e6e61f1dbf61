//! Finding a repository's peers in a network larger than our connections: every registered
//! repository's key is provided in Kademlia (the same provider key as the mirrors', so a peer
//! found here can also serve git), again when our addresses change (a provider record carries
//! the addresses we had then: a NATed node's relayed one arrives after its reservation) and
//! hourly; and its providers are looked up and some of them dialled. While no peer of a
//! repository is connected the lookups come often (1 s, doubling up to 2 min); once one is,
//! every 10 min. A peer that shares a repository of ours is dialled even when we have
//! `p2p.max-peers` connections already: it is the reason the node runs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{kad, PeerId};

use super::{Io, Service};
use crate::clock::Now;
use crate::proto::repo::RepoId;

/// First wait between lookups while no peer of the repository is connected.
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// Longest wait between lookups while no peer of the repository is connected.
const LONGEST_WAIT: Duration = Duration::from_secs(120);
/// Wait between lookups while a peer of the repository is connected.
const CONNECTED_WAIT: Duration = Duration::from_secs(600);
/// Our provider records are put again this often (Kademlia keeps them 48 h by default; nodes
/// that held them leave).
const REPROVIDE: Duration = Duration::from_secs(3600);
/// Providers dialled per lookup at most: a few peers of a repository are enough for gossip to
/// reach everyone of it.
const DIALS_PER_LOOKUP: usize = 3;

#[derive(Debug)]
struct Lookup {
    next: Instant,
    wait: Duration,
    in_flight: bool,
    dialled: usize,
    provided: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct RepoPeers {
    repos: HashMap<RepoId, Lookup>,
}

fn key(repo: &RepoId) -> kad::RecordKey {
    kad::RecordKey::new(&crate::proto::remote::provider_key(repo))
}

impl Service {
    /// Provides and looks up the registered repositories whose time has come.
    pub(super) fn repo_peers_tick(&mut self, now: Now) {
        let topics = self.repos.topics();
        let state = &mut self.discovery.repo_peers;
        state.repos.retain(|repo, _| topics.iter().any(|(_, r)| r == repo));
        let mut io = Vec::new();
        for (topic, repo) in topics {
            let lookup = state.repos.entry(repo.clone()).or_insert(Lookup {
                next: now.mono,
                wait: FIRST_WAIT,
                in_flight: false,
                dialled: 0,
                provided: None,
            });
            if lookup.provided.is_none_or(|at| now.mono.saturating_duration_since(at) >= REPROVIDE) {
                lookup.provided = Some(now.mono);
                io.push(Io::Provide(key(&repo)));
            }
            let connected = self.discovery.peers.audience(&topic) > 0;
            if connected && lookup.wait < CONNECTED_WAIT {
                lookup.wait = CONNECTED_WAIT;
                lookup.next = now.mono + CONNECTED_WAIT;
            }
            if !lookup.in_flight && now.mono >= lookup.next {
                lookup.in_flight = true;
                lookup.dialled = 0;
                io.push(Io::FindRepoPeers { repo: repo.clone(), key: key(&repo) });
            }
        }
        for i in io {
            self.push(i);
        }
    }

    /// Kademlia found providers of `repo` (`done`: the lookup ended): dial some we are not
    /// connected to.
    pub fn repo_providers(&mut self, repo: &RepoId, found: Vec<PeerId>, done: bool, now: Now) {
        let me = self.me.peer;
        let mut to_dial = Vec::new();
        if let Some(lookup) = self.discovery.repo_peers.repos.get_mut(repo) {
            for peer in found {
                if lookup.dialled >= DIALS_PER_LOOKUP {
                    break;
                }
                if peer != me && !self.discovery.peers.is_connected(&peer) && !self.conduct.is_banned(&peer) {
                    lookup.dialled += 1;
                    to_dial.push(peer);
                }
            }
            if done {
                lookup.in_flight = false;
                lookup.wait = (lookup.wait * 2).min(LONGEST_WAIT);
                lookup.next = now.mono + lookup.wait;
            }
        }
        for peer in to_dial {
            tracing::debug!(%peer, repo = %repo.short(), "dialling a peer of the repository");
            // No addresses: the swarm asks Kademlia (the lookup's) and identify's cache.
            let addrs = self.discovery.redial.untried(&peer, &[]);
            self.dial(peer, addrs, now);
        }
    }

    /// Our addresses changed (a relay reserved us a slot, AutoNAT confirmed one): provide again,
    /// so the records carry them, and look again soon for repositories without peers.
    pub fn our_addresses_changed(&mut self, now: Now) {
        for lookup in self.discovery.repo_peers.repos.values_mut() {
            lookup.provided = None;
            if lookup.wait < CONNECTED_WAIT {
                lookup.wait = FIRST_WAIT;
                lookup.next = lookup.next.min(now.mono + FIRST_WAIT);
            }
        }
    }
}
