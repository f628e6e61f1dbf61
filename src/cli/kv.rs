//! `git p2p kv set|get|ls|rm`: signed records in this repository's DHT namespace. git-p2p's
//! own keys (refs, notes) are not the user's to set or remove, and `ls` leaves them out.

use std::io::{Read, Write};

use super::{Ctx, KvCommand};
use crate::identity::Identity;
use crate::proto::kv::{reserved, user_key, validate_key, Entry, MAX_VALUE};

use crate::proto::repo::RepoInfo;

pub fn run(ctx: &Ctx, command: KvCommand, out: &mut dyn Write) -> anyhow::Result<std::process::ExitCode> {
    let repo = ctx.repo()?;
    let info = repo.info();
    match command {
        KvCommand::Set { key, value, file } => {
            user_key(&key)?;
            let bytes = match (value.as_deref(), file) {
                (_, Some(path)) => read_bounded(
                    std::fs::File::open(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
                )?,
                (Some("-"), None) => read_bounded(std::io::stdin())?,
                (Some(v), None) => v.as_bytes().to_vec(),
                (None, None) => anyhow::bail!("no value: give VALUE, --file FILE, or - for standard input"),
            };
            if bytes.len() > MAX_VALUE {
                anyhow::bail!("value too large ({} bytes, at most {MAX_VALUE}): not stored", bytes.len());
            }
            let replicas = put(ctx, &info, &key, Some(&bytes))?;
            report(out, "stored", &key, replicas)?;
        }
        KvCommand::Rm { key } => {
            user_key(&key)?;
            let replicas = put(ctx, &info, &key, None)?;
            report(out, "removed", &key, replicas)?;
        }
        KvCommand::Get { key, author, json } => {
            validate_key(&key)?;
            let record = ctx.client()?.kv_get(info.id, &key)?.record;
            let me = Identity::load_or_create_libp2p(&ctx.paths()?.data_dir)?.public().to_peer_id().to_string();
            let mut values: Vec<(String, &Entry)> = Vec::new();
            if let Some(record) = &record {
                for e in record.values() {
                    let peer = e.verify(&record.repo, &record.key).map(|p| p.to_string()).unwrap_or_default();
                    let npub = e.who.npub.as_deref().unwrap_or("");
                    let wanted = author.as_deref().map(crate::proto::peer::Author::parse);
                    if wanted.is_none_or(|a| a.matches(&peer, Some(npub), &me)) {
                        values.push((peer, e));
                    }
                }
            }
            if values.is_empty() {
                match &author {
                    Some(a) => anyhow::bail!("no value of {key:?} from {a}"),
                    None => anyhow::bail!("no value of {key:?} in this repository's DHT"),
                }
            }
            for (peer, e) in values {
                let value = e.value_bytes().unwrap_or_default();
                if json {
                    let text = String::from_utf8(value.clone()).ok();
                    let line = serde_json::json!({
                        "key": key, "author": peer, "name": e.who.name, "npub": e.who.npub, "own": peer == me,
                        "seq": e.seq, "time": e.ts,
                        "value": text, "value_hex": hex::encode(&value),
                    });
                    writeln!(out, "{line}")?;
                } else {
                    let short = crate::proto::peer::short(&peer);
                    let who = match (&e.who.name, peer == me) {
                        (_, true) => "you".to_string(),
                        (Some(name), false) => format!("{} (..{short})", crate::tui::view::inert(name)),
                        (None, false) => format!("..{short}"),
                    };
                    let shown = match std::str::from_utf8(&value) {
                        Ok(t) if !t.chars().any(|c| c.is_control() && c != '\n') => crate::tui::view::inert(t),
                        _ => format!("(binary, {} bytes, hex) {}", value.len(), hex::encode(&value)),
                    };
                    writeln!(out, "{}  {who}  {shown}", super::fmt::local_time(e.ts / 1000))?;
                }
            }
        }
        KvCommand::Ls { json, all } => {
            for k in ctx.client()?.kv_list(info.id, all)? {
                if json {
                    writeln!(out, "{}", serde_json::to_string(&k)?)?;
                    continue;
                }
                let what = match (k.removed, reserved(&k.key)) {
                    (true, _) => "  (removed)".to_string(),
                    (false, Some(kind)) => format!("  ({})", kind.command()),
                    (false, None) => String::new(),
                };
                writeln!(out, "{}  {}{what}", super::fmt::local_time(k.time / 1000), k.key)?;
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn read_bounded(reader: impl Read) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.take(MAX_VALUE as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > MAX_VALUE {
        anyhow::bail!("value too large (more than {MAX_VALUE} bytes): not stored");
    }
    Ok(bytes)
}

/// Has the node sign and put `value` (None: a tombstone) for `key`; returns the replica count.
/// The node signs: it holds our last entry, so the sequence number follows it whatever this
/// machine's clock says (see `node::service::kv`).
fn put(ctx: &Ctx, repo: &RepoInfo, key: &str, value: Option<&[u8]>) -> anyhow::Result<usize> {
    let name = ctx.repo()?.user_name;
    Ok(ctx.client()?.kv_put(repo.clone(), key, value, name)?.replicas)
}

fn report(out: &mut dyn Write, what: &str, key: &str, replicas: usize) -> anyhow::Result<()> {
    if replicas == 0 {
        writeln!(out, "{what} {key} on this node only: no peer reachable yet (it is republished later)")?;
    } else {
        writeln!(out, "{what} {key} (in the DHT)")?;
    }
    Ok(())
}
