#!/usr/bin/env bash
# demo.sh: set-up and farm's main job, for a newcomer on a fresh Debian machine.
# Installs the build tools, builds and installs farm, fetches a real project (lua5.4,
# Debian source package), compiles it through farm twice (cold, then clean + warm) and
# shows the hits in `farm stats`. Then Java: commons-io (Debian source) through
# farm-javac, cold then warm, and C#: dbus-sharp through farm-csc as xbuild's compiler.
# Then lua through a farm: three farmd on
# this machine's loopback (scripts/farm-cluster.sh), compiled by the peers, then served
# from the farm's cache with an empty local cache; `farm status` shows the peers.
# Along the way: the build journal and `farm report` (an HTML page of the builds),
# `farm why` naming the header an edit changed, and farmd's Prometheus metrics.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=${FARM_DEMO_DIR:-$root/target/demo}
bash "$root/scripts/install-deps.sh"
bash "$root/scripts/install.sh" "$work/prefix"
export PATH=$work/prefix/bin:$PATH
export FARM_DIR=$work/cache          # a private cache, so the demo starts cold
export FARM_CONFIG=$work/config.toml # and no personal config applies
rm -rf "$FARM_DIR"
bash "$root/scripts/fetch-sources.sh" "$work/sources" lua5.4
rm -rf "$work/lua"; cp -a "$work/sources/lua5.4" "$work/lua"
sleep 0.1
cd "$work/lua/src"
farm stats --zero >/dev/null
TIMEFORMAT="    %R s wall"
build() { time make -j"$(nproc)" linux CC="farm-cc -std=gnu99" >/dev/null; }
# Every compile of builds 1 and 2 is one line of this journal (docs/journal.md).
export FARM_JOURNAL=$work/lua-build.jsonl
rm -f "$FARM_JOURNAL"
echo "== build 1: cold cache (every compile is a miss and gets stored)"
build
sleep 2 # a gap, so the report shows two builds
echo "== make clean; build 2: warm cache (every compile is a hit)"
make clean >/dev/null
build
unset FARM_JOURNAL
./lua -e 'print("lua built through farm says: " .. 6*7)'
echo
farm stats
echo
echo "== farm report: one self-contained HTML page of both builds (timeline, slowest, hit rate)"
farm report --gap 1 "$work/lua-build.jsonl"
echo
echo "== an edited header: lctype.h, then make rebuilds what includes it; farm why says why it missed"
echo '/* edited by the demo */' >>lctype.h
sleep 0.1
make -j"$(nproc)" linux CC="farm-cc -std=gnu99" >/dev/null
farm why lctype.c

echo
echo "== Java: commons-io (Debian source package) through farm-javac, as Gradle calls javac"
bash "$root/scripts/fetch-sources.sh" "$work/sources" commons-io
rm -rf "$work/commons-io"; cp -a "$work/sources/commons-io" "$work/commons-io"
cd "$work/commons-io"
find "$PWD/src/main/java" -name '*.java' | sort >sources.txt
printf '%s\n' --release 8 -d "$PWD/classes" -sourcepath '""' -proc:none -classpath '""' >args.txt
farm stats --zero >/dev/null
echo "== javac 1: cold cache"
time farm-javac @args.txt @sources.txt 2>/dev/null
echo "== rm -rf classes; javac 2: warm cache"
rm -rf classes
time farm-javac @args.txt @sources.txt 2>/dev/null
echo "    $(find classes -name '*.class' | wc -l) class files restored"
farm stats | grep -E 'hits|declared|misses|summary'

echo
echo "== C#: dbus-sharp (Debian source package) through farm-csc, as xbuild's C# compiler"
bash "$root/scripts/fetch-sources.sh" "$work/sources" dbus-sharp
rm -rf "$work/dbus-sharp"; cp -a "$work/sources/dbus-sharp" "$work/dbus-sharp"
cd "$work/dbus-sharp/src"
farm stats --zero >/dev/null
xb() { xbuild /p:CscToolPath="$work/prefix/bin" /p:CscToolExe=farm-csc dbus-sharp.csproj >/dev/null; }
echo "== xbuild 1: cold cache"
time xb
echo "== rm -rf obj; xbuild 2: warm cache"
rm -rf obj
time xb
farm stats | grep -E 'hits|declared|misses|summary'
cd "$work/lua/src"

echo
echo "== a farm: three farmd on loopback, each with its own certificate (scripts/farm-cluster.sh)"
# (--same-host-jobs: these peers share this machine's CPUs; real peers are other machines)
# (A `ready` file left by an earlier demo must not let this one start before the farm is up.)
rm -rf "$work/farm"
FARM_BIN_DIR=$work/prefix/bin bash "$root/scripts/farm-cluster.sh" "$work/farm" 3 --local-slots 0 --same-host-jobs &
cluster=$!
trap 'kill $cluster 2>/dev/null; wait $cluster 2>/dev/null' EXIT
for _ in $(seq 300); do [[ -f $work/farm/ready ]] && break; sleep 0.1; done
export FARM_AGENT=$work/farm/node-1/agent.sock
farm cache clear >/dev/null; farm stats --zero >/dev/null
make clean >/dev/null
echo "== build 3: empty local cache, node-1 sends every compile to its peers"
build
farm status
metrics=$(farm status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["http"]["metrics"])')
echo "== node-1's Prometheus metrics ($metrics; farm monitor opens the live page)"
curl -s "$metrics" | grep -E '^farm_(jobs_total|compiles_total\{outcome="(miss|hit_direct)"|peers\{)' | grep -v ' 0$'
make clean >/dev/null; farm cache clear >/dev/null
echo "== build 4: empty local cache again: the farm's cache answers"
build
echo
farm stats
