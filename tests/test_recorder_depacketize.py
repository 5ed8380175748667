"""Depacketization of real VP8 / H.264 / Opus frames packetized by aiortc."""

from __future__ import annotations

import re

import av
import pytest

from recorder.depacketize import h264_frame, h264_parameter_sets, opus_samples, vp8_frame, vp8_size

from .recorder_media import encode_opus, encode_video, packetize


def payloads_by_frame(codec: str, frames: list[bytes]) -> list[list[bytes]]:
    out: list[list[bytes]] = [[] for _ in frames]
    for p in packetize(codec, frames):
        out[p.frame].append(bytes(p.view.payload))
    return out


def nal_units(annexb: bytes) -> list[bytes]:
    return [n for n in re.split(b"\x00\x00\x01", annexb.replace(b"\x00\x00\x00\x01", b"\x00\x00\x01")) if n]


def test_vp8_frames_round_trip_and_keyframe_size() -> None:
    frames = [f for f, _ in encode_video("vp8", 10, width=320, height=240)]
    for original, payloads in zip(frames, payloads_by_frame("vp8", frames), strict=True):
        assert vp8_frame(payloads) == original
    assert vp8_size(frames[0]) == (320, 240)
    assert vp8_size(frames[1]) is None


def test_h264_fu_a_and_stap_a_rebuild_the_access_units() -> None:
    frames = [f for f, _ in encode_video("h264", 10, width=320, height=240, noisy=True)]
    by_frame = payloads_by_frame("h264", frames)
    assert any(p[0] & 0x1F == 28 for p in by_frame[0])  # the IDR was fragmented (FU-A)
    assert any(p[0] & 0x1F == 24 for p in by_frame[0])  # SPS+PPS aggregated (STAP-A)
    decoder = av.CodecContext.create("h264", "r")
    decoded = 0
    for original, payloads in zip(frames, by_frame, strict=True):
        rebuilt = h264_frame(payloads)
        assert nal_units(rebuilt) == nal_units(original)
        decoded += len(decoder.decode(av.Packet(rebuilt)))
    decoded += len(decoder.decode(None))
    assert decoded == len(frames)
    assert h264_parameter_sets(h264_frame(by_frame[0])) is not None
    assert h264_parameter_sets(h264_frame(by_frame[1])) is None


@pytest.mark.parametrize(
    "payloads, message",
    [
        ([b"\x7c\x85abc"], "no end"),  # FU-A start without end
        ([b"\x7c\x45abc"], "never started"),  # FU-A end without start
        ([b"\x78\x00\x09abc"], "truncated"),  # STAP-A length runs past the packet
        ([b"\x7e\x00"], "not supported"),  # FU-B (mode 2)
    ],
)
def test_h264_broken_packets_raise(payloads: list[bytes], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        h264_frame(payloads)


def test_opus_samples_from_toc() -> None:
    assert all(opus_samples(f) == 960 for f in encode_opus(5))  # 20 ms CELT/hybrid
    assert opus_samples(bytes([0x00])) == 480  # SILK NB 10 ms, one frame
    assert opus_samples(bytes([0x09])) == 1920  # SILK NB 20 ms, two frames (code 1)
    assert opus_samples(bytes([0xFB, 0x03])) == 2880  # CELT FB 20 ms, code 3, 3 frames
    assert opus_samples(b"") == 0
