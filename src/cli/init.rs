//! `git p2p init`: set up the current repository (register it with the node).

use std::io::Write;

use super::Ctx;
use crate::control::proto::{RepoInfo, Request};

pub fn run(ctx: &Ctx, out: &mut dyn Write) -> anyhow::Result<()> {
    let repo = ctx.repo()?;
    if repo.is_bare() {
        anyhow::bail!("{} is a bare repository: git p2p init needs a clone with a work tree", repo.git_dir.display());
    }
    let mut client = ctx.client()?;
    let info = RepoInfo { id: repo.repo_id.to_string(), name: repo.room_name.clone() };
    client.request(Request::RegisterRepo { repo: info })?;
    writeln!(out, "registered {} (repo id {}) with the node", repo.room_name, repo.repo_id.short())?;
    Ok(())
}
