//! The chat window end to end, in real terminals: two nodes on loopback, `git p2p chat` in a
//! tmux pane for each; a line typed in alice's window appears on bob's screen, `--tail` in a
//! third process sees it, the window outlives a restart of its node, and Ctrl-C gives the
//! terminal back in the state it was.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::support::*;

/// A private tmux server (own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let socket = format!("gp-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        Self { socket }
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("tmux is installed (.ci/run installs it)");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    fn capture(&self, pane: &str) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", pane]).stdout).into_owned()
    }

    fn wait_for(&self, pane: &str, what: &str) -> String {
        eventually(Duration::from_secs(30), &format!("{what:?} on {pane}'s screen"), || {
            let screen = self.capture(pane);
            screen.contains(what).then_some(screen)
        })
    }

    /// Opens `git p2p chat` for `node` in `repo`, in a new 100x30 session named after the node.
    /// After the window closes, the pane prints the exit status and the terminal's mode.
    fn open_chat(&self, node: &Node, repo: &Path) {
        let script = node.path("chat.sh");
        let mut text = String::from("#!/bin/sh\n");
        for (k, v) in node.env_pairs() {
            text.push_str(&format!("export {k}='{v}'\n"));
        }
        text.push_str(&format!("cd '{}'\ngit-p2p chat\necho \"EXITED:$?\"\n", repo.display()));
        text.push_str("stty -a | tr ' ;' '\\n\\n' | grep -x -- '-\\{0,1\\}icanon'\nexec sleep 600\n");
        std::fs::write(&script, text).expect("script");
        self.run(&[
            "new-session",
            "-d",
            "-s",
            &node.name,
            "-x",
            "100",
            "-y",
            "30",
            &format!("sh {}", script.display()),
        ]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-L").arg(&self.socket).arg("kill-server").output();
    }
}

#[test]
fn a_line_typed_in_alices_window_appears_on_bobs_screen() {
    let Pair { alice, bob, alice_repo, bob_repo } = pair();
    eventually(Duration::from_secs(20), "alice and bob connected", || (!alice.peers().is_empty()).then_some(()));

    let tmux = Tmux::new();
    tmux.open_chat(&bob, &bob_repo);
    tmux.open_chat(&alice, &alice_repo);
    tmux.wait_for("bob", "message (Enter to send)");
    let screen = tmux.wait_for("alice", "1 peer");
    assert!(screen.contains("# proj") && screen.contains("nostr: off"), "header: {screen}");

    // `?` and wide characters are typed like any other character.
    tmux.run(&["send-keys", "-t", "alice", "-l", "hello from tmux? 世界"]);
    tmux.run(&["send-keys", "-t", "alice", "Enter"]);
    tmux.wait_for("alice", "sent to 1 peer");
    let screen = tmux.wait_for("bob", "hello from tmux? 世界");
    assert!(screen.contains("alice (.."), "author shown: {screen}");
    let tail = bob.ok_in(&bob_repo, &["chat", "--tail"]);
    assert!(tail.contains("hello from tmux? 世界"), "a third process sees it: {tail}");

    // Bob's node goes away under his open window: the window says it waits, then shows what
    // alice said meanwhile, and what she says after.
    bob.ok(&["daemon", "stop"]);
    eventually(Duration::from_secs(20), "alice to notice bob left", || alice.peers().is_empty().then_some(()));
    alice.ok_in(&alice_repo, &["chat", "--send", "said while your node was down"]);
    tmux.wait_for("bob", "lost the node: waiting for it to come back");
    bob.start();
    tmux.wait_for("bob", "node restarted; resumed");
    tmux.wait_for("bob", "said while your node was down");
    tmux.run(&["send-keys", "-t", "alice", "-l", "and after the restart"]);
    tmux.run(&["send-keys", "-t", "alice", "Enter"]);
    let screen = tmux.wait_for("bob", "and after the restart");
    let once = |text: &str| screen.matches(text).count() == 1;
    assert!(once("said while your node was down") && once("hello from tmux? 世界"), "each once: {screen}");

    // A reply in a commit's thread is told in the room in one line.
    let head = alice.git(&alice_repo, &["rev-parse", "HEAD"]).trim().to_string();
    alice.ok_in(&alice_repo, &["chat", "--commit", &head[..8], "--send", "a reply in the thread"]);
    tmux.wait_for("bob", &format!("replied in thread on {} \"commit 0\": a reply in the thread", &head[..7]));

    tmux.run(&["send-keys", "-t", "alice", "C-c"]);
    let screen = tmux.wait_for("alice", "icanon");
    assert!(screen.contains("EXITED:0"), "{screen}");
    let mode = screen.lines().find(|l| l.ends_with("icanon")).unwrap_or_default();
    assert_eq!(mode, "icanon", "cooked mode is back after Ctrl-C: {screen}");
    let alt = tmux.run(&["display-message", "-p", "-t", "alice", "#{alternate_on}"]);
    assert_eq!(String::from_utf8_lossy(&alt.stdout).trim(), "0", "left the alternate screen");
}
