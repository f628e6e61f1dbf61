//! Commit threads between two nodes: a thread opens for any announced commit (its id, or a start
//! of it), also one the local repository does not have; every node of the repository keeps what
//! is said in a thread, opened or not; the room shows each reply as one line with its first
//! words; an ambiguous or unknown commit is a one-line error.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

fn json_lines(out: &str) -> Vec<Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a JSON line: {e}: {l}"))).collect()
}

/// Waits until `node`'s feed for the repository lists `commit`.
fn wait_announced(node: &Node, repo: &Path, commit: &str) {
    eventually(Duration::from_secs(30), &format!("{commit} in {}'s log", node.name), || {
        node.ok_in(repo, &["log", "--json", "-n", "1000"]).contains(commit).then_some(())
    });
}

#[test]
fn a_thread_on_a_commit_known_only_from_the_log_opens_and_the_room_tells_of_its_replies() {
    let Pair { alice, bob, alice_repo, bob_repo } = pair();
    let mut room = Running::spawn(&bob, &bob_repo, &["chat", "--tail", "-f"], &[]);

    alice.git(&alice_repo, &["commit", "-q", "--allow-empty", "-m", "Fix the frobnicator"]);
    let id = alice.git(&alice_repo, &["rev-parse", "HEAD"]).trim().to_string();
    wait_announced(&bob, &bob_repo, &id);
    let local = std::process::Command::new("git")
        .args(["cat-file", "-e", &id])
        .current_dir(&bob_repo)
        .output()
        .expect("git cat-file");
    assert!(!local.status.success(), "bob's repository does not have the commit: only the log knows it");

    // Bob replies by a start of the id (in capitals too); alice never opened the thread.
    let out = bob.ok_in(&bob_repo, &["chat", "--commit", &id[..8].to_uppercase(), "--send", "looks good"]);
    assert!(out.starts_with("sent to") || out.starts_with("queued"), "{out}");
    let in_thread = eventually(Duration::from_secs(30), "bob's reply in alice's copy of the thread", || {
        let thread = json_lines(&alice.ok_in(&alice_repo, &["chat", "--tail", "--json", "--commit", &id]));
        thread.into_iter().find(|m| m["text"] == "looks good")
    });
    assert!(in_thread["room"].as_str().is_some_and(|r| r.ends_with(&format!("/{id}"))), "{in_thread}");
    assert!(in_thread.get("thread").is_none(), "a message of the thread, not a notice");
    let mine = json_lines(&bob.ok_in(&bob_repo, &["chat", "--tail", "--json", "--commit", &id[..6]]));
    assert!(mine.iter().any(|m| m["text"] == "looks good" && m["own"] == true), "{mine:?}");

    // Alice's room tells of it in one line, with the commit's summary (hers: in her repository).
    let bob_short = &bob.peer_id()[bob.peer_id().len() - 12..];
    let notice = format!("bob (..{bob_short}) replied in thread on {} \"Fix the frobnicator\": looks good", &id[..7]);
    let room_text = eventually(Duration::from_secs(30), "the notice in alice's room", || {
        let text = alice.ok_in(&alice_repo, &["chat", "--tail"]);
        text.contains(&notice).then_some(text)
    });
    assert_eq!(room_text.matches("looks good").count(), 1, "once, as a notice: {room_text}");
    let json = json_lines(&alice.ok_in(&alice_repo, &["chat", "--tail", "--json"]));
    let n = json.iter().find(|m| m["text"] == "looks good").expect("the notice as JSON");
    assert_eq!(n["thread"], id.as_str());

    // A long reply from alice reaches bob's room follower as its first words only; bob's room
    // shows the summary he knows from the log.
    let long = format!("I measured it again: {} and that settles it", "the frobnicator frobnicates ".repeat(12));
    alice.ok_in(&alice_repo, &["chat", "--commit", "HEAD", "--send", &long]);
    let alice_short = &alice.peer_id()[alice.peer_id().len() - 12..];
    let start = format!(
        "alice (..{alice_short}) replied in thread on {} \"Fix the frobnicator\": I measured it again: the frobnicator",
        &id[..7]
    );
    room.wait_for(&[&start], "alice's reply told in bob's room");
    let line = room.lines.iter().find(|l| l.contains(&start)).expect("the line");
    assert!(line.ends_with('…') && !line.contains("settles it"), "first words only: {line}");
    let thread = json_lines(&bob.ok_in(&bob_repo, &["chat", "--tail", "--json", "--commit", &id]));
    assert!(thread.iter().any(|m| m["text"] == long.as_str()), "the whole reply is in the thread");
}

/// Two commit objects in `repo` whose ids share their first 4 hex digits (no hook runs: they
/// are written with `git hash-object`, as many candidates as it takes to find a pair).
fn two_commits_sharing_a_prefix(node: &Node, repo: &Path) -> (String, String) {
    let tree = node.git(repo, &["rev-parse", "HEAD^{tree}"]).trim().to_string();
    let parent = node.git(repo, &["rev-parse", "HEAD"]).trim().to_string();
    let dir = node.path("candidates");
    std::fs::create_dir_all(&dir).expect("mkdir");
    // 3000 ids over 65 536 prefixes: two share one but with a chance of about e^-68.
    let paths: Vec<String> = (0..3000)
        .map(|i| {
            let path = dir.join(i.to_string());
            let text = format!(
                "tree {tree}\nparent {parent}\nauthor alice <a@x> 1700000000 +0000\n\
                 committer alice <a@x> 1700000000 +0000\n\nCandidate {i}\n"
            );
            std::fs::write(&path, text).expect("write");
            path.display().to_string()
        })
        .collect();
    let mut cmd = std::process::Command::new("git");
    cmd.args(["hash-object", "-t", "commit", "--stdin-paths"]).current_dir(repo);
    node.envs(&mut cmd);
    let mut child = cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().expect("git");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(paths.join("\n").as_bytes()).expect("paths");
    }
    let out = child.wait_with_output().expect("hash-object");
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(ids.len(), paths.len());
    let mut by_prefix: HashMap<&str, usize> = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        if let Some(&j) = by_prefix.get(&id[..4]) {
            for k in [i, j] {
                node.git(repo, &["hash-object", "-w", "-t", "commit", &paths[k]]);
            }
            return (ids[j].clone(), ids[i].clone());
        }
        by_prefix.insert(&id[..4], i);
    }
    panic!("no two of {} ids share 4 hex digits", ids.len());
}

#[test]
fn an_ambiguous_or_unknown_commit_is_a_one_line_error() {
    let Pair { alice, bob, alice_repo, bob_repo } = pair();
    let (one, two) = two_commits_sharing_a_prefix(&alice, &alice_repo);
    for id in [&one, &two] {
        alice.ok_in(&alice_repo, &["announce", id]);
        wait_announced(&bob, &bob_repo, id);
    }
    let prefix = &one[..4];
    for args in [vec!["chat", "--commit", prefix, "--tail"], vec!["chat", "--commit", prefix, "--send", "which one?"]] {
        let out = bob.run_in(&bob_repo, &args);
        assert_one_line_error(&out, 1, &format!("{prefix:?} names 2 commits: "));
        let err = stderr(&out);
        for id in [&one, &two] {
            assert!(err.contains(&id[..7]), "{id} listed: {err}");
        }
        let n = err.find(&two[..7]).unwrap();
        assert!(err[n..].contains("\"Candidate ") && err.ends_with("give more digits\n"), "{err}");
    }
    // Enough digits name one: it opens (nothing said there yet).
    let digits = (4..=40).find(|n| one[..*n] != two[..*n]).expect("two ids differ");
    let out = bob.ok_in(&bob_repo, &["chat", "--commit", &two[..digits], "--tail", "--json"]);
    assert!(out.is_empty(), "{out}");
    bob.ok_in(&bob_repo, &["chat", "--commit", &two[..digits], "--send", "this one"]);
    let thread = bob.ok_in(&bob_repo, &["chat", "--commit", &two, "--tail", "--json"]);
    assert!(thread.contains("this one"), "{thread}");

    let unknown = "0123abcd";
    assert_one_line_error(
        &bob.run_in(&bob_repo, &["chat", "--commit", unknown, "--tail"]),
        1,
        "unknown commit \"0123abcd\": not in this repository, and no peer announced a commit whose id starts with it",
    );
    assert_one_line_error(
        &bob.run_in(&bob_repo, &["chat", "--commit", "no-such-branch", "--tail"]),
        1,
        "no-such-branch",
    );
    assert_one_line_error(&bob.run_in(&bob_repo, &["chat", "--commit", &one[..3], "--tail"]), 1, &one[..3]);
}
