"""TURN relay: RFC 8656 flows with raw STUN messages, control API, then aiortc.

Everything on 127.0.0.1 with ephemeral ports; waits are deadline-bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import struct
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aioice import stun

from netem.turn import TurnRelay

PASSWORD = "ferry"
REALM = "ferry"


class Udp(asyncio.DatagramProtocol):
    """A raw UDP socket with a receive queue."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait((data, addr))

    @property
    def addr(self) -> tuple[str, int]:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[:2]

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    async def recv(self, timeout: float = 2.0) -> tuple[bytes, tuple[str, int]]:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def nothing(self, within: float = 0.2) -> bool:
        try:
            await asyncio.wait_for(self.queue.get(), within)
        except TimeoutError:
            return True
        return False


async def udp() -> Udp:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
    return proto


class TurnClient:
    """Just enough of a long-term-credential TURN client to drive the relay."""

    def __init__(self, sock: Udp, server: tuple[str, int], username: str, password: str) -> None:
        self.sock = sock
        self.server = server
        self.username = username
        self.key = hashlib.md5(f"{username}:{REALM}:{password}".encode()).digest()
        self.nonce: bytes | None = None

    async def request(self, method: stun.Method, attrs: dict, sign: bool = True) -> stun.Message:
        msg = stun.Message(method, stun.Class.REQUEST)
        msg.attributes.update(attrs)
        if sign:
            if self.nonce is None:
                challenge = await self.request(method, attrs, sign=False)
                assert challenge.error_code == 401
                self.nonce = challenge.attributes["NONCE"]
            msg.attributes.update(USERNAME=self.username, REALM=REALM, NONCE=self.nonce)
            msg.add_message_integrity(self.key)
        self.sock.send(bytes(msg), self.server)
        while True:
            data, _ = await self.sock.recv()
            if data[0] >= 0x40:
                continue
            reply = stun.parse_message(data)
            if reply.transaction_id == msg.transaction_id:
                return reply

    async def allocate(self) -> tuple[str, int]:
        reply = await self.request(stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24})
        assert reply.message_class == stun.Class.RESPONSE, reply
        assert reply.check_message_integrity(self.key)
        return reply.attributes["XOR-RELAYED-ADDRESS"]


@pytest.fixture
async def relay() -> AsyncIterator[TurnRelay]:
    # A shared password is opted into here; peers are test sockets on ephemeral ports.
    r = TurnRelay(port=0, profiles={"slow": "delay 50ms", "lossy": "loss 100%"},
                  users={"alice": "secret"}, password=PASSWORD, allowed_peers=["127.0.0.1"])
    await r.start()
    yield r
    await r.close()


async def test_allocate_requires_long_term_credentials(relay: TurnRelay) -> None:
    sock = await udp()
    plain = stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST)
    plain.attributes["REQUESTED-TRANSPORT"] = 17 << 24
    sock.send(bytes(plain), relay.address)
    reply = stun.parse_message((await sock.recv())[0])
    assert reply.error_code == 401
    assert reply.attributes["REALM"] == "ferry" and reply.attributes["NONCE"]

    bad = TurnClient(sock, relay.address, "slow:bob", "wrong")
    bad.nonce = reply.attributes["NONCE"]
    assert (await bad.request(stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24})
            ).error_code == 401
    stale = TurnClient(sock, relay.address, "slow:bob", PASSWORD)
    stale.nonce = b"stale"
    reply = await stale.request(stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24})
    assert reply.error_code == 438 and reply.attributes["NONCE"] == relay.nonce
    unknown = TurnClient(sock, relay.address, "nosuch:bob", PASSWORD)
    assert (await unknown.request(stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24})
            ).error_code == 403
    tcp = TurnClient(sock, relay.address, "slow:bob", PASSWORD)
    assert (await tcp.request(stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": 6 << 24})
            ).error_code == 442
    # per-user password, profile prefix, then success
    alice = TurnClient(sock, relay.address, "slow:alice", "secret")
    relayed = await alice.allocate()
    assert relayed[0] == "127.0.0.1" and relayed[1] != relay.port
    (alloc,) = relay.allocations
    assert alloc.profile == "slow" and alloc.username == "slow:alice"
    # a second allocation on the same 5-tuple is a mismatch
    assert (await alice.request(stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24})
            ).error_code == 437
    # a bare user name that is not a profile gets the default profile
    other = TurnClient(await udp(), relay.address, "carol", PASSWORD)
    await other.allocate()
    assert {a.profile for a in relay.allocations} == {"slow", "unimpaired"}


async def test_unconfigured_relay_refuses_the_documented_password() -> None:
    relay = TurnRelay(port=0, profiles={"slow": "delay 50ms"}, users={"alice": "secret"})
    await relay.start()
    try:
        assert relay.password is None and relay.allowed_peers == ["127.0.0.1:7882"]
        sock = await udp()
        for user in ("slow:bob", "bob", "slow:alice"):
            reply = await TurnClient(sock, relay.address, user, PASSWORD).request(
                stun.Method.ALLOCATE, {"REQUESTED-TRANSPORT": 17 << 24})
            assert reply.error_code == 401, user
        assert not relay.allocations and relay.stats["unauthorized"] == 3
        await TurnClient(await udp(), relay.address, "slow:alice", "secret").allocate()
        assert [a.username for a in relay.allocations] == ["slow:alice"]
    finally:
        await relay.close()


async def test_relay_reaches_only_allowed_peers() -> None:
    peer, stranger = await udp(), await udp()
    relay = TurnRelay(port=0, users={"u": "pw"}, allowed_peers=[f"{peer.addr[0]}:{peer.addr[1]}"])
    await relay.start()
    try:
        sock = await udp()
        client = TurnClient(sock, relay.address, "u", "pw")
        relayed = await client.allocate()
        elsewhere = await client.request(stun.Method.CREATE_PERMISSION,
                                         {"XOR-PEER-ADDRESS": ("10.9.8.7", 7882)})
        assert elsewhere.error_code == 403
        bind = await client.request(stun.Method.CHANNEL_BIND,
                                    {"CHANNEL-NUMBER": 0x4000, "XOR-PEER-ADDRESS": stranger.addr})
        assert bind.error_code == 403  # same host as the peer, another port
        ok = await client.request(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": peer.addr})
        assert ok.message_class == stun.Class.RESPONSE
        for target, data in ((stranger.addr, b"to-stranger"), (peer.addr, b"to-peer")):
            send = stun.Message(stun.Method.SEND, stun.Class.INDICATION)
            send.attributes.update({"XOR-PEER-ADDRESS": target, "DATA": data})
            sock.send(bytes(send), relay.address)
        assert (await peer.recv())[0] == b"to-peer"
        assert await stranger.nothing()
        stranger.send(b"from-stranger", relayed)  # the host has a permission, the port is not allowed
        peer.send(b"from-peer", relayed)
        ind = stun.parse_message((await sock.recv())[0])
        assert ind.attributes["DATA"] == b"from-peer"
        assert await sock.nothing()
        assert relay.stats["forbidden_peer"] == 4
    finally:
        await relay.close()


def test_relay_cli_credentials_come_from_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    from netem.cli import _relay_credentials

    monkeypatch.delenv("FERRY_NETEM_TURN_PASSWORD", raising=False)
    users, password, generated = _relay_credentials(argparse.Namespace(user=[], password=None))
    assert users == {} and generated and password and password != PASSWORD
    assert _relay_credentials(argparse.Namespace(user=["3g:a=x", "b=y"], password=None)) == (
        {"3g:a": "x", "b": "y"}, None, False)
    monkeypatch.setenv("FERRY_NETEM_TURN_PASSWORD", "from-env")
    assert _relay_credentials(argparse.Namespace(user=[], password=None)) == ({}, "from-env", False)
    with pytest.raises(ValueError, match="NAME=PASSWORD"):
        _relay_credentials(argparse.Namespace(user=["nopassword"], password=None))


async def test_permission_send_and_data_indications(relay: TurnRelay) -> None:
    sock, peer = await udp(), await udp()
    client = TurnClient(sock, relay.address, "unimpaired:x", PASSWORD)
    relayed = await client.allocate()

    send = stun.Message(stun.Method.SEND, stun.Class.INDICATION)
    send.attributes.update({"XOR-PEER-ADDRESS": peer.addr, "DATA": b"early"})
    sock.send(bytes(send), relay.address)  # no permission yet: dropped
    assert await peer.nothing()
    assert relay.stats["no_permission"] == 1

    reply = await client.request(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": peer.addr})
    assert reply.message_class == stun.Class.RESPONSE
    send = stun.Message(stun.Method.SEND, stun.Class.INDICATION)
    send.attributes.update({"XOR-PEER-ADDRESS": peer.addr, "DATA": b"hello"})
    sock.send(bytes(send), relay.address)
    data, src = await peer.recv()
    assert data == b"hello" and src == relayed

    peer.send(b"world", relayed)
    ind = stun.parse_message((await sock.recv())[0])
    assert ind.message_method == stun.Method.DATA and ind.message_class == stun.Class.INDICATION
    assert ind.attributes["DATA"] == b"world" and ind.attributes["XOR-PEER-ADDRESS"] == peer.addr


async def test_channel_bind_and_channel_data(relay: TurnRelay) -> None:
    sock, peer, stranger = await udp(), await udp(), await udp()
    client = TurnClient(sock, relay.address, "unimpaired:y", PASSWORD)
    relayed = await client.allocate()
    bad = await client.request(stun.Method.CHANNEL_BIND,
                               {"CHANNEL-NUMBER": 0x3000, "XOR-PEER-ADDRESS": peer.addr})
    assert bad.error_code == 400
    ok = await client.request(stun.Method.CHANNEL_BIND,
                              {"CHANNEL-NUMBER": 0x4001, "XOR-PEER-ADDRESS": peer.addr})
    assert ok.message_class == stun.Class.RESPONSE and ok.check_message_integrity(client.key)
    clash = await client.request(stun.Method.CHANNEL_BIND,
                                 {"CHANNEL-NUMBER": 0x4001, "XOR-PEER-ADDRESS": stranger.addr})
    assert clash.error_code == 400

    sock.send(struct.pack("!HH", 0x4001, 3) + b"abc", relay.address)
    assert (await peer.recv())[0] == b"abc"
    peer.send(b"xyz", relayed)
    data, _ = await sock.recv()
    assert data[:4] == struct.pack("!HH", 0x4001, 3) and data[4:7] == b"xyz"
    # unbound channel number and truncated frames are counted, not fatal
    sock.send(struct.pack("!HH", 0x4002, 3) + b"abc", relay.address)
    sock.send(struct.pack("!HH", 0x4001, 30) + b"abc", relay.address)
    await asyncio.sleep(0)  # let the loop read them (bounded below)
    deadline = time.monotonic() + 2
    while relay.stats["no_channel"] < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert relay.stats["no_channel"] == 1
    # refresh with lifetime 0 deletes the allocation
    reply = await client.request(stun.Method.REFRESH, {"LIFETIME": 0})
    assert reply.attributes["LIFETIME"] == 0 and not relay.allocations


async def test_garbage_is_counted_and_relay_survives(relay: TurnRelay) -> None:
    sock = await udp()
    for junk in (b"", b"\x00", b"\x00\x01\x00\x04" + bytes(16), bytes(range(64)),
                 b"\x00\x03\x00\x08" + struct.pack("!I", stun.COOKIE) + bytes(12) + b"\x00\x20\x00\x04zzzz"):
        sock.send(junk, relay.address)
    binding = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    sock.send(bytes(binding), relay.address)
    while True:
        reply = stun.parse_message((await sock.recv())[0])
        if reply.transaction_id == binding.transaction_id:
            break
    assert reply.attributes["XOR-MAPPED-ADDRESS"] == sock.addr
    assert relay.stats["bad_message"] >= 3


async def _rtt(sock: Udp, peer_addr: tuple[str, int], relay_addr: tuple[str, int]) -> float:
    t0 = time.perf_counter()
    sock.send(struct.pack("!HH", 0x4000, 4) + b"ping", relay_addr)
    await sock.recv()
    return (time.perf_counter() - t0) * 1000


async def test_profile_delay_and_runtime_change(relay: TurnRelay) -> None:
    sock, peer = await udp(), await udp()
    client = TurnClient(sock, relay.address, "slow:z", PASSWORD)
    relayed = await client.allocate()
    await client.request(stun.Method.CHANNEL_BIND,
                         {"CHANNEL-NUMBER": 0x4000, "XOR-PEER-ADDRESS": peer.addr})

    async def echo() -> None:
        while True:
            data, src = await peer.queue.get()
            peer.send(data, src)

    task = asyncio.ensure_future(echo())
    try:
        rtt = await _rtt(sock, peer.addr, relay.address)
        assert 95 <= rtt < 160  # 50 ms each way
        relay.set_profile("slow", "delay 5ms|delay 10ms")
        rtt = await _rtt(sock, peer.addr, relay.address)
        assert 14 <= rtt < 60
        relay.set_profile("slow", "loss 100%")
        sock.send(struct.pack("!HH", 0x4000, 4) + b"lost", relay.address)
        assert await sock.nothing(0.2)
        (alloc,) = relay.allocations
        assert alloc.up.stats.dropped_loss == 1
    finally:
        task.cancel()
    del relayed


async def test_control_api_needs_its_token(relay: TurnRelay) -> None:
    host, port = await relay.start_control(token="s3cret-token")
    assert relay.control_token == "s3cret-token"
    base = f"http://{host}:{port}"
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            async with http.put(f"{base}/profiles/slow", data="loss 100%", headers=headers) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["code"] == "unauthorized"
            async with http.get(f"{base}/allocations", headers=headers) as resp:
                assert resp.status == 401
    assert relay.profiles["slow"].up.spec() == "delay 50ms"  # unchanged


async def test_control_api(relay: TurnRelay) -> None:
    host, port = await relay.start_control()
    assert relay.control_token and len(relay.control_token) >= 24  # generated when not given
    client = TurnClient(await udp(), relay.address, "slow:api", PASSWORD)
    await client.allocate()
    base = f"http://{host}:{port}"
    auth = {"Authorization": f"Bearer {relay.control_token}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.get(f"{base}/allocations") as resp:
            (alloc,) = await resp.json()
        assert alloc["profile"] == "slow" and alloc["username"] == "slow:api"
        async with http.put(f"{base}/profiles/slow", json={"up": "delay 7ms", "down": "rate 1mbit"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["down"] == "rate 1mbit"
        assert relay.allocations[0].up.config.delay_ms == 7.0
        async with http.put(f"{base}/profiles/broken", data="delay 8xs") as resp:
            assert resp.status == 400
            assert "bad time unit" in (await resp.json())["error"]["message"]
        async with http.post(f"{base}/allocations/{alloc['id']}/profile",
                             json={"profile": "lossy"}) as resp:
            assert resp.status == 200
        assert relay.allocations[0].profile == "lossy"
        async with http.post(f"{base}/allocations/999/profile", json={"profile": "slow"}) as resp:
            assert resp.status == 404
        async with http.get(f"{base}/profiles") as resp:
            assert set(await resp.json()) >= {"unimpaired", "slow", "lossy"}
        async with http.get(f"{base}/stats") as resp:
            assert (await resp.json())["allocations"] == 1


# ------------------------------------------------------------------- aiortc
async def test_aiortc_relay_only_and_200ms_profile_shows_in_rtt() -> None:
    from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
    from aiortc.rtcconfiguration import RTCIceTransportPolicy

    # Both peers are this relay's own relayed addresses (ephemeral loopback ports).
    relay = TurnRelay(port=0, profiles={"rtt": ""}, password=PASSWORD, allowed_peers=["127.0.0.1"])
    _, port = await relay.start()

    def config(user: str) -> RTCConfiguration:
        return RTCConfiguration(
            iceServers=[RTCIceServer(f"turn:127.0.0.1:{port}", user, PASSWORD)],
            iceTransportPolicy=RTCIceTransportPolicy.RELAY,
        )

    a, b = RTCPeerConnection(config("rtt:a")), RTCPeerConnection(config("unimpaired:b"))
    try:
        channel = a.createDataChannel("ping")
        replies: asyncio.Queue[str] = asyncio.Queue()
        opened = asyncio.Event()
        channel.on("open", opened.set)
        channel.on("message", replies.put_nowait)

        @b.on("datachannel")
        def on_datachannel(ch) -> None:  # type: ignore[no-untyped-def]
            ch.on("message", ch.send)

        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        candidates = [x for x in a.localDescription.sdp.splitlines() if x.startswith("a=candidate")]
        assert candidates and all("typ relay" in c for c in candidates)
        await asyncio.wait_for(opened.wait(), 15)  # a refused allocation would hang forever

        async def median_rtt(n: int = 5) -> float:
            samples = []
            for i in range(n):
                t0 = time.perf_counter()
                channel.send(f"p{i}")
                await asyncio.wait_for(replies.get(), 5)
                samples.append((time.perf_counter() - t0) * 1000)
            return statistics.median(samples)

        base = await median_rtt()
        relay.set_profile("rtt", "delay 100ms|delay 100ms")
        delayed = await median_rtt()
        assert 190 <= delayed - base <= 260, (base, delayed)
        assert {al.profile for al in relay.allocations} == {"rtt", "unimpaired"}
        assert relay.stats["relayed_up"] > 10 and relay.stats["relayed_down"] > 10
    finally:
        await a.close()
        await b.close()
        await relay.close()
