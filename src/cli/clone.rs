//! `git p2p clone <repo-id|room> [DIR] [--author A]`: `git clone p2p://<repo-id>/<author>` (the
//! remote helper does the work), then what `git p2p init` does in the new clone, with the
//! all-authors remote `peers` added.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

use super::{CloneArgs, Ctx};
use crate::proto::peer::short;
use crate::proto::repo::RepoId;

pub fn run(ctx: &Ctx, args: &CloneArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let paths = ctx.paths()?;
    let mut client = ctx.client()?;
    let repo = match RepoId::try_from(args.repo.to_ascii_lowercase()) {
        Ok(id) => id,
        Err(_) => {
            let status = client.status()?;
            let known: Vec<_> = status
                .repos
                .iter()
                .filter(|r| r.name == args.repo || r.name.ends_with(&format!("/{}", args.repo)))
                .collect();
            match known.as_slice() {
                [one] => one.id.clone(),
                [] => bail!("{:?} is neither a repository id (40 or 64 hex digits) nor the room name of a repository registered here", args.repo),
                _ => bail!("{:?} names several repositories registered here: give the repository id", args.repo),
            }
        }
    };
    let author = match &args.author {
        Some(a) => a.clone(),
        None => {
            client.mirror_sync(repo.clone(), None).context("cannot fetch the repository's refs")?;
            let me =
                crate::identity::Identity::load_or_create_libp2p(&paths.data_dir)?.public().to_peer_id().to_string();
            let authors = crate::node::mirror::authors(&paths.mirror(&repo));
            let others: Vec<&String> = authors.iter().filter(|a| **a != me).collect();
            match (others.as_slice(), authors.as_slice()) {
                ([one], _) => (*one).clone(),
                ([], [only]) => only.clone(),
                ([], _) => bail!("nobody published repository {} yet", repo.short()),
                (many, _) => bail!(
                    "several authors published repository {}: pick one with --author ({})",
                    repo.short(),
                    many.iter().map(|a| short(a)).collect::<Vec<_>>().join(", ")
                ),
            }
        }
    };
    let dir = args.directory.clone().unwrap_or_else(|| PathBuf::from(repo.short()));
    let dir = if dir.is_absolute() { dir } else { ctx.dir.join(dir) };
    let url = format!("{}{repo}/{author}", crate::proto::remote::SCHEME);
    let mut clone = Command::new("git");
    clone.arg("clone");
    if args.quiet {
        clone.arg("-q");
    }
    let status = clone.arg(&url).arg(&dir).current_dir(&ctx.dir).status().context("cannot run git clone")?;
    if !status.success() {
        bail!("git clone {url} failed");
    }
    let all = format!("{}{repo}", crate::proto::remote::SCHEME);
    let added = Command::new("git").arg("-C").arg(&dir).args(["remote", "add", "peers", &all]).status()?;
    if !added.success() {
        bail!("cannot add the remote peers ({all})");
    }
    let sub = Ctx { dir: dir.clone(), verbosity: ctx.verbosity, paths: ctx.paths.clone(), warned: Default::default() };
    super::init::run(&sub, out)?;
    writeln!(out, "cloned {url} into {}", dir.display())?;
    Ok(())
}
