"""RTP header view, builder and in-place rewrite for the forwarding hot path.

`parse_rtp` reads the fixed header (and, when present, the extension header) with a
single `struct.unpack_from` and keeps only offsets: header extensions are looked up
lazily and the payload is never copied. This is what lets a forwarded packet cost a
few µs in Python (DESIGN §3). RFC 3550 (RTP), RFC 8285 (header extensions), RFC 4588
(RTX), RFC 6464 (audio level), RFC 5761 (RTP/RTCP mux).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence

RTP_HEADER_LENGTH = 12
ONE_BYTE_PROFILE = 0xBEDE
TWO_BYTE_PROFILE = 0x1000  # low 4 bits ("appbits") may be anything

_HDR12 = struct.Struct("!BBHII")
_HDR16 = struct.Struct("!BBHIIHH")  # fixed header + extension profile/length when CC == 0
_unpack12 = _HDR12.unpack_from
_unpack16 = _HDR16.unpack_from
_REWRITE = struct.Struct("!HII")
_REWRITE_B1 = struct.Struct("!BHII")
_pack_rewrite = _REWRITE.pack_into
_pack_rewrite_b1 = _REWRITE_B1.pack_into
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_EXT_HDR = struct.Struct("!HH")

ERR_SHORT = "RTP packet length is less than 12 bytes"
ERR_VERSION = "RTP packet has invalid version"
ERR_CSRC = "RTP packet has truncated CSRC"
ERR_EXT_HEADER = "RTP packet has truncated extension profile / length"
ERR_EXT_VALUE = "RTP packet has truncated extension value"
ERR_PADDING = "RTP packet padding length is invalid"
ERR_ONE_BYTE = "RTP one-byte header extension value is truncated"
ERR_TWO_BYTE = "RTP two-byte header extension is truncated"
ERR_RTX = "RTX payload is shorter than 2 bytes"


class RtpView:
    """Offsets into one RTP packet; the bytes stay in `buf` and are never copied.

    `ext_start`/`ext_end` delimit the extension *data* (after the 4-byte extension
    header), both -1 when the X bit is clear. `payload_end` excludes padding.
    """

    __slots__ = (
        "buf",
        "payload_type",
        "marker",
        "seq",
        "timestamp",
        "ssrc",
        "csrc_count",
        "ext_profile",
        "ext_start",
        "ext_end",
        "payload_start",
        "payload_end",
        "_payload",
    )

    buf: bytes | bytearray
    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    csrc_count: int
    ext_profile: int
    ext_start: int
    ext_end: int
    payload_start: int
    payload_end: int

    def __repr__(self) -> str:
        return (
            f"RtpView(pt={self.payload_type}, m={self.marker}, seq={self.seq}, "
            f"ts={self.timestamp}, ssrc={self.ssrc}, payload={self.payload_end - self.payload_start}B)"
        )

    @property
    def payload(self) -> memoryview:
        """The payload without padding, as a zero-copy view; one view per packet, shared
        by every reader (each subscriber's RTX ring keeps it: ~180 bytes a copy)."""
        payload = self._payload
        if payload is None:
            payload = self._payload = memoryview(self.buf)[self.payload_start : self.payload_end]
        return payload

    @property
    def csrcs(self) -> list[int]:
        return [
            int.from_bytes(self.buf[12 + 4 * i : 16 + 4 * i], "big") for i in range(self.csrc_count)
        ]

    def extension(self, ext_id: int) -> bytes | bytearray | None:
        """Value of header extension `ext_id` (a slice of `buf`), or None if absent.

        Parsed on demand (one-byte 0xBEDE and two-byte 0x100X forms) because most
        packets only need one or two of their extensions. Raises ValueError when the
        requested element runs past the extension block.
        """
        pos = self.ext_start
        if pos < 0:
            return None
        end = self.ext_end
        buf = self.buf
        profile = self.ext_profile
        if profile == ONE_BYTE_PROFILE:
            while pos < end:
                b = buf[pos]
                if b >> 4 == ext_id and b:
                    nxt = pos + (b & 0x0F) + 2
                    if nxt > end:
                        raise ValueError(ERR_ONE_BYTE)
                    return buf[pos + 1 : nxt]
                if b:
                    if b > 0xEF:  # id 15 is reserved: stop parsing (RFC 8285 §4.2)
                        return None
                    pos += (b & 0x0F) + 2
                else:  # padding
                    pos += 1
            return None
        if profile & 0xFFF0 == TWO_BYTE_PROFILE:
            while pos < end:
                i = buf[pos]
                if i == 0:
                    pos += 1
                    continue
                if pos + 2 > end:
                    raise ValueError(ERR_TWO_BYTE)
                nxt = pos + 2 + buf[pos + 1]
                if i == ext_id:
                    if nxt > end:
                        raise ValueError(ERR_TWO_BYTE)
                    return buf[pos + 2 : nxt]
                pos = nxt
            return None
        return None

    def extensions(self) -> list[tuple[int, bytes]]:
        """All header extension elements in wire order (cold path: tests, RTX, logs)."""
        buf = self.buf
        return [(i, bytes(buf[s:e])) for i, s, e in self._iter_elements()]

    def _iter_elements(self) -> Iterator[tuple[int, int, int]]:
        pos, end, buf = self.ext_start, self.ext_end, self.buf
        if pos < 0:
            return
        if self.ext_profile == ONE_BYTE_PROFILE:
            while pos < end:
                b = buf[pos]
                if b == 0:
                    pos += 1
                    continue
                if b >> 4 == 15:
                    return
                nxt = pos + 1 + (b & 0x0F) + 1
                if nxt > end:
                    raise ValueError(ERR_ONE_BYTE)
                yield b >> 4, pos + 1, nxt
                pos = nxt
        elif self.ext_profile & 0xFFF0 == TWO_BYTE_PROFILE:
            while pos < end:
                i = buf[pos]
                if i == 0:
                    pos += 1
                    continue
                if pos + 2 > end or pos + 2 + buf[pos + 1] > end:
                    raise ValueError(ERR_TWO_BYTE)
                nxt = pos + 2 + buf[pos + 1]
                yield i, pos + 2, nxt
                pos = nxt


_new_view = object.__new__


def parse_rtp(data: bytes | bytearray) -> RtpView:
    """Parse an RTP header into an `RtpView` (no copy). ValueError on malformed input."""
    n = len(data)
    if n >= 16:
        b0, b1, seq, ts, ssrc, profile, ext_words = _unpack16(data)
    elif n >= RTP_HEADER_LENGTH:
        b0, b1, seq, ts, ssrc = _unpack12(data)
        profile = ext_words = -1
    else:
        raise ValueError(ERR_SHORT)
    if b0 & 0xC0 != 0x80:
        raise ValueError(ERR_VERSION)
    v: RtpView = _new_view(RtpView)
    v.buf = data
    v.payload_type = b1 & 0x7F
    v.marker = b1 > 127
    v.seq = seq
    v.timestamp = ts
    v.ssrc = ssrc
    cc = b0 & 0x0F
    v.csrc_count = cc
    pos = 12
    if cc:
        pos += 4 * cc
        if n < pos:
            raise ValueError(ERR_CSRC)
        if b0 & 0x10:
            if n < pos + 4:
                raise ValueError(ERR_EXT_HEADER)
            profile = (data[pos] << 8) | data[pos + 1]
            ext_words = (data[pos + 2] << 8) | data[pos + 3]
    if b0 & 0x10:
        if profile < 0:
            raise ValueError(ERR_EXT_HEADER)
        pos += 4
        end = pos + 4 * ext_words
        if n < end:
            raise ValueError(ERR_EXT_VALUE)
        v.ext_profile = profile
        v.ext_start = pos
        v.ext_end = end
        pos = end
    else:
        v.ext_profile = 0
        v.ext_start = -1
        v.ext_end = -1
    v.payload_start = pos
    v._payload = None
    if b0 & 0x20:
        pad = data[-1]
        if not pad or pad > n - pos:
            raise ValueError(ERR_PADDING)
        v.payload_end = n - pad
    else:
        v.payload_end = n
    return v


def is_rtcp(data: bytes | bytearray | memoryview) -> bool:
    """RFC 5761 §4: in a muxed stream, a second byte of 192..223 means RTCP."""
    return len(data) >= 2 and 192 <= data[1] <= 223


_BYTE = [bytes((i,)) for i in range(256)]
_PAD = (b"", b"\x00\x00\x00", b"\x00\x00", b"\x00")


def _pack_extensions(extensions: Sequence[tuple[int, bytes]]) -> tuple[int, bytes]:
    """(profile, block padded to 32 bits): one-byte form when every element allows it."""
    parts: list[bytes] = []
    size = 0
    for i, val in extensions:
        n = len(val)
        if not (0 < i < 15 and 0 < n <= 16):
            return _pack_two_byte(extensions)
        parts.append(_BYTE[(i << 4) | (n - 1)])
        parts.append(val)
        size += n + 1
    parts.append(_PAD[size & 3])
    return ONE_BYTE_PROFILE, b"".join(parts)


def _pack_two_byte(extensions: Sequence[tuple[int, bytes]]) -> tuple[int, bytes]:
    parts: list[bytes] = []
    size = 0
    for i, val in extensions:
        if not 1 <= i <= 255:
            raise ValueError(f"RTP header extension id {i} is invalid")
        if len(val) > 255:
            raise ValueError(f"RTP header extension {i} value is longer than 255 bytes")
        parts.append(_BYTE[i])
        parts.append(_BYTE[len(val)])
        parts.append(val)
        size += len(val) + 2
    parts.append(_PAD[size & 3])
    return TWO_BYTE_PROFILE, b"".join(parts)


def build_rtp(
    *,
    payload_type: int,
    seq: int,
    timestamp: int,
    ssrc: int,
    payload: bytes | bytearray | memoryview,
    marker: bool = False,
    extensions: Sequence[tuple[int, bytes]] = (),
    csrcs: Sequence[int] = (),
) -> bytes:
    """Serialize an RTP packet (no padding), copying the payload exactly once."""
    b1 = (0x80 if marker else 0) | (payload_type & 0x7F)
    seq &= 0xFFFF
    timestamp &= 0xFFFFFFFF
    ssrc &= 0xFFFFFFFF
    if csrcs:
        if len(csrcs) > 15:
            raise ValueError("RTP packet cannot carry more than 15 CSRCs")
        head = _HDR12.pack(0x80 | (0x10 if extensions else 0) | len(csrcs), b1, seq, timestamp, ssrc)
        head += struct.pack(f"!{len(csrcs)}I", *csrcs)
        if not extensions:
            return b"".join((head, payload))
        profile, block = _pack_extensions(extensions)
        return b"".join((head, _EXT_HDR.pack(profile, len(block) >> 2), block, payload))
    if not extensions:
        return b"".join((_HDR12.pack(0x80, b1, seq, timestamp, ssrc), payload))
    profile, block = _pack_extensions(extensions)
    head = _HDR16.pack(0x90, b1, seq, timestamp, ssrc, profile, len(block) >> 2)
    return b"".join((head, block, payload))


def build_padding_only(
    *, payload_type: int, seq: int, timestamp: int, ssrc: int, size: int,
    extensions: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """A packet with no payload, only RTP padding (P bit set, RFC 3550 5.1), about
    ``size`` bytes long: the receiver drops it after counting it, so it draws
    transport-wide feedback without being media. Padding is 1-255 bytes."""
    head = build_rtp(payload_type=payload_type, seq=seq, timestamp=timestamp, ssrc=ssrc,
                     payload=b"", extensions=extensions)
    pad = min(255, max(1, size - len(head)))
    first = bytes((head[0] | 0x20,))
    return b"".join((first, head[1:], bytes(pad - 1), _BYTE[pad]))


def build_rtp_view(
    *,
    payload_type: int,
    seq: int,
    timestamp: int,
    ssrc: int,
    payload: bytes | bytearray | memoryview,
    marker: bool = False,
) -> RtpView:
    """A packet without extensions or CSRCs (a repaired or rebuilt one), built and
    returned as its view: its offsets are known, so it is not parsed again."""
    b1 = (0x80 if marker else 0) | (payload_type & 0x7F)
    seq &= 0xFFFF
    timestamp &= 0xFFFFFFFF
    ssrc &= 0xFFFFFFFF
    buf = b"".join((_HDR12.pack(0x80, b1, seq, timestamp, ssrc), payload))
    v: RtpView = _new_view(RtpView)
    v.buf = buf
    v.payload_type = payload_type & 0x7F
    v.marker = marker
    v.seq = seq
    v.timestamp = timestamp
    v.ssrc = ssrc
    v.csrc_count = 0
    v.ext_profile = 0
    v.ext_start = -1
    v.ext_end = -1
    v.payload_start = RTP_HEADER_LENGTH
    v.payload_end = len(buf)
    v._payload = None
    return v


def rewrite_header(
    buf: bytearray,
    *,
    seq: int,
    timestamp: int,
    ssrc: int,
    payload_type: int | None = None,
    marker: bool | None = None,
) -> None:
    """Overwrite seq/timestamp/ssrc (and optionally PT and marker) in place."""
    if payload_type is None and marker is None:
        _pack_rewrite(buf, 2, seq, timestamp, ssrc)
        return
    b1 = buf[1]
    if payload_type is not None:
        b1 = (b1 & 0x80) | (payload_type & 0x7F)
    if marker is not None:
        b1 = (b1 & 0x7F) | (0x80 if marker else 0)
    _pack_rewrite_b1(buf, 1, b1, seq, timestamp, ssrc)


def wrap_rtx(
    packet: RtpView | bytes | bytearray, *, payload_type: int, seq: int, ssrc: int
) -> bytes:
    """RFC 4588 retransmission: original seq (OSN) prepended to the payload.

    The header (CSRCs, extensions, marker, timestamp) is kept; padding is dropped. The
    payload is copied once.
    """
    view = packet if isinstance(packet, RtpView) else parse_rtp(packet)
    buf = memoryview(view.buf)
    head = bytearray(buf[: view.payload_start])
    head[0] &= 0xDF  # no padding in the RTX packet
    head[1] = (head[1] & 0x80) | (payload_type & 0x7F)
    _U16.pack_into(head, 2, seq & 0xFFFF)
    _U32.pack_into(head, 8, ssrc & 0xFFFFFFFF)
    return b"".join((head, _U16.pack(view.seq), buf[view.payload_start : view.payload_end]))


def unwrap_rtx(view: RtpView) -> tuple[int, memoryview]:
    """(original seq, original payload) of an RTX packet."""
    start = view.payload_start
    if view.payload_end - start < 2:
        raise ValueError(ERR_RTX)
    buf = view.buf
    return (buf[start] << 8) | buf[start + 1], memoryview(buf)[start + 2 : view.payload_end]


# --- header extension value codecs --------------------------------------------------


def parse_audio_level(b: bytes | bytearray) -> tuple[bool, int]:
    """RFC 6464: (voice activity, level in -dBov 0..127; 127 is silence)."""
    if not b:
        raise ValueError("audio level extension is empty")
    return bool(b[0] & 0x80), b[0] & 0x7F


def build_audio_level(voice: bool, level: int) -> bytes:
    if not 0 <= level <= 127:
        raise ValueError(f"audio level {level} is outside 0..127")
    return bytes([(0x80 if voice else 0) | level])


def parse_twcc_seq(b: bytes | bytearray) -> int:
    """Transport-wide sequence number (16 bit, big endian)."""
    if len(b) < 2:
        raise ValueError("transport-wide sequence number extension is truncated")
    return (b[0] << 8) | b[1]


def build_twcc_seq(seq: int) -> bytes:
    return _U16.pack(seq & 0xFFFF)


def build_abs_send_time(now_ms: float) -> bytes:
    """abs-send-time: seconds in 6.18 fixed point, 24 bits (wraps every 64 s)."""
    value = round(now_ms * (1 << 18) / 1000.0) & 0xFFFFFF
    return value.to_bytes(3, "big")


def parse_abs_send_time(b: bytes | bytearray) -> float:
    """abs-send-time value in seconds (0 <= t < 64)."""
    if len(b) < 3:
        raise ValueError("abs-send-time extension is truncated")
    return ((b[0] << 16) | (b[1] << 8) | b[2]) / (1 << 18)


def parse_sdes_string(b: bytes | bytearray) -> str:
    """mid / rid / repaired-rid values: ASCII identifiers."""
    try:
        return bytes(b).decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("SDES string extension is not ASCII") from None
