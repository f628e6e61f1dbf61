#!/bin/sh
# Installs git-p2p: the binaries (git-p2p, and git-remote-p2p, which git runs for p2p:// URLs)
# to PREFIX/bin, its man pages to PREFIX/share/man/man1 and its
# shell completions (bash, zsh, fish) under PREFIX/share.
# Usage: ./install.sh [PREFIX]      PREFIX defaults to ~/.local (no root needed).
# Needs: Rust 1.89 or newer (cargo, from https://rustup.rs), a C compiler (cc), git.
set -eu
cd "$(dirname "$0")"
PREFIX=${1:-${PREFIX:-$HOME/.local}}

command -v cargo >/dev/null || { echo "install.sh: cargo not found (install Rust 1.89 or newer from https://rustup.rs)" >&2; exit 1; }
command -v cc >/dev/null || command -v gcc >/dev/null || { echo "install.sh: no C compiler found (install gcc or clang: a dependency builds C code)" >&2; exit 1; }
command -v git >/dev/null || { echo "install.sh: git not found" >&2; exit 1; }

echo "install.sh: building git-p2p $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1) with $(cargo --version) (the first build takes several minutes)"
# The `dist` profile: optimised and stripped (the release profile keeps line tables for profiling).
# Built in the repository's own target dir, so that a later install reuses it. Both binaries of
# the package land side by side in PREFIX/bin (the node also runs git-remote-p2p from there).
cargo install --locked --path . --root "$PREFIX" --force --target-dir target --profile dist

mkdir -p "$PREFIX/share/man/man1"
cp man/*.1 "$PREFIX/share/man/man1/"
bin="$PREFIX/bin/git-p2p"
# bash: git's own completion loads this file for `git p2p <TAB>` (and bash for `git-p2p <TAB>`).
mkdir -p "$PREFIX/share/bash-completion/completions" "$PREFIX/share/zsh/site-functions" \
  "$PREFIX/share/fish/vendor_completions.d"
"$bin" completions bash > "$PREFIX/share/bash-completion/completions/git-p2p"
"$bin" completions zsh > "$PREFIX/share/zsh/site-functions/_git-p2p"
"$bin" completions fish > "$PREFIX/share/fish/vendor_completions.d/git-p2p.fish"

[ -x "$PREFIX/bin/git-remote-p2p" ] || { echo "install.sh: git-remote-p2p was not installed" >&2; exit 1; }
echo "installed $bin and git-remote-p2p, their man pages (git help p2p) and shell completions under $PREFIX/share"
case ":$PATH:" in
  *":$PREFIX/bin:"*) ;;
  *) echo "note: add $PREFIX/bin to PATH so that git finds 'git p2p': export PATH=\"$PREFIX/bin:\$PATH\"" >&2 ;;
esac
