"""A recording through 10% uplink loss and a simulcast layer switch.

The publisher reaches Ferry through netem's `UdpProxy`: its uplink drops 10% of
everything (media, retransmissions, RTCP, seeded) and adds 20 ms each way. Its top
layer stops halfway, as a browser's does under congestion. The recorder must follow to
the next layer at its keyframe; the file plays to the end and every frame in it decodes.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from clients.lite import LiteClient, encode_opus_clip, encode_vp8_clip
from netem.proxy import UdpProxy
from recorder import manifest as mf
from signaling.app import FerryServer

from .conftest import make_config, wait_until
from .recorder_media import decode_count, probe

UPLINK = "delay 20ms loss 10%"
DOWNLINK = "delay 20ms"
RECORD_S = 8.0


async def test_lossy_uplink_and_a_layer_switch_still_give_a_file_that_plays_to_its_end(tmp_path: Path) -> None:
    server = FerryServer(make_config(recordings_dir=str(tmp_path / "rec")))
    await server.start()
    proxy = UdpProxy(("127.0.0.1", 0), ("127.0.0.1", 9), UPLINK, DOWNLINK, seed=12)
    await proxy.start()
    client = LiteClient(name="alice", connect_timeout=15.0, candidate_rewrite=proxy.route)
    try:
        layers = [encode_vp8_clip(w, h, 90, rate, keyframe_interval=30)
                  for w, h, rate in ((80, 48, 60_000), (160, 96, 150_000), (320, 192, 400_000))]
        await client.connect(server.ws_url)
        await client.join(server.token("class", "alice"), auto_subscribe=False)
        await client.publish_vp8(layers, audio=encode_opus_clip(3.0), wait_connected=False)
        pub = client.publisher
        assert pub is not None
        await client.wait_connected("publisher", 15.0)
        room = server.rooms.rooms["class"]
        await wait_until(lambda: len(room.router.tracks) == 2, 10)
        started = server.recordings.start("class")
        t_start = time.monotonic()
        await asyncio.sleep(RECORD_S / 2)
        top = pub.layers[-1]
        top.active = False  # f stops for good; h carries on
        await asyncio.sleep(RECORD_S / 2)
        manifest = await server.recordings.stop("class")
        span = time.monotonic() - t_start
        (link,) = proxy.clients.values()
        up = link.up.stats
    finally:
        await client.close()
        await proxy.close()
        await server.stop()
    assert manifest == mf.load(str(started["dir"]))
    video = next(t for t in manifest.tracks if t.kind == "video")
    audio = next(t for t in manifest.tracks if t.kind == "audio")
    assert video.layer_switches >= 1
    assert server.engine.snapshot()["upstream_recovered"] > 0  # NACK/RTX repaired losses
    for track in (video, audio):
        path = str(Path(str(started["dir"])) / track.file)
        frames, duration, _, keys = probe(path)
        assert keys[0] and decode_count(path) == frames  # from its first keyframe, every frame decodes
        assert duration > span - 1.0, (track.file, duration, span)  # plays to the end
    assert 0.07 < up.dropped_loss / up.sent < 0.13, (up.dropped_loss, up.sent)  # the link dropped ~10%
    print("LOSS", {"uplink_sent": up.sent, "uplink_dropped": up.dropped_loss, "video_frames": video.frames, "gaps": video.gaps, "switches": video.layer_switches,
                   "audio_gaps": audio.gaps})
