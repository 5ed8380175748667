"""The audit log: an append-only record of who did what, for operators and auditors.

One JSON object per line, one file per UTC day (``audit-YYYY-MM-DD.jsonl``) under the
audit directory (``audit_dir``, by default ``<data_dir>/audit``). Each entry has ``ts``
(unix seconds), ``time`` (ISO 8601 UTC) and ``kind``: ``config`` (at start), ``join``
(identity, room, remote address, user agent, grants), ``refused`` (bad token, missing
grant, locked room, REST calls without roomAdmin), ``leave``, ``moderation`` (action,
by, whom), ``recording`` and ``captions`` (starts and stops).

Writes never block the event loop: :meth:`AuditLog.write` puts the entry on a queue
that a writer thread appends and fsyncs (one fsync per batch of queued entries). The
queue is unbounded on purpose: entries are few (people joining, teachers clicking) and
an audit log must not drop any. ``ferry audit --room R --since 1h`` reads the files.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["AuditLog", "AuditRoomEvents", "read_entries", "register"]

from .rooms import RoomObserverBase

log = logging.getLogger("ferry.signaling.audit")

_PREFIX = "audit-"


def _day(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d")


class AuditLog:
    """Appends entries from any thread; a daemon writer thread owns the files."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._queue: queue.SimpleQueue[dict[str, Any] | threading.Event | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ferry-audit", daemon=True)
        self._started = False
        self._closed = False
        self.written = 0
        self.errors = 0

    def write(self, kind: str, /, **fields: Any) -> None:
        """Queue one entry (never blocks, never raises)."""
        if self._closed:
            log.warning("audit entry after close: %s %s", kind, fields)
            return
        if not self._started:
            self._started = True
            self._thread.start()
        now = time.time()
        entry = {"ts": round(now, 3), "time": datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(
            timespec="milliseconds"), "kind": kind, **fields}
        self._queue.put(entry)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until what was queued so far is written and fsynced (tests, shutdown)."""
        if not self._started:
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued and stop the writer thread (blocking: call off the loop)."""
        if self._closed:
            return
        self._closed = True
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout)

    # -- writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        self._handle: Any = None
        self._day = ""
        self._failing = False
        while True:
            batch = [self._queue.get()]
            while True:  # everything queued meanwhile goes in the same fsync
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            entries = [e for e in batch if isinstance(e, dict)]
            for entry in entries:
                self._append(entry)
            if entries and self._handle is not None:
                try:
                    self._handle.flush()
                    os.fsync(self._handle.fileno())
                except OSError as exc:
                    self.errors += 1
                    log.error("audit log fsync failed: %s", exc)
            for waiter in batch:
                if isinstance(waiter, threading.Event):
                    waiter.set()
            if None in batch:
                if self._handle is not None:
                    self._handle.close()
                return

    def _append(self, entry: dict[str, Any]) -> None:
        try:
            day = _day(entry["ts"])
            if self._handle is None or day != self._day:
                if self._handle is not None:
                    self._handle.close()
                self.directory.mkdir(parents=True, exist_ok=True)
                self._handle = open(self.directory / f"{_PREFIX}{day}.jsonl", "a", encoding="utf-8")  # noqa: SIM115
                self._day = day
            self._handle.write(json.dumps(entry, separators=(",", ":"), default=str) + "\n")
            self.written += 1
            self._failing = False
        except (OSError, ValueError) as exc:
            self.errors += 1
            if not self._failing:  # logged once per run of failures
                log.error("audit log %s cannot be written: %s", self.directory, exc)
            self._failing = True
            self._handle = None


def read_entries(
    directory: str | os.PathLike[str], *, room: str | None = None, since: float | None = None
) -> Iterator[dict[str, Any]]:
    """Entries in time order, of ``room`` (entries naming it) and from ``since`` (unix s)."""
    base = Path(directory)
    if not base.is_dir():
        return
    first = _day(since) if since is not None else ""
    for path in sorted(base.glob(f"{_PREFIX}*.jsonl")):
        if path.stem[len(_PREFIX):] < first:
            continue
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a torn last line after a crash
                if since is not None and entry.get("ts", 0) < since:
                    continue
                if room is not None and entry.get("room") != room:
                    continue
                yield entry


# -- ferry audit -------------------------------------------------------------------------
def register(subparsers: Any) -> None:
    p = subparsers.add_parser("audit", help="print audit log entries (JSON lines)")
    p.add_argument("--config", metavar="FILE", help="YAML config file (to find audit_dir)")
    p.add_argument("--dir", metavar="DIR", help="audit directory (default: audit_dir of the config)")
    p.add_argument("--room", help="only entries of this room")
    p.add_argument("--since", metavar="DURATION", help="only the last DURATION (90s, 30m, 1h, 2d)")
    p.add_argument("--kind", action="append", help="only entries of this kind (repeatable)")
    p.set_defaults(func=_cmd_audit)


def _cmd_audit(args: argparse.Namespace) -> int:
    from .cli import parse_duration
    from .config import load_config

    directory = args.dir
    if directory is None:
        config = load_config(args.config, args.env)
        directory = config.audit_dir
    try:
        since = time.time() - parse_duration(args.since) if args.since else None
    except argparse.ArgumentTypeError as exc:
        print(f"ferry audit: error: --since: {exc}", file=sys.stderr)
        return 2
    count = 0
    for entry in read_entries(directory, room=args.room, since=since):
        if args.kind and entry.get("kind") not in args.kind:
            continue
        sys.stdout.write(json.dumps(entry, separators=(",", ":")) + "\n")
        count += 1
    if count == 0:
        print(f"no audit entries in {directory}", file=sys.stderr)
    return 0


class AuditRoomEvents(RoomObserverBase):
    """A RoomObserver writing leaves and room starts and ends to the audit log (joins
    are written by the session, which knows the remote address and user agent)."""

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    def room_created(self, room: Any) -> None:
        self.audit.write("room_started", room=room.name, sid=room.sid)

    def room_closed(self, room: Any) -> None:
        self.audit.write("room_finished", room=room.name, sid=room.sid)


    def participant_left(self, room: Any, participant: Any) -> None:
        self.audit.write("leave", room=room.name, identity=participant.identity, sid=participant.sid)

    def tracks_published(self, room: Any, participant: Any, tracks: list[Any]) -> None:
        for track in tracks:
            self.audit.write("track_published", room=room.name, identity=participant.identity, track_sid=track.sid,
                             track_kind=track.kind, source=track.source)

    def tracks_unpublished(self, room: Any, participant: Any, tracks: list[Any]) -> None:
        for track in tracks:
            self.audit.write("track_unpublished", room=room.name, identity=participant.identity, track_sid=track.sid)

