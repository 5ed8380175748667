"""The participants of a scenario run, one class per client kind, and what they share.

Every participant reaches Ferry only through netem (DESIGN §9): the aiortc
``FerryClient`` and headless Chromium through the impairing TURN relay with a
relay-only ICE policy, under a TURN username naming a profile that exists for that
participant alone (``sc-<name>:<name>``, with a random password of its own for the run);
the ``LiteClient``, which has no TURN client, through a ``UdpProxy`` of its own with the
same links. Changing a participant's network is then one call (``set_link``) for any
client kind, and the relay's and proxy's link counters give every kind the same bitrate
and network-loss figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import zlib
from pathlib import Path
from typing import Any

from clients.stamp import BeepDetector, latency_ms, read_stamp
from netem.profiles import Profile
from qa.context import RunContext
from qa.measurement import SERIES_KEYS, FrameMeter, SeqTracker, watch_aiortc_receiver
from qa.scenario import ParticipantSpec
from qa.vp8_frames import Vp8Decoder, Vp8FrameAssembler

logger = logging.getLogger("ferry.qa.participants")

PROBE_JS = Path(__file__).with_name("browser_probe.js")


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
        # aiortc viewers' video loss repair, cumulative: (packets NACKed again, holes given
        # up for a keyframe); None for other clients
        self.video_repair: tuple[int, int] | None = None
        self.tracker: SeqTracker | None = None  # video RTP, set by clients that see every packet
        self.audio_tracker: SeqTracker | None = None  # audio RTP, likewise
        self.audio_marks: list[dict[int, int]] = []  # audio tracker snapshot per sample
        self.audio_loss_after_total: float | None = None
        # Chromium's own audio counters over the window: concealed and received samples,
        # concealment events (start, latest), per remote participant
        self.concealment: dict[str, list[tuple[float, float, float]]] = {}
        self.layer_series: dict[str, list[Any]] = {}  # per received video track, per sample
        self.seq_marks: list[dict[int, int]] = []  # tracker snapshot per sample
        self.loss_after_total: float | None = None  # from the tracker, set when the run ends
        self.frame_counts: dict[int, int] = {}  # decoded frames per meter at the last sample
        self.proxy: Any = None  # a UdpProxy instead of the relay (LiteClient)
        self._prev_frames_sent: int | None = None
        self.link_label = spec.link_label  # the link now
        # (since when, downlink rate stage) per link change, oldest first
        self.link_history: list[tuple[float, Any]] = [(time.monotonic(), spec.link.down.rate)]

    @property
    def publishes(self) -> bool:
        return bool(self.spec.publish)

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def set_link(self, profile: Profile, label: str | None = None) -> None:
        """Change this participant's network (the relay profile its TURN username names)."""
        if self.ctx.relay is not None:
            self.ctx.relay.set_profile(self.profile, profile)
        self._note_link(profile, label)

    def _note_link(self, profile: Profile, label: str | None) -> None:
        self.link_history.append((time.monotonic(), profile.down.rate))
        self.link_label = label or profile.name

    async def client_sample(self) -> dict[str, Any]:
        """rtt_ms, jitter_ms, and rx totals from the client's own stats."""
        return {}

    def video_frames_sent(self) -> int | None:
        """Video frames this participant's encoder has produced so far (None: it does not
        publish video). Why: when viewers freeze together, a publisher that stopped
        producing frames (a starved encoder on a shared CPU) is the cause, not Ferry."""
        return None

    def meter(self, key: str, kind: str, gaps_from_frames: bool = True) -> FrameMeter:
        m = self.meters.get(key)
        if m is None:
            m = self.meters[key] = FrameMeter(kind, gaps_from_frames)
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
        from clients.client import FerryClient
        from clients.media_sources import BeepAudioTrack, TestPatternVideoTrack

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
            tracks.append(BeepAudioTrack(freq=300.0 + 20.0 * (len(self.name) % 20)))
        if "video" in self.spec.publish:
            v = self.ctx.scenario.video
            self._video = TestPatternVideoTrack(int(v["width"]), int(v["height"]), float(v["fps"]))
            tracks.append(self._video)
        if tracks:
            await self.client.publish(*tracks)
        self.connected = True

    def video_frames_sent(self) -> int | None:
        video = getattr(self, "_video", None)
        return video.frames_sent if video is not None else None

    def _on_track(self, psid: str, tsid: str, track: Any) -> None:
        self._watch()
        sink = self.client.sinks.get((psid, tsid))
        if sink is not None:
            meter = self.meter(f"{psid}/{tsid}", sink.kind)
            if sink.kind == "video":
                sink.on_frame = lambda frame, m=meter: _video_frame(m, frame)
            else:
                detector = BeepDetector()
                sink.on_frame = lambda frame, m=meter, d=detector: _audio_frame(m, d, frame)

    def _watch(self) -> None:
        if self.tracker is None:
            self.tracker = SeqTracker()
            self.audio_tracker = SeqTracker()
        sub = self.client.subscriber
        for tr in sub.getTransceivers() if sub is not None else []:
            tracker = self.tracker if tr.kind == "video" else self.audio_tracker
            watch_aiortc_receiver(tr.receiver, tracker)

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
        videos = [t for t in st["subscriber"]["tracks"].values() if t.get("kind") == "video"]
        self.video_repair = (
            sum(t.get("nacksRepeated") or 0 for t in videos),
            sum(t.get("holesGivenUp") or 0 for t in videos),
        )
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


def _video_frame(meter: FrameMeter, frame: Any) -> None:
    """A decoded aiortc frame: its time, and its capture stamp when it carries one."""
    now = time.monotonic()
    meter.on_frame(now)
    try:
        stamp = read_stamp(frame.to_ndarray(format="gray"))
    except Exception:  # noqa: BLE001 - measuring must never break the media path
        logger.debug("stamp read failed", exc_info=True)
        return
    if stamp is not None:
        meter.on_latency(now, latency_ms(time.time() * 1000.0, stamp))


def _audio_frame(meter: FrameMeter, detector: BeepDetector, frame: Any) -> None:
    """A decoded aiortc audio frame: its time, and the mouth-to-ear latency of a beep
    starting in it."""
    now = time.monotonic()
    meter.on_frame(now)
    try:
        heard = detector.feed(frame.to_ndarray(), time.time() * 1000.0,
                              len(frame.layout.channels))
    except Exception:  # noqa: BLE001 - measuring must never break the media path
        logger.debug("beep detection failed", exc_info=True)
        return
    for ms in heard:
        meter.on_latency(now, ms)


CHROMIUM_VIDEO = {"width": 960, "height": 540, "fps": 24}
"""The canvas clock a Chromium participant publishes as its camera (540p: Chrome sends
all three simulcast layers from 960x540 up)."""


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
        config = {**CHROMIUM_VIDEO, "publish": list(self.spec.publish), "beeps": True}
        await self.context.add_init_script(
            f"window.__qaConfig = {json.dumps(config)};\n{PROBE_JS.read_text()}")
        await self.page.goto(f"{self.ctx.http_url}/?{urlencode(q)}")
        await self.page.wait_for_function("window.ferry && window.ferry.state === 'joined'",
                                          timeout=self.ctx.options.connect_timeout_s * 1000)
        self.connected = True
        self._chrome_prev: dict[str, tuple[int, int, float]] = {}  # sid -> frames, freezes, s
        self._jitter_prev: dict[str, tuple[float, int, float]] = {}  # kind -> delay s, emitted, minimum s
        self.jitter_buffer_ms: float | None = None
        self.audio_jitter_buffer_ms: float | None = None
        self.audio_jitter_target_ms: float | None = None

    async def client_sample(self) -> dict[str, Any]:
        stats = await self.page.evaluate("window.ferry.stats()")
        local = await self.page.evaluate("window.ferry.localStats()")
        probe = await self.page.evaluate("window.__qa.sample()")
        now = time.monotonic()
        encoded = [int(e.get("framesEncoded") or 0) for e in local.get("encodings") or []
                   if e.get("kind") == "video"]
        self._frames_encoded = max(encoded) if encoded else None
        rx = lost = 0
        rtt = local.get("rtt")
        for s in stats.values():
            rx += (s.get("videoPacketsReceived") or 0) + (s.get("audioPacketsReceived") or 0)
            lost += max(0, (s.get("videoPacketsLost") or 0) + (s.get("audioPacketsLost") or 0))
            if rtt is None and s.get("rtt") is not None:
                rtt = s["rtt"]
        self._chrome_inbound(probe.get("inbound") or [], now)
        for sid, tile in (probe.get("tiles") or {}).items():
            for kind, key in (("video", "latency"), ("audio", "beeps")):
                m = self.meters.get(f"{sid}/{kind}")
                if m is None and kind == "audio" and tile.get(key):
                    m = self.meter(f"{sid}/audio", "audio", gaps_from_frames=False)
                for epoch_ms, ms in (tile.get(key) or []) if m is not None else []:
                    m.on_latency(now - (float(probe["now"]) - float(epoch_ms)) / 1000.0, float(ms))
        return {"rtt_ms": rtt * 1000.0 if rtt is not None else None, "jitter_ms": None,
                "rx": (rx, lost), "connected": True, "jitter_buffer_ms": self.jitter_buffer_ms,
                "audio_jitter_buffer_ms": self.audio_jitter_buffer_ms,
                "audio_jitter_target_ms": self.audio_jitter_target_ms}

    def video_frames_sent(self) -> int | None:
        return getattr(self, "_frames_encoded", None)

    def _jitter_buffers(self, inbound: list[dict[str, Any]]) -> None:
        """Chrome's video and audio jitter buffer delay over the last sample (their share
        of latency); the video's follows the audio's where lip sync holds it back.

        Also the delay the audio jitter buffer aims for on the network's evidence alone
        (``jitterBufferMinimumDelay``: lip sync not included). Audio that waited out an
        outage in the bottleneck reaches it seconds late in one burst, and that evidence
        can hold its aim at up to 2 s until the next outage: a delay no sender can take
        back, which this figure tells apart from one Ferry's queues make."""
        jitter = {"video": [0.0, 0, 0.0], "audio": [0.0, 0, 0.0]}  # kind -> delay s, emitted, minimum s
        for s in inbound:
            if s.get("sid") and s.get("kind") in jitter:
                j = jitter[s["kind"]]
                j[0] += float(s.get("jitterBufferDelay") or 0.0)
                j[1] += int(s.get("jitterBufferEmittedCount") or 0)
                j[2] += float(s.get("jitterBufferMinimumDelay") or 0.0)
        for kind, (delay, emitted, minimum) in jitter.items():
            prev_delay, prev_emitted, prev_minimum = self._jitter_prev.get(kind, (0.0, 0, 0.0))
            self._jitter_prev[kind] = (delay, emitted, minimum)
            fresh = emitted - prev_emitted
            ms = (delay - prev_delay) / fresh * 1000.0 if fresh > 0 else None
            if kind == "video":
                self.jitter_buffer_ms = ms
            else:
                self.audio_jitter_buffer_ms = ms
                self.audio_jitter_target_ms = (
                    (minimum - prev_minimum) / fresh * 1000.0 if fresh > 0 and minimum > 0 else None
                )

    def _chrome_inbound(self, inbound: list[dict[str, Any]], now: float) -> None:
        """Chrome's own per-track figures: decoded frames, freezes (``freezeCount``,
        ``totalFreezesDuration``) and audio concealment, summed per remote participant."""
        videos: dict[str, list[float]] = {}
        audios: dict[str, list[float]] = {}  # concealed samples, received samples, events
        for s in inbound:
            sid = s.get("sid")
            if not sid:
                continue
            if s.get("kind") == "video":
                v = videos.setdefault(sid, [0, 0, 0.0])
                v[0] += int(s.get("framesDecoded") or 0)
                v[1] += int(s.get("freezeCount") or 0)
                v[2] += float(s.get("totalFreezesDuration") or 0.0)
            elif s.get("kind") == "audio":
                a = audios.setdefault(sid, [0.0, 0.0, 0.0])
                a[0] += float(s.get("concealedSamples") or 0)
                a[1] += float(s.get("totalSamplesReceived") or 0)
                a[2] += float(s.get("concealmentEvents") or 0)
        self._jitter_buffers(inbound)
        # The first sample (at t = 0) only sets the baselines: counters run from the
        # track's start, the window from t = 0.
        t0 = self.ctx.t0
        in_window = t0 is not None and now >= t0 + self.ctx.options.sample_interval_s / 2
        for sid, (frames, freezes, frozen_s) in videos.items():
            m = self.meter(f"{sid}/video", "video", gaps_from_frames=False)
            pf, pc, pd = self._chrome_prev.get(sid, (0, 0, 0.0))
            if in_window or sid not in self._chrome_prev:
                self._chrome_prev[sid] = (int(frames), int(freezes), frozen_s)
            if not in_window:
                if frames:
                    m.last = now
                continue
            m.add_frames(int(frames - pf), now)
            if freezes > pc:
                each = (frozen_s - pd) / (freezes - pc)
                for _ in range(int(freezes - pc)):
                    m.add_freeze(now - (frozen_s - pd), each)
        for sid, point in audios.items():
            marks = self.concealment.setdefault(sid, [])
            if not marks or not in_window:
                marks[:] = [tuple(point), tuple(point)]
            else:
                marks[1] = tuple(point)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.context.close()


LITE_LAYERS = ((160, 120, 120_000), (320, 240, 350_000), (640, 480, 900_000))


class LiteParticipant(Participant):
    """Ferry's own cheap endpoint (``clients.lite.LiteClient``).

    It publishes simulcast VP8 (three layers, so Ferry's layer selection has something
    to choose from; encoded live and stamped by the first of a group, pre-encoded clips
    from the rest) and receives without decoding; a "frame" here is a
    video RTP packet with the marker bit (the last packet of a frame) or an audio
    packet (20 ms of Opus) the first time it arrives. Its network is
    a per-participant ``UdpProxy`` with the same links a TURN allocation would get.
    """

    kind = "lite"

    async def start(self) -> None:
        from clients.lite import LiteClient, LiveVp8Source, encode_opus_clip, encode_vp8_clip
        from netem.proxy import UdpProxy

        seed = self.ctx.options.seed if self.ctx.options.seed is not None else self.ctx.scenario.seed
        self.proxy = UdpProxy(("127.0.0.1", 0), ("127.0.0.1", 9), self.spec.link.up,
                              self.spec.link.down, seed=zlib.crc32(f"{seed}/{self.name}".encode()))
        await self.proxy.start()
        self.tracker = SeqTracker()
        self.audio_tracker = SeqTracker()
        # One LiteClient per group assembles and decodes its video, for the group's
        # glass-to-glass figure (decoding every student would load the runner's CPU).
        self.decodes = self.spec.subscribe and self.name == self.spec.instance_names()[0]
        self._assemblers: dict[str, tuple[Vp8FrameAssembler, Vp8Decoder]] = {}
        self.client = LiteClient(connect_timeout=self.ctx.options.connect_timeout_s, name=self.name,
                                 candidate_rewrite=self.proxy.route)
        await self.client.connect(self.ctx.ws_url)
        await self.client.join(self.ctx.token(self.name, self.spec),
                               auto_subscribe=self.spec.subscribe)
        if self.spec.publish:
            fps = int(self.ctx.scenario.video.get("fps", 15))
            # The first publisher of a group encodes live, each frame stamped with its
            # capture time (its viewers' glass-to-glass figure, and a PLI answered with a
            # keyframe of the picture then); the rest send the shared pre-encoded clips.
            video: list[Any]
            if self.name == self.spec.instance_names()[0]:
                video = [LiveVp8Source(w, h, br, fps) for w, h, br in LITE_LAYERS]
            else:
                video = [encode_vp8_clip(w, h, 4 * fps, br, keyframe_interval=2 * fps, fps=fps)
                         for w, h, br in LITE_LAYERS]
            audio = encode_opus_clip(4.0) if "audio" in self.spec.publish else None
            await self.client.publish_vp8(video, fps=fps, audio=audio)
        self.connected = True

    def video_frames_sent(self) -> int | None:
        pub = getattr(self.client, "publisher", None) if hasattr(self, "client") else None
        return max((layer.frames_sent for layer in pub.layers), default=None) if pub else None

    def set_link(self, profile: Profile, label: str | None = None) -> None:
        if self.proxy is not None:
            self.proxy.set_links(profile.up, profile.down)
        self._note_link(profile, label)

    def _watch(self) -> None:
        sub = self.client.subscriber
        if sub is None or getattr(sub, "_qa_watched", False):
            return
        original = sub.handle_rtp
        video_tracker, audio_tracker = self.tracker, self.audio_tracker
        assert video_tracker is not None and audio_tracker is not None

        def handle(packet: bytes, now_ms: float) -> None:
            try:
                ssrc = int.from_bytes(packet[8:12], "big")
                counters = sub._by_ssrc.get(ssrc)
                tracker = video_tracker if counters is None or counters.kind == "video" \
                    else audio_tracker
                if counters is None:
                    pass
                elif ssrc == counters.ssrc:
                    seq = (packet[2] << 8) | packet[3]
                    first = tracker.add(ssrc, seq)
                    if packet[1] & 0x80 if counters.kind == "video" else first:  # a frame's end
                        key = f"{counters.participant_sid}/{counters.track_sid}"
                        self.meter(key, counters.kind).on_frame()
                    if counters.kind == "video" and self.decodes:
                        self._picture(counters, seq, packet, _rtp_payload(packet))
                elif len(packet) > 14:
                    body = _rtp_payload(packet)
                    if len(body) >= 2:
                        osn = (body[0] << 8) | body[1]
                        tracker.add(counters.ssrc, osn)
                        if counters.kind == "video" and self.decodes:
                            self._picture(counters, osn, packet, body[2:])
            except Exception:  # noqa: BLE001 - measuring must never break the media path
                logger.debug("lite tracking failed", exc_info=True)
            original(packet, now_ms)

        sub.handle_rtp = handle  # type: ignore[method-assign]
        sub._qa_watched = True  # type: ignore[attr-defined]

    def _picture(self, counters: Any, seq: int, packet: bytes, payload: bytes) -> None:
        """Assemble and decode this viewer's video (``decodes``): the stamp's latency."""
        key = f"{counters.participant_sid}/{counters.track_sid}"
        assembler = self._assemblers.get(key)
        if assembler is None:
            assembler = self._assemblers[key] = (Vp8FrameAssembler(), Vp8Decoder())
        timestamp = int.from_bytes(packet[4:8], "big")
        for frame in assembler[0].add(seq, timestamp, bool(packet[1] & 0x80), payload):
            plane = assembler[1].decode(frame)
            stamp = read_stamp(plane) if plane is not None else None
            if stamp is not None:
                self.meter(key, "video").on_latency(time.monotonic(),
                                                    latency_ms(time.time() * 1000.0, stamp))

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


def _rtp_payload(packet: bytes) -> bytes:
    """The payload of a decrypted RTP packet (after CSRCs, extensions and padding)."""
    b0 = packet[0]
    off = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10 and len(packet) >= off + 4:
        off += 4 + 4 * ((packet[off + 2] << 8) | packet[off + 3])
    end = len(packet) - (packet[-1] if b0 & 0x20 and len(packet) > off else 0)
    return packet[off:max(off, end)]


def lite_available() -> bool:
    """True when ``clients.lite`` exists (a trimmed install may leave it out).

    Only the module itself being absent counts as "not available": any other import
    error (a syntax error, a missing name, a broken dependency) propagates, so a broken
    client fails the run and its tests instead of silently falling back or skipping.
    """
    try:
        from clients.lite import LiteClient  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name == "clients.lite":
            return False
        raise
    return True
