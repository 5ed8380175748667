"""Sliding-window bitrate counter (sans-I/O).

The window is cut into fixed buckets so ``add`` is one division, one compare and one
addition on the common path (no deque of samples per packet, unlike a naive window);
stale buckets are zeroed only when time crosses a bucket edge. Model: mediasoup
``RateCalculator.Update(size, nowMs)``.
"""

from __future__ import annotations

__all__ = ["RateCounter"]


class RateCounter:
    """Bytes seen over the last ``window_ms``, reported in bits per second."""

    __slots__ = ("window_ms", "_n", "_bucket_ms", "_buckets", "_cur", "_total")

    def __init__(self, window_ms: float = 1000.0, *, buckets: int = 20) -> None:
        if window_ms <= 0:
            raise ValueError(f"window_ms must be > 0, got {window_ms!r}")
        if buckets < 2:
            raise ValueError(f"buckets must be >= 2, got {buckets!r}")
        self.window_ms = window_ms
        self._n = buckets
        self._bucket_ms = window_ms / buckets
        self._buckets: list[int] = [0] * buckets
        self._cur: int | None = None  # absolute index of the newest bucket
        self._total = 0

    def _advance(self, idx: int) -> int:
        """Move the newest bucket to ``idx`` (if later); return the newest index."""
        cur = self._cur
        if cur is None:
            self._cur = idx
            return idx
        if idx <= cur:
            return cur
        n = self._n
        buckets = self._buckets
        if idx - cur >= n:
            for j in range(n):
                buckets[j] = 0
            self._total = 0
        else:
            for i in range(cur + 1, idx + 1):
                j = i % n
                self._total -= buckets[j]
                buckets[j] = 0
        self._cur = idx
        return idx

    def add(self, size: int, now_ms: float) -> None:
        """Count ``size`` bytes at ``now_ms``; samples older than the window are ignored."""
        idx = int(now_ms // self._bucket_ms)
        cur = self._cur
        if cur is None or idx > cur:
            cur = self._advance(idx)
        elif idx <= cur - self._n:
            return
        self._buckets[idx % self._n] += size
        self._total += size

    @property
    def total_bytes(self) -> int:
        """Bytes currently inside the window (as of the last add/rate call)."""
        return self._total

    def rate_bps(self, now_ms: float) -> float:
        """Bits per second over the window ending at ``now_ms``."""
        if self._cur is None:
            return 0.0
        cur = self._advance(int(now_ms // self._bucket_ms))
        bucket_ms = self._bucket_ms
        # The buckets cover (n - 1) full buckets plus the elapsed part of the newest.
        span_ms = (self._n - 1) * bucket_ms + max(0.0, now_ms - cur * bucket_ms)
        return self._total * 8000.0 / span_ms
