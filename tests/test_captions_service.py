"""Captions on the server side with a stand-in engine: control, events, late
joiners, transcripts (files, REST, recording), metrics, and an engine that cannot load.

A real Ferry on 127.0.0.1 and real LiteClient publishers (VP8 + Opus); only the
recognizer is `tests/captions_fake.py`, which says one utterance per second of audio.
Speech recognition itself is in tests/test_captions_speech.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import webvtt

from asr.api import CaptionsUnavailable
from clients.channel import FerryError
from clients.lite import LiteClient, encode_opus_clip, encode_vp8_clip
from recorder.captions import load_captions
from signaling.app import FerryServer

from .captions_fake import FakeEngine
from .conftest import make_config, wait_until


@pytest.fixture
async def cc_server(tmp_path: Path):
    FakeEngine.instances, FakeEngine.fail = [], None
    srv = FerryServer(make_config(recordings_dir=str(tmp_path / "rec"), captions="whisper"))
    srv.captions.engine_factory = FakeEngine
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()
        FakeEngine.fail = None


async def join(server: FerryServer, room: str, identity: str, **grants: Any) -> tuple[LiteClient, dict[str, Any]]:
    client = LiteClient(name=identity)
    await client.connect(server.ws_url)
    reply = await client.join(server.token(room, identity, name=identity.title(), **grants), auto_subscribe=False)
    return client, reply


async def speaker(server: FerryServer, room: str, identity: str) -> LiteClient:
    client, _ = await join(server, room, identity)
    video = encode_vp8_clip(64, 64, 10, 50_000, keyframe_interval=10)
    await client.publish_vp8(video, fps=5, simulcast_rids=None, audio=encode_opus_clip(2.0))
    return client


def captions(client: LiteClient, final: bool | None = None) -> list[dict[str, Any]]:
    return [e for e in client.events if e.get("type") == "caption" and (final is None or e["final"] is final)]


async def get(server: FerryServer, path: str, token: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(server.http_url + path, headers=headers) as res:
        return res.status, await res.text()


async def test_captions_of_a_speaker_reach_everyone_and_a_late_joiner_gets_the_last_minute(cc_server: FerryServer) -> None:
    server = cc_server
    listener, reply = await join(server, "class", "listener")
    assert reply["captions"] == {"enabled": True, "backend": "whisper", "language": "en", "by": None, "recent": []}
    alice = await speaker(server, "class", "alice")
    try:
        await wait_until(lambda: len(captions(listener, final=True)) >= 2, 15)
        partial, final = captions(listener, False)[0], captions(listener, True)[0]
        fields = {"participant_sid", "track_sid", "identity", "text", "final", "start_ms", "end_ms", "utterance"}
        assert set(final) - {"type", "seq"} == fields  # seq: the session's event number
        assert (final["identity"], final["text"], final["utterance"]) == ("alice", "utterance 1", 1)
        assert (partial["utterance"], partial["text"]) == (1, "utter")
        assert final["participant_sid"] == alice.participant["sid"]
        audio = next(t for t in alice.published if t["kind"] == "audio")
        assert final["track_sid"] == audio["sid"]
        # The speaker hears its own captions too, and the status of its track.
        assert captions(alice, True)
        await wait_until(lambda: any(e.get("type") == "captions_status" for e in listener.events), 5)
        status = next(e for e in listener.events if e.get("type") == "captions_status")
        assert {k: v for k, v in status.items() if k != "seq"} == {
            "type": "captions_status", "track_sid": audio["sid"], "state": "lagging"
        }
        late, reply = await join(server, "class", "late")
        recent = reply["captions"]["recent"]
        assert [c["text"] for c in recent][:2] == ["utterance 1", "utterance 2"]
        assert [c["utterance"] for c in recent][:2] == [1, 2]
        assert all(c["final"] and set(c) == fields for c in recent)
        await late.close()
    finally:
        await alice.close()
        await listener.close()


async def test_set_captions_needs_room_admin_and_is_announced_to_the_room(cc_server: FerryServer) -> None:
    server = cc_server
    alice = await speaker(server, "class", "alice")
    student, _ = await join(server, "class", "student")
    host, _ = await join(server, "class", "host", room_admin=True)
    try:
        engine = FakeEngine.instances[0]
        await wait_until(lambda: len(engine.captioners) == 1, 10)
        with pytest.raises(FerryError) as refused:
            await student.request("set_captions", enabled=False)
        assert refused.value.code == "forbidden"
        with pytest.raises(FerryError) as bad:
            await host.request("set_captions", enabled=True, backend="kaldi")
        assert bad.value.code == "bad_request"
        reply = await host.request("set_captions", enabled=False)
        assert reply["captions"] == {"enabled": False, "backend": "whisper", "language": "en", "by": "host"}
        assert engine.captioners[0].closed
        await wait_until(lambda: any(e.get("type") == "captions_state" for e in student.events), 5)
        state = next(e for e in student.events if e.get("type") == "captions_state")
        state.pop("seq", None)
        assert state == {"type": "captions_state", "enabled": False, "backend": "whisper", "language": "en", "by": "host"}
        count = len(captions(student))
        await host.request("set_captions", enabled=True, language="ko")
        assert len(engine.captioners) == 2 and engine.captioners[1].language == "ko"
        await wait_until(lambda: len(captions(student, True)) > 0 and len(captions(student)) > count, 10)
        # A language the model lacks: a coded error, and captions stay off.
        with pytest.raises(FerryError) as lacking:
            await host.request("set_captions", enabled=True, language="fr")
        assert lacking.value.code == "captions_unavailable" and "fr" in lacking.value.message
        assert server.captions.state("class")["enabled"] is False  # type: ignore[index]
        # Another backend loads its own engine, lazily.
        reply = await host.request("set_captions", enabled=True, backend="vosk", language="ko")
        assert reply["captions"]["backend"] == "vosk"
        assert sorted(e.config.backend for e in FakeEngine.instances) == ["vosk", "whisper"]
    finally:
        for client in (alice, student, host):
            await client.close()


async def test_unpublish_and_leave_close_the_captioners(cc_server: FerryServer) -> None:
    server = cc_server
    alice = await speaker(server, "class", "alice")
    bob = await speaker(server, "class", "bob")
    engine = FakeEngine.instances[0]
    await wait_until(lambda: len(engine.captioners) == 2, 10)
    by_identity = {c.identity: c for c in engine.captioners}
    await alice.leave()  # her captioner closes, bob's goes on
    await alice.close()
    await wait_until(lambda: by_identity["alice"].closed, 5)
    assert not by_identity["bob"].closed
    await wait_until(lambda: server.captions.snapshot()["captions_tracks"] == 1, 5)
    await bob.leave()
    await bob.close()
    await wait_until(lambda: by_identity["bob"].closed, 5)


async def test_transcript_is_written_served_and_kept_after_the_room_closes(cc_server: FerryServer, tmp_path: Path) -> None:
    server = cc_server
    ops = server.token("*", "ops", room_admin=True)
    alice = await speaker(server, "class", "alice")
    host, _ = await join(server, "class", "host", room_record=True)
    try:
        started = await host.request("start_recording")
        await wait_until(lambda: len(captions(host, True)) >= 3, 20)
        await host.request("stop_recording")
        status, text = await get(server, "/api/rooms/class/transcript?format=vtt", ops)
        assert status == 200
        vtt = webvtt.from_string(text)
        assert len(vtt.captions) >= 3
        assert vtt.captions[0].voice == "Alice" and vtt.captions[0].text == "utterance 1"
        first_cue, second_cue = vtt.captions[0], vtt.captions[1]
        assert first_cue.start_time.in_milliseconds() < first_cue.end_time.in_milliseconds()
        assert first_cue.end_time.in_milliseconds() <= second_cue.start_time.in_milliseconds()
        status, text = await get(server, "/api/rooms/class/transcript?format=json", server.token("class", "h", room_record=True))
        assert status == 200
        body = json.loads(text)
        assert body["room"] == "class" and body["version"] == 1
        first = body["segments"][0]
        assert (first["speaker"], first["name"], first["text"]) == ("alice", "Alice", "utterance 1")
        assert first["start_ms"] < first["end_ms"]
        status, text = await get(server, "/api/rooms/class/transcript?format=txt", ops)
        assert status == 200 and text.splitlines()[0].endswith("UTC] Alice: utterance 1")
        # The recording's own transcript, as the composite's subtitle track reads it.
        rec_dir = Path(started["dir"])
        await wait_until(lambda: (rec_dir / "transcript.json").exists(), 5)
        subs = load_captions(rec_dir, first["start_ms"] / 1000.0 - 1.0, {"alice": "Alice"})
        assert subs and subs[0].text == "Alice: utterance 1"
    finally:
        for client in (alice, host):
            await client.leave()
            await client.close()
    # Files on disk, and served after the room closed.
    room_dir = Path(server.config.recordings_dir) / "class"
    await wait_until(lambda: "class" not in server.rooms.rooms, 10)
    await wait_until(lambda: not server.captions._flushing, 5)
    for fmt in ("vtt", "json", "txt"):
        assert (room_dir / f"transcript.{fmt}").stat().st_size > 0
    on_disk = json.loads((room_dir / "transcript.json").read_text())
    assert on_disk["segments"][0]["text"] == "utterance 1"
    status, text = await get(server, "/api/rooms/class/transcript?format=vtt", ops)
    assert status == 200 and len(webvtt.from_string(text).captions) == len(on_disk["segments"])


async def test_a_room_opened_again_under_its_name_adds_to_its_transcript(cc_server: FerryServer) -> None:
    server = cc_server
    ops = server.token("*", "ops", room_admin=True)
    sids = []
    for identity in ("alice", "bob"):
        client = await speaker(server, "class", identity)
        await wait_until(lambda c=client: len(captions(c, True)) >= 1, 15)
        sids.append(server.rooms.rooms["class"].sid)
        await client.leave()
        await client.close()
        await wait_until(lambda: "class" not in server.rooms.rooms, 10)
        await wait_until(lambda: not server.captions._flushing, 5)
    status, text = await get(server, "/api/rooms/class/transcript?format=json", ops)
    assert status == 200
    segments = json.loads(text)["segments"]
    assert [s["speaker"] for s in segments][0] == "alice" and segments[-1]["speaker"] == "bob"
    assert [s["room_sid"] for s in segments][0] == sids[0] and segments[-1]["room_sid"] == sids[1]


async def test_transcript_endpoint_errors_are_coded(cc_server: FerryServer) -> None:
    server = cc_server
    client, _ = await join(server, "class", "alice")
    try:
        cases = [
            ("/api/rooms/class/transcript", None, 401, "unauthorized"),
            ("/api/rooms/class/transcript", "not-a-token", 401, "unauthorized"),
            ("/api/rooms/class/transcript", server.token("class", "s"), 403, "forbidden"),
            ("/api/rooms/class/transcript", server.token("other", "h", room_admin=True), 403, "forbidden"),
            ("/api/rooms/class/transcript?format=srt", server.token("class", "h", room_admin=True), 400, "bad_request"),
            ("/api/rooms/nowhere/transcript", server.token("*", "ops", room_admin=True), 404, "not_found"),
        ]
        for path, token, status, code in cases:
            got, text = await get(server, path, token)
            assert (got, json.loads(text)["error"]["code"]) == (status, code), (path, text)
        status, text = await get(server, "/api/rooms/class/transcript", server.token("class", "h", room_admin=True))
        assert status == 200 and text.startswith("WEBVTT")
    finally:
        await client.close()


async def test_metrics_count_captions(cc_server: FerryServer) -> None:
    server = cc_server
    alice = await speaker(server, "class", "alice")
    try:
        await wait_until(lambda: server.captions.finals >= 2, 15)
        status, text = await get(server, "/metrics", None)
    finally:
        await alice.close()
    assert status == 200
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line.startswith("ferry_captions")}
    assert values["ferry_captions_finals_total"] >= 2
    assert values["ferry_captions_partials_total"] >= 2
    assert values["ferry_captions_active_tracks"] == 1
    assert values["ferry_captions_rooms"] == 1
    assert values['ferry_captions_status_total{state="lagging"}'] == 1
    assert values["ferry_captions_latency_seconds_count"] >= 2
    assert values['ferry_captions_latency_seconds_bucket{le="0.25"}'] >= 2  # the fake answers at once
    assert values['ferry_captions_engine{backend="whisper",name="active_tracks"}'] == 1


async def test_an_engine_that_cannot_load_leaves_rooms_working_without_captions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    FakeEngine.instances, FakeEngine.fail = [], "no Whisper model at /nowhere (whisper_model)"
    server = FerryServer(make_config(recordings_dir=str(tmp_path / "rec"), captions="whisper"))
    server.captions.engine_factory = FakeEngine
    caplog.set_level(logging.INFO, "ferry.signaling.captions")
    await server.start()
    try:
        await wait_until(lambda: server.captions.available() == {"whisper": "unavailable"}, 5)
        lines = [r.getMessage() for r in caplog.records if r.name == "ferry.signaling.captions"]
        assert lines == ["captions unavailable (whisper): no Whisper model at /nowhere (whisper_model)"]
        alice = await speaker(server, "class", "alice")
        host, reply = await join(server, "class", "host", room_admin=True)
        assert reply["captions"]["enabled"] is False
        with pytest.raises(FerryError) as refused:
            await host.request("set_captions", enabled=True)
        assert refused.value.code == "captions_unavailable" and "/nowhere" in refused.value.message
        await host.request("subscribe", track_sids=[t["sid"] for t in alice.published])
        await wait_until(lambda: host.stats()["received_totals"]["packets"] > 50, 10)  # media flows
        assert not captions(host)
        await alice.close()
        await host.close()
    finally:
        await server.stop()
        FakeEngine.fail = None


async def test_an_engine_refusing_the_language_loads_again_for_another(tmp_path: Path) -> None:
    FakeEngine.instances = []
    server = FerryServer(make_config(recordings_dir=str(tmp_path / "rec"), captions="off"))

    def korean_only(config: Any) -> FakeEngine:
        if config.language != "ko":
            raise CaptionsUnavailable(f"the model is for 'ko'; it cannot caption {config.language!r}", "language_unsupported")
        return FakeEngine(config)

    server.captions.engine_factory = korean_only
    await server.start()
    try:
        host, _ = await join(server, "class", "host", room_admin=True)
        with pytest.raises(FerryError) as refused:
            await host.request("set_captions", enabled=True, backend="vosk")  # the room's "en"
        assert refused.value.code == "captions_unavailable" and "'en'" in refused.value.message
        reply = await host.request("set_captions", enabled=True, backend="vosk", language="ko")
        assert reply["captions"]["enabled"] is True and server.captions.available() == {"vosk": "ready"}
        await host.close()
    finally:
        await server.stop()


async def test_captions_off_loads_no_engine(tmp_path: Path) -> None:
    FakeEngine.instances = []
    server = FerryServer(make_config(recordings_dir=str(tmp_path / "rec"), captions="off"))
    server.captions.engine_factory = FakeEngine
    await server.start()
    try:
        alice = await speaker(server, "class", "alice")
        host, reply = await join(server, "class", "host", room_admin=True)
        assert reply["captions"]["enabled"] is False
        assert FakeEngine.instances == []
        reply = await host.request("set_captions", enabled=True)  # a room may still ask
        assert reply["captions"]["enabled"] is True
        await wait_until(lambda: len(captions(host, True)) >= 1, 10)
        await alice.close()
        await host.close()
    finally:
        await server.stop()
