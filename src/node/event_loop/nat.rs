//! NAT traversal on the swarm: AutoNAT's verdicts, relay reservations (ours on relays, and
//! others' on us), hole punches, and relayed connections closed once a direct one exists; the
//! decisions are `node::nat`'s.

use libp2p::core::ConnectedPoint;
use libp2p::swarm::ConnectionId;
use libp2p::{autonat, dcutr, identify, relay, Multiaddr, PeerId};

use super::EventLoop;
use crate::clock::Now;
use crate::node::nat::{is_relayed, NatAction};
use crate::node::service::discovery::{ip_of, is_dialable, is_loopback, is_outside, strip_p2p};

impl EventLoop {
    /// Takes the reservations and switches the relay service as `node::nat` plans.
    pub(super) fn nat_plan(&mut self) {
        let actions = self.nat.plan(Now::system().mono);
        self.nat_apply(actions);
    }

    fn nat_apply(&mut self, actions: Vec<NatAction>) {
        for action in actions {
            match action {
                NatAction::Reserve { relay, addr } => match self.swarm.listen_on(addr.clone()) {
                    Ok(id) => {
                        tracing::debug!(%relay, %addr, "asking the relay for a reservation");
                        self.nat.reserving(relay, id);
                        self.service.set_tied(self.nat.tied(), Now::system());
                    }
                    Err(e) => {
                        tracing::debug!(%relay, error = %e, "cannot ask the relay for a reservation");
                        self.nat.reserve_failed(relay, Now::system().mono);
                    }
                },
                NatAction::Release(id) => {
                    self.swarm.remove_listener(id);
                }
                NatAction::Serve(on) => {
                    tracing::info!(on, "relay service");
                    if on {
                        self.relay_addresses();
                    }
                    if let Some(relay) = self.swarm.behaviour_mut().relay.as_mut() {
                        let status = if on { relay::Status::Enable } else { relay::Status::Disable };
                        relay.set_status(Some(status));
                    }
                }
                NatAction::Close(id) => {
                    tracing::debug!(connection = ?id, "closing a relayed connection: a direct one exists");
                    self.swarm.close_connection(id);
                }
            }
        }
    }

    /// With `p2p.relay-service=on` the operator says the node is reachable: its listen addresses
    /// are its external ones (a relay hands them to the peers that reserve a slot; without any,
    /// a reservation is useless).
    pub(super) fn relay_addresses(&mut self) {
        if !self.nat.forced_on() {
            return;
        }
        let listening: Vec<Multiaddr> = self.swarm.listeners().filter(|a| !is_relayed(a)).cloned().collect();
        let outside: Vec<&Multiaddr> = listening.iter().filter(|a| !is_loopback(a)).collect();
        let addrs = if outside.is_empty() { listening.iter().collect() } else { outside };
        let new: Vec<Multiaddr> = addrs.into_iter().filter(|a| !self.nat.is_confirmed(a)).cloned().collect();
        for addr in new {
            self.confirm_external(addr);
        }
    }

    /// An address of ours is reachable from outside: the swarm's external addresses (identify
    /// advertises them, a relay hands them to the peers that reserve a slot) and `nat`'s.
    fn confirm_external(&mut self, addr: Multiaddr) {
        tracing::info!(%addr, "reachable from outside");
        self.service.our_addresses_changed(Now::system());
        self.swarm.add_external_address(addr.clone());
        self.nat.confirmed(addr);
        self.nat_plan();
    }

    /// A connection is up: the address the service keeps for it (a relayed one we accepted
    /// names its relay, which the remote address does not), and relayed ones made redundant
    /// closed.
    pub(super) fn nat_connected(&mut self, peer: PeerId, id: ConnectionId, endpoint: &ConnectedPoint) -> Multiaddr {
        let relayed = endpoint.is_relayed();
        let addr = match endpoint {
            ConnectedPoint::Listener { local_addr, .. } if relayed => local_addr.clone(),
            _ => endpoint.get_remote_address().clone(),
        };
        self.nat.connection_up(peer, id, relayed, Now::system().mono);
        self.race.set_relayed(peer, self.nat.is_relayed_to(&peer));
        // A peer from outside our networks dialled in: the address it reached is reachable.
        // (AutoNAT v2 asks only peers we dialled, and a public node that everyone dials would
        // otherwise never learn that it is public.)
        if let ConnectedPoint::Listener { local_addr, send_back_addr } = endpoint {
            let outside = ip_of(send_back_addr).is_some_and(is_outside) && ip_of(local_addr).is_some_and(is_outside);
            if !relayed && outside && !self.nat.is_confirmed(local_addr) {
                self.confirm_external(local_addr.clone());
            }
        }
        addr
    }

    /// A connection closed: true when it was a relayed one whose end is no failure of the peer's
    /// (we closed it for a direct one, or a direct one remains).
    pub(super) fn nat_disconnected(&mut self, peer: &PeerId, id: ConnectionId) -> bool {
        let redundant = self.nat.connection_down(peer, id);
        self.race.set_relayed(*peer, self.nat.is_relayed_to(peer));
        redundant
    }

    /// A peer identified itself: one that offers to relay is a relay we may reserve a slot on.
    pub(super) fn nat_identified(&mut self, peer: PeerId, info: &identify::Info) {
        if !info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
            self.nat.relay_withdrawn(&peer);
            return;
        }
        let addrs: Vec<Multiaddr> =
            info.listen_addrs.iter().cloned().map(strip_p2p).filter(|a| is_dialable(a) && !is_relayed(a)).collect();
        // An address it is reachable at from here: one it listens on at the IP we reach it at,
        // else any but loopback, else loopback (tests on one machine).
        let ips: Vec<_> = self.service.peer_addrs(&peer).iter().filter_map(ip_of).collect();
        let pick = addrs
            .iter()
            .find(|a| ip_of(a).is_some_and(|ip| ips.contains(&ip)))
            .or_else(|| addrs.iter().find(|a| !is_loopback(a)))
            .or(addrs.first())
            .cloned();
        if let Some(addr) = pick {
            self.nat.relay_offered(peer, addr);
            self.nat_plan();
        }
    }

    pub(super) fn nat_external(&mut self, addr: Multiaddr, confirmed: bool) {
        tracing::info!(%addr, confirmed, "external address");
        // Provider records carry our external addresses: put them again.
        self.service.our_addresses_changed(Now::system());
        if confirmed {
            self.nat.confirmed(addr);
        } else {
            self.nat.expired(&addr);
        }
        self.nat_plan();
    }

    pub(super) fn nat_listener_closed(&mut self, id: libp2p::core::transport::ListenerId) {
        self.nat.listener_closed(id, Now::system().mono);
        self.service.set_tied(self.nat.tied(), Now::system());
    }

    pub(super) fn relay_client_event(&mut self, event: relay::client::Event) {
        tracing::debug!(?event, "relay client");
        if let relay::client::Event::ReservationReqAccepted { relay_peer_id, .. } = event {
            if let Some(unneeded) = self.nat.reservation_accepted(&relay_peer_id) {
                self.swarm.remove_listener(unneeded);
            }
            self.service.set_tied(self.nat.tied(), Now::system());
        }
    }

    pub(super) fn relay_event(&mut self, event: relay::Event) {
        tracing::debug!(?event, "relay service");
        let nat = &mut self.nat;
        match event {
            relay::Event::ReservationReqAccepted { src_peer_id, renewed: false } => {
                nat.slot_taken(src_peer_id);
                self.service.set_tied(nat.tied(), Now::system());
            }
            // (libp2p reports the end of every connection of a peer as a reservation closed: the
            // slot holder is forgotten with its last connection.)
            relay::Event::ReservationClosed { src_peer_id } | relay::Event::ReservationTimedOut { src_peer_id } => {
                // A peer behind a NAT that held a slot here and is gone is unreachable at the
                // relayed address Kademlia holds for it (through us): it is not handed on to
                // whoever asks (their dials of it would all fail). It comes back with its next
                // connection.
                let gone = !self.swarm.is_connected(&src_peer_id) && nat.slot_freed(&src_peer_id);
                if gone {
                    self.swarm.behaviour_mut().kad.remove_peer(&src_peer_id);
                    self.service.set_tied(nat.tied(), Now::system());
                }
            }
            relay::Event::CircuitReqAccepted { .. } => nat.circuits += 1,
            relay::Event::CircuitClosed { .. } => nat.circuits = nat.circuits.saturating_sub(1),
            _ => {}
        }
    }

    pub(super) fn dcutr_event(&mut self, event: dcutr::Event) {
        match event.result {
            Ok(connection) => {
                tracing::info!(peer = %event.remote_peer_id, "hole punched: a direct connection");
                self.nat.hole_punched += 1;
                self.service.hole_punched(&event.remote_peer_id, connection);
            }
            Err(e) => {
                tracing::info!(peer = %event.remote_peer_id, error = %e, "hole punching failed; staying relayed");
                self.nat.hole_punch_failed += 1;
            }
        }
    }

    pub(super) fn autonat_event(&mut self, event: autonat::v2::client::Event) {
        match event.result {
            Ok(()) => tracing::debug!(addr = %event.tested_addr, "AutoNAT: reachable"),
            Err(e) => {
                tracing::debug!(addr = %event.tested_addr, error = %e, "AutoNAT: not reachable");
                self.nat.unreachable(event.tested_addr);
            }
        }
    }
}
