//! The swarm's events, turned into the service's inputs: connections, identify, ping,
//! gossipsub, Kademlia and mDNS events each become a call of the service (which says what to do
//! next); the DHT queries the service started are matched to their progress here.

use libp2p::kad::store::RecordStore;
use libp2p::swarm::{ConnectionError, SwarmEvent};
use libp2p::{gossipsub, kad, mdns, ping};

use super::EventLoop;
use crate::clock::Now;
use crate::node::behaviour::BehaviourEvent;
use crate::node::disk::NodeDisk;

impl EventLoop {
    pub(super) fn handle_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        let now = Now::system();
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                let addr = self.nat_connected(peer_id, connection_id, &endpoint);
                tracing::debug!(peer = %peer_id, %addr, "connected");
                self.service.connected(peer_id, connection_id, addr, now);
                if let Some((peer, dial)) = self.dials.remove(&connection_id) {
                    self.service.dial_ended(&peer, dial, None, now);
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, cause, .. } => {
                tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                // No cause: we closed it; a keep-alive timeout: our idle timer did.
                let broke = !matches!(cause, None | Some(ConnectionError::KeepAliveTimeout));
                // A relayed connection closed for a direct one is no sign of a dead peer.
                let broke = broke && !self.nat_disconnected(&peer_id, connection_id);
                self.service.disconnected(&peer_id, connection_id, broke, now);
            }
            // Refused because we are full (`p2p.max-peers`) is no misconduct of the peer's.
            SwarmEvent::IncomingConnectionError {
                peer_id: Some(peer),
                error: libp2p::swarm::ListenError::Denied { cause },
                ..
            } if cause.downcast_ref::<crate::node::bound::Full>().is_none() => {
                self.service.connection_denied(peer, now)
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                tracing::debug!(peer = ?peer_id, %error, "dial failed");
                if let Some((peer, dial)) = self.dials.remove(&connection_id) {
                    self.service.dial_ended(&peer, dial, Some(dial_error_words(&error)), now);
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.relay_addresses();
            }
            SwarmEvent::ExternalAddrConfirmed { address } => self.nat_external(address, true),
            SwarmEvent::ExternalAddrExpired { address } => self.nat_external(address, false),
            SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                tracing::debug!(?listener_id, ?reason, "listener closed");
                self.nat_listener_closed(listener_id);
            }
            SwarmEvent::ListenerError { error, .. } => tracing::warn!(%error, "listener error"),
            SwarmEvent::Behaviour(event) => self.handle_behaviour_event(event, now),
            _ => {}
        }
    }

    fn handle_behaviour_event(&mut self, event: BehaviourEvent, now: Now) {
        use libp2p::identify;
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.nat_identified(peer_id, &info);
                self.service.identified(peer_id, info, now, disk!(self))
            }
            BehaviourEvent::Bound(crate::node::bound::Evicted(peer)) => self.service.evicted(&peer, now),
            BehaviourEvent::RelayClient(event) => self.relay_client_event(event),
            BehaviourEvent::Relay(event) => self.relay_event(event),
            BehaviourEvent::Dcutr(event) => self.dcutr_event(event),
            BehaviourEvent::Autonat(event) => self.autonat_event(event),
            BehaviourEvent::Ping(ping::Event { peer, result: Ok(rtt), .. }) => self.service.rtt(&peer, rtt),
            // A peer without ping (not one of ours) is not a dead connection.
            // Nor is a relayed connection closing for a direct one (resetting the peer would close
            // the direct one too).
            BehaviourEvent::Ping(ping::Event { peer, connection, result: Err(failure) })
                if !matches!(failure, ping::Failure::Unsupported) && !self.nat.is_redundant(&connection) =>
            {
                tracing::debug!(%peer, %failure, "ping failed");
                self.service.ping_failed(peer, connection);
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic }) => {
                self.service.subscribed(&peer_id, topic, now, disk!(self))
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Unsubscribed { peer_id, topic }) => {
                self.service.unsubscribed(&peer_id, &topic)
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message { propagation_source, message_id, message }) => {
                let acceptance =
                    self.service.gossip(&message.topic, &message.data, Some(propagation_source), now, disk!(self));
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    acceptance,
                );
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, is_new_peer: true, addresses, .. }) => {
                self.service.routing_updated(peer, addresses.into_vec(), now)
            }
            BehaviourEvent::Kad(kad::Event::InboundRequest {
                request: kad::InboundRequest::PutRecord { source, record: Some(record), .. },
            }) => self.service.kad_inbound(source, record, now, disk!(self)),
            // Who holds a mirror of which repository (bounded by the memory store's limits).
            BehaviourEvent::Kad(kad::Event::InboundRequest {
                request: kad::InboundRequest::AddProvider { record: Some(record) },
            }) => {
                if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().add_provider(record) {
                    tracing::debug!(error = ?e, "a provider record not kept");
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed { id, result, step, stats }) => {
                if step.last && self.repo_queries.contains_key(&id) {
                    tracing::debug!(
                        requests = stats.num_requests(),
                        answered = stats.num_successes(),
                        failed = stats.num_failures(),
                        took = ?stats.duration(),
                        "repository lookup done"
                    );
                }
                self.query_progressed(id, result, step.last, stats.num_requests())
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => self.service.discovered(found, now),
            _ => {}
        }
    }

    /// A DHT query of the service moved on.
    fn query_progressed(&mut self, id: kad::QueryId, result: kad::QueryResult, last: bool, requests: u32) {
        if let Some(repo) = self.repo_queries.get(&id).cloned() {
            let found = match result {
                kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders { providers, .. })) => {
                    providers.into_iter().collect()
                }
                _ => Vec::new(),
            };
            if last {
                self.repo_queries.remove(&id);
            }
            if self.service.repo_providers(&repo, found, last, Now::system()) && !last {
                // Found one: the rest of the lookup would only take DHT nodes' slots. (The
                // dial of it started has the lookup's addresses: it ends at the next poll.)
                if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                    query.finish();
                }
            }
            return;
        }
        if self.providers_progressed(id, &result, last) {
            return;
        }
        let Some(&query) = self.queries.get(&id) else { return };
        match result {
            kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(found))) => {
                self.service.kv_found(query, found.peer, &found.record, requests, Now::system(), disk!(self))
            }
            kad::QueryResult::PutRecord(result) => {
                let replicas = match result {
                    Ok(_) => 1,
                    Err(kad::PutRecordError::QuorumFailed { success, .. }) => success.len(),
                    Err(e) => {
                        tracing::debug!(error = %e, "DHT put failed");
                        0
                    }
                };
                self.service.kv_put_done(query, replicas);
            }
            _ => {}
        }
        if last {
            self.queries.remove(&id);
            self.service.kv_query_done(query, requests, Now::system(), disk!(self));
        }
    }
}

/// Why a dial failed, in one line a user can act on (libp2p's own text nests every address's
/// error chain).
pub(super) fn dial_error_words(error: &libp2p::swarm::DialError) -> String {
    use libp2p::swarm::DialError;
    match error {
        DialError::Transport(failures) => {
            let mut words: Vec<String> = failures
                .iter()
                .take(3)
                .map(|(addr, e)| format!("{}: {}", crate::node::service::strip_p2p(addr.clone()), innermost(e)))
                .collect();
            if failures.len() > 3 {
                words.push(format!("and {} more", failures.len() - 3));
            }
            if words.is_empty() {
                "no address could be dialled".to_string()
            } else {
                words.join("; ")
            }
        }
        DialError::WrongPeerId { obtained, address } => {
            format!("{address} is another peer ({obtained}): the address or the peer id is wrong")
        }
        DialError::NoAddresses => "no address known for the peer".to_string(),
        DialError::LocalPeerId { .. } => "that address is this node itself".to_string(),
        DialError::Denied { cause } => format!("refused by this node's limits: {}", innermost(cause)),
        DialError::Aborted => "the dial was aborted".to_string(),
        DialError::DialPeerConditionFalse(_) => "already connected or being dialled".to_string(),
    }
}

/// The last error in a chain of sources: the one that names the cause ("Connection refused").
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut e = error;
    while let Some(source) = e.source() {
        e = source;
    }
    let text = e.to_string();
    // io errors end in "(os error 111)": the words before it are what users know.
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}
