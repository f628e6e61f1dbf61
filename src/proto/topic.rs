//! Gossipsub topic names: versioned, namespaced by repo id, hashed on the wire.
//!
//! Topics are derived from the repository's root commit, never from HEAD: a topic per HEAD would
//! split the room at every commit. The name is hashed (gossipsub `Sha256Topic`), so observers of
//! the wire learn which peers share a topic but not the repo id from the topic alone.

use libp2p::gossipsub::{Sha256Topic, TopicHash};

use super::repo::RepoId;

/// Version of the topic naming scheme; bumped if message formats change incompatibly.
/// 2: gossip messages are anonymous (the envelope inside is what is signed).
pub const TOPIC_VERSION: u32 = 2;

/// The topic on which commits of a repository are announced.
pub fn commits(repo_id: &RepoId) -> Sha256Topic {
    Sha256Topic::new(format!("git-p2p/{TOPIC_VERSION}/{repo_id}/commits"))
}

/// The repository's chat room.
pub fn chat(repo_id: &RepoId) -> Sha256Topic {
    Sha256Topic::new(format!("git-p2p/{TOPIC_VERSION}/{repo_id}/chat"))
}

/// Every commit thread of a repository: each node of the repository is on it, so that it keeps
/// every thread's messages (a thread opened later has its history) and its room can tell of
/// replies. Thread messages are published here.
pub fn threads(repo_id: &RepoId) -> Sha256Topic {
    Sha256Topic::new(format!("git-p2p/{TOPIC_VERSION}/{repo_id}/threads"))
}

/// The chat thread about one commit, where nodes before [`threads`] existed publish its
/// messages (a node on the thread hears them there too).
pub fn commit_thread(repo_id: &RepoId, commit_id: &str) -> Sha256Topic {
    Sha256Topic::new(format!("git-p2p/{TOPIC_VERSION}/{repo_id}/chat/{commit_id}"))
}

/// The hash under which peers subscribe to a repo's commits; used to tell which repos a peer has.
pub fn repo_marker(repo_id: &RepoId) -> TopicHash {
    commits(repo_id).hash()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_distinct_stable_and_hide_the_repo_id() {
        let repo = RepoId::try_from("a".repeat(40)).unwrap();
        let other = RepoId::try_from("b".repeat(40)).unwrap();
        let hashes = [
            commits(&repo).hash(),
            chat(&repo).hash(),
            commit_thread(&repo, other.as_str()).hash(),
            threads(&repo).hash(),
            commits(&other).hash(),
        ];
        for (i, a) in hashes.iter().enumerate() {
            for b in &hashes[i + 1..] {
                assert_ne!(a, b);
            }
            assert!(!a.as_str().contains(repo.as_str()), "hashed on the wire");
        }
        assert_eq!(commits(&repo).hash(), repo_marker(&repo), "same input, same topic");
    }
}
