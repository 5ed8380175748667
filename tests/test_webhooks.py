"""Webhooks: signed posts to a local receiver; hanging and failing endpoints block nothing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web

from clients.lite import LiteClient
from signaling.app import FerryServer
from signaling.webhooks import WebhookError, sign, verify

from .conftest import make_config, wait_until

KEY, SECRET = "APIhooks", "s3cret-s3cret-s3cret-s3cret-s3cret"


class Receiver:
    """A local aiohttp endpoint: ``/ok`` verifies and keeps events, ``/fail`` answers 500,
    ``/hang`` never answers."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.bad: list[str] = []
        self.fail_hits = 0
        self.hang_hits = 0
        self._never = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/ok", self._ok)
        app.router.add_post("/fail", self._fail)
        app.router.add_post("/hang", self._hang)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def _ok(self, request: web.Request) -> web.Response:
        body = await request.read()
        token = request.headers.get("Authorization", "")
        # Checked as LiveKit's receivers do, without Ferry's own helper.
        try:
            claims = jwt.decode(token, SECRET, algorithms=["HS256"])
        except jwt.PyJWTError as exc:
            self.bad.append(str(exc))
            return web.Response(status=401)
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        if claims.get("iss") != KEY or claims.get("sha256") != digest:
            self.bad.append(f"claims {claims}")
            return web.Response(status=401)
        self.events.append(json.loads(body))
        return web.Response(text="ok")

    async def _fail(self, request: web.Request) -> web.Response:
        self.fail_hits += 1
        return web.Response(status=500)

    async def _hang(self, request: web.Request) -> web.Response:
        self.hang_hits += 1
        await self._never.wait()
        return web.Response()

    def names(self) -> list[str]:
        return [e["event"] for e in self.events]

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def receiver():
    rx = Receiver()
    await rx.start()
    try:
        yield rx
    finally:
        await rx.close()


def hooked_server(tmp_path: Path, receiver: Receiver, *paths: str) -> FerryServer:
    config = make_config(
        recordings_dir=str(tmp_path / "recordings"),
        api_keys={KEY: SECRET},
        webhooks=[{"url": receiver.url + p, "api_key": KEY} for p in paths],
        room_empty_timeout_s=0.5,
    )
    server = FerryServer(config)
    server.webhooks.timeout_s = 0.5
    server.webhooks.backoff_s = 0.05
    return server


def test_a_tampered_body_or_foreign_key_does_not_verify() -> None:
    body = b'{"event":"room_started"}'
    auth = sign(body, KEY, SECRET, time.time())
    assert verify(body, auth, {KEY: SECRET}, time.time())["event"] == "room_started"
    with pytest.raises(WebhookError):
        verify(b'{"event":"room_finished"}', auth, {KEY: SECRET}, time.time())
    with pytest.raises(WebhookError):
        verify(body, auth, {KEY: "another-secret-of-thirty-two-bytes!"}, time.time())
    with pytest.raises(WebhookError):
        verify(body, auth, {"APIother": SECRET}, time.time())


async def test_room_events_reach_the_receiver_signed_while_bad_endpoints_block_nothing(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ferry.signaling.webhooks")
    server = hooked_server(tmp_path, receiver, "/hang", "/fail", "/ok")
    await server.start()
    try:
        t0 = time.monotonic()
        alice = LiteClient(name="alice")
        await alice.connect(server.ws_url)
        await alice.join(server.token("class", "alice"), auto_subscribe=False)
        token = server.token("class", "ops", room_admin=True)
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            async with http.post(server.http_url + "/api/rooms/class/recording", headers=headers) as res:
                assert res.status == 201
            async with http.delete(server.http_url + "/api/rooms/class/recording", headers=headers) as res:
                assert res.status == 200
        await alice.leave()
        await alice.close()
        # Joining and recording were not held up by the endpoint that hangs.
        assert time.monotonic() - t0 < 5.0
        wanted = ["room_started", "participant_joined", "recording_started", "recording_finished",
                  "participant_left", "room_finished"]
        await wait_until(lambda: receiver.names() == wanted, 10)
        assert receiver.bad == []
        joined = receiver.events[1]
        assert joined["room"]["name"] == "class" and joined["participant"]["identity"] == "alice"
        assert len({e["id"] for e in receiver.events}) == len(wanted)
        # The failing endpoint got every attempt of each event, and one warning in all.
        attempts = server.webhooks.attempts
        await wait_until(lambda: receiver.fail_hits == attempts * len(wanted), 10)
        assert receiver.hang_hits >= 1
        failures = [r for r in caplog.records if "/fail" in r.getMessage()]
        assert len(failures) == 1, [r.getMessage() for r in failures]
        assert server.webhooks.snapshot()["webhooks_sent"] == len(wanted)
    finally:
        await server.stop()


async def test_a_full_queue_drops_the_oldest_events_and_counts_them(tmp_path: Path, receiver: Receiver) -> None:
    server = hooked_server(tmp_path, receiver, "/hang")
    server.webhooks.queue_limit = 3
    await server.start()
    try:
        for i in range(10):
            server.webhooks.notify("room_started", room={"name": f"r{i}"})
        endpoint = server.webhooks.endpoints[0]
        assert len(endpoint.queue) == 3
        assert endpoint.dropped == 7
    finally:
        await server.stop()


def test_webhook_config_is_checked_and_read_from_the_environment() -> None:
    from signaling.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="http"):
        make_config(webhooks=[{"url": "ftp://x"}])
    with pytest.raises(ConfigError, match="api_keys"):
        make_config(api_keys={KEY: SECRET}, webhooks=[{"url": "http://127.0.0.1:1/h", "api_key": "APInope"}])
    config = load_config(None, {"FERRY_WEBHOOKS": "http://127.0.0.1:1/a, http://127.0.0.1:2/b"})
    assert config.webhooks == [{"url": "http://127.0.0.1:1/a"}, {"url": "http://127.0.0.1:2/b"}]
