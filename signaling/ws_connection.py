"""One /ws socket's outgoing side, and the process's open-file limit that caps how many there can be."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, web

from .protocol import encode

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger("ferry.signaling.app")

# How long a polite close (queued messages, then a close frame) may take before the
# TCP connection is aborted.
CLOSE_GRACE_S = 2.0


class WsConnection:
    """The outgoing side of one /ws socket: a bounded queue drained by a writer task.

    A client that stops reading fills the kernel's socket buffers, then this queue; at
    ``limit`` messages the TCP connection is aborted. A polite close would not do: its
    close frame waits behind everything queued, for the very client that does not read.
    """

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None, limit: int, remote: str) -> None:
        self.ws = ws
        self.transport = transport
        self.limit = limit
        self.remote = remote
        self.closing = False
        self.session: Session | None = None
        self.closed = asyncio.Event()  # set when the /ws handler has finished
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._close_code: int = WSCloseCode.OK
        self._close_message = b""
        self._abort_timer: asyncio.TimerHandle | None = None
        self.writer = asyncio.create_task(self._write())

    def send(self, message: dict) -> None:
        if self.closing:
            return
        if self._queue.qsize() >= self.limit:
            log.warning(
                "signaling client %s does not read (%d messages queued); aborting its socket",
                self.remote,
                self.limit,
            )
            self.abort()
            return
        self._queue.put_nowait(encode(message))

    def close(self, code: int = WSCloseCode.OK, message: bytes = b"") -> None:
        """Send what is queued, then a close frame; abort if that takes over CLOSE_GRACE_S."""
        if self.closing:
            return
        self.closing = True
        self._close_code, self._close_message = code, message
        self._queue.put_nowait(None)
        self._abort_timer = asyncio.get_running_loop().call_later(CLOSE_GRACE_S, self.abort)

    def abort(self) -> None:
        """Drop the TCP connection now; the /ws handler's read loop then ends."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()
        self.writer.cancel()

    def finished(self) -> None:
        if self._abort_timer is not None:
            self._abort_timer.cancel()

    async def _write(self) -> None:
        while True:
            text = await self._queue.get()
            if text is None:
                with contextlib.suppress(ConnectionError):
                    await self.ws.close(code=self._close_code, message=self._close_message)
                return
            try:
                await self.ws.send_str(text)
            except ConnectionError:
                return


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard limit; returns (before, after).

    Every WebSocket and HTTP connection is a file descriptor; the usual soft limit of
    1,024 would let a thousand idle sockets lock everyone out.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        target = 1 << 20  # Linux refuses more than fs.nr_open (2^20 by default)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
            return soft, soft
        return soft, target
    return soft, soft
