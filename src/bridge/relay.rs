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
use crate::store::{NostrPending, Store};

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
    let mut counted = Counted::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let subscription = SubscriptionId::new("git-p2p-comments");
    let mut repos: Vec<Watched> = Vec::new();
    loop {
        tokio::select! {
            _ = shared.wake.notified() => deliver(&shared, &client, &relays, &mut backoff, &mut counted).await,
            _ = tick.tick() => deliver(&shared, &client, &relays, &mut backoff, &mut counted).await,
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

/// What the status last said waits, in all and for each relay. While no relay can be sent to,
/// the queue is not read: it grows while the relays are away, and reading all of it on every
/// message queued would cost the event loop (this task runs on its thread) more each time.
/// What was queued since then counts for every relay (each event is queued for all of them).
#[derive(Default)]
struct Counted {
    total: usize,
    per_relay: HashMap<String, usize>,
}

impl Counted {
    /// The queue is `total` long now, unread: what it grew by (or shrank: a replaced event)
    /// counts for each relay.
    fn grown_to(&mut self, total: usize, relays: &[RelayUrl]) {
        let change = total as i64 - self.total as i64;
        for url in relays {
            let count = self.per_relay.entry(url.to_string()).or_default();
            *count = (*count as i64 + change).clamp(0, total as i64) as usize;
        }
        self.total = total;
    }

    /// The queue as read.
    fn read(&mut self, pending: &[(u64, NostrPending)], relays: &[RelayUrl]) {
        self.total = pending.len();
        for url in relays {
            let key = url.to_string();
            let count = pending.iter().filter(|(_, p)| p.relays.contains(&key)).count();
            self.per_relay.insert(key, count);
        }
    }
}

/// Sends every queued event to each connected relay still owed it, oldest first.
async fn deliver(
    shared: &Shared,
    client: &Client,
    relays: &[RelayUrl],
    backoff: &mut HashMap<RelayUrl, Backoff>,
    counted: &mut Counted,
) {
    let now = Instant::now();
    let mut states: HashMap<String, (String, u64, Option<String>)> = HashMap::new();
    let mut open = Vec::new();
    for url in relays {
        let Ok(relay) = client.relay(url).await else { continue };
        let state = relay.status();
        let waiting = backoff.get(url).and_then(|b| b.until).is_some_and(|until| until > now);
        tracing::trace!(relay = %url, ?state, waiting, "delivering");
        if state == RelayStatus::Connected && !waiting {
            open.push((url, relay));
        }
        states.insert(url.to_string(), (state_name(state), 0, None));
    }
    if open.is_empty() {
        match shared.store.nostr_pending_len() {
            Ok(total) => counted.grown_to(total, relays),
            Err(e) => tracing::debug!(error = %e, "cannot count the Nostr outbox"),
        }
        tell(shared, states, counted);
        return;
    }
    let pending = match shared.store.nostr_pending() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the Nostr outbox");
            return;
        }
    };
    for (url, relay) in open {
        let key = url.to_string();
        let mut accepted = 0;
        let mut error = None;
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
        if let Some(s) = states.get_mut(&key) {
            (s.1, s.2) = (accepted, error);
        }
    }
    // What is left, for the status: read again only if a relay took something this round.
    let pending = if states.values().any(|(_, accepted, _)| *accepted > 0) {
        shared.store.nostr_pending().unwrap_or_default()
    } else {
        pending
    };
    counted.read(&pending, relays);
    tell(shared, states, counted);
}

/// The relays' states, what they took this round and what waits, for `nostr status`.
fn tell(shared: &Shared, mut states: HashMap<String, (String, u64, Option<String>)>, counted: &Counted) {
    let Ok(mut status) = shared.status.lock() else { return };
    status.pending = counted.total;
    for relay in status.relays.iter_mut() {
        if let Some((state, accepted, error)) = states.remove(&relay.url) {
            relay.state = state;
            relay.accepted += accepted;
            if error.is_some() || accepted > 0 {
                // A relay's words, shown in terminals: one line, no control characters.
                relay.last_error = error.map(|e| crate::proto::chat::tame(&e).replace('\n', " "));
            }
            relay.pending = counted.per_relay.get(&relay.url).copied().unwrap_or(0);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(relays: &[&RelayUrl]) -> NostrPending {
        NostrPending {
            id: "e".into(),
            event: "{}".into(),
            relays: relays.iter().map(|u| u.to_string()).collect(),
            replaces: None,
        }
    }

    #[test]
    fn while_no_relay_can_be_sent_to_what_is_queued_counts_for_every_relay() {
        let relays: Vec<RelayUrl> =
            ["ws://127.0.0.1:1", "ws://127.0.0.1:2"].iter().map(|u| RelayUrl::parse(u).unwrap()).collect();
        let (a, b) = (&relays[0], &relays[1]);
        let per = |c: &Counted| (c.total, c.per_relay[&a.to_string()], c.per_relay[&b.to_string()]);
        let mut counted = Counted::default();
        counted.grown_to(3, &relays);
        assert_eq!(per(&counted), (3, 3, 3), "never read: everything waits for every relay");
        // Read once a relay could be sent to: one event waits for both, one for b alone.
        counted.read(&[(1, queued(&[a, b])), (2, queued(&[b]))], &relays);
        assert_eq!(per(&counted), (2, 1, 2));
        counted.grown_to(5, &relays);
        assert_eq!(per(&counted), (5, 4, 5), "three queued since, for both");
        counted.grown_to(4, &relays);
        assert_eq!(per(&counted), (4, 3, 4), "a replaced event went");
        counted.grown_to(0, &relays);
        assert_eq!(per(&counted), (0, 0, 0));
    }
}
