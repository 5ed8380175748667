"""A LiteClient viewer's pictures: VP8 RTP packets assembled, decoded, stamp read back.

Packets arrive out of order, some only as retransmissions and some never; a frame is
returned once complete, and a frame that never completes is skipped rather than
decoded from pieces.
"""

from __future__ import annotations

import fractions

import av

from clients.media_sources import TestPatternVideoTrack
from clients.stamp import STAMP_MOD, read_stamp
from qa.vp8_frames import Vp8Decoder, Vp8FrameAssembler, vp8_payload

MTU = 300


def _encoded(n: int) -> list[tuple[int, bytes]]:
    track = TestPatternVideoTrack(320, 240, 15)
    enc = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height, enc.pix_fmt, enc.bit_rate = 320, 240, "yuv420p", 300_000
    enc.time_base = fractions.Fraction(1, 15)
    enc.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    out = []
    for i in range(n):
        frame = track.make_frame(i, stamp_ms=1_000_000.0 + 66.0 * i)
        frame.pts, frame.time_base = i, enc.time_base
        out += [(1_000_000 + 66 * i, bytes(p)) for p in enc.encode(frame)]
    return out


def _packets(frames: list[tuple[int, bytes]]) -> list[tuple[int, int, bool, bytes]]:
    """(seq, timestamp, marker, payload) with a VP8 descriptor carrying a picture id."""
    out = []
    seq = 65500  # wraps
    for k, (_, data) in enumerate(frames):
        chunks = [data[i:i + MTU] for i in range(0, len(data), MTU)]
        for j, chunk in enumerate(chunks):
            desc = bytes([0x90 if j == 0 else 0x80, 0x80, 0x80 | (k >> 8) & 0x7F, k & 0xFF])
            out.append((seq & 0xFFFF, 3000 * k, j == len(chunks) - 1, desc + chunk))
            seq += 1
    return out


def test_frames_assemble_through_reordering_and_retransmission_and_decode_with_their_stamp(
) -> None:
    frames = _encoded(12)
    packets = _packets(frames)
    assert len(packets) > 2 * len(frames)  # frames span several packets
    order = list(range(len(packets)))
    order[3], order[4] = order[4], order[3]  # reordered
    late = order.pop(7)  # lost, then retransmitted after the next frame's packets
    order.insert(min(len(order), 7 + 6), late)
    asm, dec = Vp8FrameAssembler(), Vp8Decoder()
    stamps = []
    for idx in order:
        for got in asm.add(*packets[idx]):
            plane = dec.decode(got)
            stamps.append(read_stamp(plane) if plane is not None else None)
    # the frame waiting for its retransmission holds the next one back, then both go
    assert stamps == [ms % STAMP_MOD for ms, _ in frames]
    assert asm.frames == len(frames) and asm.skipped == 0


def test_a_frame_missing_a_packet_waits_then_is_skipped() -> None:
    frames = _encoded(14)
    packets = _packets(frames)
    first = [p for p in packets if p[1] == 0]
    asm = Vp8FrameAssembler()
    assert all(asm.add(*p) == [] for p in first[:-2] + first[-1:])
    assert len(asm.add(*first[-2])) == 1  # the hole filled: now complete
    second = [p for p in packets if p[1] == 3000]
    released = [f for p in packets if p[1] > 0 and p is not second[0] for f in asm.add(*p)]
    # frame 1 never completes: frames 2.. wait for it, then it is given up
    assert asm.skipped == 1 and len(released) == len(frames) - 2
    assert released[0] == frames[2][1] and asm.add(*second[0]) == []  # too late now
    assert vp8_payload(b"") is None and vp8_payload(bytes([0x80])) is None
