"""What a sender that knows the link could reach on a capacity trace (fluid model).

Why: ``bench/bwe.py --traces`` asks Ferry's estimator for utilization >= 0.85 and a
bottleneck queue p95 < 150 ms on every trace. Where Ferry misses, this tells whether
the miss is Ferry's or the trace's: an oracle told the link's delivered capacity over
the last ``window_ms`` and the bottleneck's backlog, both ``lag_ms`` late (what
feedback can tell at best), sends at that capacity x (1 + gain (target - queue) /
target) (capped at ``rate_cap`` x capacity and at the desired 2.5 Mbit/s), with at most
the capacity x (lag + ``allowance_ms``) in flight. It sweeps those four settings and
prints, per trace, the best utilization with queue p95 under the bound, the least
queue p95 with utilization over its bound, and the least queue p95 at all.

The link is the harness's: the Mahimahi trace's delivery opportunities (one MTU
each), a drop-tail buffer of 300 ms at the trace's mean rate; 1200-byte packets,
queue delay counted after the 5 s warm-up, utilization over min(capacity, desired)
per second as in ``qa.bwe_traces``. No frames: a fluid sender, so what it cannot
reach no real one does (with the same lag). With ``--audio`` it also sends the
simulation's audio, 120 B every 20 ms, except while it knows the link is out; each
audio packet counts in the queue p95 as in ``qa.bwe_traces``, and in a deep fade those
small packets are most of the packets, all waiting for the link's rare opportunities.

    python bench/bwe_oracle.py [NAME ...] [--lag 50] [--full] [--audio]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from netem.rate import MTU_BYTES  # noqa: E402
from qa.bwe_traces import (  # noqa: E402
    SYNTHETIC,
    capacity_buckets,
    real_trace_scenario,
    synthetic_scenario,
)

PACKET = 1200
AUDIO_BYTES = 120  # what qa.bwe_simulation's sender adds with audio on
AUDIO_INTERVAL_MS = 20
DESIRED_BPS = 2_500_000.0
WARMUP_MS = 5000
BUFFER_MS = 300.0
MIN_UTILIZATION = 0.85
MAX_QUEUE_P95_MS = 150.0
SMALL_GRID = {"window_ms": (100, 200, 500), "target_ms": (20, 35, 70), "gain": (0.25, 0.5),
              "allowance_ms": (None, 40, 160)}
FULL_GRID = {"window_ms": (50, 100, 200, 500), "target_ms": (10, 20, 35, 70, 100),
             "gain": (0.25, 0.5, 1.0), "allowance_ms": (None, 20, 40, 80, 160)}


def _trace(name: str):  # type: ignore[no-untyped-def]
    synthetic = [st for st in SYNTHETIC if st.name == name]
    sc = synthetic_scenario(synthetic[0]) if synthetic else real_trace_scenario(name)
    return sc.down[0].trace, int(sc.duration_ms)


class _Link:
    """The harness's bottleneck per ms: drop-tail FIFO served by the trace's
    opportunities (one MTU each), and what it did at each ms for the oracle to read late."""

    def __init__(self, trace, duration: int) -> None:  # type: ignore[no-untyped-def]
        self.opportunities = [0] * (duration + 1)
        base = 0
        while base < duration:
            for t in trace.timestamps:
                if base + t <= duration:
                    self.opportunities[base + t] += 1
            base += trace.period_ms
        self._cumulative = [0]
        for n in self.opportunities:
            self._cumulative.append(self._cumulative[-1] + n)
        self.limit = trace.mean_bps() * BUFFER_MS / 8000.0
        self.queue: deque[list[int]] = deque()  # [enqueued at ms, bytes left]
        self.queued = 0
        self.backlog = [0] * (duration + 1)  # bytes queued at each ms
        self.head = [-1] * (duration + 1)  # when the packet at the head at each ms was queued
        self.sojourns: list[tuple[int, int]] = []  # (delivered at ms, its sojourn) per packet
        self.delivered = [0.0] * (duration // 1000 + 2)  # bits per second of the run
        self.delays: list[int] = []  # sojourns of packets queued after the warm-up

    def capacity(self, t0: int, t1: int) -> float:
        """Bit/s the trace offered over (t0, t1]."""
        return (self._cumulative[t1 + 1] - self._cumulative[t0 + 1]) * MTU_BYTES * 8000.0 / (t1 - t0)

    def push(self, t: int, size: int) -> None:
        if self.queued + size <= self.limit:
            self.queue.append([t, size])
            self.queued += size

    def serve(self, t: int) -> None:
        queue = self.queue
        for _ in range(self.opportunities[t]):
            room = MTU_BYTES
            while queue and room > 0:
                take = min(room, queue[0][1])
                queue[0][1] -= take
                room -= take
                self.queued -= take
                self.delivered[max(0, t - 1) // 1000] += take * 8
                if queue[0][1] == 0:
                    start = queue.popleft()[0]
                    self.sojourns.append((t, t - start))
                    if start >= WARMUP_MS:
                        self.delays.append(t - start)
        self.backlog[t] = self.queued
        self.head[t] = queue[0][0] if queue else -1


class _FeedbackQueue:
    """The queue as a sender learns it from feedback ``lag`` ms late: the newest
    delivered packet's sojourn, and that the oldest undelivered one has waited at
    least this long."""

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.newest = 0  # link.sojourns[:newest] were delivered by the time known

    def queue_ms(self, known: int) -> float:
        sojourns = self.link.sojourns
        while self.newest < len(sojourns) and sojourns[self.newest][0] <= known:
            self.newest += 1
        q = float(sojourns[self.newest - 1][1]) if self.newest else 0.0
        if known >= 0 and self.link.head[known] >= 0:
            q = max(q, float(known - self.link.head[known]))
        return q


def run(name: str, *, lag_ms: int = 50, window_ms: int = 200, target_ms: float = 35.0, gain: float = 0.25,
        allowance_ms: float | None = None, rate_cap: float = 1.25, audio: bool = False,
        feedback_only: bool = False) -> tuple[float, float]:
    """(utilization, queue delay p95 ms) of the oracle sender on trace ``name``."""
    trace, duration = _trace(name)
    link = _Link(trace, duration)
    told = _FeedbackQueue(link)
    sent = [0] * (duration + 1)
    credit = 0.0
    for t in range(duration):
        known = t - lag_ms
        cap = link.capacity(known - window_ms, known) if known - window_ms >= 0 else 1e6
        seen = link.backlog[known] if known >= 0 else 0
        queue_ms = told.queue_ms(known) if feedback_only else seen * 8000.0 / max(cap, 1e3)
        rate = min(DESIRED_BPS, cap * min(max(1.0 + gain * (target_ms - queue_ms) / target_ms, 0.0), rate_cap))
        credit = min(credit + rate / 8000.0, 3 * PACKET)
        # audio leaves every 20 ms, charged to the rate, except while the oracle knows
        # the link is out (nothing delivered over the last 100 ms it knows of, with a
        # backlog): what reached a dead link waits there, however little it is
        out = known >= 100 and seen > 0 and link.capacity(known - 100, known) == 0
        if audio and t % AUDIO_INTERVAL_MS == 0 and not out:
            credit -= AUDIO_BYTES
            sent[t] += AUDIO_BYTES
            link.push(t, AUDIO_BYTES)
        in_flight = seen + sum(sent[max(0, known):t])
        window = None if allowance_ms is None else max(3000.0, cap * (lag_ms + allowance_ms) / 8000.0)
        while credit >= PACKET and (window is None or in_flight + PACKET <= window):
            credit -= PACKET
            sent[t] += PACKET
            in_flight += PACKET
            link.push(t, PACKET)
        link.serve(t)
    caps = capacity_buckets(trace, 1000, duration)
    skip = WARMUP_MS // 1000
    wanted = sum(min(c, DESIRED_BPS) for c in caps[skip:])
    got = sum(link.delivered[skip:len(caps)])
    delays = sorted(link.delays)
    p95 = float(delays[int(0.95 * len(delays)) - 1]) if delays else 0.0
    return got / wanted, p95


def frontier(name: str, lag_ms: int, grid: dict[str, tuple], audio: bool = False,
             feedback_only: bool = False) -> dict[str, object]:
    """The best of the grid on ``name`` against the two bounds."""
    best_util: tuple[float, float, dict] | None = None  # with queue p95 under the bound
    least_queue: tuple[float, float, dict] | None = None  # with utilization over its bound
    least_any: tuple[float, float, dict] | None = None  # at any utilization
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        settings = dict(zip(keys, values, strict=True))
        util, p95 = run(name, lag_ms=lag_ms, audio=audio, feedback_only=feedback_only, **settings)
        if p95 < MAX_QUEUE_P95_MS and (best_util is None or util > best_util[0]):
            best_util = (util, p95, settings)
        if util >= MIN_UTILIZATION and (least_queue is None or p95 < least_queue[1]):
            least_queue = (util, p95, settings)
        if least_any is None or p95 < least_any[1]:
            least_any = (util, p95, settings)

    def show(x: tuple[float, float, dict] | None) -> dict[str, object] | None:
        return None if x is None else {"utilization": round(x[0], 3), "queue_p95_ms": x[1], **x[2]}

    return {"case": name, "lag_ms": lag_ms, "audio": audio, "feedback_only": feedback_only, "settings_tried": len(list(itertools.product(*grid.values()))),
            "best_utilization_within_queue_bound": show(best_util),
            "least_queue_within_utilization_bound": show(least_queue),
            "least_queue": show(least_any)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", default=["ATT-LTE-driving-2016.down", "ATT-LTE-driving-2016.up",
                                                 "Verizon-EVDO-driving.down"])
    ap.add_argument("--lag", type=int, default=50, help="how late the oracle learns the link (ms)")
    ap.add_argument("--full", action="store_true", help="the 300-setting grid (else 54 settings)")
    ap.add_argument("--audio", action="store_true",
                    help="also send the simulation's audio (120 B every 20 ms, always, each packet counted)")
    ap.add_argument("--feedback-only", action="store_true",
                    help="know the queue only as a sender does: the newest delivered packet's sojourn and "
                         "the age of the oldest undelivered one (else: the bottleneck's backlog itself)")
    args = ap.parse_args(argv)
    for name in args.names:
        grid = FULL_GRID if args.full else SMALL_GRID
        print(json.dumps(frontier(name, args.lag, grid, args.audio, args.feedback_only)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
