#!/usr/bin/env python3
"""The farm's benchmarks (scripts/bench-farm.sh runs this after building).

Not tests: each prints a table of medians and ratios from one run on this machine.
  overhead    one remote job on loopback vs the compile itself (and distcc's, ccache's
              and sccache's miss on the same TU); bytes on the wire per job
  throughput  jobs per second one farmd sustains
  failover    time from a peer dying (kill -9) to its job running elsewhere
  netem       lua5.4 with make -j8: plain, ccache, sccache, farm local-only and farm
              with three farmd whose peer paths have 20 ms RTT and 1 % loss
  netns       (root) three farmd each in its own network namespace, 2 ms RTT
              (scripts/netns-farm.sh): netns-build (lua5.4 and taglib, -O2 -g, against
              plain gcc, farm without peers, distcc and icecc on the same namespaces)
              and netns-throughput (jobs/s one peer farmd sustains on tiny TUs, CPU
              spent at home per remote job, implied maximum speed-up)
"""
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("FARM_BIN_DIR", ROOT / "target" / "release"))
FARM = BIN / "farm"
WORK = Path(os.environ.get("BENCH_WORK", "/tmp/farm-bench"))
RUNS = int(os.environ.get("BENCH_RUNS", "15"))
LUA_FLAGS = ["-std=gnu99", "-O2", "-DLUA_COMPAT_5_3", "-DLUA_USE_LINUX"]


def run(cmd, env=None, cwd=None, check=True, quiet=True):
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run(cmd, env=e, cwd=cwd, stdout=subprocess.PIPE if quiet else None,
                       stderr=subprocess.PIPE if quiet else None)
    if check and r.returncode != 0:
        sys.exit(f"bench: {cmd} failed: {r.stderr.decode(errors='replace')[-2000:]}")
    return r


def timed(cmd, env=None, cwd=None):
    t0 = time.perf_counter()
    run(cmd, env=env, cwd=cwd)
    return (time.perf_counter() - t0) * 1000.0


def base_env(cache):
    # A private farm configuration for every measurement.
    return {"FARM_DIR": str(cache), "FARM_CONFIG": str(WORK / "no-config.toml"),
            "FARM_AGENT": "off", "FARM_LOG": "", "CCACHE_DIR": str(cache / "ccache")}


class Cluster:
    def __init__(self, name, n, delay=0, loss=0, local_slots=None, slots=None, same_host=True):
        self.dir = WORK / name
        shutil.rmtree(self.dir, ignore_errors=True)
        cmd = ["bash", str(ROOT / "scripts" / "farm-cluster.sh"), str(self.dir), str(n)]
        if delay or loss:
            cmd += ["--delay-ms", str(delay), "--loss-pct", str(loss)]
        if local_slots is not None:
            cmd += ["--local-slots", str(local_slots)]
        if slots is not None:
            cmd += ["--slots", str(slots)]
        if same_host:
            # These peers share this machine's CPUs; the benchmarks measure them anyway.
            cmd += ["--same-host-jobs"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=dict(os.environ, FARM_BIN_DIR=str(BIN)))
        ready = self.dir / "ready"
        for _ in range(300):
            if ready.exists():
                break
            if self.proc.poll() is not None:
                sys.exit(f"bench: cluster failed: {self.proc.stderr.read().decode()}")
            time.sleep(0.1)
        else:
            sys.exit("bench: cluster did not come up")
        self.agent = str(self.dir / "node-1" / "agent.sock")

    def status(self):
        r = run([str(FARM), "status", "--json"], env={"FARM_AGENT": self.agent})
        return json.loads(r.stdout)

    def pid(self, node):
        return int((self.dir / node / "pid").read_text())

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def table(title, header, rows):
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    sys.stdout.flush()


def lua_tree():
    src = WORK / "src"
    run(["bash", str(ROOT / "scripts" / "fetch-sources.sh"), str(src), "lua5.4"])
    return src / "lua5.4"


def fresh(path):
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# ------------------------------------------------------------------ overhead

def overhead():
    lua = lua_tree()
    tu = lua / "src" / "lapi.c"
    out = WORK / "ovh"
    fresh(out)
    cache = fresh(WORK / "ovh-cache")
    env = base_env(cache)
    inc = ["-I", str(lua / "src")]
    counter = [0]

    def args():
        counter[0] += 1
        # A new definition each run (in the code, not a macro a preprocessor-mode
        # cache could ignore): every run is a miss for every tool.
        f = out / f"run{counter[0]}.c"
        f.write_text(f'#include "{tu}"\nint farm_bench_run_{counter[0]};\n')
        return LUA_FLAGS + inc + ["-c", str(f), "-o", str(out / "o.o")]

    results = {}

    def measure(label, prefix, extra_env=None):
        e = dict(env)
        e.update(extra_env or {})
        run(prefix + ["gcc"] + args(), env=e)  # warm the page cache and memo files
        results[label] = [timed(prefix + ["gcc"] + args(), env=e) for _ in range(RUNS)]

    measure("plain gcc", [])
    results["gcc -E (preprocess only)"] = [
        timed(["gcc", "-E"] + LUA_FLAGS + inc + [str(tu), "-o", "/dev/null"])
        for i in range(RUNS)]
    measure("farm, no farmd (local miss)", [str(FARM)])
    measure("ccache miss", ["ccache"])
    if shutil.which("sccache"):
        sdir = fresh(WORK / "ovh-sccache")
        senv = {"SCCACHE_DIR": str(sdir), "SCCACHE_SERVER_PORT": "4299"}
        run(["sccache", "--start-server"], env=senv, check=False)
        measure("sccache miss", ["sccache"], senv)
        run(["sccache", "--stop-server"], env=senv, check=False)
    if shutil.which("distccd") and shutil.which("distcc"):
        port = 36329
        # distccd drops root privileges: its log must be writable by anyone.
        log = WORK / "distccd.log"
        log.touch()
        log.chmod(0o666)
        d = subprocess.Popen(["distccd", "--no-detach", "--daemon", "--allow", "127.0.0.1",
                              "--listen", "127.0.0.1", "--port", str(port), "--jobs", "2",
                              "--log-file", str(WORK / "distccd.log")])
        time.sleep(0.5)
        measure("distcc remote job (loopback)", ["distcc"],
                {"DISTCC_HOSTS": f"127.0.0.1:{port}/2", "DISTCC_FALLBACK": "0",
                 "DISTCC_DIR": str(fresh(WORK / "distcc-dir"))})
        d.terminate()
        d.wait()
    cl = Cluster("ovh-cluster", 2, local_slots=0)
    before = cl.status()
    jobs0 = sum(p["jobs_ok"] for p in before["peers"])
    b0 = sum(p["bytes_sent"] + p["bytes_received"] for p in before["peers"])
    shim_log = WORK / "ovh-shim.log"
    shim_log.unlink(missing_ok=True)
    measure("farm remote job (loopback)", [str(FARM)],
            {"FARM_AGENT": cl.agent, "FARM_LOG": str(shim_log)})
    # The worker's own compile time of each job, from the shim's log: wall time minus
    # that is what distribution added to the compile itself.
    logged = re.findall(r"compiled by a peer.* ms=(\d+) .*asked_at_us=(\d+) answered_at_us=(\d+)",
                        shim_log.read_text())[-RUNS:]
    remote_wall = results["farm remote job (loopback)"]
    added = [w - int(c) for w, (c, _, _) in zip(remote_wall, logged)]
    before_ask = [int(a) / 1000 for _, a, _ in logged]
    transport = [(int(b) - int(a)) / 1000 - int(c) for c, a, b in logged]
    finish = [w - int(b) / 1000 for w, (_, _, b) in zip(remote_wall, logged)]
    after = cl.status()
    jobs = sum(p["jobs_ok"] for p in after["peers"]) - jobs0
    wire = sum(p["bytes_sent"] + p["bytes_received"] for p in after["peers"]) - b0
    # Gossip over the same interval, measured idle, is subtracted.
    idle_s = sum(results["farm remote job (loopback)"]) / 1000.0 + 1.0
    s0 = cl.status()
    time.sleep(idle_s)
    s1 = cl.status()
    gossip = sum(p["bytes_sent"] + p["bytes_received"] for p in s1["peers"]) - \
        sum(p["bytes_sent"] + p["bytes_received"] for p in s0["peers"])
    cl.stop()
    pp = run(["gcc", "-E"] + LUA_FLAGS + inc + [str(tu)]).stdout
    run(["gcc"] + LUA_FLAGS + inc + ["-c", str(tu), "-o", str(out / "size.o")])
    obj = (out / "size.o").stat().st_size

    plain = statistics.median(results["plain gcc"])
    rows = []
    for label, xs in results.items():
        m = statistics.median(xs)
        rows.append([label, f"{m:.1f}", f"{m / plain:.2f}", f"{m - plain:+.1f}"])
    table(f"One job: lua5.4 lapi.c, {' '.join(LUA_FLAGS)}, median of {RUNS}, every run a miss",
          ["what", "ms", "× plain", "ms over plain"], rows)
    table("A remote job's cost over the compile itself (per run: shim wall time minus the "
          "worker's compile time)",
          ["median ms", "min ms", "max ms", "shim start → job sent (preprocess, keys)",
           "agent + QUIC + worker, beyond its compile", "answer → exit (write, record manifest)"],
          [[f"{statistics.median(added):.1f}", f"{min(added):.1f}", f"{max(added):.1f}",
            f"{statistics.median(before_ask):.1f}", f"{statistics.median(transport):.1f}",
            f"{statistics.median(finish):.1f}"]])
    per_job = (wire - gossip) / max(jobs, 1)
    table("Bytes on the wire per remote job (UDP payload, both directions, gossip subtracted)",
          ["jobs", "bytes/job", "preprocessed source", "object", "gossip over the run"],
          [[jobs, f"{per_job:,.0f}", f"{len(pp):,}", f"{obj:,}", f"{gossip:,}"]])


# ------------------------------------------------------------------ throughput

def throughput():
    n = int(os.environ.get("BENCH_JOBS", "120"))
    src = fresh(WORK / "tp-src")
    for i in range(n):
        (src / f"t{i}.c").write_text(
            f"int f{i}(int x) {{ int s = 0; for (int k = 0; k < x; k++) s += k * {i}; return s; }}\n")
    files = [f"t{i}.c" for i in range(n)]

    def batch(prefix, env, par):
        cmd = "printf '%s\\n' " + " ".join(files) + \
            f" | xargs -P {par} -I{{}} {' '.join(prefix)} gcc -O2 -c {{}} -o {{}}.o"
        t0 = time.perf_counter()
        run(["bash", "-c", cmd], env=env, cwd=src)
        return time.perf_counter() - t0

    rows = []
    for par in (2, 4):
        cache = fresh(WORK / "tp-cache")
        t = batch([], base_env(cache), par)
        rows.append([f"plain gcc, {par} at a time", f"{n / t:.1f}", "-"])
        cl = Cluster("tp-cluster", 2, local_slots=0)
        cache = fresh(WORK / "tp-cache")
        e = base_env(cache)
        e["FARM_AGENT"] = cl.agent
        t = batch([str(FARM)], e, par)
        served = sum(p["jobs_ok"] for p in cl.status()["peers"])
        cl.stop()
        rows.append([f"farm-cc → one farmd (2 slots), {par} at a time", f"{n / t:.1f}", served])
    table(f"Jobs per second one farmd sustains ({n} small TUs, same 2-core machine)",
          ["what", "jobs/s", "jobs the farmd ran"], rows)


# ------------------------------------------------------------------ failover

def failover():
    src = fresh(WORK / "fo-src")
    body = "".join(
        f"double g{i}(double *a, int n) {{ double s = 0; for (int k = 0; k < n; k++) "
        f"s += a[k] * {i}.5 / (a[(k * 7) % n] + {i}); return s; }}\n" for i in range(1500))
    (src / "slow.c").write_text(body)
    args = ["gcc", "-O2", "-c", "slow.c", "-o", "slow.o"]
    compile_ms = timed(args, cwd=src)
    rows = []
    for r in range(3):
        cl = Cluster(f"fo-cluster-{r}", 3, local_slots=0)
        cache = fresh(WORK / "fo-cache")
        e = base_env(cache)
        e["FARM_AGENT"] = cl.agent
        e["FARM_DIR"] = str(cache)
        t0 = time.perf_counter()
        p = subprocess.Popen([str(FARM)] + args[:-1] + [f"slow-{r}.o", f"-DRUN={r}"],
                             cwd=src, env=dict(os.environ, **e))
        victim = None
        while victim is None and p.poll() is None:
            for peer in cl.status()["peers"]:
                if peer["inflight"] > 0:
                    victim = peer["node"]
            time.sleep(0.01)
        if victim is None:
            sys.exit("bench: the job never reached a peer")
        time.sleep(0.3)
        os.kill(cl.pid(victim), signal.SIGKILL)
        t_kill = time.time()
        t_kill_rel = time.perf_counter() - t0
        p.wait()
        total = (time.perf_counter() - t0) * 1000.0
        log = (cl.dir / "node-1" / "farmd.log").read_text()
        detected = None
        for line in log.splitlines():
            if "remote job failed" in line:
                ts = re.match(r"(\S+Z)", line)
                if ts:
                    t = datetime.strptime(ts.group(1)[:26].rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f").timestamp() \
                        if "." in ts.group(1) else None
                    # tracing prints UTC; time.time() is UTC-based too.
                    from calendar import timegm
                    t = timegm(time.strptime(ts.group(1)[:19], "%Y-%m-%dT%H:%M:%S")) + \
                        float("0." + ts.group(1)[20:-1]) if "." in ts.group(1) else t
                    detected = t
        cl.stop()
        if p.returncode != 0:
            sys.exit("bench: the compile failed after a peer died")
        det_ms = (detected - t_kill) * 1000.0 if detected else float("nan")
        rows.append([r + 1, f"{t_kill_rel * 1000:.0f}", f"{det_ms:.0f}", f"{total:.0f}"])
    table(f"Peer killed (kill -9) while compiling a {compile_ms:.0f} ms TU: kill to retry on "
          f"another peer", ["round", "kill at (ms)", "kill → job resent (ms)", "compile total (ms)"],
          rows)


# ------------------------------------------------------------------ netem build

def netem():
    lua = lua_tree()
    reps = int(os.environ.get("BENCH_REPS", "3"))
    delay = float(os.environ.get("BENCH_DELAY_MS", "10"))
    loss = float(os.environ.get("BENCH_LOSS_PCT", "1"))
    tree = WORK / "netem-lua"

    def build(prefix, env):
        shutil.rmtree(tree, ignore_errors=True)
        shutil.copytree(lua, tree, symlinks=True)
        time.sleep(0.05)
        cc = " ".join(prefix + ["gcc", "-std=gnu99"])
        t0 = time.perf_counter()
        run(["make", "-C", str(tree / "src"), "-j8", "linux", f"CC={cc}"], env=env)
        return time.perf_counter() - t0

    results = {}
    # Placement by measurement alone (peers on this machine are used), and farmd's
    # default, which sends no jobs to peers that share this machine's CPUs.
    cl = Cluster("netem-cluster", 3, delay=delay, loss=loss)
    cl0 = Cluster("loop-cluster", 3)
    cld = Cluster("netem-default", 3, delay=delay, loss=loss, same_host=False)
    sdir = WORK / "netem-sccache"
    senv = {"SCCACHE_DIR": str(sdir), "SCCACHE_SERVER_PORT": "4298"}
    kinds = [("plain gcc", [], {}),
             ("ccache (cold)", ["ccache"], {}),
             ("sccache (cold)", ["sccache"], senv),
             ("farm, no farmd", [str(FARM)], {}),
             ("farm + 3 farmd, loopback", [str(FARM)], {"FARM_AGENT": cl0.agent}),
             (f"farm + 3 farmd, {2 * delay:g} ms RTT, {loss:g} % loss", [str(FARM)],
              {"FARM_AGENT": cl.agent}),
             (f"farm + 3 farmd, {2 * delay:g} ms RTT, {loss:g} % loss, same-host peers get no jobs (default)",
              [str(FARM)], {"FARM_AGENT": cld.agent})]
    if not shutil.which("sccache"):
        kinds = [k for k in kinds if not k[0].startswith("sccache")]
    placed = {}
    import random
    order = random.Random(1)
    for _ in range(reps):
        # A new order each repetition: no tool always runs after the same one.
        kinds = order.sample(kinds, len(kinds))
        for label, prefix, extra in kinds:
            cache = fresh(WORK / "netem-cache")
            for c in (cl, cl0, cld):
                for node in c.dir.glob("node-*/state/store"):
                    shutil.rmtree(node, ignore_errors=True)
            e = base_env(cache)
            e.update(extra)
            if label.startswith("sccache"):
                fresh(sdir)
                run(["sccache", "--start-server"], env=e, check=False)
            results.setdefault(label, []).append(build(prefix, e))
            if label.startswith("sccache"):
                run(["sccache", "--stop-server"], env=e, check=False)
            if "FARM_AGENT" in extra:
                s = json.loads(run([str(FARM), "stats", "--json"], env=e).stdout)
                placed.setdefault(label, []).append(
                    (s["farm"]["remote"], sum(s["farm"]["home"].values()),
                     ", ".join(f"{k} {v}" for k, v in sorted(s["farm"]["home"].items()))))
    cl.stop()
    cl0.stop()
    cld.stop()
    plain = statistics.median(results["plain gcc"])
    rows = []
    for label, xs in results.items():
        m = statistics.median(xs)
        where = ""
        if label in placed:
            r, h, why = placed[label][-1]
            where = f"{r} on peers, {h} at home ({why})"
        rows.append([label, f"{m:.2f}", f"{m / plain:.2f}", " ".join(f"{x:.2f}" for x in xs), where])
    table(f"lua5.4, make -j8, cold (empty caches), median of {reps}; peers on this machine",
          ["what", "s", "× plain", "every run (s)", "placement (last run)"], rows)

# ------------------------------------------------------------------ network namespaces

class NetnsFarm:
    """scripts/netns-farm.sh: n farmd, each in its own network namespace, `rtt` ms apart.
    node-1 (namespace 0) is the client's home; builds run there (`client`)."""

    def __init__(self, name, n, rtt=2.0, local_slots=None, slots=None):
        self.dir = WORK / name
        # A `ready` left by an earlier run must not pass for this one's.
        shutil.rmtree(self.dir, ignore_errors=True)
        cmd = ["bash", str(ROOT / "scripts" / "netns-farm.sh"), str(self.dir), str(n),
               "--rtt-ms", str(rtt)]
        if local_slots is not None:
            cmd += ["--local-slots", str(local_slots)]
        if slots is not None:
            cmd += ["--slots", str(slots)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=dict(os.environ, FARM_BIN_DIR=str(BIN)))
        ready = self.dir / "ready"
        for _ in range(600):
            if ready.exists():
                break
            if self.proc.poll() is not None:
                sys.exit(f"bench: netns farm failed: {self.proc.stderr.read().decode()}")
            time.sleep(0.1)
        else:
            self.stop()
            sys.exit("bench: netns farm did not come up")
        self.env = {}
        for line in (self.dir / "env").read_text().splitlines():
            k, _, v = line.partition("=")
            self.env[k] = v.strip('"')
        self.agent = self.env["FARM_AGENT"]
        self.nodes = self.env["NETNS_NODES"].split()
        self.ips = self.env["NETNS_IPS"].split()
        self.delay = self.env["NETNS_DELAY"]
        self.rtt_ms = float(self.env.get("NETNS_RTT_MS") or "nan")
        self.started = []

    def ns(self, i, cmd):
        return ["ip", "netns", "exec", self.nodes[i]] + cmd

    def client(self, cmd):
        return self.ns(0, cmd)

    def status(self):
        return json.loads(run([str(FARM), "status", "--json"], env={"FARM_AGENT": self.agent}).stdout)

    def pid(self, node):
        return int((self.dir / node / "pid").read_text())

    def spawn(self, i, cmd, env=None, log=None):
        """A daemon in namespace i, stopped with the farm."""
        out = open(log, "ab") if log else subprocess.DEVNULL
        p = subprocess.Popen(self.ns(i, cmd), env=dict(os.environ, **(env or {})),
                             stdout=out, stderr=out)
        self.started.append(p)
        return p

    def stop_daemons(self):
        for p in self.started:
            p.terminate()
        for p in self.started:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.started = []

    def clear_stores(self):
        for node in self.dir.glob("node-*/state/store"):
            shutil.rmtree(node, ignore_errors=True)

    def stop(self):
        self.stop_daemons()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def proc_cpu_s(pid, children=False):
    """user+sys seconds of a live process (and its waited-for children)."""
    f = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14-17 of proc(5), counted from the state field (index 0 here = field 3).
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def run_rusage(cmd, env=None, cwd=None):
    """Runs cmd; returns (wall s, user+sys s of it and every descendant it waited for)."""
    e = dict(os.environ)
    e.update(env or {})
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=e, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"bench: {cmd} failed: {err.decode(errors='replace')[-2000:]}")
    return wall, ru.ru_utime + ru.ru_stime


class Distcc:
    """distccd on every peer namespace; the client in namespace 0 sends only to them."""

    def __init__(self, farm, slots=2):
        self.farm = farm
        self.logs = []
        hosts = []
        for i in range(1, len(farm.nodes)):
            log = WORK / f"distccd-{i}.log"
            log.unlink(missing_ok=True)
            log.touch()
            # distccd drops root privileges: its log must be writable by anyone.
            log.chmod(0o666)
            self.logs.append(log)
            farm.spawn(i, ["distccd", "--no-detach", "--daemon", "--allow", "10.213.0.0/24",
                           "--listen", farm.ips[i], "--port", "3632", "--jobs", str(slots),
                           "--log-file", str(log), "--log-level=info"])
            hosts.append(f"{farm.ips[i]}:3632/{slots}")
        time.sleep(1.0)
        self.env = {"DISTCC_HOSTS": " ".join(hosts), "DISTCC_FALLBACK": "0",
                    "DISTCC_DIR": str(fresh(WORK / "distcc-dir"))}

    def jobs(self):
        return sum(l.read_text(errors="replace").count("COMPILE_OK") for l in self.logs)


class Icecc:
    """icecc-scheduler in namespace 0 and iceccd in every namespace (broadcasts stay in
    the private subnet); each iceccd has its own unix socket (ICECC_TEST_SOCKET)."""

    def __init__(self, farm, slots=2):
        self.farm = farm
        d = fresh(WORK / "icecc")
        d.chmod(0o1777)
        farm.spawn(0, ["icecc-scheduler", "-p", "8765", "-n", "farmbench",
                       "-l", str(d / "scheduler.log"), "-v"])
        time.sleep(0.5)
        self.logs = []
        for i in range(len(farm.nodes)):
            envs = d / f"envs-{i}"
            log = d / f"iceccd-{i}.log"
            self.logs.append(log)
            # The client's own daemon takes no jobs: like the farm's home and distcc's
            # host list, only the peers compile.
            maxp = "0" if i == 0 else str(slots)
            farm.spawn(i, ["iceccd", "-s", f"{farm.ips[0]}:8765", "-n", "farmbench", "-m", maxp,
                           "-b", str(envs), "-l", str(log), "-N", f"icecc-{i}", "-vvv"],
                       env={"ICECC_TEST_SOCKET": str(d / f"iceccd-{i}.sock")})
        self.env = {"ICECC_TEST_SOCKET": str(d / "iceccd-0.sock")}
        for _ in range(300):
            if all(l.exists() and "Connected to scheduler" in l.read_text(errors="replace")
                   for l in self.logs):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"iceccd did not connect to the scheduler (see {d})")
        # The first use packs the compiler environment (~20 s): not part of a build.
        w = fresh(WORK / "icecc-warm")
        (w / "w.c").write_text("int x(void){return 1;}\n")
        (w / "w.cpp").write_text("int x(){return 1;}\n")
        # Every spelling a build uses (CMake names the compiler by absolute path).
        for cc, f in (("gcc", "w.c"), ("g++", "w.cpp"), ("c++", "w.cpp"), ("/usr/bin/cc", "w.c"),
                      ("/usr/bin/gcc", "w.c"), ("/usr/bin/c++", "w.cpp"), ("/usr/bin/g++", "w.cpp")):
            run(farm.client(["icecc", cc, "-c", f, "-o", "w.o"]), env=self.env, cwd=w, check=False)

    def jobs(self):
        # Jobs each peer's daemon ran for others.
        return sum(l.read_text(errors="replace").count("Remote compilation completed with exit code 0")
                   for l in self.logs[1:] if l.exists())


def taglib_tree():
    src = WORK / "src"
    run(["bash", str(ROOT / "scripts" / "fetch-sources.sh"), str(src), "taglib"])
    return src / "taglib"


def netns_build():
    reps = int(os.environ.get("BENCH_REPS", "1"))
    rtt = float(os.environ.get("BENCH_RTT_MS", "2"))
    tus = int(os.environ.get("BENCH_TUS", "0"))  # taglib: only the first N objects (0: all)
    projects = [p for p in os.environ.get("BENCH_PROJECTS", "lua,taglib").split(",") if p]
    flags = "-O2 -g"
    farm = NetnsFarm("netns-farm", 3, rtt=rtt, local_slots=0)
    tools = {}
    try:
        tools["distcc"] = Distcc(farm) if shutil.which("distccd") else None
    except Exception as e:  # a tool that cannot run here is reported, not fatal
        print(f"bench: distcc skipped: {e}")
    try:
        tools["icecc"] = Icecc(farm) if shutil.which("iceccd") else None
    except Exception as e:
        print(f"bench: icecc skipped: {e}")
    kinds = [("plain gcc -j2", None, 2, {}),
             ("farm, no farmd, -j2", str(FARM), 2, {"FARM_AGENT": "off"}),
             ("farm + 3 farmd in namespaces (home 0 slots), -j8", str(FARM), 8,
              {"FARM_AGENT": farm.agent})]
    if tools.get("distcc"):
        kinds.append(("distcc → 2 peer namespaces, -j8", "distcc", 8, tools["distcc"].env))
    if tools.get("icecc"):
        kinds.append(("icecc → 2 peer namespaces, -j8", "icecc", 8, tools["icecc"].env))

    def build(project, launcher, jobs, env):
        """One cold build in the client's namespace: (wall s, CPU s at home)."""
        if project == "lua":
            tree = WORK / "nb-lua"
            shutil.rmtree(tree, ignore_errors=True)
            shutil.copytree(lua_tree(), tree, symlinks=True)
            time.sleep(0.05)
            cc = " ".join(([launcher] if launcher else []) + ["gcc", "-std=gnu99"])
            # lua's Makefile already says -O2.
            return run_rusage(farm.client(["make", "-C", str(tree / "src"), f"-j{jobs}", "linux",
                                           f"CC={cc}", "MYCFLAGS=-g"]), env=env)
        tree = WORK / "nb-taglib"
        shutil.rmtree(tree, ignore_errors=True)
        conf = ["cmake", "-G", "Ninja", "-S", str(taglib_tree()), "-B", str(tree),
                "-DCMAKE_BUILD_TYPE=None", f"-DCMAKE_CXX_FLAGS={flags}", f"-DCMAKE_C_FLAGS={flags}",
                "-DBUILD_TESTING=OFF"]
        if launcher:
            conf += [f"-DCMAKE_CXX_COMPILER_LAUNCHER={launcher}",
                     f"-DCMAKE_C_COMPILER_LAUNCHER={launcher}"]
        run(farm.client(conf), env=env)
        targets = ["all"]
        if tus:
            listed = run(["ninja", "-C", str(tree), "-t", "targets", "all"]).stdout.decode()
            targets = [l.split(":")[0] for l in listed.splitlines() if l.split(":")[0].endswith(".o")][:tus]
        return run_rusage(farm.client(["ninja", "-C", str(tree), f"-j{jobs}"] + targets), env=env)

    rows = {}
    try:
        for project in projects:
            for r in range(reps):
                for label, launcher, jobs, extra in kinds:
                    cache = fresh(WORK / "nb-cache")
                    farm.clear_stores()
                    e = base_env(cache)
                    e.update(extra)
                    tool = tools.get(label.split(" ")[0])
                    before = tool.jobs() if tool else 0
                    wall, cpu = build(project, launcher, jobs, e)
                    where = ""
                    if launcher == str(FARM) and extra.get("FARM_AGENT") != "off":
                        s = json.loads(run([str(FARM), "stats", "--json"], env=e).stdout)
                        home = ", ".join(f"{k} {v}" for k, v in sorted(s["farm"]["home"].items()))
                        where = f"{s['farm']['remote']} on peers; at home: {home or 'none'}"
                    elif tool:
                        where = f"{tool.jobs() - before} on peers"
                    rows.setdefault((project, label), []).append((wall, cpu, where))
    finally:
        farm.stop()
    for project in projects:
        plain = statistics.median(w for w, _, _ in rows[(project, kinds[0][0])])
        out = []
        for label, *_ in kinds:
            xs = rows[(project, label)]
            m = statistics.median(w for w, _, _ in xs)
            out.append([label, f"{m:.2f}", f"{m / plain:.2f}",
                        f"{statistics.median(c for _, c, _ in xs):.1f}", xs[-1][2]])
        size = f", first {tus} objects" if project == "taglib" and tus else ""
        table(f"{project}{size}, {flags}, cold, median of {reps}; 3 namespaces, {farm.delay} delay, "
              f"measured RTT {farm.rtt_ms:.2f} ms; every namespace shares this machine's "
              f"{os.cpu_count()} cores",
              ["what", "s", "× plain", "CPU s in the client's process tree", "jobs placed"], out)


def netns_throughput():
    n = int(os.environ.get("BENCH_JOBS", "200"))
    rtt = float(os.environ.get("BENCH_RTT_MS", "2"))
    src = fresh(WORK / "ntp-src")
    for i in range(n):
        (src / f"t{i}.c").write_text(f"int f{i}(int x) {{ return x * {i} + 1; }}\n")
    (src / "Makefile").write_text(
        "SRCS := $(wildcard t*.c)\nall: $(SRCS:.c=.o)\n%.o: %.c\n\t$(CC) -O2 -c $< -o $@\n")

    def clean():
        for o in src.glob("*.o"):
            o.unlink()

    # One home node with no slots and one peer farmd with this machine's slots.
    farm = NetnsFarm("ntp-farm", 2, rtt=rtt, local_slots=0, slots=os.cpu_count())
    try:
        clean()
        plain_wall, plain_cpu = run_rusage(farm.client(["make", "-j8", "CC=gcc"]), cwd=src)
        clean()
        cache = fresh(WORK / "ntp-cache")
        e = base_env(cache)
        e["FARM_AGENT"] = farm.agent
        home_pid, peer_pid = farm.pid("node-1"), farm.pid("node-2")
        home0, peer0 = proc_cpu_s(home_pid), proc_cpu_s(peer_pid, children=True)
        farm_wall, shim_cpu = run_rusage(farm.client(["make", "-j8", f"CC={FARM} gcc"]), env=e, cwd=src)
        home_farmd = proc_cpu_s(home_pid) - home0
        peer_cpu = proc_cpu_s(peer_pid, children=True) - peer0
        s = json.loads(run([str(FARM), "stats", "--json"], env=e).stdout)
        remote = s["farm"]["remote"]
        at_home = sum(s["farm"]["home"].values())
        why_home = ", ".join(f"{k} {v}" for k, v in sorted(s["farm"]["home"].items()))
    finally:
        farm.stop()
    compile_per_job = plain_cpu / n * 1000
    # TUs placement kept home (peer busy, no peer) were compiled in the shims' process
    # tree: their compile, at plain gcc's CPU per job, is not a remote job's cost.
    home_per_job = (shim_cpu + home_farmd - at_home * plain_cpu / n) / max(remote, 1) * 1000
    table(f"Jobs per second one farmd sustains: {n} one-line TUs, make -j8, home has no slots, "
          f"one peer farmd with {os.cpu_count()} slots in another namespace ({farm.delay} delay, "
          f"RTT {farm.rtt_ms:.2f} ms); same {os.cpu_count()} cores for both",
          ["what", "jobs/s", "× plain", "wall s", "remote / at home"],
          [["plain gcc, make -j8", f"{n / plain_wall:.1f}", "1.00", f"{plain_wall:.2f}", "-"],
           ["farm-cc → one peer farmd", f"{n / farm_wall:.1f}", f"{plain_wall / farm_wall:.2f}",
            f"{farm_wall:.2f}", f"{remote} / {at_home} ({why_home or '-'})"]])
    ratio = compile_per_job / home_per_job if home_per_job else float("inf")
    table("CPU per job (user+sys, ms)",
          ["compile (plain gcc, whole make tree / jobs)", "home per remote job (shims + their "
           "children + make + home farmd, TUs kept home subtracted)", "of which home farmd", "peer farmd + its compilers per job",
           "compile / home"],
          [[f"{compile_per_job:.1f}", f"{home_per_job:.1f}",
            f"{home_farmd / max(remote, 1) * 1000:.1f}", f"{peer_cpu / max(remote, 1) * 1000:.1f}",
            f"{ratio:.2f}"]])
    table("Implied maximum speed-up of one client over a local build, peers as fast as home "
          "(= compile CPU per job / home CPU per job, capped by the peers)",
          ["peers", "max speed-up", "bound by"],
          [[p, f"{min(p, ratio):.2f}", "peers" if p <= ratio else "home CPU"] for p in (8, 16, 32)])


def netns():
    netns_build()
    netns_throughput()


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    WORK.mkdir(parents=True, exist_ok=True)
    print(f"farm bench: {run([str(FARM), '--version']).stdout.decode().strip()}, "
          f"{os.cpu_count()} cores, {datetime.utcnow():%Y-%m-%d %H:%M} UTC")
    steps = {"overhead": overhead, "throughput": throughput, "failover": failover, "netem": netem,
             "netns-build": netns_build, "netns-throughput": netns_throughput}
    if what == "netns":
        netns()
        return
    for name, fn in steps.items():
        # The namespace benchmarks need root and run only when asked for.
        if what == name or (what == "all" and not name.startswith("netns")):
            fn()


if __name__ == "__main__":
    main()
