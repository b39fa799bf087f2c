#!/usr/bin/env bash
# bench-farm.sh [all|overhead|throughput|failover|netem|netns|netns-build|netns-throughput]
#
# The farm's benchmarks, run beside plain gcc, ccache, sccache and distcc in one run
# (scripts/bench_farm.py says what each measures). Builds release binaries first.
# Not a test: quote medians and ratios from one run. Tunables: BENCH_RUNS (15),
# BENCH_REPS (3), BENCH_DELAY_MS (10, each way), BENCH_LOSS_PCT (1), BENCH_WORK.
# netns (root; not part of `all`): farmd, distccd and iceccd in network namespaces
# (scripts/netns-farm.sh), BENCH_RTT_MS (2), BENCH_REPS (1), BENCH_PROJECTS (lua,taglib),
# BENCH_TUS (taglib: first N objects, 0 = all), BENCH_JOBS (200 tiny TUs).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/install-deps.sh" --bench
if [[ -x $HOME/.cargo/bin/sccache ]]; then export PATH=$HOME/.cargo/bin:$PATH; fi
(cd "$root" && cargo build --release --workspace --quiet)
export FARM_BIN_DIR=${FARM_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/release}
exec python3 "$root/scripts/bench_farm.py" "${1:-all}"
