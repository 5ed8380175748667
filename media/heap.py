"""Hands freed heap pages back to the OS, so a server's RSS follows what it uses.

Forwarding allocates its packets as ~1.2 KB ``bytes`` (above pymalloc's 512-byte limit,
so from glibc's malloc) and keeps them in RTX caches and pacer queues that live as long
as a track. When a publisher leaves, its caches are freed in bulk, but glibc returns
memory to the OS on ``free`` only from the top of its heap: pages freed below a live
allocation stay resident. Join/publish/leave churn therefore ratchets RSS up although
nothing leaks (tests/test_soak.py: glibc's in-use bytes and the live Python blocks stay
flat while its free bytes grow). ``malloc_trim(0)`` releases every whole free page
wherever it lies (``madvise``); with nothing to release it costs ~0.1 ms, and it is
called once per interval, so each call only returns what the last interval freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

log = logging.getLogger("ferry.media.heap")

TRIM_INTERVAL_MS = 10_000.0
SLOW_TRIM_MS = 5.0  # logged at debug level: a trim this long delayed the event loop


def libc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class HeapTrimmer:
    """Calls ``malloc_trim(0)`` at most once per ``interval_ms`` of the caller's clock."""

    def __init__(
        self,
        interval_ms: float = TRIM_INTERVAL_MS,
        trim: Callable[[int], int] | None = None,
    ) -> None:
        self.interval_ms = interval_ms
        self._trim = trim if trim is not None else libc_malloc_trim()
        self._next_ms: float | None = None
        self.trims = 0

    @property
    def available(self) -> bool:
        return self._trim is not None

    def on_timer(self, now_ms: float) -> None:
        if self._trim is None:
            return
        if self._next_ms is None:
            self._next_ms = now_ms + self.interval_ms
            return
        if now_ms < self._next_ms:
            return
        self._next_ms = now_ms + self.interval_ms
        started = time.perf_counter()
        self._trim(0)
        self.trims += 1
        took_ms = (time.perf_counter() - started) * 1000.0
        if took_ms > SLOW_TRIM_MS:
            log.debug("malloc_trim took %.1f ms", took_ms)
