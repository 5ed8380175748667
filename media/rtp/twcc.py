"""Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01).

Three sans-I/O pieces:

- `TwccFeedback`: the RTCP RTPFB fmt 15 packet, `parse` / `__bytes__`.
- `TwccRecorder` (receiver side): arrival times per transport-wide seq in, feedback
  packets out every `interval_ms`.
- `TwccSendHistory` (sender side): what we sent, matched against feedback into
  `PacketResult`s for the delay-based estimator.

Wire layout after the 8-byte RTCP feedback header: base seq (16), packet status count
(16), reference time (24, units of 64 ms), feedback packet count (8), then 16-bit packet
status chunks, then one receive delta per received packet (1 byte unsigned or 2 bytes
signed, in 250 µs ticks, each relative to the previous received packet; the first is
relative to the reference time), then padding to a 32-bit boundary.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from media.wire.seqnum import Unwrapper, seq_diff

RTCP_RTPFB = 205
TWCC_FMT = 15
TICK_US = 250
REFERENCE_UNIT_US = 64000
MAX_RUN_LENGTH = 0x1FFF
MAX_STATUS_COUNT = 0xFFFF
DEFAULT_MAX_PACKET_SIZE = 1200
# Most not-received seqs one feedback round reports. Building costs O(seqs covered),
# and each packet may move the transport-wide seq up to 32767 ahead, so without a bound
# a sender jumping its seq costs seconds of CPU per round. A gap that does not fit what
# is left of the budget is not reported: the next feedback packet starts after it.
MAX_LOST_PER_ROUND = 8192

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
    it); entries older than `max_age_ms` are pruned.
    """

    def __init__(self, max_age_ms: float = 2000.0) -> None:
        self.max_age_ms = max_age_ms
        self._sent: OrderedDict[int, tuple[float, int]] = OrderedDict()
        self._highest: int | None = None
        self._reference = Unwrapper(1 << 24)

    def __len__(self) -> int:
        return len(self._sent)

    def on_sent(self, twcc_seq_ext: int, send_ms: float, size: int) -> None:
        self._sent[twcc_seq_ext] = (send_ms, size)
        if self._highest is None or twcc_seq_ext > self._highest:
            self._highest = twcc_seq_ext

    def on_feedback(self, fb: TwccFeedback, now_ms: float) -> list[PacketResult]:
        """Results for the packets `fb` covers that are still in the history, in send order."""
        self._prune(now_ms)
        highest = self._highest
        if highest is None or not fb.packets:
            return []
        # reference time wraps every 2^24 * 64 ms; keep receiver times monotonic
        ref_ext = self._reference.unwrap(fb.reference_time) - (1 << 24)
        offset_us = (ref_ext - fb.reference_time) * REFERENCE_UNIT_US
        base_ext = highest + seq_diff(fb.base_seq, highest & 0xFFFF)
        sent = self._sent
        results: list[PacketResult] = []
        for i, (_seq, arrival_us) in enumerate(fb.packets):
            ext = base_ext + i
            entry = sent.pop(ext, None)
            if entry is None:
                continue
            arrival = None if arrival_us is None else (arrival_us + offset_us) / 1000.0
            results.append(PacketResult(ext, entry[0], arrival, entry[1]))
        return results

    def _prune(self, now_ms: float) -> None:
        sent = self._sent
        cutoff = now_ms - self.max_age_ms
        while sent:
            first = next(iter(sent))
            if sent[first][0] >= cutoff:
                break
            sent.popitem(last=False)
