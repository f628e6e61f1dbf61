//! The store's handle on its redb file, and the file's health. Every read and write goes through
//! [`Handle::run`], which turns what redb reports into one of three states besides `Ok`:
//!
//! - **Full**: a write failed for lack of space (ENOSPC, EDQUOT). redb then refuses every later
//!   write ("Previous I/O error") until the database is reopened, but reads go on. Writes fail at
//!   once with [`StoreError::Full`] (naming the data dir); [`Handle::reopen`] closes and reopens
//!   the file once there is space again (redb's recovery rolls back to the last durable commit).
//! - **Failing**: the same after another I/O error (EIO, say); reopened the same way.
//! - **Damaged**: redb found the file corrupted, or panicked reading it (it trusts a file it
//!   closed cleanly, and garbage pages make it index out of bounds). Nothing is read or written
//!   any more: a partial or garbled read must never pass for the store's content.
//!
//! The `Database` sits in a slot that a reopen swaps: the store is cloned into several threads
//! (history, sync, Kademlia's record store, the Nostr bridge) and each operation takes the
//! current database from the slot, so a reopen reaches all of them.
//!
//! A file is trusted without being read through only if it is the one this code closed cleanly:
//! the clean close verifies the file and records its size, times and inode next to it
//! ([`CLEAN`]); any other open (after a crash, or when the file was changed outside the node)
//! verifies the checksum of every page first (redb's integrity check: 1-2 ms per MiB here), so
//! damage is found before anything is read, not halfway through a listing.

use std::cell::{Cell, RefCell};
use std::os::unix::fs::MetadataExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, DatabaseError};
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::clock::unix_now_ms;

/// Written next to the store by a clean close: the file as it was then ([`Fingerprint`]).
pub const CLEAN: &str = "clean";
/// Written next to the store when it is found damaged: the one-line error, then the file's
/// fingerprint (a replaced file is not damaged any more).
pub const DAMAGED: &str = "damaged";

/// A reopen is tried once at least this much space is free (the file grows by whole regions,
/// and the recovery itself commits).
const REOPEN_FREE: u64 = 256 * 1024;
/// Between reopen attempts at least this long (doubling from one second).
const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a reopen waits for operations under way on other threads to let go of the file.
const REOPEN_WAIT: Duration = Duration::from_secs(2);

/// What the store can do right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// A write failed: no space on the disk. Reads go on; writes fail until reopened.
    Full {
        since: u64,
    },
    /// A write failed with another I/O error; retried by reopening.
    Failing {
        reason: String,
        since: u64,
    },
    /// The file is damaged: nothing is read or written.
    Damaged {
        reason: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

pub struct Handle {
    path: PathBuf,
    slot: RwLock<Option<Arc<Database>>>,
    health: Mutex<Health>,
    /// Incremented by every successful reopen, so that holders of copies of the store's
    /// content (the node's outbox in memory) know to read it again.
    generation: AtomicU64,
    retry: Mutex<Retry>,
}

#[derive(Default)]
struct Retry {
    next: Option<Instant>,
    backoff: Duration,
}

impl Handle {
    /// Opens the file at `path` (created if missing), verifying it first unless it is the file
    /// this code closed cleanly last time.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        install_quiet_panics();
        let trusted = take_clean_mark(path);
        let len = std::fs::metadata(path).map(|m| m.len()).ok();
        if len == Some(0) {
            // redb would start a new store in it; but the file redb created was never empty:
            // this one was emptied (truncated), and what it held must not pass for nothing.
            return Err(StoreError::Damaged { path: path.display().to_string(), reason: "the file is empty".into() });
        }
        let verify = !trusted && len.is_some();
        if verify {
            tracing::info!(store = %path.display(), "verifying the store (not closed cleanly by this node)");
        }
        let database = open_database(path, verify)?;
        Ok(Self {
            path: path.to_path_buf(),
            slot: RwLock::new(Some(Arc::new(database))),
            health: Mutex::new(Health::Ok),
            generation: AtomicU64::new(0),
            retry: Mutex::new(Retry::default()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn health(&self) -> Health {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Runs `f` on the current database. A panic inside it (redb reading garbage) is caught and
    /// makes the store damaged; redb's errors change the store's health as the module says.
    pub fn run<T>(&self, access: Access, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let database = self.current(access)?;
        let outcome = quietly(|| f(&database));
        drop(database);
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.classify(e, access)),
            Err(panic) => Err(self.set_damaged(format!("redb failed reading it: {panic}"))),
        }
    }

    /// The database to use now, or the reason there is none for this access.
    fn current(&self, access: Access) -> Result<Arc<Database>, StoreError> {
        match self.health() {
            Health::Ok => {}
            Health::Damaged { reason } => return Err(self.damaged_error(reason)),
            health if access == Access::Write => return Err(self.error_of(&health)),
            _ => {}
        }
        let slot = self.slot.read().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Some(database) => Ok(database.clone()),
            None => Err(self.error_of(&self.health())),
        }
    }

    /// The error an operation reports while the store is in `health`.
    pub fn error_of(&self, health: &Health) -> StoreError {
        match health {
            Health::Ok => StoreError::Closed { path: self.path.display().to_string() },
            Health::Full { .. } => StoreError::Full { dir: self.dir() },
            Health::Failing { reason, .. } => {
                StoreError::Unwritable { path: self.path.display().to_string(), reason: reason.clone() }
            }
            Health::Damaged { reason } => self.damaged_error(reason.clone()),
        }
    }

    fn damaged_error(&self, reason: String) -> StoreError {
        StoreError::Damaged { path: self.path.display().to_string(), reason }
    }

    fn dir(&self) -> String {
        self.path.parent().unwrap_or(Path::new(".")).display().to_string()
    }

    /// What a failed operation means for the store's health; the error to report.
    fn classify(&self, e: StoreError, access: Access) -> StoreError {
        let err = match &e {
            StoreError::Unreadable(table) => {
                return self.set_damaged(format!("an unreadable record in its {table} table"))
            }
            StoreError::Db(err) => err,
            _ => return e,
        };
        match err {
            redb::Error::Io(io) if is_full(io) => self.set_unwritable(Health::Full { since: unix_now_ms() }),
            redb::Error::Io(io) if access == Access::Write => {
                self.set_unwritable(Health::Failing { reason: io.to_string(), since: unix_now_ms() })
            }
            redb::Error::PreviousIo => {
                self.set_unwritable(Health::Failing { reason: "an earlier write failed".into(), since: unix_now_ms() })
            }
            redb::Error::Corrupted(reason) => self.set_damaged(reason.clone()),
            redb::Error::LockPoisoned(_) => self.set_damaged("redb failed reading it".into()),
            redb::Error::DatabaseClosed => self.error_of(&self.health()),
            _ => e,
        }
    }

    /// Writes cannot go on: `health` unless the store is in a worse (or the same) state already.
    fn set_unwritable(&self, health: Health) -> StoreError {
        let mut current = self.health.lock().unwrap_or_else(|p| p.into_inner());
        // A full disk is the better explanation of a write refused after an earlier failure.
        let fuller = matches!((&*current, &health), (Health::Failing { .. }, Health::Full { .. }));
        if *current == Health::Ok || fuller {
            match &health {
                Health::Full { .. } => {
                    tracing::error!(dir = %self.dir(), "the disk is full: nothing more is stored until there is space")
                }
                other => tracing::error!(store = %self.path.display(), health = ?other, "cannot write the store"),
            }
            *current = health;
        }
        self.error_of(&current)
    }

    /// The file is damaged (for good: until it is repaired, nothing is read from it).
    pub fn set_damaged(&self, reason: String) -> StoreError {
        let reason = reason.replace(['\n', '\r'], " ");
        let mut current = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(*current, Health::Damaged { .. }) {
            tracing::error!(store = %self.path.display(), %reason, "the store is damaged");
            *current = Health::Damaged { reason };
        }
        self.error_of(&current)
    }

    /// Reopens the file after writes failed, once that may work (space is free again; not
    /// sooner than the backoff). Returns whether the store is writable again.
    pub fn reopen(&self) -> bool {
        let health = self.health();
        if !matches!(health, Health::Full { .. } | Health::Failing { .. }) {
            return false;
        }
        if matches!(health, Health::Full { .. }) && free_space(&self.path).is_some_and(|free| free < REOPEN_FREE) {
            return false;
        }
        {
            let mut retry = self.retry.lock().unwrap_or_else(|p| p.into_inner());
            if retry.next.is_some_and(|at| Instant::now() < at) {
                return false;
            }
            retry.backoff = (retry.backoff * 2).clamp(Duration::from_secs(1), REOPEN_BACKOFF_MAX);
            retry.next = Some(Instant::now() + retry.backoff);
        }
        // Nobody takes the database from the slot while it is empty; wait for those who have it.
        let mut slot = self.slot.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = slot.take() {
            let deadline = Instant::now() + REOPEN_WAIT;
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if Arc::strong_count(&old) > 1 {
                tracing::debug!("the store is still in use; reopening later");
                *slot = Some(old);
                return false;
            }
            // Closing reports the same failure again; redb's recovery at the open deals with it.
            drop(old);
        }
        match quietly(|| open_database(&self.path, false)) {
            Ok(Ok(database)) => {
                *slot = Some(Arc::new(database));
                *self.health.lock().unwrap_or_else(|p| p.into_inner()) = Health::Ok;
                *self.retry.lock().unwrap_or_else(|p| p.into_inner()) = Retry::default();
                self.generation.fetch_add(1, Ordering::AcqRel);
                tracing::info!(store = %self.path.display(), "the store is writable again");
                true
            }
            Ok(Err(StoreError::Full { .. })) => {
                tracing::debug!("still no space to reopen the store");
                false
            }
            Ok(Err(StoreError::Damaged { reason, .. })) => {
                self.set_damaged(reason);
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot reopen the store; retrying later");
                false
            }
            Err(panic) => {
                self.set_damaged(format!("redb failed reading it: {panic}"));
                false
            }
        }
    }

    /// Closes the file; if all was well, and the file verifies page by page now, records it as
    /// cleanly closed so that the next open trusts it without reading it through (the cost of
    /// the check moves from the next start to this stop). Waits (bounded) for operations under
    /// way.
    pub fn close(&self) {
        let mut slot = self.slot.write().unwrap_or_else(|p| p.into_inner());
        let Some(database) = slot.take() else { return };
        let deadline = Instant::now() + REOPEN_WAIT;
        while Arc::strong_count(&database) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let Ok(mut database) = Arc::try_unwrap(database) else {
            tracing::warn!("the store is still in use at shutdown; the next start verifies it");
            return;
        };
        let mut verified = false;
        if self.health() == Health::Ok {
            // Verified now, so that damage written into the file while the node ran is not
            // trusted at the next start either.
            match quietly(|| database.check_integrity()) {
                Ok(Ok(true)) => verified = true,
                Ok(Ok(false)) => {
                    self.set_damaged(ROLLED_BACK.into());
                }
                Ok(Err(e)) => match redb::Error::from(e) {
                    redb::Error::Corrupted(reason) => {
                        self.set_damaged(reason);
                    }
                    other => tracing::debug!(error = %other, "the store was not verified; the next start does it"),
                },
                Err(panic) => {
                    self.set_damaged(format!("redb failed reading it: {panic}"));
                }
            }
        }
        let closed = quietly(|| database.close());
        match (closed, self.health()) {
            (Ok(Ok(())), Health::Ok) if verified => {
                if let Err(e) = write_clean_mark(&self.path) {
                    tracing::debug!(error = %e, "cannot record the clean close; the next start verifies the store");
                }
            }
            (Ok(Err(e)), _) => tracing::warn!(error = %e, "the store did not close cleanly"),
            _ => {}
        }
        // Found now (redb may have changed the file going back): said at the next start too.
        if let Health::Damaged { reason } = self.health() {
            record_damage(&self.path, &self.damaged_error(reason).to_string());
        }
    }
}

/// What a verification found wrong, in words for the user.
const ROLLED_BACK: &str = "some pages did not verify: redb could only recover an earlier state of it";

/// Opens (creating) the database; with `verify`, checks every page's checksum (unless redb's own
/// recovery just did, after a crash). What goes wrong as a [`StoreError`] (a damaged file, a
/// full disk, another node). redb's check repairs what it can by going back to an earlier
/// commit: that is damage too (what was stored since is gone), not a clean file.
fn open_database(path: &Path, verify: bool) -> Result<Database, StoreError> {
    let recovered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = recovered.clone();
    let opened = quietly(|| {
        let mut builder = Database::builder();
        builder.set_repair_callback(move |_| flag.store(true, Ordering::Relaxed));
        let mut database = builder.create(path)?;
        if verify && !recovered.load(Ordering::Relaxed) && !database.check_integrity()? {
            return Err(DatabaseError::Storage(redb::StorageError::Corrupted(ROLLED_BACK.into())));
        }
        Ok(database)
    });
    let damaged = |reason: String| StoreError::Damaged {
        path: path.display().to_string(),
        reason: reason.replace(['\n', '\r'], " "),
    };
    match opened {
        Ok(Ok(database)) => Ok(database),
        Ok(Err(DatabaseError::DatabaseAlreadyOpen)) => Err(StoreError::Busy { path: path.display().to_string() }),
        Ok(Err(e)) => {
            let e: redb::Error = e.into();
            match e {
                redb::Error::Io(io) if is_full(&io) => {
                    Err(StoreError::Full { dir: path.parent().unwrap_or(Path::new(".")).display().to_string() })
                }
                // redb's own words for a file that is not (or no longer) one of its databases:
                // InvalidData ("magic number mismatch"), or too short to hold its header.
                redb::Error::Io(io)
                    if matches!(io.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof) =>
                {
                    Err(damaged(io.to_string()))
                }
                redb::Error::Corrupted(reason) => Err(damaged(reason)),
                redb::Error::LockPoisoned(_) => Err(damaged("redb failed reading it".into())),
                other => Err(StoreError::Db(other)),
            }
        }
        Err(panic) => Err(damaged(format!("redb failed reading it: {panic}"))),
    }
}

fn is_full(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
        || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Free bytes for us on the file system holding `path`.
fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = path.parent()?;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; `c` is a valid NUL-terminated path.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
}

/// What identifies the file as a clean close left it: any write since (ours after a crash, or
/// anyone's) changes its ctime, which no ordinary means sets back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
    dev: u64,
}

impl Fingerprint {
    pub fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            ino: m.ino(),
            dev: m.dev(),
        })
    }
}

/// `store.redb` → `store.redb.<what>`.
pub fn beside(path: &Path, what: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(what);
    path.with_file_name(name)
}

/// Whether the file is the one our last clean close left; the mark is used once.
fn take_clean_mark(path: &Path) -> bool {
    let mark = beside(path, CLEAN);
    let recorded = std::fs::read(&mark).ok().and_then(|b| serde_json::from_slice::<Fingerprint>(&b).ok());
    let _ = std::fs::remove_file(&mark);
    recorded.is_some_and(|r| Fingerprint::of(path).as_ref() == Some(&r))
}

fn write_clean_mark(path: &Path) -> std::io::Result<()> {
    let fingerprint = Fingerprint::of(path).ok_or_else(|| std::io::Error::other("the store is gone"))?;
    let bytes = serde_json::to_vec(&fingerprint).expect("plain structs serialise");
    write_atomically(&beside(path, CLEAN), &bytes)
}

/// Writes `bytes` to a temporary file and renames it to `to`, so that readers never see half.
pub fn write_atomically(to: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = beside(to, "tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, to)
}

/// Records that the store at `path` is damaged, with the one-line error commands show; clients
/// then report it instead of starting a node that would only fail the same way.
pub fn record_damage(path: &Path, message: &str) {
    let fingerprint = Fingerprint::of(path).map(|f| serde_json::to_string(&f).expect("plain structs serialise"));
    let text = format!("{}\n{}\n", message.replace(['\n', '\r'], " "), fingerprint.unwrap_or_default());
    if let Err(e) = write_atomically(&beside(path, DAMAGED), text.as_bytes()) {
        tracing::warn!(error = %e, "cannot record that the store is damaged");
    }
}

/// The recorded one-line error if the store at `path` was found damaged and is still the same
/// file (one put back in its place is not known to be damaged).
pub fn damage_report(path: &Path) -> Option<String> {
    let mark = beside(path, DAMAGED);
    let text = std::fs::read_to_string(&mark).ok()?;
    let mut lines = text.lines();
    let message = lines.next()?.to_string();
    let recorded: Option<Fingerprint> = lines.next().and_then(|l| serde_json::from_str(l).ok());
    if recorded == Fingerprint::of(path) {
        Some(message)
    } else {
        let _ = std::fs::remove_file(&mark);
        None
    }
}

pub fn clear_damage(path: &Path) {
    let _ = std::fs::remove_file(beside(path, DAMAGED));
}

thread_local! {
    /// Set while this thread runs store code whose panics are caught and reported as damage.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    /// The message of the last such panic.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Panics while [`quietly`] runs are not printed (the caller reports them in one line); every
/// other panic goes to the hook that was installed before.
fn install_quiet_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
                tracing::debug!(%message, %at, "redb panicked");
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(message));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, catching a panic: Err(its message).
pub fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_quiet_panics();
    let outer = QUIET.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(outer));
    result.map_err(|_| LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| "a panic".into()))
}
