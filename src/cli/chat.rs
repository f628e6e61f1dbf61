//! `git p2p chat`: the repository's chat room (or a commit's thread: [`super::thread`] says
//! which). Headless modes for scripts: `--send TEXT` and `--tail [-f] [--json]`; in the room,
//! a reply in a thread shows as one line with its first words.

use std::io::Write;

use super::thread::{self, Summaries};
use super::{ChatArgs, Ctx};
use crate::control::{Client, Room};
use crate::identity::Identity;
use crate::proto::chat::ChatEntry;
use crate::proto::chat::{ChatMessage, KIND};
use crate::proto::envelope::Envelope;
use crate::proto::repo::RepoInfo;

/// Messages `--tail` shows before following.
const TAIL_COUNT: usize = 50;

pub fn run(ctx: &Ctx, args: &ChatArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let repo = ctx.repo()?;
    if let Some(text) = &args.send {
        // Refused here, before anything is looked up, signed or sent: never split, never cut.
        ChatMessage { thread: None, text: text.clone(), name: repo.user_name.clone(), nonce: String::new() }
            .validate()?;
    }
    let commit = match &args.commit {
        Some(rev) => Some(thread::resolve(ctx, &repo, rev)?),
        None => None,
    };
    let thread = commit.as_ref().map(|c| c.id.clone());
    let repo_info = repo.info();
    if let Some(text) = &args.send {
        let message =
            ChatMessage { thread: thread.clone(), text: text.clone(), name: repo.user_name.clone(), nonce: nonce() };
        message.validate()?;
        let paths = ctx.paths()?;
        paths.ensure()?;
        let key = Identity::load_or_create_libp2p(&paths.data_dir)?;
        let envelope = Envelope::sign(&key, KIND, &repo_info.id, crate::clock::unix_now_ms(), message.to_body());
        let sent = ctx.client()?.chat_send(repo_info, envelope, thread)?;
        let (id, peers) = (sent.id, sent.peers);
        if args.json {
            writeln!(out, "{}", serde_json::json!({ "id": id, "peers": peers, "queued": sent.queued }))?;
        } else if peers == 0 {
            writeln!(out, "queued: no peer in the room yet; it goes out when one joins")?;
        } else if sent.queued {
            writeln!(out, "queued behind earlier messages: peers take 20 a second from one author")?;
        } else {
            writeln!(out, "sent to {peers} peer{}", if peers == 1 { "" } else { "s" })?;
        }
        return Ok(());
    }
    if !args.tail {
        return window(ctx, &repo, repo_info, commit);
    }
    let mut tail = ctx.client()?.tail(ctx.paths()?, Room::of(repo_info, thread), TAIL_COUNT, args.follow)?;
    let mut summaries = Summaries::new(ctx, &repo);
    for m in std::mem::take(&mut tail.history) {
        print_message(&m, args.json, &mut summaries, out)?;
    }
    out.flush()?;
    while let Some(m) = tail.recv()? {
        print_message(&m, args.json, &mut summaries, out)?;
        out.flush()?;
    }
    Ok(())
}

/// Signs a message and hands it to the node; returns how many peers are in the room.
fn send(paths: &crate::paths::Paths, repo: &RepoInfo, message: ChatMessage) -> anyhow::Result<usize> {
    let key = Identity::load_or_create_libp2p(&paths.data_dir)?;
    let envelope = Envelope::sign(&key, KIND, &repo.id, crate::clock::unix_now_ms(), message.to_body());
    let thread = message.thread.clone();
    Ok(Client::connect(paths)?.chat_send(repo.clone(), envelope, thread)?.peers)
}

/// The interactive window (a terminal is required).
fn window(
    ctx: &Ctx,
    repo: &crate::git::RepoContext,
    repo_info: RepoInfo,
    commit: Option<crate::proto::announce::Commit>,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        anyhow::bail!("git p2p chat needs a terminal; in scripts use --send TEXT or --tail [-f]");
    }
    let paths = ctx.paths()?.clone();
    ctx.client()?; // starts the node if needed
    let status = client_status(&paths).map(|s| s.nostr.summary()).unwrap_or_else(|| "off".to_string());
    let thread = commit.as_ref().map(|c| c.id.clone());
    let header = crate::tui::app::Header {
        room: repo.room_name.clone(),
        repo_short: repo.repo_id.short().to_string(),
        head: repo.head_commit.chars().take(10).collect(),
        thread: thread.clone(),
        thread_summary: commit.map(|c| c.summary),
        nostr: status,
    };
    let name = repo.user_name.clone();
    let session = crate::tui::Session { paths: paths.clone(), repo: repo_info.clone(), thread: thread.clone(), header };
    let mut summaries = Summaries::new(ctx, repo);
    let send = |text: &str| {
        let message =
            ChatMessage { thread: thread.clone(), text: text.to_string(), name: name.clone(), nonce: nonce() };
        message.validate().map_err(|e| e.to_string())?;
        send(&paths, &repo_info, message).map_err(|e| super::one_line(&e))
    };
    crate::tui::run(session, send, |commit| summaries.of(commit))
}

fn client_status(paths: &crate::paths::Paths) -> Option<crate::control::api::NodeStatus> {
    Client::connect(paths).ok()?.status().ok()
}

/// Unique per message (not secret): time, process and a counter.
fn nonce() -> String {
    use sha2::Digest;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = format!("{:?}-{}-{n}", std::time::SystemTime::now(), std::process::id());
    hex::encode(&sha2::Sha256::digest(seed.as_bytes())[..8])
}

fn print_message(m: &ChatEntry, json: bool, summaries: &mut Summaries, out: &mut dyn Write) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(m)?)?;
        return Ok(());
    }
    // As the window shows it: "you" for our own, else the name; then the short PeerId.
    let who = if m.own { "you".to_string() } else { crate::tui::view::inert(m.name.as_deref().unwrap_or("?")) };
    let short = crate::proto::peer::short(&m.peer);
    let when = super::fmt::local_time(m.sent_at / 1000);
    if let Some(commit) = &m.thread {
        // A reply in a commit's thread: one line, its first words (`chat --commit` shows it all).
        let about = match summaries.of(commit) {
            Some(summary) => format!(" \"{}\"", crate::tui::view::inert(&summary)),
            None => String::new(),
        };
        let (on, text) = (thread::short(commit, 7), crate::tui::view::inert(&m.text));
        writeln!(out, "{when}  {who} (..{short}) replied in thread on {on}{about}: {text}")?;
        return Ok(());
    }
    // Messages were checked for control characters on arrival (and are again here: a terminal
    // must never receive an escape sequence from a peer); newlines are indented.
    let text = crate::tui::view::inert(&m.text).replace('\n', "\n    ");
    writeln!(out, "{when}  {who} (..{short}): {text}")?;
    Ok(())
}
