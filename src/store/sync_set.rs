//! The sync sets: the signed envelopes of what the feed, the room and the commit threads of
//! each repository hold, by (repository, kind, signed time, id), so that peers can reconcile
//! them (`/git-p2p/sync/1`) and hand each other the very bytes their authors signed. Each kind
//! keeps as many as the store keeps of it (the newest by signed time: two nodes that saw the
//! same converge on the same set) within the window; older ones are pruned with the seen ids.
//! The tables are created on first write, so that older stores open unchanged.

use redb::{ReadableTable, TableDefinition};

use super::{db, Store, StoreError};
use crate::proto::repo::RepoId;
use crate::proto::sync::{add_id, sub_id, Kind, SyncItem};

/// (repo id, kind, signed time, id) -> the envelope as signed (JSON)
const SYNC_SET: TableDefinition<(&str, u8, u64, &[u8]), &[u8]> = TableDefinition::new("sync_set");
/// (repo id, kind) -> how many items the set holds
const SYNC_COUNT: TableDefinition<(&str, u8), u64> = TableDefinition::new("sync_count");
/// (repo id, kind) -> the sum of the set's ids ([`crate::proto::sync::add_id`]), 32 bytes: a
/// set's fingerprint without reading it
const SYNC_SUM: TableDefinition<(&str, u8), &[u8]> = TableDefinition::new("sync_sum");

/// Items of a kind one repository's set keeps: the stores' bounds.
pub fn cap(kind: Kind) -> usize {
    match kind {
        Kind::Announcements => super::MAX_FEED_PER_REPO,
        Kind::Room => super::MAX_CHAT_PER_ROOM,
        Kind::Threads => super::MAX_THREAD_MESSAGES_PER_REPO,
    }
}

/// An upper bound for ids in a range (ids are 32 bytes).
const ID_MAX: &[u8] = &[0xff; 33];

fn missing(e: &redb::TableError) -> bool {
    matches!(e, redb::TableError::TableDoesNotExist(_))
}

fn sum_of(
    table: &impl ReadableTable<(&'static str, u8), &'static [u8]>,
    key: (&str, u8),
) -> Result<[u8; 32], StoreError> {
    Ok(db(table.get(key))?.and_then(|v| <[u8; 32]>::try_from(v.value()).ok()).unwrap_or([0; 32]))
}

/// [`Store::sync_keep_all`] inside a write transaction.
pub(super) fn keep_in(txn: &redb::WriteTransaction, items: &[SyncItem]) -> Result<usize, StoreError> {
    let mut set = db(txn.open_table(SYNC_SET))?;
    let mut counts = db(txn.open_table(SYNC_COUNT))?;
    let mut sums = db(txn.open_table(SYNC_SUM))?;
    let mut added = 0;
    for item in items {
        let (repo, kind) = (item.repo.as_str(), item.kind.byte());
        let key = (repo, kind, item.ts, item.id.as_slice());
        if db(set.get(key))?.is_some() {
            continue;
        }
        db(set.insert(key, item.envelope.as_slice()))?;
        let mut sum = sum_of(&sums, (repo, kind))?;
        add_id(&mut sum, &item.id);
        let mut count = db(counts.get((repo, kind)))?.map(|v| v.value()).unwrap_or(0) + 1;
        while count > cap(item.kind) as u64 {
            let oldest = db(set.range((repo, kind, 0, &[][..])..=(repo, kind, u64::MAX, ID_MAX)))?
                .next()
                .map(|item| item.map(|(k, _)| (k.value().2, k.value().3.to_vec())));
            let Some(oldest) = oldest else { break };
            let (ts, id) = db(oldest)?;
            db(set.remove((repo, kind, ts, id.as_slice())))?;
            if let Ok(id) = <[u8; 32]>::try_from(id.as_slice()) {
                sub_id(&mut sum, &id);
            }
            count -= 1;
        }
        db(counts.insert((repo, kind), count))?;
        db(sums.insert((repo, kind), sum.as_slice()))?;
        added += 1;
    }
    Ok(added)
}

impl Store {
    /// Adds items to their sets (not fsync'd), skipping those held; a set over its kind's
    /// [`cap`] drops its oldest. Returns how many were new.
    pub fn sync_keep_all(&self, items: &[SyncItem]) -> Result<usize, StoreError> {
        if items.is_empty() {
            return Ok(0);
        }
        self.update(false, |txn| keep_in(txn, items))
    }

    /// The (signed time, id) of each item of a set dated `since` or later, in order.
    pub fn sync_ids(&self, repo: &RepoId, kind: Kind, since: u64) -> Result<Vec<(u64, [u8; 32])>, StoreError> {
        let (repo, kind) = (repo.as_str(), kind.byte());
        self.read(|txn| {
            let set = match txn.open_table(SYNC_SET) {
                Ok(set) => set,
                Err(e) if missing(&e) => return Ok(Vec::new()),
                Err(e) => return Err(StoreError::Db(e.into())),
            };
            let mut out = Vec::new();
            for item in db(set.range((repo, kind, since, &[][..])..=(repo, kind, u64::MAX, ID_MAX)))? {
                let (k, _) = db(item)?;
                let (_, _, ts, id) = k.value();
                if let Ok(id) = <[u8; 32]>::try_from(id) {
                    out.push((ts, id));
                }
            }
            Ok(out)
        })
    }

    /// How many items of a set are dated `since` or later, and the sum of their ids: read
    /// from the set's totals less the few items before `since` (the window's edge), never the
    /// whole set.
    pub fn sync_summary(&self, repo: &RepoId, kind: Kind, since: u64) -> Result<(u64, [u8; 32]), StoreError> {
        let (repo, kind) = (repo.as_str(), kind.byte());
        self.read(|txn| {
            let tables = (txn.open_table(SYNC_SET), txn.open_table(SYNC_COUNT), txn.open_table(SYNC_SUM));
            let (set, counts, sums) = match tables {
                (Ok(set), Ok(counts), Ok(sums)) => (set, counts, sums),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                    return if missing(&e) { Ok((0, [0; 32])) } else { Err(StoreError::Db(e.into())) };
                }
            };
            let mut count = db(counts.get((repo, kind)))?.map(|v| v.value()).unwrap_or(0);
            let mut sum = sum_of(&sums, (repo, kind))?;
            for item in db(set.range((repo, kind, 0, &[][..])..(repo, kind, since, &[][..])))? {
                let (k, _) = db(item)?;
                if let Ok(id) = <[u8; 32]>::try_from(k.value().3) {
                    sub_id(&mut sum, &id);
                    count = count.saturating_sub(1);
                }
            }
            Ok((count, sum))
        })
    }

    /// The envelopes of these items of a set (those it still holds), in the order asked.
    pub fn sync_envelopes(
        &self,
        repo: &RepoId,
        kind: Kind,
        items: &[(u64, [u8; 32])],
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let (repo, kind) = (repo.as_str(), kind.byte());
        self.read(|txn| {
            let set = match txn.open_table(SYNC_SET) {
                Ok(set) => set,
                Err(e) if missing(&e) => return Ok(Vec::new()),
                Err(e) => return Err(StoreError::Db(e.into())),
            };
            let mut out = Vec::with_capacity(items.len());
            for (ts, id) in items {
                if let Some(v) = db(set.get((repo, kind, *ts, id.as_slice())))? {
                    out.push(v.value().to_vec());
                }
            }
            Ok(out)
        })
    }

    /// Forgets the items signed before `before_ms` (outside the window); returns how many went.
    pub fn sync_prune(&self, before_ms: u64) -> Result<usize, StoreError> {
        self.update(false, |txn| {
            let mut set = db(txn.open_table(SYNC_SET))?;
            let mut counts = db(txn.open_table(SYNC_COUNT))?;
            let mut sums = db(txn.open_table(SYNC_SUM))?;
            let sets: Vec<(String, u8)> = db(counts.iter())?
                .map(|item| item.map(|(k, _)| (k.value().0.to_string(), k.value().1)))
                .collect::<Result<_, _>>()
                .map_err(|e| StoreError::Db(e.into()))?;
            let mut pruned = 0;
            for (repo, kind) in sets {
                let repo = repo.as_str();
                let old: Vec<(u64, Vec<u8>)> =
                    db(set.range((repo, kind, 0, &[][..])..(repo, kind, before_ms, &[][..])))?
                        .map(|item| item.map(|(k, _)| (k.value().2, k.value().3.to_vec())))
                        .collect::<Result<_, _>>()
                        .map_err(|e| StoreError::Db(e.into()))?;
                let mut sum = sum_of(&sums, (repo, kind))?;
                for (ts, id) in &old {
                    db(set.remove((repo, kind, *ts, id.as_slice())))?;
                    if let Ok(id) = <[u8; 32]>::try_from(id.as_slice()) {
                        sub_id(&mut sum, &id);
                    }
                }
                let left =
                    db(counts.get((repo, kind)))?.map(|v| v.value()).unwrap_or(0).saturating_sub(old.len() as u64);
                if left == 0 {
                    db(counts.remove((repo, kind)))?;
                    db(sums.remove((repo, kind)))?;
                } else {
                    db(counts.insert((repo, kind), left))?;
                    db(sums.insert((repo, kind), sum.as_slice()))?;
                }
                pruned += old.len();
            }
            Ok(pruned)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(repo: &RepoId, kind: Kind, ts: u64, n: u8) -> SyncItem {
        SyncItem { repo: repo.clone(), kind, ts, id: [n; 32], envelope: vec![n] }
    }

    #[test]
    fn sets_keep_each_item_once_the_newest_within_their_cap_and_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let r = RepoId::try_from("e".repeat(40)).unwrap();
        assert_eq!(store.sync_ids(&r, Kind::Room, 0).unwrap(), [], "no table yet: an empty set");
        let room: Vec<SyncItem> =
            (0..cap(Kind::Room) as u64 + 2).map(|i| item(&r, Kind::Room, 10 + i, (i % 250) as u8)).collect();
        // Ids repeat every 250 items but signed times differ: each is its own item.
        assert_eq!(store.sync_keep_all(&room).unwrap(), room.len());
        assert_eq!(store.sync_keep_all(&room[room.len() - 1..]).unwrap(), 0, "held already");
        let ids = store.sync_ids(&r, Kind::Room, 0).unwrap();
        assert_eq!(ids.len(), cap(Kind::Room), "the oldest went");
        assert_eq!(ids[0].0, 12);
        store.sync_keep_all(&[item(&r, Kind::Announcements, 5, 1)]).unwrap();
        assert_eq!(store.sync_ids(&r, Kind::Announcements, 0).unwrap(), [(5, [1; 32])], "kinds apart");
        assert_eq!(store.sync_envelopes(&r, Kind::Announcements, &[(5, [1; 32]), (6, [1; 32])]).unwrap(), [vec![1]]);
        assert_eq!(store.sync_ids(&r, Kind::Room, 1000).unwrap().len(), 12, "from `since` on");
        assert_eq!(store.sync_prune(20).unwrap(), 1 + 8);
        assert_eq!(store.sync_ids(&r, Kind::Room, 0).unwrap()[0].0, 20);
        store.sync_keep_all(&[item(&r, Kind::Room, 5000, 7)]).unwrap();
        assert_eq!(store.sync_ids(&r, Kind::Room, 0).unwrap().len(), cap(Kind::Room) - 8 + 1, "the count stayed true");
        // The totals kept with the set are what reading it gives.
        for since in [0, 500, 5000, 6000] {
            let ids = store.sync_ids(&r, Kind::Room, since).unwrap();
            let mut sum = [0u8; 32];
            ids.iter().for_each(|(_, id)| add_id(&mut sum, id));
            assert_eq!(store.sync_summary(&r, Kind::Room, since).unwrap(), (ids.len() as u64, sum), "since {since}");
        }
        let other = RepoId::try_from("f".repeat(40)).unwrap();
        assert_eq!(store.sync_summary(&other, Kind::Room, 0).unwrap(), (0, [0; 32]));
    }
}
