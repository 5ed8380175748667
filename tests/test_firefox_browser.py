"""A Firefox page and a Chromium page meet through Ferry: media both ways, simulcast from both.

Firefox is Debian's firefox-esr in headless mode, driven over WebDriver BiDi
(``tests.firefox``); skipped only when it is not installed. Both pages publish a camera
in three simulcast layers and a microphone; each must decode the other's video and
play its audio, and Ferry must receive at least two of the three layers of each camera
(all three on an idle machine; Chrome drops its top layer when the CPU is short, and
more of them when it reports its encoder limited by CPU). Prints
``FIREFOX {...}`` (``pytest -s``) with each layer's rate and Ferry's drop counters:
what Firefox sends on its lowest layer is compared with what the page asked (150 kbit/s).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from signaling.app import FerryServer

from .browser import chromium, needs_chromium
from .conftest import make_config, wait_until
from .firefox import firefox, media_address, needs_firefox
from .test_adaptive import open_720p_page

ROOM = "mixed"
LOW_LAYER_MAX_BPS = 150_000  # the web client's q encoding


def _layer_rates(server: FerryServer) -> dict[str, list[int]]:
    router = server.rooms.rooms[ROOM].router
    now = server.engine.now_ms()
    out = {}
    for t in router.tracks.values():
        if t.kind == "video":
            out[t.participant_sid] = [
                round(layer.stream.bitrate_bps(now)) if layer.stream else 0 for layer in t.layers
            ]
    return out


@pytest.mark.browser
@needs_chromium
@needs_firefox
async def test_firefox_and_chromium_meet_with_simulcast_both_ways() -> None:
    with media_address() as address:
        # Pages load from 127.0.0.1 (a secure context for getUserMedia); media goes to
        # the namespace's own veth address, the only one Firefox's ICE gathers on.
        server = FerryServer(make_config(host="0.0.0.0", announce_ips=[address], allow_dev_keys=True))
        await server.start()
        try:
            await _meeting(server)
        finally:
            await server.stop()


async def _meeting(server: FerryServer) -> None:
    base = f"http://127.0.0.1:{server.http_port}"
    async with chromium() as browser, firefox() as ff:
        chrome = await open_720p_page(
            browser, f"{base}/?room={ROOM}&name=chrome&autojoin=1"
        )
        page = await ff.new_page()
        await page.goto(f"{base}/?room={ROOM}&name=firefox&autojoin=1")
        await page.wait_for("window.ferry && window.ferry.state === 'joined'", 20.0)

        def video_tracks() -> list[Any]:
            r = server.rooms.rooms.get(ROOM)
            return [] if r is None else [t for t in r.router.tracks.values() if t.kind == "video"]

        await wait_until(lambda: len(video_tracks()) == 2, 20.0)
        for track in video_tracks():
            assert [layer.rid for layer in track.layers] == ["q", "h", "f"]
            # Simulcast: at least two layers flowing (a loaded machine makes Chrome drop f
            # for CPU; which layers flow after that is the allocator's business).
            try:
                await wait_until(lambda t=track: len(t.available_layers(server.engine.now_ms())) >= 2, 20.0)
            except AssertionError:
                layers = [(x.rid, x.ssrc, x.stream and x.stream.packets_received, x.width, x.height) for x in track.layers]
                pytest.fail(
                    f"{track.participant_sid} layers {layers} available {track.available_layers(server.engine.now_ms())}"
                    f" drops {server.engine.snapshot()['drops']}"
                )
        decoded = (
            "window.ferry.stats().then(s => Object.values(s).map(p => [p.name, p.videoFramesDecoded,"
            " p.audioSamplesReceived, p.videoWidth]))"
        )
        await page.wait_for(
            f"{decoded}.then(r => r.length === 1 && r[0][1] > 30 && r[0][2] > 0)", 20.0
        )
        await chrome.wait_for_function(
            f"{decoded}.then(r => r.length === 1 && r[0][1] > 30 && r[0][2] > 0)", timeout=20_000
        )
        # Rates once both have settled (their estimates climb over the first seconds).
        start = time.monotonic()
        snap0 = server.engine.snapshot()
        await wait_until(lambda: time.monotonic() - start > 8.0, 10.0)
        rates = _layer_rates(server)
        snap1 = server.engine.snapshot()
        sids = {t.participant_sid: t for t in video_tracks()}
        names = {p.sid: p.name for p in server.rooms.rooms[ROOM].participants.values()}
        drops = {
            k: v - snap0["drops"].get(k, 0)
            for k, v in snap1["drops"].items()
            if v - snap0["drops"].get(k, 0)
        }
        local = {
            "chrome": await chrome.evaluate("window.ferry.localStats()"),
            "firefox": await page.evaluate("window.ferry.localStats()"),
        }
        # A browser whose encoder is short of CPU sends fewer layers (Chrome: as few as
        # one once it scales its camera down far enough); what it sends Ferry forwards.
        cpu_limited = {
            name: any(e["kind"] == "video" and e["qualityLimitationReason"] == "cpu" for e in s["encodings"])
            for name, s in local.items()
        }
        figures = {
            "layer_kbps": {names[s]: [round(r / 1000) for r in v] for s, v in rates.items()},
            "encodings": {
                name: [(e["rid"], e["frameHeight"], e["qualityLimitationReason"]) for e in s["encodings"]
                       if e["kind"] == "video"]
                for name, s in local.items()
            },
            "firefox_sees": await page.evaluate(decoded),
            "chrome_sees": await chrome.evaluate(decoded),
            "drops_in_8s": drops,
            "firefox_errors": page.errors,
        }
        print("FIREFOX " + json.dumps(figures))
        assert len(sids) == 2
        for sid, per_layer in rates.items():
            assert sum(1 for r in per_layer if r > 0) >= (1 if cpu_limited[names[sid]] else 2), figures
        firefox_sid = next(s for s, n in names.items() if n == "firefox")
        assert rates[firefox_sid][0] < 2 * LOW_LAYER_MAX_BPS, figures
        assert page.errors == [] and chrome.ferry_errors == [], figures
