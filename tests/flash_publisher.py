"""Live publishers of the flash + beep test source (`recorder_flash`), on the wall clock.

A `LiteClient` sends its clips frame after frame; under a loaded event loop its
pacer skips ticks, and a PLI makes it jump to the next keyframe, so clip position
and send time drift apart. Here every clip frame is a keyframe, and the frame (and
the Opus packet) sent at tick n is the one whose place in a `PERIOD_S` cycle matches
the wall-clock time of tick n. A person with phase p therefore flashes and beeps at
exactly every Unix time t with t mod PERIOD_S == p, whatever the loop does, and a
test knows when each flash left the source without watching it.
"""

from __future__ import annotations

import math
import time
from typing import Any

from clients.lite import LiteClient

from .recorder_flash import FPS, beep_audio, flash_video

PERIOD_S = 2.0


def clips(phase_s: float) -> tuple[list[bytes], list[bytes]]:
    """One period of all-keyframe VP8 (FPS) and Opus (50/s) that flash and beep at `phase_s`."""
    video = [frame for frame, _ in flash_video(round(PERIOD_S * FPS), (phase_s,), gop=1)]
    return video, list(beep_audio(round(PERIOD_S * 50), (phase_s,)))


def lock_to_wall_clock(client: LiteClient) -> None:
    """Make a publishing LiteClient pick each frame and packet by the wall time of its tick."""
    pub = client.publisher
    assert pub is not None
    offset = time.time() - pub._loop.time()  # loop seconds -> Unix seconds
    send_frames, send_audio = pub._send_frames, pub._send_audio
    first: dict[str, float] = {}

    def tick_wall(stream: str, n: int, now_ms: float, rate: int) -> float:
        start = first.setdefault(stream, now_ms / 1000.0 - n / rate)  # loop time of tick 0
        return offset + start + n / rate

    def frames(n: int, now_ms: float) -> None:
        wall = tick_wall("video", n, now_ms, pub.fps)
        for layer in pub.layers:
            layer.index = round(wall * pub.fps) % len(layer.frames)
        send_frames(n, now_ms)

    def audio(n: int, now_ms: float) -> None:
        assert pub.audio is not None
        wall = tick_wall("audio", n, now_ms, 50)
        pub.audio.index = round(wall * 50) % len(pub.audio.packets)
        send_audio(n, now_ms)

    pub._send_frames = frames  # type: ignore[method-assign]
    pub._send_audio = audio  # type: ignore[method-assign]


async def flash_publisher(ws_url: str, token: str, identity: str, phase_s: float, **client: Any) -> LiteClient:
    """A connected LiteClient publishing the flash source (single-layer VP8 + Opus) at `phase_s`."""
    video, audio = clips(phase_s)
    lite = LiteClient(name=identity, **client)
    await lite.connect(ws_url)
    await lite.join(token, auto_subscribe=False)
    await lite.publish_vp8(video, fps=FPS, simulcast_rids=None, audio=audio, wait_connected=False)
    lock_to_wall_clock(lite)
    await lite.wait_connected("publisher", 15.0)
    return lite


def source_flash(t: float, phase_s: float) -> float:
    """The Unix time of the source's flash (at `phase_s` of its period) nearest to `t`."""
    return phase_s + PERIOD_S * math.floor((t - phase_s) / PERIOD_S + 0.5)
