"""Unit tests of the BWE pieces (sans-I/O, virtual time, table-driven where it fits)."""

from __future__ import annotations

import pytest

from media.bwe.acked_bitrate import AckedBitrateEstimator
from media.bwe.aimd import DECREASE, HOLD, INCREASE, AimdRateControl
from media.bwe.estimator import GccEstimator, NullEstimator
from media.bwe.interarrival import InterArrival
from media.bwe.loss_based import LossBasedControl
from media.bwe.overuse import BandwidthUsage, OveruseDetector
from media.bwe.pacer import Pacer
from media.bwe.probe import ProbeCluster, ProbeController, ProbeResultEstimator
from media.bwe.trendline import TrendlineEstimator, linear_fit_slope
from media.rtp.twcc import PacketResult

N, OV, U = BandwidthUsage.NORMAL, BandwidthUsage.OVERUSING, BandwidthUsage.UNDERUSING


# ---------------------------------------------------------------- interarrival
def test_interarrival_groups_by_5ms_send_time() -> None:
    ia = InterArrival()
    out = []
    # group A: sent 0,1,2 ; group B: sent 10,11 ; group C: sent 20 (closes B)
    for send, arrival in [(0, 50), (1, 51), (2, 52), (10, 61), (11, 62), (20, 71)]:
        out.append(ia.add(send, arrival, 1000))
    deltas = [d for d in out if d is not None]
    assert len(deltas) == 1
    d = deltas[0]
    assert d.send_delta_ms == 9  # 11 - 2
    assert d.arrival_delta_ms == 10  # 62 - 52
    assert d.size_delta == -1000  # B (2000 B) minus A (3000 B)
    assert d.arrival_ms == 62


def test_interarrival_size_delta_and_single_packet_groups() -> None:
    ia = InterArrival()
    assert ia.add(0, 100, 500) is None
    assert ia.add(10, 110, 700) is None  # closes group 1, no previous group yet
    d = ia.add(20, 121, 100)  # closes group 2
    assert d is not None and (d.send_delta_ms, d.arrival_delta_ms, d.size_delta) == (10, 10, 200)


def test_interarrival_merges_arrival_bursts() -> None:
    """Packets sent 10 ms apart but released together (arrival within 1 ms) form one group."""
    ia = InterArrival()
    ia.add(0, 100, 1000)
    ia.add(10, 140, 1000)  # new group (sent 10 ms later, arrived 40 ms later)
    assert ia.add(20, 140.5, 1000) is None  # burst: joins the group
    assert ia.add(30, 141.0, 1000) is None  # burst again
    d = ia.add(60, 180, 1000)  # closes the burst group
    assert d is not None
    assert d.send_delta_ms == 30 and d.arrival_delta_ms == 41


def test_interarrival_ignores_out_of_order_and_reordered_groups() -> None:
    ia = InterArrival()
    ia.add(10, 100, 1000)
    assert ia.add(0, 101, 1000) is None  # sent before the current group: ignored
    ia.add(20, 110, 1000)
    assert ia.add(30, 105, 1000) is None  # arrival went backwards: group dropped


# ---------------------------------------------------------------- trendline / overuse
def test_linear_fit_slope() -> None:
    assert linear_fit_slope([(0, 1), (1, 3), (2, 5)]) == pytest.approx(2.0)
    assert linear_fit_slope([(1, 1), (1, 2)]) is None


def _ramp(extra_ms_per_group: float, groups: int = 80, spacing: float = 10.0) -> list[BandwidthUsage]:
    """Feed groups every `spacing` ms whose arrival spacing is `spacing + extra`."""
    tl, det = TrendlineEstimator(), OveruseDetector()
    states = []
    arrival = 0.0
    for _ in range(groups):
        arrival += spacing + extra_ms_per_group
        trend = tl.update(spacing + extra_ms_per_group, spacing, arrival)
        states.append(det.detect(trend, spacing, arrival))
    return states


def test_constant_slope_delay_ramp_is_overuse() -> None:
    states = _ramp(1.0)  # queue grows 1 ms per 10 ms: sending ~10 % above capacity
    assert states[-1] is OV
    assert OV in states[20:40]  # detected soon after the window fills


def test_flat_delay_is_normal_and_draining_is_underuse() -> None:
    assert set(_ramp(0.0)) == {N}
    assert _ramp(-1.0)[-1] is U


def test_overuse_needs_time_and_two_deltas() -> None:
    det = OveruseDetector()
    assert det.detect(50.0, 4.0, 0.0) is N  # one delta, 2 ms over: not yet
    assert det.detect(50.0, 4.0, 4.0) is N  # 6 ms over-using: < 10 ms
    assert det.detect(50.0, 6.0, 10.0) is OV  # 12 ms, three deltas, trend not falling


@pytest.mark.parametrize(
    ("trend", "expect"),
    [
        (0.0, "down"),  # quiet: threshold falls towards |m| (k_down), floor 6
        (20.0, "up"),  # above it: rises slowly (k_up)
        (40.0, "same"),  # spike > threshold + 15: ignored
    ],
)
def test_threshold_adaptation(trend: float, expect: str) -> None:
    det = OveruseDetector(initial_threshold=12.5)
    det.update_threshold(trend, 0.0)  # first call only stamps time
    det.update_threshold(trend, 10.0)
    if expect == "down":
        assert det.threshold == pytest.approx(12.5 + 0.039 * (0.0 - 12.5) * 10)
    elif expect == "up":
        assert det.threshold == pytest.approx(12.5 + 0.0087 * (20.0 - 12.5) * 10)
    else:
        assert det.threshold == 12.5


def test_threshold_is_clamped() -> None:
    det = OveruseDetector()
    for i in range(100):
        det.update_threshold(0.0, i * 100.0)
    assert det.threshold == 6.0


# ---------------------------------------------------------------- AIMD
@pytest.mark.parametrize(
    ("state", "usage", "expect"),
    [
        (HOLD, N, INCREASE),
        (INCREASE, N, INCREASE),
        (DECREASE, N, HOLD),
        (HOLD, OV, DECREASE),
        (INCREASE, OV, DECREASE),
        (HOLD, U, HOLD),
        (INCREASE, U, HOLD),
    ],
)
def test_aimd_state_machine(state: str, usage: BandwidthUsage, expect: str) -> None:
    a = AimdRateControl(1_000_000)
    a.state = state
    a._transition(usage)
    assert a.state == expect


def test_aimd_decrease_to_beta_times_acked_then_hold() -> None:
    a = AimdRateControl(2_000_000)
    a.update(OV, 1_000_000, 0.0)
    assert a.current_bps == pytest.approx(850_000)
    assert a.state == HOLD and a.last_action == DECREASE


def test_aimd_decrease_drains_a_standing_queue() -> None:
    a = AimdRateControl(2_000_000)
    a.update(OV, 1_000_000, 0.0, queue_delay_ms=400.0)
    assert a.current_bps == pytest.approx(600_000)  # (1 - 0.4) * acked
    b = AimdRateControl(2_000_000)
    b.update(OV, 1_000_000, 0.0, queue_delay_ms=900.0)
    assert b.current_bps == pytest.approx(500_000)  # floor: half the acked rate


def test_aimd_decrease_rate_limited_by_rtt() -> None:
    a = AimdRateControl(2_000_000)
    a.set_rtt(100.0)
    a.update(OV, 1_500_000, 0.0)
    first = a.current_bps
    a.update(OV, 1_400_000, 50.0)  # within one RTT, estimate not > 2x acked: no cut
    assert a.current_bps == first
    a.update(OV, 1_400_000, 120.0)
    assert a.current_bps == pytest.approx(0.85 * 1_400_000)


@pytest.mark.parametrize(
    ("steps", "acked", "lo", "hi"),
    [
        # multiplicative: 8 %/s, far from any known capacity
        ([(N, 0.0), (N, 1000.0)], 1_000_000, 1_079_000, 1_081_000),
        # capped at 1.5 * acked + 10 kbit/s
        ([(N, 0.0), (N, 1000.0)], 700_000, 1_060_000, 1_060_000),
        # already above the cap: no increase (and no cut either)
        ([(N, 0.0), (N, 1000.0)], 500_000, 1_000_000, 1_000_000),
        # underuse: hold
        ([(U, 0.0), (U, 1000.0)], 1_000_000, 1_000_000, 1_000_000),
    ],
)
def test_aimd_increase_table(steps: list[tuple[BandwidthUsage, float]], acked: float, lo: float, hi: float) -> None:
    a = AimdRateControl(1_000_000)
    for usage, t in steps:
        a.update(usage, acked, t)
    assert lo <= a.current_bps <= hi


def test_aimd_additive_near_capacity() -> None:
    a = AimdRateControl(1_000_000)
    a.set_rtt(100.0)
    a.update(OV, 1_000_000, 0.0)  # learns link capacity ~1 Mbit/s
    assert a.link_capacity.has_estimate
    a.update(N, 900_000, 100.0)  # decrease -> hold
    a.update(N, 900_000, 200.0)  # hold -> increase (dt 100 ms)
    start = a.current_bps
    rate = a.additive_increase_bps_per_s()  # ~ one packet per (rtt + 100 ms)
    a.update(N, 900_000, 1200.0)  # one second of additive increase
    inc = a.current_bps - start
    assert 0 < inc < 0.08 * start  # slower than multiplicative
    assert inc == pytest.approx(rate)


# ---------------------------------------------------------------- loss-based
def _loss(lb: LossBasedControl, lost_per_100: int, queue_ms: float, t0: float = 0.0) -> float | None:
    out = None
    for i in range(10):
        t = t0 + i * 100.0
        lb.on_batch(100, lost_per_100, queue_ms, t)
        out = lb.update(1_000_000, 1_000_000, t)
    return out


@pytest.mark.parametrize(
    ("lost", "queue_ms", "state", "limit"),
    [
        (1, 100.0, "increase", None),  # < 2 %: not limiting
        (5, 100.0, "hold", 1_000_000),  # 2-10 % congestion loss: hold at current
        (20, 100.0, "decrease", 900_000),  # > 10 %: * (1 - 0.5 * 0.2)
        (8, 0.0, "increase", None),  # 8 % random loss with an empty queue: tolerated
        (25, 0.0, "decrease", 925_000),  # 25 % random: 15 % above tolerance
    ],
)
def test_loss_based_thresholds(lost: int, queue_ms: float, state: str, limit: float | None) -> None:
    lb = LossBasedControl()
    lb.on_batch(100, lost, queue_ms, 0.0)
    out = lb.update(1_000_000, 1_000_000, 0.0)
    assert lb.state == state
    assert out == (None if limit is None else pytest.approx(limit))


def test_loss_based_decrease_is_rate_limited_and_recovers() -> None:
    lb = LossBasedControl()
    lb.set_rtt(100.0)
    lb.on_batch(100, 30, 200.0, 0.0)
    first = lb.update(1_000_000, 1_000_000, 0.0)
    assert first == pytest.approx(850_000)
    lb.on_batch(100, 30, 200.0, 200.0)
    assert lb.update(first, 1_000_000, 200.0) == first  # < 300 ms + rtt since the cut
    # then loss stops: grows 8 %/s back and stops limiting once above delay-based
    out = _loss(lb, 0, 0.0, 1300.0)  # the lossy batches have left the 1 s window
    assert out is not None and out > first
    for k in range(40):
        lb.on_batch(100, 0, 0.0, 2000.0 + k * 500)
        out = lb.update(1_000_000, 1_000_000, 2000.0 + k * 500)
    assert out is None


def test_loss_based_forgetting_the_window_ends_its_decrease() -> None:
    """After an outage the window is dropped; the cut made as the link went out must
    not keep a probe of the returned link from lifting the rate."""
    lb = LossBasedControl()
    lb.on_batch(100, 30, 200.0, 0.0)
    lb.update(1_000_000, 1_000_000, 0.0)
    assert lb.state == "decrease"
    lb.forget_window()
    assert lb.state == "hold"


# ---------------------------------------------------------------- acked bitrate
def test_acked_bitrate_window() -> None:
    ab = AckedBitrateEstimator(window_ms=500.0)
    ab.on_results([PacketResult(i, i * 10.0, 1000.0 + i * 10.0, 1000) for i in range(30)])
    assert ab.bitrate_bps() is None  # 290 ms of arrivals: not a whole window yet
    ab.on_results([PacketResult(i, i * 10.0, 1000.0 + i * 10.0, 1000) for i in range(30, 100)])
    assert ab.bitrate_bps() == pytest.approx(800_000)  # 1000 B / 10 ms
    ab.on_results([PacketResult(100, 0, 2000.0, 1000), PacketResult(101, 0, None, 1000)])
    assert ab.bitrate_bps() is not None


# ---------------------------------------------------------------- probing
def _cluster_results(n: int, send_gap: float, recv_gap: float, size: int = 1000, lost: int = 0) -> list[PacketResult]:
    out = []
    for i in range(n):
        arrival = None if i < lost else 100.0 + i * recv_gap
        out.append(PacketResult(i, i * send_gap, arrival, size))
    return out


@pytest.mark.parametrize(
    ("recv_gap", "expect"),
    [
        (4.0, 2_000_000),  # received as sent: the link carries 2 Mbit/s
        (8.0, 0.95 * 1_000_000),  # saturated: 95 % of the receive rate
        (3.0, 2_000_000),  # compressed on arrival: min(send, receive)
    ],
)
def test_probe_result_computation(recv_gap: float, expect: float) -> None:
    cluster = ProbeCluster.make(1, 2_000_000, 0.0)
    res = ProbeResultEstimator.compute(cluster, _cluster_results(6, 4.0, recv_gap))
    assert res == pytest.approx(expect)


def test_probe_result_ignores_arrivals_held_by_a_stalled_receiver() -> None:
    """A 780 kbit/s probe through a 300 kbit/s link whose receiver stalled for 100 ms
    and then stamped the first four packets at once: the capacity, not the probe rate."""
    cluster = ProbeCluster.make(1, 780_000, 0.0)
    size, send_gap, link_gap = 1200, 1200 * 8 / 780.0, 1200 * 8 / 300.0
    arrivals = [20.0 + (i + 1) * link_gap for i in range(6)]  # 52, 84, ... 212
    results = [PacketResult(i, i * send_gap, arrivals[i], size) for i in range(6)]
    assert ProbeResultEstimator.compute(cluster, results) == pytest.approx(0.95 * 300_000)
    stalled = [max(a, 152.0) for a in arrivals]  # 152, 152, 152, 152, 180, 212
    held = [PacketResult(i, i * send_gap, stalled[i], size) for i in range(6)]
    result = ProbeResultEstimator.compute(cluster, held)
    assert result is not None and result < 350_000  # not the 780k the 60 ms span implies


def test_probe_result_needs_most_packets_back() -> None:
    cluster = ProbeCluster.make(1, 2_000_000, 0.0)
    assert ProbeResultEstimator.compute(cluster, _cluster_results(6, 4.0, 4.0, lost=3)) is None


def test_probe_cluster_sizing() -> None:
    c = ProbeCluster.make(7, 2_000_000, 0.0)
    assert (c.min_packets, c.min_bytes) == (5, 3750)  # 15 ms at 2 Mbit/s


def test_probe_estimator_matches_feedback_to_clusters() -> None:
    pe = ProbeResultEstimator()
    c = ProbeCluster.make(3, 2_000_000, 0.0)
    pe.add_cluster(c)
    for r in _cluster_results(6, 4.0, 4.0):
        pe.on_probe_sent(3, r.seq + 100, r.size, r.send_ms)
    rs = [PacketResult(r.seq + 100, r.send_ms, r.arrival_ms, r.size) for r in _cluster_results(6, 4.0, 4.0)]
    assert pe.on_results(rs[:3], 50.0) == []  # not all reported yet
    done = pe.on_results([PacketResult(999, 0, 1, 1)] + rs[3:], 60.0)
    assert done == [(3, pytest.approx(2_000_000))]


def test_probe_controller_initial_further_and_cap() -> None:
    pc = ProbeController()
    pc.set_desired_bps(8_000_000)
    a = pc.next_probe(1_000_000, 0.0)
    b = pc.next_probe(1_000_000, 0.0)
    assert a is not None and b is not None
    assert (a.bitrate_bps, b.bitrate_bps) == (3_000_000, 6_000_000)
    assert pc.next_probe(1_000_000, 0.0) is None
    pc.on_result(a.id, 2_900_000, 2_900_000, 100.0)
    pc.on_result(b.id, 5_000_000, 5_000_000, 100.0)  # above 70 % of 6M: probe 2x further
    c = pc.next_probe(5_000_000, 100.0)
    assert c is not None and c.bitrate_bps == 8_000_000  # 10M capped at desired
    pc.on_result(c.id, None, 5_000_000, 200.0)
    assert pc.next_probe(5_000_000, 300.0) is None  # periodic probing waits its interval
    assert pc.next_probe(5_000_000, 3300.0) is not None


def test_no_probe_when_estimate_reaches_desired() -> None:
    pc = ProbeController()
    pc.set_desired_bps(1_000_000)
    assert pc.next_probe(1_000_000, 0.0) is None


def test_no_probe_of_any_kind_right_after_a_cut() -> None:
    """The start-up pair waits while the estimate meets the desired rate; when a cut
    first takes it below, the queue behind that cut is still draining: no burst then."""
    pc = ProbeController(quiet_after_decrease_ms=1000.0)
    pc.set_desired_bps(1_300_000)
    assert pc.next_probe(1_300_000, 0.0) is None  # enough: start-up probing waits
    pc.on_decrease(100.0)
    assert pc.next_probe(420_000, 120.0) is None
    assert pc.next_probe(420_000, 1050.0) is None
    first = pc.next_probe(420_000, 1100.0)  # quiet period over: the start-up pair
    assert first is not None and first.bitrate_bps == 1_260_000
    # A cut drops what was still queued (the pair's second cluster), and further
    # probing after a success does not fire inside the fresh quiet period either.
    pc.on_decrease(1150.0)
    pc.on_result(first.id, 1_200_000, 420_000, 1160.0)
    assert pc.next_probe(420_000, 1170.0) is None
    assert pc.next_probe(420_000, 2160.0) is None  # periodic: 3 s after the last
    assert pc.next_probe(420_000, 4100.0) is not None


# ---------------------------------------------------------------- pacer
def test_pacer_priority_order() -> None:
    p = Pacer(1_000_000)
    p.enqueue("pad", 100, "padding", 0.0)
    p.enqueue("v1", 1000, "video", 0.0)
    p.enqueue("r1", 1000, "rtx", 0.0)
    p.enqueue("a1", 100, "audio", 0.0)
    sent: list[str] = []
    t = 0.0
    while len(sent) < 4:
        sent += [x.packet for x in p.pop(t)]
        nxt = p.next_send_time(t)
        t = nxt if nxt is not None else t + 1
    assert sent == ["a1", "r1", "v1", "pad"]


def test_pacer_paces_at_2_5x_the_estimate() -> None:
    p = Pacer(1_000_000)  # pacing 2.5 Mbit/s
    for i in range(100):
        p.enqueue(i, 1000, "video", 0.0)
    t, n = 0.0, 0
    while True:
        n += len(p.pop(t))
        nxt = p.next_send_time(t)
        if nxt is None:
            break
        t = nxt
    assert n == 100
    assert t == pytest.approx(100 * 1000 * 8 / 2500, rel=0.03)  # ~320 ms


def test_pacer_never_starves_audio() -> None:
    p = Pacer(100_000, max_queue_ms=2000.0)  # 250 kbit/s pacing, 1 MB of video queued
    for i in range(1000):
        p.enqueue(("v", i), 1000, "video", 0.0)
    for k in range(50):
        t = k * 20.0
        p.enqueue(("a", k), 100, "audio", t)
        out = p.pop(t)
        assert ("a", k) in [x.packet for x in out]  # leaves the moment it is queued
        assert p.next_send_time(t) is not None


def test_pacer_drops_stale_video_and_counts() -> None:
    p = Pacer(100_000, max_queue_ms=500.0)
    for i in range(200):
        p.enqueue(i, 1000, "video", 0.0)
    p.enqueue("a", 100, "audio", 0.0)
    p.pop(0.0)
    p.enqueue("late", 1000, "video", 600.0)  # the old ones are now 600 ms old
    assert p.dropped["video"] > 0
    assert p.queue_delay_ms(600.0) == 0.0
    out = p.pop(600.0)
    assert [x.packet for x in out] == ["late"]


def test_pacer_probe_tags_media_and_padding() -> None:
    p = Pacer(500_000)
    p.enqueue("v", 1000, "video", 0.0)
    c = ProbeCluster.make(9, 2_000_000, 0.0)
    p.start_probe(c, 0.0)
    items, t = [], 0.0
    while p.probing:
        items += p.pop(t)
        if not p.probing:
            break
        nxt = p.next_send_time(t)
        assert nxt is not None
        t = nxt
    assert all(x.probe_id == 9 for x in items)
    assert items[0].packet == "v"
    assert any(x.packet is None and x.kind == "padding" for x in items)
    assert len(items) >= c.min_packets and sum(x.size for x in items) >= c.min_bytes
    # sent at the probe rate: 2 Mbit/s
    assert t == pytest.approx((sum(x.size for x in items) - items[-1].size) * 8 / 2000, rel=0.05)


def test_pacer_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown packet kind"):
        Pacer(1e6).enqueue(b"", 1, "fec", 0.0)


# ---------------------------------------------------------------- estimator
def test_null_estimator_is_fixed() -> None:
    e = NullEstimator(700_000)
    e.on_packet_results([PacketResult(1, 0, None, 1000)], 0.0)
    assert e.estimate_bps(0.0) == 700_000 and e.next_probe(0.0) is None


def test_gcc_estimator_bounds_and_stats() -> None:
    e = GccEstimator(start_bps=10_000, min_bps=50_000, max_bps=1_000_000)
    assert e.estimate_bps(0.0) == 50_000
    with pytest.raises(ValueError):
        GccEstimator(min_bps=10, max_bps=5)
    stats = e.stats()
    for key in ("estimate_bps", "delay_based_bps", "loss_based_bps", "trend", "threshold", "acked_bps", "loss"):
        assert key in stats
    assert e.state in ("increasing", "holding", "decreasing")


def test_gcc_estimator_cuts_on_a_growing_queue() -> None:
    """Direct feed: packets sent at 2 Mbit/s through a 1 Mbit/s bottleneck."""
    e = GccEstimator(start_bps=2_000_000)
    seq, t_send, link_free = 0, 0.0, 0.0
    for _ in range(40):  # 40 feedbacks, 50 ms apart
        results = []
        for _ in range(12):  # 12 x 1040 B per 50 ms ~ 2 Mbit/s
            seq += 1
            t_send += 50.0 / 12
            link_free = max(link_free, t_send) + 1040 * 8 / 1000.0  # 1 Mbit/s
            results.append(PacketResult(seq, t_send, link_free + 20.0, 1040))
        e.on_rtt(100.0, t_send)
        e.on_packet_results(results, t_send + 30.0)
    assert e.estimate_bps(t_send) < 1_000_000
    assert e.aimd.decreases >= 1


def test_pacer_fast_path_only_when_idle_and_in_budget():
    from media.bwe.pacer import Pacer

    pacer = Pacer(1_000_000, burst_ms=5.0)  # 2.5 Mbit/s pacing: 1562 bytes per 5 ms
    assert pacer.try_send_now(1000, "video", 0.0) is False  # no budget accrued yet
    assert pacer.try_send_now(1000, "video", 10.0) is True
    assert pacer.try_send_now(1000, "video", 10.0) is True  # may overdraw by one packet
    assert pacer.try_send_now(1000, "video", 10.0) is False  # budget spent
    assert pacer.try_send_now(200, "audio", 10.0) is True  # audio is never held
    pacer.enqueue(b"x", 1000, "video", 10.0)
    assert pacer.try_send_now(100, "audio", 100.0) is False  # keep order behind the queue


def test_pacer_probe_is_timed_by_the_padding_really_made() -> None:
    """An RTX copy of a small packet is smaller than ``padding_size``: the probe must
    still go out at its bitrate (it went at a third of it when sizes were assumed)."""
    p = Pacer(500_000, padding_size=1000)
    c = ProbeCluster.make(3, 2_000_000, 0.0)
    p.start_probe(c, 0.0)
    items, t = [], 0.0
    while p.probing:
        items += p.pop(t, lambda size: b"r" * 300)
        if not p.probing:
            break
        t = p.next_send_time(t) or t
    assert all(x.size == 300 and x.packet == b"r" * 300 and x.probe_id == 3 for x in items)
    assert sum(x.size for x in items) >= c.min_bytes
    assert t == pytest.approx((sum(x.size for x in items) - 300) * 8 / 2000, rel=0.05)
    # nothing to probe with: the cluster is abandoned, not spun on
    p.start_probe(ProbeCluster.make(4, 2_000_000, t), t)
    assert p.pop(t, lambda size: None) == [] and not p.probing


def test_acked_recent_window_sees_a_capacity_drop_first() -> None:
    ab = AckedBitrateEstimator(window_ms=500.0)
    ab.on_results([PacketResult(i, i * 8.0, i * 8.0, 1000) for i in range(100)])  # 1 Mbit/s
    t0 = 99 * 8.0
    ab.on_results([PacketResult(100 + i, 0, t0 + (i + 1) * 16.0, 1000) for i in range(10)])  # 500 kbit/s
    assert ab.recent_bps(150.0) == pytest.approx(10 * 8000 * 1000 / 150, rel=0.01)  # ~530k: the new rate
    assert ab.bitrate_bps() > 800_000  # the 500 ms window still mostly holds the old rate


def test_aimd_does_not_cut_twice_for_packets_sent_before_the_cut() -> None:
    a = AimdRateControl(2_000_000)
    a.set_rtt(10.0)  # rtt rule alone would allow a cut every 10 ms
    a.update(OV, 1_000_000, 100.0, newest_send_ms=60.0)
    assert a.current_bps == pytest.approx(850_000)
    a.update(OV, 600_000, 300.0, newest_send_ms=90.0)  # the same queue, reported late
    assert a.current_bps == pytest.approx(850_000)
    a.update(OV, 600_000, 350.0, newest_send_ms=150.0)  # only 50 ms of post-cut traffic
    assert a.current_bps == pytest.approx(850_000)
    a.update(OV, 600_000, 400.0, newest_send_ms=250.0)  # 150 ms after the cut: still over
    assert a.current_bps == pytest.approx(510_000)


def _drop_detect_ms(early: bool) -> float:
    """A 1.1 Mbit/s layer (15 fps frames of 8 x 1150 B paced at 3.25 Mbit/s, audio every
    20 ms) through a link that falls from 2.5 Mbit/s to 500 kbit/s at 1 s; feedback every
    50 ms. How long after the drop does the estimate fall under 1 Mbit/s?"""
    import media.bwe.estimator as est_mod

    sends = sorted(
        [(f * 1000 / 15 + i * 2.8, 1150) for f in range(60) for i in range(8)]
        + [(a * 20.0 + 1.0, 100) for a in range(200)]
    )
    results, link_free = [], 0.0
    for seq, (send, size) in enumerate(sends, 1):
        rate_kbps = 2500.0 if send < 1000.0 else 500.0
        link_free = max(link_free, send + 20.0) + size * 8 / rate_kbps
        results.append(PacketResult(seq, send, link_free, size))
    saved = est_mod.QUEUE_OVERUSE_MS, est_mod.COLLAPSE_QUEUE_MS
    if not early:
        est_mod.QUEUE_OVERUSE_MS = est_mod.COLLAPSE_QUEUE_MS = float("inf")
    try:
        e = GccEstimator(start_bps=1_300_000)
        reported = 0
        for k in range(1, 80):
            now = k * 50.0
            batch = [r for r in results[reported:] if r.arrival_ms is not None and r.arrival_ms <= now - 20.0]
            reported += len(batch)
            e.on_rtt(60.0, now)
            e.on_packet_results(batch, now)
            if now > 1000.0 and e.estimate_bps(now) < 1_000_000:
                return now - 1000.0
        return float("inf")
    finally:
        est_mod.QUEUE_OVERUSE_MS, est_mod.COLLAPSE_QUEUE_MS = saved


def test_gcc_estimator_early_signal_cuts_sooner_after_a_capacity_drop() -> None:
    early, trend_only = _drop_detect_ms(True), _drop_detect_ms(False)
    assert early <= 150.0, early
    assert early < trend_only, (early, trend_only)


def test_windowed_minimum_and_maximum_match_a_scan_of_the_window() -> None:
    """The base delay and the remembered capacity: the least (greatest) value over the
    last window, in whole buckets, whatever order the values come in."""
    import random

    from media.bwe.estimator import _MaxWindow, _MinWindow

    rng = random.Random(8)
    lo, hi = _MinWindow(window_ms=3000.0, bucket_ms=500.0), _MaxWindow(window_ms=3000.0, bucket_ms=500.0)
    seen: list[tuple[float, float]] = []
    t = 0.0
    for _ in range(5000):
        t += rng.expovariate(1 / 15.0)
        v = rng.choice([rng.uniform(0, 100), t / 100.0, 1000.0 - t / 100.0])  # noise, rising, falling
        lo.add(t, v)
        hi.add(t, v)
        seen.append((t, v))
        live = [x for s, x in seen if s - s % 500.0 >= t - 3000.0]
        assert lo.get() == min(live) and hi.get() == max(live)
    assert len(lo._buckets) <= 3000.0 / 500.0 + 1
