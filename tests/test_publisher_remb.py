"""A Python (aiortc) publisher on a narrow uplink is told its rate by Ferry's REMB, live.

aiortc estimates nothing from transport-wide feedback; its VP8 encoder sends 500
kbit/s until a REMB says otherwise. Here its uplink (netem's TURN relay) carries 350
kbit/s with a 60 kB buffer: sent at 500 kbit/s, that buffer fills in about a second and
every frame then waits ~1.4 s in it. Ferry's receive-side estimate (abs-send-time,
``media.bwe.remb``) must bring the encoder under the link, so that the uplink's queue
stays short.
"""

from __future__ import annotations

import asyncio
from typing import Any

from clients.client import FerryClient, allow_loopback
from clients.media_sources import TestPatternVideoTrack
from netem.turn import TurnRelay
from qa.measurement import percentile

from .conftest import wait_until

UPLINK = "delay 20ms rate 350kbit limit 60kb|delay 20ms"
SETTLE_S = 6.0  # the estimate finds the link
MEASURE_S = 6.0


async def test_an_aiortc_publisher_on_a_narrow_uplink_keeps_its_queue_short_by_remb(server: Any) -> None:
    relay = TurnRelay("127.0.0.1", 0, profiles={"narrow": UPLINK}, users={"py": "py-pw"},
                      allowed_peers=[f"127.0.0.1:{server.engine.port}"])
    await relay.start()
    pub = FerryClient(turn_url=f"turn:127.0.0.1:{relay.port}", turn_username="narrow:py",
                      turn_password="py-pw", relay_only=True, connect_timeout=15)
    try:
        with allow_loopback():
            await pub.connect(server.ws_url)
            await pub.join(server.token("remb", "py"))
            await pub.publish(TestPatternVideoTrack(640, 480, 15))
            room = server.rooms.rooms["remb"]
            await wait_until(lambda: any(t.kind == "video" for t in room.router.tracks.values()), 15)
            peer = room.router.participants[pub.participant["sid"]].publisher
            assert peer.remb is not None and peer.twcc is None  # aiortc: abs-send-time, no twcc
            (alloc,) = relay.allocations
            await asyncio.sleep(SETTLE_S)  # the run's own length, not a wait for a condition
            start = len(alloc.up.stats.queue_delay_ms)
            await asyncio.sleep(MEASURE_S)
            queue = list(alloc.up.stats.queue_delay_ms)[start:]
        figures = {
            "remb_kbps": (peer.remb.estimate_bps or 0) // 1000,
            "rembs": peer.remb.rembs,
            "uplink_queue_p95_ms": round(percentile(queue, 0.95) or 0),
            "uplink_queue_max_ms": round(max(queue)),
            "uplink_dropped": alloc.up.stats.dropped_queue,
        }
        print("PUBLISHER_REMB", figures)
        assert peer.remb.rembs >= 3, figures
        # The estimate moves around the link's 350 kbit/s (AIMD looks for more, overuse
        # cuts); what it must do is keep the encoder from its 500 kbit/s and the queue short.
        assert (peer.remb.estimate_bps or 0) < 450_000, figures
        assert figures["uplink_queue_p95_ms"] < 400 and figures["uplink_dropped"] < 50, figures
    finally:
        await pub.close()
        await relay.close()
