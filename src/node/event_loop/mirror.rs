//! The event loop's side of the mirrors: the worker that runs git on them and serves peers
//! (`/git-p2p/upload-pack/1`), the service's mirror `Io` carried out (worker jobs, Kademlia
//! provider records and lookups), and the worker's reports handed back to the service.

use std::collections::HashMap;

use libp2p::{kad, Swarm};
use tokio::sync::mpsc;

use super::EventLoop;
use crate::clock::Now;
use crate::control::api::Failure;
use crate::node::behaviour::Behaviour;
use crate::node::disk::NodeDisk;
use crate::node::mirror::{MirrorEvent, Mirrors, Worker};
use crate::node::service::{Io, Service};
use crate::node::NodeInfo;

pub(super) struct MirrorLink {
    /// Runs git on the mirrors; its reports come back on `events`.
    worker: Worker,
    pub(super) events: mpsc::Receiver<MirrorEvent>,
    tx: mpsc::Sender<MirrorEvent>,
    /// Kademlia's ids of the mirror jobs' provider lookups.
    provider_queries: HashMap<kad::QueryId, u64>,
}

impl MirrorLink {
    /// Starts serving peers from the mirrors and tells the service which mirrors exist.
    pub(super) fn start(swarm: &Swarm<Behaviour>, info: &NodeInfo, service: &mut Service) -> Self {
        service.set_replicate(info.config.replicate);
        let mirrors = std::sync::Arc::new(Mirrors::new(info.data_dir_path.join("mirrors")));
        let (tx, events) = mpsc::channel(crate::node::mirror::EVENT_QUEUE);
        let mut control = swarm.behaviour().stream.new_control();
        match control.accept(crate::node::mirror::UPLOAD_PACK) {
            Ok(incoming) => {
                tokio::spawn(crate::node::mirror::serve::run(incoming, mirrors.clone()));
            }
            Err(e) => tracing::warn!(error = %e, "cannot serve git to peers"),
        }
        let max_fetch_size = match info.config.max_fetch_size {
            0 => crate::config::DEFAULT_MAX_FETCH_SIZE,
            n => n,
        };
        for repo in mirrors.existing() {
            service.mirror_holds(repo);
        }
        let worker = Worker::new(mirrors, control, tx.clone(), *swarm.local_peer_id(), max_fetch_size);
        Self { worker, events, tx, provider_queries: HashMap::new() }
    }
}

impl EventLoop {
    /// Carries out one of the service's mirror `Io`s.
    pub(super) fn mirror_io(&mut self, io: Io) {
        match io {
            Io::Mirror(op) => self.mirror.worker.carry_out(op),
            Io::Provide(key) => {
                tracing::debug!("providing a mirror in the DHT");
                if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
                    tracing::warn!(error = ?e, "cannot provide a mirror in the DHT");
                }
            }
            Io::FindProviders { job, key } => {
                let id = self.swarm.behaviour_mut().kad.get_providers(key);
                self.mirror.provider_queries.insert(id, job);
            }
            Io::MirrorLookup { job, found } => {
                let events = self.mirror.tx.clone();
                tokio::spawn(async move {
                    let found = found.await.unwrap_or_else(|_| Err(Failure::new("the lookup was dropped")));
                    let _ = events.send(MirrorEvent::Lookup { job, found }).await;
                });
            }
            other => tracing::error!(?other, "not a mirror Io"),
        }
    }

    /// A report of the mirror worker, for the service.
    pub(super) fn mirror_event(&mut self, event: MirrorEvent) {
        let now = Now::system();
        match event {
            MirrorEvent::Lookup { job, found } => self.service.mirror_lookup_done(job, found, disk!(self)),
            MirrorEvent::Attempted { job, provider, report } => {
                self.service.mirror_attempted(job, provider, report, now)
            }
            MirrorEvent::Settled { job, result } => self.service.mirror_settled(job, result, now),
            MirrorEvent::Holds(repo) => self.service.mirror_holds(repo),
        }
    }

    /// A provider lookup of a mirror job moved on; false if `id` is not one.
    pub(super) fn providers_progressed(&mut self, id: kad::QueryId, result: &kad::QueryResult, last: bool) -> bool {
        let Some(&job) = self.mirror.provider_queries.get(&id) else { return false };
        let now = Now::system();
        if let kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders { providers, .. })) = result {
            self.service.mirror_providers(job, providers.iter().copied().collect(), false, now);
        }
        if last {
            self.mirror.provider_queries.remove(&id);
            self.service.mirror_providers(job, Vec::new(), true, now);
        }
        true
    }
}
