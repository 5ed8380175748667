"""What every Python client does above its media: the participant's signaling session.

`ClientSession` owns the :class:`SignalingChannel` (``hello`` first, requests matched
by ``id``), the join reply, the worker that answers ``subscriber_offer`` events one at
a time, and teardown. `FerryClient` (aiortc) and `LiteClient` (Ferry's own cores)
subclass it and add their media: how an offer is answered (:meth:`_answer_offer`),
what closes with the session (:meth:`_close_media`) and what each event updates.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Self

from .channel import FerryError, SignalingChannel
from .quic_channel import QuicChannel
from .room_messages import RoomMessages

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_QUEUED_OFFERS = 64
# Reconnect backoff after a dropped connection: first delay, doubling up to the cap,
# for at most RESUME_WINDOW_S (the server's grace is 15 s by default).
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 2.0
RESUME_WINDOW_S = 15.0
# A session the server ended (it restarted) or refused to resume joins again for this long.
REJOIN_WINDOW_S = 30.0
# Reasons of a ``leave`` event after which an ``auto_rejoin`` session does not join again.
FINAL_LEAVE_REASONS = frozenset({"replaced", "resumed", "removed", "room_closed"})


class ClientSession:
    """One participant's signaling: connect, request, join, subscriber offers, leave.

    Public state: ``url``, ``server_info`` (the ``hello`` reply), ``room`` and
    ``participant`` (from the join reply), ``published`` (TrackInfo list of the last
    ``publish`` reply), ``subscriber_version`` (the offer last answered) and
    ``subscriber_errors`` (offers that could not be answered).

    Resume: when the connection drops without ``leave``, the session reconnects by
    itself (same URL, backoff from RECONNECT_FIRST_S to RECONNECT_MAX_S) and sends
    ``resume {token, last_seq}``: it keeps its participant, and the events it missed
    arrive in order (``last_seq`` is the ``seq`` of the last event seen; duplicates are
    dropped). ``reconnecting`` is True meanwhile; ``resumes`` counts successes and
    ``resume_error`` holds the code when the server refused (then the session stays
    closed: join again).

    Room messages: :meth:`send_data` sends one (a reliable send is retried with the same
    ``data_id`` across reconnects, so it is stored once); ``data`` (:class:`RoomMessages`)
    keeps what arrives, acknowledges it and remembers the cursor, which a resume or a
    join sends as ``data_since``: what was missed arrives in order, exactly once. With
    ``auto_rejoin``, a session the server ended (``server_shutdown``: a restart) or
    refused to resume joins again with the same token for REJOIN_WINDOW_S (a new
    participant sid; signaling and room messages only: media is not re-published);
    ``rejoins`` counts that.
    """

    #: :meth:`wait_for` polls this often (seconds) unless told otherwise.
    poll_interval = 0.05
    #: ``quic://`` URLs without a ``sha256`` pin: skip certificate verification (dev only).
    quic_insecure = False

    def __init__(self, *, name: str, request_timeout: float, connect_timeout: float) -> None:
        self.name = name
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.url: str | None = None
        self.server_info: dict[str, Any] = {}
        self.room: dict[str, Any] = {}
        self.participant: dict[str, Any] = {}
        self.published: list[dict[str, Any]] = []
        self.subscriber_version: int | None = None
        self.subscriber_errors: list[BaseException] = []
        self._channel: SignalingChannel | None = None
        self._offer_worker: asyncio.Task[None] | None = None
        self._offers: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=MAX_QUEUED_OFFERS)
        self._leaving = False
        self._closed = False
        self.auto_resume = True
        self.resume_token: str | None = None
        self.last_seq = 0
        self.reconnecting = False
        self.resumes = 0
        self.resume_error: str | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self.data = RoomMessages(self._send_ack)
        self.auto_rejoin = False
        self.rejoins = 0
        self._join_fields: dict[str, Any] | None = None

    # -- signaling -----------------------------------------------------------------------
    async def connect(self, url: str, *, timeout: float | None = None) -> dict[str, Any]:
        """Open the signaling connection and send ``hello``; returns (and keeps) its reply.

        ``ws://HOST:PORT/ws`` opens a WebSocket, ``quic://HOST:PORT[?sha256=HEX]`` raw
        QUIC (:mod:`clients.quic_channel` says how the certificate is checked).
        """
        self.url = url
        t = timeout if timeout is not None else self.request_timeout
        self._channel = await self._open_channel(url, t)
        self._offer_worker = asyncio.ensure_future(self._process_offers())
        self.server_info = await self.request("hello", version=PROTOCOL_VERSION, timeout=t)
        return self.server_info

    async def _open_channel(self, url: str, timeout: float) -> SignalingChannel:
        channel: SignalingChannel
        if url.startswith("quic://"):
            channel = QuicChannel(
                self._sequenced, request_timeout=self.request_timeout, name=self.name, insecure=self.quic_insecure
            )
        else:
            channel = SignalingChannel(self._sequenced, request_timeout=self.request_timeout, name=self.name)
        await channel.open(url, timeout=timeout)
        channel.on_closed = lambda: self._connection_lost(channel)
        return channel

    @property
    def transport(self) -> str | None:
        """``"ws"`` or ``"quic"``: the signaling transport in use."""
        return self._channel.transport if self._channel is not None else None

    def _sequenced(self, msg: dict[str, Any]) -> Any:
        """Events carry ``seq``: remember the last, drop what a replay repeats."""
        seq = msg.get("seq")
        if isinstance(seq, int):
            if seq <= self.last_seq:
                return None
            self.last_seq = seq
        kind = msg.get("type")
        if kind == "data":
            self.data.on_event(msg)
            return None
        if kind == "leave":
            self.resume_token = None  # the server ended this session: nothing to resume
            if self.auto_rejoin and msg.get("reason") not in FINAL_LEAVE_REASONS:
                self._start_rejoin()
        return self._dispatch(msg)

    # -- resume --------------------------------------------------------------------------
    def _connection_lost(self, channel: SignalingChannel) -> None:
        if channel is not self._channel or self._closed or self._leaving:
            return
        if not self.auto_resume or self.resume_token is None or self._reconnect_task is not None:
            return
        self.reconnecting = True
        self._reconnect_task = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        """Reconnect with backoff and resume; gives up on a refusal or after the window."""
        assert self.url is not None
        delay = RECONNECT_FIRST_S
        deadline = time.monotonic() + RESUME_WINDOW_S
        old = self._channel
        try:
            while not self._closed and time.monotonic() < deadline:
                channel: SignalingChannel | None = None
                try:
                    channel = await self._open_channel(self.url, min(self.request_timeout, 3.0))
                    await channel.request("hello", version=PROTOCOL_VERSION, timeout=3.0)
                    self._channel = channel
                    reply = await channel.request(
                        "resume", token=self.resume_token, last_seq=self.last_seq, timeout=3.0, **self._data_since()
                    )
                except FerryError as exc:
                    if exc.code.startswith("resume_"):
                        logger.warning("%s: resume refused: %s", self.name, exc)
                        if self.auto_rejoin and self._join_fields is not None:
                            with contextlib.suppress(Exception):
                                await channel.close()
                            await self._rejoin()
                        else:
                            self.resume_error = exc.code
                        return
                    logger.info("%s: reconnect attempt failed: %s", self.name, exc)
                except (OSError, TimeoutError, ConnectionError) as exc:
                    logger.info("%s: reconnect attempt failed: %r", self.name, exc)
                else:
                    self.resume_token = reply.get("resume_token", self.resume_token)
                    self.resumes += 1
                    self.reconnecting = False
                    if old is not None:
                        with contextlib.suppress(Exception):
                            await old.close()
                    await self._resumed(reply)
                    self.data.schedule_ack()
                    return
                if channel is not None and channel is not self._channel:
                    with contextlib.suppress(Exception):
                        await channel.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
            self.resume_error = self.resume_error or "resume_expired"
        finally:
            self._reconnect_task = None
            if self.resume_error is not None:
                self.reconnecting = False

    def _start_rejoin(self) -> None:
        if self._reconnect_task is None and not self._closed and not self._leaving and self._join_fields is not None:
            self.reconnecting = True
            self._reconnect_task = asyncio.ensure_future(self._rejoin_task())

    async def _rejoin_task(self) -> None:
        try:
            await self._rejoin()
        finally:
            self._reconnect_task = None

    async def _rejoin(self) -> None:
        """Join again with the same token (a new participant), asking for the room
        messages after the cursor; backoff as for a resume, for REJOIN_WINDOW_S."""
        assert self.url is not None and self._join_fields is not None
        delay = RECONNECT_FIRST_S
        deadline = time.monotonic() + REJOIN_WINDOW_S
        old = self._channel
        while not self._closed and time.monotonic() < deadline:
            channel: SignalingChannel | None = None
            try:
                channel = await self._open_channel(self.url, min(self.request_timeout, 3.0))
                await channel.request("hello", version=PROTOCOL_VERSION, timeout=3.0)
                self.last_seq = 0  # a new participant: its events are numbered from 1
                reply = await channel.request("join", timeout=3.0, **self._join_fields, **self._data_since())
            except FerryError as exc:
                if exc.code in ("unauthorized", "forbidden"):
                    self.resume_error = exc.code
                    self.reconnecting = False
                    logger.warning("%s: rejoin refused: %s", self.name, exc)
                    if channel is not None:
                        with contextlib.suppress(Exception):
                            await channel.close()
                    return
                logger.info("%s: rejoin attempt failed: %s", self.name, exc)
            except (OSError, TimeoutError, ConnectionError) as exc:
                logger.info("%s: rejoin attempt failed: %r", self.name, exc)
            else:
                self._channel = channel
                self._joined(reply)
                self.rejoins += 1
                self.resume_error = None
                self.reconnecting = False
                if old is not None and old is not channel:
                    with contextlib.suppress(Exception):
                        await old.close()
                self.data.schedule_ack()
                return
            if channel is not None:
                with contextlib.suppress(Exception):
                    await channel.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)
        self.resume_error = self.resume_error or "resume_expired"
        self.reconnecting = False

    def _data_since(self) -> dict[str, int]:
        return {"data_since": self.data.cursor} if self.data.cursor is not None else {}

    async def _send_ack(self, seq: int) -> None:
        await self.request("data_ack", data_seq=seq, timeout=min(self.request_timeout, 5.0))

    async def send_data(
        self,
        topic: str,
        payload: Any = None,
        *,
        payload_bytes: bytes | None = None,
        to: list[str] | None = None,
        reliable: bool = True,
        data_id: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send a room message (``payload``: any JSON value, or ``payload_bytes``) to
        everyone or to the identities in ``to``; returns the reply (``data_seq`` and
        ``data_id`` when reliable).

        An unreliable send over ``quic://`` goes as one QUIC datagram when it fits (no
        reply: the returned dict says ``datagram: True``), else as a request.
        A reliable send gets a ``data_id`` (random unless given) and is retried with it
        while the connection is down or reconnecting, until ``timeout`` (default twice
        the resume window): the server stores it once whatever reply was lost.
        """
        fields: dict[str, Any] = {"topic": topic, "reliable": reliable}
        if payload_bytes is not None:
            fields["payload_b64"] = base64.b64encode(payload_bytes).decode("ascii")
        else:
            fields["payload"] = payload
        if to is not None:
            fields["to"] = list(to)
        if not reliable:
            if self._channel is not None and self._channel.send_datagram("send_data", **fields):
                return {"type": "send_data", "ok": True, "datagram": True}
            return await self.request("send_data", **fields)
        fields["data_id"] = data_id or uuid.uuid4().hex
        deadline = time.monotonic() + (2 * RESUME_WINDOW_S if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            channel = self._channel
            try:
                return await self.request("send_data", timeout=max(0.1, min(self.request_timeout, left)), **fields)
            except FerryError as exc:
                if exc.code not in ("closed", "timeout") or self._closed or time.monotonic() >= deadline:
                    raise
                if exc.code == "timeout":
                    channel = None  # the connection may be fine: retry on it
            except (ConnectionError, OSError):  # the socket died under the write
                if self._closed or time.monotonic() >= deadline:
                    raise
            await self._wait_signaling(deadline, channel)

    async def _wait_signaling(self, deadline: float, failed: SignalingChannel | None = None) -> None:
        """Until the session has a working connection other than ``failed`` (resumed or
        rejoined); FerryError when the session gave up or ``deadline`` passed."""
        while True:
            channel = self._channel
            if channel is not None and channel is not failed and not channel.closed and not self.reconnecting:
                return
            if self._closed or (self.resume_error is not None and not self.reconnecting):
                raise FerryError(self.resume_error or "closed", "the session is over; join again")
            if time.monotonic() >= deadline:
                raise FerryError("timeout", "the signaling connection did not come back in time")
            await asyncio.sleep(self.poll_interval / 2)

    async def _resumed(self, reply: dict[str, Any]) -> None:
        """Called after a successful resume (subclasses refresh their media if needed)."""

    async def request(
        self, msg_type: str, /, *, timeout: float | None = None, **fields: Any
    ) -> dict[str, Any]:
        """:meth:`SignalingChannel.request` on this session's socket (the reply, or
        :class:`FerryError` / :class:`RequestTimeout`); ``FerryError("closed")`` before
        :meth:`connect`."""
        if self._channel is None:
            raise FerryError("closed", "not connected")
        return await self._channel.request(msg_type, timeout=timeout, **fields)

    def _dispatch(self, msg: dict[str, Any]) -> Any:
        """An event from the server (replies are matched by the channel)."""
        self._queue_offer(msg)

    def _queue_offer(self, msg: dict[str, Any]) -> None:
        if msg.get("type") != "subscriber_offer":
            return
        try:
            self._offers.put_nowait(msg)
        except asyncio.QueueFull:  # the server serializes offers: cannot happen
            logger.warning("%s: too many pending subscriber offers", self.name)

    async def join(self, token: str, *, auto_subscribe: bool = True, data_since: int | None = None) -> dict[str, Any]:
        """Send ``join``; returns the reply and records the room and this participant.

        ``data_since``: replay the room messages after this ``data_seq`` (0: the room's
        kept history); by default the session's cursor when it has one, else the
        server's acknowledged cursor of this identity."""
        self._join_fields = {"token": token, "auto_subscribe": auto_subscribe}
        since = {"data_since": data_since} if data_since is not None else self._data_since()
        reply = await self.request("join", **self._join_fields, **since)
        self._joined(reply)
        return reply

    def _joined(self, reply: dict[str, Any]) -> None:
        self.room = reply.get("room") or {}
        self.participant = reply.get("participant") or {}
        self.resume_token = reply.get("resume_token")

    def drop_connection(self) -> None:
        """Lose the signaling connection abruptly, as a network failure would (tests):
        the session then reconnects and resumes by itself."""
        if self._channel is not None:
            self._channel.abort()

    # -- subscribing ---------------------------------------------------------------------
    async def _process_offers(self) -> None:
        """Answer ``subscriber_offer`` events strictly one at a time, in arrival order.

        Only the newest queued offer is answered: the server accepts an answer to its
        latest offer only (it offers again when an answer is late), and each offer
        describes the whole session; a ``conflict`` reply means a newer one is coming.
        """
        while True:
            offer = await self._offers.get()
            while not self._offers.empty():
                offer = self._offers.get_nowait()
            try:
                await self._answer_offer(offer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                version = offer.get("version")
                if isinstance(exc, FerryError) and exc.code == "conflict":
                    logger.info("%s: subscriber offer v%s superseded", self.name, version)
                    continue
                # An offer racing our own leave/close is expected, not worth a warning.
                closing = self._closed or self._leaving
                closing = closing or (isinstance(exc, FerryError) and exc.code == "closed")
                if closing:
                    logger.debug("%s: subscriber offer v%s failed: %r", self.name, version, exc)
                else:
                    logger.warning(
                        "%s: subscriber offer v%s failed", self.name, version, exc_info=exc
                    )
                self.subscriber_errors.append(exc)

    async def _answer_offer(self, event: dict[str, Any]) -> None:
        """Apply one ``subscriber_offer`` event and send ``subscriber_answer``."""
        raise NotImplementedError

    # -- helpers -------------------------------------------------------------------------
    async def wait_for(
        self,
        predicate: Callable[[], Any] | Callable[[], Awaitable[Any]],
        timeout: float = 10.0,
        interval: float | None = None,
        message: str = "",
    ) -> Any:
        """Poll ``predicate`` (sync or async) until it returns something truthy.

        Returns that value, or raises :class:`TimeoutError` at the deadline. Tests use
        this instead of fixed sleeps so they are as fast as the system allows and fail
        with a clear message when it does not get there.
        """
        step = self.poll_interval if interval is None else interval
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(message or f"{self.name}: condition not met within {timeout}s")
            await asyncio.sleep(step)

    # -- teardown ------------------------------------------------------------------------
    async def leave(self) -> None:
        """Send ``leave`` (errors ignored: the session ends either way), then close."""
        self._leaving = True
        if self._channel is not None and not self._channel.closed:
            with contextlib.suppress(FerryError, TimeoutError):
                await self.request("leave", timeout=min(self.request_timeout, 5.0))
        await self.close()

    async def close(self) -> None:
        """Close media, the offer worker and the socket without ``leave`` (idempotent).

        Per the protocol the server then keeps the participant for its reconnect grace
        period; tests of reconnect rely on exactly this.
        """
        if self._closed:
            return
        self._closed = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reconnect_task
        await self.data.close()
        await self._close_media()
        if self._offer_worker is not None:
            self._offer_worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._offer_worker
        if self._channel is not None:
            await self._channel.close()

    async def _close_media(self) -> None:
        """Stop what the subclass runs (peer connections, sinks, pacers)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
