//! Streams go over a direct connection when there is one. `libp2p-stream` opens a stream on a
//! random connection to the peer; while hole punching replaces a relayed connection (and for
//! the moment it takes to close the relayed one) a git fetch could land on the relay, which
//! carries it slowly and within the circuit's limits only. This wrapper hides a peer's relayed
//! connections from the inner behaviour while a direct one exists (as if they had closed), and
//! shows them again when the last direct one closes, so the random pick is always a direct
//! connection when there is one. Everything else passes through unchanged.

use std::collections::HashMap;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint, Multiaddr};
use libp2p::swarm::behaviour::{ConnectionClosed, ConnectionEstablished};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::PeerId;

struct Conn {
    peer: PeerId,
    endpoint: ConnectedPoint,
    relayed: bool,
    /// Hidden from the inner behaviour (a relayed connection while a direct one exists).
    hidden: bool,
}

pub struct PreferDirect<B> {
    inner: B,
    conns: HashMap<ConnectionId, Conn>,
}

impl<B> PreferDirect<B> {
    pub fn new(inner: B) -> Self {
        Self { inner, conns: HashMap::new() }
    }

    fn has_direct(&self, peer: &PeerId) -> bool {
        self.conns.values().any(|c| c.peer == *peer && !c.relayed)
    }

    fn shown(&self, peer: &PeerId) -> usize {
        self.conns.values().filter(|c| c.peer == *peer && !c.hidden).count()
    }
}

impl<B> std::ops::Deref for PreferDirect<B> {
    type Target = B;
    fn deref(&self) -> &B {
        &self.inner
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for PreferDirect<B> {
    type ConnectionHandler = B::ConnectionHandler;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner.handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addrs: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(id, peer, addrs, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                let relayed = e.endpoint.is_relayed();
                let hidden = relayed && self.has_direct(&e.peer_id);
                let conn = Conn { peer: e.peer_id, endpoint: e.endpoint.clone(), relayed, hidden };
                self.conns.insert(e.connection_id, conn);
                if hidden {
                    return;
                }
                self.inner.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
                    other_established: self.shown(&e.peer_id).saturating_sub(1),
                    ..e
                }));
                if !relayed {
                    let to_hide: Vec<ConnectionId> = self
                        .conns
                        .iter()
                        .filter(|(_, c)| c.peer == e.peer_id && c.relayed && !c.hidden)
                        .map(|(id, _)| *id)
                        .collect();
                    for id in to_hide {
                        let Some(conn) = self.conns.get_mut(&id) else { continue };
                        conn.hidden = true;
                        let endpoint = conn.endpoint.clone();
                        let remaining = self.shown(&e.peer_id);
                        self.inner.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
                            peer_id: e.peer_id,
                            connection_id: id,
                            endpoint: &endpoint,
                            cause: None,
                            remaining_established: remaining,
                        }));
                    }
                }
            }
            FromSwarm::ConnectionClosed(e) => {
                let Some(gone) = self.conns.remove(&e.connection_id) else {
                    return self.inner.on_swarm_event(FromSwarm::ConnectionClosed(e));
                };
                if gone.hidden {
                    return;
                }
                self.inner.on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
                    remaining_established: self.shown(&e.peer_id),
                    ..e
                }));
                if !gone.relayed && !self.has_direct(&e.peer_id) {
                    let to_show: Vec<ConnectionId> =
                        self.conns.iter().filter(|(_, c)| c.peer == e.peer_id && c.hidden).map(|(id, _)| *id).collect();
                    for id in to_show {
                        let other = self.shown(&e.peer_id);
                        let Some(conn) = self.conns.get_mut(&id) else { continue };
                        conn.hidden = false;
                        let endpoint = conn.endpoint.clone();
                        self.inner.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
                            peer_id: e.peer_id,
                            connection_id: id,
                            endpoint: &endpoint,
                            failed_addresses: &[],
                            other_established: other,
                        }));
                    }
                }
            }
            other => self.inner.on_swarm_event(other),
        }
    }

    fn on_connection_handler_event(&mut self, peer: PeerId, id: ConnectionId, event: THandlerOutEvent<Self>) {
        self.inner.on_connection_handler_event(peer, id, event)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use libp2p::swarm::dummy;

    use super::*;

    /// Keeps the connections it is told of, as `libp2p-stream` does to pick one.
    #[derive(Default)]
    struct Recorder {
        open: HashSet<ConnectionId>,
    }

    impl NetworkBehaviour for Recorder {
        type ConnectionHandler = dummy::ConnectionHandler;
        type ToSwarm = std::convert::Infallible;
        fn handle_established_inbound_connection(
            &mut self,
            _: ConnectionId,
            _: PeerId,
            _: &Multiaddr,
            _: &Multiaddr,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            Ok(dummy::ConnectionHandler)
        }
        fn handle_established_outbound_connection(
            &mut self,
            _: ConnectionId,
            _: PeerId,
            _: &Multiaddr,
            _: Endpoint,
            _: PortUse,
        ) -> Result<THandler<Self>, ConnectionDenied> {
            Ok(dummy::ConnectionHandler)
        }
        fn on_swarm_event(&mut self, event: FromSwarm) {
            match event {
                FromSwarm::ConnectionEstablished(e) => assert!(self.open.insert(e.connection_id), "told twice"),
                FromSwarm::ConnectionClosed(e) => assert!(self.open.remove(&e.connection_id), "closed unknown"),
                _ => {}
            }
        }
        fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, e: THandlerOutEvent<Self>) {
            libp2p::core::util::unreachable(e)
        }
        fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
            Poll::Pending
        }
    }

    fn dialer(addr: &str) -> ConnectedPoint {
        ConnectedPoint::Dialer {
            address: addr.parse().unwrap(),
            role_override: Endpoint::Dialer,
            port_use: PortUse::Reuse,
        }
    }

    fn up(b: &mut PreferDirect<Recorder>, peer: PeerId, id: usize, endpoint: &ConnectedPoint) {
        let connection_id = ConnectionId::new_unchecked(id);
        let e = ConnectionEstablished {
            peer_id: peer,
            connection_id,
            endpoint,
            failed_addresses: &[],
            other_established: 0,
        };
        b.on_swarm_event(FromSwarm::ConnectionEstablished(e));
    }

    fn down(b: &mut PreferDirect<Recorder>, peer: PeerId, id: usize, endpoint: &ConnectedPoint) {
        let connection_id = ConnectionId::new_unchecked(id);
        let e = ConnectionClosed { peer_id: peer, connection_id, endpoint, cause: None, remaining_established: 0 };
        b.on_swarm_event(FromSwarm::ConnectionClosed(e));
    }

    #[test]
    fn streams_see_the_relayed_connection_only_while_no_direct_one_exists() {
        let relay = PeerId::random();
        let peer = PeerId::random();
        let relayed = dialer(&format!("/ip4/198.51.100.10/tcp/4001/p2p/{relay}/p2p-circuit"));
        let direct = dialer("/ip4/198.51.100.101/tcp/4001");
        let mut b = PreferDirect::new(Recorder::default());
        let ids = |b: &PreferDirect<Recorder>| {
            let mut v: Vec<usize> = b.open.iter().map(|c| format!("{c}").parse().unwrap()).collect();
            v.sort();
            v
        };
        up(&mut b, peer, 1, &relayed);
        assert_eq!(ids(&b), vec![1], "a relayed connection alone carries streams");
        up(&mut b, peer, 2, &direct);
        assert_eq!(ids(&b), vec![2], "hole punched: the direct one only");
        up(&mut b, peer, 3, &relayed);
        assert_eq!(ids(&b), vec![2], "a relayed one arriving later stays hidden");
        down(&mut b, peer, 1, &relayed);
        assert_eq!(ids(&b), vec![2]);
        down(&mut b, peer, 2, &direct);
        assert_eq!(ids(&b), vec![3], "the direct one gone: the relay again");
        down(&mut b, peer, 3, &relayed);
        assert!(ids(&b).is_empty());
    }
}
