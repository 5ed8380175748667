"""Transport-wide congestion control around the feedback packet (`media.wire.twcc`).

Two sans-I/O pieces:

- `TwccRecorder` (receiver side): arrival times per transport-wide seq in, feedback
  packets out every `interval_ms`.
- `TwccSendHistory` (sender side): what we sent, matched against feedback into
  `PacketResult`s for the delay-based estimator.
"""

from __future__ import annotations

from dataclasses import dataclass

from media.wire.seqnum import Unwrapper, seq_diff
from media.wire.twcc import (
    MAX_STATUS_COUNT,
    REFERENCE_UNIT_US,
    TICK_US,
    TwccFeedback,
)

DEFAULT_MAX_PACKET_SIZE = 1200
# Most not-received seqs one feedback round reports. Building costs O(seqs covered),
# and each packet may move the transport-wide seq up to 32767 ahead, so without a bound
# a sender jumping its seq costs seconds of CPU per round. A gap that does not fit what
# is left of the budget is not reported: the next feedback packet starts after it.
MAX_LOST_PER_ROUND = 8192
# The send history's ring: its first size (doubled as needed), and the widest span of
# seqs it keeps: feedback names 16-bit seqs, unwrapped within half a cycle of the
# highest sent, so entries further behind can never be matched.
INITIAL_RING = 512
MAX_SPAN = 1 << 15


class TwccRecorder:
    """Receiver side: records arrivals, emits feedback every `interval_ms`.

    Each feedback covers every seq since the previous one (lost ones as "not
    received"). Packets that arrive after their seq was already reported are dropped
    and counted in `late_packets`; duplicates are counted in `duplicate_packets`.
    """

    def __init__(
        self,
        sender_ssrc: int,
        media_ssrc: int,
        interval_ms: float = 50.0,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
    ) -> None:
        self.sender_ssrc = sender_ssrc
        self.media_ssrc = media_ssrc
        self.interval_ms = interval_ms
        self.max_packet_size = max_packet_size
        self.late_packets = 0
        self.duplicate_packets = 0
        self._unwrapper = Unwrapper()
        self._arrivals: dict[int, float] = {}
        self._next_base: int | None = None
        self._fb_pkt_count = 0
        self._last_feedback_ms: float | None = None
        self._first_pending_ms: float | None = None

    def record(self, twcc_seq: int, arrival_ms: float) -> None:
        ext = self._unwrapper.unwrap(twcc_seq)
        next_base = self._next_base
        if next_base is not None and ext < next_base:
            self.late_packets += 1
            return
        arrivals = self._arrivals
        if ext in arrivals:
            self.duplicate_packets += 1
            return
        arrivals[ext] = arrival_ms
        if self._first_pending_ms is None:
            self._first_pending_ms = arrival_ms

    def next_deadline(self) -> float | None:
        """When to call `build_feedback`: a steady cadence while packets flow."""
        first = self._first_pending_ms
        if first is None:
            return None
        last = self._last_feedback_ms
        if last is None or first - last >= self.interval_ms:
            return first + self.interval_ms
        return last + self.interval_ms

    def build_feedback(self, now_ms: float) -> list[bytes]:
        """RTCP packets covering everything recorded since the last feedback."""
        arrivals = self._arrivals
        if not arrivals:
            return []
        received = sorted(arrivals)
        high = received[-1]
        first = self._next_base if self._next_base is not None else received[0]
        # (first, last) seq ranges to report: everything but gaps past the budget.
        ranges: list[tuple[int, int]] = []
        budget = MAX_LOST_PER_ROUND
        prev = first - 1
        for ext in received:
            gap = ext - prev - 1
            if gap > budget:
                if prev >= first:
                    ranges.append((first, prev))
                first = ext
            else:
                budget -= gap
            prev = ext
        ranges.append((first, high))
        reference = int(now_ms * 1000 // REFERENCE_UNIT_US)
        out: list[bytes] = []
        for start, last in ranges:
            while start <= last:
                data, start, reference = self._build_one(start, last, reference)
                out.append(data)
        self._next_base = high + 1
        arrivals.clear()
        self._first_pending_ms = None
        self._last_feedback_ms = now_ms
        return out

    def _build_one(self, start: int, high: int, reference: int) -> tuple[bytes, int, int]:
        """One packet from `start`; returns (bytes, next start, reference time used)."""
        arrivals = self._arrivals
        first_us: float | None = None
        # how far can this packet go: 16-bit status count and 16-bit receive deltas
        stop = min(high + 1, start + MAX_STATUS_COUNT)
        prev_ticks = 0
        for ext in range(start, stop):
            arrival = arrivals.get(ext)
            if arrival is None:
                continue
            t_us = arrival * 1000.0
            if first_us is None:
                first_us = t_us
                reference = int(t_us // REFERENCE_UNIT_US)
            ticks = int((t_us - reference * REFERENCE_UNIT_US + TICK_US // 2) // TICK_US)
            if not -0x8000 <= ticks - prev_ticks <= 0x7FFF:
                stop = ext
                break
            prev_ticks = ticks
        origin_us = reference * REFERENCE_UNIT_US
        wire_origin = (reference & 0xFFFFFF) * REFERENCE_UNIT_US
        packets: list[tuple[int, int | None]] = []
        for ext in range(start, stop):
            arrival = arrivals.get(ext)
            if arrival is None:
                packets.append((ext & 0xFFFF, None))
            else:
                ticks = int((arrival * 1000.0 - origin_us + TICK_US // 2) // TICK_US)
                packets.append((ext & 0xFFFF, wire_origin + ticks * TICK_US))
        fb = TwccFeedback(
            self.sender_ssrc, self.media_ssrc, start & 0xFFFF, reference & 0xFFFFFF, 0, packets
        )
        fb.fb_pkt_count = self._fb_pkt_count
        data = bytes(fb)
        if len(data) > self.max_packet_size:
            keep = self._fit(fb)
            fb.packets = packets[:keep]
            data = bytes(fb)
            stop = start + keep
        self._fb_pkt_count = (self._fb_pkt_count + 1) & 0xFF
        return data, stop, reference

    def _fit(self, fb: TwccFeedback) -> int:
        """Largest number of leading packets whose encoding fits (binary search)."""
        packets = fb.packets
        lo, hi = 1, len(packets)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            fb.packets = packets[:mid]
            if len(bytes(fb)) <= self.max_packet_size:
                lo = mid
            else:
                hi = mid - 1
        fb.packets = packets
        return lo


@dataclass(slots=True)
class PacketResult:
    """One sent packet matched with feedback; arrival_ms is on the receiver's clock."""

    seq: int
    send_ms: float
    arrival_ms: float | None
    size: int


class TwccSendHistory:
    """Sender side: remembers (send time, size) per extended transport-wide seq.

    Each packet is reported at most once (its entry is removed when feedback covers
    it); entries older than `max_age_ms` are pruned, oldest seq first.

    The seqs a sender stamps count up one by one, so the history is a ring indexed by
    ``seq & mask``: two preallocated lists (send time, size), a slot holding None
    once reported or pruned, and the live span ``[oldest, highest]``. On the forward
    path a packet costs two list stores, with no per-packet object and no hashing;
    the ring doubles when the span outgrows it (a fast sender with a long max age).
    """

    def __init__(self, max_age_ms: float = 2000.0, capacity: int = INITIAL_RING) -> None:
        if capacity < 1 or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two (got {capacity})")
        self.max_age_ms = max_age_ms
        self._mask = capacity - 1
        self._send_ms: list[float | None] = [None] * capacity
        self._sizes: list[int] = [0] * capacity
        self._oldest = 0  # no entry below this seq
        self._highest: int | None = None
        self._count = 0
        self._reference = Unwrapper(1 << 24)

    def __len__(self) -> int:
        return self._count

    @property
    def capacity(self) -> int:
        return self._mask + 1

    def on_sent(self, twcc_seq_ext: int, send_ms: float, size: int) -> None:
        """Remember a packet; seqs are expected in increasing order (as stamped)."""
        highest = self._highest
        if highest is None:
            self._oldest = highest = twcc_seq_ext
        elif twcc_seq_ext - self._oldest > self._mask or twcc_seq_ext < self._oldest:
            self._make_room(twcc_seq_ext)
        i = twcc_seq_ext & self._mask
        if self._send_ms[i] is None:
            self._count += 1
        self._send_ms[i] = send_ms
        self._sizes[i] = size
        if twcc_seq_ext > highest:
            highest = twcc_seq_ext
        self._highest = highest

    def _make_room(self, seq: int) -> None:
        """The span [oldest, highest] must take in ``seq``: grow the ring, and forget
        entries more than ``MAX_SPAN`` behind (no feedback can name them: its 16-bit
        seqs are unwrapped within half a cycle of the highest)."""
        highest = self._highest
        assert highest is not None
        low = min(self._oldest, seq)
        high = max(highest, seq)
        if high - low >= MAX_SPAN:
            low = high - MAX_SPAN + 1
        entries = [(s, ms, self._sizes[s & self._mask]) for s in range(max(self._oldest, low), highest + 1)
                   if (ms := self._send_ms[s & self._mask]) is not None]
        capacity = self._mask + 1
        while capacity <= high - low:
            capacity *= 2
        self._mask = capacity - 1
        self._send_ms = [None] * capacity
        self._sizes = [0] * capacity
        for s, ms, size in entries:
            self._send_ms[s & self._mask] = ms
            self._sizes[s & self._mask] = size
        self._count = len(entries)
        self._oldest = low

    def on_feedback(self, fb: TwccFeedback, now_ms: float) -> list[PacketResult]:
        """Results for the packets `fb` covers that are still in the history, in send order."""
        self.prune(now_ms)
        highest = self._highest
        if highest is None or not fb.packets:
            return []
        # reference time wraps every 2^24 * 64 ms; keep receiver times monotonic
        ref_ext = self._reference.unwrap(fb.reference_time) - (1 << 24)
        offset_us = (ref_ext - fb.reference_time) * REFERENCE_UNIT_US
        base_ext = highest + seq_diff(fb.base_seq, highest & 0xFFFF)
        sent, sizes, mask = self._send_ms, self._sizes, self._mask
        # only seqs in [oldest, highest] can be in the ring
        first = max(base_ext, self._oldest)
        stop = min(base_ext + len(fb.packets), highest + 1)
        results: list[PacketResult] = []
        packets = fb.packets
        for ext in range(first, stop):
            i = ext & mask
            send_ms = sent[i]
            if send_ms is None:
                continue
            sent[i] = None
            arrival_us = packets[ext - base_ext][1]
            arrival = None if arrival_us is None else (arrival_us + offset_us) / 1000.0
            results.append(PacketResult(ext, send_ms, arrival, sizes[i]))
        self._count -= len(results)
        # past the reported packets to the oldest one still waiting: slots to reuse
        oldest = self._oldest
        while oldest <= highest and sent[oldest & mask] is None:
            oldest += 1
        self._oldest = oldest
        return results

    def prune(self, now_ms: float) -> None:
        """Forget entries older than `max_age_ms`. Feedback prunes too, but a receiver
        that negotiated transport-cc and never sends feedback must not grow the history
        for the whole call: the sender's timer calls this."""
        highest = self._highest
        if highest is None:
            return
        sent, mask = self._send_ms, self._mask
        cutoff = now_ms - self.max_age_ms
        oldest = self._oldest
        count = self._count
        while oldest <= highest:
            i = oldest & mask
            send_ms = sent[i]
            if send_ms is not None:
                if send_ms >= cutoff:
                    break
                sent[i] = None
                count -= 1
            oldest += 1
        self._oldest = oldest
        self._count = count
