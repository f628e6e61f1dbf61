//! The outbox: our announcements (and room messages sent while nobody was in the room) from
//! the moment they are durable until a peer took them. One entry per topic is in flight at a
//! time, so each topic's entries leave in order; an entry whose publish failed waits for the
//! next flush (a peer joining its topic, a tick). A published entry stays in the store for
//! [`PUBLISH_GRACE`]: gossipsub's publish only queues the message on the connections, so a node
//! killed right after it would lose it; a restarted node publishes it again instead, and
//! receivers drop what they have.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use libp2p::gossipsub::{PublishError, TopicHash};

use super::{Ack, Disk, Io, Service, Ticket};
use crate::clock::Now;
use crate::control::api::{Failure, Queued, Reply};
use crate::proto::announce::Announcement;
use crate::proto::envelope::Envelope;
use crate::proto::outbox::OutboxEntry;
use crate::proto::repo::RepoInfo;
use crate::store::StoreError;

/// How long a published entry stays in the durable outbox.
pub const PUBLISH_GRACE: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Outbox {
    /// Waiting for a peer, oldest first.
    waiting: VecDeque<(u64, TopicHash, OutboxEntry)>,
    /// Topics with a publish whose answer has not come yet.
    in_flight: HashSet<TopicHash>,
    /// Published, still in the store until their grace has passed.
    published: VecDeque<(u64, Instant)>,
}

/// A publish the outbox wants made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub seq: u64,
    pub topic: TopicHash,
    pub data: Vec<u8>,
}

impl Outbox {
    pub fn push(&mut self, seq: u64, entry: OutboxEntry) {
        let topic = entry.topic().hash();
        self.waiting.push_back((seq, topic, entry));
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Replaces what waits with what the store holds (after the store was reopened). Entries
    /// still in their grace period stay there (and out of the queue) only if the store still has
    /// them: a number the store lost may be given to a new entry, which must not go with them.
    pub fn reload(&mut self, stored: Vec<(u64, OutboxEntry)>) {
        let kept: HashSet<u64> = stored.iter().map(|(seq, _)| *seq).collect();
        self.published.retain(|(seq, _)| kept.contains(seq));
        let graced: HashSet<u64> = self.published.iter().map(|(seq, _)| *seq).collect();
        self.in_flight.clear();
        self.waiting.clear();
        for (seq, entry) in stored {
            if !graced.contains(&seq) {
                self.push(seq, entry);
            }
        }
    }

    /// Whether something of `topic` waits (a new message of that topic must queue behind it).
    pub fn waits_for(&self, topic: &TopicHash) -> bool {
        self.waiting.iter().any(|(_, t, _)| t == topic)
    }

    /// The oldest waiting entry of each topic that has an audience, no publish in flight, and
    /// may go now (`may_send`: its author's pace).
    pub fn due(
        &mut self,
        audience: impl Fn(&TopicHash) -> bool,
        mut may_send: impl FnMut(&OutboxEntry) -> bool,
    ) -> Vec<Publish> {
        let mut out = Vec::new();
        let mut looked: HashSet<&TopicHash> = HashSet::new();
        for (seq, topic, entry) in &self.waiting {
            if !looked.insert(topic) || self.in_flight.contains(topic) || !audience(topic) || !may_send(entry) {
                continue;
            }
            out.push(Publish { seq: *seq, topic: topic.clone(), data: entry.envelope.encode() });
        }
        for p in &out {
            self.in_flight.insert(p.topic.clone());
        }
        out
    }

    /// The network's answer to the publish of `seq`. Taken: it leaves the queue (and the store
    /// after its grace), and the next entry of its topic is due if `may_send` lets it go now.
    /// Refused: it stays first.
    pub fn published(
        &mut self,
        seq: u64,
        taken: bool,
        now: Instant,
        may_send: impl FnOnce(&OutboxEntry) -> bool,
    ) -> Option<Publish> {
        let i = self.waiting.iter().position(|(s, _, _)| *s == seq)?;
        let topic = self.waiting[i].1.clone();
        self.in_flight.remove(&topic);
        if !taken {
            return None;
        }
        self.waiting.remove(i);
        self.published.push_back((seq, now));
        let (seq, _, next) = self.waiting.iter().find(|(_, t, _)| *t == topic)?;
        if !may_send(next) {
            return None;
        }
        self.in_flight.insert(topic.clone());
        Some(Publish { seq: *seq, topic, data: next.envelope.encode() })
    }

    /// Entries published longer than [`PUBLISH_GRACE`] ago: they may leave the store now.
    pub fn expired(&mut self, now: Instant) -> Vec<u64> {
        let mut done = Vec::new();
        while let Some((seq, at)) = self.published.front() {
            if now.saturating_duration_since(*at) < PUBLISH_GRACE {
                break;
            }
            done.push(*seq);
            self.published.pop_front();
        }
        done
    }
}

impl Service {
    /// An announcement from a client (`git p2p announce`): queued durably, answered once stored.
    pub fn announce(
        &mut self,
        repo: RepoInfo,
        envelope: Envelope,
        reply: Reply<Queued>,
        now: Now,
        disk: &mut dyn Disk,
    ) {
        if let Err(e) = disk.writable() {
            let _ = reply.send(Err(Failure::new(format!("cannot store the announcement: {e}"))));
            return;
        }
        if let Err(e) = envelope.verify_as(&self.me.key, &self.me.author) {
            let _ = reply.send(Err(Failure::new(format!("refusing to publish an announcement with a {e}"))));
            return;
        }
        if envelope.repo != repo.id {
            let _ = reply.send(Err(Failure::new("announcement and repo disagree on the repo id")));
            return;
        }
        match self.queue_announcement(OutboxEntry { repo, envelope, thread: None }, true, now, disk) {
            Ok(()) => disk.reply_when_durable(Ack::new(reply, Queued { pending: self.outbox.len() })),
            Err(e) => {
                let _ = reply.send(Err(Failure::new(format!("cannot store the announcement: {e}"))));
            }
        }
    }

    /// Queues one of our announcements: the repository registered (at its git dir) and re-read
    /// for Nostr, the commit marked as announced, the outbox; our refs in the DHT follow once
    /// the branch settled ([`Service::flush`], [`super::refs::SETTLE`]). Not `durable`: the caller syncs soon (an announcement
    /// read from the reflog is found there again after a crash).
    pub fn queue_announcement(
        &mut self,
        entry: OutboxEntry,
        durable: bool,
        now: Now,
        disk: &mut dyn Disk,
    ) -> Result<(), StoreError> {
        if !self.repos.knows_at(&entry.repo) {
            disk.add_repo(&self.repos.as_known(&entry.repo))?;
            self.push(Io::WatchReflog(entry.repo.clone()));
        }
        let ours = entry.envelope.author == self.me.author;
        let announcement = Announcement::from_envelope(&entry.envelope).ok();
        if let (true, Some(a)) = (ours, &announcement) {
            // Not fsync'd by itself: the outbox push below makes it durable too.
            disk.mark_announced(&entry.repo.id, &a.commit.id)?;
        }
        let seq = disk.outbox_push(&entry, durable)?;
        // Peers that miss its gossip catch up on it from us.
        disk.sync_keep(entry.envelope.clone());
        if let (true, Some(a)) = (ours, announcement) {
            if let Some(name) = a.commit.ref_name.clone() {
                self.mirror_own(&entry.repo, vec![(name.clone(), a.commit.id.clone())], Some(name));
            }
            self.refs.after_publish(entry.repo.id.clone(), a.commit, now.mono);
        }
        self.join_repo(entry.repo.clone());
        self.repo_changed(&entry.repo);
        self.outbox.push(seq, entry);
        Ok(())
    }

    /// Publishes what waits for an audience that is there now; then the refs in the DHT that
    /// our new announcements move.
    pub fn flush(&mut self, now: Now, disk: &mut dyn Disk) {
        let (peers, pacer) = (&self.discovery.peers, &mut self.pacer);
        for p in self.outbox.due(|topic| peers.audience(topic) > 0, |e| pacer.allow(&e.envelope, now.mono)) {
            self.push(Io::Publish { ticket: Ticket::Outbox(p.seq), topic: p.topic, data: p.data });
        }
        self.publish_refs(now, disk);
    }

    pub(super) fn outbox_published(&mut self, seq: u64, result: Result<(), PublishError>, now: Now) {
        if let Err(e) = &result {
            tracing::debug!(seq, error = %e, "stays in the outbox");
        }
        let pacer = &mut self.pacer;
        let may_send = |e: &OutboxEntry| pacer.allow(&e.envelope, now.mono);
        if let Some(next) = self.outbox.published(seq, result.is_ok(), now.mono, may_send) {
            self.push(Io::Publish { ticket: Ticket::Outbox(next.seq), topic: next.topic, data: next.data });
        }
    }
}
