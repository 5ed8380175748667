"""Real browsers in one room through Ferry."""

from __future__ import annotations

import asyncio

import pytest

from .browser import chromium, needs_chromium, open_page
from .conftest import wait_until

pytestmark = [pytest.mark.browser, needs_chromium]


async def _stats(page) -> dict:
    return await page.evaluate("window.ferry.stats()")


async def _poll(page, predicate_js: str, timeout_ms: int = 10000) -> None:
    """Evaluate ``predicate_js`` (it may be async) every 100 ms until it is truthy.

    Not ``page.wait_for_function``: it does not await an async predicate, and the
    Promise it gets back is truthy, so the wait would pass at once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_ms / 1000.0
    while not await page.evaluate(predicate_js):
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout_ms} ms: {predicate_js[:200]}")
        await asyncio.sleep(0.1)


RECEIVING = """async () => {
  const want = %d;
  const s = await window.ferry.stats();
  const ok = Object.values(s).filter(p => p.videoFramesDecoded > 0 && p.audioSamplesReceived > 0);
  if (ok.length < want) return false;
  window.__snap = window.__snap || {};
  const prev = window.__snap; window.__snap = s;
  return ok.every(p => true) && Object.keys(prev).length >= want &&
    Object.entries(s).every(([k, p]) => !prev[k] || (p.videoFramesDecoded > prev[k].videoFramesDecoded &&
                                                      p.audioSamplesReceived > prev[k].audioSamplesReceived));
}"""


async def test_three_browsers_join_see_each_other_and_leave(server):
    url = server.http_url + "/?room=class&autojoin=1&name="
    async with chromium() as browser:
        a = await open_page(browser, url + "alice")
        b = await open_page(browser, url + "bob")
        # Each decodes the other's video and receives audio within 10 s, still rising.
        await _poll(a, RECEIVING % 1, 10000)
        await _poll(b, RECEIVING % 1, 10000)
        # A late joiner gets both existing participants.
        c = await open_page(browser, url + "carol")
        await _poll(c, RECEIVING % 2, 10000)
        # Simulcast arrived from the browsers: three layers per video track.
        room = server.rooms.rooms["class"]

        def videos():
            return [t for t in room.router.tracks.values() if t.kind == "video"]

        await wait_until(lambda: len(videos()) == 3, 10)
        assert all(len(t.layers) == 3 for t in videos())
        # Chrome sends every layer once its estimate allows (Ferry sends TWCC feedback).
        await wait_until(lambda: all(len(t.available_layers(server.engine.now_ms())) >= 2 for t in videos()), 10)
        # Leaving disappears from the others within 2 s.
        bob_sid = await b.evaluate("window.ferry.me.sid")
        await b.click("#leave")
        for page in (a, c):
            await _poll(
                page,
                f"() => !window.ferry.participants().some(p => p.sid === '{bob_sid}')",
                2000,
            )
        await wait_until(lambda: bob_sid not in room.participants, 2)
        for page in (a, b, c):
            assert page.ferry_errors == []


async def test_a_hidden_tile_stops_its_video_and_showing_it_resumes(server):
    """web/tiles.js tells Ferry when a remote tile is off screen (IntersectionObserver)
    or the tab is hidden: Ferry stops forwarding that video until it is seen again."""
    url = server.http_url + "/?room=tiles&autojoin=1&name="
    async with chromium() as browser:
        a = await open_page(browser, url + "alice")
        b = await open_page(browser, url + "bob")
        await _poll(b, RECEIVING % 1, 10000)
        room = server.rooms.rooms["tiles"]
        bob_sid = await b.evaluate("window.ferry.me.sid")
        alice_sid = await b.evaluate("window.ferry.participants()[0].sid")

        def down():
            downs = room.router.participants[bob_sid].subscriber.down_tracks.values()
            return next(
                d for d in downs if d.track.kind == "video" and d.track.participant_sid == alice_sid
            )

        await wait_until(lambda: down().selector.enabled and down().packets_sent > 0, 5)
        video = down().track
        await b.evaluate("document.querySelector('.tile.remote').style.display = 'none'")
        await wait_until(lambda: not down().selector.enabled, 5)
        sent = down().packets_sent
        decoded = await b.evaluate("window.ferry.stats()")

        def received() -> int:
            return sum(layer.stream.packets_received for layer in video.layers if layer.stream)

        before = received()
        await wait_until(lambda: received() > before + 50, 5)  # alice keeps publishing...
        assert down().packets_sent == sent  # ...and none of it goes to bob while hidden
        await b.evaluate("document.querySelector('.tile.remote').style.display = ''")
        await wait_until(lambda: down().selector.enabled, 5)
        frames = max(p.get("videoFramesDecoded", 0) for p in decoded.values())
        await _poll(
            b,
            f"async () => Object.values(await window.ferry.stats()).some(p => p.videoFramesDecoded > {frames + 10})",
            10000,
        )
        for page in (a, b):
            assert page.ferry_errors == []
