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

    /// Takes a git dir newly named for a known repository (and with `rename`, its name); the
    /// entry as it is now.
    fn update(&mut self, repo: &RepoInfo, rename: bool) -> Option<&RepoInfo> {
        let known = self.list.iter_mut().find(|r| r.id == repo.id)?;
        if repo.git_dir.is_some() {
            known.git_dir = repo.git_dir.clone();
        }
        if rename {
            known.name = repo.name.clone();
        }
        Some(known)
    }

    /// `repo` under the name the registry knows it by, if it knows it (a clone elsewhere, or
    /// an announcement, does not rename a repository: only `git p2p init` does).
    pub fn as_known(&self, repo: &RepoInfo) -> RepoInfo {
        let name = self.list.iter().find(|r| r.id == repo.id).map_or(&repo.name, |r| &r.name);
        RepoInfo { name: name.clone(), ..repo.clone() }
    }

    fn remove(&mut self, id: &RepoId) -> Option<RepoInfo> {
        let i = self.list.iter().position(|r| r.id == *id)?;
        self.markers.retain(|(_, r)| r != id);
        Some(self.list.remove(i))
    }
}

impl Service {
    /// A repository of ours (`git p2p init`): stored, its topics joined, its reflog read from
    /// now on. The name it is registered under now is the one every command shows; the answer
    /// is the registry's entry.
    pub fn register(&mut self, repo: RepoInfo, reply: Reply<RepoInfo>, disk: &mut dyn Disk) {
        if let Err(e) = disk.add_repo(&repo) {
            let _ = reply.send(Err(Failure::new(format!("cannot register the repo: {e}"))));
            return;
        }
        self.push(Io::WatchReflog(repo.clone()));
        self.join_repo(repo.clone());
        let entry = self.repos.update(&repo, true).cloned().unwrap_or_else(|| repo.clone());
        self.push(Io::Bridge(BridgeOp::Refresh(entry.clone())));
        let _ = reply.send(Ok(entry));
    }

    /// A repository leaves the registry (`git p2p deinit`): forgotten by the store (with where
    /// its reflogs were read), its topics and rooms left. Our announcements of it that still
    /// wait for a peer go out all the same, and our DHT records stay until they expire.
    pub fn unregister(&mut self, id: RepoId, reply: Reply<RepoInfo>, disk: &mut dyn Disk) {
        if !self.repos.all().iter().any(|r| r.id == id) {
            let _ = reply.send(Err(Failure::new(format!("repository {} is not registered with the node", id.short()))));
            return;
        }
        if let Err(e) = disk.remove_repo(&id) {
            let _ = reply.send(Err(Failure::new(format!("cannot unregister the repo: {e}"))));
            return;
        }
        let entry = self.repos.remove(&id).expect("known: looked up above");
        for topic in self.rooms.leave_repo(&id) {
            self.push(Io::Unsubscribe(topic));
        }
        self.push(Io::Bridge(BridgeOp::Watch(self.repos.all().to_vec())));
        let _ = reply.send(Ok(entry));
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
        if let Some(known) = self.repos.update(repo, false) {
            let known = known.clone();
            self.push(Io::Bridge(BridgeOp::Refresh(known)));
        }
    }
}
