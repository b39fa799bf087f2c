#!/usr/bin/env bash
# bench-javac.sh [all|javac|gradle]
#
# farm-javac's benchmark on commons-io from Debian sources: plain javac, farm-javac
# misses (fresh javac, farmd's warm JVM, a peer's warm JVM) and hits, and Gradle 4.4.1
# with no cache, with its own build cache and with farm (scripts/bench_declared.py says
# what each measures). Builds release binaries first. Not a test: quote medians and
# ratios from one run. Tunables: BENCH_RUNS (5), BENCH_WORK (/tmp/farm-bench-javac).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/install-deps.sh" --bench
bash "$root/scripts/fetch-sources.sh" "$root/target/tmp/debian-sources" commons-io
(cd "$root" && cargo build --release --workspace --quiet)
exec python3 "$root/scripts/bench_declared.py" "${1:-all}"
