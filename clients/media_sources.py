"""Synthetic and file-backed aiortc media sources for Ferry's Python test client.

Tests and the ``ferry client join`` CLI need media without a camera or microphone. The
sources here are paced in real time (an encoder fed faster than real time would make
aiortc send bursts the SFU's bandwidth logic would misread) and carry proper ``pts`` /
``time_base`` so aiortc's encoders compute RTP timestamps from them.

The video pattern encodes its frame counter as a row of black/white blocks at the top of
the picture, so a receiver can read back which frame it decoded (see
:func:`read_pattern_counter`) and measure freezes or skipped frames without OCR; below it,
the capture time (``clients.stamp``), so a receiver can measure glass-to-glass latency.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time

import av
import numpy as np
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .stamp import FLOOR_LEVEL, beep_gain, draw_stamp

VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
COUNTER_BITS = 16
"""Number of blocks in the top row that carry the frame counter (LSB first)."""


class _Pacer:
    """Real-time pacing shared by the sources: frame ``n`` is due at ``start + n * period``.

    Deadlines are computed from the start time rather than by sleeping a fixed period
    after each frame, so scheduling jitter does not accumulate into drift; when the
    consumer falls behind, frames are returned immediately until it catches up.
    """

    def __init__(self, period: float) -> None:
        self.period = period
        self.start: float | None = None
        self.index = 0

    async def next(self) -> int:
        """Wait until the next frame is due and return its index (0, 1, 2, ...)."""
        now = time.monotonic()
        if self.start is None:
            self.start = now
        due = self.start + self.index * self.period
        if due > now:
            await asyncio.sleep(due - now)
        index = self.index
        self.index += 1
        return index


class TestPatternVideoTrack(MediaStreamTrack):
    """A moving test pattern (gradient, sweeping bar and a binary frame counter).

    Frames are ``yuv420p`` :class:`av.VideoFrame` objects with ``pts`` in a 90 kHz time
    base, produced at ``fps`` in real time. The content changes every frame so VP8 has
    real work to do (a static picture would compress to almost nothing and hide
    bandwidth behaviour).
    """

    kind = "video"
    __test__ = False  # not a pytest test class despite the name

    def __init__(self, width: int = 640, height: int = 480, fps: float = 20) -> None:
        super().__init__()
        if width % 2 or height % 4:
            # yuv420p packed as one (h * 3/2, w) array needs the chroma rows to fill whole lines.
            raise ValueError("width must be even and height a multiple of 4")
        self.width = width
        self.height = height
        self.fps = fps
        self.frames_sent = 0
        self._pacer = _Pacer(1.0 / fps)
        # Precompute the static gradient; each frame only shifts it and draws overlays.
        xs = np.arange(width, dtype=np.uint16)
        ys = np.arange(height, dtype=np.uint16)[:, None]
        self._gradient = ((xs + ys) % 256).astype(np.uint8)
        self._chroma_u = np.full((height // 2, width // 2), 128, dtype=np.uint8)
        self._chroma_v = np.full((height // 2, width // 2), 128, dtype=np.uint8)

    def make_frame(self, index: int, stamp_ms: float | None = None) -> av.VideoFrame:
        """Build frame ``index`` without pacing (useful for tests and offline encoding);
        ``stamp_ms`` (wall-clock ms) is drawn as the capture-time stamp when given."""
        w = self.width
        y = np.roll(self._gradient, shift=(index * 4) % w, axis=1)
        bar_w = max(2, w // 16)
        bar_x = (index * 8) % max(1, w - bar_w)
        y[:, bar_x : bar_x + bar_w] = 235
        block = max(2, w // (COUNTER_BITS * 2))
        for bit in range(COUNTER_BITS):
            value = 235 if (index >> bit) & 1 else 16
            y[0:block, bit * block : (bit + 1) * block] = value
        if stamp_ms is not None:
            draw_stamp(y, stamp_ms)
        u = self._chroma_u
        v = self._chroma_v
        v[:, :] = 128 + int(60 * math.sin(index / 10.0))
        frame = av.VideoFrame.from_ndarray(
            np.concatenate([y, u.reshape(-1, w), v.reshape(-1, w)]), format="yuv420p"
        )
        frame.pts = int(round(index * VIDEO_CLOCK_RATE / self.fps))
        frame.time_base = VIDEO_TIME_BASE
        return frame

    async def recv(self) -> av.VideoFrame:
        """Return the next frame when it is due (real-time pacing)."""
        if self.readyState != "live":
            raise MediaStreamError
        index = await self._pacer.next()
        self.frames_sent += 1
        return self.make_frame(index, stamp_ms=time.time() * 1000.0)


def read_pattern_counter(frame: av.VideoFrame) -> int:
    """Decode the frame counter drawn by :class:`TestPatternVideoTrack`.

    Works on a received (decoded, possibly rescaled by a lower simulcast layer) frame:
    block positions scale with the frame width. Returns -1 when the row is unreadable.
    """
    plane = frame.to_ndarray(format="gray")
    h, w = plane.shape
    block = w / (COUNTER_BITS * 2)
    if block < 1:
        return -1
    row = min(h - 1, max(0, int(block / 2)))
    value = 0
    for bit in range(COUNTER_BITS):
        x = int((bit + 0.5) * block)
        if plane[row, x] > 128:
            value |= 1 << bit
    return value


class ToneAudioTrack(MediaStreamTrack):
    """A sine tone as 20 ms mono ``s16`` :class:`av.AudioFrame` objects, paced in real time.

    ``pts`` counts samples (time base ``1/sample_rate``), which is what aiortc's Opus
    encoder expects. A continuous tone keeps Opus (and the SFU's audio-level / active
    speaker logic) busy, unlike silence which DTX would suppress.
    """

    kind = "audio"

    def __init__(
        self, freq: float = 440.0, sample_rate: int = 48_000, amplitude: float = 0.3
    ) -> None:
        super().__init__()
        self.freq = freq
        self.sample_rate = sample_rate
        self.amplitude = amplitude
        self.samples_per_frame = sample_rate * 20 // 1000
        self.time_base = fractions.Fraction(1, sample_rate)
        self.frames_sent = 0
        self._pacer = _Pacer(0.020)

    def make_frame(self, index: int) -> av.AudioFrame:
        """Build 20 ms frame ``index`` without pacing (phase-continuous across frames)."""
        n = self.samples_per_frame
        t = (np.arange(n) + index * n) / self.sample_rate
        samples = (self.amplitude * 32767 * np.sin(2 * math.pi * self.freq * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = index * n
        frame.time_base = self.time_base
        return frame

    async def recv(self) -> av.AudioFrame:
        """Return the next 20 ms frame when it is due (real-time pacing)."""
        if self.readyState != "live":
            raise MediaStreamError
        index = await self._pacer.next()
        self.frames_sent += 1
        return self.make_frame(index)


class BeepAudioTrack(ToneAudioTrack):
    """A tone with a louder beep at every ``BEEP_PERIOD_MS`` of the wall clock
    (``clients.stamp.beep_gain``), for mouth-to-ear latency
    (``clients.stamp.BeepDetector`` on the listener)."""

    def make_frame(self, index: int, start_ms: float | None = None) -> av.AudioFrame:
        """Frame ``index``; its first sample is heard at wall-clock ``start_ms``."""
        n = self.samples_per_frame
        t = (np.arange(n) + index * n) / self.sample_rate
        gain = beep_gain(start_ms, n, self.sample_rate) if start_ms is not None else FLOOR_LEVEL
        samples = (gain * 32767 * np.sin(2 * math.pi * self.freq * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = index * n
        frame.time_base = self.time_base
        return frame

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        index = await self._pacer.next()
        self.frames_sent += 1
        return self.make_frame(index, start_ms=time.time() * 1000.0)


def file_tracks(
    path: str, *, loop: bool = True
) -> tuple[MediaStreamTrack | None, MediaStreamTrack | None]:
    """Open a media file with aiortc's :class:`MediaPlayer` and return ``(audio, video)``.

    Either element is ``None`` when the file lacks that kind of stream. ``loop`` restarts
    the file at its end so a long test does not run out of media. The player is paced
    in real time by aiortc; its tracks keep a reference to it, so it stays alive as long
    as they do.
    """
    player = MediaPlayer(path, loop=loop)
    return player.audio, player.video
