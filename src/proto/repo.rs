//! A repository as peers name it: its id (the root commit, which every clone and fork shares)
//! and what a node is told about a repository of its user.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Names a repository across peers: the hex id of its root commit (SHA-1 or SHA-256), lowercase.
/// Built only through `TryFrom`, so a `RepoId` is always one; serde checks it the same way.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid repository id (want 40 or 64 lowercase hex digits): {0:?}")]
pub struct InvalidRepoId(pub String);

impl RepoId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Enough to tell repositories apart in logs and prompts (an id has at least 40 characters).
    pub fn short(&self) -> &str {
        &self.0[..12]
    }

    fn valid(s: &str) -> bool {
        matches!(s.len(), 40 | 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }
}

impl TryFrom<&str> for RepoId {
    type Error = InvalidRepoId;

    fn try_from(s: &str) -> Result<Self, InvalidRepoId> {
        if Self::valid(s) {
            Ok(RepoId(s.to_owned()))
        } else {
            Err(InvalidRepoId(s.chars().take(80).collect()))
        }
    }
}

impl TryFrom<String> for RepoId {
    type Error = InvalidRepoId;

    fn try_from(s: String) -> Result<Self, InvalidRepoId> {
        if Self::valid(&s) {
            Ok(RepoId(s))
        } else {
            Err(InvalidRepoId(s.chars().take(80).collect()))
        }
    }
}

impl std::str::FromStr for RepoId {
    type Err = InvalidRepoId;

    fn from_str(s: &str) -> Result<Self, InvalidRepoId> {
        Self::try_from(s)
    }
}

impl From<RepoId> for String {
    fn from(id: RepoId) -> String {
        id.0
    }
}

impl AsRef<str> for RepoId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A path on this machine. Unix paths are bytes, not necessarily UTF-8, and are kept as such.
/// Where a path travels as text (the control socket's JSON, the store) it is the path itself
/// when it is UTF-8, else a NUL followed by its bytes in hex: no path contains a NUL, so the two
/// forms cannot be mistaken for each other, and every UTF-8 path reads as it always did.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LocalPath(PathBuf);

/// Marks a path that is not UTF-8 in [`LocalPath::encode`].
const NOT_UTF8: char = '\0';

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a path: {0:?}")]
pub struct InvalidPath(pub String);

impl LocalPath {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self(path.into())
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }

    /// The path as text that [`LocalPath::decode`] reads back byte for byte.
    pub fn encode(&self) -> String {
        match self.0.to_str() {
            Some(text) => text.to_owned(),
            None => format!("{NOT_UTF8}{}", hex::encode(self.0.as_os_str().as_bytes())),
        }
    }

    pub fn decode(text: &str) -> Result<Self, InvalidPath> {
        let bad = || InvalidPath(text.chars().take(80).collect());
        match text.strip_prefix(NOT_UTF8) {
            Some(hex) => {
                let bytes = hex::decode(hex).map_err(|_| bad())?;
                if bytes.contains(&0) {
                    return Err(bad());
                }
                Ok(Self(PathBuf::from(OsString::from_vec(bytes))))
            }
            None if text.contains(NOT_UTF8) => Err(bad()),
            None => Ok(Self(PathBuf::from(text))),
        }
    }

    /// For people: lossy where the path is not UTF-8.
    pub fn display(&self) -> std::path::Display<'_> {
        self.0.display()
    }
}

impl From<PathBuf> for LocalPath {
    fn from(path: PathBuf) -> Self {
        Self(path)
    }
}

impl From<&str> for LocalPath {
    fn from(path: &str) -> Self {
        Self(PathBuf::from(path))
    }
}

impl TryFrom<String> for LocalPath {
    type Error = InvalidPath;

    fn try_from(text: String) -> Result<Self, InvalidPath> {
        Self::decode(&text)
    }
}

impl From<LocalPath> for String {
    fn from(path: LocalPath) -> String {
        path.encode()
    }
}

/// What the node is told about a repository of its user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct RepoInfo {
    pub id: RepoId,
    /// Room name (normalised origin URL or directory name).
    pub name: String,
    /// The repository's git dir on this machine, for the node's Nostr bridge (which reads its
    /// refs, remotes and description) and its reflog reader. Local only: never sent to peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_dir: Option<LocalPath>,
}

impl RepoInfo {
    /// A repository known only by its id (no room name, no git dir here).
    pub fn bare(id: RepoId) -> Self {
        Self { id, name: String::new(), git_dir: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_lowercase_hex_of_an_object_id() {
        let sha1 = "0123456789abcdef0123456789abcdef01234567";
        let id = RepoId::try_from(sha1).unwrap();
        assert_eq!(id.short(), "0123456789ab");
        assert!(RepoId::try_from("ab".repeat(32).as_str()).is_ok(), "SHA-256");
        for bad in ["", "abc", &sha1.to_uppercase(), &format!("{sha1}0"), &"g".repeat(40)] {
            assert!(RepoId::try_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_are_bytes_and_utf8_ones_read_as_before() {
        let utf8 = LocalPath::from("/home/zoë/proj/.git");
        assert_eq!(serde_json::to_string(&utf8).unwrap(), "\"/home/zoë/proj/.git\"");
        let bytes = LocalPath::new(PathBuf::from(OsString::from_vec(b"/tmp/bad\xff\n/.git".to_vec())));
        let json = serde_json::to_string(&bytes).unwrap();
        assert_eq!(serde_json::from_str::<LocalPath>(&json).unwrap(), bytes, "{json}");
        assert_eq!(LocalPath::decode(&bytes.encode()).unwrap(), bytes);
        assert!(LocalPath::decode("\0zz").is_err());
        assert!(LocalPath::decode("\u{0}00").is_err(), "a NUL in a path");
        assert!(LocalPath::decode("/a\0b").is_err());
    }

    #[test]
    fn serde_checks_repo_ids_too() {
        let id: RepoId = serde_json::from_str(&format!("\"{}\"", "a".repeat(40))).unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{}\"", "a".repeat(40)));
        assert!(serde_json::from_str::<RepoId>("\"ab\"").is_err());
        assert!(serde_json::from_str::<RepoId>("12").is_err());
    }
}
