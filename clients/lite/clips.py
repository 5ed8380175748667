"""Pre-encoded media for the lite client: VP8 and Opus clips, and VP8 keyframe tests.

A lite publisher sends these in a loop instead of encoding live: encoding once per
argument set (cached) keeps 50 publishers in one process affordable.
"""

from __future__ import annotations

import fractions
import functools
from typing import Any

from media.wire.vp8 import parse_vp8

__all__ = ["MovingPattern", "encode_opus_clip", "open_vp8_encoder", "encode_vp8_clip", "is_descriptor_keyframe", "is_vp8_keyframe"]


def is_vp8_keyframe(frame: bytes) -> bool:
    """RFC 6386 §9.1: the frame tag's lowest bit is 0 on a key frame."""
    return bool(frame) and not frame[0] & 0x01


class MovingPattern:
    """The clips' picture: a moving diagonal gradient plus a bouncing box, enough motion
    that inter frames carry real data at a layer's target bitrate."""

    def __init__(self, width: int, height: int) -> None:
        import numpy as np

        self.width, self.height = width, height
        self._plane = np.zeros((height * 3 // 2, width), np.uint8)
        self._xx = np.arange(width, dtype=np.int32)[None, :]
        self._yy = np.arange(height, dtype=np.int32)[:, None]
        self._box = (max(8, width // 6), max(8, height // 6))

    def plane(self, i: int) -> Any:
        """Frame ``i`` as one ``yuv420p`` array (luma rows, then chroma); reused per call."""
        width, height = self.width, self.height
        plane = self._plane
        plane[:height] = (self._xx + 2 * self._yy + 4 * i) % 256
        box_w, box_h = self._box
        bx = (i * 7) % max(1, width - box_w)
        by = (i * 3) % max(1, height - box_h)
        plane[by : by + box_h, bx : bx + box_w] = 255 - (i * 5) % 128
        plane[height:] = 128
        plane[height : height + height // 4, : width // 2] = (i * 3) % 256
        return plane


def open_vp8_encoder(
    width: int, height: int, bitrate: int, fps: int, keyframe_interval: int, *, fixed_keyframes: bool
) -> Any:
    """A libvpx encoder (PyAV) for the lite client's pattern: realtime, one packet per
    frame, a keyframe at most every ``keyframe_interval`` frames (exactly that often
    with ``fixed_keyframes``, as a looping clip needs)."""
    import av

    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuv420p"
    codec.bit_rate = bitrate
    codec.framerate = fractions.Fraction(fps, 1)
    codec.time_base = fractions.Fraction(1, fps)
    codec.gop_size = keyframe_interval
    options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",  # one packet per input frame, no look-ahead
        "kf-max-dist": str(keyframe_interval),
    }
    if fixed_keyframes:
        options["kf-min-dist"] = str(keyframe_interval)
    codec.options = options
    return codec


@functools.lru_cache(maxsize=16)
def _encode_vp8(
    width: int, height: int, frames: int, bitrate: int, keyframe_interval: int, fps: int
) -> tuple[bytes, ...]:
    import av

    codec = open_vp8_encoder(width, height, bitrate, fps, keyframe_interval, fixed_keyframes=True)
    out: list[bytes] = []
    pattern = MovingPattern(width, height)
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(pattern.plane(i), format="yuv420p")
        frame.pts = i
        out.extend(bytes(p) for p in codec.encode(frame))
    out.extend(bytes(p) for p in codec.encode(None))
    if not out or not is_vp8_keyframe(out[0]):
        raise RuntimeError("libvpx produced no leading keyframe")
    return tuple(out)


def encode_vp8_clip(
    width: int,
    height: int,
    frames: int,
    bitrate: int,
    *,
    keyframe_interval: int = 30,
    fps: int = 30,
) -> list[bytes]:
    """Encode a synthetic moving pattern with libvpx (PyAV); one VP8 frame per entry.

    Cached per argument set, so a benchmark that builds 50 publishers (or runs several
    rounds) encodes once. Frame 0 is a keyframe and one follows every
    ``keyframe_interval`` frames, so the clip loops cleanly and a PLI is answered by
    jumping to the next keyframe.
    """
    return list(_encode_vp8(width, height, frames, bitrate, keyframe_interval, fps))


@functools.lru_cache(maxsize=8)
def _encode_opus(seconds: float, frequency: float, bitrate: int) -> tuple[bytes, ...]:
    import av
    import numpy as np

    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = 48000
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = bitrate
    codec.time_base = fractions.Fraction(1, 48000)
    samples = 960  # 20 ms at 48 kHz, libopus' default frame duration
    total = int(seconds * 50)
    out: list[bytes] = []
    for i in range(total):
        t = (np.arange(samples) + i * samples) / 48000.0
        tone = (np.sin(2 * np.pi * frequency * t) * 8000).astype(np.int16)
        stereo = np.repeat(tone, 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = i * samples
        out.extend(bytes(p) for p in codec.encode(frame))
    out.extend(bytes(p) for p in codec.encode(None))
    return tuple(p for p in out if p)


def encode_opus_clip(
    seconds: float, *, frequency: float = 440.0, bitrate: int = 32000
) -> list[bytes]:
    """Encode a sine tone with libopus (PyAV) into 20 ms packets; cached like the video."""
    return list(_encode_opus(float(seconds), float(frequency), int(bitrate)))


# --------------------------------------------------------------------------- transport


def is_descriptor_keyframe(payload: memoryview | bytes) -> bool:
    """True if an RTP payload starting with a VP8 descriptor begins a key frame."""
    try:
        return parse_vp8(payload).is_keyframe
    except ValueError:
        return False
