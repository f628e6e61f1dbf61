//! The Nostr bridge: what the node tells Nostr relays (`p2p.relay`), and what it hears from them.
//!
//! Out: for each registered repository, a NIP-34 announcement (30617) and this user's repository
//! state (30618), re-published whenever what they say changes; room messages as NIP-22 comments
//! (1111). In: comments on our repositories, handed to the event loop ([`Inbound`]).
//!
//! Every event is signed once and queued in the store ([`crate::store::NostrPending`]) before
//! anything is sent; it leaves the queue only when each relay it is for has accepted it (OK
//! true), so relays that are down, slow or refusing get the same bytes again later, across
//! restarts. Replaceable events are coalesced: a newer state replaces a queued older one.

pub mod nip22;
pub mod nip34;
mod relay;

use std::sync::{Arc, Mutex};

use nostr::{JsonUtil, Keys, RelayUrl, Timestamp};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch, Notify};

use crate::clock::unix_now;
use crate::control::api::{NostrStatus, RelayState};
use crate::proto::envelope::Envelope;
use crate::proto::repo::{RepoId, RepoInfo};
use crate::store::{NostrLast, NostrPending, Store};

/// What the relays brought in, for the event loop to check and store.
#[derive(Debug)]
pub enum Inbound {
    /// A git-p2p room message bridged by its author: verified like gossip.
    Envelope(Envelope),
    /// A comment written with a plain Nostr client.
    Comment { repo: RepoId, id: String, npub: String, text: String, created_at: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Git(#[from] crate::git::GitError),
    #[error("cannot build the Nostr event: {0}")]
    Event(#[from] nostr::event::builder::Error),
    #[error("{dir} is now another repository")]
    Moved { dir: String },
}

/// Whether a queued event read back from a damaged store is intact and ours: it parses, its
/// id and signature check out, and `keys` signed it.
pub fn verify_pending(pending: &NostrPending, keys: &Keys) -> bool {
    nostr::Event::from_json(&pending.event)
        .is_ok_and(|e| e.verify().is_ok() && e.pubkey == keys.public_key() && e.id.to_hex() == pending.id)
}

/// Repositories waiting to be re-read (one per announced commit, coalesced per repository).
const REFRESH_QUEUE: usize = 256;
/// Messages from relays waiting for the event loop; the relay task waits when it is full.
pub const INBOUND_QUEUE: usize = 1024;

/// A repository whose comments we listen for: (root commit id, `d` identifier).
type Watched = (RepoId, String);

/// The event loop's handle on the bridge. Exists only when relays are configured.
pub struct Bridge {
    store: Store,
    keys: Keys,
    /// Valid relay URLs, as events name them.
    relays: Vec<String>,
    wake: Arc<Notify>,
    status: Arc<Mutex<NostrStatus>>,
    refresh: mpsc::Sender<RepoInfo>,
    watched: watch::Sender<Vec<Watched>>,
}

impl Bridge {
    /// Starts the relay connections (in the background) for the configured relays; None when
    /// there are none. Invalid URLs are reported in the status, never fatal.
    pub fn start(store: Store, keys: Keys, configured: &[String], inbound: mpsc::Sender<Inbound>) -> Option<Self> {
        if configured.is_empty() {
            return None;
        }
        let mut urls = Vec::new();
        let mut states = Vec::new();
        for raw in configured {
            match RelayUrl::parse(raw) {
                Ok(url) if !urls.contains(&url) => {
                    states.push(RelayState::new(url.to_string(), "connecting"));
                    urls.push(url);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(relay = %raw, error = %e, "p2p.relay is not a relay URL; ignored");
                    let mut state = RelayState::new(raw.clone(), "invalid");
                    state.last_error = Some(format!("not a relay URL: {e}"));
                    states.push(state);
                }
            }
        }
        let relays: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
        if let Err(e) = store.nostr_keep_relays(&relays) {
            tracing::warn!(error = %e, "cannot prune the Nostr outbox");
        }
        let status = Arc::new(Mutex::new(NostrStatus {
            enabled: true,
            npub: nostr::ToBech32::to_bech32(&keys.public_key()).unwrap_or_default(),
            relays: states,
            pending: 0,
        }));
        let wake = Arc::new(Notify::new());
        let (refresh, refresh_rx) = mpsc::channel(REFRESH_QUEUE);
        let (watched, watched_rx) = watch::channel(Vec::new());
        let shared = relay::Shared { store: store.clone(), wake: wake.clone(), status: status.clone() };
        tokio::spawn(relay::run(shared.clone(), keys.clone(), urls, watched_rx, inbound));
        tokio::spawn(refresher(shared, keys.clone(), relays.clone(), refresh_rx));
        Some(Self { store, keys, relays, wake, status, refresh, watched })
    }

    /// The repository's announcement and our state may have changed (a commit was announced, the
    /// node started): re-read them and queue new events if they did.
    pub fn refresh(&self, repo: &RepoInfo) {
        if self.refresh.try_send(repo.clone()).is_err() {
            // Hundreds of refreshes are waiting; each re-reads the whole repository anyway.
            tracing::debug!(repo = %repo.id, "Nostr refresh queue full");
        }
    }

    /// Listen for comments on these repositories.
    pub fn watch(&self, repos: &[RepoInfo]) {
        let watched: Vec<Watched> = repos.iter().map(|r| (r.id.clone(), nip34::identifier(&r.name))).collect();
        self.watched.send_if_modified(|current| {
            let changed = *current != watched;
            *current = watched;
            changed
        });
    }

    /// Queues our room message (or a commit thread's: `thread`) as a comment. Not fsync'd: the
    /// caller syncs before it answers.
    pub fn comment(
        &self,
        repo: &RepoInfo,
        text: &str,
        envelope: &Envelope,
        thread: Option<&str>,
    ) -> Result<(), BridgeError> {
        let scope = nip22::Scope {
            owner: self.keys.public_key(),
            identifier: nip34::identifier(&repo.name),
            euc: repo.id.clone(),
        };
        let encoded = String::from_utf8_lossy(&envelope.encode()).into_owned();
        let created_at = Timestamp::from(envelope.ts / 1000);
        let event = nip22::comment(&self.keys, &scope, text, Some(&encoded), thread, created_at)?;
        let pending =
            NostrPending { id: event.id.to_hex(), event: event.as_json(), relays: self.relays.clone(), replaces: None };
        self.store.nostr_queue(&pending, None, false)?;
        self.wake.notify_one();
        Ok(())
    }

    pub fn status(&self) -> NostrStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl RelayState {
    fn new(url: String, state: &str) -> Self {
        Self { url, state: state.to_string(), accepted: 0, pending: 0, last_error: None }
    }
}

/// Re-reads repositories as they are announced, one at a time, off the event loop's thread.
async fn refresher(shared: relay::Shared, keys: Keys, relays: Vec<String>, mut rx: mpsc::Receiver<RepoInfo>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            if !batch.iter().any(|r| r.id == more.id) {
                batch.push(more);
            }
        }
        let (store, keys, relays) = (shared.store.clone(), keys.clone(), relays.clone());
        let done = tokio::task::spawn_blocking(move || {
            let mut queued = 0;
            for repo in &batch {
                match queue_repo_events(&store, &keys, &relays, repo) {
                    Ok(n) => {
                        tracing::debug!(repo = %repo.id, queued = n, "repository re-read for Nostr");
                        queued += n
                    }
                    Err(e) => tracing::warn!(repo = %repo.id, error = %e, "cannot publish the repository to Nostr"),
                }
            }
            queued
        })
        .await;
        if matches!(done, Ok(n) if n > 0) {
            shared.wake.notify_one();
        }
    }
}

/// Queues a new 30617 and 30618 for `repo` where what they would say changed. Returns how many.
fn queue_repo_events(store: &Store, keys: &Keys, relays: &[String], repo: &RepoInfo) -> Result<usize, BridgeError> {
    let Some(dir) = &repo.git_dir else { return Ok(0) };
    let ctx = crate::git::open(dir.as_path())?;
    if ctx.repo_id != repo.id {
        return Err(BridgeError::Moved { dir: dir.display().to_string() });
    }
    let identifier = nip34::identifier(&repo.name);
    let announcement = nip34::Announcement {
        identifier: identifier.clone(),
        name: repo.name.rsplit(['/', ':']).next().unwrap_or(&repo.name).trim_end_matches(".git").to_string(),
        description: ctx.description(),
        clone_urls: ctx.remote_urls.clone(),
        relays: relays.to_vec(),
        euc: repo.id.to_string(),
        maintainers: vec![keys.public_key().to_hex()],
    };
    let mut queued = 0;
    let said = digest(&format!("{announcement:?}"));
    if queue_replaceable(store, relays, &format!("30617:{identifier}"), said, |ts| {
        nip34::announcement(keys, &announcement, ts)
    })? {
        queued += 1;
    }
    let refs = ctx.branches_and_tags()?;
    let head = ctx.branch.clone();
    let said = digest(&format!("{refs:?}{head:?}{relays:?}"));
    if queue_replaceable(store, relays, &format!("30618:{identifier}"), said, |ts| {
        nip34::state(keys, &identifier, repo.id.as_str(), &refs, head.as_deref(), ts)
    })? {
        queued += 1;
    }
    Ok(queued)
}

fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Signs and queues a replaceable event unless the last one queued under `key` said the same.
/// Its timestamp is after the last one's, so relays and clients keep the newest.
fn queue_replaceable(
    store: &Store,
    relays: &[String],
    key: &str,
    digest: String,
    build: impl FnOnce(Timestamp) -> Result<nostr::Event, nostr::event::builder::Error>,
) -> Result<bool, BridgeError> {
    let last = store.nostr_last(key)?;
    if last.as_ref().is_some_and(|l| l.digest == digest) {
        return Ok(false);
    }
    let created_at = nip34::next_timestamp(unix_now(), last.map(|l| l.created_at));
    let event = build(Timestamp::from(created_at))?;
    let pending = NostrPending {
        id: event.id.to_hex(),
        event: event.as_json(),
        relays: relays.to_vec(),
        replaces: Some(key.to_string()),
    };
    store.nostr_queue(&pending, Some(&NostrLast { digest, created_at, seq: None }), true)?;
    Ok(true)
}
