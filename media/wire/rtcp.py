"""RTCP compound parsing and builders (cold path).

Reuses aiortc's dataclasses (`aiortc.rtp`) for SR, RR, SDES, BYE, NACK and generic
PSFB, and adds what aiortc lacks: transport-wide feedback (`TwccFeedback`, RTPFB
fmt 15), FIR (PSFB fmt 4) and REMB (PSFB fmt 15) as Ferry dataclasses. `parse_rtcp`
only ever raises ValueError, so a shell can drop a bad datagram with one `except`.
RFC 3550, RFC 4585 (feedback), RFC 5104 (FIR), draft-alvestrand-rmcat-remb-03.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aiortc.rtp import (
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    pack_remb_fci,
    unpack_remb_fci,
)

from media.wire.seqnum import Unwrapper
from media.wire.twcc import TwccFeedback

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_APP = 204
RTCP_RTPFB = 205
RTCP_PSFB = 206
RTCP_XR = 207

RTPFB_NACK = 1
RTPFB_TWCC = 15
PSFB_PLI = 1
PSFB_FIR = 4
PSFB_AFB = 15  # application layer feedback: REMB

SDES_CNAME = 1

__all__ = [
    "Fir",
    "Remb",
    "Unknown",
    "TwccFeedback",
    "RtcpByePacket",
    "RtcpPsfbPacket",
    "RtcpReceiverInfo",
    "RtcpRrPacket",
    "RtcpRtpfbPacket",
    "RtcpSdesPacket",
    "RtcpSenderInfo",
    "RtcpSourceInfo",
    "RtcpSrPacket",
    "parse_rtcp",
    "build_nack",
    "build_pli",
    "build_fir",
    "build_remb",
    "build_rr",
    "build_sr",
    "build_sdes_cname",
    "build_bye",
    "nack_seqs",
]


def _pack(packet_type: int, count: int, payload: bytes) -> bytes:
    """RTCP common header + payload (payload already a multiple of 4 bytes)."""
    return struct.pack("!BBH", 0x80 | count, packet_type, len(payload) // 4) + payload


@dataclass(slots=True)
class Fir:
    """Full Intra Request (RFC 5104 §4.3.1): entries of (media ssrc, command seq nr)."""

    sender_ssrc: int
    media_ssrc: int = 0  # SHALL be 0 per RFC 5104; the targets are in `entries`
    entries: list[tuple[int, int]] = field(default_factory=list)

    def __bytes__(self) -> bytes:
        fci = b"".join(struct.pack("!IB3x", ssrc, seqnr & 0xFF) for ssrc, seqnr in self.entries)
        return _pack(RTCP_PSFB, PSFB_FIR, struct.pack("!II", self.sender_ssrc, self.media_ssrc) + fci)


@dataclass(slots=True)
class Remb:
    """Receiver Estimated Maximum Bitrate (bits/s) for `ssrcs`."""

    sender_ssrc: int
    bitrate: int
    ssrcs: list[int] = field(default_factory=list)

    def __bytes__(self) -> bytes:
        return build_remb(self.sender_ssrc, self.bitrate, self.ssrcs)


@dataclass(slots=True)
class Unknown:
    """An RTCP packet Ferry does not interpret (APP, XR, other feedback formats)."""

    pt: int
    fmt: int
    data: bytes = b""

    def __bytes__(self) -> bytes:
        return self.data


RtcpPacketType = (
    RtcpSrPacket
    | RtcpRrPacket
    | RtcpSdesPacket
    | RtcpByePacket
    | RtcpRtpfbPacket
    | RtcpPsfbPacket
    | TwccFeedback
    | Fir
    | Remb
    | Unknown
)


def parse_rtcp(data: bytes | bytearray | memoryview) -> list[RtcpPacketType]:
    """Parse a compound RTCP packet. Raises ValueError (only) on malformed input."""
    try:
        return _parse_compound(bytes(data))
    except (struct.error, IndexError, OverflowError) as exc:
        raise ValueError(f"RTCP packet is malformed: {exc}") from None


def _parse_compound(data: bytes) -> list[RtcpPacketType]:
    n = len(data)
    if not n:
        raise ValueError("RTCP packet is empty")
    pos = 0
    packets: list[RtcpPacketType] = []
    while pos < n:
        if n - pos < 4:
            raise ValueError("RTCP packet length is less than 4 bytes")
        b0, pt, length = struct.unpack_from("!BBH", data, pos)
        if b0 >> 6 != 2:
            raise ValueError("RTCP packet has invalid version")
        end = pos + 4 + 4 * length
        if end > n:
            raise ValueError("RTCP packet is truncated")
        payload = data[pos + 4 : end]
        if b0 & 0x20:
            if not payload or not payload[-1] or payload[-1] > len(payload):
                raise ValueError("RTCP packet padding length is invalid")
            payload = payload[: -payload[-1]]
        packets.append(_parse_one(pt, b0 & 0x1F, payload, data[pos:end]))
        pos = end
    return packets


def _parse_one(pt: int, count: int, payload: bytes, whole: bytes) -> RtcpPacketType:
    if pt == RTCP_SR:
        need = 24 + 24 * count
        if len(payload) < need:
            raise ValueError("RTCP sender report length is invalid")
        return RtcpSrPacket.parse(payload[:need], count)  # drop profile extensions
    if pt == RTCP_RR:
        need = 4 + 24 * count
        if len(payload) < need:
            raise ValueError("RTCP receiver report length is invalid")
        return RtcpRrPacket.parse(payload[:need], count)
    if pt == RTCP_SDES:
        return _parse_sdes(payload, count)
    if pt == RTCP_BYE:
        return RtcpByePacket.parse(payload, count)
    if pt == RTCP_RTPFB:
        if count == RTPFB_NACK:
            return RtcpRtpfbPacket.parse(payload, count)
        if count == RTPFB_TWCC:
            return TwccFeedback.parse(whole)
        return Unknown(pt, count, whole)
    if pt == RTCP_PSFB:
        if len(payload) < 8:
            raise ValueError("RTCP payload-specific feedback length is invalid")
        if count == PSFB_FIR:
            return _parse_fir(payload)
        if count == PSFB_AFB and payload[8:12] == b"REMB":
            sender = struct.unpack_from("!I", payload)[0]
            bitrate, ssrcs = unpack_remb_fci(payload[8:])
            return Remb(sender, bitrate, ssrcs)
        return RtcpPsfbPacket.parse(payload, count)
    return Unknown(pt, count, whole)


def _parse_fir(payload: bytes) -> Fir:
    if len(payload) % 8:
        raise ValueError("RTCP FIR length is invalid")
    sender, media = struct.unpack_from("!II", payload)
    entries = [
        (struct.unpack_from("!I", payload, pos)[0], payload[pos + 4])
        for pos in range(8, len(payload), 8)
    ]
    return Fir(sender, media, entries)


def _parse_sdes(payload: bytes, count: int) -> RtcpSdesPacket:
    """SDES with per-chunk 32-bit alignment (aiortc's parser ignores it)."""
    n = len(payload)
    pos = 0
    chunks = []
    for _ in range(count):
        if pos + 4 > n:
            raise ValueError("RTCP SDES source is truncated")
        ssrc = struct.unpack_from("!I", payload, pos)[0]
        pos += 4
        items: list[tuple[int, bytes]] = []
        while True:
            if pos >= n:
                raise ValueError("RTCP SDES item is truncated")
            item_type = payload[pos]
            if item_type == 0:  # end of chunk, then pad to a 32-bit boundary
                pos = (pos + 4) & ~3
                break
            if pos + 2 > n or pos + 2 + payload[pos + 1] > n:
                raise ValueError("RTCP SDES item is truncated")
            end = pos + 2 + payload[pos + 1]
            items.append((item_type, payload[pos + 2 : end]))
            pos = end
        chunks.append(RtcpSourceInfo(ssrc=ssrc, items=items))
    return RtcpSdesPacket(chunks=chunks)


# --- builders -------------------------------------------------------------------------


def build_nack(sender_ssrc: int, media_ssrc: int, seqs: Iterable[int]) -> bytes:
    """Generic NACK (RFC 4585 §6.2.1) packing PID/BLP pairs; seqs may span the wrap.

    Seqs are 16-bit or extended; they are unwrapped in the given order, so a list
    like [65534, 65535, 0, 1] yields one PID/BLP pair.
    """
    unwrapper = Unwrapper()
    ext = sorted({unwrapper.unwrap(s & 0xFFFF) for s in seqs})
    if not ext:
        raise ValueError("NACK needs at least one sequence number")
    fci = bytearray()
    pid = ext[0]
    blp = 0
    for s in ext[1:]:
        d = s - pid - 1
        if d < 16:
            blp |= 1 << d
        else:
            fci += struct.pack("!HH", pid & 0xFFFF, blp)
            pid, blp = s, 0
    fci += struct.pack("!HH", pid & 0xFFFF, blp)
    return _pack(RTCP_RTPFB, RTPFB_NACK, struct.pack("!II", sender_ssrc, media_ssrc) + bytes(fci))


def nack_seqs(pkt: RtcpRtpfbPacket) -> list[int]:
    """16-bit seqs a NACK asks for (aiortc's `lost` does not wrap past 65535)."""
    return [s & 0xFFFF for s in pkt.lost]


def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    return _pack(RTCP_PSFB, PSFB_PLI, struct.pack("!II", sender_ssrc, media_ssrc))


def build_fir(sender_ssrc: int, media_ssrc: int, seqnr: int) -> bytes:
    """FIR for one media sender; `seqnr` must increase per new request (mod 256)."""
    return bytes(Fir(sender_ssrc, 0, [(media_ssrc, seqnr & 0xFF)]))


def build_remb(sender_ssrc: int, bitrate: int, ssrcs: Sequence[int]) -> bytes:
    if not 0 <= bitrate < (0x3FFFF << 63):
        raise ValueError(f"REMB bitrate {bitrate} cannot be encoded")
    if len(ssrcs) > 255:
        raise ValueError("REMB cannot list more than 255 SSRCs")
    payload = struct.pack("!II", sender_ssrc, 0) + pack_remb_fci(bitrate, list(ssrcs))
    return _pack(RTCP_PSFB, PSFB_AFB, payload)


def build_rr(sender_ssrc: int, reports: Sequence[RtcpReceiverInfo]) -> bytes:
    if len(reports) > 31:
        raise ValueError("RTCP receiver report cannot carry more than 31 report blocks")
    return bytes(RtcpRrPacket(ssrc=sender_ssrc, reports=list(reports)))


def build_sr(
    sender_ssrc: int,
    ntp_timestamp: int,
    rtp_timestamp: int,
    packet_count: int,
    octet_count: int,
    reports: Sequence[RtcpReceiverInfo] = (),
) -> bytes:
    """Sender report; `ntp_timestamp` is the 64-bit NTP time (32.32 fixed point)."""
    if len(reports) > 31:
        raise ValueError("RTCP sender report cannot carry more than 31 report blocks")
    info = RtcpSenderInfo(
        ntp_timestamp=ntp_timestamp & 0xFFFFFFFFFFFFFFFF,
        rtp_timestamp=rtp_timestamp & 0xFFFFFFFF,
        packet_count=packet_count & 0xFFFFFFFF,
        octet_count=octet_count & 0xFFFFFFFF,
    )
    return bytes(RtcpSrPacket(ssrc=sender_ssrc, sender_info=info, reports=list(reports)))


def build_sdes_cname(ssrc: int, cname: str) -> bytes:
    value = cname.encode("utf-8")
    if len(value) > 255:
        raise ValueError("SDES CNAME is longer than 255 bytes")
    chunk = struct.pack("!IBB", ssrc, SDES_CNAME, len(value)) + value + b"\x00"
    chunk += b"\x00" * (-len(chunk) % 4)
    return _pack(RTCP_SDES, 1, chunk)


def build_bye(ssrcs: Sequence[int]) -> bytes:
    if len(ssrcs) > 31:
        raise ValueError("RTCP BYE cannot list more than 31 SSRCs")
    return bytes(RtcpByePacket(sources=list(ssrcs)))
