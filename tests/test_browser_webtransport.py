"""A browser on WebTransport (or WebSocket) meets a Python client on raw QUIC."""

from __future__ import annotations

import asyncio

import pytest

from clients.client import FerryClient, allow_loopback
from clients.media_sources import TestPatternVideoTrack, ToneAudioTrack

from .browser import chromium, needs_chromium, open_page

pytestmark = [pytest.mark.browser, needs_chromium]

RECEIVING = """async () => {
  const s = await window.ferry.stats();
  return Object.values(s).some(p => p.videoFramesDecoded > 10 && p.audioSamplesReceived > 0);
}"""


async def _poll(page, predicate_js: str, timeout_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await page.evaluate(predicate_js):
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout_s} s: {predicate_js[:200]}")
        await asyncio.sleep(0.1)


async def _meet_python_client_over_quic(server, page, room: str) -> None:
    """The page (already joining ``room``) and a raw-QUIC Python client send media both ways."""
    with allow_loopback():
        client = FerryClient(connect_timeout=15.0)
        try:
            await client.connect(server.quic_url)
            await client.join(server.token(room, "python"))
            await client.publish(TestPatternVideoTrack(), ToneAudioTrack())
            await _poll(page, "() => window.ferry.state === 'joined'")
            page_sid = await page.evaluate("window.ferry.me.sid")
            await client.wait_for(
                lambda: (s := client.sink_for(page_sid, "video")) and s.received_frames > 10,
                timeout=20,
                message="no video from the page",
            )
            await _poll(page, RECEIVING, 20)
        finally:
            await client.close()


@pytest.mark.parametrize("transport", ["webtransport", "ws"])
async def test_page_meets_a_raw_quic_python_client(server, transport: str) -> None:
    async with chromium() as browser:
        query = "" if transport == "webtransport" else "&transport=ws"
        page = await open_page(browser, server.http_url + f"/?room=wt-{transport}&autojoin=1&name=page{query}")
        await _meet_python_client_over_quic(server, page, f"wt-{transport}")
        assert await page.evaluate("window.ferry.transport") == transport
        label = await page.text_content("#transport")
        assert label == ("WebTransport" if transport == "webtransport" else "WebSocket")
        kinds = [getattr(s, "transport", "ws") for s in server.quic.sessions()]
        assert kinds.count("webtransport") == (1 if transport == "webtransport" else 0)
        assert page.ferry_errors == []


async def test_page_falls_back_to_websocket_without_webtransport(server) -> None:
    # Neither --disable-features=WebTransport nor --disable-blink-features=WebTransport
    # removes window.WebTransport from an http://127.0.0.1 page on this Chromium, so the
    # page is made a browser without it before its scripts run.
    async with chromium() as browser:
        context = await browser.new_context()
        await context.add_init_script("delete window.WebTransport;")
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(server.http_url + "/?room=wt-off&autojoin=1&name=page")
        assert await page.evaluate("typeof window.WebTransport") == "undefined"
        await _meet_python_client_over_quic(server, page, "wt-off")
        assert await page.evaluate("window.ferry.transport") == "ws"
        assert await page.text_content("#transport") == "WebSocket"
        assert all(s.transport == "quic" for s in server.quic.sessions())
        assert errors == []
