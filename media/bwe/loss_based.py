"""Loss-based controller, made robust to random (non-congestion) loss.

The classic rule (draft-ietf-rmcat-gcc-02 §6, libwebrtc
``SendSideBandwidthEstimation`` "v1"), on the loss fraction ``p`` per interval:

- ``p < 2 %``: increase 8 %/s;
- ``2 % <= p <= 10 %``: hold;
- ``p > 10 %``: decrease to ``rate * (1 - 0.5 p)``, at most once per
  ``300 ms + rtt``.

Why not as is: on a radio link with 5-10 % random loss, the classic rule holds
(or cuts) forever although the link has room: the flow collapses for a loss it
cannot fix. libwebrtc's "v2" fits a loss model against send rate over many
observations; Ferry does something simpler and explainable:

**Loss is charged to congestion only when a queue stands.** Each feedback
batch carries its packets' one-way delays; the estimator subtracts the minimum
one-way delay of the last ``base_window_ms`` (the propagation delay) and gives
the batch's mean queueing delay here. Packets lost while the queue is below
``queue_threshold_ms`` (40 ms) are *random* loss; lost while a queue stands,
*congestion* loss (a full drop-tail buffer, or a policer behind a queue). The
controller reacts to::

    effective = congestion_loss + max(0, random_loss - random_tolerance)

with ``random_tolerance`` = 10 %. So up to 10 % random loss with an empty queue
is tolerated (NACK/RTX and FEC handle it; delay-based control still guards the
queue), and only the excess above it, or loss with a standing queue, moves the
rate. Trade-off, stated: a shallow-buffered policer that drops without queueing
is only caught once it drops more than 10 %.

The loss-based rate is ``None`` (not limiting) while loss is low and it has
caught up with the delay-based rate; the estimator takes ``min(delay, loss)``.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["LossBasedControl"]

LOW_LOSS = 0.02
HIGH_LOSS = 0.10


class LossBasedControl:
    """See the module docstring. ``update`` once per feedback."""

    def __init__(
        self,
        *,
        min_bps: float = 50_000,
        max_bps: float = 20_000_000,
        window_ms: float = 1000.0,
        min_packets: int = 20,
        queue_threshold_ms: float = 40.0,
        random_tolerance: float = 0.10,
    ) -> None:
        self.min_bps = float(min_bps)
        self.max_bps = float(max_bps)
        self.window_ms = window_ms
        self.min_packets = min_packets
        self.queue_threshold_ms = queue_threshold_ms
        self.random_tolerance = random_tolerance
        self.rate_bps: float | None = None  # None: not limiting
        self.state = "increase"  # "increase" | "hold" | "decrease"
        self.loss = 0.0  # raw loss fraction over the window
        self.random_loss = 0.0
        self.congestion_loss = 0.0
        self.effective_loss = 0.0
        self.rtt_ms = 200.0
        # (now_ms, sent, lost, congestion_lost) per feedback batch
        self._batches: deque[tuple[float, int, int, int]] = deque()
        # their sums (sent, lost, congestion-lost), kept as batches come and go
        self._sent = self._lost = self._cong = 0
        self._last_decrease_ms: float | None = None
        self._last_update_ms: float | None = None

    def set_rtt(self, rtt_ms: float) -> None:
        self.rtt_ms = rtt_ms

    def on_batch(self, sent: int, lost: int, queue_delay_ms: float, now_ms: float) -> None:
        """One feedback batch: packets reported, lost, and the mean queueing delay."""
        if sent <= 0:
            return
        congestion = lost if queue_delay_ms >= self.queue_threshold_ms else 0
        self._add(now_ms, sent, lost, congestion)
        cutoff = now_ms - self.window_ms
        b = self._batches
        while b and b[0][0] < cutoff:
            _, sent, lost, congestion = b.popleft()
            self._sent -= sent
            self._lost -= lost
            self._cong -= congestion

    def _add(self, now_ms: float, sent: int, lost: int, congestion: int) -> None:
        self._batches.append((now_ms, sent, lost, congestion))
        self._sent += sent
        self._lost += lost
        self._cong += congestion

    def _clear(self) -> None:
        self._batches.clear()
        self._sent = self._lost = self._cong = 0

    def forget_window(self) -> None:
        """Drop the loss seen so far (an outage's losses are not the link's loss rate).

        A "decrease" stands until enough new packets are measured, and in that state a
        probe result does not lift the rate (``GccEstimator``): the probe that measures
        the link coming back would be held under the cut made as it went out.
        """
        self._clear()
        if self.state == "decrease":
            self.state = "hold"

    def on_loss_report(self, fraction_lost: float, now_ms: float) -> None:
        """An RTCP RR loss fraction (no delay info): counted as random loss."""
        n = 100
        self._add(now_ms, n, int(round(fraction_lost * n)), 0)

    def _measure(self) -> bool:
        sent = self._sent
        if sent < self.min_packets:
            return False
        lost = self._lost
        cong = self._cong
        self.loss = lost / sent
        self.congestion_loss = cong / sent
        self.random_loss = (lost - cong) / sent
        self.effective_loss = self.congestion_loss + max(
            0.0, self.random_loss - self.random_tolerance
        )
        return True

    def update(self, current_bps: float, delay_based_bps: float, now_ms: float) -> float | None:
        """Decide at ``now_ms`` given the combined estimate in force; returns the limit."""
        last = self._last_update_ms
        self._last_update_ms = now_ms
        dt = 0.0 if last is None else min(max(now_ms - last, 0.0), 1000.0)
        if not self._measure():
            return self.rate_bps
        p = self.effective_loss
        if p > HIGH_LOSS:
            self.state = "decrease"
            interval = 300.0 + self.rtt_ms
            if self._last_decrease_ms is None or now_ms - self._last_decrease_ms >= interval:
                base = current_bps if self.rate_bps is None else min(self.rate_bps, current_bps)
                self.rate_bps = max(self.min_bps, base * (1.0 - 0.5 * p))
                self._last_decrease_ms = now_ms
                # this loss has been acted on: judge the next cut on new packets only
                self._clear()
        elif p >= LOW_LOSS:
            self.state = "hold"
            if self.rate_bps is None:
                self.rate_bps = current_bps
        else:
            self.state = "increase"
            if self.rate_bps is not None:
                grown = self.rate_bps * math.pow(1.08, dt / 1000.0) + dt  # +1 kbit/s
                self.rate_bps = None if grown >= delay_based_bps else min(grown, self.max_bps)
        return self.rate_bps
