"""Real encoded media, packetized into RTP, for the recorder tests and bench.

Frames come from PyAV's encoders (libvpx, libx264, libopus) at a tiny size, so a few
seconds encode in well under a second; packetizers are aiortc's (RFC 7741, RFC
6184 mode 1). Each packet carries what the router would hand a sink: the layer, the
unwrapped sequence number and the keyframe flag as `Layer.on_packet` computes it.
"""

from __future__ import annotations

import fractions
import functools
from dataclasses import dataclass

import av
import numpy as np
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

from media.wire.h264 import is_keyframe_start
from media.wire.rtp import RtpView, build_rtp, parse_rtp
from media.wire.vp8 import parse_vp8

PT = {"vp8": 96, "h264": 102, "opus": 111}


@dataclass(slots=True)
class Pkt:
    layer: int
    view: RtpView
    ext_seq: int
    keyframe: bool
    frame: int  # index of the frame it belongs to


@functools.lru_cache(maxsize=8)
def encode_video(codec: str, n: int, width: int = 160, height: int = 120, fps: int = 30,
                 gop: int = 30, shade: int = 0, noisy: bool = False,
                 bit_rate: int = 0) -> tuple[tuple[bytes, bool], ...]:
    """`n` frames of a moving gradient (or seeded noise: large frames); keyframes every `gop`."""
    name = {"vp8": "libvpx", "h264": "libx264"}[codec]
    ctx = av.CodecContext.create(name, "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = fractions.Fraction(1, fps)
    ctx.framerate = fps
    ctx.gop_size = gop
    if bit_rate:
        ctx.bit_rate = bit_rate
    if codec == "vp8":
        ctx.options = {"deadline": "realtime", "cpu-used": "16", "threads": "1"}  # threads spin
    else:
        ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "bframes": "0", "threads": "1",
                       "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
    ramp = np.arange(width, dtype=np.uint16)
    noise = np.random.default_rng(7).integers(0, 256, (height, width), dtype=np.uint8)
    chroma = np.full((height // 2, width), 128, np.uint8)  # U and V planes, grey
    out = []
    for i in range(n):
        luma = np.roll(noise, i, axis=1) if noisy else np.broadcast_to(
            ((ramp + i * 4 + shade) % 256).astype(np.uint8), (height, width))
        frame = av.VideoFrame.from_ndarray(np.vstack([luma, chroma]), format="yuv420p")
        frame.pts = i
        out += [(bytes(p), bool(p.is_keyframe)) for p in ctx.encode(frame)]
    out += [(bytes(p), bool(p.is_keyframe)) for p in ctx.encode(None)]
    assert len(out) == n, (len(out), n)
    return tuple(out)


@functools.lru_cache(maxsize=4)
def encode_opus(n: int) -> tuple[bytes, ...]:
    """`n` 20 ms Opus frames of a 440 Hz tone (48 kHz stereo)."""
    t = np.arange(960 * n) / 48000.0
    return encode_opus_pcm((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16), 32000)


def encode_opus_pcm(pcm: np.ndarray, bit_rate: int) -> tuple[bytes, ...]:
    """Mono int16 48 kHz `pcm` (a whole number of 20 ms frames) as stereo Opus frames."""
    n = len(pcm) // 960
    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate, ctx.layout, ctx.format, ctx.bit_rate = 48000, "stereo", "s16", bit_rate
    out = []
    for i in range(n):
        chunk = np.repeat(pcm[i * 960 : (i + 1) * 960], 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48000, i * 960
        out += [bytes(p) for p in ctx.encode(frame)]
    out += [bytes(p) for p in ctx.encode(None)]
    return tuple(out[:n])


def packetize(codec: str, frames: list[bytes], *, layer: int = 0, ssrc: int = 1234,
              seq0: int = 65000, ts0: int = 4_294_000_000, ts_step: int = 3000,
              first_frame: int = 0) -> list[Pkt]:
    """RTP packets for `frames`; seq and timestamp start near their wrap on purpose."""
    pkts: list[Pkt] = []
    seq = seq0
    for i, data in enumerate(frames):
        if codec == "vp8":
            payloads = Vp8Encoder._packetize(data, (first_frame + i) & 0x7FFF)
        elif codec == "h264":
            payloads = H264Encoder._packetize(H264Encoder._split_bitstream(data))
        else:
            payloads = [data]
        ts = (ts0 + (first_frame + i) * ts_step) & 0xFFFFFFFF
        for j, payload in enumerate(payloads):
            raw = build_rtp(payload_type=PT[codec], seq=seq & 0xFFFF, timestamp=ts, ssrc=ssrc,
                            payload=payload, marker=j == len(payloads) - 1)
            if codec == "vp8":
                key = parse_vp8(payload).is_keyframe
            elif codec == "h264":
                key = is_keyframe_start(payload)
            else:
                key = False
            pkts.append(Pkt(layer, parse_rtp(raw), seq, key, first_frame + i))
            seq += 1
    return pkts


class FakeHost:
    """A SinkHost that remembers keyframe requests."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, float]] = []

    def request_keyframe(self, layer: int, now_ms: float) -> None:
        self.requests.append((layer, now_ms))


def probe(path: str) -> tuple[int, float, list[float], list[bool]]:
    """(frames, duration_s, packet times, keyframe flags) of a file's first stream, via PyAV."""
    with av.open(path) as c:
        stream = c.streams[0]
        times, keys = [], []
        end = 0.0
        for p in c.demux(stream):
            if p.dts is None or p.size == 0:
                continue
            t = float(p.pts * p.time_base)
            times.append(t)
            keys.append(bool(p.is_keyframe))
            end = max(end, t + float((p.duration or 0) * p.time_base))
        return len(times), (end - times[0]) if times else 0.0, times, keys


def decode_count(path: str) -> int:
    """Frames that decode without error (raises on a corrupt frame)."""
    with av.open(path) as c:
        return sum(1 for _ in c.decode(c.streams[0]))


SIMULCAST_SIZES = ((64, 48), (128, 96), (256, 192))


def simulcast(n: int, *, gop: int = 30, fps: int = 30,
              active: dict[int, range] | None = None) -> list[tuple[float, Pkt]]:
    """(arrival ms, packet) for 3 VP8 layers, each with its own SSRC, seq and RTP base.

    `active` limits a layer to a range of frame indexes (dynacast pauses, restarts);
    a restarted layer begins with a keyframe only if its first frame is one (gop).
    """
    layers = []
    for index, (w, h) in enumerate(SIMULCAST_SIZES):
        frames = [f for f, _ in encode_video("vp8", n, width=w, height=h, gop=gop)]
        pkts = packetize("vp8", frames, layer=index, ssrc=100 + index, seq0=1000 * (index + 1) + 64000,
                         ts0=LAYER_TS_BASE[index])
        layers.append(pkts)
    out = []
    for index, pkts in enumerate(layers):
        keep = (active or {}).get(index, range(n))
        out += [(p.frame * 1000.0 / fps + 0.1 * index, p) for p in pkts if p.frame in keep]
    out.sort(key=lambda item: item[0])
    return out


LAYER_TS_BASE = (4_294_000_000, 1_000_000, 3_000_000_000)  # each layer's own random base


def wait_until(predicate: object, timeout_s: float = 10.0) -> None:
    """Poll `predicate()` until true or the deadline (no bare sleeps in tests)."""
    import time

    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met before the deadline")
        time.sleep(0.005)


def crash_child(directory: str, seconds: int) -> None:
    """Run in a subprocess: record `seconds` of VP8 + Opus, say "ready", then hang.

    The parent SIGKILLs it at that point: the writer is idle, everything submitted
    has gone through PyAV, and only the open cluster / page is not on disk.
    """
    import sys

    from recorder.recording import Recording

    rec = Recording(directory, room="crash", recording_id="r1", unix_offset_s=1.7e9, now_ms=0.0)
    rec.add_participant("PA_1", "alice", "Alice")
    video = rec.add_track(sid="TR_v", participant_sid="PA_1", kind="video", source="camera",
                          codec="VP8", clock_rate=90000, host=FakeHost())
    audio = rec.add_track(sid="TR_a", participant_sid="PA_1", kind="audio", source="microphone",
                          codec="opus", clock_rate=48000)
    frames = [f for f, _ in encode_video("vp8", seconds * 30)]
    vpk = packetize("vp8", frames)
    apk = packetize("opus", list(encode_opus(seconds * 50)), ts_step=960)
    stream = [(p.frame * 1000 / 30, video, p) for p in vpk] + [(p.frame * 20.0, audio, p) for p in apk]
    stream.sort(key=lambda item: item[0])
    for now, recorder, p in stream:
        recorder.on_packet(p.layer, p.view, p.ext_seq, p.keyframe, now)
        rec.on_timer(now)
    rec.on_timer(seconds * 1000.0 + 6000.0)  # a last manifest rewrite
    wait_until(lambda: rec.worker.idle)
    print("ready", flush=True)
    sys.stdin.read()  # until killed
