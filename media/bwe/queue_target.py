"""Queue-delay target control for links that pause (sans-I/O, fed per feedback).

Why: on a cellular link the radio pauses for 100-300 ms every few seconds (a
scheduling gap, a handover). The packets sent meanwhile queue, GCC's trigger reads
that queue as overuse, cuts to 0.85x the acked rate, and climbs back about one
packet per round trip, so the link is used at 0.5-0.75 of its capacity. This
controller needs no model of the link. It reads what the receiver got over the last
``window_ms`` of arrival time (the delivery rate ``D``) and the queue the newest
packets met (their one-way delay above the estimator's 10 s minimum, ``q``), and
answers ``D * (1 + gain * (target - q) / target)`` while the queue is under the
target and ``D * (1 - gain_down * (q - target) / target)`` above it, clamped to
``[min_ratio, 1 + gain] * D``. While the queue is short the rate is above ``D``: a
link with room delivers what it is sent, so the rate grows by up to ``1 + gain`` per
feedback round trip. While the queue is long the rate is below ``D``, and sending
less than the link delivers drains the queue.

Why steeper up than down (0.4 against 0.125): ``D`` is what the link delivered, the
link's capacity only while the sender keeps it busy; a radio that serves in bursts
leaves it idle between them, so ``D`` under-reads the link and the climb has to outrun
that. Above the target the queue is, on these links, mostly what a pause held, which
the radio drains when it serves again (a reading, not measured apart). Measured
(``bench/bwe.py --traces``, seeds 1-4, failing pairs / mean utilization / mean queue
p95, all with the window of ``GccEstimator._queue_target_window`` and the pause
detector at 60 ms / 10 s, see PAUSE_MS): 0.25 both ways 43 / 0.857 / 111 ms; 0.25 up
45 / 0.868 / 115; 0.3 up 46 / 0.867 / 114; 0.35 up 40 / 0.871 / 116; 0.4 up 39 /
0.875 / 116; 0.5 up 42 / 0.872 / 115 (each 0.125 down); 0.35 up with 0.2 down 42 /
0.868 / 112, with 0.08 down 45 / 0.876 / 118. With 0.25 both ways and the window on the
delivery rate only while this controller owns the estimate: 47 / 0.868 / 122 ms (seeds
5-8: 46 / 0.864 / 121, against 36 / 0.871 / 115 ms for 0.4 up and 0.125 down).

``PauseDetector`` says when the link is of that kind. A pause is two consecutive
packets whose arrival gap exceeds their send gap by more than ``PAUSE_MS``; after
``PAUSES_TO_ENGAGE`` pauses within ``PAUSE_MEMORY_MS`` of arrival time the
controller is ``in_charge``. On a wired link or a steady bottleneck (the RFC 8867
cases) there are no pauses and GCC runs alone.
"""

from __future__ import annotations

from collections import deque

from media.rtp.twcc import PacketResult

__all__ = ["PauseDetector", "QueueTargetControl"]

TARGET_MS = 35.0  # queue the controller holds the bottleneck at
GAIN = 0.4  # rate over D per target of queue below it: at most 1.4 x D
GAIN_DOWN = 0.125  # rate under D per target of queue above it
MIN_RATIO = 0.5  # at least this x D, however deep the queue
WINDOW_MS = 200.0  # arrival time the delivery rate is counted over
NEWEST_N = 3  # the queue figure: mean over the newest packets (by send time)
PAUSE_MS = 50.0  # arrival gap beyond the send gap that is a link pause
PAUSES_TO_ENGAGE = 2  # ... this many of them ...
PAUSE_MEMORY_MS = 20_000.0  # ... within this much arrival time: the controller is in charge
# 50 ms and 20 s, not 60 ms and 10 s: on the trace cases this controller (with its
# gains and window, above) does better than GCC wherever the link paused at all, also
# in the calm stretches between pauses. Measured (bench/bwe.py --traces, failing pairs
# / mean utilization / mean queue p95): seeds 1-4 30 / 0.884 / 105.0 ms against 39 /
# 0.875 / 115.8 at 60 ms and 10 s, seeds 5-8 31 / 0.883 / 103.3 against 36 / 0.871 /
# 114.6; 20 s alone 32 / 0.880 / 109.1, 50 ms alone 34 / 0.883 / 107.6 (40 ms 34, 45
# ms 32, 55 ms 31 with 20 s; 15 s with 50 ms 30 / 0.886 / 106.4; 30 and 60 s like 20 s);
# one pause enough (10 s) 32 / 0.879 / 107.1. A gap beyond 90 ms only: 47 / 0.853 / 127.
# The RFC 8867 cases (bench/bwe.py, the jitter case's +-25 ms too) never pause, so these
# settings do not touch them.


class PauseDetector:
    """Link pauses seen in the arrival times of consecutive packets."""

    def __init__(
        self,
        *,
        pause_ms: float = PAUSE_MS,
        pauses_to_engage: int = PAUSES_TO_ENGAGE,
        memory_ms: float = PAUSE_MEMORY_MS,
    ) -> None:
        if pause_ms <= 0 or pauses_to_engage < 1 or memory_ms <= 0:
            raise ValueError(
                f"need pause_ms > 0, pauses_to_engage >= 1, memory_ms > 0 "
                f"(got {pause_ms}, {pauses_to_engage}, {memory_ms})"
            )
        self.pause_ms = pause_ms
        self.pauses_to_engage = pauses_to_engage
        self.memory_ms = memory_ms
        self._pauses: deque[float] = deque()  # arrival ms of each pause's second packet
        self._prev: tuple[float, float] | None = None  # (send, arrival) of the last packet
        self.latest_arrival_ms: float | None = None

    def forget_last_packet(self) -> None:
        """The next packet does not follow the last one (an outage lies between)."""
        self._prev = None

    def on_results(self, results: list[PacketResult]) -> None:
        """One feedback's results, in send order."""
        prev = self._prev
        # the previous packet's send and arrival times, apart (no tuple per packet)
        have_prev = prev is not None
        prev_send, prev_arrival = (0.0, 0.0) if prev is None else prev
        latest, pause_ms = self.latest_arrival_ms, self.pause_ms
        for r in results:
            arrival = r.arrival_ms
            if arrival is None:
                continue
            send = r.send_ms
            if have_prev and (arrival - prev_arrival) - (send - prev_send) > pause_ms:
                self._pauses.append(arrival)
            have_prev, prev_send, prev_arrival = True, send, arrival
            if latest is None or arrival > latest:
                latest = arrival
        if have_prev:
            self._prev = (prev_send, prev_arrival)
        self.latest_arrival_ms = latest
        if latest is not None:
            cutoff = latest - self.memory_ms
            while self._pauses and self._pauses[0] <= cutoff:
                self._pauses.popleft()

    @property
    def recent_pauses(self) -> int:
        """Pauses within ``memory_ms`` of the latest arrival."""
        return len(self._pauses)

    @property
    def pausing(self) -> bool:
        """The link paused often enough lately for the queue-target controller."""
        return len(self._pauses) >= self.pauses_to_engage


class QueueTargetControl:
    """``rate_bps`` after each ``on_results`` (see the module docstring)."""

    def __init__(
        self,
        *,
        target_ms: float = TARGET_MS,
        gain: float = GAIN,
        gain_down: float = GAIN_DOWN,
        min_ratio: float = MIN_RATIO,
        window_ms: float = WINDOW_MS,
    ) -> None:
        if target_ms <= 0 or gain <= 0 or gain_down <= 0 or not 0 < min_ratio <= 1 or window_ms <= 0:
            raise ValueError(
                f"need target_ms > 0, gain > 0, gain_down > 0, 0 < min_ratio <= 1, window_ms > 0 "
                f"(got {target_ms}, {gain}, {gain_down}, {min_ratio}, {window_ms})"
            )
        self.target_ms = target_ms
        self.gain = gain
        self.gain_down = gain_down
        self.min_ratio = min_ratio
        self.window_ms = window_ms
        self.pauses = PauseDetector()
        self._arrivals: deque[tuple[float, int]] = deque()  # (arrival ms, bytes)
        self._bytes = 0
        self._first_ms: float | None = None
        self._latest: float | None = None  # the latest arrival in _arrivals
        self.delivery_bps: float | None = None
        self.queue_ms: float | None = None
        self.rate_bps: float | None = None

    @property
    def in_charge(self) -> bool:
        """The link pauses and a rate is known: this controller's rate is the delay-based one."""
        return self.rate_bps is not None and self.pauses.pausing

    def reset(self) -> None:
        """Forget the delivery window (after an outage: what it held is not the link now).

        The pauses seen before stay: the link is still the kind that pauses.
        """
        self._arrivals.clear()
        self._bytes = 0
        self._first_ms = None
        self._latest = None
        self.delivery_bps = self.queue_ms = self.rate_bps = None
        self.pauses.forget_last_packet()

    def on_results(self, results: list[PacketResult], base_owd_ms: float | None) -> float | None:
        """One feedback's results (send order); ``base_owd_ms``: the least one-way delay lately."""
        self.pauses.on_results(results)
        got = sorted((r.arrival_ms, r.size, r.send_ms) for r in results if r.arrival_ms is not None)
        if not got:
            return self.rate_bps
        arrivals = self._arrivals
        for arrival, size, _ in got:
            arrivals.append((arrival, size))
            self._bytes += size
        if self._first_ms is None:
            self._first_ms = got[0][0]
        # The window's latest arrival: what it held (never popped: pops go below it)
        # or one of these.
        latest = got[-1][0] if self._latest is None else max(self._latest, got[-1][0])
        self._latest = latest
        while arrivals and arrivals[0][0] <= latest - self.window_ms:
            self._bytes -= arrivals.popleft()[1]
        if base_owd_ms is None or latest - self._first_ms < self.window_ms:
            return self.rate_bps  # not a full window since the start or the last reset
        newest = sorted(got, key=lambda g: g[2])[-NEWEST_N:]
        q = max(0.0, sum(a - s for a, _, s in newest) / len(newest) - base_owd_ms)
        d = self._bytes * 8000.0 / self.window_ms
        below = (self.target_ms - q) / self.target_ms
        ratio = 1.0 + (self.gain if below >= 0 else self.gain_down) * below
        ratio = min(max(ratio, self.min_ratio), 1.0 + self.gain)
        self.delivery_bps, self.queue_ms = d, q
        self.rate_bps = d * ratio
        return self.rate_bps
