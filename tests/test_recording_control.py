"""Recording a room end to end: REST and signaling control, files, events.

Real sockets on 127.0.0.1: LiteClient publishers (pre-encoded VP8 + Opus) through an
in-process Ferry, recorded into a temporary directory and read back with PyAV.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from clients.channel import FerryError
from clients.lite import LiteClient, encode_opus_clip, encode_vp8_clip
from recorder import manifest as mf
from recorder import mux
from signaling.app import FerryServer

from .conftest import make_config, wait_until
from .recorder_media import decode_count, probe

FPS = 30


@pytest.fixture
async def rec_server(tmp_path: Path):
    srv = FerryServer(make_config(recordings_dir=str(tmp_path / "recordings")))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def clips() -> tuple[list[bytes], list[bytes]]:
    return encode_vp8_clip(320, 180, 90, 300_000, keyframe_interval=30), encode_opus_clip(3.0)


async def publisher(server: FerryServer, room: str, identity: str, sent: list[int] | None = None) -> LiteClient:
    """A LiteClient publishing single-layer VP8 + Opus; `sent` collects its video RTP timestamps."""
    video, audio = clips()
    client = LiteClient(name=identity)
    await client.connect(server.ws_url)
    await client.join(server.token(room, identity), auto_subscribe=False)
    await client.publish_vp8(video, fps=FPS, simulcast_rids=None, audio=audio, wait_connected=False)
    if sent is not None:
        pub = client.publisher
        assert pub is not None
        original = pub._send_frame

        def send_frame(layer: Any, timestamp: int, now_ms: float) -> None:
            sent.append(timestamp)
            original(layer, timestamp, now_ms)

        pub._send_frame = send_frame  # type: ignore[method-assign]
    await client.wait_connected("publisher", 10.0)
    return client


async def api(server: FerryServer, method: str, path: str, token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.request(method, server.http_url + path, headers=headers) as res:
        return res.status, json.loads(await res.text())


def recorder_token(server: FerryServer, room: str = "*") -> str:
    return server.token(room, "ops", room_admin=True)


def within(ts: int, first: int, last: int) -> bool:
    return (ts - first) & 0xFFFFFFFF <= (last - first) & 0xFFFFFFFF


async def test_two_publishers_recorded_by_rest_every_file_plays_with_every_frame(rec_server: FerryServer) -> None:
    server = rec_server
    sent: dict[str, list[int]] = {"alice": [], "bob": []}
    clients = [await publisher(server, "class", name, sent[name]) for name in sent]
    try:
        room = server.rooms.rooms["class"]
        await wait_until(lambda: len(room.router.tracks) == 4, 10)
        token = server.token("class", "host", room_record=True)
        status, started = await api(server, "POST", "/api/rooms/class/recording", token)
        t_start = time.monotonic()
        assert status == 201, started
        directory = Path(started["dir"])
        assert directory.parent.parent == Path(server.config.recordings_dir)
        assert directory.name == started["id"]
        await asyncio.sleep(12.0)  # the recorded span
        status, stopped = await api(server, "DELETE", "/api/rooms/class/recording", token)
        t_stop = time.monotonic()
        assert status == 200, stopped
    finally:
        for client in clients:
            await client.close()
    span = t_stop - t_start
    manifest = mf.load(directory)
    assert (manifest.state, manifest.stop_reason) == ("stopped", "stopped")
    assert sorted(p.identity for p in manifest.participants) == ["alice", "bob"]
    assert sorted((t.kind, t.file.split("_")[0]) for t in manifest.tracks) == [
        ("audio", "alice"), ("audio", "bob"), ("video", "alice"), ("video", "bob"),
    ]
    lost = server.engine.snapshot()["upstream_unrecovered"]
    for track in manifest.tracks:
        path = str(directory / track.file)
        frames, duration, times, _ = probe(path)
        assert decode_count(path) == frames  # every frame decodes
        assert track.closed and track.error is None
        assert abs(duration - span) <= 0.02 * span, (track.file, duration, span)
        if track.kind == "video":
            identity = next(p.identity for p in manifest.participants if p.sid == track.participant_sid)
            assert track.first_rtp is not None and track.last_rtp is not None
            expected = sum(1 for ts in sent[identity] if within(ts, track.first_rtp, track.last_rtp))
            assert frames == expected - lost, (track.file, frames, expected, lost)
    # The listing shows both participants' files with sizes and durations.
    status, listing = await api(server, "GET", "/api/rooms/class/recordings", recorder_token(server))
    assert status == 200 and listing["active"] is None
    (entry,) = listing["recordings"]
    assert entry["id"] == started["id"] and entry["state"] == "stopped"
    assert len(entry["files"]) == 4
    for f in entry["files"]:
        assert f["size"] == (directory / f["file"]).stat().st_size > 0
        assert abs(f["duration_s"] - span) <= 0.02 * span
    cpu_s = server.recordings.snapshot()["recorder_writer_cpu_s"]
    per_track = 100.0 * float(cpu_s) / span / len(entry["files"])  # type: ignore[arg-type]
    print("RECORDING", json.dumps({"span_s": round(span, 3), "writer_cpu_pct_per_track": round(per_track, 3),
                                   "files": entry["files"]}))


async def test_recording_needs_the_grant_for_that_room_and_refuses_bad_requests(
    rec_server: FerryServer, tmp_path: Path
) -> None:
    server = rec_server
    client = await publisher(server, "class", "alice")
    try:
        path = "/api/rooms/class/recording"
        assert (await api(server, "POST", path, None))[0] == 401
        assert (await api(server, "POST", path, "not-a-jwt"))[1]["error"]["code"] == "unauthorized"
        plain = server.token("class", "bob")
        status, body = await api(server, "POST", path, plain)
        assert status == 403 and "roomRecord" in body["error"]["message"]
        other_room = server.token("other", "bob", room_record=True)
        assert (await api(server, "POST", path, other_room))[0] == 403
        assert (await api(server, "GET", "/api/rooms/class/recordings", plain))[0] == 403
        host = server.token("class", "host", room_record=True)
        status, body = await api(server, "DELETE", path, host)
        assert (status, body["error"]["code"]) == (409, "not_recording")
        status, body = await api(server, "POST", "/api/rooms/nobody-here/recording", recorder_token(server))
        assert (status, body["error"]["code"]) == (404, "not_found")
        status, first = await api(server, "POST", path, host)
        assert status == 201
        status, body = await api(server, "POST", path, recorder_token(server))
        assert (status, body["error"]["code"]) == (409, "already_recording")
        assert first["id"] in body["error"]["message"]
        status, listing = await api(server, "GET", "/api/rooms/class/recordings", host)
        assert listing["active"]["id"] == first["id"] and listing["recordings"][0]["state"] == "recording"
        status, rooms = await api(server, "GET", "/api/rooms", recorder_token(server))
        assert [r["recording"]["id"] for r in rooms["rooms"]] == [first["id"]]
        assert (await api(server, "DELETE", path, host))[0] == 200
        # An unwritable directory: a clear error, and the SFU goes on serving the room.
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        server.recordings.directory = blocker / "recordings"
        status, body = await api(server, "POST", path, host)
        assert (status, body["error"]["code"]) == (500, "storage_error")
        assert str(blocker) in body["error"]["message"]
        assert server.recordings.active("class") is None
        assert (await client.request("ping")) is not None
        viewer = LiteClient(name="viewer")
        await viewer.connect(server.ws_url)
        await viewer.join(server.token("class", "viewer"))
        await viewer.wait_for(lambda: any(c.packets > 10 for c in viewer.received.values()), 10)
        await viewer.close()
    finally:
        await client.close()


async def test_signaling_start_and_stop_reach_everyone_and_late_joiners_learn_it(rec_server: FerryServer) -> None:
    server = rec_server
    host = LiteClient(name="host")
    guest = await publisher(server, "class", "guest")
    late = LiteClient(name="late")
    try:
        await host.connect(server.ws_url)
        await host.join(server.token("class", "host", room_record=True), auto_subscribe=False)
        with pytest.raises(FerryError) as refused:
            await guest.request("start_recording")
        assert refused.value.code == "forbidden"
        with pytest.raises(FerryError) as not_started:
            await host.request("stop_recording")
        assert not_started.value.code == "not_recording"
        reply = await host.request("start_recording")
        rid = reply["recording_id"]
        assert Path(reply["dir"]).is_dir()
        with pytest.raises(FerryError) as again:
            await host.request("start_recording")
        assert again.value.code == "already_recording"
        for client in (host, guest):
            await client.wait_for(lambda c=client: any(
                e.get("type") == "recording_started" and e.get("recording_id") == rid for e in c.events), 5)
        await late.connect(server.ws_url)
        joined = await late.join(server.token("class", "late"), auto_subscribe=False)
        assert joined["recording"]["id"] == rid
        await wait_until(lambda: any(t.file.frames > 30 for t in server.recordings._active["class"].sinks.values()), 10)
        stopped = await host.request("stop_recording")
        assert stopped["recording_id"] == rid
        for client in (host, guest, late):
            await client.wait_for(lambda c=client: any(
                e.get("type") == "recording_stopped" and e.get("recording_id") == rid and e.get("reason") == "stopped"
                for e in c.events), 5)
        again_joined = LiteClient(name="later")
        await again_joined.connect(server.ws_url)
        assert (await again_joined.join(server.token("class", "later")))["recording"] is None
        await again_joined.close()
    finally:
        for client in (host, guest, late):
            await client.close()


async def test_tracks_published_mid_recording_and_rejoins_get_their_own_files(rec_server: FerryServer) -> None:
    server = rec_server
    alice = await publisher(server, "class", "alice")
    room = server.rooms.rooms["class"]
    try:
        await wait_until(lambda: len(room.router.tracks) == 2, 10)
        started = server.recordings.start("class")
        active = server.recordings._active["class"]
        bob = await publisher(server, "class", "bob")  # mid-recording
        await wait_until(lambda: len(active.sinks) == 4 and all(s.file.frames > 20 for s in active.sinks.values()), 10)
        mic = next(t["sid"] for t in alice.published if t["kind"] == "audio")
        await alice.request("mute", track_sid=mic, muted=True)
        muted_at = time.time()
        await alice.request("mute", track_sid=mic, muted=False)
        await alice.leave()  # her files are finalized at once
        await wait_until(lambda: len(active.sinks) == 2, 5)
        alice = await publisher(server, "class", "alice")  # a rejoin: new tracks, new files
        await wait_until(lambda: len(active.sinks) == 4 and all(s.file.frames > 20 for s in active.sinks.values()), 10)
        await bob.close()
        manifest = await server.recordings.stop("class")
    finally:
        await alice.close()
    directory = Path(str(started["dir"]))
    identities = [p.identity for p in manifest.participants]
    assert sorted(identities) == ["alice", "alice", "bob"]  # alice twice: two sessions
    assert len(manifest.tracks) == 6 and len({t.file for t in manifest.tracks}) == 6
    for track in manifest.tracks:
        frames, _, _, _ = probe(str(directory / track.file))
        assert track.closed and frames > 20 and decode_count(str(directory / track.file)) == frames
    (muted,) = [t for t in manifest.tracks if t.muted]
    assert muted.sid == mic and len(muted.muted) == 1
    start, end = muted.muted[0]
    assert start is not None and end is not None and abs(start - muted_at) < 1.0 and start <= end


async def test_a_full_disk_stops_the_recording_with_a_reason_and_other_files_stay_whole(
    rec_server: FerryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = rec_server
    original = mux.TrackFile._write
    written: dict[str, int] = {}

    def write(self: mux.TrackFile, data: bytes, pts: int, keyframe: bool, duration: int) -> None:
        if self.path.endswith(".webm") and written.get(self.path, 0) >= 60:
            raise OSError(28, "No space left on device")
        original(self, data, pts, keyframe, duration)
        written[self.path] = written.get(self.path, 0) + 1

    monkeypatch.setattr(mux.TrackFile, "_write", write)
    client = await publisher(server, "class", "alice")
    try:
        await wait_until(lambda: len(server.rooms.rooms["class"].router.tracks) == 2, 10)
        started = server.recordings.start("class")
        await client.wait_for(lambda: any(
            e.get("type") == "recording_stopped" and e.get("reason") == "disk_full" for e in client.events), 15)
        await wait_until(lambda: not server.recordings._stopping, 10)
        assert (await client.request("ping")) is not None  # the SFU is unaffected
    finally:
        await client.close()
    manifest = mf.load(started["dir"])  # type: ignore[arg-type]
    assert manifest.stop_reason == "disk_full"
    by_kind = {t.kind: t for t in manifest.tracks}
    assert "No space left" in (by_kind["video"].error or "")
    video = str(Path(str(started["dir"])) / by_kind["video"].file)
    assert probe(video)[0] == 60 == decode_count(video)  # what was written before the error
    audio = str(Path(str(started["dir"])) / by_kind["audio"].file)
    assert by_kind["audio"].error is None and decode_count(audio) == probe(audio)[0] > 50


async def test_metrics_count_recorded_frames_and_the_event_loop_time_of_recorder_sinks(
    rec_server: FerryServer,
) -> None:
    server = rec_server
    client = await publisher(server, "class", "alice")
    try:
        await wait_until(lambda: len(server.rooms.rooms["class"].router.tracks) == 2, 10)
        before = _metrics(server.metrics.render().decode())
        server.recordings.start("class")
        active = server.recordings._active["class"]
        await wait_until(lambda: all(s.file.frames > 30 for s in active.sinks.values()), 10)
        live = _metrics(server.metrics.render().decode())
        assert live['ferry_recordings_active'] == 1
        assert live['ferry_recorder_tracks{kind="video"}'] == 1
        await server.recordings.stop("class")
        done = _metrics(server.metrics.render().decode())
    finally:
        await client.close()
    assert done["ferry_recordings_active"] == 0
    for kind in ("audio", "video"):
        assert done[f'ferry_recorder_frames_total{{kind="{kind}"}}'] >= live[f'ferry_recorder_frames_total{{kind="{kind}"}}'] > 30
    assert done['ferry_recorder_dropped_total{kind="video"}'] == 0
    assert done["ferry_recorder_writer_cpu_seconds_total"] > 0
    for kind in ("audio", "video"):
        packets, spent = (f'ferry_recorder_{name}_total{{kind="{kind}"}}' for name in ("packets", "sink_seconds"))
        assert before.get(packets, 0) == before.get(spent, 0) == 0  # nothing recorded, nothing spent
        assert done[packets] >= live[packets] > 30 and done[spent] >= live[spent] > 0  # it moves with the packets
        assert done[spent] / done[packets] < 0.002  # per packet: well under 2 ms of the loop
        print(f"RECORDER_SINK {kind}: {1e6 * done[spent] / done[packets]:.1f} us/packet of event loop")


def _metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def test_auto_recorded_room_starts_at_creation_and_server_stop_finalizes_it(tmp_path: Path) -> None:
    server = FerryServer(make_config(recordings_dir=str(tmp_path / "rec"), auto_record_rooms=["lecture"]))
    await server.start()
    stopped = False
    try:
        other = await publisher(server, "chat", "carol")  # not listed: not recorded
        client = await publisher(server, "lecture", "alice")
        active = server.recordings._active["lecture"]
        assert active.started_by == "auto_record" and "chat" not in server.recordings._active
        await wait_until(lambda: len(active.sinks) == 2 and all(s.file.frames > 30 for s in active.sinks.values()), 10)
        directory = active.recording.directory
        await client.close()
        await other.close()
        await server.stop()  # SIGTERM's path: the shutdown hook finalizes the recording
        stopped = True
    finally:
        if not stopped:
            await server.stop()
    manifest = mf.load(directory)
    assert (manifest.state, manifest.stop_reason) == ("stopped", "server_shutdown")
    for track in manifest.tracks:
        path = str(directory / track.file)
        assert track.closed and decode_count(path) == probe(path)[0] > 30


def test_config_takes_recordings_dir_and_auto_record_rooms_from_file_env_and_flags(tmp_path: Path) -> None:
    from signaling.cli import _serve_overrides, build_parser
    from signaling.config import ConfigError, load_config

    config_file = tmp_path / "ferry.yaml"
    config_file.write_text("auto_record_rooms: [lecture]\nrecordings_dir: /srv/a\n")
    assert load_config(str(config_file), {}).auto_record_rooms == ["lecture"]
    assert load_config(str(config_file), {"FERRY_RECORDINGS_DIR": "/srv/b"}).recordings_dir == "/srv/b"
    args = build_parser().parse_args(["serve", "--recordings", "/srv/c", "--auto-record", "*"])
    config = load_config(str(config_file), {"FERRY_RECORDINGS_DIR": "/srv/b"}, _serve_overrides(args))
    assert (config.recordings_dir, config.auto_record_rooms) == ("/srv/c", ["*"])
    with pytest.raises(ConfigError, match="auto_record_rooms"):
        load_config(None, {}, {"auto_record_rooms": "lecture"})


async def test_ferry_record_start_list_stop_drive_a_running_server(
    rec_server: FerryServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from signaling.cli import main

    server = rec_server
    client = await publisher(server, "class", "alice")
    loop = asyncio.get_running_loop()
    token = server.token("class", "ops", room_record=True)

    async def ferry(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        code = await loop.run_in_executor(None, lambda: main(list(argv), env=env or {}))
        out = capsys.readouterr()
        return code, out.out, out.err

    try:
        await wait_until(lambda: len(server.rooms.rooms["class"].router.tracks) == 2, 10)
        code, out, _ = await ferry("record", "start", "class", "--url", server.http_url, "--token", token)
        started = json.loads(out)
        assert code == 0 and Path(started["dir"]).is_dir()
        active = server.recordings._active["class"]
        await wait_until(lambda: all(s.file.frames > 30 for s in active.sinks.values()), 10)
        code, out, _ = await ferry("record", "list", "class", "--url", server.http_url, env={"FERRY_TOKEN": token})
        assert code == 0 and json.loads(out)["active"]["id"] == started["id"]
        code, out, _ = await ferry("record", "stop", "class", "--url", server.http_url, "--token", token)
        stopped = json.loads(out)
        assert code == 0 and stopped["state"] == "stopped" and len(stopped["files"]) == 2
        code, _, err = await ferry("record", "stop", "class", "--url", server.http_url, "--token", token)
        assert code == 1 and "409 not_recording" in err
        code, _, err = await ferry("record", "start", "class", "--url", server.http_url)
        assert code == 2 and "token" in err
    finally:
        await client.close()


async def test_a_failed_file_is_announced_and_the_other_tracks_go_on(
    rec_server: FerryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = rec_server
    original = mux.TrackFile._write

    def write(self: mux.TrackFile, data: bytes, pts: int, keyframe: bool, duration: int) -> None:
        if self.path.endswith(".ogg"):
            raise ValueError("bad frame")
        original(self, data, pts, keyframe, duration)

    monkeypatch.setattr(mux.TrackFile, "_write", write)
    client = await publisher(server, "class", "alice")
    try:
        await wait_until(lambda: len(server.rooms.rooms["class"].router.tracks) == 2, 10)
        server.recordings.start("class")
        mic = next(t["sid"] for t in client.published if t["kind"] == "audio")
        event = await client.wait_for(lambda: next((e for e in client.events if e.get("type") == "recording_error"), None), 10)
        assert (event["track_sid"], event["reason"]) == (mic, "write_error") and "message" not in event
        video = next(s for s in server.recordings._active["class"].sinks.values() if s.video)
        before = video.file.frames
        await wait_until(lambda: video.file.frames > before + 30, 10)  # video goes on
        manifest = await server.recordings.stop("class")
    finally:
        await client.close()
    errors = {t.kind: t.error for t in manifest.tracks}
    assert "bad frame" in (errors["audio"] or "") and errors["video"] is None


async def test_a_room_that_closes_ends_its_recording(rec_server: FerryServer) -> None:
    server = rec_server  # room_empty_timeout_s is 2 s here
    client = await publisher(server, "class", "alice")
    await wait_until(lambda: len(server.rooms.rooms["class"].router.tracks) == 2, 10)
    started = server.recordings.start("class")
    active = server.recordings._active["class"]
    await wait_until(lambda: all(s.file.frames > 30 for s in active.sinks.values()), 10)
    await client.leave()
    await wait_until(lambda: "class" not in server.rooms.rooms and not server.recordings._stopping, 10)
    manifest = mf.load(str(started["dir"]))
    assert (manifest.state, manifest.stop_reason) == ("stopped", "room_closed")
    assert all(t.closed and t.error is None for t in manifest.tracks)
