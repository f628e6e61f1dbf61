//! `git p2p hooks install|uninstall`: the post-commit and post-merge hooks of the current repository.

use std::io::Write;

use super::{Ctx, HooksCommand};
use crate::hooks::{self, Installed, Uninstalled};

pub fn run(ctx: &Ctx, command: HooksCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match command {
        HooksCommand::Install => {
            let message = install(ctx)?;
            writeln!(out, "{message}")?;
        }
        HooksCommand::Uninstall => {
            work_tree(ctx)?;
            let dir = hooks::hooks_dir(&ctx.dir)?;
            let message = match hooks::uninstall(&dir)? {
                Uninstalled::Removed => "removed the post-commit and post-merge hooks",
                Uninstalled::Restored => {
                    "removed the post-commit and post-merge hooks and restored what was there before"
                }
                Uninstalled::NotInstalled => "no git-p2p hook installed: nothing changed",
            };
            writeln!(out, "{message} ({})", dir.display())?;
        }
    }
    Ok(())
}

/// Installs the hook; returns what happened, for the user.
pub fn install(ctx: &Ctx) -> anyhow::Result<String> {
    work_tree(ctx)?;
    let dir = hooks::hooks_dir(&ctx.dir)?;
    let what = match hooks::install(&dir)? {
        Installed::Fresh => "installed the post-commit and post-merge hooks",
        Installed::Chained => "installed the post-commit and post-merge hooks (your existing hook still runs first)",
        Installed::Updated => "post-commit and post-merge hooks already installed (updated)",
    };
    Ok(format!("{what} in {}", dir.display()))
}

/// Hooks run only in repositories with a work tree (git never commits in a bare one).
fn work_tree(ctx: &Ctx) -> anyhow::Result<crate::git::RepoContext> {
    let repo = ctx.repo()?;
    if repo.is_bare() {
        anyhow::bail!("{} is a bare repository: git-p2p's hooks need a clone with a work tree", repo.git_dir.display());
    }
    Ok(repo)
}
