//! Where git-p2p keeps its files: the data dir (keys, store, logs) and the control socket.
//!
//! The data dir is `$XDG_DATA_HOME/git-p2p` (default `~/.local/share/git-p2p`). The socket lives in
//! `$XDG_RUNTIME_DIR/git-p2p/` when that variable is set (a tmpfs that is wiped at logout), else in
//! the data dir. Both directories are private (0700): the socket gives full control of the node.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Longest path a Unix socket address can hold on Linux (`sun_path` is 108 bytes, NUL included).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("cannot find a home directory: set HOME or XDG_DATA_HOME")]
    NoHome,
    #[error("cannot create directory {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("socket path too long for a Unix socket ({} bytes, at most {MAX_SOCKET_PATH}): {}", path.as_os_str().len(), path.display())]
    SocketTooLong { path: PathBuf },
}

/// The set of paths one node uses. Built once from the environment, passed around by reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
}

impl Paths {
    /// Paths from the process environment (XDG base directory spec).
    pub fn from_env() -> Result<Self, PathError> {
        Self::from_vars(|name| std::env::var_os(name).filter(|v| !v.is_empty()))
    }

    /// Paths from an environment lookup function; pure, so tests need not touch the process env.
    pub fn from_vars(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<Self, PathError> {
        let data_home = match var("XDG_DATA_HOME").map(PathBuf::from).filter(|p| p.is_absolute()) {
            Some(dir) => dir,
            None => {
                let home = var("HOME").map(PathBuf::from).ok_or(PathError::NoHome)?;
                home.join(".local").join("share")
            }
        };
        let data_dir = data_home.join("git-p2p");
        let socket_dir = match var("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|p| p.is_absolute()) {
            Some(run) => run.join("git-p2p"),
            None => data_dir.clone(),
        };
        Ok(Self { data_dir, socket_dir })
    }

    pub fn socket(&self) -> PathBuf {
        self.socket_dir.join("control.sock")
    }
    /// Held (flock) by the running node for its whole life: one node per data dir.
    pub fn data_lock(&self) -> PathBuf {
        self.data_dir.join("node.lock")
    }
    /// Held by the running node: one node per socket, even if two data dirs share a runtime dir.
    pub fn socket_lock(&self) -> PathBuf {
        self.socket_dir.join("control.lock")
    }
    /// Taken by clients while they auto-start a node, so that racing clients start only one.
    pub fn start_lock(&self) -> PathBuf {
        self.socket_dir.join("start.lock")
    }
    pub fn store(&self) -> PathBuf {
        self.data_dir.join("store.redb")
    }
    /// Written by the node while its store takes no writes (a full disk, a damaged file): the
    /// one line the hook's fast path prints, since the node reads its note only after git exits.
    pub fn store_problem(&self) -> PathBuf {
        self.socket_dir.join("store-problem")
    }
    /// The node's mirror of a repository: a bare repository of what its authors published.
    pub fn mirror(&self, repo: &crate::proto::repo::RepoId) -> PathBuf {
        self.data_dir.join("mirrors").join(format!("{repo}.git"))
    }
    pub fn log_file(&self) -> PathBuf {
        self.data_dir.join("node.log")
    }
    /// Where the hook's fast path leaves its notes ("this repository has a new commit"), next to
    /// the socket: a note is only a wake-up, the reflog is the record, so a tmpfs runtime dir
    /// (wiped at logout) loses nothing, and creating a file there does not wait for the journal
    /// of a disk file system that git is fsyncing its refs on at that moment.
    pub fn notes_dir(&self) -> PathBuf {
        self.socket_dir.join("notes")
    }

    /// Creates the data and socket dirs (0700) if missing and checks the socket path fits.
    pub fn ensure(&self) -> Result<(), PathError> {
        ensure_private_dir(&self.data_dir)?;
        ensure_private_dir(&self.socket_dir)?;
        let socket = self.socket();
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(PathError::SocketTooLong { path: socket });
        }
        Ok(())
    }
}

/// Creates `dir` (and parents) with mode 0700, and tightens an existing one we own to 0700.
pub fn ensure_private_dir(dir: &Path) -> Result<(), PathError> {
    let create_err = |source| PathError::Create { path: dir.to_path_buf(), source };
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(create_err)?;
    let meta = fs::metadata(dir).map_err(create_err)?;
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(create_err)?;
    }
    Ok(())
}

/// Fails now, with the path named, if `dir` exists but cannot be written (a read-only mount,
/// say): creating an existing directory succeeds, so only a write tells. The node checks this
/// once at start; clients skip it to stay fast.
pub fn ensure_writable(dir: &Path) -> Result<(), PathError> {
    let probe = dir.join(".write-test");
    fs::write(&probe, b"").map_err(|source| PathError::Create { path: dir.to_path_buf(), source })?;
    let _ = fs::remove_file(probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn paths(vars: &[(&str, &str)]) -> Result<Paths, PathError> {
        let map: HashMap<String, OsString> = vars.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
        Paths::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn xdg_dirs_win_over_home() {
        let p = paths(&[("HOME", "/h"), ("XDG_DATA_HOME", "/d"), ("XDG_RUNTIME_DIR", "/r")]).unwrap();
        assert_eq!(p.data_dir, PathBuf::from("/d/git-p2p"));
        assert_eq!(p.socket(), PathBuf::from("/r/git-p2p/control.sock"));
    }

    #[test]
    fn falls_back_to_home_and_data_dir() {
        let p = paths(&[("HOME", "/h"), ("XDG_DATA_HOME", "relative")]).unwrap();
        assert_eq!(p.data_dir, PathBuf::from("/h/.local/share/git-p2p"));
        assert_eq!(p.socket(), PathBuf::from("/h/.local/share/git-p2p/control.sock"));
        assert!(matches!(paths(&[]), Err(PathError::NoHome)));
    }

    #[test]
    fn ensure_makes_private_dirs_and_tightens_loose_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn too_long_socket_path_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let long = tmp.path().join("x".repeat(120));
        let p = Paths { data_dir: long.clone(), socket_dir: long };
        assert!(matches!(p.ensure(), Err(PathError::SocketTooLong { .. })));
    }
}
