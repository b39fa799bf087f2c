#!/usr/bin/env python3
"""Per-action overhead of Execute on a REAPI service (BuildGrid with farmd as its bot):
N uncached `gcc -c` Actions, each timed from Execute to its done Operation in one
client process, against the same `gcc -c` run locally. Run with BuildGrid's venv
(target/buildgrid-venv/bin/python): it uses BuildGrid's generated protos.

usage: reapi_exec_overhead.py --remote http://127.0.0.1:PORT [-n 10]
"""
import argparse, hashlib, os, statistics, subprocess, tempfile, time

import grpc
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re
from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2_grpc as reg

SRC = b'#include "k.h"\nint f(int x) { return x * K; }\nint g(int y) { return f(y) + 1; }\n'
HDR = b"#define K 7\n"


def digest(b):
    return re.Digest(hash=hashlib.sha256(b).hexdigest(), size_bytes=len(b))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--remote", required=True)
    ap.add_argument("-n", type=int, default=10)
    a = ap.parse_args()
    ch = grpc.insecure_channel(a.remote.replace("http://", ""))
    cas = reg.ContentAddressableStorageStub(ch)
    ex = reg.ExecutionStub(ch)
    root = re.Directory(files=[re.FileNode(name="a.c", digest=digest(SRC)),
                               re.FileNode(name="k.h", digest=digest(HDR))])
    rootb = root.SerializeToString()
    plat = re.Platform(properties=[re.Platform.Property(name="ISA", value="x86-64"),
                                   re.Platform.Property(name="OSFamily", value="linux")])
    cmd = re.Command(arguments=["gcc", "-O2", "-c", "a.c", "-o", "a.o"], output_paths=["a.o"],
                     platform=plat)
    cmdb = cmd.SerializeToString()
    blobs = [SRC, HDR, rootb, cmdb]
    times = []
    for i in range(a.n + 1):
        # A fresh salt: every Action is new (no Action Cache hit, no merged job).
        act = re.Action(command_digest=digest(cmdb), input_root_digest=digest(rootb),
                        do_not_cache=True, salt=os.urandom(8), platform=plat)
        actb = act.SerializeToString()
        reqs = [re.BatchUpdateBlobsRequest.Request(digest=digest(b), data=b) for b in blobs + [actb]]
        cas.BatchUpdateBlobs(re.BatchUpdateBlobsRequest(requests=reqs))
        t0 = time.perf_counter()
        for op in ex.Execute(re.ExecuteRequest(action_digest=digest(actb), skip_cache_lookup=True)):
            if op.done:
                r = re.ExecuteResponse()
                op.response.Unpack(r)
                assert r.status.code == 0 and r.result.exit_code == 0, (r.status, r.result.exit_code)
        if i > 0:  # the first warms the channel and the bot's session
            times.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as d:
        open(os.path.join(d, "a.c"), "wb").write(SRC)
        open(os.path.join(d, "k.h"), "wb").write(HDR)
        local = []
        for _ in range(a.n):
            t0 = time.perf_counter()
            subprocess.run(["gcc", "-O2", "-c", "a.c", "-o", "a.o"], cwd=d, check=True)
            local.append(time.perf_counter() - t0)
    print("each (ms):", " ".join(f"{t*1000:.0f}" for t in times))
    med = statistics.median
    print(f"Execute through the bot: median {med(times)*1000:.0f} ms (min {min(times)*1000:.0f}, "
          f"max {max(times)*1000:.0f}) over {len(times)}; local gcc -c: median {med(local)*1000:.0f} ms; "
          f"overhead ≈ {(med(times)-med(local))*1000:.0f} ms per action")


if __name__ == "__main__":
    main()
