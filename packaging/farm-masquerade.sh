#!/usr/bin/env bash
# farm-masquerade.sh DIR [FARM]: makes DIR a masquerade directory, like ccache's
# /usr/lib/ccache: a link named after each gcc/clang driver on this machine (and
# javac, mcs and csc where installed), pointing at farm. Put DIR first on PATH and every compiler call goes through farm, which finds
# the real compiler further down PATH (skipping its own links).
set -euo pipefail
dir=${1:?usage: farm-masquerade.sh DIR [FARM]}
farm=${2:-$(command -v farm || true)}
[[ -n $farm && -x $farm ]] || { echo "farm-masquerade: farm not found (give its path as the second argument)" >&2; exit 1; }
farm=$(readlink -f "$farm")
mkdir -p "$dir"
names=(cc c++ gcc g++ clang clang++)
shopt -s nullglob
for p in /usr/bin/gcc-[0-9]* /usr/bin/g++-[0-9]* /usr/bin/clang-[0-9]* /usr/bin/clang++-[0-9]* \
         /usr/bin/*-linux-gnu-gcc /usr/bin/*-linux-gnu-g++ /usr/bin/*-linux-gnu-gcc-[0-9]* /usr/bin/*-linux-gnu-g++-[0-9]*; do
  names+=("$(basename "$p")")
done
for t in javac mcs csc; do
  command -v "$t" >/dev/null && names+=("$t")
done
for n in "${names[@]}"; do
  ln -sfn "$farm" "$dir/$n"
done
echo "farm-masquerade: ${#names[@]} links in $dir -> $farm"
