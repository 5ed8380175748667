"""A Chromium meeting recorded from the web client's button, and its live badge."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from signaling.app import FerryServer

from .browser import chromium, needs_chromium, open_page
from .conftest import make_config, wait_until
from .recorder_media import decode_count, probe
from .test_browser import _poll

pytestmark = [pytest.mark.browser, needs_chromium]

BADGE_SHOWN = "() => !document.getElementById('rec-badge').hidden"
BADGE_HIDDEN = "() => document.getElementById('rec-badge').hidden"
BUTTON_SHOWN = "() => !document.getElementById('record').hidden"


async def test_record_button_records_the_meeting_badge_shows_for_everyone_and_files_are_listed(
    tmp_path: Path,
) -> None:
    server = FerryServer(make_config(recordings_dir=str(tmp_path / "recordings")))
    await server.start()
    try:
        url = server.http_url + "/?room=meet&autojoin=1&name="
        async with chromium() as browser:
            host = await open_page(browser, url + "host")
            guest = await open_page(browser, url + "guest&record=0")  # a token without roomRecord
            for page in (host, guest):
                await _poll(page, "() => window.ferry.state === 'joined'", 15000)
            room = server.rooms.rooms["meet"]
            await wait_until(lambda: len(room.router.tracks) == 4, 15)
            assert await host.evaluate(BUTTON_SHOWN)
            assert not await guest.evaluate(BUTTON_SHOWN)  # only a token that may record shows it
            assert await guest.evaluate(BADGE_HIDDEN)
            await host.click("#record")
            for page in (host, guest):
                await _poll(page, BADGE_SHOWN, 5000)
            active = server.recordings._active["meet"]
            await wait_until(
                lambda: len(active.sinks) == 4 and all(s.file.frames > 50 for s in active.sinks.values()), 20
            )
            recording_id = await guest.evaluate("window.ferry.recording")
            assert recording_id == active.id
            # A live HLS stream of the meeting shows as "LIVE (HLS)" while it runs.
            await server.streams.start("meet", width=320, height=180)
            await _poll(guest, "() => !document.getElementById('live-badge').hidden", 5000)
            await server.streams.stop("meet")
            await _poll(guest, "() => document.getElementById('live-badge').hidden", 5000)
            assert server.recordings.active("meet") is not None  # the recording it followed goes on
            await host.click("#record")  # now "Stop recording"
            for page in (host, guest):
                await _poll(page, BADGE_HIDDEN, 5000)
            await wait_until(lambda: not server.recordings._stopping, 10)
            for page in (host, guest):
                assert page.ferry_errors == []
        token = server.token("meet", "ops", room_admin=True)
        async with aiohttp.ClientSession() as http, http.get(
            f"{server.http_url}/api/rooms/meet/recordings", headers={"Authorization": f"Bearer {token}"}
        ) as res:
            listing = json.loads(await res.text())
    finally:
        await server.stop()
    (entry,) = listing["recordings"]
    assert entry["id"] == recording_id and entry["state"] == "stopped"
    assert sorted(p["identity"].split("-")[0] for p in entry["participants"]) == ["guest", "host"]
    assert sorted(f["kind"] for f in entry["files"]) == ["audio", "audio", "video", "video"]
    for f in entry["files"]:
        path = str(Path(entry["dir"]) / f["file"])
        assert f["size"] > 0 and f["duration_s"] > 1.0
        frames = probe(path)[0]
        assert frames > 50 and decode_count(path) == frames
