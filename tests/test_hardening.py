"""Hostile and careless clients, and clean shutdowns.

Most tests speak the protocol over raw aiohttp WebSockets (or raw TCP) so they can do
what a well-behaved client never does: keep using a replaced socket, never read, never
join, send half a request. None opens a WebRTC connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import queue
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from signaling.app import FerryServer
from signaling.auth import generate_dev_keys, mint_token
from signaling.config import ConfigError

from .browser import chromium, needs_chromium, open_page
from .conftest import make_config, wait_until

ROOT = Path(__file__).resolve().parent.parent
CHROME_OFFER = (Path(__file__).parent / "fixtures" / "chromium156-simulcast-offer.sdp").read_text()
_ids = itertools.count(1)


async def call(ws: aiohttp.ClientWebSocketResponse, type_: str, events: list[dict] | None = None,
               timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
    """Send a request and return its reply; events read meanwhile go to ``events``."""
    rid = next(_ids)
    await ws.send_str(json.dumps({"type": type_, "id": rid, **fields}))
    deadline = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"socket ended before the {type_} reply: {msg.type}")
        data = json.loads(msg.data)
        if data.get("id") == rid:
            return data
        if events is not None:
            events.append(data)


async def joined(http: aiohttp.ClientSession, server: FerryServer, room: str, identity: str,
                 events: list[dict] | None = None) -> tuple[aiohttp.ClientWebSocketResponse, dict]:
    ws = await http.ws_connect(server.ws_url)
    assert (await call(ws, "hello", events, version=1))["ok"]
    reply = await call(ws, "join", events, token=server.token(room, identity), auto_subscribe=False)
    assert reply["ok"], reply
    return ws, reply


async def drain(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> list[dict]:
    """Every message until the server closes the socket (fails if it stays open)."""
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return out
        if msg.type == aiohttp.WSMsgType.TEXT:
            out.append(json.loads(msg.data))


# --- defect 3: a replaced session stays alive ------------------------------------------


async def test_replaced_session_is_told_closed_and_cannot_publish_ghost_tracks(server: FerryServer) -> None:
    async with aiohttp.ClientSession() as http:
        watcher_events: list[dict] = []
        watcher, _ = await joined(http, server, "ghost", "watcher", watcher_events)
        old, old_join = await joined(http, server, "ghost", "alice")
        new, new_join = await joined(http, server, "ghost", "alice")
        # The replaced socket tries to publish; it must not produce a track anywhere.
        await old.send_str(json.dumps({"type": "publish", "id": 99, "sdp": CHROME_OFFER}))
        seen: list[dict] = []
        while not old.closed and not any(m.get("id") == 99 for m in seen):
            msg = await old.receive(timeout=5)
            if msg.type == aiohttp.WSMsgType.TEXT:
                seen.append(json.loads(msg.data))
        # The new session of the same identity publishes normally.
        published = await call(new, "publish", sdp=CHROME_OFFER)
        assert published["ok"], published
        assert (await call(watcher, "ping", watcher_events))["ok"]  # everything before it arrived
        new_sid, old_sid = new_join["participant"]["sid"], old_join["participant"]["sid"]
        announced = [e["track"]["participant_sid"] for e in watcher_events if e["type"] == "track_published"]
        assert old_sid not in announced, "ghost tracks from the replaced session"
        assert set(announced) == {new_sid}
        room = server.rooms.rooms["ghost"]
        assert {t.participant_sid for t in room.router.tracks.values()} == {new_sid}
        members = {(p.identity, p.sid) for p in room.participants.values()}
        assert members == {("watcher", watcher_sid(room)), ("alice", new_sid)}
        left = [e for e in watcher_events if e["type"] == "participant_left"]
        assert [{k: v for k, v in e.items() if k != "seq"} for e in left] == [
            {"type": "participant_left", "sid": old_sid, "reason": "replaced"}
        ]
        # The old session was told, and its socket closed.
        assert {"type": "leave", "reason": "replaced"} in seen
        assert not any(m.get("id") == 99 for m in seen), seen
        assert old.closed
        async with http.get(server.http_url + "/metrics") as resp:
            metrics = await resp.text()
        tracks = sum(float(v) for v in re.findall(r'^ferry_tracks\{kind="\w+"\} (\S+)$', metrics, re.M))
        assert tracks == len(room.router.tracks) == len(published["tracks"])
        for ws in (watcher, new):
            await ws.close()


def watcher_sid(room: Any) -> str:
    return next(p.sid for p in room.participants.values() if p.identity == "watcher")


@pytest.mark.browser
@needs_chromium
async def test_web_page_replaced_by_another_join_ends_its_call(server: FerryServer) -> None:
    token = server.token("tab", "alice")
    url = f"{server.http_url}/?room=tab&autojoin=1&publish=0&" + urlencode({"token": token, "url": server.ws_url})
    async with chromium() as browser:
        page = await open_page(browser, url)

        def page_joined() -> bool:
            room = server.rooms.rooms.get("tab")
            return room is not None and any(p.identity == "alice" for p in room.participants.values())

        await wait_until(page_joined, 15)
        async with aiohttp.ClientSession() as http:
            other, _ = await joined(http, server, "tab", "alice")
            deadline = time.monotonic() + 10
            while await page.evaluate("window.ferry.state") != "left":
                assert time.monotonic() < deadline, await page.evaluate("window.ferry.state")
                await asyncio.sleep(0.1)
            events = await page.evaluate("window.ferry.events.filter(e => e.type === 'leave')")
            assert events == [{"type": "leave", "reason": "replaced"}]
            assert page.ferry_errors == []
            await other.close()


# --- defect 7: SIGTERM ------------------------------------------------------------------


def _spawn_serve(env_extra: dict[str, str], *, preexec: Any = None) -> tuple[subprocess.Popen[str], int]:
    """`python -m signaling.cli serve` on free ports; returns the process and its HTTP port.

    A thread keeps reading the server's log, so a full pipe never blocks it.
    """
    env = dict(os.environ, FERRY_LOG_LEVEL="info", **env_extra)
    cmd = [sys.executable, "-m", "signaling.cli", "serve", "--http-port", "0", "--media-port", "0",
           "--quic-port", "0", "--host", "127.0.0.1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=preexec)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 30
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            break
        if line is None:
            break
        match = re.search(r"Ferry listening: http://127\.0\.0\.1:(\d+)/", line)
        if match:
            return proc, int(match.group(1))
    proc.kill()
    raise AssertionError(f"ferry serve did not start (exit {proc.wait()})")


async def test_sigterm_tells_clients_server_shutdown_and_exits_0() -> None:
    key, secret = generate_dev_keys()
    proc, port = _spawn_serve({"FERRY_API_KEY": key, "FERRY_API_SECRET": secret})
    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"ws://127.0.0.1:{port}/ws")
            assert (await call(ws, "hello", version=1))["ok"]
            token = mint_token(key, secret, identity="bob", room="r", now=time.time())
            assert (await call(ws, "join", token=token))["ok"]
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            seen = await drain(ws, timeout=10)
            assert {"type": "leave", "reason": "server_shutdown"} in seen
            code = await asyncio.to_thread(proc.wait, 15)
            assert code == 0
            assert time.monotonic() - started < 12  # shutdown_timeout_s (10 s) bounds it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_raises_the_open_file_soft_limit_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"hard open-file limit {hard} leaves nothing to raise")
    key, secret = generate_dev_keys()

    def lower_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    proc, _ = _spawn_serve({"FERRY_API_KEY": key, "FERRY_API_SECRET": secret}, preexec=lower_soft_limit)
    try:
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        got_soft, got_hard = row.split()[3:5]
        assert got_soft == got_hard and got_soft != "256", row
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


async def test_stop_tells_clients_and_runs_shutdown_hooks() -> None:
    server = FerryServer(make_config())
    await server.start()
    hook_saw: list[int] = []

    async def hook() -> None:  # where a recorder finishes its files
        hook_saw.append(len(server._connections))

    server.add_shutdown_hook(hook)
    try:
        async with aiohttp.ClientSession() as http:
            ws, _ = await joined(http, server, "r", "carol")
            idle = await http.ws_connect(server.ws_url)  # connected, not joined
            stopping = asyncio.ensure_future(server.stop())
            for sock in (ws, idle):  # joined or not, every client hears it
                assert {"type": "leave", "reason": "server_shutdown"} in await drain(sock)
            await asyncio.wait_for(stopping, 10)
    finally:
        await server.stop()
    assert hook_saw == [0]  # hooks run after every client was told and closed
    assert server.rooms.rooms == {}


# --- risk: roomAdmin scope --------------------------------------------------------------


async def test_room_admin_token_lists_only_its_own_room(server: FerryServer) -> None:
    async with aiohttp.ClientSession() as http:
        a, _ = await joined(http, server, "room-a", "ann")
        b, _ = await joined(http, server, "room-b", "ben")

        async def rooms(token: str) -> tuple[int, Any]:
            headers = {"Authorization": "Bearer " + token}
            async with http.get(server.http_url + "/api/rooms", headers=headers) as resp:
                return resp.status, await resp.json()

        status, body = await rooms(server.token("room-a", "host-a", room_admin=True))
        assert status == 200 and [r["name"] for r in body["rooms"]] == ["room-a"]
        status, body = await rooms(server.token("*", "ops", room_admin=True))
        assert status == 200 and sorted(r["name"] for r in body["rooms"]) == ["room-a", "room-b"]
        status, body = await rooms(server.token(None, "ops", room_admin=True))  # type: ignore[arg-type]
        assert status == 403 and "'*'" in body["error"]["message"]
        status, _ = await rooms(server.token("room-a", "ann2"))
        assert status == 403
        # "*" names no room anyone can join.
        ws = await http.ws_connect(server.ws_url)
        await call(ws, "hello", version=1)
        reply = await call(ws, "join", token=server.token("*", "ops", room_admin=True))
        assert reply["error"]["code"] == "forbidden"
        assert "*" not in server.rooms.rooms
        for w in (a, b, ws):
            await w.close()


# --- risk: dev mode ---------------------------------------------------------------------


async def test_dev_token_refuses_a_foreign_host_header() -> None:
    server = FerryServer(make_config(api_keys={}))
    await server.start()
    try:
        url = f"{server.http_url}/api/dev-token?room=r&name=Eve"
        async with aiohttp.ClientSession() as http:
            for host, status in [
                (f"127.0.0.1:{server.http_port}", 200),
                (f"localhost:{server.http_port}", 200),
                (f"attacker.example:{server.http_port}", 403),  # DNS rebinding
                ("attacker.example", 403),
                ("x:y:z", 403),  # unparsable
            ]:
                async with http.get(url, headers={"Host": host}) as resp:
                    assert resp.status == status, (host, await resp.text())
    finally:
        await server.stop()


def test_dev_keys_on_a_non_loopback_bind_need_explicit_consent() -> None:
    with pytest.raises(ConfigError, match="--dev"):
        FerryServer(make_config(host="0.0.0.0", api_keys={}))
    FerryServer(make_config(host="0.0.0.0", api_keys={}, allow_dev_keys=True))  # asked for
    FerryServer(make_config(host="0.0.0.0", api_keys={"k": "s" * 32}))  # real keys


def test_ferry_serve_on_the_network_without_keys_fails_in_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    proc = subprocess.run(
        [sys.executable, "-m", "signaling.cli", "serve", "--host", "0.0.0.0", "--http-port", "0",
         "--media-port", "0", "--quic-port", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ferry: error:") and "--dev" in lines[0], proc.stderr


# --- risk: Origin on /ws ----------------------------------------------------------------


async def test_ws_refuses_origins_that_are_neither_this_host_loopback_nor_allowed() -> None:
    server = FerryServer(make_config(allowed_origins=["https://meet.example.com"]))
    await server.start()
    port = server.http_port
    try:
        async with aiohttp.ClientSession() as http:
            for headers, allowed in [
                ({}, True),  # not a browser
                ({"Origin": f"http://127.0.0.1:{port}"}, True),  # the web client itself
                ({"Origin": "http://localhost:3000"}, True),  # a dev page on this machine
                ({"Origin": "https://meet.example.com"}, True),  # configured
                ({"Origin": "https://ferry.example.org", "Host": f"ferry.example.org:{port}"}, True),
                ({"Origin": "https://evil.example"}, False),
                ({"Origin": "https://evil.example", "Host": f"ferry.example.org:{port}"}, False),
                ({"Origin": "null"}, False),
                ({"Origin": "https://evil.example", "Host": "x:y:z"}, False),
            ]:
                try:
                    ws = await http.ws_connect(server.ws_url, headers=headers)
                except aiohttp.WSServerHandshakeError as exc:
                    assert not allowed and exc.status == 403, (headers, exc)
                else:
                    assert allowed, headers
                    await ws.close()
    finally:
        await server.stop()


# --- risk: slow, idle and numerous clients ----------------------------------------------


async def test_client_that_never_reads_is_disconnected_while_a_reader_is_not() -> None:
    server = FerryServer(make_config(ws_send_queue_limit=32))
    await server.start()
    try:
        # A raw socket that completes the upgrade and then never reads again.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.http_port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        await writer.drain()
        async with aiohttp.ClientSession() as http:
            good = await http.ws_connect(server.ws_url)
            await wait_until(lambda: len(server._connections) == 2, 5)
            conns = list(server._connections)
            payload = {"type": "filler", "blob": "x" * 16000}
            received = 0
            deadline = time.monotonic() + 30
            while len(server._connections) == 2 and time.monotonic() < deadline:
                for conn in conns:
                    conn.send(payload)
                msg = await good.receive(timeout=5)  # the reader keeps up, message by message
                assert msg.type == aiohttp.WSMsgType.TEXT
                received += 1
            await wait_until(lambda: len(server._connections) == 1, 5)
            assert server.ws_connections == 1
            (survivor,) = server._connections
            assert not survivor.closing and not good.closed

            async def read_to_end() -> None:
                with contextlib.suppress(ConnectionResetError):
                    while await reader.read(1 << 20):
                        pass

            # The non-reader's TCP connection is gone: reset, or EOF after its backlog.
            await asyncio.wait_for(read_to_end(), 5)
            assert received > 32
            await good.close()
        writer.close()
    finally:
        await server.stop()


async def test_socket_that_never_joins_is_closed_after_join_timeout() -> None:
    server = FerryServer(make_config(join_timeout_s=0.5))
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            member, _ = await joined(http, server, "r", "dan")
            lurker = await http.ws_connect(server.ws_url)
            assert (await call(lurker, "hello", version=1))["ok"]
            started = time.monotonic()
            assert await drain(lurker, timeout=5) == []
            assert lurker.close_code == 1008
            assert 0.4 < time.monotonic() - started < 3
            assert (await call(member, "ping"))["ok"]  # joined in time: stays
            await member.close()
    finally:
        await server.stop()


async def test_connections_are_capped_per_address_and_in_total() -> None:
    for config, refused_status, setting in [
        (make_config(max_connections_per_ip=2, per_ip_exempt=[]), 429, "max_connections_per_ip"),
        (make_config(max_connections=3, max_connections_per_ip=2), 503, "max_connections"),  # loopback exempt
        (make_config(max_connections=3, max_connections_per_ip=0), 503, "max_connections"),
    ]:
        server = FerryServer(config)
        await server.start()
        try:
            async with aiohttp.ClientSession() as http:
                limit = 2 if refused_status == 429 else 3
                sockets = [await http.ws_connect(server.ws_url) for _ in range(limit)]
                with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                    await http.ws_connect(server.ws_url)
                assert info.value.status == refused_status
                async with http.get(server.ws_url.replace("ws://", "http://")) as resp:
                    assert setting in (await resp.json())["error"]["message"]
                await sockets.pop().close()
                await wait_until(lambda s=server, n=limit - 1: s.ws_connections == n, 5)
                sockets.append(await http.ws_connect(server.ws_url))  # room again
                for ws in sockets:
                    await ws.close()
        finally:
            await server.stop()


async def test_half_sent_http_request_is_closed_after_the_header_timeout() -> None:
    server = FerryServer(make_config(http_header_timeout_s=0.5))
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        await writer.drain()
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed without an answer
        assert time.monotonic() - started < 3
        writer.close()
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"allowed_origins": ["https://a.example/path"]}, "allowed_origins"),
        ({"allowed_origins": "https://a.example"}, "allowed_origins"),
        ({"per_ip_exempt": ["localhost"]}, "per_ip_exempt"),
        ({"max_connections": 0}, "max_connections"),
        ({"max_connections_per_ip": -1}, "max_connections_per_ip"),
        ({"join_timeout_s": 0}, "join_timeout_s"),
        ({"allow_dev_keys": "yes"}, "allow_dev_keys"),
    ],
)
def test_hardening_settings_are_validated(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        make_config(**overrides)


def test_hardening_settings_from_environment_and_cli() -> None:
    from signaling.cli import _serve_overrides, build_parser
    from signaling.config import load_config

    env = {"FERRY_ALLOWED_ORIGINS": "https://a.example, https://b.example:8443", "FERRY_ALLOW_DEV_KEYS": "true"}
    assert load_config(None, env).allowed_origins == ["https://a.example", "https://b.example:8443"]
    assert load_config(None, env).allow_dev_keys is True
    args = build_parser(()).parse_args(["serve", "--dev", "--allowed-origin", "https://c.example"])
    config = load_config(None, {}, _serve_overrides(args))
    assert config.allow_dev_keys and config.allowed_origins == ["https://c.example"]
    with pytest.raises(ConfigError, match="FERRY_ALLOW_DEV_KEYS"):
        load_config(None, {"FERRY_ALLOW_DEV_KEYS": "maybe"})
