//! Part `fetch` (issue 14): `git clone p2p://` against `git clone git://` from a `git daemon` of
//! the same repository, side by side in one run (time, and bytes of the pack each received);
//! a commit in alice's repository until its objects are in bob's mirror; `git fetch` of the
//! all-authors remote with nothing new.
//!
//! The repository is built here from text the machine has (the cargo registry's sources, then
//! this project's), with `git fast-import`: `BENCH_FETCH_COMMITS` commits (default 5000) over
//! `BENCH_FETCH_MB` MiB of files (default 50).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::support::{self, Node};
use super::{ms, Metric};

pub fn fetch_bench(metrics: &mut Vec<Metric>, smoke: bool) {
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let commits = if smoke { 50 } else { env("BENCH_FETCH_COMMITS", 5000) };
    let mib = if smoke { 1 } else { env("BENCH_FETCH_MB", 50) };
    let rounds = if smoke { 1 } else { 3 };
    let alice = Node::new("alice");
    alice.start();
    let bob = Node::new("bob");
    bob.config(&["p2p.bootstrap", &alice.tcp_addr()]);
    bob.start();
    let repo = alice.path("home/big");
    let built = Instant::now();
    let (files, bytes) = build_repo(&alice, &repo, commits, (mib as u64) << 20);
    eprintln!(
        "harness: fetch: {commits} commits, {files} files, {} MiB of text, built in {:.1} s",
        bytes >> 20,
        built.elapsed().as_secs_f64()
    );
    alice.ok_in(&repo, &["init"]);
    let published = Instant::now();
    alice.ok_in(&repo, &["refs", "publish"]);
    eprintln!("harness: fetch: published (into alice's mirror) in {:.1} s", published.elapsed().as_secs_f64());
    let id = alice.git(&repo, &["rev-list", "--max-parents=0", "HEAD"]).trim().to_string();
    let alice_id = alice.peer_id();

    // The git daemon serves a bare copy of the same repository.
    let root = alice.path("daemon");
    std::fs::create_dir_all(&root).expect("mkdir");
    alice.git(
        &alice.path("home"),
        &["clone", "-q", "--bare", repo.to_str().expect("utf-8"), root.join("big.git").to_str().expect("utf-8")],
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
    let mut daemon = Command::new("git")
        .args(["daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1", &format!("--port={port}")])
        .arg(format!("--base-path={}", root.display()))
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("git daemon");
    support::eventually(Duration::from_secs(10), "git daemon listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });
    support::eventually(Duration::from_secs(20), "bob connected to alice", || (!bob.peers().is_empty()).then_some(()));

    let (mut daemon_ms, mut p2p_ms, mut ratio, mut bytes_ratio) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let plain = bob.path(&format!("home/daemon-{round}"));
        let t0 = Instant::now();
        bob.git(
            &bob.path("home"),
            &["clone", "-q", &format!("git://127.0.0.1:{port}/big.git"), plain.to_str().expect("utf-8")],
        );
        let plain_ms = ms(t0.elapsed());
        let plain_bytes = pack_bytes(&plain.join(".git/objects/pack"));
        // Bob starts from nothing each round: no mirror.
        bob.ok(&["daemon", "stop"]);
        let _ = std::fs::remove_dir_all(bob.data_dir().join("mirrors"));
        bob.start();
        support::eventually(Duration::from_secs(20), "bob connected to alice again", || {
            bob.peers()
                .iter()
                .any(|p| p["repos"].as_array().is_some_and(|r| !r.is_empty()) || !p["peer_id"].is_null())
                .then_some(())
        });
        let p2p = bob.path(&format!("home/p2p-{round}"));
        let t0 = Instant::now();
        bob.git(&bob.path("home"), &["clone", "-q", &format!("p2p://{id}/{alice_id}"), p2p.to_str().expect("utf-8")]);
        let took = ms(t0.elapsed());
        let mirror_bytes = pack_bytes(&bob.data_dir().join(format!("mirrors/{id}.git/objects/pack")));
        eprintln!(
            "harness: fetch: round {round}: git:// {plain_ms:.0} ms, {plain_bytes} pack bytes; p2p:// {took:.0} ms, {mirror_bytes} pack bytes"
        );
        daemon_ms.push(plain_ms);
        p2p_ms.push(took);
        ratio.push(took / plain_ms);
        bytes_ratio.push(100.0 * (mirror_bytes as f64 - plain_bytes as f64) / plain_bytes as f64);
        let _ = std::fs::remove_dir_all(&plain);
        if round + 1 < rounds {
            let _ = std::fs::remove_dir_all(&p2p);
        }
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    metrics.push(Metric { name: "clone_git_daemon", unit: "ms", samples: daemon_ms, nodes: 0, goal: "the floor" });
    metrics.push(Metric { name: "clone_p2p", unit: "ms", samples: p2p_ms, nodes: 2, goal: "<= 1.3x clone_git_daemon" });
    metrics.push(Metric { name: "clone_p2p_vs_daemon", unit: "x", samples: ratio, nodes: 2, goal: "<= 1.3" });
    metrics.push(Metric {
        name: "clone_bytes_p2p_vs_daemon",
        unit: "%",
        samples: bytes_ratio,
        nodes: 2,
        goal: "within 5 %",
    });

    // Commit in alice's repository → the objects in bob's mirror (bob replicates: he registered
    // his clone).
    let clone = bob.path(&format!("home/p2p-{}", rounds - 1));
    bob.ok_in(&clone, &["init"]);
    let runs = if smoke { 5 } else { 100 };
    let mut replicated = Vec::new();
    // Warm-up: the first announcement waits for the gossip mesh.
    commit(&alice, &repo, 0);
    let head = alice.git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
    let bob_mirror = bob.data_dir().join(format!("mirrors/{id}.git"));
    support::eventually(Duration::from_secs(30), "the warm-up commit in bob's mirror", || {
        (mirror_ref(&bob_mirror, &alice_id) == head).then_some(())
    });
    for i in 1..=runs {
        let committed = commit(&alice, &repo, i);
        let head = alice.git(&repo, &["rev-parse", "HEAD"]).trim().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        while mirror_ref(&bob_mirror, &alice_id) != head && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if Instant::now() < deadline {
            replicated.push(ms(committed.elapsed()));
        }
    }
    metrics.push(Metric {
        name: "commit_to_peer_mirror",
        unit: "ms",
        samples: replicated,
        nodes: 2,
        goal: "p50 <= 100, p99 <= 300 ms",
    });

    // `git fetch peers` with nothing new.
    bob.git(&clone, &["remote", "add", "peers", &format!("p2p://{id}")]);
    bob.git(&clone, &["fetch", "-q", "peers"]);
    let mut idle = Vec::new();
    for _ in 0..if smoke { 3 } else { 50 } {
        let t0 = Instant::now();
        bob.git(&clone, &["fetch", "-q", "peers"]);
        idle.push(ms(t0.elapsed()));
    }
    metrics.push(Metric { name: "fetch_nothing_new", unit: "ms", samples: idle, nodes: 2, goal: "<= 30 ms" });
}

/// A commit in `repo` (the hook announces it); when `git commit` returned.
fn commit(node: &Node, repo: &Path, i: usize) -> Instant {
    if let Err(e) = std::fs::write(repo.join("bench-counter"), format!("{i}\n")) {
        panic!("cannot write in {}: {e} (exists: {})", repo.display(), repo.exists());
    }
    node.git(repo, &["add", "bench-counter"]);
    node.git(repo, &["commit", "-q", "-m", &format!("bench {i}")]);
    Instant::now()
}

/// Alice's main in a mirror, as a loose ref or in packed-refs.
fn mirror_ref(mirror: &Path, author: &str) -> String {
    let name = format!("refs/namespaces/{author}/refs/heads/main");
    if let Ok(value) = std::fs::read_to_string(mirror.join(&name)) {
        return value.trim().to_string();
    }
    let packed = std::fs::read_to_string(mirror.join("packed-refs")).unwrap_or_default();
    packed.lines().find_map(|l| l.strip_suffix(&format!(" {name}")).map(str::to_string)).unwrap_or_default()
}

fn pack_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Text files to build the repository from, up to `bytes`: the cargo registry's sources, then
/// this project's.
fn text_files(bytes: u64) -> Vec<(String, PathBuf)> {
    let mut roots = Vec::new();
    if let Some(home) = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
    {
        roots.push(home.join("registry/src"));
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src"));
    let mut files = Vec::new();
    let mut total = 0;
    for root in roots {
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let path = e.path();
                let Ok(kind) = e.file_type() else { continue };
                if kind.is_dir() {
                    stack.push(path);
                } else if kind.is_file() && path.extension().is_some_and(|x| x == "rs" || x == "md" || x == "toml") {
                    let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                    let Ok(rel) = path.strip_prefix(&root) else { continue };
                    files.push((rel.to_string_lossy().into_owned(), path.clone()));
                    total += size;
                    if total >= bytes {
                        return files;
                    }
                }
            }
        }
    }
    files
}

/// Builds `repo` with `commits` commits over `bytes` of text (fast-import); its files and bytes.
fn build_repo(node: &Node, repo: &Path, commits: usize, bytes: u64) -> (usize, u64) {
    node.git(&node.path("home"), &["init", "-q", "-b", "main", repo.to_str().expect("utf-8")]);
    let files = text_files(bytes);
    let mut import = Command::new("git");
    import.args(["fast-import", "--quiet"]).current_dir(repo).stdin(Stdio::piped());
    node.envs(&mut import);
    let mut child = import.spawn().expect("git fast-import");
    let mut input = std::io::BufWriter::new(child.stdin.take().expect("stdin"));
    let per_commit = files.len().div_ceil(commits.max(1));
    let mut total = 0u64;
    let mut chunks = files.chunks(per_commit.max(1));
    for i in 0..commits {
        let message = format!("commit {i}\n");
        writeln!(input, "commit refs/heads/main").expect("write");
        writeln!(input, "committer Alice <alice@example.invalid> {} +0000", 1_700_000_000 + i).expect("write");
        write!(input, "data {}\n{message}", message.len()).expect("write");
        for (rel, path) in chunks.next().unwrap_or(&[]) {
            let Ok(data) = std::fs::read(path) else { continue };
            total += data.len() as u64;
            writeln!(input, "M 644 inline {}", rel.replace(['\n', '"'], "_")).expect("write");
            writeln!(input, "data {}", data.len()).expect("write");
            input.write_all(&data).expect("write");
            writeln!(input).expect("write");
        }
        let counter = format!("{i}\n");
        write!(input, "M 644 inline counter\ndata {}\n{counter}\n", counter.len()).expect("write");
    }
    drop(input);
    assert!(child.wait().expect("fast-import").success(), "git fast-import failed");
    node.git(repo, &["reset", "-q", "--hard", "main"]);
    (files.len(), total)
}
