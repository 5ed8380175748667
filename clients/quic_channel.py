"""The client end of Ferry's raw QUIC signaling (``quic://HOST:PORT``, ALPN ``ferry``).

The same requests, replies and events as the WebSocket, as length-prefixed frames on
one bidirectional stream. The server's certificate is checked one of three ways:

* ``quic://HOST:PORT?sha256=HEX``: pinned, the SHA-256 of the certificate's DER (what
  ``/api/webtransport`` serves as ``certificate_sha256``; Ferry's generated certificate
  is self-signed, so this is how dev and test setups verify it);
* no ``sha256``: the usual CA verification (a configured production certificate);
* ``insecure=True`` (``ferry client join --insecure``): no check at all, for dev only.

:meth:`QuicChannel.rebind` moves the connection to a new local UDP port, as a NAT
rebinding or a network change would: QUIC migration keeps the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aioquic.asyncio import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import DatagramFrameReceived, QuicEvent
from cryptography.hazmat.primitives.serialization import Encoding

from .channel import FerryError, SignalingChannel

logger = logging.getLogger(__name__)

ALPN = "ferry"
_LEN = struct.Struct("!I")
MAX_FRAME = 4 << 20
# Requests sent as datagrams are at most this big (one fits a 1200-byte QUIC packet).
MAX_DATAGRAM_BYTES = 1100


class _ClientProtocol(QuicConnectionProtocol):
    """Sends nothing once its socket is gone (after :meth:`QuicChannel.abort`, aioquic's
    timers still fire and would write to a closed transport)."""

    on_datagram: Callable[[bytes], None] | None = None

    def transmit(self) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        super().transmit()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, DatagramFrameReceived) and self.on_datagram is not None:
            self.on_datagram(event.data)
        super().quic_event_received(event)


def parse_quic_url(url: str) -> tuple[str, int, bytes | None]:
    """``quic://HOST:PORT[?sha256=HEX]`` -> (host, port, pinned hash or None)."""
    parts = urlsplit(url)
    if parts.scheme != "quic" or not parts.hostname or not parts.port:
        raise ValueError(f"not a quic://HOST:PORT URL: {url!r}")
    pin = parse_qs(parts.query).get("sha256")
    return parts.hostname, parts.port, bytes.fromhex(pin[0]) if pin else None


class QuicChannel(SignalingChannel):
    """One raw QUIC connection with its signaling stream."""

    transport = "quic"

    def __init__(
        self,
        on_event: Callable[[dict[str, Any]], Any],
        *,
        request_timeout: float,
        name: str = "",
        insecure: bool = False,
    ) -> None:
        super().__init__(on_event, request_timeout=request_timeout, name=name)
        self.insecure = insecure
        self._protocol: QuicConnectionProtocol | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._stream_reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._closed = True
        self.datagrams_in = self.datagrams_out = 0

    @property
    def closed(self) -> bool:
        return self._closed

    async def open(self, url: str, *, timeout: float | None = None) -> None:
        host, port, pin = parse_quic_url(url)
        t = self.request_timeout if timeout is None else timeout
        # Datagrams: unreliable room messages come and go as QUIC datagrams.
        configuration = QuicConfiguration(
            is_client=True, alpn_protocols=[ALPN], server_name=host, idle_timeout=30.0, max_datagram_frame_size=65536
        )
        if pin is not None or self.insecure:
            configuration.verify_mode = ssl.CERT_NONE  # the pin is checked after the handshake
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, addr = infos[0]
        quic = QuicConnection(configuration=configuration)
        local = ("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0)
        self._udp, protocol = await loop.create_datagram_endpoint(
            lambda: _ClientProtocol(quic), local_addr=local, family=family
        )
        self._protocol = protocol  # type: ignore[assignment]
        assert self._protocol is not None
        try:
            self._protocol.connect(addr)
            await asyncio.wait_for(self._protocol.wait_connected(), t)
            if pin is not None:
                self._check_pin(pin)
            self._stream_reader, self._writer = await self._protocol.create_stream()
        except BaseException:
            self._protocol.close()
            self._udp.close()
            raise
        self._closed = False
        self._protocol.on_datagram = self._on_datagram  # type: ignore[attr-defined]
        self._reader = asyncio.ensure_future(self._read_loop())

    def _on_datagram(self, data: bytes) -> None:
        self.datagrams_in += 1
        asyncio.ensure_future(self._deliver(data))

    def send_datagram(self, msg_type: str, **fields: Any) -> bool:
        """Send a request as one QUIC datagram, unanswered; False when the server takes
        none or it is too big (then :meth:`request` sends it on the stream)."""
        if self._closed or self._protocol is None:
            return False
        quic = self._protocol._quic
        limit = quic._remote_max_datagram_frame_size
        body = json.dumps({"type": msg_type, "id": next(self._ids), **fields}).encode("utf-8")
        if limit is None or len(body) > min(limit, MAX_DATAGRAM_BYTES):
            return False
        quic.send_datagram_frame(body)
        self._protocol.transmit()
        self.datagrams_out += 1
        return True

    def _check_pin(self, pin: bytes) -> None:
        assert self._protocol is not None
        cert = getattr(self._protocol._quic.tls, "_peer_certificate", None)
        got = hashlib.sha256(cert.public_bytes(Encoding.DER)).digest() if cert is not None else b""
        if got != pin:
            raise FerryError("certificate_mismatch", f"server certificate SHA-256 {got.hex()} is not the pinned {pin.hex()}")

    async def _send_text(self, text: str) -> None:
        if self._writer is None:
            raise FerryError("closed", "not connected")
        body = text.encode("utf-8")
        self._writer.write(_LEN.pack(len(body)) + body)

    async def _read_loop(self) -> None:
        assert self._stream_reader is not None
        try:
            while True:
                (length,) = _LEN.unpack(await self._stream_reader.readexactly(_LEN.size))
                if length > MAX_FRAME:
                    logger.warning("%s: %d-byte frame from server; closing", self.name, length)
                    return
                await self._deliver(await self._stream_reader.readexactly(length))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:
            logger.exception("%s: QUIC signaling read loop failed", self.name)
        finally:
            self._closed = True
            self._ended()

    async def rebind(self) -> tuple[str, int]:
        """Send from a new local UDP port from now on (the server sees a new address);
        returns the new local address."""
        assert self._protocol is not None and self._udp is not None
        loop = asyncio.get_running_loop()
        old = self._udp
        local = old.get_extra_info("sockname")
        protocol = self._protocol
        self._udp, _ = await loop.create_datagram_endpoint(lambda: protocol, local_addr=(local[0], 0))
        old.close()
        protocol.change_connection_id()
        protocol.transmit()
        return self._udp.get_extra_info("sockname")[:2]

    @property
    def local_address(self) -> tuple[str, int] | None:
        return self._udp.get_extra_info("sockname")[:2] if self._udp is not None else None

    def abort(self) -> None:
        """Vanish without a CONNECTION_CLOSE (a dead network): the server notices only
        when its idle timeout ends the connection, or when a resume replaces it."""
        if self._udp is not None:
            self._udp.abort()
        if self._stream_reader is not None:
            self._stream_reader.feed_eof()

    async def close(self) -> None:
        self.on_closed = None
        if self._protocol is not None and not self._closed:
            with contextlib.suppress(Exception):
                if self._writer is not None:
                    self._writer.write_eof()
                self._protocol.close()
                await asyncio.wait_for(self._protocol.wait_closed(), 2.0)
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, 2.0)
        if self._udp is not None:
            self._udp.close()
        self._closed = True

