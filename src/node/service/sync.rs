//! Catching up on what was said and announced while we were away (issue 15), without I/O: when
//! to reconcile which repositories with whom, and what to make of what a peer hands us.
//!
//! A peer that subscribes to one of our repositories' commit topics (it connected, or joined
//! the repository) is due for a sync of it at once; connected peers again every
//! [`RESYNC_EVERY`], or sooner after a session that ended early ([`RETRY_FIRST`], doubling);
//! and every peer of a repository whose last sync is older than [`STALE`]
//! when a client starts reading it (`log`, `chat`). We run at most [`MAX_SYNCS`] sessions at
//! once, one per peer. The event loop runs each session (`node::reconcile`) and hands what
//! arrives back here: each envelope gets the checks gossip gets (`rooms`), is stored and shown
//! in signed-time order, and is not gossiped again. A peer that hands us an invalid envelope
//! (forged, mis-spelt, off-topic, out of bounds) or more than its budget is cut off (banned for
//! [`super::conduct::BAN`]) and nothing more of it is taken.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::gossipsub::MessageAcceptance;
use libp2p::PeerId;

use super::rooms::{Arrival, RateLimiter, Room};
use super::{Disk, Io, Service};
use crate::clock::Now;
use crate::control::api::{SyncRepoStatus, SyncStatus};
use crate::proto::announce::Announcement;
use crate::proto::envelope::Envelope;
use crate::proto::repo::RepoId;
use crate::proto::sync::Kind;

/// How often connected peers reconcile again (gossip may have lost something meanwhile: a
/// message dropped as too fast, a partition that healed without a reconnect).
pub const RESYNC_EVERY: Duration = Duration::from_secs(10 * 60);
/// A session that ended early (the peer went away, a timeout, a refusal) is started again this
/// much later, twice as late after each early end in a row, at most [`RESYNC_EVERY`]: a peer
/// that is busy or slow for a moment is caught up with soon, one that always fails is not
/// asked every few seconds.
pub const RETRY_FIRST: Duration = Duration::from_secs(5);
/// A client reading a repository whose last sync is older than this starts one.
pub const STALE: Duration = Duration::from_secs(60);
/// Sessions we run at once (each reads sets from the store and verifies what it brings).
pub const MAX_SYNCS: usize = 4;
/// What one peer's syncs may hand us: a burst of as many items as the sets of a repository
/// hold, then this many a second. More is misconduct: the peer is cut off.
pub const PEER_BURST: f64 = 25_000.0;
pub const PEER_RATE: f64 = 2_000.0;
/// How much of the stores' window a sync covers: items close to its end may be pruned on one
/// side and not yet on the other, and are not worth a round trip.
pub const WINDOW_MARGIN: Duration = Duration::from_secs(2 * 3600);

/// An envelope a sync brought, with the kind of the set it came in and its signature checked
/// (by [`Synced::new`], the only way to make one): the session checks signatures on a thread
/// of its own, off the event loop, and the service decides on the result.
#[derive(Debug, Clone)]
pub struct Synced {
    kind: Kind,
    envelope: Envelope,
    author: Result<PeerId, crate::proto::envelope::EnvelopeError>,
}

impl Synced {
    pub fn new(kind: Kind, envelope: Envelope) -> Self {
        let author = envelope.verify();
        Self { kind, envelope, author }
    }
}

/// When a sync of a repository with a peer is due again, and how many of them in a row ended
/// early.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    next: Instant,
    failures: u32,
}

/// One of our sessions under way.
struct Session {
    peer: PeerId,
    repos: Vec<RepoId>,
}

/// What a session did, as the event loop reports it.
#[derive(Debug, Default, Clone)]
pub struct SyncOutcome {
    /// The repositories reconciled (all of them, unless it failed).
    pub repos: Vec<RepoId>,
    pub sent: u64,
    pub received: u64,
    /// Why it ended early (the peer went away, a timeout, a refusal).
    pub error: Option<String>,
    /// The peer broke the protocol (a frame over its bound, items it was not asked for).
    pub misbehaved: Option<String>,
    /// How long it took (ms), from reading our sets to the end.
    pub millis: u64,
}

#[derive(Default)]
struct RepoSync {
    /// When a sync of it last ended well (Unix ms).
    at: Option<u64>,
    /// With whom, and when (Unix ms).
    peers: HashMap<PeerId, u64>,
}

pub struct SyncState {
    sessions: HashMap<u64, Session>,
    next: u64,
    /// When a sync of a repository with a peer is due again (absent: now).
    due: HashMap<(PeerId, RepoId), Attempt>,
    /// Repositories a client read while their last sync was old, and when: for [`STALE`] we
    /// start their syncs ourselves, whoever's turn it is.
    forced: HashMap<RepoId, Instant>,
    repos: HashMap<RepoId, RepoSync>,
    /// What each peer's syncs may still hand us.
    budget: RateLimiter,
    sessions_done: u64,
    /// How long the last session that ended took (ms), ours or a peer's.
    last_millis: Option<u64>,
    sent: u64,
    received: u64,
    items: u64,
}

impl Default for SyncState {
    fn default() -> Self {
        Self {
            sessions: HashMap::new(),
            next: 0,
            due: HashMap::new(),
            forced: HashMap::new(),
            repos: HashMap::new(),
            budget: RateLimiter::new(PEER_RATE, PEER_BURST),
            sessions_done: 0,
            last_millis: None,
            sent: 0,
            received: 0,
            items: 0,
        }
    }
}

impl SyncState {
    /// The schedule of `repo`'s syncs with `peer` (due now if it had none).
    fn attempt(&mut self, peer: PeerId, repo: RepoId, now: Now) -> &mut Attempt {
        self.due.entry((peer, repo)).or_insert(Attempt { next: now.mono, failures: 0 })
    }
}

/// The oldest signed time a sync covers now.
pub fn since(now: Now) -> u64 {
    let window = super::rooms::MAX_AGE.saturating_sub(WINDOW_MARGIN);
    now.unix_ms.saturating_sub(window.as_millis() as u64)
}

impl Service {
    /// `peer` subscribed to `topic`: if it is one of our repositories' commit topics, the peer
    /// (new, or back) is due for a sync of it now.
    pub(super) fn sync_subscribed(&mut self, peer: &PeerId, topic: &libp2p::gossipsub::TopicHash, now: Now) {
        let Some(repo) =
            self.repos.all().iter().find(|r| Room::Commits { repo: r.id.clone() }.topic().hash() == *topic)
        else {
            return;
        };
        self.sync.due.remove(&(*peer, repo.id.clone()));
        self.sync_start(now);
    }

    /// A client reads `repo`: if its last sync is old, every peer of it is due now.
    pub fn sync_if_stale(&mut self, repo: &RepoId, now: Now) {
        let fresh = self
            .sync
            .repos
            .get(repo)
            .and_then(|r| r.at)
            .is_some_and(|at| now.unix_ms.saturating_sub(at) < STALE.as_millis() as u64);
        if !fresh && self.repos.all().iter().any(|r| r.id == *repo) {
            self.sync.due.retain(|(_, r), _| r != repo);
            self.sync.forced.insert(repo.clone(), now.mono);
            self.sync_start(now);
        }
    }

    /// Starts the sessions that are due, within [`MAX_SYNCS`]: per peer, the repositories we
    /// share (it subscribes to their commit topic) not reconciled with it lately. One session
    /// reconciles both ways, so of two peers the one with the lower id starts it (unless a
    /// client is waiting here).
    pub(super) fn sync_start(&mut self, now: Now) {
        let mut due: Vec<(PeerId, Vec<RepoId>)> = Vec::new();
        for repo in self.repos.all() {
            let topic = Room::Commits { repo: repo.id.clone() }.topic().hash();
            for peer in self.discovery.peers.subscribers(&topic) {
                let key = (peer, repo.id.clone());
                let recent = self.sync.due.get(&key).is_some_and(|a| now.mono < a.next);
                let our_turn = self.me.peer < peer || self.sync.forced.contains_key(&repo.id);
                if recent || !our_turn || self.conduct.is_banned(&peer) {
                    continue;
                }
                match due.iter_mut().find(|(p, _)| *p == peer) {
                    Some((_, repos)) => repos.push(repo.id.clone()),
                    None => due.push((peer, vec![repo.id.clone()])),
                }
            }
        }
        for (peer, repos) in due {
            if self.sync.sessions.len() >= MAX_SYNCS {
                break;
            }
            if self.sync.sessions.values().any(|s| s.peer == peer) {
                continue;
            }
            for repo in &repos {
                self.sync.attempt(peer, repo.clone(), now).next = now.mono + RESYNC_EVERY;
            }
            self.sync.next += 1;
            let session = self.sync.next;
            tracing::debug!(%peer, repos = repos.len(), session, "sync starts");
            self.sync.sessions.insert(session, Session { peer, repos: repos.clone() });
            self.push(Io::Sync { session, peer, repos, since: since(now) });
        }
        self.sync.forced.retain(|_, at| now.mono.duration_since(*at) < STALE);
        // Bounded by the peers of the last two rounds: one past due is as good as absent, but
        // for its early ends in a row, kept one more round.
        self.sync.due.retain(|_, a| now.mono < a.next + if a.failures > 0 { RESYNC_EVERY } else { Duration::ZERO });
    }

    /// Envelopes of `repo`'s sets (each with the kind of its set) that `peer` handed us in a
    /// sync (ours, or one it started): checked as gossip is, the new ones stored and shown in
    /// signed-time order. False when the peer is cut off for them (the session must end).
    pub fn sync_received(
        &mut self,
        peer: PeerId,
        repo: &RepoId,
        items: Vec<Synced>,
        now: Now,
        disk: &mut dyn Disk,
    ) -> bool {
        if self.conduct.is_banned(&peer) {
            return false;
        }
        if !self.repos.all().iter().any(|r| r.id == *repo) {
            self.sync_cut_off(peer, "items of a repository we do not have", now);
            return false;
        }
        let key = peer.to_string();
        if !items.iter().all(|_| self.sync.budget.allow(&key, now.mono)) {
            self.sync_cut_off(peer, "more items than its budget", now);
            return false;
        }
        // Every item is checked before any is taken: nothing of a batch with a forged or
        // malformed item is kept.
        let mut checked = Vec::with_capacity(items.len());
        for Synced { kind, envelope, author } in items {
            let fits = envelope.repo == *repo
                && Kind::of(&envelope) == Some(kind)
                && (kind != Kind::Announcements || Announcement::from_envelope(&envelope).is_ok());
            if !fits {
                self.sync_cut_off(peer, "an item of another repository or kind, or out of bounds", now);
                return false;
            }
            match author {
                Ok(author) => checked.push((kind, envelope, author)),
                Err(e) => {
                    self.sync_cut_off(peer, &format!("a forged item ({e})"), now);
                    return false;
                }
            }
        }
        checked.sort_by_key(|(_, e, _)| e.ts);
        for (kind, envelope, author) in checked {
            let kept = envelope.clone();
            let arrival = self.rooms.synced(kind, envelope, author, &self.me.peer, now);
            match arrival {
                Arrival::Refused(why) if why.is_invalid() => {
                    self.sync_cut_off(peer, &format!("an invalid item ({why})"), now);
                    return false;
                }
                // Out of our time window (a skewed clock): dropped without blame, as gossip.
                Arrival::Refused(why) => tracing::debug!(%peer, error = %why, "dropped a synced item"),
                Arrival::Seen => {
                    // Held already (by gossip meanwhile): the set has it too, so that it is not
                    // offered again.
                    disk.sync_keep(kept);
                }
                // New: shown at once and stored off the event loop (a catch-up brings
                // thousands, written in batches).
                arrival => {
                    if self.take(arrival, Some(peer), now, disk) == MessageAcceptance::Accept {
                        self.sync.items += 1;
                    }
                }
            }
        }
        true
    }

    /// One of our sessions ended.
    pub fn sync_done(&mut self, session: u64, outcome: SyncOutcome, now: Now) {
        let Some(Session { peer, repos }) = self.sync.sessions.remove(&session) else { return };
        self.sync.sessions_done += 1;
        self.sync.last_millis = Some(outcome.millis);
        self.sync.sent += outcome.sent;
        self.sync.received += outcome.received;
        match (&outcome.misbehaved, &outcome.error) {
            (Some(why), _) => self.sync_cut_off(peer, why, now),
            (None, Some(error)) => {
                for repo in repos {
                    let attempt = self.sync.attempt(peer, repo, now);
                    attempt.failures = attempt.failures.saturating_add(1);
                    let wait = RETRY_FIRST.saturating_mul(1 << (attempt.failures - 1).min(16)).min(RESYNC_EVERY);
                    attempt.next = now.mono + wait;
                    tracing::info!(%peer, %error, again_in = ?wait, "sync ended early");
                }
            }
            (None, None) => {
                tracing::debug!(%peer, sent = outcome.sent, received = outcome.received, "sync done");
                for repo in repos {
                    if let Some(attempt) = self.sync.due.get_mut(&(peer, repo.clone())) {
                        attempt.failures = 0;
                    }
                    self.synced_with(peer, repo, now);
                }
            }
        }
        self.sync_start(now);
    }

    /// A session a peer started with us ended.
    pub fn sync_served(&mut self, peer: PeerId, outcome: SyncOutcome, now: Now) {
        self.sync.last_millis = Some(outcome.millis);
        self.sync.sent += outcome.sent;
        self.sync.received += outcome.received;
        match (&outcome.misbehaved, &outcome.error) {
            (Some(why), _) => self.sync_cut_off(peer, why, now),
            (None, Some(error)) => tracing::debug!(%peer, %error, "a peer's sync ended early"),
            (None, None) => {
                for repo in outcome.repos {
                    self.synced_with(peer, repo, now);
                }
            }
        }
    }

    fn synced_with(&mut self, peer: PeerId, repo: RepoId, now: Now) {
        let state = self.sync.repos.entry(repo).or_default();
        state.at = Some(now.unix_ms);
        state.peers.insert(peer, now.unix_ms);
    }

    /// `peer` broke the rules of sync: its connections closed, refused for a while, not dialled.
    fn sync_cut_off(&mut self, peer: PeerId, why: &str, now: Now) {
        tracing::info!(%peer, %why, "peer misbehaved in a sync: cut off");
        if self.conduct.ban(peer, now.mono) {
            self.discovery.redial.forget(&peer);
            self.push(Io::Ban(peer));
        }
    }

    /// What `daemon status` shows of catching up.
    pub fn sync_status(&self, now: Now) -> SyncStatus {
        let recent = RESYNC_EVERY.as_millis() as u64 * 2;
        let mut repos: Vec<SyncRepoStatus> = self
            .repos
            .all()
            .iter()
            .map(|r| {
                let state = self.sync.repos.get(&r.id);
                SyncRepoStatus {
                    repo: r.id.clone(),
                    last_sync: state.and_then(|s| s.at),
                    peers: state
                        .map_or(0, |s| s.peers.values().filter(|at| now.unix_ms.saturating_sub(**at) < recent).count()),
                }
            })
            .collect();
        repos.sort_by(|a, b| a.repo.cmp(&b.repo));
        SyncStatus {
            repos,
            running: self.sync.sessions.len(),
            sessions: self.sync.sessions_done,
            last_session_ms: self.sync.last_millis,
            bytes_sent: self.sync.sent,
            bytes_received: self.sync.received,
            items: self.sync.items,
        }
    }
}
