"""Transport-wide congestion control feedback on the wire (draft-holmer-rmcat-transport-wide-cc-extensions-01).

`TwccFeedback`: the RTCP RTPFB fmt 15 packet, `parse` / `__bytes__`. The receiver and
sender logic around it (`TwccRecorder`, `TwccSendHistory`) is in `media.rtp.twcc`.

Wire layout after the 8-byte RTCP feedback header: base seq (16), packet status count
(16), reference time (24, units of 64 ms), feedback packet count (8), then 16-bit packet
status chunks, then one receive delta per received packet (1 byte unsigned or 2 bytes
signed, in 250 µs ticks, each relative to the previous received packet; the first is
relative to the reference time), then padding to a 32-bit boundary.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

RTCP_RTPFB = 205
TWCC_FMT = 15
TICK_US = 250
REFERENCE_UNIT_US = 64000
MAX_RUN_LENGTH = 0x1FFF
MAX_STATUS_COUNT = 0xFFFF

# packet status symbols
NOT_RECEIVED = 0
SMALL_DELTA = 1
LARGE_DELTA = 2

_HEADER = struct.Struct("!BBHIIHHI")
_I16 = struct.Struct("!h")


@dataclass(slots=True)
class TwccFeedback:
    """One transport-wide feedback packet.

    `packets` holds `(seq, arrival_us)` for every seq from `base_seq` on (16-bit,
    wrapping), with arrival_us = reference_time * 64000 + cumulative deltas, or None
    when the packet was not received.
    """

    sender_ssrc: int
    media_ssrc: int
    base_seq: int
    reference_time: int
    fb_pkt_count: int
    packets: list[tuple[int, int | None]] = field(default_factory=list)

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> TwccFeedback:
        """Parse one whole RTCP packet (header included). ValueError if malformed."""
        n = len(data)
        if n < 20:
            raise ValueError("TWCC feedback is shorter than 20 bytes")
        b0, pt, length, sender, media, base, count, ref_fb = _HEADER.unpack_from(data)
        if b0 >> 6 != 2:
            raise ValueError("RTCP packet has invalid version")
        if pt != RTCP_RTPFB or b0 & 0x1F != TWCC_FMT:
            raise ValueError("RTCP packet is not a TWCC feedback")
        end = 4 + 4 * length
        if end > n:
            raise ValueError("TWCC feedback is truncated")
        if end < 20:
            raise ValueError("TWCC feedback length is invalid")
        if b0 & 0x20:
            pad = data[end - 1]
            if not pad or pad > end - 20:
                raise ValueError("TWCC feedback padding length is invalid")
            end -= pad
        symbols, pos = _decode_chunks(data, 20, end, count)
        ref = ref_fb >> 8
        t = ref * REFERENCE_UNIT_US
        packets: list[tuple[int, int | None]] = []
        append = packets.append
        seq = base
        for sym in symbols:
            if sym == NOT_RECEIVED:
                append((seq, None))
            elif sym == SMALL_DELTA:
                if pos >= end:
                    raise ValueError("TWCC receive deltas are truncated")
                t += data[pos] * TICK_US
                pos += 1
                append((seq, t))
            elif sym == LARGE_DELTA:
                if pos + 2 > end:
                    raise ValueError("TWCC receive deltas are truncated")
                t += _I16.unpack_from(data, pos)[0] * TICK_US
                pos += 2
                append((seq, t))
            else:
                raise ValueError("TWCC packet status symbol is reserved")
            seq = (seq + 1) & 0xFFFF
        return cls(sender, media, base, ref, ref_fb & 0xFF, packets)

    def __bytes__(self) -> bytes:
        count = len(self.packets)
        if count > MAX_STATUS_COUNT:
            raise ValueError("TWCC feedback cannot report more than 65535 packets")
        symbols, deltas = _symbols_and_deltas(self.packets, self.base_seq, self.reference_time)
        chunks = _encode_chunks(symbols)
        size = 20 + len(chunks) + len(deltas)
        pad = -size % 4
        b0 = 0x80 | TWCC_FMT | (0x20 if pad else 0)
        header = _HEADER.pack(
            b0,
            RTCP_RTPFB,
            (size + pad) // 4 - 1,
            self.sender_ssrc,
            self.media_ssrc,
            self.base_seq & 0xFFFF,
            count,
            ((self.reference_time & 0xFFFFFF) << 8) | (self.fb_pkt_count & 0xFF),
        )
        padding = b"\x00" * (pad - 1) + bytes([pad]) if pad else b""
        return b"".join((header, chunks, bytes(deltas), padding))


def _decode_chunks(
    data: bytes | bytearray | memoryview, pos: int, end: int, count: int
) -> tuple[list[int], int]:
    """Status symbols for `count` packets, and the offset of the first receive delta."""
    symbols: list[int] = []
    while len(symbols) < count:
        if pos + 2 > end:
            raise ValueError("TWCC packet status chunks are truncated")
        chunk = (data[pos] << 8) | data[pos + 1]
        pos += 2
        if not chunk & 0x8000:  # run length: T=0 | S(2) | run(13)
            run = min(chunk & MAX_RUN_LENGTH, count - len(symbols))
            symbols.extend([(chunk >> 13) & 0x03] * run)
        elif not chunk & 0x4000:  # status vector, 14 one-bit symbols
            symbols.extend([(chunk >> k) & 0x01 for k in range(13, -1, -1)])
        else:  # status vector, 7 two-bit symbols
            symbols.extend([(chunk >> k) & 0x03 for k in range(12, -1, -2)])
    del symbols[count:]
    return symbols, pos


def _symbols_and_deltas(
    packets: Sequence[tuple[int, int | None]], base_seq: int, reference_time: int
) -> tuple[list[int], bytearray]:
    symbols: list[int] = []
    deltas = bytearray()
    origin = (reference_time & 0xFFFFFF) * REFERENCE_UNIT_US
    prev = 0
    for i, (seq, arrival) in enumerate(packets):
        if seq != (base_seq + i) & 0xFFFF:
            raise ValueError("TWCC feedback packets must be consecutive from base_seq")
        if arrival is None:
            symbols.append(NOT_RECEIVED)
            continue
        ticks = int((arrival - origin + TICK_US // 2) // TICK_US)
        delta = ticks - prev
        prev = ticks
        if 0 <= delta <= 0xFF:
            symbols.append(SMALL_DELTA)
            deltas.append(delta)
        elif -0x8000 <= delta <= 0x7FFF:
            symbols.append(LARGE_DELTA)
            deltas += _I16.pack(delta)
        else:
            raise ValueError("TWCC receive delta does not fit in 16 bits")
    return symbols, deltas


def _encode_chunks(symbols: Sequence[int]) -> bytes:
    """Greedy chunking: run-length chunks for runs, status vectors for mixtures.

    A run becomes a run-length chunk when it is at least as long as a vector could
    hold (14 one-bit or 7 two-bit symbols) or ends the list; otherwise a one-bit
    vector is used when the next 14 symbols need no large delta, else a two-bit one.
    Every chunk but the last covers at least 7 symbols.
    """
    n = len(symbols)
    out = bytearray()
    i = 0
    while i < n:
        s = symbols[i]
        j = i + 1
        limit = min(n, i + MAX_RUN_LENGTH)
        while j < limit and symbols[j] == s:
            j += 1
        run = j - i
        if j == n or run >= 14 or (s == LARGE_DELTA and run >= 7):
            chunk = (s << 13) | run
            i = j
        else:
            window = symbols[i : i + 14]
            if max(window) <= SMALL_DELTA and (len(window) == 14 or i + len(window) == n):
                chunk = 0x8000
                for k, sym in enumerate(window):
                    chunk |= sym << (13 - k)
            else:
                window = symbols[i : i + 7]
                chunk = 0xC000
                for k, sym in enumerate(window):
                    chunk |= sym << (12 - 2 * k)
            i += len(window)
        out += chunk.to_bytes(2, "big")
    return bytes(out)
