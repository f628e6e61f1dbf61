//! `git p2p notes push|pull`: git notes through the DHT. Push publishes your notes on this
//! repository's commits (`notes/<ref>/<commit>` keys, and an index of them under `notes/<ref>`:
//! [`crate::proto::kv::notes_key`]) and unpublishes those you removed since; pull fetches
//! peers' notes on commits you have into `refs/notes/p2p/<author>`, never into your own notes
//! refs, so `git log --notes=p2p/<author>` shows them.

use std::collections::BTreeSet;
use std::io::Write;

use super::{Ctx, NotesCommand};
use crate::identity::Identity;
use crate::proto::kv::{notes_key, Record, MAX_VALUE};
use crate::proto::repo::RepoId;

/// The local notes ref for an author's notes: the end of their PeerId, like a short commit id.
pub fn author_ref(peer: &str) -> String {
    format!("refs/notes/p2p/{}", crate::proto::peer::short(peer))
}

fn get(ctx: &Ctx, repo: &RepoId, key: &str) -> anyhow::Result<Option<Record>> {
    Ok(ctx.client()?.kv_get(repo.clone(), key)?.record)
}

pub fn run(ctx: &Ctx, command: NotesCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    let repo = ctx.repo()?;
    let info = repo.info();
    match command {
        NotesCommand::Push { notes_ref } => {
            let notes = repo.notes(&notes_ref)?;
            if let Some((commit, text)) = notes.iter().find(|(_, text)| text.len() > MAX_VALUE) {
                anyhow::bail!("the note on {commit} is too large ({} bytes, at most {MAX_VALUE})", text.len());
            }
            let index: BTreeSet<String> = notes.iter().map(|(commit, _)| commit.clone()).collect();
            let size = serde_json::to_vec(&index)?.len();
            if size > MAX_VALUE {
                anyhow::bail!("too many notes for one index ({size} bytes, at most {MAX_VALUE})");
            }
            let mut client = ctx.client()?;
            for (commit, text) in &notes {
                client.note_put(info.clone(), &notes_ref, commit, text, repo.user_name.clone())?;
            }
            let published = client.notes_index(info, &notes_ref, index, repo.user_name.clone())?;
            let removed = published.removed.len();
            if notes.is_empty() && removed == 0 {
                writeln!(out, "no notes in {notes_ref}: nothing to push")?;
                return Ok(());
            }
            write!(out, "pushed {} note{} from {notes_ref}", notes.len(), if notes.len() == 1 { "" } else { "s" })?;
            match removed {
                0 => writeln!(out)?,
                n => writeln!(out, "; unpublished {n} removed since the last push")?,
            }
        }
        NotesCommand::Pull { notes_ref } => {
            let me = Identity::load_or_create_libp2p(&ctx.paths()?.data_dir)?.public().to_peer_id().to_string();
            let Some(index) = get(ctx, &info.id, &notes_key(&notes_ref, None))? else {
                writeln!(out, "no notes published for this repository")?;
                return Ok(());
            };
            let mut written = 0;
            for entry in index.values() {
                let Ok(author) = entry.verify(&index.repo, &index.key).map(|p| p.to_string()) else { continue };
                if author == me {
                    continue;
                }
                let commits: BTreeSet<String> =
                    entry.value_bytes().and_then(|v| serde_json::from_slice(&v).ok()).unwrap_or_default();
                for commit in commits.iter().filter(|c| repo.has_commit(c)) {
                    let Some(record) = get(ctx, &info.id, &notes_key(&notes_ref, Some(commit)))? else { continue };
                    let note =
                        record.values().into_iter().find(|e| e.author == entry.author).and_then(|e| e.value_bytes());
                    if let Some(text) = note {
                        repo.set_note(&author_ref(&author), commit, &text)?;
                        written += 1;
                    }
                }
            }
            writeln!(out, "pulled {written} note{} into refs/notes/p2p/", if written == 1 { "" } else { "s" })?;
        }
    }
    Ok(())
}
