//! How peers are named to people: the short form of a PeerId (its last [`SHORT`] characters,
//! the same on screen, in `log` and `chat --tail` lines and in `refs/notes/p2p/<short>`), and
//! what `--author` takes (a PeerId, its short form, an npub, or `me`).

/// Characters of a PeerId's end that name it in short.
pub const SHORT: usize = 12;

/// The short form of a PeerId (or of an npub, for authors known only by one).
pub fn short(peer: &str) -> &str {
    let mut start = peer.len().saturating_sub(SHORT);
    while !peer.is_char_boundary(start) {
        start += 1;
    }
    &peer[start..]
}

/// Who a `--author` value means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Author {
    Me,
    /// A PeerId, or its short form.
    Peer(String),
    Npub(String),
}

impl Author {
    pub fn parse(spec: &str) -> Self {
        match spec.trim() {
            "me" => Author::Me,
            s if s.starts_with("npub1") => Author::Npub(s.to_string()),
            s => Author::Peer(s.trim_start_matches("..").to_string()),
        }
    }

    /// Whether an item by `peer` (a PeerId), signed with `npub` if known, is by this author;
    /// `me` is our own PeerId.
    pub fn matches(&self, peer: &str, npub: Option<&str>, me: &str) -> bool {
        match self {
            Author::Me => peer == me,
            Author::Peer(p) => peer == p || (p.len() >= SHORT && peer.ends_with(p.as_str())) || short(peer) == p,
            Author::Npub(n) => npub == Some(n.as_str()) || peer == n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOB: &str = "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X";

    #[test]
    fn an_author_is_a_peer_id_its_short_form_an_npub_or_me() {
        assert_eq!(short(BOB), "Nft9HyQ6X".len().checked_add(3).map(|_| &BOB[BOB.len() - 12..]).unwrap());
        for spec in [BOB, short(BOB), &format!("..{}", short(BOB))] {
            assert!(Author::parse(spec).matches(BOB, None, "me"), "{spec}");
        }
        assert!(!Author::parse("X6Qy").matches(BOB, None, "me"), "a fragment is not a short form");
        assert!(Author::parse("npub1bob").matches(BOB, Some("npub1bob"), "me"));
        assert!(Author::parse("me").matches(BOB, None, BOB));
        assert!(!Author::parse("me").matches(BOB, None, "someone else"));
    }
}
