//! The registry through the real binary: `git p2p repos` (path, id, name, hooks as the files
//! say, last announcement, directories that are gone), `deinit` / `init --undo` (our hooks out,
//! the user's chained hook back, the repository unregistered), and one name for a repository
//! whatever work tree `init` ran in.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

fn repos(node: &Node) -> Vec<Value> {
    node.ok(&["repos", "--json"]).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

fn by_name<'a>(repos: &'a [Value], name: &str) -> Option<&'a Value> {
    repos.iter().find(|r| r["name"] == name)
}

fn status_names(node: &Node) -> Vec<String> {
    let status = node.status();
    let repos = status["repos"].as_array().expect("repos").iter();
    repos.filter_map(|r| r["name"].as_str().map(str::to_string)).collect()
}

/// A repository of its own (a root commit no other repository here has: the root commit is
/// what names a repository).
fn distinct_repo(node: &Node, name: &str) -> std::path::PathBuf {
    node.git(&node.path("home"), &["init", "-q", "-b", "main", name]);
    let dir = node.path(&format!("home/{name}"));
    node.git(&dir, &["commit", "-q", "--allow-empty", "-m", &format!("the root of {name}")]);
    dir
}

/// A hook of the user's that leaves a mark when it runs.
fn own_hook(repo: &Path) -> (std::path::PathBuf, String) {
    let hook = repo.join(".git/hooks/post-commit");
    let script = format!("#!/bin/sh\necho ran >> {}\n", repo.join("own-hook-ran").display());
    std::fs::write(&hook, &script).expect("write the hook");
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (hook, script)
}

#[test]
fn repos_lists_what_is_registered_and_deinit_undoes_init() {
    let alice = Node::new("alice");
    let proj = alice.repo("proj", 1);
    let (hook, script) = own_hook(&proj);
    alice.ok_in(&proj, &["init"]);
    let other = distinct_repo(&alice, "other");
    alice.ok_in(&other, &["init"]);
    std::fs::remove_dir_all(&other).expect("remove other");

    alice.git(&proj, &["commit", "-q", "--allow-empty", "-m", "announced"]);
    let head = alice.git(&proj, &["rev-parse", "HEAD"]).trim().to_string();
    let listed = eventually(Duration::from_secs(20), "the commit as proj's last announcement", || {
        let listed = repos(&alice);
        let last = by_name(&listed, "proj")?["last_announced"]["commit"].as_str()? == head;
        last.then_some(listed)
    });
    assert_eq!(listed.len(), 2, "{listed:?}");
    let p = by_name(&listed, "proj").expect("proj");
    assert_eq!(p["path"], proj.to_str().expect("utf-8"));
    assert_eq!((p["exists"].clone(), p["hooks"].clone()), (true.into(), "chained".into()));
    let id = alice.git(&proj, &["rev-list", "--max-parents=0", "HEAD"]).trim().to_string();
    assert_eq!(p["id"], id.as_str());
    let o = by_name(&listed, "other").expect("other, gone");
    assert_eq!((o["exists"].clone(), o["hooks"].clone()), (false.into(), Value::Null));
    assert_eq!(o["path"], other.to_str().expect("utf-8"));
    let table = alice.ok(&["repos"]);
    assert!(table.starts_with("PATH "), "{table}");
    let row = table.lines().find(|l| l.contains("(gone)")).expect("a row for the gone repository");
    assert!(row.starts_with(&format!("{} (gone)", other.display())) && row.contains("never"), "{table}");
    let row = table.lines().find(|l| l.starts_with(proj.to_str().unwrap())).expect("proj's row");
    assert!(row.contains(&id[..12]) && row.contains("chained") && row.contains(&head[..10]), "{row}");

    // deinit: our hooks go, the user's comes back as it was, the node forgets proj.
    let out = alice.ok_in(&proj, &["deinit"]);
    assert!(out.contains("put back the hooks they ran") && out.contains("unregistered proj"), "{out}");
    assert_eq!(std::fs::read_to_string(&hook).expect("the user's hook"), script);
    assert!(!proj.join(".git/hooks/post-merge").exists(), "ours is gone");
    alice.git(&proj, &["commit", "-q", "--allow-empty", "-m", "after"]);
    assert!(proj.join("own-hook-ran").exists(), "the user's hook runs again");
    assert!(by_name(&repos(&alice), "proj").is_none());
    assert!(!status_names(&alice).contains(&"proj".to_string()));
    assert_one_line_error(&alice.run_in(&proj, &["deinit"]), 1, "nothing to undo");

    // A repository that is gone, named by its path from anywhere.
    let out = alice.ok(&["deinit", other.to_str().expect("utf-8")]);
    assert!(out.contains("unregistered other"), "{out}");
    assert!(repos(&alice).is_empty());
    assert_one_line_error(&alice.run(&["deinit", other.to_str().unwrap()]), 1, "no registered repository");

    // init --undo is deinit; by id from anywhere too.
    let third = distinct_repo(&alice, "third");
    alice.ok_in(&third, &["init"]);
    let out = alice.ok_in(&third, &["init", "--undo"]);
    assert!(out.contains("removed the post-commit and post-merge hooks") && out.contains("unregistered third"));
    assert!(!third.join(".git/hooks/post-commit").exists());
    alice.ok_in(&third, &["init"]);
    let third_id = alice.git(&third, &["rev-list", "--max-parents=0", "HEAD"]).trim().to_string();
    let out = alice.ok(&["deinit", &third_id[..8]]);
    assert!(out.contains("unregistered third") && !third.join(".git/hooks/post-commit").exists(), "{out}");
}

#[test]
fn a_linked_work_tree_is_registered_under_the_repositorys_one_name() {
    let alice = Node::new("alice");
    let proj = alice.repo("proj", 1);
    let wt = alice.path("home/proj-wt");
    alice.git(&proj, &["worktree", "add", "-q", "-b", "side", wt.to_str().expect("utf-8")]);
    let out = alice.ok_in(&wt, &["init"]);
    assert!(out.contains("registered proj (repo id"), "{out}");
    assert_eq!(status_names(&alice), ["proj"]);
    let listed = repos(&alice);
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0]["name"].clone(), listed[0]["path"].clone()), ("proj".into(), wt.to_str().unwrap().into()));
    let out = alice.ok_in(&proj, &["init"]);
    assert!(out.contains("registered proj (repo id"), "{out}");
    assert_eq!(status_names(&alice), ["proj"]);
    // deinit from the main work tree undoes the registration made in the linked one.
    alice.ok_in(&wt, &["init"]);
    let out = alice.ok_in(&proj, &["deinit"]);
    assert!(out.contains("unregistered proj"), "{out}");
    assert!(status_names(&alice).is_empty());
}
