"""Data in flight, the congestion window, and outage detection (sans-I/O).

Why a window: the delay-based estimate learns of a queue one queue-length late. When
the link collapses (a fade to a tenth of the rate) or goes out (a handover, a tunnel),
a sender pacing at the old estimate keeps filling the bottleneck until feedback says
so, and on a cellular buffer that is seconds of queue every user then waits through.
Bytes sent but not yet covered by feedback are the queue plus one round trip: capping
them at ``estimate * (base ack delay + WINDOW_QUEUE_MS)`` (the base ack delay: a
round trip plus the receiver's feedback interval; the least time from send to
feedback, but never less than the median gap between feedbacks, see
``GccEstimator.congestion_window_bytes``) bounds the queue at about
``WINDOW_QUEUE_MS`` of the estimate whatever the link does (libwebrtc's congestion
window, same idea). During an outage the window fills within one round trip and the
sender stops instead of queueing (or dropping) seconds of media.

The rate in that product is the estimate, but at most ``WINDOW_ACKED_RATIO`` times what
the receiver got over the last 500 ms (``GccEstimator.congestion_window_bytes``). The
estimate falls a queue-length after a fade (the delay signal travels through the
queue it measures); the acked rate falls with the first feedback. A window sized on a
1.2 Mbit/s estimate holds ~1 s of queue once the link fades to 240 kbit/s, and after
an outage it lets the media held meanwhile out at the pacing rate into a link that
has just come back. Measured on the 16 trace cases (``bench/bwe.py --traces``):
bottleneck queue p95 mean 171 -> 149 ms, worst 602 -> 381 ms (synthetic 3G), mean
utilization 0.781 -> 0.775; a ratio of 1.5 queued less (134 ms) but used less (0.763).

Why outage detection: no feedback at all for ``OUTAGE_SILENCE_MS`` while data is in
flight means nothing reaches the receiver. That is not congestion: when the link
returns, the packets that waited out the outage arrive with seconds of delay and the
feedback reports the ones the bottleneck dropped meanwhile. Read as congestion, they
cut the estimate to the floor (nothing was acked for seconds) and the loss-based
control to half, and the estimate then climbs for tens of seconds. ``OutageTracker``
says when an outage began and when feedback resumed, so the estimator can skip that
evidence and probe the remembered capacity instead.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["InFlight", "OutageTracker"]

WINDOW_QUEUE_MS = 80.0  # queue (in ms of the estimate) the window allows beyond one RTT
WINDOW_ACKED_RATIO = 2.0  # the window's rate: at most this x the last 500 ms acked rate
MIN_WINDOW_BYTES = 3000  # two or three packets: below this the feedback loop starves
MAX_AGE_MS = 5000.0  # packets never covered by feedback stop counting after this long
OUTAGE_SILENCE_MS = 300.0  # no feedback this long with data in flight: the link is out
FEEDBACK_LOSS_MEMORY_MS = 10_000.0  # a lost feedback this recent: feedback gets lost here
# Where feedback gets lost, silence is an outage only once so many redraws went
# unanswered (see ``OutageTracker.required_silence_ms``) that lost packets alone would
# explain it less often than this. Measured in virtual time (10 % loss each way, 550
# kbit/s video with a keyframe of 10 frames every 2 s, 6 x 5 min): at a flat 300 ms, 11
# outages, each pausing the video until a keyframe.
FALSE_OUTAGE_ODDS = 0.01
MAX_UNANSWERED_REDRAWS = 5
# ... but a link silent this long is out whatever its loss: on a long path (satellite,
# redraws 750 ms apart) two redraws would take 2.25 s, and an outage not noticed is read
# as congestion when the link returns (the estimate cut to what waited out the outage).
MAX_LOSSY_SILENCE_MS = 1000.0
FEEDBACK_LOSS_WINDOW = 64  # feedback packets the return path's loss is counted over


class InFlight:
    """Bytes sent and not yet covered by feedback (by transport-wide seq)."""

    def __init__(self) -> None:
        # One entry per packet in three parallel deques, not a deque of tuples: a tuple
        # per packet sent, alive until feedback, is work for the cyclic GC on the
        # forward path.
        self._seqs: deque[int] = deque()
        self._send_ms: deque[float] = deque()
        self._sizes: deque[int] = deque()
        self.bytes = 0

    def on_sent(self, seq: int, size: int, send_ms: float) -> None:
        self._seqs.append(seq)
        self._send_ms.append(send_ms)
        self._sizes.append(size)
        self.bytes += size

    def on_feedback(self, highest_seq: int, now_ms: float) -> float | None:
        """Feedback covered every packet up to ``highest_seq`` (reported or not: a packet
        before it missing from all feedback was in a feedback that got lost).

        Returns how long the oldest of them was in flight: a round trip plus the
        receiver's feedback interval, the time a packet counts against the window.
        """
        seqs, send_ms, sizes = self._seqs, self._send_ms, self._sizes
        oldest = None
        while seqs and seqs[0] <= highest_seq:
            seqs.popleft()
            sent = send_ms.popleft()
            self.bytes -= sizes.popleft()
            if oldest is None:
                oldest = sent
        return None if oldest is None else now_ms - oldest

    def prune(self, now_ms: float) -> None:
        seqs, send_ms, sizes = self._seqs, self._send_ms, self._sizes
        while send_ms and send_ms[0] < now_ms - MAX_AGE_MS:
            seqs.popleft()
            send_ms.popleft()
            self.bytes -= sizes.popleft()

    def oldest_send_ms(self) -> float | None:
        return self._send_ms[0] if self._send_ms else None

    def first_sent_since(self, since_ms: float) -> float | None:
        """When the first packet still in flight that left at or after ``since_ms`` left.

        Walks back from the newest: the packets sent since a feedback, a window's worth
        at most."""
        first = None
        for sent in reversed(self._send_ms):
            if sent < since_ms:
                break
            first = sent
        return first

    @staticmethod
    def window_bytes(estimate_bps: float, base_ack_ms: float, queue_ms: float = WINDOW_QUEUE_MS) -> int:
        """The congestion window for ``estimate_bps`` when a packet is covered by feedback
        ``base_ack_ms`` after it left on an empty path (round trip + feedback interval),
        allowing ``queue_ms`` of queue beyond that."""
        return max(MIN_WINDOW_BYTES, int(estimate_bps * (base_ack_ms + queue_ms) / 8000.0))


class OutageTracker:
    """Feedback silence with data in flight: when an outage began, and that it ended."""

    def __init__(self, silence_ms: float = OUTAGE_SILENCE_MS) -> None:
        self.silence_ms = silence_ms
        self.last_feedback_ms: float | None = None
        self.since_ms: float | None = None  # the last feedback before the current outage
        self._first_sent_after: float | None = None  # first send after the last feedback
        self._last_count: int | None = None  # the last feedback's 8-bit packet count
        self.feedback_lost = 0  # feedback packets that never came (count gaps)
        self.feedback_lost_ms: float | None = None  # when the last such gap was seen
        self._recent_lost: deque[int] = deque()  # feedbacks lost before each one received
        self._recent_lost_sum = 0
        self.outages = 0

    @property
    def active(self) -> bool:
        return self.since_ms is not None

    def check(self, now_ms: float, in_flight: InFlight, redraw_wait_ms: float | None = None) -> bool:
        """True when an outage begins now (call from timers and before sending).

        ``redraw_wait_ms``: how often overdue feedback is redrawn, where it gets lost
        (see ``required_silence_ms``).

        The silence counts from the first packet sent after the last feedback, not
        from the oldest one in flight: a receiver reports each packet once, so when
        the feedback covering the packets in flight is lost, only a packet sent
        afterwards can draw the next. Packets whose feedback was lost say nothing of
        the link. Live, 10 % loss each way, a minute of 550 kbit/s video: counted
        from the oldest packet in flight, 4 of 6 runs saw 1-2 such outages (each
        pausing video for 0.5-0.9 s); counted from the first packet after the last
        feedback, 1 of 6. An idle sender that just resumed is not an outage either.
        """
        last = self.last_feedback_ms
        if self.since_ms is not None or last is None or not in_flight.bytes:
            return False
        first = self._first_sent_after
        if first is None:
            first = in_flight.first_sent_since(last)
            if first is None:
                return False
            self._first_sent_after = first
        quiet = min(now_ms - last, now_ms - first)
        if quiet > self.silence_ms and quiet > self.required_silence_ms(redraw_wait_ms):
            self.since_ms = last
            self.outages += 1
            return True
        return False

    def on_feedback_count(self, count: int, now_ms: float) -> None:
        """A TWCC feedback's packet count (8 bits, +1 per feedback the receiver sends):
        a gap is feedback lost on the way back."""
        last = self._last_count
        self._last_count = count & 0xFF
        if last is None:
            return
        gap = (count - last - 1) & 0xFF
        if 0 < gap < 0x80:  # a larger gap: reordered, or the receiver restarted
            self.feedback_lost += gap
            self.feedback_lost_ms = now_ms
        else:
            gap = 0
        recent = self._recent_lost
        recent.append(gap)
        self._recent_lost_sum += gap
        if len(recent) > FEEDBACK_LOSS_WINDOW:
            self._recent_lost_sum -= recent.popleft()

    def feedback_loss(self) -> float:
        """The fraction of the last ``FEEDBACK_LOSS_WINDOW`` feedback packets lost."""
        lost = self._recent_lost_sum
        return lost / (lost + len(self._recent_lost)) if lost else 0.0

    def required_silence_ms(self, redraw_wait_ms: float | None) -> float:
        """How long feedback must be silent for an outage.

        Where feedback gets lost, a full window (a keyframe is enough) with the
        feedback for it lost leaves the sender waiting on redraws (``Pacer``), and each
        redraw goes unanswered when it or its feedback is lost: at 10 % loss each way,
        one in five. ``silence_ms`` is then too short: a false outage pauses the video
        until a keyframe comes (live, 0.5 s freezes at 10 % loss). So the silence must
        also span enough redraws, one every ``redraw_wait_ms``, that all of them going
        unanswered by chance is rarer than ``FALSE_OUTAGE_ODDS``, taking the loss on
        the way out as that on the way back; at most ``MAX_LOSSY_SILENCE_MS``.
        """
        p = self.feedback_loss()
        if redraw_wait_ms is None or p <= 0.0:
            return self.silence_ms
        unanswered = 1.0 - (1.0 - p) ** 2
        if unanswered >= 0.5:
            redraws = MAX_UNANSWERED_REDRAWS
        else:
            redraws = min(MAX_UNANSWERED_REDRAWS, math.ceil(math.log(FALSE_OUTAGE_ODDS) / math.log(unanswered)))
        return max(self.silence_ms, min(MAX_LOSSY_SILENCE_MS, (redraws + 1) * redraw_wait_ms))

    def losing_feedback(self, now_ms: float) -> bool:
        """Whether feedback was lost in the last ``FEEDBACK_LOSS_MEMORY_MS``."""
        lost = self.feedback_lost_ms
        return lost is not None and now_ms - lost < FEEDBACK_LOSS_MEMORY_MS

    def on_feedback(self, now_ms: float) -> float | None:
        """Feedback with arrivals came: the outage's length (ms) if one just ended."""
        self.last_feedback_ms = now_ms
        self._first_sent_after = None
        since = self.since_ms
        if since is None:
            return None
        self.since_ms = None
        return now_ms - since
