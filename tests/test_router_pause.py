"""A track the subscriber's bandwidth cannot carry is paused, and the room is told.

Socket-free: one Router on an Engine whose socket is never opened, a real Chromium
simulcast offer published, a viewer without transport-cc subscribed to its tracks, and
the viewer's budget set through its REMB (the estimate such a subscriber has). The
allocator's decision must reach the Router's listener (``Room.on_track_paused`` sends
``track_paused`` / ``track_resumed`` to the client), once per change.
"""

from __future__ import annotations

from media.engine import Engine, EngineConfig
from media.routing.allocator import UP_HOLD_MS
from media.routing.router import MediaParticipant
from tests.router_setup import publish, subscribe


class RecordingListener:
    """A RouterListener that keeps the pause events it is given."""

    def __init__(self) -> None:
        self.paused: list[tuple[str, str, bool]] = []

    def on_active_speakers(self, speakers: list[dict[str, object]]) -> None:
        pass

    def on_peer_failed(self, participant_sid: str, role: str, reason: str) -> None:
        pass

    def on_track_paused(self, participant_sid: str, track_sid: str, paused: bool) -> None:
        self.paused.append((participant_sid, track_sid, paused))

    def on_publisher_layers(self, participant_sid: str, track_sid: str, layers: dict[str, bool]) -> None:
        pass


async def test_a_track_that_does_not_fit_is_paused_then_resumed_and_the_listener_hears_both() -> None:
    listener = RecordingListener()
    engine = Engine(EngineConfig(port=0))
    router = engine.router("pause", listener)
    viewer: MediaParticipant = router.add_participant("PA_viewer")
    publisher = router.add_participant("PA_pub")
    tracks = publish(publisher)
    for mid, track in enumerate(tracks):
        subscribe(viewer, track, mid, twcc=False)
    video = next(t for t in tracks if t.kind == "video")
    audio = next(t for t in tracks if t.kind == "audio")
    sub = viewer.subscriber
    assert sub.estimator is None  # the budget is the REMB below
    down = sub.down_tracks[video.sid]
    now = engine.now_ms()

    # 100 kbit/s: audio (40k) fits, the lowest video layer (150k nominal) does not.
    sub.remb_bps = 100_000
    sub.allocate(now)
    assert down.selector.paused and not sub.down_tracks[audio.sid].selector.paused
    assert listener.paused == [("PA_viewer", video.sid, True)]
    sub.allocate(now + 100.0)  # still short: no second event for the same state
    assert listener.paused == [("PA_viewer", video.sid, True)]

    # The link recovers; after the allocator's hold time the track comes back.
    sub.remb_bps = 5_000_000
    sub.allocate(now + 100.0 + UP_HOLD_MS + 1.0)
    assert not down.selector.paused
    assert listener.paused == [("PA_viewer", video.sid, True), ("PA_viewer", video.sid, False)]
    assert not publisher.subscriber.down_tracks  # the publisher subscribed to nothing
    router.close()
