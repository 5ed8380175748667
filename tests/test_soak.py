"""Soak: join/publish/leave churn against a `ferry serve` process; RSS and fds stay flat.

A long-lived viewer sits in one room while short-lived LiteClient publishers (simulcast
VP8 + Opus) join, publish, reach the viewer, and leave, ``LANES`` of them alive at a
time. The server runs in its own process so its RSS and open fds are read from /proc
without counting the clients. Both are measured at two quiet points (only the viewer
left in the room, no tracks): after the warm-up and at the end. The warm-up lasts
``WARMUP_CYCLES`` publishers (imports, caches and allocator arenas reach their working
size) and at least until the viewer has been sent ``EVENT_LOG_LIMIT`` events: its
session-resume log (signaling/resume.py) keeps up to that many and fills with the churn
before it stays at its bound (while it kept every subscriber offer: 1.6 MiB traced over
~150 publishers, 4.5% of RSS). A leak of per-participant or per-track state grows with the
number of publishers seen; the assertion is that the end is within 5% of the warm-up
figure.

CI runs a short form (``FERRY_SOAK_SECONDS``, default 45 s of churn after the warm-up;
the warm-up runs ``WARMUP_LANES`` publishers at a time, each leaving once its media
reached the viewer: about 20 s);
by hand, for an hour, in a loopback-only network namespace::

    FERRY_SOAK_SECONDS=3600 unshare --net sh -c \\
        'ip link set lo up && exec nice -n 10 python3 -m pytest -q -s -m soak tests/test_soak.py'

``-s`` shows the RSS/fd series as JSON lines. At both quiet points the server also
reports, after a full gc, its live Python blocks and glibc's heap figures
(``tests/soak_server.py``): Python blocks must stay within 5% too, and ``malloc_in_use``
against ``malloc_free`` tells C-level growth from fragmentation.
``FERRY_SOAK_TRACEMALLOC=DIR`` runs the server under tracemalloc, keeps both snapshots in
DIR and prints the allocation sites that grew (RSS then includes tracemalloc's own
bookkeeping, so the RSS check is skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from clients.lite import LiteClient, RecvCounters, encode_opus_clip, encode_vp8_clip
from signaling.auth import generate_dev_keys, mint_token
from signaling.resume import EVENT_LOG_LIMIT
from tests.soak_server import growth

ROOT = Path(__file__).resolve().parent.parent
ROOM = "soak"
SOAK_SECONDS = float(os.environ.get("FERRY_SOAK_SECONDS", "45"))
# RSS climbs while the first publishers come and go (lazy imports, caches, allocator
# arenas reaching the churn's working size, the viewer's resume log filling to its
# bound: 98.7 MB at the viewer's join, 101.9 MB after 24 publishers, 105.4 at 144, then
# 105.5-106.8 from 182 to 791): the baseline is taken after that.
WARMUP_CYCLES = int(os.environ.get("FERRY_SOAK_WARMUP_CYCLES", "24"))
LANES = 2  # publishers alive at the same time
WARMUP_LANES = 4  # the warm-up only has to get through its publishers
HOLD_S = 3.0  # a publisher's life once its media has reached the viewer
# The warm-up only has to get through its publishers (and the viewer's events): each
# leaves as soon as its media has reached the viewer.
WARMUP_HOLD_S = 0.3
MEDIA_TIMEOUT_S = 20.0  # publish -> viewer has audio and a video keyframe
TOLERANCE = 0.05
FPS = 15
LAYERS = ((160, 90, 50_000), (320, 180, 120_000), (640, 360, 300_000))

pytestmark = [pytest.mark.soak, pytest.mark.timeout(int(SOAK_SECONDS) + 600)]


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Usage:
    rss_kb: int
    fds: int

    def as_dict(self) -> dict[str, float]:
        return {"rss_mb": round(self.rss_kb / 1024, 1), "fds": self.fds}


class SoakServer:
    """`ferry serve` in a child process, with a known API key so the test can mint tokens."""

    def __init__(self, log_path: Path, dump_dir: Path, *, tracemalloc: bool = False) -> None:
        self.key, self.secret = generate_dev_keys()
        self.http_port = _free_port(socket.SOCK_STREAM)
        self.media_port = _free_port(socket.SOCK_DGRAM)
        self.quic_port = _free_port(socket.SOCK_DGRAM)
        self.log_path = log_path
        self.dump_dir = dump_dir
        self.tracemalloc = tracemalloc
        self.dumps = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 30.0) -> None:
        if self.tracemalloc:
            timeout *= 4  # imports under tracemalloc, on shared cores
        env = dict(os.environ, FERRY_API_KEY=self.key, FERRY_API_SECRET=self.secret)
        env["FERRY_LOG_LEVEL"] = "warning"
        # The soak measures forwarding churn. Live captions load a speech model and
        # worker threads (a few hundred MB that breathe with the speech queued) and
        # are measured by their own tests; here they would drown a 5% signal.
        env["FERRY_CAPTIONS"] = "off"
        env["FERRY_SOAK_DUMP_DIR"] = str(self.dump_dir)
        env.pop("FERRY_SOAK_TRACEMALLOC", None)
        if self.tracemalloc:
            env["FERRY_SOAK_TRACEMALLOC"] = "1"
        # `ferry serve`'s own entry point, with the SIGUSR2 memory-dump hook installed.
        cmd = [sys.executable, "-m", "tests.soak_server", "serve"]
        cmd += ["--http-port", str(self.http_port), "--media-port", str(self.media_port)]
        cmd += ["--quic-port", str(self.quic_port)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"ferry serve exited: {self.log_tail()}"
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(f"http://127.0.0.1:{self.http_port}/healthz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        self.stop()  # not left running after the test
        raise AssertionError(f"ferry serve not healthy within {timeout}s: {self.log_tail()}")

    def token(self, identity: str) -> str:
        return mint_token(self.key, self.secret, identity=identity, room=ROOM, now=time.time())

    def usage(self) -> Usage:
        rss = 0
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        return Usage(rss, len(os.listdir(f"/proc/{self.pid}/fd")))

    async def gauges(self) -> dict[str, float]:
        """``ferry_participants`` and the sum of ``ferry_tracks{kind}`` from /metrics."""
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            text = await resp.text()
        out = {"participants": -1.0, "tracks": 0.0}
        if m := re.search(r"^ferry_participants ([0-9.e+]+)$", text, re.M):
            out["participants"] = float(m.group(1))
        for m in re.finditer(r"^ferry_tracks\{[^}]*\} ([0-9.e+]+)$", text, re.M):
            out["tracks"] += float(m.group(1))
        return out

    async def wait_quiet(self, timeout: float = 30.0) -> None:
        """Until only the viewer is left and no track is published."""
        deadline = time.monotonic() + timeout
        while True:
            g = await self.gauges()
            if g["participants"] == 1 and g["tracks"] == 0:
                return
            assert time.monotonic() < deadline, f"server not quiet within {timeout}s: {g}"
            await asyncio.sleep(0.2)

    async def dump(self, timeout: float = 120.0) -> tuple[dict[str, Any], Path | None]:
        """The server's memory figures after a full gc (tests/soak_server.py), and the
        path of its tracemalloc snapshot when tracing."""
        self.dumps += 1
        stem = self.dump_dir / f"dump-{self.dumps}"
        os.kill(self.pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while not stem.with_suffix(".done").exists():
            assert time.monotonic() < deadline, "no memory dump from the server"
            await asyncio.sleep(0.2)
        figures = json.loads(stem.with_suffix(".json").read_text())
        return figures, stem.with_suffix(".pickle") if self.tracemalloc else None

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@dataclass
class Churn:
    """Publishers that join, publish, reach the viewer and leave, ``LANES`` at a time."""

    server: SoakServer
    viewer: LiteClient
    video: list[list[bytes]]
    audio: list[bytes]
    started: int = 0
    delivered: int = 0
    missing: list[dict[str, Any]] = field(default_factory=list)

    def _viewer_counters(self, track_sid: str) -> list[RecvCounters]:
        return [c for c in self.viewer.received.values() if c.track_sid == track_sid]

    def _reached_viewer(self, tracks: list[dict[str, Any]]) -> bool:
        for track in tracks:
            counters = self._viewer_counters(track["sid"])
            if not any(c.packets > 0 for c in counters):
                return False
            if track["kind"] == "video" and not any(c.keyframes for c in counters):
                return False
        return True

    async def one_publisher(self, hold_s: float = HOLD_S) -> None:
        self.started += 1
        name = f"pub{self.started}"
        pub = LiteClient(name=name)
        try:
            await pub.connect(self.server.ws_url)
            await pub.join(self.server.token(name), auto_subscribe=False)
            tracks = await pub.publish_vp8(self.video, fps=FPS, audio=self.audio)
            try:
                await pub.wait_for(lambda: self._reached_viewer(tracks), MEDIA_TIMEOUT_S)
                self.delivered += 1
            except TimeoutError:
                self.missing.append(
                    {
                        "publisher": name,
                        "tracks": [(t["kind"], t["sid"]) for t in tracks],
                        "viewer": [
                            c.summary()
                            for t in tracks
                            for c in self._viewer_counters(t["sid"])
                        ],
                        "viewer_subscriber_version": self.viewer.subscriber_version,
                        "viewer_errors": [repr(e) for e in self.viewer.subscriber_errors[-3:]],
                    }
                )
            await asyncio.sleep(hold_s)  # pacing of the churn, not a wait for a condition
        finally:
            await pub.leave()

    async def run(
        self, *, cycles: int | None = None, until: float | None = None, lanes: int = LANES, hold_s: float = HOLD_S
    ) -> None:
        """``cycles`` publishers in all, or new ones until monotonic time ``until``."""

        def more() -> bool:
            if cycles is not None:
                return self.started < cycles
            assert until is not None
            return time.monotonic() < until

        async def lane(index: int) -> None:
            await asyncio.sleep(index * hold_s / lanes)  # stagger the lanes
            while more():
                await self.one_publisher(hold_s)

        await asyncio.gather(*(lane(i) for i in range(lanes)))


async def test_churn_keeps_server_rss_and_fds_flat(tmp_path: Path) -> None:
    trace_env = os.environ.get("FERRY_SOAK_TRACEMALLOC")
    dump_dir = Path(trace_env) if trace_env else tmp_path / "dumps"
    server = SoakServer(tmp_path / "ferry.log", dump_dir, tracemalloc=bool(trace_env))
    video = [encode_vp8_clip(w, h, 30, br, keyframe_interval=15, fps=FPS) for w, h, br in LAYERS]
    audio = encode_opus_clip(1.0)
    await server.start()
    viewer = LiteClient(name="viewer")
    report: dict[str, Any] = {"soak_s": SOAK_SECONDS, "lanes": LANES, "hold_s": HOLD_S}
    try:
        await viewer.connect(server.ws_url)
        await viewer.join(server.token("viewer"))
        churn = Churn(server, viewer, video, audio)
        report["start"] = server.usage().as_dict()

        await churn.run(cycles=WARMUP_CYCLES, lanes=WARMUP_LANES, hold_s=WARMUP_HOLD_S)
        while viewer.last_seq < EVENT_LOG_LIMIT:  # the resume log reaches its bound
            await churn.run(cycles=churn.started + 2 * WARMUP_LANES, lanes=WARMUP_LANES, hold_s=WARMUP_HOLD_S)
        report["warm_viewer_seq"] = viewer.last_seq
        await server.wait_quiet()
        warm = server.usage()
        warm_mem, before = await server.dump()
        report["warm"] = warm.as_dict() | {"publishers": churn.started} | warm_mem
        print(json.dumps({"soak": "warm"} | report["warm"]), flush=True)

        t0 = time.monotonic()
        deadline = t0 + SOAK_SECONDS
        samples: list[dict[str, float]] = []
        while time.monotonic() < deadline:
            until = min(deadline, time.monotonic() + max(10.0, SOAK_SECONDS / 20))
            await churn.run(until=until)
            sample = server.usage().as_dict()
            sample |= {"t_s": round(time.monotonic() - t0), "publishers": churn.started}
            if not trace_env:  # the allocators' figures along the way (not quiet points)
                figures, _ = await server.dump()
                sample |= {k: v for k, v in figures.items() if k != "rss_kb"}
            samples.append(sample)
            print(json.dumps({"soak": "sample"} | sample), flush=True)

        await server.wait_quiet()
        # A closed WebSocket's fd goes once aiohttp's handler returns: poll, bounded.
        end = server.usage()
        fd_deadline = time.monotonic() + 10.0
        while end.fds > warm.fds and time.monotonic() < fd_deadline:
            await asyncio.sleep(0.2)
            end = server.usage()
        end_mem, after = await server.dump()
        report["end"] = end.as_dict() | {"publishers": churn.started} | end_mem
        report["rss_max_mb"] = max(s["rss_mb"] for s in samples)
        report["delivered"] = churn.delivered
        print(json.dumps({"soak": "end"} | report), flush=True)
        if before is not None and after is not None:
            print("\n".join(growth(before, after)), flush=True)

        assert churn.started >= WARMUP_CYCLES + 2, report
        assert not churn.missing, f"publishers whose media never reached the viewer: {churn.missing}"
        assert churn.delivered == churn.started, report
        # The viewer still receives at the end: the last publisher's media reached it above.
        assert end.fds <= warm.fds * (1 + TOLERANCE), report
        # Live Python objects (after a full gc): the direct sign of a leak in Ferry's code.
        assert end_mem["py_blocks"] <= warm_mem["py_blocks"] * (1 + TOLERANCE), report
        if not trace_env:  # tracemalloc's own bookkeeping grows RSS
            assert end.rss_kb <= warm.rss_kb * (1 + TOLERANCE), report
    finally:
        await viewer.close()
        server.stop()
