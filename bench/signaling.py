"""Benchmark: signaling over WebSocket vs raw QUIC (join time, round trips, resume).

Prints one JSON object:

* ``join_ms``: a new FerryClient's ``connect`` (hello) to its first decoded video frame
  from a publisher already in the room (join, subscriber offer/answer, ICE, DTLS, the
  keyframe), per transport, on a clean link and on a 3G-like link with 2% loss
  (``PROFILE_3G``: 150 ms RTT, 0.77/2 Mbit/s). The link is applied to signaling only
  (media goes straight to Ferry), so the difference is the transport's. QUIC goes
  through netem's ``UdpProxy``. netem has no TCP proxy, so the WebSocket goes through
  :class:`TcpLink` here: the same delay, jitter and rate per direction, and a lost
  segment modelled as what TCP does with it, a retransmission timeout (200 ms) during
  which everything behind it waits (head-of-line blocking).
* ``rtt_ms``: ``ping`` round trips, one at a time (p50/p99), clean and 3G.
* ``messages_per_s``: ``ping`` requests with 64 in flight, clean: client and server
  share this process and its one core, so it is the cost of both ends.
* ``resume_ms``: a client's signaling dropped mid-call (``drop_connection``) until its
  ``resume`` reply, per transport, clean.

``--data`` measures room messages instead (``send_data``, docs/protocol.md):

* ``data_rtt_ms``: per transport, one reliable message at a time from one client to
  another in a room of two: ``reply`` (send to the sender's reply, which comes after the
  fsync'd commit) and ``delivery`` (send to the other client's ``data`` event); and
  ``unreliable`` (send to the other's event: no commit, a datagram over QUIC).
* ``data_throughput``: a ``ferry serve`` subprocess (its own process, so its CPU is
  measured apart from the clients'); 3 clients (WebSocket, QUIC, WebSocket) in one room
  each send ``--messages``/3 reliable messages with 32 in flight; every message goes
  to all 3. ``messages_per_s`` (committed and delivered to everyone), the server's CPU
  seconds, ``messages_per_server_cpu_s`` (messages per second per core), and
  ``messages_per_commit`` (how many sends shared one fsync).

Run: python bench/signaling.py [--runs N] [--pings N] | --data [--pings N] [--messages N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import aiohttp  # noqa: E402

from clients.client import FerryClient, allow_loopback  # noqa: E402
from clients.lite import LiteClient  # noqa: E402
from clients.media_sources import TestPatternVideoTrack  # noqa: E402
from netem.link import LinkConfig  # noqa: E402
from netem.proxy import UdpProxy  # noqa: E402
from signaling.app import FerryServer  # noqa: E402
from signaling.auth import generate_dev_keys, mint_token  # noqa: E402
from signaling.config import Config  # noqa: E402

PROFILE_3G = (
    "delay 75ms 15ms rate 768kbit loss 2% limit 64kb",
    "delay 75ms 15ms rate 2mbit loss 2% limit 128kb",
)
TCP_RTO_S = 0.2


class _Direction:
    """One direction of :class:`TcpLink`: in-order delivery with delay, rate and stalls."""

    def __init__(self, spec: str, rng: random.Random) -> None:
        config = LinkConfig.parse(spec)
        self.delay_s = config.delay_ms / 1000.0
        self.jitter_s = config.jitter_ms / 1000.0
        self.rate_bps = _rate_bps(spec)
        self.loss = _loss_probability(spec)
        self.rng = rng
        self.busy_until = 0.0
        self.last_delivery = 0.0

    def delivery_time(self, now: float, size: int) -> float:
        start = max(now, self.busy_until)
        if self.rate_bps:
            start += size * 8 / self.rate_bps
        self.busy_until = start
        at = start + self.delay_s + self.rng.uniform(0, self.jitter_s)
        segments = max(1, size // 1400)
        if any(self.rng.random() < self.loss for _ in range(segments)):
            at += TCP_RTO_S
        self.last_delivery = max(self.last_delivery, at)  # TCP delivers in order
        return self.last_delivery


def _rate_bps(spec: str) -> float | None:
    words = spec.split()
    if "rate" not in words:
        return None
    text = words[words.index("rate") + 1].lower()
    for unit, scale in (("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)


def _loss_probability(spec: str) -> float:
    words = spec.split()
    if "loss" in words:
        return float(words[words.index("loss") + 1].rstrip("%")) / 100.0
    return 0.0


class TcpLink:
    """A TCP relay ``listen -> target`` applying a profile to each direction's bytes."""

    def __init__(self, target_port: int, up: str, down: str, seed: int = 1) -> None:
        self.target_port = target_port
        self.up, self.down = up, down
        self.seed = seed
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rng = random.Random(self.seed)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(
            self._pipe(reader, up_writer, _Direction(self.up, rng)),
            self._pipe(up_reader, writer, _Direction(self.down, rng)),
            return_exceptions=True,
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Direction) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(65536):
                at = link.delivery_time(loop.time(), len(data))
                loop.call_at(at, writer.write, data)
            await asyncio.sleep(max(0.0, link.last_delivery - loop.time()))
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1)

    return {"n": len(values), "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "mean": round(statistics.fmean(values), 1)}


async def _urls(server: FerryServer, profile: str, closers: list[Any]) -> dict[str, str]:
    if profile == "clean":
        return {"ws": server.ws_url, "quic": server.quic_url}
    up, down = PROFILE_3G
    proxy = UdpProxy(("127.0.0.1", 0), ("127.0.0.1", server.quic.port), up=up, down=down, seed=1)
    listen = await proxy.start()
    tcp = TcpLink(server.http_port, up, down)
    await tcp.start()
    closers += [proxy, tcp]
    pin = server.quic.certificate_sha256.hex()
    return {"ws": f"ws://127.0.0.1:{tcp.port}/ws", "quic": f"quic://127.0.0.1:{listen[1]}?sha256={pin}"}


async def join_times(server: FerryServer, urls: dict[str, str], profile: str, runs: int) -> dict[str, Any]:
    publisher = FerryClient(connect_timeout=15.0)
    await publisher.connect(server.ws_url)
    await publisher.join(server.token(f"bench-{profile}", "publisher"))
    await publisher.publish(TestPatternVideoTrack())
    psid = publisher.participant["sid"]
    out: dict[str, Any] = {}
    try:
        for transport, url in urls.items():
            samples = []
            for i in range(runs):
                client = FerryClient(connect_timeout=20.0)
                t0 = time.perf_counter()
                try:
                    await client.connect(url, timeout=20)
                    await client.join(server.token(f"bench-{profile}", f"{transport}-{i}"))
                    await client.wait_for(
                        lambda c=client: (s := c.sink_for(psid, "video")) and s.received_frames >= 1,
                        timeout=30,
                        interval=0.005,
                    )
                    samples.append((time.perf_counter() - t0) * 1000)
                finally:
                    await client.leave()
            out[transport] = _summary(samples)
    finally:
        await publisher.close()
    return out


async def round_trips(server: FerryServer, urls: dict[str, str], profile: str, pings: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for transport, url in urls.items():
        client = FerryClient()
        try:
            await client.connect(url, timeout=20)
            await client.join(server.token(f"rtt-{profile}", transport))
            samples = []
            for _ in range(pings):
                t0 = time.perf_counter()
                await client.request("ping", timeout=20)
                samples.append((time.perf_counter() - t0) * 1000)
            out[transport] = _summary(samples)
        finally:
            await client.leave()
    return out


async def throughput(server: FerryServer, urls: dict[str, str], total: int = 5000, window: int = 64) -> dict[str, float]:
    out: dict[str, float] = {}
    for transport, url in urls.items():
        client = FerryClient()
        try:
            await client.connect(url)
            await client.join(server.token("throughput", transport))
            sem = asyncio.Semaphore(window)

            async def one(c: FerryClient = client, sem: asyncio.Semaphore = sem) -> None:
                async with sem:
                    await c.request("ping", timeout=30)

            t0 = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(total)))
            out[transport] = round(total / (time.perf_counter() - t0))
        finally:
            await client.leave()
    return out


async def resume_times(server: FerryServer, urls: dict[str, str], runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for transport, url in urls.items():
        client = FerryClient()
        samples = []
        try:
            await client.connect(url)
            await client.join(server.token("resume", transport))
            for i in range(runs):
                t0 = time.perf_counter()
                client.drop_connection()
                await client.wait_for(lambda n=i + 1, c=client: c.resumes >= n, timeout=10, interval=0.002)
                samples.append((time.perf_counter() - t0) * 1000)
            out[transport] = _summary(samples)
        finally:
            await client.leave()
    return out


async def main(runs: int, pings: int) -> dict[str, Any]:
    config = Config(host="127.0.0.1", http_port=0, media_port=0, quic_port=0, captions="off")
    server = FerryServer(config)
    await server.start()
    result: dict[str, Any] = {"join_ms": {}, "rtt_ms": {}, "profile_3g": {"up": PROFILE_3G[0], "down": PROFILE_3G[1]}}
    closers: list[Any] = []
    try:
        with allow_loopback():
            for profile in ("clean", "3g_2pct_loss"):
                urls = await _urls(server, profile, closers)
                result["join_ms"][profile] = await join_times(server, urls, profile, runs)
                result["rtt_ms"][profile] = await round_trips(server, urls, profile, pings if profile == "clean" else pings // 5)
            clean = await _urls(server, "clean", closers)
            result["messages_per_s"] = await throughput(server, clean)
            result["resume_ms"] = await resume_times(server, clean, runs)
    finally:
        for closer in closers:
            await closer.close()
        await server.stop()
    return result


# -- room messages ---------------------------------------------------------------------------


async def data_round_trips(server: FerryServer, urls: dict[str, str], count: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for transport, url in urls.items():
        a, b = LiteClient(name="a"), LiteClient(name="b")
        waiting: dict[Any, asyncio.Future[float]] = {}

        def arrived(msg: dict[str, Any], waiting: dict[Any, asyncio.Future[float]] = waiting) -> None:
            fut = waiting.get(msg["payload"]["n"])
            if fut is not None and not fut.done():
                fut.set_result(time.perf_counter())

        b.data.callbacks.append(arrived)
        try:
            for client, name in ((a, "a"), (b, "b")):
                await client.connect(url)
                await client.join(server.token(f"data-rtt-{transport}", name))
            samples: dict[str, list[float]] = {"reply": [], "delivery": [], "unreliable": []}
            for n in range(2 * count):
                reliable = n < count
                waiting[n] = asyncio.get_running_loop().create_future()
                t0 = time.perf_counter()
                await a.send_data("bench", {"n": n}, reliable=reliable)
                if reliable:
                    samples["reply"].append((time.perf_counter() - t0) * 1000)
                delivered = await asyncio.wait_for(waiting[n], 10)
                del waiting[n]
                samples["delivery" if reliable else "unreliable"].append((delivered - t0) * 1000)
            out[transport] = {kind: _summary(values) for kind, values in samples.items()}
            out[transport]["datagrams_received"] = getattr(b._channel, "datagrams_in", 0)
        finally:
            await a.close()
            await b.close()
    return out


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _metric(http: aiohttp.ClientSession, base: str, name: str) -> float:
    async with http.get(f"{base}/metrics") as res:
        text = await res.text()
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def data_throughput(messages: int, window: int = 32) -> dict[str, Any]:
    """A ``ferry serve`` subprocess; 3 clients send and receive ``messages`` in all."""
    key, secret = generate_dev_keys()
    env = dict(os.environ, FERRY_API_KEY=key, FERRY_API_SECRET=secret, FERRY_LOG_LEVEL="info")
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "signaling.cli", "serve", "--host", "127.0.0.1", "--http-port", "0",
               "--media-port", "0", "--quic-port", "0", "--captions", "off", "--data-dir", tmp]
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        clients: list[LiteClient] = []
        try:
            assert proc.stderr is not None
            port = None
            while port is None:
                line = await asyncio.to_thread(proc.stderr.readline)
                if not line:
                    raise RuntimeError(f"ferry serve exited ({proc.wait()})")
                if match := re.search(r"Ferry listening: http://127\.0\.0\.1:(\d+)/", line):
                    port = int(match.group(1))
            _drain_log(proc)
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/api/webtransport") as res:
                    quic_url = (await res.json())["quic_url"]
                urls = [f"ws://127.0.0.1:{port}/ws", quic_url, f"ws://127.0.0.1:{port}/ws"]
                for i, url in enumerate(urls):
                    client = LiteClient(name=f"c{i}", request_timeout=30.0)
                    await client.connect(url)
                    token = mint_token(key, secret, identity=f"c{i}", room="throughput", now=time.time())
                    await client.join(token)
                    clients.append(client)
                per_client = messages // len(clients)
                total = per_client * len(clients)
                commits0, cpu0 = await _metric(http, base, "ferry_data_commits_total"), _cpu_s(proc.pid)
                t0 = time.perf_counter()

                async def sender(client: LiteClient) -> None:
                    sem = asyncio.Semaphore(window)

                    async def one(n: int) -> None:
                        async with sem:
                            await client.send_data("bench", {"n": n, "pad": "x" * 100})

                    await asyncio.gather(*(one(n) for n in range(per_client)))

                await asyncio.gather(*(sender(c) for c in clients))
                for client in clients:
                    await client.wait_for(lambda c=client: len(c.data.received) >= total, timeout=120, interval=0.01)
                wall = time.perf_counter() - t0
                cpu = _cpu_s(proc.pid) - cpu0
                commits = await _metric(http, base, "ferry_data_commits_total") - commits0
            return {
                "messages": total,
                "deliveries": total * len(clients),
                "wall_s": round(wall, 2),
                "messages_per_s": round(total / wall),
                "server_cpu_s": round(cpu, 2),
                "messages_per_server_cpu_s": round(total / cpu) if cpu else None,
                "commits": int(commits),
                "messages_per_commit": round(total / commits, 1) if commits else None,
            }
        finally:
            for client in clients:
                await client.close()
            proc.terminate()
            proc.wait(timeout=15)


def _drain_log(proc: subprocess.Popen[str]) -> None:
    """Keep reading the server's log so a full pipe never blocks it."""

    def drain() -> None:
        assert proc.stderr is not None
        for _ in proc.stderr:
            pass

    threading.Thread(target=drain, daemon=True).start()


async def data_main(pings: int, messages: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        config = Config(host="127.0.0.1", http_port=0, media_port=0, quic_port=0, captions="off", data_dir=tmp)
        server = FerryServer(config)
        await server.start()
        try:
            rtt = await data_round_trips(server, {"ws": server.ws_url, "quic": server.quic_url}, pings)
        finally:
            await server.stop()
    return {"data_rtt_ms": rtt, "data_throughput": await data_throughput(messages)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="joins and resumes per transport and link")
    parser.add_argument("--pings", type=int, default=500, help="round trips per transport on the clean link")
    parser.add_argument("--data", action="store_true", help="room messages: round trips and throughput")
    parser.add_argument("--messages", type=int, default=30000, help="reliable messages in the --data throughput run")
    args = parser.parse_args()
    if args.data:
        print(json.dumps(asyncio.run(data_main(args.pings, args.messages)), indent=2))
    else:
        print(json.dumps(asyncio.run(main(args.runs, args.pings)), indent=2))
