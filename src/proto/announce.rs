//! Commit announcements: what peers are told about a new commit, and the checks a receiver
//! applies before it believes one.

use serde::{Deserialize, Serialize};

use super::envelope::Envelope;

pub const KIND: &str = "announce";
/// Bounds on announcement fields: an announcement is a notice, not a transport for data.
pub const MAX_SUMMARY: usize = 256;
pub const MAX_NAME: usize = 128;
pub const MAX_REF: usize = 256;
pub const MAX_PARENTS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// Full ref name the commit was made on (`refs/heads/main`); None when HEAD was detached.
    pub ref_name: Option<String>,
    pub commit: String,
    pub parents: Vec<String>,
    /// The commit's author name.
    pub author: String,
    /// First line of the commit message.
    pub summary: String,
    /// Committer time, Unix seconds.
    pub commit_time: i64,
    /// The announcer's display name.
    pub name: Option<String>,
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

fn clip(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

impl Announcement {
    /// Builds an announcement, clipping free-text fields to their bounds.
    pub fn new(commit: &crate::git::CommitInfo, name: Option<&str>) -> Self {
        Self {
            ref_name: commit.ref_name.as_deref().map(|r| clip(r, MAX_REF)),
            commit: commit.id.clone(),
            parents: commit.parents.iter().take(MAX_PARENTS).cloned().collect(),
            author: clip(&commit.author_name, MAX_NAME),
            summary: clip(&commit.summary, MAX_SUMMARY),
            commit_time: commit.time,
            name: name.map(|n| clip(n, MAX_NAME)),
        }
    }

    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("announcements always serialise")
    }

    /// The announcement signed by `key` for repository `repo`, stamped `ts` (Unix ms).
    pub fn sign(&self, key: &libp2p::identity::Keypair, repo: &str, ts: u64) -> Envelope {
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
        if !is_object_id(&self.commit) {
            return Err(Invalid("commit is not an object id"));
        }
        if self.parents.len() > MAX_PARENTS || !self.parents.iter().all(|p| is_object_id(p)) {
            return Err(Invalid("bad parents"));
        }
        let text_ok = |s: &str, max: usize| s.chars().count() <= max && !s.chars().any(char::is_control);
        if !text_ok(&self.summary, MAX_SUMMARY) || !text_ok(&self.author, MAX_NAME) {
            return Err(Invalid("summary or author too long or with control characters"));
        }
        if let Some(r) = &self.ref_name {
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
            ref_name: Some("refs/heads/main".into()),
            commit: "a".repeat(40),
            parents: vec!["b".repeat(40)],
            author: "Alice".into(),
            summary: "Fix the frobnicator".into(),
            commit_time: 1_700_000_000,
            name: Some("alice".into()),
        }
    }

    #[test]
    fn announcements_round_trip_through_envelopes() {
        let key = Keypair::generate_ed25519();
        let env = Envelope::sign(&key, KIND, &"c".repeat(40), 1, sample().to_body());
        assert_eq!(Announcement::from_envelope(&env).unwrap(), sample());
    }

    #[test]
    fn bad_announcements_are_refused() {
        type Mutation = fn(&mut Announcement);
        let cases: [(&str, Mutation); 8] = [
            ("short commit", |a| a.commit = "abc".into()),
            ("uppercase commit", |a| a.commit = "A".repeat(40)),
            ("bad parent", |a| a.parents.push("zz".into())),
            ("many parents", |a| a.parents = vec!["b".repeat(40); MAX_PARENTS + 1]),
            ("long summary", |a| a.summary = "x".repeat(MAX_SUMMARY + 1)),
            ("escape in summary", |a| a.summary = "\u{1b}[2J".into()),
            ("ref outside refs/", |a| a.ref_name = Some("HEAD".into())),
            ("control in name", |a| a.name = Some("a\nb".into())),
        ];
        for (what, mutate) in cases {
            let mut a = sample();
            mutate(&mut a);
            assert!(a.validate().is_err(), "{what}");
        }
        let key = Keypair::generate_ed25519();
        let env = Envelope::sign(&key, "chat", "r", 1, sample().to_body());
        assert!(matches!(Announcement::from_envelope(&env), Err(AnnounceError::WrongKind(_))));
        let env = Envelope::sign(&key, KIND, "r", 1, "{\"commit\":1}".into());
        assert!(matches!(Announcement::from_envelope(&env), Err(AnnounceError::Malformed(_))));
    }
}
