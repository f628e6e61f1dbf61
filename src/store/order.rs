//! The order of the histories (a repository's feed, a room, a repository's commit threads): an
//! item's key in its `(prefix, key)` table is made from its time, so that reading a history in
//! key order reads it in time order, however late an item arrived (a catch-up after a partition
//! lands among what was said meanwhile, not after it). Histories are bounded by counts kept
//! beside them, and give way oldest (by time) first.
//!
//! Keys written before this order existed are small sequence numbers (1, 2, ...): they sort
//! before every time key, as the oldest, which they are. The counts are created on first write,
//! and a history without one is counted once.

use redb::{ReadableTable, TableDefinition};

use super::{db, StoreError};

/// (history, prefix) -> how many items it holds
const HISTORY_COUNT: TableDefinition<(u8, &str), u64> = TableDefinition::new("history_count");

/// The histories counted.
#[derive(Debug, Clone, Copy)]
pub enum History {
    /// A repository's feed, by repository id.
    Feed = 0,
    /// A room (a repository's, or a commit thread), by room id.
    Chat = 1,
    /// A repository's commit threads together, by repository id.
    Threads = 2,
}

/// Bits of a key below the millisecond: items of one history in one millisecond.
const SUB_MS_BITS: u32 = 16;

/// Where an item goes by time: its time, except that it goes no later than it arrived (a sender
/// whose clock is ahead does not sort after what arrives later), in Unix ms.
pub fn order_time(signed_at: u64, received_at: u64) -> u64 {
    signed_at.min(received_at)
}

/// The first key of millisecond `at`.
fn first_key(at: u64) -> u64 {
    at.min(u64::MAX >> SUB_MS_BITS) << SUB_MS_BITS
}

/// A key for an item of `at` (Unix ms) under `prefix` that `table` does not hold: after the
/// items of the same millisecond already there. (Where a key must be free in two tables, the
/// greater of the two is.)
pub fn free_key<V: redb::Value + 'static>(
    table: &impl ReadableTable<(&'static str, u64), V>,
    prefix: &str,
    at: u64,
) -> Result<u64, StoreError> {
    let first = first_key(at);
    let last = db(table.range((prefix, first)..=(prefix, first | ((1 << SUB_MS_BITS) - 1))))?.next_back();
    Ok(match last {
        Some(item) => db(item)?.0.value().1 + 1,
        None => first,
    })
}

/// The oldest key under `prefix` (the first in time).
pub fn oldest<V: redb::Value + 'static>(
    table: &impl ReadableTable<(&'static str, u64), V>,
    prefix: &str,
) -> Result<Option<u64>, StoreError> {
    let first = db(table.range((prefix, 0)..=(prefix, u64::MAX)))?.next();
    Ok(match first {
        Some(item) => Some(db(item)?.0.value().1),
        None => None,
    })
}

/// The counts of the histories, read and written in one write transaction.
pub struct Counts<'txn> {
    table: redb::Table<'txn, (u8, &'static str), u64>,
}

impl<'txn> Counts<'txn> {
    pub fn open(txn: &'txn redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self { table: db(txn.open_table(HISTORY_COUNT))? })
    }

    /// The count kept for `history` under `prefix`, if any.
    fn known(&self, history: History, prefix: &str) -> Result<Option<u64>, StoreError> {
        Ok(db(self.table.get((history as u8, prefix)))?.map(|v| v.value()))
    }

    fn set(&mut self, history: History, prefix: &str, n: u64) -> Result<(), StoreError> {
        if n == 0 {
            db(self.table.remove((history as u8, prefix)))?;
        } else {
            db(self.table.insert((history as u8, prefix), n))?;
        }
        Ok(())
    }

    /// `history` under `prefix` grew by one item (added to `table` already); its count now.
    pub fn grew<V: redb::Value + 'static>(
        &mut self,
        history: History,
        prefix: &str,
        table: &impl ReadableTable<(&'static str, u64), V>,
    ) -> Result<u64, StoreError> {
        let n = match self.known(history, prefix)? {
            Some(n) => n + 1,
            None => counted(table, prefix)?,
        };
        self.set(history, prefix, n)?;
        Ok(n)
    }

    /// `history` under `prefix` lost one item (removed from `table` already).
    pub fn shrank<V: redb::Value + 'static>(
        &mut self,
        history: History,
        prefix: &str,
        table: &impl ReadableTable<(&'static str, u64), V>,
    ) -> Result<(), StoreError> {
        let n = match self.known(history, prefix)? {
            Some(n) => n.saturating_sub(1),
            None => counted(table, prefix)?,
        };
        self.set(history, prefix, n)
    }
}

/// The items under `prefix`, counted one by one: a history never counted (an older store's).
fn counted<V: redb::Value + 'static>(
    table: &impl ReadableTable<(&'static str, u64), V>,
    prefix: &str,
) -> Result<u64, StoreError> {
    let mut n = 0;
    for item in db(table.range((prefix, 0)..=(prefix, u64::MAX)))? {
        db(item)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_time_and_never_after_arrival() {
        assert!(first_key(1_700_000_000_001) > first_key(1_700_000_000_000) + 1000);
        assert_eq!((first_key(1_700_000_000_123) + 7) >> SUB_MS_BITS, 1_700_000_000_123);
        assert_eq!(order_time(10, 20), 10);
        assert_eq!(order_time(30, 20), 20, "a clock ahead sorts at arrival");
        // Old sequence numbers sort first.
        assert!(first_key(1_600_000_000_000) > 1 << 56);
    }
}
