#!/usr/bin/env bash
# test.sh: the whole test suite, as CI runs it (.ci/run calls this and nothing weaker).
# Installs the tools the tests need, then: formatting, clippy, the dependency rules,
# every test (unit, real gcc/clang, real Make/CMake/Ninja builds of Debian sources), and
# the Debian package installed, used and removed (scripts/test-package.sh), then every
# fuzz target for a bounded time (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export CARGO_TERM_COLOR=never
echo "== cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --all --manifest-path fuzz/Cargo.toml -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== dependency rules"
# TLS, when it arrives, uses rustls with ring; aws-lc-sys must never be in the tree.
if cargo tree --workspace -i aws-lc-sys >/dev/null 2>&1; then
  echo "aws-lc-sys is in the dependency tree (rustls must use the ring provider)" >&2; exit 1
fi
# bincode is unmaintained (RUSTSEC-2025-0141): postcard is the binary format.
if cargo tree --workspace -i bincode >/dev/null 2>&1; then
  echo "bincode is in the dependency tree (use postcard)" >&2; exit 1
fi
# The layers (docs/architecture.md, invariant 10): lang/ knows nothing above it, and
# farmd names no compiler family.
if grep -rnE 'crate::(key|store|shim|protocol|agent_client)\b' src/lang; then
  echo "src/lang uses a layer above it" >&2; exit 1
fi
if grep -rnE 'lang::(gcc|javac|csc)\b' daemon/src; then
  echo "daemon/ names a compiler family (use the registry and capability traits)" >&2; exit 1
fi
echo "== cargo test"
cargo test --workspace 2>&1 | tee target/test.log
# One closing line for the cargo tests.
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "%d passed, %d failed\n", p, f }' target/test.log
echo "== the Debian package (scripts/test-package.sh)"
# dpkg -i, a system user and farmd as that user: root only. CI runs as root.
if [[ $(id -u) == 0 ]] && command -v dpkg >/dev/null; then
  bash scripts/test-package.sh
else
  echo "skipped: needs root and dpkg"
fi
echo "== fuzz"
# Every fuzz target (fuzz/, docs/robustness.md) for a bounded time from its committed
# corpus; a crash fails the run and names the input.
bash scripts/fuzz.sh "${FARM_FUZZ_SECONDS:-20}"
