//! `git p2p chat`'s terminal window: the runtime that feeds [`app::App`] with keys and node
//! events and draws [`view::render`]. It reaches the node only through the control client.
//!
//! Threads: one reads the terminal, two follow the node (room messages, commit announcements),
//! one polls the peer list; all send [`app::Msg`]s to the main loop, which alone owns the model
//! and the terminal. Leaving (Ctrl-C, /quit) or a panic restores the terminal.

pub mod app;
pub mod view;

use std::sync::mpsc;
use std::time::Duration;

use crate::control::proto::{Request, Response};
use crate::control::Client;
use crate::paths::Paths;
use crate::proto::repo::RepoInfo;
use app::{Action, App, Header, Item, Msg};

/// How often the peers pane and count are refreshed.
const PEERS_EVERY: Duration = Duration::from_secs(2);
/// Messages and announcements loaded when the window opens.
const HISTORY: usize = 200;

pub struct Session {
    pub paths: Paths,
    pub repo: RepoInfo,
    pub room: String,
    pub thread: Option<String>,
    pub header: Header,
}

/// Runs the window until the user leaves. `send` hands a message to the node and returns how
/// many peers it went to.
pub fn run(session: Session, mut send: impl FnMut(&str) -> Result<usize, String>) -> anyhow::Result<()> {
    let mut client = Client::connect_or_start(&session.paths)?;
    client.request(Request::ChatJoin { repo: session.repo.clone(), thread: session.thread.clone() })?;
    let (tx, rx) = mpsc::channel();
    follow(&session.paths, Request::FollowChat { room: session.room.clone() }, tx.clone());
    if session.thread.is_none() {
        follow(&session.paths, Request::Follow { repo: session.repo.id.clone() }, tx.clone());
    }
    poll_peers(session.paths.clone(), tx.clone());

    let (width, height) = crossterm::terminal::size().unwrap_or((80, 24));
    let mut app = App::new(session.header, width, height);
    if let Response::ChatHistory { messages } =
        client.request(Request::ChatHistory { room: session.room, limit: HISTORY })?
    {
        messages.into_iter().for_each(|m| app.push(Item::Chat(m)));
    }
    if session.thread.is_none() {
        if let Response::Feed { entries } = client.request(Request::Log { repo: session.repo.id, limit: HISTORY })? {
            entries.into_iter().for_each(|e| app.push(Item::Commit(e)));
        }
    }

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

/// Streams a follow request's frames into the window.
fn follow(paths: &Paths, req: Request, tx: mpsc::Sender<Msg>) {
    let paths = paths.clone();
    std::thread::spawn(move || {
        let result = (|| -> Result<(), crate::control::ClientError> {
            let mut client = Client::connect(&paths)?;
            client.wait_forever()?;
            let id = client.send(req)?;
            loop {
                let msg = match client.next(id)? {
                    Response::Chat { message } => Msg::Chat(message),
                    Response::Announcement { entry } => Msg::Commit(entry),
                    _ => continue,
                };
                if tx.send(msg).is_err() {
                    return Ok(());
                }
            }
        })();
        if let Err(e) = result {
            let _ = tx.send(Msg::NodeError(format!("lost the node: {e}")));
        }
    });
}

fn poll_peers(paths: Paths, tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || loop {
        let mut client = match Client::connect(&paths) {
            Ok(client) => client,
            Err(e) => {
                if tx.send(Msg::NodeError(e.to_string())).is_err() {
                    return;
                }
                std::thread::sleep(PEERS_EVERY);
                continue;
            }
        };
        let peers = match client.request(Request::Peers) {
            Ok(Response::Peers { peers }) => Msg::Peers(peers),
            Ok(_) => Msg::NodeError("unexpected answer from the node".into()),
            Err(e) => Msg::NodeError(e.to_string()),
        };
        if tx.send(peers).is_err() {
            return;
        }
        if let Ok(Response::Nostr(status)) = client.request(Request::NostrStatus) {
            if tx.send(Msg::Nostr(status.summary())).is_err() {
                return;
            }
        }
        std::thread::sleep(PEERS_EVERY);
    });
}
