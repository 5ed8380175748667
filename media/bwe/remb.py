"""Receive-side estimate of a publisher's uplink, sent back as REMB (sans-I/O).

Why: a browser publisher estimates its own uplink from Ferry's transport-wide CC
feedback. A sender without send-side estimation (aiortc offers ``goog-remb`` and
abs-send-time, not transport-cc) changes its rate only when a receiver sends REMB;
without one it sends its encoder's fixed rate into a link that may carry less, and the
queue that builds in its uplink delays what every viewer sees.

``RembEstimator`` estimates that uplink where the packets arrive, from the sender's
abs-send-time stamps and Ferry's arrival times, with the send side's own delay-based
pieces (``InterArrival`` groups, the trendline, the overuse detector, AIMD on the rate
received), as libwebrtc's receive-side estimator does. ``due`` says when to send a
REMB: once a second, and at once when the estimate fell 3 % or more below the last one
sent (at most every ``MIN_INTERVAL_MS``). Until ``INIT_MS`` of packets have come (or
overuse is seen first) it says nothing: the estimate starts from the rate received
then, not from a guess that would throttle a sender that has not shown its rate yet.
"""

from __future__ import annotations

from media.bwe.acked_bitrate import AckedBitrateEstimator
from media.bwe.aimd import AimdRateControl
from media.bwe.interarrival import InterArrival
from media.bwe.overuse import BandwidthUsage, OveruseDetector
from media.bwe.trendline import TrendlineEstimator
from media.rtp.twcc import PacketResult
from media.wire.seqnum import Unwrapper

__all__ = ["RembEstimator", "abs_send_time_ms"]

ABS_SEND_TIME_WRAP = 1 << 24  # 6.18 fixed-point seconds: wraps every 64 s
INIT_MS = 1000.0  # packets received this long before the first estimate
INTERVAL_MS = 1000.0  # a REMB at least this often
MIN_INTERVAL_MS = 200.0  # ... and at most this often
DECREASE_RATIO = 0.97  # an estimate this far below the last REMB is sent at once


def abs_send_time_ms(value: int) -> float:
    """An abs-send-time field (24 bits, seconds in 6.18 fixed point) in ms."""
    return value * 1000.0 / (1 << 18)


class RembEstimator:
    """One publisher transport's uplink estimate (see the module docstring)."""

    def __init__(self, *, min_bps: float = 50_000, max_bps: float = 20_000_000) -> None:
        self.interarrival = InterArrival()
        self.trendline = TrendlineEstimator()
        self.detector = OveruseDetector()
        self.aimd = AimdRateControl(min_bps, min_bps, max_bps)
        self.incoming = AckedBitrateEstimator()
        self.usage = BandwidthUsage.NORMAL
        self._first_ms: float | None = None
        self._initialized = False
        self._send_time = Unwrapper(ABS_SEND_TIME_WRAP)
        self._seq = 0
        self._sent_bps: int | None = None
        self._sent_ms: float | None = None
        self.rembs = 0

    @property
    def estimate_bps(self) -> int | None:
        return int(self.aimd.current_bps) if self._initialized else None

    def on_packet(self, abs_send_time: int, arrival_ms: float, size: int) -> None:
        """A packet with abs-send-time ``abs_send_time`` (the raw 24-bit field) arrived."""
        send_ms = abs_send_time_ms(self._send_time.unwrap(abs_send_time))
        self._seq += 1
        self.incoming.on_results((PacketResult(self._seq, send_ms, arrival_ms, size),))
        if self._first_ms is None:
            self._first_ms = arrival_ms
        delta = self.interarrival.add(send_ms, arrival_ms, size)
        if delta is None:
            return
        trend = self.trendline.update(delta.arrival_delta_ms, delta.send_delta_ms, delta.arrival_ms)
        self.usage = self.detector.detect(trend, delta.send_delta_ms, delta.arrival_ms)
        incoming = self.incoming.bitrate_bps()
        if not self._initialized:
            early = arrival_ms - self._first_ms < INIT_MS
            if incoming is None or (early and self.usage is not BandwidthUsage.OVERUSING):
                return
            self.aimd.set_estimate(incoming, arrival_ms)
            self._initialized = True
        self.aimd.update(self.usage, incoming, arrival_ms)

    def due(self, now_ms: float) -> int | None:
        """The bitrate to send in a REMB now, or None."""
        bps = self.estimate_bps
        if bps is None:
            return None
        since = None if self._sent_ms is None else now_ms - self._sent_ms
        if since is not None and since < MIN_INTERVAL_MS:
            return None
        fell = self._sent_bps is not None and bps < DECREASE_RATIO * self._sent_bps
        if since is not None and since < INTERVAL_MS and not fell:
            return None
        self._sent_bps, self._sent_ms = bps, now_ms
        self.rembs += 1
        return bps
