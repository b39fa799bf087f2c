#!/usr/bin/env bash
# netns-farm.sh DIR N [--rtt-ms R] [--local-slots S] [--slots S]
#
# N farmd, each in its own network namespace (scripts/netns.sh: 10.213.0.0/24, R ms
# round trip between any two, default 2), for benchmarks (root only). node-1 is the
# client's home node, in namespace 0: run the build there (`ip netns exec
# $FARM_CLIENT_NETNS make ...`) with FARM_AGENT=DIR/node-1/agent.sock. Every node
# knows only node-1 (the rest is learned by gossip). The peers share this machine's
# CPUs, so same_host_jobs is on. Writes DIR/env (FARM_AGENT, FARM_CLIENT_NETNS,
# FARM_FARMD_PIDS and DIR/netns.env's NETNS_* lines: which delay mechanism ran, the
# measured RTT), waits until node-1 sees every peer, touches DIR/ready, then stays in the
# foreground until killed; on exit (any exit) it stops its farmd and removes the
# namespaces and links.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$1; n=$2; shift 2
rtt_ms=2; local_slots=""; slots=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --rtt-ms) rtt_ms=$2; shift 2 ;;
    --local-slots) local_slots=$2; shift 2 ;;
    --slots) slots=$2; shift 2 ;;
    *) echo "netns-farm: unknown option $1" >&2; exit 2 ;;
  esac
done
bin=${FARM_BIN_DIR:-$root/target/release}
for b in farm farmd; do [[ -x $bin/$b ]] || { echo "netns-farm: $bin/$b missing (cargo build --release --workspace)" >&2; exit 1; }; done
rm -rf "$dir"; mkdir -p "$dir"
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  bash "$root/scripts/netns.sh" down "$dir"
}
trap cleanup EXIT
trap 'exit 0' TERM INT
bash "$root/scripts/netns.sh" up "$dir" "$n" "$rtt_ms" "fn$$"
# shellcheck disable=SC1091
source "$dir/netns.env"
read -ra nodes <<<"$NETNS_NODES"; read -ra ips <<<"$NETNS_IPS"
"$bin/farm" cluster init "$dir/ca" >/dev/null
for i in $(seq 1 "$n"); do
  d=$dir/node-$i; mkdir -p "$d"
  "$bin/farm" cluster issue "node-$i" --ca "$dir/ca" --out "$d" >/dev/null
  peers=""; [[ $i -gt 1 ]] && peers="\"${ips[0]}:7700\""
  {
    echo "listen = \"${ips[$((i - 1))]}:7700\""
    echo "peers = [$peers]"
    echo "ca = \"$dir/ca/ca.crt\""
    echo "cert = \"node-$i.crt\""
    echo "key = \"node-$i.key\""
    echo "socket = \"agent.sock\""
    echo "state_dir = \"state\""
    echo "log = \"farmd.log\""
    echo "same_host_jobs = true"
    [[ -n $slots ]] && echo "slots = $slots"
    [[ -n $local_slots && $i -eq 1 ]] && echo "local_slots = $local_slots"
  } >"$d/farmd.toml"
  # `ip netns exec` execs farmd: the pid is farmd's own.
  ip netns exec "${nodes[$((i - 1))]}" "$bin/farmd" --config "$d/farmd.toml" 2>>"$d/farmd.stderr" &
  pids+=($!)
  echo "$!" >"$d/pid"
done
{
  echo "FARM_AGENT=$dir/node-1/agent.sock"
  echo "FARM_CLIENT_NETNS=${nodes[0]}"
  echo "FARM_FARMD_PIDS=\"$(cat "$dir"/node-*/pid | tr '\n' ' ')\""
  cat "$dir/netns.env"
} >"$dir/env"
live=0
for _ in $(seq 300); do
  live=$(FARM_AGENT=$dir/node-1/agent.sock "$bin/farm" status --json 2>/dev/null | grep -c '"live": true' || true)
  [[ $live == $((n - 1)) ]] && break
  sleep 0.1
done
[[ $live == $((n - 1)) ]] || { echo "netns-farm: node-1 sees $live of $((n - 1)) peers" >&2; exit 1; }
echo "netns-farm: $n farmd up in namespaces $NETNS_NODES, delay by $NETNS_DELAY, RTT ${NETNS_RTT_MS:-?} ms (source $dir/env)" >&2
touch "$dir/ready"
wait
