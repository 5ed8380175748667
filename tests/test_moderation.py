"""Room moderation over signaling and REST, the audit log and its CLI (signaling-only
clients on 127.0.0.1: no media)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from clients.channel import FerryError
from clients.lite import LiteClient
from signaling.app import FerryServer
from signaling.audit import read_entries
from signaling.cli import main as ferry_main

from .conftest import make_config, wait_until


@pytest.fixture
async def mod_server(tmp_path: Path):
    srv = FerryServer(make_config(recordings_dir=str(tmp_path / "recordings")))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def joined(server: FerryServer, room: str, identity: str, **grants: Any) -> LiteClient:
    client = LiteClient(name=identity)
    await client.connect(server.ws_url)
    await client.join(server.token(room, identity, **grants), auto_subscribe=False)
    return client


async def api(server: FerryServer, method: str, path: str, token: str | None, body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.request(
        method, server.http_url + path, headers=headers, json=body
    ) as res:
        return res.status, json.loads(await res.text())


def events(client: LiteClient, kind: str) -> list[dict[str, Any]]:
    return [e for e in client.events if e.get("type") == kind]


async def refused(client: LiteClient, kind: str, **fields: Any) -> str:
    with pytest.raises(FerryError) as info:
        await client.request(kind, **fields)
    return info.value.code


async def test_students_cannot_moderate_nor_promote_themselves(mod_server: FerryServer) -> None:
    server = mod_server
    teacher = await joined(server, "class", "teacher", room_admin=True)
    student = await joined(server, "class", "student", can_publish=False)
    try:
        assert await refused(student, "list_participants") == "forbidden"
        assert await refused(student, "remove_participant", identity="teacher") == "forbidden"
        assert await refused(student, "set_room_locked", locked=True) == "forbidden"
        assert await refused(student, "update_participant", permission={"canPublish": True}) == "forbidden"
        assert await refused(
            student, "update_participant", identity="student", permission={"canPublish": True}
        ) == "forbidden"
        # Not even a teacher hands out roomAdmin: it comes only from a token.
        assert await refused(
            teacher, "update_participant", identity="student", permission={"roomAdmin": True}
        ) == "forbidden"
        room = server.rooms.rooms["class"]
        assert not room.by_identity("student").claims.grants.can_publish
        # A student may raise a hand and set its own metadata; everyone is told.
        await student.request("raise_hand", raised=True)
        await teacher.wait_for(lambda: events(teacher, "hand_raised"))
        assert events(teacher, "hand_raised")[0]["identity"] == "student"
        await student.request("update_participant", metadata={"seat": 3})
        await teacher.wait_for(lambda: events(teacher, "metadata_changed"))
        listing = await teacher.request("list_participants")
        mine = next(p for p in listing["participants"] if p["identity"] == "student")
        assert mine["hand_raised"] is True and mine["metadata"] == {"seat": 3}
        assert mine["permissions"]["canPublish"] is False
        # But not another's hand.
        assert await refused(student, "raise_hand", raised=False, identity="teacher") == "forbidden"
    finally:
        await student.close()
        await teacher.close()


async def test_bad_moderation_input_gets_coded_errors(mod_server: FerryServer) -> None:
    server = mod_server
    teacher = await joined(server, "class", "teacher", room_admin=True)
    student = await joined(server, "class", "student", can_publish=False)
    try:
        assert await refused(teacher, "update_room_metadata", metadata="x" * 5000) == "too_large"
        assert await refused(teacher, "update_participant", identity="student", metadata={"a": "x" * 5000}) == "too_large"
        assert await refused(teacher, "mute_published_track", identity="student", track_sid="TR_x", muted=True) == "not_found"
        assert await refused(teacher, "update_participant", identity="student", permission={"canPublish": 1}) == "bad_request"
        assert await refused(
            teacher, "update_participant", identity="student", permission={"canPublishSources": ["tv"]}
        ) == "bad_request"
        await student.leave()
        room = server.rooms.rooms["class"]
        await wait_until(lambda: room.by_identity("student") is None)
        # A participant that left is not found.
        assert await refused(teacher, "remove_participant", identity="student") == "not_found"
        assert await refused(teacher, "raise_hand", identity="student", raised=False) == "not_found"
        await teacher.request("update_room_metadata", metadata={"topic": "fractions"})
        assert server.rooms.rooms["class"].info()["metadata"] == {"topic": "fractions"}
    finally:
        await student.close()
        await teacher.close()


async def test_rest_moderation_is_scoped_to_the_rooms_admin_token(mod_server: FerryServer) -> None:
    server = mod_server
    student = await joined(server, "class", "student", can_publish=False)
    other = await joined(server, "other", "bob")
    try:
        own = server.token("class", "teacher", room_admin=True)
        everywhere = server.token("*", "ops", room_admin=True)
        elsewhere = server.token("other", "teacher2", room_admin=True)
        plain = server.token("class", "student2")
        status, body = await api(server, "GET", "/api/rooms/class/participants", plain)
        assert (status, body["error"]["code"]) == (403, "forbidden")
        status, body = await api(server, "GET", "/api/rooms/class/participants", elsewhere)
        assert (status, body["error"]["code"]) == (403, "forbidden")
        status, body = await api(server, "GET", "/api/rooms/class/participants", "garbage")
        assert (status, body["error"]["code"]) == (401, "unauthorized")
        status, body = await api(server, "GET", "/api/rooms/class/participants", everywhere)
        assert status == 200 and [p["identity"] for p in body["participants"]] == ["student"]
        status, body = await api(server, "GET", "/api/rooms/class/participants/bob", own)
        assert (status, body["error"]["code"]) == (404, "not_found")  # bob is in another room
        status, body = await api(
            server, "PATCH", "/api/rooms/class/participants/student", own,
            {"permission": {"canPublish": True, "canPublishSources": ["microphone"]}},
        )
        assert status == 200, body
        assert body["participant"]["permissions"]["canPublishSources"] == ["microphone"]
        await student.wait_for(lambda: events(student, "permissions_changed"))
        assert events(student, "permissions_changed")[0]["permissions"]["canPublish"] is True
        status, body = await api(server, "POST", "/api/rooms/class/lock", own, {"locked": True})
        assert status == 200, body
        await student.wait_for(lambda: events(student, "room_locked"))
        status, body = await api(server, "POST", "/api/rooms/class/metadata", own, {"metadata": "y" * 5000})
        assert (status, body["error"]["code"]) == (413, "too_large")
        late = LiteClient(name="late")
        await late.connect(server.ws_url)
        with pytest.raises(FerryError) as info:
            await late.join(server.token("class", "late"), auto_subscribe=False)
        assert info.value.code == "room_locked"
        await late.close()
        # A teacher reconnecting is let in.
        teacher = await joined(server, "class", "teacher", room_admin=True)
        await teacher.close()
        status, body = await api(server, "DELETE", "/api/rooms/class/participants/student", own)
        assert status == 200, body
        await student.wait_for(lambda: any(e.get("reason") == "removed" for e in events(student, "leave")))
        assert server.rooms.rooms["class"].by_identity("student") is None
        status, body = await api(server, "DELETE", "/api/rooms/class/participants/student", own)
        assert (status, body["error"]["code"]) == (404, "not_found")
        status, body = await api(server, "DELETE", "/api/rooms/other", everywhere)
        assert status == 200, body
        await other.wait_for(lambda: any(e.get("reason") == "room_closed" for e in events(other, "leave")))
        assert "other" not in server.rooms.rooms
    finally:
        await student.close()
        await other.close()
    # Every step is in the audit log, and `ferry audit` prints it.
    assert server.audit.flush()
    entries = list(read_entries(server.config.audit_dir or "", room="class"))
    actions = [e["action"] for e in entries if e["kind"] == "moderation"]
    assert actions == ["update_participant", "set_room_locked", "remove_participant"], actions
    assert all(e["by"] == "api:teacher" for e in entries if e["kind"] == "moderation")
    joins = [e for e in entries if e["kind"] == "join"]
    assert joins[0]["identity"] == "student" and joins[0]["remote"] == "127.0.0.1"
    assert joins[0]["grants"]["canPublish"] is False
    assert any(e["kind"] == "refused" and e["code"] == "room_locked" and e["identity"] == "late" for e in entries)
    everything = list(read_entries(server.config.audit_dir or ""))
    assert any(e["kind"] == "refused" and e.get("path") == "/api/rooms/class/participants" for e in everything)
    assert everything[0]["kind"] == "config" and "api_secret" not in json.dumps(everything[0])
    async with aiohttp.ClientSession() as http, http.get(server.http_url + "/metrics") as res:
        metrics = await res.text()
    assert "ferry_moderation_actions_total 4" in metrics, metrics  # update, lock, remove, close
    assert "ferry_audit_entries_total" in metrics


def test_ferry_audit_prints_a_rooms_entries_since_a_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from signaling.audit import AuditLog

    audit = AuditLog(tmp_path / "audit")
    audit.write("join", room="a", identity="x")
    audit.write("join", room="b", identity="y")
    audit.write("moderation", room="a", action="remove_participant", by="t", identity="x")
    audit.close()
    assert ferry_main(["audit", "--dir", str(tmp_path / "audit"), "--room", "a", "--since", "1h"], env={}) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["kind"], e["identity"]) for e in lines] == [("join", "x"), ("moderation", "x")]
    assert ferry_main(["audit", "--dir", str(tmp_path / "audit"), "--since", "bogus"], env={}) == 2


async def test_allowed_sources_limit_publishing_and_revoking_unpublishes(mod_server: FerryServer) -> None:
    from clients.lite import encode_opus_clip, encode_vp8_clip

    server = mod_server
    teacher = await joined(server, "class", "teacher", room_admin=True)
    cam = await joined(server, "class", "cam", can_publish=False)
    mic = await joined(server, "class", "mic", can_publish=False)
    try:
        for who in ("cam", "mic"):
            await teacher.request("update_participant", identity=who,
                                  permission={"canPublish": True, "canPublishSources": ["microphone"]})
        audio = encode_opus_clip(1.0)
        with pytest.raises(FerryError) as info:  # a camera with the microphone: refused whole
            await cam.publish_vp8(encode_vp8_clip(160, 96, 5, 100_000), simulcast_rids=None, audio=audio,
                                  wait_connected=False)
        assert info.value.code == "forbidden" and "camera" in info.value.message
        room = server.rooms.rooms["class"]
        assert room.by_identity("cam").tracks() == []
        tracks = await mic.publish_audio(audio, wait_connected=False)
        assert [t["source"] for t in tracks] == ["microphone"]
        await teacher.request("update_participant", identity="mic", permission={"canPublish": False})
        assert room.by_identity("mic").tracks() == []
        await teacher.wait_for(lambda: any(
            e.get("type") == "track_unpublished" and e.get("track_sid") == tracks[0]["sid"] for e in teacher.events
        ))
        changed = await mic.wait_for(lambda: [e for e in events(mic, "permissions_changed") if e["unpublished"]])
        assert changed[0]["unpublished"] == [tracks[0]["sid"]]
        assert changed[0]["permissions"]["canPublish"] is False
    finally:
        for client in (cam, mic, teacher):
            await client.close()
