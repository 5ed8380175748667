"""`Engine.subscriber_stats`: what one participant receives, read through the engine.

Socket-free: a Router on an Engine whose socket is never opened, a real Chromium
simulcast offer published, a viewer without transport-cc subscribed to both tracks
(its estimate is its REMB). The stats must follow the engine's own decisions: the
estimate, the allocator pausing a track, the layer the video is switched to.
"""

from __future__ import annotations

from media.engine import Engine, EngineConfig
from media.stats import DownTrackStats
from tests.router_setup import publish, subscribe


async def test_subscriber_stats_report_estimate_layers_and_pause_per_track() -> None:
    engine = Engine(EngineConfig(port=0))
    router = engine.router("stats")
    viewer = router.add_participant("PA_viewer")
    publisher = router.add_participant("PA_pub")
    tracks = publish(publisher)
    for mid, track in enumerate(tracks):
        subscribe(viewer, track, mid, twcc=False)
    video = next(t for t in tracks if t.kind == "video")
    audio = next(t for t in tracks if t.kind == "audio")

    stats = engine.subscriber_stats("PA_viewer")
    assert stats is not None and stats.participant_sid == "PA_viewer"
    assert stats.estimate_bps is None  # no transport-cc, no REMB yet
    assert set(stats.tracks) == {video.sid, audio.sid}
    assert stats.tracks[audio.sid] == DownTrackStats(
        audio.sid, "audio", current_layer=None, target_layer=None, paused=False, rtt_ms=None
    )
    top = len(video.layers) - 1
    assert stats.tracks[video.sid].target_layer == top
    assert stats.tracks[video.sid].current_layer is None  # nothing forwarded yet

    sub = viewer.subscriber
    sub.remb_bps = 100_000  # audio fits, the lowest video layer does not
    sub.allocate(engine.now_ms())
    down = sub.down_tracks[video.sid]
    down.selector.set_target(0, engine.now_ms())
    stats = engine.subscriber_stats("PA_viewer")
    assert stats is not None
    assert stats.estimate_bps == 100_000
    assert stats.tracks[video.sid].paused and not stats.tracks[audio.sid].paused
    assert stats.tracks[video.sid].target_layer == 0

    assert engine.subscriber_stats("PA_pub").tracks == {}  # publishes, receives nothing
    assert engine.subscriber_stats("PA_nobody") is None
    engine.close_router("stats")
    assert engine.subscriber_stats("PA_viewer") is None  # gone with its room
