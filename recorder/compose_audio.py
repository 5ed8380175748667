"""Mixing the participants' audio, and finding who speaks, one video frame at a time.

The mix is the sum of every track (mono, 48 kHz) through a limiter: when the sum
would clip, the gain drops at once to keep the peak under full scale and recovers
over about half a second, so a loud moment is turned down instead of distorted
(hard clipping stays only as a last guard). The active speaker is the person whose
audio has the most energy over the last `window_s` (0.4 s), if it is above a
floor; they keep the highlight until someone else is clearly louder (hysteresis),
so it does not flicker between two people talking over each other.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Limiter", "Speakers"]

CEILING = 0.98
RELEASE_PER_S = 2.0  # gain recovers by at most this much per second


class Limiter:
    """Peak limiter with instant attack and linear release."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.gain = 1.0
        self.limited = 0  # chunks whose gain was below 1

    def process(self, mix: np.ndarray) -> np.ndarray:
        if not len(mix):
            return mix
        recover = min(1.0, self.gain + RELEASE_PER_S * len(mix) / self.rate)
        peak = float(np.max(np.abs(mix)))
        target = min(recover, CEILING / peak) if peak > 0 else recover
        if target < 1.0:
            self.limited += 1
        # Ramp from the last gain to the target over the chunk (no step, no click);
        # a drop must hold from the chunk's first sample, so only rises are ramped.
        if target >= self.gain:
            ramp = np.linspace(self.gain, target, len(mix), dtype=np.float32)
        else:
            ramp = np.full(len(mix), target, np.float32)
        self.gain = target
        return np.clip(mix * ramp, -1.0, 1.0)


class Speakers:
    """Energy per person over a sliding window; `active` is who to highlight, if anyone."""

    def __init__(self, chunks_per_window: int, floor_rms: float = 0.01, switch_ratio: float = 2.0) -> None:
        self.n = max(1, chunks_per_window)
        self.floor = floor_rms**2
        self.switch_ratio = switch_ratio
        self._energy: dict[str, list[float]] = {}
        self.active: str | None = None

    def update(self, chunks: dict[str, np.ndarray]) -> str | None:
        """Add one chunk per person (their tracks summed); returns the active speaker."""
        for key, samples in chunks.items():
            window = self._energy.setdefault(key, [])
            window.append(float(np.mean(samples.astype(np.float64) ** 2)) if len(samples) else 0.0)
            del window[: -self.n]
        for key in list(self._energy):
            if key not in chunks:
                del self._energy[key]
        mean = {key: sum(w) / len(w) for key, w in self._energy.items()}
        loudest = max(mean, key=lambda k: mean[k], default=None)
        if loudest is None or mean[loudest] < self.floor:
            self.active = None
        elif self.active is None or self.active not in mean or mean[self.active] < self.floor:
            self.active = loudest
        elif loudest != self.active and mean[loudest] > mean[self.active] * self.switch_ratio:
            self.active = loudest
        return self.active
