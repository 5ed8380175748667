"""Sans-I/O room messages: per-room sequencing, idempotent sends, cursors, bounds.

A reliable room message (``send_data``) gets the room's next sequence number
(``data_seq``: 1, 2, ... per room, continuing across restarts) once; a send retried with
the same ``data_id`` by the same sender (its reply was lost with a connection) gets the
seq it already has instead of a second copy. Each identity has a cursor: the highest
``data_seq`` it acknowledged (``data_ack``), from which a client that joins again without
saying what it has (``data_since``) is replayed. The log is bounded by count and age; what
falls out is what the store deletes.

Nothing here touches a disk or a clock: :class:`RoomLog` is fed ``now`` (Unix seconds)
and a snapshot loaded from :mod:`signaling.messages_store`, and says what to persist.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Kept", "RoomLog", "RoomSnapshot"]

IdKey = tuple[str, str]  # (sender identity, data_id)


@dataclass(frozen=True)
class Kept:
    """What the log remembers of one stored message (its body lives in the store)."""

    seq: int
    ts: float
    key: IdKey | None


@dataclass
class RoomSnapshot:
    """A room's persisted state, as the store loads it after a restart."""

    last_seq: int = 0
    kept: list[Kept] = field(default_factory=list)  # oldest first
    cursors: dict[str, int] = field(default_factory=dict)


class RoomLog:
    """One room's message sequence.

    ``last_seq`` is the newest seq handed out; ``committed_seq`` the newest the store has
    made durable (sends are answered and fanned out only then, in seq order).
    """

    def __init__(self, *, max_count: int, max_age_s: float, snapshot: RoomSnapshot | None = None) -> None:
        snapshot = snapshot or RoomSnapshot()
        self.max_count = max_count
        self.max_age_s = max_age_s
        self.last_seq = snapshot.last_seq
        self.committed_seq = snapshot.last_seq
        self._kept: deque[Kept] = deque(snapshot.kept)
        self._ids: dict[IdKey, int] = {k.key: k.seq for k in self._kept if k.key is not None}
        self._cursors = dict(snapshot.cursors)

    # -- sending -------------------------------------------------------------------------
    def lookup(self, sender: str, data_id: str | None) -> int | None:
        """The seq already given to this sender's ``data_id``, if it is still kept."""
        if data_id is None:
            return None
        return self._ids.get((sender, data_id))

    def assign(self, sender: str, data_id: str | None, now: float) -> int:
        """The next seq for a new message (call :meth:`lookup` first for retries)."""
        self.last_seq += 1
        key = (sender, data_id) if data_id is not None else None
        self._kept.append(Kept(self.last_seq, now, key))
        if key is not None:
            self._ids[key] = self.last_seq
        return self.last_seq

    def committed(self, seq: int) -> None:
        """The store made every seq up to ``seq`` durable."""
        self.committed_seq = max(self.committed_seq, seq)

    def failed(self, seqs: Iterable[int]) -> None:
        """The store could not write these: forget their ids so a retry gets a new seq.

        Their numbers stay used (a gap in the sequence), so no two messages ever share one.
        """
        lost = set(seqs)
        self._kept = deque(k for k in self._kept if k.seq not in lost)
        self._ids = {key: seq for key, seq in self._ids.items() if seq not in lost}

    def evict(self, now: float) -> int:
        """Drop what is past the count or age bound; returns the highest seq dropped so
        far (the store deletes up to it), 0 when nothing ever was."""
        dropped = 0
        while self._kept and (
            len(self._kept) > self.max_count or now - self._kept[0].ts > self.max_age_s
        ):
            old = self._kept.popleft()
            dropped = old.seq
            if old.key is not None and self._ids.get(old.key) == old.seq:
                del self._ids[old.key]
        return dropped

    @property
    def first_seq(self) -> int:
        """The oldest seq still kept (``last_seq + 1`` when none is)."""
        return self._kept[0].seq if self._kept else self.last_seq + 1

    def __len__(self) -> int:
        return len(self._kept)

    # -- cursors -------------------------------------------------------------------------
    def ack(self, identity: str, seq: int) -> bool:
        """``identity`` has every message up to ``seq``; returns whether its cursor moved.

        Clamped to ``committed_seq``: nobody can have a message that does not exist yet.
        """
        seq = min(seq, self.committed_seq)
        if seq <= self._cursors.get(identity, 0):
            return False
        self._cursors[identity] = seq
        return True

    def cursor(self, identity: str) -> int | None:
        """The identity's acknowledged seq, None when it never acknowledged one."""
        return self._cursors.get(identity)

    def replay_after(self, identity: str, data_since: int | None) -> int:
        """Where a (re)joining client's replay starts: after ``data_since`` when it says
        what it has, else after its acknowledged cursor, else nothing old (a new client
        asks for history with ``data_since: 0``)."""
        if data_since is not None:
            return min(data_since, self.committed_seq)
        cursor = self._cursors.get(identity)
        return self.committed_seq if cursor is None else cursor
