#!/usr/bin/env bash
# bench-csc.sh
#
# farm-csc's benchmark on dbus-sharp from Debian sources: plain mcs, farm-csc miss,
# hit and miss on a peer, with the arguments xbuild passes; then whole xbuild runs
# (plain, farm cold, farm warm). scripts/bench_declared.py says what each measures.
# Builds release binaries first. Not a test: quote medians and ratios from one run.
# Tunables: BENCH_RUNS (5), BENCH_WORK (/tmp/farm-bench-javac).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/install-deps.sh" --bench
bash "$root/scripts/fetch-sources.sh" "$root/target/tmp/debian-sources" dbus-sharp
(cd "$root" && cargo build --release --workspace --quiet)
exec python3 "$root/scripts/bench_declared.py" csc
