"""Room message history in SQLite (stdlib sqlite3): WAL, ``synchronous=FULL``, group commit.

A commit here means fsync: an acknowledged message survives a crash or a power cut.
One fsync costs ~3 ms on the machines Ferry was measured on, so writes never run on the
event loop: a writer thread takes every write queued while the previous commit was
syncing and commits them together (group commit), then calls each write's ``done`` back
on the loop. Under load, many sends share one fsync; alone, a send waits for one.

Reads (a room's state at first use, a replay on join or resume) have their own
connection: WAL readers never wait for the writer and see only committed rows. They run
on the loop, except long replays (:mod:`signaling.messages_service` reads those in a
thread).

The file is created on the first write, so a server whose clients never send room
messages leaves nothing on disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .messages import Kept, RoomSnapshot

__all__ = ["MessageStore", "StoreError"]

log = logging.getLogger("ferry.signaling.messages")

# Writes committed together at most (a bound on one transaction's size and latency).
MAX_BATCH = 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS rooms (room TEXT PRIMARY KEY, last_seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    room TEXT NOT NULL, seq INTEGER NOT NULL, ts REAL NOT NULL,
    sender TEXT NOT NULL, data_id TEXT, recipients TEXT, body TEXT NOT NULL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors (
    room TEXT NOT NULL, identity TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (room, identity)
) WITHOUT ROWID;
"""

# One write: (sql, parameters). ``done(error)`` runs on the loop after the commit.
Write = tuple[str, tuple[Any, ...]]
Done = Callable[[Exception | None], None]


class StoreError(Exception):
    """The message database could not be opened or written."""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class MessageStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.commits = 0  # transactions committed (each is one fsync)
        self.writes = 0
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[list[Write], Done] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = 0
        self._idle: asyncio.Event | None = None

    # -- reads (on the loop) -------------------------------------------------------------
    def _read_conn(self) -> sqlite3.Connection | None:
        if self._reader is None:
            if not self.path.exists():
                return None
            self._reader = _connect(self.path)
        return self._reader

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """Rows of a read; none while the writer has not created the tables yet."""
        with self._read_lock:  # the loop and replay threads share the connection
            conn = self._read_conn()
            if conn is None:
                return []
            try:
                return conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise

    def load_room(self, room: str, max_count: int) -> RoomSnapshot:
        """The room's last seq, the newest ``max_count`` kept messages' seq/ts/ids, and
        its cursors (an empty snapshot when the database does not exist yet)."""
        last = self._query("SELECT last_seq FROM rooms WHERE room=?", (room,))
        rows = self._query(
            "SELECT seq, ts, sender, data_id FROM messages WHERE room=? ORDER BY seq DESC LIMIT ?", (room, max_count)
        )
        kept = [
            Kept(seq, ts, (sender, data_id) if data_id is not None else None)
            for seq, ts, sender, data_id in reversed(rows)
        ]
        cursors = dict(self._query("SELECT identity, seq FROM cursors WHERE room=?", (room,)))
        last_seq = max(last[0][0] if last else 0, kept[-1].seq if kept else 0)
        return RoomSnapshot(last_seq=last_seq, kept=kept, cursors=cursors)

    def read(self, room: str, after: int, upto: int) -> list[tuple[int, list[str] | None, dict[str, Any]]]:
        """Messages with ``after < seq <= upto``, oldest first: (seq, recipients, event)."""
        if upto <= after:
            return []
        rows = self._query(
            "SELECT seq, recipients, body FROM messages WHERE room=? AND seq>? AND seq<=? ORDER BY seq",
            (room, after, upto),
        )
        return [(seq, json.loads(to) if to is not None else None, json.loads(body)) for seq, to, body in rows]

    def count(self, room: str, after: int, upto: int, identity: str) -> int:
        """How many of :meth:`read`'s messages are meant for ``identity``."""
        rows = self._query(
            "SELECT count(*) FROM messages WHERE room=? AND seq>? AND seq<=? AND (recipients IS NULL"
            " OR EXISTS (SELECT 1 FROM json_each(recipients) WHERE value=?))",
            (room, after, upto, identity),
        )
        return int(rows[0][0]) if rows else 0

    # -- writes (a thread) ---------------------------------------------------------------
    def write(self, writes: list[Write], done: Done) -> None:
        """Queue writes for the next group commit; ``done`` runs on this loop after it."""
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._idle = asyncio.Event()
            self._thread = threading.Thread(target=self._run, name="ferry-messages", daemon=True)
            self._thread.start()
        assert self._idle is not None
        self._pending += 1
        self._idle.clear()
        self._queue.put((writes, done))

    def _run(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = _connect(self.path)
            conn.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            log.error("cannot open the message database %s: %s", self.path, exc)
            conn = None
            opened: Exception | None = StoreError(f"cannot open {self.path}: {exc}")
        else:
            opened = None
        stop = False
        while not stop:
            item = self._queue.get()
            batch: list[tuple[list[Write], Done]] = []
            while item is not None:
                batch.append(item)
                if len(batch) >= MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            stop = item is None
            if not batch:
                continue
            error = opened
            if conn is not None:
                error = self._commit(conn, batch)
            loop = self._loop
            assert loop is not None
            try:
                loop.call_soon_threadsafe(self._finished, batch, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return
        if conn is not None:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[tuple[list[Write], Done]]) -> Exception | None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            for writes, _ in batch:
                for sql, params in writes:
                    conn.execute(sql, params)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("message database write failed (%d writes lost): %s", len(batch), exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return StoreError(str(exc))
        self.commits += 1
        self.writes += len(batch)
        return None

    def _finished(self, batch: list[tuple[list[Write], Done]], error: Exception | None) -> None:
        for _, done in batch:
            try:
                done(error)
            except Exception:
                log.exception("message commit callback failed")
        self._pending -= len(batch)
        if self._pending == 0 and self._idle is not None:
            self._idle.set()

    async def flush(self) -> None:
        """Wait until every queued write is committed and called back."""
        if self._idle is not None and self._pending:
            await self._idle.wait()

    def close(self) -> None:
        """Stop the writer after what is queued (call :meth:`flush` first to wait)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None


# -- the writes the service queues ---------------------------------------------------------


def insert_message(room: str, seq: int, ts: float, sender: str, data_id: str | None, recipients: list[str] | None, event: dict[str, Any]) -> Write:
    return (
        "INSERT INTO messages (room, seq, ts, sender, data_id, recipients, body) VALUES (?,?,?,?,?,?,?)",
        (room, seq, ts, sender, data_id, json.dumps(recipients) if recipients is not None else None,
         json.dumps(event, separators=(",", ":"))),
    )


def set_last_seq(room: str, seq: int) -> Write:
    return (
        "INSERT INTO rooms (room, last_seq) VALUES (?, ?) ON CONFLICT(room) DO UPDATE SET last_seq=max(last_seq, excluded.last_seq)",
        (room, seq),
    )


def set_cursor(room: str, identity: str, seq: int) -> Write:
    return (
        "INSERT INTO cursors (room, identity, seq) VALUES (?, ?, ?) ON CONFLICT(room, identity) DO UPDATE SET seq=max(seq, excluded.seq)",
        (room, identity, seq),
    )


def delete_upto(room: str, seq: int) -> Write:
    return ("DELETE FROM messages WHERE room=? AND seq<=?", (room, seq))
