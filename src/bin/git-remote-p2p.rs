//! `git-remote-p2p`: git's remote helper for `p2p://` URLs (see `git_p2p::remote_helper`).

fn main() -> std::process::ExitCode {
    git_p2p::remote_helper::main()
}
