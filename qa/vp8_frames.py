"""VP8 RTP packets -> decoded pictures, for a LiteClient viewer's glass-to-glass figure.

Why: the LiteClient receives without decoding, so it cannot see the capture stamp that
Python and Chromium publishers draw into their pictures (``clients.stamp``). The runner
lets one LiteClient of each group assemble and decode what it receives, as a browser
would, and reads the stamp when a frame decodes. Sans-I/O: packets in, pictures out.

``Vp8FrameAssembler`` returns a frame once it has the packet that starts it (VP8
descriptor S=1, partition 0), the one with the marker bit and every sequence number
between (retransmissions fill the holes), in order: a decoder needs frames in order, and
a frame decoded against a skipped reference reads as no stamp (its check fails).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("ferry.qa.vp8_frames")

MAX_PACKETS = 2000  # held while waiting for missing ones (a few seconds of video)

def vp8_payload(payload: bytes) -> tuple[bool, bytes] | None:
    """(starts a frame, VP8 data) from an RTP payload with its VP8 descriptor (RFC 7741)."""
    if not payload:
        return None
    b0 = payload[0]
    start = bool(b0 & 0x10) and (b0 & 0x07) == 0
    i = 1
    if b0 & 0x80:  # X: extension byte follows
        if len(payload) < 2:
            return None
        x = payload[1]
        i = 2
        if x & 0x80:  # I: picture id, 7 or 15 bits
            if len(payload) <= i:
                return None
            i += 2 if payload[i] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            i += 1
        if x & 0x30:  # T or K: TID/Y/KEYIDX
            i += 1
    if i >= len(payload):
        return None
    return start, payload[i:]


class Vp8FrameAssembler:
    """Packets of one VP8 stream -> complete encoded frames, in order (see the module
    docstring). A frame missing a packet holds the later ones back, as a receiver's
    jitter buffer does while a retransmission may come, until ``GIVE_UP`` later frames
    are complete; then it is skipped."""

    GIVE_UP = 8

    def __init__(self) -> None:
        self.packets: dict[int, tuple[bool, bool, bytes]] = {}  # ext seq -> start, marker, data
        self.high: int | None = None  # highest extended sequence number seen
        self.next_seq: int | None = None  # where the next frame to return starts
        self.frames = 0
        self.skipped = 0

    def _extend(self, seq: int) -> int:
        if self.high is None:
            self.high = seq + 65536
            return self.high
        delta = (seq - self.high) & 0xFFFF
        ext = self.high + delta if delta < 0x8000 else self.high + delta - 0x10000
        self.high = max(self.high, ext)
        return ext

    def add(self, seq: int, timestamp: int, marker: bool, payload: bytes) -> list[bytes]:
        """One packet (an RTP timestamp is not needed: sequence numbers order frames;
        an RTX copy comes as its original ``seq``); the frames it lets out, in order."""
        del timestamp
        parsed = vp8_payload(payload)
        if parsed is None:
            return []
        ext = self._extend(seq)
        if self.next_seq is not None and ext < self.next_seq:
            return []  # a frame already returned or skipped
        if len(self.packets) >= MAX_PACKETS:  # nothing completes: start over at a new frame
            self.packets.clear()
            self.next_seq = None
            self.skipped += 1
        self.packets[ext] = (parsed[0], marker, parsed[1])
        if self.next_seq is None:
            if not parsed[0]:
                return []
            self.next_seq = ext
        out: list[bytes] = []
        while True:
            frame = self._complete_at(self.next_seq)
            if frame is not None:
                out.append(frame[1])
                self.frames += 1
                self._release(frame[0] + 1)
                continue
            later = self._complete_frames()
            if len(later) <= self.GIVE_UP:
                return out
            self.skipped += 1
            self._release(later[0])

    def _complete_at(self, first: int) -> tuple[int, bytes] | None:
        """(marker seq, data) of the complete frame starting at ``first``, if any."""
        p = self.packets.get(first)
        if p is None or not p[0]:
            return None
        data, s = [], first
        while True:
            p = self.packets.get(s)
            if p is None or (s != first and p[0]):
                return None
            data.append(p[2])
            if p[1]:
                return s, b"".join(data)
            s += 1

    def _complete_frames(self) -> list[int]:
        return [s for s in sorted(self.packets) if self.packets[s][0]
                and self._complete_at(s) is not None]

    def _release(self, next_seq: int) -> None:
        for s in [s for s in self.packets if s < next_seq]:
            del self.packets[s]
        self.next_seq = next_seq


class Vp8Decoder:
    """libvpx through PyAV: encoded frames -> luma planes (None when it cannot decode)."""

    def __init__(self) -> None:
        import av

        self._av = av
        self.codec: Any = av.CodecContext.create("libvpx", "r")
        self.errors = 0

    def decode(self, frame: bytes) -> Any:
        try:
            pictures = self.codec.decode(self._av.Packet(frame))
        except Exception:  # noqa: BLE001 - a frame against a lost reference
            self.errors += 1
            if self.errors == 1:
                logger.info("a VP8 frame did not decode (later ones are not logged)")
            return None
        return pictures[-1].to_ndarray(format="gray") if pictures else None
