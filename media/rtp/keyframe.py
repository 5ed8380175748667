"""Keyframe request throttling (sans-I/O).

Two sides of one problem:

* :class:`KeyframeRequester` sits on a published track. Every subscriber that joins,
  switches layer or loses packets asks for a keyframe; forwarding each PLI would make
  the publisher send a keyframe storm. Requests are coalesced: at most one PLI per
  ``min_interval_ms``, and a request made inside the interval is remembered and sent
  once at its end, unless a keyframe arrives first.
* :class:`KeyframeWaiter` sits on a subscriber's down track that cannot forward until
  a keyframe. It re-requests every ``retry_ms`` while waiting, so one lost PLI (or one
  swallowed by the requester's throttle) does not freeze the subscriber.
"""

from __future__ import annotations

import math

__all__ = ["KeyframeRequester", "KeyframeWaiter"]


class KeyframeRequester:
    """Coalesces PLI/FIR requests for one published track."""

    __slots__ = ("min_interval_ms", "_last_sent_ms", "_pending", "requested", "sent")

    def __init__(self, min_interval_ms: float = 300.0) -> None:
        if min_interval_ms < 0:
            raise ValueError(f"min_interval_ms must be >= 0, got {min_interval_ms!r}")
        self.min_interval_ms = min_interval_ms
        self._last_sent_ms = -math.inf
        self._pending = False
        self.requested = 0
        self.sent = 0

    @property
    def pending(self) -> bool:
        """A request is waiting for the end of the interval."""
        return self._pending

    def request(self, now_ms: float) -> bool:
        """Somebody needs a keyframe; True when a PLI should go to the publisher now."""
        self.requested += 1
        if now_ms - self._last_sent_ms >= self.min_interval_ms:
            self._send(now_ms)
            return True
        self._pending = True
        return False

    def _send(self, now_ms: float) -> None:
        self._last_sent_ms = now_ms
        self._pending = False
        self.sent += 1

    def next_deadline(self) -> float | None:
        """When the deferred request may go out (None: nothing deferred)."""
        if not self._pending:
            return None
        return self._last_sent_ms + self.min_interval_ms

    def on_timer(self, now_ms: float) -> bool:
        """True when the deferred request should be sent now."""
        if self._pending and now_ms - self._last_sent_ms >= self.min_interval_ms:
            self._send(now_ms)
            return True
        return False

    def on_keyframe(self, now_ms: float) -> None:
        """A keyframe arrived from the publisher: a deferred request is satisfied.

        The interval is not reset: the keyframe we just got is what the requesters
        wanted, and a request right after it still should not trigger another.
        """
        del now_ms  # kept for the uniform core signature
        self._pending = False


class KeyframeWaiter:
    """Re-requests a keyframe every ``retry_ms`` until one arrives."""

    __slots__ = ("retry_ms", "_waiting", "_next_ms", "requests")

    def __init__(self, retry_ms: float = 500.0) -> None:
        if retry_ms <= 0:
            raise ValueError(f"retry_ms must be > 0, got {retry_ms!r}")
        self.retry_ms = retry_ms
        self._waiting = False
        self._next_ms = math.inf
        self.requests = 0

    @property
    def waiting(self) -> bool:
        """True while the down track cannot forward until a keyframe."""
        return self._waiting

    def need(self, now_ms: float) -> None:
        """Start waiting; the next :meth:`poll` asks at once. Idempotent while waiting."""
        if not self._waiting:
            self._waiting = True
            self._next_ms = now_ms

    def on_keyframe(self) -> None:
        """The keyframe arrived: stop asking."""
        self._waiting = False
        self._next_ms = math.inf

    def poll(self, now_ms: float) -> bool:
        """True when a keyframe request should be sent now."""
        if self._waiting and now_ms >= self._next_ms:
            self._next_ms = now_ms + self.retry_ms
            self.requests += 1
            return True
        return False

    def next_deadline(self) -> float | None:
        """When :meth:`poll` will next return True (None: not waiting)."""
        return self._next_ms if self._waiting else None
