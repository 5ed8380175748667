"""Tests of the Python client, media sources and web client that need no Ferry server.

A tiny aiohttp app in this file stands in for the server: it speaks hello/join/ping,
answers with errors, and for the media tests acts as a fake SFU built on aiortc (it
answers ``publish`` offers and pushes a ``subscriber_offer`` carrying a "bot"
participant's test pattern and tone, with ``a=msid:<participant_sid> <track_sid>`` as
Ferry does). That exercises the client's whole signaling and media path; how Ferry
itself behaves is the integration tests' business.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioice.ice
import pytest
from aiohttp import WSMsgType, web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from clients.chromium import CHROMIUM_ARGS, CHROMIUM_PATH
from clients.client import (
    FerryClient,
    FerryError,
    RequestTimeout,
    allow_loopback,
)
from clients.media_sources import (
    TestPatternVideoTrack,
    ToneAudioTrack,
    read_pattern_counter,
)
from signaling.sdp import parse_media_sections

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
CHROMIUM = CHROMIUM_PATH
CHROMIUM_FLAGS = [a for a in CHROMIUM_ARGS if a != "--headless=new"]
BOT_SID = "PA_bot"
BOT_VIDEO = "TR_botv"
BOT_AUDIO = "TR_bota"


# --------------------------------------------------------------------------- fake server


@dataclass
class Session:
    """Server-side state of one WebSocket connection of the fake server."""

    ws: web.WebSocketResponse
    pub: RTCPeerConnection | None = None
    sub: RTCPeerConnection | None = None
    received: dict[str, int] = field(default_factory=dict)  # kind -> frames from publisher
    publish_requests: list[dict[str, Any]] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


class FakeFerry:
    """Just enough of Ferry's signaling (and, with ``media=True``, an aiortc SFU stand-in)."""

    def __init__(self, *, media: bool = False, simulcast_answer: bool = False) -> None:
        self.media = media
        self.simulcast_answer = simulcast_answer
        self.sessions: list[Session] = []
        self.app = web.Application()
        self.app.router.add_get("/ws", self.ws_handler)
        self.app.router.add_get("/api/dev-token", self.dev_token)
        self.app.router.add_get("/", self.static("index.html"))
        # Every file of the page (its ES modules import one another).
        for path in sorted(WEB_DIR.iterdir()):
            if path.suffix in (".js", ".css", ".html"):
                self.app.router.add_get(f"/{path.name}", self.static(path.name))
        self.runner: web.AppRunner | None = None
        self.port = 0

    def static(self, name: str) -> Any:
        async def handler(_request: web.Request) -> web.StreamResponse:
            return web.FileResponse(WEB_DIR / name)

        return handler

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        for s in self.sessions:
            for t in s.tasks:
                t.cancel()
            for pc in (s.pub, s.sub):
                if pc is not None:
                    await pc.close()
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def dev_token(self, request: web.Request) -> web.Response:
        name = request.query.get("name", "")
        return web.json_response({"token": f"tok-{name}", "url": self.ws_url})

    async def ws_handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        session = Session(ws)
        self.sessions.append(session)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            req = json.loads(msg.data)
            session.requests.append(req)
            # One task per request so a slow handler does not hold up later requests.
            session.tasks.append(asyncio.ensure_future(self.handle(session, req)))
        return ws

    async def reply(self, s: Session, req: dict[str, Any], **fields: Any) -> None:
        await s.ws.send_json({"type": req["type"], "id": req["id"], "ok": True, **fields})

    async def error(self, s: Session, req: dict[str, Any], code: str, message: str) -> None:
        await s.ws.send_json(
            {
                "type": req["type"],
                "id": req.get("id"),
                "ok": False,
                "error": {"code": code, "message": message},
            }
        )

    async def handle(self, s: Session, req: dict[str, Any]) -> None:  # noqa: C901 - a dispatch table
        kind = req.get("type")
        if kind == "hello":
            if req.get("version") != 1:
                await self.error(s, req, "unsupported_version", "version 1 only")
            else:
                await self.reply(s, req, server="ferry", version=1)
        elif kind == "join":
            if req.get("token") == "bad":
                await self.error(s, req, "unauthorized", "bad token")
                return
            me = {"sid": "PA_me", "identity": "me", "name": str(req.get("token"))}
            await self.reply(
                s,
                req,
                room={"name": "r", "sid": "RM_1"},
                participant=me,
                participants=[],
                ice_servers=[],
            )
            if self.media:
                await self.offer_bot(s)
        elif kind == "ping":
            await s.ws.send_json({"type": "tick", "n": 1})  # an event interleaved before the reply
            await self.reply(s, req)
        elif kind == "slow":
            await asyncio.sleep(0.3)
            await self.reply(s, req, echo=req.get("n"))
        elif kind == "fast":
            await self.reply(s, req, echo=req.get("n"))
        elif kind == "never":
            return
        elif kind == "close_me":
            await s.ws.close()
        elif kind == "publish":
            await self.publish(s, req)
        elif kind == "subscriber_answer":
            s.answers.append(req)
            assert s.sub is not None
            await s.sub.setRemoteDescription(RTCSessionDescription(sdp=req["sdp"], type="answer"))
            await self.reply(s, req)
        elif kind in ("mute", "leave", "update_subscription", "trickle"):
            await self.reply(s, req)
            if kind == "leave":
                await s.ws.close()
        else:
            await self.error(s, req, "unknown_type", f"unknown type {kind!r}")

    async def publish(self, s: Session, req: dict[str, Any]) -> None:
        s.publish_requests.append(req)
        if not self.media:
            await self.error(s, req, "forbidden", "no canPublish grant")
            return
        if s.pub is None:
            s.pub = RTCPeerConnection(RTCConfiguration(iceServers=[]))

            @s.pub.on("track")
            def on_track(track: MediaStreamTrack) -> None:
                s.tasks.append(asyncio.ensure_future(self.count(s, track)))

        await s.pub.setRemoteDescription(RTCSessionDescription(sdp=req["sdp"], type="offer"))
        await s.pub.setLocalDescription(await s.pub.createAnswer())
        tracks = [
            {
                "sid": f"TR_{t.kind}",
                "kind": t.kind,
                "source": "camera" if t.kind == "video" else "microphone",
                "muted": False,
                "simulcast": False,
                "layers": [],
                "participant_sid": "PA_me",
            }
            for t in s.pub.getTransceivers()
        ]
        answer = s.pub.localDescription.sdp
        if self.simulcast_answer:
            answer = accept_simulcast(req["sdp"], answer)
        await self.reply(s, req, sdp=answer, tracks=tracks)

    async def count(self, s: Session, track: MediaStreamTrack) -> None:
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            s.received[track.kind] = s.received.get(track.kind, 0) + 1

    async def offer_bot(self, s: Session) -> None:
        """Announce a bot participant and offer its pattern + tone like Ferry would."""
        bot_tracks = [
            {
                "sid": BOT_AUDIO,
                "kind": "audio",
                "source": "microphone",
                "muted": False,
                "simulcast": False,
                "layers": [],
                "participant_sid": BOT_SID,
            },
            {
                "sid": BOT_VIDEO,
                "kind": "video",
                "source": "camera",
                "muted": False,
                "simulcast": False,
                "layers": [],
                "participant_sid": BOT_SID,
            },
        ]
        await s.ws.send_json(
            {
                "type": "participant_joined",
                "participant": {
                    "sid": BOT_SID,
                    "identity": "bot",
                    "name": "Bot",
                    "tracks": bot_tracks,
                },
            }
        )
        s.sub = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        for track, tsid in (
            (ToneAudioTrack(), BOT_AUDIO),
            (TestPatternVideoTrack(320, 240, 15), BOT_VIDEO),
        ):
            sender = s.sub.addTransceiver(track, direction="sendonly").sender
            sender._stream_id = BOT_SID  # msid = "<participant_sid> <track_sid>", as Ferry sends
            sender._track_id = tsid
        await s.sub.setLocalDescription(await s.sub.createOffer())
        await s.ws.send_json(
            {"type": "subscriber_offer", "sdp": s.sub.localDescription.sdp, "version": 1}
        )


def accept_simulcast(offer: str, answer: str) -> str:
    """Make aiortc's answer accept the offer's q/h/f simulcast (aiortc cannot do so itself).

    Only the signaled state matters to the dynacast test; aiortc would not demux the
    three layers properly, so no test relies on decoding them.
    """
    video_offer = offer.split("m=video", 1)[1]
    rid_ext = next(line for line in video_offer.splitlines() if "sdes:rtp-stream-id" in line)
    head, video = answer.split("m=video", 1)
    lines = video.split("\r\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("a=mid:")) + 1
    lines[at:at] = [
        rid_ext,
        "a=rid:q recv",
        "a=rid:h recv",
        "a=rid:f recv",
        "a=simulcast:recv q;h;f",
    ]
    return head + "m=video" + "\r\n".join(lines)


@pytest.fixture
async def fake_server() -> AsyncIterator[FakeFerry]:
    server = FakeFerry()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def media_server() -> AsyncIterator[FakeFerry]:
    with allow_loopback():  # both the fake SFU's and the client's aiortc gather 127.0.0.1
        server = FakeFerry(media=True)
        await server.start()
        yield server
        await server.stop()


# --------------------------------------------------------------------------- signaling


async def test_hello_join_ping_and_events(fake_server: FakeFerry) -> None:
    client = FerryClient()
    try:
        await client.connect(fake_server.ws_url)
        assert client.server_info["version"] == 1
        reply = await client.join("alice")
        assert reply["participant"]["sid"] == "PA_me"
        assert client.room == {"name": "r", "sid": "RM_1"}
        assert (await client.request("ping"))["ok"] is True
        ev = await client.next_event("tick", timeout=2)
        assert ev == {"type": "tick", "n": 1}
        first = fake_server.sessions[0].requests[0]
        assert first == {"type": "hello", "id": first["id"], "version": 1}
        join_req = fake_server.sessions[0].requests[1]
        assert join_req["auto_subscribe"] is True and join_req["token"] == "alice"
    finally:
        await client.close()


async def test_replies_matched_by_id_out_of_order(fake_server: FakeFerry) -> None:
    client = FerryClient()
    try:
        await client.connect(fake_server.ws_url)
        slow = asyncio.ensure_future(client.request("slow", n="slow"))
        fast = asyncio.ensure_future(client.request("fast", n="fast"))
        done, _ = await asyncio.wait({slow, fast}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {fast}, "the fast reply must not wait for (or be confused with) the slow one"
        assert fast.result()["echo"] == "fast"
        assert (await slow)["echo"] == "slow"
        ids = [r["id"] for r in fake_server.sessions[0].requests]
        assert len(set(ids)) == len(ids)
    finally:
        await client.close()


async def test_error_replies_raise_ferry_error(fake_server: FakeFerry) -> None:
    client = FerryClient()
    try:
        await client.connect(fake_server.ws_url)
        with pytest.raises(FerryError) as info:
            await client.join("bad")
        assert info.value.code == "unauthorized"
        assert info.value.message == "bad token"
        assert info.value.reply is not None and info.value.reply["ok"] is False
        with pytest.raises(FerryError) as info:
            await client.request("frobnicate")
        assert info.value.code == "unknown_type"
        # The socket stays usable after errors.
        assert (await client.request("ping"))["ok"]
    finally:
        await client.close()


async def test_request_timeout_and_closed_socket(fake_server: FakeFerry) -> None:
    client = FerryClient()
    try:
        await client.connect(fake_server.ws_url)
        with pytest.raises(RequestTimeout) as info:
            await client.request("never", timeout=0.2)
        assert info.value.code == "timeout"
        assert isinstance(info.value, TimeoutError)
        with pytest.raises(FerryError) as info:
            await client.request("close_me", timeout=5)
        assert info.value.code == "closed"
        with pytest.raises(FerryError):
            await client.request("ping")
    finally:
        await client.close()


async def test_wait_for_polls_until_true_or_deadline() -> None:
    client = FerryClient()
    box = {"n": 0}

    async def bump() -> None:
        for _ in range(3):
            await asyncio.sleep(0.01)
            box["n"] += 1

    task = asyncio.ensure_future(bump())
    assert await client.wait_for(lambda: box["n"] >= 3, timeout=2) is True
    await task
    with pytest.raises(TimeoutError, match="never"):
        await client.wait_for(lambda: False, timeout=0.1, message="never")


def test_parse_media_sections() -> None:
    sdp = "\r\n".join(
        [
            "v=0",
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "a=mid:0",
            "a=sendonly",
            "a=msid:PA_x TR_a",
            "m=video 0 UDP/TLS/RTP/SAVPF 96",
            "a=mid:1",
            "a=inactive",
            "",
        ]
    )
    a, v = parse_media_sections(sdp)
    assert (a.mid, a.kind, a.direction, a.msid, a.port) == (
        "0",
        "audio",
        "sendonly",
        ("PA_x", "TR_a"),
        9,
    )
    assert (v.mid, v.kind, v.direction, v.msid, v.port) == ("1", "video", "inactive", None, 0)


# --------------------------------------------------------------------------- loopback patch


def test_allow_loopback_patches_and_restores() -> None:
    original = aioice.ice.get_host_addresses
    with allow_loopback():
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(use_ipv4=False, use_ipv6=True) == []
    assert aioice.ice.get_host_addresses is original
    patch = allow_loopback()
    try:
        assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1"]
    finally:
        patch.undo()
    assert aioice.ice.get_host_addresses is original


async def test_allow_loopback_gathers_a_loopback_candidate() -> None:
    with allow_loopback():
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.addTransceiver("audio", direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            candidates = [
                line
                for line in pc.localDescription.sdp.splitlines()
                if line.startswith("a=candidate:")
            ]
        finally:
            await pc.close()
    assert candidates, "no candidate gathered"
    assert all(" 127.0.0.1 " in c for c in candidates), candidates


# --------------------------------------------------------------------------- media sources


async def test_pattern_track_frames_have_increasing_pts_and_counter() -> None:
    track = TestPatternVideoTrack(width=320, height=240, fps=50)
    frames = [await track.recv() for _ in range(6)]
    track.stop()
    pts = [f.pts for f in frames]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)
    assert pts[1] - pts[0] == 90000 // 50
    assert all(f.time_base.denominator == 90000 for f in frames)
    assert (frames[0].width, frames[0].height, frames[0].format.name) == (320, 240, "yuv420p")
    assert [read_pattern_counter(f) for f in frames] == list(range(6))
    # Survives the downscaling a lower simulcast layer would apply.
    assert read_pattern_counter(track.make_frame(777).reformat(width=80, height=60)) == 777
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_tone_track_frames_are_20ms_paced() -> None:
    track = ToneAudioTrack(freq=440, sample_rate=48000)
    loop = asyncio.get_running_loop()
    start = loop.time()
    frames = [await track.recv() for _ in range(6)]
    elapsed = loop.time() - start
    track.stop()
    assert [f.pts for f in frames] == [i * 960 for i in range(6)]
    assert all(
        f.samples == 960 and f.sample_rate == 48000 and f.format.name == "s16" for f in frames
    )
    assert frames[0].layout.name == "mono"
    assert 0.08 <= elapsed < 1.0, f"6 frames should take ~100 ms in real time, took {elapsed:.3f}s"
    assert frames[1].to_ndarray().any()


# --------------------------------------------------------------------------- media through a fake SFU


async def test_publish_and_subscribe_through_fake_sfu(media_server: FakeFerry) -> None:
    client = FerryClient(connect_timeout=10)
    try:
        await client.connect(media_server.ws_url)
        await client.join("alice")
        published = await client.publish(ToneAudioTrack(), TestPatternVideoTrack(320, 240, 15))
        assert {t["kind"] for t in published} == {"audio", "video"}
        session = media_server.sessions[0]
        req = session.publish_requests[0]
        assert sorted(v["source"] for v in req["tracks"].values()) == ["camera", "microphone"]
        video_mline = req["sdp"].split("m=video", 1)[1]
        assert "VP8/90000" in video_mline.split("a=rtpmap:", 2)[1], (
            "VP8 must be the first video codec"
        )
        assert "a=sendonly" in req["sdp"] and " 127.0.0.1 " in req["sdp"]

        # The fake SFU offered the bot's tracks; the client answered and decodes them.
        await client.wait_for(
            lambda: len(client.sinks) == 2, timeout=10, message="bot tracks not mapped"
        )
        assert set(client.tracks) == {(BOT_SID, BOT_AUDIO), (BOT_SID, BOT_VIDEO)}
        video = client.sinks[(BOT_SID, BOT_VIDEO)]
        audio = client.sinks[(BOT_SID, BOT_AUDIO)]
        await client.wait_for(
            lambda: video.received_frames >= 5 and audio.received_audio_samples >= 48000 // 5,
            timeout=15,
            message="no decoded bot media",
        )
        assert (video.width, video.height) == (320, 240)
        assert video.first_frame_at is not None
        assert session.answers and session.answers[0]["version"] == 1
        assert client.subscriber_version == 1
        assert client.participants[BOT_SID]["name"] == "Bot"
        await client.wait_for(
            lambda: (
                session.received.get("video", 0) >= 5 and session.received.get("audio", 0) >= 10
            ),
            timeout=15,
            message="fake SFU got no media from the client",
        )

        stats = await client.stats()
        sub_video = stats["subscriber"]["tracks"][f"{BOT_SID}/{BOT_VIDEO}"]
        assert sub_video["packetsReceived"] > 0 and sub_video["framesDecoded"] >= 5
        assert stats["subscriber"]["tracks"][f"{BOT_SID}/{BOT_AUDIO}"]["audioSamplesReceived"] > 0
        assert stats["publisher"]["tracks"]["TR_video"]["packetsSent"] > 0
        assert stats["totals"]["bytesSent"] > 0 and stats["totals"]["bytesReceived"] > 0
        json.dumps(stats, default=str)
        assert client.subscriber_errors == []
    finally:
        await client.leave()
    assert session.requests[-1]["type"] == "leave"


async def test_cli_register_parses_join() -> None:
    import argparse

    from clients import cli as client_mod

    parser = argparse.ArgumentParser(prog="ferry")
    sub = parser.add_subparsers(dest="command")
    client_mod.register(sub)
    args = parser.parse_args(
        [
            "client",
            "join",
            "--token",
            "T",
            "--publish",
            "both",
            "--duration",
            "2",
            "--stats-interval",
            "0.5",
        ]
    )
    assert (args.url, args.token, args.publish, args.duration, args.stats_interval) == (
        "ws://127.0.0.1:7880/ws",
        "T",
        "both",
        2.0,
        0.5,
    )
    assert callable(args.func)


# --------------------------------------------------------------------------- browser


def _chromium_available() -> bool:
    return os.path.exists(CHROMIUM) and shutil.which(CHROMIUM) is not None


needs_chromium = pytest.mark.skipif(
    not _chromium_available(), reason=f"{CHROMIUM} not installed (apt-get install chromium)"
)


@contextlib.asynccontextmanager
async def _browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        # Playwright gives every launch a fresh temporary profile (--user-data-dir).
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.mark.browser
@needs_chromium
async def test_web_client_loads_idle(fake_server: FakeFerry) -> None:
    async with _browser() as browser:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        await page.goto(f"http://127.0.0.1:{fake_server.port}/?room=lobby&name=ann")
        await page.wait_for_function("window.ferry !== undefined", timeout=10_000)
        assert await page.evaluate("window.ferry.state") == "idle"
        assert await page.is_visible("#join-form")
        assert await page.input_value("#room") == "lobby"
        assert await page.input_value("#name") == "ann"
        assert await page.is_hidden("#call")
        assert await page.evaluate("window.ferry.participants()") == []
        assert await page.evaluate("window.ferry.stats()") == {}
        assert errors == []


@pytest.mark.browser
@needs_chromium
async def test_web_client_joins_publishes_and_renders_remote(media_server: FakeFerry) -> None:
    """Full browser flow against the aiortc fake SFU (simulcast off: aiortc cannot receive it)."""
    async with _browser() as browser:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(
            f"http://127.0.0.1:{media_server.port}/?room=r&name=ann&autojoin=1&simulcast=0"
        )
        await page.wait_for_function(
            "window.ferry && window.ferry.state === 'joined'", timeout=20_000
        )
        session = media_server.sessions[0]
        req = session.publish_requests[0]
        assert sorted(v["source"] for v in req["tracks"].values()) == ["camera", "microphone"]
        await page.wait_for_function(
            f"window.ferry.stats().then(s => (window.__s = s)) && window.__s && window.__s['{BOT_SID}'] && window.__s['{BOT_SID}'].videoFramesDecoded > 5 && window.__s['{BOT_SID}'].audioSamplesReceived > 0",
            timeout=20_000,
            polling=250,
        )
        parts = await page.evaluate("window.ferry.participants()")
        assert [p["sid"] for p in parts] == [BOT_SID]
        assert (
            parts[0]["hasVideo"] and parts[0]["hasAudio"] and parts[0]["videoTrackSid"] == BOT_VIDEO
        )
        assert await page.locator(f'.tile[data-sid="{BOT_SID}"]').count() == 1
        await page.wait_for_function(
            "document.querySelector('.tile.remote .stats').textContent.includes('frames')",
            timeout=5_000,
        )
        assert session.answers and session.answers[0]["version"] == 1
        # Adaptive stream: the tile's size is reported (debounced) for the bot's video.
        await _wait(
            lambda: any(
                r["type"] == "update_subscription" and r.get("track_sid") == BOT_VIDEO
                for r in session.requests
            ),
            10,
        )
        await _wait(
            lambda: session.received.get("video", 0) > 5 and session.received.get("audio", 0) > 5,
            15,
        )

        await page.click("#mute-mic")
        await _wait(
            lambda: any(r["type"] == "mute" and r.get("muted") is True for r in session.requests), 5
        )

        await page.click("#leave")
        await page.wait_for_function("window.ferry.state === 'left'", timeout=5_000)
        assert await page.is_visible("#join-form")
        assert await page.locator(".tile.remote").count() == 0
        assert errors == []


async def _wait(predicate: Any, timeout: float) -> None:
    await FerryClient().wait_for(predicate, timeout=timeout)


@pytest.mark.browser
@needs_chromium
async def test_web_client_offer_shape_and_publish_error(fake_server: FakeFerry) -> None:
    """Simulcast q/h/f, RED before Opus, VP8 first; an error reply reaches the status line."""
    async with _browser() as browser:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"http://127.0.0.1:{fake_server.port}/?room=r&name=ann&autojoin=1")
        await page.wait_for_function(
            "window.ferry && window.ferry.state === 'error'", timeout=20_000
        )
        status = await page.text_content("#status")
        assert status is not None and "forbidden" in status and "no canPublish grant" in status
        assert await page.is_visible("#join-form")
        sdp = fake_server.sessions[0].publish_requests[0]["sdp"]
        audio, video = sdp.split("m=audio", 1)[1].split("m=video", 1)
        first_audio_pt = audio.split("\r\n", 1)[0].split()[2]
        assert f"a=rtpmap:{first_audio_pt} red/48000/2" in audio
        first_video_pt = video.split("\r\n", 1)[0].split()[2]
        assert f"a=rtpmap:{first_video_pt} VP8/90000" in video
        assert "a=simulcast:send q;h;f" in video
        for rid in "qhf":
            assert f"a=rid:{rid} send" in video
        assert "a=sendonly" in audio and "a=sendonly" in video
        assert "a=group:BUNDLE 0 1" in sdp
        assert errors == []


@pytest.mark.browser
@needs_chromium
async def test_web_client_dynacast_layers() -> None:
    """``publisher_layers`` switches the camera's simulcast encodings on and off."""
    with allow_loopback():
        server = FakeFerry(media=True, simulcast_answer=True)
        await server.start()
        try:
            async with _browser() as browser:
                page = await browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"http://127.0.0.1:{server.port}/?room=r&name=ann&autojoin=1")
                await page.wait_for_function(
                    "window.ferry && window.ferry.state === 'joined'", timeout=20_000
                )
                encodings = await page.evaluate("window.ferry.publisherEncodings()")
                assert [(e["rid"], e["active"]) for e in encodings] == [
                    ("q", True),
                    ("h", True),
                    ("f", True),
                ]
                ws = server.sessions[0].ws
                await ws.send_json(
                    {"type": "publisher_layers", "layers": {"q": True, "h": False, "f": False}}
                )
                await page.wait_for_function(
                    "window.ferry.publisherEncodings().map(e => e.active).join() === 'true,false,false'",
                    timeout=5_000,
                )
                await ws.send_json({"type": "publisher_layers", "layers": {"h": True}})
                await page.wait_for_function(
                    "window.ferry.publisherEncodings().map(e => e.active).join() === 'true,true,false'",
                    timeout=5_000,
                )
                # Back to back: the second arrives while the first setParameters is in
                # flight; both apply, and neither call fails.
                await ws.send_json({"type": "publisher_layers", "layers": {"f": True}})
                await ws.send_json({"type": "publisher_layers", "layers": {"h": False}})
                await page.wait_for_function(
                    "window.ferry.publisherEncodings().map(e => e.active).join() === 'true,false,true'",
                    timeout=5_000,
                )
                assert await page.text_content("#status") == ""
                assert errors == []
        finally:
            await server.stop()
