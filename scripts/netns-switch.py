#!/usr/bin/env python3
"""netns-switch.py READY_FILE DELAY_MS TAP...

A learning Ethernet switch with a fixed delay, in user space, for kernels without
sch_netem (`tc qdisc add ... netem` fails with "Specified qdisc kind is unknown" on the
machines here). scripts/netns.sh runs it inside a private hub namespace: it opens one
tap device per name (in that namespace), touches READY_FILE, and the caller then moves
each tap into a node's namespace (the open file descriptor stays attached to the device
wherever it goes). Every frame one node sends is delivered to the node owning its
destination MAC (or to every other node for broadcast, multicast and unknown MACs)
DELAY_MS after it was read, so a round trip between any two nodes costs 2 x DELAY_MS
plus this process's scheduling. It carries everything: QUIC over UDP, TCP (distcc,
icecc), ARP and broadcasts (icecc's scheduler discovery), so every tool measured on these
namespaces sees the same delay. Stops on SIGTERM/SIGINT.
"""
import collections
import fcntl
import os
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def open_tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def main():
    ready, delay = sys.argv[1], float(sys.argv[2]) / 1000.0
    names = sys.argv[3:]
    fds = [open_tap(n) for n in names]
    port_of = {fd: i for i, fd in enumerate(fds)}
    mac_port = {}
    # Every frame waits the same delay, so arrival order is due order: a FIFO suffices.
    pending = collections.deque()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with open(ready, "w") as f:
        f.write(f"{os.getpid()}\n")
    frames = 0
    while True:
        timeout = None
        if pending:
            timeout = max(0.0, pending[0][0] - time.monotonic())
        # select() takes microseconds (epoll and poll round up to milliseconds).
        readable, _, _ = select.select(fds, [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            src = port_of[fd]
            while True:
                try:
                    frame = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError:
                    # The tap's namespace is gone: the run is ending.
                    return
                if len(frame) < 14:
                    continue
                mac_port[frame[6:12]] = src
                dst = mac_port.get(frame[0:6]) if not frame[0] & 1 else None
                outs = [dst] if dst is not None else [p for p in range(len(fds)) if p != src]
                for p in outs:
                    if p != src:
                        pending.append((now + delay, fds[p], frame))
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, fd, frame = pending.popleft()
            try:
                os.write(fd, frame)
                frames += 1
            except BlockingIOError:
                pass  # the receiving stack is full: dropped, as a real link would
            except OSError:
                return


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
