//! The event loop's side of catching up: serving peers' `/git-p2p/sync/1` sessions, starting
//! ours when the service says so, and handing what the sessions report to the service.

use libp2p::{PeerId, Swarm};
use tokio::sync::mpsc;

use super::EventLoop;
use crate::clock::Now;
use crate::node::behaviour::Behaviour;
use crate::node::disk::NodeDisk;
use crate::node::reconcile::{self, SyncEvent};
use crate::proto::repo::RepoId;
use crate::store::Store;

pub(super) struct SyncLink {
    /// Opens our sync streams; the sessions (ours and peers') report on `events`.
    control: libp2p_stream::Control,
    pub(super) events: mpsc::Receiver<SyncEvent>,
    tx: mpsc::Sender<SyncEvent>,
}

impl SyncLink {
    /// Starts serving peers' sync sessions from the store.
    pub(super) fn start(swarm: &Swarm<Behaviour>, store: &Store) -> Self {
        let (tx, events) = mpsc::channel(reconcile::EVENT_QUEUE);
        let mut control = swarm.behaviour().stream.new_control();
        match control.accept(reconcile::SYNC) {
            Ok(incoming) => {
                tokio::spawn(reconcile::serve(incoming, store.clone(), tx.clone()));
            }
            Err(e) => tracing::warn!(error = %e, "cannot serve syncs to peers"),
        }
        Self { control, events, tx }
    }
}

impl EventLoop {
    /// One of our sync sessions, as the service asked.
    pub(super) fn start_sync(&mut self, session: u64, peer: PeerId, repos: Vec<RepoId>, since: u64) {
        let (control, store, events) = (self.sync.control.clone(), self.store.clone(), self.sync.tx.clone());
        tokio::spawn(reconcile::initiate(control, store, events, session, peer, repos, since));
    }

    /// A report of a sync session, for the service.
    pub(super) fn sync_event(&mut self, event: SyncEvent) {
        let now = Now::system();
        match event {
            SyncEvent::Items { peer, repo, items, verdict } => {
                let go_on = self.service.sync_received(peer, &repo, items, now, disk!(self));
                let _ = verdict.send(go_on);
            }
            SyncEvent::Done { session, outcome } => self.service.sync_done(session, outcome, now),
            SyncEvent::Served { peer, outcome } => self.service.sync_served(peer, outcome, now),
        }
    }
}
