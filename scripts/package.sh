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

# Shell completions and man pages, generated from the CLI's own clap definitions.
farm=$out/farm
mkdir -p "$stage/bash-completion/completions" "$stage/zsh/vendor-completions" \
  "$stage/fish/vendor_completions.d" "$stage/man/man1"
"$farm" completions bash >"$stage/bash-completion/completions/farm"
"$farm" completions zsh >"$stage/zsh/vendor-completions/_farm"
"$farm" completions fish >"$stage/fish/vendor_completions.d/farm.fish"
mandir=$(mktemp -d)
"$farm" manpages "$mandir" >/dev/null
for m in "$mandir"/*.1; do gzip -9n <"$m" >"$stage/man/man1/$(basename "$m").gz"; done
rm -rf "$mandir"
for f in "$stage"/bash-completion/completions/farm "$stage"/zsh/vendor-completions/_farm \
  "$stage"/fish/vendor_completions.d/farm.fish "$stage"/man/man1/farm.1.gz; do
  [[ -s $f ]] || { echo "package.sh: $f is empty" >&2; exit 1; }
done
find "$stage" -type f -exec chmod 0644 {} +

mkdir -p "$tgt/debian"
cargo deb -p farm --no-build --target "$host" --output "$tgt/debian/" "$@" | tail -n 1
