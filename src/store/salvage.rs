//! Reading what can still be read out of a damaged store file, for `git p2p daemon repair`:
//! table by table, each read stopping at the first error or panic (what was read before it is
//! kept). Nothing here is trusted: the caller keeps only what it can check (signatures, git
//! dirs that hold the repository they claim to), and rebuilds the rest.

use std::path::Path;

use redb::{Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableDefinition};

use super::handle::quietly;
use super::{
    DhtRecord, KnownPeer, NostrPending, DHT, KV_OWN, NOSTR_OUTBOX, OUTBOX, PEERS, REFLOG_POS, REPOS, REPO_DIRS,
};
use crate::proto::outbox::OutboxEntry;
use crate::proto::repo::RepoInfo;

/// What could be read, unchecked.
#[derive(Debug, Default)]
pub struct Salvaged {
    /// Why the file could not be opened at all (then everything else is empty).
    pub unopenable: Option<String>,
    /// Tables that could not be read to their end.
    pub cut_short: Vec<&'static str>,
    /// (repo id, room name, git dir).
    pub repos: Vec<(String, String, Option<crate::proto::repo::LocalPath>)>,
    pub known_peers: Vec<(String, KnownPeer)>,
    pub outbox: Vec<OutboxEntry>,
    pub dht: Vec<(Vec<u8>, DhtRecord)>,
    /// (repo id, key, unix ms).
    pub kv_own: Vec<(String, String, u64)>,
    pub nostr_pending: Vec<NostrPending>,
    /// (reflog key, position).
    pub reflog_pos: Vec<(String, u64)>,
}

/// Reads what it can of the store file at `path` (which it does not change when it can help it:
/// read-only first, and only if that is refused, as redb's writer), and the copy of the registry
/// kept beside the store at `beside`.
pub fn salvage(path: &Path, beside: &Path) -> Salvaged {
    let mut out = Salvaged::default();
    let copy: Vec<RepoInfo> = std::fs::read(super::registry_copy(beside))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    match quietly(|| ReadOnlyDatabase::open(path)) {
        Ok(Ok(database)) => read_all(&database, &mut out),
        _ => match quietly(|| Database::open(path)) {
            Ok(Ok(database)) => read_all(&database, &mut out),
            Ok(Err(e)) => out.unopenable = Some(e.to_string()),
            Err(panic) => out.unopenable = Some(format!("redb failed reading it: {panic}")),
        },
    }
    for repo in copy {
        if !out.repos.iter().any(|(id, _, _)| *id == repo.id.as_str()) {
            out.repos.push((repo.id.to_string(), repo.name, repo.git_dir));
        }
    }
    out
}

fn read_all(database: &impl ReadableDatabase, out: &mut Salvaged) {
    let mut cut = Vec::new();
    let mut names = Vec::new();
    scan(database, REPOS, "repos", &mut cut, |k, v| names.push((k.to_string(), v.to_string())));
    let mut dirs = std::collections::HashMap::new();
    scan(database, REPO_DIRS, "repo_dirs", &mut cut, |k, v| {
        if let Ok(dir) = crate::proto::repo::LocalPath::decode(v) {
            dirs.insert(k.to_string(), dir);
        }
    });
    out.repos = names.into_iter().map(|(id, name)| (id.clone(), name, dirs.get(&id).cloned())).collect();
    scan(database, PEERS, "peers", &mut cut, |k, v| {
        if let Ok(peer) = serde_json::from_slice(v) {
            out.known_peers.push((k.to_string(), peer));
        }
    });
    scan(database, OUTBOX, "outbox", &mut cut, |_, v| {
        if let Ok(entry) = serde_json::from_slice(v) {
            out.outbox.push(entry);
        }
    });
    scan(database, DHT, "dht", &mut cut, |k, v| {
        if let Ok(record) = serde_json::from_slice(v) {
            out.dht.push((k.to_vec(), record));
        }
    });
    scan(database, KV_OWN, "kv_own", &mut cut, |(repo, key), ts| out.kv_own.push((repo.into(), key.into(), ts)));
    scan(database, NOSTR_OUTBOX, "nostr_outbox", &mut cut, |_, v| {
        if let Ok(pending) = serde_json::from_slice(v) {
            out.nostr_pending.push(pending);
        }
    });
    scan(database, REFLOG_POS, "reflog_pos", &mut cut, |k, pos| out.reflog_pos.push((k.to_string(), pos)));
    out.cut_short = cut;
}

/// Hands each (key, value) of a table to `take` until the end, an error or a panic; a table not
/// read to its end is named in `cut`.
fn scan<K: redb::Key + 'static, V: redb::Value + 'static>(
    database: &impl ReadableDatabase,
    def: TableDefinition<K, V>,
    name: &'static str,
    cut: &mut Vec<&'static str>,
    mut take: impl for<'a> FnMut(K::SelfType<'a>, V::SelfType<'a>),
) {
    let read = quietly(|| -> Result<(), redb::Error> {
        let txn = database.begin_read()?;
        let table = txn.open_table(def)?;
        for item in table.iter()? {
            let (k, v) = item?;
            take(k.value(), v.value());
        }
        Ok(())
    });
    match read {
        Ok(Ok(())) => {}
        Ok(Err(redb::Error::TableDoesNotExist(_))) => {}
        _ => cut.push(name),
    }
}
