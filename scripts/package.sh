#!/usr/bin/env bash
# package.sh: builds farm's Debian package with cargo-deb into target/debian/
# ($CARGO_TARGET_DIR/debian/ when that is set) and prints the .deb's path last.
#
# The binaries are built as scripts/install.sh builds them: the shims linked statically
# (glibc, non-PIE), so the package runs on any glibc system and a hit starts fast.
# Needs cargo-deb (`cargo install cargo-deb --locked`). What goes where: Cargo.toml,
# [package.metadata.deb]; the maintainer scripts: packaging/debian/.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || { echo "package.sh: cargo-deb not found (cargo install cargo-deb --locked)" >&2; exit 1; }
host=$(rustc -vV | sed -n 's/^host: //p')
tgt=${CARGO_TARGET_DIR:-target}
# An explicit --target keeps these flags off build scripts and proc-macros.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
  cargo build --release --workspace --target "$host" --quiet 2> >(grep -v 'statically linked applications' >&2)
out=$tgt/$host/release

# usr/share, staged where Cargo.toml's `target/release/packaging/share/**/*` asset finds it.
stage=$out/packaging/share
rm -rf "$out/packaging"
mkdir -p "$stage/farm"
install -m 0644 packaging/grafana/farm-dashboard.json "$stage/farm/"

# Hook: shell completions and man pages, generated from the CLI's own definitions (issue
# 16, item 1: clap_complete and clap_mangen). Until `farm` can make them, this stages
# nothing and the package has none.
# TODO(cli-clap): align these two commands with what the clap CLI names them.
farm=$out/farm
gen() { # gen FILE CMD...: FILE gets CMD's output if CMD succeeds with some output
  local tmp; tmp=$(mktemp)
  if "${@:2}" >"$tmp" 2>/dev/null && [[ -s $tmp ]]; then
    mkdir -p "$(dirname "$1")" && mv "$tmp" "$1" && chmod 0644 "$1"
  else
    rm -f "$tmp"
  fi
}
gen "$stage/bash-completion/completions/farm" "$farm" completions bash
gen "$stage/zsh/vendor-completions/_farm" "$farm" completions zsh
gen "$stage/fish/vendor_completions.d/farm.fish" "$farm" completions fish
mandir=$(mktemp -d)
if "$farm" man "$mandir" >/dev/null 2>&1 && compgen -G "$mandir/*.1" >/dev/null; then
  mkdir -p "$stage/man/man1"
  for m in "$mandir"/*.1; do gzip -9n <"$m" >"$stage/man/man1/$(basename "$m").gz"; done
fi
rm -rf "$mandir"
[[ -e $stage/bash-completion ]] || echo "package.sh: no shell completions in the package (farm cannot generate them yet)" >&2
[[ -e $stage/man ]] || echo "package.sh: no man pages in the package (farm cannot generate them yet)" >&2

mkdir -p "$tgt/debian"
cargo deb -p farm --no-build --target "$host" --output "$tgt/debian/" "$@" | tail -n 1
