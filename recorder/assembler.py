"""One published track's layers -> one continuous stream of frames (sans-I/O).

The recorder follows the best simulcast layer the publisher is sending, like a
DownTrack: it switches only on a keyframe of the new layer (asking for one), and
keeps only the current and the target layer's packets. Each layer has its own
random RTP timestamp base, so at a switch the new layer is mapped onto the output
timeline through both layers' RTCP sender reports (when both have one), else by
arrival time at that one point; every other frame keeps its RTP spacing exactly.
Outputs: `Frame`s with `timestamp` on the output timeline, and `keyframe_requests`
(layers to send a PLI for; the shell drains the list).
"""

from __future__ import annotations

from media.rtp.ntp import ntp_to_unix
from media.wire.seqnum import TS_MOD, seq_diff

from .jitter import AUDIO_LOSS_WAIT_MS, LOSS_WAIT_MS, Frame, Gap, JitterBuffer

__all__ = ["SenderClock", "TrackAssembler"]

LIVE_WINDOW_MS = 1000.0  # a layer with no packet for this long is not being sent
KEYFRAME_RETRY_MS = 500.0  # ask again for a keyframe we are still waiting for
# Simulcast start: wait this long after the first packet so every layer the publisher
# sends has shown up, and start on the best one (nothing is lost: it is buffered).
START_WAIT_MS = 300.0
SANE_SR_S = 5.0  # sender-report placement further than this from arrival is not trusted


class SenderClock:
    """The last RTCP sender report of one layer: RTP timestamp <-> Unix time."""

    __slots__ = ("rtp", "unix", "clock_rate")

    def __init__(self, rtp: int, unix: float, clock_rate: int) -> None:
        self.rtp = rtp  # extended, in the layer's own unwrapped domain
        self.unix = unix
        self.clock_rate = clock_rate

    def to_unix(self, ts: int) -> float:
        return self.unix + (ts - self.rtp) / self.clock_rate

    def from_unix(self, unix: float) -> int:
        return self.rtp + round((unix - self.unix) * self.clock_rate)


class TrackAssembler:
    """Layer choice, frame assembly and output timestamps for one track."""

    def __init__(
        self,
        *,
        video: bool,
        layers: int = 1,
        clock_rate: int = 90000,
        loss_wait_ms: float | None = None,
    ) -> None:
        self.video = video
        self.clock_rate = clock_rate
        if loss_wait_ms is None:
            loss_wait_ms = LOSS_WAIT_MS if video else AUDIO_LOSS_WAIT_MS
        self.loss_wait_ms = loss_wait_ms
        self._last_seen: list[float | None] = [None] * layers
        self._buffers: dict[int, JitterBuffer] = {}
        self._clocks: dict[int, SenderClock] = {}
        self._offsets: dict[int, int] = {}  # layer -> add to its ts for the output timeline
        self._asked_ms: dict[int, float] = {}
        self.current: int | None = None
        self.target = 0
        self.keyframe_requests: list[int] = []
        self.last_timestamp: int | None = None  # output timeline
        self._last_arrival_ms = 0.0
        self._first_packet_ms: float | None = None
        self.frames = 0
        self.gaps = 0
        self.switches = 0
        self.packets_ignored = 0  # layers neither current nor target

    # -- inputs ----------------------------------------------------------------------
    def push(
        self,
        layer: int,
        ext_seq: int,
        timestamp: int,
        marker: bool,
        payload: bytes | memoryview,
        keyframe: bool,
        now_ms: float,
    ) -> None:
        """One packet of `layer`; the payload is copied only if the layer is kept."""
        if layer >= len(self._last_seen):
            self._last_seen.extend([None] * (layer + 1 - len(self._last_seen)))
        self._last_seen[layer] = now_ms
        if self._first_packet_ms is None:
            self._first_packet_ms = now_ms
        if layer != self.current and layer != self.target:
            self._retarget(now_ms)
            if layer != self.current and layer != self.target:
                self.packets_ignored += 1
                return
        buf = self._buffers.get(layer)
        if buf is None:
            buf = self._buffers[layer] = JitterBuffer(
                video=self.video, layer=layer, loss_wait_ms=self.loss_wait_ms
            )
        buf.push(ext_seq, timestamp, marker, payload, keyframe, now_ms)

    def on_sender_report(self, layer: int, ntp: int, rtp_timestamp: int) -> None:
        """Remember the layer's RTP <-> wall mapping (in its unwrapped timestamp domain)."""
        buf = self._buffers.get(layer)
        ref = buf.highest_timestamp if buf is not None else None
        ext = rtp_timestamp + TS_MOD if ref is None else ref + seq_diff(rtp_timestamp, ref % TS_MOD, TS_MOD)
        self._clocks[layer] = SenderClock(ext, ntp_to_unix(ntp), self.clock_rate)

    def resync(self) -> None:
        """Drop everything buffered and restart at the next keyframe (frames were lost downstream)."""
        for buf in self._buffers.values():
            buf.reset()
        if self.current is not None:
            self._ask(self.current, None)

    # -- outputs ---------------------------------------------------------------------
    def pop(self, now_ms: float, *, flush: bool = False) -> list[Frame]:
        """Frames ready for the muxer, with `timestamp` on the output timeline.

        `flush` (the track ends): holes are declared lost at once, so what follows them
        is written instead of waiting for repairs that can no longer matter.
        """
        self._retarget(now_ms)
        out: list[Frame] = []
        if self.current is None and len(self._last_seen) > 1:
            started = self._first_packet_ms
            if started is None or now_ms - started < START_WAIT_MS:
                return out
        current = self.current
        if current is not None and current in self._buffers:
            for item in self._buffers[current].pop(now_ms, flush=flush):
                if isinstance(item, Gap):
                    self.gaps += 1
                    self._ask(current, now_ms)
                else:
                    out.append(self._stamp(item, now_ms))
        target = self.target
        if target != self.current and target in self._buffers:
            items = self._buffers[target].pop(now_ms, flush=flush)
            for i, item in enumerate(items):
                if isinstance(item, Frame) and item.keyframe:
                    self._switch(target, item, now_ms)
                    out.append(self._stamp(item, now_ms))
                    out.extend(self._stamp(f, now_ms) for f in items[i + 1 :] if isinstance(f, Frame))
                    break
            else:
                self._ask(target, now_ms)
        return out

    def wall_clock(self, timestamp: int) -> float | None:
        """Unix time of an output timestamp, through the current layer's sender report."""
        layer = self.current
        clock = self._clocks.get(layer) if layer is not None else None
        if clock is None or layer is None:
            return None
        return clock.to_unix(timestamp - self._offsets.get(layer, 0))

    # -- internals -------------------------------------------------------------------
    def _retarget(self, now_ms: float) -> None:
        """Target the highest layer that is being sent (DownTrack-like, no bandwidth cap)."""
        best = None
        for layer, seen in enumerate(self._last_seen):
            if seen is not None and now_ms - seen < LIVE_WINDOW_MS:
                best = layer
        if best is None or best == self.target:
            return
        old = self.target
        self.target = best
        if old != self.current and old in self._buffers:
            del self._buffers[old]  # was waiting for a keyframe there; not any more
        if best != self.current:
            self._ask(best, now_ms)

    def _switch(self, layer: int, frame: Frame, now_ms: float) -> None:
        """Make `layer` current at its keyframe `frame`, mapping its timestamps on the output."""
        old = self.current
        if old is not None and old != layer:
            self.switches += 1
            self._buffers.pop(old, None)
        self.current = layer
        if layer in self._offsets and old is None:
            return
        last = self.last_timestamp
        if last is None:
            self._offsets[layer] = 0
            return
        # By arrival, at this one frame: what is left without (sane) sender reports.
        by_arrival = last + max(1, round((now_ms - self._last_arrival_ms) * self.clock_rate / 1000.0))
        mapped = by_arrival
        clock_new = self._clocks.get(layer)
        clock_old = self._clocks.get(old) if old is not None else None
        if clock_new is not None and clock_old is not None and old is not None:
            by_reports = clock_old.from_unix(clock_new.to_unix(frame.timestamp)) + self._offsets.get(old, 0)
            if abs(by_reports - by_arrival) < SANE_SR_S * self.clock_rate:
                mapped = by_reports  # a report from another wrap cycle would be hours off
        self._offsets[layer] = mapped - frame.timestamp

    def _stamp(self, frame: Frame, now_ms: float) -> Frame:
        if self.current is None:
            self.current = frame.layer
            self._offsets.setdefault(frame.layer, 0)
        ts = frame.timestamp + self._offsets.get(frame.layer, 0)
        last = self.last_timestamp
        if last is not None and ts <= last:
            # A switch keyframe captured with (or before) the old layer's last frame:
            # one tick later, so the file stays monotonic; the offset stays exact.
            ts = last + 1
        frame.timestamp = self.last_timestamp = ts
        self._last_arrival_ms = now_ms
        self.frames += 1
        return frame

    def _ask(self, layer: int, now_ms: float | None) -> None:
        """Queue a keyframe request for `layer`, at most one per KEYFRAME_RETRY_MS."""
        if not self.video:
            return
        last = self._asked_ms.get(layer)
        if now_ms is not None and last is not None and now_ms - last < KEYFRAME_RETRY_MS:
            return
        if now_ms is not None:
            self._asked_ms[layer] = now_ms
        else:
            self._asked_ms.pop(layer, None)
        self.keyframe_requests.append(layer)
