"""Room moderation: the operations a teacher (a `roomAdmin` token) runs on a room.

One service behind two front ends, LiveKit's RoomService as the model for names and
shapes: signaling requests of a participant whose token has `roomAdmin` in its room
(:meth:`ModerationService.handle`), and REST under ``/api/rooms/{room}/...`` with a
bearer token that has `roomAdmin` for that room or for ``"*"`` (:func:`add_routes`).

- list/get participants; remove one (``leave {reason: "removed"}``, then disconnected);
- mute/unmute a published track: the server stops forwarding it (``PublishedTrack.forwarding``)
  and everyone, the publisher included, gets ``track_muted {by}``; the publisher cannot
  unmute what a moderator muted;
- update a participant's permissions live (``canPublish``, ``canSubscribe``,
  ``canPublishData``, ``canPublishSources``): its claims are replaced, so every check
  (publish, subscribe, room messages) sees the new grants at once; what it may no longer
  publish is unpublished, what it may no longer receive is unsubscribed;
- raise/lower a hand (anyone for themselves, a moderator for anyone);
- lock/unlock a room (joins without `roomAdmin` are refused with ``room_locked``), close it;
- room and participant metadata (any JSON value up to :data:`MAX_METADATA_BYTES`).

Every action is written to the audit log (who did what to whom).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .auth import AuthError, Claims, TokenVerifier, check_room_admin, request_token
from .protocol import MODERATION_REQUESTS
from .rooms import Participant, Room, RoomManager

if TYPE_CHECKING:
    from .audit import AuditLog

__all__ = [
    "MAX_METADATA_BYTES",
    "MODERATION_REQUESTS",
    "SOURCES",
    "ModerationError",
    "ModerationService",
    "add_routes",
    "parse_permission",
    "sdp_sources",
]

log = logging.getLogger("ferry.signaling.moderation")

MAX_METADATA_BYTES = 4096
SOURCES = frozenset({"microphone", "camera", "screen", "screen_audio", "unknown"})
_PERMISSION_KEYS = {"canPublish": "can_publish", "canSubscribe": "can_subscribe", "canPublishData": "can_publish_data"}


class ModerationError(Exception):
    """A moderation request that cannot be done; ``code`` is a protocol error code."""

    _STATUS = {"bad_request": 400, "unauthorized": 401, "forbidden": 403, "not_found": 404,
               "too_large": 413, "room_locked": 403, "conflict": 409}

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return self._STATUS.get(self.code, 400)


def check_admin(claims: Claims, room: str) -> None:
    """Raise ``ModerationError("forbidden")`` unless ``claims`` may moderate ``room``."""
    try:
        check_room_admin(claims, room, "moderation")
    except AuthError as exc:
        raise ModerationError(exc.code, exc.message) from None


def check_metadata(value: Any) -> Any:
    """``value`` when it is JSON of at most MAX_METADATA_BYTES; ``too_large`` otherwise."""
    try:
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError, RecursionError):
        raise ModerationError("bad_request", "'metadata' must be a JSON value") from None
    if size > MAX_METADATA_BYTES:
        raise ModerationError("too_large", f"'metadata' is {size} bytes as JSON; at most {MAX_METADATA_BYTES}")
    return value


def parse_permission(value: Any) -> dict[str, Any]:
    """A ``permission`` object: booleans ``canPublish``, ``canSubscribe``,
    ``canPublishData`` and ``canPublishSources`` (a list of sources, or null for any);
    absent keys stay as they are."""
    if not isinstance(value, dict):
        raise ModerationError("bad_request", "'permission' must be an object")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in _PERMISSION_KEYS:
            if not isinstance(item, bool):
                raise ModerationError("bad_request", f"'permission.{key}' must be a boolean")
            out[key] = item
        elif key == "canPublishSources":
            if item is not None:
                if not isinstance(item, list) or not all(isinstance(s, str) and s in SOURCES for s in item):
                    raise ModerationError(
                        "bad_request", f"'permission.canPublishSources' must be a list of {', '.join(sorted(SOURCES))} or null"
                    )
                item = frozenset(item)
            out[key] = item
        elif key == "roomAdmin":
            raise ModerationError("forbidden", "roomAdmin comes only from a token; it cannot be granted")
        else:
            raise ModerationError("bad_request", f"unknown permission {key!r}")
    return out


def sdp_sources(negotiated: list[Any], offered: list[Any], meta: dict[str, Any], published: dict[str, Any]) -> list[str]:
    """The sources of the tracks a publish offer adds (m-lines Ferry receives on, not yet
    published), named as the engine will name them (``tracks`` info, else by kind)."""
    by_mid = {m.mid: m for m in offered}
    out = []
    for section in negotiated:
        if section.rejected or section.direction not in ("recvonly", "sendrecv") or section.mid in published:
            continue
        if section.kind not in ("audio", "video"):
            continue
        offer = by_mid.get(section.mid, section)
        track_id = offer.msid[1] if offer.msid else ""
        info = meta.get(track_id) if track_id else None
        source = info.get("source") if isinstance(info, dict) else None
        out.append(source or ("microphone" if section.kind == "audio" else "camera"))
    return out


def _identity(data: dict[str, Any]) -> str:
    identity = data.get("identity")
    if not isinstance(identity, str) or not identity or len(identity) > 256:
        raise ModerationError("bad_request", "'identity' must be a non-empty string")
    return identity


def _bool(data: dict[str, Any], name: str) -> bool:
    value = data.get(name)
    if not isinstance(value, bool):
        raise ModerationError("bad_request", f"'{name}' must be a boolean")
    return value


class ModerationService:
    """Moderation of every room on this server; see the module docstring."""

    def __init__(self, rooms: RoomManager, audit: AuditLog | None = None) -> None:
        self.rooms = rooms
        self.audit = audit
        self.actions = 0  # done, for /metrics

    # -- lookups -----------------------------------------------------------------------
    def room(self, name: str) -> Room:
        room = self.rooms.rooms.get(name)
        if room is None or room.closed:
            raise ModerationError("not_found", f"no room {name!r} is open")
        return room

    def participant(self, room: Room, identity: str) -> Participant:
        found = room.by_identity(identity)
        if found is None:
            raise ModerationError("not_found", f"no participant {identity!r} in room {room.name!r}")
        return found

    def _audit(self, action: str, room: Room, by: str, **fields: Any) -> None:
        self.actions += 1
        log.info("%s in room %s by %s: %s", action, room.name, by, fields)
        if self.audit is not None:
            self.audit.write("moderation", action=action, room=room.name, by=by, **fields)

    # -- operations (room names and identities; `by` is who asked) ----------------------
    def list_participants(self, room_name: str) -> list[dict[str, object]]:
        return [p.info() for p in self.room(room_name).participants.values()]

    def get_participant(self, room_name: str, identity: str) -> dict[str, object]:
        room = self.room(room_name)
        return self.participant(room, identity).info()

    def remove_participant(self, room_name: str, identity: str, *, by: str, now: float) -> None:
        room = self.room(room_name)
        target = self.participant(room, identity)
        self._audit("remove_participant", room, by, identity=identity)
        end = target.end_session
        room.remove(target, reason="removed", now=now)
        if end is not None:
            end("removed")

    def mute_track(self, room_name: str, identity: str, track_sid: str, muted: bool, *, by: str, now_ms: float) -> dict[str, object]:
        room = self.room(room_name)
        target = self.participant(room, identity)
        track = next((t for t in target.tracks() if t.sid == track_sid), None)
        if track is None:
            raise ModerationError("not_found", f"{identity!r} publishes no track {track_sid!r}")
        self._audit("mute_published_track", room, by, identity=identity, track_sid=track_sid, muted=muted)
        track.muted = muted
        track.forwarding = not muted
        if not muted and track.kind == "video":
            for layer in track.layers:
                track.request_keyframe(layer.index, now_ms)  # subscribers resume on a keyframe
        room.track_muted(target, track, by=by)
        return track.info()

    def update_participant(
        self,
        room_name: str,
        identity: str,
        *,
        by: str,
        permission: dict[str, Any] | None = None,
        metadata: Any = ...,
    ) -> dict[str, object]:
        room = self.room(room_name)
        target = self.participant(room, identity)
        if metadata is not ...:
            target.metadata = check_metadata(metadata)
        if permission:
            self._apply_permission(room, target, permission, by)
        self._audit(
            "update_participant", room, by, identity=identity,
            permission={k: sorted(v) if isinstance(v, frozenset) else v for k, v in (permission or {}).items()},
            metadata=metadata is not ...,
        )
        if metadata is not ...:
            room.broadcast({"type": "metadata_changed", "participant_sid": target.sid, "identity": identity,
                            "metadata": target.metadata, "by": by})
        return target.info()

    def _apply_permission(self, room: Room, target: Participant, permission: dict[str, Any], by: str) -> None:
        grants = dataclasses.replace(
            target.claims.grants, **{_PERMISSION_KEYS[k]: v for k, v in permission.items() if k in _PERMISSION_KEYS}
        )
        target.claims = dataclasses.replace(target.claims, grants=grants)
        if "canPublishSources" in permission:
            target.allowed_sources = permission["canPublishSources"]
        # What it may no longer publish goes; its client is told by permissions_changed.
        gone = [
            t for t in target.tracks()
            if not grants.can_publish or (target.allowed_sources is not None and t.source not in target.allowed_sources)
        ]
        for track in gone:
            target.media.unpublish(track.sid)
        if gone:
            room.tracks_unpublished(target, gone)
        if not grants.can_subscribe and target.desired:
            target.desired.clear()
            target.renegotiate()
        elif grants.can_subscribe and "canSubscribe" in permission and target.auto_subscribe:
            target.desired.update(room.router.tracks.keys() - {t.sid for t in target.tracks()})
            target.renegotiate()
        room.broadcast(
            {"type": "permissions_changed", "participant_sid": target.sid, "identity": target.identity,
             "permissions": target.permissions(), "by": by, "unpublished": [t.sid for t in gone]}
        )

    def raise_hand(self, room_name: str, identity: str, raised: bool, *, by: str) -> None:
        room = self.room(room_name)
        target = self.participant(room, identity)
        target.hand_raised = raised
        self._audit("raise_hand", room, by, identity=identity, raised=raised)
        room.broadcast({"type": "hand_raised", "participant_sid": target.sid, "identity": identity,
                        "raised": raised, "by": by})

    def set_locked(self, room_name: str, locked: bool, *, by: str) -> None:
        room = self.room(room_name)
        room.locked = locked
        self._audit("set_room_locked", room, by, locked=locked)
        room.broadcast({"type": "room_locked", "locked": locked, "by": by})

    def set_room_metadata(self, room_name: str, metadata: Any, *, by: str) -> None:
        room = self.room(room_name)
        room.metadata = check_metadata(metadata)
        self._audit("update_room_metadata", room, by)
        room.broadcast({"type": "metadata_changed", "room": room.name, "metadata": room.metadata, "by": by})

    def close_room(self, room_name: str, *, by: str, now: float) -> None:
        """Everyone gets ``leave {reason: "room_closed"}`` and is disconnected."""
        room = self.room(room_name)
        self._audit("close_room", room, by, participants=len(room.participants))
        for participant in list(room.participants.values()):
            end = participant.end_session
            participant.end_session = None
            if end is not None:
                end("room_closed")
        room.close()

    def check_join(self, room: Room, claims: Claims) -> None:
        """A locked room takes only roomAdmin tokens (a teacher who reconnects)."""
        if room.locked and not claims.grants.room_admin:
            raise ModerationError("room_locked", f"room {room.name!r} is locked")

    def check_publish(self, participant: Participant, sources: list[str]) -> None:
        """``forbidden`` unless ``participant`` may publish tracks of ``sources``."""
        if not participant.claims.grants.can_publish:
            raise ModerationError("forbidden", "not allowed to publish (canPublish)")
        allowed = participant.allowed_sources
        if allowed is not None:
            bad = sorted(set(sources) - allowed)
            if bad:
                raise ModerationError(
                    "forbidden", f"not allowed to publish {', '.join(bad)} (allowed: {', '.join(sorted(allowed)) or 'none'})"
                )

    # -- signaling front end -----------------------------------------------------------
    def handle(self, participant: Participant, type_: str, data: dict[str, Any], now: float) -> dict[str, Any]:
        """One moderation request of a joined participant; the reply's fields. Raises
        ModerationError."""
        room = participant.room
        me = participant.identity
        if type_ == "raise_hand":
            raised = _bool(data, "raised")
            identity = data.get("identity", me)
            if identity != me:
                check_admin(participant.claims, room.name)
            self.raise_hand(room.name, _identity({"identity": identity}), raised, by=me)
            return {}
        if type_ == "update_participant":
            identity = _identity({"identity": data.get("identity", me)})
            permission = parse_permission(data["permission"]) if data.get("permission") is not None else None
            if identity != me or permission:
                check_admin(participant.claims, room.name)  # own metadata: anyone
            metadata = data["metadata"] if "metadata" in data else ...
            return {"participant": self.update_participant(room.name, identity, by=me, permission=permission,
                                                           metadata=metadata)}
        check_admin(participant.claims, room.name)
        if type_ == "list_participants":
            return {"participants": self.list_participants(room.name)}
        if type_ == "get_participant":
            return {"participant": self.get_participant(room.name, _identity(data))}
        if type_ == "remove_participant":
            identity = _identity(data)
            if identity == me:
                raise ModerationError("bad_request", "use leave to leave")
            self.remove_participant(room.name, identity, by=me, now=now)
            return {}
        if type_ == "mute_published_track":
            sid = data.get("track_sid")
            if not isinstance(sid, str):
                raise ModerationError("bad_request", "'track_sid' must be a string")
            now_ms = room.router.engine.now_ms()
            return {"track": self.mute_track(room.name, _identity(data), sid, _bool(data, "muted"), by=me, now_ms=now_ms)}
        if type_ == "update_room_metadata":
            if "metadata" not in data:
                raise ModerationError("bad_request", "'metadata' is required")
            self.set_room_metadata(room.name, data["metadata"], by=me)
            return {}
        if type_ == "set_room_locked":
            self.set_locked(room.name, _bool(data, "locked"), by=me)
            return {}
        if type_ == "close_room":
            self.close_room(room.name, by=me, now=now)
            return {}
        raise ModerationError("bad_request", f"unknown moderation request {type_!r}")


# -- REST ------------------------------------------------------------------------------
_Op = Callable[[ModerationService, str, str, Any, dict[str, Any]], object]


def _rest_participants(service: ModerationService, room: str, by: str, m: Any, data: dict[str, Any]) -> object:
    return {"participants": service.list_participants(room)}


def _rest_get(service: ModerationService, room: str, by: str, m: Any, data: dict[str, Any]) -> object:
    return {"participant": service.get_participant(room, m["identity"])}


def _rest_remove(service: ModerationService, room: str, by: str, m: Any, data: dict[str, Any]) -> object:
    service.remove_participant(room, m["identity"], by=by, now=time.time())
    return None


def _rest_update(service: ModerationService, room: str, by: str, m: Any, data: dict[str, Any]) -> object:
    permission = parse_permission(data["permission"]) if data.get("permission") is not None else None
    metadata = data["metadata"] if "metadata" in data else ...
    return {"participant": service.update_participant(room, m["identity"], by=by, permission=permission,
                                                      metadata=metadata)}


def _rest_mute(service: ModerationService, room: str, by: str, m: Any, data: dict[str, Any]) -> object:
    muted = _bool(data, "muted")
    now_ms = service.room(room).router.engine.now_ms()
    return {"track": service.mute_track(room, m["identity"], m["track"], muted, by=by, now_ms=now_ms)}


def _rest_hand(service: ModerationService, room: str, by: str, m: Any, data: dict[str, Any]) -> object:
    service.raise_hand(room, m["identity"], _bool(data, "raised"), by=by)
    return None


def _rest_lock(service: ModerationService, room: str, by: str, m: Any, data: dict[str, Any]) -> object:
    service.set_locked(room, _bool(data, "locked"), by=by)
    return None


def _rest_metadata(service: ModerationService, room: str, by: str, m: Any, data: dict[str, Any]) -> object:
    if "metadata" not in data:
        raise ModerationError("bad_request", "'metadata' is required")
    service.set_room_metadata(room, data["metadata"], by=by)
    return None


def _rest_close(service: ModerationService, room: str, by: str, m: Any, data: dict[str, Any]) -> object:
    service.close_room(room, by=by, now=time.time())
    return None


def _authorize(service: ModerationService, verifier: TokenVerifier, request: web.Request) -> tuple[str, str]:
    """(room, "api:<identity>") of a request whose bearer token may moderate the room."""
    room = request.match_info["room"]
    token = request_token(request.headers, request.query)
    try:
        claims = verifier.verify(token, now=time.time())
    except AuthError as exc:
        _refused(service, request, exc.code, exc.message)
        raise _http(ModerationError(exc.code, exc.message)) from None
    try:
        check_admin(claims, room)
    except ModerationError as exc:
        _refused(service, request, exc.code, exc.message, identity=claims.identity)
        raise _http(exc) from None
    return room, f"api:{claims.identity}"


async def _body(request: web.Request) -> dict[str, Any]:
    if request.method not in ("POST", "PATCH", "PUT") or not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise _http(ModerationError("bad_request", "body must be a JSON object")) from None
    if not isinstance(data, dict):
        raise _http(ModerationError("bad_request", "body must be a JSON object"))
    return data


def add_routes(app: web.Application, service: ModerationService, verifier: TokenVerifier) -> None:
    """REST moderation under ``/api/rooms/{room}`` (bearer token with roomAdmin for the room or "*")."""

    def route(op: _Op) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            room, by = _authorize(service, verifier, request)
            data = await _body(request)
            try:
                result = op(service, room, by, request.match_info, data)
            except ModerationError as exc:
                raise _http(exc) from None
            return web.json_response(result if result is not None else {"ok": True})

        return handler

    base = "/api/rooms/{room}"
    app.router.add_get(base + "/participants", route(_rest_participants))
    app.router.add_get(base + "/participants/{identity}", route(_rest_get))
    app.router.add_delete(base + "/participants/{identity}", route(_rest_remove))
    app.router.add_patch(base + "/participants/{identity}", route(_rest_update))
    app.router.add_post(base + "/participants/{identity}/tracks/{track}/mute", route(_rest_mute))
    app.router.add_post(base + "/participants/{identity}/hand", route(_rest_hand))
    app.router.add_post(base + "/lock", route(_rest_lock))
    app.router.add_post(base + "/metadata", route(_rest_metadata))
    app.router.add_delete(base, route(_rest_close))


def _refused(service: ModerationService, request: web.Request, code: str, message: str, identity: str | None = None) -> None:
    if service.audit is not None:
        service.audit.write("refused", what="api", path=request.path, remote=request.remote,
                            identity=identity, code=code, message=message)


def _http(exc: ModerationError) -> web.HTTPException:
    body = json.dumps({"error": {"code": exc.code, "message": exc.message}})
    status = exc.status
    cls: type[web.HTTPException] = {
        400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 403: web.HTTPForbidden, 404: web.HTTPNotFound,
        409: web.HTTPConflict, 413: web.HTTPRequestEntityTooLarge,
    }.get(status, web.HTTPBadRequest)
    if cls is web.HTTPRequestEntityTooLarge:
        return web.HTTPRequestEntityTooLarge(max_size=MAX_METADATA_BYTES, actual_size=0, text=body,
                                             content_type="application/json")
    return cls(text=body, content_type="application/json")
