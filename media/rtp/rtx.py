"""Subscriber-side retransmission cache (sans-I/O).

One cache per subscriber x outgoing stream, keyed by the *outgoing* 16-bit seq: a NACK
from a subscriber names the seqs we rewrote, not the publisher's. Packets are kept in
plain (unencrypted) form so a retransmission is re-protected with a fresh SRTP index.

A fixed ring (``seq & mask``) with a stored-seq check makes put/get O(1) with no
per-packet allocation beyond the bytes the caller already holds. Packets older than
``max_age_ms`` can never be resent, so ``put`` lets go of them (walking a tail index,
amortized O(1)): the ring's memory follows the stream's rate over ``max_age_ms``, not
its capacity (a 100 packet/s video stream holds ~100 packets, not 1024, per subscriber). ``get`` refuses a
packet retransmitted less than ``max(0.8 * rtt, 5 ms)`` ago: browsers repeat NACKs for
a seq until the RTX arrives, and answering each one only adds to the congestion that
lost the packet.
"""

from __future__ import annotations

import math
from array import array
from typing import Any, Protocol

try:  # the same ring in C (media/transport/_fastpath.c), when the extension is built
    from media.transport._fastpath import RtxRing as NativeRtxRing  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - no compiler at install
    NativeRtxRing = None

__all__ = ["ALLOWED_CAPACITIES", "NativeRtxRing", "RtxCache", "RtxStore", "check_ring_arguments", "new_rtx_cache"]

ALLOWED_CAPACITIES: tuple[int, ...] = tuple(1 << k for k in range(16))
_MIN_RESEND_MS = 5.0


class RtxStore(Protocol):
    """What a DownTrack keeps its sent packets in: `RtxCache` or the native ring."""

    capacity: int
    max_capacity: int
    max_age_ms: float
    hits: int
    misses: int
    suppressed: int

    def put(self, seq: int, packet: bytes, now_ms: float, rest: Any = None) -> None: ...

    def get(self, seq: int, now_ms: float, rtt_ms: float = 0.0) -> bytes | None: ...

    def clear(self) -> None: ...


def new_rtx_cache(
    capacity: int, *, max_capacity: int | None = None, max_age_ms: float = 1000.0, native: bool = True
) -> RtxStore:
    """A ring for one outgoing stream: the C one (same slots, same semantics, put at a
    tenth of the cost on the forward path) when built and ``native``, else `RtxCache`.
    The arguments are checked by `check_ring_arguments` either way."""
    if native and NativeRtxRing is not None:
        check_ring_arguments(capacity, max_capacity, max_age_ms)
        return NativeRtxRing(capacity, max_age_ms, max_capacity=max_capacity)  # type: ignore[no-any-return]
    return RtxCache(capacity, max_age_ms, max_capacity=max_capacity)


def check_ring_arguments(capacity: int, max_capacity: int | None, max_age_ms: float) -> None:
    """ValueError unless the sizes are powers of two (max not below start) and the age
    positive."""
    for name, value in (("capacity", capacity), ("max_capacity", max_capacity or capacity)):
        if type(value) is not int or value not in ALLOWED_CAPACITIES:
            allowed = ", ".join(str(c) for c in ALLOWED_CAPACITIES)
            raise ValueError(f"{name} must be a power of two, got {value!r}; allowed: {allowed}")
    if max_capacity is not None and max_capacity < capacity:
        raise ValueError(f"max_capacity {max_capacity} is below capacity {capacity}")
    if max_age_ms <= 0:
        raise ValueError(f"max_age_ms must be > 0, got {max_age_ms!r}")


class RtxCache:
    """Ring buffer of recently sent packets for answering NACKs."""

    __slots__ = (
        "capacity",
        "max_capacity",
        "max_age_ms",
        "_mask",
        "_seqs",
        "_packets",
        "_rests",
        "_put_ms",
        "_resent_ms",
        "_tail",
        "hits",
        "misses",
        "suppressed",
    )

    def __init__(
        self, capacity: int = 1024, max_age_ms: float = 1000.0, *, max_capacity: int | None = None
    ) -> None:
        """``capacity`` slots to start with; up to ``max_capacity`` (default: no growth)
        when the stream sends more than that within ``max_age_ms``."""
        check_ring_arguments(capacity, max_capacity, max_age_ms)
        self.capacity = capacity
        self.max_capacity = max_capacity or capacity
        self.max_age_ms = max_age_ms
        self._mask = capacity - 1
        # Typed arrays, not lists: a list slot holding a float or a seq above 256 is
        # an object of its own (24-28 bytes); a full 1024-slot video ring took ~84 KB
        # of bookkeeping per subscriber, ~20 KB this way.
        self._seqs = array("i", [-1]) * capacity  # -1 or a 16-bit seq: 4 bytes a slot
        # A packet, or its head with the rest beside it (`put`'s ``rest``): a video
        # payload is a view shared by every subscriber's ring (see DownTrack.write_video).
        self._packets: list[Any] = [None] * capacity
        self._rests: list[Any] = [None] * capacity
        self._put_ms = array("d", [-math.inf]) * capacity
        self._resent_ms = array("d", [-math.inf]) * capacity
        self._tail = 0  # oldest slot that may still hold a packet
        self.hits = 0
        self.misses = 0
        self.suppressed = 0

    def put(self, seq: int, packet: bytes, now_ms: float, rest: Any = None) -> None:
        """Remember ``packet`` (plain RTP; with ``rest``, its first part) as sent with
        outgoing ``seq`` at ``now_ms``. Two parts, not a tuple: a tuple held for the
        resend horizon is one more object for the cyclic GC per packet and subscriber."""
        seq &= 0xFFFF
        mask = self._mask
        i = seq & mask
        held = self._seqs[i]
        if held != -1 and held != seq and self.capacity < self.max_capacity:
            # The slot still holds a packet young enough to resend: the stream sends more
            # than the ring holds in max_age_ms. Grow rather than lose it.
            if self._put_ms[i] >= now_ms - self.max_age_ms:
                self._grow()
                mask = self._mask
                i = seq & mask
        self._seqs[i] = seq
        self._packets[i] = packet
        self._rests[i] = rest
        put_ms = self._put_ms
        put_ms[i] = now_ms
        self._resent_ms[i] = -math.inf
        # Let go of packets too old to resend (get() refuses them anyway).
        tail = self._tail
        expired = now_ms - self.max_age_ms
        if tail != i and put_ms[tail] < expired:
            packets, rests, seqs = self._packets, self._rests, self._seqs
            while tail != i and put_ms[tail] < expired:
                packets[tail] = None
                rests[tail] = None
                seqs[tail] = -1
                tail = (tail + 1) & mask
            self._tail = tail

    def get(self, seq: int, now_ms: float, rtt_ms: float = 0.0) -> bytes | None:
        """The packet to retransmit for a NACKed ``seq`` (its parts joined), or None
        (missing, too old, overwritten, or just retransmitted)."""
        seq &= 0xFFFF
        i = seq & self._mask
        if self._seqs[i] != seq or now_ms - self._put_ms[i] > self.max_age_ms:
            self.misses += 1
            return None
        hold = rtt_ms * 0.8
        if hold < _MIN_RESEND_MS:
            hold = _MIN_RESEND_MS
        if now_ms - self._resent_ms[i] < hold:
            self.suppressed += 1
            return None
        self._resent_ms[i] = now_ms
        self.hits += 1
        rest = self._rests[i]
        return self._packets[i] if rest is None else self._packets[i] + rest

    def _grow(self) -> None:
        """Double the ring, keeping every packet at its seq's slot in the new one."""
        old = (self._seqs, self._packets, self._rests, self._put_ms, self._resent_ms)
        n = self.capacity * 2
        self.capacity, self._mask = n, n - 1
        self.clear()
        seqs, packets, rests = self._seqs, self._packets, self._rests
        put_ms, resent_ms = self._put_ms, self._resent_ms
        oldest = math.inf
        for seq, packet, rest, put, resent in zip(*old, strict=True):
            if seq == -1:
                continue
            k = seq & self._mask
            seqs[k], packets[k], rests[k], put_ms[k], resent_ms[k] = seq, packet, rest, put, resent
            if put < oldest:
                oldest, self._tail = put, k

    def clear(self) -> None:
        """Forget everything (e.g. when the outgoing stream is re-seeded)."""
        n = self.capacity
        self._seqs = array("i", [-1]) * n
        self._packets = [None] * n
        self._rests = [None] * n
        self._put_ms = array("d", [-math.inf]) * n
        self._resent_ms = array("d", [-math.inf]) * n
        self._tail = 0
