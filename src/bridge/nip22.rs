//! Room messages as NIP-22 comments (kind 1111) on the repository announcement (kind 30617).
//!
//! Pure: building and reading comments. A comment we send carries, besides the text for any
//! Nostr client, the signed git-p2p envelope of the same message in a `git-p2p` tag; a receiver
//! verifies that envelope like a gossip message and stores it under the same id, so a message
//! that arrives both ways is kept once. Comments written by plain Nostr clients have no such tag
//! and are kept under their event id, marked as from Nostr.

use std::borrow::Cow;

use nostr::nips::nip01::Coordinate;
use nostr::nips::nip22::CommentTarget;
use nostr::{Event, EventBuilder, Keys, Kind, PublicKey, Tag, TagKind, Timestamp};

use crate::proto::repo::RepoId;

/// The tag carrying the signed git-p2p envelope of a bridged room message.
pub const ENVELOPE_TAG: &str = "git-p2p";

/// Where a comment belongs: the repository's announcement (30617 of `owner`, `d` = identifier),
/// and the root commit (an `r` tag, so peers whose announcements differ still find each other).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub owner: PublicKey,
    pub identifier: String,
    pub euc: RepoId,
}

impl Scope {
    pub fn coordinate(&self) -> Coordinate {
        Coordinate::new(Kind::GitRepoAnnouncement, self.owner).identifier(self.identifier.clone())
    }
}

/// Kind 1111 scoped to the repository (root and parent are both the announcement: a top-level
/// comment), with the root commit in an `r` tag, the commit of a thread in a `commit` tag (as
/// NIP-34 patches name theirs) and our envelope when we have one. A plain client shows a thread's
/// message as a comment on the repository; git-p2p files it under the thread its signed message
/// names.
pub fn comment(
    keys: &Keys,
    scope: &Scope,
    text: &str,
    envelope: Option<&str>,
    thread: Option<&str>,
    created_at: Timestamp,
) -> Result<Event, nostr::event::builder::Error> {
    let coordinate = scope.coordinate();
    let target = || CommentTarget::coordinate(Cow::Borrowed(&coordinate), None);
    let mut extra = vec![Tag::custom(TagKind::custom("r"), [scope.euc.to_string()])];
    if let Some(commit) = thread {
        extra.push(Tag::custom(TagKind::custom("commit"), [commit.to_string()]));
    }
    if let Some(envelope) = envelope {
        extra.push(Tag::custom(TagKind::custom(ENVELOPE_TAG), [envelope.to_string()]));
    }
    EventBuilder::comment(text, target(), Some(target())).tags(extra).custom_created_at(created_at).sign_with_keys(keys)
}

/// What a received comment says, once checked to be a comment on one of our repositories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A git-p2p message bridged by its author: verify it like gossip.
    Envelope(String),
    /// A comment from a plain Nostr client.
    Plain { text: String },
}

/// Which of `repos` ((root commit id, `d` identifier) pairs) a comment is about, and its
/// content. None for anything that is not a comment on one of them: another kind, another
/// repository, a bad signature.
pub fn read(event: &Event, repos: &[(RepoId, String)]) -> Option<(RepoId, Incoming)> {
    if event.kind != Kind::Comment || event.verify().is_err() {
        return None;
    }
    let mut repo = None;
    let mut envelope = None;
    for tag in event.tags.iter() {
        match tag.as_slice() {
            [k, euc, ..] if k == "r" => {
                if let Some((id, _)) = repos.iter().find(|(id, _)| id.as_str() == euc) {
                    repo = Some(id.clone());
                }
            }
            [k, coordinate, ..] if k == "A" => {
                if let Ok(c) = Coordinate::parse(coordinate) {
                    if c.kind == Kind::GitRepoAnnouncement && repo.is_none() {
                        repo = repos.iter().find(|(_, d)| *d == c.identifier).map(|(r, _)| r.clone());
                    }
                }
            }
            [k, value, ..] if k == ENVELOPE_TAG => envelope = Some(value.clone()),
            _ => {}
        }
    }
    let repo = repo?;
    Some(match envelope {
        Some(envelope) => (repo, Incoming::Envelope(envelope)),
        None => (repo, Incoming::Plain { text: event.content.clone() }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e40() -> RepoId {
        RepoId::try_from("e".repeat(40)).unwrap()
    }

    fn scope(keys: &Keys) -> Scope {
        Scope { owner: keys.public_key(), identifier: "proj".into(), euc: e40() }
    }

    fn tags(e: &Event) -> Vec<Vec<String>> {
        e.tags.iter().map(|t| t.as_slice().to_vec()).collect()
    }

    #[test]
    fn comment_is_scoped_to_the_repository_announcement_as_nip22_says() {
        let keys = Keys::generate();
        let s = scope(&keys);
        let e = comment(&keys, &s, "hello", Some("{\"v\":1}"), None, Timestamp::from(1000)).unwrap();
        assert_eq!(e.kind, Kind::Comment);
        assert_eq!(e.content, "hello");
        let coordinate = format!("30617:{}:proj", keys.public_key().to_hex());
        let pk = keys.public_key().to_hex();
        let t = tags(&e);
        for expected in [
            vec!["A".to_string(), coordinate.clone()],
            vec!["K".into(), "30617".into()],
            vec!["P".into(), pk],
            vec!["a".into(), coordinate],
            vec!["k".into(), "30617".into()],
            vec!["r".into(), "e".repeat(40)],
            vec![ENVELOPE_TAG.into(), "{\"v\":1}".into()],
        ] {
            assert!(t.contains(&expected), "missing {expected:?} in {t:?}");
        }
        // No `p` naming the author itself (nostr's builder drops self-mentions).
        assert_eq!(t.len(), 7, "{t:?}");
        e.verify().unwrap();
    }

    #[test]
    fn read_finds_the_repository_by_root_commit_or_by_identifier() {
        let keys = Keys::generate();
        let s = scope(&keys);
        let repos = vec![(e40(), "proj".to_string())];
        let ours = comment(&keys, &s, "hi", Some("env"), None, Timestamp::from(1)).unwrap();
        assert_eq!(read(&ours, &repos), Some((e40(), Incoming::Envelope("env".into()))));

        // A plain client comments on the announcement only (A tag, no r tag).
        let coordinate = s.coordinate();
        let target = || CommentTarget::coordinate(Cow::Borrowed(&coordinate), None);
        let plain = EventBuilder::comment("from a client", target(), Some(target())).sign_with_keys(&keys).unwrap();
        assert_eq!(read(&plain, &repos), Some((e40(), Incoming::Plain { text: "from a client".into() })));

        assert_eq!(
            read(&ours, &[(RepoId::try_from("f".repeat(40)).unwrap(), "other".into())]),
            None,
            "another repository"
        );
        let note = EventBuilder::text_note("not a comment").sign_with_keys(&keys).unwrap();
        assert_eq!(read(&note, &repos), None);
    }

    #[test]
    fn a_threads_comment_names_its_commit() {
        let keys = Keys::generate();
        let commit = "c".repeat(40);
        let e = comment(&keys, &scope(&keys), "on it", Some("env"), Some(&commit), Timestamp::from(1)).unwrap();
        assert!(tags(&e).contains(&vec!["commit".to_string(), commit]));
        let repos = [(e40(), "proj".to_string())];
        assert_eq!(read(&e, &repos), Some((e40(), Incoming::Envelope("env".into()))));
    }

    #[test]
    fn read_refuses_a_tampered_comment() {
        let keys = Keys::generate();
        let mut e = comment(&keys, &scope(&keys), "hi", None, None, Timestamp::from(1)).unwrap();
        e.content = "changed".into();
        assert_eq!(read(&e, &[(e40(), "proj".into())]), None);
    }
}
