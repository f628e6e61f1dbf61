//! The spool: what the post-commit hook leaves for the node. While the node runs, the hook's
//! fast path only leaves a [`Note`] (shell builtins, no fork); while it is down, the hook signs
//! the announcement itself and spools it whole.
//!
//! One file per announcement (`<data dir>/spool/<time>-<pid>-<n>.json`), written to a temporary
//! name, fsync'd, renamed into place and the directory fsync'd: a file either is complete or does
//! not exist, even across a crash. The node moves spooled entries into its outbox (durably) and
//! only then deletes the files, so an entry is never lost and at worst queued twice, which the
//! receivers' de-duplication absorbs.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::proto::outbox::OutboxEntry;

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
    let written = fs::File::create(&tmp).and_then(|mut file| {
        file.write_all(&serde_json::to_vec(entry).expect("outbox entries always serialise"))?;
        file.sync_all()
    });
    if let Err(e) = written {
        // A full disk leaves an empty file behind: not for the node to read.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, &path)?;
    fs::File::open(&dir)?.sync_all()?;
    Ok(path)
}

/// What the hook's fast path leaves (`hook-<pid>.note`, written with shell builtins while the
/// node runs): "this repository has a new commit". The node reads which from the reflog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The hook's working directory (the work tree's root, or the git dir of a bare repository).
    pub cwd: PathBuf,
    /// `GIT_DIR` as git gave it to the hook, if it did (may be relative to `cwd`).
    pub git_dir: Option<PathBuf>,
    /// The hook's parent (git), whose exit the node waits for (version 2 notes).
    pub waiter: Option<u32>,
}

impl Note {
    /// Where to open the repository.
    pub fn repo_dir(&self) -> PathBuf {
        match &self.git_dir {
            Some(g) if g.is_absolute() => g.clone(),
            Some(g) => self.cwd.join(g),
            None => self.cwd.clone(),
        }
    }

    /// `git-p2p-note 2`, the directory, `GIT_DIR` (maybe empty), the hook's parent pid, `end`
    /// (version 1, of earlier hooks, has no pid; version 3, written by git-p2p itself, has the
    /// paths in hex); None while incomplete. Paths are bytes, as the hook's shell wrote them (a
    /// path need not be UTF-8; one with a newline never comes as version 2: the hook takes its
    /// slow path for it).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        let pid = |pid: &[u8]| std::str::from_utf8(pid).ok().and_then(|p| p.parse().ok());
        let (cwd, git_dir, waiter) = match lines.as_slice() {
            [b"git-p2p-note 1", cwd, git_dir, b"end", b""] => (cwd.to_vec(), git_dir.to_vec(), None),
            [b"git-p2p-note 2", cwd, git_dir, p, b"end", b""] => (cwd.to_vec(), git_dir.to_vec(), pid(p)),
            [b"git-p2p-note 3", cwd, git_dir, p, b"end", b""] => {
                (hex::decode(cwd).ok()?, hex::decode(git_dir).ok()?, pid(p))
            }
            _ => return None,
        };
        let path = |bytes: Vec<u8>| PathBuf::from(OsString::from_vec(bytes));
        (cwd.starts_with(b"/") && !cwd.contains(&0) && !git_dir.contains(&0)).then(|| Self {
            cwd: path(cwd),
            git_dir: (!git_dir.is_empty()).then(|| path(git_dir)),
            waiter,
        })
    }
}

/// Leaves a note like the hook's fast path does (`hook-<pid>.note` in `notes_dir`), written in
/// place: the node reads it once complete. Version 3: the paths in hex, so that any path (a
/// newline in it included) comes back byte for byte.
pub fn write_note(notes_dir: &Path, note: &Note) -> io::Result<PathBuf> {
    crate::paths::ensure_private_dir(notes_dir).map_err(io::Error::other)?;
    let path = notes_dir.join(format!("hook-{}.note", std::process::id()));
    let hex = |p: &Path| hex::encode(p.as_os_str().as_bytes());
    let git_dir = note.git_dir.as_deref().map(hex).unwrap_or_default();
    let waiter = note.waiter.map(|p| p.to_string()).unwrap_or_default();
    fs::write(&path, format!("git-p2p-note 3\n{}\n{git_dir}\n{waiter}\nend\n", hex(&note.cwd)))?;
    Ok(path)
}

/// One spooled item.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A whole signed announcement (the hook's slow path: the node was down).
    Entry(OutboxEntry),
    /// A note of the fast path.
    Note(Note),
}

/// A note the hook left; the node renames it to [`WAITING`] while it waits for the hook's git
/// process to exit (the hook's fast path only looks for notes nobody took).
pub const NOTE: &str = "note";
pub const WAITING: &str = "wait";

/// A note this old that still does not parse was not being written: it is set aside.
const NOTE_GRACE: std::time::Duration = std::time::Duration::from_secs(60);
/// An empty note this old is one the hook could not write (a full disk; the hook then took its
/// slow path): it is removed, so that later hooks take the fast path again.
const EMPTY_NOTE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Files of `dir` with one of `extensions`, by name.
fn files(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| extensions.iter().any(|e| x == *e)))
        .collect();
    paths.sort();
    paths
}

/// Spooled items (the spool's by age), then the notes in `notes_dir`. Notes are also read from
/// the spool, where hooks installed by earlier versions leave them. Unreadable files are renamed
/// `*.bad` and reported, never deleted; a note still being written is left for the next look.
pub fn read(data_dir: &Path, notes_dir: &Path) -> Vec<(PathBuf, Item)> {
    let mut paths = files(&dir(data_dir), &["json", "note"]);
    paths.extend(files(notes_dir, &[NOTE, WAITING]));
    let mut out = Vec::new();
    for path in paths {
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read a spool file");
                continue;
            }
        };
        if path.extension().is_some_and(|x| x == NOTE || x == WAITING) {
            match Note::parse(&bytes) {
                Some(note) => out.push((path, Item::Note(note))),
                None => {
                    let age = fs::metadata(&path).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
                    if bytes.is_empty() && age.is_some_and(|a| a > EMPTY_NOTE_GRACE) {
                        tracing::debug!(path = %path.display(), "empty hook note removed");
                        let _ = fs::remove_file(&path);
                    } else if age.is_some_and(|a| a > NOTE_GRACE) {
                        tracing::warn!(path = %path.display(), "unreadable hook note set aside");
                        let _ = fs::rename(&path, path.with_extension("bad"));
                    }
                }
            }
            continue;
        }
        match serde_json::from_slice(&bytes) {
            Ok(entry) => out.push((path, Item::Entry(entry))),
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
    use crate::proto::envelope::Envelope;
    use crate::proto::repo::RepoInfo;

    #[test]
    fn spooled_entries_come_back_in_order_and_garbage_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let key = libp2p::identity::Keypair::generate_ed25519();
        let repo = crate::proto::repo::RepoId::try_from("1".repeat(40)).unwrap();
        let entries: Vec<OutboxEntry> = (0..3)
            .map(|i| OutboxEntry {
                repo: RepoInfo { id: repo.clone(), name: "n".into(), git_dir: None },
                envelope: Envelope::sign(&key, "announce", &repo, i, "{}".into()),
                thread: None,
            })
            .collect();
        for e in &entries {
            write(dir.path(), e).unwrap();
        }
        fs::write(super::dir(dir.path()).join("zzz.json"), b"{torn").unwrap();
        let read_back: Vec<Item> = read(dir.path(), &dir.path().join("notes")).into_iter().map(|(_, e)| e).collect();
        assert_eq!(read_back, entries.into_iter().map(Item::Entry).collect::<Vec<_>>());
        assert!(super::dir(dir.path()).join("zzz.bad").exists(), "garbage kept aside, not deleted");
    }

    #[test]
    fn notes_parse_only_when_complete() {
        let note = Note::parse(b"git-p2p-note 1\n/home/a/proj\n.git\nend\n").unwrap();
        assert_eq!(note.repo_dir(), PathBuf::from("/home/a/proj/.git"));
        let bare = Note::parse(b"git-p2p-note 1\n/srv/proj.git\n\nend\n").unwrap();
        assert_eq!(bare.repo_dir(), PathBuf::from("/srv/proj.git"));
        let abs = Note::parse(b"git-p2p-note 1\n/w\n/elsewhere/.git\nend\n").unwrap();
        assert_eq!(abs.repo_dir(), PathBuf::from("/elsewhere/.git"));
        let v2 = Note::parse(b"git-p2p-note 2\n/w\n\n4242\nend\n").unwrap();
        assert_eq!((v2.repo_dir(), v2.waiter), (PathBuf::from("/w"), Some(4242)));
        assert_eq!(Note::parse(b"git-p2p-note 2\n/w\n\n\nend\n").unwrap().waiter, None);
        for torn in [
            "",
            "git-p2p-note 1\n/w\n",
            "git-p2p-note 1\n/w\n\nen",
            "git-p2p-note 2\n/w\n\nend\n",
            "git-p2p-note 3\n/w\n\n1\nend\n",
            "git-p2p-note 1\nrel\n\nend\n",
        ] {
            assert_eq!(Note::parse(torn.as_bytes()), None, "{torn:?}");
        }
        // Paths are bytes: not UTF-8 from the hook's shell; anything, a newline too, from ours.
        let bytes = |b: &[u8]| PathBuf::from(OsString::from_vec(b.to_vec()));
        let raw = Note::parse(b"git-p2p-note 2\n/w/caf\xe9\n\n7\nend\n").unwrap();
        assert_eq!(raw.cwd, bytes(b"/w/caf\xe9"));
        let dir = tempfile::tempdir().unwrap();
        let odd = Note { cwd: bytes(b"/w/a\nb\xff"), git_dir: Some(bytes(b"../x\ny")), waiter: Some(9) };
        let written = write_note(dir.path(), &odd).unwrap();
        assert_eq!(Note::parse(&fs::read(written).unwrap()), Some(odd));
        // A note being written is left in place; one that is complete is read, from the notes
        // dir and from the spool (where hooks of earlier versions leave them).
        let dir = tempfile::tempdir().unwrap();
        let (spool, notes) = (super::dir(dir.path()), dir.path().join("run/notes"));
        fs::create_dir_all(&spool).unwrap();
        fs::create_dir_all(&notes).unwrap();
        fs::write(notes.join("hook-1.note"), "git-p2p-note 1\n/w\n").unwrap();
        fs::write(notes.join("hook-2.note"), "git-p2p-note 1\n/w\n\nend\n").unwrap();
        fs::write(spool.join("hook-3.note"), "git-p2p-note 1\n/old\n\nend\n").unwrap();
        let items: Vec<Item> = read(dir.path(), &notes).into_iter().map(|(_, i)| i).collect();
        let note = |cwd: &str| Item::Note(Note { cwd: cwd.into(), git_dir: None, waiter: None });
        assert_eq!(items, [note("/old"), note("/w")]);
        assert!(notes.join("hook-1.note").exists());
    }
}
