"""Publisher-side NACK generation (sans-I/O).

The forward plane feeds every primary-stream packet's *extended* sequence number
(from ``media.wire.seqnum.Unwrapper``) into :meth:`NackGenerator.on_packet`; the
feedback plane calls :meth:`NackGenerator.poll` at :meth:`NackGenerator.next_deadline`
and turns the returned 16-bit seqs into RTCP generic NACKs.

Why the shape:

* The in-order packet costs one subtraction and one compare (no allocation); only
  gaps create entries, and only on loss.
* A seq is not NACKed on the packet that reveals the gap: UDP reorders, so it waits a
  short allowance (``reorder_ms``) unless it is already ``reorder_packets`` behind the
  newest seq (libwebrtc's NackRequester does the same).
* Retries are spaced by ``max(rtt_ms, min_interval_ms)``: asking again before the
  first retransmission could have arrived only duplicates RTX traffic.
* A seq we give up on (too many tries, too old, evicted) means the decoder will stall
  until the next keyframe, so it raises ``keyframe_needed``; a keyframe newer than the
  give-up clears it, and makes every older missing seq obsolete.

Invariant (checked by the tests):
``lost == recovered + given_up + obsoleted + pending``.
"""

from __future__ import annotations

import math
from itertools import islice

__all__ = ["NackGenerator"]


class _Missing:
    """Per missing seq: when it was detected, last NACKed, and how often."""

    __slots__ = ("detected_ms", "sent_ms", "tries")

    def __init__(self, detected_ms: float) -> None:
        self.detected_ms = detected_ms
        self.sent_ms = -math.inf
        self.tries = 0


class NackGenerator:
    """Tracks missing seqs of one received stream and decides when to NACK them.

    Feed it only packets of the primary stream, with RTX already unwrapped to the
    original seq (and ``is_retransmission=True``) *before* it: otherwise the log goes
    stale and NACKs repeat forever (pion/webrtc#3063).
    """

    __slots__ = (
        "max_retries",
        "max_age_ms",
        "min_interval_ms",
        "max_missing",
        "reorder_ms",
        "reorder_packets",
        "_rtt_ms",
        "_highest",
        "_missing",
        "_first_unsent",
        "_deadline",
        "_last_poll_ms",
        "_last_giveup_ext",
        "keyframe_needed",
        "lost",
        "recovered",
        "given_up",
        "obsoleted",
        "nacks_sent",
        "rtx_received",
    )

    def __init__(
        self,
        *,
        max_retries: int = 10,
        max_age_ms: float = 1000.0,
        min_interval_ms: float = 20.0,
        max_missing: int = 500,
        reorder_ms: float = 5.0,
        reorder_packets: int = 3,
    ) -> None:
        if max_retries < 1:
            raise ValueError(f"max_retries must be >= 1, got {max_retries}")
        if max_missing < 1:
            raise ValueError(f"max_missing must be >= 1, got {max_missing}")
        if max_age_ms <= 0 or min_interval_ms < 0 or reorder_ms < 0 or reorder_packets < 1:
            raise ValueError(
                "need max_age_ms > 0, min_interval_ms >= 0, reorder_ms >= 0, "
                f"reorder_packets >= 1; got {max_age_ms}, {min_interval_ms}, "
                f"{reorder_ms}, {reorder_packets}"
            )
        self.max_retries = max_retries
        self.max_age_ms = max_age_ms
        self.min_interval_ms = min_interval_ms
        self.max_missing = max_missing
        self.reorder_ms = reorder_ms
        self.reorder_packets = reorder_packets
        self._rtt_ms = 100.0
        self._highest: int | None = None
        # ext seq -> entry. Insertion order is ascending seq: new gaps are always
        # above every seq already stored.
        self._missing: dict[int, _Missing] = {}
        # Lower bound of the oldest never-NACKed seq (may be stale after a recovery;
        # then it only causes one early, empty poll).
        self._first_unsent: int | None = None
        self._deadline = math.inf
        self._last_poll_ms = -math.inf
        self._last_giveup_ext = -1
        self.keyframe_needed = False
        self.lost = 0
        self.recovered = 0
        self.given_up = 0
        self.obsoleted = 0
        self.nacks_sent = 0
        self.rtx_received = 0

    # -- configuration from RTCP -------------------------------------------------

    @property
    def rtt_ms(self) -> float:
        """Round-trip time to the publisher; spaces the retries (default 100 ms)."""
        return self._rtt_ms

    @rtt_ms.setter
    def rtt_ms(self, value: float) -> None:
        self._rtt_ms = value
        if self._missing and self._last_poll_ms > -math.inf:
            # Retry times depend on the RTT: have the shell poll soon to recompute.
            self._deadline = min(self._deadline, self._last_poll_ms)

    @property
    def pending(self) -> int:
        """Seqs currently missing and still worth asking for."""
        return len(self._missing)

    @property
    def highest(self) -> int | None:
        """Highest extended seq seen."""
        return self._highest

    # -- forward plane -------------------------------------------------------------

    def on_packet(
        self,
        ext_seq: int,
        now_ms: float,
        *,
        is_keyframe: bool = False,
        is_retransmission: bool = False,
    ) -> None:
        """Record one arrival.

        ``is_keyframe`` must be set only on the *first* packet of a keyframe: every
        seq below it is then obsolete (later packets of the same keyframe would
        otherwise make its own lost packets look obsolete).
        """
        if is_retransmission:
            self.rtx_received += 1
        highest = self._highest
        if highest is None:
            self._highest = ext_seq
            return
        delta = ext_seq - highest
        if delta == 1 and not is_keyframe:
            # Fast path: the common in-order packet.
            self._highest = ext_seq
            if self._first_unsent is not None:
                self._check_reorder_due(ext_seq, now_ms)
            return
        if delta > 0:
            self._highest = ext_seq
            if delta > 1:
                self._on_gap(highest + 1, ext_seq, now_ms, is_keyframe)
        elif delta < 0:
            if self._missing.pop(ext_seq, None) is not None:
                self.recovered += 1
        # delta == 0: duplicate, nothing to learn.
        if is_keyframe:
            self._on_keyframe(ext_seq)
        elif self._first_unsent is not None and delta > 0:
            self._check_reorder_due(ext_seq, now_ms)

    def _check_reorder_due(self, highest: int, now_ms: float) -> None:
        first = self._first_unsent
        if first is not None and highest - first >= self.reorder_packets:
            self._deadline = min(self._deadline, now_ms)

    def _on_gap(self, first: int, end: int, now_ms: float, is_keyframe: bool) -> None:
        """Seqs ``first .. end-1`` never arrived."""
        gap = end - first
        self.lost += gap
        if is_keyframe:
            # Frames before a keyframe are not needed to decode after it.
            self.obsoleted += gap
            return
        if gap > self.max_missing:
            # An outage (or a seq jump) too large to repair: ask for a keyframe.
            self.given_up += gap + len(self._missing)
            self._missing.clear()
            self._first_unsent = None
            self._mark_given_up(end - 1)
            return
        overflow = len(self._missing) + gap - self.max_missing
        if overflow > 0:
            self._evict_oldest(overflow)
        missing = self._missing
        for ext in range(first, end):
            missing[ext] = _Missing(now_ms)
        if self._first_unsent is None:
            self._first_unsent = first
        self._deadline = min(self._deadline, now_ms + self.reorder_ms)

    def _evict_oldest(self, count: int) -> None:
        missing = self._missing
        victims = list(islice(missing, count))
        for ext in victims:
            del missing[ext]
        self.given_up += len(victims)
        if victims:
            self._mark_given_up(victims[-1])

    def _mark_given_up(self, ext: int) -> None:
        self.keyframe_needed = True
        if ext > self._last_giveup_ext:
            self._last_giveup_ext = ext

    def _on_keyframe(self, ext_seq: int) -> None:
        missing = self._missing
        if missing and next(iter(missing)) < ext_seq:
            keep = {ext: m for ext, m in missing.items() if ext > ext_seq}
            self.obsoleted += len(missing) - len(keep)
            self._missing = keep
            if not keep:
                self._first_unsent = None
        if ext_seq > self._last_giveup_ext:
            self.keyframe_needed = False

    # -- feedback plane --------------------------------------------------------------

    def poll(self, now_ms: float) -> list[int]:
        """16-bit seqs to NACK now, oldest first; also retires hopeless seqs."""
        self._last_poll_ms = now_ms
        missing = self._missing
        if not missing:
            self._deadline = math.inf
            self._first_unsent = None
            return []
        interval = max(self._rtt_ms, self.min_interval_ms)
        max_age = self.max_age_ms
        max_retries = self.max_retries
        reorder_ms = self.reorder_ms
        horizon = self._highest - self.reorder_packets  # type: ignore[operator]
        out: list[int] = []
        dead: list[int] = []
        deadline = math.inf
        first_unsent: int | None = None
        for ext, m in missing.items():
            expires = m.detected_ms + max_age
            if now_ms >= expires or (m.tries >= max_retries and now_ms - m.sent_ms >= interval):
                dead.append(ext)
                continue
            if m.tries == 0:
                due = m.detected_ms + reorder_ms
                if now_ms < due and ext > horizon:
                    if first_unsent is None:
                        first_unsent = ext
                    deadline = min(deadline, due, expires)
                    continue
            elif now_ms - m.sent_ms < interval:
                deadline = min(deadline, m.sent_ms + interval, expires)
                continue
            m.tries += 1
            m.sent_ms = now_ms
            out.append(ext & 0xFFFF)
            deadline = min(deadline, now_ms + interval, expires)
        if dead:
            for ext in dead:
                del missing[ext]
            self.given_up += len(dead)
            self._mark_given_up(dead[-1])
        self.nacks_sent += len(out)
        self._first_unsent = first_unsent
        self._deadline = deadline
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`poll` has something to do next (None: nothing pending)."""
        if not self._missing or self._deadline == math.inf:
            return None
        return self._deadline

    def take_keyframe_needed(self) -> bool:
        """Return and clear the 'a seq was given up, ask for a keyframe' flag."""
        needed = self.keyframe_needed
        self.keyframe_needed = False
        return needed
