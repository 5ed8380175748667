"""Connection quality: one participant's link as excellent, good, poor or lost (sans-I/O).

What a person notices on a call is loss (counted before repair: repair costs delay and
bitrate, and past about 10 % it no longer keeps up), delay (round trip and jitter) and,
for video, getting less than their screen asked for. The score is the ITU-T G.107
E-model's mean opinion score in its common simplified form (jitter folded into an
effective latency), over the worse of the two directions, then capped by video: a
video paused for bandwidth makes the link poor, one forwarded below the layer the
viewer wants makes it at most good. The scale and the MOS thresholds are LiveKit's, so
clients written for its ``ConnectionQuality`` read Ferry's the same way.

A level falls at once and rises only after the better level has held for
``RISE_HOLD_MS``: a person told "your network is poor" should not see it blink away
and back with every lucky second.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from media.stats import ParticipantStats

__all__ = ["LinkMeter", "LinkReport", "Quality", "QualityTracker", "level_for", "mos", "score"]

EXCELLENT_MOS = 4.1  # above: excellent
GOOD_MOS = 3.6  # above: good; at or below: poor
PAUSED_MOS = 2.5  # a video paused for bandwidth
BELOW_WANTED_MOS = 4.0  # a video forwarded below the wanted layer: at most good
LOST_AFTER_MS = 3000.0  # nothing heard from a participant that should be talking this long
RISE_HOLD_MS = 2000.0
MIN_LOSS_SAMPLE = 10  # packets between two reports below which a loss fraction says nothing


class Quality(StrEnum):
    EXCELLENT = "excellent"
    GOOD = "good"
    POOR = "poor"
    LOST = "lost"


_RANK = {Quality.LOST: 0, Quality.POOR: 1, Quality.GOOD: 2, Quality.EXCELLENT: 3}


@dataclass(frozen=True, slots=True)
class LinkReport:
    """One participant's link as Ferry sees it now (both directions)."""

    up_loss: float | None = None  # fraction lost before repair of what they send; None: nothing
    down_loss: float | None = None  # fraction lost before repair of what they receive
    rtt_ms: float | None = None
    jitter_ms: float = 0.0
    videos_paused: int = 0  # videos they receive that are paused for their bandwidth
    videos_below: int = 0  # videos forwarded to them below the layer they want
    silent_ms: float = 0.0  # since anything came from them while they should be sending


def mos(loss: float, rtt_ms: float, jitter_ms: float) -> float:
    """Mean opinion score (1 .. 4.5) for a loss fraction, round trip and jitter."""
    latency = rtt_ms / 2.0 + 2.0 * jitter_ms + 10.0
    if latency < 160.0:
        r = 93.2 - latency / 40.0
    else:
        r = 93.2 - (latency - 120.0) / 10.0
    r -= 2.5 * 100.0 * max(0.0, min(1.0, loss))
    r = max(0.0, min(100.0, r))
    return max(1.0, min(4.5, 1.0 + 0.035 * r + 7e-6 * r * (r - 60.0) * (100.0 - r)))


def score(report: LinkReport) -> float:
    """The report's MOS, capped by what video the participant receives; 0 when lost."""
    if report.silent_ms >= LOST_AFTER_MS:
        return 0.0
    losses = [x for x in (report.up_loss, report.down_loss) if x is not None]
    value = mos(max(losses, default=0.0), report.rtt_ms or 0.0, report.jitter_ms)
    if report.videos_paused:
        value = min(value, PAUSED_MOS)
    elif report.videos_below:
        value = min(value, BELOW_WANTED_MOS)
    return value


def level_for(value: float) -> Quality:
    if value <= 0.0:
        return Quality.LOST
    if value > EXCELLENT_MOS:
        return Quality.EXCELLENT
    if value > GOOD_MOS:
        return Quality.GOOD
    return Quality.POOR


class QualityTracker:
    """One participant's published level: falls at once, rises after ``RISE_HOLD_MS``."""

    __slots__ = ("level", "score", "_rise_since", "_rise_floor")

    def __init__(self) -> None:
        self.level = Quality.EXCELLENT
        self.score = 4.5
        self._rise_since: float | None = None
        self._rise_floor = Quality.EXCELLENT  # the lowest level measured during the hold

    def update(self, report: LinkReport, now_ms: float) -> Quality | None:
        """Fold in one report; the new level if it changed, else None."""
        self.score = score(report)
        measured = level_for(self.score)
        if _RANK[measured] <= _RANK[self.level]:
            self._rise_since = None
            if measured == self.level:
                return None
            self.level = measured
            return measured
        if self._rise_since is None:
            self._rise_since, self._rise_floor = now_ms, measured
        elif _RANK[measured] < _RANK[self._rise_floor]:
            self._rise_floor = measured
        if now_ms - self._rise_since < RISE_HOLD_MS:
            return None
        self._rise_since = None
        self.level = self._rise_floor
        return self.level


class LinkMeter:
    """Turns one participant's successive stats into link reports.

    Uplink loss is taken between two calls from the published layers' counters (lost on
    arrival over expected), so each report covers the time since the previous one;
    downlink loss is transport-cc's window when the viewer sends it, else the worst
    receiver report of a track that is flowing.
    """

    __slots__ = ("_totals",)

    def __init__(self) -> None:
        # (track sid, layer index) -> (expected, lost) at the previous report
        self._totals: dict[tuple[str, int], tuple[int, int]] = {}

    def report(self, stats: ParticipantStats) -> LinkReport:
        expected = lost = 0
        jitter = 0.0
        idle: list[float] = []
        totals: dict[tuple[str, int], tuple[int, int]] = {}
        for track in stats.published:
            for layer in track.layers:
                key = (track.track_sid, layer.index)
                totals[key] = (layer.expected, layer.lost)
                before = self._totals.get(key)
                if before is not None:
                    expected += max(0, layer.expected - before[0])
                    lost += max(0, layer.lost - before[1])
                if not track.muted and layer.active and layer.idle_ms is not None:
                    idle.append(layer.idle_ms)
                    jitter = max(jitter, layer.jitter_ms)
        self._totals = totals
        up_loss = lost / expected if expected >= MIN_LOSS_SAMPLE else None

        sub = stats.subscriber
        flowing = [t for t in sub.tracks.values() if t.bitrate_bps > 0 and not t.paused]
        down_loss = sub.loss
        if down_loss is None and flowing:
            down_loss = max(t.fraction_lost for t in flowing)
        rtts = [t.rtt_ms for t in sub.tracks.values() if t.rtt_ms is not None]
        for t in flowing:
            jitter = max(jitter, t.jitter_ms)
        videos = [t for t in sub.tracks.values() if t.kind == "video"]
        paused = sum(1 for t in videos if t.paused)
        below = sum(
            1
            for t in videos
            if not t.paused
            and t.allocated_layer is not None
            and t.wanted_layer is not None
            and t.allocated_layer < t.wanted_layer
        )
        silent = min(idle) if idle else 0.0
        if sub.tracks and sub.rtcp_age_ms is not None:
            silent = max(silent, sub.rtcp_age_ms)
        return LinkReport(
            up_loss=up_loss,
            down_loss=down_loss,
            rtt_ms=max(rtts) if rtts else None,
            jitter_ms=jitter,
            videos_paused=paused,
            videos_below=below,
            silent_ms=silent,
        )
