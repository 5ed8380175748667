"""A video packet's fan-out from C (media.lanes) puts on the wire what the Python path does.

The same seeded call runs twice through the production Router, DownTracks, subscriber
transports and media socket: once with video lanes (`fan_out_video` forwards the
steady packets, `write_video` the rest), once with every packet through
`write_video`. Three simulcast layers with keyframes, a VP8 descriptor with picture id,
TL0PICIDX and TID, allocations that move subscribers up and down (picture ids
rewritten after each switch), a pause and a resume, late packets, NACKs answered
from the RTX rings, and one paced subscriber (transport-cc: the lane builds its
packets, its pacer sends them). SRTP is deterministic for
a key, SSRC and index, so each subscriber's datagrams must be byte for byte equal, and
so must the counters and where every stream stopped.
"""

from __future__ import annotations

import random
import socket
from typing import Any

import pytest

import media.routing.down_track as down_track_module
import media.routing.published_track as published_track_module
from media.engine import Engine, EngineConfig
from media.lanes import NATIVE
from media.transport.srtp import SRTP_AEAD_AES_128_GCM, SrtpContext
from media.wire.rtp import build_rtp, parse_rtp

from .router_setup import publish, subscribe

pytestmark = pytest.mark.skipif(
    not NATIVE, reason="native send path not built (python setup.py build_ext --inplace)"
)

KEY = bytes(range(28))
VIEWERS = 4  # the last one negotiates transport-cc: paced


def _vp8(pid: int, tl0: int, tid: int, keyframe: bool, start: bool, size: int) -> bytes:
    """X, I (15-bit picture id), L, T: the descriptor Chrome's simulcast VP8 carries."""
    desc = bytes(
        (0x90 if start else 0x80, 0xE0, 0x80 | (pid >> 8) & 0x7F, pid & 0xFF, tl0 & 0xFF, tid << 6)
    )
    head = (
        bytes((0x00 if keyframe else 0x01, 0, 0))
        + (b"\x9d\x01\x2a\x80\x02\xe0\x01" if keyframe else b"")
        if start
        else b""
    )
    return desc + head + bytes((pid + i) & 0xFF for i in range(size - len(head)))


def _deliver(mux: Any, layer: Any, data: bytes, now_ms: float) -> None:
    """One received packet, as the media socket hands it on: its fan-out in one batch."""
    opened = mux.open_batch()
    layer.on_packet(parse_rtp(data), now_ms, False)
    if opened:
        mux.flush()


def _drain(sock: socket.socket, into: list[bytes]) -> None:
    while True:
        try:
            into.append(sock.recv(4096))
        except BlockingIOError:
            return


async def _run(lanes: bool, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    calls = {"forwarded": 0, "fallback": 0, "handoff": 0}
    with monkeypatch.context() as m:
        if lanes:
            real = published_track_module.fan_out_video

            def counting(*args: Any) -> Any:
                result = real(*args)
                calls["forwarded"] += result[0]
                calls["fallback"] += len(result[2] or ())
                calls["handoff"] += len(result[3] or ()) // 2
                return result

            m.setattr(published_track_module, "fan_out_video", counting)
        else:
            m.setattr(down_track_module, "VideoLane", None)
        return await _call(calls, m)


async def _call(calls: dict[str, int], m: pytest.MonkeyPatch) -> dict[str, Any]:
    engine = Engine(EngineConfig(port=0))
    engine.mux.open()
    socks = []
    try:
        router = engine.router("lanes")
        router.rng = random.Random(7)
        video = next(t for t in publish(router.add_participant("PA_pub")) if t.kind == "video")
        for layer, ssrc in zip(video.layers, (0x100, 0x200, 0x300), strict=True):
            layer.bind_ssrc(ssrc)
        now = 1_000_000.0  # the same clock in both runs
        subs = []
        for i in range(VIEWERS):
            viewer = router.add_participant(f"PA_v{i}")
            subscribe(viewer, video, 0, twcc=i == VIEWERS - 1)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            socks.append(sock)
            sub = viewer.subscriber
            sub.transport.srtp = SrtpContext(SRTP_AEAD_AES_128_GCM, KEY, KEY)
            sub.transport.remote_addr = sock.getsockname()
            sub.on_transport_connected(now)
            subs.append(sub)
        downs = [next(iter(s.down_tracks.values())) for s in subs]
        received: list[list[bytes]] = [[] for _ in subs]
        rng = random.Random(3)
        mux = engine.mux
        late: list[tuple[int, bytes]] = []
        held: list[tuple[int, bytes]] = []
        # Allocation per subscriber by frame: moves up and down, pauses, resumes.
        plan = {
            0: [2, 2, 1, 2],
            40: [0, 2, None, 1],
            75: [2, 1, None, 0],
            110: [1, 0, 2, 2],
            150: [2, 2, 0, 1],
        }
        seq = [1000, 5000, 9000]
        for frame in range(190):
            now += 33.0
            if frame in plan:
                for down, layer in zip(downs, plan[frame], strict=True):
                    down.selector.set_allocation(layer)
                    down.select_layer(now)
            for index, layer in enumerate(video.layers):
                keyframe = (frame + 7 * index) % 30 == 0
                parts = 1 + index * 2
                for part in range(parts):
                    data = build_rtp(
                        payload_type=video.codec.payload_type,
                        seq=seq[index] & 0xFFFF,
                        timestamp=(frame * 3000 + index) & 0xFFFFFFFF,
                        ssrc=layer.ssrc,
                        payload=_vp8(
                            (frame * 5 + index * 1000) & 0x7FFF,
                            frame // 3 + index,
                            frame % 3,
                            keyframe and part == 0,
                            part == 0,
                            300 + 200 * index + rng.randrange(200),
                        ),
                        marker=part == parts - 1,
                    )
                    seq[index] += 1
                    if index == 2 and (
                        frame % 17 == 5 and part == 0 or (frame + 15) % 30 == 0 and part == 3
                    ):
                        # Held back: arrives a frame late (the second: from before the
                        # keyframe a subscriber may switch on, the late side of the switch).
                        late.append((index, data))
                        continue
                    _deliver(mux, layer, data, now)
            for index, data in held:
                _deliver(mux, video.layers[index], data, now + 1.0)
            held, late = late, []
            if frame % 23 == 11:
                for down in downs:
                    last = down.rewriter.last_ext_seq
                    down.on_nack([(last - 3) & 0xFFFF, (last - 1) & 0xFFFF], now + 2.0)
                mux.flush()
            for sock, into in zip(socks, received, strict=True):
                _drain(sock, into)
        plain = []
        for into in received:
            rx = SrtpContext(SRTP_AEAD_AES_128_GCM, KEY, KEY)
            plain.append([rx.unprotect(d) for d in into])
        return {
            "packets": plain,
            "continuity": [d.continuity() for d in downs],
            "counters": [
                (d.stream.packets_sent, d.stream.bytes_sent, d.stream._last_rtp_ts) for d in downs
            ],
            "rtx": [(d.rtx_cache.hits, d.rtx_cache.misses, d.rtx_cache.suppressed) for d in downs],
            "rtp_out": (engine.stats.rtp_out, engine.stats.rtp_bytes_out),
            "mux_out": mux.packets_out,
            "calls": dict(calls),
        }
    finally:
        for sock in socks:
            sock.close()
        engine.mux.close()


async def test_lanes_send_what_the_python_path_sends_through_switches_pauses_and_nacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    python = await _run(False, monkeypatch)
    native = await _run(True, monkeypatch)
    sizes = [len(p) for p in python["packets"]]
    assert min(sizes) > 150, sizes  # every subscriber got video, the paced one too
    for i, (a, b) in enumerate(zip(python["packets"], native["packets"], strict=True)):
        assert len(a) == len(b), (i, len(a), len(b))
        assert a == b, (i, next(k for k, (x, y) in enumerate(zip(a, b, strict=True)) if x != y))
    for key in ("continuity", "counters", "rtx", "rtp_out", "mux_out"):
        assert python[key] == native[key], key
    assert any(h for h, _, _ in python["rtx"])  # NACKs were answered from the rings
    # The lanes did carry the call: most packets of the three unpaced subscribers sent
    # from C, most of the paced one's built there.
    calls = native["calls"]
    unpaced = sum(sizes[:-1])
    assert calls["forwarded"] > 0.8 * unpaced, (calls, unpaced)
    assert calls["handoff"] > 0.6 * sizes[-1], (calls, sizes)
    assert 0 < calls["fallback"] < 0.2 * sum(sizes), calls
