"""Virtual-time BWE harness: SFU sender -> pacer -> netem link -> receiver -> TWCC back.

Why here and not only in tests: the same harness feeds ``bench/bwe.py`` (RFC
8867-style cases with figures and plots) and ``tests/test_bwe_sim.py``
(acceptance thresholds), so the numbers in the report are the ones the tests
check.

What runs (all sans-I/O, one loop over the earliest deadline):

- **sender** (the SFU's DownTrack side): audio (one 120-byte packet per 20 ms,
  optional) and video at ``min(estimate, desired) - audio`` as 30 fps frames of
  +-20 % size noise, a keyframe ``keyframe_ratio`` x a frame every
  ``keyframe_interval_ms``;
  packets of at most 1200 bytes go through the ``Pacer``; the transport-wide
  seq is stamped when a packet leaves the pacer (``TwccSendHistory.on_sent``);
  probe clusters from ``GccEstimator.next_probe`` go to the pacer, and tagged
  packets are reported with ``on_probe_sent``;
- **down link**: a netem ``Link`` whose config follows ``down`` phases
  (rate, delay, random loss, drop-tail buffer sized in ms of the rate);
- **receiver**: ``TwccRecorder`` records arrivals and builds feedback every
  50 ms; the feedback *bytes* go through the **up link**, and the sender parses
  them (``TwccFeedback.parse``) and matches them (``TwccSendHistory.on_feedback``)
  before the estimator sees them: the real wire path;
- RTT for the estimator: ``now - send time`` of the newest packet a feedback
  reports (slightly more than the path RTT: it includes the feedback wait).

Time series (every ``sample_ms``) go to ``SimResult.samples`` for plots.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from media.bwe.estimator import GccEstimator
from media.bwe.pacer import Pacer
from media.rtp.twcc import TwccRecorder, TwccSendHistory
from media.wire.twcc import TwccFeedback
from netem.link import Link, LinkConfig
from netem.rate import MTU_BYTES, MahimahiTrace

__all__ = ["Phase", "Sample", "Scenario", "SimResult", "Simulation", "link_config", "link_spec", "percentile"]

MAX_PACKET = 1200
AUDIO_BYTES = 120
AUDIO_INTERVAL_MS = 20.0
MIN_VIDEO_BPS = 20_000.0
_MEDIA = 0x01


@dataclass(frozen=True)
class Phase:
    """From ``t_ms`` on, the link is ``rate_bps`` (None: unlimited), ``delay_ms``, ``loss``.

    With ``trace`` (a Mahimahi trace, started at ``t_ms``) the rate follows the trace
    and the drop-tail buffer holds ``queue_ms`` at the trace's mean rate.
    """

    t_ms: float
    rate_bps: float | None
    delay_ms: float = 25.0
    loss: float = 0.0
    queue_ms: float = 300.0  # drop-tail buffer, in ms at this rate (RFC 8867 uses 300 ms)
    jitter_ms: float = 0.0  # +- uniform delay variation (netem keeps packet order)
    trace: MahimahiTrace | None = None


def link_config(phase: Phase) -> LinkConfig:
    """The netem config of a phase (``link_spec`` plus the trace, if any)."""
    cfg = LinkConfig.parse(link_spec(phase))
    if phase.trace is None:
        return cfg
    limit = max(int(phase.trace.mean_bps() * phase.queue_ms / 8000.0), 3 * MAX_PACKET)
    return cfg.with_changes(rate=phase.trace, queue_bytes=limit)


def link_spec(phase: Phase) -> str:
    """netem words for a phase (``rate 1500kbit delay 25ms limit 56250b``)."""
    parts = [f"delay {phase.delay_ms:g}ms" + (f" {phase.jitter_ms:g}ms" if phase.jitter_ms else "")]
    if phase.loss:
        parts.append(f"loss {phase.loss * 100:g}%")
    if phase.rate_bps is not None:
        parts.append(f"rate {phase.rate_bps:g}bit")
        limit = max(int(phase.rate_bps * phase.queue_ms / 8000.0), 3 * MAX_PACKET)
        parts.append(f"limit {limit}b")
    return " ".join(parts)


@dataclass
class Scenario:
    name: str
    duration_ms: float
    down: Sequence[Phase]
    up: Sequence[Phase] = (Phase(0.0, None, 25.0),)
    desired_bps: float = 2_500_000
    start_bps: int = 1_000_000
    min_bps: int = 50_000
    max_bps: int = 20_000_000
    seed: int = 1
    audio: bool = True
    fps: float = 30.0
    keyframe_interval_ms: float = 10_000.0
    keyframe_ratio: float = 4.0  # a keyframe's size in frames
    feedback_interval_ms: float = 50.0
    sample_ms: float = 100.0


@dataclass(slots=True)
class Sample:
    t_ms: float
    capacity_bps: float | None
    estimate_bps: float
    delay_based_bps: float
    loss_based_bps: float | None
    target_bps: float
    send_bps: float  # offered to the link over the last sample interval
    delivered_bps: float  # arrived at the receiver over the last sample interval
    net_queue_ms: float  # max queueing at the bottleneck of packets sent in the interval
    pacer_queue_ms: float
    loss: float  # link loss (random + tail drop) of packets sent in the interval
    rtt_ms: float | None
    state: str
    trend: float
    threshold: float


@dataclass
class SimResult:
    scenario: Scenario
    samples: list[Sample] = field(default_factory=list)
    # (send time, queueing delay at the bottleneck) per packet that reached the rate stage
    queue_delays: list[tuple[float, float]] = field(default_factory=list)
    counters: dict[str, Any] = field(default_factory=dict)

    def series(self, name: str, start_ms: float = 0.0, end_ms: float = math.inf) -> list[Any]:
        return [getattr(s, name) for s in self.samples if start_ms <= s.t_ms < end_ms]

    def queue_delay_percentile(self, q: float, start_ms: float = 0.0, end_ms: float = math.inf) -> float:
        values = [d for t, d in self.queue_delays if start_ms <= t < end_ms]
        return percentile(values, q)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    k = min(len(s) - 1, max(0, math.ceil(q / 100.0 * len(s)) - 1))
    return float(s[k])


def _capacity_at(phases: Sequence[Phase], t_ms: float, window_ms: float) -> float | None:
    """The down link's capacity at ``t_ms``; for a trace, over ``(t - window, t]``."""
    cur = phases[0]
    for p in phases:
        if p.t_ms <= t_ms:
            cur = p
    if cur.trace is None:
        return cur.rate_bps
    ts, period = cur.trace.timestamps, cur.trace.period_ms
    lo, hi = t_ms - window_ms - cur.t_ms, t_ms - cur.t_ms
    n = 0
    base = math.floor(max(lo, 0.0) / period) * period
    while base < hi:
        a = bisect.bisect_right(ts, lo - base)
        b = bisect.bisect_right(ts, hi - base)
        n += b - a
        base += period
    return n * MTU_BYTES * 8000.0 / window_ms


def _padding(size: int) -> bytes:
    """A padding packet of ``size`` bytes (the shell's are RTX padding)."""
    return bytes(size)


class Simulation:
    """One sender, one receiver, a link each way; ``run()`` returns a ``SimResult``."""

    def __init__(self, scenario: Scenario, estimator: GccEstimator | None = None) -> None:
        sc = scenario
        self.sc = sc
        self.rng = random.Random(sc.seed)
        self.est = estimator or GccEstimator(
            start_bps=sc.start_bps, min_bps=sc.min_bps, max_bps=sc.max_bps
        )
        self.est.set_desired_bps(sc.desired_bps)
        self.pacer = Pacer(self.est.estimate_bps(0.0))
        self.history = TwccSendHistory(max_age_ms=10_000.0)
        self.recorder = TwccRecorder(1, 2, interval_ms=sc.feedback_interval_ms)
        self.down = Link(link_config(sc.down[0]), 0.0, rng=random.Random(f"{sc.seed}/down"))
        self.up = Link(link_config(sc.up[0]), 0.0, rng=random.Random(f"{sc.seed}/up"))
        self.result = SimResult(sc)
        self._changes: list[tuple[float, Link, Phase]] = sorted(
            [(p.t_ms, self.down, p) for p in sc.down[1:]] + [(p.t_ms, self.up, p) for p in sc.up[1:]],
            key=lambda x: x[0],
        )
        self._seq = 0
        self._next_frame = 0.0
        self._next_audio = 0.0 if sc.audio else math.inf
        self._next_sample = sc.sample_ms
        self._frame_no = 0
        self._next_keyframe = 0.0
        # the subscriber peer's outage handling (media/routing/subscriber.py)
        self._outage = False
        self._last_audio_ms: float | None = None
        # per-sample accumulators
        self._win_sent = 0
        self._win_delivered = 0
        self._win_queue = 0.0
        self._win_pushed = 0
        self._win_lost_base = 0
        self._win_sent_base = 0

    # ------------------------------------------------------------ sender
    def _target_bps(self, now_ms: float) -> float:
        return min(float(self.est.estimate_bps(now_ms)), self.sc.desired_bps)

    def _media_bps(self, now_ms: float) -> float:
        """What the sender produces: the target, pushed back while the pacer holds a backlog."""
        return self._target_bps(now_ms) * self.pacer.pushback(now_ms)

    def _produce_frame(self, now_ms: float) -> None:
        sc = self.sc
        if self._outage:  # the allocator forwards audio only while the link is out
            self._next_keyframe = now_ms
            self._frame_no += 1
            self._next_frame = self._frame_no * 1000.0 / sc.fps
            return
        video_bps = self._media_bps(now_ms) - (AUDIO_BYTES * 8000.0 / AUDIO_INTERVAL_MS if sc.audio else 0.0)
        if video_bps < MIN_VIDEO_BPS:  # below the lowest layer: video pauses, a keyframe resumes it
            self._next_keyframe = now_ms
            self._frame_no += 1
            self._next_frame = self._frame_no * 1000.0 / sc.fps
            return
        size = video_bps / sc.fps / 8.0 * self.rng.uniform(0.8, 1.2)
        if now_ms >= self._next_keyframe:
            size *= sc.keyframe_ratio
            self._next_keyframe = now_ms + sc.keyframe_interval_ms
        n = max(1, math.ceil(size / MAX_PACKET))
        each = max(1, int(size / n))
        for _ in range(n):
            self.pacer.enqueue(None, each, "video", now_ms)
        self._frame_no += 1
        self._next_frame = self._frame_no * 1000.0 / sc.fps

    def _send(self, now_ms: float) -> None:
        est = self.est
        outage = est.set_pacer_window(self.pacer, now_ms)
        if outage != self._outage:
            self._on_outage(outage, now_ms)
        for item in self.pacer.pop(now_ms, _padding):
            self._seq += 1
            seq = self._seq
            if item.kind == "audio":
                self._last_audio_ms = now_ms
            self.history.on_sent(seq, now_ms, item.size)
            est.on_packet_sent(seq, item.size, now_ms)
            if item.probe_id is not None:
                self.est.on_probe_sent(item.probe_id, seq, item.size, now_ms)
            data = bytes((_MEDIA, (seq >> 8) & 0xFF, seq & 0xFF)) + bytes(max(0, item.size - 3))
            stats = self.down.stats
            before_q = stats.queue_delay_count
            self.down.push(data, now_ms)
            self._win_sent += item.size
            if stats.queue_delay_count > before_q:
                qd = stats.queue_delay_ms[-1]
                self.result.queue_delays.append((now_ms, qd))
                self._win_queue = max(self._win_queue, qd)

    def _on_outage(self, active: bool, now_ms: float) -> None:
        """What ``SubscriberPeer._on_outage`` does: video pauses while the link is out
        and resumes on a keyframe; audio resumes once the receiver has about played
        the audio the outage held (``Pacer.on_outage``)."""
        self._outage = active
        est = self.est
        self.pacer.on_outage(active, now_ms, est.in_flight.oldest_send_ms(), self._last_audio_ms, est.rtt_ms)
        if not active:
            self._next_keyframe = now_ms

    def _on_feedback(self, data: bytes, now_ms: float) -> None:
        fb = TwccFeedback.parse(data)
        self.est.outage.on_feedback_count(fb.fb_pkt_count, now_ms)
        results = self.history.on_feedback(fb, now_ms)
        newest = max((r.send_ms for r in results if r.arrival_ms is not None), default=None)
        if newest is not None:
            self.est.on_rtt(now_ms - newest, now_ms)
        self.est.on_packet_results(results, now_ms)
        self.pacer.set_rate(self.est.estimate_bps(now_ms), now_ms)
        self._maybe_probe(now_ms)

    def _maybe_probe(self, now_ms: float) -> None:
        cluster = self.est.next_probe(now_ms)
        while cluster is not None:
            self.pacer.start_probe(cluster, now_ms)
            cluster = self.est.next_probe(now_ms)

    # ------------------------------------------------------------ loop
    def _deadline(self, now_ms: float) -> float:
        cands = [self._next_frame, self._next_audio, self._next_sample]
        for d in (
            self.pacer.next_send_time(now_ms),
            self.recorder.next_deadline(),
            self.down.next_deadline(),
            self.up.next_deadline(),
        ):
            if d is not None:
                cands.append(d)
        if self._changes:
            cands.append(self._changes[0][0])
        return max(min(cands), now_ms)

    def _sample(self, now_ms: float) -> None:
        sc = self.sc
        st = self.est.stats()
        dt = sc.sample_ms
        ds = self.down.stats
        lost = ds.dropped_loss + ds.dropped_queue
        sent = ds.sent
        n_sent = sent - self._win_sent_base
        loss = (lost - self._win_lost_base) / n_sent if n_sent else 0.0
        self._win_sent_base, self._win_lost_base = sent, lost
        self.result.samples.append(
            Sample(
                t_ms=now_ms,
                capacity_bps=_capacity_at(sc.down, now_ms, dt),
                estimate_bps=float(self.est.estimate_bps(now_ms)),
                delay_based_bps=float(st["delay_based_bps"]),
                loss_based_bps=st["loss_based_bps"],
                target_bps=self._target_bps(now_ms),
                send_bps=self._win_sent * 8000.0 / dt,
                delivered_bps=self._win_delivered * 8000.0 / dt,
                net_queue_ms=self._win_queue,
                pacer_queue_ms=self.pacer.queue_delay_ms(now_ms),
                loss=loss,
                rtt_ms=st["rtt_ms"],
                state=st["state"],
                trend=st["trend"],
                threshold=st["threshold"],
            )
        )
        self._win_sent = self._win_delivered = 0
        self._win_queue = 0.0
        self._next_sample += dt

    def run(self) -> SimResult:
        sc = self.sc
        now = 0.0
        end = sc.duration_ms
        self._maybe_probe(now)
        stuck = 0
        while now <= end:
            while self._changes and self._changes[0][0] <= now:
                _, link, phase = self._changes.pop(0)
                link.set_config(link_config(phase), now)
            for data in self.down.pop_ready(now):
                self._win_delivered += len(data)
                self.recorder.record(((data[1] << 8) | data[2]) & 0xFFFF, now)
            for data in self.up.pop_ready(now):
                self._on_feedback(data, now)
            d = self.recorder.next_deadline()
            if d is not None and d <= now:
                for pkt in self.recorder.build_feedback(now):
                    self.up.push(pkt, now)
            if self._next_audio <= now:
                self.pacer.enqueue(None, AUDIO_BYTES, "audio", now)
                self._next_audio += AUDIO_INTERVAL_MS
            if self._next_frame <= now:
                self._produce_frame(now)
                self._maybe_probe(now)
            self._send(now)
            if self._next_sample <= now:
                self._sample(now)
            nxt = self._deadline(now)
            stuck = stuck + 1 if nxt == now else 0
            if stuck > 10_000:
                raise RuntimeError(f"simulation stuck at {now} ms")
            now = nxt
        ds = self.down.stats
        self.result.counters = {
            "down": ds.to_dict(),
            "up": self.up.stats.to_dict(),
            "pacer_dropped": dict(self.pacer.dropped),
            "probes": self.est.probe_controller.sent_clusters,
            "probe_results": list(self.est.probe_results.results),
            "late_feedback_packets": self.recorder.late_packets,
            "outages": self.est.outage.outages,
        }
        return self.result
