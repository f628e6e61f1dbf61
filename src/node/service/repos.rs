//! The repository registry: the repositories of our user the node serves (registered with
//! `git p2p init`, or known from an announcement of ours), where each lives on this machine, and
//! the topics that tell which repositories a peer shares with us.

use libp2p::gossipsub::TopicHash;

use super::rooms::Room;
use super::{BridgeOp, Disk, Io, Service};
use crate::control::api::{Failure, Reply};
use crate::proto::repo::{RepoId, RepoInfo};

#[derive(Default)]
pub struct Repos {
    list: Vec<RepoInfo>,
    /// Each repository's marker topic (its commits topic), to tell which a peer has.
    markers: Vec<(TopicHash, RepoId)>,
}

impl Repos {
    pub fn all(&self) -> &[RepoInfo] {
        &self.list
    }

    pub fn topics(&self) -> Vec<(TopicHash, RepoId)> {
        self.markers.clone()
    }

    /// Whether `repo` is registered already, at the same git dir (or the caller names none).
    pub fn knows_at(&self, repo: &RepoInfo) -> bool {
        self.list.iter().any(|r| r.id == repo.id && (repo.git_dir.is_none() || r.git_dir == repo.git_dir))
    }

    /// Adds `repo`; false if it was known.
    fn add(&mut self, repo: RepoInfo) -> bool {
        if self.list.iter().any(|r| r.id == repo.id) {
            return false;
        }
        self.markers.push((crate::proto::topic::repo_marker(&repo.id), repo.id.clone()));
        self.list.push(repo);
        true
    }

    /// Takes a git dir newly named for a known repository; the entry as it is now.
    fn update(&mut self, repo: &RepoInfo) -> Option<&RepoInfo> {
        let known = self.list.iter_mut().find(|r| r.id == repo.id)?;
        if repo.git_dir.is_some() {
            known.git_dir = repo.git_dir.clone();
        }
        Some(known)
    }
}

impl Service {
    /// A repository of ours (`git p2p init`): stored, its topics joined, its reflog read from
    /// now on.
    pub fn register(&mut self, repo: RepoInfo, reply: Reply<()>, disk: &mut dyn Disk) {
        if let Err(e) = disk.add_repo(&repo) {
            let _ = reply.send(Err(Failure::new(format!("cannot register the repo: {e}"))));
            return;
        }
        self.push(Io::WatchReflog(repo.clone()));
        self.join_repo(repo.clone());
        self.repo_changed(&repo);
        let _ = reply.send(Ok(()));
    }

    /// Joins a repository's commits topic, room and threads (once).
    pub(super) fn join_repo(&mut self, repo: RepoInfo) {
        if !self.repos.add(repo.clone()) {
            return;
        }
        self.join(Room::Commits { repo: repo.id.clone() });
        self.join(Room::Chat { repo: repo.id.clone(), thread: None });
        self.join(Room::Threads { repo: repo.id.clone() });
        self.push(Io::Bridge(BridgeOp::Watch(self.repos.all().to_vec())));
        self.push(Io::Bridge(BridgeOp::Refresh(repo)));
    }

    /// A repository of ours may look different now (a new commit, another git dir): the
    /// Nostr bridge re-reads it.
    pub(super) fn repo_changed(&mut self, repo: &RepoInfo) {
        if let Some(known) = self.repos.update(repo) {
            let known = known.clone();
            self.push(Io::Bridge(BridgeOp::Refresh(known)));
        }
    }
}
