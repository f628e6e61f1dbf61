//! A message of ours waiting to be published: an announcement or a room message, signed, with
//! the repository (and thread) it goes to. The hook spools these, the node keeps them in its
//! durable outbox until a peer took them.

use serde::{Deserialize, Serialize};

use super::envelope::Envelope;
use super::repo::RepoInfo;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OutboxEntry {
    pub repo: RepoInfo,
    pub envelope: Envelope,
    /// For chat messages in a commit's thread: the commit.
    #[serde(default)]
    pub thread: Option<String>,
}

impl OutboxEntry {
    /// The gossipsub topic this entry is published on.
    pub fn topic(&self) -> libp2p::gossipsub::Sha256Topic {
        use super::topic;
        match (self.envelope.kind.as_str(), &self.thread) {
            // Every thread's messages go where every node of the repository hears them.
            (super::chat::KIND, Some(_)) => topic::threads(&self.repo.id),
            (super::chat::KIND, None) => topic::chat(&self.repo.id),
            _ => topic::commits(&self.repo.id),
        }
    }
}
