//! Which commit a thread is about: `--commit REV` names any revision of this repository, or a
//! commit a peer announced (its whole id, or a start of it that names one commit, 4 hex digits
//! at least); and the summaries that the room's notices of thread replies show.

use std::collections::HashMap;

use anyhow::bail;

use super::Ctx;
use crate::git::RepoContext;
use crate::proto::announce::Commit;

/// Fewest hex digits that name a commit by the start of its id (git's shortest abbreviation).
const MIN_PREFIX: usize = 4;
/// Candidates an ambiguous start of an id lists, at most.
const LISTED: usize = 6;
/// Commits the node is asked for at most, to list the candidates and say how many more there are.
const ASKED: usize = 100;
/// Summaries remembered (a follower may run for days; threads are far fewer).
const KNOWN_MAX: usize = 1000;

/// The commit `rev` names: a revision of this repository (HEAD, a branch, HEAD~2, an id), else
/// the one commit, here or announced by a peer, whose id starts with it.
pub fn resolve(ctx: &Ctx, repo: &RepoContext, rev: &str) -> anyhow::Result<Commit> {
    let prefix = rev.to_ascii_lowercase();
    let hex = (MIN_PREFIX..=64).contains(&prefix.len()) && prefix.bytes().all(|b| b.is_ascii_hexdigit());
    match repo.commit_info(rev) {
        // A name (HEAD, a branch, a tag, HEAD~2): refs come first, as in git.
        Ok(commit) if !hex || !commit.id.starts_with(&prefix) => return Ok(commit),
        Ok(commit) if commit.id == prefix => return Ok(commit),
        Err(e) if !hex => return Err(e.into()),
        // The start of an id: every commit it names counts, here and announced.
        _ => {}
    }
    let mut candidates = repo.commits_with_prefix(&prefix)?;
    for commit in ctx.client()?.feed_commits(repo.repo_id.clone(), &prefix, ASKED)? {
        if !candidates.iter().any(|c| c.id == commit.id) {
            candidates.push(commit);
        }
    }
    candidates.sort_by(|a, b| a.id.cmp(&b.id));
    match candidates.len() {
        0 => bail!(
            "unknown commit {rev:?}: not in this repository, and no peer announced a commit whose id starts with it \
             (git p2p log lists what they announced)"
        ),
        1 => Ok(candidates.remove(0)),
        n => {
            let listed: Vec<String> = candidates.iter().take(LISTED).map(|c| describe(c, prefix.len() + 3)).collect();
            let more = if n > LISTED { format!(" and {} more", n - LISTED) } else { String::new() };
            bail!("{rev:?} names {n} commits: {}{more}; give more digits", listed.join(", "))
        }
    }
}

/// `1a2b3c4 "Fix the frobnicator"`: the id's first `digits` (7 at least) and the summary.
fn describe(commit: &Commit, digits: usize) -> String {
    let summary = crate::tui::view::inert(&commit.summary);
    format!("{} \"{summary}\"", short(&commit.id, digits))
}

/// The first `digits` of an id, 7 at least (as git abbreviates).
pub fn short(id: &str, digits: usize) -> &str {
    &id[..id.len().min(digits.max(7))]
}

/// The summaries of the commits threads are about, looked up once each: in this repository,
/// else among what peers announced.
pub struct Summaries<'a> {
    ctx: &'a Ctx,
    repo: &'a RepoContext,
    known: HashMap<String, Option<String>>,
}

impl<'a> Summaries<'a> {
    pub fn new(ctx: &'a Ctx, repo: &'a RepoContext) -> Self {
        Self { ctx, repo, known: HashMap::new() }
    }

    /// The summary of `commit` (a whole id), if this repository has it or a peer announced it.
    pub fn of(&mut self, commit: &str) -> Option<String> {
        if let Some(known) = self.known.get(commit) {
            return known.clone();
        }
        let summary = self.repo.commit_info(commit).ok().map(|c| c.summary).or_else(|| {
            // Never a node started for this: a follower waits for one (`control::follow`).
            let mut client = crate::control::Client::connect(self.ctx.paths().ok()?).ok()?;
            let found = client.feed_commits(self.repo.repo_id.clone(), commit, 1).ok()?;
            found.into_iter().find(|c| c.id == commit).map(|c| c.summary)
        });
        if self.known.len() >= KNOWN_MAX {
            self.known.clear();
        }
        self.known.insert(commit.to_string(), summary.clone());
        summary
    }
}
