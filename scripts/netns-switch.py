#!/usr/bin/env python3
"""netns-switch.py READY_FILE DELAY_MS [--loss PCT] [--control FILE] TAP...

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

--loss PCT drops each frame on its way to each receiver with probability PCT/100 (each
direction on its own, as `netem loss` does). --control FILE is read again on SIGUSR1:
one setting a line, `cut I` (port I, the I-th tap, is cut off: every frame from it or to
it is dropped, as if its cable were pulled; heal by leaving the line out) and `loss PCT`
(replaces --loss). scripts/netns.sh cut/heal/loss write that file and send the signal.
The switch counts what it dropped and writes the counts to FILE.stats on SIGUSR2
(scripts/netns.sh stats), so a test can show its faults really happened.
"""
import collections
import fcntl
import os
import random
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


class Faults:
    """What the switch drops: cut ports and a loss rate, and counts of what it dropped."""

    def __init__(self, loss, control):
        self.loss = loss / 100.0
        self.cut = set()
        self.control = control
        self.dropped_cut = 0
        self.dropped_loss = 0
        self.delivered = 0

    def reload(self, *_):
        if not self.control:
            return
        cut, loss = set(), self.loss
        try:
            with open(self.control) as f:
                for line in f:
                    words = line.split()
                    if len(words) == 2 and words[0] == "cut":
                        cut.add(int(words[1]))
                    elif len(words) == 2 and words[0] == "loss":
                        loss = float(words[1]) / 100.0
        except (OSError, ValueError) as e:
            print(f"netns-switch: control file: {e}", file=sys.stderr, flush=True)
            return
        self.cut, self.loss = cut, loss

    def dump(self, *_):
        if not self.control:
            return
        tmp = self.control + ".stats.tmp"
        with open(tmp, "w") as f:
            f.write(f"delivered {self.delivered}\ndropped_cut {self.dropped_cut}\n"
                    f"dropped_loss {self.dropped_loss}\ncut {' '.join(map(str, sorted(self.cut)))}\n"
                    f"loss {self.loss * 100}\n")
        os.replace(tmp, self.control + ".stats")

    def drops(self, src, dst):
        """Whether a frame from port src to port dst is lost on the way (counted)."""
        if src in self.cut or dst in self.cut:
            self.dropped_cut += 1
            return True
        if self.loss > 0 and random.random() < self.loss:
            self.dropped_loss += 1
            return True
        return False


def main():
    args = sys.argv[1:]
    loss, control = 0.0, None
    ready, delay = args[0], float(args[1]) / 1000.0
    rest = args[2:]
    while rest and rest[0].startswith("--"):
        if rest[0] == "--loss":
            loss = float(rest[1])
        elif rest[0] == "--control":
            control = rest[1]
        else:
            sys.exit(f"netns-switch: unknown option {rest[0]}")
        rest = rest[2:]
    names = rest
    faults = Faults(loss, control)
    faults.reload()
    fds = [open_tap(n) for n in names]
    port_of = {fd: i for i, fd in enumerate(fds)}
    mac_port = {}
    # Every frame waits the same delay, so arrival order is due order: a FIFO suffices.
    pending = collections.deque()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGUSR1, faults.reload)
    signal.signal(signal.SIGUSR2, faults.dump)
    with open(ready, "w") as f:
        f.write(f"{os.getpid()}\n")
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
                    if p != src and not faults.drops(src, p):
                        pending.append((now + delay, p, frame))
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, p, frame = pending.popleft()
            # A port cut while the frame was on its way loses it too.
            if p in faults.cut:
                faults.dropped_cut += 1
                continue
            try:
                os.write(fds[p], frame)
                faults.delivered += 1
            except BlockingIOError:
                pass  # the receiving stack is full: dropped, as a real link would
            except OSError:
                return


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
