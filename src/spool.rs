//! The spool: announcements written by the post-commit hook while the node is down.
//!
//! One file per announcement (`<data dir>/spool/<time>-<pid>-<n>.json`), written to a temporary
//! name, fsync'd, renamed into place and the directory fsync'd: a file either is complete or does
//! not exist, even across a crash. The node moves spooled entries into its outbox (durably) and
//! only then deletes the files, so an entry is never lost and at worst queued twice, which the
//! receivers' de-duplication absorbs.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::store::OutboxEntry;

pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("spool")
}

/// Writes one entry durably.
pub fn write(data_dir: &Path, entry: &OutboxEntry) -> io::Result<PathBuf> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = dir(data_dir);
    crate::paths::ensure_private_dir(&dir).map_err(io::Error::other)?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("{nanos:020}-{}-{n}", std::process::id());
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(format!("{name}.json"));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(entry).expect("outbox entries always serialise"))?;
    file.sync_all()?;
    fs::rename(&tmp, &path)?;
    fs::File::open(&dir)?.sync_all()?;
    Ok(path)
}

/// Spooled entries, oldest first. Unreadable files are renamed `*.bad` and reported, never
/// deleted.
pub fn read(data_dir: &Path) -> Vec<(PathBuf, OutboxEntry)> {
    let Ok(entries) = fs::read_dir(dir(data_dir)) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        match fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(entry) => out.push((path, entry)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable spool file set aside");
                let _ = fs::rename(&path, path.with_extension("bad"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto::RepoInfo;
    use crate::proto::envelope::Envelope;

    #[test]
    fn spooled_entries_come_back_in_order_and_garbage_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let key = libp2p::identity::Keypair::generate_ed25519();
        let entries: Vec<OutboxEntry> = (0..3)
            .map(|i| OutboxEntry {
                repo: RepoInfo { id: "r".into(), name: "n".into(), git_dir: None },
                envelope: Envelope::sign(&key, "announce", "r", i, "{}".into()),
                thread: None,
            })
            .collect();
        for e in &entries {
            write(dir.path(), e).unwrap();
        }
        fs::write(super::dir(dir.path()).join("zzz.json"), b"{torn").unwrap();
        let read_back: Vec<OutboxEntry> = read(dir.path()).into_iter().map(|(_, e)| e).collect();
        assert_eq!(read_back, entries);
        assert!(super::dir(dir.path()).join("zzz.bad").exists(), "garbage kept aside, not deleted");
    }
}
