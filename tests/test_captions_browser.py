"""Captions in the web client: headless Chromium pages in a room
where a LiteClient speaks an espeak-ng sentence, captioned by Whisper tiny.en.

The line under the speaker's tile shows the caption, the transcript panel keeps it, a
page joining afterwards finds it in its transcript (the join reply's last minute), and
the CC button of a room admin turns captions off for everyone.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

import pytest

from signaling.app import FerryServer

from .asr_media import wer
from .browser import chromium, needs_chromium, open_page
from .captions_live import Script, publish_script
from .conftest import make_config, wait_until
from .test_browser import _poll

pytestmark = [pytest.mark.browser, needs_chromium]

SENTENCE = "Please open the window before the meeting starts."


async def test_a_caption_shows_under_the_speakers_tile_and_in_the_transcript(tmp_path: Path) -> None:
    server = FerryServer(make_config(recordings_dir=str(tmp_path / "rec"), captions="whisper"))
    await server.start()
    speaker = None
    try:
        await wait_until(lambda: server.captions.available().get("whisper") == "ready", 60)

        def page_url(identity: str, **grants: bool) -> str:
            token = server.token("cc", identity, name=identity.title(), **grants)
            return server.http_url + "/?" + urlencode({"autojoin": 1, "publish": 0, "token": token, "url": server.ws_url})

        async with chromium() as browser:
            host = await open_page(browser, page_url("host", room_admin=True))
            await _poll(host, "() => window.ferry.state === 'joined'", 15000)
            assert await host.evaluate("window.ferry.captions") == {
                "enabled": True, "backend": "whisper", "language": "en", "by": None, "canToggle": True
            }
            assert await host.evaluate("!document.getElementById('cc').hidden")
            assert await host.evaluate("!document.getElementById('cc-badge').hidden")
            script = Script().add_silence(0.5).add_line(SENTENCE).add_silence(1.0)
            speaker = await publish_script(server, "cc", "teacher", script, tail_s=30)
            sid = speaker.participant["sid"]
            line = f"window.ferry.captionLine({sid!r})"
            # The caption line under the teacher's tile: words while speaking, then the final.
            await _poll(host, f"() => {{ const l = {line}; return l && l.visible && l.text.length > 0; }}", 20000)
            await _poll(host, "() => window.ferry.transcript().length > 0", 20000)
            (entry,) = await host.evaluate("window.ferry.transcript()")
            assert entry["name"] == "Teacher" and wer(SENTENCE, entry["text"]) <= 0.2, entry
            shown = await host.evaluate(line)
            assert shown["visible"] and not shown["partial"] and shown["text"] == entry["text"]
            # The caption sits inside the teacher's tile, under its video.
            assert await host.evaluate(
                f"() => {{ const t = document.querySelector('.tile[data-sid=\"{sid}\"]');"
                " const v = t.querySelector('video'), c = t.querySelector('.caption');"
                " return c.getBoundingClientRect().top >= v.getBoundingClientRect().bottom - 1; }"
            )
            # A page joining now gets the last minute of finals.
            guest = await open_page(browser, page_url("guest"))
            await _poll(guest, "() => window.ferry.state === 'joined'", 15000)
            assert [e["text"] for e in await guest.evaluate("window.ferry.transcript()")] == [entry["text"]]
            assert await guest.evaluate("document.getElementById('cc').hidden")  # no roomAdmin: no button
            # The host's CC button turns captions off for the room; the guest's badge goes.
            await host.click("#cc")
            await _poll(guest, "() => document.getElementById('cc-badge').hidden", 5000)
            assert (await guest.evaluate("window.ferry.captions"))["by"] == "host"
            assert server.captions.state("cc")["enabled"] is False  # type: ignore[index]
            for page in (host, guest):
                assert page.ferry_errors == []
    finally:
        if speaker is not None:
            await speaker.close()
        await server.stop()
