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


def _kill_signaling(server, sid: str) -> None:
    """Abort the connection carrying ``sid``'s signaling from the server side."""
    for conn in list(server._connections):
        if conn.session is not None and conn.session.participant is not None and conn.session.participant.sid == sid:
            conn.abort()
            return
    for conn in list(server.quic.connections):
        session = conn.peer.session if conn.peer is not None else None
        if session is not None and session.participant is not None and session.participant.sid == sid:
            conn.abort(0x12, "killed by the test")
            return
    raise AssertionError(f"no signaling connection for {sid}")


@pytest.mark.parametrize("transport", ["webtransport", "ws"])
async def test_page_resumes_after_its_signaling_is_killed_mid_call(server, transport: str) -> None:
    room = f"wt-resume-{transport}"
    query = "" if transport == "webtransport" else "&transport=ws"
    async with chromium() as browser:
        page = await open_page(browser, server.http_url + f"/?room={room}&autojoin=1&name=page{query}")
        with allow_loopback():
            client = FerryClient(connect_timeout=15.0)
            try:
                await client.connect(server.quic_url)
                await client.join(server.token(room, "python"))
                tracks = await client.publish(TestPatternVideoTrack(), ToneAudioTrack())
                await _poll(page, "() => window.ferry.state === 'joined'")
                page_sid = await page.evaluate("window.ferry.me.sid")
                await _poll(page, RECEIVING, 20)
                await client.wait_for(lambda: (s := client.sink_for(page_sid, "video")) and s.received_frames > 10)
                await page.evaluate(
                    """() => { window.__states = [];
                      new MutationObserver(() => window.__states.push(document.getElementById('state').textContent))
                        .observe(document.getElementById('state'), {childList: true, characterData: true, subtree: true}); }"""
                )
                loop = asyncio.get_running_loop()
                killed_at = loop.time()
                _kill_signaling(server, page_sid)
                # An event while the page is away: it must arrive with the replay.
                room_ = server.rooms.rooms[room]
                python = room_.participants[client.participant["sid"]]
                track = next(t for t in python.tracks() if t.sid == tracks[0]["sid"])
                track.muted = True
                room_.track_muted(python, track)
                await _poll(page, "() => window.ferry.reconnects === 1 && window.ferry.state === 'joined'", 3)
                assert loop.time() - killed_at < 3.0
                assert "reconnecting" in await page.evaluate("window.__states")
                assert await page.evaluate("window.ferry.me.sid") == page_sid
                assert await page.evaluate("window.ferry.transport") == transport
                muted = f"() => window.ferry.events.some(e => e.type === 'track_muted' && e.track_sid === '{track.sid}')"
                await _poll(page, muted, 3)
                frames = client.sink_for(page_sid, "video").received_frames
                await client.wait_for(lambda: client.sink_for(page_sid, "video").received_frames > frames + 10)
                await page.evaluate("window.__snap = undefined")
                await _poll(page, RECEIVING, 10)
                assert not any(e["type"] == "participant_left" for e in client.event_log)
                assert page.ferry_errors == []
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


async def test_page_restarts_ice_on_both_connections_and_media_keeps_flowing(server) -> None:
    async with chromium() as browser:
        page = await open_page(browser, server.http_url + "/?room=ice-restart&autojoin=1&name=page&transport=ws")
        with allow_loopback():
            client = FerryClient(connect_timeout=15.0)
            try:
                await client.connect(server.quic_url)
                await client.join(server.token("ice-restart", "python"))
                await client.publish(TestPatternVideoTrack(), ToneAudioTrack())
                await _poll(page, "() => window.ferry.state === 'joined'")
                page_sid = await page.evaluate("window.ferry.me.sid")
                await _poll(page, RECEIVING, 20)
                sink = lambda: client.sink_for(page_sid, "video")  # noqa: E731
                await client.wait_for(lambda: sink() and sink().received_frames > 10, timeout=20)
                media = server.rooms.rooms["ice-restart"].participants[page_sid].media
                before = (media.publisher.transport.ice_ufrag, media.subscriber.transport.ice_ufrag)
                await page.evaluate("window.ferry.restartIce()")
                after = (media.publisher.transport.ice_ufrag, media.subscriber.transport.ice_ufrag)
                assert after[0] != before[0] and after[1] != before[1]
                # The browser runs checks with the new credentials on both connections: the
                # agents drop the old ones once a check used the new.
                await client.wait_for(
                    lambda: media.publisher.transport.ice._old_creds is None
                    and media.subscriber.transport.ice._old_creds is None,
                    timeout=10,
                    message="the browser did not switch to the restarted credentials",
                )
                frames = sink().received_frames
                await client.wait_for(lambda: sink().received_frames > frames + 20, timeout=10, message="page media stopped")
                await page.evaluate("window.__snap = undefined")
                await _poll(page, RECEIVING, 10)
                assert page.ferry_errors == []
            finally:
                await client.close()


async def test_page_falls_back_to_websocket_when_webtransport_does_not_connect(server) -> None:
    await server.quic.stop()  # the browser has WebTransport, but nothing answers on UDP 7881
    async with chromium() as browser:
        page = await open_page(browser, server.http_url + "/?room=wt-down&autojoin=1&name=page")
        assert await page.evaluate("typeof window.WebTransport") == "function"
        await _poll(page, "() => window.ferry.state === 'joined'", 10)
        assert await page.evaluate("window.ferry.transport") == "ws"
        assert page.ferry_errors == []
