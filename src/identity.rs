//! The user's keys: an ed25519 key for libp2p (PeerId) and a secp256k1 key for Nostr (npub).
//!
//! Both are generated randomly once, on first use, and stored in the data dir with mode 0600.
//! They are never derived from public data and never logged. Creation is race-free: a key is
//! written to a temporary file and hard-linked into place, so two processes starting at once
//! end up with the same key (the loser reads the winner's file).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;
use libp2p::PeerId;
use nostr::nips::nip19::{FromBech32, ToBech32};

const LIBP2P_KEY_FILE: &str = "libp2p.key";
const NOSTR_KEY_FILE: &str = "nostr.key";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot {action} key file {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    #[error("key file {} is corrupt ({reason}); move it away to create a new identity", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("key file {} is readable by others (mode {mode:o}); run: chmod 600 {}", path.display(), path.display())]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("not a valid Nostr secret key (expected nsec1... or 64 hex digits)")]
    BadNsec,
}

/// The node's keys. `Debug` is implemented by hand so a secret never reaches a log line.
#[derive(Clone)]
pub struct Identity {
    pub libp2p: Keypair,
    pub nostr: nostr::Keys,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("peer_id", &self.peer_id()).field("npub", &self.npub()).finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads the keys from `dir`, creating any that do not exist yet.
    pub fn load_or_create(dir: &Path) -> Result<Self, IdentityError> {
        let libp2p_path = dir.join(LIBP2P_KEY_FILE);
        let bytes = load_or_create_file(&libp2p_path, || {
            Keypair::generate_ed25519().to_protobuf_encoding().expect("ed25519 keys always encode")
        })?;
        let libp2p = Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| IdentityError::Corrupt { path: libp2p_path.clone(), reason: e.to_string() })?;

        let nostr_path = dir.join(NOSTR_KEY_FILE);
        let bytes =
            load_or_create_file(&nostr_path, || nostr::Keys::generate().secret_key().to_secret_hex().into_bytes())?;
        let corrupt = |reason: String| IdentityError::Corrupt { path: nostr_path.clone(), reason };
        let text = std::str::from_utf8(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let nostr = nostr::Keys::parse(text.trim()).map_err(|e| corrupt(e.to_string()))?;
        Ok(Self { libp2p, nostr })
    }

    /// Only the libp2p key (creating it if needed): what signing an announcement needs, without
    /// the cost of setting up secp256k1.
    pub fn load_or_create_libp2p(dir: &Path) -> Result<Keypair, IdentityError> {
        let path = dir.join(LIBP2P_KEY_FILE);
        let bytes = load_or_create_file(&path, || {
            Keypair::generate_ed25519().to_protobuf_encoding().expect("ed25519 keys always encode")
        })?;
        Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| IdentityError::Corrupt { path: path.clone(), reason: e.to_string() })
    }

    /// Replaces the Nostr key with an imported one (`nsec1...` or hex), keeping the libp2p key.
    pub fn import_nostr(dir: &Path, secret: &str) -> Result<nostr::Keys, IdentityError> {
        let secret = secret.trim();
        let key = nostr::SecretKey::from_bech32(secret)
            .or_else(|_| nostr::SecretKey::from_hex(secret))
            .map_err(|_| IdentityError::BadNsec)?;
        let keys = nostr::Keys::new(key);
        let path = dir.join(NOSTR_KEY_FILE);
        let tmp = temp_path(&path);
        write_private(&tmp, keys.secret_key().to_secret_hex().as_bytes())?;
        fs::rename(&tmp, &path).map_err(|source| IdentityError::Io { action: "replace", path, source })?;
        Ok(keys)
    }

    pub fn peer_id(&self) -> PeerId {
        self.libp2p.public().to_peer_id()
    }

    pub fn npub(&self) -> String {
        self.nostr.public_key().to_bech32().expect("bech32 encoding of a public key cannot fail")
    }
}

/// A temporary name next to `path`, unique per process and call.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}.{n}", std::process::id()));
    path.with_file_name(name)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let io_err = |source| IdentityError::Io { action: "write", path: path.to_path_buf(), source };
    let mut file =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io_err)?;
    file.write_all(bytes).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

/// Reads `path`, or creates it with `make()` if it does not exist. Never overwrites a key.
fn load_or_create_file(path: &Path, make: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>, IdentityError> {
    match read_private(path) {
        Err(IdentityError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }
    let tmp = temp_path(path);
    write_private(&tmp, &make())?;
    // hard_link fails if the target exists: a racing process created it first, and we use theirs.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(IdentityError::Io { action: "create", path: path.to_path_buf(), source }),
    }
    read_private(path)
}

fn read_private(path: &Path) -> Result<Vec<u8>, IdentityError> {
    let io_err = |source| IdentityError::Io { action: "read", path: path.to_path_buf(), source };
    let meta = fs::metadata(path).map_err(io_err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::TooOpen { path: path.to_path_buf(), mode });
    }
    fs::read(path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_created_once_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path()).unwrap();
        let second = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(first.peer_id(), second.peer_id());
        assert_eq!(first.npub(), second.npub());
        assert!(first.npub().starts_with("npub1"));
        for file in [LIBP2P_KEY_FILE, NOSTR_KEY_FILE] {
            let mode = fs::metadata(dir.path().join(file)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{file}");
        }
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 2, "no temporary files left behind");
    }

    #[test]
    fn two_users_get_different_keys() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (Identity::load_or_create(a.path()).unwrap(), Identity::load_or_create(b.path()).unwrap());
        assert_ne!(a.peer_id(), b.peer_id());
        assert_ne!(a.npub(), b.npub());
    }

    #[test]
    fn racing_creators_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<_> = (0..8)
            .map(|_| {
                let path = dir.path().to_path_buf();
                std::thread::spawn(move || Identity::load_or_create(&path).unwrap().peer_id())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    }

    #[test]
    fn corrupt_or_world_readable_keys_are_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        Identity::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(LIBP2P_KEY_FILE);
        fs::write(&path, b"garbage").unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"garbage", "a corrupt key is never overwritten");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::TooOpen { .. }), "{err}");
    }

    #[test]
    fn import_nsec_replaces_only_the_nostr_key() {
        let dir = tempfile::tempdir().unwrap();
        let before = Identity::load_or_create(dir.path()).unwrap();
        let other = nostr::Keys::generate();
        let nsec = other.secret_key().to_bech32().unwrap();
        Identity::import_nostr(dir.path(), &nsec).unwrap();
        let after = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(after.peer_id(), before.peer_id());
        assert_eq!(after.nostr.public_key(), other.public_key());
        assert!(matches!(Identity::import_nostr(dir.path(), "nope"), Err(IdentityError::BadNsec)));
        let debug = format!("{after:?}");
        assert!(!debug.contains(&other.secret_key().to_secret_hex()), "secrets never in Debug");
    }
}
