//! Commit announcements: what peers are told about a new commit, and the checks a receiver
//! applies before it believes one.

use serde::{Deserialize, Serialize};

use super::envelope::Envelope;
use super::repo::RepoId;

pub const KIND: &str = "announce";
/// Bounds on announcement fields: an announcement is a notice, not a transport for data.
pub const MAX_SUMMARY: usize = 256;
pub const MAX_NAME: usize = 128;
pub const MAX_REF: usize = 256;
pub const MAX_PARENTS: usize = 16;

/// A commit as peers are told about it: made by git (`git::RepoContext::commit_info`), carried
/// in announcements and kept in the feed, in this one shape. The JSON names are the wire's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// Full ref name the commit was made on (`refs/heads/main`); None when HEAD was detached.
    pub ref_name: Option<String>,
    #[serde(rename = "commit")]
    pub id: String,
    pub parents: Vec<String>,
    /// The commit's author name.
    pub author: String,
    /// First line of the commit message.
    pub summary: String,
    /// Committer time, Unix seconds.
    #[serde(rename = "commit_time")]
    pub time: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    #[serde(flatten)]
    pub commit: Commit,
    /// The announcer's display name.
    pub name: Option<String>,
}

/// An announcement as received from a peer and kept in the repository's feed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FeedEntry {
    pub repo: RepoId,
    /// PeerId of the author (the envelope's signer).
    pub peer: String,
    /// The announcer's display name.
    pub name: Option<String>,
    #[serde(flatten)]
    pub commit: Commit,
    /// When the author announced it (Unix ms, the author's clock).
    pub announced_at: u64,
    /// When this node received it (Unix ms).
    pub received_at: u64,
}

impl FeedEntry {
    /// What makes an announcement news: its repository, commit and author (the feed keeps each
    /// once, and the seen sets remember it by this).
    pub fn seen_key(&self) -> String {
        format!("{}/{}/{}", self.repo, self.commit.id, self.peer)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnounceError {
    #[error("not an announcement (kind {0:?})")]
    WrongKind(String),
    #[error("malformed announcement: {0}")]
    Malformed(String),
    #[error("invalid announcement: {0}")]
    Invalid(&'static str),
}

pub fn is_object_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The start of an object id: 1 to 64 lowercase hex digits.
pub fn is_id_prefix(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn clip(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

impl Announcement {
    /// Builds an announcement, clipping free-text fields to their bounds.
    pub fn new(commit: Commit, name: Option<&str>) -> Self {
        let commit = Commit {
            ref_name: commit.ref_name.as_deref().map(|r| clip(r, MAX_REF)),
            id: commit.id,
            parents: commit.parents.into_iter().take(MAX_PARENTS).collect(),
            author: clip(&commit.author, MAX_NAME),
            summary: clip(&commit.summary, MAX_SUMMARY),
            time: commit.time,
        };
        Self { commit, name: name.map(|n| clip(n, MAX_NAME)) }
    }

    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("announcements always serialise")
    }

    /// The announcement signed by `key` for repository `repo`, stamped `ts` (Unix ms).
    pub fn sign(&self, key: &libp2p::identity::Keypair, repo: &RepoId, ts: u64) -> Envelope {
        Envelope::sign(key, KIND, repo, ts, self.to_body())
    }

    /// The announcement in an envelope, with every bound checked. The signature is checked
    /// separately ([`Envelope::verify`]), by the caller, before this.
    pub fn from_envelope(env: &Envelope) -> Result<Self, AnnounceError> {
        if env.kind != KIND {
            return Err(AnnounceError::WrongKind(env.kind.clone()));
        }
        let a: Self = serde_json::from_str(&env.body).map_err(|e| AnnounceError::Malformed(e.to_string()))?;
        a.validate()?;
        Ok(a)
    }

    pub fn validate(&self) -> Result<(), AnnounceError> {
        use AnnounceError::Invalid;
        let c = &self.commit;
        if !is_object_id(&c.id) {
            return Err(Invalid("commit is not an object id"));
        }
        if c.parents.len() > MAX_PARENTS || !c.parents.iter().all(|p| is_object_id(p)) {
            return Err(Invalid("bad parents"));
        }
        let text_ok = |s: &str, max: usize| s.chars().count() <= max && !s.chars().any(char::is_control);
        if !text_ok(&c.summary, MAX_SUMMARY) || !text_ok(&c.author, MAX_NAME) {
            return Err(Invalid("summary or author too long or with control characters"));
        }
        if let Some(r) = &c.ref_name {
            if !r.starts_with("refs/") || !text_ok(r, MAX_REF) {
                return Err(Invalid("bad ref name"));
            }
        }
        if let Some(n) = &self.name {
            if !text_ok(n, MAX_NAME) {
                return Err(Invalid("bad name"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    fn sample() -> Announcement {
        Announcement {
            commit: Commit {
                ref_name: Some("refs/heads/main".into()),
                id: "a".repeat(40),
                parents: vec!["b".repeat(40)],
                author: "Alice".into(),
                summary: "Fix the frobnicator".into(),
                time: 1_700_000_000,
            },
            name: Some("alice".into()),
        }
    }

    fn repo() -> RepoId {
        RepoId::try_from("c".repeat(40)).unwrap()
    }

    #[test]
    fn the_wire_names_of_an_announcement_stay() {
        let body: serde_json::Value = serde_json::from_str(&sample().to_body()).unwrap();
        let names: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(names, ["author", "commit", "commit_time", "name", "parents", "ref_name", "summary"]);
    }

    #[test]
    fn announcements_round_trip_through_envelopes() {
        let key = Keypair::generate_ed25519();
        let env = Envelope::sign(&key, KIND, &repo(), 1, sample().to_body());
        assert_eq!(Announcement::from_envelope(&env).unwrap(), sample());
    }

    #[test]
    fn bad_announcements_are_refused() {
        type Mutation = fn(&mut Announcement);
        let cases: [(&str, Mutation); 8] = [
            ("short commit", |a| a.commit.id = "abc".into()),
            ("uppercase commit", |a| a.commit.id = "A".repeat(40)),
            ("bad parent", |a| a.commit.parents.push("zz".into())),
            ("many parents", |a| a.commit.parents = vec!["b".repeat(40); MAX_PARENTS + 1]),
            ("long summary", |a| a.commit.summary = "x".repeat(MAX_SUMMARY + 1)),
            ("escape in summary", |a| a.commit.summary = "\u{1b}[2J".into()),
            ("ref outside refs/", |a| a.commit.ref_name = Some("HEAD".into())),
            ("control in name", |a| a.name = Some("a\nb".into())),
        ];
        for (what, mutate) in cases {
            let mut a = sample();
            mutate(&mut a);
            assert!(a.validate().is_err(), "{what}");
        }
        let key = Keypair::generate_ed25519();
        let env = Envelope::sign(&key, "chat", &repo(), 1, sample().to_body());
        assert!(matches!(Announcement::from_envelope(&env), Err(AnnounceError::WrongKind(_))));
        let env = Envelope::sign(&key, KIND, &repo(), 1, "{\"commit\":1}".into());
        assert!(matches!(Announcement::from_envelope(&env), Err(AnnounceError::Malformed(_))));
    }
}
