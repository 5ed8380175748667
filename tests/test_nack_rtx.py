"""NACK/RTX toward subscribers under 5% random loss."""

from __future__ import annotations

import random

from clients.client import FerryClient, allow_loopback
from clients.media_sources import TestPatternVideoTrack, ToneAudioTrack
from media.wire.rtp import parse_rtp


class LossyLeg:
    """Drops 5% of what Ferry sends to one subscriber and records what got through."""

    def __init__(self, transport, down_ssrcs: dict[int, int], seed: int = 5, loss: float = 0.05) -> None:
        self.rng = random.Random(seed)
        self.loss = loss
        self.video_ssrc, self.rtx_ssrc = next(iter(down_ssrcs.items()))
        self.lost: set[int] = set()
        self.recovered: set[int] = set()
        self.sent = 0
        self._send = transport.send_rtp
        transport.send_rtp = self.send_rtp
        if transport.send_target is not None:  # video lanes send from C, past the tap
            transport.send_target.python_path = True

    def send_rtp(self, packet: bytes, seq_at: int = 0, seq: int = 0) -> None:
        view = parse_rtp(packet)
        dropped = self.rng.random() < self.loss
        if view.ssrc == self.video_ssrc:
            self.sent += 1
            if dropped:
                self.lost.add(view.seq)
        elif view.ssrc == self.rtx_ssrc and not dropped:
            osn = int.from_bytes(view.payload[:2], "big")
            if osn in self.lost:
                self.recovered.add(osn)
        if not dropped:
            self._send(packet, seq_at, seq)


async def test_nack_rtx_recovers_lost_video_packets(server):
    with allow_loopback():
        pub = FerryClient(connect_timeout=15)
        sub = FerryClient(connect_timeout=15)
        try:
            await pub.connect(server.ws_url)
            await pub.join(server.token("n", "pub"))
            await pub.publish(TestPatternVideoTrack(), ToneAudioTrack())
            await sub.connect(server.ws_url)
            await sub.join(server.token("n", "sub"))
            pub_sid = pub.participant["sid"]
            await sub.wait_for(lambda: sub.sink_for(pub_sid, "video") is not None, timeout=10)
            media = server.rooms.rooms["n"].router.participants[sub.participant["sid"]]
            downs = [d for d in media.subscriber.down_tracks.values() if d.is_video]
            assert downs and downs[0].rtx_ssrc is not None, "subscriber did not negotiate RTX"
            leg = LossyLeg(media.subscriber.transport, {downs[0].ssrc: downs[0].rtx_ssrc})
            video = sub.sink_for(pub_sid, "video")
            await sub.wait_for(lambda: leg.sent >= 800 and len(leg.lost) >= 30, timeout=60)
            # Give the last losses time to be NACKed and repaired.
            lost_now = set(leg.lost)
            await sub.wait_for(lambda: len(leg.recovered & lost_now) >= 0.9 * len(lost_now), timeout=5)
            ratio = len(leg.recovered & lost_now) / len(lost_now)
            assert ratio >= 0.9, f"recovered {ratio:.1%} of {len(lost_now)} lost packets"
            assert video.received_frames > 100
            assert server.engine.stats.rtx_sent >= len(leg.recovered)
        finally:
            await sub.close()
            await pub.close()
