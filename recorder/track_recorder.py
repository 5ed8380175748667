"""The recorder's `PacketSink` for one published track.

On the event loop it does only cheap, bounded work per packet: copy the payload
(unwrapping Chrome's audio RED to its primary block), feed the `TrackAssembler`,
depacketize the frames that complete, and queue them for the writer thread. It
forwards the assembler's keyframe requests to its `SinkHost` (the track, which
coalesces them with the subscribers' PLIs). It never blocks: a full writer queue
drops the frame, and video then restarts at the next keyframe. It times that
work (`loop_s` over `packets`), which the server exports as its cost to forwarding.
"""

from __future__ import annotations

import time
from pathlib import Path

from media.routing.sink import SinkHost
from media.wire.red import parse_red
from media.wire.rtp import RtpView

from .assembler import TrackAssembler
from .depacketize import h264_frame, h264_parameter_sets, opus_samples, vp8_frame
from .jitter import Frame
from .manifest import TrackEntry
from .mux import TrackFile
from .worker import MuxWorker

__all__ = ["TrackRecorder"]

_DEPACKETIZE = {"vp8": vp8_frame, "h264": h264_frame, "opus": lambda payloads: payloads[0]}


class TrackRecorder:
    """Records one track into `directory / entry.file`; see the module docstring."""

    def __init__(
        self,
        entry: TrackEntry,
        directory: Path,
        worker: MuxWorker,
        *,
        host: SinkHost | None = None,
        layers: int = 1,
        red_pt: int | None = None,
        unix_offset_s: float | None = None,
    ) -> None:
        if entry.codec not in _DEPACKETIZE:
            raise ValueError(f"cannot record codec {entry.codec!r}; known: {sorted(_DEPACKETIZE)}")
        self.entry = entry
        self.host = host
        self.worker = worker
        self.red_pt = red_pt
        self.unix_offset_s = unix_offset_s  # monotonic ms -> Unix, for arrival-time sync
        self.video = entry.kind == "video"
        self.wanted_layer = layers - 1  # PacketSink: dynacast keeps every layer on for us
        self.assembler = TrackAssembler(video=self.video, layers=layers, clock_rate=entry.clock_rate)
        self.file = TrackFile(str(directory / entry.file), entry.codec, entry.clock_rate)
        self._depacketize = _DEPACKETIZE[entry.codec]
        self._first_ts: int | None = None
        self._first_arrival_ms = 0.0
        self._last_arrival_ms = 0.0
        self.packets = 0
        self.loop_s = 0.0  # event-loop time spent in on_packet: the recorder's cost to forwarding
        self.malformed = 0
        self.closed = False

    # -- PacketSink ------------------------------------------------------------------
    def on_packet(self, layer: int, view: RtpView, ext_seq: int, keyframe: bool, now_ms: float) -> None:
        if self.closed or view.payload_end <= view.payload_start:
            return  # padding-only packets carry no media
        began = time.perf_counter()
        try:
            self._on_packet(layer, view, ext_seq, keyframe, now_ms)
        finally:
            self.loop_s += time.perf_counter() - began

    def _on_packet(self, layer: int, view: RtpView, ext_seq: int, keyframe: bool, now_ms: float) -> None:
        self.packets += 1
        payload: bytes | memoryview
        if self.red_pt is not None and view.payload_type == self.red_pt:
            try:
                payload = parse_red(view.payload)[-1].data  # the primary block
            except ValueError:
                self.malformed += 1
                return
        else:
            payload = view.payload  # copied by the jitter buffer if this layer is kept
        asm = self.assembler
        asm.push(layer, ext_seq, view.timestamp, view.marker, payload, keyframe, now_ms)
        self._drain(now_ms)

    def on_sender_report(self, layer: int, ntp: int, rtp_timestamp: int, now_ms: float) -> None:
        self.assembler.on_sender_report(layer, ntp, rtp_timestamp)

    def on_track_closed(self) -> None:
        self.close(self._last_arrival_ms)

    # -- shell hooks -----------------------------------------------------------------
    def on_timer(self, now_ms: float) -> None:
        """Declare holes lost when no packet came to do it (a stalled publisher)."""
        if not self.closed:
            self._drain(now_ms)

    def close(self, now_ms: float) -> None:
        """Write what is complete and finalize the file (on the writer thread); idempotent."""
        if self.closed:
            return
        self._drain(now_ms, flush=True)  # nothing more comes: what waits behind a hole goes out
        self.closed = True
        self.worker.submit(self._finish, essential=True)

    @property
    def started(self) -> bool:
        """The first frame was written: its RTP time (file time 0) is known."""
        return self._first_ts is not None

    def snapshot(self) -> TrackEntry:
        """The manifest entry with the timing known so far (called on the event loop)."""
        entry, asm = self.entry, self.assembler
        entry.frames = asm.frames
        entry.gaps = asm.gaps
        entry.layer_switches = asm.switches
        entry.error = self.file.error
        first, last = self._first_ts, asm.last_timestamp
        if first is None or last is None:
            return entry
        entry.first_rtp, entry.last_rtp = first, last
        first_unix, last_unix = asm.wall_clock(first), asm.wall_clock(last)
        if first_unix is not None and last_unix is not None:
            entry.first_unix, entry.last_unix, entry.sync = first_unix, last_unix, "rtcp"
        elif self.unix_offset_s is not None:
            entry.first_unix = self.unix_offset_s + self._first_arrival_ms / 1000.0
            entry.last_unix = entry.first_unix + (last - first) / entry.clock_rate
            entry.sync = "arrival"
        return entry

    # -- internals -------------------------------------------------------------------
    def _drain(self, now_ms: float, flush: bool = False) -> None:
        asm = self.assembler
        frames = asm.pop(now_ms, flush=flush)
        if asm.keyframe_requests:
            layers, asm.keyframe_requests = asm.keyframe_requests, []
            if self.host is not None:
                for layer in layers:
                    self.host.request_keyframe(layer, now_ms)
        for frame in frames:
            if not self._write(frame, now_ms):
                break
        self._last_arrival_ms = now_ms

    def _write(self, frame: Frame, now_ms: float) -> bool:
        """Queue one frame; False when the rest of this batch must be dropped (resync)."""
        try:
            data = self._depacketize(frame.payloads)
        except ValueError:
            self.malformed += 1
            self.assembler.resync()
            return False
        if self._first_ts is None:
            if self.entry.codec == "h264" and h264_parameter_sets(data) is None:
                # A "keyframe" that is only an SPS: the file header needs SPS, PPS and
                # an IDR together, so wait for a full one.
                self.assembler.resync()
                return False
            self._first_ts = frame.timestamp
            self._first_arrival_ms = now_ms
        if self.file.error is not None:
            return False  # the file failed (full disk): counted once, nothing more to write
        pts = frame.timestamp - self._first_ts
        duration = opus_samples(data) if not self.video else 0
        if self.worker.submit(self.file.write, data, pts, frame.keyframe, duration):
            return True
        self.entry.dropped += 1
        if self.video:  # the next frames reference the dropped one: restart at a keyframe
            self.assembler.resync()
            return False
        return True

    def _finish(self) -> None:
        """Writer thread: close the file and note its duration for the manifest."""
        file = self.file
        entry = self.entry
        if file.first_pts is not None and file.last_pts is not None:
            entry.duration_s = (file.last_pts - file.first_pts) / entry.clock_rate
        entry.closed = True
        file.close()  # raises if the trailer cannot be written; the worker counts it
