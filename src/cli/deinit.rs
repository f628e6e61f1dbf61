//! `git p2p deinit [PATH|ID]` (also `git p2p init --undo`): undo `init`. Our hooks leave the
//! repository (the hooks they chained are put back; a hook that is not ours is never touched)
//! and the node forgets it (leaves its topics, stops reading its reflog). Named by a path or by
//! its id, a repository is found from anywhere, also one whose directory is gone (then it is
//! only forgotten).
//!
//! The node registers a repository (its root commit) at one git dir: the last clone `init` ran
//! in. `deinit` in another clone of it removes that clone's hooks and leaves the registration
//! alone, saying where it is; `deinit ID` forgets it whatever clone it names.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::repos::place;
use super::Ctx;
use crate::control::api::RegisteredRepo;
use crate::hooks::{self, Uninstalled};

/// What `deinit` was pointed at.
struct Target {
    /// The directory of the repository whose hooks go (None: gone, or bare).
    hooks_in: Option<PathBuf>,
    /// The registration to forget.
    unregister: Option<RegisteredRepo>,
    /// The repository's registration, when it names another clone (kept).
    elsewhere: Option<(RegisteredRepo, Option<PathBuf>)>,
    /// How to name it to the user.
    shown: String,
}

pub fn run(ctx: &Ctx, target: Option<&str>, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut client = ctx.client()?;
    let registered = client.repos()?;
    let target = resolve(ctx, target, registered)?;
    let mut done = false;
    if let Some(dir) = &target.hooks_in {
        let hooks_dir = hooks::hooks_dir(dir)?;
        let said = match hooks::uninstall(&hooks_dir)? {
            Uninstalled::Removed => Some("removed the post-commit and post-merge hooks"),
            Uninstalled::Restored => {
                Some("removed the post-commit and post-merge hooks and put back the hooks they ran")
            }
            Uninstalled::NotInstalled => None,
        };
        if let Some(said) = said {
            writeln!(out, "{said} ({})", hooks_dir.display())?;
            done = true;
        }
    }
    let mut kept = String::new();
    if let Some(entry) = target.unregister {
        let entry = client.unregister_repo(entry.repo.id)?;
        writeln!(out, "unregistered {} (repo id {}) from the node", entry.name, entry.id.short())?;
        done = true;
    } else if let Some((entry, path)) = &target.elsewhere {
        let at = path.as_ref().map_or("another git dir".to_string(), |p| p.display().to_string());
        kept = format!(
            "{} stays registered with the node through another clone, {at} (git p2p deinit there, or git p2p \
             deinit {} to unregister it anyway)",
            entry.repo.name,
            entry.repo.id.short()
        );
    }
    match (done, kept.is_empty()) {
        (true, true) => {}
        (true, false) => writeln!(out, "{kept}")?,
        (false, true) => {
            anyhow::bail!("nothing to undo: {} has no git-p2p hook and is not registered with the node", target.shown)
        }
        (false, false) => anyhow::bail!("nothing to undo: {} has no git-p2p hook; {kept}", target.shown),
    }
    Ok(())
}

fn resolve(ctx: &Ctx, target: Option<&str>, registered: Vec<RegisteredRepo>) -> anyhow::Result<Target> {
    let repo = match target {
        None => Some(ctx.repo()?),
        Some(t) if ctx.dir.join(t).exists() => Some(crate::git::open(&ctx.dir.join(t))?),
        Some(_) => None,
    };
    if let Some(repo) = repo {
        let shown = repo.workdir.as_ref().unwrap_or(&repo.git_dir).display().to_string();
        let hooks_in = repo.workdir.clone();
        let Some(entry) = registered.into_iter().find(|r| r.repo.id == repo.repo_id) else {
            return Ok(Target { hooks_in, unregister: None, elsewhere: None, shown });
        };
        let there = place(&entry);
        // Here (any of its work trees), or somewhere that is gone: this registration is ours
        // to undo. Another clone that exists keeps it.
        if there.common_dir.as_deref().is_none_or(|c| same_dir(c, &repo.common_dir)) {
            return Ok(Target { hooks_in, unregister: Some(entry), elsewhere: None, shown });
        }
        return Ok(Target { hooks_in, unregister: None, elsewhere: Some((entry, there.path)), shown });
    }
    let t = target.expect("no target means the current repository, handled above");
    let wanted = std::path::absolute(ctx.dir.join(t)).unwrap_or_else(|_| ctx.dir.join(t));
    let is_id = t.len() >= 4 && t.bytes().all(|b| b.is_ascii_hexdigit());
    let mut found: Vec<RegisteredRepo> = registered
        .into_iter()
        .filter(|r| {
            let by_id = is_id && r.repo.id.as_str().starts_with(&t.to_ascii_lowercase());
            let by_path = place(r).path.as_deref() == Some(wanted.as_path())
                || r.repo.git_dir.as_ref().is_some_and(|d| d.as_path() == wanted);
            by_id || by_path
        })
        .collect();
    let entry = match found.len() {
        0 => anyhow::bail!("no registered repository at or with id {t} (git p2p repos lists them)"),
        1 => found.remove(0),
        n => anyhow::bail!("{t} names {n} registered repositories: give more of the id (git p2p repos lists them)"),
    };
    let there = place(&entry);
    // Named by its id, a repository that exists loses its hooks too.
    let hooks_in = there.exists().then(|| there.path.clone()).flatten();
    let shown = there.path.as_ref().map_or(entry.repo.name.clone(), |p| p.display().to_string());
    Ok(Target { hooks_in, unregister: Some(entry), elsewhere: None, shown })
}

/// Whether two paths are one directory (through symlinks and `..`).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
