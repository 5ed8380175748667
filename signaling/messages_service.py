"""Room messages on the server: ``send_data``, ``data`` events, ``data_ack``, replays.

Wires the sans-I/O :class:`~signaling.messages.RoomLog` (seq numbers, idempotent ids,
cursors, bounds) to the SQLite :class:`~signaling.messages_store.MessageStore` and to
the sessions attached to each room.

Exactly once, in order: a reliable message is answered and fanned out only after its
commit, in seq order. Each attached session has a ``delivered`` seq; on join or resume it
gets the committed messages after its ``data_since`` (or its identity's acknowledged
cursor) read from the store, and from then on every newer commit it may see, never one
it already has. ``data`` events do not go through the resume event log (its bound is
for signaling state, not for a chat's backlog): a resume replays them from the store.

Unreliable messages (``reliable: false``) are not numbered or stored: they go at once
to the others attached to the room, as datagrams where the connection has them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .messages import RoomLog
from .messages_store import (
    MessageStore,
    Write,
    delete_upto,
    insert_message,
    set_cursor,
    set_last_seq,
)
from .protocol import ProtocolError, Request, error_reply, ok
from .rooms import Participant, Room, RoomManager, RoomObserverBase

if TYPE_CHECKING:
    from .session import Session

__all__ = ["MessageService"]

log = logging.getLogger("ferry.signaling.messages")

# Replays up to this many messages are read on the loop (a fraction of a millisecond);
# longer ones in a thread.
SYNC_REPLAY_MAX = 200


@dataclass
class _Receiver:
    identity: str
    delivered: int  # every committed seq up to this was sent or is not for this identity
    datagram: Callable[[dict[str, Any]], bool] | None = None
    # While a long replay is read in a thread: the newer messages, sent after it.
    backlog: list[dict[str, Any]] | None = None


@dataclass
class _Pending:
    event: dict[str, Any]
    recipients: list[str] | None
    waiters: list[tuple[Session, Request]] = field(default_factory=list)


class MessageService(RoomObserverBase):
    def __init__(self, rooms: RoomManager, data_dir: str | Path, *, max_count: int = 10000, max_age_s: float = 86400.0) -> None:
        self.rooms = rooms
        self.store = MessageStore(Path(data_dir) / "messages.db")
        self.max_count = max_count
        self.max_age_s = max_age_s
        self._logs: dict[str, RoomLog] = {}
        self._deleted: dict[str, int] = {}  # highest seq deleted per room (by the bounds)
        self._receivers: dict[str, dict[Session, _Receiver]] = {}
        self._room_of: dict[Session, str] = {}
        self._pending: dict[str, dict[int, _Pending]] = {}
        # Counters for /metrics and the bench.
        self.sent = {"true": 0, "false": 0}
        self.bytes = 0
        self.delivered = 0
        self.replayed = 0
        self.duplicates = 0
        self._storage_errors: set[str] = set()
        rooms.observers.append(self)

    def _log(self, room: str, now: float) -> RoomLog:
        """The room's log, loaded from the store at first use; ProtocolError
        ``storage_error`` when the database cannot be read."""
        room_log = self._logs.get(room)
        if room_log is None:
            try:
                snapshot = self.store.load_room(room, self.max_count)
            except sqlite3.Error as exc:
                self._storage_failed(exc)
                raise ProtocolError("storage_error", f"room message history unreadable: {exc}") from None
            room_log = RoomLog(max_count=self.max_count, max_age_s=self.max_age_s, snapshot=snapshot)
            self._deleted[room] = room_log.first_seq - 1
            if snapshot.kept and snapshot.kept[0].seq > 1:
                # Rows past a lowered messages_max_per_room are never replayed: delete them.
                self.store.write([delete_upto(room, snapshot.kept[0].seq - 1)], _ignore)
            self._logs[room] = room_log
            self._evict(room, room_log, now, [])
        return room_log

    # -- sessions ------------------------------------------------------------------------
    def attach(
        self,
        session: Session,
        participant: Participant,
        data_since: int | None,
        now: float,
        datagram: Callable[[dict[str, Any]], bool] | None = None,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A session joined or resumed: returns the reply's ``data`` field and the
        committed messages it misses (send them after the reply); newer ones follow as
        they commit."""
        self.detach(session)
        room = participant.room.name
        try:
            room_log = self._log(room, now)
        except ProtocolError as exc:  # a broken history never keeps anyone out of a room
            return {"error": {"code": exc.code, "message": exc.message}}, []
        self._evict(room, room_log, now, [])  # an idle room's old messages age out here
        # Nothing the bounds dropped is replayed, even before the store deleted it.
        after = max(room_log.replay_after(participant.identity, data_since), self._deleted.get(room, 0))
        upto = room_log.committed_seq
        identity = participant.identity
        receiver = _Receiver(identity, upto, datagram)
        self._receivers.setdefault(room, {})[session] = receiver
        self._room_of[session] = room
        info = {"last_seq": upto, "first_seq": room_log.first_seq}
        if upto - after <= SYNC_REPLAY_MAX:
            try:
                rows = self.store.read(room, after, upto)
            except sqlite3.Error as exc:
                self._storage_failed(exc)
                return {**info, "replayed": 0, "error": {"code": "storage_error", "message": str(exc)}}, []
            missed = [event for _, to, event in rows if to is None or identity in to]
            self.replayed += len(missed)
            return {**info, "replayed": len(missed)}, missed
        # A long replay (a page asking for the whole history) is read in a thread, so
        # the loop does not stall (~6 ms per 1000 messages); newer messages wait
        # behind it in the receiver's backlog, so the order holds.
        receiver.backlog = []
        asyncio.get_running_loop().create_task(self._replay(session, receiver, room, after, upto))
        try:
            replayed = self.store.count(room, after, upto, identity)
        except sqlite3.Error as exc:
            self._storage_failed(exc)
            replayed = 0
        return {**info, "replayed": replayed}, []

    def _storage_failed(self, exc: Exception) -> None:
        """Logged once per kind of failure (a corrupt file fails every read alike)."""
        kind = type(exc).__name__ + ": " + str(exc)
        if kind not in self._storage_errors:
            self._storage_errors.add(kind)
            log.error("room message database %s: %s", self.store.path, kind)

    async def _replay(self, session: Session, receiver: _Receiver, room: str, after: int, upto: int) -> None:
        try:
            rows = await asyncio.to_thread(self.store.read, room, after, upto)
        except Exception:
            log.exception("room message replay failed for %s in %s", receiver.identity, room)
            rows = []
        backlog, receiver.backlog = receiver.backlog or [], None
        if self._receivers.get(room, {}).get(session) is not receiver or session.ended_reason is not None:
            return  # the session left (or resumed elsewhere) meanwhile
        for _, to, event in rows:
            if to is None or receiver.identity in to:
                session.send(event)
                self.replayed += 1
        for event in backlog:
            session.send(event)

    def detach(self, session: Session) -> None:
        room = self._room_of.pop(session, None)
        if room is not None:
            receivers = self._receivers.get(room)
            if receivers is not None:
                receivers.pop(session, None)
                if not receivers:
                    del self._receivers[room]

    # -- requests ------------------------------------------------------------------------
    def send(self, session: Session, participant: Participant, req: Request, now: float, *, reply: bool = True) -> None:
        """``send_data``: replies at once when unreliable (unless it came as a datagram:
        ``reply=False``) or a retry of a committed send, else after the commit."""
        if not participant.claims.grants.can_publish_data:
            raise ProtocolError("forbidden", "token does not allow sending room messages (canPublishData)")
        data = req.data
        room = participant.room
        to: list[str] | None = data["to"]
        if to is not None:
            unknown = [identity for identity in to if room.by_identity(identity) is None]
            if unknown:
                raise ProtocolError("not_found", f"no participant {unknown[0]!r} in room {room.name}")
        body = {k: data[k] for k in ("payload", "payload_b64") if k in data}
        event: dict[str, Any] = {
            "type": "data",
            "reliable": data["reliable"],
            "topic": data["topic"],
            **body,
            "from": participant.identity,
            "name": participant.name,
            "ts": int(now * 1000),
        }
        if to is not None:
            event["to"] = to
        size = _payload_size(body)
        if not data["reliable"]:
            self._unreliable(session, room.name, event, size)
            if reply:
                session.send(ok(req))
            return
        room_log = self._log(room.name, now)
        sender, data_id = participant.identity, data["data_id"]
        seq = room_log.lookup(sender, data_id)
        if seq is not None:
            self.duplicates += 1
            pending = self._pending.get(room.name, {}).get(seq)
            if pending is not None:
                pending.waiters.append((session, req))
            else:
                session.send(ok(req, data_seq=seq, data_id=data_id, duplicate=True))
            return
        seq = room_log.assign(sender, data_id, now)
        event["data_seq"] = seq
        event["data_id"] = data_id or f"DM_{secrets.token_hex(8)}"
        recipients = sorted({*to, sender}) if to is not None else None
        writes = [insert_message(room.name, seq, now, sender, data_id, recipients, event), set_last_seq(room.name, seq)]
        self._evict(room.name, room_log, now, writes)
        self._pending.setdefault(room.name, {})[seq] = _Pending(event, recipients, [(session, req)])
        self.sent["true"] += 1
        self.bytes += size
        self.store.write(writes, lambda error: self._committed(room.name, seq, error))

    def _evict(self, room: str, room_log: RoomLog, now: float, writes: list[Write]) -> None:
        """Apply the count and age bounds; the deletion goes with ``writes`` (or alone)."""
        dropped = room_log.evict(now)
        if dropped <= self._deleted.get(room, 0):
            return
        self._deleted[room] = dropped
        if writes:
            writes.append(delete_upto(room, dropped))
        else:
            self.store.write([delete_upto(room, dropped)], _ignore)

    def ack(self, session: Session, participant: Participant, req: Request, now: float) -> None:
        """``data_ack {data_seq}``: the identity has every message up to it."""
        room = participant.room.name
        room_log = self._log(room, now)
        if room_log.ack(participant.identity, req.data["data_seq"]):
            cursor = room_log.cursor(participant.identity)
            assert cursor is not None
            self.store.write([set_cursor(room, participant.identity, cursor)], _ignore)
        session.send(ok(req, data_seq=room_log.cursor(participant.identity) or 0))

    # -- delivery ------------------------------------------------------------------------
    def _committed(self, room: str, seq: int, error: Exception | None) -> None:
        pending = self._pending.get(room, {}).pop(seq, None)
        room_log = self._logs.get(room)
        if pending is None or room_log is None:
            return
        if error is not None:
            room_log.failed([seq])
            self.sent["true"] -= 1
            for session, req in pending.waiters:
                if session.ended_reason is None:
                    session.send(error_reply(req.type, req.id, "storage_error", f"message not stored: {error}"))
            return
        room_log.committed(seq)
        event = pending.event
        for session, req in pending.waiters:
            if session.ended_reason is None:
                session.send(ok(req, data_seq=seq, data_id=event["data_id"]))
        for session, receiver in list(self._receivers.get(room, {}).items()):
            if receiver.delivered >= seq:
                continue
            receiver.delivered = seq
            if pending.recipients is None or receiver.identity in pending.recipients:
                if receiver.backlog is not None:
                    receiver.backlog.append(event)
                else:
                    session.send(event)
                self.delivered += 1
        if not self._pending.get(room, True):
            del self._pending[room]

    def _unreliable(self, sender: Session, room: str, event: dict[str, Any], size: int) -> None:
        self.sent["false"] += 1
        self.bytes += size
        to = event.get("to")
        for session, receiver in list(self._receivers.get(room, {}).items()):
            if session is sender or (to is not None and receiver.identity not in to):
                continue
            if receiver.datagram is None or not receiver.datagram(event):
                session.send(event)

    async def close(self) -> None:
        """Shutdown: commit (and answer) what is queued, then stop the writer."""
        await self.store.flush()
        self.store.close()

    def snapshot(self) -> dict[str, Any]:
        return {
            "data_messages": dict(self.sent),
            "data_bytes": self.bytes,
            "data_commits": self.store.commits,
        }

    # -- RoomObserver --------------------------------------------------------------------
    def room_closed(self, room: Room) -> None:
        if not self._pending.get(room.name):
            self._logs.pop(room.name, None)
            self._pending.pop(room.name, None)








def _payload_size(body: dict[str, Any]) -> int:
    """Payload bytes: decoded base64, or the JSON value's compact encoding."""
    if "payload_b64" in body:
        return len(body["payload_b64"]) * 3 // 4
    return len(json.dumps(body["payload"], separators=(",", ":")))


def _ignore(error: Exception | None) -> None:
    """A cursor write's outcome: a lost cursor only means a longer replay later."""
