"""One RTP stream's packets -> complete frames, in order (sans-I/O).

This is the only jitter buffer in Ferry (DESIGN §12: never in the forward path). It
exists because the recorder sees packets as they arrive: reordered, and with NACK
repairs up to a second late. Frames leave in sequence order once complete; a hole
is waited for `loss_wait_ms` (the NACK generator's give-up age) after a later packet
revealed it (its arrival, when `push` is given `now_ms`), then declared lost: holes
that wait behind one another expire together, so steady loss never makes the
buffer fall behind. Video then drops everything up to the next keyframe
(a decoder cannot continue past a missing reference) and reports a `Gap` so the
caller asks the publisher for a keyframe; audio just skips the hole. Nothing here is
stamped with arrival time: frames carry their extended RTP timestamp, so a gap stays
a gap in the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from media.wire.seqnum import TS_MOD, Unwrapper

__all__ = ["Frame", "Gap", "JitterBuffer"]

LOSS_WAIT_MS = 1000.0  # NackGenerator.max_age_ms: after this a repair will not come
# Audio holes are seldom repaired (browsers negotiate no NACK for Opus; a RED copy comes
# with the next packets): wait for reordering and a quick resend only.
AUDIO_LOSS_WAIT_MS = 250.0
MAX_PACKETS = 2048  # a hole older than this many packets is lost whatever the time


@dataclass(slots=True)
class Frame:
    """A complete frame: its packets' payloads in order, and its extended RTP timestamp."""

    timestamp: int
    keyframe: bool
    payloads: list[bytes]
    layer: int = 0


@dataclass(slots=True)
class Gap:
    """Packets from `first_seq` on were declared lost (video: waiting for a keyframe now)."""

    first_seq: int
    lost: int = field(default=0)


class _Packet:
    __slots__ = ("ts", "marker", "payload", "keyframe", "arrival_ms")

    def __init__(self, ts: int, marker: bool, payload: bytes, keyframe: bool, arrival_ms: float | None) -> None:
        self.ts = ts
        self.marker = marker
        self.payload = payload
        self.keyframe = keyframe
        self.arrival_ms = arrival_ms


class JitterBuffer:
    """Reorders one stream (one simulcast layer) into frames; see the module docstring."""

    def __init__(
        self,
        *,
        video: bool,
        layer: int = 0,
        loss_wait_ms: float = LOSS_WAIT_MS,
        max_packets: int = MAX_PACKETS,
    ) -> None:
        self.video = video
        self.layer = layer
        self.loss_wait_ms = loss_wait_ms
        self.max_packets = max_packets
        self._packets: dict[int, _Packet] = {}
        self._keyframe_seqs: set[int] = set()
        self._ts = Unwrapper(TS_MOD)
        self._next: int | None = None  # first seq of the next frame to emit
        self._scan = 0  # next seq to look at inside the frame starting at _next
        self._hole_since: float | None = None  # when the hole at _hole_seq was revealed
        self._hole_seq: int | None = None
        self._highest: int | None = None
        self.need_keyframe = video  # video starts at a keyframe
        self.packets_late = 0
        self.packets_lost = 0
        self.gaps = 0

    @property
    def highest_timestamp(self) -> int | None:
        """Highest extended RTP timestamp seen (to unwrap SR timestamps near it)."""
        return self._ts.highest

    def push(
        self,
        ext_seq: int,
        timestamp: int,
        marker: bool,
        payload: bytes | memoryview,
        keyframe: bool,
        now_ms: float | None = None,
    ) -> None:
        """Store one packet (a copy of its payload); duplicates and late packets are ignored.

        `now_ms` is its arrival: a hole counts as revealed from the first later arrival.
        Without it a hole counts from when `pop` first finds it at the head.
        """
        nxt = self._next
        if (nxt is not None and ext_seq < nxt) or ext_seq in self._packets:
            self.packets_late += 1
            return
        self._packets[ext_seq] = _Packet(self._ts.unwrap(timestamp), marker, bytes(payload), keyframe, now_ms)
        if keyframe:
            self._keyframe_seqs.add(ext_seq)
        if self._highest is None or ext_seq > self._highest:
            self._highest = ext_seq

    def reset(self) -> None:
        """Forget everything buffered and wait for the next keyframe (video) or packet."""
        self._packets.clear()
        self._keyframe_seqs.clear()
        self._next = None
        self._hole_since = None
        self.need_keyframe = self.video

    def pop(self, now_ms: float, *, flush: bool = False) -> list[Frame | Gap]:
        """Frames completed since the last call, and gaps declared lost (in order).

        `flush`: nothing more will come (the recording stops), so every hole is lost now.
        """
        out: list[Frame | Gap] = []
        packets = self._packets
        while packets:
            if self._next is None or self.need_keyframe:
                if not self._start():
                    break
            frame = self._take_frame()
            if frame is not None:
                out.append(frame)
                self._hole_since = None
                continue
            # The frame at _next is incomplete: a hole at _scan (or the tail not here yet).
            if self._highest is None or self._highest <= self._scan:
                break  # nothing after it: still arriving, not a loss
            if self._hole_since is None or self._hole_seq != self._scan:
                self._hole_seq = self._scan
                self._hole_since = self._revealed(self._scan, now_ms)
            waiting = now_ms - self._hole_since < self.loss_wait_ms and len(packets) <= self.max_packets
            if waiting and not flush:
                break
            out.append(self._declare_lost())
        return out

    def _revealed(self, hole: int, now_ms: float) -> float:
        """When the first packet after `hole` arrived (once per hole: a scan of the buffer)."""
        arrivals = [p.arrival_ms for s, p in self._packets.items() if s > hole and p.arrival_ms is not None]
        return min(arrivals, default=now_ms)

    def _start(self) -> bool:
        """Pick where the next frame starts: the oldest keyframe (video) or packet (audio)."""
        packets = self._packets
        if self.need_keyframe:
            if not self._keyframe_seqs:
                # Nothing decodable before a keyframe. Keep only the newest frame's
                # packets: its first packet (the keyframe flag) may still be on its way.
                newest = self._ts.highest
                for seq in [s for s, p in packets.items() if p.ts != newest]:
                    del packets[seq]
                return False
            start = min(self._keyframe_seqs)
            for seq in [s for s in packets if s < start]:
                del packets[seq]
            self._keyframe_seqs = {s for s in self._keyframe_seqs if s >= start}
            self.need_keyframe = False
        else:
            start = min(packets)
        self._next = self._scan = start
        return True

    def _take_frame(self) -> Frame | None:
        """Remove and return the frame starting at `_next` if all its packets are here."""
        packets = self._packets
        assert self._next is not None
        first = packets.get(self._next)
        if first is None:
            self._scan = self._next
            return None
        if not self.video:  # Opus: one packet, one frame
            del packets[self._next]
            self._keyframe_seqs.discard(self._next)
            self._next += 1
            self._scan = self._next
            return Frame(first.ts, True, [first.payload], self.layer)
        # Resume where the last look stopped (one step back: the packet before a hole
        # may end the frame without a marker once the next one shows a new timestamp).
        seq = max(self._scan - 1, self._next)
        while True:
            pkt = packets.get(seq)
            if pkt is None:
                self._scan = seq
                return None
            after = packets.get(seq + 1)
            if pkt.marker or (after is not None and after.ts != first.ts):
                break
            seq += 1
        payloads = []
        for s in range(self._next, seq + 1):
            payloads.append(packets.pop(s).payload)
            self._keyframe_seqs.discard(s)
        self._next = self._scan = seq + 1
        return Frame(first.ts, first.keyframe, payloads, self.layer)

    def _declare_lost(self) -> Gap:
        """The hole at `_scan` will not be repaired: skip it (audio) or resync (video)."""
        hole = self._scan
        assert self._next is not None
        later = [s for s in self._packets if s > hole]
        resume = min(later)
        gap = Gap(self._next, resume - hole)
        self.packets_lost += resume - hole
        self.gaps += 1
        self._hole_since = None
        if self.video:
            for seq in [s for s in self._packets if s < resume]:
                del self._packets[seq]
            self._keyframe_seqs = {s for s in self._keyframe_seqs if s >= resume}
            self.need_keyframe = True
        else:
            self._next = self._scan = resume
        return gap
