//! Test harness: a `Node` is one user's environment (home, data dir, runtime dir, git config)
//! in a temp dir, driven through the real binary. Nodes stop their daemons when dropped.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_git-p2p");

/// Polls `cond` every 20 ms until it returns Some or `timeout` passes.
pub fn eventually<T>(timeout: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Node {
    pub name: String,
    pub dir: tempfile::TempDir,
    /// The runtime dir behind `dir/run`: on tmpfs (/dev/shm) when there is one, as
    /// `$XDG_RUNTIME_DIR` is in a login session.
    _run: Option<tempfile::TempDir>,
    /// Command prefix, e.g. `ip netns exec ns0` for nodes in a network namespace.
    pub wrapper: Vec<String>,
}

impl Node {
    /// A node that listens on loopback only, with mDNS off.
    pub fn new(name: &str) -> Self {
        Self::loopback(Self::bare(name))
    }

    /// Like [`Node::new`], with the runtime dir on the disk (as without a login session's tmpfs).
    pub fn with_runtime_on_disk(name: &str) -> Self {
        Self::loopback(Self::bare_with(name, false))
    }

    fn loopback(node: Self) -> Self {
        node.config(&["p2p.mdns", "false"]);
        node.config(&["--add", "p2p.listen", "/ip4/127.0.0.1/tcp/0"]);
        node.config(&["--add", "p2p.listen", "/ip4/127.0.0.1/udp/0/quic-v1"]);
        node
    }

    /// A node on loopback (mDNS off) that listens on these addresses only, e.g. QUIC alone.
    pub fn listening(name: &str, listen: &[&str]) -> Self {
        let node = Self::bare(name);
        node.config(&["p2p.mdns", "false"]);
        for addr in listen {
            node.config(&["--add", "p2p.listen", addr]);
        }
        node
    }

    /// A node with only a name configured; the caller sets the network config.
    pub fn bare(name: &str) -> Self {
        Self::bare_with(name, true)
    }

    fn bare_with(name: &str, tmpfs_runtime: bool) -> Self {
        let keep = std::env::var_os("GIT_P2P_TEST_KEEP").is_some();
        let dir =
            tempfile::Builder::new().prefix(&format!("gp-{name}-")).disable_cleanup(keep).tempdir().expect("tempdir");
        for sub in ["home", "data"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        let shm = Path::new("/dev/shm");
        let run = (tmpfs_runtime && shm.is_dir()).then(|| {
            let run = tempfile::Builder::new()
                .prefix(&format!("gp-{name}-run-"))
                .disable_cleanup(keep)
                .tempdir_in(shm)
                .expect("tempdir in /dev/shm");
            std::os::unix::fs::symlink(run.path(), dir.path().join("run")).expect("symlink the runtime dir");
            run
        });
        if run.is_none() {
            std::fs::create_dir_all(dir.path().join("run")).expect("mkdir");
        }
        let node = Self { name: name.to_string(), dir, _run: run, wrapper: Vec::new() };
        node.config(&["user.name", name]);
        node.config(&["user.email", &format!("{name}@example.invalid")]);
        node
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path("data/git-p2p")
    }

    /// The last `lines` lines of the node's log, each indented, for a test to print before it
    /// times out.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.data_dir().join("node.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.iter().rev().map(|l| format!("  {l}\n")).collect()
    }

    /// `git config --file <global config> ARGS...`
    pub fn config(&self, args: &[&str]) {
        let status = Command::new("git")
            .arg("config")
            .arg("--file")
            .arg(self.path("gitconfig"))
            .args(args)
            .status()
            .expect("git config");
        assert!(status.success(), "git config {args:?}");
    }

    /// The environment of this node's processes (nothing else from the test's environment).
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        // The binary under test comes first on PATH: the post-commit hook runs `git-p2p`.
        let bin_dir = Path::new(BIN).parent().expect("binary in a directory");
        let path = std::env::join_paths(
            std::iter::once(bin_dir.to_path_buf())
                .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
        )
        .expect("PATH");
        let p = |rel: &str| self.path(rel).display().to_string();
        let mut pairs = vec![
            ("PATH".to_string(), path.to_string_lossy().into_owned()),
            ("HOME".to_string(), p("home")),
            ("XDG_DATA_HOME".to_string(), p("data")),
            ("XDG_RUNTIME_DIR".to_string(), p("run")),
            ("GIT_CONFIG_GLOBAL".to_string(), p("gitconfig")),
            ("GIT_CONFIG_NOSYSTEM".to_string(), "1".to_string()),
        ];
        // Debugging a test: RUST_LOG reaches the nodes (their logs are in data/git-p2p/node.log).
        if let Some(trace) = std::env::var_os("GIT_P2P_DEBUG_TRACE") {
            pairs.push(("GIT_P2P_DEBUG_TRACE".to_string(), trace.to_string_lossy().into_owned()));
        }
        if let Some(filter) = std::env::var_os("GIT_P2P_TEST_LOG") {
            pairs.push(("RUST_LOG".to_string(), filter.to_string_lossy().into_owned()));
        }
        pairs
    }

    pub fn envs(&self, cmd: &mut Command) {
        cmd.env_clear().envs(self.env_pairs());
    }

    /// A `git-p2p ARGS` command in this node's environment, run in `cwd` (default: home).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = if self.wrapper.is_empty() {
            Command::new(BIN)
        } else {
            let mut c = Command::new(&self.wrapper[0]);
            c.args(&self.wrapper[1..]).arg(BIN);
            c
        };
        cmd.args(args).current_dir(self.path("home")).stdin(Stdio::null());
        self.envs(&mut cmd);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run git-p2p")
    }

    pub fn run_in(&self, dir: &Path, args: &[&str]) -> Output {
        self.command(args).current_dir(dir).output().expect("run git-p2p")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{}: git-p2p {args:?} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs in `dir` and asserts success; returns stdout.
    pub fn ok_in(&self, dir: &Path, args: &[&str]) -> String {
        let out = self.run_in(dir, args);
        assert!(
            out.status.success(),
            "{}: git-p2p {args:?} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{}: bad JSON from {args:?}: {e}: {out}", self.name))
    }

    pub fn json_in(&self, dir: &Path, args: &[&str]) -> Value {
        let out = self.ok_in(dir, args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{}: bad JSON from {args:?}: {e}: {out}", self.name))
    }

    pub fn start(&self) -> Value {
        self.ok(&["daemon", "start"]);
        self.json(&["id", "--json"])
    }

    pub fn status(&self) -> Value {
        self.json(&["daemon", "status", "--json"])
    }

    /// This node's dialable address (TCP) with /p2p/ id, for others' p2p.bootstrap.
    pub fn tcp_addr(&self) -> String {
        self.addr_with("/tcp/")
    }

    /// This node's listen address that contains `part` (`/tcp/`, `/quic-v1`), with /p2p/ id.
    pub fn addr_with(&self, part: &str) -> String {
        let id = self.json(&["id", "--json"]);
        let peer = id["peer_id"].as_str().expect("peer_id").to_string();
        let addr = id["listen_addrs"]
            .as_array()
            .expect("listen_addrs")
            .iter()
            .filter_map(Value::as_str)
            .find(|a| a.contains(part))
            .unwrap_or_else(|| panic!("a listen address with {part}"))
            .to_string();
        format!("{addr}/p2p/{peer}")
    }

    /// The addresses the node listens on, sorted.
    pub fn listen_addrs(&self) -> Vec<String> {
        let mut addrs: Vec<String> = self.json(&["id", "--json"])["listen_addrs"]
            .as_array()
            .expect("listen_addrs")
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        addrs.sort();
        addrs
    }

    pub fn peer_id(&self) -> String {
        self.json(&["id", "--json"])["peer_id"].as_str().expect("peer_id").to_string()
    }

    /// Whether `peer` is connected and known to share a repository with this node (its
    /// subscriptions came).
    pub fn shares_a_repo_with(&self, peer: &str) -> bool {
        self.peers().iter().any(|p| p["peer_id"] == peer && p["repos"].as_array().is_some_and(|r| !r.is_empty()))
    }

    pub fn peers(&self) -> Vec<Value> {
        // JSON Lines: one peer per line.
        let out = self.ok(&["peers", "--json"]);
        out.lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: bad JSON line from peers: {e}: {l}", self.name))
            })
            .collect()
    }

    /// The pid in the node's lock file, if a node holds it.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data_dir().join("node.lock")).ok()?.trim().parse().ok()
    }

    pub fn kill9(&self) {
        let pid = self.pid().expect("a running node");
        unsafe_kill(pid, 9);
        eventually(Duration::from_secs(10), "the killed node to be gone", || (!alive(pid)).then_some(()));
        // The group leader turns zombie before its other threads are gone, and the socket closes
        // with the last of them: wait until nothing answers on it.
        let socket = self.path("run/git-p2p/control.sock");
        eventually(Duration::from_secs(10), "the killed node's socket to close", || {
            std::os::unix::net::UnixStream::connect(&socket).is_err().then_some(())
        });
    }

    /// A repository in this node's home, with one commit (or `commits` of them).
    pub fn repo(&self, name: &str, commits: usize) -> PathBuf {
        let dir = self.path(&format!("home/{name}"));
        self.git(&self.path("home"), &["init", "-q", "-b", "main", name]);
        for i in 0..commits {
            std::fs::write(dir.join("file"), format!("{i}\n")).expect("write");
            self.git(&dir, &["add", "file"]);
            self.git(&dir, &["commit", "-q", "-m", &format!("commit {i}")]);
        }
        dir
    }

    /// An empty commit in `repo` (the hook must stay silent); its id.
    pub fn commit(&self, repo: &Path, message: &str) -> String {
        let out = self.git(repo, &["commit", "-q", "--allow-empty", "-m", message]);
        assert!(out.is_empty(), "the hook is silent: {out}");
        self.git(repo, &["rev-parse", "HEAD"]).trim().to_string()
    }

    /// The repository's feed as `log --json` gives it (up to 1000), newest first.
    pub fn feed(&self, repo: &Path) -> Vec<Value> {
        let out = self.run_in(repo, &["log", "--json", "-n", "1000"]);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
    }

    pub fn git(&self, dir: &Path, args: &[&str]) -> String {
        let mut cmd = Command::new("git");
        cmd.args(args).current_dir(dir);
        self.envs(&mut cmd);
        let out = cmd.output().expect("git");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Every node process of this environment, including ones a hook started in the
        // background (they may not have written the lock file yet).
        let marker = format!("XDG_DATA_HOME={}", self.path("data").display());
        let pids: Vec<i32> = std::fs::read_dir("/proc")
            .map(|d| d.filter_map(|e| e.ok()).filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default();
        let ours: Vec<i32> = pids
            .into_iter()
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                String::from_utf8_lossy(&cmdline).contains("daemon\0run")
                    && environ.split(|b| *b == 0).any(|kv| kv == marker.as_bytes())
            })
            .collect();
        for &pid in &ours {
            unsafe_kill(pid, 15);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while ours.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for &pid in &ours {
            if alive(pid) {
                unsafe_kill(pid, 9);
            }
        }
    }
}

/// A `git-p2p` command running in the background, its stdout and stderr read line by line.
pub struct Running {
    pub child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// Every stdout line so far.
    pub lines: Vec<String>,
}

impl Running {
    pub fn spawn(node: &Node, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = node.command(args);
        cmd.current_dir(dir).stdout(Stdio::piped()).stderr(Stdio::piped()).envs(env.iter().copied());
        let mut child = cmd.spawn().expect("spawn git-p2p");
        let lines = |pipe: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
            rx
        };
        let stdout = lines(Box::new(child.stdout.take().expect("stdout")));
        let stderr = lines(Box::new(child.stderr.take().expect("stderr")));
        Self { child, stdout, stderr, lines: Vec::new() }
    }

    /// Waits until stdout has printed a line containing each of `needles`.
    pub fn wait_for(&mut self, needles: &[&str], what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !needles.iter().all(|n| self.lines.iter().any(|l| l.contains(n))) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => self.lines.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("timed out waiting for {what}; printed so far: {:#?}", self.lines)
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                    "the command ended ({:?}) before {what}; printed so far: {:#?}; stderr: {:#?}",
                    self.child.wait(),
                    self.lines,
                    self.stderr_lines()
                ),
            }
        }
    }

    /// Everything on stderr so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }

    /// The lines on stderr once `enough` holds of them (within 10 s): stdout and stderr are
    /// read by threads of their own, so what was printed on stderr before a line on stdout may
    /// not be here yet when that line is.
    pub fn stderr_once(&self, what: &str, enough: impl Fn(&[String]) -> bool) -> Vec<String> {
        let mut said = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            said.extend(self.stderr.try_iter());
            if enough(&said) || Instant::now() >= deadline {
                return said;
            }
            match self.stderr.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => said.push(line),
                // The command ended and all it printed is here; or the time is up.
                Err(mpsc::RecvTimeoutError::Disconnected) => return said,
                Err(mpsc::RecvTimeoutError::Timeout) => eprintln!("stderr: {what} not seen within 10 s"),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Alice and Bob: Bob's node runs, Alice bootstraps to it, and each has an initialised clone of
/// Alice's repository `proj` (one commit), so both are in the same rooms and topics.
pub struct Pair {
    pub alice: Node,
    pub bob: Node,
    pub alice_repo: PathBuf,
    pub bob_repo: PathBuf,
}

pub fn pair() -> Pair {
    pair_with(&[])
}

/// Like [`pair`], with these Nostr relays configured on both nodes before they start.
pub fn pair_with(relays: &[&str]) -> Pair {
    pair_of(Node::new("alice"), relays)
}

/// Like [`pair_with`], with this node as alice.
pub fn pair_of(alice: Node, relays: &[&str]) -> Pair {
    let bob = Node::new("bob");
    for r in relays {
        alice.config(&["--add", "p2p.relay", r]);
        bob.config(&["--add", "p2p.relay", r]);
    }
    pair_between(alice, bob, "/tcp/")
}

/// Like [`pair`], with these two nodes; alice bootstraps to bob's address that contains `via`.
pub fn pair_between(alice: Node, bob: Node, via: &str) -> Pair {
    bob.start();
    alice.config(&["p2p.bootstrap", &bob.addr_with(via)]);
    let alice_repo = alice.repo("proj", 1);
    bob.git(&bob.path("home"), &["clone", "-q", alice_repo.to_str().expect("utf-8 path"), "proj"]);
    let bob_repo = bob.path("home/proj");
    alice.ok_in(&alice_repo, &["init"]);
    bob.ok_in(&bob_repo, &["init"]);
    Pair { alice, bob, alice_repo, bob_repo }
}

/// Whether a process with this pid exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

pub fn unsafe_kill(pid: i32, signal: i32) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a failed command printed exactly one `git-p2p: error:` line and exited with `code`.
pub fn assert_one_line_error(out: &Output, code: i32, contains: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("git-p2p: error: "), "{err:?}");
    assert!(err.contains(contains), "expected {contains:?} in {err:?}");
    assert!(!err.contains("panicked"), "{err}");
}
