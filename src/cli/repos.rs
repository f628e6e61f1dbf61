//! `git p2p repos [--json]`: the repositories registered with the node, each with where it is,
//! its id and name, how its hooks stand (read from the files) and our last announcement there;
//! one whose directory is gone is said so (`git p2p deinit PATH` forgets it).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::Ctx;
use crate::control::api::RegisteredRepo;
use crate::hooks::{self, State};
use crate::tui::view::inert;

/// A registered repository as this machine has it now.
pub struct Place {
    /// The work tree (the git dir for a bare repository); for one that is gone, where its work
    /// tree was, as far as its git dir tells.
    pub path: Option<PathBuf>,
    /// The git dir its work trees share; None when it is gone.
    pub common_dir: Option<PathBuf>,
    /// Our hooks there (None: the repository is gone).
    pub hooks: Option<State>,
}

impl Place {
    pub fn exists(&self) -> bool {
        self.common_dir.is_some()
    }
}

/// Where a registration's git dir is, and how its hooks stand.
pub fn place(entry: &RegisteredRepo) -> Place {
    let Some(git_dir) = entry.repo.git_dir.as_ref().map(|d| d.as_path()) else {
        return Place { path: None, common_dir: None, hooks: None };
    };
    match crate::git::locate(git_dir) {
        Some((work_tree, common_dir)) => {
            let hooks = hooks::hooks_dir(git_dir).ok().map(|dir| hooks::state(&dir));
            Place {
                path: Some(work_tree.unwrap_or_else(|| git_dir.to_path_buf())),
                common_dir: Some(common_dir),
                hooks,
            }
        }
        None => Place { path: Some(gone_work_tree(git_dir)), common_dir: None, hooks: None },
    }
}

/// Where the work tree of a git dir that is gone was: the directory `.git` was in; a linked
/// work tree's git dir (`.git/worktrees/<name>`) or a bare one names only itself.
fn gone_work_tree(git_dir: &Path) -> PathBuf {
    match git_dir.parent() {
        Some(parent) if git_dir.file_name().is_some_and(|n| n == ".git") => parent.to_path_buf(),
        _ => git_dir.to_path_buf(),
    }
}

pub fn run(ctx: &Ctx, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut repos: Vec<(RegisteredRepo, Place)> = ctx
        .client()?
        .repos()?
        .into_iter()
        .map(|r| {
            let at = place(&r);
            (r, at)
        })
        .collect();
    repos.sort_by(|a, b| (&a.1.path, &a.0.repo.id).cmp(&(&b.1.path, &b.0.repo.id)));
    if json {
        for (r, p) in &repos {
            let line = serde_json::json!({
                "path": p.path.as_ref().map(|p| p.to_string_lossy()),
                "git_dir": r.repo.git_dir.as_ref().map(|d| d.as_path().to_string_lossy().into_owned()),
                "exists": p.exists(),
                "id": r.repo.id,
                "name": r.repo.name,
                "hooks": p.hooks.map(State::label),
                "last_announced": r.last_announced.as_ref().map(|a| serde_json::json!({
                    "commit": a.commit, "time": a.at,
                })),
            });
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    if repos.is_empty() {
        writeln!(out, "no repository registered with the node (git p2p init in one registers it)")?;
        return Ok(());
    }
    let rows: Vec<[String; 5]> = repos
        .iter()
        .map(|(r, p)| {
            let path = match &p.path {
                // Registered by a version that did not say where.
                None => "(not known)".to_string(),
                Some(path) if p.exists() => inert(&path.to_string_lossy()),
                Some(path) => format!("{} (gone)", inert(&path.to_string_lossy())),
            };
            let hooks = p.hooks.map_or("-", State::label).to_string();
            let last = r.last_announced.as_ref().map_or("never".to_string(), |a| {
                format!("{} {}", super::fmt::local_time(a.at / 1000), &a.commit[..a.commit.len().min(10)])
            });
            [path, r.repo.id.short().to_string(), inert(&r.repo.name), hooks, last]
        })
        .collect();
    let header = ["PATH", "ID", "NAME", "HOOKS", "LAST ANNOUNCED"].map(str::to_string);
    let mut widths = [0; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        writeln!(out, "{line}")?;
    }
    if repos.iter().any(|(_, p)| !p.exists()) {
        eprintln!("git-p2p: a repository that is gone stays registered until: git p2p deinit PATH");
    }
    Ok(())
}
