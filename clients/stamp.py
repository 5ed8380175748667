"""A capture-time stamp drawn into video pixels, for glass-to-glass latency.

Why pixels and not RTP: the figure a person feels runs from the camera to the screen,
through the encoder, Ferry's layer switches, jitter buffers and the decoder; only the
picture itself carries its capture time through all of them. Publisher and viewer run on
one machine, so ``viewer clock - stamp`` is the latency.

Layout (shared with ``qa/browser_probe.js``, which draws and reads the same stamp in
Chromium): two rows of ``BITS_PER_ROW`` blocks, full width, rows ``y0 = H * BAND_TOP``
and ``y0 + H * ROW_HEIGHT``; a block is black (16) for 0 and white (235) for 1, LSB first,
row 0 then row 1. The 32 bits are the wall-clock time in ms modulo 2**24 and an 8-bit
check (:func:`stamp_check`). Blocks are 1/16 of the width and 1/8 of the height, so they
survive the lowest simulcast layer (a quarter of the size) and VP8's coarse quantisation;
a reader samples the middle of each block and rejects any block that is not clearly
black or white, and any value whose check does not match (an unstamped picture reads as
nothing, not as a wrong latency).
"""

from __future__ import annotations

import numpy as np

BITS_PER_ROW = 16
ROWS = 2
BAND_TOP = 0.125
ROW_HEIGHT = 0.125
STAMP_BITS = 24
STAMP_MOD = 1 << STAMP_BITS
BLACK = 16
WHITE = 235
DARK_MAX = 90  # a block mean at or below this reads as 0
LIGHT_MIN = 160  # at or above this reads as 1; between the two: not a stamp


def stamp_check(value: int) -> int:
    """The 8-bit check over a 24-bit stamp (its bytes xor'ed, then xor 0xA5, so an
    all-black or all-white band never passes)."""
    return ((value ^ (value >> 8) ^ (value >> 16)) & 0xFF) ^ 0xA5


def stamp_bits(ms: float) -> list[int]:
    """The 32 block values (0/1) for wall-clock time ``ms``."""
    value = int(ms) % STAMP_MOD
    word = value | (stamp_check(value) << STAMP_BITS)
    return [(word >> i) & 1 for i in range(BITS_PER_ROW * ROWS)]


def _rows(height: int) -> list[tuple[int, int]]:
    top = [round(height * (BAND_TOP + r * ROW_HEIGHT)) for r in range(ROWS + 1)]
    return [(top[r], top[r + 1]) for r in range(ROWS)]


def draw_stamp(luma: np.ndarray, ms: float) -> None:
    """Draw the stamp for ``ms`` into a luma plane (``uint8``, H x W) in place."""
    h, w = luma.shape
    bits = stamp_bits(ms)
    for r, (y0, y1) in enumerate(_rows(h)):
        for i in range(BITS_PER_ROW):
            x0, x1 = round(w * i / BITS_PER_ROW), round(w * (i + 1) / BITS_PER_ROW)
            luma[y0:y1, x0:x1] = WHITE if bits[r * BITS_PER_ROW + i] else BLACK


def read_stamp(luma: np.ndarray) -> int | None:
    """The 24-bit stamp in a (decoded, possibly downscaled) luma plane, or None."""
    h, w = luma.shape
    if w < 2 * BITS_PER_ROW or h < 16:
        return None
    word = 0
    for r, (y0, y1) in enumerate(_rows(h)):
        ym0, ym1 = y0 + (y1 - y0) // 4, y1 - (y1 - y0) // 4
        for i in range(BITS_PER_ROW):
            x0, x1 = w * i / BITS_PER_ROW, w * (i + 1) / BITS_PER_ROW
            xm0, xm1 = int(x0 + (x1 - x0) / 4), max(int(x0 + (x1 - x0) / 4) + 1, int(x1 - (x1 - x0) / 4))
            mean = float(luma[ym0:max(ym1, ym0 + 1), xm0:xm1].mean())
            if mean >= LIGHT_MIN:
                word |= 1 << (r * BITS_PER_ROW + i)
            elif mean > DARK_MAX:
                return None
    value = word & (STAMP_MOD - 1)
    return value if (word >> STAMP_BITS) == stamp_check(value) else None


def latency_ms(now_ms: float, stamp: int) -> float:
    """``now_ms - stamp`` on the 2**24 ms circle (about 4.7 h), in (-2**23, 2**23]."""
    d = (int(now_ms) - stamp) % STAMP_MOD
    return float(d - STAMP_MOD if d > STAMP_MOD // 2 else d) + (now_ms - int(now_ms))


# ------------------------------------------------------------------ audio: timed beeps
BEEP_PERIOD_MS = 2000
BEEP_MS = 100
BEEP_LEVEL = 0.5  # of full scale, against a steady floor tone
FLOOR_LEVEL = 0.03
ONSET_LEVEL = 0.25  # a sample above this after QUIET_MS of floor starts a beep
QUIET_MS = 500.0


def beep_gain(start_ms: float, n: int, sample_rate: int) -> np.ndarray:
    """Amplitude per sample for samples from wall-clock ``start_ms``: ``BEEP_LEVEL`` for
    the first ``BEEP_MS`` of every ``BEEP_PERIOD_MS`` of the wall clock, else the floor.

    Why beeps on the wall clock: a listener on the same machine knows when each beep
    left the mouth without any side channel, so the onset it hears is mouth-to-ear
    latency (unambiguous up to ``BEEP_PERIOD_MS``). The floor keeps the codec and the
    SFU's audio level busy between beeps, as a continuous tone does.
    """
    t = start_ms + np.arange(n) * 1000.0 / sample_rate
    return np.where(np.mod(t, BEEP_PERIOD_MS) < BEEP_MS, BEEP_LEVEL, FLOOR_LEVEL)


class BeepDetector:
    """Onsets of the beeps in received audio -> mouth-to-ear latency (ms) per beep.

    Sans-I/O: ``feed`` takes the samples of one decoded frame and the wall-clock time
    its last sample was heard.
    """

    def __init__(self, sample_rate: int = 48_000) -> None:
        self.sample_rate = sample_rate
        self.last_loud_ms: float | None = None

    def feed(self, samples: np.ndarray, end_ms: float, channels: int = 1) -> list[float]:
        """Latency of each beep whose onset is in ``samples`` (int16, interleaved)."""
        mono = np.abs(samples.reshape(-1).astype(np.int32))[::max(1, channels)]
        n = mono.shape[0]
        loud = np.flatnonzero(mono > ONSET_LEVEL * 32767)
        if loud.size == 0:
            return []
        out: list[float] = []
        step = 1000.0 / self.sample_rate
        at = end_ms - (n - int(loud[0])) * step
        if self.last_loud_ms is None or at - self.last_loud_ms > QUIET_MS:
            out.append(float(at % BEEP_PERIOD_MS))
        self.last_loud_ms = end_ms - (n - int(loud[-1])) * step
        return out
