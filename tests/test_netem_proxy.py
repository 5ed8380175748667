"""UDP proxy for fixed endpoints, on 127.0.0.1 with deadline-bounded waits."""

from __future__ import annotations

import asyncio
import time

import pytest

from netem.proxy import UdpProxy, parse_addr


class Udp(asyncio.DatagramProtocol):
    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None
        self.peers: set[tuple[str, int]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.peers.add(addr)
        if self.echo:
            assert self.transport is not None
            self.transport.sendto(data, addr)
        else:
            self.queue.put_nowait(data)

    @property
    def addr(self) -> tuple[str, int]:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[:2]


async def _sock(echo: bool = False) -> Udp:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(lambda: Udp(echo), local_addr=("127.0.0.1", 0))
    return proto


async def _rtt(client: Udp, to: tuple[str, int]) -> float:
    assert client.transport is not None
    t0 = time.perf_counter()
    client.transport.sendto(b"ping", to)
    await asyncio.wait_for(client.queue.get(), 3)
    return (time.perf_counter() - t0) * 1000


async def test_proxy_delays_both_directions_and_changes_at_run_time() -> None:
    target = await _sock(echo=True)
    proxy = UdpProxy(("127.0.0.1", 0), target.addr, "delay 30ms", "delay 20ms")
    listen = await proxy.start()
    client = await _sock()
    try:
        rtt = await _rtt(client, listen)
        assert 48 <= rtt < 120
        proxy.set_links(None, None)
        assert await _rtt(client, listen) < 20
        proxy.set_links("loss 100%", None)
        assert client.transport is not None
        client.transport.sendto(b"gone", listen)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.queue.get(), 0.2)
        (state,) = proxy.clients.values()
        assert state.up.stats.dropped_loss == 1
    finally:
        await proxy.close()
        await proxy.close()  # idempotent


async def test_each_client_gets_its_own_upstream_and_clients_are_bounded() -> None:
    target = await _sock(echo=True)
    proxy = UdpProxy(("127.0.0.1", 0), target.addr, max_clients=2)
    listen = await proxy.start()
    clients = [await _sock() for _ in range(3)]
    try:
        for c in clients:
            assert await _rtt(c, listen) < 50
        assert len(target.peers) == 3
        assert len(proxy.clients) == 2 and proxy.stats["evicted"] == 1
    finally:
        await proxy.close()


def test_parse_addr() -> None:
    assert parse_addr("127.0.0.1:9000") == ("127.0.0.1", 9000)
    assert parse_addr(":7882") == ("127.0.0.1", 7882)
    with pytest.raises(ValueError, match="bad address"):
        parse_addr("localhost")
