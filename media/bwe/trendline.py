"""Trendline filter: is the queueing delay growing, and how fast?

Why a trendline and not the draft's Kalman filter: libwebrtc replaced the
Kalman "offset" estimator (draft-ietf-rmcat-gcc-02 §5.3) with this one in
send-side GoogCC because a least-squares slope over a short window reacts as
fast and is far less noisy with paced, bursty video. Per group delta:

1. ``accumulated += arrival_delta - send_delta`` (total queueing change, ms);
2. ``smoothed = a * smoothed + (1 - a) * accumulated`` (a = 0.9);
3. keep the last ``window`` (20) points ``(arrival time, smoothed)`` and fit a
   line; its slope is the rate of queue growth (ms of delay per ms; 0.05 means
   the queue grows 5 % of wall time, i.e. we send ~5 % above capacity);
4. ``modified_trend = min(num_deltas, 60) * slope * threshold_gain`` (gain 4):
   scaled so the overuse detector can compare it with a threshold in "ms"
   (initial 12.5), and damped during the first 60 deltas when the fit is young.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence

__all__ = ["NATIVE_FIT", "TrendlineEstimator", "linear_fit_slope"]

MIN_DELTAS_FOR_FULL_GAIN = 60
DELTA_COUNTER_MAX = 1000


def linear_fit_slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``y`` over ``x``; None when all ``x`` are equal."""
    if len(points) < 2:
        return None
    return _py_slope([x for x, _ in points], [y for _, y in points])


def _py_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """The least-squares slope of points given as two sequences (x and y apart, as the
    trendline keeps them); `_trendfit.c` does the same float operations in the same
    order, so the same result to the last bit."""
    n = len(xs)
    sx = sy = 0.0
    for x in xs:
        sx += x
    for y in ys:
        sy += y
    mx, my = sx / n, sy / n
    num = den = 0.0
    for x, y in zip(xs, ys, strict=True):
        dx = x - mx
        num += dx * (y - my)
        den += dx * dx
    if den == 0.0:
        return None
    return num / den


def _native_slope() -> Callable[[deque[float], deque[float]], float | None] | None:
    """The C fit (`_trendfit.c`, the same floats as `_py_slope`), unless it is not built
    or FERRY_NATIVE_SEND=0 asks for no native code at all."""
    if os.environ.get("FERRY_NATIVE_SEND", "1").strip() in ("0", "false", "no", "off"):
        return None
    try:
        from media.bwe._trendfit import slope
    except ImportError:
        return None
    return slope


_c_slope = _native_slope()
#: True when the trendline is fitted in C. Chosen once, at import.
NATIVE_FIT = _c_slope is not None
_slope = _py_slope if _c_slope is None else _c_slope


class TrendlineEstimator:
    """Smoothed accumulated delay, regression slope over a window, threshold gain."""

    def __init__(
        self, window: int = 20, smoothing: float = 0.9, threshold_gain: float = 4.0
    ) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2 (got {window})")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1) (got {smoothing})")
        self.window = window
        self.smoothing = smoothing
        self.threshold_gain = threshold_gain
        self.num_deltas = 0
        self.accumulated_delay_ms = 0.0
        self.smoothed_delay_ms = 0.0
        self.trend = 0.0  # last raw slope
        self.modified_trend = 0.0
        self._first_arrival_ms: float | None = None
        # the window's points, x and y apart (no tuple per group delta)
        self._xs: deque[float] = deque(maxlen=window)
        self._ys: deque[float] = deque(maxlen=window)

    def update(self, arrival_delta_ms: float, send_delta_ms: float, arrival_ms: float) -> float:
        """Add one group delta; returns the modified trend (0 until the window fills)."""
        if self._first_arrival_ms is None:
            self._first_arrival_ms = arrival_ms
        self.num_deltas = min(self.num_deltas + 1, DELTA_COUNTER_MAX)
        self.accumulated_delay_ms += arrival_delta_ms - send_delta_ms
        a = self.smoothing
        self.smoothed_delay_ms = a * self.smoothed_delay_ms + (1.0 - a) * self.accumulated_delay_ms
        xs, ys = self._xs, self._ys
        xs.append(arrival_ms - self._first_arrival_ms)
        ys.append(self.smoothed_delay_ms)
        if len(xs) == self.window:
            slope = _slope(xs, ys)
            if slope is not None:
                self.trend = slope
        self.modified_trend = (
            min(self.num_deltas, MIN_DELTAS_FOR_FULL_GAIN) * self.trend * self.threshold_gain
        )
        return self.modified_trend
