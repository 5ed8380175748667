"""H.264 keyframe detection from RTP payloads (RFC 6184), for layer switching.

The forwarder never depacketizes; it only needs to know where a decoder can start:
a packet carrying an SPS (alone, or first in a STAP-A, as Chrome sends SPS+PPS+IDR)
or starting an IDR slice (single NAL, or the first FU-A fragment).
"""

from __future__ import annotations

NAL_IDR = 5
NAL_SPS = 7
NAL_STAP_A = 24
NAL_FU_A = 28


def is_keyframe_start(payload: bytes | memoryview) -> bool:
    """True when a decoder can start at this packet. Never raises on short input."""
    if not payload:
        return False
    nal = payload[0] & 0x1F
    if nal in (NAL_SPS, NAL_IDR):
        return True
    if nal == NAL_STAP_A:
        pos, size = 1, len(payload)
        while pos + 2 < size:
            length = (payload[pos] << 8) | payload[pos + 1]
            if length == 0 or pos + 2 + length > size:
                return False
            if payload[pos + 2] & 0x1F in (NAL_SPS, NAL_IDR):
                return True
            pos += 2 + length
        return False
    if nal == NAL_FU_A and len(payload) > 1:
        header = payload[1]
        return bool(header & 0x80) and header & 0x1F == NAL_IDR
    return False
