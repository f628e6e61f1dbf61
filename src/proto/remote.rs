//! `p2p://` URLs and the names of refs in the node's mirror of a repository. Pure: the remote
//! helper parses URLs with it, the node names refs with it, and both agree by construction.
//!
//! The mirror keeps each author's published refs in a git namespace of their own,
//! `refs/namespaces/<PeerId>/refs/heads/*` and `.../refs/tags/*` (with a `HEAD` there naming the
//! author's default branch), so that a plain `git upload-pack` with `GIT_NAMESPACE=<PeerId>`
//! serves one author's work as an ordinary repository (`git clone p2p://<repo>/<author>`). The
//! namespace [`ALL`] holds every author's refs once more, as `refs/heads/<short>/<branch>` and
//! `refs/tags/<short>/<tag>`, which is what `git fetch peers` maps to
//! `refs/remotes/peers/<short>/<branch>` with git's default refspec.

use super::peer::{short, Author};
use super::repo::RepoId;

/// The URL scheme git hands to `git-remote-p2p`.
pub const SCHEME: &str = "p2p://";
/// The namespace that holds every author's refs, each under the author's short name. PeerIds
/// are base58 (no `_`), so no author's namespace can be called this.
pub const ALL: &str = "_all";

/// What a `p2p://` URL names: a repository, and maybe one author in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P2pUrl {
    pub repo: RepoId,
    /// None: every author (`p2p://<repo-id>`).
    pub author: Option<Author>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("not a p2p URL (want p2p://<repo-id> or p2p://<repo-id>/<author>): {0:?}")]
    Scheme(String),
    #[error("bad repository id in {url:?}: want the 40 or 64 hex digits of its root commit")]
    Repo { url: String },
    #[error("bad author in {url:?}: want a PeerId, its last 12 characters, an npub, or me")]
    Author { url: String },
}

impl P2pUrl {
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let shown: String = url.chars().take(200).collect();
        let rest = url.strip_prefix(SCHEME).ok_or_else(|| UrlError::Scheme(shown.clone()))?;
        let rest = rest.trim_end_matches('/');
        let (repo, author) = match rest.split_once('/') {
            Some((repo, author)) => (repo, Some(author)),
            None => (rest, None),
        };
        let repo = RepoId::try_from(repo.to_ascii_lowercase()).map_err(|_| UrlError::Repo { url: shown.clone() })?;
        let author = match author {
            None => None,
            Some(a) if valid_author(a) => Some(Author::parse(a)),
            Some(_) => return Err(UrlError::Author { url: shown }),
        };
        Ok(Self { repo, author })
    }
}

/// An author as a URL may name one: base58 or bech32 characters, or `me`, or `..` + short.
fn valid_author(a: &str) -> bool {
    let a = a.strip_prefix("..").unwrap_or(a);
    (1..=100).contains(&a.len()) && a.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The Kademlia key under which nodes that hold a mirror of `repo` provide it.
pub fn provider_key(repo: &RepoId) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(format!("git-p2p/1/{repo}/mirror").as_bytes()).to_vec()
}

/// The namespace of an author's refs in the mirror (their PeerId).
pub fn namespace_prefix(namespace: &str) -> String {
    format!("refs/namespaces/{namespace}/")
}

/// Where the mirror keeps `name` (`refs/heads/main`) of `author` (a PeerId).
pub fn author_ref(author: &str, name: &str) -> String {
    format!("refs/namespaces/{author}/{name}")
}

/// Where the [`ALL`] view keeps `name` of `author`: `refs/heads/<short>/<branch>`, or None for a
/// ref that is neither a branch nor a tag.
pub fn view_ref(author: &str, name: &str) -> Option<String> {
    let who = short(author);
    if let Some(branch) = name.strip_prefix("refs/heads/") {
        return Some(format!("refs/namespaces/{ALL}/refs/heads/{who}/{branch}"));
    }
    name.strip_prefix("refs/tags/").map(|tag| format!("refs/namespaces/{ALL}/refs/tags/{who}/{tag}"))
}

/// For a push through a remote: which of our refs a destination names. `refs/heads/<b>` and
/// `refs/tags/<t>` are ours; in the all-authors view, `refs/heads/<short>/<b>` is ours when
/// `<short>` is ours, and another author's (refused) when it is one of `others`.
pub fn own_destination<'a>(
    dst: &'a str,
    me: &str,
    others: impl IntoIterator<Item = &'a str>,
) -> Result<String, String> {
    let (kind, rest) = if let Some(rest) = dst.strip_prefix("refs/heads/") {
        ("refs/heads/", rest)
    } else if let Some(rest) = dst.strip_prefix("refs/tags/") {
        ("refs/tags/", rest)
    } else {
        return Err(format!("{dst} is not a branch or a tag: only refs/heads/* and refs/tags/* can be published"));
    };
    if let Some((first, tail)) = rest.split_once('/') {
        if first == short(me) {
            return Ok(format!("{kind}{tail}"));
        }
        if let Some(other) = others.into_iter().find(|o| short(o) == first && *o != me) {
            return Err(format!(
                "{dst} is in the namespace of another author ({other}): you can only publish your own refs"
            ));
        }
    }
    Ok(dst.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOB: &str = "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X";
    const ME: &str = "12D3KooWAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn urls_name_a_repository_and_maybe_an_author() {
        let id = "a".repeat(40);
        let url = P2pUrl::parse(&format!("p2p://{id}")).unwrap();
        assert_eq!((url.repo.as_str(), url.author), (id.as_str(), None));
        let url = P2pUrl::parse(&format!("p2p://{}/{BOB}/", id.to_uppercase())).unwrap();
        assert_eq!(url.author, Some(Author::Peer(BOB.into())));
        assert_eq!(P2pUrl::parse(&format!("p2p://{id}/me")).unwrap().author, Some(Author::Me));
        for bad in ["http://x", "p2p://", "p2p://abc", &format!("p2p://{id}/a b"), &format!("p2p://{id}/x/y")] {
            assert!(P2pUrl::parse(bad).is_err(), "{bad}");
        }
        let err = P2pUrl::parse("p2p://zz").unwrap_err().to_string();
        assert!(err.contains("root commit"), "{err}");
    }

    #[test]
    fn refs_live_in_the_authors_namespace_and_in_the_view() {
        assert_eq!(author_ref(BOB, "refs/heads/main"), format!("refs/namespaces/{BOB}/refs/heads/main"));
        assert_eq!(
            view_ref(BOB, "refs/heads/a/b").unwrap(),
            format!("refs/namespaces/_all/refs/heads/{}/a/b", short(BOB))
        );
        assert_eq!(view_ref(BOB, "refs/tags/v1").unwrap(), format!("refs/namespaces/_all/refs/tags/{}/v1", short(BOB)));
        assert_eq!(view_ref(BOB, "refs/notes/x"), None);
    }

    #[test]
    fn a_push_goes_to_our_namespace_only() {
        assert_eq!(own_destination("refs/heads/main", ME, [BOB]).unwrap(), "refs/heads/main");
        let mine = format!("refs/heads/{}/main", short(ME));
        assert_eq!(own_destination(&mine, ME, [BOB]).unwrap(), "refs/heads/main");
        let theirs = format!("refs/heads/{}/main", short(BOB));
        let err = own_destination(&theirs, ME, [BOB]).unwrap_err();
        assert!(err.contains("another author"), "{err}");
        assert_eq!(own_destination("refs/heads/feature/x", ME, [BOB]).unwrap(), "refs/heads/feature/x");
        assert!(own_destination("refs/notes/commits", ME, [BOB]).is_err());
    }
}
