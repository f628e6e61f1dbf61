//! The service's `Io` carried out: gossipsub subscriptions and publishes, dials and
//! disconnections, the peers kept, Kademlia's records and queries, events for followers, bans,
//! and what goes on to the mirrors, the syncs and the Nostr bridge.

use libp2p::kad;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};

use super::{swarm, EventLoop};
use crate::clock::Now;
use crate::node::disk::NodeDisk;
use crate::node::service::{BridgeOp, Comment, Io};

impl EventLoop {
    pub(super) fn run_io(&mut self) {
        while let Some(io) = self.service.next_io() {
            self.carry_out(io);
        }
    }

    fn carry_out(&mut self, io: Io) {
        let now = Now::system();
        match io {
            Io::Subscribe(topic) => {
                let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
                if let Err(e) = gossipsub.set_topic_params(topic.clone(), crate::node::behaviour::topic_score_params())
                {
                    tracing::warn!(%topic, error = %e, "cannot set the topic's score parameters");
                }
                if let Err(e) = gossipsub.subscribe(&topic) {
                    tracing::warn!(%topic, error = %e, "cannot subscribe");
                }
            }
            Io::Unsubscribe(topic) => {
                self.swarm.behaviour_mut().gossipsub.unsubscribe(&topic);
            }
            Io::Publish { ticket, topic, data } => {
                let result = self.swarm.behaviour_mut().gossipsub.publish(topic, data).map(|_| ());
                self.service.published(ticket, result, now, disk!(self));
            }
            Io::Dial { dial, peer, addrs } => {
                // A new port per dial: when two nodes dial each other at once with port reuse,
                // the two attempts merge and both handshakes fail. `Disconnected`, not
                // `NotDialing`: another dial of the peer (ours at older addresses, Kademlia's)
                // must not keep us from trying an address just learned.
                // No addresses (a repository's provider): Kademlia's lookup and identify's cache
                // know where it is.
                let ask = addrs.is_empty();
                let opts = DialOpts::peer_id(peer).addresses(addrs).condition(PeerCondition::Disconnected);
                let opts = if ask { opts.extend_addresses_through_behaviour() } else { opts };
                let opts = opts.allocate_new_port().build();
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.dials.insert(id, (peer, dial));
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "dial not started");
                        let error = match e {
                            libp2p::swarm::DialError::DialPeerConditionFalse(_) => None,
                            e => Some(swarm::dial_error_words(&e)),
                        };
                        self.service.dial_ended(&peer, dial, error, now);
                    }
                }
            }
            Io::Disconnect(peer) => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Io::Keep(peers) => self.swarm.behaviour_mut().bound.keep(peers),
            Io::Close(connection) => {
                self.swarm.close_connection(connection);
            }
            Io::KadAddress { peer, addr } => {
                self.swarm.behaviour_mut().kad.add_address(&peer, addr);
            }
            Io::KadBootstrap => {
                if let Err(e) = self.swarm.behaviour_mut().kad.bootstrap() {
                    tracing::debug!(error = ?e, "no Kademlia bootstrap");
                }
            }
            Io::PutRecord { query, record } => {
                match self.swarm.behaviour_mut().kad.put_record(record, kad::Quorum::One) {
                    Ok(id) => {
                        self.queries.insert(id, query);
                    }
                    Err(e) => self.service.kv_failed(query, e),
                }
            }
            Io::GetRecord { query, key } => {
                let id = self.swarm.behaviour_mut().kad.get_record(key);
                self.queries.insert(id, query);
            }
            Io::FinishQuery(query) => {
                if let Some(id) = self.queries.iter().find(|(_, q)| **q == query).map(|(id, _)| *id) {
                    if let Some(mut running) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        running.finish();
                    }
                }
            }
            Io::Emit(event) => {
                let _ = self.events.send(event);
            }
            Io::Ban(peer) => {
                self.swarm.behaviour_mut().blocked.block_peer(peer);
            }
            Io::Unban(peer) => {
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            }
            Io::WatchReflog(repo) => self.hooks.start_reflog(&repo, &self.store),
            io @ (Io::Mirror(_) | Io::Provide(_) | Io::FindProviders { .. } | Io::MirrorLookup { .. }) => {
                self.mirror_io(io)
            }
            Io::FindRepoPeers { repo, key } => {
                let id = self.swarm.behaviour_mut().kad.get_providers(key);
                self.repo_queries.insert(id, repo);
            }
            Io::Sync { session, peer, repos, since } => self.start_sync(session, peer, repos, since),
            Io::Bridge(op) => {
                let Some(bridge) = &self.bridge else { return };
                match op {
                    BridgeOp::Watch(repos) => bridge.watch(&repos),
                    BridgeOp::Refresh(repo) => bridge.refresh(&repo),
                    BridgeOp::Comment(comment) => self.nostr_comments.push(comment),
                }
            }
        }
    }

    /// Our room messages, gone to the peers, queued for the Nostr relays (before the batch's
    /// fsync, which makes them durable with the rest).
    pub(super) fn queue_nostr_comments(&mut self) {
        let Some(bridge) = &self.bridge else {
            self.nostr_comments.clear();
            return;
        };
        for Comment { repo, text, envelope, thread } in std::mem::take(&mut self.nostr_comments) {
            match bridge.comment(&repo, &text, &envelope, thread.as_deref()) {
                Ok(()) => self.durability.wrote(),
                Err(e) => tracing::warn!(error = %e, "cannot queue the message for Nostr"),
            }
        }
    }
}
