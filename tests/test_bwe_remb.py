"""The receive-side uplink estimate for publishers without transport-wide CC (REMB).

A sender like aiortc's (a fixed 500 kbit/s of 15 fps video, abs-send-time on every
packet) goes through a bottleneck modelled packet by packet in simulated time.
"""

from __future__ import annotations

from media.bwe.remb import ABS_SEND_TIME_WRAP, RembEstimator, abs_send_time_ms


def _abs(ms: float) -> int:
    return int(ms * (1 << 18) / 1000.0) % ABS_SEND_TIME_WRAP


def run(capacity_bps: float, seconds: float, send_bps: float = 500_000.0, start_ms: float = 0.0,
        est: RembEstimator | None = None) -> tuple[RembEstimator, list[tuple[float, int]], float]:
    """Returns the estimator, the REMBs (time, bps) and the worst queue delay (ms)."""
    est = est or RembEstimator()
    rembs: list[tuple[float, int]] = []
    link_free = start_ms
    worst = 0.0
    frame_bytes = send_bps / 15 / 8
    t = start_ms
    while t < start_ms + seconds * 1000.0:
        n = max(1, round(frame_bytes / 1200))
        for i in range(n):
            send = t + i * 0.5
            size = int(frame_bytes / n)
            link_free = max(link_free, send) + size * 8000.0 / capacity_bps
            arrival = link_free + 20.0
            worst = max(worst, arrival - send - 20.0 - size * 8000.0 / capacity_bps)
            est.on_packet(_abs(send), arrival, size)
            bps = est.due(arrival)
            if bps is not None:
                rembs.append((arrival, bps))
        t += 1000.0 / 15
    return est, rembs, worst


def test_abs_send_time_is_seconds_in_6_18_fixed_point() -> None:
    assert abs_send_time_ms(1 << 18) == 1000.0
    assert abs_send_time_ms(_abs(1234.5)) == 1234.5 - (1234.5 % (1000 / (1 << 18)))


def test_nothing_is_said_before_a_second_of_packets() -> None:
    est, rembs, _ = run(10_000_000, 0.9)
    assert est.estimate_bps is None and rembs == []


def test_a_link_that_carries_the_rate_lets_the_estimate_rise_above_it() -> None:
    est, rembs, worst = run(5_000_000, 10.0)
    assert worst < 5.0
    assert rembs and rembs[0][0] >= 1000.0
    assert min(b for _, b in rembs) >= 0.9 * 500_000  # never below what the link showed
    assert rembs[-1][1] > 500_000  # room to grow: the sender may raise its rate
    gaps = [b[0] - a[0] for a, b in zip(rembs, rembs[1:], strict=False)]
    assert all(g >= 200.0 for g in gaps) and max(gaps) < 1100.0


def test_a_narrow_uplink_brings_the_remb_under_its_capacity_within_seconds() -> None:
    """500 kbit/s into 300 kbit/s: the queue grows 0.67 ms per ms until told."""
    est, rembs, _ = run(300_000, 6.0)
    assert est.usage is not None
    first_low = next(t for t, b in rembs if b <= 300_000)
    assert first_low < 3000.0, rembs
    assert rembs[-1][1] <= 300_000


def test_a_drop_is_sent_at_once_not_at_the_next_second() -> None:
    est, rembs, _ = run(5_000_000, 3.0)
    _, after, _ = run(200_000, 3.0, start_ms=3000.0, est=est)
    sent = rembs + after
    k = next(i for i in range(len(rembs), len(sent)) if sent[i][1] < 0.97 * sent[i - 1][1])
    assert sent[k][0] - sent[k - 1][0] < 1000.0, sent
    assert sent[k][0] - 3000.0 < 1500.0, sent


def test_the_send_clock_wraps_every_64_seconds() -> None:
    est, _, _ = run(5_000_000, 3.0, start_ms=62_500.0)  # abs-send-time wraps at 64 s
    assert est.estimate_bps is not None and est.estimate_bps >= 450_000
