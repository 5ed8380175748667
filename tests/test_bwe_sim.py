"""Issue #4 acceptance, in virtual time: GCC + pacer + real TWCC wire path over netem links.

Each scenario is seeded and deterministic; a 40 s scenario costs well under a
second of CPU. Queueing delay is measured at the bottleneck's rate stage (what
the netem link reports per packet), the estimate from ``GccEstimator``.
"""

from __future__ import annotations

import statistics

import pytest

from qa.bwe_simulation import Phase, Scenario, SimResult, Simulation

WARMUP_MS = 10_000.0


def run(sc: Scenario) -> SimResult:
    return Simulation(sc).run()


@pytest.mark.parametrize("seed", [1, 2])
def test_constant_link_settles_near_capacity_with_low_delay(seed: int) -> None:
    """1.5 Mbit/s, 50 ms RTT: estimate 80-100 % of capacity, queueing p95 < 100 ms."""
    cap = 1_500_000
    sc = Scenario("const", 40_000, [Phase(0, cap, 25.0)], desired_bps=2_500_000, seed=seed)
    r = run(sc)
    est = r.series("estimate_bps", WARMUP_MS)
    ratio = statistics.mean(est) / cap
    assert 0.8 <= ratio <= 1.0, ratio
    assert 0.8 <= statistics.median(est) / cap <= 1.0
    assert min(est) / cap > 0.6  # no collapse after warm-up
    assert r.queue_delay_percentile(95, WARMUP_MS) < 100.0
    delivered = statistics.mean(r.series("delivered_bps", WARMUP_MS))
    assert delivered / cap > 0.75  # the link is actually used


def test_random_loss_does_not_collapse_the_estimate() -> None:
    """5 % random loss on a 10 Mbit/s link, desired 2.5 Mbit/s: estimate > 70 % of desired."""
    desired = 2_500_000
    sc = Scenario("loss", 30_000, [Phase(0, 10_000_000, 25.0, loss=0.05)], desired_bps=desired, seed=3)
    r = run(sc)
    est = r.series("estimate_bps", 5_000.0)
    assert min(est) > 0.7 * desired
    target = r.series("target_bps", 5_000.0)
    assert statistics.mean(target) > 0.95 * desired  # the sender gets what it wants
    assert 0.03 < r.counters["down"]["dropped_loss"] / r.counters["down"]["sent"] < 0.07


def test_delay_jitter_is_not_read_as_congestion() -> None:
    """+-25 ms of delay jitter (order kept, as on Wi-Fi) on a 1.5 Mbit/s link: the
    estimate stays near capacity instead of being cut at every bunch of arrivals."""
    cap = 1_500_000
    sc = Scenario("jitter", 30_000, [Phase(0, cap, 25.0, jitter_ms=25.0)], desired_bps=2_500_000, seed=4)
    r = run(sc)
    est = r.series("estimate_bps", WARMUP_MS)
    assert statistics.mean(est) / cap > 0.8
    assert min(est) / cap > 0.5


@pytest.mark.parametrize("seed", [1, 2])
def test_capacity_drop_and_recovery(seed: int) -> None:
    """2.5 -> 0.5 -> 2.5 Mbit/s (300 ms drop-tail buffer, RFC 8867's figure)."""
    drop_at, back_at = 15_000.0, 25_000.0
    sc = Scenario(
        "steps",
        40_000,
        [Phase(0, 2_500_000, 25.0), Phase(drop_at, 500_000, 25.0), Phase(back_at, 2_500_000, 25.0)],
        desired_bps=2_500_000,
        seed=seed,
    )
    r = run(sc)
    below = [s.t_ms for s in r.samples if s.t_ms > drop_at and s.estimate_bps < 500_000]
    assert below and below[0] - drop_at <= 2_000.0
    # delay: bounded during the drop, and the queue is drained once the estimate reacted
    assert r.queue_delay_percentile(95, drop_at, back_at) < 300.0
    assert r.queue_delay_percentile(95, drop_at + 2_000.0, back_at) < 200.0
    up = [s.t_ms for s in r.samples if s.t_ms > back_at and s.estimate_bps >= 2_000_000]
    assert up and up[0] - back_at <= 10_000.0
    # no pacer drops of old video (max_queue_ms) on this path
    assert r.counters["pacer_dropped"]["video"] == 0


def test_deep_buffer_queue_is_drained_quickly() -> None:
    """1 s bottleneck buffer: after the drop, the standing queue is gone within ~3 s."""
    drop_at = 10_000.0
    sc = Scenario(
        "deep",
        20_000,
        [Phase(0, 2_500_000, 25.0, queue_ms=1000), Phase(drop_at, 500_000, 25.0, queue_ms=1000)],
        desired_bps=2_500_000,
    )
    r = run(sc)
    assert r.queue_delay_percentile(95, drop_at + 3_000.0) < 300.0


def test_simulation_is_deterministic() -> None:
    sc = Scenario("det", 8_000, [Phase(0, 1_000_000, 25.0, loss=0.02)], seed=7)
    a, b = run(sc), run(sc)
    assert a.series("estimate_bps") == b.series("estimate_bps")
    assert a.queue_delays == b.queue_delays


def _lossy_both_ways(seed: int, duration_ms: float, outage: tuple[float, float] | None = None) -> Scenario:
    """10 % random loss each way on an ample link, 550 kbit/s of video whose keyframe
    (every 2 s) is 10 frames: it fills the congestion window by itself, so a lost
    feedback leaves the sender waiting on redraws. ``outage``: (start, end) ms of a
    dead link both ways."""
    down = [Phase(0, 5_000_000, 10.0, loss=0.1)]
    up = [Phase(0, None, 10.0, loss=0.1)]
    if outage is not None:
        start, end = outage
        down += [Phase(start, 5_000_000, 10.0, loss=1.0), Phase(end, 5_000_000, 10.0, loss=0.1)]
        up += [Phase(start, None, 10.0, loss=1.0), Phase(end, None, 10.0, loss=0.1)]
    return Scenario(
        "lossy", duration_ms, down, up, desired_bps=550_000, seed=seed,
        keyframe_interval_ms=2000.0, keyframe_ratio=10.0,
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_lost_feedback_on_a_lossy_link_is_not_an_outage(seed: int) -> None:
    """Five minutes at 10 % loss each way: no outage (one would pause the video until a
    keyframe), and the video keeps its rate."""
    r = run(_lossy_both_ways(seed, 300_000))
    assert r.counters["outages"] == 0
    assert statistics.mean(r.series("delivered_bps", WARMUP_MS)) > 0.8 * 550_000


def test_a_real_outage_on_a_lossy_link_is_still_noticed_and_recovered_from() -> None:
    """The same lossy link dead for 2 s: one outage, and the video is back at its rate
    within a second of the return."""
    r = run(_lossy_both_ways(3, 40_000, outage=(20_000.0, 22_000.0)))
    assert r.counters["outages"] == 1
    during = r.series("delivered_bps", 20_500.0, 22_000.0)
    assert max(during) == 0.0
    back = r.series("delivered_bps", 23_000.0, 30_000.0)
    assert statistics.mean(back) > 0.8 * 550_000
