#!/usr/bin/env bash
# fuzz.sh [SECONDS_PER_TARGET] [TARGET...]: farm's fuzz targets (fuzz/, cargo-fuzz and
# libFuzzer on nightly, AddressSanitizer; docs/robustness.md). Builds every target
# once, then runs each for SECONDS_PER_TARGET (default 20) from its committed corpus,
# fuzz/corpus/<target>/, which it only reads (new inputs go to a scratch directory).
# Fails if any target crashes, panics, exceeds its memory cap (2 GiB, or one
# allocation above it) or hangs (10 s an input), naming the input that did it
# (fuzz/artifacts/<target>/); it minimises nothing.
#   fuzz.sh --seeds: writes the seed corpora again from real compiles
#                    (tests/fuzz_corpus.rs, `regenerate_seeds`).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${1:-} == --seeds ]]; then
  exec cargo test --test fuzz_corpus -- --ignored --exact regenerate_seeds
fi
secs=${1:-20}
shift || true
# libFuzzer reads 0 as "no limit": a bounded run needs a positive number.
if ! [[ $secs =~ ^[0-9]+$ ]] || ((secs < 1)); then
  echo "fuzz.sh: SECONDS_PER_TARGET must be a positive number of seconds, not '$secs'" >&2
  exit 2
fi
cd fuzz
echo "fuzz: building the targets (cargo +nightly fuzz build)"
cargo +nightly fuzz build
if (($#)); then targets=("$@"); else mapfile -t targets < <(cargo +nightly fuzz list); fi
if ((${#targets[@]} == 0)); then
  echo "fuzz.sh: no fuzz targets found (cargo +nightly fuzz list)" >&2
  exit 1
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/farm-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t/new" "$work/$t/tmp"
  log=$work/$t.log
  rc=0
  # The targets' own scratch files go under their TMPDIR, removed with $work.
  TMPDIR=$work/$t/tmp cargo +nightly fuzz run "$t" "$work/$t/new" "corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1 || rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  if ((rc == 0)); then
    echo "fuzz: $t: ok, ${runs:-?} runs in ${secs} s (${rate:-?}/s)"
    continue
  fi
  failed+=("$t")
  input=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
  echo "fuzz: $t: FAILED (exit $rc) after ${runs:-?} runs" >&2
  # What went wrong: the panic or the sanitizer's report, and the end of the log.
  grep -E -A3 "panicked at|ERROR: (libFuzzer|AddressSanitizer)" "$log" | head -30 >&2 || true
  echo "---- last lines of its log" >&2
  grep -v "^ *[0-9]*: \|^ *at " "$log" | tail -12 >&2
  if [[ -n $input ]]; then
    echo "fuzz: $t: the crashing input: fuzz/${input#"$PWD"/}" >&2
    echo "fuzz: $t: reproduce with: (cd fuzz && cargo +nightly fuzz run $t ${input#"$PWD"/})" >&2
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${secs} s each: no crash"
