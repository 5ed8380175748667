"""A UDP proxy for fixed endpoints: ``listen`` -> ``target`` through two links.

Why: tests that talk to Ferry on a known port (aiortc clients, the integration
layer of DESIGN section 7) can be put behind an emulated link without TURN:
point the client at the proxy's listen address instead of Ferry's.

Each client address seen on the listen socket gets its own upstream socket
(so the target sees distinct 5-tuples, as NAT would) and its own pair of
links built from ``up`` (client -> target) and ``down`` (target -> client).
The number of clients is bounded (``max_clients``, oldest evicted) and each
link holds at most ``max_held`` packets (counted drops beyond). One timer per
client, re-armed on ``Link.next_deadline()``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from netem.link import Link, LinkConfig

logger = logging.getLogger("ferry.netem.proxy")

Addr = tuple[str, int]
LinkLike = LinkConfig | str | Mapping[str, Any] | None


def parse_addr(text: str) -> Addr:
    """``127.0.0.1:9000`` -> ``("127.0.0.1", 9000)``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bad address {text!r} (use HOST:PORT)")
    return (host.strip("[]") or "127.0.0.1", int(port))


@dataclass(eq=False)
class _Client:
    addr: Addr
    up: Link
    down: Link
    upstream: asyncio.DatagramTransport | None = None
    timer: asyncio.TimerHandle | None = None
    timer_at: float = 0.0


class _Listen(asyncio.DatagramProtocol):
    def __init__(self, proxy: UdpProxy) -> None:
        self.proxy = proxy

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.proxy._from_client(data, addr)


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, proxy: UdpProxy, client: _Client) -> None:
        self.proxy = proxy
        self.client = client

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.proxy._from_target(self.client, data)


class UdpProxy:
    """Forward UDP between clients and one target through emulated links."""

    def __init__(
        self,
        listen: Addr,
        target: Addr,
        up: LinkLike = None,
        down: LinkLike = None,
        *,
        seed: int = 0,
        max_clients: int = 64,
        max_held: int = 10_000,
    ) -> None:
        self.listen = listen
        self.target = target
        self.up_config = LinkConfig.coerce(up)
        self.down_config = LinkConfig.coerce(down)
        self.seed = seed
        self.max_clients = max_clients
        self.max_held = max_held
        self.clients: dict[Addr, _Client] = {}
        self._pending: dict[Addr, list[tuple[bytes, float]]] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self.stats = {"clients": 0, "dropped_pending": 0, "evicted": 0}

    async def start(self) -> Addr:
        """Bind the listen socket; returns its address (port 0 picks one)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Listen(self), local_addr=self.listen
        )
        self._transport = transport
        self.listen = transport.get_extra_info("sockname")[:2]
        return self.listen

    def route(self, target: Addr) -> Addr:
        """Forward to ``target`` from now on; returns the address to send to instead.

        A client that takes where to send from its peer's description (a LiteClient's
        ``candidate_rewrite``) passes through the proxy this way.
        """
        self.target = target
        return self.listen

    def rebind(self) -> None:
        """A NAT rebinding: every client's next packet leaves from a new upstream socket
        (a new source port at the target); queued packets of the old one are dropped."""
        for client in list(self.clients.values()):
            self._drop_client(client)

    async def close(self) -> None:
        """Idempotent."""
        for client in list(self.clients.values()):
            self._drop_client(client)
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def set_links(self, up: LinkLike = None, down: LinkLike = None) -> None:
        """Change both directions at run time (queued packets are kept)."""
        self.up_config = LinkConfig.coerce(up)
        self.down_config = LinkConfig.coerce(down)
        now_ms = self._now_ms()
        for client in self.clients.values():
            client.up.set_config(self.up_config, now_ms)
            client.down.set_config(self.down_config, now_ms)
            self._service(client)

    @staticmethod
    def _now_ms() -> float:
        return asyncio.get_running_loop().time() * 1000.0

    def _from_client(self, data: bytes, addr: Addr) -> None:
        now_ms = self._now_ms()
        client = self.clients.get(addr)
        if client is None:
            pending = self._pending.get(addr)
            if pending is not None:  # upstream socket still being bound
                if len(pending) < 256:
                    pending.append((data, now_ms))
                else:
                    self.stats["dropped_pending"] += 1
                return
            self._pending[addr] = [(data, now_ms)]
            asyncio.ensure_future(self._open(addr))
            return
        client.up.push(data, now_ms)
        self._service(client)

    async def _open(self, addr: Addr) -> None:
        if len(self.clients) >= self.max_clients:
            oldest = next(iter(self.clients.values()))
            self._drop_client(oldest)
            self.stats["evicted"] += 1
        n = self.stats["clients"]
        start = self._now_ms()
        client = _Client(
            addr,
            Link(self.up_config, start, rng=random.Random(f"{self.seed}/{n}/up"), max_held=self.max_held),
            Link(self.down_config, start, rng=random.Random(f"{self.seed}/{n}/down"),
                 max_held=self.max_held),
        )
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Upstream(self, client), remote_addr=self.target
            )
        except OSError as exc:
            logger.warning("proxy: cannot open upstream to %s: %s", self.target, exc)
            self._pending.pop(addr, None)
            return
        client.upstream = transport
        self.clients[addr] = client
        self.stats["clients"] += 1
        for data, t in self._pending.pop(addr, []):
            client.up.push(data, t)
        self._service(client)

    def _from_target(self, client: _Client, data: bytes) -> None:
        client.down.push(data, self._now_ms())
        self._service(client)

    def _service(self, client: _Client) -> None:
        now_ms = self._now_ms()
        if client.upstream is not None:
            for data in client.up.pop_ready(now_ms):
                client.upstream.sendto(data)
        if self._transport is not None:
            for data in client.down.pop_ready(now_ms):
                self._transport.sendto(data, client.addr)
        deadlines = [d for d in (client.up.next_deadline(), client.down.next_deadline()) if d is not None]
        if not deadlines:
            return
        due = min(deadlines)
        if client.timer is not None:
            if client.timer_at <= due:
                return
            client.timer.cancel()
        client.timer_at = due
        client.timer = asyncio.get_running_loop().call_at(due / 1000.0, self._on_timer, client)

    def _on_timer(self, client: _Client) -> None:
        client.timer = None
        if self.clients.get(client.addr) is client:
            self._service(client)

    def _drop_client(self, client: _Client) -> None:
        self.clients.pop(client.addr, None)
        if client.timer is not None:
            client.timer.cancel()
            client.timer = None
        if client.upstream is not None:
            client.upstream.close()
            client.upstream = None
