#!/usr/bin/env bash
# bench.sh [build|hitlat|all] [anchor-bench options…]
#
# Measures farm side by side with plain compiles, ccache and sccache (and distcc/icecc
# when asked with -w) in one run, using ../shared/bench/anchor-bench.sh: real Debian
# projects (lua5.4, taglib; libzstd's source is gone from the archive), cold and warm
# builds, and the latency of 200 hits on one small TU. Prints the anchor script's ratio tables. Not a test: timings
# on shared machines are noisy, so quote medians and ratios from one run.
#
#   scripts/bench.sh all                    # builds (lua,taglib; r=2) + hit latency
#   scripts/bench.sh build -p lua -r 3      # pass anchor-bench options through
#   FARM_BENCH_MODE=depend scripts/bench.sh hitlat
#   FARM_BASELINE=/opt/farm-old scripts/bench.sh hitlat   # also an installed older farm
#
# FARM_BASELINE names the prefix of another farm install (PREFIX/bin/farm): each
# measurement then runs once more with that farm as the wrapper "farm-base", in the
# same invocation, so a change is judged against its baseline on the same machine state.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
anchor=${ANCHOR_BENCH:-$root/../shared/bench/anchor-bench.sh}
[[ -x $anchor || -f $anchor ]] || { echo "bench: $anchor not found (set ANCHOR_BENCH)" >&2; exit 1; }
what=${1:-all}; shift || true
bash "$root/scripts/install-deps.sh" --bench
# A current sccache from crates.io beats Debian's 0.4 pre-release when present.
if [[ -x $HOME/.cargo/bin/sccache ]]; then export PATH=$HOME/.cargo/bin:$PATH; fi
prefix=$root/target/bench/prefix
bash "$root/scripts/install.sh" "$prefix" >/dev/null
farm=$prefix/bin/farm
export ANCHOR_WORK=${ANCHOR_WORK:-/tmp/anchor}
export FARM_CC="$farm" FARM_LABEL=${FARM_LABEL:-farm}
export FARM_STATS="$farm stats" FARM_ZERO="$farm stats --zero" FARM_CLEAR="$farm cache clear"
export FARM_MODE=${FARM_BENCH_MODE:-direct} FARM_CONFIG=$root/target/bench/no-config.toml
unset FARM_DIR  # anchor-bench exports FARM_CACHE_DIR per wrapper
{
  echo "farm: $("$farm" --version) ($(file -b "$farm" | cut -d, -f1-2)), mode $FARM_MODE"
  echo "ccache: $(ccache --version | head -1)"
  echo "sccache: $(sccache --version 2>/dev/null || echo missing)"
} >&2
results=()
# One anchor-bench run with the farm at $1 labelled $2.
with_farm() {
  local bin=$1 label=$2; shift 2
  FARM_CC="$bin" FARM_LABEL="$label" FARM_STATS="$bin stats" FARM_ZERO="$bin stats --zero" \
    FARM_CLEAR="$bin cache clear" bash "$anchor" "$@"
}
if [[ -n ${FARM_BASELINE:-} ]]; then
  [[ -x $FARM_BASELINE/bin/farm ]] || { echo "bench: no farm at $FARM_BASELINE/bin" >&2; exit 1; }
  echo "baseline: $("$FARM_BASELINE/bin/farm" --version) at $FARM_BASELINE" >&2
fi
if [[ $what == build || $what == all ]]; then
  out=$ANCHOR_WORK/results/build-farm-$(date +%Y%m%d-%H%M%S).tsv
  args=("$@"); [[ $what == all || ${#args[@]} -eq 0 ]] && args=(-p lua,taglib -w none,ccache,sccache,farm -r 2)
  bash "$anchor" build "${args[@]}" -o "$out"
  results+=("$out")
  if [[ -n ${FARM_BASELINE:-} ]]; then
    base=${out%.tsv}-base.tsv
    with_farm "$FARM_BASELINE/bin/farm" farm-base build "${args[@]}" -w farm -o "$base"
    results+=("$base")
  fi
fi
if [[ $what == hitlat || $what == all ]]; then
  out=$ANCHOR_WORK/results/hitlat-farm-$(date +%Y%m%d-%H%M%S).tsv
  args=("$@"); [[ $what == all || ${#args[@]} -eq 0 ]] && args=(-w ccache,sccache,farm -n 200)
  bash "$anchor" hitlat "${args[@]}" -o "$out"
  results+=("$out")
  if [[ -n ${FARM_BASELINE:-} ]]; then
    base=${out%.tsv}-base.tsv
    with_farm "$FARM_BASELINE/bin/farm" farm-base hitlat "${args[@]}" -w farm -o "$base"
    results+=("$base")
  fi
fi
echo
bash "$anchor" summary "${results[@]}"
