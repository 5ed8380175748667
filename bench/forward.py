"""Forwarding benchmark: 1 publisher -> N subscribers through a real Ferry process.

Issue acceptance: "1 publisher (pre-encoded VP8 ~1 Mbps + Opus) to N subscribers
(N = 1, 10, 50) on loopback; prints JSON with packets forwarded per second, server CPU
microseconds per forwarded packet (from the server process's CPU time), receiver loss
and server RSS. Aim: under 15 µs per forwarded packet".

Ferry runs as its own process (``python -m signaling.cli serve``) so its CPU time can be
read from ``/proc/<pid>/stat`` without counting the clients. The clients are
:class:`clients.lite.LiteClient` (Ferry's own cores, not aiortc, which costs
~50-100 µs per packet and could not play 50 subscribers) in this process under uvloop.
Each subscriber behaves like a browser: it sends transport-wide CC feedback every 50 ms,
receiver reports every second and NACKs for gaps, so the server figure includes the RTCP
work a real room causes, plus ingest from the publisher and the engine's timers.

Run from the repo root::

    python bench/forward.py --subscribers 1 10 50 --seconds 10

One JSON object per N on its own line, then a JSON array of all of them. Figures are
CPU time, not wall time, but on a shared machine other load still perturbs them: the
host's load average is included. If the benchmark process itself (all the clients)
nears a full core, ``client_saturated`` says so, since the server may then be starved of
input rather than fast.

``--compare janus`` measures Janus (Debian's ``/usr/bin/janus``, VideoRoom, one static
event loop; see bench/janus.py) the same way in the same run: for each N a Ferry round
and a Janus round, alternately (the SFU that goes first swaps with each N, so slow drift
of the machine's load does not favour one), each in a fresh server process, with the
same clip, the same receivers and the same latency stamping. Janus's CPU and RSS come
from its own ``/proc/<pid>``; it has no Prometheus counters, so the server-side packet
counts are left out for it. A summary with Ferry/Janus ratios closes the output::

    python bench/forward.py --rx raw --compare janus --subscribers 40 80 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bench.child import stop_child, wait_healthy  # noqa: E402
from bench.forward_rx import LatencyLog, RawSubscriber, pace_publisher, stamp_publisher  # noqa: E402
from bench.janus import (  # noqa: E402
    JanusApi,
    JanusLiteSubscriber,
    JanusProcess,
    JanusPublisher,
    JanusRawSubscriber,
    JanusSubscriber,
    create_room,
    janus_available,
    new_room_id,
)
from clients.lite import LiteClient, LiteSubscriber, encode_opus_clip, encode_vp8_clip  # noqa: E402
from clients.lite.transport import shared_certificate  # noqa: E402
from media.wire.rtp import build_rtp, parse_rtp  # noqa: E402
from signaling.auth import generate_dev_keys, mint_token  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
VIDEO = {"width": 640, "height": 360, "frames": 150, "bitrate": 1_000_000, "keyframe_interval": 60}
FPS = 30


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_times_s(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process in seconds (fields 14 and 15 of /proc/pid/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_cpu_s(pid: int) -> float:
    return sum(proc_times_s(pid))


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def calibration_parse_rtp_ns(number: int = 20000) -> float:
    """How fast this machine runs Python right now: best-of-5 ns per `parse_rtp`.

    The same figure `bench/wire.py` prints; DESIGN §3's budget was measured where
    aiortc's parse took ~1.5 µs. Scale the µs/packet figures by it across machines.
    """
    packet = build_rtp(
        payload_type=96,
        seq=1,
        timestamp=2,
        ssrc=3,
        payload=bytes(1100),
        extensions=[(3, b"\x00\x01")],
    )
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(number):
            parse_rtp(packet)
        best = min(best, (time.perf_counter_ns() - t0) / number)
    return round(best, 1)


class FerryProcess:
    """`ferry serve` in a child process with a fixed API key, so we can mint tokens."""

    def __init__(self) -> None:
        self.key, self.secret = generate_dev_keys()
        self.http_port = free_port(socket.SOCK_STREAM)
        self.media_port = free_port(socket.SOCK_DGRAM)
        self.quic_port = free_port(socket.SOCK_DGRAM)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def start(self, timeout: float = 20.0) -> None:
        env = dict(os.environ, FERRY_API_KEY=self.key, FERRY_API_SECRET=self.secret)
        env["FERRY_LOG_LEVEL"] = os.environ.get("FERRY_BENCH_LOG_LEVEL", "warning")
        env["FERRY_CAPTIONS"] = "off"  # forwarding only: no speech model on the audio
        cmd = [
            sys.executable,
            "-m",
            "signaling.cli",
            "serve",
            "--http-port",
            str(self.http_port),
            "--media-port",
            str(self.media_port),
            "--quic-port",
            str(self.quic_port),
        ]
        # A class of 500 is above the default room limit (200): the bench room has room.
        self._config = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)  # noqa: SIM115
        self._config.write("max_participants_per_room: 2000\n")
        self._config.close()
        cmd += ["--config", self._config.name]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        await wait_healthy(self.proc, f"{self.http_url}/healthz", timeout, "ferry serve")

    def token(self, room: str, identity: str) -> str:
        return mint_token(self.key, self.secret, identity=identity, room=room, now=time.time())

    async def metrics(self) -> dict[str, float]:
        """Unlabelled counters from /metrics (ferry_rtp_packets_out_total & co.)."""
        out: dict[str, float] = {}
        async with aiohttp.ClientSession() as http, http.get(f"{self.http_url}/metrics") as resp:
            text = await resp.text()
        for m in re.finditer(r"^(ferry_[a-z_]+_total) ([0-9.e+]+)$", text, re.M):
            out[m.group(1)] = float(m.group(2))
        return out

    def stop(self) -> None:
        config = getattr(self, "_config", None)
        if config is not None:
            with contextlib.suppress(OSError):
                os.unlink(config.name)
        stop_child(self.proc)


def _receiver_totals(subs: Sequence[Any]) -> dict[str, int]:
    """Sums over subscribers (anything with ``received``: SSRC -> RecvCounters)."""
    totals = {"packets": 0, "bytes": 0, "expected": 0, "unique": 0, "rtx": 0}
    for client in subs:
        for c in client.received.values():
            totals["packets"] += c.packets
            totals["bytes"] += c.bytes
            totals["expected"] += c.expected
            totals["unique"] += c.unique
            totals["rtx"] += c.rtx_packets
    return totals


async def _snapshot(ferry: FerryProcess, subs: list[LiteClient]) -> dict[str, Any]:
    assert ferry.proc is not None
    metrics = await ferry.metrics()
    return {
        "wall": time.monotonic(),
        "server_cpu": proc_cpu_s(ferry.proc.pid),
        "server_sys": proc_times_s(ferry.proc.pid)[1],
        "client_cpu": self_cpu_s(),
        "recv": _receiver_totals(subs),
        "rtp_out": metrics.get("ferry_rtp_packets_out_total", 0.0),
        "rtp_in": metrics.get("ferry_rtp_packets_in_total", 0.0),
        "nack": metrics.get("ferry_nack_received_total", 0.0),
        "udp_out": metrics.get("ferry_packets_out_total", 0.0),
        "gso_datagrams": metrics.get("ferry_udp_gso_datagrams_total", 0.0),
        "gso_messages": metrics.get("ferry_udp_gso_messages_total", 0.0),
    }


async def run_one(
    ferry: FerryProcess, n: int, seconds: float, warmup: float, args: argparse.Namespace
) -> dict[str, Any]:
    """One round: a fresh room, 1 publisher and `n` subscribers, measured over `seconds`."""
    room = f"bench-{n}-{int(time.time())}"
    video, audio = clips()
    raw = args.rx == "raw"
    latency = LatencyLog()
    sampled = _latency_sampled(n, args.latency_receivers)
    subs = [
        LiteClient(
            name=f"sub{i}",
            nack=not (raw or args.no_nack),
            twcc=not (raw or args.no_twcc),
            connect_timeout=30.0,
        )
        for i in range(n)
    ]
    if raw:
        for i, c in enumerate(subs):
            c.subscriber = RawSubscriber(
                c.certificate, name=f"{c.name}/sub", latency=latency if i in sampled else None
            )
    pub = LiteClient(name="pub")
    try:
        # Subscribers join in small batches: 50 DTLS handshakes at once on 2 shared
        # cores would only measure the setup burst.
        for i in range(0, n, 10):
            batch = subs[i : i + 10]
            await asyncio.gather(*(c.connect(ferry.ws_url) for c in batch))
            await asyncio.gather(*(c.join(ferry.token(room, c.name)) for c in batch))
        await pub.connect(ferry.ws_url)
        await pub.join(ferry.token(room, "pub"), auto_subscribe=False)
        await pub.publish_vp8(video, fps=FPS, simulcast_rids=None, audio=audio)
        assert pub.publisher is not None
        if args.publisher_pacing:
            pace_publisher(pub.publisher, latency, args.publisher_pacing * VIDEO["bitrate"])
        else:
            stamp_publisher(pub.publisher, latency)
        await asyncio.gather(*(c.wait_connected("subscriber", 60.0) for c in subs))
        if raw:  # payloads are not decrypted: wait for video packets instead
            def flowing(c: LiteClient) -> bool:
                return any(x.packets and x.kind == "video" for x in c.received.values())
        else:
            def flowing(c: LiteClient) -> bool:
                return any(x.keyframes for x in c.received.values())
        await asyncio.gather(*(c.wait_for(lambda c=c: flowing(c), 15.0) for c in subs))
        await asyncio.sleep(warmup)
        before = await _snapshot(ferry, subs)
        latency.recording = True
        await asyncio.sleep(seconds)
        latency.recording = False
        after = await _snapshot(ferry, subs)
        assert ferry.proc is not None
        rss = proc_rss_mb(ferry.proc.pid)
        result = _result(n, before, after, rss, pub.publisher.summary() if pub.publisher else {}, args)
        result["latency"] = latency.summary()
        result["latency"]["receivers"] = len(sampled) if raw else 0
        result["subscribers_connected_at_end"] = sum(
            1 for c in subs if c.subscriber is not None and c.subscriber.state == "connected"
        )
        result["srtp_profiles"] = _srtp_profiles(c.subscriber for c in subs)
        return result
    finally:
        # Subscribers first: a publisher leaving first triggers a renegotiation per
        # subscriber, which is setup noise, not what this benchmark measures.
        await asyncio.gather(*(c.leave() for c in subs), return_exceptions=True)
        await pub.leave()


_CLIPS: tuple[list[bytes], list[bytes]] | None = None


def clips() -> tuple[list[bytes], list[bytes]]:
    """The publisher's VP8 and Opus clips, encoded once: both SFUs get the same bytes."""
    global _CLIPS
    if _CLIPS is None:
        video = encode_vp8_clip(
            VIDEO["width"],
            VIDEO["height"],
            VIDEO["frames"],
            VIDEO["bitrate"],
            keyframe_interval=VIDEO["keyframe_interval"],
            fps=FPS,
        )
        _CLIPS = (video, encode_opus_clip(5.0))
    return _CLIPS


def _latency_sampled(n: int, k: int) -> set[int]:
    """Indices of the subscribers that measure latency: spread over the join order
    (first and last included), since fan-out order follows it."""
    if k <= 0 or n == 0:
        return set()
    if k >= n:
        return set(range(n))
    return {round(i * (n - 1) / (k - 1)) for i in range(k)} if k > 1 else {n - 1}


def _srtp_profiles(subscribers: Any) -> dict[str, int]:
    """How many subscribers negotiated each SRTP profile: protect costs differ (AES-GCM
    against AES-CM + HMAC-SHA1), so a comparison says which one each SFU ran."""
    out: dict[str, int] = {}
    for sub in subscribers:
        srtp = getattr(sub, "srtp", None) if sub is not None else None
        name = srtp.profile if srtp is not None else "none"
        out[name] = out.get(name, 0) + 1
    return out


def _result(
    n: int,
    before: dict[str, Any],
    after: dict[str, Any],
    rss_mb: float,
    publisher: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    wall = after["wall"] - before["wall"]
    server_cpu = after["server_cpu"] - before["server_cpu"]
    client_cpu = after["client_cpu"] - before["client_cpu"]
    recv = {k: after["recv"][k] - before["recv"][k] for k in after["recv"]}
    forwarded = recv["packets"]
    metrics_out = after["rtp_out"] - before["rtp_out"]
    expected = recv["expected"]
    lost = max(0, expected - recv["unique"])
    return {
        "sfu": "ferry",
        "subscribers": n,
        "seconds": round(wall, 2),
        "packets_forwarded": forwarded,
        "packets_forwarded_per_s": round(forwarded / wall, 1),
        "server_metrics_rtp_out": int(metrics_out),
        "server_rtp_in_per_s": round((after["rtp_in"] - before["rtp_in"]) / wall, 1),
        # Datagrams that left inside UDP GSO messages, and how many such a message held.
        "server_gso_share": round(
            (after["gso_datagrams"] - before["gso_datagrams"]) / max(1.0, after["udp_out"] - before["udp_out"]), 3
        ),
        "server_gso_datagrams_per_message": round(
            (after["gso_datagrams"] - before["gso_datagrams"]) / max(1.0, after["gso_messages"] - before["gso_messages"]),
            1,
        ),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_pct": round(100.0 * server_cpu / wall, 1),
        # Kernel share: loopback sendto and the wake-ups of the receiving process.
        "server_sys_share": round((after["server_sys"] - before["server_sys"]) / server_cpu, 2)
        if server_cpu
        else None,
        "server_us_per_forwarded_packet": round(server_cpu * 1e6 / forwarded, 2)
        if forwarded
        else None,
        "server_rss_mb": round(rss_mb, 1),
        "receiver_loss_pct": round(100.0 * lost / expected, 4) if expected else None,
        "receiver_lost": lost,
        "receiver_rtx_packets": recv["rtx"],
        "server_nacks_received": int(after["nack"] - before["nack"]),
        "received_mbps_total": round(recv["bytes"] * 8 / wall / 1e6, 2),
        "client_cpu_pct": round(100.0 * client_cpu / wall, 1),
        "client_saturated": client_cpu / wall > 0.9,
        "rx": args.rx,
        "publisher_pacing": args.publisher_pacing or None,
        "client_feedback": {
            "twcc": args.rx != "raw" and not args.no_twcc,
            "nack": args.rx != "raw" and not args.no_nack,
            "receiver_reports": args.rx != "raw",
        },
        "publisher_layers": publisher.get("layers"),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "calibration_parse_rtp_ns": calibration_parse_rtp_ns(),
    }


async def idle_cpu_pct(ferry: FerryProcess | JanusProcess, seconds: float = 3.0) -> float:
    """Server CPU with no room at all (engine ticker, HTTP server): the fixed floor."""
    assert ferry.proc is not None
    await asyncio.sleep(1.0)
    t0, c0 = time.monotonic(), proc_cpu_s(ferry.proc.pid)
    await asyncio.sleep(seconds)
    return 100.0 * (proc_cpu_s(ferry.proc.pid) - c0) / (time.monotonic() - t0)


def add_derived(results: list[dict[str, Any]], idle_pct: float | None) -> None:
    """Per-packet cost without the idle floor, and the marginal cost between rounds.

    The plain figure divides *all* server CPU by forwarded packets, so at N=1 the fixed
    costs (ticker, ingest, the publisher's RTCP) dominate; the marginal figure (extra CPU
    per extra forwarded packet from one N to the next) is what a bigger room costs.
    """
    for r in results:
        if idle_pct is None:
            break  # per-round figures already set with each round's own idle floor
        cpu = r["server_cpu_s"] - idle_pct / 100.0 * r["seconds"]
        fwd = r["packets_forwarded"]
        r["server_idle_cpu_pct"] = round(idle_pct, 2)
        r["server_us_per_forwarded_packet_excl_idle"] = round(cpu * 1e6 / fwd, 2) if fwd else None
    ordered = sorted(results, key=lambda r: r["subscribers"])
    for prev, cur in zip(ordered, ordered[1:], strict=False):
        extra = cur["packets_forwarded_per_s"] - prev["packets_forwarded_per_s"]
        extra_cpu = (cur["server_cpu_pct"] - prev["server_cpu_pct"]) / 100.0
        if extra > 0:
            cur[f"server_marginal_us_per_packet_from_n{prev['subscribers']}"] = round(
                extra_cpu * 1e6 / extra, 2
            )


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs (None with fewer than two distinct xs)."""
    if len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Marginal figures over all rounds: CPU per extra forwarded packet (slope of server
    CPU over forwarded packets/s) and RSS per extra subscriber (slope of RSS over N).
    Each round runs in a fresh server process, so RSS is that room's, not a high-water
    mark of earlier rounds."""
    pps = [r["packets_forwarded_per_s"] for r in results]
    cpu = [r["server_cpu_pct"] / 100.0 for r in results]
    rss = [r["server_rss_mb"] * 1024.0 for r in results]
    n = [float(r["subscribers"]) for r in results]
    us = slope(pps, cpu)
    kb = slope(n, rss)
    return {
        "rx": results[0]["rx"] if results else None,
        "subscribers": [r["subscribers"] for r in results],
        "marginal_us_per_forwarded_packet": round(us * 1e6, 2) if us is not None else None,
        "rss_kb_per_subscriber": round(kb, 1) if kb is not None else None,
        "latency_p99_ms": [r.get("latency", {}).get("p99_ms") for r in results],
        "latency_max_ms": [r.get("latency", {}).get("max_ms") for r in results],
        "loss_pct": [r["receiver_loss_pct"] for r in results],
    }


# ------------------------------------------------------------------------------ Janus


def _snapshot_janus(janus: JanusProcess, subs: Sequence[JanusSubscriber]) -> dict[str, Any]:
    """As :func:`_snapshot`; Janus has no packet counters of its own (0: left out)."""
    return {
        "wall": time.monotonic(),
        "server_cpu": proc_cpu_s(janus.pid),
        "server_sys": proc_times_s(janus.pid)[1],
        "client_cpu": self_cpu_s(),
        "recv": _receiver_totals(subs),
        "rtp_out": 0.0,
        "rtp_in": 0.0,
        "nack": 0.0,
        "udp_out": 0.0,
        "gso_datagrams": 0.0,
        "gso_messages": 0.0,
    }


async def run_one_janus(
    janus: JanusProcess, n: int, seconds: float, warmup: float, args: argparse.Namespace
) -> dict[str, Any]:
    """:func:`run_one` against Janus's VideoRoom: same clip, receivers and stamping."""
    video, audio = clips()
    raw = args.rx == "raw"
    latency = LatencyLog()
    sampled = _latency_sampled(n, args.latency_receivers)
    async with JanusApi(janus.url) as api:
        room = new_room_id()
        admin = await api.attach()
        await create_room(api, admin, room)
        pub = JanusPublisher(api, room, shared_certificate(), video, audio, fps=FPS)
        subs: list[JanusSubscriber] = []
        for i in range(n):
            transport: LiteSubscriber
            if raw:
                transport = JanusRawSubscriber(
                    shared_certificate(), name=f"jsub{i}", latency=latency if i in sampled else None
                )
            else:
                transport = JanusLiteSubscriber(
                    shared_certificate(), nack=not args.no_nack, twcc=not args.no_twcc, name=f"jsub{i}"
                )
            subs.append(JanusSubscriber(api, room, transport))
        try:
            # The publisher first: VideoRoom subscribers join an existing feed.
            await pub.publish()
            if args.publisher_pacing:
                pace_publisher(pub.transport, latency, args.publisher_pacing * VIDEO["bitrate"])
            else:
                stamp_publisher(pub.transport, latency)
            for i in range(0, n, 10):
                await asyncio.gather(*(s.join(pub.feed_id) for s in subs[i : i + 10]))
            await asyncio.gather(*(s.subscriber.wait_connected(60.0) for s in subs))

            async def flowing(s: JanusSubscriber) -> None:
                deadline = time.monotonic() + 15.0
                while not any(x.packets and x.kind == "video" for x in s.received.values()):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{s.subscriber.name}: no video from Janus")
                    await asyncio.sleep(0.05)

            await asyncio.gather(*(flowing(s) for s in subs))
            await asyncio.sleep(warmup)
            before = _snapshot_janus(janus, subs)
            latency.recording = True
            await asyncio.sleep(seconds)
            latency.recording = False
            after = _snapshot_janus(janus, subs)
            rss = proc_rss_mb(janus.pid)
            result = _result(n, before, after, rss, pub.transport.summary(), args)
            result["sfu"] = "janus"
            result["janus_version"] = janus.info.get("version_string")
            result["janus_event_loops"] = janus.event_loops
            result["janus_ice_lite"] = janus.ice_lite
            for key in (
                "server_metrics_rtp_out",
                "server_rtp_in_per_s",
                "server_nacks_received",
                "server_gso_share",
                "server_gso_datagrams_per_message",
            ):
                result[key] = None
            result["latency"] = latency.summary()
            result["latency"]["receivers"] = len(sampled) if raw else 0
            result["subscribers_connected_at_end"] = sum(
                1 for s in subs if s.subscriber.state == "connected"
            )
            result["srtp_profiles"] = _srtp_profiles(s.subscriber for s in subs)
            return result
        finally:
            await asyncio.gather(*(s.leave() for s in subs), return_exceptions=True)
            await pub.leave()


async def _round(sfu: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """One round in a fresh server process of ``sfu``, with that process's idle floor."""
    server: FerryProcess | JanusProcess
    if sfu == "janus":
        server = JanusProcess(event_loops=args.janus_event_loops, ice_lite=args.janus_ice_lite)
    else:
        server = FerryProcess()
    await server.start()
    try:
        idle = await idle_cpu_pct(server, 2.0)
        if isinstance(server, JanusProcess):
            result = await run_one_janus(server, n, args.seconds, args.warmup, args)
        else:
            result = await run_one(server, n, args.seconds, args.warmup, args)
        add_derived([result], idle)
        return result
    finally:
        server.stop()


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def compare_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-SFU summaries and Ferry/Janus ratios (below 1: Ferry uses less / is faster)."""
    by_sfu = {
        sfu: [r for r in results if r["sfu"] == sfu] for sfu in ("ferry", "janus")
    }
    out: dict[str, Any] = {sfu: summarize(rs) for sfu, rs in by_sfu.items() if rs}
    for sfu, rs in by_sfu.items():
        if sfu in out:
            out[sfu]["us_per_forwarded_packet"] = [r["server_us_per_forwarded_packet"] for r in rs]
            out[sfu]["rss_mb"] = [r["server_rss_mb"] for r in rs]
            out[sfu]["latency_p50_ms"] = [r.get("latency", {}).get("p50_ms") for r in rs]
    if "ferry" in out and "janus" in out:
        ratios: dict[str, Any] = {"per_n": []}
        janus_by_n = {r["subscribers"]: r for r in by_sfu["janus"]}
        for f in by_sfu["ferry"]:
            j = janus_by_n.get(f["subscribers"])
            if j is None:
                continue
            fl, jl = f.get("latency", {}), j.get("latency", {})
            ratios["per_n"].append(
                {
                    "subscribers": f["subscribers"],
                    "us_per_forwarded_packet": _ratio(
                        f["server_us_per_forwarded_packet"], j["server_us_per_forwarded_packet"]
                    ),
                    "rss": _ratio(f["server_rss_mb"], j["server_rss_mb"]),
                    "latency_p50": _ratio(fl.get("p50_ms"), jl.get("p50_ms")),
                    "latency_p99": _ratio(fl.get("p99_ms"), jl.get("p99_ms")),
                    "latency_max": _ratio(fl.get("max_ms"), jl.get("max_ms")),
                }
            )
        ratios["marginal_us_per_forwarded_packet"] = _ratio(
            out["ferry"]["marginal_us_per_forwarded_packet"],
            out["janus"]["marginal_us_per_forwarded_packet"],
        )
        ratios["rss_kb_per_subscriber"] = _ratio(
            out["ferry"]["rss_kb_per_subscriber"], out["janus"]["rss_kb_per_subscriber"]
        )
        out["ferry_over_janus"] = ratios
    return out


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    if args.compare == "janus":
        for i, n in enumerate(args.subscribers):
            # Alternate which SFU goes first, so load drift does not favour either.
            for sfu in ("ferry", "janus") if i % 2 == 0 else ("janus", "ferry"):
                result = await _round(sfu, n, args)
                print(json.dumps(result), flush=True)
                results.append(result)
        for sfu in ("ferry", "janus"):
            add_derived([r for r in results if r["sfu"] == sfu], None)
        return results
    for n in args.subscribers:
        ferry = FerryProcess()
        await ferry.start()
        try:
            idle = await idle_cpu_pct(ferry, 2.0)
            result = await run_one(ferry, n, args.seconds, args.warmup, args)
            add_derived([result], idle)
            print(json.dumps(result), flush=True)
            results.append(result)
        finally:
            ferry.stop()
    add_derived(results, None)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument(
        "--rx",
        choices=("raw", "twcc"),
        default="twcc",
        help="raw: subscribers count SRTP packets and send no RTCP; "
        "twcc: browser-like feedback (TWCC every 50 ms, receiver reports, NACK)",
    )
    parser.add_argument(
        "--latency-receivers",
        type=int,
        default=16,
        help="raw mode: subscribers (spread over the join order) that measure latency",
    )
    parser.add_argument(
        "--publisher-pacing",
        type=float,
        default=0.0,
        metavar="FACTOR",
        help="pace the publisher's video at FACTOR x its bitrate in 5 ms steps, as Chrome "
        "does (2.5); 0 (default): each frame leaves as one burst, like aiortc",
    )
    parser.add_argument(
        "--compare",
        choices=("janus",),
        default=None,
        help="also measure Janus (VideoRoom, /usr/bin/janus) in the same run, alternating "
        "with Ferry for each N; skipped with a message if Janus is not installed",
    )
    parser.add_argument(
        "--janus-event-loops", type=int, default=1, help="Janus static event loops (janus.jcfg)"
    )
    parser.add_argument(
        "--janus-ice-lite", action="store_true", help="run Janus as ICE-lite (default: full ICE)"
    )
    parser.add_argument("--no-twcc", action="store_true", help="subscribers send no TWCC feedback")
    parser.add_argument("--no-nack", action="store_true", help="subscribers send no NACKs")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    if args.compare == "janus":
        missing = janus_available()
        if missing is not None:
            print(f"--compare janus skipped: {missing}; measuring Ferry alone", file=sys.stderr)
            print(json.dumps({"janus_skipped": missing}), flush=True)
            args.compare = None
    results = asyncio.run(main_async(args))
    print(json.dumps(results, indent=1))
    if args.compare == "janus":
        print(json.dumps({"summary": compare_summary(results)}))
    else:
        print(json.dumps({"summary": summarize(results)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
