//! NIP-34 events as git-p2p publishes them: the repository announcement (kind 30617) and the
//! repository state (kind 30618). Pure builders, shaped after what a real client (ngit 3.0.4)
//! reads: one `clone` tag with every URL (several tags: the last wins), network URLs only (a local
//! path leaks the user's disk layout), a `relays` tag (clients look for the state only there),
//! `maintainers` only with valid keys (one bad entry drops the whole announcement), and state
//! timestamps that strictly increase.

use nostr::nips::nip34::GitRepositoryAnnouncement;
use nostr::{Event, EventBuilder, Keys, Kind, PublicKey, RelayUrl, Tag, TagKind, Timestamp};

/// What a repository announcement says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announcement {
    /// Stable identifier (`d` tag), derived from the room name.
    pub identifier: String,
    pub name: String,
    pub description: String,
    pub clone_urls: Vec<String>,
    pub relays: Vec<String>,
    /// The root commit: NIP-34's "earliest unique commit".
    pub euc: String,
    /// Maintainers' public keys (hex or npub); invalid ones are left out.
    pub maintainers: Vec<String>,
}

/// The `d` identifier for a room name: lowercase, `/`, `:` and spaces made `-`, nothing else odd.
pub fn identifier(room: &str) -> String {
    let id: String = room
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c.to_ascii_lowercase() } else { '-' })
        .collect();
    id.trim_matches('-').to_string()
}

/// URLs other people can clone from: https, http, ssh, git, or scp-like `host:path`.
pub fn network_url(url: &str) -> bool {
    let url = url.trim();
    ["https://", "http://", "ssh://", "git://"].iter().any(|s| url.starts_with(s))
        || (!url.starts_with('/') && !url.starts_with("file:") && url.contains(':') && url.contains('@'))
}

fn tag(kind: &str, values: impl IntoIterator<Item = String>) -> Tag {
    Tag::custom(TagKind::custom(kind.to_string()), values)
}

/// A clone URL as a URL: scp-like `user@host:path` becomes `ssh://user@host/path` (the same
/// remote, in the form nostr's NIP-34 type takes).
fn clone_url(url: &str) -> Option<nostr::Url> {
    let url = url.trim();
    if !network_url(url) {
        return None;
    }
    if url.contains("://") {
        return nostr::Url::parse(url).ok();
    }
    let (host, path) = url.split_once(':')?;
    nostr::Url::parse(&format!("ssh://{host}/{}", path.trim_start_matches('/'))).ok()
}

/// Kind 30617, signed by `keys`, built with nostr's NIP-34 type.
pub fn announcement(
    keys: &Keys,
    a: &Announcement,
    created_at: Timestamp,
) -> Result<Event, nostr::event::builder::Error> {
    let announcement = GitRepositoryAnnouncement {
        id: a.identifier.clone(),
        name: Some(a.name.clone()),
        description: Some(a.description.clone()),
        web: Vec::new(),
        clone: a.clone_urls.iter().filter_map(|u| clone_url(u)).collect(),
        relays: a.relays.iter().filter_map(|r| RelayUrl::parse(r).ok()).collect(),
        euc: a.euc.parse().ok(),
        maintainers: a.maintainers.iter().filter_map(|m| PublicKey::parse(m).ok()).collect(),
    };
    EventBuilder::git_repository_announcement(announcement)?.custom_created_at(created_at).sign_with_keys(keys)
}

/// Kind 30618: this author's refs (`refs/heads/*`, `refs/tags/*` → id) and HEAD, with the root
/// commit (`r` … `euc`, as in the announcement) so a state can be matched to its repository by
/// content as well as by `d`.
pub fn state(
    keys: &Keys,
    identifier: &str,
    euc: &str,
    refs: &[(String, String)],
    head_branch: Option<&str>,
    created_at: Timestamp,
) -> Result<Event, nostr::event::builder::Error> {
    let mut tags = vec![Tag::identifier(identifier.to_string())];
    for (name, oid) in refs {
        if name.starts_with("refs/heads/") || name.starts_with("refs/tags/") {
            tags.push(tag(name, [oid.clone()]));
        }
    }
    if let Some(branch) = head_branch {
        tags.push(tag("HEAD", [format!("ref: refs/heads/{branch}")]));
    }
    tags.push(tag("r", [euc.to_string(), "euc".to_string()]));
    EventBuilder::new(Kind::RepoState, "").tags(tags).custom_created_at(created_at).sign_with_keys(keys)
}

/// Successive states need strictly increasing timestamps: two in the same second would leave
/// clients to pick one by id.
pub fn next_timestamp(now: u64, previous: Option<u64>) -> u64 {
    previous.map_or(now, |p| now.max(p + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(e: &Event) -> Vec<Vec<String>> {
        e.tags.iter().map(|t| t.as_slice().to_vec()).collect()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn announcement_tags_follow_nip34_as_clients_read_it() {
        let keys = Keys::generate();
        let maintainer = Keys::generate().public_key();
        let a = Announcement {
            identifier: identifier("github.com/Acme/proj"),
            name: "proj".into(),
            description: "a project".into(),
            clone_urls: s(&["https://github.com/acme/proj.git", "/home/alice/proj", "git@github.com:acme/proj.git"]),
            relays: s(&["wss://relay.example"]),
            euc: "a".repeat(40),
            maintainers: vec![maintainer.to_hex(), "not-a-key".into()],
        };
        let e = announcement(&keys, &a, Timestamp::from(1_700_000_000)).unwrap();
        assert_eq!(e.kind, Kind::from(30617));
        assert_eq!(e.pubkey, keys.public_key());
        assert!(e.verify().is_ok());
        assert_eq!(
            tags(&e),
            vec![
                s(&["d", "github.com-acme-proj"]),
                s(&["name", "proj"]),
                s(&["description", "a project"]),
                s(&["clone", "https://github.com/acme/proj.git", "ssh://git@github.com/acme/proj.git"]),
                s(&["relays", "wss://relay.example"]),
                vec!["r".to_string(), "a".repeat(40), "euc".to_string()],
                vec!["maintainers".to_string(), maintainer.to_hex()],
            ]
        );
    }

    #[test]
    fn no_clone_relays_or_maintainers_tags_when_there_is_nothing_valid() {
        let keys = Keys::generate();
        let a = Announcement {
            identifier: "p".into(),
            // A p2p:// remote (git-p2p's own) helps nobody on Nostr: ngit rejects the scheme.
            clone_urls: s(&["/srv/git/p.git", "file:///tmp/p", &format!("p2p://{}/12D3KooWabc", "b".repeat(40))]),
            maintainers: s(&["npub1bogus"]),
            euc: "b".repeat(40),
            ..Default::default()
        };
        let e = announcement(&keys, &a, Timestamp::from(1)).unwrap();
        let names: Vec<String> = tags(&e).into_iter().map(|t| t[0].clone()).collect();
        assert_eq!(names, s(&["d", "name", "description", "r"]));
    }

    #[test]
    fn state_tags_hold_refs_and_head() {
        let keys = Keys::generate();
        let refs = vec![
            ("refs/heads/main".to_string(), "c".repeat(40)),
            ("refs/tags/v1".to_string(), "d".repeat(40)),
            ("refs/notes/commits".to_string(), "e".repeat(40)),
        ];
        let e = state(&keys, "proj", &"a".repeat(40), &refs, Some("main"), Timestamp::from(5)).unwrap();
        assert_eq!(e.kind, Kind::from(30618));
        assert_eq!(
            tags(&e),
            vec![
                s(&["d", "proj"]),
                vec!["refs/heads/main".to_string(), "c".repeat(40)],
                vec!["refs/tags/v1".to_string(), "d".repeat(40)],
                s(&["HEAD", "ref: refs/heads/main"]),
                vec!["r".to_string(), "a".repeat(40), "euc".to_string()],
            ]
        );
    }

    #[test]
    fn state_timestamps_strictly_increase() {
        assert_eq!(next_timestamp(100, None), 100);
        assert_eq!(next_timestamp(100, Some(100)), 101);
        assert_eq!(next_timestamp(100, Some(150)), 151);
        assert_eq!(next_timestamp(200, Some(150)), 200);
    }
}
