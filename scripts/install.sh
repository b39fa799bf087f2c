#!/usr/bin/env bash
# install.sh [PREFIX]: builds farm in release mode and installs farm, farm-cc,
# farm-c++, farm-javac, farm-csc and farmd into PREFIX/bin (default ~/.local).
#
# The shim binaries are linked statically (glibc, non-PIE): a cache hit is a process
# start plus a few file reads, and dynamic loading and relocation are a measurable
# share of it. FARM_DYNAMIC=1 builds ordinary dynamic binaries instead.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-$HOME/.local}
host=$(rustc -vV | sed -n 's/^host: //p')
if [[ ${FARM_DYNAMIC:-0} == 1 ]]; then
  cargo build --release --workspace --quiet
  out=target/release
else
  # An explicit --target keeps these flags off build scripts and proc-macros.
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
    cargo build --release --workspace --target "$host" --quiet 2> >(grep -v 'statically linked applications' >&2)
  out=target/$host/release
fi
mkdir -p "$prefix/bin"
for b in farm farm-cc farmd; do
  install -m 0755 "$out/$b" "$prefix/bin/$b.new" && mv -f "$prefix/bin/$b.new" "$prefix/bin/$b"
done
# Cargo cannot name a binary farm-c++; farm acts on the name it is started as, so the
# other shims are links to the one static binary too.
ln -sf farm "$prefix/bin/farm-c++"
ln -sf farm "$prefix/bin/farm-javac"
ln -sf farm "$prefix/bin/farm-csc"
echo "installed farm, farm-cc, farm-c++, farm-javac, farm-csc, farmd into $prefix/bin"
