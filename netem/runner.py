"""Run a scenario: Ferry + the impairing TURN relay + real WebRTC clients -> a report.

Why this shape (DESIGN §9): every participant reaches Ferry only through netem's TURN
relay with a relay-only ICE policy, and its TURN username names a profile that exists
for that participant alone (``sc-<name>:<name>``, with a random password of its own for
the run; the relay reaches only this run's Ferry). Changing the participant's network over
time is then one ``TurnRelay.set_profile`` call, for any client kind: aiortc
(``FerryClient``), Ferry's own ``LiteClient`` (cheap, for crowds and simulcast), or
a headless Chromium page. Clients stay unmodified and the relay's per-allocation link
counters give every client kind the same bitrate and network-loss figures.

Timeline: Ferry (in-process on free ports, unless ``url`` is given) and the relay
start, every participant joins and publishes (bounded by ``connect_timeout``), then
``t = 0``: the schedule runs and every ``sample_interval`` (500 ms) each participant
is sampled (bitrate, loss before/after recovery, RTT, jitter, decoded fps, freezes,
Ferry's selected layer and estimate when the server is in-process). After
``duration`` the run stops, metrics are summarised, expectations are checked and
``netem.report`` writes ``report.json``, ``report.html`` and the PNG plots.

Server-side values are read defensively (``getattr`` chains): a Ferry without a
bandwidth estimator simply reports no estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import logging
import os
import secrets
import statistics
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netem.profiles import Profile
from netem.scenario import Expectation, ParticipantSpec, Scenario
from netem.turn import TurnRelay
from signaling.chromium import CHROMIUM_ARGS

logger = logging.getLogger("ferry.netem.runner")

FREEZE_GAP_S = 0.5
RECOVERY_GRACE_S = 1.5
AUDIO_GAP_S = 0.06



@dataclass
class RunOptions:
    """How to run (not what: that is the scenario)."""

    out_dir: Path
    url: str | None = None
    duration_s: float | None = None
    seed: int | None = None
    sample_interval_s: float = 0.5
    connect_timeout_s: float = 20.0
    chromium_path: str = "/usr/bin/chromium"
    print_fn: Callable[[str], None] | None = print
    relay_peers: list[str] | None = None  # Ferry's media addresses for --url (default: its host)


# --------------------------------------------------------------------------- meters


class FrameMeter:
    """Decoded-frame times of one remote track -> fps, freezes and gaps.

    Why per-frame callbacks rather than polling counters: a freeze is a gap between
    two frames, and 500 ms sampling cannot see a 600 ms gap reliably.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.frames = 0
        self.last: float | None = None
        self.t0: float | None = None
        self.window_frames = 0
        self.gaps: list[tuple[float, float]] = []  # (start, length s) of gaps over threshold
        self.max_gap = 0.0
        self.audio_missing = 0.0

    def start_window(self, t0: float) -> None:
        self.t0 = t0
        self.window_frames = 0

    def on_frame(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.frames += 1
        if self.t0 is not None and now >= self.t0:
            self.window_frames += 1
            prev = self.last if self.last is not None and self.last >= self.t0 else None
            if prev is None and self.last is not None:
                prev = self.t0  # a gap spanning t0 counts from t0
            if prev is not None:
                self._gap(prev, now - prev)
        self.last = now

    def _gap(self, start: float, gap: float) -> None:
        if self.kind == "video":
            self.max_gap = max(self.max_gap, gap)
            if gap > FREEZE_GAP_S:
                self.gaps.append((start, gap))
        elif gap > AUDIO_GAP_S:
            self.audio_missing += gap - 0.02

    def finish(self, end: float) -> None:
        """Count a trailing gap (media that stopped and never came back)."""
        if self.t0 is None:
            return
        last = self.last if self.last is not None and self.last >= self.t0 else self.t0
        if end - last > (FREEZE_GAP_S if self.kind == "video" else AUDIO_GAP_S):
            self._gap(last, end - last)

    def frozen_at(self, now: float) -> bool:
        return self.kind == "video" and (self.last is None or now - self.last > FREEZE_GAP_S)


class SeqTracker:
    """Which RTP sequence numbers of each media SSRC arrived, originals or via RTX.

    Why: a receiver's ``packetsLost`` in aiortc is counted before RTX is unwrapped, so
    it shows the network's loss, not what NACK/RTX left unrepaired. This tracker sees
    every packet (retransmissions folded into their primary SSRC) and, at the end of the
    run, counts what never arrived at all between two sample points.
    """

    def __init__(self) -> None:
        self.received: dict[int, set[int]] = {}
        self.highest: dict[int, int] = {}

    def add(self, ssrc: int, seq: int) -> None:
        high = self.highest.get(ssrc)
        if high is None:
            ext = seq + 65536
        else:
            delta = (seq - high) & 0xFFFF
            ext = high + delta if delta < 0x8000 else high + delta - 0x10000
        if high is None or ext > high:
            self.highest[ssrc] = ext
        self.received.setdefault(ssrc, set()).add(ext)

    def snapshot(self) -> dict[int, int]:
        return dict(self.highest)

    def missing(self, start: dict[int, int], end: dict[int, int]) -> tuple[int, int]:
        """(expected, missing) for sequence numbers in ``(start, end]`` per SSRC."""
        expected = missing = 0
        for ssrc, hi in end.items():
            got = self.received.get(ssrc, set())
            lo = start.get(ssrc, min(got) - 1 if got else hi)
            if hi <= lo:
                continue
            n = hi - lo
            have = sum(1 for x in range(lo + 1, hi + 1) if x in got)
            expected += n
            missing += n - have
        return expected, missing


def watch_aiortc_receiver(receiver: Any, tracker: SeqTracker) -> bool:
    """Feed ``tracker`` from an aiortc ``RTCRtpReceiver`` (instance patch, idempotent).

    Reads aiortc's private codec and RTX maps at call time, so renegotiation is seen;
    if they are missing (another aiortc version) packets are still passed through.
    """
    if getattr(receiver, "_netem_watched", False):
        return False
    original = receiver._handle_rtp_packet

    async def handle(packet: Any, arrival_time_ms: int) -> None:
        try:
            codecs = getattr(receiver, "_RTCRtpReceiver__codecs", {})
            codec = codecs.get(packet.payload_type)
            if codec is not None and codec.name.lower() == "rtx":
                rtx = getattr(receiver, "_RTCRtpReceiver__rtx_ssrc", {})
                if packet.ssrc in rtx and len(packet.payload) >= 2:
                    tracker.add(rtx[packet.ssrc], (packet.payload[0] << 8) | packet.payload[1])
            elif codec is not None:
                tracker.add(packet.ssrc, packet.sequence_number)
        except Exception:  # noqa: BLE001 - measuring must never break the media path
            logger.debug("seq tracking failed", exc_info=True)
        await original(packet, arrival_time_ms=arrival_time_ms)

    receiver._handle_rtp_packet = handle
    receiver._netem_watched = True
    return True


def _estimate_bps(obj: Any, now_ms: float | None = None) -> float | None:
    """Ferry's bandwidth estimate for a subscriber, wherever a BWE puts it.

    An attribute or a method (called with the engine's ``now_ms`` when it takes one).
    """
    for path in ("estimate_bps", "bwe.estimate_bps", "gcc.estimate_bps", "estimator.estimate_bps",
                 "allocator.estimate_bps", "bwe.estimate", "available_bps"):
        cur: Any = obj
        for part in path.split("."):
            cur = getattr(cur, part, None)
            if cur is None:
                break
        if callable(cur):
            fn, cur = cur, None
            for args in ((now_ms,), ()) if now_ms is not None else ((),):
                try:
                    cur = fn(*args)
                    break
                except TypeError:
                    continue
                except Exception:  # noqa: BLE001 - an estimator that cannot answer yet
                    break
        if isinstance(cur, int | float) and not isinstance(cur, bool):
            return float(cur)
    return None


# --------------------------------------------------------------------------- participants


class Participant:
    """One joined identity, whatever the client kind; subclasses do the client part."""

    kind = "base"

    def __init__(self, name: str, spec: ParticipantSpec, ctx: RunContext) -> None:
        self.name = name
        self.spec = spec
        self.ctx = ctx
        self.profile = f"sc-{name}"
        self.turn_username = f"{self.profile}:{name}"
        self.turn_password = ctx.turn_passwords.get(name, "")
        self.meters: dict[str, FrameMeter] = {}
        self.error: str | None = None
        self.connected = False
        self.series: dict[str, list[Any]] = {k: [] for k in SERIES_KEYS}
        self._prev_relay: dict[str, float] | None = None
        self._prev_rx: tuple[int, int] | None = None
        self._window_rx: tuple[int, int] | None = None
        self._window_relay: dict[str, float] | None = None
        self.rx_totals: tuple[int, int] = (0, 0)  # (received, lost) RTP packets, cumulative
        self.tracker: SeqTracker | None = None  # set by clients that see every packet
        self.seq_marks: list[dict[int, int]] = []  # tracker snapshot per sample
        self.proxy: Any = None  # a UdpProxy instead of the relay (LiteClient)

    @property
    def publishes(self) -> bool:
        return bool(self.spec.publish)

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def set_link(self, profile: Profile) -> None:
        """Change this participant's network (the relay profile its TURN username names)."""
        if self.ctx.relay is not None:
            self.ctx.relay.set_profile(self.profile, profile)

    async def client_sample(self) -> dict[str, Any]:
        """rtt_ms, jitter_ms, and rx totals from the client's own stats."""
        return {}

    def meter(self, key: str, kind: str) -> FrameMeter:
        m = self.meters.get(key)
        if m is None:
            m = self.meters[key] = FrameMeter(kind)
            if self.ctx.t0 is not None:
                m.start_window(self.ctx.t0)
        return m

    # -- relay counters: the same for every client kind
    def relay_counters(self) -> dict[str, float]:
        out = {"up_sent": 0.0, "up_drop": 0.0, "up_bytes": 0.0,
               "down_sent": 0.0, "down_drop": 0.0, "down_bytes": 0.0}
        pairs = [(a.up, a.down) for a in (self.ctx.relay.allocations if self.ctx.relay else [])
                 if a.profile == self.profile]
        if self.proxy is not None:
            pairs += [(c.up, c.down) for c in self.proxy.clients.values()]
        for up, down in pairs:
            for side, link in (("up", up), ("down", down)):
                s = link.stats
                out[f"{side}_sent"] += s.sent
                out[f"{side}_drop"] += s.dropped_loss + s.dropped_queue + s.dropped_overflow
                out[f"{side}_bytes"] += s.bytes_sent if side == "up" else s.bytes_delivered
        return out


class FerryParticipant(Participant):
    """The aiortc ``FerryClient`` through the relay (relay-only ICE)."""

    kind = "ferry"

    async def start(self) -> None:
        from signaling.client import FerryClient
        from signaling.media_sources import TestPatternVideoTrack, ToneAudioTrack

        self.client = FerryClient(
            turn_url=self.ctx.turn_url,
            turn_username=self.turn_username,
            turn_password=self.turn_password,
            relay_only=True,
            connect_timeout=self.ctx.options.connect_timeout_s,
            on_track=self._on_track,
        )
        await self.client.connect(self.ctx.ws_url)
        await self.client.join(self.ctx.token(self.name, self.spec), auto_subscribe=self.spec.subscribe)
        tracks: list[Any] = []
        if "audio" in self.spec.publish:
            tracks.append(ToneAudioTrack(freq=300.0 + 20.0 * (len(self.name) % 20)))
        if "video" in self.spec.publish:
            v = self.ctx.scenario.video
            tracks.append(TestPatternVideoTrack(int(v["width"]), int(v["height"]), float(v["fps"])))
        if tracks:
            await self.client.publish(*tracks)
        self.connected = True

    def _on_track(self, psid: str, tsid: str, track: Any) -> None:
        self._watch()
        sink = self.client.sinks.get((psid, tsid))
        if sink is not None:
            meter = self.meter(f"{psid}/{tsid}", sink.kind)
            sink.on_frame = lambda _frame, m=meter: m.on_frame()

    def _watch(self) -> None:
        if self.tracker is None:
            self.tracker = SeqTracker()
        sub = self.client.subscriber
        for tr in sub.getTransceivers() if sub is not None else []:
            if tr.kind == "video":  # NACK/RTX repairs video only; Opus loss is concealed
                watch_aiortc_receiver(tr.receiver, self.tracker)

    async def client_sample(self) -> dict[str, Any]:
        self._watch()
        for (psid, tsid), sink in list(self.client.sinks.items()):
            if sink.on_frame is None:
                self._on_track(psid, tsid, sink.track)
        st = await self.client.stats()
        rtts = [t["rtt"] for t in st["publisher"]["tracks"].values() if t.get("rtt") is not None]
        jit = [t["jitter"] for t in st["subscriber"]["tracks"].values() if t.get("jitter") is not None]
        rx = sum(t.get("packetsReceived") or 0 for t in st["subscriber"]["tracks"].values())
        lost = sum(max(0, t.get("packetsLost") or 0) for t in st["subscriber"]["tracks"].values())
        pcs = [pc for pc in (self.client.publisher, self.client.subscriber) if pc is not None]
        return {
            "rtt_ms": max(rtts) * 1000.0 if rtts else None,
            "jitter_ms": max(jit) * 1000.0 if jit else None,
            "rx": (rx, lost),
            "connected": all(pc.connectionState == "connected" for pc in pcs) if pcs else False,
        }

    async def stop(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.leave(), 5.0)
            with contextlib.suppress(Exception):
                await client.close()


class ChromiumParticipant(Participant):
    """A headless Chromium page of Ferry's web client, relay-only through netem."""

    kind = "chromium"

    async def start(self) -> None:
        from urllib.parse import urlencode

        browser = await self.ctx.browser()
        self.context = await browser.new_context()
        self.page = await self.context.new_page()
        q = {
            "room": self.ctx.scenario.room,
            "name": self.name,
            "autojoin": "1",
            "relay": "1",
            "turn": self.ctx.turn_url,
            "turnuser": self.turn_username,
            "turnpass": self.turn_password,
            "token": self.ctx.token(self.name, self.spec),
            "url": self.ctx.ws_url,
            "hidden": "keep",  # every tile is measured, on screen or not
        }
        if not self.spec.publish:
            q["publish"] = "0"
        await self.page.goto(f"{self.ctx.http_url}/?{urlencode(q)}")
        await self.page.wait_for_function("window.ferry && window.ferry.state === 'joined'",
                                          timeout=self.ctx.options.connect_timeout_s * 1000)
        self.connected = True
        self._frames: dict[str, int] = {}

    async def client_sample(self) -> dict[str, Any]:
        stats = await self.page.evaluate("window.ferry.stats()")
        local = await self.page.evaluate("window.ferry.localStats()")
        now = time.monotonic()
        rx = lost = 0
        rtt = local.get("rtt")
        for psid, s in stats.items():
            rx += (s.get("videoPacketsReceived") or 0) + (s.get("audioPacketsReceived") or 0)
            lost += max(0, (s.get("videoPacketsLost") or 0) + (s.get("audioPacketsLost") or 0))
            if rtt is None and s.get("rtt") is not None:
                rtt = s["rtt"]
            frames = int(s.get("videoFramesDecoded") or 0)
            if frames or s.get("trackSids"):
                m = self.meter(f"{psid}/video", "video")
                for _ in range(max(0, frames - self._frames.get(psid, 0))):
                    m.on_frame(now)  # page stats are polled: gaps are sample-resolution
                self._frames[psid] = frames
        return {"rtt_ms": rtt * 1000.0 if rtt is not None else None, "jitter_ms": None,
                "rx": (rx, lost), "connected": True}

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.context.close()


_LITE_REMOTE: contextvars.ContextVar[Any] = contextvars.ContextVar("netem_lite_remote",
                                                                    default=None)


def _install_lite_redirect() -> None:
    """Route a LiteClient's media through the UdpProxy of the participant it belongs to.

    Why: ``LiteClient`` has no TURN client; it sends to the first UDP candidate of
    Ferry's SDP. We wrap that lookup: inside a participant's task (a ContextVar set
    before ``connect``/``publish``, inherited by the client's offer-worker task) the
    candidate becomes the participant's proxy, whose target is set to the real one.
    Outside a scenario the wrapper passes through unchanged.
    """
    from signaling import lite_client

    current = lite_client._first_udp_candidate
    if getattr(current, "_netem", False):
        return

    def redirect(candidates: Any) -> Any:
        addr = current(candidates)
        proxy = _LITE_REMOTE.get()
        if proxy is None or addr is None:
            return addr
        proxy.target = addr
        return proxy.listen

    redirect._netem = True  # type: ignore[attr-defined]
    lite_client._first_udp_candidate = redirect


LITE_LAYERS = ((160, 120, 120_000), (320, 240, 350_000), (640, 480, 900_000))


class LiteParticipant(Participant):
    """Ferry's own cheap endpoint (``signaling.lite_client.LiteClient``).

    It publishes pre-encoded simulcast VP8 (three layers, so Ferry's layer selection
    has something to choose from) and receives without decoding; a "frame" here is a
    video RTP packet with the marker bit (the last packet of a frame). Its network is
    a per-participant ``UdpProxy`` with the same links a TURN allocation would get.
    """

    kind = "lite"

    async def start(self) -> None:
        from netem.proxy import UdpProxy
        from signaling.lite_client import LiteClient, encode_opus_clip, encode_vp8_clip

        _install_lite_redirect()
        seed = self.ctx.options.seed if self.ctx.options.seed is not None else self.ctx.scenario.seed
        self.proxy = UdpProxy(("127.0.0.1", 0), ("127.0.0.1", 9), self.spec.link.up,
                              self.spec.link.down, seed=zlib.crc32(f"{seed}/{self.name}".encode()))
        await self.proxy.start()
        _LITE_REMOTE.set(self.proxy)
        self.tracker = SeqTracker()
        self.client = LiteClient(connect_timeout=self.ctx.options.connect_timeout_s, name=self.name)
        await self.client.connect(self.ctx.ws_url)
        await self.client.join(self.ctx.token(self.name, self.spec),
                               auto_subscribe=self.spec.subscribe)
        if self.spec.publish:
            fps = int(self.ctx.scenario.video.get("fps", 15))
            video = [encode_vp8_clip(w, h, 4 * fps, br, keyframe_interval=2 * fps, fps=fps)
                     for w, h, br in LITE_LAYERS]
            audio = encode_opus_clip(4.0) if "audio" in self.spec.publish else None
            await self.client.publish_vp8(video, fps=fps, audio=audio)
        self.connected = True

    def set_link(self, profile: Profile) -> None:
        if self.proxy is not None:
            self.proxy.set_links(profile.up, profile.down)

    def _watch(self) -> None:
        sub = self.client.subscriber
        if sub is None or getattr(sub, "_netem_watched", False):
            return
        original = sub.handle_rtp
        tracker = self.tracker
        assert tracker is not None

        def handle(packet: bytes, now_ms: float) -> None:
            try:
                ssrc = int.from_bytes(packet[8:12], "big")
                counters = sub._by_ssrc.get(ssrc)
                if counters is None or counters.kind != "video":
                    pass
                elif ssrc == counters.ssrc:
                    tracker.add(ssrc, (packet[2] << 8) | packet[3])
                    if packet[1] & 0x80:
                        key = f"{counters.participant_sid}/{counters.track_sid}"
                        self.meter(key, counters.kind).on_frame()
                elif len(packet) > 14:
                    b0 = packet[0]
                    off = 12 + 4 * (b0 & 0x0F)
                    if b0 & 0x10:
                        off += 4 + 4 * ((packet[off + 2] << 8) | packet[off + 3])
                    if len(packet) >= off + 2:
                        tracker.add(counters.ssrc, (packet[off] << 8) | packet[off + 1])
            except Exception:  # noqa: BLE001 - measuring must never break the media path
                logger.debug("lite tracking failed", exc_info=True)
            original(packet, now_ms)

        sub.handle_rtp = handle  # type: ignore[method-assign]
        sub._netem_watched = True  # type: ignore[attr-defined]

    async def client_sample(self) -> dict[str, Any]:
        self._watch()
        rx = lost = 0
        for c in self.client.received.values():
            rx += c.unique
            lost += c.lost
        return {"rtt_ms": None, "jitter_ms": None, "rx": (rx, lost), "connected": True}

    async def stop(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.leave(), 5.0)
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                await self.proxy.close()


def lite_available() -> bool:
    """True when ``signaling.lite_client`` exists (a trimmed install may leave it out).

    Only the module itself being absent counts as "not available": any other import
    error (a syntax error, a missing name, a broken dependency) propagates, so a broken
    client fails the run and its tests instead of silently falling back or skipping.
    """
    try:
        from signaling.lite_client import LiteClient  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name == "signaling.lite_client":
            return False
        raise
    return True


SERIES_KEYS = ("recv_bps", "sent_bps", "estimate_bps", "layer", "target_layer", "loss_before",
               "loss_after", "uplink_loss", "rtt_ms", "jitter_ms", "fps", "freezes", "frozen")


# --------------------------------------------------------------------------- context


@dataclass
class RunContext:
    """What participants need from the run: URLs, tokens, relay, server, browser."""

    scenario: Scenario
    options: RunOptions
    ws_url: str = ""
    http_url: str = ""
    turn_url: str = ""
    relay: TurnRelay | None = None
    turn_passwords: dict[str, str] = field(default_factory=dict)  # participant -> TURN password
    server: Any = None
    t0: float | None = None
    api_key: str = ""
    api_secret: str = ""
    _pw: Any = None
    _browser: Any = None
    notes: list[str] = field(default_factory=list)

    def token(self, identity: str, spec: ParticipantSpec) -> str:
        from signaling.auth import mint_token

        return mint_token(self.api_key, self.api_secret, identity=identity,
                          room=self.scenario.room, now=time.time(), name=identity,
                          can_publish=bool(spec.publish), can_subscribe=spec.subscribe)

    async def browser(self) -> Any:
        if self._browser is None:
            from playwright.async_api import async_playwright

            self._pw = await async_playwright().start()
            self._browser = await self._pw.chromium.launch(
                executable_path=self.options.chromium_path, args=CHROMIUM_ARGS)
        return self._browser

    async def close_browser(self) -> None:
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.close()
        if self._pw is not None:
            with contextlib.suppress(Exception):
                await self._pw.stop()


# --------------------------------------------------------------------------- result


@dataclass
class RunResult:
    """Everything the report needs; ``passed`` decides the exit code."""

    scenario: Scenario
    started_at: float
    t: list[float]
    participants: dict[str, dict[str, Any]]
    events: list[dict[str, Any]]
    expectations: list[dict[str, Any]]
    notes: list[str]
    server: dict[str, Any]
    relay: dict[str, Any]

    @property
    def passed(self) -> bool:
        return all(e["ok"] for e in self.expectations)


def _median(xs: list[Any]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def _mean(xs: list[Any]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def _frac(drop: float, sent: float) -> float:
    return drop / sent if sent > 0 else 0.0


class Runner:
    """Drives one scenario run; see the module docstring for the timeline."""

    def __init__(self, scenario: Scenario, options: RunOptions) -> None:
        if options.duration_s is not None:
            scenario = scenario.with_duration(options.duration_s)
        self.scenario = scenario
        self.options = options
        self.ctx = RunContext(scenario, options)
        self.participants: list[Participant] = []
        self.t: list[float] = []
        self.events: list[dict[str, Any]] = []
        self._own_server: Any = None

    def say(self, text: str) -> None:
        if self.options.print_fn is not None:
            self.options.print_fn(text)

    # -- setup
    async def _start_server(self) -> None:
        ctx = self.ctx
        if self.options.url:
            ctx.ws_url = self.options.url
            base = self.options.url.replace("ws://", "http://").replace("wss://", "https://")
            ctx.http_url = base.rsplit("/ws", 1)[0]
            ctx.api_key = os.environ.get("FERRY_API_KEY", "")
            ctx.api_secret = os.environ.get("FERRY_API_SECRET", "")
            if not ctx.api_key or not ctx.api_secret:
                raise RuntimeError("--url needs FERRY_API_KEY and FERRY_API_SECRET to mint tokens")
            ctx.notes.append("external Ferry: no layer/estimate figures (server not in-process)")
            return
        from signaling.app import FerryServer
        from signaling.config import Config

        server = FerryServer(Config(host="127.0.0.1", http_port=0, media_port=0, quic_port=0,
                                    room_empty_timeout_s=5.0))
        await server.start()
        self._own_server = ctx.server = server
        ctx.ws_url, ctx.http_url = server.ws_url, server.http_url
        ctx.api_key, ctx.api_secret = server.api_key, server.api_secret

    async def _start_relay(self) -> None:
        profiles: dict[str, Profile] = {}
        self._instances: list[tuple[str, ParticipantSpec]] = []
        for spec in self.scenario.participants:
            spec = self._resolve_client(spec)
            for name in spec.instance_names():
                profiles[f"sc-{name}"] = spec.link
                self._instances.append((name, spec))
        seed = self.options.seed if self.options.seed is not None else self.scenario.seed
        # One random password per participant, for its own username only (no shared one).
        self.ctx.turn_passwords = {name: secrets.token_urlsafe(12) for name, _ in self._instances}
        users = {f"sc-{name}:{name}": pw for name, pw in self.ctx.turn_passwords.items()}
        relay = TurnRelay("127.0.0.1", 0, profiles=profiles, users=users, seed=seed,
                          allowed_peers=await self._ferry_media_peers(),
                          default_profile="unimpaired")
        host, port = await relay.start()
        self.ctx.relay = relay
        self.ctx.turn_url = f"turn:{host}:{port}"

    async def _ferry_media_peers(self) -> list[str]:
        """What the relay may reach: the in-process Ferry's media addresses, or for an
        external Ferry ``relay_peers`` (default: every port of its URL's host)."""
        server = self.ctx.server
        if server is not None:
            return [f"{ip}:{server.engine.port}" for ip in server.config.announce_ips]
        if self.options.relay_peers:
            return list(self.options.relay_peers)
        from urllib.parse import urlsplit

        host = urlsplit(self.ctx.ws_url).hostname or "127.0.0.1"
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None)
            return sorted({str(info[4][0]) for info in infos if ":" not in str(info[4][0])})

    def _resolve_client(self, spec: ParticipantSpec) -> ParticipantSpec:
        """Apply ``fallback`` when the wanted client kind is not available here."""
        missing = (spec.client == "lite" and not lite_available()) or (
            spec.client == "chromium" and not os.path.exists(self.options.chromium_path))
        if not missing:
            return spec
        fb = spec.fallback or {"client": "ferry"}
        client = str(fb.get("client", "ferry"))
        count = int(fb.get("count", spec.count))
        note = (f"{spec.name}: {spec.client} client not available here; using {client} x{count}"
                f" instead of {spec.client} x{spec.count}")
        if note not in self.ctx.notes:
            self.ctx.notes.append(note)
            self.say(f"note: {note}")
        return ParticipantSpec(spec.name, client, count, spec.publish, spec.subscribe, spec.link,
                               spec.link_label, list(spec.schedule), {})

    async def _start_participants(self) -> None:
        kinds: dict[str, type[Participant]] = {
            "ferry": FerryParticipant, "chromium": ChromiumParticipant, "lite": LiteParticipant}
        self.participants = [kinds[spec.client](name, spec, self.ctx)
                             for name, spec in self._instances]
        # Publishers first so subscribers' first offers already carry their tracks.
        order = sorted(self.participants, key=lambda p: not p.publishes)
        sem = asyncio.Semaphore(6)  # bounded concurrency: DTLS handshakes are CPU-heavy

        async def start(p: Participant) -> None:
            async with sem:
                try:
                    await asyncio.wait_for(p.start(), self.options.connect_timeout_s + 5.0)
                except Exception as exc:  # noqa: BLE001 - one bad client must not end the run
                    p.error = f"{type(exc).__name__}: {exc}"
                    self.say(f"participant {p.name} failed to start: {p.error}")

        await asyncio.gather(*(start(p) for p in order))

    # -- sampling
    def _server_sample(self, p: Participant) -> dict[str, Any]:
        out: dict[str, Any] = {"layer": None, "target_layer": None, "estimate_bps": None,
                               "server_rtt_ms": None}
        server = self.ctx.server
        if server is None:
            return out
        try:
            room = server.rooms.rooms.get(self.scenario.room)
            if room is None:
                return out
            member = next((m for m in room.participants.values() if m.identity == p.name), None)
            if member is None:
                return out
            sub = member.media.subscriber
            layers, targets, rtts = [], [], []
            for down in list(getattr(sub, "down_tracks", {}).values()):
                rtt = getattr(getattr(down, "stream", None), "rtt_ms", None)
                if rtt:
                    rtts.append(float(rtt))
                if not getattr(down, "is_video", False):
                    continue
                if getattr(down, "current_layer", None) is not None:
                    layers.append(down.current_layer)
                if getattr(down, "target_layer", None) is not None:
                    targets.append(down.target_layer)
            out["layer"] = min(layers) if layers else None
            out["target_layer"] = min(targets) if targets else None
            now_fn = getattr(server.engine, "now_ms", None)
            out["estimate_bps"] = _estimate_bps(sub, now_fn() if callable(now_fn) else None)
            out["server_rtt_ms"] = max(rtts) if rtts else None
        except Exception:  # noqa: BLE001 - the server's internals may change under us
            logger.debug("server sample failed", exc_info=True)
        return out

    async def _sample(self, now: float) -> None:
        t = now - (self.ctx.t0 or now)
        self.t.append(round(t, 3))
        dt = self.options.sample_interval_s
        for p in self.participants:
            cs: dict[str, Any] = {}
            if p.error is None:
                try:
                    cs = await asyncio.wait_for(p.client_sample(), 3.0)
                except Exception as exc:  # noqa: BLE001 - record a gap, keep sampling
                    logger.debug("sample of %s failed: %s", p.name, exc)
            p.seq_marks.append(p.tracker.snapshot() if p.tracker is not None else {})
            ss = self._server_sample(p)
            rc = p.relay_counters()
            prev = p._prev_relay or rc
            interval = dt if p._prev_relay is not None else None
            p._prev_relay = rc
            if p._window_relay is None:
                p._window_relay = rc
            rx = cs.get("rx")
            if rx is not None:
                p.rx_totals = rx
                if p._window_rx is None:
                    p._window_rx = rx
            prx = p._prev_rx or p.rx_totals
            p._prev_rx = p.rx_totals
            d_rx, d_lost = p.rx_totals[0] - prx[0], p.rx_totals[1] - prx[1]
            s = p.series
            s["recv_bps"].append((rc["down_bytes"] - prev["down_bytes"]) * 8 / interval
                                 if interval else None)
            s["sent_bps"].append((rc["up_bytes"] - prev["up_bytes"]) * 8 / interval
                                 if interval else None)
            s["estimate_bps"].append(ss["estimate_bps"])
            s["layer"].append(ss["layer"])
            s["target_layer"].append(ss["target_layer"])
            s["loss_before"].append(_frac(rc["down_drop"] - prev["down_drop"],
                                          rc["down_sent"] - prev["down_sent"]))
            s["uplink_loss"].append(_frac(rc["up_drop"] - prev["up_drop"],
                                          rc["up_sent"] - prev["up_sent"]))
            s["loss_after"].append(_frac(max(0, d_lost), max(0, d_rx) + max(0, d_lost))
                                   if rx is not None else None)
            s["rtt_ms"].append(cs.get("rtt_ms") if cs.get("rtt_ms") is not None
                               else ss["server_rtt_ms"])
            s["jitter_ms"].append(cs.get("jitter_ms"))
            videos = [m for m in p.meters.values() if m.kind == "video"]
            prev_counts = getattr(p, "_prev_counts", {})
            fps = [(m.window_frames - prev_counts.get(id(m), 0)) / dt for m in videos]
            p._prev_counts = {id(m): m.window_frames for m in videos}  # type: ignore[attr-defined]
            if not p.spec.subscribe or self.t[-1] <= 0:
                s["fps"].append(None)
            else:
                s["fps"].append(min(fps) if fps else 0.0)
            s["freezes"].append(sum(len(m.gaps) for m in videos))
            s["frozen"].append(any(m.frozen_at(now) for m in videos) if videos else None)

    def _apply_schedule(self, t: float, pending: list[tuple[float, Participant, Any]]) -> None:
        assert self.ctx.relay is not None
        while pending and pending[0][0] <= t:
            at, p, change = pending.pop(0)
            p.set_link(change.profile)
            self.events.append({"t": round(t, 3), "at": round(at, 3), "participant": p.name,
                                "link": change.label, "up": change.profile.up.spec(),
                                "down": change.profile.down.spec()})
            self.say(f"t={t:5.1f}s {p.name}: link -> {change.label}")

    # -- the run
    async def run(self) -> RunResult:
        started = time.time()
        try:
            await self._start_server()
            await self._start_relay()
            self.say(f"scenario {self.scenario.name}: {len(self._instances)} participants, "
                     f"{self.scenario.duration_s:g} s, Ferry {self.ctx.ws_url}, relay "
                     f"{self.ctx.turn_url}")
            await self._start_participants()
            await self._measure()
            return self._result(started)
        finally:
            await self._teardown()

    async def _measure(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        self.ctx.t0 = t0
        for p in self.participants:
            for m in p.meters.values():
                m.start_window(t0)
        pending = sorted(
            ((c.at_s, p, c) for p in self.participants for c in p.spec.schedule),
            key=lambda x: x[0])
        duration = self.scenario.duration_s
        step = self.options.sample_interval_s
        await self._sample(t0)
        k = 1
        while True:
            due = t0 + k * step
            if due > t0 + duration + 1e-6:
                break
            # sleep until the next sample, applying schedule changes exactly on time
            while True:
                now = time.monotonic()
                nxt = min([due] + [t0 + at for at, _, _ in pending[:1]])
                if nxt > now:
                    await asyncio.sleep(nxt - now)
                self._apply_schedule(time.monotonic() - t0, pending)
                if time.monotonic() >= due:
                    break
            await self._sample(time.monotonic())
            k += 1
        del loop
        end = time.monotonic()
        self._end = end
        for p in self.participants:
            for m in p.meters.values():
                m.finish(end)
            self._residual_loss(p)

    def _residual_loss(self, p: Participant) -> None:
        """Loss after recovery from the SeqTracker, leaving RTX time at the end.

        Sequence numbers sent in the last ``RECOVERY_GRACE_S`` may still be on their way
        (or be retransmitted) when the run stops, so they are not judged.
        """
        p.loss_after_total = None  # type: ignore[attr-defined]
        if p.tracker is None or len(p.seq_marks) < 2:
            return
        last_t = self.t[-1] - RECOVERY_GRACE_S
        cut = max((k for k, t in enumerate(self.t) if t <= last_t), default=0)
        series: list[Any] = [None]
        for k in range(1, len(p.seq_marks)):
            if k > cut:
                series.append(None)
                continue
            exp, miss = p.tracker.missing(p.seq_marks[k - 1], p.seq_marks[k])
            series.append(miss / exp if exp else 0.0)
        p.series["loss_after"] = series
        if cut > 0:
            exp, miss = p.tracker.missing(p.seq_marks[0], p.seq_marks[cut])
            p.loss_after_total = miss / exp if exp else 0.0  # type: ignore[attr-defined]

    async def _teardown(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.participants), return_exceptions=True)
        await self.ctx.close_browser()
        if self.ctx.relay is not None:
            with contextlib.suppress(Exception):
                await self.ctx.relay.close()
        if self._own_server is not None:
            with contextlib.suppress(Exception):
                await self._own_server.stop()

    # -- summary
    def _summary(self, p: Participant) -> dict[str, Any]:
        dur = max(1e-3, getattr(self, "_end", time.monotonic()) - (self.ctx.t0 or 0.0))
        videos = [m for m in p.meters.values() if m.kind == "video"]
        audios = [m for m in p.meters.values() if m.kind == "audio"]
        rc = p.relay_counters()
        w = p._window_relay or rc
        wrx = p._window_rx or p.rx_totals
        d_rx, d_lost = p.rx_totals[0] - wrx[0], max(0, p.rx_totals[1] - wrx[1])
        s = p.series
        n = len(self.t)
        tail = max(1, n // 4)
        tail_fps = [x for x in s["fps"][n - tail:] if x is not None]
        layers_after = [x for x in s["layer"] if x is not None]
        sub = p.spec.subscribe
        return {
            "client": p.kind,
            "profile": p.spec.link_label,
            "publish": list(p.spec.publish),
            "subscribe": sub,
            "error": p.error,
            "connected": 1 if p.connected and p.error is None else 0,
            "remote_video_tracks": len(videos),
            "remote_audio_tracks": len(audios),
            "decoded_frames": sum(m.window_frames for m in videos) if sub else None,
            "decoded_frames_min": min((m.window_frames for m in videos), default=0) if sub else None,
            "decoded_fps": (min((m.window_frames for m in videos), default=0) / dur) if sub else None,
            "final_fps": (_mean(tail_fps) or 0.0) if sub else None,
            "audio_frames": sum(m.window_frames for m in audios) if sub else None,
            "freeze_count": sum(len(m.gaps) for m in videos) if sub else None,
            "freeze_max_ms": max((g for m in videos for _, g in m.gaps), default=0.0) * 1000.0
            if sub else None,
            "freeze_total_ms": sum(g for m in videos for _, g in m.gaps) * 1000.0 if sub else None,
            "frame_gap_max_ms": max((m.max_gap for m in videos), default=0.0) * 1000.0
            if sub else None,
            "audio_gap_ms": sum(m.audio_missing for m in audios) * 1000.0
            if sub and audios else None,
            "loss_before_recovery": _frac(rc["down_drop"] - w["down_drop"],
                                          rc["down_sent"] - w["down_sent"]),
            "loss_after_recovery": (getattr(p, "loss_after_total", None)
                                    if p.tracker is not None and getattr(p, "loss_after_total", None)
                                    is not None else _frac(d_lost, d_rx + d_lost)) if sub else None,
            "uplink_loss": _frac(rc["up_drop"] - w["up_drop"], rc["up_sent"] - w["up_sent"]),
            "recv_bps": (rc["down_bytes"] - w["down_bytes"]) * 8 / dur,
            "sent_bps": (rc["up_bytes"] - w["up_bytes"]) * 8 / dur,
            "rtt_ms": _median(s["rtt_ms"]),
            "rtt_max_ms": max((x for x in s["rtt_ms"] if x is not None), default=None),
            "jitter_ms": _median(s["jitter_ms"]),
            "layer_mean": _mean(layers_after),
            "layer_min": min(layers_after) if layers_after else None,
            "estimate_bps": _mean(s["estimate_bps"]),
            "freezes": [{"t": round(start - (self.ctx.t0 or 0.0), 3), "ms": round(g * 1000.0, 1)}
                        for m in videos for start, g in m.gaps],
        }

    def _check(self, summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        groups = self._groups()
        checks: list[dict[str, Any]] = []
        implicit = Expectation.parse("all.connected == 1")
        for e, is_implicit in [(implicit, True)] + [(e, False) for e in self.scenario.expectations]:
            members = groups.get(e.subject, [])
            values = {m: summaries.get(m, {}).get(e.metric) for m in members}
            ok = bool(members)
            detail = ""
            if e.aggregate:
                present = [float(v) for v in values.values() if v is not None]
                agg: dict[str, Callable[[list[float]], float]] = {
                    "min": min, "max": max, "sum": sum, "mean": statistics.fmean,
                    "median": statistics.median}
                actual: Any = agg[e.aggregate](present) if present else None
                ok = actual is not None and e.holds(actual)
                failing: list[str] = [] if ok else [e.subject]
            else:
                failing = [m for m, v in values.items() if v is None or not e.holds(float(v))]
                ok = ok and not failing
                actual = values
            if not members:
                detail = f"no participant in {e.subject!r}"
            elif not ok:
                detail = ", ".join(f"{m}={_fmt(values.get(m)) if not e.aggregate else _fmt(actual)}"
                                   for m in failing)
            checks.append({"expect": e.text + (" (implicit)" if is_implicit else ""), "ok": ok,
                           "actual": actual, "failing": failing, "detail": detail})
        return checks

    def _groups(self) -> dict[str, list[str]]:
        """Like ``Scenario.groups`` but with the identities that actually ran (fallbacks)."""
        out: dict[str, list[str]] = {"all": [], "subscribers": [], "publishers": []}
        for name, spec in self._instances:
            out.setdefault(spec.name, []).append(name)
            if name != spec.name:
                out[name] = [name]
            out["all"].append(name)
            if spec.subscribe:
                out["subscribers"].append(name)
            if spec.publish:
                out["publishers"].append(name)
        return out

    def _result(self, started: float) -> RunResult:
        summaries = {p.name: self._summary(p) for p in self.participants}
        participants = {p.name: {**summaries[p.name], "series": p.series} for p in self.participants}
        server: dict[str, Any] = {"url": self.ctx.ws_url}
        if self.ctx.server is not None:
            with contextlib.suppress(Exception):
                snap = self.ctx.server.engine.snapshot()
                server["engine"] = {k: v for k, v in snap.items() if isinstance(v, int | float | dict)}
        relay = dict(self.ctx.relay.stats) if self.ctx.relay else {}
        return RunResult(self.scenario, started, self.t, participants, self.events,
                         self._check(summaries), list(self.ctx.notes), server, relay)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


async def run_scenario(scenario: Scenario, options: RunOptions) -> RunResult:
    """Run ``scenario`` and write its report into ``options.out_dir``."""
    from netem.report import write_report

    result = await Runner(scenario, options).run()
    write_report(result, options.out_dir)
    return result
