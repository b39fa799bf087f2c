#!/usr/bin/env bash
# farm-cluster.sh DIR N [--delay-ms D] [--loss-pct L] [--local-slots S] [--slots S]
#                      [--same-host-jobs] [--extra 'KEY = VALUE']...
#
# Starts a farm of N farmd on this machine's loopback, for trying farm out and for
# the benchmarks: a cluster CA and one certificate per node under DIR, node-1 …
# node-N on free UDP ports, every node knowing only node-1 (the rest is learned by
# gossip); each --extra line is added to every node's farmd.toml. Peers on one
# machine add no CPUs, so farmd sends them no jobs unless
# --same-host-jobs (demos, tests). With --delay-ms/--loss-pct every peer path goes through
# scripts/udp-delay.py (D ms each way, L % loss each way). Writes DIR/env with
# FARM_AGENT=<node-1's agent socket> and FARM_FARMD_PIDS, waits until node-1 sees
# every peer, then stays in the foreground until killed (it stops its farmd then).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$1; n=$2; shift 2
delay=0; loss=0; local_slots=""; slots=""; same_host=false; extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --delay-ms) delay=$2; shift 2 ;;
    --loss-pct) loss=$2; shift 2 ;;
    --local-slots) local_slots=$2; shift 2 ;;
    --slots) slots=$2; shift 2 ;;
    --same-host-jobs) same_host=true; shift ;;
    --extra) extra+=("$2"); shift 2 ;;
    *) echo "farm-cluster: unknown option $1" >&2; exit 2 ;;
  esac
done
bin=${FARM_BIN_DIR:-$root/target/release}
for b in farm farmd; do [[ -x $bin/$b ]] || { echo "farm-cluster: $bin/$b missing (cargo build --release --workspace)" >&2; exit 1; }; done
# A UDP port nothing on loopback uses now (ss from iproute2 lists the bound ones).
free_port() {
  local p
  while :; do
    p=$(shuf -i 20000-60999 -n 1)
    if ! ss -Hlun "sport = :$p" 2>/dev/null | grep -q .; then echo "$p"; return; fi
  done
}
rm -rf "$dir"; mkdir -p "$dir"
"$bin/farm" cluster init "$dir/ca" >/dev/null
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 0' TERM INT
declare -a port pub
for i in $(seq 1 "$n"); do
  port[$i]=$(free_port)
  if [[ $delay != 0 || $loss != 0 ]]; then pub[$i]=$(free_port); else pub[$i]=${port[$i]}; fi
done
for i in $(seq 1 "$n"); do
  d=$dir/node-$i; mkdir -p "$d"
  "$bin/farm" cluster issue "node-$i" --ca "$dir/ca" --out "$d" >/dev/null
  peers=""; [[ $i -gt 1 ]] && peers="\"127.0.0.1:${pub[1]}\""
  {
    echo "listen = \"127.0.0.1:${port[$i]}\""
    echo "advertise = \"127.0.0.1:${pub[$i]}\""
    echo "peers = [$peers]"
    echo "ca = \"$dir/ca/ca.crt\""
    echo "cert = \"node-$i.crt\""
    echo "key = \"node-$i.key\""
    echo "socket = \"agent.sock\""
    echo "state_dir = \"state\""
    echo "log = \"farmd.log\""
    echo "same_host_jobs = $same_host"
    [[ -n $slots ]] && echo "slots = $slots"
    [[ -n $local_slots && $i -eq 1 ]] && echo "local_slots = $local_slots"
    for line in "${extra[@]}"; do echo "$line"; done
  } >"$d/farmd.toml"
  if [[ ${pub[$i]} != "${port[$i]}" ]]; then
    python3 "$root/scripts/udp-delay.py" "${pub[$i]}" "${port[$i]}" "$delay" "$loss" &
    pids+=($!)
  fi
  "$bin/farmd" --config "$d/farmd.toml" 2>>"$d/farmd.stderr" &
  pids+=($!)
  echo "$!" >"$d/pid"
done
{
  echo "FARM_AGENT=$dir/node-1/agent.sock"
  echo "FARM_FARMD_PIDS=\"$(cat "$dir"/node-*/pid | tr '\n' ' ')\""
} >"$dir/env"
# node-1 answers (its agent socket is up) and sees every peer.
for _ in $(seq 200); do
  live=-1
  if st=$(FARM_AGENT=$dir/node-1/agent.sock "$bin/farm" status --json 2>/dev/null) && [[ -n $st ]]; then
    # Farm peers only: a REAPI service (reapi_execute) is a row of its own.
    live=$(python3 -c 'import json, sys
print(sum(1 for p in json.load(sys.stdin).get("peers", []) if p.get("live") and not str(p.get("node", "")).startswith("reapi:")))' <<<"$st" 2>/dev/null || echo -1)
  fi
  [[ $live == $((n - 1)) ]] && break
  sleep 0.1
done
[[ $live == $((n - 1)) ]] || { echo "farm-cluster: node-1 sees $live of $((n - 1)) peers" >&2; exit 1; }
echo "farm-cluster: $n farmd up in $dir (source $dir/env)" >&2
touch "$dir/ready"
wait
