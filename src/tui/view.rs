//! The chat window's view: draws the model, changes nothing. Text from peers is made inert here
//! too (the node already refuses control characters; this is the second lock on the door).

use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};
use ratatui::Frame;
use unicode_width::UnicodeWidthChar;

use super::app::{App, Focus, Item};
use crate::proto::chat::ChatEntry;

pub const MIN_WIDTH: u16 = 40;
pub const MIN_HEIGHT: u16 = 10;
const PEERS_WIDTH: u16 = 30;
/// Author colours: a stable one per PeerId.
const PALETTE: [Color; 6] = [Color::Cyan, Color::Green, Color::Magenta, Color::Blue, Color::LightRed, Color::LightCyan];

/// Control characters, and the invisible characters that change how text around them reads
/// (bidi overrides, embeddings and isolates that reorder it; zero-width spaces and marks that hide
/// in it; line and paragraph separators), become a visible placeholder: text from peers can then
/// neither steer a terminal nor pass for something it is not. Joiners (U+200C, U+200D) stay:
/// scripts and emoji need them.
pub fn inert(s: &str) -> String {
    s.chars().map(|c| if (c.is_control() && c != '\n') || deceptive(c) { '\u{fffd}' } else { c }).collect()
}

/// Invisible formatting characters that can disguise text.
fn deceptive(c: char) -> bool {
    matches!(c,
        '\u{200B}' | '\u{200E}' | '\u{200F}'      // zero-width space, left-to-right and right-to-left marks
        | '\u{202A}'..='\u{202E}'                  // bidi embeddings and overrides
        | '\u{2066}'..='\u{2069}'                  // bidi isolates
        | '\u{2028}' | '\u{2029}'                  // line and paragraph separators
        | '\u{2060}' | '\u{FEFF}'                  // word joiner, zero-width no-break space
        | '\u{061C}'                               // Arabic letter mark
    )
}

fn colour(peer: &str) -> Color {
    let h = peer.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    PALETTE[h as usize % PALETTE.len()]
}

fn hhmm(ms: u64) -> String {
    crate::cli::fmt::local_hhmm(ms / 1000)
}

fn short(peer: &str) -> &str {
    crate::proto::peer::short(peer)
}

/// Splits `text` into rows of at most `width` display columns (wide characters count two).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(2);
    let mut rows = Vec::new();
    for line in text.split('\n') {
        let (mut row, mut w) = (String::new(), 0);
        for c in line.chars() {
            let cw = c.width().unwrap_or(0);
            if w + cw > width {
                rows.push(std::mem::take(&mut row));
                w = 0;
            }
            row.push(c);
            w += cw;
        }
        rows.push(row);
    }
    rows
}

/// Width of the timeline area for a model (the peers pane takes its share when shown).
pub fn timeline_width(app: &App) -> usize {
    let pane = if app.show_peers { PEERS_WIDTH } else { 0 };
    usize::from(app.width.saturating_sub(pane))
}

/// A message's rows: "12:04 bob (..9Rg3sBYbU1Nf) " in `who`'s style, then `text` in `style`,
/// wrapped and indented under it.
fn message_rows(m: &ChatEntry, who_style: Style, text: String, style: Style, width: usize) -> Vec<Line<'static>> {
    let who = if m.own { "you".to_string() } else { inert(m.name.as_deref().unwrap_or("?")) };
    // A plain Nostr comment: its author is an npub, not a peer of ours.
    let via = m.via.as_deref().map(|v| format!(" via {}", inert(v))).unwrap_or_default();
    let prefix = format!("{} {} (..{}{via}) ", hhmm(m.sent_at), who, inert(short(&m.peer)));
    let indent = " ".repeat(6);
    let body = wrap(&text, width.saturating_sub(prefix.chars().count()).max(10));
    let mut rows = Vec::new();
    for (i, part) in body.into_iter().enumerate() {
        let lead = if i == 0 { Span::styled(prefix.clone(), who_style) } else { Span::raw(indent.clone()) };
        rows.push(Line::from(vec![lead, Span::styled(part, style)]));
    }
    rows
}

/// The rows an item takes in a timeline of `width` columns.
pub fn item_rows(item: &Item, width: usize) -> Vec<Line<'static>> {
    match item {
        Item::Chat(m) => {
            let style = if m.own {
                Style::default().fg(Color::Yellow).add_modifier(Modifier::BOLD)
            } else {
                Style::default().fg(colour(&m.peer)).add_modifier(Modifier::BOLD)
            };
            message_rows(m, style, inert(&m.text), Style::default(), width)
        }
        Item::Reply(m, about) => {
            // A thread's reply, told in the room: dim and slanted, apart from the room's talk.
            let colour = if m.own { Color::Yellow } else { colour(&m.peer) };
            let commit = m.thread.as_deref().unwrap_or_default();
            let about = about.as_deref().map(|s| format!(" \"{}\"", inert(s))).unwrap_or_default();
            let text = format!("replied in thread on {}{about}: {}", &commit[..commit.len().min(7)], inert(&m.text));
            let body = Style::default().fg(Color::Gray).add_modifier(Modifier::ITALIC);
            message_rows(m, Style::default().fg(colour).add_modifier(Modifier::ITALIC), text, body, width)
        }
        Item::Commit(entry) => {
            let c = &entry.commit;
            let branch =
                c.ref_name.as_deref().map(|r| r.strip_prefix("refs/heads/").unwrap_or(r)).unwrap_or("(detached)");
            let card = Style::default().fg(Color::Yellow);
            let who = inert(entry.name.as_deref().unwrap_or(&c.author));
            let title = format!(
                "{} ┌ commit {} on {} by {} (..{})",
                hhmm(entry.announced_at),
                &c.id[..c.id.len().min(10)],
                inert(branch),
                who,
                inert(short(&entry.peer))
            );
            let mut rows: Vec<Line<'static>> = wrap(&title, width).into_iter().map(|r| Line::styled(r, card)).collect();
            for part in wrap(&inert(&c.summary), width.saturating_sub(8).max(10)) {
                rows.push(Line::from(vec![Span::styled("      └ ".to_string(), card), Span::raw(part)]));
            }
            rows
        }
    }
}

pub fn render(app: &App, frame: &mut Frame) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let text = format!(
            "terminal too small ({}x{}): git p2p chat needs at least {MIN_WIDTH}x{MIN_HEIGHT}",
            area.width, area.height
        );
        frame.render_widget(Paragraph::new(wrap(&text, usize::from(area.width)).join("\n")), area);
        return;
    }
    let [header, body, status, composer] = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Length(1), Constraint::Min(3), Constraint::Length(1), Constraint::Length(3)])
        .areas(area);
    render_header(app, frame, header);
    let (timeline, peers) = if app.show_peers {
        let [t, p] = Layout::default()
            .direction(Direction::Horizontal)
            .constraints([Constraint::Min(10), Constraint::Length(PEERS_WIDTH)])
            .areas(body);
        (t, Some(p))
    } else {
        (body, None)
    };
    render_timeline(app, frame, timeline);
    if let Some(p) = peers {
        render_peers(app, frame, p);
    }
    // A node that went away is said in a colour that catches the eye: nothing arrives meanwhile.
    let status_style = if app.node_away {
        Style::default().fg(Color::Black).bg(Color::Yellow)
    } else {
        Style::default().fg(Color::DarkGray)
    };
    frame.render_widget(Paragraph::new(Line::styled(inert(&app.status), status_style)), status);
    render_composer(app, frame, composer);
}

fn render_header(app: &App, frame: &mut Frame, area: Rect) {
    let h = &app.header;
    let mut text = format!("# {} · repo {} · HEAD {}", inert(&h.room), h.repo_short, h.head);
    if let Some(t) = &h.thread {
        text.push_str(&format!(" · thread {}", &t[..t.len().min(10)]));
        if let Some(summary) = &h.thread_summary {
            text.push_str(&format!(" \"{}\"", inert(summary)));
        }
    }
    text.push_str(&format!(
        " · {} peer{} · nostr: {}",
        app.peers.len(),
        if app.peers.len() == 1 { "" } else { "s" },
        h.nostr
    ));
    let style = Style::default().fg(Color::Black).bg(Color::Cyan).add_modifier(Modifier::BOLD);
    frame.render_widget(Paragraph::new(Line::styled(text, style)).style(style), area);
}

fn render_timeline(app: &App, frame: &mut Frame, area: Rect) {
    let width = usize::from(area.width);
    let rows: Vec<Line<'static>> = app.items.iter().flat_map(|i| item_rows(i, width)).collect();
    let height = usize::from(area.height);
    let max_scroll = rows.len().saturating_sub(height);
    let scroll = app.scroll.min(max_scroll);
    let end = rows.len() - scroll;
    let start = end.saturating_sub(height);
    let mut visible: Vec<Line<'static>> = rows[start..end].to_vec();
    if app.items.is_empty() {
        visible.push(Line::styled("no messages yet: say hello", Style::default().fg(Color::DarkGray)));
    }
    if scroll > 0 {
        // Show that we are not at the bottom, where new messages arrive.
        if let Some(last) = visible.last_mut() {
            *last = Line::styled(format!("-- {scroll} more rows below (End) --"), Style::default().fg(Color::DarkGray));
        }
    }
    frame.render_widget(Paragraph::new(visible), area);
}

fn render_peers(app: &App, frame: &mut Frame, area: Rect) {
    let mut lines = Vec::new();
    for p in &app.peers {
        let name = inert(p.name.as_deref().unwrap_or("?"));
        let rtt = p.rtt_ms.map(|r| format!("{r:.1}ms")).unwrap_or_else(|| "-".into());
        lines.push(Line::from(vec![
            Span::styled(format!("{name} "), Style::default().fg(colour(&p.peer_id))),
            Span::raw(format!("..{} {} {rtt}", short(&p.peer_id), p.transport)),
        ]));
    }
    if lines.is_empty() {
        lines.push(Line::raw("nobody yet"));
    }
    frame.render_widget(Paragraph::new(lines).block(Block::default().borders(Borders::LEFT).title(" peers ")), area);
}

fn render_composer(app: &App, frame: &mut Frame, area: Rect) {
    let focused = app.focus == Focus::Composer;
    let border = if focused { Style::default().fg(Color::Cyan) } else { Style::default().fg(Color::DarkGray) };
    let inner_width = usize::from(area.width.saturating_sub(2));
    // Keep the cursor visible: show the tail of a long input.
    let cursor = app.cursor_width();
    let skip = cursor.saturating_sub(inner_width.saturating_sub(1));
    let mut shown = String::new();
    let mut w = 0;
    for c in app.input.chars() {
        let cw = c.width().unwrap_or(0);
        if w >= skip && w - skip + cw <= inner_width {
            shown.push(c);
        }
        w += cw;
    }
    let title = if focused { " message (Enter to send) " } else { " message (Tab to type) " };
    frame.render_widget(
        Paragraph::new(inert(&shown)).block(Block::default().borders(Borders::ALL).border_style(border).title(title)),
        area,
    );
    if focused {
        let x = area.x + 1 + (cursor - skip).min(inner_width) as u16;
        frame.set_cursor_position((x, area.y + 1));
    }
}

#[cfg(test)]
mod tests {
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    use super::*;
    use crate::proto::announce::FeedEntry;
    use crate::proto::chat::ChatEntry;
    use crate::tui::app::{Header, Msg};

    const T0: u64 = 1_700_000_000_000; // 22:13 UTC

    fn chat(id: &str, at: u64, name: &str, text: &str, own: bool) -> ChatEntry {
        ChatEntry {
            room: "r".into(),
            id: id.into(),
            peer: format!("12D3KooW{name}PEER"),
            name: Some(name.into()),
            text: text.into(),
            sent_at: at,
            received_at: at,
            own,
            via: None,
            thread: None,
        }
    }

    fn commit(at: u64) -> FeedEntry {
        FeedEntry {
            repo: crate::proto::repo::RepoId::try_from("f".repeat(40)).unwrap(),
            peer: "12D3KooWbobPEER".into(),
            name: Some("bob".into()),
            commit: crate::proto::announce::Commit {
                ref_name: Some("refs/heads/main".into()),
                id: "0123456789abcdef0123456789abcdef01234567".into(),
                parents: vec![],
                author: "Bob".into(),
                summary: "Fix the frobnicator".into(),
                time: 0,
            },
            announced_at: at,
            received_at: at,
        }
    }

    fn app(w: u16, h: u16) -> App {
        let header = Header {
            room: "github.com/acme/proj".into(),
            repo_short: "abcdef012345".into(),
            head: "0123456789".into(),
            thread: None,
            thread_summary: None,
            nostr: "off".into(),
        };
        App::new(header, w, h)
    }

    fn screen(app: &App) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(app.width, app.height)).unwrap();
        terminal.draw(|f| render(app, f)).unwrap();
        let buf = terminal.backend().buffer().clone();
        (0..buf.area.height)
            .map(|y| {
                let mut row = String::new();
                let mut x = 0;
                while x < buf.area.width {
                    let cell = &buf[(x, y)];
                    row.push_str(cell.symbol());
                    x += (cell.symbol().chars().map(|c| c.width().unwrap_or(0)).sum::<usize>().max(1)) as u16;
                }
                row.trim_end().to_string()
            })
            .collect()
    }

    #[test]
    fn text_that_hides_or_reorders_itself_is_shown_as_placeholders() {
        // "evil\u{202E}txt.exe" reads as "evilexe.txt" on a terminal that honours bidi.
        assert_eq!(inert("evil\u{202E}txt.exe"), "evil\u{fffd}txt.exe");
        for c in ['\u{200B}', '\u{200F}', '\u{2066}', '\u{2069}', '\u{2028}', '\u{2029}', '\u{FEFF}', '\u{1b}'] {
            assert_eq!(inert(&format!("a{c}b")), "a\u{fffd}b", "{:?}", c);
        }
        let kept = "family 👨\u{200D}👩 and می\u{200C}خواهم, line\nbreak";
        assert_eq!(inert(kept), kept, "joiners and newlines are text");
    }

    #[test]
    fn header_timeline_commit_card_and_composer() {
        let mut app = app(70, 12);
        app.update(Msg::Chat(chat("1", T0, "alice", "hi bob, what's new?", false)));
        app.update(Msg::Commit(commit(T0 + 60_000)));
        app.update(Msg::Chat(chat("2", T0 + 120_000, "carol", "nice fix", true)));
        let s = screen(&app);
        // Times are local (the machine's zone), short PeerIds their last 12 characters.
        let at = |ms: u64| hhmm(ms);
        let expected = [
            "# github.com/acme/proj · repo abcdef012345 · HEAD 0123456789 · 0 peer".to_string(),
            format!("{} alice (..ooWalicePEER) hi bob, what's new?", at(T0)),
            format!("{} ┌ commit 0123456789 on main by bob (..3KooWbobPEER)", at(T0 + 60_000)),
            "      └ Fix the frobnicator".to_string(),
            format!("{} you (..ooWcarolPEER) nice fix", at(T0 + 120_000)),
        ];
        for (row, want) in s.iter().zip(expected) {
            assert!(row.starts_with(&want), "row {row:?} should start with {want:?}\n{s:#?}");
        }
        assert!(s[9].starts_with("┌ message (Enter to send)"), "{s:#?}");
        assert!(s[8].starts_with("Enter send"), "help in the status line: {s:#?}");
    }

    #[test]
    fn a_scrolled_view_says_so_and_keeps_its_place() {
        let mut app = app(60, 10);
        for i in 0..20u64 {
            app.update(Msg::Chat(chat(&i.to_string(), T0 + i * 1000, "bob", &format!("message {i}"), false)));
        }
        let bottom = screen(&app);
        assert!(bottom.iter().any(|r| r.ends_with("message 19")), "{bottom:#?}");
        app.scroll = 5;
        let before = screen(&app);
        assert!(before.iter().any(|r| r.contains("5 more rows below")), "{before:#?}");
        app.update(Msg::Chat(chat("new", T0 + 99_000, "carol", "incoming", false)));
        let after = screen(&app);
        assert_eq!(before[1..4], after[1..4], "incoming messages do not move a scrolled view");
    }

    #[test]
    fn a_comment_from_nostr_is_marked_and_the_header_shows_the_bridge() {
        let mut app = app(130, 10);
        // The window polls the node; the header follows the bridge's state.
        app.update(Msg::Nostr("1/1 relay(s) connected, 0 event(s) pending".into()));
        let mut m = chat("nostr:ab", T0, "x", "from a Nostr client", false);
        m.name = None;
        m.peer = "npub1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqzzzz".into();
        m.via = Some("nostr".into());
        app.update(Msg::Chat(m));
        let s = screen(&app);
        assert!(s[0].contains("nostr: 1/1 relay(s) connected"), "{s:#?}");
        let want = format!("{} ? (..qqqqqqqqzzzz via nostr) from a Nostr client", hhmm(T0));
        assert!(s[1].starts_with(&want), "{s:#?}");
    }

    #[test]
    fn a_thread_reply_is_one_line_in_the_room_set_apart_and_a_threads_header_names_its_commit() {
        let mut app = app(110, 10);
        app.update(Msg::Chat(chat("1", T0, "alice", "in the room", false)));
        let mut reply = chat("2", T0 + 60_000, "bob", "looks good, but…", false);
        reply.thread = Some("1a2b3c4d5e".repeat(4));
        app.update(Msg::Reply(reply.clone(), Some("Fix the frobnicator".into())));
        reply.id = "3".into();
        app.update(Msg::Reply(reply, None));
        let s = screen(&app);
        let want = format!(
            "{} bob (..3KooWbobPEER) replied in thread on 1a2b3c4 \"Fix the frobnicator\": looks good, but…",
            hhmm(T0 + 60_000)
        );
        assert_eq!(s[2], want, "{s:#?}");
        assert!(s[3].ends_with("replied in thread on 1a2b3c4: looks good, but…"), "summary unknown: {s:#?}");
        let mut terminal = Terminal::new(TestBackend::new(app.width, app.height)).unwrap();
        terminal.draw(|f| render(&app, f)).unwrap();
        let buf = terminal.backend().buffer().clone();
        let at = s[2].find("replied").unwrap() as u16;
        let (said, replied) = (&buf[(at, 1)], &buf[(at, 2)]);
        assert!(replied.modifier.contains(Modifier::ITALIC) && replied.fg == Color::Gray, "{replied:?}");
        assert!(!said.modifier.contains(Modifier::ITALIC), "the room's own talk is upright: {said:?}");

        let mut thread = app.header.clone();
        thread.thread = Some("1a2b3c4d5e".repeat(4));
        thread.thread_summary = Some("Fix the frobnicator".into());
        let s = screen(&App::new(thread, 110, 10));
        assert!(s[0].contains("· thread 1a2b3c4d5e \"Fix the frobnicator\" ·"), "{s:#?}");
    }

    #[test]
    fn a_narrow_terminal_gets_a_clear_message() {
        let s = screen(&app(30, 8));
        assert!(s.join(" ").contains("terminal too small (30x8)"), "{s:#?}");
    }

    #[test]
    fn escape_sequences_are_inert_and_wide_characters_wrap() {
        let mut app = app(60, 16);
        app.update(Msg::Chat(chat("1", T0, "eve\u{1b}[31m", "\u{1b}[2Jclear\u{7}", false)));
        app.update(Msg::Chat(chat("2", T0, "bob", &"世界".repeat(20), false)));
        app.show_peers = false;
        let s = screen(&app);
        let all = s.join("\n");
        assert!(!all.contains('\u{1b}') && !all.contains('\u{7}'), "{all}");
        assert!(all.contains("\u{fffd}[2Jclear\u{fffd}"), "{all}");
        let wide_rows: Vec<&String> = s.iter().filter(|r| r.contains('世')).collect();
        assert!(wide_rows.len() >= 2, "long wide text wraps: {s:#?}");
        for r in wide_rows {
            assert!(r.chars().map(|c| c.width().unwrap_or(0)).sum::<usize>() <= 60, "{r:?}");
        }
    }

    #[test]
    fn wrap_counts_display_columns() {
        assert_eq!(wrap("abcdef", 4), vec!["abcd", "ef"]);
        assert_eq!(wrap("世界世", 4), vec!["世界", "世"]);
        assert_eq!(wrap("a\nb", 10), vec!["a", "b"]);
    }
}
