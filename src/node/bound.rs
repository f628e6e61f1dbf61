//! At most `p2p.max-peers` peers connected at once, whoever opens the connections (we, peers
//! that dial us, Kademlia's lookups, AutoNAT's dial-backs, relayed and hole-punched ones). A
//! second connection of a connected peer takes no slot. A connection to a new peer is let in
//! while a slot is free. When none is, a peer the node does not keep (`service::bound` says
//! which it keeps) that something has kept busy for [`SETTLED`] gives up its slot (the one
//! connected longest; for a peer the node keeps, such as a peer of its repositories it is
//! dialling, any peer it does not keep; for a peer that dials in, also any peer the node
//! dialled, however young: mostly a lookup's, and a lookup asks another node, while the peer
//! dialling in may be a peer of our repositories looking for us); with none to spare, the
//! connection is refused. (A dial of ours is refused once connected, not before it starts:
//! Kademlia would then move on at once to the next node of its lookup, refused too, and end
//! the lookup in milliseconds with most of its requests failed; the time a handshake takes
//! lets slots free up meanwhile.) A peer being closed no longer counts, so the count never
//! passes the bound.
//!
//! And which connections stay open while idle: those of the peers the node keeps; any other
//! connection (a lookup's, an AutoNAT dial-back, a peer's beyond what the node keeps) closes as
//! soon as no protocol uses it (the swarm's idle timeout, 0.1 s), so that its slot is free for
//! the next. A new connection stays open until the node has said whether it keeps it, and one
//! a peer opened for [`GRACE`] at least, while the node learns what the peer shares with it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::behaviour::{ConnectionClosed, ConnectionEstablished};
use libp2p::swarm::handler::{ConnectionEvent, ConnectionHandler, ConnectionHandlerEvent, SubstreamProtocol};
use libp2p::swarm::{
    CloseConnection, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::PeerId;

/// A connection a peer opened stays open this long whatever the node decides (the peer's
/// subscriptions arrive in the first round trips: it may share a repository with us). One we
/// opened has no such grace: we know why we dialled (a peer of a repository is kept from the
/// start, a lookup's closes once answered).
pub const GRACE: Duration = Duration::from_millis(250);
/// A peer the node does not keep may be closed for a newcomer once connected this long (past
/// its grace, something keeps it busy).
pub const SETTLED: Duration = GRACE;

/// The swarm closes this peer's connections to make room for another.
#[derive(Debug)]
pub struct Evicted(pub PeerId);

/// Why a connection was refused: the node has `p2p.max-peers` peers, all kept or new.
#[derive(Debug, thiserror::Error)]
#[error("{0} peers connected already (p2p.max-peers)")]
pub struct Full(pub usize);

/// A connected peer, as the bound sees it.
struct Peer {
    /// Since when it is connected.
    since: Instant,
    conns: Vec<ConnectionId>,
    /// We dialled it (its first connection was ours): a lookup's, most of the time.
    ours: bool,
}

pub struct Bound {
    max: usize,
    kept: HashSet<PeerId>,
    /// Connected peers and their established connections.
    conns: HashMap<PeerId, Peer>,
    /// Connections not yet told whether they are kept (they stay open until they are).
    untold: HashSet<ConnectionId>,
    /// Peers we are closing to make room: they no longer count.
    closing: HashSet<PeerId>,
    /// The most peers counted at once since start.
    most: usize,
    events: VecDeque<ToSwarm<Evicted, bool>>,
    waker: Option<Waker>,
}

impl Bound {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            kept: HashSet::new(),
            conns: HashMap::new(),
            untold: HashSet::new(),
            closing: HashSet::new(),
            most: 0,
            events: VecDeque::new(),
            waker: None,
        }
    }

    /// The peers whose connections stay open while idle (and are never closed for others).
    pub fn keep(&mut self, kept: HashSet<PeerId>) {
        for (peer, Peer { conns, .. }) in &self.conns {
            let now = kept.contains(peer);
            let changed = self.kept.contains(peer) != now;
            for c in conns {
                if self.untold.remove(c) || changed {
                    self.events.push_back(ToSwarm::NotifyHandler {
                        peer_id: *peer,
                        handler: NotifyHandler::One(*c),
                        event: now,
                    });
                }
            }
        }
        self.kept = kept;
        self.wake();
    }

    /// The most peers connected at once since start (not counting those being closed).
    pub fn most(&self) -> usize {
        self.most
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Peers that count: connected and not being closed.
    fn counted(&self) -> usize {
        self.conns.len() - self.closing.len()
    }

    /// Whether `peer` can be let in now: `Ok(None)` if it has a slot or one is free,
    /// `Ok(Some(victim))` if `victim` must give up its slot for it (see the module's header).
    fn room(&self, peer: &PeerId, inbound: bool, now: Instant) -> Result<Option<PeerId>, ConnectionDenied> {
        let counted = self.conns.contains_key(peer) && !self.closing.contains(peer);
        if counted || self.counted() < self.max {
            return Ok(None);
        }
        // A peer we keep (of our repositories, being dialled) takes any slot we do not need.
        let wanted = self.kept.contains(peer);
        self.conns
            .iter()
            .filter(|(p, them)| {
                !self.kept.contains(*p)
                    && !self.closing.contains(*p)
                    && (wanted || now.saturating_duration_since(them.since) >= SETTLED || (inbound && them.ours))
            })
            .min_by_key(|(_, them)| them.since)
            .map(|(p, _)| Some(*p))
            .ok_or_else(|| ConnectionDenied::new(Full(self.max)))
    }

    /// Lets `peer` in if it has a slot or can have one now, closing the peer that gives it
    /// up; `inbound`: it dialled us.
    fn admit(&mut self, peer: &PeerId, inbound: bool) -> Result<Handler, ConnectionDenied> {
        if let Some(victim) = self.room(peer, inbound, Instant::now())? {
            tracing::debug!(peer = %victim, "closing a peer we do not keep to make room");
            self.closing.insert(victim);
            self.events.push_back(ToSwarm::CloseConnection { peer_id: victim, connection: CloseConnection::All });
            self.events.push_back(ToSwarm::GenerateEvent(Evicted(victim)));
            self.wake();
        }
        Ok(Handler::new(self.kept.contains(peer), inbound))
    }
}

impl NetworkBehaviour for Bound {
    type ConnectionHandler = Handler;
    type ToSwarm = Evicted;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(&peer, true)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(&peer, false)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished { peer_id, connection_id, endpoint, .. }) => {
                // A peer being closed that comes back was let in as a newcomer: it counts again.
                self.closing.remove(&peer_id);
                self.untold.insert(connection_id);
                self.conns
                    .entry(peer_id)
                    .or_insert_with(|| Peer { since: Instant::now(), conns: Vec::new(), ours: endpoint.is_dialer() })
                    .conns
                    .push(connection_id);
                self.most = self.most.max(self.counted());
            }
            FromSwarm::ConnectionClosed(ConnectionClosed { peer_id, connection_id, .. }) => {
                self.untold.remove(&connection_id);
                if let Some(Peer { conns, .. }) = self.conns.get_mut(&peer_id) {
                    conns.retain(|c| *c != connection_id);
                    if conns.is_empty() {
                        self.conns.remove(&peer_id);
                        self.closing.remove(&peer_id);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: THandlerOutEvent<Self>) {
        match event {}
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(event);
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

pub struct Handler {
    keep: bool,
    /// Told by the node whether it is kept (until then it stays open).
    told: bool,
    /// Until this fires, the connection is kept whatever the node says.
    grace: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Handler {
    fn new(keep: bool, grace: bool) -> Self {
        Self { keep, told: false, grace: grace.then(|| Box::pin(tokio::time::sleep(GRACE))) }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = bool;
    type ToBehaviour = Infallible;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep || !self.told || self.grace.is_some()
    }

    fn on_behaviour_event(&mut self, keep: bool) {
        self.keep = keep;
        self.told = true;
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, (), Infallible>> {
        if let Some(grace) = self.grace.as_mut() {
            if grace.as_mut().poll(cx).is_ready() {
                self.grace = None;
            }
        }
        Poll::Pending
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<DeniedUpgrade, DeniedUpgrade>) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(inbound) => match inbound.protocol {},
            ConnectionEvent::FullyNegotiatedOutbound(outbound) => match outbound.protocol {},
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use libp2p::core::ConnectedPoint;

    use super::*;

    fn connect(bound: &mut Bound, peer: PeerId, id: usize) {
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().expect("an address");
        established(bound, peer, id, &ConnectedPoint::Listener { local_addr: addr.clone(), send_back_addr: addr });
    }

    fn dialled(bound: &mut Bound, peer: PeerId, id: usize) {
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().expect("an address");
        let endpoint =
            ConnectedPoint::Dialer { address: addr, role_override: Endpoint::Dialer, port_use: PortUse::New };
        established(bound, peer, id, &endpoint);
    }

    fn established(bound: &mut Bound, peer: PeerId, id: usize, endpoint: &ConnectedPoint) {
        bound.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id: peer,
            connection_id: ConnectionId::new_unchecked(id),
            endpoint,
            failed_addresses: &[],
            other_established: 0,
        }));
    }

    #[test]
    fn a_newcomer_is_refused_when_every_peer_is_young_unless_the_node_keeps_it() {
        let mut bound = Bound::new(2);
        let (alice, bob, carol, dave) = (PeerId::random(), PeerId::random(), PeerId::random(), PeerId::random());
        connect(&mut bound, alice, 1);
        connect(&mut bound, bob, 2);
        // Full of peers connected a moment ago (not settled): a third is refused.
        let refused = bound.admit(&carol, true).err().expect("full");
        assert!(refused.downcast_ref::<Full>().is_some(), "refused for the bound");
        assert!(bound.events.is_empty(), "nobody closed for it");
        // A connected peer's second connection takes no new slot.
        assert!(bound.admit(&alice, false).is_ok());
        // A peer the node keeps takes the place of one it does not keep, however young.
        bound.keep([dave, alice].into_iter().collect());
        assert!(bound.admit(&dave, false).is_ok());
        let evicted = bound.events.iter().any(|e| matches!(e, ToSwarm::GenerateEvent(Evicted(p)) if *p == bob));
        assert!(evicted, "bob, not kept, gave up his slot: {:?}", bound.events.len());
        assert_eq!(bound.counted(), 1, "bob being closed no longer counts");
    }

    #[tokio::test]
    async fn a_peer_that_dials_in_takes_the_place_of_one_we_dialled_however_young() {
        let mut bound = Bound::new(2);
        let (alice, bob, carol, dave) = (PeerId::random(), PeerId::random(), PeerId::random(), PeerId::random());
        connect(&mut bound, alice, 1);
        dialled(&mut bound, bob, 2);
        // Bob is a lookup's, young: carol dialling in takes his place, ...
        assert!(bound.admit(&carol, true).is_ok());
        let evicted = bound.events.iter().any(|e| matches!(e, ToSwarm::GenerateEvent(Evicted(p)) if *p == bob));
        assert!(evicted, "bob, whom we dialled, gave up his slot");
        connect(&mut bound, carol, 3);
        // ... but a dial of ours does not (alice dialled in and is young, carol too).
        bound.events.clear();
        assert!(bound.admit(&dave, false).is_err(), "nobody to close for our own dial");
    }
}
