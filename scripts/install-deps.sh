#!/usr/bin/env bash
# install-deps.sh [--bench]: installs what farm's build, tests and demo need, from
# Debian's archive (apt-get; root or sudo). Idempotent: installed packages are skipped.
#   always:  gcc g++ clang make cmake ninja-build dpkg-dev (apt-get source), xz/bzip2,
#            iproute2 (ss for scripts/farm-cluster.sh, ip netns and tc for tests/farm_netns.rs and tests/farm_chaos.rs), libfaketime (a peer's skewed clock in tests/farm_chaos.rs), bash-completion (the packaged completion's launcher form in scripts/test-package.sh), bubblewrap (the worker's job sandbox), python3 (its memory-limit test); a JDK, Gradle, Maven with
#            Debian's offline repository (maven-debian-helper) and the compiler and
#            resources plugins, junit4 (jars in /usr/share/java) for the javac tests;
#            Mono's mcs and xbuild for the C# tests; redis-server, and nginx with its
#            WebDAV module, the remote cache servers of tests/remote_storage.rs, and
#            moto's S3 server from PyPI in target/test-venv (pip, in a venv), BuildGrid
#            0.9.1 (REAPI) in target/buildgrid-venv from Python 3.13 (pyenv's); prometheus
#            (and promtool) for tests/metrics.rs, chromium (headless) for tests/monitor.rs; postgresql
#            (BuildGrid's scheduler database) for tests/reapi_bot.rs
#            cargo-deb 3.8.0 (cargo install) for scripts/test-package.sh; a nightly
#            Rust toolchain (rustup, minimal profile) and cargo-fuzz 0.13.2 (cargo
#            install) for scripts/fuzz.sh
#   --bench: also ccache hyperfine distcc icecc sccache python3, the comparison tools
#            of scripts/bench.sh and scripts/bench-farm.sh
set -euo pipefail
pkgs=(gcc g++ clang make cmake ninja-build dpkg-dev xz-utils bzip2 util-linux ca-certificates iproute2 coreutils bubblewrap python3 libfaketime bash-completion
  default-jdk-headless gradle maven maven-debian-helper libmaven-compiler-plugin-java
  libmaven-resources-plugin-java junit4 mono-mcs mono-devel mono-xbuild
  redis-server nginx libnginx-mod-http-dav-ext python3-venv prometheus chromium curl postgresql)
[[ ${1:-} == --bench ]] && pkgs+=(ccache hyperfine distcc icecc sccache python3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [[ $(id -u) == 0 ]] || SUDO=sudo
  echo "install-deps: apt-get install ${missing[*]}" >&2
  $SUDO apt-get update -qq
  # sccache is not in every Debian release; the rest must install.
  avail=()
  for p in "${missing[@]}"; do
    if apt-cache show "$p" >/dev/null 2>&1; then avail+=("$p"); else echo "install-deps: $p not available here, skipped" >&2; fi
  done
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${avail[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo not found. farm needs Rust 1.80 or newer (https://rustup.rs)." >&2
  exit 1
fi
# The S3 server of the remote-storage tests: moto, from PyPI, in a venv of its own.
venv=$(cd "$(dirname "$0")/.." && pwd)/target/test-venv
if [[ ! -x $venv/bin/moto_server ]]; then
  echo "install-deps: moto[server] into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "moto[server]"
fi
# The REAPI server of tests/reapi_cache.rs: BuildGrid 0.9.1 from PyPI, which needs
# Python 3.13 (on 3.11 pip finds only 0.4.4): python3.13 on PATH, else pyenv's.
bgvenv=$(cd "$(dirname "$0")/.." && pwd)/target/buildgrid-venv
if [[ ! -x $bgvenv/bin/bgd ]]; then
  py313=$(command -v python3.13 || true)
  # pyenv's shim is on PATH even when 3.13 is not an active version: it must run.
  if [[ -n $py313 ]] && ! "$py313" -c '' 2>/dev/null; then py313=""; fi
  if [[ -z $py313 ]]; then
    pyroot=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
    py313=$(ls -d "$pyroot"/versions/3.13*/bin/python3 2>/dev/null | sort -V | tail -1)
  fi
  if [[ -z $py313 || ! -x $py313 ]]; then
    echo "install-deps: Python 3.13 not found (python3.13 on PATH or pyenv's versions/3.13*): BuildGrid 0.9 needs it for tests/reapi_cache.rs" >&2
    exit 1
  fi
  echo "install-deps: buildgrid==0.9.1 into $bgvenv (with $py313)" >&2
  "$py313" -m venv "$bgvenv"
  "$bgvenv/bin/pip" install -q "buildgrid==0.9.1"
fi
# The Debian package of scripts/test-package.sh: cargo-deb builds it.
if ! command -v cargo-deb >/dev/null; then
  echo "install-deps: cargo install cargo-deb 3.8.0" >&2
  cargo install cargo-deb --version 3.8.0 --locked --quiet
fi
# The fuzz targets of scripts/fuzz.sh (fuzz/, docs/robustness.md): a nightly toolchain
# (rustup's minimal profile) and cargo-fuzz, each only when missing.
if ! cargo +nightly --version >/dev/null 2>&1; then
  if ! command -v rustup >/dev/null; then
    echo "install-deps: rustup not found: scripts/fuzz.sh needs a nightly toolchain (https://rustup.rs)" >&2
    exit 1
  fi
  echo "install-deps: rustup toolchain install nightly --profile minimal" >&2
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null; then
  echo "install-deps: cargo install cargo-fuzz 0.13.2" >&2
  cargo install cargo-fuzz --version 0.13.2 --locked --quiet
fi
