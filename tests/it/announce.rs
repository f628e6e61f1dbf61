//! Commit announcements end to end: real git commits with the installed hook on one node show up
//! in another node's `git p2p log`, also across a stopped or killed node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

fn wait_for_commits(node: &Node, repo: &Path, commits: &[String]) -> Vec<Value> {
    eventually(Duration::from_secs(60), &format!("{} commits in {}'s feed", commits.len(), node.name), || {
        let entries = node.feed(repo);
        commits.iter().all(|c| entries.iter().any(|e| e["commit"] == c.as_str())).then_some(entries)
    })
}

fn assert_exactly_once(entries: &[Value], commits: &[String]) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in entries {
        *counts.entry(e["commit"].as_str().unwrap()).or_default() += 1;
    }
    for c in commits {
        assert_eq!(counts.get(c.as_str()), Some(&1), "commit {c} listed once");
    }
}

#[test]
fn a_commit_in_alice_appears_in_bobs_log() {
    let Pair { alice, bob, alice_repo, bob_repo } = pair();
    let id = alice.commit(&alice_repo, "Fix the frobnicator\n\nDetails.");
    let entries = wait_for_commits(&bob, &bob_repo, std::slice::from_ref(&id));
    let e = entries.iter().find(|e| e["commit"] == id.as_str()).unwrap();
    assert_eq!(e["summary"], "Fix the frobnicator");
    assert_eq!(e["ref_name"], "refs/heads/main");
    assert_eq!(e["name"], "alice");
    assert_eq!(e["author"], "alice");
    assert_eq!(e["peer"], alice.peer_id().as_str());
    let parent = alice.git(&alice_repo, &["rev-parse", "HEAD~1"]).trim().to_string();
    assert_eq!(e["parents"], serde_json::json!([parent]));
    // Bob's repo does not have the commit: the announcement is the news.
    let human = bob.ok_in(&bob_repo, &["log"]);
    assert!(human.contains("Fix the frobnicator") && human.contains("alice") && human.contains(&id[..10]), "{human}");
    assert!(alice.feed(&alice_repo).is_empty(), "alice's feed holds what peers announced, not her own commits");
    let empty = alice.ok_in(&alice_repo, &["log"]);
    assert!(empty.starts_with("no commits announced by peers yet in proj"), "{empty}");
}

#[test]
fn log_follow_streams_new_announcements() {
    let Pair { alice, bob, alice_repo, bob_repo } = pair();
    let mut follower = bob.command(&["log", "-f", "--json"]);
    follower.current_dir(&bob_repo).stdout(std::process::Stdio::piped());
    let mut child = follower.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next_line_with = |needle: &str| loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("a line from log -f");
        if line.contains(needle) {
            break line;
        }
    };
    // The first commit may arrive as history or as a stream entry; once it is printed, the
    // follower is subscribed, and the second can only come through the stream.
    let first = alice.commit(&alice_repo, "first");
    next_line_with(&first);
    let second = alice.commit(&alice_repo, "streamed");
    let line = next_line_with(&second);
    assert!(line.contains("\"summary\":\"streamed\""), "{line}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn fifty_commits_while_the_node_is_down_all_arrive_once_it_runs() {
    let Pair { alice, bob, alice_repo, bob_repo } = pair();
    alice.ok(&["daemon", "stop"]);
    let commits: Vec<String> = (0..50)
        .map(|i| {
            let mut cmd = std::process::Command::new("git");
            cmd.args(["commit", "-q", "--allow-empty", "-m", &format!("offline {i}")]).current_dir(&alice_repo);
            alice.envs(&mut cmd);
            cmd.env("GIT_P2P_NO_AUTOSTART", "1");
            let out = cmd.output().unwrap();
            assert!(out.status.success() && out.stderr.is_empty(), "{}", stderr(&out));
            alice.git(&alice_repo, &["rev-parse", "HEAD"]).trim().to_string()
        })
        .collect();
    assert!(alice.pid().is_some_and(|p| !alive(p)) || alice.pid().is_none(), "the node stayed down");
    let spooled = std::fs::read_dir(alice.data_dir().join("spool")).unwrap().count();
    assert_eq!(spooled, 50, "each announcement spooled durably");
    alice.start();
    let entries = wait_for_commits(&bob, &bob_repo, &commits);
    assert_exactly_once(&entries, &commits);
    assert_eq!(std::fs::read_dir(alice.data_dir().join("spool")).unwrap().count(), 0, "spool drained");
}

#[test]
fn kill9_in_a_burst_of_100_commits_loses_nothing_and_duplicates_nothing() {
    let Pair { alice, bob, alice_repo, bob_repo } = pair();
    let mut commits = Vec::new();
    for i in 0..100 {
        if i == 50 {
            // The next commit's hook finds no node, spools, and starts a new one.
            alice.kill9();
        }
        commits.push(alice.commit(&alice_repo, &format!("burst {i}")));
    }
    let entries = wait_for_commits(&bob, &bob_repo, &commits);
    assert_exactly_once(&entries, &commits);
    assert_eq!(entries.len(), 100, "nothing else in the feed");
}

#[test]
fn the_hook_never_fails_a_commit() {
    let alice = Node::new("alice");
    let repo = alice.repo("proj", 1);
    // Hook installed, but git-p2p is not on PATH.
    alice.ok_in(&repo, &["hooks", "install"]);
    let mut cmd = std::process::Command::new("git");
    cmd.args(["commit", "-q", "--allow-empty", "-m", "no git-p2p"]).current_dir(&repo);
    alice.envs(&mut cmd);
    let git_dir = PathBuf::from(
        String::from_utf8(std::process::Command::new("sh").args(["-c", "command -v git"]).output().unwrap().stdout)
            .unwrap()
            .trim(),
    )
    .parent()
    .unwrap()
    .to_path_buf();
    cmd.env("PATH", format!("{}:/usr/bin:/bin", git_dir.display()));
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).lines().count() <= 1, "at most one line: {}", stderr(&out));
    // The hook in a repo where init never ran (hooksPath shared by all repos): still fine.
    let other = alice.repo("other", 1);
    alice.git(&other, &["config", "core.hooksPath", alice.path("home/proj/.git/hooks").to_str().unwrap()]);
    let mut cmd = std::process::Command::new("git");
    cmd.args(["commit", "-q", "--allow-empty", "-m", "never initialised"]).current_dir(&other);
    alice.envs(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).lines().count() <= 1, "{}", stderr(&out));
}

#[test]
fn init_chains_an_existing_hook_and_uninstall_restores_it() {
    let alice = Node::new("alice");
    let repo = alice.repo("proj", 1);
    let hooks = alice.path("shared-hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    alice.git(&repo, &["config", "core.hooksPath", hooks.to_str().unwrap()]);
    let original = "#!/bin/sh\necho ran >> \"$(git rev-parse --git-dir)/original-ran\"\n";
    std::fs::write(hooks.join("post-commit"), original).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(hooks.join("post-commit"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = alice.ok_in(&repo, &["init"]);
    assert!(out.contains("existing hook still runs"), "{out}");
    alice.commit(&repo, "with both hooks");
    assert!(repo.join(".git/original-ran").exists(), "the original hook ran");
    alice.ok_in(&repo, &["hooks", "uninstall"]);
    assert_eq!(std::fs::read_to_string(hooks.join("post-commit")).unwrap(), original, "restored byte for byte");
    assert_eq!(std::fs::read_dir(&hooks).unwrap().count(), 1, "nothing left behind");
}

#[test]
fn with_the_node_up_the_hook_needs_no_binary_and_the_reflog_catches_hookless_commits() {
    // Alice's runtime dir (where the notes go) is on the disk, not on a tmpfs.
    let Pair { alice, bob, alice_repo, bob_repo } = pair_of(Node::with_runtime_on_disk("alice"), &[]);
    // The fast path uses shell builtins only: with git-p2p off PATH the commit is still announced.
    let mut cmd = std::process::Command::new("git");
    cmd.args(["commit", "-q", "--allow-empty", "-m", "fast path"]).current_dir(&alice_repo);
    alice.envs(&mut cmd);
    cmd.env("PATH", "/usr/local/bin:/usr/bin:/bin");
    let out = cmd.output().unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "{}", stderr(&out));
    let fast = alice.git(&alice_repo, &["rev-parse", "HEAD"]).trim().to_string();
    wait_for_commits(&bob, &bob_repo, std::slice::from_ref(&fast));
    let spool = alice.data_dir().join("spool");
    let json = std::fs::read_dir(&spool)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.path().extension() == Some("json".as_ref()));
    assert!(!json, "nothing was signed by the hook");

    // Two commits made without any hook, then one with it: the node reads all three from the
    // reflog (the hook's note says only "look").
    let mut missed = Vec::new();
    for m in ["no hook 1", "no hook 2"] {
        alice.git(&alice_repo, &["-c", "core.hooksPath=/dev/null", "commit", "-q", "--allow-empty", "-m", m]);
        missed.push(alice.git(&alice_repo, &["rev-parse", "HEAD"]).trim().to_string());
    }
    missed.push(alice.commit(&alice_repo, "with the hook"));
    let entries = wait_for_commits(&bob, &bob_repo, &missed);
    missed.push(fast);
    assert_exactly_once(&entries, &missed);
    let e = entries.iter().find(|e| e["summary"] == "no hook 1").unwrap();
    assert_eq!(e["ref_name"], "refs/heads/main");

    // A commit that skipped the hook while the node was down is announced when it starts.
    alice.ok(&["daemon", "stop"]);
    alice.git(&alice_repo, &["-c", "core.hooksPath=/dev/null", "commit", "-q", "--allow-empty", "-m", "while down"]);
    let down = alice.git(&alice_repo, &["rev-parse", "HEAD"]).trim().to_string();
    alice.start();
    let entries = wait_for_commits(&bob, &bob_repo, std::slice::from_ref(&down));
    missed.push(down);
    assert_exactly_once(&entries, &missed);
}

/// Runs the repo's post-commit hook from an `sh` that then waits for a line on its stdin: the
/// hook's parent stays alive (as git would while finishing, or a rebase that commits again).
fn hook_from_a_lingering_parent(node: &Node, repo: &Path) -> std::process::Child {
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", ".git/hooks/post-commit; read -r line || :"]).current_dir(repo);
    node.envs(&mut cmd);
    // Without git-p2p on PATH only the fast path can announce.
    cmd.env("PATH", "/usr/local/bin:/usr/bin:/bin");
    cmd.stdin(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    cmd.spawn().unwrap()
}

fn notes(node: &Node, ext: &str) -> usize {
    let dir = node.path("run/git-p2p/notes");
    std::fs::read_dir(dir).unwrap().filter(|e| e.as_ref().unwrap().path().extension() == Some(ext.as_ref())).count()
}

#[test]
fn the_node_reads_a_note_once_the_hooks_git_has_exited_and_waits_no_more_than_two_seconds() {
    let Pair { alice, bob, alice_repo, bob_repo } = pair();
    let no_hook = ["-c", "core.hooksPath=/dev/null", "commit", "-q", "--allow-empty", "-m"];
    let mut first = no_hook.to_vec();
    first.push("first");
    alice.git(&alice_repo, &first);
    let held = alice.git(&alice_repo, &["rev-parse", "HEAD"]).trim().to_string();
    let mut parent = hook_from_a_lingering_parent(&alice, &alice_repo);
    // The note is taken (renamed) and held while its parent lives.
    eventually(Duration::from_secs(10), "the note to be held", || (notes(&alice, "wait") == 1).then_some(()));
    assert_eq!(notes(&alice, "note"), 0);
    // A second hook meanwhile still takes the fast path: a held note is not a backlog.
    let mut second = no_hook.to_vec();
    second.push("second");
    alice.git(&alice_repo, &second);
    let next = alice.git(&alice_repo, &["rev-parse", "HEAD"]).trim().to_string();
    let mut other = hook_from_a_lingering_parent(&alice, &alice_repo);
    eventually(Duration::from_secs(10), "both notes to be held", || (notes(&alice, "wait") == 2).then_some(()));
    // The first parent exits: its commits go out (the reflog holds both).
    drop(parent.stdin.take());
    assert!(parent.wait().unwrap().success());
    let entries = wait_for_commits(&bob, &bob_repo, &[held.clone(), next.clone()]);
    assert_exactly_once(&entries, &[held, next]);
    // A parent that never exits delays its note by two seconds, not more.
    eventually(Duration::from_secs(10), "the other note to go", || (notes(&alice, "wait") == 0).then_some(()));
    let out = other.stderr.take().unwrap();
    drop(other.stdin.take());
    assert!(other.wait().unwrap().success());
    assert!(std::io::read_to_string(out).unwrap().is_empty(), "the fast path is silent");
}

#[test]
fn a_rebase_is_announced_once_as_its_result_whether_the_node_runs_or_not() {
    let Pair { alice, bob, alice_repo, bob_repo } = pair();
    let base = alice.commit(&alice_repo, "base");
    alice.git(&alice_repo, &["checkout", "-q", "-b", "topic"]);
    let work: Vec<String> = (1..=3).map(|i| alice.commit(&alice_repo, &format!("topic {i}"))).collect();
    alice.git(&alice_repo, &["checkout", "-q", "main"]);
    let main = alice.commit(&alice_repo, "main moves on");
    let mut expected = vec![base, main];
    expected.extend(work);
    wait_for_commits(&bob, &bob_repo, &expected);

    // With the node up: three picks, each running the post-commit hook; one announcement.
    alice.git(&alice_repo, &["rebase", "-q", "main", "topic"]);
    let tip = alice.git(&alice_repo, &["rev-parse", "HEAD"]).trim().to_string();
    let entries = wait_for_commits(&bob, &bob_repo, std::slice::from_ref(&tip));
    let e = entries.iter().find(|e| e["commit"] == tip.as_str()).unwrap();
    assert_eq!((e["ref_name"].as_str(), e["summary"].as_str()), (Some("refs/heads/topic"), Some("topic 3")));
    let picks = alice.git(&alice_repo, &["rev-list", "main..topic~1"]);

    // An interactive rebase stopped at an `edit`: a commit made meanwhile waits for its end
    // (`daemon status` says so), and only the result is announced.
    alice.git(&alice_repo, &["checkout", "-q", "main"]);
    let main3 = alice.commit(&alice_repo, "main moves a third time");
    alice.git(&alice_repo, &["-c", "sequence.editor=sed -i 1s/^pick/edit/", "rebase", "-q", "-i", "main", "topic"]);
    alice.git(&alice_repo, &["commit", "-q", "--allow-empty", "--amend", "-m", "topic 1, edited"]);
    let edited = alice.git(&alice_repo, &["rev-parse", "HEAD"]).trim().to_string();
    eventually(Duration::from_secs(20), "the node to wait for the rebase", || {
        let status = alice.json(&["daemon", "status", "--json"]);
        (status["rebasing"].as_array()?.len() == 1).then_some(())
    });
    assert!(alice.ok(&["daemon", "status"]).contains("waiting    for the rebase in"));
    alice.git(&alice_repo, &["-c", "core.editor=true", "rebase", "--continue"]);
    let tip3 = alice.git(&alice_repo, &["rev-parse", "HEAD"]).trim().to_string();
    let entries = wait_for_commits(&bob, &bob_repo, &[main3.clone(), tip3.clone()]);
    assert!(entries.iter().all(|e| e["commit"] != edited.as_str()), "a step of the rebase was announced");
    expected.extend([main3, tip3]);

    // With the node down (and not started by the hook): the hook's slow path spools the commit
    // on main, and leaves a note instead of announcing each pick of the rebase.
    alice.ok(&["daemon", "stop"]);
    alice.git(&alice_repo, &["checkout", "-q", "main"]);
    let offline = |args: &[&str]| {
        let mut cmd = std::process::Command::new("git");
        cmd.args(args).current_dir(&alice_repo);
        alice.envs(&mut cmd);
        let out = cmd.env("GIT_P2P_NO_AUTOSTART", "1").output().unwrap();
        assert!(out.status.success() && out.stderr.is_empty(), "git {args:?}: {}", stderr(&out));
    };
    offline(&["commit", "-q", "--allow-empty", "-m", "main moves again"]);
    let main2 = alice.git(&alice_repo, &["rev-parse", "HEAD"]).trim().to_string();
    offline(&["rebase", "-q", "main", "topic"]);
    let tip2 = alice.git(&alice_repo, &["rev-parse", "HEAD"]).trim().to_string();
    assert!(alice.pid().is_none_or(|p| !alive(p)), "no node was started");
    let spooled = std::fs::read_dir(alice.data_dir().join("spool")).unwrap().count();
    assert_eq!(spooled, 1, "only the commit on main was spooled");
    alice.start();
    let entries = wait_for_commits(&bob, &bob_repo, &[main2.clone(), tip2.clone()]);
    let e = entries.iter().find(|e| e["commit"] == tip2.as_str()).unwrap();
    assert_eq!(e["ref_name"], "refs/heads/topic");
    let picks2 = alice.git(&alice_repo, &["rev-list", "main..topic~1"]);
    // No pick of either rebase was announced, and nothing twice.
    let listed: Vec<&str> = entries.iter().filter_map(|e| e["commit"].as_str()).collect();
    for pick in picks.lines().chain(picks2.lines()) {
        assert!(!listed.contains(&pick), "pick {pick} announced: {listed:?}");
    }
    expected.extend([tip, main2, tip2]);
    assert_exactly_once(&entries, &expected);
    assert_eq!(entries.len(), expected.len(), "{listed:?}");
}

#[test]
fn the_node_brings_an_older_git_p2p_hook_up_to_date() {
    let Pair { alice, alice_repo, .. } = pair();
    alice.ok(&["daemon", "stop"]);
    let hook = alice_repo.join(".git/hooks/post-commit");
    let current = std::fs::read_to_string(&hook).unwrap();
    assert_eq!(current, git_p2p::hooks::HOOK_SCRIPT);
    let older = current.replace("git-p2p-note 2", "git-p2p-note 1");
    std::fs::write(&hook, &older).unwrap();
    // A hook that is not ours is never touched: a foreign one chained next to ours stays.
    let orig = alice_repo.join(".git/hooks/post-commit.git-p2p-orig");
    std::fs::write(&orig, "#!/bin/sh\n# mine\n").unwrap();
    alice.start();
    eventually(Duration::from_secs(20), "the hook to be rewritten", || {
        (std::fs::read_to_string(&hook).ok()? == git_p2p::hooks::HOOK_SCRIPT).then_some(())
    });
    assert_eq!(std::fs::read_to_string(&orig).unwrap(), "#!/bin/sh\n# mine\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&hook).unwrap().permissions().mode() & 0o777, 0o755);
}

#[test]
fn commits_in_a_linked_worktree_are_announced_on_its_branch() {
    let Pair { alice, bob, alice_repo, bob_repo } = pair();
    // Each work tree has a HEAD reflog of its own: commits alternate between the two, so that a
    // reading position of one applied to the other would land in the middle of its lines.
    let wt = alice_repo.parent().unwrap().join("wt");
    alice.git(&alice_repo, &["worktree", "add", "-q", "-b", "feature", wt.to_str().unwrap()]);
    let (mut expected, mut in_wt) = (Vec::new(), Vec::new());
    for round in 0..4 {
        for i in 0..=round {
            in_wt.push(alice.commit(&wt, &format!("feature {round}.{i}")));
        }
        expected.push(alice.commit(&alice_repo, &format!("main {round}")));
    }
    expected.extend(in_wt.iter().cloned());
    let entries = wait_for_commits(&bob, &bob_repo, &expected);
    assert_exactly_once(&entries, &expected);
    for c in &in_wt {
        let e = entries.iter().find(|e| e["commit"] == c.as_str()).unwrap();
        assert_eq!(e["ref_name"], "refs/heads/feature", "{e}");
    }
    let last = entries.iter().find(|e| e["summary"] == "main 3").unwrap();
    assert_eq!(last["ref_name"], "refs/heads/main");
}

#[test]
fn a_merge_is_announced_at_once_and_a_fast_forward_is_not() {
    let Pair { alice, bob, alice_repo, bob_repo } = pair();
    alice.git(&alice_repo, &["checkout", "-q", "-b", "topic"]);
    let on_topic = alice.commit(&alice_repo, "on topic");
    alice.git(&alice_repo, &["checkout", "-q", "main"]);
    let on_main = alice.commit(&alice_repo, "on main");
    // `git merge` runs post-merge, not post-commit: the node reads the merge from the reflog.
    alice.git(&alice_repo, &["merge", "-q", "--no-ff", "-m", "Merge topic", "topic"]);
    let merge = alice.git(&alice_repo, &["rev-parse", "HEAD"]).trim().to_string();
    let entries = wait_for_commits(&bob, &bob_repo, std::slice::from_ref(&merge));
    let e = entries.iter().find(|e| e["commit"] == merge.as_str()).unwrap();
    assert_eq!((e["summary"].as_str(), e["parents"].as_array().map(Vec::len)), (Some("Merge topic"), Some(2)));
    assert_eq!(e["ref_name"], "refs/heads/main");
    alice.git(&alice_repo, &["checkout", "-q", "-b", "ahead"]);
    let ahead = alice.commit(&alice_repo, "ahead");
    alice.git(&alice_repo, &["checkout", "-q", "main"]);
    // A fast-forward moves main to a commit announced already: nothing new. With the node down
    // the hook's slow path leaves a note for the same reason (HEAD is not a new commit of ours).
    alice.ok(&["daemon", "stop"]);
    alice.git(&alice_repo, &["merge", "-q", "--ff-only", "ahead"]);
    let spooled = std::fs::read_dir(alice.data_dir().join("spool")).unwrap().count();
    assert_eq!(spooled, 0, "nothing signed for a fast-forward");
    let after = alice.commit(&alice_repo, "after");
    let expected = [on_topic, on_main, merge, ahead, after];
    let entries = wait_for_commits(&bob, &bob_repo, &expected);
    assert_exactly_once(&entries, &expected);
    assert_eq!(entries.len(), expected.len(), "{entries:?}");
}
