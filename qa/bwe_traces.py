"""Capacity traces for the virtual-time BWE harness, and what users feel on them.

Why a module of its own: ``tests/test_bwe_traces.py`` and
``bench/bwe.py`` judge the estimator on the same traces with the same figures, so the
numbers in the README are the ones the tests check.

- ``trace_window``: a stretch of a Mahimahi trace as a trace of its own (the real
  traces in ``../shared/data/traces`` are 2-18 minutes; CI runs 60 s of each).
- ``SYNTHETIC``: seeded synthetic traces (``netem.tracegen``) with outages of up to
  3 s and deep fades: 3G-like, LTE-like and a Wi-Fi-like rate-step trace.
- ``trace_metrics``: utilization, queue delay and recovery after each outage:

  * **utilization** = bytes delivered / ``min(capacity, desired)`` summed over 1 s
    windows after warm-up: where the link carries more than the sender wants (the
    sender is app-limited) only the wanted rate counts as capacity;
  * **queue delay** p95 / max of the per-packet sojourn at the bottleneck's rate
    stage (what the netem link measures) after warm-up, and the p95 of the packets
    no outage caught (whose stay in the queue did not overlap one: what waited only
    for the link's rate, the sender's part); beside it the sender's own
    backlog (pacer queue p95, sampled every 100 ms): a congestion window moves queue
    from the network into the sender, and that wait is latency too;
  * **outage**: a gap of at least ``OUTAGE_MIN_MS`` between two delivery
    opportunities; **recovery** = the time the link is up from its return until the
    sender's target rate (the estimate, capped at the desired rate: what the
    allocator forwards under) is back at 80 % of ``min(capacity over the next 2 s,
    desired)``. A link back for 70 ms between two outages (the cellular traces have
    them) gives no sender a second to reach its rate: the time it then spends out
    again does not count.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from pathlib import Path

from netem.rate import MTU_BYTES, MahimahiTrace
from netem.tracegen import LteModel, capacity_steps, opportunities
from qa.bwe_simulation import Phase, Scenario, SimResult, Simulation, percentile

__all__ = [
    "REAL_TRACES_DIR",
    "SYNTHETIC",
    "TraceMetrics",
    "TraceRun",
    "capacity_buckets",
    "outages",
    "real_trace_scenario",
    "run_metrics",
    "run_trace",
    "sim_run",
    "synthetic_scenario",
    "trace_metrics",
    "trace_window",
]

REAL_TRACES_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"
OUTAGE_MIN_MS = 500
RECOVERY_RATIO = 0.8
RECOVERY_REF_MS = 2000.0
WARMUP_MS = 5000.0
BUCKET_MS = 1000


def trace_window(trace: MahimahiTrace, start_ms: int, length_ms: int) -> MahimahiTrace:
    """Opportunities in ``[start_ms, start_ms + length_ms)``, rebased, period ``length_ms``."""
    ts = trace.timestamps
    a = bisect.bisect_left(ts, start_ms)
    b = bisect.bisect_left(ts, start_ms + length_ms)
    lines = [t - start_ms for t in ts[a:b] if t > start_ms]
    if not lines or lines[-1] != length_ms:
        lines.append(length_ms)
    return MahimahiTrace(tuple(lines), None)


def capacity_buckets(trace: MahimahiTrace, bucket_ms: int, duration_ms: float) -> list[float]:
    """Capacity (bit/s) of each ``bucket_ms`` bucket of the first ``duration_ms`` (looped)."""
    n = int(math.ceil(duration_ms / bucket_ms))
    out = [0.0] * n
    period = trace.period_ms
    base = 0
    while base < duration_ms:
        for t in trace.timestamps:
            at = base + t
            if at >= duration_ms:
                break
            # an opportunity at ms t serves the millisecond (t-1, t]
            out[max(0, int((at - 1) // bucket_ms))] += MTU_BYTES * 8 * 1000.0 / bucket_ms
        base += period
    return out


def outages(trace: MahimahiTrace, duration_ms: float, min_ms: int = OUTAGE_MIN_MS) -> list[tuple[float, float]]:
    """(start, end) of each gap of at least ``min_ms`` between opportunities (looped)."""
    out: list[tuple[float, float]] = []
    prev = 0.0
    base = 0
    while base < duration_ms:
        for t in trace.timestamps:
            at = float(base + t)
            if at > duration_ms:
                return out
            if at - prev >= min_ms:
                out.append((prev, at))
            prev = at
        base += trace.period_ms
    return out


# ---------------------------------------------------------------- synthetic traces
@dataclass(frozen=True)
class SyntheticTrace:
    """A seeded synthetic trace: a tracegen model and forced outages (start, length)."""

    name: str
    model: LteModel
    seed: int
    seconds: int
    forced_outages: tuple[tuple[int, int], ...] = ()
    steps: tuple[tuple[int, float], ...] = ()  # (t_ms, bps) rate steps instead of a walk

    def trace(self) -> MahimahiTrace:
        if self.steps:
            rates = []
            for k in range(self.seconds * 10):
                t = k * 100
                rates.append(next(bps for at, bps in reversed(self.steps) if at <= t))
        else:
            rates = capacity_steps(self.model, self.seed, self.seconds)
        for start, length in self.forced_outages:
            for k in range(start // 100, min(len(rates), (start + length) // 100)):
                rates[k] = 0.0
        return MahimahiTrace(tuple(opportunities(rates)))


SYNTHETIC: tuple[SyntheticTrace, ...] = (
    # 3G-like: 0.25-2 Mbit/s, fades, and outages of 1, 2 and 3 s.
    SyntheticTrace(
        "synthetic-3g",
        LteModel(0.9e6, 0.25e6, 2.0e6, fade_every_s=12.0, outage_every_s=20.0),
        seed=1501,
        seconds=60,
        forced_outages=((15_000, 1000), (30_000, 2000), (45_000, 3000)),
    ),
    # LTE-like: 0.6-9 Mbit/s, deep fades, outages of 2 and 3 s.
    SyntheticTrace(
        "synthetic-lte",
        LteModel(3.5e6, 0.6e6, 9.0e6, fade_every_s=6.0, outage_every_s=20.0),
        seed=1502,
        seconds=60,
        forced_outages=((20_000, 2000), (40_000, 3000)),
    ),
    # Wi-Fi-like rate steps 0.7-12 Mbit/s with a 1.5 s and a 3 s outage.
    SyntheticTrace(
        "synthetic-wifi-steps",
        LteModel(1e6, 1e6, 1e6),
        seed=1503,
        seconds=60,
        forced_outages=((18_000, 1500), (42_000, 3000)),
        steps=((0, 6e6), (10_000, 1.5e6), (25_000, 12e6), (35_000, 0.7e6), (50_000, 4e6)),
    ),
)


def _trace_scenario(name: str, trace: MahimahiTrace, duration_ms: float, desired_bps: float, seed: int) -> Scenario:
    return Scenario(
        name,
        duration_ms,
        [Phase(0.0, None, 25.0, trace=trace)],
        desired_bps=desired_bps,
        seed=seed,
    )


def real_trace_scenario(
    file: str, *, start_ms: int = 60_000, length_ms: int = 60_000, desired_bps: float = 2_500_000, seed: int = 1
) -> Scenario:
    """A window of a real trace from ``REAL_TRACES_DIR`` as a down link."""
    trace = trace_window(MahimahiTrace.load(REAL_TRACES_DIR / file), start_ms, length_ms)
    return _trace_scenario(file, trace, length_ms, desired_bps, seed)


def synthetic_scenario(st: SyntheticTrace, *, desired_bps: float = 2_500_000, seed: int = 1) -> Scenario:
    return _trace_scenario(st.name, st.trace(), st.seconds * 1000.0, desired_bps, seed)


# ---------------------------------------------------------------- metrics
@dataclass
class TraceMetrics:
    name: str
    utilization: float
    queue_p95_ms: float
    queue_max_ms: float
    # the sender's own backlog (age of the oldest packet it holds); None where the
    # sender does not say (a browser)
    pacer_p95_ms: float | None
    # (outage start s, outage length s, recovery s or None when never recovered)
    recoveries: list[tuple[float, float, float | None]] = field(default_factory=list)
    queue_p95_outside_outages_ms: float = 0.0  # of the packets whose stay no outage overlapped

    def row(self) -> dict[str, object]:
        return {
            "case": self.name,
            "utilization": round(self.utilization, 3),
            "queue_delay_p95_ms": round(self.queue_p95_ms, 1),
            "queue_delay_max_ms": round(self.queue_max_ms, 1),
            "queue_delay_p95_outside_outages_ms": round(self.queue_p95_outside_outages_ms, 1),
            "pacer_queue_p95_ms": None if self.pacer_p95_ms is None else round(self.pacer_p95_ms, 1),
            "recoveries": [
                {"outage_at_s": a, "outage_s": b, "recovery_s": c} for a, b, c in self.recoveries
            ],
        }


@dataclass
class TraceRun:
    """What one run over a trace recorded, whoever sent: the virtual-time harness or
    a live browser behind netem's relay. Times are ms from the trace's start.

    Why apart from ``SimResult``: a live run knows the bottleneck per packet (the
    netem link logs each delivery and its queue delay) and the sender only through
    what it reports, so both kinds of run meet here and share ``run_metrics``.
    """

    name: str
    trace: MahimahiTrace
    duration_ms: float
    desired_bps: float
    delivered: list[tuple[float, float]]  # (t, bits the bottleneck delivered in (t - interval, t])
    queue_delays: list[tuple[float, float]]  # (t, sojourn at the bottleneck's rate stage)
    target: list[tuple[float, float]]  # (t, the sender's target rate, bit/s)
    backlog: list[tuple[float, float]] | None = None  # (t, the sender's own backlog, ms)


def run_metrics(run: TraceRun, warmup_ms: float = WARMUP_MS, max_outage_ms: float = 3100.0) -> TraceMetrics:
    """The figures of the module docstring for one run over a trace."""
    trace, duration, desired = run.trace, run.duration_ms, run.desired_bps
    caps = capacity_buckets(trace, BUCKET_MS, duration)
    delivered = [0.0] * len(caps)
    for t, bits in run.delivered:
        k = int((t - 1) // BUCKET_MS)
        if 0 <= k < len(delivered):
            delivered[k] += bits * 1000.0 / BUCKET_MS
    first = int(warmup_ms // BUCKET_MS)
    want = sum(min(c, desired) for c in caps[first:])
    got = sum(delivered[first:])
    delays = [d for t, d in run.queue_delays if t >= warmup_ms]
    fine = capacity_buckets(trace, 100, duration)
    gaps = outages(trace, duration)
    recs: list[tuple[float, float, float | None]] = []
    for i, (start, end) in enumerate(gaps):
        if end - start > max_outage_ms or start < warmup_ms or end + RECOVERY_REF_MS > duration:
            continue
        a, b = int(end // 100), int((end + RECOVERY_REF_MS) // 100)
        ref = min(sum(fine[a:b]) / max(1, b - a), desired)
        hit = next((t for t, bps in run.target if t >= end and bps >= RECOVERY_RATIO * ref), None)
        rec = None if hit is None else (hit - end - _overlap(end, hit, gaps[i + 1:])) / 1000
        recs.append((round(start / 1000, 2), round((end - start) / 1000, 2), None if rec is None else round(rec, 2)))
    outside = [d for t, d in run.queue_delays if t >= warmup_ms and not _overlap(t, t + d, gaps)]
    backlog = None
    if run.backlog is not None:
        backlog = percentile([ms for t, ms in run.backlog if t >= warmup_ms], 95)
    return TraceMetrics(
        run.name,
        got / want if want else 1.0,
        percentile(delays, 95),
        max(delays, default=0.0),
        backlog,
        recs,
        percentile(outside, 95),
    )


def _overlap(t0: float, t1: float, gaps: list[tuple[float, float]]) -> float:
    """How much of ``(t0, t1)`` the link spent in ``gaps``."""
    return sum(max(0.0, min(b, t1) - max(a, t0)) for a, b in gaps)


def sim_run(r: SimResult) -> TraceRun:
    """A virtual-time result as a ``TraceRun`` (the target is the estimate capped at
    the desired rate: what the allocator forwards under)."""
    sc = r.scenario
    trace = sc.down[0].trace
    assert trace is not None, "trace_metrics needs a trace scenario"
    return TraceRun(
        sc.name,
        trace,
        sc.duration_ms,
        sc.desired_bps,
        [(s.t_ms, s.delivered_bps * sc.sample_ms / 1000.0) for s in r.samples],
        r.queue_delays,
        [(s.t_ms, s.target_bps) for s in r.samples],
        [(s.t_ms, s.pacer_queue_ms) for s in r.samples],
    )


def trace_metrics(r: SimResult, warmup_ms: float = WARMUP_MS, max_outage_ms: float = 3100.0) -> TraceMetrics:
    """The figures of the module docstring for one simulated trace run."""
    return run_metrics(sim_run(r), warmup_ms, max_outage_ms)


def run_trace(sc: Scenario) -> tuple[SimResult, TraceMetrics]:
    r = Simulation(sc).run()
    return r, trace_metrics(r)
