"""AIMD rate control for the delay-based estimate (draft-ietf-rmcat-gcc-02 §5.5).

State machine driven by the overuse detector's signal:

| signal \\ state | hold      | increase | decrease |
| --------------- | --------- | -------- | -------- |
| overusing       | decrease  | decrease | decrease |
| normal          | increase  | increase | hold     |
| underusing      | hold      | hold     | hold     |

- **increase**: multiplicative (8 %/s) while far from the last known link
  capacity, additive (about one packet per response time, rtt + 100 ms) once
  close to it. "Close" is tracked by ``LinkCapacityEstimator``: a running mean
  and deviation of the acked rate measured at each overuse; within 3 deviations
  of the mean counts as near. Why two speeds: find the capacity quickly, then
  creep so the queue builds slowly and the overuse detector can catch it
  before the delay hurts. An increase never takes the estimate above
  ``1.5 * acked + 10 kbit/s``: the network has not shown it can carry more.
- **decrease**: to ``beta * acked`` (beta 0.85), i.e. below what actually got
  through, so the queue drains. At most once per ``clamp(rtt, 10, 200)`` ms
  (the effect of a cut is not visible sooner) unless the estimate is more than
  twice the acked rate, and never on feedback that reports only packets sent
  before the last cut. Then the state goes to hold.
- **hold**: keep the rate while the queue drains (underuse).
"""

from __future__ import annotations

import math

from media.bwe.overuse import BandwidthUsage

__all__ = ["AimdRateControl", "LinkCapacityEstimator", "RateControlState"]

RateControlState = str  # "hold" | "increase" | "decrease"
HOLD, INCREASE, DECREASE = "hold", "increase", "decrease"

DEFAULT_RTT_MS = 200.0
FRAME_RATE = 30.0
PACKET_BYTES = 1200.0
MIN_ADDITIVE_BPS_PER_S = 4000.0
DRAIN_MS = 1000.0
CUT_EVIDENCE_MS = 100.0  # of traffic sent after a cut before another cut is justified
DRAIN_MIN_QUEUE_MS = 100.0


class LinkCapacityEstimator:
    """Mean and deviation (kbit/s) of the acked rate seen at each overuse."""

    def __init__(self) -> None:
        self.estimate_kbps: float | None = None
        self.deviation_kbps = 0.4  # normalized variance, as libwebrtc seeds it

    def _dev(self) -> float:
        assert self.estimate_kbps is not None
        return math.sqrt(self.deviation_kbps * self.estimate_kbps)

    def upper_bound_bps(self) -> float:
        if self.estimate_kbps is None:
            return math.inf
        return (self.estimate_kbps + 3 * self._dev()) * 1000.0

    def lower_bound_bps(self) -> float:
        if self.estimate_kbps is None:
            return 0.0
        return max(0.0, self.estimate_kbps - 3 * self._dev()) * 1000.0

    def on_overuse(self, acked_bps: float) -> None:
        self._update(acked_bps, 0.05)

    def on_probe(self, probe_bps: float) -> None:
        self._update(probe_bps, 0.5)

    def reset(self) -> None:
        self.estimate_kbps = None

    def _update(self, sample_bps: float, alpha: float) -> None:
        sample = sample_bps / 1000.0
        if self.estimate_kbps is None:
            self.estimate_kbps = sample
        else:
            self.estimate_kbps = (1 - alpha) * self.estimate_kbps + alpha * sample
        # normalized variance, bounded like libwebrtc (0.4 .. 2.5)
        norm = max(self.estimate_kbps, 1.0)
        err = self.estimate_kbps - sample
        self.deviation_kbps = (1 - alpha) * self.deviation_kbps + alpha * err * err / norm
        self.deviation_kbps = min(max(self.deviation_kbps, 0.4), 2.5)

    @property
    def has_estimate(self) -> bool:
        return self.estimate_kbps is not None


class AimdRateControl:
    """The delay-based target rate; see the module docstring."""

    def __init__(
        self,
        start_bps: float = 1_000_000,
        min_bps: float = 50_000,
        max_bps: float = 20_000_000,
        *,
        beta: float = 0.85,
    ) -> None:
        self.min_bps = float(min_bps)
        self.max_bps = float(max_bps)
        self.beta = beta
        self.current_bps = min(max(float(start_bps), self.min_bps), self.max_bps)
        self.state: RateControlState = HOLD
        self.last_action: RateControlState = HOLD  # what the last update did
        self.rtt_ms = DEFAULT_RTT_MS
        self.link_capacity = LinkCapacityEstimator()
        self.decreases = 0
        self._last_change_ms: float | None = None  # last increase/decrease applied
        self._last_decrease_ms: float | None = None
        self._last_cut_ms: float | None = None  # last decrease that lowered the rate

    def set_rtt(self, rtt_ms: float) -> None:
        self.rtt_ms = rtt_ms

    def set_estimate(self, bps: float, now_ms: float) -> None:
        """Jump to ``bps`` (probe result, or an external reset)."""
        self.current_bps = min(max(float(bps), self.min_bps), self.max_bps)
        self._last_change_ms = now_ms

    def time_to_reduce_further(
        self, now_ms: float, acked_bps: float | None, newest_send_ms: float | None = None
    ) -> bool:
        """True when a new decrease may be applied now (see the module docstring)."""
        if self._last_decrease_ms is None:
            return True
        if (
            newest_send_ms is not None
            and self._last_cut_ms is not None
            and newest_send_ms <= self._last_cut_ms + CUT_EVIDENCE_MS
        ):
            # The packets this feedback reports left before the last cut, or too soon
            # after it to show whether it was enough: the queue they show is the one
            # that cut is already draining, and the trendline still averages over
            # them. Cutting again would answer the same congestion twice; after a
            # cut the sender is app-limited and each cut lowers the next "acked" rate.
            return False
        interval = min(max(self.rtt_ms, 10.0), 200.0)
        if now_ms - self._last_decrease_ms >= interval:
            return True
        return acked_bps is not None and self.current_bps > 2.0 * acked_bps

    def _transition(self, usage: BandwidthUsage) -> None:
        if usage is BandwidthUsage.OVERUSING:
            self.state = DECREASE
        elif usage is BandwidthUsage.UNDERUSING:
            self.state = HOLD
        elif self.state == HOLD:
            self.state = INCREASE
        elif self.state == DECREASE:
            self.state = HOLD

    def update(
        self,
        usage: BandwidthUsage,
        acked_bps: float | None,
        now_ms: float,
        queue_delay_ms: float = 0.0,
        newest_send_ms: float | None = None,
    ) -> float:
        """Apply one detector signal at ``now_ms``; returns the new estimate (bps).

        ``queue_delay_ms`` is the standing queue the estimator measured (one-way
        delay above its recent minimum); a decrease also drains it (see ``_decrease``).
        ``newest_send_ms`` is the send time of the newest packet the feedback reports.
        """
        if usage is BandwidthUsage.OVERUSING and not self.time_to_reduce_further(
            now_ms, acked_bps, newest_send_ms
        ):
            return self.current_bps
        self._transition(usage)
        lc = self.link_capacity
        if acked_bps is not None and acked_bps > lc.upper_bound_bps():
            lc.reset()  # the link got faster than we thought: search multiplicatively
        self.last_action = self.state
        if self.state == INCREASE:
            self._increase(acked_bps, now_ms)
        elif self.state == DECREASE:
            self._decrease(acked_bps, now_ms, queue_delay_ms)
        else:
            self._last_change_ms = now_ms
        return self.current_bps

    def _increase(self, acked_bps: float | None, now_ms: float) -> None:
        last = self._last_change_ms
        dt = 0.0 if last is None else min(max(now_ms - last, 0.0), 1000.0)
        self._last_change_ms = now_ms
        cur = self.current_bps
        if acked_bps is not None and cur > 1.5 * acked_bps + 10_000:
            return  # the network has not shown it can carry more
        if self.link_capacity.has_estimate:
            inc = self.additive_increase_bps_per_s() * dt / 1000.0
        else:
            inc = max(cur * (1.08 ** (dt / 1000.0) - 1.0), 1000.0 * dt / 1000.0)
        new = cur + inc
        if acked_bps is not None:
            new = min(new, 1.5 * acked_bps + 10_000)
            new = max(new, cur)
        self.current_bps = min(new, self.max_bps)

    def additive_increase_bps_per_s(self) -> float:
        """About one average packet per response time (rtt + 100 ms)."""
        bits_per_frame = self.current_bps / FRAME_RATE
        packets_per_frame = max(1.0, math.ceil(bits_per_frame / (PACKET_BYTES * 8)))
        avg_packet_bits = bits_per_frame / packets_per_frame
        response_ms = self.rtt_ms + 100.0
        return max(MIN_ADDITIVE_BPS_PER_S, avg_packet_bits * 1000.0 / response_ms)

    def _decrease(self, acked_bps: float | None, now_ms: float, queue_delay_ms: float = 0.0) -> None:
        """Cut to beta * acked; with a standing queue, cut enough to drain it in ~1 s.

        Ferry's addition to GCC: on deep (bufferbloated) bottlenecks a cut to
        0.85 * acked drains a 1 s queue in ~7 s, and the subscriber sees seconds
        of lag. Sending at ``acked * (1 - q / DRAIN_MS)`` removes the queue in
        about ``DRAIN_MS``; floored at half the acked rate, and only when the
        queue exceeds ``DRAIN_MIN_QUEUE_MS`` (base-delay errors stay harmless).
        """
        cur = self.current_bps
        ref = cur if acked_bps is None else acked_bps
        new = self.beta * ref
        if queue_delay_ms > DRAIN_MIN_QUEUE_MS:
            new = min(new, max(0.5, 1.0 - queue_delay_ms / DRAIN_MS) * ref)
        if acked_bps is not None:
            if new > cur and self.link_capacity.has_estimate:
                new = self.beta * (self.link_capacity.estimate_kbps or 0.0) * 1000.0
            self.link_capacity.on_overuse(acked_bps)
        if new < cur:
            self.current_bps = max(new, self.min_bps)
            self.decreases += 1
            self._last_cut_ms = now_ms
        self._last_change_ms = now_ms
        self._last_decrease_ms = now_ms
        self.state = HOLD
