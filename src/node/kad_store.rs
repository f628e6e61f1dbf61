//! Kademlia's record store, persisted in the node's redb store so that DHT records (ours and
//! the ones we hold for others) survive restarts. Records are read from the store when Kademlia
//! asks for them, never loaded at start: start-up does not grow with the number of records. A
//! record that could not be written (a full disk) is kept in memory until the store takes it
//! again ([`PersistentStore::persist_pending`]). Provider records are not used by git-p2p and
//! stay in memory.
//!
//! What strangers may fill is bounded ([`Quotas`]): our own records (published by this node)
//! are never refused or pushed out; records of repositories we registered have a budget of their
//! own that strangers cannot touch; every other record counts against a budget for strangers,
//! and against a quota per repository and per publishing peer. When the strangers' budget is
//! full, the record farthest from our key goes first (a DHT node is responsible for the keys
//! near it), unless the newcomer is farther still. The books are counted from the store on a
//! thread after start ([`Census`]); until they are, only our own records are taken.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use libp2p::kad::store::{Error, MemoryStore, RecordStore, Result};
use libp2p::kad::{KBucketDistance, KBucketKey, ProviderRecord, Record, RecordKey};
use libp2p::PeerId;

use super::service::RecordError as PutError;
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
/// Records kept in memory while the store cannot take them, at most.
const MAX_UNSTORED: usize = 1000;

/// Whose a record is, for what may push it out.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Class {
    /// Published by this node: never refused, never evicted.
    Ours,
    /// Of a repository we registered, published by a peer.
    Registered { repo: Option<RepoId>, publisher: Option<PeerId> },
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
    #[error("this node is still counting the records it holds")]
    Counting,
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
            Class::Registered { publisher, .. } => {
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
            Class::Registered { publisher, .. } => {
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
            Some(Class::Registered { publisher, .. }) => {
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
    /// Records the store could not take (yet), newest version of each.
    unstored: HashMap<RecordKey, Record>,
    /// The books; None until the census came back.
    quotas: Option<Quotas>,
    census: Option<Census>,
    /// Repositories we registered: their records are not strangers'.
    registered: HashSet<RepoId>,
    providers: MemoryStore,
}

/// The books being counted from the store on a thread, and what changed meanwhile (applied
/// again once they are in: adding and removing a key are idempotent).
struct Census {
    books: mpsc::Receiver<Quotas>,
    changes: Vec<(RecordKey, Option<Class>)>,
}

fn to_instant(unix_ms: u64) -> Instant {
    let (now, at) = (unix_now_ms(), Instant::now());
    if unix_ms >= now {
        at + Duration::from_millis(unix_ms - now)
    } else {
        // In the past: Kademlia sees it expired.
        at.checked_sub(Duration::from_millis(now - unix_ms)).unwrap_or(at)
    }
}

fn to_unix_ms(at: Instant) -> u64 {
    unix_now_ms() + at.saturating_duration_since(Instant::now()).as_millis() as u64
}

fn from_stored(key: &[u8], r: DhtRecord) -> Record {
    Record {
        key: RecordKey::new(&key),
        value: r.value,
        publisher: r.publisher.and_then(|p| p.parse().ok()),
        expires: r.expires.map(to_instant),
    }
}

/// The repository a record says it belongs to (its JSON's `repo`), without reading the rest.
fn repo_of(value: &[u8]) -> Option<RepoId> {
    #[derive(serde::Deserialize)]
    struct Head {
        repo: RepoId,
    }
    serde_json::from_slice::<Head>(value).ok().map(|h| h.repo)
}

/// Whose a record is, for the books.
fn class_of(local: &PeerId, registered: &HashSet<RepoId>, publisher: Option<PeerId>, value: &[u8]) -> Class {
    if publisher.is_some_and(|p| p == *local) {
        return Class::Ours;
    }
    match repo_of(value) {
        Some(repo) if registered.contains(&repo) => Class::Registered { repo: Some(repo), publisher },
        repo => Class::Stranger { repo, publisher },
    }
}

fn distance(local: &KBucketKey<PeerId>, key: &RecordKey) -> KBucketDistance {
    KBucketKey::new(key.clone()).distance(local)
}

/// Counts the books from every live record in `store`.
fn count_books(store: &Store, local: &KBucketKey<PeerId>, registered: &HashSet<RepoId>) -> Quotas {
    let mut quotas = Quotas::default();
    let now = unix_now_ms();
    let counted = store.dht_for_each(|key, r| {
        if r.expires.is_some_and(|e| e <= now) {
            return;
        }
        let publisher = r.publisher.as_deref().and_then(|p| p.parse().ok());
        let class = class_of(local.preimage(), registered, publisher, &r.value);
        let key = RecordKey::new(&key);
        let d = distance(local, &key);
        quotas.add(key, class, d);
    });
    if let Err(e) = counted {
        tracing::warn!(error = %e, "cannot count the DHT records held; counting from none");
    }
    quotas
}

impl PersistentStore {
    /// Kademlia's view of the records kept in `store` (nothing is read now: the books are
    /// counted on a thread).
    pub fn load(peer: PeerId, store: Store) -> Self {
        let registered: HashSet<RepoId> = match store.repos() {
            Ok(repos) => repos.into_iter().map(|r| r.id).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the registered repositories");
                HashSet::new()
            }
        };
        let local = KBucketKey::from(peer);
        let (tx, rx) = mpsc::channel();
        let (census_store, census_local, census_registered) = (store.clone(), local, registered.clone());
        let spawned = std::thread::Builder::new().name("dht-census".into()).spawn(move || {
            let _ = tx.send(count_books(&census_store, &census_local, &census_registered));
        });
        let (quotas, census) = match spawned {
            Ok(_) => (None, Some(Census { books: rx, changes: Vec::new() })),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the DHT census; counting here");
                (Some(count_books(&store, &local, &registered)), None)
            }
        };
        Self { store, local, unstored: HashMap::new(), quotas, census, registered, providers: MemoryStore::new(peer) }
    }

    /// Takes the books if the census is done; true when they are in.
    fn books(&mut self) -> bool {
        if let Some(census) = &mut self.census {
            match census.books.try_recv() {
                Ok(mut quotas) => {
                    for (key, class) in std::mem::take(&mut census.changes) {
                        let d = distance(&self.local, &key);
                        match class {
                            Some(class) => quotas.add(key, class, d),
                            None => quotas.remove(&key, d),
                        }
                    }
                    self.census = None;
                    self.quotas = Some(quotas);
                    let registered: Vec<RepoId> = self.registered.iter().cloned().collect();
                    for repo in registered {
                        self.reclassify(&repo, true);
                    }
                }
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => {
                    tracing::warn!("the DHT census ended without its count; counting from none");
                    self.census = None;
                    self.quotas = Some(Quotas::default());
                }
            }
        }
        self.quotas.is_some()
    }

    /// Waits for the census (tests, and a node that must know before it goes on).
    pub fn wait_for_books(&mut self) {
        if let Some(census) = &mut self.census {
            if let Ok(quotas) = census.books.recv() {
                let (tx, rx) = mpsc::channel();
                let _ = tx.send(quotas);
                census.books = rx;
            }
        }
        self.books();
    }

    /// How many records are held, by whose they are (zeros while they are being counted).
    pub fn counts(&mut self) -> crate::control::api::DhtRecords {
        if !self.books() {
            return crate::control::api::DhtRecords { counting: true, ..Default::default() };
        }
        let Some(quotas) = &self.quotas else { return Default::default() };
        let strangers = quotas.by_distance.len();
        crate::control::api::DhtRecords {
            ours: quotas.classes.len() - strangers - quotas.registered,
            registered: quotas.registered,
            strangers,
            counting: false,
        }
    }

    /// From now on, records of `repo` are ours to keep (it was registered).
    pub fn protect(&mut self, repo: &RepoId) {
        if self.registered.insert(repo.clone()) && self.books() {
            self.reclassify(repo, true);
        }
    }

    /// Records of `repo` are strangers' again (it was unregistered), as they are at the next
    /// start; the budget they now count against gives way by distance as new records come.
    pub fn unprotect(&mut self, repo: &RepoId) {
        if self.registered.remove(repo) && self.books() {
            self.reclassify(repo, false);
        }
    }

    /// Records of `repo` move to the registered budget (`registered`), or back to the
    /// strangers'.
    fn reclassify(&mut self, repo: &RepoId, registered: bool) {
        let Some(quotas) = &mut self.quotas else { return };
        let moved: Vec<(RecordKey, Class)> = quotas
            .classes
            .iter()
            .filter_map(|(key, class)| match class {
                Class::Stranger { repo: Some(r), publisher } if registered && r == repo => {
                    Some((key.clone(), Class::Registered { repo: Some(r.clone()), publisher: *publisher }))
                }
                Class::Registered { publisher, repo: Some(r) } if !registered && r == repo => {
                    Some((key.clone(), Class::Stranger { repo: Some(r.clone()), publisher: *publisher }))
                }
                _ => None,
            })
            .collect();
        for (key, class) in moved {
            let d = distance(&self.local, &key);
            quotas.add(key, class, d);
        }
    }

    fn class_of(&self, record: &Record) -> Class {
        class_of(self.local.preimage(), &self.registered, record.publisher, &record.value)
    }

    /// Notes in the books that `key` now holds a record of `class` (None: nothing).
    fn book(&mut self, key: &RecordKey, class: Option<Class>) {
        let d = distance(&self.local, key);
        match (&mut self.quotas, &mut self.census) {
            (Some(quotas), _) => match class {
                Some(class) => quotas.add(key.clone(), class, d),
                None => quotas.remove(key, d),
            },
            (None, Some(census)) => census.changes.push((key.clone(), class)),
            (None, None) => {}
        }
    }

    fn forget(&mut self, key: &RecordKey) {
        self.unstored.remove(key);
        self.book(key, None);
        if let Err(e) = self.store.dht_remove(key.as_ref()) {
            tracing::debug!(error = %e, "cannot remove a DHT record");
        }
    }

    /// Stores `r`, telling why not if it cannot be: Kademlia's bounds and our quotas, or the
    /// store's trouble (the record is then kept in memory and stored once the store takes
    /// writes again).
    pub fn put_stored(&mut self, r: Record) -> std::result::Result<(), PutError> {
        if r.value.len() > MAX_RECORD_BYTES {
            return Err(PutError::Kad(Error::ValueTooLarge));
        }
        let existing = match self.unstored.get(&r.key) {
            Some(record) => Some(record.clone()),
            None => self.store.dht_get(r.key.as_ref())?.map(|stored| from_stored(r.key.as_ref(), stored)),
        };
        if existing.as_ref() == Some(&r) {
            // The node stores its own writes before Kademlia's put stores them again.
            return Ok(());
        }
        let class = self.class_of(&r);
        let d = distance(&self.local, &r.key);
        let admitted = if class == Class::Ours {
            // Never refused; while the books are counted, nothing gives way for it.
            Ok(self.quotas.as_ref().and_then(|q| q.admit(&r.key, &class, d).ok().flatten()))
        } else if self.books() {
            self.quotas.as_ref().map_or(Ok(None), |q| q.admit(&r.key, &class, d))
        } else {
            Err(Refusal::Counting)
        };
        match admitted {
            Ok(Some(evicted)) => {
                tracing::debug!(key = ?evicted, "DHT store full: the record farthest from us gives way");
                self.forget(&evicted);
            }
            Ok(None) => {}
            Err(why) => {
                tracing::debug!(key = ?r.key, error = %why, "refused a DHT record");
                return Err(PutError::Kad(Error::MaxRecords));
            }
        }
        let stored = DhtRecord {
            value: r.value.clone(),
            publisher: r.publisher.map(|p| p.to_string()),
            expires: r.expires.map(to_unix_ms),
        };
        self.book(&r.key, Some(class));
        match self.store.dht_put(r.key.as_ref(), &stored) {
            Ok(()) => {
                self.unstored.remove(&r.key);
                Ok(())
            }
            Err(e) => {
                if self.unstored.len() < MAX_UNSTORED || self.unstored.contains_key(&r.key) {
                    self.unstored.insert(r.key.clone(), r);
                }
                Err(e.into())
            }
        }
    }

    /// Stores what the store could not take before (it takes writes again).
    pub fn persist_pending(&mut self) {
        for (_, record) in std::mem::take(&mut self.unstored) {
            if let Err(e) = self.put_stored(record) {
                tracing::warn!(error = %e, "cannot store a DHT record");
            }
        }
    }
}

impl RecordStore for PersistentStore {
    type RecordsIter<'a> = std::vec::IntoIter<Cow<'a, Record>>;
    type ProvidedIter<'a> = <MemoryStore as RecordStore>::ProvidedIter<'a>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        if let Some(record) = self.unstored.get(k) {
            return Some(Cow::Borrowed(record));
        }
        match self.store.dht_get(k.as_ref()) {
            // An expired record is not served (Kademlia removes it when it next republishes).
            Ok(found) => found
                .filter(|stored| stored.expires.is_none_or(|e| e > unix_now_ms()))
                .map(|stored| Cow::Owned(from_stored(k.as_ref(), stored))),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read a DHT record");
                None
            }
        }
    }

    fn put(&mut self, r: Record) -> Result<()> {
        match self.put_stored(r) {
            Ok(()) => Ok(()),
            Err(PutError::Kad(e)) => Err(e),
            // Kept in memory; Kademlia has it for now.
            Err(PutError::Store(e)) => {
                tracing::debug!(error = %e, "cannot persist a DHT record");
                Ok(())
            }
        }
    }

    fn remove(&mut self, k: &RecordKey) {
        self.unstored.remove(k);
        self.book(k, None);
        if let Err(e) = self.store.dht_remove(k.as_ref()) {
            tracing::debug!(error = %e, "cannot remove a DHT record");
        }
    }

    /// Read from the store each time: Kademlia asks when it republishes (hourly).
    fn records(&self) -> Self::RecordsIter<'_> {
        let mut all: Vec<Cow<'_, Record>> = match self.store.dht_records() {
            Ok(stored) => stored
                .into_iter()
                .filter(|(key, _)| !self.unstored.contains_key(&RecordKey::new(key)))
                .map(|(key, r)| Cow::Owned(from_stored(&key, r)))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the DHT records to republish");
                Vec::new()
            }
        };
        all.extend(self.unstored.values().map(Cow::Borrowed));
        all.into_iter()
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
    fn records_survive_a_restart_and_expired_ones_are_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let peer = PeerId::random();
        {
            let mut kad = PersistentStore::load(peer, Store::open(&path).unwrap());
            kad.wait_for_books();
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
        let now = Instant::now();
        let live: Vec<_> = kad.records().filter(|r| !r.is_expired(now)).collect();
        assert_eq!(live.len(), 1, "Kademlia drops the expired one when it republishes");
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
        sim.put("friend's", Class::Registered { repo: None, publisher: Some(PeerId::random()) }).unwrap();
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
        kad.wait_for_books();
        let friend = PeerId::random();
        kad.put(record("mine", &theirs, me)).unwrap();
        kad.put(record("friend's", &ours, friend)).unwrap();
        let class =
            |kad: &PersistentStore, key: &str| kad.quotas.as_ref().unwrap().classes[&RecordKey::new(&key)].clone();
        assert!(matches!(class(&kad, "mine"), Class::Ours));
        assert!(matches!(class(&kad, "friend's"), Class::Stranger { .. }));
        kad.protect(&ours);
        assert!(
            matches!(class(&kad, "friend's"), Class::Registered { .. }),
            "registering a repository protects what we hold of it"
        );
        kad.remove(&RecordKey::new(&"friend's"));
        assert_eq!(kad.quotas.as_ref().unwrap().registered, 0, "the books follow removals");
    }

    fn record(key: &str, repo: &RepoId, publisher: PeerId) -> Record {
        let mut r = Record::new(RecordKey::new(&key), format!("{{\"repo\":\"{repo}\"}}").into_bytes());
        r.publisher = Some(publisher);
        r
    }

    #[test]
    fn the_books_are_counted_after_start_and_what_changed_meanwhile_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let me = PeerId::random();
        let repo = RepoId::try_from("b".repeat(40)).unwrap();
        let (eve, friend) = (PeerId::random(), PeerId::random());
        {
            let mut kad = PersistentStore::load(me, Store::open(&path).unwrap());
            kad.wait_for_books();
            kad.put(record("eve-1", &repo, eve)).unwrap();
            kad.put(record("eve-2", &repo, eve)).unwrap();
            kad.put(record("mine", &repo, me)).unwrap();
            kad.store.sync().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let mut kad = PersistentStore::load(me, store.clone());
        // Hold the census back: the books are not in yet.
        let (tx, rx) = mpsc::channel();
        kad.quotas = None;
        kad.census = Some(Census { books: rx, changes: Vec::new() });
        assert!(kad.counts().counting);
        assert!(kad.put(record("friend", &repo, friend)).is_err(), "strangers wait for the books");
        kad.put(record("mine-2", &repo, me)).expect("ours is never refused");
        kad.remove(&RecordKey::new(&"eve-1"));
        // The census saw the store before or after those changes: either way they count once.
        tx.send(count_books(&store, &kad.local, &kad.registered)).unwrap();
        let counts = kad.counts();
        assert!(!counts.counting);
        assert_eq!((counts.ours, counts.strangers), (2, 1));
        assert_eq!(kad.quotas.as_ref().unwrap().per_publisher.get(&eve), Some(&1));
    }
}
