"""Room messages: numbered once, stored durably, delivered in order exactly once.

The sans-I/O log and the SQLite store first, then live servers: bad input, addressing,
idempotent retries, and 1000 messages from three clients through reconnects and a
server restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from clients.channel import FerryError, SignalingChannel
from clients.lite import LiteClient
from signaling import quic_cert
from signaling.app import FerryServer
from signaling.auth import generate_dev_keys, mint_token
from signaling.messages import RoomLog
from signaling.messages_store import MessageStore, insert_message, set_cursor, set_last_seq
from tests.browser import chromium, needs_chromium, open_page
from tests.conftest import make_config, wait_until

ROOT = Path(__file__).resolve().parent.parent

# -- the sans-I/O log ----------------------------------------------------------------------


def test_log_numbers_messages_and_a_retried_id_keeps_its_seq() -> None:
    log = RoomLog(max_count=100, max_age_s=60)
    assert log.assign("a", "m1", now=0) == 1
    assert log.assign("b", None, now=0) == 2
    assert log.lookup("a", "m1") == 1
    assert log.lookup("b", "m1") is None, "ids are per sender"
    assert log.lookup("b", None) is None
    assert log.assign("b", "m1", now=0) == 3
    log.failed([3])  # the store lost it: a retry gets a new number, never 3 again
    assert log.lookup("b", "m1") is None
    assert log.assign("b", "m1", now=0) == 4


def test_cursor_only_moves_forward_and_never_past_what_is_committed() -> None:
    log = RoomLog(max_count=100, max_age_s=60)
    for _ in range(5):
        log.assign("a", None, now=0)
    log.committed(3)
    assert log.ack("x", 5) and log.cursor("x") == 3, "acked past the commit"
    assert not log.ack("x", 2) and log.cursor("x") == 3
    log.committed(5)
    assert log.replay_after("x", None) == 3, "a rejoin without data_since starts at the cursor"
    assert log.replay_after("x", 1) == 1, "data_since wins"
    assert log.replay_after("new", None) == 5, "a new identity gets no history unless it asks"
    assert log.replay_after("new", 99) == 5


def test_log_is_bounded_by_count_and_by_age() -> None:
    log = RoomLog(max_count=3, max_age_s=10)
    for i in range(5):
        log.assign("a", f"m{i}", now=float(i))
    assert log.evict(now=4.0) == 2 and len(log) == 3 and log.first_seq == 3
    assert log.lookup("a", "m0") is None, "an evicted message's id is forgotten"
    assert log.evict(now=13.5) == 4, "older than 10 s at t=13.5: seqs 3 and 4"
    assert log.first_seq == 5 and log.lookup("a", "m4") == 5


# -- the store -----------------------------------------------------------------------------


async def _write(store: MessageStore, writes: list[Any]) -> None:
    done: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
    store.write(writes, done.set_result)
    assert await asyncio.wait_for(done, 5) is None


async def test_store_survives_a_restart_and_numbering_continues(tmp_path: Path) -> None:
    path = tmp_path / "m" / "messages.db"
    store = MessageStore(path)
    assert store.load_room("r", 10).last_seq == 0 and not path.exists(), "reads create nothing"
    log = RoomLog(max_count=10, max_age_s=100)
    for i, (sender, to) in enumerate([("a", None), ("b", ["a", "b"]), ("a", None)]):
        seq = log.assign(sender, f"id{i}", now=1.0)
        event = {"type": "data", "data_seq": seq, "payload": i}
        await _write(store, [insert_message("r", seq, 1.0, sender, f"id{i}", to, event), set_last_seq("r", seq)])
    await _write(store, [set_cursor("r", "c", 2), set_cursor("r", "c", 1)])
    await store.flush()
    store.close()

    again = MessageStore(path)
    snapshot = again.load_room("r", 10)
    assert snapshot.last_seq == 3 and snapshot.cursors == {"c": 2}, "the cursor never moves back"
    log = RoomLog(max_count=10, max_age_s=100, snapshot=snapshot)
    assert log.lookup("b", "id1") == 2, "ids survive the restart"
    assert log.assign("a", "new", now=2.0) == 4
    rows = again.read("r", 0, 3)
    assert [seq for seq, _, _ in rows] == [1, 2, 3]
    assert rows[1][1] == ["a", "b"] and rows[2][2]["payload"] == 2
    assert again.read("r", 1, 2) == [rows[1]]
    assert again.load_room("other", 10).last_seq == 0
    again.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- live ----------------------------------------------------------------------------------


@pytest.fixture
async def data_server(tmp_path: Path) -> Any:
    server = FerryServer(make_config(data_dir=str(tmp_path / "data")))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _lite(server: FerryServer, room: str, identity: str, url: str | None = None, **grants: Any) -> LiteClient:
    client = LiteClient(name=identity)
    await client.connect(url or server.ws_url)
    await client.join(server.token(room, identity, **grants))
    return client


async def test_bad_room_messages_get_coded_errors(data_server: FerryServer) -> None:
    mute = await _lite(data_server, "bad", "mute", can_publish_data=False)
    a = await _lite(data_server, "bad", "a")
    try:
        cases = [
            (mute, {"topic": "chat", "payload": 1}, "forbidden"),
            (a, {"topic": "chat", "payload": "x" * (64 * 1024)}, "too_large"),
            (a, {"topic": "chat", "payload_b64": "A" * 90_000}, "too_large"),
            (a, {"topic": "t" * 129, "payload": 1}, "too_large"),
            (a, {"topic": "chat", "payload_b64": "not base64!"}, "bad_request"),
            (a, {"topic": "chat", "payload": 1, "payload_b64": "AA=="}, "bad_request"),
            (a, {"topic": "chat", "payload": 1, "to": ["nobody"]}, "not_found"),
            (a, {"topic": "chat", "payload": 1, "to": []}, "bad_request"),
            (a, {"topic": "", "payload": 1}, "bad_request"),
        ]
        for client, fields, code in cases:
            with pytest.raises(FerryError) as err:
                await client.request("send_data", **fields)
            assert err.value.code == code, (fields.keys(), err.value)
        with pytest.raises(FerryError) as err:
            await a.request("data_ack", data_seq=-1)
        assert err.value.code == "bad_request"
        # The connection still works and nothing was stored or delivered.
        reply = await a.send_data("chat", {"ok": True})
        assert reply["data_seq"] == 1
        await a.wait_for(lambda: len(a.data.received) == 1)
        assert mute.data.received == [a.data.received[0]], "received what a sent, nothing of the refused"
    finally:
        await mute.close()
        await a.close()


async def test_addressed_messages_reach_only_their_recipients_live_and_in_history(data_server: FerryServer) -> None:
    a, b, c = [await _lite(data_server, "to", name) for name in ("a", "b", "c")]
    late: LiteClient | None = None
    try:
        await a.send_data("chat", "to b", to=["b"])
        await a.send_data("chat", "to all")
        await b.send_data("chat", "to c and a", to=["c", "a"])
        await wait_until(lambda: len(a.data.received) == 3 and len(b.data.received) == 3 and len(c.data.received) == 2)
        # A sender gets its own messages too (the room's order, for everyone).
        assert [m["payload"] for m in b.data.received] == ["to b", "to all", "to c and a"]
        assert [m["payload"] for m in c.data.received] == ["to all", "to c and a"]
        assert a.data.received[0]["to"] == ["b"] and a.data.received[0]["from"] == "a"
        await c.close()
        # c joins again asking for the history: the same two, nothing addressed to b.
        late = LiteClient(name="c2")
        await late.connect(data_server.ws_url)
        reply = await late.join(data_server.token("to", "c"), data_since=0)
        assert reply["data"]["replayed"] == 2 and reply["data"]["last_seq"] == 3
        await late.wait_for(lambda: len(late.data.received) == 2)
        assert [m["data_seq"] for m in late.data.received] == [2, 3]
        # Unreliable: to the others at once, no seq, not stored.
        await a.send_data("cursor", {"x": 1}, reliable=False)
        await b.wait_for(lambda: b.data.unreliable == 1)
        assert a.data.unreliable == 0, "an unreliable message is not echoed to its sender"
        assert len(b.data.received) == 3
    finally:
        for client in (a, b, c, late):
            if client is not None:
                await client.close()


async def test_a_retried_send_is_stored_once_and_gets_the_same_seq(data_server: FerryServer, tmp_path: Path) -> None:
    a = await _lite(data_server, "retry", "a")
    b = await _lite(data_server, "retry", "b")
    try:
        first = await a.send_data("chat", "hello", data_id="m-1")
        a.drop_connection()  # the retry comes over a resumed connection
        await a.wait_for(lambda: a.resumes == 1, timeout=5)
        again = await a.request("send_data", topic="chat", payload="hello", data_id="m-1")
        assert again["data_seq"] == first["data_seq"] == 1 and again["duplicate"] is True
        other = await b.send_data("chat", "hi", data_id="m-1")  # ids are per sender
        assert other["data_seq"] == 2
        await b.wait_for(lambda: len(b.data.received) == 2)
        await b.wait_for(lambda: b.data.acked == 2, message="b did not acknowledge")
        await data_server.messages.store.flush()
        with sqlite3.connect(tmp_path / "data" / "messages.db") as conn:
            assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 2
            assert conn.execute("SELECT seq FROM cursors WHERE identity='b'").fetchone()[0] == 2
        metrics = data_server.metrics.render().decode()
        assert 'ferry_data_messages_total{reliable="true"} 2.0' in metrics, "the retry counted twice"
        assert "ferry_data_commits_total" in metrics and "ferry_data_bytes_total" in metrics
    finally:
        await a.close()
        await b.close()


async def test_1000_messages_from_three_clients_survive_reconnects_and_a_restart(tmp_path: Path) -> None:
    """Acceptance: 3 clients (WebSocket and raw QUIC) send 1000 reliable messages while one
    drops its connection twice and Ferry restarts once; every client ends with the same
    1000 messages in the same order, none twice, none missing."""
    # Fixed API keys and QUIC certificate, as in production: the clients' tokens and
    # pinned certificate stay valid across the restart.
    cert = quic_cert.generate(["127.0.0.1"], datetime.datetime.now(datetime.UTC))
    (tmp_path / "cert.pem").write_bytes(cert.pem())
    (tmp_path / "key.pem").write_bytes(
        cert.private_key.private_bytes(  # type: ignore[union-attr]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    config = make_config(
        data_dir=str(tmp_path / "data"),
        api_keys={"APIacceptance": "s" * 40},
        quic_cert_file=str(tmp_path / "cert.pem"),
        quic_key_file=str(tmp_path / "key.pem"),
    )
    server = FerryServer(config)
    await server.start()
    urls = {"a": server.ws_url, "b": server.quic_url, "c": server.ws_url}
    config = dataclasses.replace(config, http_port=server.http_port, quic_port=server.quic.port)
    clients = {name: LiteClient(name=name, request_timeout=5.0) for name in urls}
    total, per_client = 1000, {"a": 334, "b": 333, "c": 333}
    replies: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for name, client in clients.items():
            client.auto_rejoin = True
            await client.connect(urls[name])
            await client.join(server.token("acc", name), data_since=0)

        async def sender(name: str) -> None:
            client = clients[name]
            for i in range(per_client[name]):
                replies.append(await client.send_data("chat", {"n": i, "by": name}, timeout=30))
                if name == "a" and i in (60, 200):
                    client.drop_connection()  # its signaling connection dies mid-stream

        async def restart() -> None:
            nonlocal server
            await wait_until(lambda: len(replies) >= total // 2, timeout=30)
            await server.stop()
            server = FerryServer(config)
            await server.start()

        await asyncio.wait_for(asyncio.gather(*(sender(n) for n in clients), restart()), 60)
        for client in clients.values():
            await client.wait_for(
                lambda c=client: len(c.data.received) >= total,
                timeout=20,
                message=f"{client.name} has {len(client.data.received)} messages "
                f"(resumes {client.resumes}, rejoins {client.rejoins}, {client.resume_error})",
            )

        # a's drops were resumed (one may overlap the restart: then it joined again).
        a = clients["a"]
        assert a.resumes >= 1 and a.resumes + a.rejoins >= 3, (a.resumes, a.rejoins)
        assert all(c.rejoins >= 1 for c in clients.values()), "everyone joined again after the restart"
        logs = {name: [(m["data_seq"], m["data_id"]) for m in c.data.received] for name, c in clients.items()}
        assert logs["a"] == logs["b"] == logs["c"], "clients disagree on the messages or their order"
        seqs = [seq for seq, _ in logs["a"]]
        assert seqs == list(range(1, total + 1)), "a gap or a duplicate in the room's sequence"
        payloads = {(m["payload"]["by"], m["payload"]["n"]) for m in clients["a"].data.received}
        assert payloads == {(n, i) for n, count in per_client.items() for i in range(count)}
        assert sorted(r["data_seq"] for r in replies) == seqs, "each send was answered with its own seq"
    finally:
        for client in clients.values():
            await client.close()
        await server.stop()
    print(f"1000 messages, 2 drops, 1 restart: {time.monotonic() - started:.1f} s; "
          f"duplicates dropped by clients: {[c.data.duplicates for c in clients.values()]}")


async def test_unreliable_messages_use_quic_datagrams_where_the_client_has_them(data_server: FerryServer) -> None:
    a = await _lite(data_server, "dgram", "a", data_server.quic_url)
    b = await _lite(data_server, "dgram", "b", data_server.quic_url)
    c = await _lite(data_server, "dgram", "c")
    try:
        reply = await a.send_data("cursor", {"x": 1, "y": 2}, reliable=False)
        assert reply.get("datagram") is True
        await b.wait_for(lambda: b.data.unreliable == 1 and c.data.unreliable == 1)
        assert b._channel.datagrams_in == 1, "b (QUIC) got it as a datagram"  # type: ignore[union-attr]
        big = await a.send_data("cursor", "z" * 2000, reliable=False)  # over one packet: the stream
        assert big["ok"] and "datagram" not in big
        await b.wait_for(lambda: b.data.unreliable == 2 and c.data.unreliable == 2)
        assert b._channel.datagrams_in == 1  # type: ignore[union-attr]
        # A datagram that is not an unreliable send_data is dropped; the call goes on.
        quic = a._channel._protocol._quic  # type: ignore[union-attr]
        for junk in (b"not json", b'{"type":"send_data","id":1,"topic":"t","payload":1}', b'{"type":"leave","id":2}'):
            quic.send_datagram_frame(junk)
        a._channel._protocol.transmit()  # type: ignore[union-attr]
        assert (await a.request("ping"))["ok"]
        await wait_until(lambda: sum(c.datagrams_in for c in data_server.quic.connections) == 4)
        assert (await a.send_data("chat", "still here"))["data_seq"] == 1
        await b.wait_for(lambda: len(b.data.received) == 1)
        assert b.data.unreliable == 2 and a.participant["sid"] in data_server.rooms.rooms["dgram"].participants
    finally:
        for client in (a, b, c):
            await client.close()


async def test_a_long_history_replays_in_order_before_newer_messages(data_server: FerryServer) -> None:
    """Over 200 missed messages are read in a thread; messages sent meanwhile wait behind them."""
    a = await _lite(data_server, "long", "a")
    late = LiteClient(name="late")
    try:
        await asyncio.gather(*(a.send_data("chat", i, to=["a"] if i % 30 == 0 else None) for i in range(300)))
        await late.connect(data_server.ws_url)
        joined = asyncio.ensure_future(late.join(data_server.token("long", "late"), data_since=0))
        more = asyncio.ensure_future(asyncio.gather(*(a.send_data("chat", 300 + i) for i in range(20))))
        reply = await joined
        await more
        assert reply["data"]["replayed"] == 290, "the 10 messages addressed to a are not late's"
        await late.wait_for(lambda: len(late.data.received) == 310, timeout=15)
        seqs = [m["data_seq"] for m in late.data.received]
        assert seqs == sorted(seqs) and late.data.duplicates == 0
        assert {m["payload"] for m in late.data.received} == {i for i in range(320) if i >= 300 or i % 30}
    finally:
        await a.close()
        await late.close()


async def test_a_corrupt_history_gets_storage_errors_and_the_room_still_works(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "messages.db").write_bytes(b"this is not a database" * 100)
    server = FerryServer(make_config(data_dir=str(tmp_path / "data")))
    await server.start()
    client = None
    try:
        client = LiteClient(name="a")
        await client.connect(server.ws_url)
        reply = await client.join(server.token("corrupt", "a"), data_since=0)
        assert reply["data"]["error"]["code"] == "storage_error"
        with pytest.raises(FerryError) as err:
            await client.send_data("chat", "x", timeout=5)
        assert err.value.code == "storage_error"
        assert (await client.request("ping"))["ok"]
    finally:
        if client is not None:
            await client.close()
        await server.stop()


async def test_history_is_bounded_and_a_late_joiner_gets_only_what_is_kept(tmp_path: Path) -> None:
    server = FerryServer(make_config(data_dir=str(tmp_path / "data"), messages_max_per_room=2))
    await server.start()
    a = late = None
    try:
        a = await _lite(server, "bounded", "a")
        for i in range(3):
            await a.send_data("chat", i)
        late = LiteClient(name="late")
        await late.connect(server.ws_url)
        reply = await late.join(server.token("bounded", "late"), data_since=0)
        assert reply["data"] == {"last_seq": 3, "first_seq": 2, "replayed": 2}
        await late.wait_for(lambda: len(late.data.received) == 2)
        assert [m["payload"] for m in late.data.received] == [1, 2]
        await server.messages.store.flush()
        with sqlite3.connect(tmp_path / "data" / "messages.db") as conn:
            assert [r[0] for r in conn.execute("SELECT seq FROM messages ORDER BY seq")] == [2, 3]
    finally:
        for client in (a, late):
            if client is not None:
                await client.close()
        await server.stop()


@pytest.mark.browser
@needs_chromium
async def test_chat_panel_shows_history_and_live_messages_from_a_python_client(data_server: FerryServer) -> None:
    py = await _lite(data_server, "chat", "bot", name="Bot")
    try:
        await py.send_data("chat", {"text": "before you came"})
        await py.send_data("other", {"x": 1})  # another topic: not the chat's
        url = f"{data_server.http_url}/?room=chat&name=Ann&autojoin=1&publish=0"
        async with chromium() as browser:
            page = await open_page(browser, url)
            await wait_until(lambda: len(data_server.rooms.rooms.get("chat").participants) == 2, 20)  # type: ignore[union-attr]
            await py.send_data("chat", {"text": "hello page"})

            async def lines() -> list[dict[str, Any]]:
                return await page.evaluate("window.ferry.chatLines()")

            deadline = time.monotonic() + 10
            while len(await lines()) < 2:
                assert time.monotonic() < deadline, await lines()
                await asyncio.sleep(0.1)
            assert await lines() == [
                {"seq": 1, "name": "Bot", "text": "before you came"},
                {"seq": 3, "name": "Bot", "text": "hello page"},
            ]
            # An unreliable message reaches the page too (over WebTransport: a datagram).
            await py.send_data("cursor", {"x": 7}, reliable=False)
            deadline = time.monotonic() + 10
            script = "window.ferry.events.filter(e => e.type === 'data' && e.topic === 'cursor')"
            while not await page.evaluate(script):
                assert time.monotonic() < deadline, "unreliable message not received by the page"
                await asyncio.sleep(0.1)
            transport = await page.evaluate("window.ferry.transport")
            print("page transport:", transport)
            wt = [c for c in data_server.quic.connections if c.peer is not None]
            if transport == "webtransport":
                assert wt and wt[0].datagrams_out >= 1, "not sent as a datagram"
            reply = await page.evaluate("window.ferry.sendChat('hi bot')")
            assert reply["data_seq"] == 4
            await py.wait_for(lambda: any(m.get("payload") == {"text": "hi bot"} for m in py.data.received))
            sent = next(m for m in py.data.received if m["data_seq"] == 4)
            assert sent["name"] == "Ann" and sent["topic"] == "chat"
            assert page.ferry_errors == []
    finally:
        await py.close()


async def test_answered_messages_survive_a_killed_server_and_numbering_continues(tmp_path: Path) -> None:
    """SIGKILL, not a clean stop: what was answered was on disk already."""
    key, secret = generate_dev_keys()
    env = dict(os.environ, FERRY_API_KEY=key, FERRY_API_SECRET=secret, FERRY_LOG_LEVEL="info")
    data_dir = str(tmp_path / "data")

    def token(identity: str) -> str:
        return mint_token(key, secret, identity=identity, room="crash", now=time.time())

    proc, port = _spawn_ferry(env, data_dir)
    try:
        client = LiteClient(name="a")
        await client.connect(f"ws://127.0.0.1:{port}/ws")
        await client.join(token("a"))
        replies = await asyncio.gather(*(client.send_data("chat", i) for i in range(50)))
        assert sorted(r["data_seq"] for r in replies) == list(range(1, 51))
        proc.kill()  # no flush, no goodbye
        proc.wait(timeout=10)
        await client.close()
        proc, port = _spawn_ferry(env, data_dir)
        late = LiteClient(name="b")
        await late.connect(f"ws://127.0.0.1:{port}/ws")
        reply = await late.join(token("b"), data_since=0)
        assert reply["data"]["last_seq"] == 50
        await late.wait_for(lambda: len(late.data.received) == 50)
        assert sorted(m["payload"] for m in late.data.received) == list(range(50))
        assert (await late.send_data("chat", "after"))["data_seq"] == 51
        await late.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _spawn_ferry(env: dict[str, str], data_dir: str) -> tuple[subprocess.Popen[str], int]:
    """``ferry serve`` on free ports with this data dir; returns it and its HTTP port."""
    cmd = [sys.executable, "-m", "signaling.cli", "serve", "--host", "127.0.0.1", "--http-port", "0",
           "--media-port", "0", "--quic-port", "0", "--captions", "off", "--data-dir", data_dir]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if match := re.search(r"Ferry listening: http://127\.0\.0\.1:(\d+)/", line):
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
            return proc, int(match.group(1))
    proc.kill()
    raise AssertionError(f"ferry serve did not start (exit {proc.wait()})")


@pytest.mark.browser
@needs_chromium
async def test_page_whose_session_is_resumed_elsewhere_does_not_say_the_server_is_stopping(
    data_server: FerryServer,
) -> None:
    """``leave {reason: resumed}``: the same user's newer connection took over."""
    url = f"{data_server.http_url}/?room=res&name=Ann&autojoin=1&publish=0&transport=ws"
    async with chromium() as browser:
        context = await browser.new_context()
        page = await context.new_page()
        tokens: list[str] = []

        def on_websocket(ws: Any) -> None:
            def frame(payload: str | bytes) -> None:
                if isinstance(payload, str) and '"resume_token"' in payload:
                    tokens.append(json.loads(payload)["resume_token"])

            ws.on("framereceived", frame)

        page.on("websocket", on_websocket)
        await page.goto(url)
        await wait_until(lambda: bool(tokens), 20)
        other = SignalingChannel(lambda msg: None, request_timeout=5.0)
        await other.open(data_server.ws_url)
        try:
            await other.request("hello", version=1)
            await other.request("resume", token=tokens[0], last_seq=0)
            deadline = time.monotonic() + 10
            while await page.evaluate("window.ferry.state") != "left":
                assert time.monotonic() < deadline, await page.evaluate("window.ferry.state")
                await asyncio.sleep(0.1)
            text = await page.evaluate("document.getElementById('status').textContent")
            error = await page.evaluate("document.getElementById('status').classList.contains('error')")
            assert "server is stopping" not in text and "another connection" in text, text
            assert not error
        finally:
            await other.close()


@pytest.mark.browser
@needs_chromium
async def test_chat_panel_after_a_dropped_connection_shows_what_it_missed_once(data_server: FerryServer) -> None:
    py = await _lite(data_server, "drop", "bot", name="Bot")
    try:
        url = f"{data_server.http_url}/?room=drop&name=Ann&autojoin=1&publish=0&transport=ws"
        async with chromium() as browser:
            page = await open_page(browser, url)
            await wait_until(lambda: len(data_server.rooms.rooms.get("drop").participants) == 2, 20)  # type: ignore[union-attr]
            await py.send_data("chat", {"text": "one"})

            async def texts() -> list[str]:
                return [line["text"] for line in await page.evaluate("window.ferry.chatLines()")]

            deadline = time.monotonic() + 10
            while await texts() != ["one"]:
                assert time.monotonic() < deadline, await texts()
                await asyncio.sleep(0.05)
            conn = next(c for c in data_server._connections if c.session and c.session.participant
                        and c.session.participant.identity != "bot")
            replayed = data_server.messages.replayed
            await page.context.set_offline(True)  # its reconnects fail until we are done
            conn.abort()  # the page's WebSocket dies; it resumes with data_since
            await py.send_data("chat", {"text": "two"})
            await py.send_data("chat", {"text": "three"})
            await page.context.set_offline(False)
            deadline = time.monotonic() + 10
            while await texts() != ["one", "two", "three"]:
                assert time.monotonic() < deadline, await texts()
                await asyncio.sleep(0.05)
            assert await page.evaluate("window.ferry.reconnects") == 1
            assert data_server.messages.replayed == replayed + 2, "two and three came by the replay"
            await py.send_data("chat", {"text": "four"})
            deadline = time.monotonic() + 10
            while len(await texts()) < 4:
                assert time.monotonic() < deadline, await texts()
                await asyncio.sleep(0.05)
            assert await texts() == ["one", "two", "three", "four"]
            assert page.ferry_errors == []
    finally:
        await py.close()
