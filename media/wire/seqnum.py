"""Serial-number arithmetic and unwrapping (RFC 1982 style).

RTP sequence numbers (16 bit) and timestamps (32 bit) wrap; every component that
compares or stores them works on *extended* (unwrapped, 64-bit-like Python int)
values so that loss, ordering and caches never break at the wrap.
"""

from __future__ import annotations

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32


def seq_diff(a: int, b: int, mod: int = SEQ_MOD) -> int:
    """Signed distance a - b in serial-number space (range [-mod/2, mod/2))."""
    half = mod >> 1
    return ((a - b + half) % mod) - half


def seq_gt(a: int, b: int, mod: int = SEQ_MOD) -> bool:
    """True when a is newer than b."""
    return seq_diff(a, b, mod) > 0


class Unwrapper:
    """Turns wrapping counters into monotonic-ish extended integers.

    The first value is returned as is (offset by one cycle so that slightly older
    packets arriving next do not go negative). Later values are placed in the cycle
    closest to the previous highest value, so reordering across a wrap is handled.
    """

    __slots__ = ("_mod", "_half", "_highest")

    def __init__(self, mod: int = SEQ_MOD) -> None:
        self._mod = mod
        self._half = mod >> 1
        self._highest: int | None = None

    @property
    def highest(self) -> int | None:
        return self._highest

    def unwrap(self, value: int) -> int:
        highest = self._highest
        if highest is None:
            ext = value + self._mod
            self._highest = ext
            return ext
        mod = self._mod
        delta = ((value - highest + self._half) % mod) - self._half
        ext = highest + delta
        if delta > 0:
            self._highest = ext
        return ext
