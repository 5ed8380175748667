"""Send-side bandwidth estimation per subscriber transport (GCC with probing).

``GccEstimator`` is the downlink estimator of one subscriber: the SFU sends,
the subscriber's browser returns transport-wide CC feedback, and
``TwccSendHistory.on_feedback`` turns it into ``PacketResult``s fed here. The
estimate is ``min(delay-based, loss-based)``; it says nothing about policy: the
allocator decides what to forward under it (DESIGN §1, STYLE §8: "outputs are an
estimate and a state, no policy").

Pipeline per feedback batch (``on_packet_results``)::

    results ──> AckedBitrateEstimator (bytes over arrival windows)
           ├─> ProbeResultEstimator (packets of probe clusters) ──> probe result
           ├─> InterArrival ─> TrendlineEstimator ─> OveruseDetector ──> usage
           │                       then AimdRateControl(usage, acked) ──> delay-based
           ├─> loss + queueing delay per batch ─> LossBasedControl ──> loss-based
           └─> QueueTargetControl (delivery rate, queue, link pauses) ──> replaces
               the AIMD rate on links that pause (see _follow_queue_target)

How the shell (the subscriber transport's DownTrack sink) drives it::

    est = GccEstimator(start_bps=1_000_000)
    est.set_desired_bps(allocator_wants)              # drives probing
    # when feedback arrives:
    results = send_history.on_feedback(TwccFeedback.parse(data), now_ms)
    est.on_packet_results(results, now_ms)
    est.on_rtt(rtt_ms, now_ms)                       # from RR/SR or feedback
    pacer.set_rate(est.estimate_bps(now_ms), now_ms)
    # before pacing: give the pacer any probe cluster
    if (cluster := est.next_probe(now_ms)) is not None:
        pacer.start_probe(cluster, now_ms)
    # for every packet the pacer tags with a probe id, once its twcc seq is known:
    est.on_probe_sent(cluster_id, twcc_seq_ext, size, send_ms)

``NullEstimator`` (a fixed rate) stands in where estimation is disabled, as
LiveKit's ``null_bwe`` does.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from media.bwe.acked_bitrate import AckedBitrateEstimator
from media.bwe.aimd import DECREASE, HOLD, INCREASE, AimdRateControl
from media.bwe.in_flight import OUTAGE_SILENCE_MS, WINDOW_ACKED_RATIO, InFlight, OutageTracker
from media.bwe.interarrival import InterArrival
from media.bwe.loss_based import LossBasedControl
from media.bwe.overuse import BandwidthUsage, OveruseDetector
from media.bwe.probe import ProbeCluster, ProbeController, ProbeResultEstimator
from media.bwe.queue_target import QueueTargetControl
from media.bwe.trendline import TrendlineEstimator
from media.rtp.twcc import PacketResult

if TYPE_CHECKING:
    from media.bwe.pacer import Pacer

__all__ = ["BandwidthEstimator", "GccEstimator", "NullEstimator"]

# Ferry's early congestion signal (see _early_overuse): the queue the newest packets
# met (one-way delay above the 10 s minimum) and its growth since the last feedback.
QUEUE_OVERUSE_MS = 60.0
QUEUE_GROWTH_MS = 20.0
NEWEST_N = 3  # the newest queue figure: mean over the last few packets received
# ... and sooner when the link delivers far less than the estimate (it collapsed):
STANDING_QUEUE_MS = 120.0  # a queue this deep that is not draining: overuse, grown or not
STANDING_MIN_MS = 200.0  # ... for this long
# 40 ms of queue, not 15: a cellular link's radio serves in bursts, and one feedback
# that carried under half the estimate with 15 ms of queue is usually such a burst, not
# a collapse; the cut to its rate (TMobile UMTS up at 41 s: 1.0 -> 0.41 Mbit/s with the
# queue at 15 ms) is climbed back from for seconds. A real collapse has a queue deeper
# than that within a feedback or two. Measured (bench/bwe.py --traces, seeds 1-4):
# failing pairs 47 at 25-60 ms (60 with a longer mean queue) against 49 at 15 ms; mean
# utilization 0.8684 against 0.8631, mean queue p95 121.8 against 122.2 ms; the RFC 8867
# cases are the same either way.
COLLAPSE_QUEUE_MS = 40.0
COLLAPSE_GROWTH_MS = 10.0
# Under half the estimate: one 50 ms feedback of a cellular link often carries 0.5-0.6x
# the rate (the radio serves in bursts), and a cut to that burst's rate is climbed back
# from for seconds. On the 16 trace cases (bench/bwe.py --traces) 0.6 instead gives
# Verizon LTE short down/up utilization 0.831/0.782 (0.866/0.875 here) and 6.32 s
# instead of 0.42 s back after ATT LTE 2016 up's 1.05 s outage.
COLLAPSE_RATIO = 0.5
LINK_LIMITED_RATIO = 0.6  # arrival span vs send span: < 0.6 x the send rate
COLLAPSE_MIN_SPAN_MS = 20.0
# ... and over more than one full packet's bytes after the first arrival. A few small
# packets spread by jitter read as link-limited too (live, 3G profile, 15 ms of jitter:
# a "delivered" 60-170 kbit/s on a 1 Mbit/s link cut the estimate from 550 to 50-150
# kbit/s and paused the video for 3.6-4.5 s). 2000 bytes cost the UMTS uplink trace two
# recoveries after back-to-back outages (1.3-1.9 s): its first packets back are few.
COLLAPSE_MIN_BYTES = 1500

# While the queue-target controller is in charge (media/bwe/queue_target.py) the window
# is the delivery rate x (base ack delay + this), not the estimate x (... + 80 ms): most
# of the queue on such a link is what was in flight when the radio paused, and the
# controller's rate (up to 1.4 x delivery) leaves the window room to spare. Not while
# an outage-return or other probe measures the link, which needs the room. Measured
# (bench/bwe.py --traces, seeds 1-4): failing pairs 12/11/15/16 with the controller at a
# 35 ms target, against 16/20/20/21 with the usual window and 14/12/13/15 at 50 ms with
# the usual window.
QUEUE_TARGET_WINDOW_MS = 40.0

OUTAGE_SILENCE_GAPS = 3.0  # an outage is also at least this many feedback intervals
REMEMBER_MS = 15_000.0  # how far back the pre-outage capacity is looked for

HURRY_RATIO = 0.5  # estimate below this x remembered: probe at HURRY_INTERVAL_MS

# After an outage a second probe follows the first (see _on_outage_end).
OUTAGE_RECHECK_MS = 250.0
OUTAGE_RECHECK_RATIO = 1.5  # ... at least this x the estimate then
# ... and only while the link answers: no feedback with arrivals for this long means it
# went out again after a moment back (cellular traces do: 40-70 ms of link between two
# outages), and a probe at the old rate then waits out that outage in the bottleneck.
# It goes once feedback is back. 100 ms held it back from slow returns whose feedback
# comes in 100-200 ms gaps (ATT LTE 2016 down: 3.2-3.6 s back after its 46 s outage).
RECHECK_SILENCE_MS = 200.0
FEEDBACK_GAPS = 21  # feedback gaps whose median is taken as the receiver's interval
# ... counted up to a browser's interval at video rates (50 ms). Longer gaps are a slow
# return path's doing, which the send-to-feedback time already holds; counted again they
# widened the window enough to slow the recovery after outages (Verizon EVDO down: 2 of
# 6 outages back within 1 s -> 0 of 6).
FEEDBACK_GAP_CAP_MS = 60.0

STATES = ("increasing", "holding", "decreasing")
_STATE_NAME = {INCREASE: "increasing", HOLD: "holding", DECREASE: "decreasing"}


class BandwidthEstimator(Protocol):
    """What a subscriber transport needs from an estimator."""

    def on_packet_results(self, results: list[PacketResult], now_ms: float) -> None: ...

    def on_rtt(self, rtt_ms: float, now_ms: float) -> None: ...

    def on_loss_report(self, fraction_lost: float, now_ms: float) -> None: ...

    def estimate_bps(self, now_ms: float) -> int: ...

    @property
    def state(self) -> str: ...

    def set_desired_bps(self, bps: float | None) -> None: ...

    def next_probe(self, now_ms: float) -> ProbeCluster | None: ...

    def on_probe_sent(self, cluster_id: int, twcc_seq: int, size: int, send_ms: float) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class NullEstimator:
    """A fixed estimate: no feedback needed, never probes (estimation disabled)."""

    def __init__(self, rate_bps: int = 2_000_000) -> None:
        self.rate_bps = int(rate_bps)

    def on_packet_results(self, results: list[PacketResult], now_ms: float) -> None:
        pass

    def on_rtt(self, rtt_ms: float, now_ms: float) -> None:
        pass

    def on_loss_report(self, fraction_lost: float, now_ms: float) -> None:
        pass

    def estimate_bps(self, now_ms: float) -> int:
        return self.rate_bps

    @property
    def state(self) -> str:
        return "holding"

    def set_desired_bps(self, bps: float | None) -> None:
        pass

    def next_probe(self, now_ms: float) -> ProbeCluster | None:
        return None

    def on_probe_sent(self, cluster_id: int, twcc_seq: int, size: int, send_ms: float) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"estimate_bps": self.rate_bps, "state": "holding"}


class _MinWindow:
    """Minimum of a signal over the last ``window_ms`` (1 s buckets): the base delay.

    Read on every paced send (the congestion window), so ``get`` is O(1): the deque
    holds (bucket start, value) in increasing value order, one entry per bucket at
    most; a value that a later, smaller one outlives can never be the minimum again.
    """

    def __init__(self, window_ms: float = 10_000.0, bucket_ms: float = 1000.0) -> None:
        self.window_ms = window_ms
        self.bucket_ms = bucket_ms
        self._buckets: deque[tuple[float, float]] = deque()  # (bucket start, value)

    def add(self, t_ms: float, value: float) -> None:
        b = self._buckets
        start = t_ms - t_ms % self.bucket_ms
        if not b or b[-1][0] != start or value < b[-1][1]:
            while b and b[-1][1] >= value:
                b.pop()
            b.append((start, value))
        cutoff = t_ms - self.window_ms
        while b and b[0][0] < cutoff:
            b.popleft()

    def get(self) -> float | None:
        b = self._buckets
        return b[0][1] if b else None


class _MaxWindow(_MinWindow):
    """Maximum over the window (a ``_MinWindow`` of the negated signal)."""

    def add(self, t_ms: float, value: float) -> None:
        super().add(t_ms, -value)

    def get(self) -> float | None:
        b = self._buckets
        return -b[0][1] if b else None


def _link_limited_bps(span_ms: float, send_span_ms: float, later_bytes: int, received: int) -> float | None:
    """The arrival rate of one feedback's packets when the link spaced them, else None.

    Link-limited: these packets arrived much slower than they left (a bottleneck
    spaced them), so their arrival rate measures the link. An app-limited trickle,
    spread or bunched by jitter, does not count.
    """
    if (
        received >= 3
        and span_ms >= COLLAPSE_MIN_SPAN_MS
        and later_bytes >= COLLAPSE_MIN_BYTES
        and span_ms * LINK_LIMITED_RATIO > send_span_ms
    ):
        return later_bytes * 8000.0 / span_ms
    return None


class GccEstimator:
    """Google Congestion Control, send side, with probing (see the module docstring)."""

    def __init__(
        self,
        *,
        start_bps: int = 1_000_000,
        min_bps: int = 50_000,
        max_bps: int = 20_000_000,
    ) -> None:
        if not 0 < min_bps <= max_bps:
            raise ValueError(f"need 0 < min_bps <= max_bps (got {min_bps}, {max_bps})")
        self.min_bps = min_bps
        self.max_bps = max_bps
        self._min_f, self._max_f = float(min_bps), float(max_bps)
        self.interarrival = InterArrival()
        self.trendline = TrendlineEstimator()
        self.detector = OveruseDetector()
        self.aimd = AimdRateControl(start_bps, min_bps, max_bps)
        self.loss_based = LossBasedControl(min_bps=min_bps, max_bps=max_bps)
        self.acked = AckedBitrateEstimator()
        self.probe_controller = ProbeController(max_bps=max_bps)
        self.probe_results = ProbeResultEstimator()
        self.usage = BandwidthUsage.NORMAL
        self.rtt_ms: float | None = None
        self.queue_delay_ms = 0.0
        self.last_probe_bps: float | None = None
        self._probe_set_ms: float | None = None  # when a probe result last set the estimate
        self._base_owd = _MinWindow()
        self._decreases_seen = 0
        self.queue_triggers = 0
        self._newest_send_ms: float | None = None
        self._newest_queue_ms: float | None = None
        self._queue_growing = False
        self._standing_since_ms: float | None = None
        self._delivered_bps: float | None = None  # this feedback's arrival rate
        self.in_flight = InFlight()
        self.outage = OutageTracker()
        self._base_ack = _MinWindow()  # least send-to-feedback time (see in_flight)
        # The last gaps between two feedbacks; their median is the receiver's interval.
        self._feedback_gaps: deque[float] = deque(maxlen=FEEDBACK_GAPS)
        self._median_gap: float | None = None  # theirs, kept as they change (read per send)
        self._last_feedback_ms: float | None = None
        # The capacity to go back to after an outage: the highest estimate of the
        # last REMEMBER_MS (an outage's own aftermath must not overwrite it).
        self._remembered = _MaxWindow(window_ms=REMEMBER_MS)
        self._pre_outage_bps: float | None = None
        self._ignore_before_ms = -math.inf  # delay/loss of packets sent earlier: outage
        self.outage_probes = 0
        self._recheck: tuple[float, float] | None = None  # (when, at least bps)
        self._outage_probe: int | None = None  # cluster id of the last outage-end probe
        # On links that pause, a queue-delay target replaces AIMD (_follow_queue_target).
        self.queue_target = QueueTargetControl()
        self._queue_target_bps: float | None = None  # its rate while in charge
        self._queue_target_owns = False  # ... and no probe result floors it (the window)

    # ------------------------------------------------------------ inputs
    def set_desired_bps(self, bps: float | None) -> None:
        """What the allocator would send if it could; probing aims there, never above."""
        self.probe_controller.set_desired_bps(bps)

    def on_rtt(self, rtt_ms: float, now_ms: float) -> None:
        self.rtt_ms = rtt_ms
        self.aimd.set_rtt(rtt_ms)
        self.loss_based.set_rtt(rtt_ms)

    def on_loss_report(self, fraction_lost: float, now_ms: float) -> None:
        """RTCP receiver-report loss, for transports without TWCC loss info."""
        self.loss_based.on_loss_report(fraction_lost, now_ms)

    def on_packet_sent(self, seq: int, size: int, send_ms: float) -> None:
        """A packet left with transport-wide seq ``seq`` (for the window and outages)."""
        self.in_flight.on_sent(seq, size, send_ms)

    def feedback_wait_ms(self, now_ms: float) -> float | None:
        """How long after a feedback the next is overdue (a round trip plus two of the
        receiver's feedback intervals), on a link that has been losing feedback; else
        None. The pacer then redraws overdue feedback (``Pacer.set_window``). Where no
        feedback gets lost, silence with a full window means a slow or dead link, and
        a packet sent to draw feedback only adds to its queue."""
        if not self.outage.losing_feedback(now_ms):
            return None
        base, gap = self._base_ack.get(), self._median_gap
        if base is None or gap is None:
            return None
        return base + 2.0 * gap

    def set_pacer_window(self, pacer: Pacer, now_ms: float) -> bool:
        """Tell ``pacer`` the congestion window, the bytes in flight, whether the link
        is out and when feedback is overdue (call before it drains); returns whether
        the link is out, noticed first."""
        window = self.congestion_window_bytes(now_ms)  # notices an outage first
        outage = self.outage
        pacer.set_window(
            window,
            self.in_flight.bytes,
            outage=outage.active,
            last_feedback_ms=outage.last_feedback_ms,
            feedback_wait_ms=self.feedback_wait_ms(now_ms),
        )
        return outage.active

    def congestion_window_bytes(self, now_ms: float) -> int | None:
        """How many bytes may be in flight now (None: no limit yet, no feedback seen).

        Also notices an outage (feedback silent with data in flight): see ``in_flight``.
        """
        self.in_flight.prune(now_ms)
        if self.outage.check(now_ms, self.in_flight, self.feedback_wait_ms(now_ms)):
            self._on_outage_start(now_ms)
        base_ack = self._base_ack.get()
        if base_ack is None or self.outage.last_feedback_ms is None:
            return None
        # The least send-to-feedback time is a round trip plus the feedback interval only
        # while packets flow evenly; video comes in frames, and a frame sent just before a
        # feedback tick is acked a round trip later. The window must still hold what is
        # sent while waiting for the next feedback, or every keyframe stalls behind it
        # and the pushback sheds the video of a viewer whose link merely loses packets.
        gap = self._median_gap
        if gap is not None:
            base_ack = max(base_ack, min(FEEDBACK_GAP_CAP_MS, gap))
        rate = self._combined()
        acked = self.acked.bitrate_bps()
        if acked is not None:
            rate = min(rate, WINDOW_ACKED_RATIO * acked)
        delivery = self.queue_target.delivery_bps
        if self._queue_target_window() and delivery is not None:
            # The queue-target controller sets the estimate, or a probe result does but
            # no probe is measuring the link: a smaller allowance (QUEUE_TARGET_WINDOW_MS).
            return InFlight.window_bytes(min(rate, delivery), base_ack, QUEUE_TARGET_WINDOW_MS)
        return InFlight.window_bytes(rate, base_ack)

    def _queue_target_window(self) -> bool:
        """The window is the queue-target controller's (delivery rate, small allowance).

        While it is in charge and no probe cluster is pending or out: also while a
        probe's result holds the estimate up (``_queue_target_owns`` is False then), once
        the probe's own packets are acked. Measured (``bench/bwe.py --traces``) with
        the controller's gains of queue_target.py: only while it owns the estimate,
        seeds 1-4 failing pairs 46, mean utilization 0.879, mean queue p95 127.6 ms;
        this way 39 / 0.875 / 115.8 ms.
        """
        if self._recheck is not None:
            return False
        return self._queue_target_owns or (self.queue_target.in_charge and not self.probe_controller.busy)

    def _on_outage_start(self, now_ms: float) -> None:
        self._pre_outage_bps = max(self._remembered.get() or 0.0, self._combined())

    def _on_outage_end(self, now_ms: float) -> None:
        """Feedback is back: what it says about the outage is not congestion.

        The delay pipeline starts afresh (its groups span the outage), the loss window
        forgets, packets sent before now stop counting as evidence, and a probe goes
        out at once at the rate held before the outage: the link is usually back at
        about that rate, and the probe says so in one round trip instead of an
        additive climb from wherever the outage's evidence left the estimate.

        That first probe leaves behind the packets that waited out the outage: the
        bottleneck flushes them first, and the probe often reads less than the link
        (or finds it still coming back). A second probe ``OUTAGE_RECHECK_MS`` later, at
        the pre-outage rate or ``OUTAGE_RECHECK_RATIO`` x the estimate then, measures
        the link itself. On the 16 trace cases (``bench/bwe.py --traces``) outages
        not recovered within 1 s went from 12 to 9 of 51.
        """
        self.interarrival = InterArrival()
        self.trendline = TrendlineEstimator()
        self.detector = OveruseDetector()
        self.usage = BandwidthUsage.NORMAL
        self._newest_queue_ms = None
        self.loss_based.forget_window()
        self._ignore_before_ms = now_ms
        self.queue_target.reset()
        self._queue_target_bps = None
        self._queue_target_owns = False
        target = self._pre_outage_bps or 0.0
        self._pre_outage_bps = None
        pc = self.probe_controller
        if self._outage_probe is not None and pc.outstanding(self._outage_probe):
            # The probe sent when the last outage ended is still out: it waited in the
            # bottleneck and its result comes with the flush. On a link that comes back
            # for a moment and goes out again, a probe at the old rate on every return
            # piles seconds of queue into it.
            return
        if target > 1.1 * self._combined():
            self._outage_probe = pc.probe_now(target, now_ms)
            self.outage_probes += 1
        self._recheck = (now_ms + OUTAGE_RECHECK_MS, target)

    def _after_outage(self, results: list[PacketResult], now_ms: float) -> list[PacketResult]:
        """Notice the end of an outage; drop what packets sent before it ended say."""
        if any(r.arrival_ms is not None for r in results) and self.outage.on_feedback(now_ms) is not None:
            self._on_outage_end(now_ms)
        if results[0].send_ms < self._ignore_before_ms:
            return [r for r in results if r.send_ms >= self._ignore_before_ms]
        return results

    def _on_feedback_timing(self, results: list[PacketResult], now_ms: float) -> None:
        """In-flight bytes, the least send-to-feedback time, and the gap since the last feedback."""
        ack_ms = self.in_flight.on_feedback(max(r.seq for r in results), now_ms)
        if ack_ms is not None and not self.outage.active:
            self._base_ack.add(now_ms, ack_ms)
        last, self._last_feedback_ms = self._last_feedback_ms, now_ms
        if last is not None and now_ms - last < OUTAGE_SILENCE_MS:
            gaps = self._feedback_gaps
            gaps.append(now_ms - last)
            ordered = sorted(gaps)
            self._median_gap = ordered[len(ordered) // 2]
            # A receiver that sends feedback seldom (Chrome: up to every 250 ms at low
            # rates) is silent that long between feedbacks on a working link. Its
            # interval is the low end of the gaps: on a slow link the gaps also grow
            # while too few packets arrive to report, and that is what an outage
            # detector must not wait out.
            interval = ordered[len(ordered) // 10]
            self.outage.silence_ms = max(OUTAGE_SILENCE_MS, OUTAGE_SILENCE_GAPS * interval)

    def on_packet_results(self, results: list[PacketResult], now_ms: float) -> None:
        """One feedback's worth of results, in send order (TwccSendHistory output)."""
        if not results:
            return
        self._on_feedback_timing(results, now_ms)
        self.acked.on_results(results)
        probe_done = self.probe_results.on_results(results, now_ms)
        everything = results
        results = self._after_outage(results, now_ms)
        # The queue-target controller counts every arrival, also of packets that waited
        # out an outage: the bottleneck flushing them is busy, so their arrival rate is
        # the link's as it came back, and the queue they met says there is one to drain.
        self.queue_target.on_results(everything, self._base_owd.get())
        if not results:
            # Every packet this feedback covers left before the outage ended, but a
            # probe among them that the link then delivered at its rate still measured
            # the link as it came back (its result is capped at the rate it was sent).
            self._apply_probe_results(probe_done, now_ms)
            return
        self._newest_send_ms = results[-1].send_ms
        self._queue_growing = False
        self._delivered_bps = None
        lost = 0
        owd_sum = 0.0
        owds: list[float] = []
        min_owd = math.inf
        first_arrival = last_arrival = first_send = last_send = None
        later_bytes = 0
        ia_add, tl_update, detect = self.interarrival.add, self.trendline.update, self.detector.detect
        for r in results:
            arrival = r.arrival_ms
            if arrival is None:
                lost += 1
                continue
            send_ms = r.send_ms
            owd = arrival - send_ms
            if owd < min_owd:
                min_owd = owd
            owd_sum += owd
            owds.append(owd)
            if first_arrival is None or arrival < first_arrival:
                first_arrival = arrival
            else:
                later_bytes += r.size
            if last_arrival is None or arrival > last_arrival:
                last_arrival = arrival
            if first_send is None:
                first_send = send_ms
            last_send = send_ms
            delta = ia_add(send_ms, arrival, r.size)
            if delta is not None:
                trend = tl_update(delta.arrival_delta_ms, delta.send_delta_ms, delta.arrival_ms)
                detect(trend, delta.send_delta_ms, delta.arrival_ms)
        received = len(owds)
        if received:
            # One sample per feedback, its least delay: the window keeps minima of
            # samples taken at one time, so this is what adding each would leave.
            self._base_owd.add(now_ms, min_owd)
        newest = owds[-NEWEST_N:]
        self.usage = self.detector.state
        base = self._base_owd.get()
        if received and base is not None:
            self.queue_delay_ms = max(0.0, owd_sum / received - base)
            delivered = None
            if first_arrival is not None and last_arrival is not None and first_send is not None and last_send is not None:
                delivered = _link_limited_bps(
                    last_arrival - first_arrival, last_send - first_send, later_bytes, received
                )
            self._delivered_bps = delivered
            self._early_overuse(sum(newest) / len(newest) - base, delivered, now_ms)
        self.loss_based.on_batch(len(results), lost, self.queue_delay_ms, now_ms)
        self._update_delay_based(probe_done, now_ms)
        self._follow_queue_target(now_ms)
        delay_bps = self.aimd.current_bps
        self.loss_based.update(self._combined(), delay_bps, now_ms)
        if self.aimd.decreases != self._decreases_seen or self.loss_based.state == "decrease":
            self._decreases_seen = self.aimd.decreases
            self.probe_controller.on_decrease(now_ms)
        self._remembered.add(now_ms, self._combined())

    def _early_overuse(self, newest_queue_ms: float, delivered_bps: float | None, now_ms: float) -> None:
        """Overuse when the newest packets met a deep queue that grew since last time.

        Ferry's addition to GCC, for a capacity that drops under the stream (2.5 -> 0.5
        Mbit/s under a 1.1 Mbit/s layer: the queue grows 1.2 ms per ms). The trendline
        (smoothed, 20-point fit) says so only after ~250 ms, and news of a queue arrives
        that queue's length late, so the bottleneck already holds ~300 ms. The queue
        the newest packets met is the earliest evidence there is. One keyframe burst
        can trip it too; the cost is one cut to 0.85x what the link just delivered.
        When this feedback's arrivals were spaced by the link (well under their send
        rate) and came at well under the estimate, the link collapsed rather than
        queued one burst, and 40 ms of queue growing by 10 ms is enough (COLLAPSE_*).
        """
        previous = self._newest_queue_ms
        self._newest_queue_ms = newest_queue_ms
        growth = newest_queue_ms - previous if previous is not None else 0.0
        collapsed = (
            delivered_bps is not None
            and delivered_bps < COLLAPSE_RATIO * self.aimd.current_bps
            and newest_queue_ms > COLLAPSE_QUEUE_MS
            and growth > COLLAPSE_GROWTH_MS
        )
        self._queue_growing = growth > QUEUE_GROWTH_MS or collapsed
        if self.usage is BandwidthUsage.OVERUSING:
            return
        # A queue that stays deep for STANDING_MIN_MS without draining (a keyframe's
        # burst drains well within that) is overuse even when it no longer grows.
        if newest_queue_ms <= STANDING_QUEUE_MS or self.usage is BandwidthUsage.UNDERUSING:
            self._standing_since_ms = None
        elif self._standing_since_ms is None:
            self._standing_since_ms = now_ms
        standing = self._standing_since_ms is not None and now_ms - self._standing_since_ms >= STANDING_MIN_MS
        if collapsed or standing or (growth > QUEUE_GROWTH_MS and newest_queue_ms > QUEUE_OVERUSE_MS):
            self.usage = BandwidthUsage.OVERUSING
            self.queue_triggers += 1

    def _update_delay_based(self, probe_done: list[tuple[int, float | None]], now_ms: float) -> None:
        acked = self.acked.bitrate_bps()
        # Right after a probe raised the estimate, the acked window still holds the old,
        # lower rate; a cut to beta * that stale figure would undo the probe for nothing.
        # The probe measured its rate as deliverable, so it stands in as the floor.
        if self._probe_recent(now_ms) and self.last_probe_bps is not None:
            acked = max(acked or 0.0, self.last_probe_bps)
        if self.usage is BandwidthUsage.OVERUSING:
            # What the link delivered lately is a lower bound of its capacity, and
            # while the queue grows (the bottleneck is busy) it is the capacity. When
            # not growing, take the larger of the 500 ms and 150 ms windows
            # (AckedBitrateEstimator.recent_bps): an app-limited sender (one low
            # layer) that drew a keyframe through a slow link would otherwise cut to
            # 0.85x its own rate and pause video, while the link just showed,
            # draining that keyframe, that it carries more.
            recent = self.acked.recent_bps()
            if self._queue_growing and self._delivered_bps is not None:
                # Busy right now: this feedback's own arrival rate is the freshest
                # measure of the capacity (the 150 ms window may still hold
                # arrivals from before a drop; the 500 ms one, an app-limited rate).
                acked = self._delivered_bps
            elif recent is not None:
                acked = recent if acked is None else max(acked, recent)
        overusing = self.usage is BandwidthUsage.OVERUSING
        # a probe result stands in for AIMD's step, unless the delay says overuse
        if self._apply_probe_results(probe_done, now_ms, raise_estimate=not overusing) and not overusing:
            return
        self.aimd.update(self.usage, acked, now_ms, self.queue_delay_ms, self._newest_send_ms)

    def _apply_probe_results(
        self, probe_done: list[tuple[int, float | None]], now_ms: float, *, raise_estimate: bool = True
    ) -> bool:
        """Report finished probes to the controller; the best result (if any) is the
        latest probe rate and, with ``raise_estimate``, lifts an estimate below it.
        True when some probe measured a rate."""
        best: float | None = None
        for cid, bps in probe_done:
            self.probe_controller.on_result(cid, bps, self.aimd.current_bps, now_ms)
            if bps is not None and (best is None or bps > best):
                best = bps
        if best is None:
            return False
        self.last_probe_bps = best
        if raise_estimate and best > self.aimd.current_bps:
            self.aimd.set_estimate(best, now_ms)
            self._probe_set_ms = now_ms
            lb = self.loss_based
            if lb.rate_bps is not None and lb.state != "decrease":
                lb.rate_bps = max(lb.rate_bps, best)
        return True

    def _probe_recent(self, now_ms: float) -> bool:
        """A probe set the estimate within the acked window plus a round trip."""
        if self._probe_set_ms is None:
            return False
        return now_ms - self._probe_set_ms < self.acked.window_ms + (self.rtt_ms or 100.0)

    def _follow_queue_target(self, now_ms: float) -> None:
        """On a link that pauses, the queue-target rate replaces AIMD's (``queue_target``).

        AIMD is set to that rate, so it carries on from there once the pauses stop. A
        probe that just raised the estimate stays a floor: the delivery window still
        holds the rate from before it.
        """
        qt = self.queue_target
        if not qt.in_charge or qt.rate_bps is None:
            self._queue_target_bps = None
            self._queue_target_owns = False
            return
        self._queue_target_bps = qt.rate_bps
        self._queue_target_owns = not self._probe_recent(now_ms)
        if self._queue_target_owns:
            self.aimd.current_bps = qt.rate_bps

    # ----------------------------------------------------------- outputs
    def _combined(self) -> float:
        """min(delay-based, loss-based) within [min, max] (read on every send and timer:
        comparisons, no calls)."""
        est = self.aimd.current_bps
        qt = self._queue_target_bps
        if qt is not None and qt > est:
            est = qt
        lb = self.loss_based.rate_bps
        if lb is not None and lb < est:
            est = lb
        if est < self._min_f:
            est = self._min_f
        if est > self._max_f:
            est = self._max_f
        return est

    def estimate_bps(self, now_ms: float) -> int:
        """The target send rate: min(delay-based, loss-based), within [min, max]."""
        return int(self._combined())

    @property
    def state(self) -> str:
        """"increasing" | "holding" | "decreasing" (what the binding controller does)."""
        lb = self.loss_based
        if lb.rate_bps is not None and lb.rate_bps < self.aimd.current_bps:
            return {"decrease": "decreasing", "hold": "holding"}.get(lb.state, "increasing")
        return _STATE_NAME[self.aimd.last_action]

    def next_probe(self, now_ms: float) -> ProbeCluster | None:
        """A probe cluster to start now (each returned once), or None.

        None while the link is out: a probe sent then would wait in the bottleneck
        until the link returns and measure nothing but that wait; the outage's end
        sends its own. On the trace cases (``bench/bwe.py --traces``), seeds 1-8,
        synthetic-3g's queue p95 is 189-225 ms this way and 200-238 ms with the
        periodic and hurry probes going into outages (Verizon-EVDO-driving.down
        205-215 against 205-227); the other traces move by -18 to +2 ms and at most
        0.03 in utilization.
        """
        if self.outage.active:
            return None
        recheck = self._recheck
        last = self.outage.last_feedback_ms
        answering = last is not None and now_ms - last <= RECHECK_SILENCE_MS
        if recheck is not None and now_ms >= recheck[0] and answering:
            self._recheck = None
            if self.usage is not BandwidthUsage.OVERUSING:
                self.probe_controller.probe_now(max(recheck[1], OUTAGE_RECHECK_RATIO * self._combined()), now_ms)
                self.outage_probes += 1
        remembered = self._remembered.get()
        combined = self._combined()
        # Far below what the link carried lately (a fade or an outage cut it): look
        # for the way back every second rather than every few.
        self.probe_controller.hurry = remembered is not None and combined < HURRY_RATIO * remembered
        cluster = self.probe_controller.next_probe(combined, now_ms)
        if cluster is not None:
            self.probe_results.add_cluster(cluster)
        return cluster

    def on_probe_sent(self, cluster_id: int, twcc_seq: int, size: int, send_ms: float) -> None:
        """Mark a sent packet (extended transport-wide seq) as part of a probe cluster."""
        self.probe_results.on_probe_sent(cluster_id, twcc_seq, size, send_ms)

    def stats(self) -> dict[str, Any]:
        """Numbers for plots and /metrics."""
        return {
            "estimate_bps": self.estimate_bps(0.0),
            "delay_based_bps": self.aimd.current_bps,
            "loss_based_bps": self.loss_based.rate_bps,
            "state": self.state,
            "usage": str(self.usage),
            "trend": self.trendline.modified_trend,
            "threshold": self.detector.threshold,
            "acked_bps": self.acked.bitrate_bps(),
            "loss": self.loss_based.loss,
            "effective_loss": self.loss_based.effective_loss,
            "queue_delay_ms": self.queue_delay_ms,
            "rtt_ms": self.rtt_ms,
            "last_probe_bps": self.last_probe_bps,
            "probes": self.probe_controller.sent_clusters,
            "queue_triggers": self.queue_triggers,
            "in_flight_bytes": self.in_flight.bytes,
            "outages": self.outage.outages,
            "outage_probes": self.outage_probes,
        }
