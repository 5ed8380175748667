"""The web client receives tracks on recycled subscriber m-lines.

One Python publisher stays; three more come and go in turn. Chromium keeps one
transceiver per mid, and Ferry gives each next publisher's audio and video the two
m-lines the previous one left inactive (same SSRCs, new msid), beside two live ones.
"""

from __future__ import annotations

import asyncio

import pytest

from clients.client import FerryClient, allow_loopback
from clients.media_sources import TestPatternVideoTrack, ToneAudioTrack

from .browser import chromium, needs_chromium, open_page

pytestmark = [pytest.mark.browser, needs_chromium]

# Frames and samples of one participant, read twice: both must grow (a stats object of
# the m-line's previous SSRC may linger, but it does not grow).
GROWING = """async (psid) => {
  const read = async () => (await window.ferry.stats())[psid] || {videoFramesDecoded: 0, audioSamplesReceived: 0};
  const a = await read();
  await new Promise((r) => setTimeout(r, 300));
  const b = await read();
  const p = window.ferry.participants().find((x) => x.sid === psid);
  return !!p && p.hasVideo && p.hasAudio && b.videoFramesDecoded > a.videoFramesDecoded &&
    b.audioSamplesReceived > a.audioSamplesReceived;
}"""


async def _until(page, psid: str, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await page.evaluate(GROWING, psid):
        if loop.time() > deadline:
            raise AssertionError(f"the page does not receive {psid} within {timeout_s} s")


async def test_web_client_receives_each_next_publisher_on_recycled_mlines(server):
    room = "recycle-web"
    with allow_loopback():
        async with chromium() as browser:
            page = await open_page(browser, server.http_url + f"/?room={room}&autojoin=1&name=viewer")
            await _until_joined(page)
            viewer_sid = await page.evaluate("window.ferry.me.sid")
            watcher = server.rooms.rooms[room].participants[viewer_sid]
            steady = FerryClient(connect_timeout=15.0)
            try:
                await steady.connect(server.ws_url)
                await steady.join(server.token(room, "steady"))
                await steady.publish(ToneAudioTrack(), TestPatternVideoTrack())
                await _until(page, steady.participant["sid"], 15)
                for generation in range(3):
                    publisher = FerryClient(connect_timeout=15.0)
                    try:
                        await publisher.connect(server.ws_url)
                        await publisher.join(server.token(room, f"pub{generation}"))
                        await publisher.publish(ToneAudioTrack(), TestPatternVideoTrack())
                        await _until(page, publisher.participant["sid"], 15)
                        await _until(page, steady.participant["sid"], 5)
                    finally:
                        await publisher.leave()
                    await publisher.wait_for(
                        lambda: not watcher.offer_pending
                        and all(s.free for s in watcher.sections if s.track_sid is None),
                        timeout=10,
                    )
                assert [s.description.mid for s in watcher.sections] == ["0", "1", "2", "3"]
            finally:
                await steady.close()
            assert page.ferry_errors == []
            status = await page.evaluate("document.getElementById('status')?.textContent || ''")
            assert "subscriber" not in status, status


async def _until_joined(page) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while not await page.evaluate("!!(window.ferry.me && window.ferry.me.sid)"):
        if loop.time() > deadline:
            raise AssertionError("the page did not join")
        await asyncio.sleep(0.1)
