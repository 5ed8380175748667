"""Benchmark: TURN relay added latency and packets/s on loopback (unimpaired profile).

Latency: sequential ping-pong client -> relay -> echo peer -> relay -> client,
compared with client <-> echo directly; added one-way latency per relay pass
is (relayed RTT - direct RTT) / 2. Throughput: windowed blast of ChannelData
through the relay to a counting sink. Prints one JSON object.
Aim: added latency p50 < 0.3 ms, p99 < 2 ms.
Run: python bench/netem_relay.py [--pings N] [--packets N] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from aioice import stun  # noqa: E402

from netem.turn import TurnRelay  # noqa: E402


class Sock(asyncio.DatagramProtocol):
    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.count = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.count += 1
        if self.echo:
            assert self.transport is not None
            self.transport.sendto(data, addr)
        else:
            self.queue.put_nowait(data)

    @property
    def addr(self) -> tuple[str, int]:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[:2]


async def sock(echo: bool = False) -> Sock:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(lambda: Sock(echo), local_addr=("127.0.0.1", 0))
    return proto


async def request(s: Sock, server: tuple[str, int], method: stun.Method, attrs: dict,
                  nonce: bytes | None, key: bytes) -> stun.Message:
    msg = stun.Message(method, stun.Class.REQUEST)
    msg.attributes.update(attrs)
    if nonce is not None:
        msg.attributes.update(USERNAME="unimpaired:bench", REALM="ferry", NONCE=nonce)
        msg.add_message_integrity(key)
    assert s.transport is not None
    s.transport.sendto(bytes(msg), server)
    return stun.parse_message(await asyncio.wait_for(s.queue.get(), 2))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(pings: int, packets: int) -> dict:
    relay = TurnRelay(port=0, users={"bench": "ferry"}, allowed_peers=["127.0.0.1"])
    server = await relay.start()
    client, echo, sink = await sock(), await sock(echo=True), await sock()
    key = hashlib.md5(b"unimpaired:bench:ferry:ferry").digest()
    nonce = (await request(client, server, stun.Method.ALLOCATE,
                           {"REQUESTED-TRANSPORT": 17 << 24}, None, key)).attributes["NONCE"]
    await request(client, server, stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24}, nonce, key)
    await request(client, server, stun.Method.CHANNEL_BIND,
                  {"CHANNEL-NUMBER": 0x4000, "XOR-PEER-ADDRESS": echo.addr}, nonce, key)
    await request(client, server, stun.Method.CHANNEL_BIND,
                  {"CHANNEL-NUMBER": 0x4001, "XOR-PEER-ADDRESS": sink.addr}, nonce, key)
    assert client.transport is not None
    payload = bytes(1000)

    async def rtts(frame: bytes, to: tuple[str, int]) -> list[float]:
        out = []
        for _ in range(pings):
            t0 = time.perf_counter()
            client.transport.sendto(frame, to)  # type: ignore[union-attr]
            await asyncio.wait_for(client.queue.get(), 2)
            out.append((time.perf_counter() - t0) * 1000)
        return out

    direct = await rtts(payload, echo.addr)
    relayed = await rtts(struct.pack("!HH", 0x4000, len(payload)) + payload, server)
    base = statistics.median(direct)
    added = [(r - base) / 2 for r in relayed]

    frame = struct.pack("!HH", 0x4001, len(payload)) + payload
    window = 64
    t0 = time.perf_counter()
    sent = 0
    while sent < packets:
        for _ in range(window):
            client.transport.sendto(frame, server)
        sent += window
        deadline = time.perf_counter() + 2
        while sink.count < sent * 0.98 and time.perf_counter() < deadline:
            await asyncio.sleep(0)
    elapsed = time.perf_counter() - t0
    await relay.close()
    return {
        "bench": "netem_relay",
        "loop": type(asyncio.get_running_loop()).__module__,
        "pings": pings,
        "direct_rtt_p50_ms": round(base, 4),
        "relayed_rtt_p50_ms": round(statistics.median(relayed), 4),
        "added_latency_per_pass_p50_ms": round(statistics.median(added), 4),
        "added_latency_per_pass_p99_ms": round(pct(added, 0.99), 4),
        "throughput_packets": sent,
        "throughput_delivered": sink.count,
        "throughput_packets_per_s": round(sink.count / elapsed),
        "payload_bytes": len(payload),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--packets", type=int, default=50_000)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    print(json.dumps(asyncio.run(main(args.pings, args.packets)), indent=2))
