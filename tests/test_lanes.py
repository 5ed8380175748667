"""A packet's fan-out from C (media.lanes) puts on the wire what the Python path does.

The same seeded call runs twice through the production Router, DownTracks, subscriber
transports and media socket: once with lanes (`fan_out_video` / `fan_out_audio`
forward the steady packets, `write_video` / `write_audio` the rest), once with every
packet through the Python path. SRTP is deterministic for a key, SSRC and index, so
each subscriber's datagrams must be byte for byte equal, and so must the counters and
where every stream stopped. The same call with no native code at all (a child process
with FERRY_NATIVE_SEND=0: the Python send path, the C bases' slotted stand-ins) must
give the same bytes too.

- Video: three simulcast layers with keyframes, a VP8 descriptor with picture id,
  TL0PICIDX and TID, allocations that move subscribers up and down (picture ids
  rewritten after each switch), a pause and a resume, late packets, NACKs answered
  from the RTX rings, and a paced subscriber (transport-cc: the lane builds its
  packets, its pacer sends them).
- Audio: plain Opus and RED from the publisher with audio levels, padding, losses
  that RED rebuilds, listeners with and without RED, paced or not, one whose receiver
  reports loss for a while (RED out, then plain again), NACK-loss windows rolling.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

import media.routing.down_track as down_track_module
import media.routing.published_track as published_track_module
from media.engine import Engine, EngineConfig
from media.lanes import NATIVE
from media.transport.srtp import SRTP_AEAD_AES_128_GCM, SrtpContext, SrtpReplayError
from media.wire.red import build_red
from media.wire.rtp import build_rtp, parse_rtp

from .router_setup import publish, subscribe

pytestmark = pytest.mark.skipif(
    not NATIVE, reason="native send path not built (python setup.py build_ext --inplace)"
)

KEY = bytes(range(28))


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


def _unprotect(datagrams: list[bytes]) -> list[bytes]:
    """Plain RTP; an audio packet resent under its first SRTP index (NACKed, no RTX)
    stays as it came: the receiver's replay check refuses it."""
    rx = SrtpContext(SRTP_AEAD_AES_128_GCM, KEY, KEY)
    out = []
    for d in datagrams:
        try:
            out.append(rx.unprotect(d))
        except SrtpReplayError:
            out.append(d)
    return out


def _drain(sock: socket.socket, into: list[bytes]) -> None:
    while True:
        try:
            into.append(sock.recv(4096))
        except BlockingIOError:
            return


Viewer = tuple[bool, bool]  # (transport-cc: paced, RED)


async def _run(kind: str, lanes: bool, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    calls = {"forwarded": 0, "fallback": 0, "handoff": 0, "keyframe_from_c": 0}
    name = f"fan_out_{kind}"
    with monkeypatch.context() as m:
        if lanes:
            real = getattr(published_track_module, name)

            def counting(*args: Any) -> Any:
                result = real(*args)
                calls["forwarded"] += result[0]
                calls["fallback"] += len(result[2] or ())
                calls["handoff"] += len(result[3] or ()) // 2
                if kind == "video" and args[6]:  # a keyframe's first packet
                    calls["keyframe_from_c"] += result[0] + len(result[3] or ()) // 2
                return result

            m.setattr(published_track_module, name, counting)
        else:
            m.setattr(down_track_module, "Lane", None)
        return await _call(kind, calls)


async def _call(kind: str, calls: dict[str, int]) -> dict[str, Any]:
    engine = Engine(EngineConfig(port=0))
    engine.mux.open()
    socks: list[socket.socket] = []
    try:
        router = engine.router("lanes")
        router.rng = random.Random(7)
        track = next(t for t in publish(router.add_participant("PA_pub")) if t.kind == kind)
        viewers: list[Viewer] = (
            [(False, True)] * 3 + [(True, True)]
            if kind == "video"
            else [(False, True), (False, True), (False, False), (True, True), (True, False)]
        )
        now = 1_000_000.0  # the same clock in both runs
        for i, (paced, red) in enumerate(viewers):
            viewer = router.add_participant(f"PA_v{i}")
            subscribe(viewer, track, 0, twcc=paced, red=red)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            socks.append(sock)
            sub = viewer.subscriber
            sub.transport.srtp = SrtpContext(SRTP_AEAD_AES_128_GCM, KEY, KEY)
            sub.transport.remote_addr = sock.getsockname()
            sub.on_transport_connected(now)
        downs = [track.down_tracks[i] for i in range(len(viewers))]
        received: list[list[bytes]] = [[] for _ in viewers]
        play = _video_call if kind == "video" else _audio_call
        play(
            engine.mux,
            track,
            downs,
            now,
            lambda: [_drain(s, r) for s, r in zip(socks, received, strict=True)],
        )
        plain = [_unprotect(into) for into in received]
        return {
            "packets": plain,
            "continuity": [d.continuity() for d in downs],
            "counters": [
                (d.stream.packets_sent, d.stream.bytes_sent, d.stream._last_rtp_ts) for d in downs
            ],
            "rtx": [(d.rtx_cache.hits, d.rtx_cache.misses, d.rtx_cache.suppressed) for d in downs],
            "audio": [(d.nack_loss, d._red_level, d._window_sent, d.red_added) for d in downs],
            "rtp_out": (engine.stats.rtp_out, engine.stats.rtp_bytes_out),
            "mux_out": engine.mux.packets_out,
            "calls": dict(calls),
        }
    finally:
        for sock in socks:
            sock.close()
        engine.mux.close()


def _video_call(mux: Any, video: Any, downs: list[Any], now: float, drain: Any) -> None:
    for layer, ssrc in zip(video.layers, (0x100, 0x200, 0x300), strict=True):
        layer.bind_ssrc(ssrc)
    rng = random.Random(3)
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
                payload = _vp8(
                    (frame * 5 + index * 1000) & 0x7FFF, frame // 3 + index, frame % 3, keyframe and part == 0,
                    part == 0, 300 + 200 * index + rng.randrange(200),
                )  # fmt: skip
                data = build_rtp(
                    payload_type=video.codec.payload_type,
                    seq=seq[index] & 0xFFFF,
                    timestamp=(frame * 3000 + index) & 0xFFFFFFFF,
                    ssrc=layer.ssrc,
                    payload=payload,
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
            _nack_recent(mux, downs, now + 2.0)
        drain()


def _nack_recent(mux: Any, downs: list[Any], now: float) -> None:
    for down in downs:
        last = down.rewriter.last_ext_seq
        down.on_nack([(last - 3) & 0xFFFF, (last - 1) & 0xFFFF], now)
    mux.flush()


# Packet number -> the loss listener 1's reports show from then on. Each change lands on
# a plain Opus packet (RED from the publisher goes out as it came), so the RED Ferry
# builds starts from the history the lane kept.
REPORTED_LOSS = {151: 0.06, 202: 0.012, 259: 0.0, 301: 0.012, 352: 0.03, 400: 0.0}


def _audio_call(mux: Any, audio: Any, downs: list[Any], now: float, drain: Any) -> None:
    layer = audio.layers[0]
    layer.bind_ssrc(0xA0D1)
    assert audio.red_pt is not None and audio.audio_level_ext_id
    rng = random.Random(5)
    frames: list[bytes] = []
    for n in range(600):
        now += 20.0
        if n in REPORTED_LOSS:  # its receiver reports: RED out, hysteresis, plain again
            downs[1].stream.fraction_lost = REPORTED_LOSS[n]
        frame = bytes((n & 0xFF, 0x78)) + bytes(rng.randrange(20, 120))
        if n % 97 == 50:
            payload, pt = b"", audio.codec.payload_type  # padding-only: no hole left for it
        elif n % 3 == 0 and frames:
            payload, pt = (
                build_red(audio.codec.payload_type, frame, [(960, frames[-1])]),
                audio.red_pt,
            )
        else:
            payload, pt = frame, audio.codec.payload_type
        frames.append(frame)
        data = build_rtp(
            payload_type=pt,
            seq=(7000 + n) & 0xFFFF,
            timestamp=(n * 960) & 0xFFFFFFFF,
            ssrc=0xA0D1,
            payload=payload,
            marker=n == 0,
            extensions=[(audio.audio_level_ext_id, bytes((0x80 | (n % 60),)))],
        )
        if n % 41 == 20 and pt == audio.red_pt:
            continue  # never arrives (the next RED packet rebuilds it)
        if n % 41 == 21 or n % 41 == 22:
            continue  # lost before a RED packet: rebuilt for the listeners without RED
        _deliver(mux, layer, data, now)
        if n % 37 == 30:  # the listeners without RED (NACKs raise a RED listener's distance)
            _nack_recent(mux, [d for d in downs if d.red_payload_type is None], now + 1.0)
        drain()


@pytest.mark.parametrize("kind", ["video", "audio"])
async def test_lanes_send_what_the_python_path_sends(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = await _run(kind, False, monkeypatch)
    native = await _run(kind, True, monkeypatch)
    sizes = [len(p) for p in python["packets"]]
    assert min(sizes) > 150, sizes  # every subscriber got media, the paced ones too
    for i, (a, b) in enumerate(zip(python["packets"], native["packets"], strict=True)):
        assert len(a) == len(b), (i, len(a), len(b))
        assert a == b, (i, next(k for k, (x, y) in enumerate(zip(a, b, strict=True)) if x != y))
    for key in ("continuity", "counters", "rtx", "audio", "rtp_out", "mux_out"):
        assert python[key] == native[key], key
    assert any(h for h, _, _ in python["rtx"])  # NACKs were answered from the rings
    if kind == "audio":
        assert python["audio"][1][3] > 50  # the listener reporting loss got RED meanwhile
    # The lanes did carry the call: most packets of the unpaced subscribers sent from C,
    # most of the paced ones' built there.
    calls = native["calls"]
    paced = 1 if kind == "video" else 2
    unpaced = sum(sizes[:-paced])
    assert calls["forwarded"] > 0.7 * unpaced, (calls, sizes)
    assert calls["handoff"] > 0.6 * sum(sizes[-paced:]), (calls, sizes)
    assert 0 < calls["fallback"] < 0.2 * sum(sizes), calls
    if kind == "video":
        # A keyframe on the layer a subscriber is on leaves from C too; only a subscriber
        # whose waiter waits for one (or that starts or switches on it) takes Python's.
        assert calls["keyframe_from_c"] > 0, calls


def _digest(result: dict[str, Any]) -> str:
    """What a run put on the wire and where its streams stopped, as one hash."""
    h = hashlib.sha256()
    for packets in result["packets"]:
        h.update(len(packets).to_bytes(4, "big"))
        for p in packets:
            h.update(len(p).to_bytes(2, "big") + p)
    for key in ("continuity", "counters", "rtx", "audio", "rtp_out", "mux_out"):
        h.update(repr(result[key]).encode())
    return h.hexdigest()


@pytest.mark.parametrize("kind", ["video", "audio"])
async def test_the_pure_python_build_sends_what_the_lanes_send(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no native code at all (FERRY_NATIVE_SEND=0: the Python send path and the
    slotted stand-ins of the C bases), the same call gives the same bytes."""
    native = _digest(await _run(kind, True, monkeypatch))
    script = (
        "import asyncio, pytest\n"
        "from media.lanes import NATIVE\n"
        "from tests.test_lanes import _digest, _run\n"
        "assert not NATIVE\n"
        f"print(_digest(asyncio.run(_run({kind!r}, False, pytest.MonkeyPatch()))))\n"
    )
    root = Path(__file__).resolve().parent.parent
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=root, env={**os.environ, "FERRY_NATIVE_SEND": "0"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120.0)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert out.decode().strip() == native
