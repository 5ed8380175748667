"""Signaling over QUIC: raw QUIC (ALPN ``ferry``) and WebTransport (HTTP/3, ``/ferry``).

A thin asyncio shell around aioquic. Both flavours carry the exact /ws protocol on one
bidirectional stream as length-prefixed frames (:mod:`signaling.stream_framing`), fed to
the same sans-I/O :class:`~signaling.session.Session` as a WebSocket. The listener is one
UDP port (``quic_port``); aioquic routes packets by connection ID, so a client whose
source address changes (NAT rebinding, Wi-Fi to 4G) keeps its connection (QUIC
migration, with aioquic's path validation).

Limits per connection: 16 bidirectional and 16 unidirectional streams at once (QUIC
stream credit), :data:`MAX_DATA` bytes of flow-control credit (what a client can make
Ferry buffer), frames over 64 KiB refused with ``too_large``, extra streams reset with
``bad_request`` and the connection closed after a flood of them, no join within
``join_timeout_s`` closes it, and a client that stops reading is cut off once
:data:`MAX_UNSENT_BYTES` wait for it. No session tickets are issued, so there is no 0-RTT:
a replayed first flight can never carry a request. ``max_connections`` and
``max_connections_per_ip`` cap QUIC connections as they cap WebSockets (counted apart).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import (
    DatagramReceived,
    DataReceived,
    H3Event,
    HeadersReceived,
    WebTransportStreamDataReceived,
)
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionTerminated,
    DatagramFrameReceived,
    ProtocolNegotiated,
    QuicEvent,
    StreamDataReceived,
    StreamReset,
)
from yarl import URL

from .config import Config, is_loopback_host
from .protocol import ProtocolError, encode
from .quic_cert import CertificateStore
from .session import Session
from .stream_framing import StreamGate, frame

log = logging.getLogger("ferry.signaling.quic")

ALPN_FERRY = "ferry"
WEBTRANSPORT_PATH = "/ferry"
MAX_DATA = 1 << 20
MAX_STREAM_DATA = 256 * 1024
MAX_STREAMS = 16
MAX_UNSENT_BYTES = 4 << 20
CLOSE_GRACE_S = 2.0
# Unreliable room messages up to this size go as QUIC datagrams (one fits a packet of
# the 1200-byte minimum path MTU); bigger ones go on the signaling stream.
MAX_DATAGRAM_BYTES = 1100
# A connection with nothing to say for IDLE_TIMEOUT_S is closed by QUIC itself; Ferry
# pings every connection each KEEPALIVE_S, so a quiet call never idles out while the
# client is there (a client that is gone stops acknowledging and does time out).
IDLE_TIMEOUT_S = 30.0
KEEPALIVE_S = 10.0
# QUIC application error codes (CONNECTION_CLOSE / RESET_STREAM).
ERR_STREAM_REFUSED = 0x10
ERR_POLICY = 0x11  # join timeout, stream flood, a client that does not read
ERR_SHUTDOWN = 0x12

SessionFactory = Callable[[Callable[[dict], None], Callable[[], None]], Session]


def _bidirectional(stream_id: int) -> bool:
    return not stream_id & 0x2


class SignalingPeer:
    """One signaling stream bound to one Session: frames in, messages out."""

    def __init__(self, protocol: FerryQuicProtocol, stream_id: int, transport: str) -> None:
        self.protocol = protocol
        self.stream_id = stream_id
        self.transport = transport  # "quic" | "webtransport"
        self.closing = False
        self.session: Session = protocol.owner.new_session(self.send, self.close)
        self.session.transport = transport  # type: ignore[attr-defined]
        self.session.send_datagram = self.send_datagram
        self._close_timer: asyncio.TimerHandle | None = None

    def on_frames(self, items: list[bytes | ProtocolError]) -> None:
        for item in items:
            if self.closing:
                return
            if isinstance(item, ProtocolError):
                self.protocol.owner.on_error(item.code)
                self.send(item.to_message())
            else:
                self.session.receive(item, time.time())

    def send(self, message: dict) -> None:
        if self.closing or self.protocol.terminated:
            return
        try:
            self.protocol._quic.send_stream_data(self.stream_id, frame(message))
        except ValueError:  # the stream was reset or finished: the connection is ending
            return
        if self.protocol.unsent_bytes(self.stream_id) > MAX_UNSENT_BYTES:
            log.warning("QUIC signaling client does not read (%d bytes unsent); closing", MAX_UNSENT_BYTES)
            self.protocol.abort(ERR_POLICY, "client does not read")
            return
        self.protocol.transmit_soon()

    def send_datagram(self, message: dict) -> bool:
        """An unreliable room message as a datagram; False when the client takes none
        (it did not offer ``max_datagram_frame_size``) or the message is too big."""
        if self.closing or self.protocol.terminated:
            return False
        quic = self.protocol._quic
        limit = quic._remote_max_datagram_frame_size
        if limit is None:
            return False
        data = encode(message).encode("utf-8")
        if len(data) > min(limit, MAX_DATAGRAM_BYTES):
            return False
        h3 = self.protocol.h3
        if self.transport == "webtransport":
            if h3 is None or self.protocol.wt_session is None:
                return False
            h3.send_datagram(self.protocol.wt_session, data)
        else:
            quic.send_datagram_frame(data)
        self.protocol.datagrams_out += 1
        self.protocol.transmit_soon()
        return True

    def close(self) -> None:
        """End the stream after what is queued; the connection closes when the client
        closes it or after CLOSE_GRACE_S."""
        if self.closing:
            return
        self.closing = True
        try:
            self.protocol._quic.send_stream_data(self.stream_id, b"", end_stream=True)
        except Exception:  # the stream may be reset already
            log.debug("ending signaling stream", exc_info=True)
        self.protocol.transmit_soon()
        self._close_timer = asyncio.get_running_loop().call_later(
            CLOSE_GRACE_S, self.protocol.abort, 0, "signaling ended"
        )

    def gone(self) -> None:
        """The connection (or the stream) ended: the session keeps its participant for
        the reconnect grace period, as on /ws."""
        if self._close_timer is not None:
            self._close_timer.cancel()
        self.closing = True
        self.session.disconnected(time.time())


class FerryQuicProtocol(QuicConnectionProtocol):
    """One QUIC connection: raw (ALPN ``ferry``) or HTTP/3 with a WebTransport session."""

    def __init__(self, quic: QuicConnection, owner: QuicSignaling, **kwargs: Any) -> None:
        super().__init__(quic, **kwargs)
        # Stream credit: the peer may open this many streams (aioquic's default is 128).
        quic._local_max_streams_bidi.value = MAX_STREAMS
        quic._local_max_streams_uni.value = MAX_STREAMS
        self.owner = owner
        self.gate = StreamGate()
        self.h3: H3Connection | None = None
        self.wt_session: int | None = None
        self.peer: SignalingPeer | None = None
        self.terminated = False
        self.datagrams_in = self.datagrams_out = 0
        owner.connections.add(self)
        self._join_timer = asyncio.get_running_loop().call_later(owner.config.join_timeout_s, self._join_timeout)

    # -- helpers -------------------------------------------------------------------------
    def transmit_soon(self) -> None:
        self._transmit_soon()

    def unsent_bytes(self, stream_id: int) -> int:
        stream = self._quic._streams.get(stream_id)
        sender = getattr(stream, "sender", None)
        buffer = getattr(sender, "_buffer", None)
        return len(buffer) if buffer is not None else 0

    def remote_ip(self) -> str | None:
        paths = self._quic._network_paths
        return str(paths[0].addr[0]) if paths else None

    def abort(self, error_code: int, reason: str) -> None:
        if not self.terminated:
            self.close(error_code=error_code, reason_phrase=reason)

    def _join_timeout(self) -> None:
        """Unauthenticated connections (no stream, no hello, no join) do not linger."""
        if self.peer is not None and (self.peer.session.joined or self.peer.closing):
            return
        self.owner.on_error("join_timeout")
        log.info("closing QUIC signaling connection: no join within %.0f s", self.owner.config.join_timeout_s)
        self.abort(ERR_POLICY, "no join within join_timeout_s")

    # -- events --------------------------------------------------------------------------
    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated):
            refusal = self.owner.refusal(self)
            if refusal is not None:
                self.owner.on_error("connection_limit")
                log.debug("refused QUIC connection: %s", refusal)
                self.abort(ERR_POLICY, refusal)
                return
            if event.alpn_protocol in H3_ALPN:
                self.h3 = H3Connection(self._quic, enable_webtransport=True)
        elif isinstance(event, ConnectionTerminated):
            self.terminated = True
            self._join_timer.cancel()
            self.owner.connections.discard(self)
            if self.peer is not None:
                self.peer.gone()
            return
        if self.h3 is not None:
            for h3_event in self.h3.handle_event(event):
                self._h3_event(h3_event)
        elif isinstance(event, StreamDataReceived):
            self._stream_data(event.stream_id, event.data, event.end_stream, "quic")
        elif isinstance(event, DatagramFrameReceived):
            self._datagram(event.data)
        if isinstance(event, StreamReset) and self.peer is not None and event.stream_id == self.peer.stream_id:
            self.abort(0, "signaling stream reset")

    def _stream_data(self, stream_id: int, data: bytes, ended: bool, transport: str) -> None:
        verdict = self.gate.classify(stream_id, _bidirectional(stream_id))
        if verdict.action == "accept":
            if self.peer is None:
                self.peer = SignalingPeer(self, stream_id, transport)
            if data:
                self.peer.on_frames(self.gate.feed(data))
            if ended and not self.peer.closing:
                self.peer.close()
            return
        if verdict.error is not None:
            self.owner.on_error(verdict.error.code)
            if self.peer is not None:
                self.peer.send(verdict.error.to_message())
        if verdict.action == "close":
            self.abort(ERR_POLICY, "stream flood")
            return
        self._refuse_stream(stream_id)

    def _datagram(self, data: bytes) -> None:
        """Datagrams carry unreliable room messages of a joined session; others are dropped."""
        self.datagrams_in += 1
        if self.peer is None or not self.peer.session.joined:
            self.owner.on_error("bad_request")
            return
        self.peer.session.receive_datagram(data, time.time())

    def _refuse_stream(self, stream_id: int) -> None:
        try:
            self._quic.stop_stream(stream_id, ERR_STREAM_REFUSED)
            if _bidirectional(stream_id):
                self._quic.reset_stream(stream_id, ERR_STREAM_REFUSED)
        except ValueError:  # already gone
            pass
        self.transmit_soon()

    def _h3_event(self, event: H3Event) -> None:
        assert self.h3 is not None
        if isinstance(event, HeadersReceived):
            headers = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in event.headers}
            status = self._connect_status(headers)
            reply = [(b":status", str(status).encode())]
            if status == 200:
                self.wt_session = event.stream_id
                reply.append((b"sec-webtransport-http3-draft", b"draft02"))
                self.h3.send_headers(event.stream_id, reply)
            else:
                self.owner.on_error("webtransport_refused")
                self.h3.send_headers(event.stream_id, reply, end_stream=True)
            self.transmit_soon()
        elif isinstance(event, WebTransportStreamDataReceived):
            if event.session_id != self.wt_session:
                self.owner.on_error("bad_request")
                self._refuse_stream(event.stream_id)
                return
            self._stream_data(event.stream_id, event.data, event.stream_ended, "webtransport")
        elif isinstance(event, DatagramReceived) and event.stream_id == self.wt_session:
            self._datagram(event.data)
        elif isinstance(event, DataReceived) and event.stream_id == self.wt_session and event.stream_ended:
            self.abort(0, "webtransport session closed")

    def _connect_status(self, headers: dict[str, str]) -> int:
        """200 for the first WebTransport CONNECT to /ferry from an allowed origin."""
        if headers.get(":method") != "CONNECT" or headers.get(":protocol") != "webtransport":
            return 404 if headers.get(":method") in ("GET", "HEAD", "POST") else 400
        if headers.get(":path", "").split("?")[0] != WEBTRANSPORT_PATH:
            return 404
        if self.wt_session is not None:
            return 429  # one signaling session per connection
        if self.owner.stopping:
            return 503
        if not self.owner.origin_allowed(headers.get("origin"), headers.get(":authority", "")):
            return 403
        return 200


class QuicSignaling:
    """The UDP listener: certificate, aioquic server, live connections."""

    def __init__(
        self,
        config: Config,
        new_session: SessionFactory,
        on_error: Callable[[str], None] = lambda code: None,
    ) -> None:
        self.config = config
        self.new_session = new_session
        self.on_error = on_error
        names = ["localhost", "127.0.0.1", "::1", config.host, *config.announce_ips]
        self.certs = CertificateStore(
            [n for n in names if n not in ("0.0.0.0", "::", "")],
            datetime.datetime.now(datetime.UTC),
            cert_file=config.quic_cert_file,
            key_file=config.quic_key_file,
        )
        self.connections: set[FerryQuicProtocol] = set()
        self.stopping = False
        self.port: int | None = None
        self._server: QuicServer | None = None
        self._pinged_at = 0.0

    def _configuration(self) -> QuicConfiguration:
        configuration = QuicConfiguration(
            is_client=False,
            alpn_protocols=[*H3_ALPN, ALPN_FERRY],
            max_datagram_frame_size=65536,  # WebTransport (H3_DATAGRAM) requires it
            max_data=MAX_DATA,
            max_stream_data=MAX_STREAM_DATA,
            idle_timeout=IDLE_TIMEOUT_S,
        )
        configuration.certificate = self.certs.current.certificate
        configuration.private_key = self.certs.current.private_key  # type: ignore[assignment]
        return configuration

    async def start(self) -> None:
        def create_protocol(quic: QuicConnection, **kwargs: Any) -> FerryQuicProtocol:
            return FerryQuicProtocol(quic, self, **kwargs)

        # No session_ticket_handler: no tickets, so no resumption and no 0-RTT data.
        self._server = await serve(
            self.config.host, self.config.quic_port, configuration=self._configuration(), create_protocol=create_protocol
        )
        transport = self._server._transport
        assert transport is not None
        self.port = transport.get_extra_info("sockname")[1]

    def on_timer(self, now: datetime.datetime) -> None:
        """Keep connections alive; rotate a generated certificate before it expires (new
        connections get it)."""
        tick = asyncio.get_running_loop().time()
        if tick - self._pinged_at >= KEEPALIVE_S:
            self._pinged_at = tick
            for connection in list(self.connections):
                if not connection.terminated:
                    connection._quic.send_ping(0)
                    connection.transmit_soon()
        if self.certs.rotate_if_due(now) and self._server is not None:
            self._server._configuration = self._configuration()
            log.info("QUIC certificate rotated; valid until %s", self.certs.current.not_after)

    @property
    def certificate_sha256(self) -> bytes:
        return self.certs.current.sha256

    def quic_url(self, host: str) -> str:
        """``quic://HOST:PORT?sha256=HEX``: raw QUIC with the certificate pinned."""
        address = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        return f"quic://{address}?sha256={self.certificate_sha256.hex()}"

    def url(self, host: str | None = None) -> str:
        host = host or self.config.host
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.port}{WEBTRANSPORT_PATH}"

    def sessions(self) -> list[Session]:
        return [c.peer.session for c in self.connections if c.peer is not None]

    def end_all(self, reason: str) -> None:
        """Stop accepting; end every session (``leave`` event, then the stream ends)."""
        self.stopping = True
        for connection in list(self.connections):
            if connection.peer is not None:
                connection.peer.session.end(reason)
            else:
                connection.abort(ERR_SHUTDOWN, reason)

    async def stop(self) -> None:
        self.stopping = True
        for connection in list(self.connections):
            connection.abort(ERR_SHUTDOWN, "server stopping")
        if self._server is not None:
            self._server.close()
            self._server = None

    def refusal(self, connection: FerryQuicProtocol) -> str | None:
        """Why a new connection is refused (the /ws caps, counted over QUIC connections;
        a stopping server takes none, as its closed /ws listener takes none)."""
        if self.stopping:
            return "server stopping"
        others = [c for c in self.connections if c is not connection and not c.terminated]
        if len(others) >= self.config.max_connections:
            return f"server full: {len(others)} QUIC connections (max_connections)"
        per_ip, ip = self.config.max_connections_per_ip, connection.remote_ip()
        if per_ip and ip is not None and not self._exempt(ip):
            if sum(1 for c in others if c.remote_ip() == ip) >= per_ip:
                return f"too many connections from {ip} (max_connections_per_ip={per_ip})"
        return None

    def _exempt(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip.removeprefix("::ffff:"))
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(net) for net in self.config.per_ip_exempt)

    def origin_allowed(self, origin: str | None, authority: str) -> bool:
        """The /ws origin rule: no Origin, loopback, this server's host, or allowed_origins."""
        if origin is None:
            return True
        allowed = self.config.allowed_origins
        origin = origin.strip().lower().rstrip("/")
        if "*" in allowed or origin in allowed:
            return True
        try:
            host = URL(origin).host
            own = URL(f"https://{authority}").host if authority else None
        except ValueError:
            return False
        return bool(host) and (is_loopback_host(host) or host == own)


def add_routes(app: web.Application, quic: QuicSignaling, public_host: Callable[[web.Request], str]) -> None:
    """``GET /api/webtransport``: where the listener is and the certificate hash pages pin
    (``serverCertificateHashes``); pages fetch it on every connect, so rotation is seamless."""

    async def webtransport(request: web.Request) -> web.Response:
        host = public_host(request)
        digest = quic.certificate_sha256
        cert = quic.certs.current
        return web.json_response(
            {
                "url": quic.url(host),
                "quic_url": quic.quic_url(host),
                "certificate_sha256": digest.hex(),
                "certificate_sha256_b64": base64.b64encode(digest).decode(),
                "generated": cert.generated,
                "not_after_unix": int(cert.not_after.timestamp()),
            }
        )

    app.router.add_get("/api/webtransport", webtransport)
