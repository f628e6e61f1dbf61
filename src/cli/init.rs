//! `git p2p init`: set up the current repository: install the post-commit hook and register the
//! repository with the node (starting it if needed), so it joins the repository's topics.

use std::io::Write;

use super::Ctx;

pub fn run(ctx: &Ctx, out: &mut dyn Write) -> anyhow::Result<()> {
    let repo = ctx.repo()?;
    if repo.is_bare() {
        anyhow::bail!("{} is a bare repository: git p2p init needs a clone with a work tree", repo.git_dir.display());
    }
    let hooks = super::hooks::install(ctx)?;
    ctx.client()?.register_repo(repo.info())?;
    writeln!(out, "{hooks}")?;
    writeln!(out, "registered {} (repo id {}) with the node", repo.room_name, repo.repo_id.short())?;
    writeln!(out, "fetch your peers' work with: git remote add peers p2p://{}", repo.repo_id)?;
    Ok(())
}
