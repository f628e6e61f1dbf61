//! Log set-up: the node logs to a file in the data dir; CLI commands log to stderr only when asked.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;

use tracing_subscriber::EnvFilter;

/// A log file larger than this is moved aside (to `node.log.old`) when the node starts.
const MAX_LOG_BYTES: u64 = 10 << 20;

fn filter(verbosity: u8) -> EnvFilter {
    if let Ok(filter) = EnvFilter::try_from_env("RUST_LOG") {
        return filter;
    }
    EnvFilter::new(match verbosity {
        0 => "warn,git_p2p=info",
        1 => "warn,git_p2p=debug",
        2 => "info,git_p2p=trace,libp2p_swarm=debug",
        _ => "trace",
    })
}

/// Logs to `path` (appending) for the rest of the process, and to stderr too with `terminal`
/// (a node run in the foreground: `git p2p daemon run`).
pub fn init_file(path: &Path, verbosity: u8, terminal: bool) -> io::Result<()> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    if fs::metadata(path).map(|m| m.len() > MAX_LOG_BYTES).unwrap_or(false) {
        let _ = fs::rename(path, path.with_extension("log.old"));
    }
    let file = fs::OpenOptions::new().create(true).append(true).open(path)?;
    let to_file = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(Arc::new(file));
    let to_terminal = terminal.then(|| tracing_subscriber::fmt::layer().with_writer(io::stderr));
    let _ = tracing_subscriber::registry().with(filter(verbosity)).with(to_file).with(to_terminal).try_init();
    Ok(())
}

/// Logs to stderr when `-v` or RUST_LOG asks for it; CLI commands are otherwise silent.
pub fn init_stderr(verbosity: u8) {
    if verbosity == 0 && std::env::var_os("RUST_LOG").is_none() {
        return;
    }
    let _ = tracing_subscriber::fmt().with_env_filter(filter(verbosity)).with_writer(io::stderr).try_init();
}
