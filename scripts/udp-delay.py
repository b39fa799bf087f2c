#!/usr/bin/env python3
"""udp-delay.py LISTEN_PORT TARGET_PORT DELAY_MS LOSS_PCT [SEED]

A user-space stand-in for `tc qdisc … netem delay D loss L` on one UDP path, for
kernels without sch_netem (the benchmark machines here have none). Every datagram
sent to 127.0.0.1:LISTEN_PORT is forwarded to 127.0.0.1:TARGET_PORT, and every answer
back, each after DELAY_MS and each dropped with probability LOSS_PCT %. A round trip
through it therefore costs 2 x DELAY_MS. Loopback only.
"""
import asyncio
import random
import sys


class Upstream(asyncio.DatagramProtocol):
    def __init__(self, relay, client):
        self.relay, self.client = relay, client

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, _addr):
        self.relay.later(lambda: self.relay.transport.sendto(data, self.client))


class Relay(asyncio.DatagramProtocol):
    def __init__(self, target, delay, loss, rng):
        self.target, self.delay, self.loss, self.rng = target, delay, loss, rng
        self.upstreams = {}

    def connection_made(self, transport):
        self.transport = transport

    def later(self, fn):
        if self.rng.random() * 100.0 < self.loss:
            return
        asyncio.get_running_loop().call_later(self.delay, fn)

    def datagram_received(self, data, client):
        up = self.upstreams.get(client)
        if up is None:
            up = Upstream(self, client)
            self.upstreams[client] = up
            asyncio.ensure_future(self.open(up, data))
            return
        if hasattr(up, "transport"):
            self.later(lambda: up.transport.sendto(data))

    async def open(self, up, first):
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: up, remote_addr=("127.0.0.1", self.target))
        self.later(lambda: up.transport.sendto(first))


async def main():
    listen, target, delay_ms, loss = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    rng = random.Random(int(sys.argv[5]) if len(sys.argv) > 5 else listen)
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(
        lambda: Relay(target, delay_ms / 1000.0, loss, rng), local_addr=("127.0.0.1", listen)
    )
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
