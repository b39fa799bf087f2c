#!/usr/bin/env python3
"""The farm's benchmarks (scripts/bench-farm.sh runs this after building).

Not tests: each prints a table of medians and ratios from one run on this machine.
  overhead    one remote job on loopback vs the compile itself (and distcc's, ccache's
              and sccache's miss on the same TU); bytes on the wire per job
  throughput  jobs per second one farmd sustains
  failover    time from a peer dying (kill -9) to its job running elsewhere
  netem       lua5.4 with make -j8: plain, ccache, sccache, farm local-only and farm
              with three farmd whose peer paths have 20 ms RTT and 1 % loss
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
    logged = re.findall(r"compiled by a peer .*ms=(\d+) asked_at_us=(\d+) answered_at_us=(\d+)",
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


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    WORK.mkdir(parents=True, exist_ok=True)
    print(f"farm bench: {run([str(FARM), '--version']).stdout.decode().strip()}, "
          f"{os.cpu_count()} cores, {datetime.utcnow():%Y-%m-%d %H:%M} UTC")
    steps = {"overhead": overhead, "throughput": throughput, "failover": failover, "netem": netem}
    for name, fn in steps.items():
        if what in ("all", name):
            fn()


if __name__ == "__main__":
    main()
