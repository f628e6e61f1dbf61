//! `git p2p chat`'s terminal window: the runtime that feeds [`app::App`] with keys and node
//! events and draws [`view::render`]. It reaches the node only through the control client.
//!
//! Threads: one reads the terminal, two follow the node (room messages, commit announcements),
//! one polls the peer list; all send [`app::Msg`]s to the main loop, which alone owns the model
//! and the terminal. Leaving (Ctrl-C, /quit) or a panic restores the terminal. The followers
//! outlive a restart of the node (`control::follow`): the window says it is waiting, then
//! shows what arrived meanwhile.

pub mod app;
pub mod view;

use std::sync::mpsc;
use std::time::Duration;

use crate::control::{Client, ClientError, Feed, Room};
use crate::paths::Paths;
use crate::proto::chat::ChatEntry;
use crate::proto::repo::RepoInfo;
use app::{Action, App, Header, Item, Msg};

/// How often the peers pane and count are refreshed.
const PEERS_EVERY: Duration = Duration::from_secs(2);
/// Messages and announcements loaded when the window opens.
const HISTORY: usize = 200;

pub struct Session {
    pub paths: Paths,
    pub repo: RepoInfo,
    pub thread: Option<String>,
    pub header: Header,
}

/// Runs the window until the user leaves. `send` hands a message to the node and returns how
/// many peers it went to; `summary` says what a commit a thread is about is (None: unknown).
pub fn run(
    session: Session,
    mut send: impl FnMut(&str) -> Result<usize, String>,
    mut summary: impl FnMut(&str) -> Option<String>,
) -> anyhow::Result<()> {
    let mut client = Client::connect_or_start(&session.paths)?;
    let (width, height) = crossterm::terminal::size().unwrap_or((80, 24));
    let mut app = App::new(session.header, width, height);
    let (tx, rx) = mpsc::channel();
    // A node that goes away is waited for as long as the window is open; the status line says so.
    let gaps = |tx: &mpsc::Sender<Msg>| {
        let tx = tx.clone();
        move |gap| {
            let _ = tx.send(Msg::Gap(gap));
        }
    };
    let room = Room::of(session.repo.clone(), session.thread.clone());
    let mut room = client.tail(&session.paths, room, HISTORY, true)?.on_gap(None, gaps(&tx));
    for m in std::mem::take(&mut room.history) {
        app.push(item(m, &mut summary));
    }
    forward(move || room.recv(), Msg::Chat, tx.clone());
    if session.thread.is_none() {
        let feed = Feed::all(session.repo.id);
        let mut feed = client.tail(&session.paths, feed, HISTORY, true)?.on_gap(None, gaps(&tx));
        std::mem::take(&mut feed.history).into_iter().for_each(|e| app.push(Item::Commit(e)));
        forward(move || feed.recv(), Msg::Commit, tx.clone());
    }
    poll_peers(session.paths.clone(), tx.clone());

    let mut terminal = ratatui::init();
    let keys = tx.clone();
    std::thread::spawn(move || loop {
        let msg = match crossterm::event::read() {
            Ok(crossterm::event::Event::Key(k)) => Msg::Key(k),
            Ok(crossterm::event::Event::Resize(w, h)) => Msg::Resize(w, h),
            Ok(_) => continue,
            Err(e) => Msg::NodeError(format!("terminal: {e}")),
        };
        if keys.send(msg).is_err() {
            return;
        }
    });
    let result = (|| -> anyhow::Result<()> {
        loop {
            terminal.draw(|f| view::render(&app, f))?;
            let Ok(first) = rx.recv() else { return Ok(()) };
            // Apply everything that queued up before drawing again (a burst draws once).
            for msg in std::iter::once(first).chain(rx.try_iter()) {
                // A thread reply's notice shows the summary of its commit, looked up here (the
                // model does no I/O).
                let msg = match msg {
                    Msg::Chat(m) if m.thread.is_some() => {
                        let about = m.thread.as_deref().and_then(&mut summary);
                        Msg::Reply(m, about)
                    }
                    other => other,
                };
                match app.update(msg) {
                    Some(Action::Quit) => return Ok(()),
                    Some(Action::Send(text)) => {
                        let sent = send(&text);
                        app.update(Msg::Sent(sent));
                    }
                    None => {}
                }
            }
        }
    })();
    ratatui::restore();
    result
}

/// A room's entry as the timeline shows it: a message, or a thread reply's notice with the
/// summary of its commit.
fn item(m: ChatEntry, summary: &mut impl FnMut(&str) -> Option<String>) -> Item {
    match m.thread.as_deref().map(&mut *summary) {
        Some(about) => Item::Reply(m, about),
        None => Item::Chat(m),
    }
}

/// Feeds what a subscription streams into the window, on a thread of its own.
fn forward<T: Send + 'static>(
    mut next: impl FnMut() -> Result<Option<T>, ClientError> + Send + 'static,
    wrap: fn(T) -> Msg,
    tx: mpsc::Sender<Msg>,
) {
    std::thread::spawn(move || loop {
        let msg = match next() {
            Ok(Some(item)) => wrap(item),
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Msg::NodeError(format!("lost the node: {e}")));
                return;
            }
        };
        if tx.send(msg).is_err() {
            return;
        }
    });
}

fn poll_peers(paths: Paths, tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || loop {
        // While the node is away nobody is connected; the followers tell the status line.
        let away = |e: ClientError| if e.node_away() { Msg::Peers(Vec::new()) } else { Msg::NodeError(e.to_string()) };
        let mut client = match Client::connect(&paths) {
            Ok(client) => client,
            Err(e) => {
                if tx.send(away(e)).is_err() {
                    return;
                }
                std::thread::sleep(PEERS_EVERY);
                continue;
            }
        };
        let peers = match client.peers() {
            Ok(peers) => Msg::Peers(peers),
            Err(e) => away(e),
        };
        if tx.send(peers).is_err() {
            return;
        }
        if let Ok(status) = client.nostr_status() {
            if tx.send(Msg::Nostr(status.summary())).is_err() {
                return;
            }
        }
        std::thread::sleep(PEERS_EVERY);
    });
}
