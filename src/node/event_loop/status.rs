//! What `daemon status` shows, gathered from the swarm, the service, the hook's side, the
//! store and the Nostr bridge.

use super::EventLoop;
use crate::clock::Now;
use crate::control::api::{NodeStatus, NostrStatus};

impl EventLoop {
    pub(super) fn status(&mut self) -> NodeStatus {
        let dht = self.swarm.behaviour_mut().kad.store_mut().counts();
        // Our addresses through relays are shown with the reservations (`nat`).
        let mut listen_addrs: Vec<String> =
            self.swarm.listeners().filter(|a| !crate::node::nat::is_relayed(a)).map(|a| a.to_string()).collect();
        listen_addrs.sort();
        NodeStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: crate::control::proto::PROTOCOL_VERSION,
            pid: std::process::id(),
            peer_id: self.local_peer_id().to_string(),
            npub: self.info.npub.clone(),
            name: self.info.name.clone(),
            data_dir: self.info.data_dir.clone(),
            socket: self.info.socket.clone(),
            log_file: self.info.log_file.clone(),
            listen_addrs,
            started_at: self.info.started_at,
            connected_peers: self.service.connected_peers(),
            peers_most: self.swarm.behaviour().bound.most(),
            known_peers: self.service.known_peers(),
            repos: self.service.repos().to_vec(),
            config: self.info.config.clone(),
            nostr: self.nostr_status(),
            outbox: self.service.outbox_len(),
            rebasing: self.hooks.rebasing(),
            dht,
            banned: self.service.banned().iter().map(|p| p.to_string()).collect(),
            store: crate::node::store_watch::status(&self.store),
            restoring: self.service.restoring(),
            dials: self.service.dials(),
            clocks: self.service.clocks(),
            distrusted: self.service.distrusted(Now::system()),
            sync: self.service.sync_status(Now::system()),
            nat: self.nat.status(),
        }
    }

    pub(super) fn nostr_status(&self) -> NostrStatus {
        match &self.bridge {
            Some(bridge) => bridge.status(),
            None => NostrStatus { npub: self.info.npub.clone(), ..NostrStatus::default() },
        }
    }
}
