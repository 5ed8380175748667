"""The client end of Ferry's signaling WebSocket, shared by every Python client.

Requests carry an ``id`` and are matched to their replies here; messages without an
``id`` are events, handed to one callback (awaited when it returns an awaitable).
`FerryClient` (aiortc) and `LiteClient` (Ferry's own cores) differ in media, not in
this (`clients.session.ClientSession` is what they share above it).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

logger = logging.getLogger(__name__)


class FerryError(Exception):
    """An ``ok: false`` reply (or a local failure described with the same shape).

    ``code`` is one of the protocol's error codes (``unauthorized``, ``not_joined``...)
    or a local one: ``timeout`` (no reply in time), ``closed`` (socket went away),
    ``connect_timeout`` (ICE/DTLS did not connect in time).
    """

    def __init__(self, code: str, message: str = "", reply: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.reply = reply


class RequestTimeout(FerryError, TimeoutError):
    """No reply with the request's id arrived in time (also a :class:`TimeoutError`)."""


class ConnectTimeout(FerryError, TimeoutError):
    """A peer connection did not reach ``connected`` in time.

    aiortc stays in ``connecting`` forever when, for instance, a TURN relay refuses the
    allocation, so every wait on connectivity is bounded and raises this.
    """


class SignalingChannel:
    """One WebSocket: ``request`` awaits the reply with its id; events go to ``on_event``.

    Subclasses carry the same messages over another transport
    (:class:`clients.quic_channel.QuicChannel`) by overriding ``open``, ``closed``,
    :meth:`_send_text`, :meth:`_read_loop` (feeding :meth:`_deliver`), ``abort`` and ``close``.
    ``on_closed`` is called once when the connection ends, however it ends.
    """

    transport = "ws"

    def __init__(
        self, on_event: Callable[[dict[str, Any]], Any], *, request_timeout: float, name: str = ""
    ) -> None:
        self.on_event = on_event
        self.request_timeout = request_timeout
        self.name = name
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self.on_closed: Callable[[], Any] | None = None

    @property
    def closed(self) -> bool:
        return self._ws is None or self._ws.closed

    async def open(self, url: str, *, timeout: float | None = None) -> None:
        t = self.request_timeout if timeout is None else timeout
        self._session = aiohttp.ClientSession()
        try:
            self._ws = await self._session.ws_connect(
                url, timeout=aiohttp.ClientWSTimeout(ws_close=t), heartbeat=None
            )
        except Exception:
            await self._session.close()
            self._session = None
            raise
        self._reader = asyncio.ensure_future(self._read_loop())

    async def request(
        self, msg_type: str, /, *, timeout: float | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Send a request and await the reply carrying the same ``id``.

        Returns the reply (``ok: true``); raises :class:`FerryError` on ``ok: false``,
        :class:`RequestTimeout` after ``timeout`` seconds (default ``request_timeout``)
        and ``FerryError("closed")`` if the socket closes first.
        """
        if self.closed:
            raise FerryError("closed", "not connected")
        req_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        t = self.request_timeout if timeout is None else timeout
        try:
            await self._send_text(json.dumps({"type": msg_type, "id": req_id, **fields}))
            reply = await asyncio.wait_for(fut, t)
        except TimeoutError:
            raise RequestTimeout(
                "timeout", f"no reply to {msg_type!r} (id {req_id}) within {t}s"
            ) from None
        finally:
            self._pending.pop(req_id, None)
        if not reply.get("ok", False):
            err = reply.get("error") or {}
            raise FerryError(str(err.get("code", "unknown")), str(err.get("message", "")), reply)
        return reply

    def send_datagram(self, msg_type: str, **fields: Any) -> bool:
        """Send a request as a datagram, unanswered (unreliable room messages over
        QUIC); False when this transport has none (WebSocket): use :meth:`request`."""
        return False

    async def _send_text(self, text: str) -> None:
        assert self._ws is not None
        await self._ws.send_str(text)

    async def _read_loop(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await self._deliver(msg.data)
        except Exception:
            logger.exception("%s: signaling read loop failed", self.name)
        finally:
            self._ended()

    async def _deliver(self, text: str | bytes) -> None:
        """One frame from the server: a reply to match or an event to hand on."""
        try:
            data = json.loads(text)
        except ValueError:
            logger.warning("%s: non-JSON frame from server: %.80r", self.name, text)
            return
        if isinstance(data, dict):
            await self._dispatch(data)

    def _ended(self) -> None:
        """The connection is gone: fail pending requests, tell ``on_closed`` (once)."""
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(FerryError("closed", "signaling socket closed"))
        callback, self.on_closed = self.on_closed, None
        if callback is not None:
            try:
                callback()
            except Exception:
                logger.exception("%s: on_closed failed", self.name)

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        req_id = msg.get("id")
        if req_id is not None:
            fut = self._pending.get(req_id)  # type: ignore[arg-type]
            if fut is not None and not fut.done():
                fut.set_result(msg)
            else:
                logger.warning("%s: reply with unknown id %r: %s", self.name, req_id, msg.get("type"))
            return
        result = self.on_event(msg)
        if inspect.isawaitable(result):
            await result

    def abort(self) -> None:
        """Drop the connection without a close handshake, as a dead network would (the
        server keeps the participant for its grace period): tests of reconnects use it."""
        transport = getattr(getattr(self._ws, "_conn", None), "transport", None)
        if transport is not None:
            transport.abort()
        elif self._reader is not None:
            self._reader.cancel()

    async def close(self) -> None:
        """Close the socket, then wait (bounded) for the reader; idempotent."""
        self.on_closed = None
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 2.0)
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reader, 2.0)
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.close()
            self._session = None
