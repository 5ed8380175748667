"""Connection quality scoring (media.quality): the E-model score, the video caps, the
hysteresis of the published level, and loss taken between two reports."""

from __future__ import annotations

import pytest

from media.quality import (
    LOST_AFTER_MS,
    RISE_HOLD_MS,
    LinkMeter,
    LinkReport,
    Quality,
    QualityTracker,
    level_for,
    mos,
    score,
)
from media.stats import (
    DownTrackStats,
    LayerStats,
    ParticipantStats,
    PublishedTrackStats,
    SubscriberStats,
)


@pytest.mark.parametrize(
    ("loss", "rtt_ms", "jitter_ms", "expected"),
    [
        (0.0, 20.0, 2.0, Quality.EXCELLENT),
        (0.02, 50.0, 5.0, Quality.EXCELLENT),
        (0.05, 100.0, 10.0, Quality.GOOD),
        (0.10, 50.0, 5.0, Quality.POOR),
        (0.0, 900.0, 30.0, Quality.POOR),  # a call with a second of delay is poor without loss
        (0.30, 20.0, 2.0, Quality.POOR),
    ],
)
def test_loss_and_delay_map_to_livekit_levels(
    loss: float, rtt_ms: float, jitter_ms: float, expected: Quality
) -> None:
    assert level_for(mos(loss, rtt_ms, jitter_ms)) == expected


def test_score_takes_the_worse_direction_and_caps_for_video() -> None:
    clean = LinkReport(up_loss=0.0, down_loss=0.0, rtt_ms=20.0)
    assert level_for(score(clean)) == Quality.EXCELLENT
    assert level_for(score(LinkReport(up_loss=0.0, down_loss=0.12, rtt_ms=20.0))) == Quality.POOR
    assert level_for(score(LinkReport(up_loss=0.12, down_loss=None, rtt_ms=20.0))) == Quality.POOR
    assert level_for(score(LinkReport(down_loss=0.0, rtt_ms=20.0, videos_below=1))) == Quality.GOOD
    assert level_for(score(LinkReport(down_loss=0.0, rtt_ms=20.0, videos_paused=1))) == Quality.POOR
    assert level_for(score(LinkReport(down_loss=0.0, silent_ms=LOST_AFTER_MS))) == Quality.LOST


def test_level_falls_at_once_and_rises_only_after_the_hold() -> None:
    tracker = QualityTracker()
    bad = LinkReport(down_loss=0.15, rtt_ms=30.0)
    good = LinkReport(down_loss=0.0, rtt_ms=30.0)
    assert tracker.update(bad, 0.0) == Quality.POOR
    assert tracker.update(good, 1000.0) is None  # one good second is not enough
    assert tracker.update(bad, 2000.0) is None  # still poor: the hold starts again
    assert tracker.update(good, 3000.0) is None
    assert tracker.update(good, 3000.0 + RISE_HOLD_MS - 1) is None
    assert tracker.update(good, 3000.0 + RISE_HOLD_MS) == Quality.EXCELLENT
    assert tracker.level == Quality.EXCELLENT


def test_a_rise_lands_on_the_lowest_level_seen_during_the_hold() -> None:
    tracker = QualityTracker()
    tracker.update(LinkReport(down_loss=0.3), 0.0)
    tracker.update(LinkReport(down_loss=0.0, videos_below=1), 1000.0)  # good
    tracker.update(LinkReport(down_loss=0.0), 2000.0)  # excellent
    assert tracker.update(LinkReport(down_loss=0.0), 3000.0) == Quality.GOOD


def _stats(
    expected: int,
    lost: int,
    *,
    sub_loss: float | None = 0.0,
    paused: bool = False,
    rtcp_age: float = 100.0,
    idle: float = 10.0,
) -> ParticipantStats:
    layer = LayerStats(
        index=0,
        rid=None,
        bitrate_bps=500_000.0,
        expected=expected,
        lost=lost,
        unrecovered=0,
        jitter_ms=3.0,
        idle_ms=idle,
    )
    down = DownTrackStats(
        "TR_b",
        "video",
        0,
        2,
        paused,
        40.0,
        wanted_layer=2,
        allocated_layer=2,
        bitrate_bps=300_000.0,
        fraction_lost=0.01,
        jitter_ms=4.0,
    )
    sub = SubscriberStats("PA_a", 1e6, {"TR_b": down}, loss=sub_loss, rtcp_age_ms=rtcp_age)
    return ParticipantStats(
        "PA_a", [PublishedTrackStats("TR_a", "video", "camera", False, [layer])], sub
    )


def test_meter_takes_uplink_loss_between_two_reports() -> None:
    meter = LinkMeter()
    first = meter.report(_stats(1000, 500))
    assert (
        first.up_loss is None
    )  # no previous report: the totals since the start say nothing of now
    second = meter.report(_stats(1100, 510))
    assert second.up_loss == pytest.approx(0.10)
    assert second.rtt_ms == 40.0 and second.jitter_ms == 4.0
    assert meter.report(_stats(1105, 510)).up_loss is None  # too few packets to judge


def test_meter_reports_paused_video_and_silence() -> None:
    meter = LinkMeter()
    assert meter.report(_stats(0, 0, paused=True)).videos_paused == 1
    # Without transport-cc the flowing tracks' receiver reports give the downlink loss.
    assert meter.report(_stats(0, 0, sub_loss=None)).down_loss == 0.01
    silent = meter.report(_stats(0, 0, rtcp_age=5000.0, idle=6000.0))
    assert silent.silent_ms == 6000.0
    assert level_for(score(silent)) == Quality.LOST
