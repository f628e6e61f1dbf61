//! The chat window's model and its update function (the Elm architecture): every input — a key,
//! a resize, a message from the node — is a [`Msg`]; [`App::update`] changes the model and may
//! ask the runtime to do something ([`Action`]). No I/O here.

use std::collections::HashSet;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use unicode_width::UnicodeWidthChar;

use crate::control::api::PeerInfo;
use crate::control::Gap;
use crate::proto::announce::FeedEntry;
use crate::proto::chat::ChatEntry;
use crate::proto::chat::MAX_TEXT;

/// Items kept in the timeline; older ones scroll out of memory (history stays in the node).
pub const MAX_ITEMS: usize = 2000;

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Chat(ChatEntry),
    Commit(FeedEntry),
    /// The notice of a reply in a commit's thread (its first words), with the commit's summary
    /// when it is known.
    Reply(ChatEntry, Option<String>),
}

impl Item {
    fn time_ms(&self) -> u64 {
        match self {
            Item::Chat(m) | Item::Reply(m, _) => m.sent_at,
            Item::Commit(c) => c.announced_at,
        }
    }
    fn key(&self) -> String {
        match self {
            Item::Chat(m) | Item::Reply(m, _) => m.id.clone(),
            Item::Commit(c) => format!("{}/{}", c.commit.id, c.peer),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Composer,
    Timeline,
}

#[derive(Debug)]
pub enum Msg {
    Key(KeyEvent),
    Resize(u16, u16),
    Chat(ChatEntry),
    /// A thread reply's notice, and the summary of its commit.
    Reply(ChatEntry, Option<String>),
    Commit(FeedEntry),
    Peers(Vec<PeerInfo>),
    /// The Nostr bridge's state, for the header.
    Nostr(String),
    /// The node's answer to a send: peers it went to, or an error.
    Sent(Result<usize, String>),
    /// A background connection to the node failed.
    NodeError(String),
    /// The node went away, or is back (the followers wait for it).
    Gap(Gap),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Send(String),
    Quit,
}

/// What the header shows about the room.
#[derive(Debug, Clone, Default)]
pub struct Header {
    pub room: String,
    pub repo_short: String,
    pub head: String,
    pub thread: Option<String>,
    /// The summary of the thread's commit, when it is known.
    pub thread_summary: Option<String>,
    pub nostr: String,
}

#[derive(Debug)]
pub struct App {
    pub header: Header,
    pub items: Vec<Item>,
    seen: HashSet<String>,
    pub input: String,
    /// Cursor position in the input, in characters.
    pub cursor: usize,
    pub focus: Focus,
    /// Rows scrolled up from the bottom; 0 follows new messages.
    pub scroll: usize,
    pub show_peers: bool,
    pub peers: Vec<PeerInfo>,
    pub status: String,
    /// The node is away: the status line says so until it is back.
    pub node_away: bool,
    /// The text being sent, put back in the composer if the node refuses it or is away.
    sending: Option<String>,
    pub width: u16,
    pub height: u16,
}

pub const HELP: &str = "Enter send · Tab/Esc focus · PgUp/PgDn/Home/End scroll · Ctrl-P peers · /help · /quit · Ctrl-C";

impl App {
    pub fn new(header: Header, width: u16, height: u16) -> Self {
        Self {
            header,
            items: Vec::new(),
            seen: HashSet::new(),
            input: String::new(),
            cursor: 0,
            focus: Focus::Composer,
            scroll: 0,
            show_peers: false,
            peers: Vec::new(),
            status: HELP.to_string(),
            node_away: false,
            sending: None,
            width,
            height,
        }
    }

    /// Adds an item in time order unless it is there already. A scrolled-up view keeps showing
    /// the same rows: the offset grows by the rows the new item adds below them.
    pub fn push(&mut self, item: Item) {
        if !self.seen.insert(item.key()) {
            return;
        }
        if self.scroll > 0 {
            self.scroll += super::view::item_rows(&item, super::view::timeline_width(self)).len();
        }
        let at = self.items.partition_point(|i| i.time_ms() <= item.time_ms());
        self.items.insert(at, item);
        if self.items.len() > MAX_ITEMS {
            let old = self.items.remove(0);
            self.seen.remove(&old.key());
        }
    }

    pub fn update(&mut self, msg: Msg) -> Option<Action> {
        match msg {
            Msg::Key(key) => return self.key(key),
            Msg::Resize(w, h) => {
                self.width = w;
                self.height = h;
            }
            Msg::Chat(m) => self.push(Item::Chat(m)),
            Msg::Reply(m, about) => self.push(Item::Reply(m, about)),
            Msg::Commit(c) => self.push(Item::Commit(c)),
            Msg::Peers(p) => self.peers = p,
            Msg::Nostr(state) => self.header.nostr = state,
            Msg::Sent(result) => {
                let text = self.sending.take();
                self.status = match result {
                    Ok(0) => "queued: no peer in the room yet; it goes out when one joins".into(),
                    Ok(n) => format!("sent to {n} peer{}", if n == 1 { "" } else { "s" }),
                    Err(e) => {
                        // Not sent: the text goes back to the composer (unless something new
                        // was typed meanwhile), to be sent again.
                        if let Some(text) = text.filter(|_| self.input.is_empty()) {
                            self.cursor = text.chars().count();
                            self.input = text;
                        }
                        format!("error: {e}")
                    }
                };
            }
            Msg::NodeError(e) => self.status = format!("error: {e}"),
            Msg::Gap(Gap::Waiting(_)) => {
                self.node_away = true;
                self.status = "lost the node: waiting for it to come back (git p2p daemon start) · /quit leaves".into();
            }
            Msg::Gap(Gap::Resumed) => {
                self.node_away = false;
                self.status = "node restarted; resumed".into();
            }
        }
        None
    }

    fn key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c') if ctrl => return Some(Action::Quit),
            KeyCode::Char('p') if ctrl => self.show_peers = !self.show_peers,
            KeyCode::Tab | KeyCode::Esc => {
                self.focus = if self.focus == Focus::Composer { Focus::Timeline } else { Focus::Composer }
            }
            KeyCode::PageUp => self.scroll = self.scroll.saturating_add(self.page()),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_sub(self.page()),
            KeyCode::Home if self.focus == Focus::Timeline => self.scroll = usize::MAX / 2,
            KeyCode::End if self.focus == Focus::Timeline => self.scroll = 0,
            KeyCode::Up if self.focus == Focus::Timeline => self.scroll = self.scroll.saturating_add(1),
            KeyCode::Down if self.focus == Focus::Timeline => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::Enter => return self.submit(),
            _ if self.focus == Focus::Composer => self.edit(key.code, ctrl),
            _ => {}
        }
        None
    }

    fn page(&self) -> usize {
        usize::from(self.height.saturating_sub(8)).max(1)
    }

    fn edit(&mut self, code: KeyCode, ctrl: bool) {
        match code {
            // Any printable character, `?` and wide characters included.
            KeyCode::Char(c) if !ctrl && !c.is_control() => {
                let at = self.byte_at(self.cursor);
                self.input.insert(at, c);
                self.cursor += 1;
            }
            KeyCode::Char('u') if ctrl => {
                self.input.clear();
                self.cursor = 0;
            }
            KeyCode::Backspace if self.cursor > 0 => {
                self.cursor -= 1;
                let at = self.byte_at(self.cursor);
                self.input.remove(at);
            }
            KeyCode::Delete if self.cursor < self.input.chars().count() => {
                let at = self.byte_at(self.cursor);
                self.input.remove(at);
            }
            KeyCode::Left => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Right => self.cursor = (self.cursor + 1).min(self.input.chars().count()),
            KeyCode::Home => self.cursor = 0,
            KeyCode::End => self.cursor = self.input.chars().count(),
            _ => {}
        }
    }

    fn byte_at(&self, chars: usize) -> usize {
        self.input.char_indices().nth(chars).map(|(i, _)| i).unwrap_or(self.input.len())
    }

    fn submit(&mut self) -> Option<Action> {
        let text = self.input.trim().to_string();
        match text.as_str() {
            "" => return None,
            "/quit" => return Some(Action::Quit),
            "/help" => self.status = HELP.to_string(),
            "/peers" => self.show_peers = !self.show_peers,
            _ => {
                let len = self.input.chars().count();
                if len > MAX_TEXT {
                    // Refused visibly; the text stays in the composer to be shortened.
                    self.status = format!("message too long ({len} characters, at most {MAX_TEXT}): not sent");
                    return None;
                }
                let text = std::mem::take(&mut self.input);
                self.cursor = 0;
                self.scroll = 0;
                self.status = "sending...".into();
                self.sending = Some(text.clone());
                return Some(Action::Send(text));
            }
        }
        self.input.clear();
        self.cursor = 0;
        None
    }

    /// Display width of the input up to the cursor, for placing the terminal cursor.
    pub fn cursor_width(&self) -> usize {
        self.input.chars().take(self.cursor).map(|c| c.width().unwrap_or(0)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> Msg {
        Msg::Key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn app() -> App {
        App::new(Header::default(), 80, 24)
    }

    pub fn chat(id: &str, at: u64, text: &str) -> ChatEntry {
        ChatEntry {
            room: "r".into(),
            id: id.into(),
            peer: "12D3KooWPeerAAAAAA".into(),
            name: Some("bob".into()),
            text: text.into(),
            sent_at: at,
            received_at: at,
            own: false,
            via: None,
            thread: None,
        }
    }

    #[test]
    fn typing_any_printable_character_and_sending() {
        let mut app = app();
        for c in "why? 世界 ✓".chars() {
            assert_eq!(app.update(key(KeyCode::Char(c))), None);
        }
        app.update(key(KeyCode::Left));
        app.update(key(KeyCode::Backspace));
        assert_eq!(app.input, "why? 世界✓", "Left, then Backspace removed the space before ✓");
        assert_eq!(app.cursor_width(), 9, "5 narrow + 2 wide columns before the cursor");
        assert_eq!(app.update(key(KeyCode::Enter)), Some(Action::Send("why? 世界✓".into())));
        assert!(app.input.is_empty());
    }

    #[test]
    fn quitting_and_commands() {
        let mut app = app();
        assert_eq!(app.update(Msg::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL))), Some(Action::Quit));
        for c in "/quit".chars() {
            app.update(key(KeyCode::Char(c)));
        }
        assert_eq!(app.update(key(KeyCode::Enter)), Some(Action::Quit));
    }

    #[test]
    fn too_long_input_is_refused_and_kept() {
        let mut app = app();
        app.input = "x".repeat(MAX_TEXT + 1);
        assert_eq!(app.update(key(KeyCode::Enter)), None);
        assert!(app.status.contains("too long"), "{}", app.status);
        assert_eq!(app.input.len(), MAX_TEXT + 1, "nothing is silently dropped");
    }

    #[test]
    fn items_are_ordered_and_deduplicated_and_a_scrolled_view_stays_put() {
        let mut app = app();
        app.update(Msg::Chat(chat("b", 2000, "second")));
        app.update(Msg::Chat(chat("a", 1000, "first")));
        app.update(Msg::Chat(chat("a", 1000, "first")));
        assert_eq!(app.items.len(), 2);
        assert!(matches!(&app.items[0], Item::Chat(m) if m.text == "first"));
        app.update(key(KeyCode::PageUp));
        let scrolled = app.scroll;
        assert!(scrolled > 0);
        app.update(Msg::Chat(chat("c", 3000, "third")));
        assert_eq!(app.scroll, scrolled + 1, "the view keeps its rows");
        app.update(key(KeyCode::Tab));
        app.update(key(KeyCode::End));
        assert_eq!(app.scroll, 0);
    }

    #[test]
    fn a_node_that_went_away_is_said_and_unsent_text_comes_back() {
        let mut app = app();
        for c in "hello".chars() {
            app.update(key(KeyCode::Char(c)));
        }
        assert_eq!(app.update(key(KeyCode::Enter)), Some(Action::Send("hello".into())));
        app.update(Msg::Sent(Err("the node is not running".into())));
        assert_eq!((app.input.as_str(), app.cursor), ("hello", 5), "not sent: back in the composer");
        assert_eq!(app.status, "error: the node is not running");
        app.update(Msg::Gap(Gap::Waiting(None)));
        assert!(app.node_away && app.status.starts_with("lost the node: waiting"), "{}", app.status);
        app.update(Msg::Gap(Gap::Resumed));
        assert!(!app.node_away);
        assert_eq!(app.status, "node restarted; resumed");
        assert_eq!(app.update(key(KeyCode::Enter)), Some(Action::Send("hello".into())));
        app.update(Msg::Sent(Ok(1)));
        assert!(app.input.is_empty() && app.status == "sent to 1 peer");
    }

    #[test]
    fn the_timeline_is_bounded() {
        let mut app = app();
        for i in 0..(MAX_ITEMS + 10) {
            app.update(Msg::Chat(chat(&i.to_string(), i as u64, "x")));
        }
        assert_eq!(app.items.len(), MAX_ITEMS);
    }
}
