//! Kademlia's record store, persisted in the node's redb store so that DHT records (ours and
//! the ones we hold for others) survive restarts. Records are read from the store when Kademlia
//! asks for them, never loaded at start: start-up does not grow with the number of records. A
//! record that could not be written (a full disk) is kept in memory until the store takes it
//! again ([`PersistentStore::persist_pending`]). Provider records are not used by git-p2p and
//! stay in memory.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::kad::store::{Error, MemoryStore, RecordStore, Result};
use libp2p::kad::{ProviderRecord, Record, RecordKey};
use libp2p::PeerId;

use super::service::RecordError as PutError;
use crate::clock::unix_now_ms;
use crate::store::{DhtRecord, Store};

/// Records held at most (ours and others'); beyond it new ones are refused.
pub const MAX_RECORDS: usize = 10_000;
/// Largest stored record: a full multi-writer record (64 entries of 8 KiB values, hex).
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// Records kept in memory while the store cannot take them, at most.
const MAX_UNSTORED: usize = 1000;

pub struct PersistentStore {
    store: Store,
    /// Records the store could not take (yet), newest version of each.
    unstored: HashMap<RecordKey, Record>,
    providers: MemoryStore,
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

impl PersistentStore {
    /// Kademlia's view of the records kept in `store` (nothing is read now).
    pub fn load(peer: PeerId, store: Store) -> Self {
        Self { store, unstored: HashMap::new(), providers: MemoryStore::new(peer) }
    }

    /// Stores `r`, telling why not if it cannot be: Kademlia's bounds, or the store's trouble
    /// (the record is then kept in memory and stored once the store takes writes again).
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
        if existing.is_none() && self.store.dht_len()? as usize + self.unstored.len() >= MAX_RECORDS {
            return Err(PutError::Kad(Error::MaxRecords));
        }
        let stored = DhtRecord {
            value: r.value.clone(),
            publisher: r.publisher.map(|p| p.to_string()),
            expires: r.expires.map(to_unix_ms),
        };
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
}
