#!/usr/bin/env bash
# fetch-sources.sh DIR PKG... : puts the upstream source of Debian source packages
# into DIR/<PKG>/ (unpacked orig tarball, Debian patches not applied), once.
# Real projects for tests and benchmarks come only from Debian's archive.
# As root it turns on deb-src entries when they are missing.
set -euo pipefail
dir=$1; shift
mkdir -p "$dir"
enable_deb_src() {
  [[ $(id -u) == 0 ]] || return 1
  local src=/etc/apt/sources.list.d/debian.sources dst=/etc/apt/sources.list.d/debian-src.sources
  if [[ -f $src && ! -f $dst ]]; then
    sed 's/^Types: deb$/Types: deb-src/' "$src" >"$dst"
  elif [[ -f /etc/apt/sources.list ]] && ! grep -q '^deb-src' /etc/apt/sources.list; then
    sed -n 's/^deb /deb-src /p' /etc/apt/sources.list >/etc/apt/sources.list.d/farm-deb-src.list
  fi
  apt-get update -qq
}
for pkg in "$@"; do
  out=$dir/$pkg
  [[ -f $out/.farm-ok ]] && continue
  dl=$dir/.dl-$pkg
  rm -rf "$dl" "$out"; mkdir -p "$dl"
  if ! (cd "$dl" && apt-get source --download-only "$pkg" >download.log 2>&1); then
    enable_deb_src || { echo "fetch-sources: apt-get source $pkg failed and deb-src cannot be enabled (not root)" >&2; exit 1; }
    (cd "$dl" && apt-get source --download-only "$pkg" >download.log 2>&1) \
      || { echo "fetch-sources: apt-get source $pkg failed, see $dl/download.log" >&2; exit 1; }
  fi
  orig=$(ls "$dl"/*.orig.tar.* | head -1)
  mkdir -p "$dl/x"; tar -C "$dl/x" -xf "$orig"
  top=$(ls "$dl/x" | head -1)
  mv "$dl/x/$top" "$out"
  basename "$orig" >"$out/.farm-ok"
  rm -rf "$dl"
done
