"""Signaling message validation and QUIC framing (sans-I/O)."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signaling.protocol import (
    MAX_MESSAGE_BYTES,
    MAX_SDP_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    FrameDecoder,
    ProtocolError,
    Request,
    decode,
    encode,
    error_reply,
    event,
    frame,
    ok,
    validate,
)


def _msg(type_: str, id_: Any = 1, **fields: Any) -> str:
    return json.dumps({"type": type_, "id": id_, **fields})


def _fails(raw: str | bytes, code: str, fragment: str = "") -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(raw)
    assert info.value.code == code, info.value
    assert fragment in info.value.message
    return info.value


# --- valid requests -----------------------------------------------------------------------

VALID: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("hello", {"version": 1}, {"version": 1}),
    ("join", {"token": "t"}, {"token": "t", "auto_subscribe": True}),
    ("join", {"token": "t", "auto_subscribe": False}, {"token": "t", "auto_subscribe": False}),
    ("publish", {"sdp": "v=0"}, {"sdp": "v=0", "tracks": {}}),
    ("publish", {"sdp": "v=0", "tracks": None}, {"sdp": "v=0", "tracks": {}}),
    (
        "publish",
        {"sdp": "v=0", "tracks": {"t1": {"source": "camera", "name": "cam"}}},
        {"sdp": "v=0", "tracks": {"t1": {"source": "camera", "name": "cam"}}},
    ),
    ("subscriber_answer", {"sdp": "v=0", "version": 3}, {"sdp": "v=0", "version": 3}),
    (
        "trickle",
        {"target": "publisher", "candidate": {"candidate": "a"}},
        {"target": "publisher", "candidate": {"candidate": "a"}},
    ),
    (
        "trickle",
        {"target": "subscriber", "candidate": None},
        {"target": "subscriber", "candidate": None},
    ),
    ("subscribe", {"track_sids": ["TR_a", "TR_b"]}, {"track_sids": ["TR_a", "TR_b"]}),
    ("unsubscribe", {"track_sids": []}, {"track_sids": []}),
    ("mute", {"track_sid": "TR_a", "muted": True}, {"track_sid": "TR_a", "muted": True}),
    ("update_subscription", {"track_sid": "TR_a"}, {"track_sid": "TR_a"}),
    (
        "update_subscription",
        {"track_sid": "TR_a", "max_layer": "h", "width": 640, "height": 0},
        {"track_sid": "TR_a", "max_layer": "h", "width": 640, "height": 0},
    ),
    ("update_subscription", {"track_sid": "TR_a", "enabled": False}, {"track_sid": "TR_a", "enabled": False}),
    ("leave", {}, {}),
    ("resume", {"token": "tok"}, {"token": "tok", "last_seq": 0}),
    ("resume", {"token": "tok", "last_seq": 42}, {"token": "tok", "last_seq": 42}),
    ("resume", {"token": "tok", "data_since": 7}, {"token": "tok", "last_seq": 0, "data_since": 7}),
    ("join", {"token": "t", "data_since": 0}, {"token": "t", "auto_subscribe": True, "data_since": 0}),
    (
        "send_data",
        {"topic": "chat", "payload": {"text": "hi"}},
        {"topic": "chat", "payload": {"text": "hi"}, "to": None, "reliable": True, "data_id": None},
    ),
    (
        "send_data",
        {"topic": "c", "payload_b64": "AAE=", "to": ["a", "a", "b"], "reliable": False, "data_id": "x1"},
        {"topic": "c", "payload_b64": "AAE=", "to": ["a", "b"], "reliable": False, "data_id": "x1"},
    ),
    ("data_ack", {"data_seq": 3}, {"data_seq": 3}),
    ("ping", {}, {}),
    ("ice_restart", {}, {}),
    ("start_recording", {}, {}),
    ("stop_recording", {}, {}),
    ("set_captions", {"enabled": False}, {"enabled": False, "backend": None, "language": None}),
    (
        "set_captions",
        {"enabled": True, "backend": "vosk", "language": "ko"},
        {"enabled": True, "backend": "vosk", "language": "ko"},
    ),
    # Moderation requests pass their fields through; signaling.moderation checks them.
    ("list_participants", {}, {}),
    ("get_participant", {"identity": "s"}, {"identity": "s"}),
    ("remove_participant", {"identity": "s"}, {"identity": "s"}),
    (
        "mute_published_track",
        {"identity": "s", "track_sid": "TR_a", "muted": True},
        {"identity": "s", "track_sid": "TR_a", "muted": True},
    ),
    ("update_participant", {"identity": "s", "permission": {"canPublish": True}},
     {"identity": "s", "permission": {"canPublish": True}}),
    ("update_room_metadata", {"metadata": {"a": 1}}, {"metadata": {"a": 1}}),
    ("set_room_locked", {"locked": True}, {"locked": True}),
    ("close_room", {}, {}),
    ("raise_hand", {"raised": True}, {"raised": True}),
]


@pytest.mark.parametrize(("type_", "fields", "data"), VALID)
def test_valid(type_: str, fields: dict[str, Any], data: dict[str, Any]) -> None:
    req = decode(_msg(type_, "abc", **fields))
    assert req == Request(type=type_, id="abc", data=data)


def test_every_documented_request_has_a_valid_case() -> None:
    assert {row[0] for row in VALID} == REQUEST_TYPES


def test_bytes_and_int_id() -> None:
    assert decode(_msg("ping", 7).encode()) == Request("ping", 7, {})


def test_extra_fields_ignored() -> None:
    assert decode(_msg("ping", 1, extra=[1, 2])).data == {}


# --- envelope errors ----------------------------------------------------------------------


def test_too_large_checked_before_json() -> None:
    _fails("x" * (MAX_MESSAGE_BYTES + 1), "too_large", str(MAX_MESSAGE_BYTES))
    _fails(b"{" * (MAX_MESSAGE_BYTES + 1), "too_large")
    # 4-byte characters: under the limit in code points, over it in bytes.
    _fails("\U0001f600" * (MAX_MESSAGE_BYTES // 4 + 1), "too_large")


def test_sdp_requests_may_be_larger_than_other_requests() -> None:
    big_sdp = "v=0\r\n" + "a=x\r\n" * 20_000  # ~120 KB: a viewer's answer for ~150 tracks
    answer = _msg("subscriber_answer", 1, sdp=big_sdp, version=3)
    assert MAX_MESSAGE_BYTES < len(answer) < MAX_SDP_MESSAGE_BYTES
    assert decode(answer).data["version"] == 3
    assert decode(_msg("publish", 2, sdp=big_sdp)).type == "publish"
    # Any other request of that size is refused, by id.
    err = _fails(_msg("trickle", 3, target="publisher", candidate=big_sdp), "too_large", str(MAX_MESSAGE_BYTES))
    assert (err.id, err.type) == (3, "trickle")
    # An SDP request past its own limit is refused too.
    huge = _msg("subscriber_answer", 4, sdp="a" * MAX_SDP_MESSAGE_BYTES, version=1)
    _fails(huge, "too_large", str(MAX_SDP_MESSAGE_BYTES))


def test_exactly_max_size_is_accepted() -> None:
    base = _msg("ping", 1, pad="")
    raw = base[:-2] + "x" * (MAX_MESSAGE_BYTES - len(base)) + base[-2:]
    assert len(raw.encode()) == MAX_MESSAGE_BYTES
    assert decode(raw).type == "ping"


@pytest.mark.parametrize("raw", ["", "{", "nope", b"\xff\xfe", "[" * 10_000])
def test_bad_json(raw: str | bytes) -> None:
    err = _fails(raw, "bad_json")
    assert err.id is None
    assert err.to_message() == {
        "type": "error",
        "error": {"code": "bad_json", "message": err.message},
    }


def test_utf16_bytes_are_not_sniffed() -> None:
    _fails(_msg("ping").encode("utf-16"), "bad_json")


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("[]", "JSON object"),
        ("1", "JSON object"),
        ('{"id": 1}', "'type'"),
        ('{"type": 3, "id": 1}', "'type'"),
        ('{"type": "ping"}', "'id'"),
        ('{"type": "ping", "id": null}', "'id'"),
        ('{"type": "ping", "id": 1.5}', "'id'"),
        ('{"type": "ping", "id": true}', "'id'"),
        ('{"type": "ping", "id": [1]}', "'id'"),
    ],
)
def test_bad_envelope(raw: str, fragment: str) -> None:
    err = _fails(raw, "bad_request", fragment)
    assert err.id is None  # nothing to echo: the reply is an error event


def test_unknown_type_keeps_id() -> None:
    err = _fails(_msg("frobnicate", 42), "unknown_type", "'frobnicate'")
    assert (err.id, err.type) == (42, "frobnicate")
    assert err.to_message() == {
        "type": "frobnicate",
        "id": 42,
        "ok": False,
        "error": {"code": "unknown_type", "message": err.message},
    }


def test_unsupported_version() -> None:
    err = _fails(_msg("hello", 1, version=2), "unsupported_version", str(PROTOCOL_VERSION))
    assert err.id == 1


# --- per-type field errors ----------------------------------------------------------------

FIELD_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("hello", {}, "'version' is required"),
    ("hello", {"version": "1"}, "'version' must be an integer"),
    ("hello", {"version": True}, "'version' must be an integer"),
    ("join", {}, "'token' is required"),
    ("join", {"token": 1}, "'token' must be a string"),
    ("join", {"token": ""}, "'token' must be non-empty"),
    ("join", {"token": "t", "auto_subscribe": "yes"}, "'auto_subscribe' must be a boolean"),
    ("publish", {}, "'sdp' is required"),
    ("publish", {"sdp": None}, "'sdp' must be a string"),
    ("publish", {"sdp": "v=0", "tracks": []}, "'tracks' must be an object"),
    ("publish", {"sdp": "v=0", "tracks": {"t": 1}}, "'tracks.t' must be an object"),
    ("publish", {"sdp": "v=0", "tracks": {"t": {"source": 1}}}, "'tracks.t.source'"),
    ("publish", {"sdp": "v=0", "tracks": {"t": {"name": []}}}, "'tracks.t.name'"),
    ("subscriber_answer", {"version": 1}, "'sdp' is required"),
    ("subscriber_answer", {"sdp": "v=0"}, "'version' is required"),
    ("subscriber_answer", {"sdp": "v=0", "version": 1.0}, "'version' must be an integer"),
    ("trickle", {"candidate": None}, "'target' is required"),
    ("trickle", {"target": "both", "candidate": None}, "'target' must be one of publisher"),
    ("trickle", {"target": "publisher"}, "'candidate' is required"),
    ("trickle", {"target": "publisher", "candidate": "c"}, "'candidate' must be an object"),
    ("subscribe", {}, "'track_sids' is required"),
    ("subscribe", {"track_sids": "TR_a"}, "'track_sids' must be a list"),
    ("subscribe", {"track_sids": ["a", 2]}, "'track_sids[1]' must be a string"),
    ("subscribe", {"track_sids": ["a"] * 101}, "at most 100"),
    ("unsubscribe", {"track_sids": None}, "'track_sids' must be a list"),
    ("mute", {"muted": True}, "'track_sid' is required"),
    ("mute", {"track_sid": "a"}, "'muted' is required"),
    ("mute", {"track_sid": "a", "muted": 1}, "'muted' must be a boolean"),
    ("update_subscription", {}, "'track_sid' is required"),
    ("update_subscription", {"track_sid": "a", "max_layer": "x"}, "'max_layer' must be one"),
    ("update_subscription", {"track_sid": "a", "width": -1}, "'width' must be an integer"),
    ("update_subscription", {"track_sid": "a", "width": 10001}, "'width'"),
    ("update_subscription", {"track_sid": "a", "enabled": 1}, "'enabled' must be a boolean"),
    ("update_subscription", {"track_sid": "a", "height": 1.5}, "'height'"),
    ("update_subscription", {"track_sid": "a", "height": True}, "'height'"),
    ("set_captions", {}, "'enabled' is required"),
    ("set_captions", {"enabled": "yes"}, "'enabled' must be a boolean"),
    ("set_captions", {"enabled": True, "backend": "kaldi"}, "'backend' must be one of whisper, vosk"),
    ("set_captions", {"enabled": True, "language": "english please"}, "'language' must be a language code"),
    ("set_captions", {"enabled": True, "language": 7}, "'language'"),
]


@pytest.mark.parametrize(("type_", "fields", "fragment"), FIELD_ERRORS)
def test_field_errors(type_: str, fields: dict[str, Any], fragment: str) -> None:
    err = _fails(_msg(type_, "r1", **fields), "bad_request", fragment)
    assert (err.id, err.type) == ("r1", type_)
    reply = err.to_message()
    assert reply["id"] == "r1" and reply["ok"] is False


def test_max_track_sids_accepted() -> None:
    assert len(decode(_msg("subscribe", track_sids=["a"] * 100)).data["track_sids"]) == 100


def test_validate_matches_decode() -> None:
    assert validate({"type": "ping", "id": 1}) == decode(_msg("ping"))
    with pytest.raises(ProtocolError) as info:
        validate([1])
    assert info.value.code == "bad_request"


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
@settings(max_examples=300, deadline=None)
def test_decode_only_raises_protocol_error(raw: str | bytes) -> None:
    try:
        decode(raw)
    except ProtocolError:
        pass


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)


@given(
    st.sampled_from(sorted(REQUEST_TYPES) + ["x"]),
    st.one_of(st.integers(), st.text(max_size=5), st.none()),
    st.dictionaries(
        st.sampled_from(
            [
                "version",
                "token",
                "auto_subscribe",
                "sdp",
                "tracks",
                "target",
                "candidate",
                "track_sids",
                "track_sid",
                "muted",
                "max_layer",
                "width",
                "height",
            ]
        ),
        _json,
    ),
)
@settings(max_examples=200, deadline=None)
def test_structured_fuzz_only_raises_protocol_error(
    type_: str, id_: Any, fields: dict[str, Any]
) -> None:
    try:
        req = decode(json.dumps({"type": type_, "id": id_, **fields}))
    except ProtocolError as exc:
        assert exc.code in {"bad_request", "unknown_type", "unsupported_version", "bad_json"}
    else:
        assert req.type == type_ and req.id == id_


# --- outbound -----------------------------------------------------------------------------


def test_builders() -> None:
    req = Request("join", 5, {})
    assert ok(req, room={"name": "r"}) == {
        "type": "join",
        "id": 5,
        "ok": True,
        "room": {"name": "r"},
    }
    assert error_reply("join", 5, "forbidden", "no") == {
        "type": "join",
        "id": 5,
        "ok": False,
        "error": {"code": "forbidden", "message": "no"},
    }
    assert event("participant_left", sid="PA_1") == {"type": "participant_left", "sid": "PA_1"}
    assert encode({"a": "é", "b": [1]}) == '{"a":"é","b":[1]}'


# --- QUIC framing -------------------------------------------------------------------------

MSGS = [{"type": "ping", "id": i, "pad": "é" * i} for i in range(5)]


def test_frame_layout() -> None:
    data = frame({"type": "ping", "id": 1})
    body = b'{"type":"ping","id":1}'
    assert data == struct.pack("!I", len(body)) + body


def test_decoder_whole_stream() -> None:
    stream = b"".join(frame(m) for m in MSGS)
    assert FrameDecoder().feed(stream) == MSGS


def test_decoder_one_byte_chunks() -> None:
    stream = b"".join(frame(m) for m in MSGS)
    dec = FrameDecoder()
    out: list[Any] = []
    for i in range(len(stream)):
        out += dec.feed(stream[i : i + 1])
    assert out == MSGS
    assert dec.buffered == 0


@given(st.lists(st.integers(min_value=0, max_value=50), max_size=20))
def test_decoder_any_chunking(cuts: list[int]) -> None:
    stream = b"".join(frame(m) for m in MSGS)
    dec = FrameDecoder()
    out: list[Any] = []
    pos = 0
    for n in cuts:
        out += dec.feed(stream[pos : pos + n])
        pos += n
    out += dec.feed(stream[pos:])
    assert out == MSGS


def test_decoder_bad_frames_do_not_lose_good_ones() -> None:
    bad_json = struct.pack("!I", 3) + b"{{{"
    not_obj = struct.pack("!I", 2) + b"[]"
    bad_utf8 = struct.pack("!I", 2) + b"\xff\xfe"
    out = FrameDecoder().feed(frame(MSGS[0]) + bad_json + not_obj + bad_utf8 + frame(MSGS[1]))
    assert out[0] == MSGS[0] and out[4] == MSGS[1]
    assert [e.code for e in out[1:4] if isinstance(e, ProtocolError)] == [
        "bad_json",
        "bad_request",
        "bad_json",
    ]


@pytest.mark.parametrize("chunk", [1, 7, 4096, 10**6])
def test_decoder_oversized_frame_skipped_and_resyncs(chunk: int) -> None:
    limit = 100
    big = struct.pack("!I", limit + 1) + b"z" * (limit + 1)
    stream = frame(MSGS[0]) + big + frame(MSGS[1])
    dec = FrameDecoder(max_bytes=limit)
    out: list[Any] = []
    for i in range(0, len(stream), chunk):
        out += dec.feed(stream[i : i + chunk])
        assert dec.buffered <= limit + 4  # never buffers the oversized body
    assert out[0] == MSGS[0] and out[2] == MSGS[1]
    assert isinstance(out[1], ProtocolError) and out[1].code == "too_large"


def test_decoder_exact_limit_accepted() -> None:
    body = encode(MSGS[0]).encode()
    dec = FrameDecoder(max_bytes=len(body))
    assert dec.feed(frame(MSGS[0])) == [MSGS[0]]


def test_decoder_then_validate() -> None:
    (msg,) = FrameDecoder().feed(frame({"type": "mute", "id": 9, "track_sid": "a", "muted": 0}))
    assert isinstance(msg, dict)
    with pytest.raises(ProtocolError) as info:
        validate(msg)
    assert info.value.code == "bad_request" and info.value.id == 9
