"""Signaling over raw QUIC (ALPN ``ferry``): the /ws protocol, its limits, migration."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import struct
from typing import Any

import aiohttp
import pytest

from clients.channel import FerryError
from clients.cli import run_join
from clients.client import FerryClient, allow_loopback
from clients.media_sources import TestPatternVideoTrack, ToneAudioTrack
from clients.quic_channel import QuicChannel
from signaling.app import FerryServer
from signaling.quic_cert import GENERATED_VALIDITY, CertificateStore
from tests.conftest import make_config, wait_until


class RawQuic:
    """A QUIC signaling connection that can send anything and records what comes back."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.channel = QuicChannel(self.messages.append, request_timeout=5.0, name="raw")
        self.channel._dispatch = self._record  # type: ignore[method-assign]  # replies too

    async def _record(self, msg: dict[str, Any]) -> None:
        self.messages.append(msg)

    async def open(self, url: str) -> RawQuic:
        await self.channel.open(url)
        return self

    def write(self, data: bytes) -> None:
        assert self.channel._writer is not None
        self.channel._writer.write(data)

    def send(self, msg: dict[str, Any]) -> None:
        body = json.dumps(msg).encode()
        self.write(struct.pack("!I", len(body)) + body)

    def errors(self) -> list[str]:
        return [m["error"]["code"] for m in self.messages if m.get("error")]

    async def close(self) -> None:
        await self.channel.close()


@pytest.fixture(autouse=True)
def _loopback():
    with allow_loopback():
        yield


async def test_hello_join_and_ping_over_quic(server: FerryServer) -> None:
    client = FerryClient()
    try:
        info = await client.connect(server.quic_url)
        assert info["server"] == "ferry" and info["version"] == 1
        reply = await client.join(server.token("q1", "alice"))
        assert reply["participant"]["identity"] == "alice"
        assert (await client.request("ping"))["ok"]
        assert server.quic.sessions()[0].transport == "quic"  # type: ignore[attr-defined]
    finally:
        await client.close()


async def test_quic_and_websocket_clients_exchange_media(server: FerryServer) -> None:
    q = FerryClient(connect_timeout=15.0)
    w = FerryClient(connect_timeout=15.0)
    try:
        await q.connect(server.quic_url)
        await q.join(server.token("q2", "quic"))
        await w.connect(server.ws_url)
        await w.join(server.token("q2", "ws"))
        await q.publish(TestPatternVideoTrack(), ToneAudioTrack())
        await w.publish(TestPatternVideoTrack(), ToneAudioTrack())
        q_sid, w_sid = q.participant["sid"], w.participant["sid"]
        await q.wait_for(lambda: (s := q.sink_for(w_sid, "video")) and s.received_frames > 5, timeout=15)
        await w.wait_for(lambda: (s := w.sink_for(q_sid, "video")) and s.received_frames > 5, timeout=15)
        await q.leave()
        await w.wait_for(lambda: any(e["type"] == "participant_left" for e in w.event_log), timeout=3)
    finally:
        await q.close()
        await w.close()


async def test_a_wrong_certificate_pin_is_refused(server: FerryServer) -> None:
    client = FerryClient()
    url = server.quic_url.split("?")[0] + "?sha256=" + "00" * 32
    with pytest.raises(FerryError) as info:
        await client.connect(url)
    assert info.value.code == "certificate_mismatch"
    await client.close()


async def test_api_webtransport_gives_url_and_certificate_hash(server: FerryServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.http_url + "/api/webtransport") as resp:
            body = await resp.json()
    assert body["url"] == f"https://127.0.0.1:{server.quic.port}/ferry"
    assert body["certificate_sha256"] == server.quic.certificate_sha256.hex()
    assert body["generated"] is True
    assert body["quic_url"] == server.quic_url


def test_generated_certificate_is_short_lived_ecdsa_and_rotates_before_expiry() -> None:
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    store = CertificateStore(["127.0.0.1", "localhost"], now)
    cert = store.current.certificate
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == GENERATED_VALIDITY
    assert GENERATED_VALIDITY < datetime.timedelta(days=14)
    first = store.current.sha256
    assert not store.rotate_if_due(now + datetime.timedelta(days=10))
    assert store.rotate_if_due(now + datetime.timedelta(days=11, hours=1))
    assert store.current.sha256 != first
    assert store.current.not_after > now + datetime.timedelta(days=20)


async def test_malformed_and_oversized_frames_get_coded_errors(server: FerryServer) -> None:
    raw = await RawQuic().open(server.quic_url)
    try:
        raw.write(struct.pack("!I", 5) + b"{nope")
        await wait_until(lambda: raw.errors() == ["bad_json"], timeout=5)
        raw.write(struct.pack("!I", 200_000) + b"x" * 200_000)
        await wait_until(lambda: raw.errors() == ["bad_json", "too_large"], timeout=5)
        raw.send({"type": "publish", "id": 7, "sdp": "v=0"})  # not joined: refused, not crashed
        await wait_until(lambda: len(raw.errors()) == 3, timeout=5)
        raw.send({"type": "hello", "id": 8, "version": 1})
        await wait_until(lambda: any(m.get("id") == 8 and m.get("ok") for m in raw.messages), timeout=5)
        raw.send({"type": "publish", "id": 9, "sdp": "v=0"})
        await wait_until(lambda: any(m.get("id") == 9 for m in raw.messages), timeout=5)
        assert raw.errors() == ["bad_json", "too_large", "bad_request", "not_joined"]
    finally:
        await raw.close()


# aioquic's client stream writers raise in __del__ once the server reset their streams.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_extra_streams_are_refused_and_a_flood_closes_the_connection(server: FerryServer) -> None:
    raw = await RawQuic().open(server.quic_url)
    try:
        raw.send({"type": "hello", "id": 1, "version": 1})
        await wait_until(lambda: raw.messages, timeout=5)
        protocol = raw.channel._protocol
        assert protocol is not None
        _, writer = await protocol.create_stream()
        writer.write(b"\x00\x00\x00\x02{}")
        await wait_until(lambda: "bad_request" in raw.errors(), timeout=5)
        assert not raw.channel.closed
        writers = [writer]
        for _ in range(10):
            _, writer = await protocol.create_stream()
            writer.write(b"x")
            writers.append(writer)
        await wait_until(lambda: raw.channel.closed, timeout=5)
    finally:
        await raw.close()


async def test_a_connection_that_never_joins_is_closed() -> None:
    srv = FerryServer(make_config(join_timeout_s=0.3))
    await srv.start()
    raw = await RawQuic().open(srv.quic_url)
    try:
        await wait_until(lambda: raw.channel.closed, timeout=5)
    finally:
        await raw.close()
        await srv.stop()


async def test_server_keeps_serving_a_call_while_bad_clients_hammer_quic(server: FerryServer) -> None:
    a = FerryClient(connect_timeout=15.0)
    b = FerryClient(connect_timeout=15.0)
    try:
        await a.connect(server.quic_url)
        await a.join(server.token("q3", "a"))
        await b.connect(server.quic_url)
        await b.join(server.token("q3", "b"))
        await a.publish(TestPatternVideoTrack())
        sink = lambda: b.sink_for(a.participant["sid"], "video")  # noqa: E731
        await b.wait_for(lambda: (s := sink()) and s.received_frames > 5, timeout=15)
        before = sink().received_frames
        bad = [await RawQuic().open(server.quic_url) for _ in range(5)]
        for raw in bad:
            raw.write(struct.pack("!I", 300_000) + b"y" * 300_000)
            raw.write(b"\xff\xff\xff\xff")
        await wait_until(lambda: all("too_large" in r.errors() for r in bad), timeout=10)
        await b.wait_for(lambda: sink().received_frames > before + 20, timeout=10, message="media stalled")
        assert (await a.request("ping"))["ok"]
        for raw in bad:
            await raw.close()
    finally:
        await a.close()
        await b.close()


async def test_quic_connection_survives_a_new_client_address(server: FerryServer) -> None:
    client = FerryClient()
    try:
        await client.connect(server.quic_url)
        await client.join(server.token("q4", "mover"))
        channel = client._channel
        assert isinstance(channel, QuicChannel)
        before = channel.local_address
        after = await channel.rebind()
        assert after[1] != before[1]
        reply = await client.request("ping", timeout=5)
        assert reply["ok"]
        assert not channel.closed
        peer = next(c for c in server.quic.connections if c.peer is not None)
        await wait_until(lambda: peer._quic._network_paths[0].addr[1] == after[1], timeout=5)
    finally:
        await client.close()


async def test_server_shutdown_ends_quic_sessions_with_leave() -> None:
    srv = FerryServer(make_config())
    await srv.start()
    client = FerryClient()
    await client.connect(srv.quic_url)
    await client.join(srv.token("q5", "x"))
    await asyncio.wait_for(srv.stop(), 10)
    await client.wait_for(lambda: any(e["type"] == "leave" for e in client.event_log), timeout=5)
    assert [e["reason"] for e in client.event_log if e["type"] == "leave"] == ["server_shutdown"]
    await client.close()


async def test_cli_joins_over_quic_with_insecure(server: FerryServer, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(
        url=server.quic_url.split("?")[0],  # no pin: --insecure skips verification
        insecure=True,
        token=server.token("q6", "cli"),
        publish=None,
        duration=0.5,
        stats_interval=0.25,
        connect_timeout=10.0,
        turn=None,
        turn_user=None,
        turn_pass=None,
        relay=False,
        server_ice_servers=False,
        no_loopback=True,
    )
    assert await asyncio.wait_for(run_join(args), 15) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert lines[0]["event"] == "joined" and lines[0]["participant"]["identity"] == "cli"
    assert lines[-1]["event"] == "left"


async def test_quic_url_without_pin_or_insecure_verifies_against_cas(server: FerryServer) -> None:
    client = FerryClient()
    with pytest.raises(ConnectionError):  # the generated certificate is self-signed: no CA vouches for it
        await client.connect(server.quic_url.split("?")[0], timeout=5)
    await client.close()


async def test_quic_connections_over_max_connections_are_refused() -> None:
    srv = FerryServer(make_config(max_connections=1))
    await srv.start()
    first = FerryClient()
    second = FerryClient()
    try:
        await first.connect(srv.quic_url)
        with pytest.raises((FerryError, ConnectionError, TimeoutError)):
            await second.connect(srv.quic_url, timeout=3)
        assert (await first.request("ping"))["ok"]
    finally:
        await first.close()
        await second.close()
        await srv.stop()


async def test_a_quiet_connection_is_kept_alive_by_server_pings(
    server: FerryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signaling.quic_server as quic_server

    monkeypatch.setattr(quic_server, "IDLE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(quic_server, "KEEPALIVE_S", 0.2)
    server.quic._server._configuration = server.quic._configuration()  # type: ignore[union-attr]
    client = FerryClient()
    try:
        await client.connect(server.quic_url)
        await client.join(server.token("quiet", "q"))
        await asyncio.sleep(3.0)  # the point of the test: three idle timeouts of silence
        assert client._channel is not None and not client._channel.closed and client.resumes == 0
        assert (await client.request("ping"))["ok"]
    finally:
        await client.close()
