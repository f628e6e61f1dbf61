//! The command line's contract: exit codes, one-line errors, repo context errors, -C.

use std::io::Write;
use std::process::Stdio;

use crate::support::*;

#[test]
fn usage_errors_exit_2_with_one_line() {
    let alice = Node::new("alice");
    assert_one_line_error(&alice.run(&["frobnicate"]), 2, "unrecognized subcommand 'frobnicate'");
    assert_one_line_error(&alice.run(&["peers", "--bogus"]), 2, "unexpected argument '--bogus'");
    // clap's detail survives on the one line: the missing argument, its suggestions.
    assert_one_line_error(&alice.run(&["kv", "set"]), 2, "<KEY>");
    assert_one_line_error(&alice.run(&["kv", "set", "k"]), 2, "<VALUE>");
    assert_one_line_error(&alice.run(&["chat", "-f"]), 2, "--tail");
    assert_one_line_error(&alice.run(&["peer"]), 2, "a similar subcommand exists: 'peers'");
    let out = alice.run(&[]);
    assert_eq!(out.status.code(), Some(2), "no command: help and usage exit");
    let out = alice.run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("git p2p"));
    assert!(alice.pid().is_none(), "no command above needed or started the node");
}

#[test]
fn repo_context_errors_are_clear() {
    let alice = Node::new("alice");
    let not_repo = alice.path("home");
    assert_one_line_error(
        &alice.run_in(&not_repo, &["init"]),
        1,
        "not a git repository (run inside a repo or pass -C DIR)",
    );

    let empty = alice.path("home/empty");
    alice.git(&alice.path("home"), &["init", "-q", "empty"]);
    assert_one_line_error(&alice.run_in(&empty, &["init"]), 1, "no commit yet");

    let repo = alice.repo("proj", 1);
    alice.git(&alice.path("home"), &["clone", "-q", "--bare", repo.to_str().unwrap(), "bare.git"]);
    assert_one_line_error(&alice.run_in(&alice.path("home/bare.git"), &["init"]), 1, "bare repository");
    assert!(alice.pid().is_none(), "errors in the repo are found before the node is started");
}

#[test]
fn dash_c_runs_in_another_directory_and_detached_head_is_fine() {
    let alice = Node::new("alice");
    let repo = alice.repo("proj", 2);
    alice.git(&repo, &["checkout", "-q", "--detach", "HEAD~1"]);
    let out = alice.run(&["-C", repo.to_str().unwrap(), "init"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let root = alice.git(&repo, &["rev-list", "--max-parents=0", "HEAD"]).trim().to_string();
    let status = alice.status();
    assert_eq!(status["repos"][0]["id"], root.as_str());
    assert_eq!(status["repos"][0]["name"], "proj", "no origin: the directory names the room");
}

#[test]
fn without_relays_nostr_is_off_and_says_how_to_turn_it_on() {
    let alice = Node::new("alice");
    let human = alice.ok(&["nostr", "status"]);
    assert!(human.starts_with("nostr off: no relay configured") && human.contains("p2p.relay"), "{human}");
    let json = alice.json(&["nostr", "status", "--json"]);
    assert_eq!(json["enabled"], false);
    assert_eq!(json["npub"], alice.json(&["id", "--json"])["npub"]);
    assert!(alice.ok(&["daemon", "status"]).contains("nostr      off (no p2p.relay configured)"));
}

#[test]
fn id_shows_identity_and_import_nsec_reads_stdin() {
    let alice = Node::new("alice");
    let id = alice.json(&["id", "--json"]);
    assert!(id["peer_id"].as_str().unwrap().starts_with("12D3KooW"));
    assert!(id["npub"].as_str().unwrap().starts_with("npub1"));
    assert_eq!(id["name"], "alice");
    assert!(id["listen_addrs"].as_array().unwrap().iter().any(|a| a.as_str().unwrap().contains("/quic-v1")));
    assert_eq!(id["data_dir"], alice.data_dir().to_str().unwrap());
    alice.ok(&["daemon", "stop"]);

    // A throwaway key (secret = 1), only ever used in this test.
    let hex = format!("{:064x}", 1);
    let mut child = alice
        .command(&["id", "--import-nsec"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(hex.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let npub = alice.json(&["id", "--json"])["npub"].as_str().unwrap().to_string();
    assert_ne!(npub, id["npub"].as_str().unwrap());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&npub));
    let mut child = alice
        .command(&["id", "--import-nsec"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"not a key").unwrap();
    assert_one_line_error(&child.wait_with_output().unwrap(), 1, "not a valid Nostr secret key");
}

#[test]
fn completions_complete_git_p2p_through_gits_own_bash_completion() {
    let alice = Node::new("alice");
    let script = alice.path("git-p2p.bash");
    std::fs::write(&script, alice.ok(&["completions", "bash"])).unwrap();
    let git_completion = "/usr/share/bash-completion/completions/git";
    assert!(
        std::path::Path::new(git_completion).exists(),
        "git's bash completion is missing ({git_completion}): install git's bash completion"
    );
    // What bash does on TAB: git's completion finds the `p2p` command and calls _git_p2p.
    let complete = |line: &str| {
        let words: Vec<&str> = line.split(' ').collect();
        let program = format!(
            "source {git_completion}; source {}; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{line}'; \
             COMP_POINT=${{#COMP_LINE}}; __git_wrap__git_main; echo \"${{COMPREPLY[*]}}\"",
            script.display(),
            words.join(" "),
            words.len() - 1,
        );
        let out = std::process::Command::new("bash").arg("-c").arg(program).output().expect("bash");
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(complete("git p2p k"), "kv");
    assert_eq!(complete("git p2p kv s"), "set");
    let mut daemon: Vec<String> = complete("git p2p daemon st").split(' ').map(String::from).collect();
    daemon.sort();
    assert_eq!(daemon, ["start", "status", "stop"]);
    // zsh and fish read theirs without complaint.
    for (shell, check) in [("zsh", vec!["-n"]), ("fish", vec!["--no-execute"])] {
        let path = alice.path(&format!("git-p2p.{shell}"));
        std::fs::write(&path, alice.ok(&["completions", shell])).unwrap();
        let out = std::process::Command::new(shell)
            .args(&check)
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("{shell} is needed for this test (CI installs it): {e}"));
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
    }
}

#[test]
fn node_settings_in_a_repositorys_config_get_a_warning_naming_global() {
    let alice = Node::new("alice");
    let repo = alice.repo("proj", 1);
    alice.git(&repo, &["config", "p2p.listen", "/ip4/127.0.0.1/tcp/4001"]);
    alice.git(&repo, &["config", "p2p.name", "Alice at work"]);
    let out = alice.run_in(&repo, &["kv", "ls", "--json"]);
    let err = stderr(&out);
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("git-p2p: warning:")).collect();
    assert_eq!(warnings.len(), 1, "one line, for p2p.listen only (p2p.name works per repository): {err}");
    assert!(warnings[0].contains("p2p.listen") && warnings[0].contains("--global"), "{err}");
}
