"""Subscription settings and dynacast through the Router (and the Engine), socket-free.

A Router on an Engine whose socket is never opened, a real Chromium simulcast offer
published (q, h, f), a viewer subscribed without transport-cc. Signaling reaches a
subscriber's layer cap only through `update_subscription`; dynacast must pause at the
publisher a layer no subscriber wants, and resume it as soon as one does.
"""

from __future__ import annotations

import pytest

from media.engine import Engine, EngineConfig
from media.routing.published_track import PublishedTrack
from media.routing.router import DYNACAST_INTERVAL_MS, DYNACAST_OFF_AFTER_MS, Router
from tests.router_setup import publish, subscribe
from tests.test_router_pause import RecordingListener


class LayersListener(RecordingListener):
    """Also keeps the `publisher_layers` events (what the publisher is told to send)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers: list[tuple[str, str, dict[str, bool]]] = []

    def on_publisher_layers(self, participant_sid: str, track_sid: str, layers: dict[str, bool]) -> None:
        self.layers.append((participant_sid, track_sid, layers))


def room(listener: RecordingListener | None = None) -> tuple[Engine, Router, PublishedTrack]:
    """A publisher's simulcast video (and audio) received by PA_viewer."""
    engine = Engine(EngineConfig(port=0))
    router = engine.router("room", listener)
    viewer = router.add_participant("PA_viewer")
    tracks = publish(router.add_participant("PA_pub"))
    for mid, track in enumerate(tracks):
        subscribe(viewer, track, mid, twcc=False)
    video = next(t for t in tracks if t.kind == "video")
    assert [layer.rid for layer in video.layers] == ["q", "h", "f"]
    return engine, router, video


async def test_max_layer_size_and_enabled_reach_the_subscribers_layer_selector() -> None:
    engine, router, video = room()
    selector = router.participants["PA_viewer"].subscriber.down_tracks[video.sid].selector

    settings = engine.update_subscription("room", "PA_viewer", video.sid, max_layer="h")
    assert (settings.max_layer, settings.enabled) == ("h", True)
    assert selector.max_layer == 1
    # A 320x180 tile: q (320x180 when the top layer is 720p) covers it.
    settings = router.update_subscription("PA_viewer", video.sid, size=(320, 180))
    assert settings.max_layer == "q" and selector.max_layer == 0
    # Each setting is kept on its own: a full-size tile does not undo the pin.
    assert router.update_subscription("PA_viewer", video.sid, size=(1280, 720)).max_layer == "h"
    assert router.update_subscription("PA_viewer", video.sid, max_layer="f").max_layer == "f"
    assert router.update_subscription("PA_viewer", video.sid, size=(640, 360)).max_layer == "h"
    assert router.update_subscription("PA_viewer", video.sid, size=(0, 0)).max_layer == "f"
    # An unknown rid pins nothing below the top layer.
    assert router.update_subscription("PA_viewer", video.sid, max_layer="x").max_layer == "f"

    settings = router.update_subscription("PA_viewer", video.sid, enabled=False)
    assert settings.enabled is False and not selector.enabled and not selector.active
    assert router.update_subscription("PA_viewer", video.sid).enabled is False  # nothing given: as is
    assert router.update_subscription("PA_viewer", video.sid, enabled=True).enabled is True

    with pytest.raises(LookupError):
        router.update_subscription("PA_pub", video.sid, max_layer="q")  # receives nothing
    with pytest.raises(LookupError):
        router.update_subscription("PA_viewer", "TR_unknown", max_layer="q")
    with pytest.raises(LookupError):
        engine.update_subscription("no-such-room", "PA_viewer", video.sid, max_layer="q")
    router.close()


async def test_dynacast_pauses_layers_no_subscriber_wants_and_resumes_one_when_wanted() -> None:
    listener = LayersListener()
    engine, router, video = room(listener)
    now = engine.now_ms()
    router.on_timer(now)
    assert listener.layers == [("PA_pub", video.sid, {"q": True, "h": True, "f": True})]

    router.update_subscription("PA_viewer", video.sid, max_layer="q")
    router.on_timer(now + DYNACAST_INTERVAL_MS)  # unwanted for less than the delay: still on
    assert len(listener.layers) == 1
    paused_at = now + 2 * DYNACAST_INTERVAL_MS + DYNACAST_OFF_AFTER_MS
    router.on_timer(paused_at)
    assert listener.layers[-1] == ("PA_pub", video.sid, {"q": True, "h": False, "f": False})
    assert [layer.active for layer in video.layers] == [True, False, False]

    router.update_subscription("PA_viewer", video.sid, max_layer="h")
    router.on_timer(paused_at + DYNACAST_INTERVAL_MS)  # wanted again: resumed at once
    assert listener.layers[-1] == ("PA_pub", video.sid, {"q": True, "h": True, "f": False})
    assert [layer.active for layer in video.layers] == [True, True, False]
    assert len(listener.layers) == 3
    router.close()


async def test_a_subscriber_that_disables_the_track_wants_no_layer_above_the_lowest() -> None:
    listener = LayersListener()
    engine, router, video = room(listener)
    now = engine.now_ms()
    router.update_subscription("PA_viewer", video.sid, enabled=False)
    router.on_timer(now)
    router.on_timer(now + DYNACAST_INTERVAL_MS + DYNACAST_OFF_AFTER_MS)
    assert listener.layers[-1][2] == {"q": True, "h": False, "f": False}

    router.update_subscription("PA_viewer", video.sid, enabled=True)
    router.on_timer(now + 2 * DYNACAST_INTERVAL_MS + DYNACAST_OFF_AFTER_MS)
    assert listener.layers[-1][2] == {"q": True, "h": True, "f": True}
    router.close()
