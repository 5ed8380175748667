"""Overuse detector with an adaptive threshold (draft-ietf-rmcat-gcc-02 §5.4-5.5).

Compares the trendline's modified trend ``m`` with a threshold ``γ``:

- ``m > γ`` for more than ``overuse_time_ms`` (10 ms of send time) and on at
  least two consecutive deltas, with the trend not falling: **overusing**;
- ``m < -γ``: **underusing** (a queue is draining);
- otherwise **normal**.

Why the threshold adapts: a fixed γ either starves the flow against loss-based
TCP (which keeps the queue full, so delay-based flows back off forever) or
reacts too late on quiet links. ``γ`` follows ``|m|`` with gain ``k_up`` when
``|m| > γ`` (slowly, 0.0087/ms) and ``k_down`` when below (faster, 0.039/ms),
scaled by the time since the last update (capped at 100 ms), clamped to
[6, 600]. Outliers (``|m| > γ + 15``) do not move γ, so one spike from a
keyframe burst does not desensitise the detector.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["BandwidthUsage", "OveruseDetector"]


class BandwidthUsage(StrEnum):
    NORMAL = "normal"
    OVERUSING = "overusing"
    UNDERUSING = "underusing"


K_UP = 0.0087
K_DOWN = 0.039
MAX_ADAPT_OFFSET_MS = 15.0
MAX_TIME_DELTA_MS = 100.0
MIN_THRESHOLD = 6.0
MAX_THRESHOLD = 600.0


class OveruseDetector:
    """Turns modified trends into normal/overusing/underusing."""

    def __init__(
        self,
        initial_threshold: float = 12.5,
        overuse_time_ms: float = 10.0,
        k_up: float = K_UP,
        k_down: float = K_DOWN,
    ) -> None:
        self.threshold = initial_threshold
        self.overuse_time_ms = overuse_time_ms
        self.k_up = k_up
        self.k_down = k_down
        self.state = BandwidthUsage.NORMAL
        self._time_over_using = -1.0
        self._overuse_counter = 0
        self._prev_trend = 0.0
        self._last_update_ms: float | None = None

    def detect(self, modified_trend: float, send_delta_ms: float, now_ms: float) -> BandwidthUsage:
        """One step per group delta; returns (and keeps) the new state."""
        t = modified_trend
        if t > self.threshold:
            if self._time_over_using == -1.0:
                # assume we have been over-using for half the time since the last sample
                self._time_over_using = send_delta_ms / 2.0
            else:
                self._time_over_using += send_delta_ms
            self._overuse_counter += 1
            if (
                self._time_over_using > self.overuse_time_ms
                and self._overuse_counter > 1
                and t >= self._prev_trend
            ):
                self._time_over_using = 0.0
                self._overuse_counter = 0
                self.state = BandwidthUsage.OVERUSING
        elif t < -self.threshold:
            self._time_over_using = -1.0
            self._overuse_counter = 0
            self.state = BandwidthUsage.UNDERUSING
        else:
            self._time_over_using = -1.0
            self._overuse_counter = 0
            self.state = BandwidthUsage.NORMAL
        self._prev_trend = t
        self.update_threshold(t, now_ms)
        return self.state

    def update_threshold(self, modified_trend: float, now_ms: float) -> None:
        last = self._last_update_ms
        self._last_update_ms = now_ms
        if last is None:
            return
        mag = abs(modified_trend)
        if mag > self.threshold + MAX_ADAPT_OFFSET_MS:
            return  # a spike: leave the threshold alone
        k = self.k_down if mag < self.threshold else self.k_up
        dt = min(now_ms - last, MAX_TIME_DELTA_MS)
        self.threshold += k * (mag - self.threshold) * dt
        self.threshold = min(max(self.threshold, MIN_THRESHOLD), MAX_THRESHOLD)
