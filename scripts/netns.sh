#!/usr/bin/env bash
# netns.sh up DIR N RTT_MS [PREFIX [LOSS_PCT]] | down DIR | rtt DIR [FROM TO]
#          | cut DIR I | heal DIR I | stats DIR
#
# N network namespaces on a private subnet with a round-trip delay, for farm tests and
# benchmarks (root only). Node i (0-based) is namespace PREFIX-i with address
# 10.213.0.(i+1)/24 on its interface `eth0`, plus loopback. PREFIX defaults to fn<pid>,
# so parallel runs do not collide; nothing is added to the caller's namespace.
#
# The delay, RTT_MS/2 each way between any two nodes, comes from
#   netem   `tc qdisc ... netem delay` on every node's eth0, which sit on a bridge in a
#           hub namespace PREFIX-hub (veth pairs), when this kernel has sch_netem;
#   switch  scripts/netns-switch.py otherwise: a user-space switch in PREFIX-hub holding
#           one tap device per node, which delays every frame (UDP, TCP, ARP, broadcast).
# LOSS_PCT (default 0) drops that share of the frames each way (netem `loss`, or the
# switch's --loss). `cut DIR I` cuts node I off: every frame to or from it is dropped
# (its bridge port goes down, or the switch drops its tap's frames), so its connections
# see silence, not errors; `heal DIR I` reconnects it. `stats DIR` prints what the switch
# delivered and dropped (cut, loss) so far (`mode netem` and nothing else under netem).
# `up` writes DIR/netns.env (NETNS_PREFIX, NETNS_NODES, NETNS_IPS, NETNS_DELAY=netem|switch,
# NETNS_SWITCH_PID, NETNS_RTT_MS measured with UDP pings from node 0 to node 1) and
# returns; `down` kills the switch and deletes every namespace (links go with them). It is
# safe to call `down` twice or after a half-finished `up`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cmd=${1:?usage: netns.sh up DIR N RTT_MS [PREFIX] | down DIR | rtt DIR}
dir=${2:?netns.sh: DIR missing}

# Median UDP round trip (ms) from namespace $1 to address $2 (an echo server runs there).
rtt() {
  local from=$1 to_ns=$2 to_ip=$3
  ip netns exec "$to_ns" python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 7999))
s.settimeout(10)
try:
    while True:
        d, a = s.recvfrom(100)
        s.sendto(d, a)
        if d == b"stop":
            break
except socket.timeout:
    pass
' "$to_ip" &
  local echo=$!
  sleep 0.3
  ip netns exec "$from" python3 -c '
import socket, statistics, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
xs = []
for i in range(40):
    t0 = time.perf_counter()
    s.sendto(b"ping", (sys.argv[1], 7999))
    try:
        s.recvfrom(100)
        xs.append((time.perf_counter() - t0) * 1000)
    except socket.timeout:
        time.sleep(0.05)
    time.sleep(0.01)
s.sendto(b"stop", (sys.argv[1], 7999))
print("%.2f" % statistics.median(xs[5:] or xs or [-1.0]))
' "$to_ip"
  wait "$echo" 2>/dev/null || true
}

case $cmd in
up)
  n=${3:?netns.sh up: N missing}; rtt_ms=${4:?netns.sh up: RTT_MS missing}
  prefix=${5:-fn$$}; loss=${6:-0}
  [[ $(id -u) == 0 ]] || { echo "netns.sh: network namespaces need root" >&2; exit 1; }
  mkdir -p "$dir"
  hub=$prefix-hub
  nodes=(); ips=()
  for i in $(seq 0 $((n - 1))); do nodes+=("$prefix-$i"); ips+=("10.213.0.$((i + 1))"); done
  # Written first, so `down` can clean up after any failure below.
  {
    echo "NETNS_PREFIX=$prefix"
    echo "NETNS_NODES=\"${nodes[*]}\""
    echo "NETNS_IPS=\"${ips[*]}\""
  } >"$dir/netns.env"
  ip netns add "$hub"
  for ns in "${nodes[@]}"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
  done
  half=$(python3 -c "print($rtt_ms / 2)")
  if ip netns exec "${nodes[0]}" tc qdisc add dev lo root netem delay 1ms 2>/dev/null; then
    ip netns exec "${nodes[0]}" tc qdisc del dev lo root
    delay=netem
    ip -n "$hub" link add br0 type bridge
    ip -n "$hub" link set br0 up
    for i in "${!nodes[@]}"; do
      ip -n "$hub" link add "p$i" type veth peer name eth0 netns "${nodes[$i]}"
      ip -n "$hub" link set "p$i" master br0 up
      ip netns exec "${nodes[$i]}" tc qdisc add dev eth0 root netem delay "${half}ms" loss "${loss}%"
    done
  else
    delay=switch
    taps=(); for i in "${!nodes[@]}"; do taps+=("t$i"); done
    rm -f "$dir/switch.ready" "$dir/switch.control"
    : >"$dir/switch.control"
    ip netns exec "$hub" setsid python3 "$root/scripts/netns-switch.py" "$dir/switch.ready" "$half" \
      --loss "$loss" --control "$dir/switch.control" "${taps[@]}" \
      </dev/null >"$dir/switch.log" 2>&1 &
    for _ in $(seq 100); do [[ -s $dir/switch.ready ]] && break; sleep 0.05; done
    [[ -s $dir/switch.ready ]] || { echo "netns.sh: the delay switch did not start: $(cat "$dir/switch.log")" >&2; exit 1; }
    echo "NETNS_SWITCH_PID=$(cat "$dir/switch.ready")" >>"$dir/netns.env"
    for i in "${!nodes[@]}"; do
      ip -n "$hub" link set "t$i" netns "${nodes[$i]}"
      ip -n "${nodes[$i]}" link set "t$i" name eth0
    done
  fi
  for i in "${!nodes[@]}"; do
    ip -n "${nodes[$i]}" addr add "${ips[$i]}/24" dev eth0
    ip -n "${nodes[$i]}" link set eth0 up
  done
  echo "NETNS_DELAY=$delay" >>"$dir/netns.env"
  if [[ $n -gt 1 ]]; then
    echo "NETNS_RTT_MS=$(rtt "${nodes[0]}" "${nodes[1]}" "${ips[1]}")" >>"$dir/netns.env"
  fi
  ;;
down)
  [[ -f $dir/netns.env ]] || exit 0
  # shellcheck disable=SC1091
  source "$dir/netns.env"
  if [[ -n ${NETNS_SWITCH_PID:-} ]]; then kill "$NETNS_SWITCH_PID" 2>/dev/null || true; fi
  for ns in $NETNS_NODES "$NETNS_PREFIX-hub"; do
    # Whatever still runs in a node's namespace was started for it.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -f "$dir/netns.env"
  ;;
rtt)
  # shellcheck disable=SC1091
  source "$dir/netns.env"
  read -ra nodes <<<"$NETNS_NODES"; read -ra ips <<<"$NETNS_IPS"
  a=${3:-0}; b=${4:-1}
  rtt "${nodes[$a]}" "${nodes[$b]}" "${ips[$b]}"
  ;;
cut | heal)
  i=${3:?netns.sh $cmd: node index missing}
  # shellcheck disable=SC1091
  source "$dir/netns.env"
  if [[ $NETNS_DELAY == netem ]]; then
    ip -n "$NETNS_PREFIX-hub" link set "p$i" "$([[ $cmd == cut ]] && echo down || echo up)"
  else
    grep -vx "cut $i" "$dir/switch.control" >"$dir/switch.control.new" || true
    [[ $cmd == cut ]] && echo "cut $i" >>"$dir/switch.control.new"
    mv "$dir/switch.control.new" "$dir/switch.control"
    kill -USR1 "$NETNS_SWITCH_PID"
  fi
  ;;
stats)
  # shellcheck disable=SC1091
  source "$dir/netns.env"
  if [[ $NETNS_DELAY == netem ]]; then echo "mode netem"; exit 0; fi
  rm -f "$dir/switch.control.stats"
  kill -USR2 "$NETNS_SWITCH_PID"
  for _ in $(seq 100); do [[ -s $dir/switch.control.stats ]] && break; sleep 0.02; done
  echo "mode switch"
  cat "$dir/switch.control.stats"
  ;;
*) echo "netns.sh: unknown command $cmd" >&2; exit 2 ;;
esac
