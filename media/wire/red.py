"""RFC 2198 redundant audio (RED) payloads, as Chrome sends Opus in PT 63.

A RED payload is a list of block headers (4 bytes each with the F bit set: payload
type, timestamp offset, length; then one final byte for the primary) followed by
the blocks' data, oldest redundant block first and the primary last.
"""

from __future__ import annotations

from typing import NamedTuple


class RedBlock(NamedTuple):
    payload_type: int
    timestamp_offset: int  # how much older than the packet's timestamp (0 for primary)
    data: bytes


def parse_red(payload: bytes | memoryview) -> list[RedBlock]:
    """All blocks, oldest first, primary last. ValueError on malformed input."""
    headers: list[tuple[int, int, int]] = []
    pos = 0
    size = len(payload)
    while True:
        if pos >= size:
            raise ValueError("RED header truncated")
        first = payload[pos]
        if first & 0x80:
            if pos + 4 > size:
                raise ValueError("RED block header truncated")
            b1, b2, b3 = payload[pos + 1], payload[pos + 2], payload[pos + 3]
            offset = (b1 << 6) | (b2 >> 2)
            length = ((b2 & 0x03) << 8) | b3
            headers.append((first & 0x7F, offset, length))
            pos += 4
        else:
            headers.append((first & 0x7F, 0, -1))
            pos += 1
            break
    blocks: list[RedBlock] = []
    for pt, offset, length in headers:
        if length < 0:
            length = size - pos
        if pos + length > size:
            raise ValueError("RED block data truncated")
        blocks.append(RedBlock(pt, offset, bytes(payload[pos : pos + length])))
        pos += length
    return blocks


def primary_of(payload: bytes | memoryview) -> RedBlock:
    """The primary (newest) block: what a non-RED subscriber gets."""
    return parse_red(payload)[-1]


def build_red(primary_pt: int, primary: bytes, redundant: list[tuple[int, bytes | memoryview]]) -> bytes:
    """Build a RED payload; `redundant` is [(timestamp_offset, data)], oldest first."""
    out = bytearray()
    for offset, data in redundant:
        if offset >= 1 << 14 or len(data) >= 1 << 10:
            raise ValueError("RED block too old or too large")
        out += bytes(
            (
                0x80 | primary_pt,
                (offset >> 6) & 0xFF,
                ((offset & 0x3F) << 2) | (len(data) >> 8),
                len(data) & 0xFF,
            )
        )
    out.append(primary_pt & 0x7F)
    for _, data in redundant:
        out += data
    out += primary
    return bytes(out)
