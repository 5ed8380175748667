"""Bad input never crashes Ferry or disturbs other participants."""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import time

import aiohttp
import pytest

from clients.client import FerryClient, allow_loopback
from clients.media_sources import TestPatternVideoTrack, ToneAudioTrack

from .conftest import wait_until


async def _ws(server):
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(server.ws_url)
    return session, ws


async def _call(ws, msg):
    await ws.send_str(msg if isinstance(msg, str) else json.dumps(msg))
    reply = await ws.receive(timeout=5)
    return json.loads(reply.data)


async def test_malformed_signaling_gets_coded_errors(server):
    session, ws = await _ws(server)
    try:
        reply = await _call(ws, "{not json")
        assert reply["error"]["code"] == "bad_json"
        reply = await _call(ws, {"type": "hello", "id": 1, "version": 99})
        assert reply["ok"] is False and reply["error"]["code"] == "unsupported_version"
        reply = await _call(ws, {"type": "hello", "id": 2, "version": 1})
        assert reply["ok"] is True
        reply = await _call(ws, {"type": "teleport", "id": 3})
        assert reply["error"]["code"] == "unknown_type" and reply["id"] == 3
        reply = await _call(ws, {"type": "publish", "id": 4, "sdp": "v=0"})
        assert reply["error"]["code"] == "not_joined"
        reply = await _call(ws, {"type": "join", "id": 5, "token": "garbage"})
        assert reply["error"]["code"] == "unauthorized"
        from signaling.auth import mint_token

        expired = mint_token(
            server.api_key, server.api_secret, identity="x", room="r", now=time.time() - 3600, ttl_s=60
        )
        reply = await _call(ws, {"type": "join", "id": 6, "token": expired})
        assert reply["error"]["code"] == "unauthorized" and "expir" in reply["error"]["message"]
        reply = await _call(ws, {"type": "ping", "id": 7, "pad": "x" * (70 * 1024)})
        assert reply["error"]["code"] == "too_large"
        # The socket still works after all that.
        reply = await _call(ws, {"type": "ping", "id": 8})
        assert reply["ok"] is True
        # A token for another room / without join grant is refused.
        other = mint_token("nokey", "nosecret", identity="y", room="r", now=time.time())
        reply = await _call(ws, {"type": "join", "id": 9, "token": other})
        assert reply["error"]["code"] == "unauthorized"
        reply = await _call(ws, {"type": "join", "id": 10, "token": server.token("r", "z")})
        assert reply["ok"] is True
        reply = await _call(ws, {"type": "publish", "id": 11, "sdp": "not an sdp"})
        assert reply["error"]["code"] == "bad_request"
    finally:
        await ws.close()
        await session.close()
    metrics = await _get_metrics(server)
    assert "ferry_signaling_errors_total" in metrics


async def test_publish_forbidden_without_grant(server):
    session, ws = await _ws(server)
    try:
        await _call(ws, {"type": "hello", "id": 1, "version": 1})
        token = server.token("r", "viewer", can_publish=False)
        assert (await _call(ws, {"type": "join", "id": 2, "token": token}))["ok"]
        reply = await _call(ws, {"type": "publish", "id": 3, "sdp": "v=0\r\n"})
        assert reply["error"]["code"] == "forbidden"
    finally:
        await ws.close()
        await session.close()


async def _get_metrics(server) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(server.http_url + "/metrics") as resp:
            assert resp.status == 200
            return await resp.text()


def _garbage(rng: random.Random) -> list[bytes]:
    out = [b"", b"\x00", b"\x01\x01\x00\x00", os.urandom(0) + b"\x80"]
    # truncated / random STUN
    out.append(struct.pack("!HHI", 0x0001, 100, 0x2112A442) + rng.randbytes(12))
    out.append(struct.pack("!HHI", 0x0001, 8, 0x2112A442) + rng.randbytes(12) + b"\x00\x06\x00\x40")
    # DTLS-looking records
    out.append(bytes([22, 0xFE, 0xFD]) + rng.randbytes(10))
    out.append(bytes([23, 0xFE, 0xFD]) + rng.randbytes(200))
    # RTP / RTCP looking
    out.append(bytes([0x80, 96]) + rng.randbytes(10))
    out.append(bytes([0x90, 96]) + rng.randbytes(30))
    out.append(bytes([0x81, 200]) + rng.randbytes(40))
    # oversized
    out.append(bytes([0x80, 96]) + rng.randbytes(1900))
    out.append(rng.randbytes(1400))
    for _ in range(200):
        out.append(rng.randbytes(rng.randrange(1, 300)))
    return out


async def test_garbage_on_media_port_does_not_disturb_a_call(server):
    rng = random.Random(7)
    with allow_loopback():
        pub = FerryClient(connect_timeout=15)
        sub = FerryClient(connect_timeout=15)
        try:
            await pub.connect(server.ws_url)
            await pub.join(server.token("g", "pub"))
            await pub.publish(TestPatternVideoTrack(), ToneAudioTrack())
            await sub.connect(server.ws_url)
            await sub.join(server.token("g", "sub"))
            pub_sid = pub.participant["sid"]
            await sub.wait_for(lambda: (s := sub.sink_for(pub_sid, "video")) and s.received_frames > 5, timeout=15)
            drops_before = sum(server.engine.snapshot()["drops"].values())
            # Hit the media port from a stranger's address and from the subscriber's own
            # address (which Ferry knows), with every kind of junk.
            sub_addrs = [
                t.remote_addr
                for p in server.rooms.rooms["g"].router.participants.values()
                for t in (p.subscriber.transport, p.publisher.transport)
                if t.remote_addr
            ]
            assert sub_addrs
            stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                for datagram in _garbage(rng):
                    stranger.sendto(datagram, ("127.0.0.1", server.engine.port))
            finally:
                stranger.close()
            for addr in sub_addrs:
                # Spoofing a known address is not possible on loopback from another port,
                # so feed the mux directly as if those datagrams came from the peer.
                for datagram in _garbage(rng):
                    server.engine.mux.dispatch(datagram, addr, server.engine.now_ms())
            await wait_until(lambda: sum(server.engine.snapshot()["drops"].values()) > drops_before + 100, 5)
            video = sub.sink_for(pub_sid, "video")
            frames = video.received_frames
            await sub.wait_for(lambda: video.received_frames > frames + 10, timeout=10, message="video stalled")
            assert server.engine.mux.drops["handler_error"] == 0
        finally:
            await sub.close()
            await pub.close()
    metrics = await _get_metrics(server)
    assert "ferry_packet_drops_total" in metrics


@pytest.mark.parametrize("size", [0, 1, 100, 65 * 1024])
async def test_binary_and_odd_frames(server, size):
    session, ws = await _ws(server)
    try:
        await ws.send_bytes(b"\xff" * size)
        reply = json.loads((await ws.receive(timeout=5)).data)
        assert reply["type"] == "error" or reply.get("ok") is False
    finally:
        await ws.close()
        await session.close()
