//! Repositories the node keeps open between hook notes: opening one with gix (discovery, config,
//! remotes, the root commit) costs about a millisecond, which every announcement paid.
//!
//! An entry is reused while the repository's config file is unchanged (remotes and the user
//! name come from there) and for at most [`KEEP`]; HEAD is re-read on every use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::git::{GitError, RepoContext};

/// Longest an open repository is reused (changes to the global config show after this).
const KEEP: Duration = Duration::from_secs(60);
/// Most repositories kept open.
const MAX_OPEN: usize = 32;

struct Entry {
    ctx: RepoContext,
    opened: Instant,
    config: Option<(SystemTime, u64)>,
}

#[derive(Default)]
pub struct RepoCache {
    entries: HashMap<PathBuf, Entry>,
}

fn config_stamp(git_dir: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(git_dir.join("config")).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl RepoCache {
    /// The repository at `dir` with HEAD as it is now, from the cache or freshly opened (a copy:
    /// the handle's stores are shared).
    pub fn open(&mut self, dir: &Path) -> Result<RepoContext, GitError> {
        if let Some(entry) = self.entries.remove(dir) {
            if entry.opened.elapsed() < KEEP && config_stamp(&entry.ctx.git_dir) == entry.config {
                let mut ctx = entry.ctx;
                if ctx.reread_head().is_ok() {
                    self.entries.insert(dir.to_path_buf(), Entry { ctx: ctx.clone(), ..entry });
                    return Ok(ctx);
                }
            }
        }
        let ctx = crate::git::open(dir)?;
        if self.entries.len() >= MAX_OPEN {
            let oldest = self.entries.iter().min_by_key(|(_, e)| e.opened).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
        let config = config_stamp(&ctx.git_dir);
        self.entries.insert(dir.to_path_buf(), Entry { ctx: ctx.clone(), opened: Instant::now(), config });
        Ok(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn a_kept_repository_follows_head_and_is_reopened_when_its_config_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        git(dir, &["init", "-q", "-b", "main"]);
        git(dir, &["config", "user.name", "First"]);
        git(dir, &["config", "user.email", "f@x"]);
        git(dir, &["commit", "-q", "--allow-empty", "-m", "one"]);
        let mut cache = RepoCache::default();
        let first = cache.open(dir).unwrap();
        assert_eq!((first.branch.as_deref(), first.user_name.as_deref()), (Some("main"), Some("First")));
        git(dir, &["checkout", "-q", "-b", "topic"]);
        git(dir, &["commit", "-q", "--allow-empty", "-m", "two"]);
        let kept = cache.open(dir).unwrap();
        assert_eq!(kept.branch.as_deref(), Some("topic"));
        assert_ne!(kept.head_commit, first.head_commit);
        git(dir, &["config", "user.name", "Second name"]);
        assert_eq!(cache.open(dir).unwrap().user_name.as_deref(), Some("Second name"));
    }
}
