//! Kademlia's record store, persisted in the node's redb store so that DHT records (ours and
//! the ones we hold for others) survive restarts. Records live in memory too (Kademlia reads
//! them often); provider records are not used by git-p2p and stay in memory.
//!
//! What strangers may fill is bounded ([`Quotas`]): our own records (published by this node)
//! are never refused or pushed out; records of repositories we registered have a budget of their
//! own that strangers cannot touch; every other record counts against a budget for strangers,
//! and against a quota per repository and per publishing peer. When the strangers' budget is
//! full, the record farthest from our key goes first (a DHT node is responsible for the keys
//! near it), unless the newcomer is farther still.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::kad::store::{Error, MemoryStore, RecordStore, Result};
use libp2p::kad::{KBucketDistance, KBucketKey, ProviderRecord, Record, RecordKey};
use libp2p::PeerId;

use crate::clock::unix_now_ms;
use crate::proto::repo::RepoId;
use crate::store::{DhtRecord, Store};

/// Records of strangers (repositories we did not register) held at most.
pub const MAX_STRANGERS: usize = 10_000;
/// Records of repositories we registered, published by others, held at most.
pub const MAX_REGISTERED: usize = 10_000;
/// Records one peer may have us hold, and records of one repository we did not register.
pub const MAX_PER_PUBLISHER: usize = 1_000;
pub const MAX_PER_REPO: usize = 2_000;
/// Largest stored record: a full multi-writer record (64 entries of 8 KiB values, hex).
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// Whose a record is, for what may push it out.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Class {
    /// Published by this node: never refused, never evicted.
    Ours,
    /// Of a repository we registered, published by a peer.
    Registered { publisher: Option<PeerId> },
    /// Anything else.
    Stranger { repo: Option<RepoId>, publisher: Option<PeerId> },
}

/// Why a record was not stored, in the user's terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("peer {0} already has {MAX_PER_PUBLISHER} records here")]
    Publisher(PeerId),
    #[error("repository {0} already has {MAX_PER_REPO} records here")]
    Repo(RepoId),
    #[error("this node holds as many records for others as it takes, all nearer its key")]
    Full,
}

/// The bookkeeping of who fills the store; decides what is admitted and what gives way.
#[derive(Default)]
struct Quotas {
    classes: HashMap<RecordKey, Class>,
    /// Strangers' records by distance from our key (the farthest last).
    by_distance: BTreeSet<(KBucketDistance, Vec<u8>)>,
    registered: usize,
    per_publisher: HashMap<PeerId, usize>,
    per_repo: HashMap<RepoId, usize>,
}

impl Quotas {
    /// Whether a record of `class` at `distance` may come in (replacing what `key` held); if so,
    /// the stranger's record that must give way first, if any.
    fn admit(
        &self,
        key: &RecordKey,
        class: &Class,
        distance: KBucketDistance,
    ) -> std::result::Result<Option<RecordKey>, Refusal> {
        let same = |c: &Class| self.classes.get(key) == Some(c);
        match class {
            Class::Ours => Ok(self.farthest_if(|n| n > MAX_STRANGERS + MAX_REGISTERED, key)),
            Class::Registered { publisher } => {
                if same(class) {
                    return Ok(None);
                }
                self.publisher_ok(publisher)?;
                if self.registered >= MAX_REGISTERED {
                    return Err(Refusal::Full);
                }
                Ok(None)
            }
            Class::Stranger { repo, publisher } => {
                if same(class) {
                    return Ok(None);
                }
                self.publisher_ok(publisher)?;
                if let Some(repo) = repo {
                    if self.per_repo.get(repo).copied().unwrap_or(0) >= MAX_PER_REPO {
                        return Err(Refusal::Repo(repo.clone()));
                    }
                }
                if self.by_distance.len() < MAX_STRANGERS {
                    return Ok(None);
                }
                match self.by_distance.last() {
                    Some((far, far_key)) if *far > distance => Ok(Some(RecordKey::new(far_key))),
                    _ => Err(Refusal::Full),
                }
            }
        }
    }

    fn publisher_ok(&self, publisher: &Option<PeerId>) -> std::result::Result<(), Refusal> {
        match publisher {
            Some(p) if self.per_publisher.get(p).copied().unwrap_or(0) >= MAX_PER_PUBLISHER => {
                Err(Refusal::Publisher(*p))
            }
            _ => Ok(()),
        }
    }

    /// The farthest stranger's record, when the whole store holds more than `limit` allows.
    fn farthest_if(&self, over: impl Fn(usize) -> bool, key: &RecordKey) -> Option<RecordKey> {
        let total = self.classes.len() + usize::from(!self.classes.contains_key(key));
        over(total).then(|| self.by_distance.last().map(|(_, k)| RecordKey::new(k))).flatten()
    }

    fn add(&mut self, key: RecordKey, class: Class, distance: KBucketDistance) {
        self.remove(&key, distance);
        match &class {
            Class::Ours => {}
            Class::Registered { publisher } => {
                self.registered += 1;
                count(&mut self.per_publisher, publisher.as_ref(), 1);
            }
            Class::Stranger { repo, publisher } => {
                self.by_distance.insert((distance, key.to_vec()));
                count(&mut self.per_publisher, publisher.as_ref(), 1);
                count(&mut self.per_repo, repo.as_ref(), 1);
            }
        }
        self.classes.insert(key, class);
    }

    fn remove(&mut self, key: &RecordKey, distance: KBucketDistance) {
        match self.classes.remove(key) {
            Some(Class::Registered { publisher }) => {
                self.registered -= 1;
                count(&mut self.per_publisher, publisher.as_ref(), -1);
            }
            Some(Class::Stranger { repo, publisher }) => {
                self.by_distance.remove(&(distance, key.to_vec()));
                count(&mut self.per_publisher, publisher.as_ref(), -1);
                count(&mut self.per_repo, repo.as_ref(), -1);
            }
            Some(Class::Ours) | None => {}
        }
    }
}

fn count<K: std::hash::Hash + Eq + Clone>(counts: &mut HashMap<K, usize>, key: Option<&K>, by: isize) {
    let Some(key) = key else { return };
    let n = counts.entry(key.clone()).or_insert(0);
    *n = n.saturating_add_signed(by);
    if *n == 0 {
        counts.remove(key);
    }
}

pub struct PersistentStore {
    store: Store,
    local: KBucketKey<PeerId>,
    records: HashMap<RecordKey, Record>,
    quotas: Quotas,
    /// Repositories we registered: their records are not strangers'.
    registered: HashSet<RepoId>,
    providers: MemoryStore,
}

fn to_instant(unix_ms: u64) -> Instant {
    let now = unix_now_ms();
    Instant::now() + Duration::from_millis(unix_ms.saturating_sub(now))
}

fn to_unix_ms(at: Instant) -> u64 {
    unix_now_ms() + at.saturating_duration_since(Instant::now()).as_millis() as u64
}

/// The repository a record says it belongs to (its JSON's `repo`), without reading the rest.
fn repo_of(value: &[u8]) -> Option<RepoId> {
    #[derive(serde::Deserialize)]
    struct Head {
        repo: RepoId,
    }
    serde_json::from_slice::<Head>(value).ok().map(|h| h.repo)
}

impl PersistentStore {
    /// Loads the records kept in `store`, dropping expired ones.
    pub fn load(peer: PeerId, store: Store) -> Self {
        let registered = match store.repos() {
            Ok(repos) => repos.into_iter().map(|r| r.id).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the registered repositories");
                HashSet::new()
            }
        };
        let mut this = Self {
            store,
            local: KBucketKey::from(peer),
            records: HashMap::new(),
            quotas: Quotas::default(),
            registered,
            providers: MemoryStore::new(peer),
        };
        let now = unix_now_ms();
        match this.store.dht_records() {
            Ok(all) => {
                for (key, r) in all {
                    if r.expires.is_some_and(|e| e <= now) {
                        let _ = this.store.dht_remove(&key);
                        continue;
                    }
                    let key = RecordKey::new(&key);
                    let record = Record {
                        key: key.clone(),
                        value: r.value,
                        publisher: r.publisher.and_then(|p| p.parse().ok()),
                        expires: r.expires.map(to_instant),
                    };
                    let class = this.class_of(&record);
                    this.quotas.add(key.clone(), class, this.distance(&key));
                    this.records.insert(key, record);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot load DHT records"),
        }
        this
    }

    /// How many records are held, by whose they are.
    pub fn counts(&self) -> crate::control::api::DhtRecords {
        let strangers = self.quotas.by_distance.len();
        crate::control::api::DhtRecords {
            ours: self.quotas.classes.len() - strangers - self.quotas.registered,
            registered: self.quotas.registered,
            strangers,
        }
    }

    /// From now on, records of `repo` are ours to keep (it was registered).
    pub fn protect(&mut self, repo: &RepoId) {
        if self.registered.insert(repo.clone()) {
            self.reclass();
        }
    }

    /// Records of `repo` are strangers' again (it was unregistered), as they are at the next
    /// start; the budget they now count against gives way by distance as new records come.
    pub fn unprotect(&mut self, repo: &RepoId) {
        if self.registered.remove(repo) {
            self.reclass();
        }
    }

    fn reclass(&mut self) {
        let keys: Vec<RecordKey> = self.records.keys().cloned().collect();
        for key in keys {
            let Some(record) = self.records.get(&key) else { continue };
            let class = self.class_of(record);
            if self.quotas.classes.get(&key) != Some(&class) {
                self.quotas.add(key.clone(), class, self.distance(&key));
            }
        }
    }

    fn class_of(&self, record: &Record) -> Class {
        let publisher = record.publisher;
        if publisher.is_some_and(|p| p == *self.local.preimage()) {
            return Class::Ours;
        }
        match repo_of(&record.value) {
            Some(repo) if self.registered.contains(&repo) => Class::Registered { publisher },
            repo => Class::Stranger { repo, publisher },
        }
    }

    fn distance(&self, key: &RecordKey) -> KBucketDistance {
        KBucketKey::new(key.clone()).distance(&self.local)
    }

    fn forget(&mut self, key: &RecordKey) {
        self.records.remove(key);
        let distance = self.distance(key);
        self.quotas.remove(key, distance);
        if let Err(e) = self.store.dht_remove(key.as_ref()) {
            tracing::warn!(error = %e, "cannot remove a DHT record");
        }
    }
}

impl RecordStore for PersistentStore {
    type RecordsIter<'a> =
        std::iter::Map<std::collections::hash_map::Values<'a, RecordKey, Record>, fn(&'a Record) -> Cow<'a, Record>>;
    type ProvidedIter<'a> = <MemoryStore as RecordStore>::ProvidedIter<'a>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.records.get(k).map(Cow::Borrowed)
    }

    fn put(&mut self, r: Record) -> Result<()> {
        if r.value.len() > MAX_RECORD_BYTES {
            return Err(Error::ValueTooLarge);
        }
        if self.records.get(&r.key) == Some(&r) {
            // The node stores its own writes before Kademlia's put stores them again.
            return Ok(());
        }
        let class = self.class_of(&r);
        let distance = self.distance(&r.key);
        match self.quotas.admit(&r.key, &class, distance) {
            Ok(Some(evicted)) => {
                tracing::debug!(key = ?evicted, "DHT store full: the record farthest from us gives way");
                self.forget(&evicted);
            }
            Ok(None) => {}
            Err(why) => {
                tracing::debug!(key = ?r.key, error = %why, "refused a DHT record");
                return Err(Error::MaxRecords);
            }
        }
        let stored = DhtRecord {
            value: r.value.clone(),
            publisher: r.publisher.map(|p| p.to_string()),
            expires: r.expires.map(to_unix_ms),
        };
        if let Err(e) = self.store.dht_put(r.key.as_ref(), &stored) {
            tracing::warn!(error = %e, "cannot persist a DHT record");
        }
        self.quotas.add(r.key.clone(), class, distance);
        self.records.insert(r.key.clone(), r);
        Ok(())
    }

    fn remove(&mut self, k: &RecordKey) {
        self.forget(k);
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        fn borrow(r: &Record) -> Cow<'_, Record> {
            Cow::Borrowed(r)
        }
        self.records.values().map(borrow)
    }

    fn add_provider(&mut self, record: ProviderRecord) -> Result<()> {
        self.providers.add_provider(record)
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.providers.providers(key)
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.providers.provided()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        self.providers.remove_provider(k, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_restart_and_expired_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let peer = PeerId::random();
        {
            let mut kad = PersistentStore::load(peer, Store::open(&path).unwrap());
            let mut live = Record::new(RecordKey::new(&b"live"), b"v".to_vec());
            live.expires = Some(Instant::now() + Duration::from_secs(3600));
            kad.put(live).unwrap();
            let mut dead = Record::new(RecordKey::new(&b"dead"), b"v".to_vec());
            dead.expires = Some(Instant::now());
            kad.put(dead).unwrap();
            kad.store.sync().unwrap();
        }
        let kad = PersistentStore::load(peer, Store::open(&path).unwrap());
        assert_eq!(kad.get(&RecordKey::new(&b"live")).map(|r| r.value.clone()), Some(b"v".to_vec()));
        assert!(kad.get(&RecordKey::new(&b"dead")).is_none());
        assert_eq!(kad.records().count(), 1);
    }

    /// The quotas as the store applies them, without the disk: (admitted, evicted) per put.
    struct Sim {
        quotas: Quotas,
        local: KBucketKey<PeerId>,
    }

    impl Sim {
        fn put(&mut self, key: &str, class: Class) -> std::result::Result<(), Refusal> {
            let key = RecordKey::new(&key);
            let distance = KBucketKey::new(key.clone()).distance(&self.local);
            if let Some(evicted) = self.quotas.admit(&key, &class, distance)? {
                let d = KBucketKey::new(evicted.clone()).distance(&self.local);
                self.quotas.remove(&evicted, d);
            }
            self.quotas.add(key, class, distance);
            Ok(())
        }
        fn has(&self, key: &str) -> bool {
            self.quotas.classes.contains_key(&RecordKey::new(&key))
        }
    }

    #[test]
    fn strangers_cannot_push_out_our_records_or_our_repositories_and_quotas_hold() {
        let mut sim = Sim { quotas: Quotas::default(), local: KBucketKey::from(PeerId::random()) };
        let stranger = |repo: u64, publisher: PeerId| Class::Stranger {
            repo: Some(RepoId::try_from(format!("{repo:040x}")).unwrap()),
            publisher: Some(publisher),
        };
        sim.put("mine", Class::Ours).unwrap();
        sim.put("friend's", Class::Registered { publisher: Some(PeerId::random()) }).unwrap();
        // One peer: at most its quota.
        let eve = PeerId::random();
        let taken = (0..MAX_PER_PUBLISHER + 10).filter(|i| sim.put(&format!("e{i}"), stranger(1, eve)).is_ok()).count();
        assert_eq!(taken, MAX_PER_PUBLISHER);
        assert_eq!(sim.put("e-more", stranger(1, eve)), Err(Refusal::Publisher(eve)));
        // Many peers, one repository: at most its quota.
        let taken =
            (0..MAX_PER_REPO).filter(|i| sim.put(&format!("r{i}"), stranger(1, PeerId::random())).is_ok()).count();
        assert_eq!(taken, MAX_PER_REPO - MAX_PER_PUBLISHER);
        // Many peers, many repositories: the strangers' budget fills, then the nearest stay.
        for i in 0..MAX_STRANGERS as u64 + 500 {
            let _ = sim.put(&format!("s{i}"), stranger(i + 2, PeerId::random()));
        }
        assert_eq!(sim.quotas.by_distance.len(), MAX_STRANGERS, "bounded");
        let farthest_kept = sim.quotas.by_distance.last().map(|(d, _)| *d).unwrap();
        let evicted_nearer = (0..MAX_STRANGERS + 500)
            .map(|i| format!("s{i}"))
            .filter(|k| !sim.has(k))
            .any(|k| KBucketKey::new(RecordKey::new(&k)).distance(&sim.local) < farthest_kept);
        assert!(!evicted_nearer, "what gave way was farther than everything kept");
        // Ours and our repository's are all still here, and ours is never refused.
        assert!(sim.has("mine") && sim.has("friend's"));
        sim.put("mine too", Class::Ours).unwrap();
        assert!(sim.has("mine too"), "a full store is no error for our own writes");
    }

    #[test]
    fn the_store_sorts_records_by_whose_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let me = PeerId::random();
        let ours = RepoId::try_from("a".repeat(40)).unwrap();
        let theirs = RepoId::try_from("e".repeat(40)).unwrap();
        let mut kad = PersistentStore::load(me, Store::open(&dir.path().join("s.redb")).unwrap());
        let record = |key: &str, repo: &RepoId, publisher: PeerId| {
            let mut r = Record::new(RecordKey::new(&key), format!("{{\"repo\":\"{repo}\"}}").into_bytes());
            r.publisher = Some(publisher);
            r
        };
        let friend = PeerId::random();
        kad.put(record("mine", &theirs, me)).unwrap();
        kad.put(record("friend's", &ours, friend)).unwrap();
        assert!(matches!(kad.quotas.classes[&RecordKey::new(&"mine")], Class::Ours));
        assert!(matches!(kad.quotas.classes[&RecordKey::new(&"friend's")], Class::Stranger { .. }));
        kad.protect(&ours);
        assert!(
            matches!(kad.quotas.classes[&RecordKey::new(&"friend's")], Class::Registered { .. }),
            "registering a repository protects what we hold of it"
        );
        kad.remove(&RecordKey::new(&"friend's"));
        assert_eq!(kad.quotas.registered, 0, "the books follow removals");
    }
}
