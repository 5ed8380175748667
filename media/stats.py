"""Engine-wide counters, kept as plain ints on the hot path.

Prometheus counters cost microseconds per increment; the forward path only bumps
attributes here, and `signaling.metrics` reads them at scrape time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class EngineStats:
    rtp_in: int = 0
    rtp_bytes_in: int = 0
    rtp_out: int = 0
    rtp_bytes_out: int = 0
    nack_received: int = 0  # seqs asked for by subscribers
    rtx_sent: int = 0
    rtx_missed: int = 0
    nack_sent: int = 0  # seqs asked of publishers
    pli_received: int = 0
    pli_sent: int = 0
    keyframes_in: int = 0
    layer_switches: int = 0
    red_recovered: int = 0  # Opus packets rebuilt from RED redundancy for non-RED subscribers
    red_added: int = 0  # audio packets wrapped in RED by Ferry toward lossy subscribers
    # NACK counters of closed publisher tracks (live ones are summed at snapshot time).
    upstream_lost: int = 0
    upstream_recovered: int = 0
    upstream_unrecovered: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    # Set of reasons already logged once (see `drop`).
    _logged: set[str] = field(default_factory=set)

    def drop(self, reason: str) -> None:
        self.drops[reason] += 1

    def as_dict(self) -> dict[str, object]:
        return {
            "rtp_in": self.rtp_in,
            "rtp_bytes_in": self.rtp_bytes_in,
            "rtp_out": self.rtp_out,
            "rtp_bytes_out": self.rtp_bytes_out,
            "nack_received": self.nack_received,
            "rtx_sent": self.rtx_sent,
            "rtx_missed": self.rtx_missed,
            "nack_sent": self.nack_sent,
            "pli_received": self.pli_received,
            "pli_sent": self.pli_sent,
            "keyframes_in": self.keyframes_in,
            "layer_switches": self.layer_switches,
            "red_recovered": self.red_recovered,
            "red_added": self.red_added,
            "upstream_lost": self.upstream_lost,
            "upstream_recovered": self.upstream_recovered,
            "upstream_unrecovered": self.upstream_unrecovered,
            "drops": dict(self.drops),
        }


@dataclass(frozen=True, slots=True)
class DownTrackStats:
    """What one subscriber receives of one published track, at the time of asking."""

    track_sid: str
    kind: str  # "audio" | "video"
    current_layer: int | None  # simulcast layer being forwarded; None before the first
    target_layer: int | None  # layer being switched to (video); None for audio
    paused: bool  # paused by the allocator: the subscriber's bandwidth cannot carry it
    rtt_ms: float | None  # from the subscriber's receiver reports
    wanted_layer: int | None = None  # the highest layer its pin and rendered size allow (video)
    allocated_layer: int | None = None  # the highest its bandwidth allows now (video)
    bitrate_bps: float = 0.0  # forwarded to it, last second or so
    fraction_lost: float = 0.0  # in its last receiver report (after RTX repair)
    jitter_ms: float = 0.0  # in its last receiver report


@dataclass(frozen=True, slots=True)
class SubscriberStats:
    """One participant's receiving side: its bandwidth estimate and each track it gets."""

    participant_sid: str
    estimate_bps: float | None  # transport-cc (GCC) estimate, else its REMB; None if neither
    tracks: dict[str, DownTrackStats]  # by track sid
    loss: float | None = None  # transport-cc loss before repair, last window; None: no TWCC
    rtcp_age_ms: float | None = None  # since its last RTCP; None: none yet


@dataclass(frozen=True, slots=True)
class LayerStats:
    """One received RTP stream (simulcast layer) of a published track, at the time of asking."""

    index: int
    rid: str | None
    bitrate_bps: float
    expected: int  # packets the sequence numbers say were sent
    lost: int  # missing on arrival (before NACK repair)
    unrecovered: int  # given up on: a freeze until the next keyframe
    jitter_ms: float
    idle_ms: float | None  # since its last packet; None: none yet
    active: bool = True  # False while dynacast has the publisher pause it (nobody watches)
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True, slots=True)
class PublishedTrackStats:
    track_sid: str
    kind: str
    source: str
    muted: bool
    layers: list[LayerStats]


@dataclass(frozen=True, slots=True)
class ParticipantStats:
    """Both sides of one participant's media: what it sends, what it receives."""

    participant_sid: str
    published: list[PublishedTrackStats]
    subscriber: SubscriberStats
