"""Sequence number, timestamp and VP8 picture id continuity of one outgoing stream.

A DownTrack forwards packets of whichever simulcast layer its `LayerSelector` chose;
the subscriber must see one stream. `StreamRewriter` holds the offsets that map the
forwarded layer's numbering onto the outgoing stream, recomputed at each layer start
(`start`), and where the outgoing stream stopped (`continuity`), so that a successor on
the same SSRC goes on from there. It decides nothing about layers (mediasoup's
`SeqManager`, LiveKit's `RTPMunger`).
"""

from __future__ import annotations

from dataclasses import dataclass

from media.lanes import RewriterState
from media.wire.vp8 import Vp8Descriptor


@dataclass(frozen=True, slots=True)
class StreamContinuity:
    """Where a DownTrack's output stream stopped: its successor on the same m-line and
    SSRC goes on from here, so the subscriber sees one stream rather than a jump."""

    ssrc: int
    last_ext_seq: int
    last_ts: int
    last_ms: float | None
    last_pid: int | None
    last_tl0: int | None
    rtx_seq: int


class StreamRewriter(RewriterState):
    """Offsets from a forwarded layer to the outgoing stream, and its last values.

    The offsets and last values are the base's (`media.lanes`): a lane moves them from C
    with the same arithmetic as `DownTrack._place` and `follow_vp8`.
    """

    __slots__ = ("ts_skip",)

    def __init__(self, clock_rate: int, *, first_seq: int, first_ts: int, rtx_seq: int) -> None:
        self.clock_rate = clock_rate
        self.seq_offset = 0
        self.ts_offset = 0
        self.pid_offset = 0
        self.tl0_offset = 0
        self.last_ext_seq = first_seq
        self.last_ts = first_ts
        self.last_ms: float | None = None
        self.last_pid: int | None = None
        self.last_tl0: int | None = None
        self.rtx_seq = rtx_seq
        self.ts_skip = 0  # added to the next start's timestamp gap (skip_ahead)

    def continuity(self, ssrc: int) -> StreamContinuity:
        return StreamContinuity(
            ssrc, self.last_ext_seq, self.last_ts, self.last_ms, self.last_pid, self.last_tl0, self.rtx_seq
        )

    def continue_from(self, previous: StreamContinuity) -> None:
        """The next packet out is the one after `previous`'s last."""
        self.last_ext_seq = previous.last_ext_seq
        self.last_ts = previous.last_ts
        self.last_ms = previous.last_ms
        self.last_pid = previous.last_pid
        self.last_tl0 = previous.last_tl0
        self.rtx_seq = previous.rtx_seq

    def skip_ahead(self, ms: float) -> None:
        """The next start advances the timestamp by ``ms`` more than the wall-clock gap."""
        self.ts_skip = int(ms * self.clock_rate / 1000.0)

    def start(self, ext_seq: int, timestamp: int, vp8: Vp8Descriptor | None, now_ms: float) -> None:
        """A layer starts with this packet: it follows the last one out, its timestamp
        advanced by the wall-clock gap (and any ``skip_ahead``)."""
        self.seq_offset = self.last_ext_seq + 1 - ext_seq
        if self.last_ms is None:
            gap = 0
        else:
            gap = max(1, int((now_ms - self.last_ms) * self.clock_rate / 1000.0))
        gap += self.ts_skip
        self.ts_skip = 0
        self.ts_offset = (self.last_ts + gap - timestamp) & 0xFFFFFFFF
        if vp8 is not None and vp8.picture_id is not None:
            if self.last_pid is not None:
                self.pid_offset = self.last_pid + 1 - vp8.picture_id
            if vp8.tl0picidx is not None and self.last_tl0 is not None:
                self.tl0_offset = self.last_tl0 + 1 - vp8.tl0picidx

    def follow_vp8(self, payload: bytes | memoryview, vp8: Vp8Descriptor, newest: bool) -> bytes | None:
        """VP8 picture id / TL0PICIDX continuity for one forwarded packet whose
        descriptor carries a picture id: its rewritten descriptor when this stream
        shifts picture ids (the caller puts it in place of the original one), else None
        (forwarded as is).

        Only the newest packet moves the continuity point: a late packet or an RTX
        repair of an older frame must not pull it back.
        """
        assert vp8.picture_id is not None
        if not (self.pid_offset or self.tl0_offset):
            if newest:
                self.last_pid = vp8.picture_id
                if vp8.tl0picidx is not None:
                    self.last_tl0 = vp8.tl0picidx
            return None
        pid = (vp8.picture_id + self.pid_offset) % (1 << vp8.picture_id_bits)
        tl0 = None
        if vp8.tl0picidx is not None:
            tl0 = (vp8.tl0picidx + self.tl0_offset) & 0xFF
            if newest:
                self.last_tl0 = tl0
        if newest:
            self.last_pid = pid
        return vp8.rewritten(payload, pid, tl0)

    def next_rtx_seq(self) -> int:
        self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
        return self.rtx_seq
