"""A viewer of ~100 tracks at once: its subscriber answer passes the 64 KiB request limit.

Six publishers of 16 audio tracks each (the per-participant maximum) and one LiteClient
publishing real VP8 + Opus, through a real server on loopback: the viewer's answer for
98 m-lines is ~70 KB, over the 64 KiB that ordinary requests may have, under the
256 KiB that ``publish`` and ``subscriber_answer`` may have. The viewer must get every
offer applied and receive the real publisher's media on m-lines 97 and 98.

The 96 audio tracks are published by signaling alone (their publishers never connect
media): what is measured is the viewer's negotiation, not the forwarding of 96 streams.
"""

from __future__ import annotations

import json

from clients.lite import LiteClient, encode_opus_clip, encode_vp8_clip
from signaling import sdp
from signaling.app import FerryServer
from signaling.protocol import MAX_MESSAGE_BYTES, MAX_SDP_MESSAGE_BYTES, encode
from signaling.sdp import build_subscriber_answer

from .conftest import wait_until
from .test_subscriber_negotiation import _audio_offer

ROOM = "many"
PUBLISHERS = 6


async def test_viewer_of_98_tracks_answers_over_64_kib_and_receives_media(server: FerryServer) -> None:
    viewer = LiteClient(name="viewer")
    clients = [viewer]
    try:
        await viewer.connect(server.ws_url)
        await viewer.join(server.token(ROOM, "viewer"))
        for i in range(PUBLISHERS):
            pub = LiteClient(name=f"bulk{i}")
            clients.append(pub)
            await pub.connect(server.ws_url)
            await pub.join(server.token(ROOM, f"bulk{i}"), auto_subscribe=False)
            reply = await pub.request("publish", sdp=_audio_offer(16))
            assert len(reply["tracks"]) == 16, reply
        real = LiteClient(name="real")
        clients.append(real)
        await real.connect(server.ws_url)
        await real.join(server.token(ROOM, "real"), auto_subscribe=False)
        video = [encode_vp8_clip(320, 180, 15, 150_000, keyframe_interval=15, fps=15)]
        tracks = await real.publish_vp8(video, fps=15, audio=encode_opus_clip(1.0))
        real_sids = {t["sid"] for t in tracks}

        def received_real() -> bool:
            got = {c.track_sid for c in viewer.received.values() if c.packets > 5}
            return real_sids <= got

        await wait_until(received_real, 20.0)
        participant = next(p for p in server.rooms.rooms[ROOM].participants.values() if p.identity == "viewer")
        await wait_until(lambda: not participant.offer_pending, 10.0)
        assert len(participant.sections) == 16 * PUBLISHERS + 2
        assert not viewer.subscriber_errors
        assert not [e for e in viewer.events if e.get("type") in ("error", "subscription_failed")]
        # The last answer the viewer sent was over the ordinary limit, under the SDP one.
        offer_event = [e for e in viewer.events if e.get("type") == "subscriber_offer"][-1]
        offer = sdp.parse(offer_event["sdp"], "offer")
        sub = viewer.subscriber
        assert sub is not None
        answer = build_subscriber_answer(offer, ufrag=sub.ufrag, pwd=sub.pwd, fingerprint=sub.fingerprint)
        size = len(encode({"type": "subscriber_answer", "id": 1, "sdp": answer, "version": offer_event["version"]}))
        assert MAX_MESSAGE_BYTES < size < MAX_SDP_MESSAGE_BYTES, json.dumps({"answer_bytes": size})
    finally:
        for client in clients:
            await client.close()
