"""Python clients through a real Ferry on loopback."""

from __future__ import annotations

import time

import pytest

from clients.client import FerryClient, allow_loopback
from clients.media_sources import TestPatternVideoTrack, ToneAudioTrack


@pytest.fixture(autouse=True)
def _loopback():
    with allow_loopback():
        yield


async def _client(server, room: str, identity: str) -> FerryClient:
    client = FerryClient(connect_timeout=15.0)
    await client.connect(server.ws_url)
    await client.join(server.token(room, identity))
    return client


async def test_publisher_to_late_subscriber_audio_and_video(server):
    pub = await _client(server, "r1", "alice")
    sub = None
    try:
        await pub.publish(TestPatternVideoTrack(), ToneAudioTrack())
        alice = pub.participant["sid"]
        # Let the publisher run a while so its first keyframe is long gone.
        await pub.wait_for(lambda: server.engine.stats.rtp_in > 100, timeout=10)
        plis_before = server.engine.stats.pli_sent
        sub = await _client(server, "r1", "bob")
        await sub.wait_for(lambda: sub.sink_for(alice, "video") is not None, timeout=10)
        await sub.wait_connected("subscriber", timeout=10)
        connected_at = time.monotonic()
        video = sub.sink_for(alice, "video")
        await sub.wait_for(lambda: video.received_frames >= 10, timeout=10, message="no video decoded")
        assert video.first_frame_at is not None
        assert video.first_frame_at - connected_at < 1.0, "first keyframe took more than 1 s"
        assert server.engine.stats.pli_sent > plis_before, "the PLI was not forwarded upstream"
        audio = sub.sink_for(alice, "audio")
        assert audio is not None
        await sub.wait_for(lambda: audio.received_audio_samples > 48000, timeout=10, message="no audio")
        assert video.width == 640 and video.height == 480
    finally:
        if sub is not None:
            await sub.close()
        await pub.close()


async def test_both_directions_and_leave(server):
    a = await _client(server, "r2", "a")
    b = await _client(server, "r2", "b")
    try:
        await a.publish(TestPatternVideoTrack(), ToneAudioTrack())
        await b.publish(TestPatternVideoTrack(), ToneAudioTrack())
        a_sid, b_sid = a.participant["sid"], b.participant["sid"]
        await a.wait_for(lambda: (s := a.sink_for(b_sid, "video")) and s.received_frames > 5, timeout=15)
        await b.wait_for(lambda: (s := b.sink_for(a_sid, "video")) and s.received_frames > 5, timeout=15)
        await b.leave()
        await a.wait_for(
            lambda: any(e["type"] == "participant_left" and e["sid"] == b_sid for e in a.event_log),
            timeout=2,
        )
        room = server.rooms.rooms["r2"]
        assert list(room.participants) == [a_sid]
        assert not room.router.tracks.keys() & {t["sid"] for t in b.published}
    finally:
        await a.close()
        await b.close()
