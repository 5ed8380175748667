"""The receiving side of room messages for Python clients: dedup, order, acks, iterators.

The server numbers reliable messages per room (``data_seq``) and sends each in order;
after a reconnect it replays what came after the ``data_since`` the client gives. This
inbox keeps that cursor across connections (so a resume or a rejoin asks for exactly what
is missing), drops anything at or below it (a replay racing a live delivery), and
acknowledges what it has with ``data_ack``, a few at a time. Unreliable messages carry no
seq and are handed on as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["DataCallback", "RoomMessages"]

DataCallback = Callable[[dict[str, Any]], Any]
# Acknowledgements wait this long, so a burst of messages is acknowledged once.
ACK_DELAY_S = 0.05


class RoomMessages:
    """Reliable ``data`` events in ``received`` (data_seq order, each once), callbacks in
    ``callbacks``, and :meth:`iterate` for an ``async for`` over what arrives."""

    def __init__(self, ack: Callable[[int], Awaitable[Any]]) -> None:
        self._ack = ack
        self.cursor: int | None = None  # highest data_seq received
        self.acked = 0
        self.received: list[dict[str, Any]] = []
        self.unreliable = 0
        self.duplicates = 0
        self.callbacks: list[DataCallback] = []
        self._queues: set[asyncio.Queue[dict[str, Any]]] = set()
        self._ack_task: asyncio.Task[None] | None = None

    def on_event(self, msg: dict[str, Any]) -> None:
        """One ``data`` event from the server."""
        seq = msg.get("data_seq")
        if isinstance(seq, int):
            if self.cursor is not None and seq <= self.cursor:
                self.duplicates += 1
                return
            self.cursor = seq
            self.received.append(msg)
            self.schedule_ack()
        else:
            self.unreliable += 1
        for queue in self._queues:
            queue.put_nowait(msg)
        for callback in list(self.callbacks):
            try:
                result = callback(msg)
                if inspect.isawaitable(result):
                    asyncio.ensure_future(result)
            except Exception:
                logger.exception("room message callback failed")

    def schedule_ack(self) -> None:
        if self._ack_task is None and self.cursor is not None and self.cursor > self.acked:
            self._ack_task = asyncio.ensure_future(self._ack_soon())

    async def _ack_soon(self) -> None:
        try:
            while self.cursor is not None and self.cursor > self.acked:
                await asyncio.sleep(ACK_DELAY_S)
                seq = self.cursor
                try:
                    await self._ack(seq)
                except Exception as exc:  # the connection is down: acked after the reconnect
                    logger.debug("data_ack %s failed: %r", seq, exc)
                    return
                self.acked = max(self.acked, seq)
        finally:
            self._ack_task = None

    async def iterate(self) -> AsyncIterator[dict[str, Any]]:
        """Every ``data`` event (reliable or not) from now on, as it arrives."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._queues.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.discard(queue)

    async def close(self) -> None:
        if self._ack_task is not None:
            self._ack_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._ack_task
