"""Issue 15 acceptance 3, live on 127.0.0.1: a Chromium viewer climbs to the top layer.

A Chromium page publishes 720p simulcast (q/h/f); a second one, in a 1920x1080 window,
subscribes only (``publish=0``) through netem's TURN relay with an 8 Mbit/s downlink.
It must be on f within 6 s of joining and stay there.

What kept Chromium viewers on h: not Chrome's feedback (the figures below
show every probe packet, an RTX copy on the viewer's RTX SSRC, reported received in
its transport-wide CC feedback) but the viewer's own tile. The web client laid tiles
out in ``auto-fill`` columns of >= 320 px, so even a lone remote tile rendered at
~366x274 px in a 1280-1920 px window; adaptive stream then caps it at h (640x360
covers it), the allocator wants only h, probing aims at 1.3x that, below the
1 Mbit/s start estimate, and no probe is ever sent. ``auto-fit`` columns let the
tiles of a small call fill the row.

Prints one ``CHROMIUM_VIEWER {...}`` line with the figures (``pytest -s``): tile sizes,
size caps, probe packets sent vs reported received, probe results, the estimate.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from netem.turn import TurnRelay
from signaling.app import FerryServer

from .browser import chromium, needs_chromium
from .conftest import wait_until
from .test_adaptive import open_720p_page

JOIN_TO_TOP_S = 6.0
CAMERAS = 1
HOLD_S = 5.0


class ProbeLedger:
    """Which probe packets (transport-wide seq) went out, and what feedback said of them."""

    def __init__(self) -> None:
        self.sent: set[int] = set()
        self.received = 0
        self.lost = 0

    def wrap(self, subscriber: Any) -> None:
        est = subscriber.estimator
        history = subscriber.send_history
        on_probe_sent, on_feedback = est.on_probe_sent, history.on_feedback

        def probe_sent(cluster_id: int, seq: int, size: int, send_ms: float) -> None:
            self.sent.add(seq)
            on_probe_sent(cluster_id, seq, size, send_ms)

        def feedback(fb: Any, now_ms: float) -> Any:
            results = on_feedback(fb, now_ms)
            for r in results:
                if r.seq in self.sent:
                    if r.arrival_ms is None:
                        self.lost += 1
                    else:
                        self.received += 1
            return results

        est.on_probe_sent = probe_sent
        history.on_feedback = feedback


@pytest.mark.browser
@needs_chromium
async def test_chromium_viewer_on_8_mbit_reaches_the_top_layer_and_stays(server: FerryServer) -> None:
    room = "viewer8"
    relay = TurnRelay(
        "127.0.0.1", 0,
        profiles={"down8": "delay 20ms|delay 20ms rate 8mbit limit 400kb"},
        users={"viewer": "viewer-pw"},
        allowed_peers=[f"127.0.0.1:{server.engine.port}"],
    )
    await relay.start()
    cam_urls = [f"{server.http_url}/?room={room}&name=cam{i}&autojoin=1" for i in range(1, CAMERAS + 1)]
    viewer_url = (
        f"{server.http_url}/?room={room}&name=viewer&autojoin=1&publish=0&relay=1"
        f"&turn=turn:127.0.0.1:{relay.port}&turnuser=down8:viewer&turnpass=viewer-pw"
    )
    ledger = ProbeLedger()
    try:
        async with chromium() as browser:
            cams = [await open_720p_page(browser, url) for url in cam_urls]

            def video_tracks() -> list[Any]:
                r = server.rooms.rooms.get(room)
                return [] if r is None else [t for t in r.router.tracks.values() if t.kind == "video"]

            await wait_until(lambda: len(video_tracks()) == CAMERAS, 20.0)
            router = server.rooms.rooms[room].router
            tracks = video_tracks()
            for track in tracks:
                await wait_until(lambda t=track: t.available_layers(server.engine.now_ms()) == [0, 1, 2], 20.0)
            publishers = {t.participant_sid for t in tracks}
            # A 1920x1080 window: its tiles (its own, empty, and the camera's) render at
            # ~940x700 px, which f covers and h does not, so adaptive stream wants f.
            viewer_context = await browser.new_context(viewport={"width": 1920, "height": 1080})
            viewer_page = await viewer_context.new_page()
            viewer_page.ferry_errors = []
            viewer_page.on("pageerror", lambda exc: viewer_page.ferry_errors.append(str(exc)))
            await viewer_page.goto(viewer_url)

            def viewer() -> Any:
                return next((p for p in router.participants.values() if p.sid not in publishers), None)

            await wait_until(lambda: viewer() is not None, 15.0)
            t_join = time.monotonic()
            sub = viewer().subscriber

            def layers() -> tuple[Any, ...]:
                downs = [sub.down_tracks.get(t.sid) for t in tracks]
                return tuple(d.selector.current if d else None for d in downs)

            await wait_until(lambda: sub.estimator is not None, 10.0)
            ledger.wrap(sub)
            trace: list[tuple[float, Any, int]] = []
            reached: float | None = None
            while time.monotonic() - t_join < JOIN_TO_TOP_S + 2.0 and reached is None:
                now = layers()
                trace.append((round(time.monotonic() - t_join, 2), now, round(sub.estimate_bps(server.engine.now_ms()) / 1000)))
                if now == (2,) * CAMERAS:
                    reached = time.monotonic() - t_join
                await asyncio.sleep(0.1)
            held: set[Any] = set()
            if reached is not None:
                start = time.monotonic()
                while time.monotonic() - start < HOLD_S:
                    held.add(layers())
                    await asyncio.sleep(0.1)
            est = sub.estimator
            tiles = await viewer_page.evaluate(
                "[...document.querySelectorAll('#tiles video')].map(v => [v.clientWidth, v.clientHeight])"
            )
            print("CHROMIUM_VIEWER " + json.dumps({
                "viewer_tiles_px": tiles,
                "top_after_s": reached,
                "layers_while_holding": sorted(held, key=str),
                "estimate_kbps": round(sub.estimate_bps(server.engine.now_ms()) / 1000),
                "probe_packets_sent": len(ledger.sent),
                "probe_packets_reported_received": ledger.received,
                "probe_packets_reported_lost": ledger.lost,
                "probe_results_kbps": [None if b is None else round(b / 1000) for _, b in est.probe_results.results],
                "padding_sent": sub.padding_sent,
                "layer_prices_kbps": [[round(layer.last_bps / 1000) for layer in t.layers] for t in tracks],
                "size_caps": [getattr(sub.down_tracks[t.sid].selector, "size_cap", None) for t in tracks],
                "desired_kbps": round((est.probe_controller.desired_bps or 0) / 1000),
                "trace": trace[::5],
            }))
            assert reached is not None and reached <= JOIN_TO_TOP_S, trace
            assert held == {(2,) * CAMERAS}
            assert all(page.ferry_errors == [] for page in [*cams, viewer_page])
    finally:
        await relay.close()
