"""Room recordings: start and stop, a TrackRecorder on every published track, events.

The recorder core (`recorder/`) records tracks it is handed; this module decides
which. A `RecordingService` watches every room (a `RoomObserver`): while a room is
being recorded, each published track, audio and video, gets a `TrackRecorder`
attached through the engine (`Engine.add_sink`), tracks published mid-recording get
theirs at once, and an unpublished track (or a participant who left) has its file
finalized. A participant who rejoins has new tracks, hence new files. Everyone in
the room gets `recording_started` / `recording_stopped`; a late joiner finds the
active recording in its join reply.

Stopping joins the recording's writer thread, so it runs in the loop's default
executor; packets stop reaching the recorders first, on the loop. A full disk
(ENOSPC) stops the recording (reason `disk_full`): what was flushed stays readable.
The server's shutdown hook stops every recording before the rooms close.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from media.engine import Engine
from media.routing.published_track import PublishedTrack
from recorder import manifest as mf
from recorder.mux import CODEC_FORMATS
from recorder.recording import Recording, safe_name
from recorder.track_recorder import TrackRecorder
from recorder.worker import MuxWorker

from .auth import ADMIN_ALL_ROOMS, AuthError, Claims, TokenVerifier, request_token
from .rooms import Participant, Room, RoomManager

__all__ = ["RecordingError", "RecordingService", "add_routes", "authorize_record", "check_record", "http_error"]

log = logging.getLogger("ferry.signaling.recording")

AUTO_ALL = "*"


class RecordingError(Exception):
    """A recording request that cannot be done; `code` is a protocol error code."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status  # for the REST answer


def check_record(claims: Claims, room: str) -> None:
    """Raise ``AuthError("forbidden")`` unless the token may record `room`.

    `roomRecord` or `roomAdmin`, for the token's own room or for every room (`"*"`),
    as `/api/rooms` scopes admin tokens: a host's token cannot record other rooms.
    """
    grants = claims.grants
    if not (grants.room_record or grants.room_admin):
        raise AuthError("forbidden", "recording needs the roomRecord (or roomAdmin) grant")
    if grants.room not in (room, ADMIN_ALL_ROOMS):
        raise AuthError("forbidden", f"token is for room {grants.room!r}, not {room!r}")


def _is_disk_full(error: str) -> bool:
    return "No space left" in error or "ENOSPC" in error or "Errno 28" in error


@dataclass
class _Active:
    """One room's recording while it records (and while it is being finalized)."""

    room: Room
    recording: Recording
    id: str
    started_by: str | None
    sinks: dict[str, TrackRecorder] = field(default_factory=dict)  # track sid -> its recorder
    reported: set[str] = field(default_factory=set)  # files whose error was announced
    stopping: bool = False
    reason: str | None = None
    done: asyncio.Future[mf.Manifest] | None = None

    def info(self) -> dict[str, object]:
        return {
            "id": self.id,
            "dir": str(self.recording.directory),
            "started_unix": self.recording.manifest.started_unix,
        }


class RecordingService:
    """Every room's recording on this server; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        rooms: RoomManager,
        directory: str | os.PathLike[str],
        *,
        auto_record: list[str] | tuple[str, ...] = (),
    ) -> None:
        self.engine = engine
        self.rooms = rooms
        self.directory = Path(directory)
        self.auto_record = frozenset(auto_record)
        self._active: dict[str, _Active] = {}  # room name -> recording
        self._stopping: dict[str, _Active] = {}  # recording id -> being finalized
        # Cumulative figures of finished recordings (live ones are added at scrape time).
        self._totals: dict[str, Any] = {"frames": {}, "dropped": {}, "bytes": {}, "packets": {}, "sink_s": {},
                                       "errors": 0, "cpu_s": 0.0}
        self.started = 0
        # Told (event, fields) when a recording starts or finishes: webhooks, audit log.
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        rooms.observers.append(self)

    # -- control ---------------------------------------------------------------------
    def active(self, room: str) -> dict[str, object] | None:
        """`{id, dir, started_unix}` of the room's recording, or None."""
        active = self._active.get(room)
        return active.info() if active is not None else None

    def room_dir(self, room: str) -> Path:
        return self.directory / safe_name(room)

    def start(self, room_name: str, *, by: str | None = None) -> dict[str, object]:
        """Start recording an open room; `{id, dir, started_unix}`. Raises RecordingError."""
        room = self.rooms.rooms.get(room_name)
        if room is None or room.closed:
            raise RecordingError("not_found", f"no room {room_name!r} is open", 404)
        current = self._active.get(room_name)
        if current is not None:
            raise RecordingError(
                "already_recording", f"room {room_name!r} is already being recorded ({current.id})", 409
            )
        now_ms = self.engine.now_ms()
        recording_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
        directory = self.room_dir(room_name) / recording_id
        worker = MuxWorker(name=f"ferry-rec-{recording_id}")
        try:
            recording = Recording(
                directory,
                room=room_name,
                recording_id=recording_id,
                unix_offset_s=time.time() - now_ms / 1000.0,
                now_ms=now_ms,
                worker=worker,
            )
        except OSError as exc:
            worker.close(0.0)
            log.error("cannot start recording room %s in %s: %s", room_name, directory, exc)
            raise RecordingError(
                "storage_error", f"cannot write recordings to {self.directory}: {exc.strerror or exc}", 500
            ) from None
        active = _Active(room=room, recording=recording, id=recording_id, started_by=by)
        self._active[room_name] = active
        self.started += 1
        for participant in room.participants.values():
            recording.add_participant(participant.sid, participant.identity, participant.name)
        for track in list(room.router.tracks.values()):
            self._attach(active, track)
        log.info("recording %s of room %s started (by %s) in %s", recording_id, room_name, by, directory)
        room.broadcast({"type": "recording_started", "recording_id": recording_id})
        self._tell("recording_started", {"room": room_name, "recording_id": recording_id, "by": by})
        return active.info()

    def request_stop(self, room_name: str, reason: str = "stopped") -> asyncio.Future[mf.Manifest]:
        """Stop capturing now (on the loop) and finalize the files in the executor.

        Returns a future of the final manifest. Raises RecordingError (`not_recording`).
        """
        active = self._active.pop(room_name, None)
        if active is None:
            raise RecordingError("not_recording", f"room {room_name!r} is not being recorded", 409)
        active.stopping, active.reason = True, reason
        active.recording.manifest.stop_reason = reason
        self._stopping[active.id] = active
        now_ms = self.engine.now_ms()
        for sid, sink in list(active.sinks.items()):
            self.engine.remove_sink(room_name, sid, sink)
            sink.close(now_ms)  # on the loop: no packet can race the close any more
        loop = asyncio.get_running_loop()
        stop = loop.run_in_executor(None, active.recording.stop, now_ms)
        active.done = asyncio.ensure_future(self._finished(active, stop))
        active.done.add_done_callback(_log_failure)  # also when nobody awaits (room closed)
        log.info("recording %s of room %s stopping (%s)", active.id, room_name, reason)
        active.room.broadcast({"type": "recording_stopped", "recording_id": active.id, "reason": reason})
        self._tell("recording_finished", {"room": room_name, "recording_id": active.id, "reason": reason})
        return active.done

    def _tell(self, event: str, fields: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            try:
                listener(event, fields)
            except Exception:
                log.exception("recording listener failed on %s", event)

    async def stop(self, room_name: str, reason: str = "stopped") -> mf.Manifest:
        """Stop and wait until every file and the manifest are final."""
        return await self.request_stop(room_name, reason)

    async def stop_all(self, reason: str = "server_shutdown") -> None:
        """Stop every recording and wait for them (the server's shutdown hook)."""
        for room_name in list(self._active):
            self.request_stop(room_name, reason)
        pending = [a.done for a in self._stopping.values() if a.done is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _finished(self, active: _Active, stop: asyncio.Future[mf.Manifest]) -> mf.Manifest:
        try:
            manifest = await stop
        finally:
            self._fold(active)
            self._stopping.pop(active.id, None)
        log.info("recording %s of room %s finalized in %s", active.id, active.room.name, active.recording.directory)
        return manifest

    # -- tracks ------------------------------------------------------------------------
    def _attach(self, active: _Active, track: PublishedTrack) -> None:
        if track.sid in active.sinks or track.closed:
            return
        codec = track.codec.name.lower()
        if codec not in CODEC_FORMATS:
            log.warning("recording %s: track %s has codec %s, which Ferry cannot record", active.id, track.sid, codec)
            return
        participant = active.room.participants.get(track.participant_sid)
        if participant is not None:
            active.recording.add_participant(participant.sid, participant.identity, participant.name)
        sink = active.recording.add_track(
            sid=track.sid,
            participant_sid=track.participant_sid,
            kind=track.kind,
            source=track.source,
            codec=codec,
            clock_rate=track.codec.clock_rate,
            layers=len(track.layers),
            red_pt=track.red_pt,
            host=track,
        )
        try:
            self.engine.add_sink(active.room.name, track.sid, sink)
        except KeyError:  # unpublished in the meantime: finalize the empty entry
            active.recording.remove_track(track.sid, self.engine.now_ms())
            return
        active.sinks[track.sid] = sink
        if track.muted:
            sink.entry.muted.append([time.time(), None])

    def _detach(self, active: _Active, track_sids: list[str]) -> None:
        now_ms = self.engine.now_ms()
        for sid in track_sids:
            sink = active.sinks.pop(sid, None)
            if sink is None:
                continue
            self.engine.remove_sink(active.room.name, sid, sink)
            active.recording.remove_track(sid, now_ms)  # finalizes the file, rewrites the manifest

    # -- RoomObserver ----------------------------------------------------------------
    def room_created(self, room: Room) -> None:
        if AUTO_ALL in self.auto_record or room.name in self.auto_record:
            try:
                self.start(room.name, by="auto_record")
            except RecordingError as exc:
                log.error("auto-recording room %s failed: %s", room.name, exc.message)

    def room_closed(self, room: Room) -> None:
        active = self._active.get(room.name)
        if active is not None and active.room is room:
            self.request_stop(room.name, "room_closed")

    def participant_joined(self, room: Room, participant: Participant) -> None:
        active = self._active.get(room.name)
        if active is not None:
            active.recording.add_participant(participant.sid, participant.identity, participant.name)

    def participant_left(self, room: Room, participant: Participant) -> None:
        active = self._active.get(room.name)
        if active is not None:
            gone = [sid for sid, s in active.sinks.items() if s.entry.participant_sid == participant.sid]
            self._detach(active, gone)

    def tracks_published(self, room: Room, participant: Participant, tracks: list[PublishedTrack]) -> None:
        active = self._active.get(room.name)
        if active is not None:
            for track in tracks:
                self._attach(active, track)

    def tracks_unpublished(self, room: Room, participant: Participant, tracks: list[PublishedTrack]) -> None:
        active = self._active.get(room.name)
        if active is not None:
            self._detach(active, [t.sid for t in tracks])

    def track_muted(self, room: Room, participant: Participant, track: PublishedTrack) -> None:
        """Note the mute in the manifest; the file itself keeps whatever the publisher
        sends while muted (silence, black frames) or a gap when it sends nothing."""
        active = self._active.get(room.name)
        sink = active.sinks.get(track.sid) if active is not None else None
        if sink is None:
            return
        spans = sink.entry.muted
        if track.muted and (not spans or spans[-1][1] is not None):
            spans.append([time.time(), None])
        elif not track.muted and spans and spans[-1][1] is None:
            spans[-1][1] = time.time()

    # -- timer -------------------------------------------------------------------------
    def on_timer(self, now_ms: float) -> None:
        """Drive the recordings' timers (holes, manifest rewrites); report failed files."""
        for room_name, active in list(self._active.items()):
            try:
                active.recording.on_timer(now_ms)
            except Exception:
                log.exception("recording %s timer failed", active.id)
            if _is_disk_full(active.recording.worker.last_error or ""):  # the manifest, say
                log.error("recording %s: disk full (%s); stopping", active.id, active.recording.worker.last_error)
                self.request_stop(room_name, "disk_full")
                continue
            for sid, sink in list(active.sinks.items()):
                error = sink.file.error
                if error is None or sink.entry.file in active.reported:
                    continue
                active.reported.add(sink.entry.file)
                if _is_disk_full(error):
                    log.error("recording %s: disk full writing %s; stopping", active.id, sink.entry.file)
                    self.request_stop(room_name, "disk_full")
                    break
                log.error("recording %s: %s failed: %s", active.id, sink.entry.file, error)
                # Participants learn which track failed, not the server's paths and errors.
                active.room.broadcast(
                    {"type": "recording_error", "recording_id": active.id, "track_sid": sid, "reason": "write_error"}
                )

    # -- listing ---------------------------------------------------------------------
    def list_recordings(self, room_name: str) -> list[dict[str, object]]:
        """The room's recordings on disk, oldest first, from their manifests.

        Blocking file I/O (a directory scan, a stat per file): call it in an executor.
        """
        base = self.room_dir(room_name)
        try:
            entries = sorted(p for p in base.iterdir() if p.is_dir())
        except OSError:
            return []
        active = self._active.get(room_name)
        out = []
        for directory in entries:
            try:
                manifest = mf.load(directory)
            except (OSError, ValueError):
                continue
            if manifest.room != room_name:  # another room whose name maps to the same folder
                continue
            out.append(_describe(directory, manifest, active is not None and active.id == manifest.id))
        return out

    # -- metrics ---------------------------------------------------------------------
    def _fold(self, active: _Active) -> None:
        totals = self._totals
        for sink in active.recording.tracks.values():
            kind = sink.entry.kind
            for key, value in _sink_figures(sink):
                totals[key][kind] = totals[key].get(kind, 0) + value
        totals["errors"] += active.recording.worker.errors
        totals["cpu_s"] += active.recording.worker.cpu_s

    def snapshot(self) -> dict[str, object]:
        """Recorder figures for /metrics: cumulative counters and live gauges."""
        live: dict[str, dict[str, float]] = {key: dict(self._totals[key]) for key in _PER_KIND}
        errors, cpu_s = self._totals["errors"], self._totals["cpu_s"]
        tracks: dict[str, int] = {"audio": 0, "video": 0}
        queued = 0
        for active in [*self._active.values(), *self._stopping.values()]:
            for sink in active.recording.tracks.values():
                kind = sink.entry.kind
                for key, value in _sink_figures(sink):
                    live[key][kind] = live[key].get(kind, 0) + value
                if not sink.closed:
                    tracks[kind] = tracks.get(kind, 0) + 1
            worker = active.recording.worker
            errors += worker.errors
            cpu_s += worker.cpu_s
            queued += worker.pending
        return {
            "recordings_active": len(self._active),
            "recordings_started": self.started,
            "recorder_tracks": tracks,
            "recorder_frames": live["frames"],
            "recorder_dropped": live["dropped"],
            "recorder_bytes": live["bytes"],
            "recorder_packets": live["packets"],
            "recorder_sink_s": live["sink_s"],
            "recorder_errors": errors,
            "recorder_writer_cpu_s": cpu_s,
            "recorder_queue": queued,
        }


_PER_KIND = ("frames", "dropped", "bytes", "packets", "sink_s")


def _sink_figures(sink: TrackRecorder) -> tuple[tuple[str, float], ...]:
    """A track recorder's cumulative figures, keyed as `_totals` keys them (`_PER_KIND`)."""
    return (("frames", sink.file.frames), ("dropped", sink.entry.dropped), ("bytes", sink.file.bytes),
            ("packets", sink.packets), ("sink_s", sink.loop_s))


def _log_failure(done: asyncio.Future[mf.Manifest]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.error("finalizing a recording failed", exc_info=done.exception())


def _describe(directory: Path, manifest: mf.Manifest, active: bool) -> dict[str, object]:
    """A recording as `GET .../recordings` lists it: files with sizes and durations."""
    names = {p.sid: p for p in manifest.participants}
    files = []
    for track in manifest.tracks:
        try:
            size = (directory / track.file).stat().st_size
        except OSError:
            size = 0
        duration = track.duration_s
        if duration is None and track.first_rtp is not None and track.last_rtp is not None:
            duration = ((track.last_rtp - track.first_rtp) & 0xFFFFFFFF) / track.clock_rate
        who = names.get(track.participant_sid)
        files.append(
            {
                "file": track.file,
                "track_sid": track.sid,
                "participant_sid": track.participant_sid,
                "identity": who.identity if who is not None else None,
                "kind": track.kind,
                "source": track.source,
                "codec": track.codec,
                "size": size,
                "duration_s": round(duration, 3) if duration is not None else None,
                "frames": track.frames,
                "closed": track.closed,
                "error": track.error,
                "muted": track.muted,
            }
        )
    return {
        "id": manifest.id,
        "room": manifest.room,
        "dir": str(directory),
        "state": "recording" if active else manifest.state,
        "started_unix": manifest.started_unix,
        "stopped_unix": manifest.stopped_unix,
        "stop_reason": manifest.stop_reason,
        "participants": [{"sid": p.sid, "identity": p.identity, "name": p.name} for p in manifest.participants],
        "files": files,
    }


# -- REST ------------------------------------------------------------------------------
def add_routes(app: web.Application, service: RecordingService, verifier: TokenVerifier) -> None:
    """`POST`/`DELETE /api/rooms/{room}/recording`, `GET /api/rooms/{room}/recordings`.

    Every route needs a bearer token with `roomRecord` or `roomAdmin` for that room.
    """

    def authorize(request: web.Request) -> str:
        return authorize_record(request, verifier)

    async def start(request: web.Request) -> web.Response:
        room = authorize(request)
        try:
            info = service.start(room, by="api")
        except RecordingError as exc:
            raise http_error(exc.status, exc.code, exc.message) from None
        return web.json_response(info, status=201)

    async def stop(request: web.Request) -> web.Response:
        room = authorize(request)
        try:
            done = service.request_stop(room, "stopped")
        except RecordingError as exc:
            raise http_error(exc.status, exc.code, exc.message) from None
        manifest = await done
        loop = asyncio.get_running_loop()
        directory = service.room_dir(room) / manifest.id
        return web.json_response(await loop.run_in_executor(None, _describe, directory, manifest, False))

    async def listing(request: web.Request) -> web.Response:
        room = authorize(request)
        loop = asyncio.get_running_loop()
        recordings = await loop.run_in_executor(None, service.list_recordings, room)
        return web.json_response({"room": room, "active": service.active(room), "recordings": recordings})

    app.router.add_post("/api/rooms/{room}/recording", start)
    app.router.add_delete("/api/rooms/{room}/recording", stop)
    app.router.add_get("/api/rooms/{room}/recordings", listing)


def authorize_record(request: web.Request, verifier: TokenVerifier) -> str:
    """The `{room}` of a request whose bearer token may record it; raises 401 / 403 otherwise."""
    room = request.match_info["room"]
    token = request_token(request.headers, request.query)
    try:
        claims = verifier.verify(token, now=time.time())
    except AuthError as exc:
        raise http_error(401, exc.code, exc.message) from None
    try:
        check_record(claims, room)
    except AuthError as exc:
        raise http_error(403, exc.code, exc.message) from None
    return room


_HTTP_ERRORS: dict[int, type[web.HTTPException]] = {
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    400: web.HTTPBadRequest,
    404: web.HTTPNotFound,
    409: web.HTTPConflict,
}


def http_error(status: int, code: str, message: str) -> web.HTTPException:
    """A JSON error answer shaped like every other Ferry API error."""
    cls = _HTTP_ERRORS.get(status, web.HTTPInternalServerError)
    return cls(text=json.dumps({"error": {"code": code, "message": message}}), content_type="application/json")
