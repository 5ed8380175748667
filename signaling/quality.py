"""Connection quality events, per-room statistics over REST, and the operator's dashboard.

Once a second every participant's link is scored (``media.quality``) from what Ferry
measures of both its directions; a participant whose level changed is announced to
the room as ``connection_quality`` (LiveKit's scale: excellent, good, poor, lost), and
a participant who just joined gets everyone's level in its first round. Only changes
travel: a room of a hundred students on good links costs nothing per second.

``GET /api/rooms/{room}/stats`` (a ``roomAdmin`` token for the room or ``"*"``) gives the
same figures per participant and track for an operator; ``/dashboard`` is a page that
draws them. Per-participant figures stay out of Prometheus (one series per person is
the cardinality that takes a Prometheus down); ``/metrics`` keeps the aggregates.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aiohttp import web

from media.engine import Engine
from media.quality import LinkMeter, QualityTracker
from media.stats import ParticipantStats
from signaling.auth import AuthError, TokenVerifier, check_room_admin, request_token
from signaling.protocol import event
from signaling.recording import http_error
from signaling.rooms import Participant, Room, RoomManager, RoomObserverBase

__all__ = ["QUALITY_INTERVAL_MS", "QualityService", "add_routes", "participant_figures"]

QUALITY_INTERVAL_MS = 1000.0
WEB_DIR = Path(__file__).resolve().parent.parent / "web"


class _Scored:
    __slots__ = ("meter", "tracker", "told")

    def __init__(self) -> None:
        self.meter = LinkMeter()
        self.tracker = QualityTracker()
        self.told = False  # has had everyone's level


class QualityService(RoomObserverBase):
    """Scores every participant each ``QUALITY_INTERVAL_MS`` and tells rooms of changes."""

    def __init__(self, engine: Engine, rooms: RoomManager) -> None:
        self.engine = engine
        self.rooms = rooms
        self._scored: dict[str, _Scored] = {}
        self._next_ms = 0.0
        self.events_sent = 0
        rooms.observers.append(self)

    def participant_left(self, room: Room, participant: Participant) -> None:
        self._scored.pop(participant.sid, None)

    def level(self, sid: str) -> dict[str, object]:
        """``quality`` and ``score`` of a participant (both None before its first round)."""
        return _level(self._scored.get(sid))

    def on_timer(self, now_ms: float) -> None:
        if now_ms < self._next_ms:
            return
        self._next_ms = now_ms + QUALITY_INTERVAL_MS
        for room in list(self.rooms.rooms.values()):
            self._round(room, now_ms)

    def _round(self, room: Room, now_ms: float) -> None:
        changed: list[dict[str, object]] = []
        everyone: list[dict[str, object]] = []
        for participant in room.visible():
            stats = self.engine.participant_stats(participant.sid)
            if stats is None:
                continue
            scored = self._scored.get(participant.sid)
            if scored is None:
                scored = self._scored[participant.sid] = _Scored()
            new = scored.tracker.update(scored.meter.report(stats), now_ms)
            entry = _entry(participant, scored)
            everyone.append(entry)
            if new is not None:
                changed.append(entry)
        for participant in list(room.participants.values()):
            scored = self._scored.get(participant.sid)
            if scored is not None and not scored.told:
                scored.told = True
                updates = everyone
            else:
                updates = changed
            if updates:
                participant.emit(event("connection_quality", updates=updates))
                self.events_sent += 1


def _level(scored: _Scored | None) -> dict[str, object]:
    if scored is None:
        return {"quality": None, "score": None}
    return {"quality": scored.tracker.level.value, "score": round(scored.tracker.score, 2)}


def _entry(participant: Participant, scored: _Scored) -> dict[str, object]:
    return {"participant_sid": participant.sid, "identity": participant.identity, **_level(scored)}


def participant_figures(participant: Participant, stats: ParticipantStats) -> dict[str, Any]:
    """One participant's statistics as JSON: what it sends, what it receives."""
    sub = stats.subscriber
    published = []
    bitrate_in = 0.0
    for track in stats.published:
        layers = []
        for layer in track.layers:
            bitrate_in += layer.bitrate_bps
            expected = max(1, layer.expected)
            layers.append(
                {
                    "rid": layer.rid,
                    "bitrate_bps": round(layer.bitrate_bps),
                    "loss_before_repair": round(layer.lost / expected, 4),
                    "loss_after_repair": round(layer.unrecovered / expected, 4),
                    "jitter_ms": round(layer.jitter_ms, 1),
                    "width": layer.width,
                    "height": layer.height,
                    "active": layer.active,
                }
            )
        published.append(
            {
                "track_sid": track.track_sid,
                "kind": track.kind,
                "source": track.source,
                "muted": track.muted,
                "layers": layers,
            }
        )
    received = [
        {
            "track_sid": t.track_sid,
            "kind": t.kind,
            "current_layer": t.current_layer,
            "wanted_layer": t.wanted_layer,
            "allocated_layer": t.allocated_layer,
            "paused": t.paused,
            "bitrate_bps": round(t.bitrate_bps),
            "loss_after_repair": round(t.fraction_lost, 4),
            "jitter_ms": round(t.jitter_ms, 1),
            "rtt_ms": None if t.rtt_ms is None else round(t.rtt_ms, 1),
        }
        for t in sub.tracks.values()
    ]
    rtts = [t.rtt_ms for t in sub.tracks.values() if t.rtt_ms is not None]
    return {
        "sid": participant.sid,
        "identity": participant.identity,
        "name": participant.name,
        "bitrate_in_bps": round(bitrate_in),
        "bitrate_out_bps": round(sum(t.bitrate_bps for t in sub.tracks.values())),
        "estimate_bps": None if sub.estimate_bps is None else round(sub.estimate_bps),
        "loss_before_repair_down": None if sub.loss is None else round(sub.loss, 4),
        "rtt_ms": round(max(rtts), 1) if rtts else None,
        "published": published,
        "received": received,
    }


def add_routes(app: web.Application, service: QualityService, verifier: TokenVerifier) -> None:
    """``GET /api/rooms/{room}/stats`` (roomAdmin for the room or "*") and ``/dashboard``."""

    async def room_stats(request: web.Request) -> web.Response:
        name = request.match_info["room"]
        try:
            claims = verifier.verify(request_token(request.headers, request.query), now=time.time())
        except AuthError as exc:
            raise http_error(401, exc.code, exc.message) from None
        try:
            check_room_admin(claims, name, "room statistics")
        except AuthError as exc:
            raise http_error(403, exc.code, exc.message) from None
        room = service.rooms.rooms.get(name)
        if room is None:
            raise http_error(404, "not_found", f"no room {name!r}")
        participants = []
        for participant in room.visible():
            stats = service.engine.participant_stats(participant.sid)
            if stats is None:
                continue
            participants.append({**participant_figures(participant, stats), **service.level(participant.sid)})
        return web.json_response({"room": name, "time": time.time(), "participants": participants})

    async def dashboard(request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_DIR / "dashboard.html", headers={"Cache-Control": "no-cache"})

    app.router.add_get("/api/rooms/{room}/stats", room_stats)
    app.router.add_get("/dashboard", dashboard)

