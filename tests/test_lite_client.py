"""LiteClient: Ferry's own lite WebRTC endpoint, against a real in-process Ferry.

The clips are tiny (160x90 / 320x180 / 640x360, 30 frames, keyframe every 15) so the
whole file stays well under 20 s on a shared 2-core machine; `encode_*_clip` caches
them across tests.
"""

from __future__ import annotations

import asyncio

import pytest

from clients.client import FerryClient, allow_loopback
from clients.lite import (
    LiteClient,
    RecvCounters,
    encode_opus_clip,
    encode_vp8_clip,
    is_vp8_keyframe,
)
from clients.lite.subscriber import LiteSubscriber
from media.rtp.nack import NackGenerator
from media.transport.certificate import Certificate
from media.wire.rtp import build_padding_only, build_rtp
from signaling import sdp
from signaling.app import FerryServer
from signaling.sdp import build_publisher_offer, build_subscriber_answer
from tests.conftest import wait_until

LAYERS = ((160, 90, 60_000), (320, 180, 150_000), (640, 360, 400_000))


def simulcast_clips() -> list[list[bytes]]:
    return [encode_vp8_clip(w, h, 30, br, keyframe_interval=15) for w, h, br in LAYERS]


def video_counters(client: LiteClient) -> list[RecvCounters]:
    return [c for c in client.received.values() if c.kind == "video"]


def audio_counters(client: LiteClient) -> list[RecvCounters]:
    return [c for c in client.received.values() if c.kind == "audio"]


# --------------------------------------------------------------------------- units


def test_clips_are_cached_and_start_on_keyframes() -> None:
    clips = simulcast_clips()
    assert clips[0] == simulcast_clips()[0]
    for clip in clips:
        assert len(clip) == 30
        assert [i for i, f in enumerate(clip) if is_vp8_keyframe(f)] == [0, 15]
    audio = encode_opus_clip(0.5)
    assert 20 <= len(audio) <= 26  # 20 ms packets


def test_publisher_offer_is_accepted_as_simulcast() -> None:
    offer_text = build_publisher_offer(
        ufrag="abcd",
        pwd="p" * 24,
        fingerprint=("sha-256", "AA:" * 31 + "AA"),
        port=5000,
        audio_ssrc=1111,
        video_ssrcs=[(1, 2), (3, 4), (5, 6)],
        rids=["q", "h", "f"],
        stream_id="s",
        audio_track_id="a",
        video_track_id="v",
        cname="c",
    )
    assert "a=ssrc:1 " not in offer_text  # simulcast: SSRCs are learned from RTP
    offer = sdp.parse(offer_text, "offer")
    video = offer.media[1]
    assert video.simulcast and [e.rid for e in video.encodings] == ["q", "h", "f"]
    transport = offer.transport
    answer_text, negotiated = sdp.answer_publisher(offer, transport=transport)
    assert "a=simulcast:recv q;h;f" in answer_text
    assert [m.direction for m in negotiated.media] == ["recvonly", "recvonly"]
    assert negotiated.media[1].codecs[0].rtx_payload_type == 97


def test_subscriber_answer_round_trips_through_ferry() -> None:
    sections = []
    for mid, kind in (("0", "video"), ("1", "audio")):
        sections.append(
            sdp.MediaDescription(
                mid=mid,
                kind=kind,
                direction="sendonly",
                codecs=sdp.default_subscriber_codecs(kind),
                header_extensions=sdp.default_subscriber_extensions(kind),
                encodings=[
                    sdp.Encoding(ssrc=10 + int(mid), rtx_ssrc=20 if kind == "video" else None)
                ],
                msid=("PA_x", f"TR_{mid}"),
            )
        )
    transport = sdp.TransportParameters(
        ice_ufrag="srv1",
        ice_pwd="q" * 24,
        fingerprints=[("sha-256", "BB:" * 31 + "BB")],
        candidates=["1 1 udp 2130706431 127.0.0.1 7882 typ host"],
    )
    text = sdp.offer_subscriber(sections, transport=transport, session_id=1, version=1)
    offer = sdp.parse(text, "offer")
    answer_text = build_subscriber_answer(
        offer, ufrag="cli1", pwd="r" * 24, fingerprint=("sha-256", "CC:" * 31 + "CC")
    )
    answer = sdp.parse(answer_text, "answer")
    assert answer.transport.setup == "active"
    accepted = sdp.negotiated_subscriber(sections, answer)
    assert [m.direction for m in accepted] == ["sendonly", "sendonly"]
    video = accepted[0]
    assert [c.name for c in video.codecs] == ["VP8"]  # H.264 declined
    assert video.codecs[0].rtx_payload_type == 97
    assert video.codecs[0].has_feedback("transport-cc") and video.codecs[0].has_feedback(
        "nack", "pli"
    )


def test_recv_counters_loss_recovery_and_wrap() -> None:
    c = RecvCounters(ssrc=1, kind="video", mid="0")
    for seq in (65533, 65534, 1, 2):  # 65535 and 0 missing across the wrap
        c.account(c.unwrap(seq))
    assert (c.expected, c.unique, c.lost) == (6, 4, 2)
    assert c.account(c.unwrap(0)) and c.lost == 1  # recovered (RTX or late)
    assert not c.account(c.unwrap(2))  # duplicate
    assert c.duplicates == 1


async def test_padding_only_rtx_packet_is_not_taken_for_a_repair() -> None:
    """The padding that draws feedback past a full window carries no original seq: read
    as one, its padding bytes named seq 0 as repaired and moved the NACK generator."""
    sub = LiteSubscriber(Certificate.generate(), nack=True, twcc=False)
    counters = RecvCounters(ssrc=1, kind="video", mid="0")
    counters.nack = NackGenerator()
    sub.received[1] = sub._by_ssrc[1] = sub._by_ssrc[2] = counters
    sub._rtx_ssrcs.add(2)
    sub.handle_rtp(build_rtp(payload_type=96, seq=1000, timestamp=0, ssrc=1, payload=b"\x10" * 100), 0.0)
    padding = build_padding_only(payload_type=97, seq=5, timestamp=0, ssrc=2, size=200,
                                 extensions=((3, b"\x00\x00"),))
    sub.handle_rtp(padding, 1.0)
    assert counters.rtx_packets == 0 and counters.highest == 1000 + (1 << 16)
    assert (counters.unique, counters.lost) == (1, 0)


# --------------------------------------------------------------------------- live


async def test_lite_simulcast_publisher_lite_and_aiortc_subscribers(server: FerryServer) -> None:
    clips = simulcast_clips()
    audio = encode_opus_clip(1.0)
    room = "lite"
    sub = LiteClient(name="sub")
    pub = LiteClient(name="pub")
    patch = allow_loopback()
    aio = FerryClient()
    try:
        await sub.connect(server.ws_url)
        await sub.join(server.token(room, "sub"))
        await aio.connect(server.ws_url)
        await aio.join(server.token(room, "aio"))
        await pub.connect(server.ws_url)
        await pub.join(server.token(room, "pub"), auto_subscribe=False)
        tracks = await pub.publish_vp8(clips, audio=audio)
        video_info = next(t for t in tracks if t["kind"] == "video")
        assert video_info["simulcast"] and video_info["layers"] == ["q", "h", "f"]

        router = server.rooms.rooms[room].router
        video_track = router.tracks[video_info["sid"]]
        await wait_until(lambda: all(layer.ssrc is not None for layer in video_track.layers), 8.0)

        await wait_until(
            lambda: (
                any(c.keyframes and c.packets > 60 for c in video_counters(sub))
                and any(c.packets > 50 for c in audio_counters(sub))
            ),
            10.0,
        )
        await wait_until(
            lambda: any(s.kind == "video" and s.received_frames > 10 for s in aio.sinks.values()),
            12.0,
        )
        # Loopback, no impairment: everything forwarded arrives (in-flight gaps close).
        try:
            await wait_until(lambda: all(c.lost == 0 for c in sub.received.values()), 3.0)
        except AssertionError:
            pass  # the assertion below names the stream
        for c in sub.received.values():
            assert c.lost == 0, c.summary()
        assert not sub.subscriber_errors

        # Dynacast hook: the server's publisher_layers event pauses and resumes a layer.
        layer_f = pub.publisher.layers[2]  # type: ignore[union-attr]
        pub._dispatch({"type": "publisher_layers", "layers": {"f": False}})
        await asyncio.sleep(0.1)
        paused_at = layer_f.frames_sent
        await asyncio.sleep(0.3)
        assert layer_f.frames_sent == paused_at and not layer_f.active
        keyframes = layer_f.keyframes_sent
        pub._dispatch({"type": "publisher_layers", "layers": {"f": True}})
        await wait_until(lambda: layer_f.frames_sent > paused_at, 2.0)
        assert layer_f.keyframes_sent > keyframes  # resumed on a keyframe
    finally:
        await pub.close()
        await sub.close()
        await aio.close()
        patch.undo()


async def test_lite_rtx_repairs_loss_both_ways(server: FerryServer) -> None:
    """Drop packets on purpose: Ferry NACKs the publisher's RTX, we NACK Ferry's RTX."""
    clips = simulcast_clips()
    room = "rtx"
    sub = LiteClient(name="sub")
    pub = LiteClient(name="pub")
    try:
        await sub.connect(server.ws_url)
        await sub.join(server.token(room, "sub"))
        await pub.connect(server.ws_url)
        await pub.join(server.token(room, "pub"), auto_subscribe=False)
        tracks = await pub.publish_vp8(clips)  # simulcast, no audio: RTX carries repaired-rid
        publisher = pub.publisher
        assert publisher is not None
        await sub.wait_for(lambda: sub.subscriber is not None, 5.0)
        await sub.wait_connected("subscriber")
        subscriber = sub.subscriber
        assert subscriber is not None

        sent = publisher.send_rtp
        handle = subscriber.handle_rtp
        counts = {"up": 0, "down": 0}

        def lossy_send(packet: bytes) -> None:
            counts["up"] += 1
            if packet[1] & 0x7F == 96 and counts["up"] % 23 == 0:
                return  # lost on the way to Ferry
            sent(packet)

        def lossy_handle(packet: bytes, now_ms: float) -> None:
            counts["down"] += 1
            if packet[1] & 0x7F == 96 and counts["down"] % 29 == 0:
                return  # lost on the way from Ferry
            handle(packet, now_ms)

        publisher.send_rtp = lossy_send  # type: ignore[method-assign]
        subscriber.handle_rtp = lossy_handle  # type: ignore[method-assign]

        stats = server.engine.stats
        await wait_until(lambda: stats.nack_sent > 2 and stats.rtx_sent > 2, 10.0)
        assert any(layer.rtx_sent for layer in publisher.layers)
        ferry_layers = server.rooms.rooms[room].router.tracks[tracks[0]["sid"]].layers
        for ours, theirs in zip(publisher.layers, ferry_layers, strict=True):
            if ours.rtx_sent:  # Ferry latched our RTX SSRC to the right layer
                assert theirs.rid == ours.rid and theirs.rtx_ssrc == ours.rtx_ssrc
        await wait_until(lambda: sum(c.recovered for c in sub.received.values()) > 2, 5.0)
        publisher.send_rtp = sent  # type: ignore[method-assign]
        subscriber.handle_rtp = handle  # type: ignore[method-assign]
        video = video_counters(sub)[0]
        # Only losses the NACK logic skips on purpose stay lost: gaps just before a
        # keyframe are obsolete (here or in Ferry, toward the publisher), not repaired.
        assert video.nack is not None

        def obsolete() -> int:
            assert video.nack is not None
            return video.nack.obsoleted + sum(layer.nack.obsoleted for layer in ferry_layers)

        try:  # poll while the last repairs land
            await wait_until(lambda: video.lost <= obsolete(), 3.0)
        except AssertionError:
            pass  # the assertion below reports the figures
        assert video.lost <= obsolete(), (video.summary(), obsolete())
        assert video.recovered > video.lost
        assert video.rtx_packets > 0 and video.keyframes > 0
    finally:
        await pub.close()
        await sub.close()


@pytest.mark.parametrize("bad", [[], [[b"\x01"], [b"\x01"]]])
async def test_publish_rejects_bad_layers(server: FerryServer, bad: list) -> None:
    client = LiteClient()
    try:
        await client.connect(server.ws_url)
        await client.join(server.token("bad", "x"))
        with pytest.raises(ValueError):
            await client.publish_vp8(bad, simulcast_rids=None)
    finally:
        await client.close()
