"""Sans-I/O pacer: a leaky bucket with priority queues, and the probe sender.

Why pace: a keyframe is 10-50 packets produced at once. Sent back to back, it
hits the subscriber's bottleneck as a burst that builds a queue the delay-based
estimator reads as congestion, and on a shallow buffer it is simply dropped.
The pacer spreads packets at ``pacing_factor * estimate`` (2.5, libwebrtc's
factor): fast enough that a keyframe leaves in a few frame intervals, slow
enough not to burst.

Queues in strict priority: **audio > retransmissions ("rtx") > video >
padding**. Audio bypasses the budget entirely (it is small and late audio is
worse than late video, so it is never starved) but is charged to it. Video and
retransmissions older than ``max_queue_ms`` are dropped from the head (counted
in ``dropped``): on a link that suddenly shrank, sending seconds-old video only
adds delay; the layer selector will ask for a keyframe after the gap. While the
link is out (``set_window(..., outage=True)``) nothing but padding leaves, and
after it ``hold_audio`` keeps new audio from queueing behind the late burst.

Probing: ``start_probe(cluster, now_ms)`` queues a ``ProbeCluster``; while one
is active every packet popped (queued media first, then padding from the shell's
``make_padding``) is sent at the cluster's bitrate and tagged with its
id, until ``min_packets`` and ``min_bytes`` went out. Tagging *all* packets
sent during the probe (not only padding) is what makes the probe result the
link's total rate.

How the DownTrack sink uses it (one pacer per subscriber transport)::

    pacer.enqueue(packet, len(packet), "video", now_ms)   # from DownTrack.write_video
    # the shell keeps one timer at pacer.next_send_time(now_ms); when it fires:
    for item in pacer.pop(now_ms, make_padding):   # make_padding(size) -> bytes | None
        data = item.packet
        seq = stamp_twcc(data)                   # transport-wide seq, at send time
        send_history.on_sent(seq, now_ms, item.size)
        if item.probe_id is not None:
            estimator.on_probe_sent(item.probe_id, seq, item.size, now_ms)
        transport.send(data)
    # after every feedback: pacer.set_rate(estimator.estimate_bps(now_ms), now_ms)

The transport-wide seq must be stamped when the packet *leaves the pacer*, not
when it is enqueued: the estimator compares send times, and the wait in the
pacer is not network delay.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from media.bwe.probe import ProbeCluster

__all__ = ["KINDS", "PacedPacket", "Pacer"]

KINDS = ("audio", "rtx", "video", "padding")
_PACED_KINDS = ("rtx", "video", "padding")
_DROPPABLE = ("rtx", "video")
PUSHBACK_QUEUE_MS = 400.0
# While the congestion window is full, one packet still leaves this often. The window
# opens only on feedback, and a receiver sends feedback only for packets it gets: when
# the feedback covering the last packets is lost (or the link was out), a sender that
# sends nothing never hears again and holds its window shut until the in-flight
# packets age out (seconds of frozen video). libwebrtc does the same (500 ms).
CONGESTED_PACKET_INTERVAL_MS = 200.0
# Where feedback gets lost (``set_window(..., feedback_wait_ms=)``), once the next
# feedback is overdue a small packet redraws it, full window or not, whenever bytes are
# in flight and nothing else leaves. The window holds about a round trip of media, so a
# keyframe fills it: without the redraw, a lost feedback stalls video until the 200 ms
# packet, and three lost in a row (about once a minute at 10 % loss, feedback every
# 50 ms) leave the packets sent before them unanswered for 300 ms, which reads as an
# outage. With video paused (no audio, waiting for a keyframe), so does one packet
# whose feedback is lost.
# During an outage (the estimator's: no feedback at all with data in flight) queued
# audio is kept this long at most, and what leaves past the full window is padding.
# Everything sent into a dead link waits in the bottleneck and reaches the receiver in
# one burst when the link returns; the audio jitter buffer (NetEq) plays every audio
# packet of that burst, so each 20 ms of it is 20 ms of delay it then sheds by
# time-stretching over seconds, and the video, synced to the audio, waits as long
# (live, 3G profile, 2 s outage: audio let out every 200 ms through the outage plus the
# last 300 ms queued kept Chrome's audio jitter buffer at 900-490 ms for 4.5 s after it).
OUTAGE_AUDIO_QUEUE_MS = 60.0


class PacedPacket(NamedTuple):
    """One packet allowed out now. ``packet`` is None for padding the shell makes."""

    packet: Any
    kind: str
    size: int
    probe_id: int | None = None


class Pacer:
    """Leaky bucket at ``pacing_factor * rate_bps``; see the module docstring."""

    def __init__(
        self,
        rate_bps: float,
        *,
        burst_ms: float = 5.0,
        max_queue_ms: float = 500.0,
        max_audio_queue_ms: float = 300.0,
        pacing_factor: float = 2.5,
        padding_size: int = 1000,
    ) -> None:
        if rate_bps <= 0 or burst_ms <= 0 or max_queue_ms <= 0 or pacing_factor <= 0:
            raise ValueError("rate_bps, burst_ms, max_queue_ms and pacing_factor must be > 0")
        # Fixed at construction, as pacing_factor: the budget's fill rate derives from them.
        self.burst_ms = burst_ms
        self.max_queue_ms = max_queue_ms
        self.max_audio_queue_ms = max_audio_queue_ms
        self.pacing_factor = pacing_factor
        self.padding_size = padding_size
        self._rate_bps = float(rate_bps)
        # Read on every packet (try_send_now): the budget's fill rate (bytes per ms) and
        # cap (bytes), recomputed when the rate, factor or burst changes.
        self._fill_per_ms = 0.0
        self._max_fill = 0.0
        self._update_fill()
        self.dropped = {"rtx": 0, "video": 0, "audio": 0}
        self.sent_bytes = {k: 0 for k in KINDS}
        self._queues: dict[str, deque[tuple[Any, int, float]]] = {k: deque() for k in KINDS}
        self._queued_bytes = 0
        self._budget = 0.0  # bytes; may go negative by up to one packet
        self._budget_ms: float | None = None
        self._probes: deque[ProbeCluster] = deque()
        self._probe: ProbeCluster | None = None
        self._probe_start_ms = 0.0
        self._probe_bytes = 0
        self._probe_packets = 0
        self._window: int | None = None  # congestion window (bytes in flight), None: off
        self._in_flight = 0
        self._outage = False
        self._audio_hold_until = float("-inf")  # audio dropped until then (hold_audio)
        self._late_audio_ms = 0.0  # audio sent into the current outage (on_outage)
        self._last_send_ms: float | None = None
        self._last_feedback_ms: float | None = None
        self._feedback_wait_ms: float | None = None
        self._last_redraw_ms = float("-inf")
        self.redraws = 0  # small packets sent because feedback was overdue
        self.congested_sends = 0  # packets let out past a full window to get feedback

    # ------------------------------------------------------------ config
    @property
    def rate_bps(self) -> float:
        return self._rate_bps

    def _update_fill(self) -> None:
        self._fill_per_ms = self._rate_bps * self.pacing_factor / 8000.0
        self._max_fill = self._fill_per_ms * self.burst_ms

    @property
    def pacing_bps(self) -> float:
        return self._rate_bps * self.pacing_factor

    def set_rate(self, rate_bps: float, now_ms: float | None = None) -> None:
        """New estimate (the pacer multiplies it by ``pacing_factor``)."""
        if now_ms is not None:
            self._refill(now_ms)
        self._rate_bps = max(float(rate_bps), 1.0)
        self._update_fill()

    def set_window(
        self,
        window_bytes: int | None,
        in_flight_bytes: int,
        *,
        outage: bool = False,
        last_feedback_ms: float | None = None,
        feedback_wait_ms: float | None = None,
    ) -> None:
        """The estimator's congestion window, the bytes in flight now, and whether the
        link is out (no feedback at all with data in flight). With ``last_feedback_ms``
        and ``feedback_wait_ms`` (how long after a feedback the next is overdue), a
        small packet leaves to draw feedback once that wait has passed since both the
        last feedback and the last such packet, while bytes are in flight and
        nothing else leaves.

        While ``in_flight >= window`` only probes leave (the shell calls this after each
        feedback and before draining; packets popped meanwhile count as in flight).
        Queued audio older than ``max_audio_queue_ms`` is dropped (during an outage,
        older than ``OUTAGE_AUDIO_QUEUE_MS``): after an outage, late audio is worse
        than none.
        """
        self._window = window_bytes
        self._last_feedback_ms = last_feedback_ms
        self._feedback_wait_ms = feedback_wait_ms
        self._in_flight = in_flight_bytes
        self._outage = outage

    @property
    def congested(self) -> bool:
        """The window is full, or the link is out (then it is shut whatever it holds)."""
        return self._outage or (self._window is not None and self._in_flight >= self._window)

    def hold_audio(self, until_ms: float) -> None:
        """Drop audio (counted in ``dropped``) until ``until_ms``.

        After an outage the audio sent into it reaches the receiver in one burst, and
        its jitter buffer plays all of it: audio resumed at once queues behind that
        and stays as late for seconds. Held back for about the burst's length, it
        starts again as the burst runs out.
        """
        self._audio_hold_until = until_ms

    def on_outage(
        self, active: bool, now_ms: float, oldest_send_ms: float | None, last_audio_ms: float | None,
        rtt_ms: float | None,
    ) -> None:
        """The link went out (``active``) or came back: hold audio after it for about
        the audio the outage caught.

        That is the audio sent between the oldest packet still unacknowledged when the
        outage began (``oldest_send_ms``) and the last audio (``last_audio_ms``). The
        receiver has been playing it since the link returned, about a round trip
        (``rtt_ms``) before the feedback that says so: new audio waits for the rest.
        """
        if active:
            late = last_audio_ms - oldest_send_ms if last_audio_ms is not None and oldest_send_ms is not None else 0.0
            self._late_audio_ms = max(0.0, late)
            return
        hold = self._late_audio_ms - (rtt_ms or 0.0)
        if hold > 0:
            self.hold_audio(now_ms + hold)

    # ------------------------------------------------------------ inputs
    def enqueue(self, packet: Any, size: int, kind: str, now_ms: float) -> None:
        if kind not in self._queues:
            raise ValueError(f"unknown packet kind {kind!r} (allowed: {', '.join(KINDS)})")
        if kind == "audio" and now_ms < self._audio_hold_until:
            self.dropped["audio"] += 1
            return
        self._queues[kind].append((packet, size, now_ms))
        self._queued_bytes += size
        self._drop_stale(now_ms)

    def try_send_now(self, size: int, kind: str, now_ms: float) -> bool:
        """Fast path: True (budget charged) when the packet may skip the queue.

        That is when nothing is queued, no probe runs and the budget is positive (audio
        always may). Most packets on an uncongested link take this path, which keeps
        the pacer off the per-packet cost of the forward path.
        """
        window = self._window
        if (
            self._queued_bytes
            or self._probe is not None
            or self._outage
            or (window is not None and self._in_flight >= window)
        ):
            return False  # (the last two: `congested`, inline on the forward path)
        if kind == "audio" and now_ms < self._audio_hold_until:
            return False
        # _refill, inline
        last = self._budget_ms
        self._budget_ms = now_ms
        budget = self._budget
        if last is not None and now_ms > last:
            budget += self._fill_per_ms * (now_ms - last)
            if budget > self._max_fill:
                budget = self._max_fill
        if kind != "audio" and budget <= 0:
            self._budget = budget
            return False
        self._budget = budget - size
        self._in_flight += size
        self.sent_bytes[kind] += size
        self._last_send_ms = now_ms
        return True

    def start_probe(self, cluster: ProbeCluster, now_ms: float) -> None:
        """Queue a probe cluster; it starts when the previous one is done."""
        self._probes.append(cluster)
        if self._probe is None:
            self._next_probe(now_ms)

    # ------------------------------------------------------------ state
    @property
    def queued_packets(self) -> int:
        return sum(len(q) for q in self._queues.values())

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def probing(self) -> bool:
        return self._probe is not None

    def pushback(self, now_ms: float) -> float:
        """Factor (0..1) for what the sender should produce while the window holds packets.

        The congestion window holds paced packets; produced at the full
        estimate, the backlog would never drain and every frame would wait behind it.
        Producing less in proportion to the wait drains it (libwebrtc's congestion
        window pushback), and at ``PUSHBACK_QUEUE_MS`` of wait video stops (resumes
        with a keyframe) instead of arriving seconds late.
        """
        if not self.congested:
            return 1.0  # a keyframe burst waiting for pacing budget is no reason to shed
        return max(0.0, 1.0 - self.queue_delay_ms(now_ms) / PUSHBACK_QUEUE_MS)

    def queue_delay_ms(self, now_ms: float) -> float:
        """Age of the oldest paced (non-audio) packet waiting."""
        oldest = [q[0][2] for k in _PACED_KINDS if (q := self._queues[k])]
        return now_ms - min(oldest) if oldest else 0.0

    # ------------------------------------------------------------ timing
    def _refill(self, now_ms: float) -> None:
        last = self._budget_ms
        self._budget_ms = now_ms
        if last is None or now_ms <= last:
            return
        self._budget = min(self._budget + self._fill_per_ms * (now_ms - last), self._max_fill)

    def _has_paced(self) -> bool:
        q = self._queues
        return bool(q["rtx"] or q["video"] or q["padding"])

    def next_send_time(self, now_ms: float) -> float | None:
        """When ``pop`` will release something (``now_ms`` if now), None if idle."""
        if self._queues["audio"] and not self.congested:
            return now_ms
        if self._probe is not None:
            due = self._probe_start_ms + self._probe_bytes * 8000.0 / self._probe.bitrate_bps
            return max(now_ms, due)
        redraw = self._redraw_at()
        if self.congested:
            # The next feedback opens the window; if none comes, a packet goes anyway.
            return max(now_ms, min(self._congested_send_at(), redraw))
        if not self._has_paced():
            return None if redraw == float("inf") else max(now_ms, redraw)
        self._refill(now_ms)
        if self._budget > 0:
            return now_ms
        return now_ms + (-self._budget + 1e-6) * 8000.0 / self.pacing_bps

    def _congested_send_at(self) -> float:
        last = self._last_send_ms
        return float("-inf") if last is None else last + CONGESTED_PACKET_INTERVAL_MS

    def _redraw_at(self) -> float:
        """When overdue feedback is next redrawn (inf: not on this link, or not now)."""
        wait, feedback = self._feedback_wait_ms, self._last_feedback_ms
        if wait is None or feedback is None or self._outage or self._in_flight <= 0:
            return float("inf")
        return max(feedback, self._last_redraw_ms) + wait

    # ------------------------------------------------------------ output
    def _take_paced(self) -> tuple[Any, int, str] | None:
        for kind in _PACED_KINDS:
            q = self._queues[kind]
            if q:
                packet, size, _ = q.popleft()
                self._queued_bytes -= size
                return packet, size, kind
        return None

    def _next_probe(self, now_ms: float) -> None:
        self._probe = self._probes.popleft() if self._probes else None
        self._probe_start_ms = now_ms
        self._probe_bytes = 0
        self._probe_packets = 0

    def _drop_stale(self, now_ms: float) -> None:
        cutoff = now_ms - self.max_queue_ms
        for kind in _DROPPABLE:
            q = self._queues[kind]
            while q and q[0][2] < cutoff:
                self._queued_bytes -= q.popleft()[1]
                self.dropped[kind] += 1
        q = self._queues["audio"]
        cutoff = now_ms - (min(self.max_audio_queue_ms, OUTAGE_AUDIO_QUEUE_MS) if self._outage
                           else self.max_audio_queue_ms)
        while q and q[0][2] < cutoff:
            self._queued_bytes -= q.popleft()[1]
            self.dropped["audio"] += 1

    def pop(
        self, now_ms: float, make_padding: Callable[[int], Any] | None = None
    ) -> list[PacedPacket]:
        """Everything that may leave at ``now_ms``, in send order.

        ``make_padding(size)`` builds a probe packet of about ``size`` bytes (None: it
        cannot). With it the probe is timed by the real packet sizes: an RTX copy of a
        small low-layer packet is a third of ``padding_size``, and counting it as
        ``padding_size`` sent the probe at a third of its rate (and measured that).
        Without it, padding items have ``packet=None`` and the shell makes them.
        """
        self._refill(now_ms)
        q = self._queues
        if (
            self._probe is None
            and not (q["audio"] or q["rtx"] or q["video"] or q["padding"])
            and not self.congested
            and now_ms < self._redraw_at()
        ):
            return []  # nothing queued and the window open: what the timer mostly finds
        self._drop_stale(now_ms)
        out: list[PacedPacket] = []
        sent = self.sent_bytes
        audio = self._queues["audio"]
        while audio and not self.congested:
            packet, size, _ = audio.popleft()
            self._queued_bytes -= size
            self._budget -= size
            self._in_flight += size
            sent["audio"] += size
            out.append(PacedPacket(packet, "audio", size))
        while self._probe is not None:
            cluster = self._probe
            allowed = cluster.bitrate_bps * (now_ms - self._probe_start_ms) / 8000.0
            if self._probe_bytes > allowed + 1e-6:
                break
            item = self._take_paced()
            if item is None:
                if make_padding is None:
                    item = (None, self.padding_size, "padding")
                else:
                    made = make_padding(self.padding_size)
                    if made is None:
                        self._next_probe(now_ms)  # nothing to probe with: give up
                        break
                    item = (made, len(made), "padding")
            packet, size, kind = item
            sent[kind] += size
            self._in_flight += size
            out.append(PacedPacket(packet, kind, size, cluster.id))
            self._probe_bytes += size
            self._probe_packets += 1
            if self._probe_packets >= cluster.min_packets and self._probe_bytes >= cluster.min_bytes:
                self._next_probe(now_ms)
        if self._probe is None:
            while self._budget > 0 and not self.congested:
                item = self._take_paced()
                if item is None:
                    break
                packet, size, kind = item
                self._budget -= size
                self._in_flight += size
                sent[kind] += size
                out.append(PacedPacket(packet, kind, size))
        if not out:
            self._draw_feedback(now_ms, make_padding, out)
        if out:
            self._last_send_ms = now_ms
        return out

    def _draw_feedback(self, now_ms: float, make_padding: Callable[[int], Any] | None, out: list[PacedPacket]) -> None:
        """Nothing else left: a packet past a full window each interval, and one that
        redraws overdue feedback (see ``CONGESTED_PACKET_INTERVAL_MS``)."""
        if self._probe is None and self.congested and now_ms >= self._congested_send_at():
            self._last_send_ms = now_ms  # also when nothing could go: no busy timer
            item = self._take_congested(make_padding)
            if item is not None:
                self.congested_sends += 1
                out.append(item)
                return
        if now_ms >= self._redraw_at():
            self._last_redraw_ms = now_ms  # also when nothing could go: no busy timer
            item = self._take_congested(make_padding, redraw=True)
            if item is not None:
                self.redraws += 1
                out.append(item)

    def _take_congested(
        self, make_padding: Callable[[int], Any] | None, *, redraw: bool = False
    ) -> PacedPacket | None:
        """One packet past a full window: queued audio, else the oldest paced packet,
        else a small padding packet (it only has to draw feedback). During an outage
        only padding: media sent then reaches the receiver late, in the burst. To
        redraw overdue feedback, padding before video: it only has to reach the
        receiver, and the window may be full because the link is slow."""
        audio = self._queues["audio"]
        made = None
        if make_padding is not None and (self._outage or (redraw and not audio)):
            made = make_padding(200)
        if made is not None:
            packet, size, kind = made, len(made), "padding"
        elif self._outage:
            return None
        elif audio:
            packet, size, _ = audio.popleft()
            self._queued_bytes -= size
            kind = "audio"
        elif (item := self._take_paced()) is not None:
            packet, size, kind = item
        elif make_padding is not None and (made := make_padding(200)) is not None:
            packet, size, kind = made, len(made), "padding"
        else:
            return None
        self._budget -= size
        self._in_flight += size
        self.sent_bytes[kind] += size
        return PacedPacket(packet, kind, size)
