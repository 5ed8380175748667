"""What a scenario run measures, per participant, and how.

Client side: ``FrameMeter`` turns decoded-frame times into fps, freezes and audio gaps;
``SeqTracker`` (fed by ``watch_aiortc_receiver`` or a LiteClient hook) counts the RTP
packets that never arrived, after NACK/RTX. Server side: ``server_sample`` reads what
Ferry forwards to a participant (layer, estimate, RTT) through
``Engine.subscriber_stats``, when the server runs in-process.
"""

from __future__ import annotations

import bisect
import logging
import math
import statistics
import time
from typing import Any

logger = logging.getLogger("ferry.qa.measurement")

FREEZE_GAP_S = 0.5  # the freeze threshold until a track has a frame-interval history
FREEZE_HISTORY = 30  # frame intervals the W3C threshold's median is taken over
FREEZE_MIN_HISTORY = 5
POLLED_FROZEN_S = 1.0  # a polled client with no new frame for this long is frozen now
RECOVERY_GRACE_S = 1.5
AUDIO_GAP_S = 0.06

SERIES_KEYS = ("recv_bps", "sent_bps", "estimate_bps", "layer", "target_layer", "loss_before",
               "loss_after", "uplink_loss", "rtt_ms", "jitter_ms", "fps", "freezes", "frozen",
               "latency_ms", "latency_max_ms", "capacity_bps", "audio_concealed",
               "jitter_buffer_ms", "audio_jitter_buffer_ms", "audio_jitter_target_ms", "sent_fps")


def freeze_threshold(intervals: list[float]) -> float:
    """The W3C freeze threshold (webrtc-stats ``freezeCount``) for recent frame intervals:
    max(3 x median, median + 150 ms); ``FREEZE_GAP_S`` until there is a history.

    Why relative to the track's own rate: a 5 fps low layer has 200 ms between frames
    and must not count as frozen, while 400 ms without a frame at 30 fps is visible.
    """
    if len(intervals) < FREEZE_MIN_HISTORY:
        return FREEZE_GAP_S
    med = statistics.median(intervals)
    return max(3.0 * med, med + 0.150)


class FrameMeter:
    """Decoded-frame times of one remote track -> fps, freezes, gaps and latency.

    Why per-frame callbacks rather than polling counters: a freeze is a gap between
    two frames, and 500 ms sampling cannot see a 600 ms gap reliably. A client whose
    frames are only known by polling (Chromium) sets ``gaps_from_frames = False`` and
    records the browser's own freezes with :meth:`add_freeze` instead.
    """

    def __init__(self, kind: str, gaps_from_frames: bool = True) -> None:
        self.kind = kind
        self.gaps_from_frames = gaps_from_frames
        self.frames = 0
        self.last: float | None = None
        self.t0: float | None = None
        self.window_frames = 0
        self.intervals: list[float] = []  # the last FREEZE_HISTORY frame intervals
        self.gaps: list[tuple[float, float]] = []  # (start, length s) of freezes
        self.max_gap = 0.0
        self.audio_missing = 0.0
        self.latency: list[tuple[float, float]] = []  # (monotonic s, glass-to-glass ms)

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
        if self.last is not None:
            self.intervals.append(now - self.last)
            del self.intervals[:-FREEZE_HISTORY]
        self.last = now

    def add_frames(self, n: int, now: float) -> None:
        """``n`` frames found by a poll at ``now`` (no per-frame times: no gaps)."""
        if n <= 0:
            return
        self.frames += n
        if self.t0 is not None and now >= self.t0:
            self.window_frames += n
        self.last = now

    def on_latency(self, now: float, ms: float) -> None:
        """A frame shown at ``now`` (monotonic s) was captured ``ms`` earlier."""
        if self.t0 is not None and now >= self.t0:
            self.latency.append((now, ms))

    def add_freeze(self, start: float, length_s: float) -> None:
        """A freeze the client itself reported (Chromium's ``freezeCount``)."""
        if self.t0 is not None and start + length_s >= self.t0:
            self.gaps.append((max(start, self.t0), length_s))
            self.max_gap = max(self.max_gap, length_s)

    def _gap(self, start: float, gap: float) -> None:
        if self.kind == "video":
            if not self.gaps_from_frames:
                return
            self.max_gap = max(self.max_gap, gap)
            if gap >= freeze_threshold(self.intervals):
                self.gaps.append((start, gap))
        elif gap > AUDIO_GAP_S:
            self.audio_missing += gap - 0.02

    def finish(self, end: float) -> None:
        """Count a trailing gap (media that stopped and never came back)."""
        if self.t0 is None:
            return
        last = self.last if self.last is not None and self.last >= self.t0 else self.t0
        if not self.gaps_from_frames and self.kind == "audio":
            return  # only beeps heard (Chromium): its audio figures are Chrome's own
        if self.kind == "video" and not self.gaps_from_frames:
            # The browser counts a freeze only once it ends: one still running at the end
            # is added here, seen as polls that found no new frame.
            if self.frames and end - last > POLLED_FROZEN_S:
                self.gaps.append((last, end - last))
                self.max_gap = max(self.max_gap, end - last)
            return
        limit = freeze_threshold(self.intervals) if self.kind == "video" else AUDIO_GAP_S
        if end - last > limit:
            self._gap(last, end - last)

    def frozen_at(self, now: float) -> bool:
        if self.kind != "video":
            return False
        if not self.gaps_from_frames:
            return self.last is None or now - self.last > POLLED_FROZEN_S
        return self.last is None or now - self.last > freeze_threshold(self.intervals)


class LoopLag:
    """How late the runner's own event loop wakes up (a task asks for ``PERIOD_S`` naps).

    Why: every client, the relay and (in-process) Ferry share the runner's loop; when it
    stalls, frames wait in socket buffers and are stamped late, so a freeze or latency
    seen then may be the runner's, not the network's or Ferry's. The report names such
    stalls instead of letting them pass as the call's.
    """

    PERIOD_S = 0.05
    STALL_MS = 250.0  # a wake-up this late is named in the report's notes

    def __init__(self, stall_ms: float = STALL_MS) -> None:
        self.stall_ms = stall_ms
        self.expected: float | None = None
        self.window_max_ms = 0.0
        self.stalls: list[tuple[float, float]] = []  # (monotonic s, lag ms) over stall_ms

    def woke(self, now: float) -> None:
        """The nap that should have ended at ``self.expected`` ended at ``now``."""
        if self.expected is not None:
            lag = max(0.0, (now - self.expected) * 1000.0)
            self.window_max_ms = max(self.window_max_ms, lag)
            if lag > self.stall_ms:
                self.stalls.append((now, lag))
        self.expected = now + self.PERIOD_S

    def take(self) -> float:
        """The largest lag since the last call (ms)."""
        out, self.window_max_ms = self.window_max_ms, 0.0
        return out


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

    def add(self, ssrc: int, seq: int) -> bool:
        """Count ``seq``; True the first time it arrives (not a copy or retransmission)."""
        high = self.highest.get(ssrc)
        if high is None:
            ext = seq + 65536
        else:
            delta = (seq - high) & 0xFFFF
            ext = high + delta if delta < 0x8000 else high + delta - 0x10000
        if high is None or ext > high:
            self.highest[ssrc] = ext
        got = self.received.setdefault(ssrc, set())
        if ext in got:
            return False
        got.add(ext)
        return True

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
    if getattr(receiver, "_qa_watched", False):
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
    receiver._qa_watched = True
    return True


def capacity_bps(rate: Any, since: float, start: float, end: float) -> float | None:
    """Mean capacity (bit/s) of a netem rate stage over ``[start, end]`` (monotonic s),
    for a link whose rate started at ``since``; None for a link without a rate stage.

    Why from the link's own spec: the bitrate and estimate plots are read against what
    the network could carry at that moment, and for a trace that changes every 100 ms.
    """
    from netem.rate import MTU_BYTES, ConstantRate, MahimahiTrace, StepRate

    span_ms = (end - start) * 1000.0
    if rate is None or span_ms <= 0:
        return None
    if isinstance(rate, ConstantRate):
        return rate.bps
    a, b = (start - since) * 1000.0, (end - since) * 1000.0
    if isinstance(rate, MahimahiTrace):
        period = rate.period_ms
        ts = rate.timestamps
        count = 0
        base = math.floor(a / period) * period if a > 0 else 0
        while base < b:
            lo, hi = bisect.bisect_right(ts, a - base), bisect.bisect_right(ts, b - base)
            count += max(0, hi - lo)
            base += period
        return count * MTU_BYTES * 8 * 1000.0 / span_ms
    if isinstance(rate, StepRate):
        bits, t, step = 0.0, a, 10.0
        while t < b:  # 10 ms resolution is plenty for a 500 ms sample
            rel = t if rate.period_ms is None else t % rate.period_ms
            bps = next((r for at, r in reversed(rate.steps) if at <= max(0.0, rel)), 0.0)
            bits += bps * min(step, b - t) / 1000.0
            t += step
        return bits * 1000.0 / span_ms
    return None


def capacity_over(history: list[tuple[float, Any]], start: float, end: float) -> float | None:
    """Mean capacity (bit/s) over ``[start, end]`` of a link whose downlink rate stage
    changed over time: ``history`` is (since, rate) per change, oldest first.

    Why not the rate at the sample: a sample covers the interval before it, and a link
    changed halfway through carried the old rate for the first half; read from the rate
    at the sample, every change would show one sample early, before the estimate could
    follow it.
    """
    span = end - start
    if span <= 0 or not history:
        return None
    bits = 0.0
    for i, (since, rate) in enumerate(history):
        until = history[i + 1][0] if i + 1 < len(history) else end
        a, b = max(start, since), min(end, until)
        if b <= a:
            continue
        bps = capacity_bps(rate, since, a, b)
        if bps is None:
            return None
        bits += bps * (b - a)
    return bits / span


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1, nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def server_sample(server: Any, room: str, identity: str) -> dict[str, Any]:
    """Ferry's side of one participant: the lowest video layer forwarded to it and
    targeted, the layer per video track (``tracks``: track sid -> (layer, target)), its
    bandwidth estimate, and the highest RTT of its tracks.

    ``server`` is an in-process ``signaling.app.FerryServer`` (None: an external Ferry,
    whose figures are unknown); every value is None until the participant is in the room.
    """
    out: dict[str, Any] = {"layer": None, "target_layer": None, "estimate_bps": None,
                           "server_rtt_ms": None, "tracks": {}}
    if server is None:
        return out
    joined = server.rooms.rooms.get(room)
    member = joined.by_identity(identity) if joined is not None else None
    stats = server.engine.subscriber_stats(member.sid) if member is not None else None
    if stats is None:
        return out
    videos = [t for t in stats.tracks.values() if t.kind == "video"]
    layers = [t.current_layer for t in videos if t.current_layer is not None]
    targets = [t.target_layer for t in videos if t.target_layer is not None]
    rtts = [t.rtt_ms for t in stats.tracks.values() if t.rtt_ms]
    out["tracks"] = {sid: (t.current_layer, t.target_layer) for sid, t in stats.tracks.items()
                     if t.kind == "video"}
    out["layer"] = min(layers) if layers else None
    out["target_layer"] = min(targets) if targets else None
    out["estimate_bps"] = stats.estimate_bps
    out["server_rtt_ms"] = max(rtts) if rtts else None
    return out


def median_of(xs: list[Any]) -> float | None:
    """Median of the values that are not None; None when there are none."""
    vals = [float(x) for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def mean_of(xs: list[Any]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    vals = [float(x) for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def fraction(drop: float, sent: float) -> float:
    """``drop / sent``, 0 when nothing was sent."""
    return drop / sent if sent > 0 else 0.0
