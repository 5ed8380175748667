"""Per-participant, per-track and per-SSRC engine state is released, without sockets.

A room that lives for hours sees thousands of publishers come and go past the same
viewer (tests/test_soak.py measures that against a server process). Here the same churn
runs on one Router in memory (the engine's socket is never opened): a real Chromium
simulcast offer is published, a viewer subscribes to its tracks, the timers run
(dynacast, allocation) and the publisher leaves. After the churn every map keyed by
track, SSRC, transport or participant must be back to the viewer's own entries, and
what a departed publisher held (transports, DTLS and SRTP state, which live in C memory)
must go with reference counting rather than wait for the cyclic GC.
"""

from __future__ import annotations

import gc
import weakref

from media.engine import Engine, EngineConfig
from media.heap import HeapTrimmer
from media.routing.router import MediaParticipant, Router
from tests.router_setup import publish, subscribe

CYCLES = 12


def state(router: Router, viewer: MediaParticipant) -> dict[str, int]:
    """The size of every map that grows with tracks, SSRCs, transports or participants."""
    sub = viewer.subscriber
    mux = router.engine.mux
    return {
        "participants": len(router.participants),
        "tracks": len(router.tracks),
        "ssrcs": len(router._ssrcs),
        "publisher_layers": len(router.publisher_layers),
        "layer_needed": len(router._layer_needed_ms),
        "down_tracks": len(sub.down_tracks),
        "down_by_ssrc": len(sub._by_ssrc),
        "allocator": len(sub.allocator._last_change_ms),
        "mux_ufrags": len(mux._by_ufrag),
        "mux_addrs": len(mux._by_addr),
    }


async def test_publish_subscribe_leave_churn_leaves_only_the_viewer() -> None:
    engine = Engine(EngineConfig(port=0))
    router = engine.router("churn")
    viewer = router.add_participant("PA_viewer")
    idle = state(router, viewer)
    mid = 0
    now = engine.now_ms()
    for cycle in range(CYCLES):
        publisher = router.add_participant(f"PA_pub{cycle}")
        tracks = publish(publisher)
        for track in tracks:
            subscribe(viewer, track, mid)
            mid += 1
        # Timers as the engine's ticker runs them: dynacast and the layer policy per
        # room, the allocator per subscriber (it runs from on_timer once connected).
        for _ in range(3):
            now += 600.0
            router.on_timer(now)
            viewer.subscriber.allocate(now)
        live = state(router, viewer)
        assert live["tracks"] == 2 and live["down_tracks"] == 2
        assert live["publisher_layers"] == 1 and live["layer_needed"] == 3  # q, h, f
        assert live["allocator"] >= 1  # the video track's last layer change
        router.remove_participant(publisher.sid)

    assert state(router, viewer) == idle
    # Only the viewer's own RTCP SSRCs stay reserved.
    assert router._ssrcs == {viewer.publisher.rtcp_ssrc, viewer.subscriber.rtcp_ssrc}
    router.remove_participant(viewer.sid)
    assert not router._ssrcs and not engine.mux._by_ufrag


async def test_a_departed_publisher_is_freed_without_the_cyclic_gc() -> None:
    """Cycles around a closed transport or track would keep OpenSSL's and libsrtp's
    memory until a full collection, which under churn comes every few hundred
    publishers: RSS then climbs in a sawtooth and glibc keeps the high-water mark."""
    engine = Engine(EngineConfig(port=0))
    router = engine.router("churn")
    viewer = router.add_participant("PA_viewer")
    gc.collect()
    gc.disable()
    try:
        publisher = router.add_participant("PA_pub")
        for mid, track in enumerate(publish(publisher)):
            subscribe(viewer, track, mid)
        held = [
            publisher.publisher,
            publisher.publisher.transport,
            publisher.publisher.transport.dtls,
            publisher.subscriber.transport.dtls,
        ]
        refs = [weakref.ref(obj) for obj in held]
        del held, track
        router.remove_participant(publisher.sid)
        del publisher
        alive = [type(r()).__name__ for r in refs if r() is not None]
        assert alive == []
    finally:
        gc.enable()


def test_heap_trimmer_trims_once_per_interval() -> None:
    calls: list[float] = []
    now = 0.0

    def trim(pad: int) -> int:
        assert pad == 0
        calls.append(now)
        return 1

    trimmer = HeapTrimmer(interval_ms=10_000.0, trim=trim)
    assert trimmer.available
    for now in range(0, 35_000, 20):  # the engine's 20 ms tick
        trimmer.on_timer(float(now))
    assert calls == [10_000.0, 20_000.0, 30_000.0] and trimmer.trims == 3


def test_heap_trimmer_without_malloc_trim_does_nothing() -> None:
    trimmer = HeapTrimmer(trim=None)
    trimmer._trim = None  # as on a C library without malloc_trim (musl, macOS)
    trimmer.on_timer(0.0)
    trimmer.on_timer(1e9)
    assert not trimmer.available and trimmer.trims == 0
