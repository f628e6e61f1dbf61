//! `git-remote-p2p`: the git remote helper behind `p2p://` URLs, a thin client of the node.
//!
//! git runs it as `git-remote-p2p <remote> <url>` and talks to it on stdin/stdout (see
//! gitremote-helpers(7)). It offers `connect`, `push` and `option`:
//! - `connect git-upload-pack` (clone, fetch, pull, ls-remote): the node first brings its mirror
//!   of the repository up to the tips the authors signed (fetching from peers what it lacks);
//!   then a real `git upload-pack` runs over the mirror, in the namespace of the author the URL
//!   names (or the all-authors view), so plain git negotiates against the mirror with whatever
//!   protocol it speaks (v2 by default) and shows its usual progress. A fetch with nothing new
//!   is local and works offline.
//! - `connect git-receive-pack` is declined (`fallback`): a push goes through `push`, which
//!   publishes each of our refs through the node (mirror and DHT), after `list for-push`. A
//!   push into another author's namespace is refused.
//! - Relay mode (`GIT_P2P_RELAY_FD` set, by the node's own fetches only): `connect` relays git's
//!   pipe to that fd, which the node splices with a peer's stream.

use std::io::{self, BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{anyhow, bail, Context};

use crate::control::Client;
use crate::paths::Paths;
use crate::proto::peer::{short, Author};
use crate::proto::remote::{own_destination, P2pUrl, ALL};

/// The helper's definition, for `--help` and its man page (git runs it with two arguments).
pub fn command() -> clap::Command {
    clap::Command::new("git-remote-p2p")
        .about("git remote helper for p2p:// URLs: clone, fetch and push through the git-p2p node")
        .long_about(
            "git runs this helper for p2p:// URLs; you do not run it yourself. \
             p2p://<repo-id>/<author> names one author's published branches and tags (<author>: a PeerId, its \
             last 12 characters, an npub, or me); git clone of it gives that author's branches with HEAD on their \
             default branch. p2p://<repo-id> names every author's: git fetch maps them to \
             refs/remotes/<remote>/<author>/<branch>, so git pull <remote> <author>/main works. <repo-id> is the \
             repository's root commit (git p2p init prints the git remote add line).\n\n\
             A fetch first brings the node's mirror of the repository up to the tips the authors signed (their \
             DHT refs record or signed announcements), fetching what it lacks from peers (the repository's topic \
             peers, a provider that fails or lies is dropped and the next one tried), then git negotiates with \
             the mirror as with any remote. The transfer from peers shows git's progress (objects, bytes, rate) unless git is quiet (-q). \
             With nothing new, a fetch is local and works offline. Peers' commits \
             usually are in the mirror already: the node replicates them as they are announced (p2p.replicate).\n\n\
             git push <remote> <branch> publishes that branch (or tag) as yours: the node copies it into its \
             mirror, from where peers fetch it, and into the DHT, as git p2p refs publish does for all refs. A \
             push into another author's namespace is refused.",
        )
        .arg(
            clap::Arg::new("remote")
                .value_name("REMOTE")
                .help("The remote's name (or the URL, for a URL given on the command line)")
                .required(true),
        )
        .arg(clap::Arg::new("url").value_name("URL").help("p2p://<repo-id> or p2p://<repo-id>/<author>"))
}

/// Runs the helper; the exit code git sees.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 2 || args.iter().skip(1).any(|a| a == "-h" || a == "--help" || a == "--version") {
        let mut cmd = command().version(env!("CARGO_PKG_VERSION"));
        return match cmd.try_get_matches_from_mut(&args) {
            Err(e) => {
                let _ = e.print();
                ExitCode::from(if e.use_stderr() { 2 } else { 0 })
            }
            Ok(_) => ExitCode::SUCCESS,
        };
    }
    crate::logging::init_stderr(0);
    let url = args.get(2).unwrap_or(&args[1]).clone();
    let stdin = io::stdin();
    let stdout = io::stdout();
    match run(&url, &mut stdin.lock(), &mut stdout.lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "git-remote-p2p: error: {}", crate::cli::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

struct Session {
    url: P2pUrl,
    verbosity: u32,
    /// git asks for progress (`option progress true`: its stderr is a terminal, or `--progress`).
    progress: bool,
    relay: Option<i32>,
}

fn run(url: &str, input: &mut dyn BufRead, out: &mut dyn Write) -> anyhow::Result<()> {
    let relay = std::env::var(crate::node::mirror::fetch::RELAY_FD_ENV).ok().and_then(|v| v.parse().ok());
    let url = P2pUrl::parse(url)?;
    let mut session = Session { url, verbosity: 1, progress: false, relay };
    let mut pushes = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end_matches('\n');
        match command.split_once(' ').unwrap_or((command, "")) {
            ("capabilities", _) => {
                out.write_all(b"connect\npush\noption\n\n")?;
            }
            ("option", rest) => {
                let answer = match rest.split_once(' ') {
                    Some(("verbosity", n)) => {
                        session.verbosity = n.parse().unwrap_or(1);
                        "ok"
                    }
                    Some(("progress", on)) => {
                        session.progress = on == "true";
                        "ok"
                    }
                    _ => "unsupported",
                };
                writeln!(out, "{answer}")?;
            }
            ("connect", "git-upload-pack") => {
                out.flush()?;
                return connect(&session, out);
            }
            ("connect", _) => {
                // Pushes go through `push`: each ref is checked and published by the node.
                out.write_all(b"fallback\n")?;
            }
            ("list", _) => list(&session, out)?,
            ("push", spec) => pushes.push(spec.to_string()),
            ("", _) if !pushes.is_empty() => {
                push(&session, &std::mem::take(&mut pushes), out)?;
            }
            ("", _) => return Ok(()),
            (other, _) => bail!("unknown command from git: {other:?}"),
        }
        out.flush()?;
    }
}

fn paths() -> anyhow::Result<Paths> {
    Paths::from_env().map_err(|e| anyhow!(e))
}

/// Serves git's fetch: the mirror is synced, then `git upload-pack` runs over it in place of
/// this process (or, in relay mode, git's pipe is relayed to the node).
fn connect(session: &Session, out: &mut dyn Write) -> anyhow::Result<()> {
    if let Some(fd) = session.relay {
        out.write_all(b"\n")?;
        out.flush()?;
        return relay(fd);
    }
    let paths = paths()?;
    let author = session.url.author.as_ref().map(|a| match a {
        Author::Me => "me".to_string(),
        Author::Peer(p) | Author::Npub(p) => p.clone(),
    });
    let mut client = Client::connect_or_start(&paths)?;
    let mirror = paths.mirror(&session.url.repo);
    let shown = (session.progress && session.verbosity > 0).then(|| Progress::show(&mirror));
    let synced = client.mirror_sync(session.url.repo.clone(), author);
    if let Some(shown) = shown {
        shown.stop();
    }
    let synced = synced.with_context(|| format!("cannot fetch {}", session.url.repo.short()))?;
    if session.verbosity > 1 && !synced.fetched_from.is_empty() {
        eprintln!("git-p2p: fetched from {}", synced.fetched_from.join(", "));
    }
    for dropped in &synced.dropped {
        eprintln!("git-p2p: warning: dropped peer {} (it advertised a tip its author never signed)", short(dropped));
    }
    out.write_all(b"\n")?;
    out.flush()?;
    let mut upload = upload_pack(&mirror, &synced.namespace);
    Err(anyhow!(upload.exec()).context("cannot run git upload-pack"))
}

/// git's progress of the node's fetches from peers into `mirror` (the `git fetch` it runs in
/// each quarantine writes it to a file there), copied to our stderr while we wait for the sync:
/// the objects, bytes and rate of the transfer from peers, as git shows them for any remote.
struct Progress {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Progress {
    fn show(mirror: &Path) -> Self {
        let quarantines = mirror.join(crate::node::mirror::QUARANTINE);
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        // A second of slack: file times may be coarser than our clock.
        let since = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
        let thread = std::thread::spawn(move || {
            let mut shown: std::collections::HashMap<PathBuf, u64> = std::collections::HashMap::new();
            loop {
                let done = !matches!(
                    stopped.recv_timeout(std::time::Duration::from_millis(100)),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                );
                // The progress files of fetches written to since we started waiting.
                let files = std::fs::read_dir(&quarantines).into_iter().flatten().flatten().filter(|e| {
                    e.path().extension().is_some_and(|x| x == crate::node::mirror::fetch::PROGRESS)
                        && e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= since)
                });
                for file in files.map(|e| e.path()) {
                    let from = shown.get(&file).copied().unwrap_or(0);
                    if let Some(more) = read_from(&file, from) {
                        if shown.is_empty() {
                            let _ = io::stderr().write_all(b"Fetching from peers into the node's mirror\n");
                        }
                        let _ = io::stderr().write_all(&more);
                        shown.insert(file, from + more.len() as u64);
                    }
                }
                if done {
                    return;
                }
            }
        });
        Self { stop, thread }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// What `file` holds past `from`, if anything.
fn read_from(file: &Path, from: u64) -> Option<Vec<u8>> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(file).ok()?;
    f.seek(io::SeekFrom::Start(from)).ok()?;
    let mut more = Vec::new();
    f.take(1 << 20).read_to_end(&mut more).ok()?;
    (!more.is_empty()).then_some(more)
}

/// `git upload-pack` over the mirror, in `namespace`, with only what it needs of our
/// environment (git sets GIT_DIR and more for us: they name the repository being fetched into).
fn upload_pack(mirror: &Path, namespace: &str) -> Command {
    let mut cmd = Command::new("git");
    cmd.env_clear();
    for var in ["PATH", "HOME", "GIT_PROTOCOL", "LANG", "LC_ALL"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1").env("GIT_CONFIG_GLOBAL", "/dev/null").env("GIT_NAMESPACE", namespace);
    cmd.args(["upload-pack", "--strict"]).arg(mirror);
    cmd
}

/// Copies stdin to `fd` and `fd` to stdout until both ends are done. Raw descriptors: the
/// command loop holds the locks of std's stdin and stdout (whose buffers are empty: git waits
/// for our answer to `connect` before it sends more).
fn relay(fd: i32) -> anyhow::Result<()> {
    use std::os::fd::FromRawFd;
    // SAFETY: the node passed us this fd (a socket) for this purpose; nothing else owns it. The
    // duplicates of 0 and 1 are new fds that only these files own.
    let (socket, mut stdin, mut stdout) = unsafe {
        let (i, o) = (libc::dup(0), libc::dup(1));
        if i < 0 || o < 0 {
            bail!("cannot duplicate stdin and stdout: {}", io::Error::last_os_error());
        }
        (std::os::unix::net::UnixStream::from_raw_fd(fd), std::fs::File::from_raw_fd(i), std::fs::File::from_raw_fd(o))
    };
    let mut writer = socket.try_clone()?;
    let up = std::thread::spawn(move || {
        let _ = pump(&mut stdin, &mut writer);
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    let mut reader = socket;
    pump(&mut reader, &mut stdout)?;
    drop(stdout);
    let _ = up.join();
    Ok(())
}

/// Copies until the end, each read passed on at once. (Not `io::copy`: on Linux it splices
/// between a pipe and a socket, and a splice can wait for more than git has sent, which stalls
/// a request-response protocol.)
fn pump(from: &mut impl io::Read, to: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}

/// Our PeerId.
fn me(paths: &Paths) -> anyhow::Result<String> {
    Ok(crate::identity::Identity::load_or_create_libp2p(&paths.data_dir)?.public().to_peer_id().to_string())
}

/// The refs a push sees: the view the URL names, as the mirror holds it.
fn list(session: &Session, out: &mut dyn Write) -> anyhow::Result<()> {
    let paths = paths()?;
    let namespace = match &session.url.author {
        None => ALL.to_string(),
        Some(Author::Me) => me(&paths)?,
        Some(Author::Peer(p)) if p.len() > 40 => p.clone(),
        Some(_) => {
            // A short name or npub: the node knows whose it is.
            Client::connect_or_start(&paths)?
                .mirror_sync(session.url.repo.clone(), session.url.author.as_ref().map(author_text))?
                .namespace
        }
    };
    let mirror = paths.mirror(&session.url.repo);
    let prefix = format!("refs/namespaces/{namespace}/");
    if mirror.join("HEAD").exists() {
        let listed = Command::new("git")
            .arg("--git-dir")
            .arg(&mirror)
            .args(["for-each-ref", "--format=%(objectname) %(refname)", &prefix])
            .env_remove("GIT_DIR")
            .stderr(Stdio::null())
            .output()?;
        for line in String::from_utf8_lossy(&listed.stdout).lines() {
            if let Some((oid, name)) = line.split_once(' ') {
                if let Some(name) = name.strip_prefix(&prefix) {
                    if name.starts_with("refs/") {
                        writeln!(out, "{oid} {name}")?;
                    }
                }
            }
        }
    }
    writeln!(out)?;
    Ok(())
}

fn author_text(a: &Author) -> String {
    match a {
        Author::Me => "me".into(),
        Author::Peer(p) | Author::Npub(p) => p.clone(),
    }
}

/// Publishes the pushed refs through the node: each `[+]<src>:<dst>` whose destination is ours.
fn push(session: &Session, specs: &[String], out: &mut dyn Write) -> anyhow::Result<()> {
    let paths = paths()?;
    let me = me(&paths)?;
    let git_dir = std::env::var_os("GIT_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    let repo = crate::git::open(&git_dir)?;
    let info = repo.info();
    // The authors the mirror has refs of: pushes into their namespaces are refused.
    let others: Vec<String> = crate::node::mirror::authors(&paths.mirror(&session.url.repo));
    let foreign = match &session.url.author {
        None | Some(Author::Me) => None,
        Some(a) if a.matches(&me, None, &me) => None,
        Some(a) => Some(author_text(a)),
    };
    let mut publish = Vec::new();
    let mut answers = Vec::new();
    for spec in specs {
        let spec = spec.trim_start_matches('+');
        let Some((src, dst)) = spec.split_once(':') else {
            answers.push(format!("error {spec} malformed push"));
            continue;
        };
        if let Some(author) = &foreign {
            answers.push(format!("error {dst} this remote is the namespace of another author ({author}): you can only publish your own refs (push to p2p://{}/me)", session.url.repo));
            continue;
        }
        if info.id != session.url.repo {
            answers.push(format!(
                "error {dst} this repository is {}, not {}",
                info.id.short(),
                session.url.repo.short()
            ));
            continue;
        }
        if src.is_empty() {
            answers.push(format!("error {dst} deleting a published ref is not supported"));
            continue;
        }
        let name = match own_destination(dst, &me, others.iter().map(String::as_str)) {
            Ok(name) => name,
            Err(why) => {
                answers.push(format!("error {dst} {why}"));
                continue;
            }
        };
        let oid = rev_parse(&git_dir, src)?;
        publish.push((dst.to_string(), name, oid));
    }
    if !publish.is_empty() {
        let refs: Vec<(String, String)> = publish.iter().map(|(_, n, o)| (n.clone(), o.clone())).collect();
        let head = repo.branch.as_ref().map(|b| format!("refs/heads/{b}")).filter(|h| refs.iter().any(|(n, _)| n == h));
        match Client::connect_or_start(&paths)?.mirror_publish(info, refs, head) {
            Ok(()) => answers.extend(publish.iter().map(|(dst, _, _)| format!("ok {dst}"))),
            Err(e) => answers.extend(publish.iter().map(|(dst, _, _)| format!("error {dst} {}", one(&e.to_string())))),
        }
    }
    for answer in answers {
        writeln!(out, "{answer}")?;
    }
    writeln!(out)?;
    Ok(())
}

fn one(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

fn rev_parse(git_dir: &Path, rev: &str) -> anyhow::Result<String> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(["rev-parse", "--verify", "--end-of-options", &format!("{rev}^{{}}")])
        .stderr(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!("{rev} is not a commit here");
    }
    // The ref's own value (a tag stays a tag): rev-parse again without peeling.
    let plain = Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(["rev-parse", "--verify", "--end-of-options", rev])
        .stderr(Stdio::null())
        .output()?;
    Ok(String::from_utf8_lossy(&plain.stdout).trim().to_string())
}
