#!/usr/bin/env python3
"""Benchmarks of the declared-input compilers: farm-javac (scripts/bench-javac.sh) and
farm-csc (scripts/bench-csc.sh) run this after building.

Not a test: it prints medians and ratios from one run on this machine. javac runs on
commons-io's 180 main sources from Debian (src/main/java, --release 8), called the way
Gradle calls javac (one argfile, absolute paths); C# on dbus-sharp from Debian (42
files), called the way xbuild calls the compiler.

  javac   plain javac; farm-javac miss with a fresh javac (no farmd); miss in farmd's
          warm JVM (right after it started, and steady, after BENCH_WARMUP misses); miss
          on a peer's warm JVM (two farmd on loopback); local hit; hit from the farm's
          cache
  gradle  the same sources as a Gradle 4.4.1 project: plain, Gradle's own build cache
          (--build-cache, a clean build), and farm through `farm gradle-init` (a
          clean build), without and with a farmd (warm JVM for misses); each with its
          own warm Gradle daemon; then one edited file (an incremental compile)
  csc     plain mcs; farm-csc miss (a fresh mcs), hit, and miss on a peer (two farmd
          on loopback), with the arguments xbuild passes for dbus-sharp; then whole
          xbuild runs: plain, farm cold, farm warm (a clean tree, all hits)
Every miss edits one source first (a comment), so nothing is a hit by accident.
"""
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("FARM_BIN_DIR", ROOT / "target" / "release"))
WORK = Path(os.environ.get("BENCH_WORK", "/tmp/farm-bench-javac"))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
# Misses run, unmeasured, before the steady-state measurements of a warm JVM.
WARMUP = int(os.environ.get("BENCH_WARMUP", "8"))
SOURCES = ROOT / "target" / "tmp" / "debian-sources"
SRC = SOURCES / "commons-io"


def run(cmd, env=None, cwd=None):
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run(cmd, env=e, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0:
        sys.exit(f"bench: {cmd} failed: {r.stderr.decode(errors='replace')[-2000:]}")
    return r


def timed(cmd, env=None, cwd=None):
    t0 = time.perf_counter()
    run(cmd, env=env, cwd=cwd)
    return time.perf_counter() - t0


class Tree:
    """A copy of commons-io and the argfile Gradle would write for it."""

    def __init__(self, name):
        self.dir = WORK / name
        shutil.rmtree(self.dir, ignore_errors=True)
        shutil.copytree(SRC, self.dir)
        self.sources = sorted(str(p) for p in (self.dir / "src/main/java").rglob("*.java"))
        self.edits = 0

    def argfile(self, out):
        p = self.dir / f"{out}.args"
        lines = ["--release", "8", "-d", str(self.dir / out), "-g", "-sourcepath", '""',
                 "-proc:none", "-classpath", "/usr/share/java/junit4.jar"] + self.sources
        p.write_text("\n".join(lines) + "\n")
        return f"@{p}"

    def edit(self):
        # A comment at the end: a new key (never seen by any earlier run), the same
        # classes.
        self.edits += 1
        with open(self.sources[0], "a") as f:
            f.write(f"// bench edit {self.edits} {time.time_ns()}\n")
        time.sleep(0.03)


def farm_env(cache, agent="off"):
    return {"FARM_DIR": str(cache), "FARM_CONFIG": str(WORK / "no-config.toml"),
            "FARM_AGENT": str(agent), "FARM_LOG": ""}


def start_cluster(name, n, local_slots=None):
    d = WORK / name
    cmd = ["bash", str(ROOT / "scripts/farm-cluster.sh"), str(d), str(n), "--same-host-jobs"]
    if local_slots is not None:
        cmd += ["--local-slots", str(local_slots)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=dict(os.environ, FARM_BIN_DIR=str(BIN)))
    for _ in range(300):
        if (d / "ready").exists():
            return p, d / "node-1" / "agent.sock"
        time.sleep(0.1)
    p.kill()
    sys.exit(f"bench: {name} did not start")


def med(xs):
    return statistics.median(xs)


def row(label, xs, plain):
    m = med(xs)
    runs = " ".join(f"{x:.2f}" for x in xs)
    print(f"| {label} | {m:.2f} | {m / plain:.3f} | {runs} |")


def bench_javac():
    t = Tree("javac")
    fj = str(BIN / "farm-javac")
    out = {}
    out["plain"] = []
    for _ in range(RUNS):
        t.edit()
        shutil.rmtree(t.dir / "plain", ignore_errors=True)
        out["plain"].append(timed(["javac", t.argfile("plain")], cwd=t.dir))
    # A fresh javac per miss, no farmd.
    cache = WORK / "cache-fresh"
    out["miss, fresh javac (no farmd)"] = []
    for _ in range(RUNS):
        t.edit()
        out["miss, fresh javac (no farmd)"].append(
            timed([fj, t.argfile("farm")], env=farm_env(cache), cwd=t.dir))
    out["hit (local cache)"] = []
    for _ in range(RUNS):
        shutil.rmtree(t.dir / "farm", ignore_errors=True)
        out["hit (local cache)"].append(timed([fj, t.argfile("farm")], env=farm_env(cache),
                                             cwd=t.dir))
    # farmd's warm JVM on this machine.
    proc, sock = start_cluster("one-farmd", 1)
    try:
        cache = WORK / "cache-warm"
        t.edit()
        first = timed([fj, t.argfile("farm")], env=farm_env(cache, sock), cwd=t.dir)
        # The JIT keeps improving javac over the first compiles: the misses right
        # after the first, then (after WARMUP more) the steady state.
        for key in ["miss, farmd's warm JVM, compiles 2-6", "miss, farmd's warm JVM, steady"]:
            if "steady" in key:
                for _ in range(WARMUP):
                    t.edit()
                    run([fj, t.argfile("farm")], env=farm_env(cache, sock), cwd=t.dir)
            out[key] = []
            for _ in range(RUNS):
                t.edit()
                out[key].append(
                    timed([fj, t.argfile("farm")], env=farm_env(cache, sock), cwd=t.dir))
        # The farm's cache answers a machine with an empty local cache.
        key2 = "hit from the farm's cache (empty local cache)"
        out[key2] = []
        for i in range(RUNS):
            c = WORK / f"cache-farmhit-{i}"
            shutil.rmtree(c, ignore_errors=True)
            # The JDK's identity is memoized per cache directory: bring the memo along.
            c.mkdir(parents=True)
            shutil.copytree(cache / "memo", c / "memo")
            out[key2].append(timed([fj, t.argfile("farm")], env=farm_env(c, sock), cwd=t.dir))
    finally:
        proc.terminate()
        proc.wait()
    # Two farmd: home offers no CPUs of its own, so each miss runs on the peer.
    proc, sock = start_cluster("two-farmd", 2, local_slots=0)
    try:
        cache = WORK / "cache-remote"
        t.edit()
        first_remote = timed([fj, t.argfile("farm")], env=farm_env(cache, sock), cwd=t.dir)
        for _ in range(WARMUP):
            t.edit()
            run([fj, t.argfile("farm")], env=farm_env(cache, sock), cwd=t.dir)
        key = "miss, a peer's warm JVM (loopback), steady"
        out[key] = []
        for _ in range(RUNS):
            t.edit()
            out[key].append(timed([fj, t.argfile("farm")], env=farm_env(cache, sock), cwd=t.dir))
    finally:
        proc.terminate()
        proc.wait()
    plain = med(out["plain"])
    print(f"\n### javac on commons-io ({len(t.sources)} sources), median of {RUNS}, seconds\n")
    print("| how | median s | × plain javac | runs |")
    print("|---|---|---|---|")
    for k, xs in out.items():
        row(k, xs, plain)
    print(f"\nfirst miss after farmd started (JVM start and helper build): {first:.2f} s; "
          f"first remote miss (blobs shipped, peer JVM start): {first_remote:.2f} s; "
          f"steady = after {WARMUP} unmeasured misses")


def gradle_tree(name):
    t = Tree(name)
    (t.dir / "settings.gradle").write_text("rootProject.name = 'commons-io'\n")
    (t.dir / "build.gradle").write_text(
        "apply plugin: 'java'\nsourceCompatibility = '1.8'\ntargetCompatibility = '1.8'\n"
        "sourceSets { main { java { srcDirs = ['src/main/java'] } } }\n"
        "tasks.withType(JavaCompile) { options.encoding = 'UTF-8' }\n")
    return t


def bench_gradle():
    fj_farm = BIN / "farm"
    setups = {}
    cluster = None
    for name in ["plain", "gradle build cache", "farm", "farm + farmd"]:
        home = WORK / f"gradle-home-{name.replace(' ', '-')}"
        shutil.rmtree(home, ignore_errors=True)
        env = {"GRADLE_USER_HOME": str(home)}
        extra = []
        if name.startswith("farm"):
            run([str(fj_farm), "gradle-init", "--install"], env=env)
            agent = "off"
            if name == "farm + farmd":
                cluster, agent = start_cluster("gradle-farmd", 1)
            env.update(farm_env(WORK / f"cache-{name.replace(' ', '')}", agent))
            env["FARM_GRADLE"] = "1"
        if name == "gradle build cache":
            extra = ["--build-cache"]
        setups[name] = (env, extra, gradle_tree(f"gradle-{name.replace(' ', '-')}"))
    res = {}
    for name, (env, extra, t) in setups.items():
        cmd = ["gradle", "--offline", "-q"] + extra + ["compileJava"]
        # A daemon per setup, started with its environment (Gradle 4.4.1 cannot
        # change a running daemon's environment).
        run(["gradle", "--stop"], env=env, cwd=t.dir)
        cold = timed(cmd, env=env, cwd=t.dir)
        clean = []
        for _ in range(RUNS):
            shutil.rmtree(t.dir / "build", ignore_errors=True)
            clean.append(timed(cmd, env=env, cwd=t.dir))
        incr = []
        for _ in range(RUNS):
            t.edit()
            incr.append(timed(cmd, env=env, cwd=t.dir))
        run(["gradle", "--stop"], env=env, cwd=t.dir)
        res[name] = (cold, clean, incr)
    if cluster:
        cluster.terminate()
        cluster.wait()
    plain_clean = med(res["plain"][1])
    print(f"\n### Gradle 4.4.1, commons-io main, warm daemon, median of {RUNS}, seconds\n")
    print("| setup | first build | clean build | × plain clean | one file edited | clean runs |")
    print("|---|---|---|---|---|---|")
    for name, (cold, clean, incr) in res.items():
        print(f"| {name} | {cold:.2f} | {med(clean):.2f} | {med(clean) / plain_clean:.3f} | "
              f"{med(incr):.2f} | {' '.join(f'{x:.2f}' for x in clean)} |")


def bench_csc():
    tree = WORK / "dbus-sharp"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(SOURCES / "dbus-sharp", tree)
    src = tree / "src"
    # The arguments xbuild passes: capture its response file once.
    grab = WORK / "grab"
    grab.mkdir(parents=True, exist_ok=True)
    (grab / "grab-csc").write_text(
        "#!/bin/sh\nfor a in \"$@\"; do case $a in @*) cp \"${a#@}\" %s/xbuild.rsp;; esac; done\n"
        "exec mcs \"$@\"\n" % WORK)
    (grab / "grab-csc").chmod(0o755)
    run(["xbuild", f"/p:CscToolPath={grab}", "/p:CscToolExe=grab-csc", "dbus-sharp.csproj"], cwd=src)
    rsp = (WORK / "xbuild.rsp").read_text()
    first_source = next(t for t in rsp.split() if t.endswith(".cs"))
    edits = [0]

    def edit():
        edits[0] += 1
        with open(src / first_source, "a") as f:
            f.write(f"// bench edit {edits[0]} {time.time_ns()}\n")
        time.sleep(0.03)

    (src / "obj/Debug").mkdir(parents=True, exist_ok=True)
    (src / "bench.rsp").write_text(rsp)
    call = ["/noconfig", "@bench.rsp"]
    fc = str(BIN / "farm-csc")
    out = {"plain mcs": [], "miss (a fresh mcs)": [], "hit (local cache)": []}
    cache = WORK / "cache-csc"
    for _ in range(RUNS):
        edit()
        out["plain mcs"].append(timed(["mcs"] + call, cwd=src))
    for _ in range(RUNS):
        edit()
        out["miss (a fresh mcs)"].append(timed([fc] + call, env=farm_env(cache), cwd=src))
    for _ in range(RUNS):
        shutil.rmtree(src / "obj/Debug")
        (src / "obj/Debug").mkdir(parents=True)
        out["hit (local cache)"].append(timed([fc] + call, env=farm_env(cache), cwd=src))
    proc, sock = start_cluster("csc-farmd", 2, local_slots=0)
    try:
        c = WORK / "cache-csc-remote"
        edit()
        first_remote = timed([fc] + call, env=farm_env(c, sock), cwd=src)
        key = "miss on a peer (loopback)"
        out[key] = []
        for _ in range(RUNS):
            edit()
            out[key].append(timed([fc] + call, env=farm_env(c, sock), cwd=src))
    finally:
        proc.terminate()
        proc.wait()
    plain = med(out["plain mcs"])
    print(f"\n### C# compiler call on dbus-sharp (xbuild's arguments), median of {RUNS}, seconds\n")
    print("| how | median s | × plain mcs | runs |")
    print("|---|---|---|---|")
    for k, xs in out.items():
        row(k, xs, plain)
    print(f"\nfirst remote miss (sources and references shipped): {first_remote:.2f} s")
    # Whole xbuild runs.
    xb = {"plain xbuild": [], "farm cold": [], "farm warm (clean tree, hits)": []}
    fcache = WORK / "cache-xbuild"
    via = [f"/p:CscToolPath={BIN}", "/p:CscToolExe=farm-csc"]
    for _ in range(RUNS):
        edit()
        shutil.rmtree(src / "obj", ignore_errors=True)
        xb["plain xbuild"].append(timed(["xbuild", "dbus-sharp.csproj"], cwd=src))
    for _ in range(RUNS):
        edit()
        shutil.rmtree(src / "obj", ignore_errors=True)
        xb["farm cold"].append(timed(["xbuild"] + via + ["dbus-sharp.csproj"],
                                     env=farm_env(fcache), cwd=src))
    for _ in range(RUNS):
        shutil.rmtree(src / "obj", ignore_errors=True)
        xb["farm warm (clean tree, hits)"].append(
            timed(["xbuild"] + via + ["dbus-sharp.csproj"], env=farm_env(fcache), cwd=src))
    plain = med(xb["plain xbuild"])
    print(f"\n### xbuild dbus-sharp.csproj, median of {RUNS}, seconds\n")
    print("| how | median s | × plain xbuild | runs |")
    print("|---|---|---|---|")
    for k, xs in xb.items():
        row(k, xs, plain)


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    # Nothing from an earlier run: its caches would answer this run's misses.
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True, exist_ok=True)
    if what in ("javac", "gradle", "all"):
        v = subprocess.run(["javac", "-version"], capture_output=True, text=True)
        print(f"javac: {(v.stdout + v.stderr).strip()}; farm {BIN}; {os.cpu_count()} CPUs")
    if what in ("javac", "all"):
        bench_javac()
    if what in ("gradle", "all"):
        bench_gradle()
    if what == "csc":
        v = subprocess.run(["mcs", "--version"], capture_output=True, text=True)
        print(f"{v.stdout.strip()}; farm {BIN}; {os.cpu_count()} CPUs")
        bench_csc()


if __name__ == "__main__":
    main()
