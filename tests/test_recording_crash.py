"""`ferry serve` SIGKILLed mid-recording, then `ferry record repair`.

The server runs as a real subprocess (`python -m signaling.cli serve`); two LiteClient
publishers (VP8 + Opus) in this process are recorded through the REST API for ~10 s,
then the server is killed without warning. Every file must play after repair and hold
all but the last 2 s before the kill.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import av
import pytest

from clients.lite import LiteClient, encode_opus_clip, encode_vp8_clip
from recorder import manifest as mf
from signaling.auth import mint_token

from .recorder_media import decode_count, probe

ROOT = Path(__file__).resolve().parent.parent
KEY, SECRET = "APIcrash", "crash-test-secret-0123456789abcdef"
RECORD_S = 10.0
LOSS_BOUND_S = 2.0


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def token(room: str, identity: str, **grants: bool) -> str:
    return mint_token(KEY, SECRET, identity=identity, room=room, now=time.time(), **grants)  # type: ignore[arg-type]


async def wait_healthy(url: str, child: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            assert child.poll() is None, "ferry serve exited during start-up"
            try:
                async with http.get(url + "/healthz") as res:
                    if res.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "ferry serve did not answer /healthz"
            await asyncio.sleep(0.1)


async def start_recording(tmp_path: Path) -> tuple[subprocess.Popen[bytes], list[LiteClient], Path]:
    """`ferry serve` in a subprocess, two publishers (VP8 + Opus), a recording started by REST."""
    http_port = free_port(socket.SOCK_STREAM)
    media_port, quic_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    # Captions off: the recorder's crash behaviour, without a speech model loading beside it.
    env = {**os.environ, "FERRY_API_KEY": KEY, "FERRY_API_SECRET": SECRET, "FERRY_CAPTIONS": "off"}
    child = subprocess.Popen(
        [sys.executable, "-m", "signaling.cli", "serve", "--http-port", str(http_port),
         "--media-port", str(media_port), "--quic-port", str(quic_port),
         "--recordings", str(tmp_path / "recordings"), "--log-level", "warning"],
        cwd=ROOT, env=env,
    )
    url = f"http://127.0.0.1:{http_port}"
    clients: list[LiteClient] = []
    try:
        await wait_healthy(url, child)
        video, audio = encode_vp8_clip(320, 180, 90, 300_000), encode_opus_clip(3.0)
        for name in ("alice", "bob"):
            client = LiteClient(name=name)
            clients.append(client)
            await client.connect(f"ws://127.0.0.1:{http_port}/ws")
            await client.join(token("class", name), auto_subscribe=False)
            await client.publish_vp8(video, simulcast_rids=None, audio=audio)
        headers = {"Authorization": f"Bearer {token('class', 'host', room_record=True)}"}
        async with aiohttp.ClientSession() as http, http.post(url + "/api/rooms/class/recording", headers=headers) as res:
            assert res.status == 201, await res.text()
            started = json.loads(await res.text())
    except BaseException:
        child.kill()
        child.wait(10)
        for client in clients:
            await client.close()
        raise
    return child, clients, Path(started["dir"])


async def stop(child: subprocess.Popen[bytes], clients: list[LiteClient], signum: int) -> int:
    """Send `signum`, wait for the exit (killing on timeout); returns the exit code."""
    try:
        os.kill(child.pid, signum)
        return child.wait(20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        for client in clients:
            await client.close()


async def test_sigkill_mid_recording_then_repair_keeps_all_but_the_last_two_seconds(tmp_path: Path) -> None:
    child, clients, directory = await start_recording(tmp_path)
    t_start = time.monotonic()
    await asyncio.sleep(RECORD_S)  # the recorded span before the crash
    t_kill = time.monotonic()
    await stop(child, clients, signal.SIGKILL)
    assert mf.load(directory).state == "recording"  # nobody finalized it
    repaired = subprocess.run(
        [sys.executable, "-m", "signaling.cli", "record", "repair", str(directory)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert repaired.returncode == 0, repaired.stderr
    report = json.loads(repaired.stdout)
    manifest = mf.load(directory)
    assert report["state"] == manifest.state == "repaired"
    assert sorted(p.identity for p in manifest.participants) == ["alice", "bob"]
    assert sorted(t.kind for t in manifest.tracks) == ["audio", "audio", "video", "video"]
    recorded = t_kill - t_start
    for track in manifest.tracks:
        path = str(directory / track.file)
        frames, duration, _, _ = probe(path)
        assert frames > 0 and decode_count(path) == frames, track.file
        assert track.closed and track.duration_s is not None
        assert duration >= recorded - LOSS_BOUND_S, (track.file, duration, recorded)
        print("CRASH", json.dumps({"file": track.file, "recorded_s": round(recorded, 3),
                                   "held_s": round(duration, 3), "lost_s": round(recorded - duration, 3)}))


async def test_sigterm_mid_recording_finalizes_every_file_before_exit(tmp_path: Path) -> None:
    child, clients, directory = await start_recording(tmp_path)
    t_start = time.monotonic()
    await asyncio.sleep(3.0)  # some media to finalize
    recorded = time.monotonic() - t_start
    assert await stop(child, clients, signal.SIGTERM) == 0
    manifest = mf.load(directory)
    assert (manifest.state, manifest.stop_reason) == ("stopped", "server_shutdown")
    for track in manifest.tracks:
        path = str(directory / track.file)
        frames, duration, _, _ = probe(path)
        assert track.closed and track.error is None and decode_count(path) == frames > 0
        assert track.duration_s == pytest.approx(duration, abs=0.05) and duration > recorded - 0.5
        with av.open(path) as container:  # finalized: the container knows its duration
            assert container.duration is not None and container.duration / 1e6 == pytest.approx(duration, abs=0.1)
