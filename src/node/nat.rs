//! NAT traversal's bookkeeping, without I/O: our reachability as AutoNAT found it, the relays we
//! know and our reservations on them, whether we relay for others, and which connections go
//! through a relay. The event loop (`event_loop::nat`) feeds it the swarm's events and carries
//! out the [`NatAction`]s it returns.
//!
//! Policy: while no address of ours is confirmed reachable (unknown or private), we hold a
//! reservation on up to [`MAX_RESERVATIONS`] relays (configured ones first, then bootstrap peers
//! and peers that offer to relay), so that peers can reach us through them at once; AutoNAT's
//! verdict on a NATed address takes a dial-back timeout, and waiting for it would delay every
//! first contact. Once an address is confirmed, the reservations are given up and, with
//! `p2p.relay-service=auto`, we relay for others. A direct connection to a peer (dialled, or
//! made by hole punching) makes its relayed ones redundant: they are closed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};

use crate::config::RelayService;
use crate::control::api::{NatStatus, Reservation};

/// Relays we hold a slot on at once: two, so that losing one relay does not cut us off.
pub const MAX_RESERVATIONS: usize = 2;
/// A relay that refused us or whose reservation ended is asked again this much later.
const RETRY: Duration = Duration::from_secs(10);
/// How long a relayed connection stays open once a direct one to the same peer exists.
pub const RELAYED_GRACE: Duration = Duration::from_secs(3);
/// Relays we remember as candidates at most (a peer cannot grow the table without bound).
const MAX_CANDIDATES: usize = 64;

/// What the event loop should do to the swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatAction {
    /// Listen on `addr` (`<relay>/p2p-circuit`): reserve a slot on the relay.
    Reserve { relay: PeerId, addr: Multiaddr },
    /// Give up a reservation (close its listener).
    Release(ListenerId),
    /// Relay for others, or stop.
    Serve(bool),
    /// Close a relayed connection: a direct one to the same peer exists.
    Close(ConnectionId),
}

#[derive(Debug)]
struct Relay {
    /// Where to reach it (without `/p2p/<id>`).
    addr: Multiaddr,
    /// Configured with `p2p.circuit-relay`: tried first.
    configured: bool,
    listener: Option<ListenerId>,
    active: bool,
    /// Not asked again before this (it refused, or the reservation ended).
    retry_at: Option<Instant>,
}

#[derive(Debug)]
pub struct Nat {
    mode: RelayService,
    serving: bool,
    confirmed: BTreeSet<Multiaddr>,
    unreachable: BTreeSet<Multiaddr>,
    relays: BTreeMap<PeerId, Relay>,
    /// Open connections that go through a relay, by peer.
    relayed: HashMap<ConnectionId, PeerId>,
    /// Open direct connections, by peer.
    direct: HashMap<PeerId, BTreeSet<ConnectionId>>,
    /// Relayed connections we closed because a direct one exists (their end is no failure).
    closing: BTreeSet<ConnectionId>,
    /// Relayed connections to close at these times: a direct one exists. Not at once: gossipsub
    /// shares one send queue among a peer's connections, and what the relayed one took from it
    /// just before would be lost with it; meanwhile streams avoid it (`direct_streams`).
    to_close: BTreeMap<ConnectionId, Instant>,
    /// We listen on loopback only: whoever can reach us at all reaches us directly.
    loopback_only: bool,
    pub circuits: usize,
    /// Peers that hold a slot on us (we relay for them).
    slot_holders: BTreeSet<PeerId>,
    pub hole_punched: u64,
    pub hole_punch_failed: u64,
}

/// Whether an address goes through a relay.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

impl Nat {
    /// `relays`: configured relays (`p2p.circuit-relay`).
    pub fn new(mode: RelayService, relays: &[(PeerId, Multiaddr)]) -> Self {
        let mut nat = Self {
            mode,
            serving: false,
            confirmed: BTreeSet::new(),
            unreachable: BTreeSet::new(),
            relays: BTreeMap::new(),
            relayed: HashMap::new(),
            direct: HashMap::new(),
            closing: BTreeSet::new(),
            to_close: BTreeMap::new(),
            loopback_only: false,
            circuits: 0,
            slot_holders: BTreeSet::new(),
            hole_punched: 0,
            hole_punch_failed: 0,
        };
        for (peer, addr) in relays {
            nat.relays.insert(
                *peer,
                Relay { addr: addr.clone(), configured: true, listener: None, active: false, retry_at: None },
            );
        }
        nat
    }

    /// We listen on loopback only (tests, a node for this machine alone): no reservations.
    pub fn set_loopback_only(&mut self, yes: bool) {
        self.loopback_only = yes;
    }

    pub fn is_confirmed(&self, addr: &Multiaddr) -> bool {
        self.confirmed.contains(addr)
    }

    /// `p2p.relay-service=on`.
    pub fn forced_on(&self) -> bool {
        self.mode == RelayService::On
    }

    pub fn is_public(&self) -> bool {
        !self.confirmed.is_empty()
    }

    /// What to do at start and whenever something changed: the relay service on or off, and
    /// reservations taken or given up.
    pub fn plan(&mut self, now: Instant) -> Vec<NatAction> {
        let due: Vec<ConnectionId> = self.to_close.iter().filter(|(_, at)| **at <= now).map(|(id, _)| *id).collect();
        let mut actions = Vec::new();
        for id in due {
            self.to_close.remove(&id);
            if self.closing.insert(id) {
                actions.push(NatAction::Close(id));
            }
        }
        let serve = match self.mode {
            RelayService::On => true,
            RelayService::Off => false,
            RelayService::Auto => self.is_public(),
        };
        if serve != self.serving {
            self.serving = serve;
            actions.push(NatAction::Serve(serve));
        }
        if self.is_public() {
            // Only accepted reservations are given up here; one still being asked for is given
            // up once accepted (libp2p's relay client panics when the answer to a request
            // arrives after its listener was closed).
            for relay in self.relays.values_mut() {
                if relay.active {
                    if let Some(id) = relay.listener.take() {
                        relay.active = false;
                        actions.push(NatAction::Release(id));
                    }
                }
            }
            return actions;
        }
        if self.loopback_only {
            return actions;
        }
        let held = self.relays.values().filter(|r| r.listener.is_some()).count();
        let mut wanted: Vec<(&PeerId, &Relay)> =
            self.relays.iter().filter(|(_, r)| r.listener.is_none() && r.retry_at.is_none_or(|t| now >= t)).collect();
        wanted.sort_by_key(|(_, r)| !r.configured);
        let picked: Vec<(PeerId, Multiaddr)> = wanted
            .into_iter()
            .take(MAX_RESERVATIONS.saturating_sub(held))
            .map(|(p, r)| (*p, r.addr.clone().with(Protocol::P2p(*p)).with(Protocol::P2pCircuit)))
            .collect();
        for (relay, addr) in picked {
            actions.push(NatAction::Reserve { relay, addr });
        }
        actions
    }

    /// The event loop started listening for a reservation on `relay`.
    pub fn reserving(&mut self, relay: PeerId, listener: ListenerId) {
        if let Some(r) = self.relays.get_mut(&relay) {
            r.listener = Some(listener);
        }
    }

    /// A reservation could not even be asked for (the listener was refused).
    pub fn reserve_failed(&mut self, relay: PeerId, now: Instant) {
        if let Some(r) = self.relays.get_mut(&relay) {
            r.listener = None;
            r.active = false;
            r.retry_at = Some(now + RETRY);
        }
    }

    /// `peer` took a slot on us.
    pub fn slot_taken(&mut self, peer: PeerId) {
        self.slot_holders.insert(peer);
    }

    /// The last connection of `peer` ended: true if it held a slot on us.
    pub fn slot_freed(&mut self, peer: &PeerId) -> bool {
        self.slot_holders.remove(peer)
    }

    /// The relays we hold (or are asking for) a slot on, and the peers that hold one on us.
    pub fn tied(&self) -> Vec<PeerId> {
        let relays = self.relays.iter().filter(|(_, r)| r.listener.is_some()).map(|(p, _)| *p);
        relays.chain(self.slot_holders.iter().copied()).collect()
    }

    /// A peer offers to relay (its identify lists the relay protocol) at `addr`.
    pub fn relay_offered(&mut self, peer: PeerId, addr: Multiaddr) {
        if let Some(r) = self.relays.get_mut(&peer) {
            if !r.configured {
                r.addr = addr;
            }
            return;
        }
        if self.relays.len() >= MAX_CANDIDATES {
            return;
        }
        self.relays.insert(peer, Relay { addr, configured: false, listener: None, active: false, retry_at: None });
    }

    /// A peer no longer offers to relay.
    pub fn relay_withdrawn(&mut self, peer: &PeerId) {
        if self.relays.get(peer).is_some_and(|r| !r.configured && r.listener.is_none()) {
            self.relays.remove(peer);
        }
    }

    /// The relay accepted our reservation; if we no longer need it, the listener to close.
    pub fn reservation_accepted(&mut self, relay: &PeerId) -> Option<ListenerId> {
        let public = self.is_public();
        let r = self.relays.get_mut(relay)?;
        r.retry_at = None;
        if public {
            r.active = false;
            return r.listener.take();
        }
        r.active = true;
        None
    }

    /// A listener closed: if it was a reservation, it ended (the relay went away, refused or
    /// expired it); asked again later.
    pub fn listener_closed(&mut self, listener: ListenerId, now: Instant) {
        for r in self.relays.values_mut() {
            if r.listener == Some(listener) {
                r.listener = None;
                r.active = false;
                r.retry_at = Some(now + RETRY);
            }
        }
    }

    /// AutoNAT (or the relay client, for a relayed address) confirmed an address of ours.
    pub fn confirmed(&mut self, addr: Multiaddr) {
        if !is_relayed(&addr) {
            self.unreachable.remove(&addr);
            self.confirmed.insert(addr);
        }
    }

    pub fn expired(&mut self, addr: &Multiaddr) {
        self.confirmed.remove(addr);
    }

    /// AutoNAT found `addr` not reachable from outside.
    pub fn unreachable(&mut self, addr: Multiaddr) {
        if !self.confirmed.contains(&addr) {
            self.unreachable.insert(addr);
        }
    }

    /// A connection is up; `relayed`: through a relay. The relayed connections a direct one
    /// makes redundant (this one, if it is relayed and a direct one exists) are closed
    /// [`RELAYED_GRACE`] later, by [`Nat::plan`].
    pub fn connection_up(&mut self, peer: PeerId, id: ConnectionId, relayed: bool, now: Instant) {
        let at = now + RELAYED_GRACE;
        if relayed {
            self.relayed.insert(id, peer);
            if self.direct.get(&peer).is_some_and(|d| !d.is_empty()) {
                self.to_close.insert(id, at);
            }
            return;
        }
        self.direct.entry(peer).or_default().insert(id);
        for (c, p) in &self.relayed {
            if *p == peer {
                self.to_close.entry(*c).or_insert(at);
            }
        }
    }

    /// A connection closed. Returns true when it was a relayed one we closed on purpose (or any
    /// relayed one while a direct one remains): its end is not the peer's failure.
    pub fn connection_down(&mut self, peer: &PeerId, id: ConnectionId) -> bool {
        let was_closing = self.closing.remove(&id) | self.to_close.remove(&id).is_some();
        let was_relayed = self.relayed.remove(&id).is_some();
        if let Some(d) = self.direct.get_mut(peer) {
            d.remove(&id);
            if d.is_empty() {
                self.direct.remove(peer);
            }
        }
        was_closing || (was_relayed && self.direct.contains_key(peer))
    }

    /// Whether a relayed connection to `peer` is open.
    pub fn is_relayed_to(&self, peer: &PeerId) -> bool {
        self.relayed.values().any(|p| p == peer)
    }

    /// A relayed connection that a direct one replaces (closing, or about to be): its failures
    /// (a ping that fails as it closes) say nothing about the peer.
    pub fn is_redundant(&self, id: &ConnectionId) -> bool {
        self.closing.contains(id)
            || self.to_close.contains_key(id)
            || self.relayed.get(id).is_some_and(|p| self.direct.contains_key(p))
    }

    pub fn status(&self) -> NatStatus {
        let reachability = if self.is_public() {
            "public"
        } else if !self.unreachable.is_empty() {
            "private"
        } else {
            "unknown"
        };
        let mode = match self.mode {
            RelayService::Auto => "auto",
            RelayService::On => "on",
            RelayService::Off => "off",
        };
        NatStatus {
            reachability: reachability.into(),
            confirmed: self.confirmed.iter().map(|a| a.to_string()).collect(),
            reservations: self
                .relays
                .iter()
                .filter(|(_, r)| r.listener.is_some())
                .map(|(p, r)| Reservation {
                    relay: p.to_string(),
                    address: r.addr.clone().with(Protocol::P2p(*p)).with(Protocol::P2pCircuit).to_string(),
                    active: r.active,
                })
                .collect(),
            relay_service: mode.into(),
            serving: self.serving,
            circuits: self.circuits,
            reserved_for_others: self.slot_holders.len(),
            hole_punched: self.hole_punched,
            hole_punch_failed: self.hole_punch_failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_node_not_known_reachable_reserves_then_gives_up_once_public() {
        let t0 = Instant::now();
        let configured = PeerId::random();
        let mut nat = Nat::new(RelayService::Auto, &[(configured, addr("/ip4/198.51.100.10/tcp/4001"))]);
        let offered = [PeerId::random(), PeerId::random()];
        for p in offered {
            nat.relay_offered(p, addr("/ip4/198.51.100.11/tcp/4001"));
        }
        let actions = nat.plan(t0);
        let reserved: Vec<PeerId> = actions
            .iter()
            .filter_map(|a| match a {
                NatAction::Reserve { relay, .. } => Some(*relay),
                _ => None,
            })
            .collect();
        assert_eq!(reserved.len(), MAX_RESERVATIONS, "{actions:?}");
        assert_eq!(reserved[0], configured, "configured relays first");
        for (i, r) in reserved.iter().enumerate() {
            nat.reserving(*r, ListenerId::next());
            assert!(i < MAX_RESERVATIONS);
        }
        assert!(nat.plan(t0).is_empty(), "no more than {MAX_RESERVATIONS} reservations");
        assert_eq!(nat.status().reachability, "unknown");
        assert!(!nat.status().serving, "auto: no relaying before AutoNAT confirms an address");

        nat.unreachable(addr("/ip4/198.51.100.100/tcp/4001"));
        assert_eq!(nat.status().reachability, "private");
        nat.confirmed(addr(
            "/ip4/198.51.100.10/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA/p2p-circuit",
        ));
        assert_eq!(nat.status().reachability, "private", "a relayed address is no reachability");
        nat.reservation_accepted(&reserved[0]);
        nat.confirmed(addr("/ip4/198.51.100.100/tcp/4001"));
        let actions = nat.plan(t0);
        assert!(actions.contains(&NatAction::Serve(true)), "{actions:?}");
        let released = actions.iter().filter(|a| matches!(a, NatAction::Release(_))).count();
        assert_eq!(released, 1, "the accepted reservation goes at once: {actions:?}");
        assert!(nat.reservation_accepted(&reserved[1]).is_some(), "the one still asked for goes once accepted");
        assert_eq!(nat.status().reachability, "public");
        assert!(nat.status().reservations.is_empty());
    }

    #[test]
    fn a_refused_reservation_is_asked_again_later_and_off_means_off() {
        let t0 = Instant::now();
        let relay = PeerId::random();
        let mut nat = Nat::new(RelayService::Off, &[(relay, addr("/ip4/198.51.100.10/tcp/4001"))]);
        assert!(matches!(nat.plan(t0)[..], [NatAction::Reserve { .. }]));
        let id = ListenerId::next();
        nat.reserving(relay, id);
        nat.listener_closed(id, t0);
        assert!(nat.plan(t0 + Duration::from_secs(1)).is_empty(), "not at once");
        assert!(matches!(nat.plan(t0 + RETRY)[..], [NatAction::Reserve { .. }]));
        nat.confirmed(addr("/ip4/198.51.100.100/tcp/4001"));
        assert!(!nat.plan(t0).contains(&NatAction::Serve(true)), "off: never relays");
        let mut lo = Nat::new(RelayService::Auto, &[(relay, addr("/ip4/127.0.0.1/tcp/4001"))]);
        lo.set_loopback_only(true);
        assert!(lo.plan(t0).is_empty(), "a node on loopback alone reserves nothing");
        let mut on = Nat::new(RelayService::On, &[]);
        assert_eq!(on.plan(t0), vec![NatAction::Serve(true)], "on: relays even before AutoNAT");
    }

    #[test]
    fn a_direct_connection_closes_the_relayed_ones_and_their_end_is_no_failure() {
        let t0 = Instant::now();
        let mut nat = Nat::new(RelayService::Auto, &[]);
        nat.set_loopback_only(true);
        let peer = PeerId::random();
        let (relayed, direct) = (ConnectionId::new_unchecked(1), ConnectionId::new_unchecked(2));
        nat.connection_up(peer, relayed, true, t0);
        assert!(nat.plan(t0 + RELAYED_GRACE).is_empty(), "a relayed connection alone stays");
        assert!(!nat.is_redundant(&relayed));
        nat.connection_up(peer, direct, false, t0);
        assert!(nat.is_redundant(&relayed) && !nat.is_redundant(&direct));
        assert!(nat.plan(t0).is_empty(), "not at once: what it took from gossipsub's queue goes out first");
        assert_eq!(nat.plan(t0 + RELAYED_GRACE), vec![NatAction::Close(relayed)]);
        assert!(nat.connection_down(&peer, relayed), "closed on purpose");
        let late = ConnectionId::new_unchecked(3);
        nat.connection_up(peer, late, true, t0);
        assert_eq!(nat.plan(t0 + RELAYED_GRACE), vec![NatAction::Close(late)], "a direct one exists");
        assert!(!nat.connection_down(&peer, direct), "a direct connection's end is news");
        let other = PeerId::random();
        nat.connection_up(other, ConnectionId::new_unchecked(4), false, t0);
        assert!(nat.plan(t0 + RELAYED_GRACE).is_empty());
    }
}
