#!/bin/sh
# Installs git-p2p: the binary to PREFIX/bin and its man pages to PREFIX/share/man/man1.
# Usage: ./install.sh [PREFIX]      PREFIX defaults to ~/.local (no root needed).
set -eu
cd "$(dirname "$0")"
PREFIX=${1:-${PREFIX:-$HOME/.local}}

command -v cargo >/dev/null || { echo "install.sh: cargo not found (install Rust from https://rustup.rs)" >&2; exit 1; }
# Build in the repository's own target dir, so an existing release build is reused.
cargo install --quiet --locked --path . --root "$PREFIX" --force --target-dir target
mkdir -p "$PREFIX/share/man/man1"
cp man/*.1 "$PREFIX/share/man/man1/"

echo "installed $PREFIX/bin/git-p2p and its man pages"
case ":$PATH:" in
  *":$PREFIX/bin:"*) ;;
  *) echo "note: add $PREFIX/bin to PATH so that git finds 'git p2p': export PATH=\"$PREFIX/bin:\$PATH\"" >&2 ;;
esac
