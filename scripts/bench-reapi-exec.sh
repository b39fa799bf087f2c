#!/usr/bin/env bash
# bench-reapi-exec.sh: farm's misses through a REAPI service's Execute, measured on
# loopback. BuildGrid 0.9.1 (Execute, its scheduler on a throwaway PostgreSQL, the
# shared YAML with `farm-layout` a match key and no assigner jitter), one farmd as its
# bot (rootfs leases), one farmd home node with `reapi_execute`, no peers and no local
# slots (every miss goes to the service). One invocation, side by side on one project:
#
#   plain           the compiler alone
#   farm local      farm, cold, no farmd (compiles here)
#   farm Execute    farm, cold, every compile an Action BuildGrid runs on the bot
#   farm AC         a new home node and an empty local cache: every compile answered
#                   from BuildGrid's Action Cache (GetActionResult, no Execute)
#
# and the per-action overhead of Execute: the median time of one job from farmd's
# executor to its answer, the bot's part of it, and a local compile's median time.
#
#   scripts/bench-reapi-exec.sh                    # lua5.4, make -j2, 1 repeat
#   PROJECT=lua5.4 JOBS=2 REPEATS=3 FLAGS=-g scripts/bench-reapi-exec.sh
#
# Environment: PROJECT (lua5.4), JOBS (nproc), REPEATS (1), FLAGS (MYCFLAGS; "" or -g),
# WORK (/tmp/farm-bench-reapi-exec), SOURCES (target/bench/sources), FARM_BIN (default:
# scripts/install.sh into target/bench/prefix), SKIP_DEPS=1. Not a test: quote ratios
# from one run, on idle CPUs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
PROJECT=${PROJECT:-lua5.4}
JOBS=${JOBS:-$(nproc)}
REPEATS=${REPEATS:-1}
FLAGS=${FLAGS:-}
WORK=${WORK:-/tmp/farm-bench-reapi-exec}
SOURCES=${SOURCES:-$root/target/bench/sources}
BGD=$root/target/buildgrid-venv/bin/bgd
BG_YAML=$root/../shared/engines/buildgrid-exec.yml

log() { echo "bench-reapi-exec: $*" >&2; }
die() { log "$*"; exit 1; }

[[ ${SKIP_DEPS:-0} == 1 ]] || bash "$root/scripts/install-deps.sh" >&2
[[ -x $BGD ]] || die "$BGD missing: run scripts/install-deps.sh (BuildGrid needs Python 3.13)"
[[ -f $BG_YAML ]] || die "$BG_YAML missing: ../shared sits beside the clone"
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[[ -x $pgbin/initdb ]] || die "no PostgreSQL (apt-get install postgresql)"
if [[ -z ${FARM_BIN:-} ]]; then
  bash "$root/scripts/install.sh" "$root/target/bench/prefix" >/dev/null
  FARM_BIN=$root/target/bench/prefix/bin/farm
fi
bindir=$(dirname "$FARM_BIN")
[[ -x $bindir/farmd ]] || die "no farmd beside $FARM_BIN"
[[ $PROJECT == lua5.4 || $PROJECT == lua ]] || die "PROJECT: only lua5.4 (a Makefile build of relative paths)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  local i
  for i in $(seq 1 1500); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.02
  done
  die "$2 did not listen on $1"
}
pids=()
pg=
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [[ -n $pg ]] && su postgres -s /bin/sh -c "$pgbin/pg_ctl -D $pg -m immediate stop" >/dev/null 2>&1 || true
}
trap cleanup EXIT

rm -rf "$WORK"; mkdir -p "$WORK"
chmod 755 "$WORK"

# ---------------------------------------------------------------- BuildGrid
db=$WORK/pg; mkdir -p "$db"; chown postgres:postgres "$db"
pg=$db/data
pg_port=$(free_port)
su postgres -s /bin/sh -c "$pgbin/initdb -D $pg -U bgd --auth=trust" >"$WORK/initdb.log" 2>&1 || die "initdb: $WORK/initdb.log"
su postgres -s /bin/sh -c "$pgbin/pg_ctl -D $pg -l $db/pg.log -w -o '-c listen_addresses=127.0.0.1 -p $pg_port -k $db -c fsync=off' start" >/dev/null \
  || die "PostgreSQL did not start: $db/pg.log"
su postgres -s /bin/sh -c "$pgbin/createdb -h 127.0.0.1 -p $pg_port -U bgd bgd" || die "createdb"
"$BGD" migrate apply "postgresql://bgd@127.0.0.1:$pg_port/bgd" >"$WORK/migrate.log" 2>&1 || die "bgd migrate: $WORK/migrate.log"
python3 - "$BG_YAML" "$WORK/buildgrid-exec.yml" <<'EOF'
import sys
y = open(sys.argv[1]).read()
for old, new in [
    ("match-property-keys: [OSFamily, ISA]", "match-property-keys: [OSFamily, ISA, farm-layout]"),
    ("        interval: 0.1\n", "        interval: 0.1\n        jitter-factor: 0\n"),
    ("size: 256M", "size: 2G"),
]:
    if old not in y:
        sys.exit(f"the shared BuildGrid configuration changed: no {old!r}")
    y = y.replace(old, new)
open(sys.argv[2], "w").write(y)
EOF
bg_port=$(free_port)
BG_PORT=$bg_port PG_PORT=$pg_port "$BGD" server start "$WORK/buildgrid-exec.yml" >"$WORK/bgd.log" 2>&1 &
pids+=($!)
wait_port "$bg_port" "BuildGrid ($WORK/bgd.log)"
service=reapi://127.0.0.1:$bg_port

# ---------------------------------------------------------------- farmd
# cluster DIR EXTRA...: one farmd, in the background, until its agent answers.
cluster() {
  local dir=$1 i; shift
  local args=()
  for e in "$@"; do args+=(--extra "$e"); done
  rm -rf "$dir"
  FARM_BIN_DIR=$bindir bash "$root/scripts/farm-cluster.sh" "$dir" 1 "${args[@]}" >"$dir.log" 2>&1 &
  pids+=($!)
  for i in $(seq 1 1200); do [[ -e $dir/ready ]] && return 0; sleep 0.05; done
  die "farmd did not start: $dir.log"
}
cluster "$WORK/bot" "accept_toolchains = true" "reapi_bot = { endpoint = \"$service\", bot_id = \"bench-bot\" }"
for i in $(seq 1 600); do grep -q "REAPI bot session open" "$WORK/bot/node-1/farmd.log" 2>/dev/null && break; sleep 0.05; done
grep -q "REAPI bot session open" "$WORK/bot/node-1/farmd.log" || die "the bot opened no session: $WORK/bot/node-1/farmd.log"
home_n=0
home() {
  home_n=$((home_n + 1))
  cluster "$WORK/home$home_n" "local_slots = 0" "reapi_execute = \"$service\""
  agent=$WORK/home$home_n/node-1/agent.sock
}

# ---------------------------------------------------------------- builds
bash "$root/scripts/fetch-sources.sh" "$SOURCES" lua5.4 >&2
tree=$WORK/src/lua
mkdir -p "$WORK/src"; cp -a "$SOURCES/lua5.4" "$tree"
build() { # CC AGENT: sets $secs
  (cd "$tree/src" && make clean >/dev/null 2>&1) || true
  local t0 t1
  t0=$(date +%s.%N)
  FARM_AGENT=$2 make -C "$tree/src" -j "$JOBS" linux CC="$1 -std=gnu99" MYCFLAGS="$FLAGS" >"$WORK/build.log" 2>&1 \
    || die "build failed: $WORK/build.log"
  t1=$(date +%s.%N)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
}
objects() { (cd "$tree/src" && sha256sum ./*.o | sort -k2); }
farm_env() { # fresh cache dir
  export FARM_DIR=$WORK/cache-$1 FARM_CONFIG=$WORK/no-config.toml FARM_MODE=direct
  rm -rf "$FARM_DIR"
  unset FARM_REMOTE_STORAGE
}
remote() { "$FARM_BIN" stats --json | python3 -c 'import json, sys; s = json.load(sys.stdin); print(s["farm"]["remote"], "/", s["hits"]["total"] + s["misses"])'; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
ratio() { awk -v x="$1" -v y="$2" 'BEGIN {if (y > 0) printf "%.2f×", x / y; else print "-"}'; }
# log_ms FILE MESSAGE FIELD: the median and the count of FIELD= over MESSAGE's lines.
log_ms() {
  grep -h "$2" "$1" | sed -n "s/.* $3=\([0-9]*\).*/\1/p" | sort -n \
    | awk '{a[NR]=$1} END {if (NR) printf "%d ms (n=%d)", a[int((NR+1)/2)], NR; else print "-"}'
}

declare -A t=()
times=(); for r in $(seq "$REPEATS"); do build gcc off; times+=("$secs"); done
t[plain]=$(median "${times[@]}"); plain_objs=$(objects)
times=(); for r in $(seq "$REPEATS"); do farm_env local$r; build "$bindir/farm-cc" off; times+=("$secs"); done
t[local]=$(median "${times[@]}")
[[ $(objects) == "$plain_objs" ]] || die "farm local: objects differ from plain"
times=(); ac_times=()
for r in $(seq "$REPEATS"); do
  # New Actions each repeat (a define no source uses), so each is a cold Execute.
  FLAGS_SAVED=$FLAGS; FLAGS="$FLAGS -DFARM_BENCH_RUN=$r"
  build gcc off; run_plain=$(objects)
  home; farm_env exec$r; build "$bindir/farm-cc" "$agent"; times+=("$secs"); exec_st=$(remote)
  [[ $(objects) == "$run_plain" ]] || die "farm Execute: objects differ from plain"
  exec_home=$WORK/home$home_n/node-1/farmd.log
  home; farm_env ac$r; build "$bindir/farm-cc" "$agent"; ac_times+=("$secs"); ac_st=$(remote)
  [[ $(objects) == "$run_plain" ]] || die "farm AC: objects differ from plain"
  FLAGS=$FLAGS_SAVED
done
t[exec]=$(median "${times[@]}")
t[ac]=$(median "${ac_times[@]}")
ac_home=$WORK/home$home_n/node-1/farmd.log
n=$(cd "$tree/src" && ls ./*.o | wc -l)

echo
echo "farm $("$FARM_BIN" --version | cut -d' ' -f2), BuildGrid 0.9.1 + PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}'), farmd as its one bot; $PROJECT, $n compiles, make -j$JOBS, MYCFLAGS='$FLAGS', median of $REPEATS; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| build | wall s | vs plain | compiles through REAPI |"
echo "|---|---|---|---|"
echo "| plain gcc | $(printf %.2f "${t[plain]}") | 1.00× | - |"
echo "| farm, cold, local (no farmd) | $(printf %.2f "${t[local]}") | $(ratio "${t[local]}" "${t[plain]}") | - |"
echo "| farm, cold, every compile through Execute | $(printf %.2f "${t[exec]}") | $(ratio "${t[exec]}" "${t[plain]}") | $exec_st |"
echo "| farm, new node + empty cache, from the Action Cache | $(printf %.2f "${t[ac]}") | $(ratio "${t[ac]}" "${t[plain]}") | $ac_st |"
echo
echo "| one job (last repeat) | median |"
echo "|---|---|"
echo "| farmd executor → answer, through Execute | $(log_ms "$exec_home" "REAPI job done" ms) |"
echo "| of which the bot's lease (fetch, root, sandbox, gcc, report) | $(log_ms "$WORK/bot/node-1/farmd.log" "REAPI lease done" ms) |"
echo "| farmd executor → answer, from the Action Cache | $(log_ms "$ac_home" "REAPI job done" ms) |"
echo "| one local compile, plain build (wall / compiles × jobs) | $(awk -v s="${t[plain]}" -v n="$n" -v j="$JOBS" 'BEGIN {printf "%d ms", s * 1000 * j / n}') |"
