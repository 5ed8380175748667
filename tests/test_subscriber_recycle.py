"""Real clients receive tracks on recycled subscriber m-lines.

Ferry reuses an inactive m-line's mid for the next track of its kind, with new SSRCs
and msid. aiortc keeps one transceiver (and one receiver track) per mid and starts its
receiver only once, so this checks for real that the next track's packets still reach
the same receiver and decode; LiteClient keys its counters by SSRC.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from clients.channel import SignalingChannel
from clients.client import FerryClient, allow_loopback
from clients.lite import LiteClient
from clients.media_sources import TestPatternVideoTrack, ToneAudioTrack
from signaling.app import FerryServer

from .conftest import make_config
from .fuzz.harness import lite_offer


@pytest.fixture(autouse=True)
def _loopback():
    with allow_loopback():
        yield


def _lite_packets(viewer: LiteClient, track_sid: str) -> int:
    return sum(c.packets for c in viewer.received.values() if c.track_sid == track_sid)


async def test_viewers_receive_each_next_publisher_on_recycled_mlines(server):
    room = "recycle"
    viewer = FerryClient(connect_timeout=15.0)
    lite = LiteClient()
    publisher: FerryClient | None = None
    try:
        await viewer.connect(server.ws_url)
        await viewer.join(server.token(room, "viewer"))
        await lite.connect(server.ws_url)
        await lite.join(server.token(room, "lite"))
        participants = server.rooms.rooms[room].participants
        watchers = [participants[viewer.participant["sid"]], participants[lite.participant["sid"]]]
        for generation in range(3):
            publisher = FerryClient(connect_timeout=15.0)
            await publisher.connect(server.ws_url)
            await publisher.join(server.token(room, f"pub{generation}"))
            tracks = await publisher.publish(ToneAudioTrack(), TestPatternVideoTrack())
            psid = publisher.participant["sid"]

            def decoded(psid: str = psid) -> bool:
                video, audio = viewer.sink_for(psid, "video"), viewer.sink_for(psid, "audio")
                return bool(video and audio and video.received_frames >= 5 and audio.received_audio_samples > 0)

            await viewer.wait_for(decoded, timeout=15, message=f"aiortc viewer, generation {generation}")
            await lite.wait_for(lambda tracks=tracks: all(_lite_packets(lite, t["sid"]) > 20 for t in tracks), timeout=15)
            await publisher.leave()
            publisher = None
            # Both viewers have answered the offer that made the two m-lines inactive.
            await viewer.wait_for(
                lambda: all(not w.offer_pending and all(s.free for s in w.sections) for w in watchers), timeout=10
            )
        for watcher in watchers:
            assert [s.description.mid for s in watcher.sections] == ["0", "1"]
        assert len(viewer.subscriber.getTransceivers()) == 2
        assert not viewer.subscriber_errors and not lite.subscriber_errors
    finally:
        if publisher is not None:
            await publisher.close()
        await lite.close()
        await viewer.close()


async def test_viewer_whose_answer_was_lost_receives_after_the_offer_is_sent_again():
    server = FerryServer(make_config(subscriber_answer_timeout_s=1.0))
    await server.start()
    viewer = FerryClient(connect_timeout=15.0)
    publisher = FerryClient(connect_timeout=15.0)
    lost: list[int] = []
    send = viewer.request

    async def lossy(msg_type: str, /, **fields: Any) -> dict[str, Any]:
        if msg_type == "subscriber_answer" and not lost:
            lost.append(fields["version"])  # the client thinks it answered; Ferry never hears
            return {"type": msg_type, "ok": True}
        return await send(msg_type, **fields)

    viewer.request = lossy  # type: ignore[method-assign]
    try:
        await publisher.connect(server.ws_url)
        await publisher.join(server.token("lossy", "pub"))
        await publisher.publish(ToneAudioTrack(), TestPatternVideoTrack())
        await viewer.connect(server.ws_url)
        await viewer.join(server.token("lossy", "viewer"))
        psid = publisher.participant["sid"]
        await viewer.wait_for(
            lambda: (s := viewer.sink_for(psid, "video")) is not None and s.received_frames >= 5,
            timeout=15,
            message="no video after the lost answer",
        )
        watcher = server.rooms.rooms["lossy"].participants[viewer.participant["sid"]]
        assert lost and watcher.offer_version > lost[0] and not watcher.offer_pending
        assert not viewer.subscriber_errors
    finally:
        await viewer.close()
        await publisher.close()
        await server.stop()


async def test_aiortc_viewer_keeps_receiving_after_150_tracks_of_churn(server):
    # 75 signaling-only publishers (audio + video each, no media), at most two at once,
    # then one that sends real media: the viewer's SDP stays small and it decodes the last.
    room = "churn"
    viewer = FerryClient(connect_timeout=15.0)
    offers: list[dict[str, Any]] = []
    viewer.on_event.append(lambda msg: offers.append(msg) if msg.get("type") == "subscriber_offer" else None)
    churners: list[SignalingChannel] = []
    publisher = FerryClient(connect_timeout=15.0)
    try:
        await viewer.connect(server.ws_url)
        await viewer.join(server.token(room, "viewer"))
        watcher = server.rooms.rooms[room].participants[viewer.participant["sid"]]
        tracks = server.rooms.rooms[room].router.tracks

        def settled() -> bool:
            return not watcher.offer_pending and set(watcher.media.subscriber.down_tracks) == set(tracks)

        for i in range(75):
            channel = SignalingChannel(lambda msg: None, request_timeout=10.0)
            await channel.open(server.ws_url)
            await channel.request("hello", version=1)
            await channel.request("join", token=server.token(room, f"churn{i}"))
            await channel.request("publish", sdp=lite_offer(simulcast=False))
            churners.append(channel)
            if len(churners) > 2:
                old = churners.pop(0)
                await old.request("leave")
                await old.close()
            await viewer.wait_for(settled, timeout=10, interval=0.02, message=f"churn step {i}")
        assert len(watcher.sections) <= 6 and max(len(json.dumps(o)) for o in offers) < 16 * 1024
        await publisher.connect(server.ws_url)
        await publisher.join(server.token(room, "last"))
        await publisher.publish(ToneAudioTrack(), TestPatternVideoTrack())
        psid = publisher.participant["sid"]
        await viewer.wait_for(
            lambda: (v := viewer.sink_for(psid, "video")) is not None and v.received_frames >= 5
            and (a := viewer.sink_for(psid, "audio")) is not None and a.received_audio_samples > 0,
            timeout=15,
            message="the viewer does not decode the publisher after the churn",
        )
        assert len(watcher.sections) <= 6 and len(viewer.subscriber.getTransceivers()) == len(watcher.sections)
        assert not viewer.subscriber_errors
    finally:
        for channel in churners:
            await channel.close()
        await publisher.close()
        await viewer.close()
