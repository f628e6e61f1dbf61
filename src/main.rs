//! The `git-p2p` binary: git runs it as `git p2p <command>`.

fn main() -> std::process::ExitCode {
    // Two rustls crypto providers end up linked (ring for the Nostr relays' websockets, aws-lc-rs
    // for QUIC); without a process default the first wss:// connection panics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    git_p2p::cli::main()
}
