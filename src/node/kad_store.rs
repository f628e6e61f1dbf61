//! Kademlia's record store, persisted in the node's redb store so that DHT records (ours and
//! the ones we hold for others) survive restarts. Records live in memory too (Kademlia reads
//! them often); provider records are not used by git-p2p and stay in memory.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::kad::store::{Error, MemoryStore, RecordStore, Result};
use libp2p::kad::{ProviderRecord, Record, RecordKey};
use libp2p::PeerId;

use crate::clock::unix_now_ms;
use crate::store::{DhtRecord, Store};

/// Records held at most (ours and others'); beyond it new ones are refused.
pub const MAX_RECORDS: usize = 10_000;
/// Largest stored record: a full multi-writer record (64 entries of 8 KiB values, hex).
pub const MAX_RECORD_BYTES: usize = 1 << 20;

pub struct PersistentStore {
    store: Store,
    records: HashMap<RecordKey, Record>,
    providers: MemoryStore,
}

fn to_instant(unix_ms: u64) -> Instant {
    let now = unix_now_ms();
    Instant::now() + Duration::from_millis(unix_ms.saturating_sub(now))
}

fn to_unix_ms(at: Instant) -> u64 {
    unix_now_ms() + at.saturating_duration_since(Instant::now()).as_millis() as u64
}

impl PersistentStore {
    /// Loads the records kept in `store`, dropping expired ones.
    pub fn load(peer: PeerId, store: Store) -> Self {
        let mut records = HashMap::new();
        let now = unix_now_ms();
        match store.dht_records() {
            Ok(all) => {
                for (key, r) in all {
                    if r.expires.is_some_and(|e| e <= now) {
                        let _ = store.dht_remove(&key);
                        continue;
                    }
                    let key = RecordKey::new(&key);
                    let record = Record {
                        key: key.clone(),
                        value: r.value,
                        publisher: r.publisher.and_then(|p| p.parse().ok()),
                        expires: r.expires.map(to_instant),
                    };
                    records.insert(key, record);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot load DHT records"),
        }
        Self { store, records, providers: MemoryStore::new(peer) }
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
        if !self.records.contains_key(&r.key) && self.records.len() >= MAX_RECORDS {
            return Err(Error::MaxRecords);
        }
        if self.records.get(&r.key) == Some(&r) {
            // The node stores its own writes before Kademlia's put stores them again.
            return Ok(());
        }
        let stored = DhtRecord {
            value: r.value.clone(),
            publisher: r.publisher.map(|p| p.to_string()),
            expires: r.expires.map(to_unix_ms),
        };
        if let Err(e) = self.store.dht_put(r.key.as_ref(), &stored) {
            tracing::warn!(error = %e, "cannot persist a DHT record");
        }
        self.records.insert(r.key.clone(), r);
        Ok(())
    }

    fn remove(&mut self, k: &RecordKey) {
        self.records.remove(k);
        if let Err(e) = self.store.dht_remove(k.as_ref()) {
            tracing::warn!(error = %e, "cannot remove a DHT record");
        }
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
}
