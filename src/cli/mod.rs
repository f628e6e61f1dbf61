//! The command line: one definition of every command and flag (it also feeds the man pages),
//! dispatch to one file per command, and the mapping of errors to git-style messages and exit
//! codes (0 ok, 1 failed, 2 usage).

mod announce;
mod chat;
mod clone;
mod completions;
mod daemon;
mod deinit;
mod doctor;
pub(crate) mod fmt;
mod hooks;
mod id;
mod init;
mod kv;
mod log;
mod nostr;
mod notes;
mod peers;
mod refs;
mod repos;
mod thread;
mod when;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::paths::Paths;

#[derive(Debug, Parser)]
#[command(
    name = "git-p2p",
    bin_name = "git p2p",
    version,
    about = "Peer-to-peer collaboration for git repositories",
    long_about = "Peer-to-peer collaboration for git repositories: find the people working on the same \
                  repository, chat with them, see their commits the moment they are made, and share refs and \
                  notes through a distributed key-value store. No server: a per-user node daemon speaks libp2p \
                  (TCP, QUIC, gossipsub, Kademlia, mDNS; relays and hole punching through NATs) and \
                  bridges to Nostr relays.\n\n\
                  Settings live in git config (p2p.listen, p2p.bootstrap, p2p.mdns, p2p.relay, p2p.name, \
                  p2p.dht-mode, p2p.relay-service, p2p.circuit-relay, p2p.max-peers); keys and data in $XDG_DATA_HOME/git-p2p; the control socket and the hook's notes in \
                  $XDG_RUNTIME_DIR/git-p2p (or the data dir).",
    after_help = "Exit status: 0 on success, 1 when the command failed, 2 on a usage error."
)]
pub struct Cli {
    /// Run as if git-p2p was started in DIR (like git -C)
    #[arg(short = 'C', value_name = "DIR", global = true)]
    pub dir: Option<PathBuf>,
    /// More log output on stderr (repeat for more)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set up this repository: install the post-commit and post-merge hooks and register it with the node
    Init(InitArgs),
    /// Undo init: remove git-p2p's hooks (restoring hooks they chained) and unregister the repository
    ///
    /// Removes git-p2p's post-commit and post-merge hooks (putting back the hooks they ran first; a hook that is
    /// not git-p2p's is never touched) and unregisters the repository: the node leaves its topics and stops reading
    /// its reflog. Named by a path or an id, a repository is found from anywhere, also one whose directory is gone.
    /// The node registers a repository at one place, the clone init ran in last: in another clone, deinit removes
    /// that clone's hooks and says where the registration is. Exits 1 when there was nothing to undo.
    Deinit(DeinitArgs),
    /// List the repositories registered with the node: path, id, name, hooks, last announcement
    ///
    /// For each repository the node serves: where it is (marked "(gone)" when its directory no longer exists: git
    /// p2p deinit PATH forgets it), its id and name, its hooks as the files say (installed, chained, outdated,
    /// via-your-hook, missing) and your last announcement there (time and commit).
    Repos(JsonArgs),
    /// Open the repository's chat room (a terminal UI), or send and read messages from scripts
    Chat(ChatArgs),
    /// Clone a repository from peers (git clone p2p://<repo-id>/<author>), then set it up as init does
    Clone(CloneArgs),
    /// Announce a commit to peers (the post-commit hook runs this with --hook)
    Announce(AnnounceArgs),
    /// Show commits that peers announced for this repository, newest first
    Log(LogArgs),
    /// Signed key-value records in this repository's DHT namespace
    #[command(subcommand)]
    Kv(KvCommand),
    /// Show refs that peers published through the DHT, or publish yours
    Refs(RefsArgs),
    /// Share git notes through the DHT
    #[command(subcommand)]
    Notes(NotesCommand),
    /// List connected peers: id, name, addresses, transport, how they are reached (direct,
    /// hole-punched, relayed via a relay), round-trip time, shared repositories
    Peers(JsonArgs),
    /// Show this node's identity: PeerId, Nostr npub, name, listen addresses, data directory
    Id(IdArgs),
    /// Run, start, stop or inspect the node daemon
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Install or remove the git hooks that announce commits
    #[command(subcommand)]
    Hooks(HooksCommand),
    /// Nostr bridge status: relays, connection state, pending events
    #[command(subcommand)]
    Nostr(NostrCommand),
    /// Say why peers do not connect: the node, its addresses, mDNS, each bootstrap and known peer
    /// with the reason its dial failed, peers' clocks, this repository; exit 1 when a check fails
    Doctor(JsonArgs),
    /// Print a shell completion script (bash completes `git p2p <TAB>` through git's own completion)
    Completions {
        /// The shell: bash, zsh or fish
        #[arg(value_name = "SHELL")]
        shell: completions::Shell,
    },
}

#[derive(Debug, Args)]
pub struct JsonArgs {
    /// Print JSON instead of text (JSON Lines: one object per line, one per item of a list)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Undo it instead, as git p2p deinit does: remove the hooks and unregister the repository
    #[arg(long)]
    pub undo: bool,
}

#[derive(Debug, Args)]
pub struct DeinitArgs {
    /// The repository: a path (its directory may be gone) or a repository id (its first characters suffice);
    /// default: the current one
    #[arg(value_name = "PATH|ID")]
    pub target: Option<String>,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    /// Replace the Nostr key with one read from standard input (nsec1... or hex; never from argv)
    #[arg(long)]
    pub import_nsec: bool,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Open the thread of one commit instead of the repository's room (default: HEAD): a revision
    /// of this repository, or a commit a peer announced, by its id or its first hex digits (4 at least)
    #[arg(long, value_name = "REV", num_args = 0..=1, default_missing_value = "HEAD")]
    pub commit: Option<String>,
    /// Send one message and exit once the node accepted it
    #[arg(long, value_name = "TEXT", conflicts_with = "tail")]
    pub send: Option<String>,
    /// Print the room's recent history and exit (with -f, keep printing new messages)
    #[arg(long)]
    pub tail: bool,
    /// With --tail: follow new messages
    #[arg(short, long, requires = "tail")]
    pub follow: bool,
    /// Print JSON: with --tail one message per line, with --send the message id and peer count
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CloneArgs {
    /// The repository: its id (the root commit's hash), or the room name of a repository registered here
    #[arg(value_name = "REPO")]
    pub repo: String,
    /// The directory to clone into (default: the room name's last part, or the id's first 12 characters)
    // Not `dir`: that is the global -C's id, which a positional of the same id would set.
    #[arg(value_name = "DIR")]
    pub directory: Option<PathBuf>,
    /// Whose work to clone: a PeerId, its short form (last 12 characters), an npub, or "me" (default: the
    /// author with the newest published commit)
    #[arg(long, value_name = "AUTHOR")]
    pub author: Option<String>,
    /// Pass -q to git clone
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct AnnounceArgs {
    /// The commit to announce
    #[arg(default_value = "HEAD")]
    pub rev: String,
    /// Hook mode: never fail, stay silent, and queue the announcement if the node is down (during
    /// a rebase, leave the node a note instead: it announces the rebase's result once it ends)
    #[arg(long)]
    pub hook: bool,
    /// With --hook: leave the node a note to read what was made from the reflog instead of
    /// announcing REV (the post-merge hook: after a fast-forward HEAD is not a commit of ours)
    #[arg(long, requires = "hook")]
    pub note: bool,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Keep streaming new announcements
    #[arg(short, long)]
    pub follow: bool,
    /// Print JSON, one object per line
    #[arg(long)]
    pub json: bool,
    /// Show at most N announcements (default 50)
    #[arg(short = 'n', long, value_name = "N")]
    pub max_count: Option<usize>,
    /// Only this author's announcements: a PeerId, its short form (last 12 characters), an npub, or "me"
    #[arg(long, value_name = "AUTHOR")]
    pub author: Option<String>,
    /// Only announcements of commits made on this branch (a name, or a full ref refs/heads/...)
    #[arg(long, value_name = "BRANCH")]
    pub branch: Option<String>,
    /// Only announcements made since then, as git log takes it: 2.weeks, "3 days ago", yesterday, 2026-11-01,
    /// "2026-11-01 14:00", an RFC 3339 time, @<unix seconds>
    #[arg(long, value_name = "WHEN", value_parser = when::since_arg)]
    pub since: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Set KEY to VALUE (or to the contents of --file, or of standard input with -)
    Set {
        /// The key (at most 256 bytes, no control characters; refs, refs/... and notes/... are git-p2p's own)
        #[arg(value_name = "KEY")]
        key: String,
        /// The value (at most 8 KiB); - reads it from standard input
        #[arg(value_name = "VALUE", required_unless_present = "file")]
        value: Option<String>,
        /// Read the value from a file
        #[arg(long, value_name = "FILE", conflicts_with = "value")]
        file: Option<PathBuf>,
    },
    /// Get each author's value of KEY, newest first
    Get {
        /// The key to look up in this repository's DHT namespace
        #[arg(value_name = "KEY")]
        key: String,
        /// Only this author's value: a PeerId, its short form (last 12 characters), an npub, or "me"
        #[arg(long, value_name = "AUTHOR")]
        author: Option<String>,
        /// Print JSON, one object per author's value
        #[arg(long)]
        json: bool,
    },
    /// List the keys you set in this repository that hold a value of yours
    Ls {
        /// Print JSON, one object per key
        #[arg(long)]
        json: bool,
        /// Also list the keys you removed and git-p2p's own keys (your published refs and notes), marked
        #[arg(long)]
        all: bool,
    },
    /// Remove your value of KEY (a signed tombstone that wins over your older values; others' values stay)
    Rm {
        /// The key to remove
        #[arg(value_name = "KEY")]
        key: String,
    },
}

#[derive(Debug, Args)]
pub struct RefsArgs {
    #[command(subcommand)]
    pub command: Option<RefsCommand>,
    /// Only this author's refs: a PeerId, its short form (last 12 characters), an npub, or "me"
    #[arg(long, value_name = "AUTHOR")]
    pub author: Option<String>,
    /// Print JSON, one object per ref
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum RefsCommand {
    /// Publish your branches and tags to the DHT
    Publish,
}

#[derive(Debug, Subcommand)]
pub enum NotesCommand {
    /// Publish your notes for this repository's commits
    Push {
        /// The notes ref to publish
        #[arg(long = "ref", value_name = "REF", default_value = "refs/notes/commits")]
        notes_ref: String,
    },
    /// Fetch peers' notes into refs/notes/p2p/<author>
    Pull {
        /// The notes ref whose peers' notes to fetch
        #[arg(long = "ref", value_name = "REF", default_value = "refs/notes/commits")]
        notes_ref: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Run the node in the foreground (for systemd, launchd or a terminal)
    Run {
        /// Report readiness as the first line on stdout (used by auto-start)
        #[arg(long, hide = true)]
        notify_ready: bool,
    },
    /// Start the node in the background if it is not running
    Start,
    /// Stop the node gracefully
    Stop,
    /// Show whether the node runs, and the settings and peers it has, its reachability (public,
    /// private, unknown), relay reservations and whether it relays for others
    Status(JsonArgs),
    /// Rebuild a damaged store: move store.redb aside and start a new one with the same keys
    #[command(long_about = "Rebuild a damaged store. The node is stopped, the store is verified page by page, \
                  and, if it is damaged, moved aside (store.redb.damaged-<time>, kept for you to remove) and \
                  replaced by a new store with the same keys (libp2p.key and nostr.key are not touched). The new \
                  store keeps what can be checked: registered repositories whose git dir still holds them, DHT \
                  records whose signatures verify, queued announcements and Nostr events that verify, the \
                  address book. It rebuilds the rest: your announcements of the last 30 days are read again from \
                  the HEAD reflogs of the registered repositories (peers drop those they have), and your DHT \
                  entries the old store lost are fetched back from peers' copies once the node has peers. \
                  Received history (peers' announcements, room messages) cannot be checked and is not carried \
                  over. The node is started again at the end. A store that verifies is left as it is.")]
    Repair {
        /// Rebuild the store even if it verifies
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum HooksCommand {
    /// Install the post-commit and post-merge hooks (chaining any existing ones)
    Install,
    /// Remove the hooks and restore what was there before
    Uninstall,
}

#[derive(Debug, Subcommand)]
pub enum NostrCommand {
    /// Relays, connection state and pending events
    Status(JsonArgs),
}

/// What every command gets: where it runs and where the node's files are.
pub struct Ctx {
    pub dir: PathBuf,
    pub verbosity: u8,
    paths: Option<Paths>,
    /// The repository's node-wide settings were warned about already.
    warned: std::cell::Cell<bool>,
}

impl Ctx {
    pub fn paths(&self) -> anyhow::Result<&Paths> {
        self.paths.as_ref().ok_or_else(|| anyhow::anyhow!("cannot find a home directory: set HOME or XDG_DATA_HOME"))
    }

    /// The repository the command runs in. Node-wide settings its own config sets (which the
    /// node does not read) get a one-line warning each.
    pub fn repo(&self) -> anyhow::Result<crate::git::RepoContext> {
        let repo = crate::git::open(&self.dir)?;
        if !self.warned.replace(true) {
            for key in repo.node_settings_set_here() {
                eprintln!(
                    "git-p2p: warning: {key} is set in this repository's config, which the node does not read \
                     (one node serves all your repositories): set it with git config --global"
                );
            }
        }
        Ok(repo)
    }

    /// A client of a running node, starting the node first if needed.
    pub fn client(&self) -> anyhow::Result<crate::control::Client> {
        Ok(crate::control::Client::connect_or_start(self.paths()?)?)
    }
}

/// Parses the command line, runs the command, and turns the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // The node logs to its file (set up in `node::run`); everything else to stderr when asked.
    if !matches!(cli.command, Command::Daemon(DaemonCommand::Run { .. })) {
        crate::logging::init_stderr(cli.verbose);
    }
    let dir = match &cli.dir {
        Some(dir) => dir.clone(),
        None => PathBuf::from("."),
    };
    let ctx = Ctx { dir, verbosity: cli.verbose, paths: Paths::from_env().ok(), warned: Default::default() };
    let mut out = io::stdout().lock();
    match run(&ctx, cli.command, &mut out) {
        Ok(code) => code,
        Err(e) => {
            // A closed stdout (`git p2p log | head`) is not an error worth a message.
            if e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) {
                return ExitCode::SUCCESS;
            }
            let _ = writeln!(io::stderr(), "git-p2p: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the message already has
/// (many of our errors quote their source, and anyhow would print it twice).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message.replace(['\n', '\r'], " ")
}

/// clap's usage error on one line, with all it says: the message, the arguments it names, its
/// suggestions ("a similar subcommand exists: 'peers'") and the usage.
fn usage_line(rendered: &str) -> String {
    let parts: Vec<&str> =
        rendered.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("For more information")).collect();
    let mut line = String::new();
    for part in parts {
        let part = part.strip_prefix("error: ").unwrap_or(part);
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(part);
    }
    line.replace("Usage: git-p2p", "usage: git p2p").replace("Usage: ", "usage: ")
}

fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                return ExitCode::from(2);
            }
            ExitCode::SUCCESS
        }
        _ => {
            let _ = writeln!(io::stderr(), "git-p2p: error: {}", usage_line(&e.render().to_string()));
            ExitCode::from(2)
        }
    }
}

fn run(ctx: &Ctx, command: Command, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    match command {
        Command::Init(args) if args.undo => deinit::run(ctx, None, out)?,
        Command::Init(_) => init::run(ctx, out)?,
        Command::Deinit(args) => deinit::run(ctx, args.target.as_deref(), out)?,
        Command::Repos(args) => repos::run(ctx, args.json, out)?,
        Command::Peers(args) => peers::run(ctx, args.json, out)?,
        Command::Id(args) => id::run(ctx, &args, out)?,
        Command::Daemon(cmd) => return daemon::run(ctx, cmd, out),
        Command::Chat(args) => chat::run(ctx, &args, out)?,
        Command::Clone(args) => clone::run(ctx, &args, out)?,
        Command::Announce(args) => announce::run(ctx, &args, out)?,
        Command::Log(args) => log::run(ctx, &args, out)?,
        Command::Kv(cmd) => return kv::run(ctx, cmd, out),
        Command::Refs(args) => refs::run(ctx, args, out)?,
        Command::Notes(cmd) => notes::run(ctx, cmd, out)?,
        Command::Hooks(cmd) => hooks::run(ctx, cmd, out)?,
        Command::Nostr(cmd) => nostr::run(ctx, cmd, out)?,
        Command::Completions { shell } => completions::run(shell, out)?,
        Command::Doctor(args) => return doctor::run(ctx, &args, out),
    }
    Ok(ExitCode::SUCCESS)
}

/// The clap definition, for man page generation.
pub fn command() -> clap::Command {
    Cli::command()
}
