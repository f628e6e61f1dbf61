//! Man pages generated from the clap definition: one page per command (`git-p2p.1`,
//! `git-p2p-kv.1`, `git-p2p-kv-set.1`, ...), so that `git help p2p` and `man git-p2p-kv` work and
//! help text and man pages can never disagree; the sections a `git help` reader looks for beyond
//! the options (configuration, files, environment, the chat window's keys, limits, exit status,
//! examples, see also) are written here. The pages in man/ are checked in; a test fails when they
//! are stale (regenerate with `GIT_P2P_UPDATE_MAN=1 cargo test man_pages`).

/// Every page as (file name, roff source), parents before children.
pub fn pages() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    // The help subcommand is clap's; it has no page of its own (no `git-p2p-help(1)`).
    let root = crate::cli::command().disable_help_subcommand(true);
    render(root, "git-p2p".to_string(), None, &mut out);
    out.push(("git-remote-p2p.1".to_string(), remote_helper_page()));
    out
}

/// The remote helper's page: git runs it, so its synopsis is git's call, not a subcommand.
fn remote_helper_page() -> Vec<u8> {
    let cmd = crate::remote_helper::command();
    let man = clap_mangen::Man::new(cmd)
        .title("GIT-REMOTE-P2P")
        .section("1")
        .source(format!("git-p2p {}", env!("CARGO_PKG_VERSION")))
        .manual("Git Manual");
    let mut roff = Vec::new();
    let sections = |roff: &mut Vec<u8>| -> std::io::Result<()> {
        man.render_title(roff)?;
        man.render_name_section(roff)?;
        man.render_synopsis_section(roff)?;
        man.render_description_section(roff)?;
        man.render_options_section(roff)?;
        for (title, body) in extra_sections("git-remote-p2p") {
            roff.extend_from_slice(format!(".SH \"{title}\"\n{body}").as_bytes());
        }
        roff.extend_from_slice(exit_status().as_bytes());
        roff.extend_from_slice(".SH \"SEE ALSO\"\n\\fBgit\\-p2p\\fR(1), \\fBgit\\fR(1)\n".as_bytes());
        Ok(())
    };
    sections(&mut roff).expect("rendering to a Vec cannot fail");
    roff
}

fn render(cmd: clap::Command, name: String, parent: Option<&str>, out: &mut Vec<(String, Vec<u8>)>) {
    let subcommands: Vec<clap::Command> = cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
    let page_cmd = cmd.name(name.clone()).bin_name(name.replacen("git-p2p", "git p2p", 1).replace('-', " "));
    let man = clap_mangen::Man::new(page_cmd.clone())
        .title(name.to_uppercase())
        .section("1")
        .source(format!("git-p2p {}", env!("CARGO_PKG_VERSION")))
        .manual("Git Manual");
    let mut roff = Vec::new();
    let sections = |roff: &mut Vec<u8>| -> std::io::Result<()> {
        man.render_title(roff)?;
        man.render_name_section(roff)?;
        man.render_synopsis_section(roff)?;
        man.render_description_section(roff)?;
        if page_cmd.get_arguments().any(|a| !a.is_hide_set()) {
            man.render_options_section(roff)?;
        }
        if !subcommands.is_empty() {
            man.render_subcommands_section(roff)?;
        }
        for (title, body) in extra_sections(&name) {
            roff.extend_from_slice(format!(".SH \"{title}\"\n{body}").as_bytes());
        }
        roff.extend_from_slice(exit_status().as_bytes());
        roff.extend_from_slice(see_also(&name, parent, &subcommands).as_bytes());
        Ok(())
    };
    sections(&mut roff).expect("rendering to a Vec cannot fail");
    out.push((format!("{name}.1"), roff));
    for sub in subcommands {
        let sub_name = format!("{name}-{}", sub.get_name());
        render(sub, sub_name, Some(&name), out);
    }
}

/// Text made safe for roff: backslashes and hyphens escaped, no line starting a request.
fn esc(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('-', "\\-")
        .lines()
        .map(|l| if l.starts_with(['.', '\'']) { format!("\\&{l}") } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Tagged paragraphs: (term, text) pairs.
fn items(items: &[(&str, &str)]) -> String {
    items.iter().map(|(term, text)| format!(".TP\n\\fB{}\\fR\n{}\n", esc(term), esc(text))).collect()
}

fn paragraph(text: &str) -> String {
    format!(".PP\n{}\n", esc(text))
}

/// Examples: a line of prose, then the commands verbatim.
fn examples(list: &[(&str, &str)]) -> String {
    list.iter().map(|(what, cmd)| format!(".PP\n{}\n.PP\n.RS 4\n.nf\n{}\n.fi\n.RE\n", esc(what), esc(cmd))).collect()
}

fn exit_status() -> String {
    format!(
        ".SH \"EXIT STATUS\"\n{}",
        items(&[
            ("0", "success"),
            ("1", "the command failed (one line on stderr says why)"),
            ("2", "usage error (a bad or missing argument; the line names it)")
        ])
    )
}

fn see_also(name: &str, parent: Option<&str>, subcommands: &[clap::Command]) -> String {
    let mut pages: Vec<String> = Vec::new();
    if name != "git-p2p" {
        pages.push("git-p2p".into());
    }
    if let Some(parent) = parent.filter(|p| *p != "git-p2p") {
        pages.push(parent.to_string());
    }
    pages.extend(subcommands.iter().map(|s| format!("{name}-{}", s.get_name())));
    if name == "git-p2p" {
        pages.push("git".into());
    }
    let refs: Vec<String> = pages.iter().map(|p| format!("\\fB{}\\fR(1)", esc(p))).collect();
    format!(".SH \"SEE ALSO\"\n{}\n", refs.join(", "))
}

/// Every `p2p.*` setting, as `git config` takes it.
const CONFIGURATION: &[(&str, &str)] = &[
    ("p2p.listen (multi)", "Addresses the node listens on, as multiaddrs (/ip4/0.0.0.0/tcp/0, /ip6/::/udp/4001/quic-v1, ...). Default: TCP and QUIC on all interfaces, ports chosen by the system. A peer that can be reached both ways is connected over TCP (a QUIC dial waits up to 250 ms for a TCP dial of the same peer; hole punches dial both at once). Read from global config."),
    ("p2p.bootstrap (multi)", "Peers to dial at start, as multiaddrs ending in /p2p/<PeerId> (what git p2p id prints). Needed the first time only: the node remembers the peers it met. Read from global config."),
    ("p2p.mdns", "Find peers on the LAN by mDNS: true (default) or false. Read from global config."),
    ("p2p.mdnsInterval", "Seconds between mDNS queries (default 5). Read from global config."),
    ("p2p.dht-mode", "server (default: answer DHT queries) or client (only ask). Read from global config."),
    ("p2p.relay (multi)", "Nostr relay URLs (wss://...): the bridge publishes repository announcements, states and room messages there and reads comments. None: the bridge is off. Read from global config."),
    ("p2p.replicate", "Fetch other authors' announced commits into the node's mirror as they are announced, so that git fetch from p2p:// remotes is usually local: true (default) or false. Read from global config."),
    ("p2p.max-fetch-size", "The largest pack one fetch from a peer may bring, in bytes (k, m, g suffixes; default 2g); a larger one fails with an error naming this key. Read from global config."),
    ("p2p.name", "Your display name for peers (default: user.name)."),
    ("p2p.description", "The repository's description in its Nostr announcement (per repository)."),
];

const FILES: &[(&str, &str)] = &[
    ("$XDG_DATA_HOME/git-p2p/ (~/.local/share/git-p2p/)", "libp2p.key and nostr.key (your keys, 0600, never logged), store.redb (address book, repositories, outbox, feed, chat history, DHT records, Nostr queue), spool/ (announcements made while the node was down), node.log."),
    ("$XDG_DATA_HOME/git-p2p/mirrors/<repo-id>.git", "The node's mirror of each repository: what its authors published, the only repository peers fetch from (see git-remote-p2p(1))."),
    ("$XDG_RUNTIME_DIR/git-p2p/ (the data dir without XDG_RUNTIME_DIR)", "control.sock (0600; the control socket, JSON lines, versioned), notes/ (the hook's notes)."),
    ("<git dir>/hooks/post-commit, post-merge", "The hooks git p2p init installs (existing hooks are chained, core.hooksPath is respected)."),
];

const ENVIRONMENT: &[(&str, &str)] = &[
    ("XDG_DATA_HOME, XDG_RUNTIME_DIR, HOME", "Where the data dir and the control socket are."),
    ("GIT_P2P_NO_AUTOSTART", "Set to 1: commands and the hooks do not start the node."),
    ("GIT_P2P_FOLLOW_WAIT", "Seconds log -f and chat --tail -f wait for a node that went away before they give up (default 60; 0: at once)."),
    ("RUST_LOG", "The node's log filter (e.g. git_p2p=debug); -v and -vv raise it too."),
    ("GIT_CONFIG_GLOBAL, GIT_CONFIG_NOSYSTEM", "As for git: which config the node reads its p2p.* settings from."),
];

const CHAT_KEYS: &[(&str, &str)] = &[
    ("Enter", "Send the message."),
    ("Tab, Esc", "Move the focus between the composer and the timeline."),
    (
        "PgUp, PgDn (Up, Down, Home, End in the timeline)",
        "Scroll; a scrolled view stays where it is when messages arrive.",
    ),
    ("Ctrl-P", "Show or hide the peers pane."),
    ("/help, /peers, /quit", "Commands typed in the composer."),
    ("Ctrl-C", "Leave (the terminal is restored)."),
];

const THREADS: &str = "Every commit has a thread: git p2p chat --commit REV opens it. REV is a revision of your \
repository (HEAD, a branch, an id), or a commit a peer announced that you do not have (git p2p log lists them), by its \
id or its first hex digits (4 at least). Digits that name several commits, here or announced, are an error that lists \
them; give more. Every node of a repository hears every thread of it (on the repository's threads topic) and keeps \
what is said there, so a thread opened later shows it; the room tells of each reply in one line: its author, the \
commit and its summary, and its first words, for example: bob (..9Rg3sBYbU1Nf) replied in thread on 1a2b3c4 \
\"Fix the frobnicator\": looks good. In --json such a line is an object with \"thread\" (the commit) and the first \
words as \"text\".";

const FOLLOWING: &str = "With -f (and in the chat window) the command outlives a restart of the node (git p2p daemon \
stop && git p2p daemon start, a crash and a restart): it waits for the node to come back without starting one (a node \
you stopped stays stopped), then prints what arrived meanwhile and goes on, each item once, in time order (a history is kept \
in the order its items were signed: what a peer catches the node up on takes its place in it). On stderr: a line when the node has been away for a second (\"lost the node; waiting up to 60 s\"), one when it \
is back (\"node restarted; resumed\"). A node away longer than GIT_P2P_FOLLOW_WAIT seconds (default 60) ends the \
command with exit status 1; the chat window waits as long as it is open and says so in its status line.";

const LIMITS: &str = "A room message has at most 4000 characters; a node keeps the last 1000 messages per room, \
10 000 across the commit threads of a repository, and 10 000 announcements per repository (1000 per author); a message seen once is known for 30 days \
(replays are dropped). Peers take at most 20 messages a second from one author (bursts of 100) and 50 announcements (bursts of \
500); your node sends at 90 % of that pace, so a burst waits in the \
outbox. Messages dated more than 10 minutes ahead of \
a peer's clock or more than 30 days back are dropped. A DHT value has at most 8 KiB, a key 256 bytes, a record 64 \
authors.";

const RESERVED_KEYS: &str = "refs, refs/... and notes/... are git-p2p's own keys: your published refs (written by \
git p2p refs publish and by the node after each commit) and notes (git p2p notes push). kv set and kv rm refuse them; \
kv get reads them; kv ls lists them only with --all.";

/// The sections of a page beyond options and subcommands.
fn extra_sections(name: &str) -> Vec<(&'static str, String)> {
    match name {
        "git-p2p" => vec![
            ("CONFIGURATION", paragraph("Settings live in git config (git config --global p2p.<key> <value>); the node reads them when it starts (restart it after a change: git p2p daemon stop).") + &items(CONFIGURATION)),
            ("FILES", items(FILES)),
            ("ENVIRONMENT", items(ENVIRONMENT)),
            ("LIMITS", paragraph(LIMITS)),
            ("EXAMPLES", examples(&[
                ("Set up a repository and see what peers announce:", "cd my-repo && git p2p init\ngit p2p log -f"),
                ("Connect to a peer on another network (its address from git p2p id there):", "git config --global --add p2p.bootstrap /ip4/203.0.113.7/tcp/4001/p2p/12D3KooW...\ngit p2p daemon stop && git p2p peers"),
                ("Talk in the repository's room, or from a script:", "git p2p chat\ngit p2p chat --send \"review please\"\ngit p2p chat --tail -f --json"),
                ("Share a value through the DHT:", "git p2p kv set review-status ready\ngit p2p kv get review-status"),
            ])),
        ],
        "git-p2p-chat" => vec![
            ("KEYS", paragraph("In the chat window:") + &items(CHAT_KEYS)),
            ("THREADS", paragraph(THREADS)),
            ("FOLLOWING", paragraph(FOLLOWING)),
            ("LIMITS", paragraph(LIMITS)),
            ("EXAMPLES", examples(&[
                ("The room, then the thread of the last commit:", "git p2p chat\ngit p2p chat --commit HEAD"),
                ("The thread of a commit a peer announced, by its first digits:", "git p2p log\ngit p2p chat --commit 1a2b3c4 --send \"looks good\""),
                ("From scripts:", "git p2p chat --send \"build is green\"\ngit p2p chat --tail -f --json"),
            ])),
        ],
        "git-p2p-kv" | "git-p2p-kv-set" | "git-p2p-kv-get" | "git-p2p-kv-rm" | "git-p2p-kv-ls" => vec![
            ("LIMITS", paragraph(LIMITS)),
            ("RESERVED KEYS", paragraph(RESERVED_KEYS)),
            ("EXAMPLES", examples(&[
                ("Set, read and remove a value:", "git p2p kv set review-status ready\ngit p2p kv get review-status --json\ngit p2p kv rm review-status"),
                ("A value from a file, or from standard input:", "git p2p kv set config --file ci.json\necho ok | git p2p kv set status -"),
            ])),
        ],
        "git-p2p-doctor" => vec![(
            "EXAMPLES",
            examples(&[
                ("Why a peer on another network does not connect:", "git p2p doctor"),
                ("The failed checks only, from a script:", "git p2p doctor --json | jq -c 'select(.verdict == \"fail\")'"),
            ]),
        )],
        "git-remote-p2p" => vec![
            ("CONFIGURATION", items(&[
                ("p2p.replicate", "Fetch other authors' announced work into the mirror as it is announced: true (default) or false. Read from global config."),
                ("p2p.max-fetch-size", "The largest pack one fetch from a peer may bring (default 2g; k, m, g suffixes). Read from global config."),
            ])),
            ("FILES", items(&[("$XDG_DATA_HOME/git-p2p/mirrors/<repo-id>.git", "The node's mirror of a repository: each author's published refs in refs/namespaces/<PeerId>/, and all of them in refs/namespaces/_all/ as refs/heads/<author>/<branch>. Peers fetch from it; your working repositories are never served.")])),
            ("EXAMPLES", examples(&[
                ("Clone one author's work (the id is the root commit; git p2p init prints it):", "git clone p2p://<repo-id>/<author> proj"),
                ("Fetch every author's branches, then merge one:", "git remote add peers p2p://<repo-id>\ngit fetch peers\ngit pull peers <author>/main"),
                ("Publish a branch as yours:", "git push peers topic"),
            ])),
        ],
        "git-p2p-log" => vec![
            ("FOLLOWING", paragraph(FOLLOWING)),
            ("EXAMPLES", examples(&[
                ("What peers announced, then follow:", "git p2p log -n 20\ngit p2p log -f --json"),
                ("One peer's commits on main this week, then theirs as they come:", "git p2p log --author 9Rg3sBYbU1Nf --branch main --since 1.week\ngit p2p log -f --author 9Rg3sBYbU1Nf"),
            ])),
        ],
        "git-p2p-repos" | "git-p2p-deinit" => vec![("EXAMPLES", examples(&[
            ("The repositories the node serves, then forget one whose directory is gone:", "git p2p repos\ngit p2p deinit ~/src/old-clone"),
            ("Undo git p2p init here (your own hooks come back):", "git p2p deinit"),
        ]))],
        "git-p2p-daemon" | "git-p2p-daemon-run" => vec![
            ("FILES", items(FILES)),
            ("EXAMPLES", examples(&[("Run the node under systemd (a user unit's ExecStart):", "git p2p daemon run")])),
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    #[test]
    fn man_pages_are_fresh() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
        let pages = super::pages();
        if std::env::var_os("GIT_P2P_UPDATE_MAN").is_some() {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, roff) in &pages {
                std::fs::write(dir.join(name), roff).unwrap();
            }
        }
        let mut stale = Vec::new();
        for (name, roff) in &pages {
            if std::fs::read(dir.join(name)).ok().as_deref() != Some(roff.as_slice()) {
                stale.push(name.clone());
            }
        }
        let expected: BTreeSet<String> = pages.iter().map(|(n, _)| n.clone()).collect();
        let present: BTreeSet<String> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        stale.extend(present.difference(&expected).cloned());
        assert!(stale.is_empty(), "man pages are stale: {stale:?}; run: GIT_P2P_UPDATE_MAN=1 cargo test man_pages");
        assert!(expected.contains("git-p2p.1") && expected.contains("git-p2p-daemon-run.1"));
        assert!(expected.contains("git-remote-p2p.1"), "the remote helper has its page");
    }

    #[test]
    fn man_pages_have_their_sections_and_refer_only_to_pages_that_exist() {
        let pages = super::pages();
        let names: BTreeSet<String> = pages.iter().map(|(n, _)| n.trim_end_matches(".1").to_string()).collect();
        for (name, roff) in &pages {
            let text = String::from_utf8_lossy(roff);
            for section in ["NAME", "SYNOPSIS", "EXIT STATUS", "SEE ALSO"] {
                assert!(
                    text.contains(&format!(".SH {section}")) || text.contains(&format!(".SH \"{section}\"")),
                    "{name}: no {section}"
                );
            }
            // Every page it names, `\fBgit\-p2p\-kv\fR(1)`, exists (git(1) is git's).
            for reference in text.split("\\fB").skip(1).filter_map(|r| r.split_once("\\fR(1)").map(|(p, _)| p)) {
                let page = reference.replace("\\-", "-");
                assert!(page == "git" || names.contains(&page), "{name} refers to {page}(1), which does not exist");
            }
        }
        let root = String::from_utf8_lossy(&pages[0].1).into_owned();
        for section in ["CONFIGURATION", "FILES", "ENVIRONMENT", "LIMITS", "EXAMPLES", "DESCRIPTION", "OPTIONS"] {
            assert!(
                root.contains(&format!(".SH {section}")) || root.contains(&format!(".SH \"{section}\"")),
                "git-p2p(1): no {section}"
            );
        }
        for key in [
            "p2p.listen",
            "p2p.bootstrap",
            "p2p.mdns",
            "p2p.mdnsInterval",
            "p2p.dht-mode",
            "p2p.relay",
            "p2p.replicate",
            "p2p.max-fetch-size",
            "p2p.name",
            "p2p.description",
        ] {
            assert!(root.contains(&super::esc(key)), "git-p2p(1) does not document {key}");
        }
        let chat =
            pages.iter().find(|(n, _)| n == "git-p2p-chat.1").map(|(_, r)| String::from_utf8_lossy(r).into_owned());
        assert!(
            chat.is_some_and(|c| c.contains("KEYS") && c.contains("Ctrl\\-P")),
            "the chat page lists the window's keys"
        );
        assert!(!names.contains("git-p2p-help"), "no page for clap's help subcommand");
    }

    #[test]
    fn every_argument_says_what_it_is() {
        fn check(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                if arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                check(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        check(&crate::cli::command(), "git p2p", &mut missing);
        assert!(missing.is_empty(), "arguments without help text: {missing:?}");
    }
}
