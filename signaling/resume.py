"""Sans-I/O session resume: per-participant event log and single-use resume tokens.

A client whose signaling connection drops (a dead Wi-Fi, a NAT rebinding that killed its
TCP connection) reconnects on either transport within the reconnect grace period and
sends ``resume {token, last_seq}`` instead of ``join``: it keeps its participant sid,
published tracks and subscriptions, and gets the events it missed, in order. Others
never see it leave.

* :class:`EventLog` stamps every event sent to a participant with a sequence number
  (``seq``) and keeps the last :data:`EVENT_LOG_LIMIT`, also while the participant is
  away; a resume replays those after the client's ``last_seq``.
* :class:`Outbox` is the participant's ``send``: it logs each event and forwards it to
  the connection currently attached, if any.
* :class:`ResumeTokens`: 256-bit random tokens, one valid token per participant. Each
  use rotates it (the reply carries the next), so a token works for one connection only;
  a used token presented again (a second concurrent connection, a replay) gets
  ``resume_used``; an unknown one, or one whose participant is gone or whose grace
  ran out, ``resume_expired``.

No clock or randomness is read here: callers pass ``now`` and a token factory.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EVENT_LOG_BYTES", "EVENT_LOG_LIMIT", "LATEST_ONLY", "EventLog", "Outbox", "ResumeError", "ResumeState", "ResumeTokens"]

EVENT_LOG_LIMIT = 1000
EVENT_LOG_BYTES = 1 << 20
LATEST_ONLY = frozenset({"subscriber_offer", "active_speakers"})
# Used tokens remembered per server (to answer resume_used rather than resume_expired).
USED_TOKENS_LIMIT = 10000

Send = Callable[[dict[str, Any]], None]


class ResumeError(Exception):
    """``code`` is ``resume_expired``, ``resume_used`` or ``resume_gap``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class EventLog:
    """The events sent to one participant, numbered from 1, bounded in count and bytes.

    Events that only matter in their latest form (:data:`LATEST_ONLY`: each
    ``subscriber_offer`` describes the whole session and only the newest can be
    answered; ``active_speakers`` is a state) replace their predecessor in the log, so a
    busy room's offers (tens of KiB each) do not crowd out everything else. Their seq
    numbers leave holes in a replay; clients only keep the highest seen.
    """

    def __init__(self, limit: int = EVENT_LOG_LIMIT, max_bytes: int = EVENT_LOG_BYTES) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self._events: deque[tuple[int, int, dict[str, Any]]] = deque()  # (seq, size, event)
        self._latest: dict[str, tuple[int, int, dict[str, Any]]] = {}
        self._bytes = 0
        self._evicted = 0  # highest seq dropped for room: a resume from before it has a gap
        self.last_seq = 0

    def append(self, message: dict[str, Any]) -> dict[str, Any]:
        self.last_seq += 1
        stamped = {**message, "seq": self.last_seq}
        entry = (self.last_seq, _size(stamped), stamped)
        kind = message.get("type")
        if kind in LATEST_ONLY:
            previous = self._latest.get(kind)
            if previous is not None:
                self._events.remove(previous)
                self._bytes -= previous[1]
            self._latest[kind] = entry
        self._events.append(entry)
        self._bytes += entry[1]
        while len(self._events) > self.limit or (self._bytes > self.max_bytes and len(self._events) > 1):
            seq, size, old = self._events.popleft()
            self._bytes -= size
            self._evicted = seq
            if self._latest.get(old.get("type")) is not None and self._latest[old["type"]][0] == seq:
                del self._latest[old["type"]]
        return stamped

    def since(self, seq: int) -> list[dict[str, Any]]:
        """Events after ``seq``, in order; ResumeError ``resume_gap`` when some of them
        are no longer kept (the client must join afresh)."""
        if seq > self.last_seq or seq < 0:
            raise ResumeError("resume_gap", f"last_seq {seq} is not in 0..{self.last_seq}")
        if seq < self._evicted:
            raise ResumeError(
                "resume_gap", f"events after {seq} are no longer kept (the log starts after {self._evicted})"
            )
        return [event for s, _, event in self._events if s > seq]


def _size(event: dict[str, Any]) -> int:
    """Roughly its encoded size: the top-level strings (an SDP) plus some overhead."""
    return 64 + sum(len(v) for v in event.values() if isinstance(v, str))


@dataclass
class Outbox:
    """A participant's event stream: logged, and forwarded to the attached connection."""

    log: EventLog = field(default_factory=EventLog)
    sink: Send | None = None

    def send(self, message: dict[str, Any]) -> None:
        stamped = self.log.append(message)
        if self.sink is not None:
            self.sink(stamped)


@dataclass
class ResumeState:
    """What a resume needs about one participant: where it is and its outbox."""

    room: str
    sid: str
    token: str
    outbox: Outbox = field(default_factory=Outbox)
    # The session attached now (an opaque object for this module), None while away.
    session: object | None = None


class ResumeTokens:
    """Participants that can be resumed, by their current token."""

    def __init__(self, new_token: Callable[[], str]) -> None:
        self._new_token = new_token
        self._by_token: dict[str, ResumeState] = {}
        self._by_sid: dict[str, ResumeState] = {}
        self._used: OrderedDict[str, str] = OrderedDict()  # used token -> sid

    def __len__(self) -> int:
        return len(self._by_sid)

    def register(self, room: str, sid: str) -> ResumeState:
        state = ResumeState(room=room, sid=sid, token=self._new_token())
        self._by_token[state.token] = state
        self._by_sid[sid] = state
        return state

    def get(self, sid: str) -> ResumeState | None:
        return self._by_sid.get(sid)

    def redeem(self, token: str) -> ResumeState:
        """The state bound to ``token``, which is used up: the state carries a new one."""
        state = self._by_token.pop(token, None)
        if state is None:
            if token in self._used:
                raise ResumeError("resume_used", "this resume token was already used by another connection")
            raise ResumeError("resume_expired", "unknown or expired resume token; join again")
        self._used[token] = state.sid
        while len(self._used) > USED_TOKENS_LIMIT:
            self._used.popitem(last=False)
        state.token = self._new_token()
        self._by_token[state.token] = state
        return state

    def sids_in(self, room: str) -> list[str]:
        return [sid for sid, state in self._by_sid.items() if state.room == room]

    def forget(self, sid: str) -> None:
        """The participant is gone (left, replaced, grace over): its token dies with it."""
        state = self._by_sid.pop(sid, None)
        if state is not None:
            self._by_token.pop(state.token, None)
