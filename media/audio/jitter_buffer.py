"""Adaptive audio jitter buffer (sans-I/O): packets in, playout slots out.

Why it exists: Ferry's forward path never buffers (DESIGN section 1); only
*internal subscribers* that turn audio back into PCM (captions, the recorder's
composite, a server-side listener) need a playout clock. They all need the same
thing: packets reordered and de-duplicated, a delay that follows the network's
jitter, and, for each 20 ms of the playout clock, either the packet to decode or
a "missing" slot that says what could still recover it (the next packet, whose
Opus in-band FEC carries a copy of the missing frame). The buffer only *decides*;
``media.audio.decode_path`` acts (decode, FEC, PLC), as in aiortc's
``JitterBuffer.add`` returning its decision (STYLE section 9, habit 3).

Timeline model
--------------
Slots are keyed by the *extended* RTP timestamp (32-bit timestamps unwrapped,
as RED blocks are addressed by timestamp offsets). For every accepted packet the
buffer records its transit ``arrival_ms - ts_ms``. ``base`` is the smallest
transit over the last ``window_packets`` packets (the fastest packet: pure
network delay), and a packet's *relative delay* is ``transit - base`` (jitter).
The target delay is::

    target = clamp(lookahead + jitter_factor * quantile(relative delays), min, max)

``lookahead`` is ``frame_ms`` because FEC needs the *next* packet in hand when
a slot is played out missing; with RED input it grows to the oldest redundant
block's offset seen in the latest RED packet (RED distance 2 can only fill a
two-frame hole if the second packet after it arrives in time). The current delay is how long after the fastest possible
arrival a slot is played out. When ``current`` falls half a frame short of the
target the buffer emits a ``stretch`` slot (plays a frame of concealment without
consuming a timestamp); when it is a whole frame above, it consumes a timestamp
without playing time (``discard``: the decoder decodes the packet to keep its
state and drops the PCM), at most once every ``shrink_every`` slots so speech is
not chopped; a missing slot met while the delay is too high is simply skipped
(nothing to conceal). Stretching only happens on a slot whose packet has not
arrived, so a late packet gets one more frame to come. This is NetEq's expand /
accelerate in its crudest form (no time-scale modification).

Timeline discontinuities (a sender whose timestamps jump) trigger a resync: the
buffer is flushed and the clock restarts at the packet. A forward jump shows as
a transit far below ``base`` (network delay cannot do that); a backward jump as
a packet newer in sequence but older in timestamp than the last one played.

Counters are plain attributes on ``stats`` (``JitterStats``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Literal

from media.wire.red import parse_red
from media.wire.seqnum import SEQ_MOD, TS_MOD, Unwrapper

SlotKind = Literal["packet", "missing", "stretch"]


@dataclass(slots=True, frozen=True)
class PlayoutSlot:
    """One frame of the playout clock: what the decoder should do now.

    ``timestamp`` is the extended RTP timestamp of the slot (for ``stretch``,
    the timestamp of the slot that follows it). ``payload`` is set for
    ``packet`` slots; ``from_red`` says it came from a RED redundant block.
    ``next_payload`` is set on ``missing`` slots when the packet right after is
    already buffered (its Opus in-band FEC may rebuild this frame). ``lost`` is
    False for a missing slot known to be a DTX gap (a later packet is buffered
    and no sequence number was skipped); with nothing buffered it is True.
    ``discard`` asks the decoder to decode but not play (delay reduction).
    """

    kind: SlotKind
    timestamp: int
    seq: int | None = None
    payload: bytes | None = None
    from_red: bool = False
    next_payload: bytes | None = None
    lost: bool = False
    discard: bool = False


@dataclass(slots=True)
class JitterStats:
    """Counters; ``current_delay_ms``/``target_delay_ms`` are gauges."""

    received: int = 0  # primary packets offered (put / put_red primaries)
    duplicates: int = 0
    late: int = 0  # arrived after their slot was played out
    lost: int = 0  # sequence numbers skipped in the played stream (late ones included)
    missing: int = 0  # slots played out with no packet (DTX gaps included)
    red_stored: int = 0  # redundant RED blocks that filled a hole in the buffer
    red_played: int = 0  # ... and were played out
    malformed: int = 0  # RED payloads that did not parse
    stretched: int = 0  # stretch slots emitted (delay grew)
    shrunk: int = 0  # slots consumed without playout time (delay shrank)
    resyncs: int = 0
    current_delay_ms: float = 0.0
    target_delay_ms: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(slots=True)
class _Entry:
    seq: int
    payload: bytes
    from_red: bool


class AudioJitterBuffer:
    """Adaptive jitter buffer for fixed-duration audio frames (see module doc).

    Assumes one frame per packet of ``frame_ms`` (WebRTC's Opus default); a
    packet of another duration still decodes, but the slot clock advances by
    ``frame_ms``.
    """

    def __init__(
        self,
        *,
        clock_rate: int = 48000,
        frame_ms: int = 20,
        min_delay_ms: float = 20.0,
        max_delay_ms: float = 400.0,
        jitter_factor: float = 1.0,
        jitter_quantile: float = 0.95,
        window_packets: int = 200,
        shrink_every: int = 5,
        resync_ms: float = 1000.0,
    ) -> None:
        if frame_ms <= 0 or clock_rate <= 0:
            raise ValueError("frame_ms and clock_rate must be > 0")
        if not 0 <= min_delay_ms <= max_delay_ms:
            raise ValueError("need 0 <= min_delay_ms <= max_delay_ms")
        if not 0.0 < jitter_quantile <= 1.0:
            raise ValueError("jitter_quantile must be in (0, 1]")
        if window_packets < 1 or shrink_every < 1:
            raise ValueError("window_packets and shrink_every must be >= 1")
        self.clock_rate = clock_rate
        self.frame_ms = frame_ms
        self.frame_samples = clock_rate * frame_ms // 1000
        self.min_delay_ms = float(min_delay_ms)
        self.max_delay_ms = float(max_delay_ms)
        self.jitter_factor = jitter_factor
        self.jitter_quantile = jitter_quantile
        self.window_packets = window_packets
        self.shrink_every = shrink_every
        self.resync_ms = resync_ms
        self.stats = JitterStats(target_delay_ms=self.min_delay_ms)
        self._seq_unwrap = Unwrapper(SEQ_MOD)
        self._ts_unwrap = Unwrapper(TS_MOD)
        self._reset_timeline()

    # ------------------------------------------------------------- internals
    def _reset_timeline(self) -> None:
        self._buf: dict[int, _Entry] = {}  # extended ts -> entry
        self._seqs: set[int] = set()  # extended seqs in _buf from primaries
        self._played: deque[int] = deque()  # recently played primary seqs (duplicate check)
        self._played_set: set[int] = set()
        self._transits: deque[float] = deque()
        self._target_cache: float | None = None
        self._base: float | None = None
        self._next_ts: int | None = None  # next slot's extended timestamp
        self._next_play_ms = 0.0
        self._last_played_seq: int | None = None
        self._last_played_ts: int | None = None
        self._since_shrink = 0
        self._red_span_ms = 0.0

    def _ts_ms(self, ext_ts: int) -> float:
        return ext_ts * 1000.0 / self.clock_rate

    def _record_transit(self, transit: float) -> None:
        q = self._transits
        q.append(transit)
        if len(q) > self.window_packets:
            q.popleft()
        self._base = min(q)
        self._target_cache = None

    def target_delay_ms(self) -> float:
        """The delay the buffer steers toward (recomputed lazily after puts)."""
        if self._target_cache is None:
            q = self._transits
            if not q:
                target = self.min_delay_ms
            else:
                base = min(q)
                rel = sorted(t - base for t in q)
                idx = min(len(rel) - 1, max(0, math.ceil(self.jitter_quantile * len(rel)) - 1))
                target = self._lookahead_ms() + self.jitter_factor * rel[idx]
            target = min(self.max_delay_ms, max(self.min_delay_ms, target))
            self._target_cache = target
            self.stats.target_delay_ms = target
        return self._target_cache

    def _lookahead_ms(self) -> float:
        return max(float(self.frame_ms), self._red_span_ms)

    def current_delay_ms(self) -> float:
        """How long after the fastest possible arrival the next slot plays."""
        if self._next_ts is None or self._base is None:
            return 0.0
        return self._next_play_ms - self._ts_ms(self._next_ts) - self._base

    def _start(self, ext_ts: int, arrival_ms: float) -> None:
        self._next_ts = ext_ts
        self._next_play_ms = arrival_ms + self.target_delay_ms()

    def _resync(self, ext_ts: int, arrival_ms: float) -> None:
        self.stats.resyncs += 1
        self._reset_timeline()
        self._record_transit(arrival_ms - self._ts_ms(ext_ts))
        self._start(ext_ts, arrival_ms)

    def _is_discontinuity(self, ext_seq: int, ext_ts: int, transit: float) -> bool:
        if self._base is not None and transit < self._base - self.resync_ms:
            return True  # forward timestamp jump: no network makes packets early
        last_seq, last_ts = self._last_played_seq, self._last_played_ts
        if last_seq is None or last_ts is None or ext_seq <= last_seq:
            return False
        expected = last_ts + (ext_seq - last_seq) * self.frame_samples
        return self._ts_ms(expected - ext_ts) > self.resync_ms  # backward jump

    def _store(self, ext_ts: int, entry: _Entry) -> None:
        self._buf[ext_ts] = entry
        if not entry.from_red:
            self._seqs.add(entry.seq)

    # ------------------------------------------------------------------ input
    def put(self, seq: int, timestamp: int, payload: bytes, arrival_ms: float) -> str | None:
        """Offer one packet (16-bit ``seq``, 32-bit ``timestamp``).

        Returns ``None`` when buffered, else the drop reason (``"duplicate"``,
        ``"late"``); every drop is counted on ``stats``.
        """
        ext_seq = self._seq_unwrap.unwrap(seq & 0xFFFF)
        ext_ts = self._ts_unwrap.unwrap(timestamp & 0xFFFFFFFF)
        return self._put_ext(ext_seq, ext_ts, bytes(payload), arrival_ms)

    def _put_ext(self, ext_seq: int, ext_ts: int, payload: bytes, arrival_ms: float) -> str | None:
        stats = self.stats
        stats.received += 1
        if ext_seq in self._seqs or ext_seq in self._played_set:
            stats.duplicates += 1
            return "duplicate"
        transit = arrival_ms - self._ts_ms(ext_ts)
        if self._next_ts is None:
            self._record_transit(transit)
            self._start(ext_ts, arrival_ms)
        elif self._is_discontinuity(ext_seq, ext_ts, transit):
            self._resync(ext_ts, arrival_ms)
        else:
            self._record_transit(transit)  # late packets count: they are the jitter
            if ext_ts < self._next_ts:
                stats.late += 1
                return "late"
        self._store(ext_ts, _Entry(ext_seq, payload, False))
        return None

    def put_red(
        self,
        seq: int,
        timestamp: int,
        red_payload: bytes,
        arrival_ms: float,
        opus_pt: int = 111,
    ) -> str | None:
        """Offer an RFC 2198 RED packet: store the primary and fill holes.

        Redundant blocks of payload type ``opus_pt`` whose timestamp offset is a
        whole number of frames fill slots that are neither buffered nor played
        (their sequence number is derived as ``seq - offset / frame_samples``).
        They do not feed the jitter estimate (their arrival says nothing about
        their own transit). Returns the primary's drop reason, ``"malformed"``
        or ``"not_opus"``.
        """
        try:
            blocks = parse_red(red_payload)
        except ValueError:
            self.stats.malformed += 1
            return "malformed"
        primary = blocks[-1]
        if primary.payload_type != opus_pt:
            self.stats.malformed += 1
            return "not_opus"
        ext_seq = self._seq_unwrap.unwrap(seq & 0xFFFF)
        ext_ts = self._ts_unwrap.unwrap(timestamp & 0xFFFFFFFF)
        result = self._put_ext(ext_seq, ext_ts, primary.data, arrival_ms)
        if result == "duplicate" or self._next_ts is None:
            return result
        span = max((b.timestamp_offset for b in blocks), default=0) * 1000.0 / self.clock_rate
        if span != self._red_span_ms:
            self._red_span_ms = span
            self._target_cache = None
        for block in blocks[:-1]:
            off = block.timestamp_offset
            if block.payload_type != opus_pt or not block.data or off <= 0:
                continue
            if off % self.frame_samples:
                continue
            r_ts = ext_ts - off
            r_seq = ext_seq - off // self.frame_samples
            if r_ts < self._next_ts or r_ts in self._buf or r_seq in self._played_set:
                continue
            self._store(r_ts, _Entry(r_seq, block.data, True))
            self.stats.red_stored += 1
        return result

    # ----------------------------------------------------------------- output
    def next_deadline(self) -> float | None:
        """When ``pop`` has the next slot (``None`` before the first packet)."""
        return None if self._next_ts is None else self._next_play_ms

    def buffered(self) -> int:
        """Packets (and RED fill-ins) waiting for their slot."""
        return len(self._buf)

    def pop(self, now_ms: float) -> list[PlayoutSlot]:
        """Every slot due at or before ``now_ms``, in playout order."""
        out: list[PlayoutSlot] = []
        if self._next_ts is None:
            return out
        frame = self.frame_ms
        while self._next_play_ms <= now_ms:
            target = self.target_delay_ms()
            current = self.current_delay_ms()
            ts = self._next_ts
            entry = self._buf.get(ts)
            if current < target - frame / 2 and entry is None:
                # Grow while the slot's packet is not here: it may still come.
                self.stats.stretched += 1
                self._next_play_ms += frame
                out.append(PlayoutSlot("stretch", ts))
                continue
            self._since_shrink += 1
            shrink = current - target >= frame and (
                entry is None or self._since_shrink >= self.shrink_every
            )
            slot = self._take(ts, entry, discard=shrink)
            self._next_ts = ts + self.frame_samples
            if shrink:
                self._since_shrink = 0
                self.stats.shrunk += 1
                if slot.kind == "packet":
                    out.append(slot)
            else:
                self._next_play_ms += frame
                out.append(slot)
        self.stats.current_delay_ms = self.current_delay_ms()
        return out

    def _take(self, ts: int, entry: _Entry | None, *, discard: bool) -> PlayoutSlot:
        stats = self.stats
        if entry is not None:
            del self._buf[ts]
            self._seqs.discard(entry.seq)
            self._mark_played(entry.seq, ts)
            if entry.from_red:
                stats.red_played += 1
            return PlayoutSlot(
                "packet", ts, entry.seq, entry.payload, entry.from_red, discard=discard
            )
        stats.missing += 1
        nxt = self._buf.get(ts + self.frame_samples)
        lost = True
        if self._buf and self._last_played_seq is not None:
            following = self._buf[min(self._buf)]
            lost = following.seq != self._last_played_seq + 1  # else a DTX gap
        return PlayoutSlot(
            "missing",
            ts,
            next_payload=nxt.payload if nxt is not None else None,
            lost=lost,
        )

    def _mark_played(self, seq: int, ts: int) -> None:
        if self._last_played_seq is not None and seq > self._last_played_seq + 1:
            self.stats.lost += seq - self._last_played_seq - 1
        self._last_played_seq = seq
        self._last_played_ts = ts
        self._played.append(seq)
        self._played_set.add(seq)
        if len(self._played) > 2 * self.window_packets:
            self._played_set.discard(self._played.popleft())
