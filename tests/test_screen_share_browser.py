"""Screen share from the web client, allocated before cameras.

A presenter page (720p camera in simulcast) shares its screen (Chromium's fake display
capture, two simulcast layers, content hint ``detail``); a second camera page joins
too. A viewer page behind netem's TURN relay with a 500 kbit/s downlink must get the
screen on its stage (decoded frames) and Ferry must give it the screen first: the
screen forwarded whenever the budget carries it (one short pause allowed beyond), a
camera never forwarded in its place beyond that pause. When sharing stops, the stage
empties for the viewer. Prints ``SCREEN {...}`` (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from media.routing.allocator import UP_HEADROOM
from media.routing.subscriber import AUDIO_BPS
from signaling.app import FerryServer

from .browser import chromium, needs_chromium, relayed_viewer
from .conftest import wait_until
from .test_adaptive import open_720p_page

DOWNLINK = "delay 20ms rate 500kbit limit 48kb"
WATCH_S = 8.0


@pytest.mark.browser
@needs_chromium
async def test_viewer_on_500_kbit_gets_the_shared_screen_before_any_camera(
    server: FerryServer,
) -> None:
    room = "lecture"
    async with (
        relayed_viewer(server, room, f"delay 20ms|{DOWNLINK}") as (relay, viewer_url),
        chromium() as browser,
    ):
        teacher = await open_720p_page(
            browser, f"{server.http_url}/?room={room}&name=teacher&autojoin=1"
        )
        student = await open_720p_page(
            browser, f"{server.http_url}/?room={room}&name=student&autojoin=1"
        )

        def tracks(source: str | None = None) -> list[Any]:
            r = server.rooms.rooms.get(room)
            if r is None:
                return []
            return [
                t
                for t in r.router.tracks.values()
                if t.kind == "video" and (source is None or t.source == source)
            ]

        await wait_until(lambda: len(tracks("camera")) == 2, 20.0)
        await teacher.wait_for_function(
            "window.ferry && window.ferry.state === 'joined'", timeout=10_000
        )
        await teacher.evaluate("window.ferry.shareScreen()")
        await wait_until(lambda: len(tracks("screen")) == 1, 10.0)
        (screen,) = tracks("screen")
        assert [layer.rid for layer in screen.layers] == ["h", "f"]
        cameras = tracks("camera")
        viewer = await browser.new_page()
        viewer.ferry_errors = []
        viewer.on("pageerror", lambda exc: viewer.ferry_errors.append(str(exc)))
        await viewer.goto(viewer_url)
        await viewer.wait_for_function(
            "window.ferry && window.ferry.stage().some(t => t.tsid !== 'local' && t.width > 0)",
            timeout=20_000,
        )
        router = server.rooms.rooms[room].router
        me = await viewer.evaluate("window.ferry.me.sid")
        sub = router.participants[me].subscriber
        # Watch the allocation: the screen is forwarded and carries the most.
        samples = []
        start = time.monotonic()
        while time.monotonic() - start < WATCH_S:
            now = server.engine.now_ms()
            row = {}
            for t in [screen, *cameras]:
                down = sub.down_tracks.get(t.sid)
                row[t.source + ":" + t.participant_sid[-4:]] = (
                    None
                    if down is None
                    else (
                        down.selector.paused,
                        down.selector.current,
                        round(down.stream.bitrate_bps(now) / 1000),
                    )
                )
            row["budget_kbps"] = round(sub._allocated_budget / 1000)
            row["screen_prices_kbps"] = [round(layer.last_bps / 1000) for layer in screen.layers]
            samples.append(row)
            await asyncio.sleep(0.5)
        stage = await viewer.evaluate("window.ferry.stage()")
        estimate = sub.estimate_bps(server.engine.now_ms())
        print(
            "SCREEN "
            + json.dumps(
                {
                    "stage": stage,
                    "estimate_kbps": round((estimate or 0) / 1000),
                    "samples": samples[::2],
                }
            )
        )
        screen_key = next(k for k in samples[0] if k.startswith("screen"))
        camera_keys = [k for k in samples[0] if k.startswith("camera")]
        # The screen is forwarded whenever the budget carries it. A pause is the
        # budget's doing when, at that sample or in the second before (resuming waits
        # RESUME_HOLD_MS), the budget less the two audio tracks was under what resuming
        # the screen's low layer needs: on this shared 2-core machine, late in a full
        # run, the estimate of this 500 kbit/s link (its TURN relay runs on the test's
        # own event loop) dips to 80-350 kbit/s, and feedback late by 300 ms reads as an
        # outage (budget 0). Beyond those, one short pause is allowed (and it may be the
        # last sample): the layer is priced at its recent peak, and a screen keyframe's
        # peak can briefly price it above the budget, when the allocator hands what is
        # left to a camera.
        watched = samples[2:]
        forwarded = [row[screen_key] is not None and not row[screen_key][0] for row in watched]

        def budget_short(i: int) -> bool:
            return any(
                row["budget_kbps"] - 2 * AUDIO_BPS / 1000 < row["screen_prices_kbps"][0] * UP_HEADROOM
                for row in watched[max(0, i - 2) : i + 1]
            )

        unexplained = [i for i, on in enumerate(forwarded) if not on and not budget_short(i)]
        assert len(unexplained) <= 2, samples
        assert sum(forwarded) >= 2, samples  # it does get through
        assert any(forwarded[-3:]) or all(budget_short(i) for i in range(len(watched) - 3, len(watched))), samples
        # A camera is forwarded while the screen is paused only in those short pauses, or
        # while the budget cannot carry the screen (what is left then goes to a camera):
        # the screen's bitrate may be below a camera's (a still screen codes cheaply), but
        # a camera never takes its place.
        cameras_only = [
            row
            for i, (row, on) in enumerate(zip(watched, forwarded, strict=True))
            if not on and not budget_short(i) and any(row[k] is not None and not row[k][0] for k in camera_keys)
        ]
        assert len(cameras_only) <= 2, samples
        assert any(t["name"] == "teacher's screen" and t["width"] > 0 for t in stage), stage
        # Stopping the share empties the viewer's stage.
        await teacher.evaluate("window.ferry.shareScreen()")
        await viewer.wait_for_function("window.ferry.stage().length === 0", timeout=10_000)
        await wait_until(lambda: not tracks("screen"), 5.0)
        assert all(p.ferry_errors == [] for p in (teacher, student, viewer))
