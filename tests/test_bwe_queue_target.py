"""Unit tests of the queue-delay target controller and its pause detector (virtual time)."""

from __future__ import annotations

import pytest

from media.bwe.estimator import GccEstimator
from media.bwe.queue_target import (
    GAIN,
    GAIN_DOWN,
    MIN_RATIO,
    PAUSE_MEMORY_MS,
    PAUSE_MS,
    TARGET_MS,
    WINDOW_MS,
    PauseDetector,
    QueueTargetControl,
)
from media.rtp.twcc import PacketResult

SIZE = 1000  # bytes a packet
GAP_MS = 8.0  # one packet every 8 ms: 1 Mbit/s
BASE_OWD_MS = 20.0


def _packets(
    n: int, *, t0: float = 0.0, queue_ms: float = 0.0, seq0: int = 0, pause_at: int | None = None,
    pause_ms: float = 0.0,
) -> list[PacketResult]:
    """``n`` packets sent every GAP_MS from ``t0``, each arriving after the base delay plus
    ``queue_ms``; from packet ``pause_at`` on, ``pause_ms`` later (the link paused)."""
    out = []
    for i in range(n):
        send = t0 + i * GAP_MS
        extra = pause_ms if pause_at is not None and i >= pause_at else 0.0
        out.append(PacketResult(seq0 + i, send, send + BASE_OWD_MS + queue_ms + extra, SIZE))
    return out


# ---------------------------------------------------------------- pause detector
@pytest.mark.parametrize(("extra_ms", "pauses"), [(0.0, 0), (PAUSE_MS - 1, 0), (PAUSE_MS + 1, 1)])
def test_a_pause_is_an_arrival_gap_beyond_the_send_gap(extra_ms: float, pauses: int) -> None:
    pd = PauseDetector()
    pd.on_results(_packets(20, pause_at=10, pause_ms=extra_ms))
    assert pd.recent_pauses == pauses


def test_a_pause_is_seen_across_two_feedbacks_and_a_lost_packet() -> None:
    pd = PauseDetector()
    first = _packets(10)
    second = _packets(10, t0=10 * GAP_MS, seq0=10, queue_ms=PAUSE_MS + 5)
    second[3] = PacketResult(second[3].seq, second[3].send_ms, None, SIZE)  # lost
    pd.on_results(first)
    pd.on_results(second)
    assert pd.recent_pauses == 1  # between the last of ``first`` and the first of ``second``


def test_pausing_needs_two_pauses_within_the_memory() -> None:
    pd = PauseDetector()
    pd.on_results(_packets(20, pause_at=10, pause_ms=100.0))
    assert not pd.pausing
    # A second pause 5 s later: the link pauses.
    pd.on_results(_packets(20, t0=5000.0, seq0=20, pause_at=10, pause_ms=200.0))
    assert pd.recent_pauses == 2 and pd.pausing
    # Steady arrivals for longer than the memory: both pauses are forgotten.
    later = 5000.0 + PAUSE_MEMORY_MS
    pd.on_results(_packets(20, t0=later, seq0=40, queue_ms=200.0))
    assert pd.recent_pauses == 0 and not pd.pausing


def test_forgetting_the_last_packet_hides_the_gap_an_outage_leaves() -> None:
    pd = PauseDetector()
    pd.on_results(_packets(10))
    pd.forget_last_packet()
    pd.on_results(_packets(10, t0=2000.0, seq0=10, queue_ms=500.0))
    assert pd.recent_pauses == 0


# ---------------------------------------------------------------- controller
def _steady(qtc: QueueTargetControl, queue_ms: float, until_ms: float = 2 * WINDOW_MS) -> float | None:
    """Feed 50 ms feedbacks of a 1 Mbit/s link whose packets meet ``queue_ms`` of queue."""
    per = int(50 / GAP_MS)
    rate = None
    for k in range(int(until_ms / 50)):
        rate = qtc.on_results(_packets(per, t0=k * per * GAP_MS, seq0=k * per, queue_ms=queue_ms), BASE_OWD_MS)
    return rate


def test_no_rate_before_a_full_window_or_without_a_base_delay() -> None:
    qtc = QueueTargetControl()
    assert qtc.on_results(_packets(6), BASE_OWD_MS) is None  # 40 ms of arrivals
    assert QueueTargetControl().on_results(_packets(60), None) is None
    assert _steady(QueueTargetControl(), 0.0) is not None


@pytest.mark.parametrize(
    ("queue_ms", "ratio"),
    [
        (0.0, 1.0 + GAIN),  # empty queue: the most above D
        (TARGET_MS / 2, 1.0 + GAIN / 2),
        (TARGET_MS, 1.0),  # at the target: D
        (2 * TARGET_MS, 1.0 - GAIN_DOWN),  # above it: the gentler slope
        (10 * TARGET_MS, MIN_RATIO),  # a deep queue: the floor
    ],
)
def test_rate_law_and_clamp(queue_ms: float, ratio: float) -> None:
    qtc = QueueTargetControl()
    rate = _steady(qtc, queue_ms)
    assert qtc.delivery_bps == pytest.approx(1_000_000, rel=0.05)
    assert qtc.queue_ms == pytest.approx(queue_ms)
    assert rate == pytest.approx(ratio * qtc.delivery_bps)


def test_in_charge_only_on_a_pausing_link_and_not_right_after_a_reset() -> None:
    qtc = QueueTargetControl()
    _steady(qtc, 10.0)
    assert qtc.rate_bps is not None and not qtc.in_charge  # no pauses: GCC alone
    qtc.on_results(_packets(20, t0=1000.0, seq0=100, pause_at=5, pause_ms=150.0), BASE_OWD_MS)
    qtc.on_results(_packets(20, t0=2000.0, seq0=200, pause_at=5, pause_ms=150.0), BASE_OWD_MS)
    assert qtc.pauses.pausing and qtc.in_charge
    qtc.reset()  # an outage ended: the window is not the link now
    assert qtc.rate_bps is None and qtc.delivery_bps is None and not qtc.in_charge
    assert qtc.pauses.pausing  # ... but the link still pauses
    qtc.on_results(_packets(6, t0=5000.0, seq0=300), BASE_OWD_MS)
    assert qtc.rate_bps is None  # a full window first


@pytest.mark.parametrize(
    "kwargs", [{"target_ms": 0.0}, {"gain": 0.0}, {"gain_down": 0.0}, {"min_ratio": 0.0}, {"min_ratio": 1.5}, {"window_ms": 0.0}]
)
def test_controller_rejects_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        QueueTargetControl(**kwargs)


def test_pause_detector_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        PauseDetector(pauses_to_engage=0)


# ---------------------------------------------------------------- in the estimator
def _feed(est: GccEstimator, packets: list[PacketResult], feedback_every: int = 6) -> None:
    for p in packets:
        est.on_packet_sent(p.seq, p.size, p.send_ms)
    for i in range(0, len(packets), feedback_every):
        batch = packets[i : i + feedback_every]
        est.on_packet_results(batch, max(p.arrival_ms or 0.0 for p in batch) + 10.0)


def test_estimator_follows_the_controller_only_on_a_pausing_link() -> None:
    steady = GccEstimator(start_bps=300_000)
    _feed(steady, _packets(400))
    assert not steady.queue_target.in_charge
    assert steady.estimate_bps(0.0) == int(steady.aimd.current_bps)

    pausing = GccEstimator(start_bps=300_000)
    # Two radio pauses of 150 ms, then steady arrivals with 10 ms of queue.
    _feed(pausing, _packets(100, pause_at=50, pause_ms=150.0))
    _feed(pausing, _packets(100, t0=100 * GAP_MS + 200.0, seq0=100, pause_at=50, pause_ms=150.0))
    _feed(pausing, _packets(100, t0=200 * GAP_MS + 600.0, seq0=200, queue_ms=10.0))
    qt = pausing.queue_target
    assert qt.in_charge and qt.rate_bps is not None and qt.delivery_bps is not None
    assert pausing.estimate_bps(0.0) == int(qt.rate_bps)
    assert pausing.aimd.current_bps == qt.rate_bps  # AIMD carries on from there
    # The window: the delivery rate x (base ack delay + QUEUE_TARGET_WINDOW_MS), smaller
    # than the estimate x (base ack delay + WINDOW_QUEUE_MS) it is otherwise.
    now = 300 * GAP_MS + 700.0
    window = pausing.congestion_window_bytes(now)
    pausing._queue_target_owns = False  # as while a probe result floors the estimate
    assert pausing.congestion_window_bytes(now) == window  # ... its packets acked
    pausing.probe_controller.probe_now(1_000_000, now)  # a probe about to measure the link
    usual = pausing.congestion_window_bytes(now)
    assert window is not None and usual is not None
    assert window < 0.9 * usual
