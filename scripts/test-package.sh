#!/usr/bin/env bash
# test-package.sh: the Debian package, end to end, on this machine (root, dpkg).
# Builds it (scripts/package.sh), installs it with `dpkg -i`, checks its files, the
# farmd user and farm group and the conffile, starts farmd as the unit says (under
# systemd when systemd is PID 1, else by hand as the unit's user and group), builds a
# two-file C program and lua5.4 (Debian's source, scripts/fetch-sources.sh) through the
# installed masquerade directory twice each (the second all hits, the first placed by
# farmd's agent), reinstalls it over an edited conffile, then `dpkg -r` and `dpkg -P`,
# and compares the file system with its state before the install: nothing stray may
# remain.
#
# It refuses to run where farm is already installed or a farmd user or farm group exists.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
fail() { echo "test-package: FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }
[[ $(id -u) == 0 ]] || fail "needs root (dpkg -i, a system user)"
command -v dpkg >/dev/null || fail "needs dpkg"
if dpkg-query -W -f='${Status}' farm 2>/dev/null | grep -q 'installed'; then fail "the farm package is already installed"; fi
getent passwd farmd >/dev/null && fail "a farmd user exists already"
getent group farm >/dev/null && fail "a farm group exists already"
# The package keeps its system account on purge (as Debian does); this test removes it.
drop_account() {
  userdel farmd >/dev/null 2>&1 || true
  groupdel farm >/dev/null 2>&1 || true
}

work=$(mktemp -d /tmp/test-package.XXXXXX)
farmd_pid=
cleanup() {
  [[ -n $farmd_pid ]] && kill "$farmd_pid" 2>/dev/null && wait "$farmd_pid" 2>/dev/null
  if [[ $systemd == 1 ]]; then systemctl stop farmd 2>/dev/null || true; fi
  # Leave the machine as it was, even on failure.
  rm -f /etc/farm/ca.crt /etc/farm/node1.crt /etc/farm/node1.key
  dpkg -P farm >/dev/null 2>&1 || true
  drop_account
  rm -rf "$work"
}
systemd=0
[[ $(ps -p 1 -o comm= 2>/dev/null) == systemd && -d /run/systemd/system ]] && systemd=1
trap cleanup EXIT

# What the package may touch; dpkg's own database and logs change by design.
snapshot() {
  find /usr /etc /var /opt /srv /run -xdev \
    \( -path /var/lib/dpkg -o -path /var/log -o -path /var/cache -o -path /var/tmp \
       -o -path /run/user \) -prune -o -print 2>/dev/null |
    grep -Ev '^/etc/(passwd|group|shadow|gshadow)-$|^/etc/\.pwd\.lock$' | sort
}

step "build the package"
deb=$(scripts/package.sh | tail -n 1)
[[ -f $deb ]] || fail "scripts/package.sh printed no .deb ($deb)"
echo "$deb"
dpkg-deb --info "$deb" | grep -E 'Package|Version|Depends|Architecture' || true
contents=$(dpkg-deb --contents "$deb")

snapshot >"$work/before"

step "dpkg -i"
dpkg -i "$deb"
dpkg-query -W -f='${Status}\n' farm | grep -qx 'install ok installed' || fail "farm is not installed"

step "files"
for f in /usr/bin/farm /usr/bin/farm-cc /usr/bin/farmd; do
  [[ -x $f && ! -L $f ]] || fail "$f is not an executable file"
done
for l in farm-c++ farm-javac farm-csc; do
  [[ $(readlink -f /usr/bin/$l) == /usr/bin/farm ]] || fail "/usr/bin/$l does not lead to /usr/bin/farm"
done
for l in cc c++ gcc g++; do
  [[ -L /usr/lib/farm/$l && $(readlink -f /usr/lib/farm/$l) == /usr/bin/farm ]] ||
    fail "/usr/lib/farm/$l is not a link to farm"
done
# The optional compilers' links exist exactly where this machine has the compiler.
for l in clang clang++ javac mcs csc; do
  if PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v "$l" >/dev/null; then
    [[ -L /usr/lib/farm/$l && $(readlink -f /usr/lib/farm/$l) == /usr/bin/farm ]] ||
      fail "/usr/lib/farm/$l is not a link to farm though $l is installed"
  else
    [[ ! -e /usr/lib/farm/$l ]] || fail "/usr/lib/farm/$l exists, but this machine has no $l"
  fi
done
unit=$(dpkg -L farm | grep -E '/systemd/system/farmd\.service$') || fail "no farmd.service in the package"
grep -qx 'User=farmd' "$unit" && grep -qx 'Group=farm' "$unit" || fail "$unit does not run farmd as farmd:farm"
cmp -s /usr/share/farm/farm-dashboard.json packaging/grafana/farm-dashboard.json || fail "the Grafana dashboard is not /usr/share/farm/farm-dashboard.json"
[[ -f /usr/share/doc/farm/farm-setup.md ]] || fail "no /usr/share/doc/farm/farm-setup.md (the unit's Documentation=)"
dpkg-query -W -f='${Conffiles}\n' farm | grep -q '/etc/farm/farmd.toml' || fail "/etc/farm/farmd.toml is not a conffile"
if grep -Ev '^\s*(#|$)' /etc/farm/farmd.toml; then fail "/etc/farm/farmd.toml sets keys (every key must be commented)"; fi
for c in /usr/share/bash-completion/completions/farm /usr/share/zsh/vendor-completions/_farm /usr/share/fish/vendor_completions.d/farm.fish; do
  [[ -s $c ]] || fail "$c is missing or empty"
done
# bash completes farm's commands from the installed file.
words=$(bash -c 'source /usr/share/bash-completion/completions/farm; COMP_WORDS=(farm st); COMP_CWORD=1; COMP_LINE="farm st"; COMP_POINT=7; _farm farm st farm; echo "${COMPREPLY[*]}"')
[[ " $words " == *" stats "* && " $words " == *" status "* ]] || fail "bash completion of 'farm st' gave '$words'"
# In the launcher form the compiler's own completion takes over (bash-completion's gcc):
# gcc's options, and file names, where clap alone would offer farm's commands.
comp=$work/completion
mkdir "$comp"
touch "$comp/code.c" "$comp/core.h"
complete_line() {
  (cd "$comp" && bash -c 'source /usr/share/bash-completion/bash_completion; source /usr/share/bash-completion/completions/farm
    read -ra COMP_WORDS <<<"$1"; COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMP_LINE=$1; COMP_POINT=${#1}
    _farm_launcher farm "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"; echo "${COMPREPLY[*]}"' _ "$1")
}
words=$(complete_line "farm gcc -fno-omit-frame")
[[ " $words " == *" -fno-omit-frame-pointer "* ]] || fail "bash completion of 'farm gcc -fno-omit-frame' gave '$words' (not gcc's)"
words=$(complete_line "farm gcc -c co")
[[ " $words " == *" code.c "* && " $words " == *" core.h "* ]] || fail "bash completion of 'farm gcc -c co' gave '$words'"
for m in farm farm-stats farm-cache farm-status farm-cluster; do
  zcat "/usr/share/man/man1/$m.1.gz" 2>/dev/null | grep -q '^\.TH' || fail "no man page /usr/share/man/man1/$m.1.gz"
done
# The static shims need no shared library.
if ldd /usr/bin/farm-cc 2>&1 | grep -q '=>'; then fail "farm-cc is dynamically linked"; fi

step "user and group"
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd farmd)
(( uid < 1000 )) || fail "farmd is not a system user (uid $uid)"
[[ $(getent group farm | cut -d: -f3) == "$gid" ]] || fail "farmd's primary group is not farm"
[[ $home == /var/lib/farmd && $shell == /usr/sbin/nologin ]] || fail "farmd: home $home, shell $shell"
[[ $(stat -c '%U:%G %a' /etc/farm) == 'root:farm 750' ]] || fail "/etc/farm is $(stat -c '%U:%G %a' /etc/farm)"

step "the shipped configuration: farmd --check names what is missing"
if msg=$(/usr/bin/farmd --check /etc/farm/farmd.toml 2>&1); then fail "farmd --check accepts a configuration with nothing set"; fi
echo "$msg"
grep -q 'farmd.toml' <<<"$msg" || fail "farmd --check does not name the file"

step "certificates and a configuration"
/usr/bin/farm cluster init "$work/ca" --name pkgtest >/dev/null
/usr/bin/farm cluster issue node1 --ca "$work/ca" --out "$work/ca" >/dev/null
install -m 0644 "$work/ca/ca.crt" /etc/farm/ca.crt
install -m 0644 "$work/ca/node1.crt" /etc/farm/
install -m 0600 -o farmd -g farm "$work/ca/node1.key" /etc/farm/
port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Every commented key uncommented is a valid configuration: the file documents real keys.
sed -E 's/^#([a-z_]+ = )/\1/' /etc/farm/farmd.toml |
  sed -E "s|^listen = .*|listen = \"127.0.0.1:$port\"|; s|^advertise = .*|advertise = \"127.0.0.1:$port\"|;
          s|^peers = .*|peers = []|; s|^cert = .*|cert = \"node1.crt\"|; s|^key = .*|key = \"node1.key\"|;
          s|^name = .*|name = \"node1\"|; s|^http = .*|http = \"127.0.0.1:$port\"|" >"$work/all-keys.toml"
cp "$work/all-keys.toml" /etc/farm/all-keys.toml
/usr/bin/farmd --check /etc/farm/all-keys.toml || fail "farmd --check refuses the shipped file with every key uncommented"
rm /etc/farm/all-keys.toml
# The conffile as an administrator edits it: the required keys uncommented.
sed -i -E "s|^#listen = .*|listen = \"127.0.0.1:$port\"|; s|^#ca = |ca = |;
           s|^#cert = .*|cert = \"node1.crt\"|; s|^#key = .*|key = \"node1.key\"|;
           s|^#state_dir = |state_dir = |; s|^#http = .*|http = \"127.0.0.1:$port\"|" /etc/farm/farmd.toml
/usr/bin/farmd --check /etc/farm/farmd.toml
# Group farm (every build user) must not read the node's key: farmd refuses it then.
chmod 0640 /etc/farm/node1.key
/usr/bin/farmd --check /etc/farm/farmd.toml 2>"$work/check.err" && fail "farmd accepted a key group farm can read"
grep -q 'node1.key is readable by others' "$work/check.err" || fail "farmd --check on a group-readable key: $(cat "$work/check.err")"
chmod 0600 /etc/farm/node1.key

step "dpkg -i again (an upgrade in place): the edited conffile and the user stay"
dpkg -i "$deb" </dev/null
grep -qx "listen = \"127.0.0.1:$port\"" /etc/farm/farmd.toml || fail "reinstalling replaced the edited /etc/farm/farmd.toml"
[[ $(id -u farmd) == "$uid" ]] || fail "reinstalling changed farmd's uid"
[[ $(stat -c '%U:%G %a' /etc/farm) == 'root:farm 750' ]] || fail "/etc/farm is $(stat -c '%U:%G %a' /etc/farm) after reinstalling"

step "start farmd"
if [[ $systemd == 1 ]]; then
  systemctl daemon-reload
  systemctl start farmd
else
  echo "(systemd is not PID 1 here: farmd runs by hand as the unit's user and group)"
  # What the unit's RuntimeDirectory= and StateDirectory= would make.
  install -d -m 0755 -o farmd -g farm /run/farm
  install -d -m 0700 -o farmd -g farm /var/lib/farmd
  pre=$(sed -n 's/^ExecStartPre=//p' "$unit")
  start=$(sed -n 's/^ExecStart=//p' "$unit")
  setpriv --reuid farmd --regid farm --init-groups --no-new-privs $pre
  setpriv --reuid farmd --regid farm --init-groups --no-new-privs $start 2>"$work/farmd.log" &
  farmd_pid=$!
fi
for _ in $(seq 100); do [[ -S /run/farm/agent.sock ]] && break; sleep 0.1; done
[[ -S /run/farm/agent.sock ]] || { cat "$work/farmd.log" >&2 || true; fail "no agent socket /run/farm/agent.sock"; }
[[ $(stat -c '%U:%G' /run/farm/agent.sock) == farmd:farm ]] || fail "the agent socket is $(stat -c '%U:%G' /run/farm/agent.sock)"
pid=${farmd_pid:-$(systemctl show -p MainPID --value farmd)}
[[ $(ps -o user=,group= -p "$pid" | xargs) == 'farmd farm' ]] || fail "farmd does not run as farmd:farm ($(ps -o user=,group= -p "$pid"))"
curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null || fail "farmd's /healthz does not answer"
# The unit's hardening must leave bubblewrap what it needs, or the node silently runs no
# peer's job: its own /proc (no read-only /proc/sys) and netlink (the job's loopback).
grep -qx 'ProtectKernelTunables=yes' "$unit" && fail "$unit sets ProtectKernelTunables: bwrap cannot mount /proc in a user namespace"
if af=$(grep '^RestrictAddressFamilies=' "$unit"); then [[ $af == *AF_NETLINK* ]] || fail "$unit: $af leaves out AF_NETLINK (bwrap's loopback)"; fi
sleep 1
if [[ $systemd == 1 ]]; then journalctl -u farmd --no-pager >"$work/farmd.log" 2>/dev/null || true; fi
if grep -q 'no job sandbox' "$work/farmd.log"; then cat "$work/farmd.log" >&2; fail "farmd as the unit runs it has no job sandbox"; fi
/usr/bin/farm status | tee "$work/status"

step "a two-file C program through /usr/lib/farm"
mkdir -p "$work/src"
cat >"$work/src/main.c" <<'C'
#include <stdio.h>
int add(int, int);
int main(void) { printf("%d\n", add(40, 2)); return 0; }
C
cat >"$work/src/add.c" <<'C'
int add(int a, int b) { return a + b; }
C
cat >"$work/src/Makefile" <<'M'
prog: main.o add.o
	$(CC) -o $@ main.o add.o
%.o: %.c
	$(CC) -O2 -c $< -o $@
M
# A just-written input is not stored (input_too_new): date the sources back.
touch -d '1 hour ago' "$work/src/main.c" "$work/src/add.c" "$work/src/Makefile" "$work/src"
export FARM_DIR=$work/cache FARM_LOG=$work/farm.log
build() {
  rm -f "$work/src"/*.o "$work/src/prog"
  PATH=/usr/lib/farm:$PATH make -s -C "$work/src" CC=gcc
  [[ $("$work/src/prog") == 42 ]] || fail "the program built through farm is wrong"
}
[[ $(PATH=/usr/lib/farm:$PATH command -v gcc) == /usr/lib/farm/gcc ]] || fail "gcc on PATH is not the masquerade link"
# Each link finds the real compiler behind it (never itself) and passes --version through.
for n in cc c++ gcc g++ clang clang++; do
  [[ -e /usr/lib/farm/$n ]] || continue
  [[ $(PATH=/usr/lib/farm:$PATH $n --version 2>&1) == "$(/usr/bin/$n --version 2>&1)" ]] ||
    fail "/usr/lib/farm/$n --version is not /usr/bin/$n's"
done
stat() { /usr/bin/farm stats --json | python3 -c "import json, sys; s = json.load(sys.stdin); print($1)"; }
build
echo "first build: $(stat 's["misses"]') misses, farm: $(stat 's["farm"]')"
[[ $(stat 's["misses"]') == 2 ]] || fail "the first build did not miss on its 2 compiles"
# farmd's agent placed both (no peers: at home), so the shims did reach the daemon.
[[ $(stat 's["farm"]["home"].get("placed_home", 0)') == 2 ]] || fail "farmd's agent did not place the 2 misses"
build
echo "second build: $(stat 's["hits"]') "
[[ $(stat 's["hits"]["total"]') == 2 ]] || fail "the second build did not hit on its 2 compiles"
step "lua5.4 (Debian's source) through /usr/lib/farm, twice"
sources=${CARGO_TARGET_DIR:-$repo/target}/tmp/debian-sources
bash scripts/fetch-sources.sh "$sources" lua5.4
# -a keeps the sources' (and directories') old mtimes: see lua() below.
cp -a "$sources/lua5.4" "$work/lua"
# Without this pause the first compile (lapi.c), started a few ms after the copy, was
# never stored ("input modified during the compile": the copy's ctime), 4 runs of 4.
sleep 1
lua() {
  # Not before the first build: a directory changed (by `make clean`) within 10 ms of a
  # compile's start makes that compile's entry input_too_new (docs/cache-key.md).
  [[ ${1:-} != clean ]] || make -s -C "$work/lua/src" clean
  PATH=/usr/lib/farm:$PATH make -s -C "$work/lua/src" linux-noreadline >/dev/null 2>"$work/lua.log" || { cat "$work/lua.log" >&2; fail "lua did not build through farm"; }
  [[ $("$work/lua/src/lua" -e 'print(6 * 7)') == 42 ]] || fail "the lua built through farm is wrong"
}
/usr/bin/farm stats --zero >/dev/null
lua
n=$(stat 's["misses"]')
echo "first lua build: $n misses, not stored: $(stat 's["not_stored"]')"
(( n >= 30 )) || fail "the first lua build missed on $n compiles only"
/usr/bin/farm stats --zero >/dev/null
lua clean
echo "second lua build: $(stat 's["hits"]["total"]') hits, $(stat 's["misses"]') misses"
[[ $(stat 's["hits"]["total"]') == "$n" && $(stat 's["misses"]') == 0 ]] ||
  { grep -Ev "passthrough|hit=hit" "$work/farm.log" | tail -n 20 >&2; fail "the second lua build was not all hits"; }
curl -fsS "http://127.0.0.1:$port/metrics" >"$work/metrics"

step "stop farmd"
if [[ $systemd == 1 ]]; then systemctl stop farmd; else kill -TERM "$farmd_pid"; wait "$farmd_pid" || true; farmd_pid=; fi
rm -f /etc/farm/ca.crt /etc/farm/node1.crt /etc/farm/node1.key

step "dpkg -r"
dpkg -r farm
for f in /usr/bin/farm /usr/bin/farmd /usr/lib/farm /usr/share/farm; do
  [[ ! -e $f ]] || fail "$f is left after dpkg -r"
done
[[ -f /etc/farm/farmd.toml ]] || fail "dpkg -r removed the conffile (only purge may)"
getent passwd farmd >/dev/null || fail "dpkg -r removed the farmd user (only purge may)"

step "dpkg -P"
dpkg -P farm
getent passwd farmd >/dev/null || fail "purge removed the farmd user (its uid could go to another account)"
[[ $(getent shadow farmd | cut -d: -f2) == '!'* ]] || fail "the farmd account is not locked after purge"
drop_account
snapshot >"$work/after"
if ! diff "$work/before" "$work/after"; then fail "files differ before the install and after the purge (above)"; fi
echo "test-package: ok"
