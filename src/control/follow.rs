//! Followers (`log -f`, `chat --tail -f`, the chat window): a subscription's recent history, then
//! every later item, each once, also across a restart of the node.
//!
//! Subscribe first, then read the history: nothing falls between them, and what comes both ways
//! is shown once (items have keys). When the node goes away (`daemon stop && daemon start`, a
//! kill -9 and a restart, an upgrade), the follower does not start one: a node someone stopped
//! stays stopped. It tries the socket again, backing off up to [`RETRY_MAX`], for as long as it
//! was told to wait ([`FOLLOW_WAIT_ENV`], default [`FOLLOW_WAIT`]); once a node answers, it
//! subscribes again and reads back what the node took since a little before it went away (the
//! history is in time order, and what a peer caught it up on may sort anywhere in it), so that
//! what arrived while it was away comes next, in time order, before anything newer.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::api::{LogFilter, Page};
use super::client::{Client, ClientError, Follower};
use super::proto::Request;
use crate::paths::Paths;
use crate::proto::announce::FeedEntry;
use crate::proto::chat::{room_id, ChatEntry};
use crate::proto::repo::{RepoId, RepoInfo};

/// How long a follower waits for a node that went away, unless [`FOLLOW_WAIT_ENV`] says
/// otherwise: a restart takes a second or two; a node still away after this was stopped for
/// good, and the follower says so rather than wait in silence.
pub const FOLLOW_WAIT: Duration = Duration::from_secs(60);
/// Seconds a follower waits for a node that went away (0: it stops at once).
pub const FOLLOW_WAIT_ENV: &str = "GIT_P2P_FOLLOW_WAIT";
/// The first pause between tries of the socket, and the longest (a restarted node is taken up
/// within this long of binding its socket).
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_millis(500);
/// A node away this long is said to be away (a restart within it only reports the resumption).
const TELL_AFTER: Duration = Duration::from_secs(1);
/// Items read back at most after a gap: the longest history the node keeps (a repository's
/// feed); the node hands only those it took since the gap began.
const CATCH_UP_MAX: usize = 10_000;
/// How long before a gap was noticed the node may have taken items it had not written yet
/// (its history writer flushes about once a second).
const LOST_SLACK_MS: u64 = 5_000;
/// Items per page when reading back.
const CATCH_UP_PAGE: usize = 256;
/// Keys remembered to show each item once: more than the node's longest history, which is all
/// that can come twice.
const SEEN_MAX: usize = 2 * CATCH_UP_MAX;

/// Something the node streams to followers: a repository's feed of announcements, or a room.
pub trait Subscription {
    type Item: DeserializeOwned;
    fn follow_request(&self) -> Request;
    /// What the node must be asked first for items to come (again after a restart).
    fn prepare(&self, _client: &mut Client) -> Result<(), ClientError> {
        Ok(())
    }
    /// A page of the history, newest first, before `before` (a page's `next`); with
    /// `arrived_since`, only the items the node took at or after it (Unix ms).
    fn page(
        &self,
        client: &mut Client,
        limit: usize,
        before: Option<u64>,
        arrived_since: Option<u64>,
    ) -> Result<Page<Self::Item>, ClientError>;
    /// Whether the history is shown newest first (`log`), else oldest first (a room).
    const NEWEST_FIRST: bool;
    /// What makes an item the same item when it arrives twice (in the history and the stream).
    fn key(item: &Self::Item) -> String;
}

/// The announcements peers make in a repository (those `filter` keeps, in the history: the
/// node filters it; what streams in is the follower's to filter).
pub struct Feed {
    pub repo: RepoId,
    pub filter: LogFilter,
}

impl Feed {
    /// Every announcement of `repo`.
    pub fn all(repo: RepoId) -> Self {
        Self { repo, filter: LogFilter::default() }
    }
}

impl Subscription for Feed {
    type Item = FeedEntry;
    const NEWEST_FIRST: bool = true;
    fn follow_request(&self) -> Request {
        Request::Follow { repo: self.repo.clone() }
    }
    fn page(
        &self,
        client: &mut Client,
        limit: usize,
        before: Option<u64>,
        arrived_since: Option<u64>,
    ) -> Result<Page<FeedEntry>, ClientError> {
        let filter = LogFilter { arrived_since, ..self.filter.clone() };
        client.log_page(self.repo.clone(), limit, before, &filter)
    }
    fn key(item: &FeedEntry) -> String {
        format!("{}/{}", item.commit.id, item.peer)
    }
}

/// A chat room: a repository's, or a commit's thread ([`room_id`]).
pub struct Room {
    id: String,
    /// The repository and thread the node joins before following (after a restart it knows
    /// only the rooms of registered repositories).
    join: Option<(RepoInfo, Option<String>)>,
}

impl Room {
    /// The room of `repo`, or of one commit's thread in it; the node joins it.
    pub fn of(repo: RepoInfo, thread: Option<String>) -> Self {
        Self { id: room_id(&repo.id, thread.as_deref()), join: Some((repo, thread)) }
    }

    /// A room by its id, which the node is in already.
    pub fn named(id: impl Into<String>) -> Self {
        Self { id: id.into(), join: None }
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl Subscription for Room {
    type Item = ChatEntry;
    const NEWEST_FIRST: bool = false;
    fn follow_request(&self) -> Request {
        Request::FollowChat { room: self.id.clone() }
    }
    fn prepare(&self, client: &mut Client) -> Result<(), ClientError> {
        match &self.join {
            Some((repo, thread)) => client.chat_join(repo.clone(), thread.clone()),
            None => Ok(()),
        }
    }
    fn page(
        &self,
        client: &mut Client,
        limit: usize,
        before: Option<u64>,
        arrived_since: Option<u64>,
    ) -> Result<Page<ChatEntry>, ClientError> {
        client.chat_page(&self.id, limit, before, arrived_since)
    }
    fn key(item: &ChatEntry) -> String {
        item.id.clone()
    }
}

/// What a follower tells about the node going away and coming back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// The node is away (for [`TELL_AFTER`] so far); the follower waits this long at most
    /// (None: until it comes back).
    Waiting(Option<Duration>),
    /// A node answers again; what arrived meanwhile comes next.
    Resumed,
}

/// One line on stderr per change, for the commands (stdout carries the items).
fn tell_stderr(gap: Gap) {
    match gap {
        Gap::Waiting(Some(wait)) => {
            eprintln!("git-p2p: lost the node; waiting up to {} s for it to come back (Ctrl-C to stop)", wait.as_secs())
        }
        Gap::Waiting(None) => eprintln!("git-p2p: lost the node; waiting for it to come back (Ctrl-C to stop)"),
        Gap::Resumed => eprintln!("git-p2p: node restarted; resumed"),
    }
}

/// How long to wait for a node that went away: [`FOLLOW_WAIT_ENV`], else [`FOLLOW_WAIT`].
pub fn follow_wait() -> Result<Duration, ClientError> {
    let Some(value) = std::env::var_os(FOLLOW_WAIT_ENV) else { return Ok(FOLLOW_WAIT) };
    let value = value.to_string_lossy().into_owned();
    match value.trim().parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => Err(ClientError::Setting { name: FOLLOW_WAIT_ENV, value, why: "not a number of seconds" }),
    }
}

impl Client {
    /// The newest `limit` items of `subscription` and, with `follow`, every later one, each once,
    /// also across restarts of the node (see the module's header). The subscription is made
    /// before the history is read, so that nothing falls between them.
    pub fn tail<S: Subscription>(
        &mut self,
        paths: &Paths,
        subscription: S,
        limit: usize,
        follow: bool,
    ) -> Result<Tail<S>, ClientError> {
        let wait = if follow { Some(follow_wait()?) } else { None };
        subscription.prepare(self)?;
        let follower = if follow { Some(Client::follow(paths, &subscription)?) } else { None };
        // One item at least: its key is then known, should it stream in too.
        let mut newest_first = Vec::new();
        let mut before = None;
        while newest_first.len() < limit.max(1) {
            let page = subscription.page(self, limit.max(1) - newest_first.len(), before, None)?;
            let empty = page.items.is_empty();
            newest_first.extend(page.items);
            before = page.next;
            if before.is_none() || empty {
                break;
            }
        }
        let mut seen = Seen::default();
        for item in newest_first.iter().rev() {
            seen.insert(S::key(item));
        }
        newest_first.truncate(limit);
        let mut history = newest_first;
        if !S::NEWEST_FIRST {
            history.reverse();
        }
        Ok(Tail {
            history,
            subscription,
            paths: paths.clone(),
            follower,
            seen,
            pending: VecDeque::new(),
            wait,
            tell: Box::new(tell_stderr),
        })
    }
}

/// A subscription's recent history, then (when following) what arrives, each item once.
pub struct Tail<S: Subscription> {
    pub history: Vec<S::Item>,
    subscription: S,
    paths: Paths,
    follower: Option<Follower<S::Item>>,
    seen: Seen,
    /// Items that arrived while the node was away, oldest first, not handed out yet.
    pending: VecDeque<S::Item>,
    /// How long to wait for a node that went away (None: as long as it takes).
    wait: Option<Duration>,
    tell: Box<dyn FnMut(Gap) + Send>,
}

impl<S: Subscription> Tail<S> {
    /// Waits `wait` (None: as long as it takes) for a node that went away, and tells `tell`
    /// about it instead of stderr (the chat window shows it in its status line).
    pub fn on_gap(mut self, wait: Option<Duration>, tell: impl FnMut(Gap) + Send + 'static) -> Self {
        if self.follower.is_some() {
            self.wait = wait;
        }
        self.tell = Box::new(tell);
        self
    }

    /// The next item not seen before; None when not following. A node that went away is waited
    /// for, and what arrived meanwhile comes first, in order.
    pub fn recv(&mut self) -> Result<Option<S::Item>, ClientError> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Ok(Some(item));
            }
            let Some(follower) = &mut self.follower else { return Ok(None) };
            match follower.recv() {
                Ok(item) => {
                    if self.seen.insert(S::key(&item)) {
                        return Ok(Some(item));
                    }
                }
                Err(e) if e.node_away() => {
                    tracing::debug!(error = %e, "the node went away; waiting for it");
                    self.resume()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether items keep coming after the history.
    pub fn is_following(&self) -> bool {
        self.follower.is_some()
    }

    /// Tries the socket until a node answers (backing off), or gives up after `wait`.
    fn resume(&mut self) -> Result<(), ClientError> {
        let lost = Instant::now();
        // A node that restarts takes, besides what is new, what its peers catch it up on (dated
        // anywhere in its history), and what it had shown but not yet written when it died.
        // Read back everything it took since a little before now.
        let since = crate::clock::unix_now_ms().saturating_sub(LOST_SLACK_MS);
        let (mut told, mut pause) = (false, RETRY_FIRST);
        loop {
            match self.reconnect(since) {
                Ok(()) => {
                    (self.tell)(Gap::Resumed);
                    return Ok(());
                }
                Err(e) if e.node_away() => {}
                Err(e) => return Err(e),
            }
            let away = lost.elapsed();
            if let Some(wait) = self.wait {
                if away >= wait {
                    return Err(ClientError::Gone(wait));
                }
                pause = pause.min(wait - away);
            }
            if !told && away >= TELL_AFTER {
                (self.tell)(Gap::Waiting(self.wait));
                told = true;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    /// Subscribes again, then reads the items the node took at or after `since` (Unix ms):
    /// those not seen yet arrived while we were away.
    fn reconnect(&mut self, since: u64) -> Result<(), ClientError> {
        let mut client = Client::connect(&self.paths)?;
        self.subscription.prepare(&mut client)?;
        let follower = Client::follow(&self.paths, &self.subscription)?;
        let mut missed = Vec::new();
        let mut before = None;
        while missed.len() < CATCH_UP_MAX {
            let page = self.subscription.page(&mut client, CATCH_UP_PAGE, before, Some(since))?;
            for item in page.items {
                if !self.seen.contains(&S::key(&item)) {
                    missed.push(item);
                }
            }
            match page.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        for item in missed.into_iter().rev() {
            if self.seen.insert(S::key(&item)) {
                self.pending.push_back(item);
            }
        }
        self.follower = Some(follower);
        Ok(())
    }
}

/// The keys of the items shown, at most [`SEEN_MAX`] (the oldest are forgotten first).
#[derive(Default)]
struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// True if `key` was not seen before.
    fn insert(&mut self, key: String) -> bool {
        if self.set.contains(&key) {
            return false;
        }
        if self.order.len() >= SEEN_MAX {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(key.clone());
        self.order.push_back(key);
        true
    }

    fn contains(&self, key: &str) -> bool {
        self.set.contains(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_keys_are_bounded_and_the_oldest_go_first() {
        let mut seen = Seen::default();
        for i in 0..SEEN_MAX + 1 {
            assert!(seen.insert(i.to_string()));
        }
        assert!(!seen.contains("0") && seen.contains("1"));
        assert!(!seen.insert(SEEN_MAX.to_string()));
        assert_eq!(seen.set.len(), SEEN_MAX);
    }
}
