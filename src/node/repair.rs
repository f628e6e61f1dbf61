//! `git p2p daemon repair`: a damaged store is moved aside and a new one started with the same
//! keys (libp2p.key and nostr.key live beside the store and are not touched), holding what can be
//! checked of the old one and rebuilding the rest:
//!
//! - registered repositories whose git dir still holds them; their HEAD reflogs are read again
//!   from [`REREAD`] ago, so our announcements of that time go out again (peers drop the ones
//!   they have) and nothing that waited in the lost outbox is lost;
//! - DHT records whose every entry verifies (ours are republished), our keys (`kv ls`), and the
//!   keys of ours the old store named but whose records are gone: the node fetches our entries
//!   back from peers' copies once it has peers;
//! - outbox entries and Nostr events whose signatures verify, the address book.
//!
//! Received history (the feed of peers' announcements, room messages) is not signed as stored
//! and cannot be checked: it is not carried over.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::identity::Identity;
use crate::paths::Paths;
use crate::proto::kv::{validate_key, Record, REFS_KEY};
use crate::proto::repo::{RepoId, RepoInfo};
use crate::store::salvage::{salvage, Salvaged};
use crate::store::{Store, StoreError};

/// How far back the reflogs are read again: as long as the node remembers announced commits.
pub const REREAD: Duration = super::service::ANNOUNCED_KEPT;

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error(transparent)]
    Node(#[from] super::NodeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error("cannot move the damaged store {} aside: {source}", path.display())]
    Move { path: PathBuf, source: std::io::Error },
}

/// What a repair did.
#[derive(Debug)]
pub enum Outcome {
    /// There is no store (the node has not run here yet).
    NoStore,
    /// The store verified: nothing was changed.
    Healthy,
    Repaired(Report),
}

#[derive(Debug, Default)]
pub struct Report {
    /// Why the old store was not usable.
    pub reason: String,
    pub moved_to: PathBuf,
    /// Why nothing at all could be read from the old store.
    pub unopenable: Option<String>,
    /// Tables of the old store that could not be read to their end.
    pub cut_short: Vec<&'static str>,
    /// Registered repositories kept; those whose reflogs are read again have a git dir.
    pub repos: Vec<RepoInfo>,
    /// Registered repositories dropped (their git dir is gone or holds another repository).
    pub repos_dropped: usize,
    pub dht_records: usize,
    /// Keys of ours (`kv ls`), and how many of them are to be fetched back from peers.
    pub own_keys: usize,
    pub to_fetch: usize,
    pub outbox: usize,
    pub nostr: usize,
    pub peers: usize,
}

/// Repairs the store of the data dir in `paths`: verifies it first and changes nothing if it is
/// healthy (unless `force`). The node must not run (the data dir's lock is taken for the time).
pub fn repair(paths: &Paths, force: bool) -> Result<Outcome, RepairError> {
    let _lock = super::take_lock(&paths.data_lock(), &paths.data_dir)?;
    let path = paths.store();
    if !path.exists() {
        return Ok(Outcome::NoStore);
    }
    // Found damaged before (and the same file): redb may since have brought it back to an
    // earlier state that verifies, which is not what the store held.
    let reason = match crate::store::damage_report(&path) {
        // "the store P is damaged (REASON): move it aside ...": the reason is what to show.
        Some(said) => said
            .split_once(" is damaged (")
            .and_then(|(_, rest)| rest.rsplit_once("): "))
            .map_or(said.clone(), |(reason, _)| reason.to_string()),
        None => match Store::verify(&path) {
            Ok(()) if !force => return Ok(Outcome::Healthy),
            Ok(()) => "rebuilt on request (--force)".to_string(),
            Err(StoreError::Damaged { reason, .. }) => reason,
            Err(e) => return Err(e.into()),
        },
    };
    // The new store is built beside the old one and only then put in its place: a repair that
    // fails half-way (a full disk) leaves the damaged store where it was, to repair again.
    let old = salvage(&path, &path);
    let identity = Identity::load_or_create(&paths.data_dir)?;
    let building = crate::store::beside(&path, "new");
    let _ = std::fs::remove_file(&building);
    let moved_to = crate::store::beside(&path, &format!("damaged-{}", crate::clock::unix_now()));
    let mut report = Report { reason, moved_to: moved_to.clone(), ..Report::default() };
    let built = Store::open(&building).and_then(|store| {
        let result = rebuild(&store, old, &identity, &mut report).and_then(|()| store.sync());
        store.close();
        result
    });
    let _ = std::fs::remove_file(crate::store::beside(&building, "clean"));
    if let Err(e) = built {
        let _ = std::fs::remove_file(&building);
        return Err(e.into());
    }
    let moved = std::fs::rename(&path, &moved_to).and_then(|()| std::fs::rename(&building, &path));
    moved.map_err(|source| RepairError::Move { path: path.clone(), source })?;
    crate::store::clear_damage(&path);
    Ok(Outcome::Repaired(report))
}

fn rebuild(store: &Store, old: Salvaged, identity: &Identity, report: &mut Report) -> Result<(), StoreError> {
    report.unopenable = old.unopenable;
    report.cut_short = old.cut_short;
    let me = hex::encode(identity.libp2p.public().encode_protobuf());
    let since = crate::clock::unix_now() as i64 - REREAD.as_secs() as i64;

    for (id, name, dir) in old.repos {
        let Ok(id) = RepoId::try_from(id.as_str()) else { continue };
        let repo = match dir {
            // Known from an announcement only: nothing to check it against, nothing to read.
            None => RepoInfo { id, name, git_dir: None },
            Some(dir) => match crate::git::open(dir.as_path()) {
                Ok(ctx) if ctx.repo_id == id => {
                    store.set_reflog_pos(&ctx.reflog_key(), ctx.head_reflog_offset_since(since), false)?;
                    ctx.info()
                }
                _ => {
                    report.repos_dropped += 1;
                    continue;
                }
            },
        };
        store.add_repo(&repo)?;
        report.repos.push(repo);
    }

    // Records whose every entry verifies; ours among them make our key list.
    let mut restored: HashSet<(RepoId, String)> = HashSet::new();
    for (key, stored) in old.dht {
        let Ok(record) = Record::decode_any(&stored.value, &key) else { continue };
        store.dht_put(&key, &stored)?;
        report.dht_records += 1;
        if let Some(entry) = record.entries.iter().find(|e| e.author == me) {
            store.kv_own(&record.repo, &record.key, entry.ts, false)?;
            restored.insert((record.repo.clone(), record.key.clone()));
        }
    }
    report.own_keys = restored.len();
    // Keys of ours named without their record, and each repository's refs index: fetched back.
    let mut fetch: Vec<(RepoId, String)> = Vec::new();
    for (repo, key, ts) in old.kv_own {
        let Ok(repo) = RepoId::try_from(repo.as_str()) else { continue };
        if validate_key(&key).is_err() || restored.contains(&(repo.clone(), key.clone())) {
            continue;
        }
        store.kv_own(&repo, &key, ts.min(crate::clock::unix_now_ms()), false)?;
        report.own_keys += 1;
        restored.insert((repo.clone(), key.clone()));
        fetch.push((repo, key));
    }
    for repo in &report.repos {
        if !restored.contains(&(repo.id.clone(), REFS_KEY.to_string())) {
            fetch.push((repo.id.clone(), REFS_KEY.to_string()));
        }
    }
    report.to_fetch = fetch.len();
    store.restore_add(&fetch)?;

    for entry in old.outbox {
        if entry.envelope.verify().is_ok() && entry.envelope.repo == entry.repo.id {
            store.outbox_push_with(&entry, false)?;
            report.outbox += 1;
        }
    }
    for pending in old.nostr_pending {
        if crate::bridge::verify_pending(&pending, &identity.nostr) {
            store.nostr_queue(&pending, None, false)?;
            report.nostr += 1;
        }
    }
    for (peer, known) in old.known_peers {
        let addrs: Vec<String> = known.addrs.into_iter().filter(|a| a.parse::<libp2p::Multiaddr>().is_ok()).collect();
        if peer.parse::<libp2p::PeerId>().is_ok() && !addrs.is_empty() {
            store.remember_peer(&peer, &addrs, known.name.as_deref())?;
            report.peers += 1;
        }
    }
    Ok(())
}
