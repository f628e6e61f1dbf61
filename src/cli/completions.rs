//! `git p2p completions SHELL`: completion scripts generated from the clap definition, so they
//! know every command and flag. For bash, git's own completion calls `_git_p2p` for `git p2p`:
//! the script defines it on top of the generated `git-p2p` completion.

use std::io::Write;

/// The shells we write completions for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// The binary name the generated completion is for (`git-p2p`, as git runs it).
const BIN: &str = "git-p2p";

/// Makes `git p2p <TAB>` (git's bash completion, which calls `_git_<command>`) complete like
/// `git-p2p <TAB>`: the words from `p2p` on become `git-p2p ...` for the generated function.
const BASH_GIT_SHIM: &str = r#"
# `git p2p <TAB>`: git's completion calls _git_p2p with its own words/cword.
_git_p2p() {
    local i start=-1
    for ((i = 1; i < ${#words[@]}; i++)); do
        if [[ ${words[i]} == p2p ]]; then start=$i; break; fi
    done
    ((start < 0)) && return
    local COMP_WORDS=(git-p2p "${words[@]:start+1}")
    local COMP_CWORD=$((cword - start))
    local COMP_LINE="${COMP_WORDS[*]}"
    local COMP_POINT=${#COMP_LINE}
    _gitp2p git-p2p "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
}
"#;

/// clap_complete's bash script names its functions inconsistently for a binary name with a
/// hyphen (`git__p2p` in one place, `git__subcmd__p2p` in another): it is generated for this
/// name, and registered for `git-p2p` afterwards.
const BASH_NAME: &str = "gitp2p";

pub fn run(shell: Shell, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut cmd = super::command().name(BIN).bin_name(BIN).display_name(BIN);
    let mut script = Vec::new();
    match shell {
        Shell::Bash => {
            let mut cmd = super::command().name(BASH_NAME).bin_name(BASH_NAME).display_name(BASH_NAME);
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, BASH_NAME, &mut script);
            let text = String::from_utf8_lossy(&script).replace(&format!(" {BASH_NAME}\n"), &format!(" {BIN}\n"));
            script = text.into_bytes();
            script.extend_from_slice(BASH_GIT_SHIM.as_bytes());
        }
        Shell::Zsh => clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, BIN, &mut script),
        Shell::Fish => clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, BIN, &mut script),
    }
    out.write_all(&script)?;
    Ok(())
}
