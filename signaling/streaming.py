"""Live HLS of a room: the composite renderer as its own process, served by Ferry's HTTP server.

`POST /api/rooms/{room}/stream` `{"hls": true}` starts `python -m recorder.hls` on the
room's recording; the renderer follows the recording's files as they grow, so a stream
needs a recording: when none runs, starting the stream starts one (`by="hls"`), and
stopping that stream stops it again; a recording started on its own outlives the
stream. The renderer writes into `<recording dir>/hls/` (so a class's stream stays
beside its recording, with an `EXT-X-ENDLIST` playlist: an HLS copy of it), and
`GET /hls/<room>/index.m3u8` and `/hls/<room>/seg_NNNNN.ts` serve that directory while
the room has a stream, and after it stopped until the room closes (players then read
the ended playlist). Only those two name shapes are served (no path ever comes from
the request), and a room without a stream answers 404.

A separate process because rendering and encoding a 720p composite takes about half a
core: forwarding on the event loop must never wait on it, and a renderer that crashes
takes nothing else with it. Stopping sends SIGTERM (the renderer finishes its segment
and ends the playlist), on request, when the room closes and at server shutdown (before
the recordings stop). Everyone in the room gets `stream_started` / `stream_stopped`, and
a late joiner gets `stream_started` right after its join reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from recorder import hls

from .auth import TokenVerifier
from .recording import RecordingError, RecordingService, authorize_record, http_error
from .rooms import Participant, Room, RoomManager, RoomObserverBase

__all__ = ["StreamService", "add_routes"]

log = logging.getLogger("ferry.signaling.streaming")

STOP_TIMEOUT_S = 10.0  # SIGTERM -> exit; then SIGKILL
SEGMENT = re.compile(r"seg_\d{5}\.ts")
CONTENT_TYPES = {"m3u8": "application/vnd.apple.mpegurl", "ts": "video/mp2t"}
LIMITS = {"width": (64, 1920), "height": (64, 1080), "fps": (1, 60)}


@dataclass
class _Stream:
    """One room's HLS renderer."""

    room: Room
    recording_id: str
    out: Path
    options: dict[str, Any]
    owns_recording: bool  # the stream started the recording: stopping it stops that too
    started_unix: float
    process: asyncio.subprocess.Process | None = None
    watcher: asyncio.Task[None] | None = None
    stopping: bool = False
    reason: str | None = None

    def started_event(self) -> dict[str, object]:
        return {"type": "stream_started", "hls": True, "url": url_of(self.room.name),
                "recording_id": self.recording_id}

    def info(self) -> dict[str, object]:
        return {
            "room": self.room.name,
            "hls": True,
            "url": url_of(self.room.name),
            "recording_id": self.recording_id,
            "own_recording": self.owns_recording,  # started with the stream, so stopped with it
            "started_unix": self.started_unix,
            "state": "stopping" if self.stopping else "live",
            **self.options,
            "cpu_s": _cpu_s(self.process.pid) if self.process is not None else 0.0,
        }


def url_of(room: str) -> str:
    """The playlist's path on Ferry's HTTP server."""
    return f"/hls/{quote(room, safe='')}/{hls.PLAYLIST}"


class StreamService(RoomObserverBase):
    """Every room's live HLS renderer on this server; see the module docstring."""

    def __init__(self, rooms: RoomManager, recordings: RecordingService) -> None:
        self.rooms = rooms
        self.recordings = recordings
        self._streams: dict[str, _Stream] = {}
        self._ended: dict[str, Path] = {}  # room -> its last stream's files, served until the room closes
        self.started = 0
        rooms.observers.append(self)

    def active(self, room: str) -> dict[str, object] | None:
        stream = self._streams.get(room)
        return stream.info() if stream is not None else None

    def directory(self, room: str) -> Path | None:
        """Where the room's playlist and segments are: its live stream's, else its last one's."""
        stream = self._streams.get(room)
        return stream.out if stream is not None else self._ended.get(room)

    async def start(self, room_name: str, **options: Any) -> dict[str, object]:
        """Start the room's renderer (and its recording if none runs). Raises RecordingError."""
        room = self.rooms.rooms.get(room_name)
        if room is None or room.closed:
            raise RecordingError("not_found", f"no room {room_name!r} is open", 404)
        if room_name in self._streams:
            raise RecordingError("already_streaming", f"room {room_name!r} already has a live stream", 409)
        recording = self.recordings.active(room_name)
        owns = recording is None
        if recording is None:
            recording = self.recordings.start(room_name, by="hls")
        out = Path(str(recording["dir"])) / "hls"
        stream = _Stream(room, str(recording["id"]), out, options, owns, time.time())
        self._streams[room_name] = stream  # before the await: a second start is refused
        self._ended.pop(room_name, None)
        cmd = hls.command(recording["dir"], out, **options)
        try:
            stream.process = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, env=hls.environment()
            )
        except OSError as exc:
            self._streams.pop(room_name, None)
            if owns and self.recordings.active(room_name) is not None:
                self.recordings.request_stop(room_name, "stream_failed")
            log.error("cannot start the HLS renderer of room %s: %s", room_name, exc)
            raise RecordingError("stream_error", f"cannot start the HLS renderer: {exc}", 500) from None
        stream.watcher = asyncio.ensure_future(self._watch(stream))
        self.started += 1
        log.info("HLS stream of room %s started (renderer pid %d) into %s", room_name, stream.process.pid, out)
        room.broadcast(stream.started_event())
        return stream.info()

    async def stop(self, room_name: str, reason: str = "stopped") -> dict[str, object]:
        """SIGTERM the renderer and wait until it ended the playlist. Raises RecordingError."""
        stream = self._streams.get(room_name)
        if stream is None or stream.stopping:
            raise RecordingError("not_streaming", f"room {room_name!r} has no live stream", 409)
        info = stream.info()
        await self._stop(stream, reason)
        return {**info, "state": "ended", "reason": reason}

    async def stop_all(self, reason: str = "server_shutdown") -> None:
        """Stop every renderer (the server's shutdown hook, run before the recordings stop)."""
        streams = [s for s in self._streams.values() if not s.stopping]
        await asyncio.gather(*(self._stop(s, reason) for s in streams), return_exceptions=True)

    async def _stop(self, stream: _Stream, reason: str) -> None:
        stream.stopping, stream.reason = True, stream.reason or reason
        process = stream.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("HLS renderer of room %s ignored SIGTERM for %.0f s; killing it",
                            stream.room.name, STOP_TIMEOUT_S)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if stream.watcher is not None:
            await asyncio.shield(stream.watcher)

    async def _watch(self, stream: _Stream) -> None:
        """Wait for the renderer to exit (stopped, or the recording ended); tell the room."""
        assert stream.process is not None
        code = await stream.process.wait()
        name = stream.room.name
        if self._streams.get(name) is stream:
            del self._streams[name]
            if not stream.room.closed:  # players still polling get the ended playlist
                self._ended[name] = stream.out
        reason = stream.reason or ("recording_stopped" if code == 0 else "renderer_failed")
        if code != 0 and not stream.stopping:
            log.error("HLS renderer of room %s exited with status %s", name, code)
        log.info("HLS stream of room %s ended (%s)", name, reason)
        if stream.owns_recording and self.recordings.active(name) is not None:
            active = self.recordings.active(name)
            if active is not None and active["id"] == stream.recording_id:
                self.recordings.request_stop(name, "stream_stopped")
        stream.room.broadcast({"type": "stream_stopped", "hls": True, "recording_id": stream.recording_id,
                               "reason": reason})

    # -- RoomObserver ----------------------------------------------------------------
    def room_closed(self, room: Room) -> None:
        self._ended.pop(room.name, None)
        stream = self._streams.get(room.name)
        if stream is not None and stream.room is room and not stream.stopping:
            task = asyncio.ensure_future(self._stop(stream, "room_closed"))
            task.add_done_callback(_log_failure)


    def participant_joined(self, room: Room, participant: Participant) -> None:
        """A late joiner learns of the live stream too: right after its join reply (sent
        once this returns, in the same loop turn), as the others got it."""
        stream = self._streams.get(room.name)
        if stream is not None and not stream.stopping:
            asyncio.get_running_loop().call_soon(participant.emit, stream.started_event())






def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("stopping an HLS renderer failed", exc_info=task.exception())


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a live process, from /proc (0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def parse_options(body: object) -> tuple[bool, dict[str, Any]]:
    """`{"hls": bool, "width"?, "height"?, "fps"?}` -> (hls, renderer options). ValueError if bad."""
    if not isinstance(body, dict) or not isinstance(body.get("hls"), bool):
        raise ValueError('the body must be JSON like {"hls": true}')
    options: dict[str, Any] = {}
    for key, (low, high) in LIMITS.items():
        if key not in body:
            continue
        value = body[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"{key} must be a number from {low} to {high}")
        if key != "fps" and (value != int(value) or int(value) % 2):
            raise ValueError(f"{key} must be an even whole number")
        options[key] = float(value) if key == "fps" else int(value)
    unknown = set(body) - {"hls", *LIMITS}
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")
    return body["hls"], options


# -- HTTP --------------------------------------------------------------------------------
def add_routes(app: web.Application, service: StreamService, verifier: TokenVerifier) -> None:
    """`POST`/`DELETE`/`GET /api/rooms/{room}/stream` (recording grants) and `GET /hls/{room}/{file}`."""

    def authorize(request: web.Request) -> str:
        return authorize_record(request, verifier)

    async def control(request: web.Request) -> web.Response:
        room = authorize(request)
        try:
            body = await request.json()
        except ValueError:
            body = None
        try:
            on, options = parse_options(body)
        except ValueError as exc:
            raise http_error(400, "bad_request", str(exc)) from None
        try:
            if on:
                return web.json_response(await service.start(room, **options), status=201)
            return web.json_response(await service.stop(room))
        except RecordingError as exc:
            raise http_error(exc.status, exc.code, exc.message) from None

    async def stop(request: web.Request) -> web.Response:
        room = authorize(request)
        try:
            return web.json_response(await service.stop(room))
        except RecordingError as exc:
            raise http_error(exc.status, exc.code, exc.message) from None

    async def status(request: web.Request) -> web.Response:
        room = authorize(request)
        return web.json_response({"room": room, "active": service.active(room)})

    async def serve(request: web.Request) -> web.StreamResponse:
        directory = service.directory(request.match_info["room"])
        name = request.match_info["file"]
        if name == hls.PLAYLIST:
            kind, cache = "m3u8", "no-cache"
        elif SEGMENT.fullmatch(name):
            kind, cache = "ts", "max-age=60"
        else:
            raise web.HTTPNotFound()
        if directory is None or not (directory / name).is_file():
            raise web.HTTPNotFound()
        headers = {"Content-Type": CONTENT_TYPES[kind], "Cache-Control": cache,
                   "Access-Control-Allow-Origin": "*"}  # hls.js on another origin, a CDN in front
        return web.FileResponse(directory / name, headers=headers)

    app.router.add_post("/api/rooms/{room}/stream", control)
    app.router.add_delete("/api/rooms/{room}/stream", stop)
    app.router.add_get("/api/rooms/{room}/stream", status)
    app.router.add_get("/hls/{room}/{file}", serve)
