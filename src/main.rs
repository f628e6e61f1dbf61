//! The `git-p2p` binary: git runs it as `git p2p <command>`.

fn main() -> std::process::ExitCode {
    git_p2p::cli::main()
}
