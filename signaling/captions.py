"""Live captions: a TrackCaptioner on every published audio track of a captioned room.

The recognition core (`asr/`) turns one track's packets into `Caption`s; this module
decides which tracks and tells the room. A `CaptionService` watches every room (a
`RoomObserver`, like the `RecordingService`): while a room has captions on, each
published audio track gets a `TrackCaptioner` from the room's backend attached through
the engine (`Engine.add_sink`); an unpublished track, a participant who left or a
closed room closes it. Every caption goes to everyone in the room as a `caption`
event; the finals also go into the room's transcript (`signaling.transcript`), into a
recording's `transcript.json` while the room is recorded, and into the last minute
a late joiner finds in its join reply.

Engines load off the event loop (a model load takes a second, importing the backend
more) and lazily per backend: the server's default one at start (so a missing model is
one log line at start), another the first time a room asks for it. A backend that
cannot load stays unavailable: rooms go without captions and `set_captions` answers
`captions_unavailable` with the engine's reason; nothing else changes.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from asr.api import Caption, CaptionConfig, CaptionsUnavailable
from media.engine import Engine
from media.routing.published_track import PublishedTrack
from recorder.recording import safe_name

from . import transcript as tr
from .auth import AuthError, Claims, TokenVerifier, check_room_admin, request_token
from .config import Config
from .recording import check_record
from .rooms import Participant, Room, RoomManager, RoomObserverBase

__all__ = ["LATENCY_BUCKETS_S", "CaptionError", "CaptionService", "add_routes", "caption_event", "check_captions_admin"]

log = logging.getLogger("ferry.signaling.captions")

RECENT_MS = 60_000  # a late joiner gets the finals of the last minute
RECENT_MAX = 500  # (at most this many: a join reply stays well under a frame's size)
# Seconds from the end of an utterance (its audio) to its final caption going out.
LATENCY_BUCKETS_S = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
# A recording's transcript.json is kept up to date this long after the recording stops
# (finals of its last words come a second or so later).
RECORDING_TAIL_MS = 30_000

EngineFactory = Callable[[CaptionConfig], Any]
Done = Callable[["CaptionError | None", "dict[str, object] | None"], None]


class CaptionError(Exception):
    """A captions request that cannot be done; `code` is a protocol error code."""

    def __init__(self, code: str, message: str, status: int = 409) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def check_captions_admin(claims: Claims, room: str) -> None:
    """Raise ``AuthError("forbidden")`` unless the token may switch `room`'s captions."""
    check_room_admin(claims, room, "turning captions on or off")


def caption_event(caption: Caption) -> dict[str, object]:
    """The `caption` event's fields: `Caption.to_event()` with its `seq` as `utterance`.

    Every event to a participant carries the session's own `seq` (signaling.resume
    numbers them for replay after a reconnect), which would overwrite the caption's:
    on the wire the utterance number is `utterance`.
    """
    body = caption.to_event()
    body["utterance"] = body.pop("seq")
    return body


def _default_factory(config: CaptionConfig) -> Any:
    # Imported on first use: loading the backends (CTranslate2, Vosk) costs a second.
    try:
        from asr.engine import CaptionEngine
    except ImportError as exc:
        raise CaptionsUnavailable(f"the caption engine cannot be imported: {exc}") from None
    return CaptionEngine(config)


@dataclass
class _Slot:
    """One backend's engine: loading, loaded, or unavailable with a reason."""

    backend: str
    engine: Any = None
    error: CaptionsUnavailable | None = None
    waiters: list[Callable[[], None]] = field(default_factory=list)

    @property
    def loading(self) -> bool:
        return self.engine is None and self.error is None


@dataclass
class _Speaker:
    identity: str
    name: str
    participant_sid: str


@dataclass
class _RoomCaptions:
    """One room's captions: its setting, its captioners, its transcript."""

    room: Room
    enabled: bool
    backend: str
    language: str
    by: str | None = None
    captioners: dict[str, Any] = field(default_factory=dict)  # track sid -> TrackCaptioner
    speakers: dict[str, _Speaker] = field(default_factory=dict)  # track sid -> who speaks on it
    recent: collections.deque[dict[str, object]] = field(default_factory=lambda: collections.deque(maxlen=RECENT_MAX))
    segments: list[tr.Segment] = field(default_factory=list)  # this room's finals
    earlier: list[tr.Segment] | None = None  # the same name's earlier rooms, from disk
    recordings: dict[str, list[Any]] = field(default_factory=dict)  # id -> [dir, start_ms, stop_ms]
    writing: asyncio.Future[None] | None = None
    dirty: bool = False

    def state(self) -> dict[str, object]:
        return {"enabled": self.enabled, "backend": self.backend, "language": self.language, "by": self.by}


class CaptionService(RoomObserverBase):
    """Every room's captions on this server; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        rooms: RoomManager,
        config: Config,
        *,
        recordings: Any = None,  # a RecordingService: where a recording's transcript goes
        engine_factory: EngineFactory | None = None,
    ) -> None:
        self.engine = engine
        self.rooms = rooms
        self.config = config
        self.recordings = recordings
        self.engine_factory = engine_factory or _default_factory
        self.directory = Path(config.recordings_dir)
        self.default = config.captions  # "whisper" | "vosk" | "off"
        self._slots: dict[str, _Slot] = {}
        self._rooms: dict[str, _RoomCaptions] = {}  # open rooms by name
        self._flushing: dict[str, _RoomCaptions] = {}  # closed rooms whose last write runs
        self._closed = False
        # Counters and the latency histogram for /metrics.
        self.finals = 0
        self.partials = 0
        self.statuses: dict[str, int] = {}
        self.write_errors = 0
        self._latency_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self._latency_sum = 0.0
        # Told (event, fields) when a room's captions start or stop: the audit log.
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        rooms.observers.append(self)

    # -- engines ---------------------------------------------------------------------
    def start(self) -> None:
        """Begin loading the default backend (on the running loop's executor)."""
        if self.default != "off":
            self._slot(self.default)

    def _engine_config(self, backend: str, language: str) -> CaptionConfig:
        c = self.config
        return CaptionConfig(
            backend=backend,
            whisper_model=c.whisper_model,
            vosk_model=c.vosk_model,
            language=language,
            max_concurrent=c.captions_max_concurrent,
        )

    def _slot(self, backend: str, language: str | None = None) -> _Slot:
        """The backend's engine, loading it on first use. The engine refuses to load for
        a language its model lacks, so it loads for the language of the room that first
        asks (a Korean Vosk model cannot load for the server's default "en"); each track
        still names its own language."""
        slot = self._slots.get(backend)
        if slot is None:
            slot = self._slots[backend] = _Slot(backend)
            loop = asyncio.get_running_loop()
            config = self._engine_config(backend, language or self.config.captions_language)
            job = loop.run_in_executor(None, self.engine_factory, config)
            job.add_done_callback(lambda f: self._loaded(slot, f))
        return slot

    def _loaded(self, slot: _Slot, job: asyncio.Future[Any]) -> None:
        error = job.exception() if not job.cancelled() else CaptionsUnavailable("loading was cancelled")
        if error is None:
            slot.engine = job.result()
            if self._closed:  # the server stopped while it loaded
                asyncio.ensure_future(slot.engine.close())
                return
            log.info("captions: the %s engine is ready", slot.backend)
        else:
            if not isinstance(error, CaptionsUnavailable):
                log.error("captions: loading the %s engine failed", slot.backend, exc_info=error)
                error = CaptionsUnavailable(f"the {slot.backend} engine failed to load: {error}")
            slot.error = error
            log.warning("captions unavailable (%s): %s", slot.backend, error.message)
        for rc in list(self._rooms.values()):
            if rc.backend == slot.backend and rc.enabled:
                if slot.error is not None:
                    rc.enabled = False
                    rc.room.broadcast({"type": "captions_state", **rc.state()})
                else:
                    self._attach_all(rc)
        waiters, slot.waiters = slot.waiters, []
        for waiter in waiters:
            waiter()
        if slot.error is not None and slot.error.code == "language_unsupported" and self._slots.get(slot.backend) is slot:
            # The model is fine, the language was not: a request in another language loads it again.
            del self._slots[slot.backend]

    def available(self) -> dict[str, str]:
        """Backend -> "ready" | "loading" | "unavailable" for those tried so far."""
        return {
            b: ("unavailable" if s.error else "ready" if s.engine is not None else "loading")
            for b, s in self._slots.items()
        }

    # -- control ---------------------------------------------------------------------
    def state(self, room_name: str) -> dict[str, object] | None:
        rc = self._rooms.get(room_name)
        return rc.state() if rc is not None else None

    def join_info(self, room_name: str) -> dict[str, object] | None:
        """The join reply's `captions`: the room's setting and its finals of the last minute."""
        rc = self._rooms.get(room_name)
        if rc is None:
            return None
        self._prune_recent(rc)
        return {**rc.state(), "recent": list(rc.recent)}

    def request(
        self,
        room_name: str,
        *,
        enabled: bool,
        backend: str | None,
        language: str | None,
        by: str | None,
        done: Done,
    ) -> None:
        """`set_captions`: calls `done(error, state)` now, or once the backend has loaded."""
        rc = self._rooms.get(room_name)
        if rc is None or rc.room.closed:
            done(CaptionError("not_found", f"no room {room_name!r} is open", 404), None)
            return
        backend = backend or rc.backend
        language = language or rc.language
        if not enabled:
            self._apply(rc, False, backend, language, by)
            done(None, rc.state())
            return
        slot = self._slot(backend, language)
        if slot.loading:

            def loaded() -> None:
                if slot.error is not None:
                    done(CaptionError("captions_unavailable", slot.error.message, 503), None)
                else:
                    self.request(room_name, enabled=enabled, backend=backend, language=language, by=by, done=done)

            slot.waiters.append(loaded)
            return
        if slot.error is not None:
            done(CaptionError("captions_unavailable", slot.error.message, 503), None)
            return
        error = self._apply(rc, True, backend, language, by)
        if error is not None:
            self._apply(rc, False, backend, language, by)
            done(CaptionError("captions_unavailable", error.message, 503), None)
            return
        done(None, rc.state())

    def _apply(self, rc: _RoomCaptions, enabled: bool, backend: str, language: str, by: str | None) -> CaptionsUnavailable | None:
        """Switch the room's captions; reopen every captioner when anything changed."""
        changed = (enabled, backend, language) != (rc.enabled, rc.backend, rc.language)
        rc.enabled, rc.backend, rc.language, rc.by = enabled, backend, language, by
        error = None
        if changed:
            self._detach(rc, list(rc.captioners), flush=False)
            if enabled:
                error = self._attach_all(rc)
            event = "captions_started" if enabled else "captions_stopped"
            for listener in list(self.listeners):
                listener(event, {"room": rc.room.name, "backend": backend, "language": language, "by": by})
        rc.room.broadcast({"type": "captions_state", **rc.state()})
        return error

    # -- tracks ----------------------------------------------------------------------
    def _attach_all(self, rc: _RoomCaptions) -> CaptionsUnavailable | None:
        error = None
        for track in list(rc.room.router.tracks.values()):
            error = self._attach(rc, track) or error
        return error

    def _attach(self, rc: _RoomCaptions, track: PublishedTrack) -> CaptionsUnavailable | None:
        if not rc.enabled or track.kind != "audio" or track.closed or track.sid in rc.captioners:
            return None
        slot = self._slot(rc.backend, rc.language)
        if slot.engine is None:
            return None  # attached when the engine has loaded (or never: unavailable)
        participant = rc.room.participants.get(track.participant_sid)
        identity = participant.identity if participant is not None else track.participant_sid
        name = participant.name if participant is not None else identity
        try:
            captioner = slot.engine.open_track(
                participant_sid=track.participant_sid,
                track_sid=track.sid,
                identity=identity,
                on_caption=lambda c: self._on_caption(rc, c),
                on_status=lambda sid, state: self._on_status(rc, sid, state),
                language=rc.language,
                red_pt=track.red_pt,
                opus_pt=track.codec.payload_type,
                clock_rate=track.codec.clock_rate,
            )
        except CaptionsUnavailable as exc:
            log.warning("captions: cannot caption track %s in room %s: %s", track.sid, rc.room.name, exc.message)
            return exc
        try:
            self.engine.add_sink(rc.room.name, track.sid, captioner)
        except KeyError:  # unpublished in the meantime
            captioner.close()
            return None
        rc.captioners[track.sid] = captioner
        rc.speakers[track.sid] = _Speaker(identity, name, track.participant_sid)
        return None

    def _detach(self, rc: _RoomCaptions, track_sids: list[str], *, flush: bool = True) -> None:
        """Close the tracks' captioners; with `flush` each still finals what it was hearing."""
        for sid in track_sids:
            captioner = rc.captioners.pop(sid, None)
            if captioner is None:
                continue
            self.engine.remove_sink(rc.room.name, sid, captioner)
            try:
                captioner.close(flush=flush)
            except Exception:
                log.exception("captions: closing the captioner of %s failed", sid)

    # -- results ---------------------------------------------------------------------
    def _on_caption(self, rc: _RoomCaptions, caption: Caption) -> None:
        if rc.room.closed or not rc.enabled:
            return  # a late result after captions went off
        # A captioner closed with its track (unpublished, left) still sends the final of
        # the utterance it was hearing: that one is kept.
        body = caption_event(caption)
        rc.room.broadcast({"type": "caption", **body})
        if not caption.final:
            self.partials += 1
            return
        self.finals += 1
        self._observe_latency(time.time() - caption.end_ms / 1000.0)
        if not caption.text.strip():
            return  # retracts earlier partials; nothing to keep
        rc.recent.append(body)
        self._prune_recent(rc)
        speaker = rc.speakers.get(caption.track_sid)
        rc.segments.append(
            tr.Segment(
                speaker=caption.identity,
                name=speaker.name if speaker is not None else caption.identity,
                participant_sid=caption.participant_sid,
                track_sid=caption.track_sid,
                room_sid=rc.room.sid,
                start_ms=caption.start_ms,
                end_ms=caption.end_ms,
                text=caption.text.strip(),
            )
        )
        self._note_recording(rc)
        self._schedule_write(rc)

    def _on_status(self, rc: _RoomCaptions, track_sid: str, state: str) -> None:
        self.statuses[state] = self.statuses.get(state, 0) + 1
        if not rc.room.closed:
            rc.room.broadcast({"type": "captions_status", "track_sid": track_sid, "state": state})

    def _prune_recent(self, rc: _RoomCaptions) -> None:
        horizon = time.time() * 1000.0 - RECENT_MS
        while rc.recent and int(rc.recent[0]["end_ms"]) < horizon:  # type: ignore[call-overload]
            rc.recent.popleft()

    def _observe_latency(self, seconds: float) -> None:
        self._latency_sum += max(0.0, seconds)
        self._latency_counts[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1

    # -- transcripts -----------------------------------------------------------------
    def transcript_dir(self, room_name: str) -> Path:
        return self.directory / safe_name(room_name)

    def _note_recording(self, rc: _RoomCaptions) -> None:
        """Remember the room's recordings, so each gets the finals of its own time."""
        active = self.recordings.active(rc.room.name) if self.recordings is not None else None
        now_ms = time.time() * 1000.0
        for rec_id, entry in rc.recordings.items():
            if entry[2] is None and (active is None or active["id"] != rec_id):
                entry[2] = now_ms
        if active is not None and active["id"] not in rc.recordings:
            rc.recordings[str(active["id"])] = [Path(str(active["dir"])), float(active["started_unix"]) * 1000.0, None]  # type: ignore[arg-type]

    def _schedule_write(self, rc: _RoomCaptions) -> None:
        if rc.writing is not None:
            rc.dirty = True
            return
        rc.dirty = False
        loop = asyncio.get_running_loop()
        now_ms = time.time() * 1000.0
        recordings = [(d, start, stop) for d, start, stop in rc.recordings.values()]
        for rec_id, (_, _, stop) in list(rc.recordings.items()):
            if stop is not None and now_ms - stop > RECORDING_TAIL_MS:
                del rc.recordings[rec_id]
        job = loop.run_in_executor(None, self._write, rc, list(rc.segments), recordings)
        rc.writing = job
        job.add_done_callback(lambda f: self._written(rc, f))

    def _written(self, rc: _RoomCaptions, job: asyncio.Future[None]) -> None:
        rc.writing = None
        if not job.cancelled() and job.exception() is not None:
            self.write_errors += 1
            log.error("captions: writing the transcript of room %s failed: %s", rc.room.name, job.exception())
        if rc.dirty and not self._closed:
            self._schedule_write(rc)
        elif self._flushing.get(rc.room.name) is rc and rc.writing is None:
            del self._flushing[rc.room.name]

    def _earlier(self, rc: _RoomCaptions) -> list[tr.Segment]:
        """Segments of earlier rooms of this name (read from disk once; blocking I/O)."""
        if rc.earlier is None:
            room, segments = tr.load_json(self.transcript_dir(rc.room.name) / "transcript.json")
            ok = room in (None, rc.room.name)
            rc.earlier = [s for s in segments if s.room_sid != rc.room.sid] if ok else []
        return rc.earlier

    def _write(self, rc: _RoomCaptions, segments: list[tr.Segment], recordings: list[tuple[Path, float, float | None]]) -> None:
        """The room's three files and each recent recording's transcript.json (a worker thread)."""
        everything = self._earlier(rc) + segments
        base = self.transcript_dir(rc.room.name)
        for fmt in tr.FORMATS:
            tr.write_atomic(base / f"transcript.{fmt}", tr.render(fmt, rc.room.name, everything))
        for directory, start_ms, stop_ms in recordings:
            mine = [s for s in segments if s.end_ms >= start_ms and (stop_ms is None or s.start_ms <= stop_ms)]
            if directory.is_dir():
                tr.write_atomic(directory / "transcript.json", tr.recording_json(mine))

    def transcript(self, room_name: str, fmt: str) -> str | None:
        """The room's transcript in `fmt`; None for a room that never was. Blocking I/O:
        call it in an executor."""
        rc = self._rooms.get(room_name) or self._flushing.get(room_name)
        if rc is not None:
            return tr.render(fmt, room_name, self._earlier(rc) + list(rc.segments))
        path = self.transcript_dir(room_name) / "transcript.json"
        room, segments = tr.load_json(path)
        if room != room_name:  # absent, unreadable, or another room whose name maps here
            return None
        return tr.render(fmt, room_name, segments)

    # -- RoomObserver ----------------------------------------------------------------
    def room_created(self, room: Room) -> None:
        backend = self.default if self.default != "off" else "whisper"
        slot = self._slots.get(backend)
        enabled = self.default != "off" and not (slot is not None and slot.error is not None)
        rc = _RoomCaptions(room=room, enabled=enabled, backend=backend, language=self.config.captions_language)
        self._rooms[room.name] = rc

    def room_closed(self, room: Room) -> None:
        rc = self._rooms.get(room.name)
        if rc is None or rc.room is not room:
            return
        del self._rooms[room.name]
        self._detach(rc, list(rc.captioners), flush=False)
        if rc.writing is not None or rc.dirty:
            self._flushing[room.name] = rc


    def participant_left(self, room: Room, participant: Participant) -> None:
        rc = self._rooms.get(room.name)
        if rc is not None:
            gone = [sid for sid, who in rc.speakers.items() if who.participant_sid == participant.sid]
            self._detach(rc, [sid for sid in gone if sid in rc.captioners])

    def tracks_published(self, room: Room, participant: Participant, tracks: list[PublishedTrack]) -> None:
        rc = self._rooms.get(room.name)
        if rc is not None:
            for track in tracks:
                self._attach(rc, track)

    def tracks_unpublished(self, room: Room, participant: Participant, tracks: list[PublishedTrack]) -> None:
        rc = self._rooms.get(room.name)
        if rc is not None:
            self._detach(rc, [t.sid for t in tracks])

    def track_muted(self, room: Room, participant: Participant, track: PublishedTrack) -> None:
        pass  # a muted microphone sends silence or nothing: the captioner hears no speech

    # -- shutdown --------------------------------------------------------------------
    async def close(self) -> None:
        """Close every captioner and engine, and wait for the transcripts' last writes."""
        self._closed = True
        for rc in list(self._rooms.values()):
            self._detach(rc, list(rc.captioners), flush=False)
        pending = [rc.writing for rc in [*self._rooms.values(), *self._flushing.values()] if rc.writing]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for rc in [*self._rooms.values(), *self._flushing.values()]:
            if rc.dirty:  # finals that came while the last write ran
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, self._write, rc, list(rc.segments), [])
        for slot in self._slots.values():
            if slot.engine is not None:
                try:
                    await slot.engine.close()
                except Exception:
                    log.exception("captions: closing the %s engine failed", slot.backend)

    # -- metrics ---------------------------------------------------------------------
    def snapshot(self) -> dict[str, object]:
        """Caption figures for /metrics: counters, gauges, the latency histogram, engine stats."""
        engines: dict[str, dict[str, float]] = {}
        for backend, slot in self._slots.items():
            if slot.engine is not None:
                try:
                    engines[backend] = {k: float(v) for k, v in slot.engine.stats().items()}
                except Exception:
                    log.debug("captions: stats of the %s engine failed", backend, exc_info=True)
        buckets, running = [], 0
        for bound, count in zip(LATENCY_BUCKETS_S, self._latency_counts, strict=False):
            running += count
            buckets.append((bound, running))
        return {
            "captions_tracks": sum(len(rc.captioners) for rc in self._rooms.values()),
            "captions_rooms": sum(1 for rc in self._rooms.values() if rc.enabled),
            "captions_finals": self.finals,
            "captions_partials": self.partials,
            "captions_status": dict(self.statuses),
            "captions_write_errors": self.write_errors,
            "captions_latency": {"buckets": buckets, "count": sum(self._latency_counts), "sum": self._latency_sum},
            "captions_engines": engines,
        }



# -- REST ------------------------------------------------------------------------------
def add_routes(app: web.Application, service: CaptionService, verifier: TokenVerifier) -> None:
    """`GET /api/rooms/{room}/transcript?format=vtt|json|txt` (default vtt).

    Needs a bearer token with `roomRecord` or `roomAdmin` for that room (or room "*"),
    as the recordings do; answers while the room is open and after it closed.
    """

    async def transcript(request: web.Request) -> web.Response:
        room = request.match_info["room"]
        token = request_token(request.headers, request.query)
        try:
            claims = verifier.verify(token, now=time.time())
        except AuthError as exc:
            return _error(401, exc.code, exc.message)
        try:
            check_record(claims, room)
        except AuthError as exc:
            return _error(403, exc.code, exc.message)
        fmt = request.query.get("format", "vtt")
        if fmt not in tr.FORMATS:
            return _error(400, "bad_request", f"format must be one of {', '.join(tr.FORMATS)}, got {fmt!r}")
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(None, service.transcript, room, fmt)
        if text is None:
            return _error(404, "not_found", f"room {room!r} has no transcript (it is not open and never was)")
        return web.Response(text=text, content_type=tr.FORMATS[fmt], charset="utf-8")

    app.router.add_get("/api/rooms/{room}/transcript", transcript)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(
        status=status, text=json.dumps({"error": {"code": code, "message": message}}), content_type="application/json"
    )
