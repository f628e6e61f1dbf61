//! `git p2p init`: set up the current repository: install the post-commit hook and register the
//! repository with the node (starting it if needed), so it joins the repository's topics.
//! `init --undo` is `deinit`.

use std::io::Write;

use super::Ctx;

pub fn run(ctx: &Ctx, out: &mut dyn Write) -> anyhow::Result<()> {
    let repo = ctx.repo()?;
    if repo.is_bare() {
        anyhow::bail!("{} is a bare repository: git p2p init needs a clone with a work tree", repo.git_dir.display());
    }
    let hooks = super::hooks::install(ctx)?;
    // The node's answer is its registry's entry: the name `repos` and `daemon status` show.
    let entry = ctx.client()?.register_repo(repo.info())?;
    writeln!(out, "{hooks}")?;
    writeln!(out, "registered {} (repo id {}) with the node", entry.name, entry.id.short())?;
    writeln!(out, "fetch your peers' work with: git remote add peers p2p://{}", entry.id)?;
    Ok(())
}
