//! The mirror's logic, without I/O: which ref values each author signed (their DHT `refs`
//! entry, or a signed announcement), when the mirror needs a fetch (an announcement of a tip it
//! lacks; a `git fetch` through the remote helper), which provider to try next, and what of a
//! fetch is accepted. The worker (`node::mirror`) runs git and the streams and reports facts;
//! this module judges them.
//!
//! A fetch (a job) goes: (for a helper's sync) look up the authors' `refs` record → check the
//! mirror alone (it may have everything: an offline fetch) → one provider after another: the
//! worker fetches the authors' refs into a quarantine repository and reports, per wanted ref,
//! what the provider advertised and whether the signed value is there now → accepted refs (the
//! signed values present) are settled into the mirror, or, when the provider advertised for a
//! ref a value that is neither the signed one nor an ancestor of it (a tip its author never
//! signed), everything it sent is discarded and the provider is distrusted for a while → until
//! nothing is missing, or no provider is left (the answer says which refs could not be had).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use libp2p::{kad, PeerId};

use super::{Disk, Io, Service};
use crate::clock::Now;
use crate::control::api::{Failure, KvFound, MirrorSynced, Reply};
use crate::proto::announce::FeedEntry;
use crate::proto::kv::{record_key, Record, REFS_KEY};
use crate::proto::peer::{short, Author};
use crate::proto::remote::ALL;
use crate::proto::repo::{RepoId, RepoInfo};

/// How long a provider that advertised a tip its author never signed is not asked again.
pub const DISTRUST_FOR: Duration = Duration::from_secs(600);
/// Providers one job tries at most (each attempt is bounded in time by the worker).
const MAX_ATTEMPTS: usize = 8;
/// A background job whose providers all failed is tried again this much later (the author's
/// mirror may not have had the commit yet), at most [`BACKGROUND_RETRIES`] times.
const RETRY_AFTER: Duration = Duration::from_secs(1);
const BACKGROUND_RETRIES: u32 = 5;
/// A fetch that git waits for and that reached no peer at all (just after the node started, its
/// peers may not be connected or in the topic yet) looks again this many times (1 + 2 + 3 s)
/// before it says so.
const WAITING_RETRIES: u32 = 3;
/// ... and only while it is this young: a fetch that spent longer than this finding nobody (the
/// DHT's lookup ran to its timeout, the author's addresses did not answer) says so at once.
const WAITING_WINDOW: Duration = Duration::from_secs(5);
/// Jobs at once (one per repository); further background work waits for the next tick.
const MAX_JOBS: usize = 16;
/// Peers on a repository's topic beyond which a node does not start fetching an announced
/// commit at once but [`CROWD_WAIT`] later, plus up to [`CROWD_SPREAD`] (its own share, from
/// its peer id, so that the crowd's fetches spread out): a commit reaches all of them at the
/// same moment, and its author would otherwise serve them all at once while the announcement
/// is still spreading, and once per commit of a burst (a `git am`, a rebase, a push of a
/// branch). Announcements that come meanwhile join the same fetch: a burst costs each peer one.
pub const HERD: usize = 8;
pub const CROWD_WAIT: Duration = Duration::from_secs(3);
pub const CROWD_SPREAD: Duration = Duration::from_secs(2);

/// This node's share of [`CROWD_SPREAD`].
fn crowd_wait(me: &PeerId) -> Duration {
    let bytes = me.to_bytes();
    let tail = bytes.iter().rev().take(8).fold(0u64, |acc, b| acc << 8 | u64::from(*b));
    CROWD_WAIT + Duration::from_millis(tail % CROWD_SPREAD.as_millis().max(1) as u64)
}

/// A ref value its author signed, and when (the author's clock, Unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tip {
    pub oid: String,
    pub ts: u64,
}

/// Refs by name (`refs/heads/main`) → signed value, per author (PeerId).
pub type Wanted = BTreeMap<String, BTreeMap<String, String>>;

/// What a job is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The authors' refs record from the DHT.
    Lookup,
    /// The worker's facts of an attempt (None: the mirror alone).
    Attempt,
    /// The worker settling what was accepted.
    Settle,
    /// Kademlia's provider records of the repository (the topic's peers were all tried).
    Providers,
    /// Waiting to be tried again (background).
    Idle,
}

struct Job {
    repo: RepoId,
    /// Authors asked for (None: every author).
    filter: Option<Author>,
    want: Wanted,
    providers: VecDeque<PeerId>,
    tried: HashSet<PeerId>,
    /// Why providers failed, for the answer.
    failures: Vec<String>,
    dropped: Vec<String>,
    fetched_from: Vec<String>,
    waiters: Vec<Reply<MirrorSynced>>,
    phase: Phase,
    /// For the answer: which namespace the helper serves.
    namespace: String,
    retries: u32,
    retry_at: Option<Instant>,
    /// Kademlia was asked for the repository's providers (once per job).
    asked_dht: bool,
    /// A provider we were connected to was tried (else nobody could be asked yet).
    reached: bool,
    started: Instant,
}

/// A ref of an attempt, as the worker found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub author: String,
    pub name: String,
    pub signed: String,
    /// What the provider advertised for it (None: nothing).
    pub advertised: Option<String>,
    /// Whether the signed value is in the quarantine or the mirror now.
    pub present: bool,
    /// Whether the advertised value is an ancestor of the signed one (an older tip).
    pub older: bool,
}

/// What an attempt's facts come to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Settle these refs (author, name, value) into the mirror.
    Accept(Vec<(String, String, String)>),
    /// The provider advertised a tip its author never signed: discard what it sent.
    Lie { author: String, name: String, advertised: String },
}

/// Judges an attempt at `provider`: a value advertised for a wanted ref of another author that
/// is neither the signed value nor an ancestor of it is a lie (when the signed value is present
/// to tell); otherwise the signed values present are accepted.
pub fn judge(facts: &[Fact], provider: &str) -> Verdict {
    for f in facts {
        // What an author's own node advertises for its refs is what it published: at most
        // newer than the value we have seen signed (its announcement is on its way).
        if f.author == provider {
            continue;
        }
        if let Some(adv) = &f.advertised {
            if *adv != f.signed && f.present && !f.older {
                return Verdict::Lie { author: f.author.clone(), name: f.name.clone(), advertised: adv.clone() };
            }
        }
    }
    Verdict::Accept(
        facts.iter().filter(|f| f.present).map(|f| (f.author.clone(), f.name.clone(), f.signed.clone())).collect(),
    )
}

/// The worker's report on an attempt.
#[derive(Debug)]
pub enum AttemptReport {
    Facts(Vec<Fact>),
    Failed(String),
}

/// What the service asks the mirror worker to do.
#[derive(Debug)]
pub enum MirrorOp {
    /// Copy our own published refs from the working repository into the mirror.
    Own { repo: RepoInfo, refs: Vec<(String, String)>, head: Option<String>, reply: Option<Reply<()>> },
    /// Fetch `want` from `provider` (None: only look at what the mirror has) into quarantine;
    /// `background`: nobody waits for it (replication), so its git processes give way to the
    /// rest of the machine's work (theirs and the provider's).
    Attempt { job: u64, repo: RepoId, provider: Option<PeerId>, want: Wanted, background: bool },
    /// Move the quarantine's objects into the mirror and set these refs (author, name, value).
    Settle { job: u64, repo: RepoId, accept: Vec<(String, String, String)> },
    /// Throw the quarantine away.
    Discard { job: u64, repo: RepoId },
    /// Refs of ours we unpublished: out of our namespace (and the all-authors view).
    Forget { repo: RepoId, refs: Vec<String> },
}

#[derive(Default)]
pub struct MirrorState {
    /// Signed tips per repository, per author.
    tips: HashMap<RepoId, BTreeMap<String, BTreeMap<String, Tip>>>,
    /// What the mirror holds, as far as settles told us (author → ref → value).
    held: HashMap<RepoId, BTreeMap<String, BTreeMap<String, String>>>,
    jobs: BTreeMap<u64, Job>,
    next_job: u64,
    distrusted: HashMap<PeerId, Instant>,
    /// Background replication of other authors' announcements (`p2p.replicate`).
    replicate: bool,
    /// Repositories whose mirror we announced in the DHT as provider.
    provided: HashSet<RepoId>,
}

impl MirrorState {
    /// Learns a signed tip; true if it is newer than what we knew of that ref.
    fn learn(&mut self, repo: &RepoId, author: &str, name: &str, tip: Tip) -> bool {
        let refs = self.tips.entry(repo.clone()).or_default().entry(author.to_string()).or_default();
        match refs.get(name) {
            // Equal times: the later arrival (two commits in one millisecond arrive in order).
            Some(known) if known.ts > tip.ts || *known == tip => false,
            _ => {
                refs.insert(name.to_string(), tip);
                true
            }
        }
    }

    fn held(&self, repo: &RepoId, author: &str, name: &str) -> Option<&String> {
        self.held.get(repo)?.get(author)?.get(name)
    }

    fn is_distrusted(&self, peer: &PeerId, now: Instant) -> bool {
        self.distrusted.get(peer).is_some_and(|until| now < *until)
    }

    /// Providers that lied to us lately.
    pub fn distrusted(&self, now: Instant) -> Vec<String> {
        self.distrusted.iter().filter(|(_, u)| now < **u).map(|(p, _)| p.to_string()).collect()
    }
}

impl Service {
    /// Whether other authors' announced work is fetched into the mirror as it is announced.
    pub fn set_replicate(&mut self, on: bool) {
        self.mirror.replicate = on;
    }

    /// Providers distrusted for advertising tips their authors never signed.
    pub fn distrusted(&self, now: Now) -> Vec<String> {
        self.mirror.distrusted(now.mono)
    }

    /// Our own refs moved (a commit, a publish, a push): the mirror takes them from the working
    /// repository (only what the refs reach: nothing unpublished).
    pub fn mirror_own(&mut self, repo: &RepoInfo, refs: Vec<(String, String)>, head: Option<String>) {
        if repo.git_dir.is_none() || refs.is_empty() {
            return;
        }
        self.hold_own(&repo.id, &refs);
        self.push(Io::Mirror(MirrorOp::Own { repo: repo.clone(), refs, head, reply: None }));
    }

    /// The mirror will hold these refs of ours (once the worker copied them in).
    fn hold_own(&mut self, repo: &RepoId, refs: &[(String, String)]) {
        let held = self.mirror.held.entry(repo.clone()).or_default().entry(self.me.peer.to_string()).or_default();
        held.extend(refs.iter().cloned());
    }

    /// Refs of ours were unpublished (deleted and published again): peers fetch them from our
    /// mirror no more either.
    pub(super) fn mirror_forget(&mut self, repo: &RepoId, names: &[String]) {
        if names.is_empty() {
            return;
        }
        let me = self.me.peer.to_string();
        if let Some(held) = self.mirror.held.get_mut(repo).and_then(|a| a.get_mut(&me)) {
            for name in names {
                held.remove(name);
            }
        }
        self.push(Io::Mirror(MirrorOp::Forget { repo: repo.clone(), refs: names.to_vec() }));
    }

    /// `git push` through the remote helper, or `git p2p refs publish`: our refs (which must be
    /// branches or tags) go into the mirror (answered once they are there) and the DHT.
    pub fn mirror_publish(
        &mut self,
        repo: RepoInfo,
        refs: Vec<(String, String)>,
        head: Option<String>,
        reply: Reply<()>,
        now: Now,
        disk: &mut dyn Disk,
    ) {
        if let Err(e) = disk.writable() {
            let _ = reply.send(Err(Failure::new(format!("cannot publish: {e}"))));
            return;
        }
        if repo.git_dir.is_none() {
            let _ = reply.send(Err(Failure::new("cannot publish: the repository's git dir is not known")));
            return;
        }
        let bad = refs.iter().find(|(name, oid)| {
            crate::proto::remote::view_ref("x", name).is_none()
                || !crate::git::is_ref_name(name)
                || !crate::proto::announce::is_object_id(oid)
        });
        if let Some((name, _)) = bad {
            let _ =
                reply.send(Err(Failure::new(format!("cannot publish {name}: only branches and tags are published"))));
            return;
        }
        self.join_repo(repo.clone());
        for (name, oid) in &refs {
            self.branch_moved(&repo.id, name.clone(), oid.clone(), now, disk);
        }
        self.hold_own(&repo.id, &refs);
        self.push(Io::Mirror(MirrorOp::Own { repo, refs, head, reply: Some(reply) }));
    }

    /// A peer's announcement was accepted: its tip is signed. For a repository registered here
    /// (with `p2p.replicate` on) whose mirror lacks it, a background fetch starts, from the
    /// author first.
    pub(super) fn announced(&mut self, entry: &FeedEntry, now: Now) {
        let Some(name) = &entry.commit.ref_name else { return };
        if !crate::proto::remote::view_ref(&entry.peer, name).is_some_and(|_| crate::git::is_ref_name(name)) {
            return;
        }
        let tip = Tip { oid: entry.commit.id.clone(), ts: entry.announced_at };
        if !self.mirror.learn(&entry.repo, &entry.peer, name, tip) || !self.mirror.replicate {
            return;
        }
        if !self.repos.all().iter().any(|r| r.id == entry.repo) {
            return;
        }
        if self.mirror.held(&entry.repo, &entry.peer, name) == Some(&entry.commit.id) {
            return;
        }
        let author = entry.peer.parse::<PeerId>().ok();
        let mut want = Wanted::new();
        want.entry(entry.peer.clone()).or_default().insert(name.clone(), entry.commit.id.clone());
        self.background_job(entry.repo.clone(), want, author, now);
    }

    /// Adds `want` to the repository's background job (or starts one).
    fn background_job(&mut self, repo: RepoId, want: Wanted, first: Option<PeerId>, now: Now) {
        if let Some((_, job)) = self.mirror.jobs.iter_mut().find(|(_, j)| j.repo == repo) {
            for (author, refs) in want {
                job.want.entry(author).or_default().extend(refs);
            }
            if let Some(p) = first {
                job.tried.remove(&p);
                if !job.providers.contains(&p) {
                    job.providers.push_front(p);
                }
            }
            job.retries = 0;
            return;
        }
        if self.mirror.jobs.len() >= MAX_JOBS {
            tracing::debug!(repo = %repo.short(), "too many mirror fetches under way; this one waits for a later announcement");
            return;
        }
        let topic = crate::proto::topic::repo_marker(&repo);
        let herd = self.discovery.peers.subscribers(&topic).len() > HERD;
        let job = self.new_job(repo, None, want, ALL.to_string(), now);
        if let Some(j) = self.mirror.jobs.get_mut(&job) {
            if let Some(p) = first {
                j.providers.push_back(p);
            }
            if herd {
                // Due at a tick after the crowd's wait ([`Service::mirror_tick`]).
                j.retry_at = Some(now.mono + crowd_wait(&self.me.peer));
                return;
            }
        }
        self.next_attempt(job, now);
    }

    fn new_job(&mut self, repo: RepoId, filter: Option<Author>, want: Wanted, namespace: String, now: Now) -> u64 {
        self.mirror.next_job += 1;
        let id = self.mirror.next_job;
        self.mirror.jobs.insert(
            id,
            Job {
                repo,
                filter,
                want,
                providers: VecDeque::new(),
                tried: HashSet::new(),
                failures: Vec::new(),
                dropped: Vec::new(),
                fetched_from: Vec::new(),
                waiters: Vec::new(),
                phase: Phase::Idle,
                namespace,
                retries: 0,
                retry_at: None,
                asked_dht: false,
                reached: false,
                started: now.mono,
            },
        );
        id
    }

    /// The remote helper's fetch: the mirror gets every signed tip of the authors asked for
    /// (`author`: one, else all) that it lacks, from peers; answered once it has them, or with
    /// what could not be had.
    pub fn mirror_sync(
        &mut self,
        repo: RepoId,
        author: Option<String>,
        reply: Reply<MirrorSynced>,
        now: Now,
        disk: &mut dyn Disk,
    ) {
        let filter = author.as_deref().map(Author::parse);
        let job = self.new_job(repo.clone(), filter, Wanted::new(), ALL.to_string(), now);
        if let Some(j) = self.mirror.jobs.get_mut(&job) {
            j.waiters.push(reply);
            j.phase = Phase::Lookup;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.kv_get(repo, REFS_KEY.to_string(), tx, now, disk);
        self.push(Io::MirrorLookup { job, found: rx });
    }

    /// The authors' `refs` record came (or the lookup failed): every entry verified is a set of
    /// signed tips; then the job's first attempt (the mirror alone).
    pub fn mirror_lookup_done(&mut self, job: u64, found: Result<KvFound, Failure>, disk: &mut dyn Disk) {
        let Some(j) = self.mirror.jobs.get(&job) else { return };
        let repo = j.repo.clone();
        let mut record = found.ok().and_then(|f| f.record);
        if record.is_none() {
            // The lookup failed: our own copy of the record still holds what peers put here.
            let key = kad::RecordKey::new(&record_key(&repo, REFS_KEY));
            record = disk.record(&key).and_then(|r| Record::decode(&r.value, &repo, key.as_ref()).ok());
        }
        for entry in record.iter().flat_map(|r| r.entries.iter()) {
            let Ok(author) = entry.verify(&repo, REFS_KEY) else { continue };
            let refs: BTreeMap<String, String> =
                entry.value_bytes().and_then(|v| serde_json::from_slice(&v).ok()).unwrap_or_default();
            for (name, oid) in refs {
                if crate::git::is_ref_name(&name)
                    && crate::proto::remote::view_ref(&author.to_string(), &name).is_some()
                    && crate::proto::announce::is_object_id(&oid)
                {
                    self.mirror.learn(&repo, &author.to_string(), &name, Tip { oid, ts: entry.ts });
                }
            }
        }
        let me = self.me.peer.to_string();
        let me_npub = self.me.npub.clone();
        let names: BTreeMap<String, Option<String>> = record
            .iter()
            .flat_map(|r| r.entries.iter())
            .filter_map(|e| e.verify(&repo, REFS_KEY).ok().map(|p| (p.to_string(), e.who.npub.clone())))
            .collect();
        let Some(j) = self.mirror.jobs.get_mut(&job) else { return };
        let tips = self.mirror.tips.get(&repo).cloned().unwrap_or_default();
        let mut matched = Vec::new();
        for (author, refs) in &tips {
            let npub =
                if *author == me { Some(me_npub.as_str()) } else { names.get(author).and_then(|n| n.as_deref()) };
            if j.filter.as_ref().is_some_and(|f| !f.matches(author, npub, &me)) {
                continue;
            }
            matched.push(author.clone());
            // Our own refs are in the mirror from the working repository, not from peers.
            if *author == me {
                continue;
            }
            let want = j.want.entry(author.clone()).or_default();
            for (name, tip) in refs {
                want.insert(name.clone(), tip.oid.clone());
            }
        }
        if tips.is_empty() {
            let failure = Failure::new(format!(
                "unknown repository {}: no peer published refs for it (check the id: the root commit's full hash)",
                repo
            ));
            self.finish(job, Err(failure));
            return;
        }
        if let Some(filter) = &j.filter {
            match matched.as_slice() {
                [] => {
                    let failure =
                        Failure::new(format!("no refs published by {} in repository {}", show(filter), repo.short()));
                    self.finish(job, Err(failure));
                    return;
                }
                [one] => j.namespace = one.clone(),
                _ => {
                    let failure = Failure::new(format!(
                        "{} names several authors ({}): give more of the PeerId",
                        show(filter),
                        matched.iter().map(|a| short(a)).collect::<Vec<_>>().join(", ")
                    ));
                    self.finish(job, Err(failure));
                    return;
                }
            }
        }
        j.want.retain(|_, refs| !refs.is_empty());
        self.attempt(job, None);
    }

    /// Starts the next attempt of a job: the next provider not tried, or the end.
    fn next_attempt(&mut self, job: u64, now: Now) {
        let topic = crate::proto::topic::repo_marker(match self.mirror.jobs.get(&job) {
            Some(j) => &j.repo,
            None => return,
        });
        let subscribers = self.discovery.peers.subscribers(&topic);
        let distrusted: HashSet<PeerId> =
            subscribers.iter().filter(|p| self.mirror.is_distrusted(p, now.mono)).copied().collect();
        let me = self.me.peer;
        let Some(j) = self.mirror.jobs.get_mut(&job) else { return };
        // The topic's peers, then the authors of the wanted refs themselves (each has what it
        // published, and may be connected before its subscriptions are known, or reachable
        // while outside the topic).
        let authors: Vec<PeerId> = j.want.keys().filter_map(|a| a.parse().ok()).collect();
        for p in subscribers.into_iter().chain(authors) {
            if !j.providers.contains(&p) && !j.tried.contains(&p) {
                j.providers.push_back(p);
            }
        }
        let next = loop {
            match j.providers.pop_front() {
                Some(p) if p == me || j.tried.contains(&p) => continue,
                Some(p) if distrusted.contains(&p) => {
                    j.tried.insert(p);
                    continue;
                }
                other => break other,
            }
        };
        match next {
            Some(p) if j.tried.len() < MAX_ATTEMPTS => {
                j.tried.insert(p);
                j.reached |= self.discovery.peers.is_connected(&p);
                self.attempt(job, Some(p));
            }
            // The topic's peers are done with: the DHT knows who else holds a mirror.
            None if !j.asked_dht => {
                j.asked_dht = true;
                j.phase = Phase::Providers;
                let key = kad::RecordKey::new(&crate::proto::remote::provider_key(&j.repo));
                self.push(Io::FindProviders { job, key });
            }
            _ => self.give_up(job, now),
        }
    }

    /// The mirror of `repo` holds something: the DHT learns that we provide it (once).
    pub fn mirror_holds(&mut self, repo: RepoId) {
        if self.mirror.provided.insert(repo.clone()) {
            let key = kad::RecordKey::new(&crate::proto::remote::provider_key(&repo));
            self.push(Io::Provide(key));
        }
    }

    /// Kademlia found providers of a job's repository (`done`: the lookup ended). They are
    /// tried after those already queued.
    pub fn mirror_providers(&mut self, job: u64, found: Vec<PeerId>, done: bool, now: Now) {
        let me = self.me.peer;
        tracing::debug!(job, ?found, done, "mirror providers from the DHT");
        // Connected ones first: a provider that is gone (its record outlives it) costs a dial.
        let (mut found, unconnected): (Vec<PeerId>, Vec<PeerId>) =
            found.into_iter().partition(|p| self.discovery.peers.is_connected(p));
        found.extend(unconnected);
        let Some(j) = self.mirror.jobs.get_mut(&job) else { return };
        for p in found {
            if p != me && !j.tried.contains(&p) && !j.providers.contains(&p) {
                j.providers.push_back(p);
            }
        }
        if j.phase == Phase::Providers && (done || !j.providers.is_empty()) {
            j.phase = Phase::Idle;
            self.next_attempt(job, now);
        }
    }

    fn attempt(&mut self, job: u64, provider: Option<PeerId>) {
        let Some(j) = self.mirror.jobs.get_mut(&job) else { return };
        j.phase = Phase::Attempt;
        let background = j.waiters.is_empty();
        let op = MirrorOp::Attempt { job, repo: j.repo.clone(), provider, want: j.want.clone(), background };
        self.push(Io::Mirror(op));
    }

    /// No provider is left: a helper's fetch is answered with what is missing (after looking
    /// again for the repository's peers a few times if it found none at all); a background job
    /// waits and tries again a few times.
    fn give_up(&mut self, job: u64, now: Now) {
        let Some(j) = self.mirror.jobs.get_mut(&job) else { return };
        let background = j.waiters.is_empty() && j.retries < BACKGROUND_RETRIES;
        let nobody = !j.waiters.is_empty() && !j.reached;
        let young = now.mono.saturating_duration_since(j.started) < WAITING_WINDOW;
        if background || (nobody && young && j.retries < WAITING_RETRIES) {
            j.retries += 1;
            j.phase = Phase::Idle;
            j.tried.clear();
            // The DHT was asked in this fetch already: a waiting fetch looks only at the
            // topic's peers again (the DHT's answer takes up to its query timeout).
            j.asked_dht = !background;
            j.retry_at = Some(now.mono + RETRY_AFTER * j.retries);
            return;
        }
        let missing: Vec<String> =
            j.want.iter().flat_map(|(a, refs)| refs.keys().map(move |r| format!("{r} of {}", short(a)))).collect();
        if j.waiters.is_empty() {
            tracing::info!(repo = %j.repo.short(), ?missing, failures = ?j.failures, "replication gave up");
            self.mirror.jobs.remove(&job);
            return;
        }
        let why = if j.failures.is_empty() {
            "no peer that has the repository is connected".to_string()
        } else {
            j.failures.join("; ")
        };
        let failure = Failure::new(format!(
            "cannot fetch {} ({} more) from peers: {why}",
            missing.first().cloned().unwrap_or_default(),
            missing.len().saturating_sub(1)
        ));
        self.finish(job, Err(failure));
    }

    /// Answers the job's waiters and forgets it.
    fn finish(&mut self, job: u64, result: Result<(), Failure>) {
        let Some(j) = self.mirror.jobs.remove(&job) else { return };
        for reply in j.waiters {
            let answer = result.clone().map(|()| MirrorSynced {
                namespace: j.namespace.clone(),
                fetched_from: j.fetched_from.clone(),
                dropped: j.dropped.clone(),
            });
            let _ = reply.send(answer);
        }
    }

    /// The worker's report on an attempt.
    pub fn mirror_attempted(&mut self, job: u64, provider: Option<PeerId>, report: AttemptReport, now: Now) {
        let Some(j) = self.mirror.jobs.get_mut(&job) else { return };
        let who = provider.map(|p| short(&p.to_string()).to_string()).unwrap_or_else(|| "the mirror".into());
        let facts = match report {
            AttemptReport::Failed(why) => {
                if provider.is_some() {
                    j.failures.push(format!("{who}: {why}"));
                }
                j.phase = Phase::Idle;
                if provider.is_some() {
                    self.io.push_back(Io::Mirror(MirrorOp::Discard { job, repo: j.repo.clone() }));
                }
                self.next_attempt(job, now);
                return;
            }
            AttemptReport::Facts(facts) => facts,
        };
        let verdict = match provider {
            None => Verdict::Accept(Vec::new()),
            Some(p) => judge(&facts, &p.to_string()),
        };
        match verdict {
            Verdict::Lie { author, name, advertised } => {
                tracing::warn!(provider = %who, %author, %name, %advertised, "a provider advertised a tip its author never signed; distrusted");
                j.failures.push(format!(
                    "{who} advertised {name} of {} at {advertised}, which its author never signed",
                    short(&author)
                ));
                if let Some(p) = provider {
                    j.dropped.push(p.to_string());
                    self.mirror.distrusted.insert(p, now.mono + DISTRUST_FOR);
                }
                self.io.push_back(Io::Mirror(MirrorOp::Discard { job, repo: j.repo.clone() }));
                j.phase = Phase::Idle;
                self.next_attempt(job, now);
            }
            Verdict::Accept(accept) => {
                if provider.is_none() {
                    // The mirror alone: refs it holds at their signed values need nothing; a
                    // signed value whose objects it has (another ref brought them) is set.
                    let mut settle = Vec::new();
                    for f in &facts {
                        if f.advertised.as_deref() == Some(f.signed.as_str()) {
                            remove_want(&mut j.want, &f.author, &f.name);
                            let held = self.mirror.held.entry(j.repo.clone()).or_default();
                            held.entry(f.author.clone()).or_default().insert(f.name.clone(), f.signed.clone());
                        } else if f.present {
                            settle.push((f.author.clone(), f.name.clone(), f.signed.clone()));
                        }
                    }
                    if !settle.is_empty() {
                        j.phase = Phase::Settle;
                        self.io.push_back(Io::Mirror(MirrorOp::Settle { job, repo: j.repo.clone(), accept: settle }));
                    } else if j.want.is_empty() {
                        self.finish(job, Ok(()));
                    } else {
                        self.next_attempt(job, now);
                    }
                    return;
                }
                if !accept.is_empty() {
                    j.fetched_from.push(who);
                }
                j.phase = Phase::Settle;
                self.io.push_back(Io::Mirror(MirrorOp::Settle { job, repo: j.repo.clone(), accept }));
            }
        }
    }

    /// The worker settled (or failed to settle) what was accepted.
    pub fn mirror_settled(&mut self, job: u64, result: Result<Vec<(String, String, String)>, String>, now: Now) {
        let Some(j) = self.mirror.jobs.get_mut(&job) else { return };
        match result {
            Ok(accepted) => {
                for (author, name, oid) in accepted {
                    remove_want(&mut j.want, &author, &name);
                    self.mirror.held.entry(j.repo.clone()).or_default().entry(author).or_default().insert(name, oid);
                }
            }
            Err(why) => {
                // The mirror itself failed (a full disk): no provider will do better.
                tracing::warn!(repo = %j.repo.short(), error = %why, "cannot settle a fetch into the mirror");
                self.finish(job, Err(Failure::new(format!("cannot write the mirror: {why}"))));
                return;
            }
        }
        if j.want.is_empty() {
            self.finish(job, Ok(()));
        } else {
            j.phase = Phase::Idle;
            self.next_attempt(job, now);
        }
    }

    /// Background jobs whose retry is due.
    pub(super) fn mirror_tick(&mut self, now: Now) {
        let due: Vec<u64> = self
            .mirror
            .jobs
            .iter()
            .filter(|(_, j)| j.phase == Phase::Idle && j.retry_at.is_some_and(|at| now.mono >= at))
            .map(|(id, _)| *id)
            .collect();
        for job in due {
            if let Some(j) = self.mirror.jobs.get_mut(&job) {
                j.retry_at = None;
            }
            self.next_attempt(job, now);
        }
        self.mirror.distrusted.retain(|_, until| now.mono < *until);
    }
}

fn remove_want(want: &mut Wanted, author: &str, name: &str) {
    if let Some(refs) = want.get_mut(author) {
        refs.remove(name);
        if refs.is_empty() {
            want.remove(author);
        }
    }
}

fn show(author: &Author) -> String {
    match author {
        Author::Me => "you".to_string(),
        Author::Peer(p) | Author::Npub(p) => p.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(adv: Option<&str>, present: bool, older: bool) -> Fact {
        Fact {
            author: "alice".into(),
            name: "refs/heads/main".into(),
            signed: "s".into(),
            advertised: adv.map(str::to_string),
            present,
            older,
        }
    }

    #[test]
    fn a_signed_tip_is_accepted_and_a_forged_one_is_a_lie() {
        let accept = |f: Fact| judge(&[f], "carol");
        assert_eq!(
            accept(fact(Some("s"), true, false)),
            Verdict::Accept(vec![("alice".into(), "refs/heads/main".into(), "s".into())])
        );
        assert_eq!(
            accept(fact(Some("old"), false, false)),
            Verdict::Accept(vec![]),
            "a stale provider lacks it: no blame"
        );
        assert_eq!(
            accept(fact(Some("old"), true, true)),
            Verdict::Accept(vec![("alice".into(), "refs/heads/main".into(), "s".into())]),
            "an older tip beside the signed one"
        );
        assert!(
            matches!(accept(fact(Some("forged"), true, false)), Verdict::Lie { .. }),
            "not an ancestor of the signed tip"
        );
        assert_eq!(
            judge(&[fact(Some("newer"), true, false)], "alice"),
            Verdict::Accept(vec![("alice".into(), "refs/heads/main".into(), "s".into())]),
            "the author's own node is ahead of what we saw signed: no lie, the signed value taken"
        );
        assert_eq!(
            accept(fact(None, true, false)),
            Verdict::Accept(vec![("alice".into(), "refs/heads/main".into(), "s".into())])
        );
    }
}
