//! Chat messages: what a room message carries, and the checks a receiver applies before it
//! stores or shows one. A room is a repository's (`<repo id>`) or one commit's thread
//! (`<repo id>/<commit id>`).

use serde::{Deserialize, Serialize};

use super::announce::is_object_id;
use super::envelope::Envelope;
use super::repo::RepoId;

pub const KIND: &str = "chat";
/// Longest message, in characters. Longer input is refused, never split or cut.
pub const MAX_TEXT: usize = 4000;
pub const MAX_NAME: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// The commit whose thread this is; None for the repository's room.
    pub thread: Option<String>,
    pub text: String,
    /// The author's display name.
    pub name: Option<String>,
    /// Makes two identical messages two messages (hex, not secret).
    pub nonce: String,
}

/// A chat message as kept in a room's history and shown to readers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatEntry {
    pub room: String,
    pub id: String,
    /// PeerId of the author.
    pub peer: String,
    pub name: Option<String>,
    pub text: String,
    /// When the author sent it (Unix ms, the author's clock).
    pub sent_at: u64,
    /// When this node stored it (Unix ms).
    pub received_at: u64,
    /// Sent by this node's user.
    pub own: bool,
    /// Where it came from when not from a git-p2p peer: "nostr" for a plain Nostr comment
    /// (then `peer` is the author's npub).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Set in a repository's room only: this entry is the notice of a reply in the thread of
    /// this commit, and its text is the reply's first words ([`ChatEntry::notice`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
}

/// Characters of a thread reply its notice in the room keeps: the first words, not the reply.
pub const NOTICE_EXCERPT: usize = 80;

impl ChatEntry {
    /// The entry for a verified room message (in envelope `env`) signed by `peer` (its peer id,
    /// base58, which the caller has at hand: making it costs more than the rest of the entry).
    pub fn new(env: &Envelope, peer: String, message: ChatMessage, own: bool, received_at: u64) -> Self {
        Self {
            room: room_id(&env.repo, message.thread.as_deref()),
            id: env.id(),
            peer,
            name: message.name,
            text: message.text,
            sent_at: env.ts,
            received_at,
            own,
            via: None,
            thread: None,
        }
    }

    /// For a message in a commit's thread, its notice in the repository's room: same author
    /// and times, the reply's first words, the commit it is about. None for a room's message.
    pub fn notice(&self) -> Option<ChatEntry> {
        let (repo, commit) = self.room.split_once('/')?;
        Some(ChatEntry {
            room: repo.to_string(),
            // Its own id: the message is kept in the thread, the notice in the room.
            id: format!("{}/notice", self.id),
            text: excerpt(&self.text, NOTICE_EXCERPT),
            thread: Some(commit.to_string()),
            ..self.clone()
        })
    }
}

/// The first words of `text`, on one line: at most `max` characters, cut after a word when
/// there is one to cut after, and marked "…" when cut.
pub fn excerpt(text: &str, max: usize) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max {
        return line;
    }
    let cut: String = line.chars().take(max).collect();
    let words = match cut.rfind(' ') {
        Some(at) if at > 0 => &cut[..at],
        _ => cut.as_str(),
    };
    format!("{words}…")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChatError {
    #[error("not a chat message (kind {0:?})")]
    WrongKind(String),
    #[error("malformed chat message: {0}")]
    Malformed(String),
    #[error("message too long ({0} characters, at most {MAX_TEXT}): not sent")]
    TooLong(usize),
    #[error("empty message: not sent")]
    Empty,
    #[error("invalid chat message: {0}")]
    Invalid(&'static str),
}

/// The room a message belongs to.
pub fn room_id(repo: &RepoId, thread: Option<&str>) -> String {
    match thread {
        Some(commit) => format!("{repo}/{commit}"),
        None => repo.to_string(),
    }
}

/// Tabs and newlines are text; every other control character (escape sequences above all) could
/// drive the reader's terminal, so a message carrying one is refused.
fn clean(s: &str) -> bool {
    !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
}

/// Text from outside git-p2p (a plain Nostr comment) made safe to keep and show: CR LF and a
/// lone CR become a newline; any other control character (escape sequences above all) a
/// visible placeholder. Tabs and newlines stay.
pub fn tame(text: &str) -> String {
    text.replace("\r\n", "\n")
        .chars()
        .map(|c| match c {
            '\r' => '\n',
            c if c.is_control() && c != '\n' && c != '\t' => '\u{fffd}',
            c => c,
        })
        .collect()
}

impl ChatMessage {
    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("chat messages always serialise")
    }

    pub fn validate(&self) -> Result<(), ChatError> {
        let len = self.text.chars().count();
        if len > MAX_TEXT {
            return Err(ChatError::TooLong(len));
        }
        if self.text.trim().is_empty() {
            return Err(ChatError::Empty);
        }
        if !clean(&self.text) {
            return Err(ChatError::Invalid("control characters in the text"));
        }
        if let Some(t) = &self.thread {
            if !is_object_id(t) {
                return Err(ChatError::Invalid("thread is not a commit id"));
            }
        }
        if let Some(n) = &self.name {
            if n.chars().count() > MAX_NAME || n.chars().any(char::is_control) {
                return Err(ChatError::Invalid("bad name"));
            }
        }
        if self.nonce.len() > 64 {
            return Err(ChatError::Invalid("bad nonce"));
        }
        Ok(())
    }

    /// The message in an envelope, bounds checked (the signature is checked before, by the caller).
    pub fn from_envelope(env: &Envelope) -> Result<Self, ChatError> {
        if env.kind != KIND {
            return Err(ChatError::WrongKind(env.kind.clone()));
        }
        let m: Self = serde_json::from_str(&env.body).map_err(|e| ChatError::Malformed(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_text_is_tamed() {
        assert_eq!(tame("a\u{1b}[2J\r\nb\rc\td\u{7}"), "a\u{fffd}[2J\nb\nc\td\u{fffd}");
        assert_eq!(tame("plain é 漢"), "plain é 漢");
    }

    fn repo() -> RepoId {
        RepoId::try_from("d".repeat(40)).unwrap()
    }

    fn msg(text: &str) -> ChatMessage {
        ChatMessage { thread: None, text: text.into(), name: Some("alice".into()), nonce: "01".into() }
    }

    #[test]
    fn good_messages_pass_and_round_trip() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let m = ChatMessage { thread: Some("a".repeat(40)), ..msg("hi ✓ 世界\n\tindented? yes") };
        let r = repo();
        let env = Envelope::sign(&key, KIND, &r, 1, m.to_body());
        assert_eq!(ChatMessage::from_envelope(&env).unwrap(), m);
        assert_eq!(room_id(&r, m.thread.as_deref()), format!("{r}/{}", "a".repeat(40)));
        assert_eq!(room_id(&r, None), r.as_str());
    }

    #[test]
    fn a_thread_reply_makes_a_notice_for_the_room_with_its_first_words() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let commit = "a".repeat(40);
        let long = format!("looks good,\n\tbut {}", "very ".repeat(30));
        let m = ChatMessage { thread: Some(commit.clone()), ..msg(&long) };
        let env = Envelope::sign(&key, KIND, &repo(), 7, m.to_body());
        let reply = ChatEntry::new(&env, key.public().to_peer_id().to_string(), m, false, 9);
        let notice = reply.notice().expect("a reply in a thread has a notice");
        assert_eq!(notice.room, repo().as_str(), "in the repository's room");
        assert_eq!(notice.thread.as_deref(), Some(commit.as_str()));
        assert_eq!(notice.id, format!("{}/notice", reply.id), "an id of its own");
        assert!(
            notice.text.starts_with("looks good, but very very") && notice.text.ends_with("very…"),
            "{}",
            notice.text
        );
        assert!(notice.text.chars().count() <= NOTICE_EXCERPT + 1, "{}", notice.text);
        assert_eq!((notice.peer, notice.sent_at, notice.received_at), (reply.peer.clone(), 7, 9));
        let room = ChatEntry { room: repo().to_string(), ..reply };
        assert!(room.notice().is_none(), "a room's message has none");
        assert_eq!(excerpt("short\nreply", 80), "short reply");
        assert_eq!(excerpt(&"x".repeat(100), 10), format!("{}…", "x".repeat(10)), "one long word is cut");
    }

    #[test]
    fn bad_messages_are_refused() {
        assert_eq!(msg(&"x".repeat(MAX_TEXT + 1)).validate(), Err(ChatError::TooLong(MAX_TEXT + 1)));
        assert!(msg(&"é".repeat(MAX_TEXT)).validate().is_ok(), "the bound counts characters, not bytes");
        assert_eq!(msg("  \n").validate(), Err(ChatError::Empty));
        for evil in ["\u{1b}[2J", "bell\u{7}", "\u{1b}]0;title\u{7}", "cr\rover", "\u{9b}31m"] {
            assert!(msg(evil).validate().is_err(), "{evil:?}");
        }
        let bad_thread = ChatMessage { thread: Some("HEAD".into()), ..msg("x") };
        assert!(bad_thread.validate().is_err());
        let key = libp2p::identity::Keypair::generate_ed25519();
        let env = Envelope::sign(&key, "announce", &repo(), 1, msg("x").to_body());
        assert!(matches!(ChatMessage::from_envelope(&env), Err(ChatError::WrongKind(_))));
    }
}
