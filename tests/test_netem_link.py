"""netem link model: acceptance statistics and netem vocabulary.

All runs are seeded and in virtual time; 100k packets each.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from netem.link import JsonlEventLog, Link, LinkConfig
from netem.loss import Bernoulli, FourState, GilbertElliott, NullLoss
from netem.rate import ConstantRate, MahimahiTrace, StepRate

# Real Mahimahi traces (GPL-3+ data, kept outside the repository): $FERRY_TRACES_DIR, or
# ../shared/data/traces beside the checkout.
TRACES = Path(
    os.environ.get("FERRY_TRACES_DIR")
    or Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"
)
N = 100_000


def _loss_pattern(model, n: int = N, seed: int = 1) -> np.ndarray:
    rng = random.Random(seed)
    return np.fromiter((model.drop(rng) for _ in range(n)), dtype=bool, count=n)


def _bursts(pattern: np.ndarray) -> np.ndarray:
    """Lengths of runs of consecutive losses."""
    padded = np.concatenate(([False], pattern, [False])).astype(np.int8)
    edges = np.diff(padded)
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def _seq(i: int, size: int = 100) -> bytes:
    return struct.pack("!I", i) + bytes(size - 4)


def _run(link: Link, n: int, gap_ms: float, size: int = 100) -> list[tuple[float, int]]:
    """Push ``n`` numbered packets every ``gap_ms``; return (time, seq) deliveries."""
    out: list[tuple[float, int]] = []
    for i in range(n):
        now = i * gap_ms
        while (d := link.next_deadline()) is not None and d <= now:
            out.extend((d, struct.unpack_from("!I", p)[0]) for p in link.pop_ready(d))
        link.push(_seq(i, size), now)
    while (d := link.next_deadline()) is not None:
        for p in link.pop_ready(d):
            out.append((d, struct.unpack_from("!I", p)[0]))
    return out


# --------------------------------------------------------------- loss models
def test_bernoulli_10_percent() -> None:
    link = Link(LinkConfig.parse("loss 10% seed 7"))
    _run(link, N, 1.0)
    rate = link.stats.dropped_loss / link.stats.sent
    assert abs(rate - 0.10) <= 0.005
    assert link.stats.delivered == N - link.stats.dropped_loss


def test_simple_gilbert_burst_lengths_are_geometric() -> None:
    p, r = 0.01, 0.25
    pattern = _loss_pattern(GilbertElliott(p, r, 1.0, 0.0))
    assert abs(pattern.mean() - p / (p + r)) < 0.006
    bursts = _bursts(pattern)
    assert abs(bursts.mean() - 1 / r) < 0.3  # mean burst 4 packets
    for k in range(1, 6):  # P(L = k) = (1 - r)^(k-1) r
        expected = (1 - r) ** (k - 1) * r
        assert abs((bursts == k).mean() - expected) < 0.04, k


def test_gilbert_elliott_general_loss_rate() -> None:
    model = GilbertElliott(0.02, 0.3, 0.6, 0.001)
    pattern = _loss_pattern(model)
    assert abs(pattern.mean() - model.loss_rate()) < 0.004
    # bursts are longer than a Bernoulli process of the same rate would give
    assert _bursts(pattern).mean() > 1.0 / (1 - model.loss_rate()) + 0.2


def test_gemodel_defaults_follow_iproute2() -> None:
    ge = LinkConfig.parse("loss gemodel 5%").loss
    assert isinstance(ge, GilbertElliott)
    assert (ge.p, ge.r, ge.one_minus_h, ge.one_minus_k) == (0.05, 0.95, 1.0, 0.0)
    # r = 1 - p, 1-h = 1, 1-k = 0 is Bernoulli(p)
    assert abs(_loss_pattern(ge).mean() - 0.05) < 0.004


def _four_state_stationary_loss(m: FourState) -> float:
    p31 = m.p31 or 0.0
    t = np.zeros((4, 4))
    t[0] = [1 - m.p13 - m.p14, 0, m.p13, m.p14]
    t[1] = [0, 1 - m.p23, m.p23, 0]
    t[2] = [p31, m.p32, 1 - p31 - m.p32, 0]
    t[3] = [1, 0, 0, 0]
    w, v = np.linalg.eig(t.T)
    pi = np.real(v[:, np.argmin(abs(w - 1))])
    pi = pi / pi.sum()
    return float(pi[2] + pi[3])


def test_four_state_markov() -> None:
    model = FourState(p13=0.02, p31=0.3, p32=0.2, p23=0.1, p14=0.01)
    pattern = _loss_pattern(FourState(0.02, 0.3, 0.2, 0.1, 0.01))
    assert abs(pattern.mean() - _four_state_stationary_loss(model)) < 0.006
    # a burst in state 3 lasts geometric(p31 + p32); isolated losses are length 1
    bursts = _bursts(pattern)
    assert bursts.max() > 5
    assert (bursts == 1).mean() > 0.5


def test_four_state_single_parameter_is_bernoulli() -> None:
    m = LinkConfig.parse("loss state 3%").loss
    assert isinstance(m, FourState) and m.p31 == pytest.approx(0.97)
    assert abs(_loss_pattern(m).mean() - 0.03) < 0.003


def test_null_loss_and_correlated_bernoulli() -> None:
    assert not _loss_pattern(NullLoss(), 1000).any()
    corr = _loss_pattern(Bernoulli(0.1, 0.5))
    assert 0.0 < corr.mean() < 0.1  # netem's correlation skews the rate down


# ----------------------------------------------------------------- rate/queue
def test_1mbit_cap_delivers_1mbit_with_fifo_queueing_delay() -> None:
    # 1250-byte packets offered at 1.5 Mbit/s into a 1 Mbit/s, 100 kB queue
    link = Link(LinkConfig.parse("rate 1mbit limit 100kb"))
    out = _run(link, N, 1250 * 8 / 1.5e6 * 1000, size=1250)
    duration_s = (out[-1][0] - out[0][0]) / 1000.0
    throughput = (len(out) - 1) * 1250 * 8 / duration_s
    assert abs(throughput - 1e6) / 1e6 < 0.02
    assert link.stats.dropped_queue > 0.3 * N  # one third of the offered load
    # a full FIFO of 100 kB in front of 1 Mbit/s holds ~ 102400*8/1e6 s
    full = 102400 * 8 / 1e6 * 1000
    assert link.stats.queue_delay_max_ms == pytest.approx(full, abs=12.0)
    tail = list(link.stats.queue_delay_ms)[-1000:]
    assert np.mean(tail) == pytest.approx(full, abs=12.0)


def test_rate_below_capacity_has_only_serialization_delay() -> None:
    link = Link(LinkConfig.parse("rate 1mbit"))
    out = _run(link, 1000, 10.0, size=1000)  # 0.8 Mbit/s
    assert link.stats.queue_delay_max_ms == pytest.approx(8.0)
    assert [t for t, _ in out[:3]] == [8.0, 18.0, 28.0]


def test_burst_drains_in_fifo_order_at_line_rate() -> None:
    link = Link(LinkConfig.parse("delay 50ms rate 1mbit"))
    for i in range(10):
        link.push(_seq(i, 1250), 0.0)
    times, seqs = [], []
    while (d := link.next_deadline()) is not None:
        for p in link.pop_ready(d):
            times.append(d)
            seqs.append(struct.unpack_from("!I", p)[0])
    assert seqs == list(range(10))
    assert times == pytest.approx([50 + 10 * (i + 1) for i in range(10)])


def test_packet_limit_tail_drop() -> None:
    link = Link(LinkConfig.parse("rate 1mbit limit 5"))
    for i in range(20):
        link.push(_seq(i, 1250), 0.0)
    assert link.stats.dropped_queue == 15
    assert len(link.pop_ready(1e9)) == 5


def test_step_schedule_integrates_across_steps() -> None:
    spec = StepRate(((0, 1e6), (1000, 0), (2000, 2e6)))
    server = spec.server(0.0)
    assert server.serve(0.0, 1250) == pytest.approx(10.0)
    # 1250 B at t=995: 5 ms at 1 Mbit/s sends 625 B, outage, 625 B at 2 Mbit/s
    assert server.serve(995.0, 1250) == pytest.approx(2002.5)
    looped = StepRate(((0, 1e6), (500, 0)), period_ms=1000).server(0.0)
    assert looped.serve(1600.0, 1250) == pytest.approx(2010.0)


def _trace_run(trace: MahimahiTrace, gap_ms: float, size: int, until_ms: float) -> int:
    link = Link(LinkConfig(rate=trace, queue_packets=1000))
    delivered = 0
    t = 0.0
    while t < until_ms:
        link.push(bytes(size), t)
        delivered += len(link.pop_ready(t))
        t += gap_ms
    delivered += len(link.pop_ready(until_ms))
    return delivered * size


def test_synthetic_trace_bytes_and_small_packets() -> None:
    trace = MahimahiTrace.parse("1\n")  # one opportunity per ms = 12 Mbit/s
    assert trace.mean_bps() == 12e6
    # 100-byte packets: 15 share one opportunity
    server = trace.server(0.0)
    deps = [server.serve(0.0, 100) for _ in range(16)]
    assert deps[:15] == [1.0] * 15 and deps[15] == 2.0
    # a 3000-byte packet spans two opportunities
    assert trace.server(0.0).serve(0.0, 3000) == 2.0
    # leftover bytes are wasted when the queue is empty
    s = trace.server(0.0)
    assert s.serve(0.0, 100) == 1.0 and s.serve(1.5, 100) == 2.0
    # saturated: 20 Mbit/s offered over 2 s delivers 12 Mbit/s
    assert _trace_run(trace, 0.6, 1500, 2000.0) == pytest.approx(12e6 / 8 * 2, rel=0.01)


@pytest.mark.skipif(
    not (TRACES / "TMobile-UMTS-driving.up").exists(),
    reason=f"real Mahimahi traces not found in {TRACES} (set FERRY_TRACES_DIR)",
)
def test_real_trace_delivers_its_capacity() -> None:
    trace = MahimahiTrace.load(TRACES / "TMobile-UMTS-driving.up")
    period = trace.period_ms
    capacity = len(trace.timestamps) * 1500
    # offered 2 Mbit/s > the trace's peak 1.5 Mbit/s: the queue never runs dry
    delivered = _trace_run(trace, 6.0, 1500, float(period))
    assert abs(delivered - capacity) <= 2 * 1500
    assert 0.9e6 < trace.mean_bps() < 1.0e6


def test_trace_validation_messages(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="line 3: timestamps must be monotonically nondecreasing"):
        MahimahiTrace.parse("1\n5\n4\n")
    with pytest.raises(ValueError, match="line 2: empty line"):
        MahimahiTrace.parse("1\n\n2\n")
    with pytest.raises(ValueError, match="last timestamp must be > 0"):
        MahimahiTrace.parse("0\n0\n")
    with pytest.raises(ValueError, match="not an integer"):
        MahimahiTrace.parse("1\nx\n")
    bad = tmp_path / "bad.trace"
    bad.write_text("3\n2\n")
    with pytest.raises(ValueError, match="nondecreasing"):
        LinkConfig.parse(f"trace {bad}")


# --------------------------------------------------------- delay and ordering
def test_jitter_never_reorders_unless_asked() -> None:
    link = Link(LinkConfig.parse("delay 80ms 40ms seed 3"))
    out = _run(link, N, 1.0)
    seqs = [s for _, s in out]
    assert seqs == sorted(seqs) and len(seqs) == N
    delays = [t - s for t, s in out]
    # keeping order at 1000 packets/s clamps each packet behind the slowest
    # recent one, so delays skew up but stay within delay + jitter
    assert min(delays) >= 40.0 and max(delays) <= 120.0 + 1e-9


def test_jitter_is_uniform_around_delay_when_packets_are_sparse() -> None:
    link = Link(LinkConfig.parse("delay 80ms 20ms seed 3"))
    out = _run(link, 10_000, 100.0)
    delays = np.array([t - s * 100.0 for t, s in out])
    assert delays.min() >= 60.0 and delays.max() <= 100.0
    assert abs(delays.mean() - 80.0) < 0.5
    assert abs(delays.std() - 20.0 / np.sqrt(3)) < 0.5


def test_reorder_gap_is_netem_rule() -> None:
    link = Link(LinkConfig.parse("delay 10ms reorder 25% gap 5 seed 4"))
    out = _run(link, N, 1.0)
    seqs = [s for _, s in out]
    assert seqs != sorted(seqs) and sorted(seqs) == list(range(N))
    # after 4 delayed packets each packet has a 25% chance: mean cycle 4 + 4 = 8
    assert link.stats.reordered / N == pytest.approx(1 / 8, rel=0.05)
    # reordered packets leave at once
    immediate = [s for t, s in out if t == s]
    assert len(immediate) == link.stats.reordered


def test_same_seed_same_output_and_other_seed_differs() -> None:
    spec = "delay 30ms 10ms loss gemodel 2% 30% 70% 0.1% duplicate 1% corrupt 1% rate 2mbit limit 50kb"

    def run(seed: int) -> list[tuple[float, bytes]]:
        link = Link(LinkConfig.parse(f"{spec} seed {seed}"))
        out: list[tuple[float, bytes]] = []
        for i in range(20_000):
            link.push(_seq(i, 200), i * 0.5)
            out.extend((i * 0.5, p) for p in link.pop_ready(i * 0.5))
        return out

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_duplicate_and_corrupt_rates() -> None:
    link = Link(LinkConfig.parse("duplicate 1% corrupt 0.1% seed 5"))
    out = []
    for i in range(N):
        link.push(_seq(i, 100), float(i))
        out.extend(link.pop_ready(float(i)))
    assert abs(link.stats.duplicated / N - 0.01) < 0.0015
    assert len(out) == N + link.stats.duplicated
    assert 50 < link.stats.corrupted < 160
    flipped = 0
    for p in out:
        seq = struct.unpack_from("!I", p)[0]
        diff = int.from_bytes(p, "big") ^ int.from_bytes(_seq(seq, 100), "big")
        if seq < N and diff:
            assert bin(diff).count("1") == 1
            flipped += 1
    assert flipped <= link.stats.corrupted


def test_set_config_keeps_queued_packets_and_reserves_them() -> None:
    link = Link(LinkConfig.parse("rate 1mbit"))
    for i in range(10):
        link.push(_seq(i, 1250), 0.0)  # departures 10, 20, ... 100 ms
    assert len(link.pop_ready(15.0)) == 1
    link.set_config(LinkConfig.parse("rate 10mbit"), 15.0)
    assert link.next_deadline() == pytest.approx(16.0)
    got = link.pop_ready(24.0)
    assert len(got) == 9 and link.next_deadline() is None
    assert link.stats.delivered == 10


def test_set_config_new_delay_applies_to_new_packets_in_order() -> None:
    link = Link(LinkConfig.parse("delay 500ms"))
    link.push(_seq(0), 0.0)
    link.set_config("delay 100ms", 10.0)
    link.push(_seq(1), 20.0)
    assert link.next_deadline() == 500.0
    assert [struct.unpack_from("!I", p)[0] for p in link.pop_ready(500.0)] == [0, 1]


def test_event_log_jsonl() -> None:
    buf = io.StringIO()
    link = Link(LinkConfig.parse("loss 50% seed 1"), event_log=JsonlEventLog(buf, "up"))
    for i in range(20):
        link.push(_seq(i), float(i))
    link.pop_ready(100.0)
    events = [json.loads(line) for line in buf.getvalue().splitlines()]
    names = {e["name"] for e in events}
    assert names == {"netem:packet_dropped", "netem:packet_sent"}
    assert all(e["link"] == "up" for e in events)
    assert sum(e["name"] == "netem:packet_dropped" for e in events) == link.stats.dropped_loss


def test_overflow_bound() -> None:
    link = Link("delay 1s", max_held=100)
    for i in range(150):
        link.push(_seq(i), 0.0)
    assert link.stats.dropped_overflow == 50 and link.held == 100


# -------------------------------------------------------------------- parsing
def test_parse_netem_vocabulary() -> None:
    c = LinkConfig.parse("delay 80ms 20ms loss 5% rate 1mbit limit 100kb")
    assert (c.delay_ms, c.jitter_ms) == (80.0, 20.0)
    assert c.loss == Bernoulli(0.05)
    assert c.rate == ConstantRate(1e6)
    assert c.queue_bytes == 102400
    c = LinkConfig.parse("netem delay 1s 10ms 25% distribution normal loss random 1% 10%")
    assert (c.delay_ms, c.jitter_ms, c.delay_correlation, c.distribution) == (
        1000.0, 10.0, 0.25, "normal")
    assert c.loss == Bernoulli(0.01, 0.1)
    c = LinkConfig.parse("loss gemodel 1% 10% 70% 0.1% duplicate 1% corrupt 0.1% reorder 25% 50% gap 5")
    assert c.loss == GilbertElliott(0.01, 0.1, 0.7, 0.001)
    assert (c.duplicate, c.corrupt, c.reorder, c.reorder_correlation, c.reorder_gap) == (
        0.01, 0.001, 0.25, 0.5, 5)
    c = LinkConfig.parse("loss state 1% 30% 10% 20% 0.5% limit 50 seed 9")
    assert c.loss == FourState(0.01, 0.3, 0.1, 0.2, 0.005)
    assert (c.queue_packets, c.seed) == (50, 9)
    # tc units: a bare time is microseconds, "mbps" is megabytes per second
    assert LinkConfig.parse("delay 1500").delay_ms == 1.5
    assert LinkConfig.parse("rate 1mbps").rate == ConstantRate(8e6)
    assert LinkConfig.parse("rate 64kbit").rate == ConstantRate(64e3)
    assert LinkConfig.parse("loss 0.05").loss == Bernoulli(0.05)
    c = LinkConfig.parse("steps 0s:2mbit,20s:300kbit period 60s")
    assert c.rate == StepRate(((0, 2e6), (20000, 3e5)), 60000)


def test_spec_round_trip() -> None:
    for spec in (
        "delay 80ms 20ms loss random 5% rate 1mbit limit 100kb",
        "delay 10ms loss gemodel 1% 30% 70% 0.1% duplicate 1% corrupt 0.1% reorder 25% gap 5",
        "loss state 1% 30% 10% 20% 0.5% steps 0ms:2mbit,20000ms:300kbit period 60000ms limit 50",
        "",
    ):
        assert LinkConfig.parse(spec).spec() == spec
        assert LinkConfig.parse(LinkConfig.parse(spec).spec()) == LinkConfig.parse(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("slot 10ms", "unknown netem keyword 'slot' (allowed: delay, distribution, loss"),
        ("delay 80xs", "bad time unit in '80xs'"),
        ("delay", "missing delay time"),
        ("loss 150%", "percentage out of range: '150%'"),
        ("loss banana", "bad loss 'banana'"),
        ("rate 1mbite", "bad rate unit in '1mbite'"),
        ("rate 0mbit", "rate must be > 0"),
        ("limit 10zb", "bad size unit in '10zb'"),
        ("loss 1% loss 2%", "netem keyword 'loss' given twice"),
        ("rate 1mbit trace x", "netem keyword 'trace' given twice"),
        ("distribution pareto", "unknown distribution 'pareto' (allowed: uniform, normal)"),
        ("reorder 10% gap x", "bad gap 'x'"),
        ("loss state 60% 80% 30%", "p31 + p32 must not exceed 100%"),
        ("steps 1s:1mbit", "rate steps must start at 0 ms"),
        ("seed -1", "bad seed"),
    ],
)
def test_parse_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        LinkConfig.parse(spec)


def test_dict_form() -> None:
    c = LinkConfig.from_dict(
        {"delay": "80ms", "jitter": 20, "loss": "gemodel 1% 30%", "rate": "1mbit",
         "limit": "100kb", "seed": 3}
    )
    assert c == LinkConfig.parse("delay 80ms 20ms loss gemodel 1% 30% rate 1mbit limit 100kb seed 3")
    assert LinkConfig.from_dict({"spec": "delay 5ms", "duplicate": "1%"}).duplicate == 0.01
    assert LinkConfig.coerce(None) == LinkConfig()
    with pytest.raises(ValueError, match="unknown link key 'latency'"):
        LinkConfig.from_dict({"latency": "10ms"})
