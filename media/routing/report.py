"""Read-only views of one participant's media (engine stats, the quality meter, REST).

Built on demand (a scrape, a quality round), never per packet: each call walks the
participant's tracks once and copies plain numbers into frozen dataclasses, so callers
outside ``media`` never hold the live objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from media.stats import (
    DownTrackStats,
    LayerStats,
    ParticipantStats,
    PublishedTrackStats,
    SubscriberStats,
)

if TYPE_CHECKING:
    from media.routing.published_track import PublishedTrack
    from media.routing.router import MediaParticipant

__all__ = ["participant_stats", "subscriber_stats"]


def subscriber_stats(participant: MediaParticipant, now_ms: float) -> SubscriberStats:
    """What `participant` receives now: estimate, loss, and per track layer and rates."""
    subscriber = participant.subscriber
    tracks = {}
    for sid, down in subscriber.down_tracks.items():
        selector = down.selector
        stream = down.stream
        video = down.is_video
        tracks[sid] = DownTrackStats(
            track_sid=sid,
            kind=down.track.kind,
            current_layer=selector.current,
            target_layer=selector.target if video else None,
            paused=selector.paused,
            rtt_ms=stream.rtt_ms,
            wanted_layer=selector.max_layer if video else None,
            allocated_layer=selector.allocated if video else None,
            bitrate_bps=stream.bitrate_bps(now_ms),
            fraction_lost=stream.fraction_lost or 0.0,
            jitter_ms=stream.jitter_ms,
        )
    estimator = subscriber.estimator
    last_rtcp = subscriber.last_rtcp_ms
    return SubscriberStats(
        participant.sid,
        subscriber.estimate_bps(now_ms),
        tracks,
        loss=estimator.loss_based.loss if estimator is not None else None,
        rtcp_age_ms=None if last_rtcp is None else now_ms - last_rtcp,
    )


def _track_stats(track: PublishedTrack, now_ms: float) -> PublishedTrackStats:
    layers = []
    video = track.kind == "video"
    for layer in track.layers:
        stream = layer.stream
        if stream is None:
            continue
        last = layer.last_packet_ms
        layers.append(
            LayerStats(
                index=layer.index,
                rid=layer.rid,
                bitrate_bps=stream.bitrate_bps(now_ms),
                expected=stream.expected,
                lost=layer.nack.lost if video else stream.cumulative_lost,
                unrecovered=layer.nack.given_up if video else stream.cumulative_lost,
                jitter_ms=stream.jitter_ms,
                idle_ms=None if last is None else now_ms - last,
                active=layer.active,
                width=layer.width,
                height=layer.height,
            )
        )
    return PublishedTrackStats(track.sid, track.kind, track.source, track.muted, layers)


def participant_stats(participant: MediaParticipant, now_ms: float) -> ParticipantStats:
    """Both directions of `participant`: each track it publishes and what it receives."""
    published = [_track_stats(track, now_ms) for track in participant.publisher.tracks_by_mid.values()]
    return ParticipantStats(participant.sid, published, subscriber_stats(participant, now_ms))
