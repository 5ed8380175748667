"""The capture-time stamp in the test pattern survives VP8 and reads back exactly.

Glass-to-glass latency is only as good as the stamp: these check it through a real VP8
encode at a starved bitrate and at a quarter of the size (the lowest simulcast layer),
and that an unstamped picture reads as nothing rather than as a wrong latency.
"""

from __future__ import annotations

import fractions

import av
import numpy as np

from clients.media_sources import BeepAudioTrack, TestPatternVideoTrack
from clients.stamp import STAMP_MOD, BeepDetector, draw_stamp, latency_ms, read_stamp


def _vp8_roundtrip(frames: list[av.VideoFrame], width: int, height: int,
                   bitrate: int) -> list[np.ndarray]:
    enc = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height, enc.pix_fmt = width, height, "yuv420p"
    enc.bit_rate = bitrate
    enc.time_base = fractions.Fraction(1, 15)
    enc.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    dec = av.CodecContext.create("libvpx", "r")
    out: list[np.ndarray] = []
    for i, frame in enumerate(frames):
        f = frame.reformat(width=width, height=height)
        f.pts = i
        f.time_base = enc.time_base
        for packet in enc.encode(f):
            for decoded in dec.decode(packet):
                out.append(decoded.to_ndarray(format="gray"))
    return out


def test_stamp_survives_vp8_at_the_lowest_layer_and_a_starved_bitrate() -> None:
    track = TestPatternVideoTrack(320, 240, 15)
    base = 1_733_400_000_123.0
    stamps = [base + 66.7 * i for i in range(30)]
    frames = [track.make_frame(i, stamp_ms=ms) for i, ms in enumerate(stamps)]
    for (w, h), rate in (((320, 240), 120_000), ((80, 60), 30_000)):
        decoded = _vp8_roundtrip(frames, w, h, rate)
        assert len(decoded) == len(frames)
        read = [read_stamp(plane) for plane in decoded]
        assert read == [int(ms) % STAMP_MOD for ms in stamps], (w, h)


def test_unstamped_pictures_read_as_nothing() -> None:
    track = TestPatternVideoTrack(320, 240, 15)
    for i in range(0, 200, 7):
        plane = track.make_frame(i).to_ndarray(format="gray")
        assert read_stamp(plane) is None
    rng = np.random.default_rng(5)
    for _ in range(200):
        assert read_stamp(rng.integers(0, 256, (120, 160), dtype=np.uint8)) is None
    assert read_stamp(np.full((120, 160), 16, np.uint8)) is None
    assert read_stamp(np.full((120, 160), 235, np.uint8)) is None


def test_latency_wraps_on_the_stamp_circle() -> None:
    plane = np.full((90, 160), 128, np.uint8)
    draw_stamp(plane, STAMP_MOD * 3 - 40)  # stamped just before a wrap
    stamp = read_stamp(plane)
    assert stamp == STAMP_MOD - 40
    assert latency_ms(STAMP_MOD * 3 + 85.5, stamp) == 125.5
    assert latency_ms(STAMP_MOD * 3 - 50, stamp) == -10.0


def test_beep_onsets_through_opus_read_as_mouth_to_ear_latency() -> None:
    """Beeps on the wall clock, Opus-coded and heard 180 ms later, read as ~180 ms each."""
    track = BeepAudioTrack(freq=440.0)
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = 48_000, "mono", "s16"
    enc.bit_rate = 32_000
    dec = av.CodecContext.create("libopus", "r")
    dec.sample_rate, dec.layout = 48_000, "stereo"
    start = 1_733_400_001_000.0  # 1 s past a beep: the first onset comes at +1 s
    detector = BeepDetector()
    heard: list[float] = []
    delay = 180.0
    for i in range(400):  # 8 s of 20 ms frames: beeps at +1, +3, +5, +7 s
        captured = start + 20.0 * i
        for packet in enc.encode(track.make_frame(i, start_ms=captured)):
            for frame in dec.decode(packet):
                heard += detector.feed(frame.to_ndarray(), captured + 20.0 + delay,
                                       len(frame.layout.channels))
    # Opus's look-ahead delays the decoded audio by a few ms more than the frame
    assert len(heard) == 4 and all(delay - 5 < ms < delay + 35 for ms in heard), heard
    quiet = BeepDetector()
    floor = track.make_frame(0).to_ndarray()
    assert all(not quiet.feed(floor, 20.0 * k) for k in range(100))
