"""RTP payloads of one frame -> the codec's frame bytes, ready for a muxer.

Pure functions, no state: the assembler decides which payloads make a frame (same
timestamp, contiguous sequence numbers, up to the marker bit); these only strip or
rebuild the payload framing. VP8 (RFC 7741): drop each packet's payload descriptor.
H.264 (RFC 6184, packetization-mode 1): single NAL units, STAP-A and FU-A rebuilt
into an Annex B byte stream (start codes), which Matroska's muxer converts to the
length-prefixed form itself. Opus (RFC 7587): one packet is one frame, unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from media.wire.h264 import NAL_FU_A, NAL_IDR, NAL_SPS, NAL_STAP_A
from media.wire.vp8 import parse_vp8

__all__ = [
    "h264_frame",
    "h264_parameter_sets",
    "opus_samples",
    "vp8_frame",
    "vp8_size",
]

NAL_PPS = 8
START_CODE = b"\x00\x00\x00\x01"
# Opus TOC config (RFC 6716 §3.1) -> frame duration in 48 kHz samples.
_OPUS_FRAME_SAMPLES = (
    [480, 960, 1920, 2880] * 3  # SILK NB/MB/WB: 10/20/40/60 ms
    + [480, 960] * 2  # hybrid SWB/FB: 10/20 ms
    + [120, 240, 480, 960] * 4  # CELT NB/WB/SWB/FB: 2.5/5/10/20 ms
)


def vp8_frame(payloads: Sequence[bytes]) -> bytes:
    """Concatenate the VP8 data of a frame's packets (descriptors removed). ValueError if malformed."""
    return b"".join(p[parse_vp8(p).size :] for p in payloads)


def vp8_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) from a VP8 keyframe's header (RFC 6386 §9.1), None for inter frames."""
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return width, height


def h264_frame(payloads: Sequence[bytes]) -> bytes:
    """Annex B access unit from a frame's RTP payloads. ValueError on a broken FU-A or STAP-A."""
    out: list[bytes] = []
    fu: list[bytes] | None = None  # fragments of the NAL unit being rebuilt
    for payload in payloads:
        if not payload:
            continue
        nal_type = payload[0] & 0x1F
        if nal_type == NAL_FU_A:
            if len(payload) < 2:
                raise ValueError("H.264 FU-A is truncated")
            header = payload[1]
            if header & 0x80:  # start: rebuild the NAL header from indicator + FU header
                fu = [START_CODE, bytes(((payload[0] & 0xE0) | (header & 0x1F),)), payload[2:]]
            elif fu is None:
                raise ValueError("H.264 FU-A continues a fragment that never started")
            else:
                fu.append(payload[2:])
            if header & 0x40:  # end
                out.extend(fu)
                fu = None
        elif nal_type == NAL_STAP_A:
            out.extend(_stap_a(payload))
        elif 1 <= nal_type <= 23:
            out.append(START_CODE)
            out.append(payload)
        else:
            raise ValueError(f"H.264 NAL type {nal_type} is not supported (mode 1 only)")
    if fu is not None:
        raise ValueError("H.264 FU-A fragment has no end")
    return b"".join(out)


def _stap_a(payload: bytes) -> list[bytes]:
    """The NAL units of a STAP-A aggregate, each behind a start code."""
    out = []
    pos, size = 1, len(payload)
    while pos < size:
        if pos + 2 > size:
            raise ValueError("H.264 STAP-A is truncated")
        length = (payload[pos] << 8) | payload[pos + 1]
        pos += 2
        if length == 0 or pos + length > size:
            raise ValueError("H.264 STAP-A is truncated")
        out.append(START_CODE)
        out.append(payload[pos : pos + length])
        pos += length
    return out


def h264_parameter_sets(annexb: bytes) -> bytes | None:
    """SPS + PPS of an access unit (Annex B), when it carries both and an IDR slice.

    This is what a Matroska CodecPrivate is made from; browsers send SPS and PPS in
    front of every IDR (one STAP-A), so any keyframe the recorder starts at has them.
    """
    sps = pps = None
    idr = False
    for nal in annexb.split(START_CODE):
        if not nal:
            continue
        nal_type = nal[0] & 0x1F
        if nal_type == NAL_SPS and sps is None:
            sps = nal
        elif nal_type == NAL_PPS and pps is None:
            pps = nal
        elif nal_type == NAL_IDR:
            idr = True
    if sps is None or pps is None or not idr:
        return None
    return START_CODE + sps + START_CODE + pps


def opus_samples(packet: bytes) -> int:
    """Duration of an Opus packet in 48 kHz samples, from its TOC (RFC 6716 §3.1); 0 if empty."""
    if not packet:
        return 0
    toc = packet[0]
    per_frame = _OPUS_FRAME_SAMPLES[toc >> 3]
    code = toc & 0x03
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        frames = packet[1] & 0x3F if len(packet) > 1 else 0
    return per_frame * frames
