"""Acknowledged bitrate: what the receiver actually got, from TWCC feedback.

Why: AIMD cuts to ``beta * acked`` on overuse and never increases far above
``1.5 * acked``; using the *send* rate there would trust exactly the number the
congestion is making wrong. The rate is bytes received over a window of
*receiver* arrival time (``window_ms``, 500 ms), so the sender's pacing and the
feedback interval do not alias into it. libwebrtc uses a Bayesian estimator
over 150-500 ms windows; a plain window is enough once it is long compared
with the 50-100 ms feedback cadence.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from media.rtp.twcc import PacketResult

__all__ = ["AckedBitrateEstimator"]

RECENT_MS = 150.0


class AckedBitrateEstimator:
    """Bytes received in the last ``window_ms`` of arrival time, as bits/s."""

    def __init__(self, window_ms: float = 500.0) -> None:
        if window_ms <= 0:
            raise ValueError(f"window_ms must be > 0 (got {window_ms})")
        self.window_ms = window_ms
        self._samples: deque[tuple[float, int]] = deque()
        self._bytes = 0
        self._first_arrival_ms: float | None = None
        self._latest_ms: float | None = None

    def on_results(self, results: Iterable[PacketResult]) -> None:
        received = sorted(
            (r.arrival_ms, r.size) for r in results if r.arrival_ms is not None
        )
        samples = self._samples
        latest, window, total = self._latest_ms, self.window_ms, self._bytes
        for arrival, size in received:
            if latest is not None and arrival < latest - window:
                continue  # far too late to count in the current window
            samples.append((arrival, size))
            total += size
            if latest is None or arrival > latest:
                latest = arrival
            if self._first_arrival_ms is None:
                self._first_arrival_ms = arrival
        self._latest_ms, self._bytes = latest, total
        if latest is None:
            return
        cutoff = latest - window
        while samples and samples[0][0] <= cutoff:
            self._bytes -= samples.popleft()[1]

    def recent_bps(self, window_ms: float = RECENT_MS) -> float | None:
        """Bytes received in the last ``window_ms`` of arrival time, as bits/s.

        Why a second, shorter window: while a bottleneck queue builds, the link is busy,
        so what arrived in the last 150 ms *is* its capacity; the 500 ms window still
        holds the rate from before a capacity drop and a cut to ``beta`` times it does
        not stop the queue growing. Used for decreases only (noisy at low rates).
        """
        if self._latest_ms is None or self._first_arrival_ms is None:
            return None
        if self._latest_ms - self._first_arrival_ms < window_ms:
            return None
        cutoff = self._latest_ms - window_ms
        total = 0
        for arrival, size in reversed(self._samples):
            if arrival <= cutoff:
                break
            total += size
        return total * 8000.0 / window_ms

    def bitrate_bps(self) -> float | None:
        """None until a whole window of arrivals has been seen."""
        if self._latest_ms is None or self._first_arrival_ms is None:
            return None
        if self._latest_ms - self._first_arrival_ms < self.window_ms:
            return None
        return self._bytes * 8000.0 / self.window_ms
