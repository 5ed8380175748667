"""Chrome's own GCC on a capacity trace, live: the browser's column beside Ferry's figures.

Why: ``qa.bwe_traces`` judges Ferry's send-side estimator in virtual time; whether
0.75 utilization or a 300 ms queue p95 is good or bad on a 3G trace says little
without what the browser's estimator does on the same link. So two headless Chromium
pages make one direct peer connection; the sender publishes the fake camera (1280x720,
30 fps) and microphone relay-only through netem's TURN relay, whose up link for that
allocation is the very ``LinkConfig`` the virtual harness puts at its bottleneck
(``qa.bwe_simulation.link_config`` of the scenario's down phase: the trace, 25 ms, a
300 ms drop-tail buffer at the trace's mean rate), and whose down link carries the
receiver's RTCP back as the harness's feedback link does. The trace starts when the
connection does (``TurnRelay.set_profile`` restarts the rate server), so a live second
and a virtual one line up.

What is recorded, and from where:

- the bottleneck, from the netem link itself (``link_event_log``): each delivered
  packet's time, size and queue delay at the rate stage, the same figures the
  harness records;
- the sender, from Chrome's ``getStats`` every ``SAMPLE_MS``: the selected candidate
  pair's ``availableOutgoingBitrate`` (Chrome's estimate) is the target the
  recovery time is read from, as Ferry's estimate is in the harness; the video
  sender's ``targetBitrate``, size, frame rate and quality-limitation reason are
  kept to show when the encoder, not the estimator, held the rate.

The figures are ``qa.bwe_traces.run_metrics``'s, so utilization is delivered over
``min(capacity, desired)`` with the same 2.5 Mbit/s desired (the video encoding's
``maxBitrate`` is the desired rate less ``AUDIO_BPS``), after the same warm-up.
Chrome's pacer backlog is not visible to a page, so that figure is ``None``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from netem.link import EventLog
from netem.profiles import Profile
from netem.turn import TurnRelay
from qa.bwe_simulation import Scenario, link_config
from qa.bwe_traces import TraceMetrics, TraceRun, run_metrics

__all__ = ["ChromeTraceResult", "LinkRecorder", "run_chrome_trace", "trace_profile"]

PAGE_JS = Path(__file__).with_name("chrome_gcc.js")
SAMPLE_MS = 100
AUDIO_BPS = 50_000  # Opus plus packet overhead: the video's share of the desired rate is the rest
CONNECT_TIMEOUT_S = 20.0
WIDTH, HEIGHT, FPS = 1280, 720, 30
_USER, _PASSWORD, _PROFILE = "sender", "sender-pw", "gcc"
_PAGE = "<!doctype html><meta charset=utf-8><title>chrome gcc</title>"


def trace_profile(sc: Scenario) -> Profile:
    """The relay profile of a trace scenario: the harness's bottleneck as the sender's
    up link, its feedback link as the sender's down link."""
    return Profile(_PROFILE, link_config(sc.down[0]), link_config(sc.up[0]), f"{sc.name} (bwe harness links)")


def _without_rate(profile: Profile) -> Profile:
    """The same delays with no rate stage: what the link is until the call connects."""
    return Profile(
        profile.name,
        profile.up.with_changes(rate=None, queue_bytes=None),
        profile.down.with_changes(rate=None, queue_bytes=None),
    )


class LinkRecorder:
    """An ``event_log`` for the bottleneck link: delivered bits and queue delay per packet.

    Times are relative to ``start_ms`` (loop ms, set when the trace starts); packets
    delivered before that are ignored. A queue delay is stamped when its packet
    reached the rate stage, as the harness stamps it when the packet was sent into it.
    """

    def __init__(self) -> None:
        self.start_ms: float | None = None
        self.delivered: list[tuple[float, float]] = []
        self.queue_delays: list[tuple[float, float]] = []
        self.dropped = 0

    def __call__(self, event: dict[str, Any]) -> None:
        if self.start_ms is None:
            return
        name = event["name"]
        if name == "netem:packet_sent":
            t = event["time"] - self.start_ms
            data = event["data"]
            self.delivered.append((t, data["size"] * 8.0))
            queue = data.get("queue_ms")
            if queue is not None:
                self.queue_delays.append((t - queue, queue))
        elif name == "netem:packet_dropped":
            self.dropped += 1


@dataclass
class ChromeTraceResult:
    """One live run: the shared figures, what they were computed from, and Chrome's side."""

    run: TraceRun
    metrics: TraceMetrics
    samples: list[dict[str, Any]] = field(default_factory=list)  # getStats, t in ms from the trace start
    dropped: int = 0  # packets the bottleneck dropped (tail drop)
    connect_s: float = 0.0

    def row(self) -> dict[str, Any]:
        """The figures as ``bench/bwe.py`` prints them, plus what Chrome said of itself."""
        out: dict[str, Any] = dict(self.metrics.row())
        est = [s["aob"] for s in self.samples if s.get("aob") is not None]
        widths = [s["width"] for s in self.samples if s.get("width")]
        limits = [s.get("limit") for s in self.samples if s.get("limit")]
        out.update(
            sender="chrome",
            estimate_mean_kbps=round(sum(est) / len(est) / 1000) if est else None,
            estimate_samples=len(est),
            frame_width_min=min(widths, default=None),
            cpu_limited_share=round(sum(x == "cpu" for x in limits) / len(limits), 3) if limits else None,
            bottleneck_drops=self.dropped,
            connect_s=round(self.connect_s, 2),
        )
        return out


@asynccontextmanager
async def _page_server() -> AsyncIterator[str]:
    """A blank page on 127.0.0.1 (getUserMedia needs a secure context: http on loopback)."""
    app = web.Application()

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=_PAGE, content_type="text/html")

    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


def loopback_only(sdp: str) -> str:
    """Drop candidates that are not on 127.0.0.1: nothing may leave the machine."""
    keep = [
        line for line in sdp.split("\r\n")
        if not line.startswith("a=candidate:") or " 127.0.0.1 " in line
    ]
    return "\r\n".join(keep)


def with_start_bitrate(answer: str, bps: float) -> str:
    """The answer with ``x-google-start-bitrate`` on the video codec the sender will use.

    Why: Chrome starts its estimate at 300 kbit/s and reaches the link by probing; when
    its first probes come to nothing it climbs from there by ~8 % a second, and one run
    of a clean 10 Mbit/s trace measured 0.3 where the next measured 1.0. The harness's
    sender starts at ``Scenario.start_bps``; so does Chrome here, in the remote
    description a sender takes its start rate from.
    """
    lines = answer.split("\r\n")
    m = next((line for line in lines if line.startswith("m=video ")), None)
    if m is None or len(m.split()) < 4:
        return answer
    pt = m.split()[3]
    param = f"x-google-start-bitrate={int(bps // 1000)}"
    for i, line in enumerate(lines):
        if line.startswith(f"a=fmtp:{pt} "):
            lines[i] = f"{line};{param}"
            return "\r\n".join(lines)
    for i, line in enumerate(lines):
        if line.startswith(f"a=rtpmap:{pt} "):
            lines.insert(i + 1, f"a=fmtp:{pt} {param}")
            break
    return "\r\n".join(lines)


async def _open(browser: Any, url: str) -> Any:
    context = await browser.new_context()
    page = await context.new_page()
    await page.add_init_script(path=str(PAGE_JS))
    await page.goto(url)
    return page


async def _wait_connected(page: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        state = await page.evaluate("window.__gcc.state()")
        if state == "connected":
            return
        if state in ("failed", "closed") or time.monotonic() > deadline:
            raise RuntimeError(f"peer connection {state!r} after {timeout_s:g} s (relay path)")
        await asyncio.sleep(0.05)


async def run_chrome_trace(
    sc: Scenario, browser: Any, *, duration_ms: float | None = None, warmup_ms: float | None = None
) -> ChromeTraceResult:
    """Run Chrome over ``sc``'s trace for ``duration_ms`` (default: the scenario's) and
    compute ``run_metrics`` from what the link and Chrome recorded."""
    duration = sc.duration_ms if duration_ms is None else duration_ms
    trace = sc.down[0].trace
    if trace is None:
        raise ValueError(f"{sc.name}: not a trace scenario")
    profile = trace_profile(sc)
    recorder = LinkRecorder()

    def link_log(username: str, direction: str) -> EventLog | None:
        return recorder if (username, direction) == (f"{_PROFILE}:{_USER}", "up") else None

    relay = TurnRelay(
        "127.0.0.1", 0,
        users={_USER: _PASSWORD},
        profiles={_PROFILE: _without_rate(profile)},
        allowed_peers=["127.0.0.1"],
        link_event_log=link_log,
    )
    await relay.start()
    loop = asyncio.get_running_loop()
    samples: list[dict[str, Any]] = []
    try:
        async with _page_server() as url:
            sender, receiver = await _open(browser, url), await _open(browser, url)
            try:
                t_connect = time.monotonic()
                offer = await sender.evaluate(
                    "cfg => window.__gcc.sender(cfg)",
                    {
                        "turn": f"turn:127.0.0.1:{relay.port}?transport=udp",
                        "user": f"{_PROFILE}:{_USER}",
                        "pass": _PASSWORD,
                        "width": WIDTH,
                        "height": HEIGHT,
                        "fps": FPS,
                        "videoMaxBps": int(sc.desired_bps - AUDIO_BPS),
                    },
                )
                answer = await receiver.evaluate("sdp => window.__gcc.receiver(sdp)", loopback_only(offer))
                answer = with_start_bitrate(loopback_only(answer), sc.start_bps)
                await sender.evaluate("sdp => window.__gcc.accept(sdp)", answer)
                await _wait_connected(sender, CONNECT_TIMEOUT_S)
                connect_s = time.monotonic() - t_connect
                start_ms = loop.time() * 1000.0
                wall_offset_ms = time.time() * 1000.0 - start_ms  # Date.now() - loop ms
                recorder.start_ms = start_ms
                relay.set_profile(_PROFILE, profile)  # the trace starts now
                await sender.evaluate(f"window.__gcc.startSampling({SAMPLE_MS})")
                end = start_ms + duration
                while (now := loop.time() * 1000.0) < end:
                    await asyncio.sleep(min(1.0, (end - now) / 1000.0))
                    samples.extend(await sender.evaluate("window.__gcc.sample()"))
                samples.extend(await sender.evaluate("window.__gcc.sample()"))
                for s in samples:
                    s["t"] = s["t"] - wall_offset_ms - start_ms
            finally:
                for page in (sender, receiver):
                    await page.evaluate("window.__gcc && window.__gcc.close()")
                    await page.context.close()
    finally:
        await relay.close()
    run = TraceRun(
        sc.name,
        trace,
        duration,
        sc.desired_bps,
        [x for x in recorder.delivered if x[0] <= duration],
        [x for x in recorder.queue_delays if x[0] <= duration],
        [(s["t"], float(s["aob"])) for s in samples if s.get("aob") is not None and s["t"] <= duration],
        None,
    )
    kwargs = {} if warmup_ms is None else {"warmup_ms": warmup_ms}
    return ChromeTraceResult(run, run_metrics(run, **kwargs), samples, recorder.dropped, connect_s)
