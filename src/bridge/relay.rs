//! The bridge's background task: keeps the relay connections (nostr-sdk reconnects with
//! backoff), sends queued events to every relay that has not accepted them yet, and turns
//! comments on our repositories into [`Inbound`] messages for the event loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nostr::nips::nip19::ToBech32;
use nostr::{Alphabet, Event, Filter, JsonUtil, Keys, Kind, RelayUrl, SingleLetterTag, SubscriptionId, Timestamp};
use nostr_sdk::pool::relay::Error as RelayError;
use nostr_sdk::{Client, RelayOptions, RelayPoolNotification, RelayStatus, SubscribeOptions};
use tokio::sync::{broadcast, mpsc, watch, Notify};

use super::nip22::{self, Incoming};
use super::{Inbound, Watched};
use crate::control::api::NostrStatus;
use crate::proto::envelope::Envelope;
use crate::store::Store;

/// How long a relay has to answer an EVENT with OK.
const OK_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait after a relay failed or refused; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// nostr-sdk's reconnect interval (it grows with failed attempts, up to a minute).
const RECONNECT: Duration = Duration::from_secs(2);
/// How far back a fresh subscription asks for comments (the room's recent history).
const HISTORY: u64 = 7 * 24 * 3600;
const HISTORY_LIMIT: usize = 500;

#[derive(Clone)]
pub(super) struct Shared {
    pub store: Store,
    pub wake: Arc<Notify>,
    pub status: Arc<Mutex<NostrStatus>>,
}

/// Per relay: when it may be tried again after a failure, and how long the next wait is.
#[derive(Default)]
struct Backoff {
    until: Option<Instant>,
    next: Duration,
}

pub(super) async fn run(
    shared: Shared,
    keys: Keys,
    relays: Vec<RelayUrl>,
    mut watched: watch::Receiver<Vec<Watched>>,
    inbound: mpsc::Sender<Inbound>,
) {
    let client = Client::builder().signer(keys.clone()).build();
    let options = RelayOptions::new().retry_interval(RECONNECT).adjust_retry_interval(true);
    for url in &relays {
        if let Err(e) = client.pool().add_relay(url.clone(), options.clone()).await {
            tracing::warn!(relay = %url, error = %e, "cannot add relay");
        }
    }
    client.connect().await;
    let mut notifications = client.notifications();
    let mut backoff: HashMap<RelayUrl, Backoff> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let subscription = SubscriptionId::new("git-p2p-comments");
    let mut repos: Vec<Watched> = Vec::new();
    loop {
        tokio::select! {
            _ = shared.wake.notified() => deliver(&shared, &client, &relays, &mut backoff).await,
            _ = tick.tick() => deliver(&shared, &client, &relays, &mut backoff).await,
            changed = watched.changed() => {
                if changed.is_err() {
                    break;
                }
                repos = watched.borrow_and_update().clone();
                subscribe(&client, &subscription, &keys, &repos).await;
            }
            notification = notifications.recv() => match notification {
                Ok(RelayPoolNotification::Event { event, .. }) => receive(&event, &repos, &inbound).await,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    client.shutdown().await;
}

/// Comments with our repositories' root commits in an `r` tag (git-p2p peers), and comments on
/// our own announcements (plain Nostr clients comment on the announcement they found).
async fn subscribe(client: &Client, id: &SubscriptionId, keys: &Keys, repos: &[Watched]) {
    client.unsubscribe(id).await;
    if repos.is_empty() {
        return;
    }
    let since = Timestamp::from(crate::clock::unix_now().saturating_sub(HISTORY));
    let ours: Vec<String> =
        repos.iter().map(|w| format!("{}:{}:{}", Kind::GitRepoAnnouncement.as_u16(), keys.public_key(), w.1)).collect();
    let filters = vec![
        Filter::new()
            .kind(Kind::Comment)
            .custom_tags(SingleLetterTag::lowercase(Alphabet::R), repos.iter().map(|w| w.0.clone()))
            .since(since)
            .limit(HISTORY_LIMIT),
        Filter::new()
            .kind(Kind::Comment)
            .custom_tags(SingleLetterTag::uppercase(Alphabet::A), ours)
            .since(since)
            .limit(HISTORY_LIMIT),
    ];
    if let Err(e) = client.pool().subscribe_with_id(id.clone(), filters, SubscribeOptions::default()).await {
        tracing::debug!(error = %e, "subscription waits for a relay");
    }
}

async fn receive(event: &Event, repos: &[Watched], inbound: &mpsc::Sender<Inbound>) {
    let Some((repo, incoming)) = nip22::read(event, repos) else { return };
    let message = match incoming {
        Incoming::Envelope(text) => match Envelope::decode(text.as_bytes()) {
            Ok(envelope) if envelope.repo == repo => Inbound::Envelope(envelope),
            _ => {
                tracing::debug!(id = %event.id, "comment with a bad git-p2p envelope ignored");
                return;
            }
        },
        Incoming::Plain { text } => Inbound::Comment {
            repo,
            id: format!("nostr:{}", event.id.to_hex()),
            npub: event.pubkey.to_bech32().unwrap_or_else(|_| event.pubkey.to_hex()),
            text,
            created_at: event.created_at.as_secs(),
        },
    };
    let _ = inbound.send(message).await;
}

/// Sends every queued event to each connected relay still owed it, oldest first.
async fn deliver(shared: &Shared, client: &Client, relays: &[RelayUrl], backoff: &mut HashMap<RelayUrl, Backoff>) {
    let pending = match shared.store.nostr_pending() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the Nostr outbox");
            return;
        }
    };
    let now = Instant::now();
    let mut states: HashMap<String, (String, u64, Option<String>)> = HashMap::new();
    for url in relays {
        let key = url.to_string();
        let Ok(relay) = client.relay(url).await else { continue };
        let state = relay.status();
        let mut accepted = 0;
        let mut error = None;
        let waiting = backoff.get(url).and_then(|b| b.until).is_some_and(|until| until > now);
        tracing::trace!(relay = %key, ?state, waiting, pending = pending.len(), "delivering");
        if state == RelayStatus::Connected && !waiting {
            let mut failed = false;
            for (seq, entry) in pending.iter().filter(|(_, p)| p.relays.contains(&key)) {
                let Ok(event) = Event::from_json(&entry.event) else {
                    tracing::warn!(seq, "unreadable queued Nostr event");
                    continue;
                };
                match tokio::time::timeout(OK_TIMEOUT, relay.send_event(&event)).await {
                    Ok(Ok(_)) => accepted_by(shared, *seq, &entry.id, &key, &mut accepted),
                    Ok(Err(RelayError::RelayMessage(m))) if m.starts_with("duplicate") => {
                        accepted_by(shared, *seq, &entry.id, &key, &mut accepted)
                    }
                    Ok(Err(RelayError::RelayMessage(m))) => {
                        tracing::info!(relay = %key, kind = %event.kind, reason = %m, "relay refused an event; kept");
                        error = Some(format!("refused: {m}"));
                        failed = true;
                    }
                    Ok(Err(e)) => {
                        error = Some(e.to_string());
                        failed = true;
                        break;
                    }
                    Err(_) => {
                        error = Some("no answer within 10 s".to_string());
                        failed = true;
                        break;
                    }
                }
            }
            let b = backoff.entry(url.clone()).or_default();
            if failed {
                b.next = if b.next.is_zero() { FIRST_BACKOFF } else { (b.next * 2).min(MAX_BACKOFF) };
                b.until = Some(Instant::now() + b.next);
            } else {
                *b = Backoff::default();
            }
        }
        states.insert(key, (state_name(state), accepted, error));
    }
    // What is left, for the status: read again only if a relay took something this round.
    let pending = if states.values().any(|(_, accepted, _)| *accepted > 0) {
        shared.store.nostr_pending().unwrap_or_default()
    } else {
        pending
    };
    if let Ok(mut status) = shared.status.lock() {
        status.pending = pending.len();
        for relay in status.relays.iter_mut() {
            if let Some((state, accepted, error)) = states.remove(&relay.url) {
                relay.state = state;
                relay.accepted += accepted;
                if error.is_some() || accepted > 0 {
                    // A relay's words, shown in terminals: one line, no control characters.
                    relay.last_error = error.map(|e| crate::proto::chat::tame(&e).replace('\n', " "));
                }
                relay.pending = pending.iter().filter(|(_, p)| p.relays.contains(&relay.url)).count();
            }
        }
    }
}

fn accepted_by(shared: &Shared, seq: u64, id: &str, relay: &str, accepted: &mut u64) {
    match shared.store.nostr_accepted(seq, id, relay) {
        Ok(()) => *accepted += 1,
        Err(e) => tracing::warn!(error = %e, "cannot record an accepted Nostr event; it will be sent again"),
    }
}

fn state_name(status: RelayStatus) -> String {
    match status {
        RelayStatus::Initialized | RelayStatus::Pending | RelayStatus::Connecting => "connecting",
        RelayStatus::Connected => "connected",
        RelayStatus::Disconnected => "disconnected",
        RelayStatus::Terminated => "terminated",
        RelayStatus::Banned => "banned",
        RelayStatus::Sleeping => "sleeping",
    }
    .to_string()
}
