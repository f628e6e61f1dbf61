//! The node daemon: start-up (locks, logging, identity, store, swarm, control socket), the event
//! loop that owns the swarm, and graceful shutdown.

pub mod behaviour;
mod bound;
mod direct_streams;
mod disk;
pub mod event_loop;
mod history;
mod hook_notes;
mod hook_wait;
pub mod kad_store;
mod listen;
pub mod mirror;
pub mod nat;
mod priority;
mod reconcile;
pub mod repair;
mod repo_cache;
pub mod service;
mod spool_watch;
mod store_watch;
mod transport;

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use libp2p::{noise, yamux, Swarm};
use tokio::sync::mpsc;

use crate::config::NodeConfig;
use crate::control::api::ConfigInForce;
use crate::identity::Identity;
use crate::paths::Paths;
use crate::store::{Store, StoreError};
use behaviour::Behaviour;
use event_loop::{EventLoop, NodeInfo};

/// A connection that no protocol uses closes after this long. The peers the node keeps (up to
/// `p2p.max-peers`, see `bound`) stay connected however quiet: peers of a collaboration tool
/// are few and worth keeping. Others (a Kademlia lookup's, an AutoNAT dial-back, a peer's
/// beyond what the node keeps) go as soon as their last request is answered, and free their
/// slot for the next (a lookup dials peer after peer).
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_millis(100);
/// Streams open at once on one connection (TCP's yamux, QUIC): our protocols use a handful; a
/// peer opening thousands is refused beyond this, not given memory for each.
const MAX_STREAMS_PER_CONNECTION: usize = 128;
/// Inbound streams still negotiating their protocol, per connection.
const MAX_NEGOTIATING_STREAMS: usize = 32;
/// How long start-up waits for a lock another node holds: a node killed a moment ago releases
/// it as it finishes dying, after its socket stopped answering.
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// New feed entries buffered for slow `log -f` followers; one that falls further behind is told
/// how many it missed.
const FEED_BROADCAST: usize = 1024;
/// Queue of control requests waiting for the event loop.
const COMMAND_QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("a node is already running on {} (pid {pid})", dir.display())]
    AlreadyRunning { dir: std::path::PathBuf, pid: String },
    #[error(transparent)]
    Paths(#[from] crate::paths::PathError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    GitConfig(#[from] crate::git::GitError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("cannot set up the network: {0}")]
    Swarm(Box<dyn std::error::Error + Send + Sync>),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NodeError {
    let what = what.into();
    move |source| NodeError::Io { what, source }
}

/// Options of `git p2p daemon run`.
pub struct RunOptions {
    /// Write "ready" (or "error: ...") as the first line on stdout, then detach stdout.
    pub notify_ready: bool,
    /// Extra verbosity from `-v` flags (0 = info).
    pub verbosity: u8,
}

/// Runs the node in the foreground until it is told to stop.
pub fn run(paths: &Paths, opts: RunOptions) -> Result<(), NodeError> {
    let result = start_and_run(paths, &opts);
    if opts.notify_ready {
        match &result {
            // The starting client waits for that node instead.
            Err(e @ NodeError::AlreadyRunning { .. }) => {
                notify(&format!("{}{e}", crate::control::client::RUNNING_PREFIX))
            }
            // The starting client reads this line and shows it as the error.
            Err(e) => notify(&format!("error: {e}")),
            Ok(()) => {}
        }
    }
    result
}

fn start_and_run(paths: &Paths, opts: &RunOptions) -> Result<(), NodeError> {
    paths.ensure()?;
    crate::paths::ensure_writable(&paths.data_dir)?;
    // Held until the process exits, not until this function returns: a thread still finishing
    // with the store (a census, a history batch) must be gone before another node may open it,
    // and `daemon stop` returns when the lock is free.
    std::mem::forget(take_lock(&paths.data_lock(), &paths.data_dir)?);
    if paths.socket_lock() != paths.data_lock() {
        std::mem::forget(take_lock(&paths.socket_lock(), &paths.socket_dir)?);
    }
    crate::logging::init_file(&paths.log_file(), opts.verbosity, !opts.notify_ready)
        .map_err(io_err(format!("cannot open log file {}", paths.log_file().display())))?;
    // A detached node has no stderr: a panic must reach the log file, or nobody ever learns why
    // the node went away.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(%info, "node panicked");
        default_hook(info);
    }));

    let config = NodeConfig::from_source(&crate::git::GlobalConfig::load()?)?;
    let identity = Identity::load_or_create(&paths.data_dir)?;
    let store = match Store::open(&paths.store()) {
        Ok(store) => store,
        Err(e @ StoreError::Damaged { .. }) => {
            // Clients report this instead of starting a node that would fail the same way.
            crate::store::record_damage(&paths.store(), &e.to_string());
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    crate::store::clear_damage(&paths.store());
    // A previous node's word to the hook; this node says its own.
    let _ = std::fs::remove_file(paths.store_problem());
    tracing::info!(peer_id = %identity.peer_id(), data_dir = %paths.data_dir.display(), "starting");

    // One thread: the swarm is polled from one task anyway, and a single-threaded runtime halves
    // the control socket's round trip and keeps the idle node small.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("cannot start the async runtime"))?;
    runtime.block_on(async {
        let records = kad_store::PersistentStore::load(identity.peer_id(), store.clone());
        let session = behaviour::new_session();
        let race = transport::DialRace::default();
        let mut swarm = build_swarm(&identity, &config, &session, records, race.clone())?;
        listen::listen(&mut swarm, &config.listen, &store).await?;

        let socket_path = paths.socket();
        // We hold the locks, so a socket file left here belongs to a dead node.
        match std::fs::remove_file(&socket_path) {
            Ok(()) => tracing::info!(socket = %socket_path.display(), "removed stale socket"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot remove stale socket")(e)),
        }
        let listener = tokio::net::UnixListener::bind(&socket_path)
            .map_err(io_err(format!("cannot bind control socket {}", socket_path.display())))?;
        std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("cannot restrict the control socket"))?;

        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let (events, _) = tokio::sync::broadcast::channel(FEED_BROADCAST);
        let info = NodeInfo {
            data_dir_path: paths.data_dir.clone(),
            notes_dir: paths.notes_dir(),
            store_problem: paths.store_problem(),
            key: identity.libp2p.clone(),
            npub: identity.npub(),
            nostr: identity.nostr.clone(),
            name: config.name.clone(),
            data_dir: paths.data_dir.display().to_string(),
            socket: socket_path.display().to_string(),
            log_file: paths.log_file().display().to_string(),
            started_at: crate::clock::unix_now(),
            config: ConfigInForce {
                listen: config.listen.iter().map(|a| a.to_string()).collect(),
                bootstrap: config.bootstrap.iter().map(|b| format!("{}/p2p/{}", b.addr, b.peer_id)).collect(),
                mdns: config.mdns,
                dht_mode: serde_json::to_value(config.dht_mode)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                relays: config.relays.clone(),
                replicate: config.replicate,
                max_fetch_size: config.max_fetch_size,
                relay_service: serde_json::to_value(config.relay_service)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                circuit_relays: config.circuit_relays.iter().map(|b| format!("{}/p2p/{}", b.addr, b.peer_id)).collect(),
                max_peers: config.max_peers,
            },
            relay_service: config.relay_service,
            circuit_relays: config.circuit_relays.clone(),
            max_peers: config.max_peers,
        };
        let event_loop = EventLoop::new(swarm, rx, store.clone(), info, &config.bootstrap, events.clone(), race);
        let server = tokio::spawn(crate::control::server::serve(listener, tx, events));
        tracing::info!(peer_id = %event_loop.local_peer_id(), "ready");
        if opts.notify_ready {
            notify(crate::control::client::READY_LINE);
        }
        event_loop.run(stop_signal()).await;
        // Let connection tasks write the answers the loop gave last (the shutdown's "done").
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        server.abort();
        let _ = std::fs::remove_file(&socket_path);
        let _ = std::fs::remove_file(paths.store_problem());
        // Closed cleanly (and healthy), the file is trusted at the next start without being
        // read through.
        store.close();
        tracing::info!("stopped");
        Ok(())
    })
}

fn build_swarm(
    identity: &Identity,
    config: &NodeConfig,
    session: &str,
    records: kad_store::PersistentStore,
    race: transport::DialRace,
) -> Result<Swarm<Behaviour>, NodeError> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(identity.libp2p.clone())
        .with_tokio()
        .with_other_transport(|key| transport::build(key, MAX_STREAMS_PER_CONNECTION, race))
        .map_err(|e| NodeError::Swarm(e.into()))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| NodeError::Swarm(e.into()))?
        .with_behaviour(|key, relay_client| {
            Behaviour::new(key, config, session, records, relay_client).map_err(Into::into)
        })
        .map_err(|e| NodeError::Swarm(e.into()))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
                .with_max_negotiating_inbound_streams(MAX_NEGOTIATING_STREAMS)
        })
        .build();
    Ok(swarm)
}

/// Takes the lock file at `path` for the life of the process, writing our pid into it.
fn take_lock(path: &Path, dir: &Path) -> Result<File, NodeError> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err(format!("cannot open lock file {}", path.display())))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = std::fs::read_to_string(path).unwrap_or_default().trim().to_string();
                return Err(NodeError::AlreadyRunning { dir: dir.to_path_buf(), pid });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(format!("cannot lock {}", path.display()))(e)),
        }
    }
    file.set_len(0).map_err(io_err("cannot write lock file"))?;
    write!(file, "{}", std::process::id()).map_err(io_err("cannot write lock file"))?;
    Ok(file)
}

/// Tells the client that started us how start-up went, then detaches stdout: the client reads
/// exactly one line and goes away.
fn notify(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    if let Ok(devnull) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto our own stdout fd with a valid open fd; both live for the call.
        unsafe {
            libc::dup2(devnull.as_raw_fd(), libc::STDOUT_FILENO);
        }
    }
}

/// Resolves on SIGTERM or SIGINT (graceful stop, as `daemon stop` does).
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::warn!("cannot install signal handlers; stop the node with: git p2p daemon stop");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
