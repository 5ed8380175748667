"""The WebTransport side of the QUIC listener, driven by aioquic's HTTP/3 client.

The browser tests show Chromium works; these check the refusals a browser never makes
(wrong path, second session, foreign origin, extra streams), certificate rotation and
that no session ticket (so no 0-RTT) is ever issued.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
import struct
from typing import Any

import aiohttp
import pytest
from aioquic.asyncio import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamDataReceived

from clients.channel import FerryError
from clients.client import FerryClient
from signaling.app import FerryServer
from tests.conftest import wait_until


class H3Client(QuicConnectionProtocol):
    """Collects response headers and WebTransport stream frames."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic, enable_webtransport=True)
        self.headers: dict[int, dict[str, str]] = {}
        self.frames: dict[int, bytearray] = {}
        self.wt_streams: set[int] = set()

    def open_stream(self, session_id: int) -> int:
        """A bidirectional WebTransport stream; the server's bytes on it are kept raw
        (aioquic's H3 client parses replies on streams it opened as HTTP frames)."""
        stream_id = self.h3.create_webtransport_stream(session_id)
        self.wt_streams.add(stream_id)
        return stream_id

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived) and event.stream_id in self.wt_streams:
            self.frames.setdefault(event.stream_id, bytearray()).extend(event.data)
            return
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self.headers[h3_event.stream_id] = {k.decode(): v.decode() for k, v in h3_event.headers}
            elif isinstance(h3_event, WebTransportStreamDataReceived):
                self.frames.setdefault(h3_event.stream_id, bytearray()).extend(h3_event.data)

    def connect_request(self, path: str, origin: str | None = None) -> int:
        stream_id = self._quic.get_next_available_stream_id()
        headers = [
            (b":method", b"CONNECT"),
            (b":protocol", b"webtransport"),
            (b":scheme", b"https"),
            (b":authority", b"127.0.0.1"),
            (b":path", path.encode()),
        ]
        if origin is not None:
            headers.append((b"origin", origin.encode()))
        self.h3.send_headers(stream_id, headers)
        self.transmit()
        return stream_id

    def messages(self, stream_id: int) -> list[dict[str, Any]]:
        buf, out = bytes(self.frames.get(stream_id, b"")), []
        while len(buf) >= 4:
            (n,) = struct.unpack("!I", buf[:4])
            if len(buf) < 4 + n:
                break
            out.append(json.loads(buf[4 : 4 + n]))
            buf = buf[4 + n :]
        return out


async def _open(server: FerryServer, tickets: list[object] | None = None) -> tuple[H3Client, asyncio.DatagramTransport]:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536)
    configuration.verify_mode = ssl.CERT_NONE
    loop = asyncio.get_running_loop()
    from aioquic.quic.connection import QuicConnection

    quic = QuicConnection(
        configuration=configuration,
        session_ticket_handler=(tickets.append if tickets is not None else None),
    )
    transport, protocol = await loop.create_datagram_endpoint(lambda: H3Client(quic), local_addr=("127.0.0.1", 0))
    protocol.connect(("127.0.0.1", server.quic.port))
    await asyncio.wait_for(protocol.wait_connected(), 5)
    return protocol, transport  # type: ignore[return-value]


def _frame(msg: dict[str, Any]) -> bytes:
    body = json.dumps(msg).encode()
    return struct.pack("!I", len(body)) + body


async def test_webtransport_session_speaks_the_signaling_protocol(server: FerryServer) -> None:
    client, transport = await _open(server)
    try:
        session = client.connect_request("/ferry", origin=server.http_url)
        await wait_until(lambda: session in client.headers, timeout=5)
        assert client.headers[session][":status"] == "200"
        assert client.headers[session]["sec-webtransport-http3-draft"] == "draft02"
        stream = client.open_stream(session)
        client._quic.send_stream_data(stream, _frame({"type": "hello", "id": 1, "version": 1}))
        client._quic.send_stream_data(stream, _frame({"type": "join", "id": 2, "token": server.token("wt", "py")}))
        client.transmit()
        await wait_until(lambda: len(client.messages(stream)) >= 2, timeout=5)
        hello, join = client.messages(stream)[:2]
        assert hello["ok"] and join["ok"] and join["participant"]["identity"] == "py"
        assert server.quic.sessions()[0].transport == "webtransport"  # type: ignore[attr-defined]
        # A second stream on the session is refused with a coded error on the first.
        extra = client.open_stream(session)
        client._quic.send_stream_data(extra, _frame({"type": "ping", "id": 3}))
        client.transmit()
        await wait_until(
            lambda: any(m.get("error", {}).get("code") == "bad_request" for m in client.messages(stream)), timeout=5
        )
    finally:
        client.close()
        transport.close()


@pytest.mark.parametrize(
    ("path", "origin", "status"),
    [("/nope", None, "404"), ("/ferry", "https://evil.example", "403")],
)
async def test_webtransport_refuses_other_paths_and_foreign_origins(
    server: FerryServer, path: str, origin: str | None, status: str
) -> None:
    client, transport = await _open(server)
    try:
        stream = client.connect_request(path, origin=origin)
        await wait_until(lambda: stream in client.headers, timeout=5)
        assert client.headers[stream][":status"] == status
    finally:
        client.close()
        transport.close()


async def test_a_second_webtransport_session_on_one_connection_is_refused(server: FerryServer) -> None:
    client, transport = await _open(server)
    try:
        first = client.connect_request("/ferry")
        await wait_until(lambda: first in client.headers, timeout=5)
        second = client.connect_request("/ferry")
        await wait_until(lambda: second in client.headers, timeout=5)
        assert (client.headers[first][":status"], client.headers[second][":status"]) == ("200", "429")
    finally:
        client.close()
        transport.close()


async def test_no_session_ticket_is_issued_so_there_is_no_0rtt(server: FerryServer) -> None:
    tickets: list[object] = []
    client, transport = await _open(server, tickets)
    try:
        stream = client.connect_request("/ferry")
        await wait_until(lambda: stream in client.headers, timeout=5)
        await client.ping()  # a full round trip after the handshake: a ticket would be here
        assert tickets == []
    finally:
        client.close()
        transport.close()


async def test_rotated_certificate_is_served_to_new_connections(server: FerryServer) -> None:
    old_pin = server.quic.certificate_sha256
    old_url = server.quic_url
    server.quic.on_timer(datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=12))
    assert server.quic.certificate_sha256 != old_pin
    async with aiohttp.ClientSession() as http:
        async with http.get(server.http_url + "/api/webtransport") as resp:
            assert (await resp.json())["certificate_sha256"] == server.quic.certificate_sha256.hex()
    fresh = FerryClient()
    try:
        await fresh.connect(server.quic_url)  # pinned to the new certificate
    finally:
        await fresh.close()
    stale = FerryClient()
    with pytest.raises(FerryError) as refused:
        await stale.connect(old_url)
    assert refused.value.code == "certificate_mismatch"
    await stale.close()
