"""Sans-I/O signaling message layer (docs/protocol.md), shared by the WebSocket and QUIC shells.

Inbound: :func:`decode` turns one frame into a validated :class:`Request` or raises a coded
:class:`ProtocolError`. Outbound: :func:`ok`, :func:`error_reply`, :func:`event` build the
dicts and :func:`encode` / :func:`frame` serialise them. QUIC streams carry length-prefixed
frames; :class:`FrameDecoder` reassembles them from arbitrary chunking.

Nothing here does I/O, reads a clock or knows about sessions: the shells own sockets, the
session owns state, and this module only says whether bytes are a well-formed request.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ERROR_CODES",
    "MAX_MESSAGE_BYTES",
    "MAX_SDP_MESSAGE_BYTES",
    "MAX_RECOVERABLE_BYTES",
    "MAX_TRACK_SIDS",
    "MAX_DATA_PAYLOAD_BYTES",
    "PROTOCOL_VERSION",
    "REQUEST_TYPES",
    "FrameDecoder",
    "ProtocolError",
    "Request",
    "decode",
    "encode",
    "error_reply",
    "event",
    "frame",
    "ok",
    "validate",
]

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
# Oversized frames up to this size are still parsed, only to echo their id in the
# ``too_large`` reply (a client waiting on that id learns at once why).
MAX_RECOVERABLE_BYTES = 4 * MAX_MESSAGE_BYTES
# Requests that carry an SDP may be this large: a viewer's answer grows ~0.7-1.2 KB per
# track it receives (6 publishers x 16 tracks is ~70 KB). No new parsing exposure: frames
# up to this size were already parsed to echo their id. signaling.rooms bounds the
# m-lines offered to one viewer so that its answer fits.
MAX_SDP_MESSAGE_BYTES = MAX_RECOVERABLE_BYTES
# Requests allowed up to MAX_SDP_MESSAGE_BYTES: SDPs, and room messages, whose payload
# may have MAX_DATA_PAYLOAD_BYTES (base64 and JSON escaping make the frame bigger).
SDP_REQUESTS = frozenset({"publish", "subscriber_answer", "send_data"})
MAX_DATA_PAYLOAD_BYTES = 64 * 1024
MAX_TOPIC_CHARS = 128
MAX_DATA_ID_CHARS = 128
MAX_DATA_RECIPIENTS = 100
MAX_TRACK_SIDS = 100
MAX_DIMENSION = 10000
LAYERS = ("q", "h", "f")
TRICKLE_TARGETS = ("publisher", "subscriber")

ERROR_CODES = frozenset(
    {
        "bad_json",
        "bad_request",
        "unsupported_version",
        "unknown_type",
        "too_large",
        "unauthorized",
        "forbidden",
        "room_full",
        "not_joined",
        "not_found",
        "conflict",
        "too_many_tracks",
        "already_recording",
        "not_recording",
        "storage_error",
        "captions_unavailable",
        "resume_expired",
        "resume_used",
        "resume_gap",
        "room_locked",
        "internal",
    }
)

_LEN = struct.Struct("!I")


class ProtocolError(Exception):
    """A request could not be accepted; ``code`` is one of :data:`ERROR_CODES`.

    ``id`` is the request id when it could be read, so the shell can answer with an error
    *reply* (echoing the id) instead of an ``error`` event; ``type`` likewise.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        id: int | str | None = None,
        type: str | None = None,
    ) -> None:
        assert code in ERROR_CODES, code
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.id = id
        self.type = type

    def to_message(self) -> dict[str, Any]:
        """The message to send back: an error reply if the id is known, else an error event."""
        if self.id is not None and self.type is not None:
            return error_reply(self.type, self.id, self.code, self.message)
        return event("error", error={"code": self.code, "message": self.message})


@dataclass
class Request:
    """A validated client request. ``data`` holds the type-specific fields (defaults filled)."""

    type: str
    id: int | str
    data: dict[str, Any] = field(default_factory=dict)


# --- field validators -------------------------------------------------------------------
# Each takes (msg, req) and returns the validated ``data`` dict; raising via _bad keeps the
# request id/type on the error so it can be echoed.


def _bad(req: Request, message: str) -> ProtocolError:
    return ProtocolError("bad_request", message, id=req.id, type=req.type)


def _is_int(value: Any) -> bool:
    # bool is an int subclass in Python but not a JSON integer.
    return isinstance(value, int) and not isinstance(value, bool)


def _req_str(msg: dict[str, Any], req: Request, name: str) -> str:
    if name not in msg:
        raise _bad(req, f"'{name}' is required")
    value = msg[name]
    if not isinstance(value, str):
        raise _bad(req, f"'{name}' must be a string")
    return value


def _req_int(msg: dict[str, Any], req: Request, name: str) -> int:
    if name not in msg:
        raise _bad(req, f"'{name}' is required")
    value = msg[name]
    if not _is_int(value):
        raise _bad(req, f"'{name}' must be an integer")
    return int(value)


def _req_bool(msg: dict[str, Any], req: Request, name: str) -> bool:
    if name not in msg:
        raise _bad(req, f"'{name}' is required")
    value = msg[name]
    if not isinstance(value, bool):
        raise _bad(req, f"'{name}' must be a boolean")
    return value


def _v_hello(msg: dict[str, Any], req: Request) -> dict[str, Any]:
    version = _req_int(msg, req, "version")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_version",
            f"protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}",
            id=req.id,
            type=req.type,
        )
    return {"version": version}


def _v_join(msg: dict[str, Any], req: Request) -> dict[str, Any]:
    token = _req_str(msg, req, "token")
    if not token:
        raise _bad(req, "'token' must be non-empty")
    auto = msg.get("auto_subscribe", True)
    if not isinstance(auto, bool):
        raise _bad(req, "'auto_subscribe' must be a boolean")
    return {"token": token, "auto_subscribe": auto, **_data_since(msg, req)}


def _v_resume(msg: dict[str, Any], req: Request) -> dict[str, Any]:
    token = _req_str(msg, req, "token")
    if not token or len(token) > 256:
        raise _bad(req, "'token' must be a non-empty string of at most 256 characters")
    last_seq = msg.get("last_seq", 0)
    if not _is_int(last_seq) or last_seq < 0:
        raise _bad(req, "'last_seq' must be an integer >= 0")
    return {"token": token, "last_seq": last_seq, **_data_since(msg, req)}


def _data_since(msg: dict[str, Any], req: Request) -> dict[str, int]:
    """``data_since`` of join/resume, when given: the room message seq the client has
    (without it, replays start at its identity's acknowledged cursor)."""
    since = msg.get("data_since")
    if since is None:
        return {}
    if not _is_int(since) or since < 0:
        raise _bad(req, "'data_since' must be an integer >= 0")
    return {"data_since": since}


def _too_large(req: Request, message: str) -> ProtocolError:
    return ProtocolError("too_large", message, id=req.id, type=req.type)


def _v_send_data(msg: dict[str, Any], req: Request) -> dict[str, Any]:
    """A room message: ``payload`` (any JSON value) or ``payload_b64`` (bytes), each at
    most MAX_DATA_PAYLOAD_BYTES; ``to`` (identities) or everyone; ``data_id`` makes a
    retried reliable send idempotent."""
    topic = _req_str(msg, req, "topic")
    if not topic:
        raise _bad(req, "'topic' must be non-empty")
    if len(topic) > MAX_TOPIC_CHARS:
        raise _too_large(req, f"'topic' has {len(topic)} characters; at most {MAX_TOPIC_CHARS}")
    data: dict[str, Any] = {"topic": topic}
    if ("payload" in msg) == ("payload_b64" in msg):
        raise _bad(req, "exactly one of 'payload' (JSON) and 'payload_b64' (base64 bytes) is required")
    if "payload" in msg:
        size = len(json.dumps(msg["payload"], separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"))
        if size > MAX_DATA_PAYLOAD_BYTES:
            raise _too_large(req, f"'payload' is {size} bytes as JSON; at most {MAX_DATA_PAYLOAD_BYTES}")
        data["payload"] = msg["payload"]
    else:
        encoded = msg["payload_b64"]
        if not isinstance(encoded, str):
            raise _bad(req, "'payload_b64' must be a base64 string")
        if len(encoded) > 4 * ((MAX_DATA_PAYLOAD_BYTES + 2) // 3):
            raise _too_large(req, f"'payload_b64' decodes to more than {MAX_DATA_PAYLOAD_BYTES} bytes")
        try:
            base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise _bad(req, "'payload_b64' is not valid base64") from None
        data["payload_b64"] = encoded
    to = msg.get("to")
    if to is not None:
        if not isinstance(to, list) or not to or not all(isinstance(i, str) and i for i in to):
            raise _bad(req, "'to' must be a non-empty list of identities (omit it for everyone)")
        if len(to) > MAX_DATA_RECIPIENTS:
            raise _too_large(req, f"'to' has {len(to)} identities; at most {MAX_DATA_RECIPIENTS}")
        to = list(dict.fromkeys(to))
    data["to"] = to
    reliable = msg.get("reliable", True)
    if not isinstance(reliable, bool):
        raise _bad(req, "'reliable' must be a boolean")
    data["reliable"] = reliable
    data_id = msg.get("data_id")
    if data_id is not None and (not isinstance(data_id, str) or not 0 < len(data_id) <= MAX_DATA_ID_CHARS):
        raise _bad(req, f"'data_id' must be a string of 1..{MAX_DATA_ID_CHARS} characters")
    data["data_id"] = data_id
    return data


def _v_data_ack(msg: dict[str, Any], req: Request) -> dict[str, Any]:
    seq = _req_int(msg, req, "data_seq")
    if seq < 0:
        raise _bad(req, "'data_seq' must be >= 0")
    return {"data_seq": seq}


def _v_publish(msg: dict[str, Any], req: Request) -> dict[str, Any]:
    sdp = _req_str(msg, req, "sdp")
    tracks = msg.get("tracks", {})
    if tracks is None:
        tracks = {}
    if not isinstance(tracks, dict):
        raise _bad(req, "'tracks' must be an object mapping msid track id to {source, name}")
    for key, info in tracks.items():
        if not isinstance(info, dict):
            raise _bad(req, f"'tracks.{key}' must be an object")
        for sub in ("source", "name"):
            if sub in info and info[sub] is not None and not isinstance(info[sub], str):
                raise _bad(req, f"'tracks.{key}.{sub}' must be a string")
    return {"sdp": sdp, "tracks": tracks}


def _v_subscriber_answer(msg: dict[str, Any], req: Request) -> dict[str, Any]:
    return {"sdp": _req_str(msg, req, "sdp"), "version": _req_int(msg, req, "version")}


def _v_trickle(msg: dict[str, Any], req: Request) -> dict[str, Any]:
    target = _req_str(msg, req, "target")
    if target not in TRICKLE_TARGETS:
        raise _bad(req, f"'target' must be one of {', '.join(TRICKLE_TARGETS)}, got {target!r}")
    if "candidate" not in msg:
        raise _bad(req, "'candidate' is required (null marks end of candidates)")
    candidate = msg["candidate"]
    if candidate is not None and not isinstance(candidate, dict):
        raise _bad(req, "'candidate' must be an object or null")
    return {"target": target, "candidate": candidate}


def _v_track_sids(msg: dict[str, Any], req: Request) -> dict[str, Any]:
    if "track_sids" not in msg:
        raise _bad(req, "'track_sids' is required")
    sids = msg["track_sids"]
    if not isinstance(sids, list):
        raise _bad(req, "'track_sids' must be a list of strings")
    if len(sids) > MAX_TRACK_SIDS:
        raise _bad(req, f"'track_sids' has {len(sids)} entries; at most {MAX_TRACK_SIDS}")
    for i, sid in enumerate(sids):
        if not isinstance(sid, str):
            raise _bad(req, f"'track_sids[{i}]' must be a string")
    return {"track_sids": list(sids)}


def _v_mute(msg: dict[str, Any], req: Request) -> dict[str, Any]:
    return {"track_sid": _req_str(msg, req, "track_sid"), "muted": _req_bool(msg, req, "muted")}


def _v_update_subscription(msg: dict[str, Any], req: Request) -> dict[str, Any]:
    data: dict[str, Any] = {"track_sid": _req_str(msg, req, "track_sid")}
    layer = msg.get("max_layer")
    if layer is not None:
        if layer not in LAYERS:
            raise _bad(req, f"'max_layer' must be one of {', '.join(LAYERS)}, got {layer!r}")
        data["max_layer"] = layer
    for dim in ("width", "height"):
        value = msg.get(dim)
        if value is None:
            continue
        if not _is_int(value) or not 0 <= value <= MAX_DIMENSION:
            raise _bad(req, f"'{dim}' must be an integer in 0..{MAX_DIMENSION}")
        data[dim] = value
    enabled = msg.get("enabled")
    if enabled is not None:
        if not isinstance(enabled, bool):
            raise _bad(req, "'enabled' must be a boolean")
        data["enabled"] = enabled
    return data


CAPTION_BACKENDS = ("whisper", "vosk")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")


def _v_set_captions(msg: dict[str, Any], req: Request) -> dict[str, Any]:
    data: dict[str, Any] = {"enabled": _req_bool(msg, req, "enabled"), "backend": None, "language": None}
    backend = msg.get("backend")
    if backend is not None:
        if backend not in CAPTION_BACKENDS:
            raise _bad(req, f"'backend' must be one of {', '.join(CAPTION_BACKENDS)}, got {backend!r}")
        data["backend"] = backend
    language = msg.get("language")
    if language is not None:
        if not isinstance(language, str) or not _LANGUAGE.match(language):
            raise _bad(req, f"'language' must be a language code like \"en\" or \"ko\", got {language!r}")
        data["language"] = language
    return data


def _v_empty(msg: dict[str, Any], req: Request) -> dict[str, Any]:
    return {}


def _v_moderation(msg: dict[str, Any], req: Request) -> dict[str, Any]:
    """Moderation requests: the fields as sent; signaling.moderation checks them."""
    return {k: v for k, v in msg.items() if k not in ("type", "id")}


# Moderation requests (signaling/moderation.py); all but raise_hand and one's own metadata need roomAdmin.
MODERATION_REQUESTS = frozenset(
    {
        "list_participants",
        "get_participant",
        "remove_participant",
        "mute_published_track",
        "update_participant",
        "update_room_metadata",
        "set_room_locked",
        "close_room",
        "raise_hand",
    }
)

_VALIDATORS: dict[str, Callable[[dict[str, Any], Request], dict[str, Any]]] = {
    "hello": _v_hello,
    "join": _v_join,
    "resume": _v_resume,
    "publish": _v_publish,
    "subscriber_answer": _v_subscriber_answer,
    "trickle": _v_trickle,
    "subscribe": _v_track_sids,
    "unsubscribe": _v_track_sids,
    "mute": _v_mute,
    "update_subscription": _v_update_subscription,
    "leave": _v_empty,
    "ping": _v_empty,
    "ice_restart": _v_empty,
    "start_recording": _v_empty,
    "stop_recording": _v_empty,
    "set_captions": _v_set_captions,
    "send_data": _v_send_data,
    "data_ack": _v_data_ack,
    **dict.fromkeys(MODERATION_REQUESTS, _v_moderation),
}

REQUEST_TYPES = frozenset(_VALIDATORS)


def decode(frame: str | bytes) -> Request:
    """Parse and validate one client frame.

    Order of checks (each maps to one error code): size → ``too_large`` (over
    :data:`MAX_MESSAGE_BYTES`, except ``publish`` and ``subscriber_answer`` up to
    :data:`MAX_SDP_MESSAGE_BYTES`; echoing the id of a frame up to
    :data:`MAX_RECOVERABLE_BYTES` that has one); JSON →
    ``bad_json``; object with string ``type`` and int/str ``id`` → ``bad_request``; known
    type → ``unknown_type``; fields → ``bad_request`` / ``unsupported_version``. Errors
    raised after the id is known carry ``id``/``type`` so the reply can echo them.
    """
    if isinstance(frame, str):
        # Cheap bounds before paying for an encode: UTF-8 is 1..4 bytes per code point.
        size = len(frame)
        if MAX_MESSAGE_BYTES // 4 < size <= MAX_MESSAGE_BYTES:
            size = len(frame.encode("utf-8", "surrogatepass"))
    else:
        size = len(frame)
    if size > MAX_MESSAGE_BYTES:
        if size > MAX_RECOVERABLE_BYTES:
            raise ProtocolError("too_large", f"message exceeds the {MAX_SDP_MESSAGE_BYTES} byte limit")
        msg = _parse_oversized(frame)
        if isinstance(msg, dict) and msg.get("type") in SDP_REQUESTS:
            return validate(msg)
        raise ProtocolError(
            "too_large",
            f"message exceeds the {MAX_MESSAGE_BYTES} byte limit",
            **_request_ids(msg),
        )
    try:
        # The wire is UTF-8; don't let json.loads sniff UTF-16/32 from bytes.
        text = frame.decode("utf-8") if isinstance(frame, bytes | bytearray) else frame
        msg = json.loads(text)
    except (ValueError, RecursionError) as exc:
        # UnicodeDecodeError is a ValueError; RecursionError comes from deeply nested arrays.
        raise ProtocolError("bad_json", f"invalid JSON: {exc}") from None
    return validate(msg)


def _parse_oversized(frame: str | bytes) -> Any:
    """An oversized frame's JSON value, or None when it is not JSON."""
    try:
        return json.loads(frame.decode("utf-8") if isinstance(frame, bytes | bytearray) else frame)
    except (ValueError, RecursionError):
        return None


def _request_ids(msg: Any) -> dict[str, Any]:
    """``id`` and ``type`` of an oversized frame's JSON value when it is an object
    carrying valid ones (to echo in the error), else nothing."""
    if not isinstance(msg, dict):
        return {}
    mtype, rid = msg.get("type"), msg.get("id")
    if isinstance(mtype, str) and (_is_int(rid) or isinstance(rid, str)):
        return {"id": rid, "type": mtype}
    return {}


def validate(msg: Any) -> Request:
    """Validate an already-parsed message (the QUIC path: :class:`FrameDecoder` output).

    Same checks and codes as :func:`decode` after the JSON step.
    """
    if not isinstance(msg, dict):
        raise ProtocolError("bad_request", "message must be a JSON object")
    mtype = msg.get("type")
    if not isinstance(mtype, str):
        raise ProtocolError("bad_request", "'type' is required and must be a string")
    if "id" not in msg:
        raise ProtocolError("bad_request", "'id' is required on requests", type=mtype)
    rid = msg["id"]
    if not (_is_int(rid) or isinstance(rid, str)):
        raise ProtocolError("bad_request", "'id' must be an integer or a string", type=mtype)
    validator = _VALIDATORS.get(mtype)
    if validator is None:
        raise ProtocolError("unknown_type", f"unknown request type {mtype!r}", id=rid, type=mtype)
    req = Request(type=mtype, id=rid)
    req.data = validator(msg, req)
    return req


# --- outbound ----------------------------------------------------------------------------


def ok(req: Request, **fields: Any) -> dict[str, Any]:
    """Success reply echoing the request's type and id."""
    return {"type": req.type, "id": req.id, "ok": True, **fields}


def error_reply(type: str, id: int | str, code: str, message: str) -> dict[str, Any]:
    """Failure reply echoing a request's type and id."""
    assert code in ERROR_CODES, code
    return {"type": type, "id": id, "ok": False, "error": {"code": code, "message": message}}


def event(type: str, **fields: Any) -> dict[str, Any]:
    """Server-initiated message; events never carry an ``id``."""
    assert "id" not in fields, "events carry no id"
    return {"type": type, **fields}


def encode(msg: dict[str, Any]) -> str:
    """Compact JSON text for one WebSocket text frame; always encodable as UTF-8."""
    text = json.dumps(msg, separators=(",", ":"), ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate (a client's "\ud800" echoed in a reply) has no UTF-8
            # form; escaped, the text is ASCII and the same JSON.
            text = json.dumps(msg, separators=(",", ":"))
    return text


def frame(msg: dict[str, Any]) -> bytes:
    """Length-prefixed frame for QUIC streams: 4-byte big-endian length + UTF-8 JSON."""
    body = encode(msg).encode("utf-8")
    return _LEN.pack(len(body)) + body


class FrameDecoder:
    """Reassembles length-prefixed frames from a byte stream in any chunking.

    ``feed`` returns, in order, a dict per valid frame or a :class:`ProtocolError` per bad
    one (so one bad frame does not lose the good frames fed alongside it). Frames are
    JSON-parsed but *not* request-validated: QUIC shells pass the dicts to the same session
    code as WebSocket frames.

    Oversized frames: when a length prefix exceeds ``max_bytes``, the decoder yields one
    ``too_large`` error and then *skips* exactly that many body bytes as they arrive, so the
    stream resyncs on the next length prefix without ever buffering the oversized body. This
    matches the WebSocket behaviour (refuse the message, keep the socket). A peer that lies
    about lengths only wastes its own bandwidth.
    """

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._max = max_bytes
        self._buf = bytearray()
        self._skip = 0

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame (useful for flow-control checks)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[dict[str, Any] | ProtocolError]:
        out: list[dict[str, Any] | ProtocolError] = []
        view = memoryview(data)
        if self._skip:
            n = min(self._skip, len(view))
            self._skip -= n
            view = view[n:]
        self._buf += view
        while True:
            if self._skip:
                n = min(self._skip, len(self._buf))
                del self._buf[:n]
                self._skip -= n
                if self._skip:
                    break
            if len(self._buf) < _LEN.size:
                break
            (length,) = _LEN.unpack_from(self._buf)
            if length > self._max:
                del self._buf[: _LEN.size]
                self._skip = length
                out.append(
                    ProtocolError("too_large", f"frame is {length} bytes; the limit is {self._max}")
                )
                continue
            end = _LEN.size + length
            if len(self._buf) < end:
                break
            body = bytes(self._buf[_LEN.size : end])
            del self._buf[:end]
            out.append(self._parse(body))
        return out

    @staticmethod
    def _parse(body: bytes) -> dict[str, Any] | ProtocolError:
        try:
            msg = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            return ProtocolError("bad_json", f"invalid JSON: {exc}")
        if not isinstance(msg, dict):
            return ProtocolError("bad_request", "message must be a JSON object")
        return msg
