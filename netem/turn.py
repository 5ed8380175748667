"""A TURN relay (RFC 8656 subset over UDP) that puts a netem link on every allocation.

Why TURN: any unmodified WebRTC client (Chromium, aiortc) can be put behind an
emulated link by giving it ``iceServers=[{urls: "turn:127.0.0.1:PORT", username,
credential}]`` and ``iceTransportPolicy: "relay"``; all its media then flows
through this relay, which applies the ``up`` link to what the client sends and
the ``down`` link to what it receives.

Supported: Allocate (long-term credentials, realm ``ferry``, REQUESTED-TRANSPORT
UDP), Refresh (LIFETIME 0 deletes), CreatePermission (one or more
XOR-PEER-ADDRESS), ChannelBind, Send/Data indications, ChannelData, and Binding
(for plain STUN). Not supported: TCP/TLS, EVEN-PORT, RESERVATION-TOKEN,
DONT-FRAGMENT (ignored), IPv6 relaying, ADDITIONAL-ADDRESS-FAMILY.

Users, peers and profiles (the relay listens on a port, so nothing is open by default):

* The password for a username is looked up in ``users`` by the full username,
  then by the part after ``profile:``; a shared ``password`` for every username
  applies only when one is configured (``password=None``, the default, refuses
  unknown users with 401).
* Peers: an allocation may reach only the addresses in ``allowed_peers``
  (``"IP:PORT"``, ``"IP"`` for any port, ``"*"`` for anywhere; default
  ``127.0.0.1:7882``, Ferry's default media address). CreatePermission and
  ChannelBind for any other peer get 403, and datagrams to or from one are
  dropped and counted (``forbidden_peer``), so the relay is no open proxy into
  the machine's other services.
* The profile is the part of the username before ``:`` (or the whole
  username). A bare username that is not a profile (``alice``) gets the
  ``default_profile`` (``unimpaired``); an explicit ``NAME:...`` with an unknown
  NAME is refused with 403, so a typo never silently yields a perfect network.
* ``set_profile(name, value)`` changes a profile at run time; allocations
  using it switch at once and keep packets in flight. A small aiohttp control
  API (``start_control``) lists allocations and changes profiles; every request
  needs ``Authorization: Bearer <control_token>``.

``link_event_log(username, "up" | "down")``, when given, names the ``event_log`` of
each new allocation's links (``None`` for none): a measurement reads every delivered
packet's time, size and queue delay from the link itself.

Bad input never raises out of the protocol: it is counted in ``stats`` and
logged once at debug level through ``ferry.netem.turn``.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import random
import secrets
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aioice import stun

from netem.link import EventLog, Link, LinkConfig
from netem.profiles import Profile
from netem.turn_allocation import Allocation, parse_peer, peer_addresses

logger = logging.getLogger("ferry.netem.turn")

Addr = tuple[str, int]
UDP_TRANSPORT = 17 << 24
PERMISSION_LIFETIME_S = 300.0
CHANNEL_LIFETIME_S = 600.0
CHANNEL_MIN, CHANNEL_MAX = 0x4000, 0x4FFF
DEFAULT_ALLOWED_PEERS = ("127.0.0.1:7882",)  # Ferry's default media address
ANY_PEER = "*"


class _ServerProtocol(asyncio.DatagramProtocol):
    def __init__(self, relay: TurnRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.relay._on_client(data, addr)


class _RelayedProtocol(asyncio.DatagramProtocol):
    def __init__(self, relay: TurnRelay, alloc: Allocation) -> None:
        self.relay = relay
        self.alloc = alloc

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.relay._on_peer(self.alloc, data, addr)


class TurnRelay:
    """The relay shell: sockets, timers, auth; links do the impairment."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 3478,
        *,
        realm: str = "ferry",
        users: Mapping[str, str] | None = None,
        password: str | None = None,
        allowed_peers: Iterable[str | Addr] = DEFAULT_ALLOWED_PEERS,
        profiles: Mapping[str, Any] | None = None,
        default_profile: str = "unimpaired",
        relay_host: str | None = None,
        default_lifetime: int = 600,
        max_lifetime: int = 3600,
        max_allocations: int = 1000,
        seed: int = 0,
        software: str = "ferry-netem",
        link_event_log: Callable[[str, str], EventLog | None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.realm = realm
        self.users = dict(users or {})
        self.password = password
        self.set_allowed_peers(allowed_peers)
        self.control_token: str | None = None
        self.default_profile = default_profile
        self.relay_host = relay_host or host
        self.default_lifetime = default_lifetime
        self.max_lifetime = max_lifetime
        self.max_allocations = max_allocations
        self.seed = seed
        self.software = software
        self.link_event_log = link_event_log
        self.nonce = secrets.token_hex(8).encode()
        self._profiles: dict[str, Profile] = {"unimpaired": Profile("unimpaired")}
        for name, value in (profiles or {}).items():
            self._profiles[name] = Profile.coerce(name, value)
        self._allocs: dict[Addr, Allocation] = {}
        self._pending: set[Addr] = set()
        self._ids = itertools.count(1)
        self._transport: asyncio.DatagramTransport | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._control: Any = None
        self._logged: set[str] = set()
        self.stats: dict[str, int] = {
            "allocations": 0,
            "bad_message": 0,
            "unauthorized": 0,
            "no_allocation": 0,
            "no_permission": 0,
            "no_channel": 0,
            "relayed_up": 0,
            "relayed_down": 0,
            "send_errors": 0,
            "forbidden_peer": 0,
        }

    # ------------------------------------------------------------- lifecycle
    async def start(self) -> Addr:
        """Bind the listening socket; returns the bound address (port 0 picks one)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _ServerProtocol(self), local_addr=(self.host, self.port)
        )
        self._transport = transport
        self.host, self.port = transport.get_extra_info("sockname")[:2]
        self._sweeper = loop.call_later(1.0, self._sweep)
        return (self.host, self.port)

    @property
    def address(self) -> Addr:
        return (self.host, self.port)

    async def close(self) -> None:
        """Idempotent: closes allocations, sockets and the control API."""
        for alloc in list(self._allocs.values()):
            self._delete(alloc)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._control is not None:
            runner, self._control = self._control, None
            await runner.cleanup()

    # ----------------------------------------------------------------- peers
    def set_allowed_peers(self, peers: Iterable[str | Addr]) -> None:
        """Replace the peer allow-list (``"*"`` allows any peer); ``ValueError`` if bad."""
        entries = list(peers)
        self.any_peer = any(e == ANY_PEER for e in entries)
        parsed = [parse_peer(e) for e in entries if e != ANY_PEER]
        self._peer_hosts = {host for host, port in parsed if port is None}
        self._peer_addrs = {(host, port) for host, port in parsed if port is not None}

    @property
    def allowed_peers(self) -> list[str]:
        """The allow-list in its string form (what ``set_allowed_peers`` accepts)."""
        out = sorted(self._peer_hosts) + [f"{h}:{p}" for h, p in sorted(self._peer_addrs)]
        return [ANY_PEER, *out] if self.any_peer else out

    def peer_allowed(self, peer: Addr) -> bool:
        """May an allocation exchange datagrams with ``peer``?"""
        return (
            self.any_peer
            or peer[0] in self._peer_hosts
            or (peer[0], peer[1]) in self._peer_addrs
        )

    def _host_allowed(self, host: str) -> bool:
        """May a permission for ``host`` exist (some allowed port on it)?"""
        return (
            self.any_peer
            or host in self._peer_hosts
            or any(h == host for h, _ in self._peer_addrs)
        )

    # -------------------------------------------------------------- profiles
    @property
    def profiles(self) -> dict[str, Profile]:
        return dict(self._profiles)

    @property
    def allocations(self) -> list[Allocation]:
        return list(self._allocs.values())

    def set_profile(self, name: str, value: Profile | LinkConfig | str | Mapping[str, Any]) -> Profile:
        """Add or change a profile at run time (a single config applies both ways)."""
        profile = Profile.coerce(name, value)
        self._profiles[name] = profile
        now_ms = self._now_ms()
        for alloc in self._allocs.values():
            if alloc.profile == name:
                self._apply_profile(alloc, profile, now_ms)
        return profile

    def set_allocation_profile(self, alloc_id: int, name: str) -> None:
        """Move one allocation to another profile (``KeyError`` if unknown)."""
        profile = self._profiles[name]
        for alloc in self._allocs.values():
            if alloc.id == alloc_id:
                alloc.profile = name
                self._apply_profile(alloc, profile, self._now_ms())
                return
        raise KeyError(f"no allocation {alloc_id}")

    def _apply_profile(self, alloc: Allocation, profile: Profile, now_ms: float) -> None:
        alloc.up.set_config(profile.up, now_ms)
        alloc.down.set_config(profile.down, now_ms)
        self._service(alloc)

    def _profile_for(self, username: str) -> str | None:
        name, sep, _ = username.partition(":")
        if name in self._profiles:
            return name
        return None if sep else self.default_profile

    # ------------------------------------------------------------- plumbing
    def _event_log(self, username: str, direction: str) -> EventLog | None:
        return self.link_event_log(username, direction) if self.link_event_log else None

    @staticmethod
    def _now_ms() -> float:
        return asyncio.get_running_loop().time() * 1000.0

    def _count(self, what: str, detail: str = "") -> None:
        self.stats[what] = self.stats.get(what, 0) + 1
        if what not in self._logged and logger.isEnabledFor(logging.DEBUG):
            self._logged.add(what)
            logger.debug("turn drop: %s %s (counted from now on)", what, detail)

    def _send_client(self, data: bytes, addr: Addr) -> None:
        if self._transport is not None:
            self._transport.sendto(data, addr)

    def _reply(
        self,
        request: stun.Message,
        addr: Addr,
        attrs: dict[str, Any] | None = None,
        error: tuple[int, str] | None = None,
        key: bytes | None = None,
    ) -> bytes:
        msg = stun.Message(
            request.message_method,
            stun.Class.ERROR if error else stun.Class.RESPONSE,
            transaction_id=request.transaction_id,
        )
        if error:
            msg.attributes["ERROR-CODE"] = error
        msg.attributes.update(attrs or {})
        msg.attributes["SOFTWARE"] = self.software
        if key is not None:
            msg.add_message_integrity(key)
        else:
            msg.add_fingerprint()
        data = bytes(msg)
        self._send_client(data, addr)
        return data

    # ----------------------------------------------------------- from client
    def _on_client(self, data: bytes, addr: Addr) -> None:
        if len(data) >= 4 and 0x40 <= data[0] <= 0x7F:
            self._on_channel_data(data, addr)
            return
        try:
            msg = stun.parse_message(data)
        except Exception:  # noqa: BLE001 - any garbage from the network is a counted drop
            self._count("bad_message", repr(data[:8]))
            return
        try:
            self._dispatch(msg, data, addr)
        except Exception as exc:  # noqa: BLE001 - a malformed attribute must not kill the relay
            self._count("bad_message", repr(exc))
            if msg.message_class == stun.Class.REQUEST:
                self._reply(msg, addr, error=(400, "Bad Request"))

    def _on_channel_data(self, data: bytes, addr: Addr) -> None:
        alloc = self._allocs.get(addr)
        if alloc is None:
            self._count("no_allocation")
            return
        number, length = struct.unpack_from("!HH", data)
        if len(data) < 4 + length:
            self._count("bad_message", "short ChannelData")
            return
        bound = alloc.channels.get(number)
        if bound is None:
            self._count("no_channel")
            return
        alloc.up.push(data[4 : 4 + length], self._now_ms(), bound[0])
        self._service(alloc)

    def _dispatch(self, msg: stun.Message, data: bytes, addr: Addr) -> None:
        method, cls = msg.message_method, msg.message_class
        if cls == stun.Class.INDICATION:
            if method == stun.Method.SEND:
                self._on_send(msg, addr)
            return
        if cls != stun.Class.REQUEST:
            return
        if method == stun.Method.BINDING:
            self._reply(msg, addr, {"XOR-MAPPED-ADDRESS": addr})
            return
        if method == stun.Method.ALLOCATE and addr in self._pending:
            return  # retransmission while the relayed socket is being bound
        auth = self._authenticate(msg, addr)
        if auth is None:
            return
        username, key = auth
        if method == stun.Method.ALLOCATE:
            self._on_allocate(msg, addr, username, key)
            return
        alloc = self._allocs.get(addr)
        if alloc is None:
            self._reply(msg, addr, error=(437, "Allocation Mismatch"), key=key)
            return
        if alloc.username != username:
            self._reply(msg, addr, error=(441, "Wrong Credentials"), key=key)
            return
        if method == stun.Method.REFRESH:
            self._on_refresh(msg, addr, alloc, key)
        elif method == stun.Method.CREATE_PERMISSION:
            self._on_create_permission(msg, data, addr, alloc, key)
        elif method == stun.Method.CHANNEL_BIND:
            self._on_channel_bind(msg, addr, alloc, key)
        else:
            self._reply(msg, addr, error=(400, "Bad Request"), key=key)

    def _authenticate(self, msg: stun.Message, addr: Addr) -> tuple[str, bytes] | None:
        attrs = msg.attributes
        challenge = {"REALM": self.realm, "NONCE": self.nonce}
        if "MESSAGE-INTEGRITY" not in attrs:
            self._reply(msg, addr, challenge, error=(401, "Unauthorized"))
            return None
        if not all(k in attrs for k in ("USERNAME", "REALM", "NONCE")):
            self._reply(msg, addr, error=(400, "Bad Request"))
            return None
        if attrs["NONCE"] != self.nonce:
            self._reply(msg, addr, challenge, error=(438, "Stale Nonce"))
            return None
        username: str = attrs["USERNAME"]
        password = self.users.get(username)
        if password is None:
            password = self.users.get(username.partition(":")[2], self.password)
        if password is None:
            self._count("unauthorized", username)
            self._reply(msg, addr, challenge, error=(401, "Unauthorized"))
            return None
        key = hashlib.md5(f"{username}:{self.realm}:{password}".encode()).digest()
        if not msg.check_message_integrity(key):
            self._count("unauthorized", username)
            self._reply(msg, addr, challenge, error=(401, "Unauthorized"))
            return None
        return username, key

    def _lifetime(self, msg: stun.Message) -> int:
        requested = msg.attributes.get("LIFETIME", self.default_lifetime)
        return int(max(0, min(requested, self.max_lifetime)))

    def _on_allocate(self, msg: stun.Message, addr: Addr, username: str, key: bytes) -> None:
        existing = self._allocs.get(addr)
        if existing is not None:
            if existing.transaction_id == msg.transaction_id and existing.response:
                self._send_client(existing.response, addr)
            else:
                self._reply(msg, addr, error=(437, "Allocation Mismatch"), key=key)
            return
        transport = msg.attributes.get("REQUESTED-TRANSPORT")
        if transport is None:
            self._reply(msg, addr, error=(400, "Bad Request"), key=key)
            return
        if transport != UDP_TRANSPORT:
            self._reply(msg, addr, error=(442, "Unsupported Transport Protocol"), key=key)
            return
        profile = self._profile_for(username)
        if profile is None:
            self._reply(msg, addr, error=(403, "Forbidden: unknown profile"), key=key)
            return
        if len(self._allocs) + len(self._pending) >= self.max_allocations:
            self._reply(msg, addr, error=(486, "Allocation Quota Reached"), key=key)
            return
        self._pending.add(addr)
        asyncio.ensure_future(self._create_allocation(msg, addr, username, key, profile))

    async def _create_allocation(
        self, msg: stun.Message, addr: Addr, username: str, key: bytes, profile_name: str
    ) -> None:
        loop = asyncio.get_running_loop()
        now_ms = self._now_ms()
        alloc_id = next(self._ids)
        try:
            profile = self._profiles[profile_name]
            rng_up = random.Random(f"{self.seed}/{alloc_id}/up")
            rng_down = random.Random(f"{self.seed}/{alloc_id}/down")
            alloc = Allocation(
                id=alloc_id,
                client=addr,
                username=username,
                profile=profile_name,
                key=key,
                transaction_id=msg.transaction_id,
                up=Link(profile.up, now_ms, rng=rng_up, event_log=self._event_log(username, "up")),
                down=Link(profile.down, now_ms, rng=rng_down, event_log=self._event_log(username, "down")),
                expires_at=loop.time() + self._lifetime(msg),
            )
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _RelayedProtocol(self, alloc), local_addr=(self.relay_host, 0)
            )
        except Exception as exc:  # noqa: BLE001 - report to the client, keep serving
            self._pending.discard(addr)
            logger.warning("allocation for %s failed: %s", addr, exc)
            self._reply(msg, addr, error=(508, "Insufficient Capacity"), key=key)
            return
        self._pending.discard(addr)
        if self._transport is None:  # closed meanwhile
            transport.close()
            return
        alloc.transport = transport
        alloc.relayed = transport.get_extra_info("sockname")[:2]
        self._allocs[addr] = alloc
        self.stats["allocations"] += 1
        logger.info("allocation %d %s -> %s profile %s", alloc_id, addr, alloc.relayed, profile_name)
        alloc.response = self._reply(
            msg,
            addr,
            {
                "XOR-RELAYED-ADDRESS": alloc.relayed,
                "LIFETIME": self._lifetime(msg),
                "XOR-MAPPED-ADDRESS": addr,
            },
            key=key,
        )

    def _on_refresh(self, msg: stun.Message, addr: Addr, alloc: Allocation, key: bytes) -> None:
        lifetime = self._lifetime(msg)
        if lifetime == 0:
            self._delete(alloc)
        else:
            alloc.expires_at = asyncio.get_running_loop().time() + lifetime
        self._reply(msg, addr, {"LIFETIME": lifetime}, key=key)

    def _on_create_permission(
        self, msg: stun.Message, data: bytes, addr: Addr, alloc: Allocation, key: bytes
    ) -> None:
        peers = peer_addresses(data, msg.transaction_id)
        if not peers:
            self._reply(msg, addr, error=(400, "Bad Request"), key=key)
            return
        if not all(self._host_allowed(peer[0]) for peer in peers):
            self._count("forbidden_peer", str(peers))
            self._reply(msg, addr, error=(403, "Forbidden: peer not allowed"), key=key)
            return
        expiry = asyncio.get_running_loop().time() + PERMISSION_LIFETIME_S
        for peer in peers:
            alloc.permissions[peer[0]] = expiry
        self._reply(msg, addr, key=key)

    def _on_channel_bind(self, msg: stun.Message, addr: Addr, alloc: Allocation, key: bytes) -> None:
        number = msg.attributes.get("CHANNEL-NUMBER")
        peer = msg.attributes.get("XOR-PEER-ADDRESS")
        if number is None or peer is None or not CHANNEL_MIN <= number <= CHANNEL_MAX:
            self._reply(msg, addr, error=(400, "Bad Request"), key=key)
            return
        peer = (peer[0], peer[1])
        if not self.peer_allowed(peer):
            self._count("forbidden_peer", str(peer))
            self._reply(msg, addr, error=(403, "Forbidden: peer not allowed"), key=key)
            return
        bound = alloc.channels.get(number)
        other = alloc.peer_channel.get(peer)
        if (bound is not None and bound[0] != peer) or (other is not None and other != number):
            self._reply(msg, addr, error=(400, "Bad Request: channel in use"), key=key)
            return
        now = asyncio.get_running_loop().time()
        alloc.channels[number] = (peer, now + CHANNEL_LIFETIME_S)
        alloc.peer_channel[peer] = number
        alloc.permissions[peer[0]] = now + PERMISSION_LIFETIME_S
        self._reply(msg, addr, key=key)

    def _on_send(self, msg: stun.Message, addr: Addr) -> None:
        alloc = self._allocs.get(addr)
        if alloc is None:
            self._count("no_allocation")
            return
        peer = msg.attributes.get("XOR-PEER-ADDRESS")
        payload = msg.attributes.get("DATA")
        if peer is None or payload is None:
            self._count("bad_message", "Send without peer or data")
            return
        if peer[0] not in alloc.permissions:
            self._count("no_permission", peer[0])
            return
        if not self.peer_allowed(peer):
            self._count("forbidden_peer", str(peer))
            return
        alloc.up.push(payload, self._now_ms(), (peer[0], peer[1]))
        self._service(alloc)

    # ------------------------------------------------------------- from peer
    def _on_peer(self, alloc: Allocation, data: bytes, addr: Addr) -> None:
        if addr[0] not in alloc.permissions:
            self._count("no_permission", addr[0])
            return
        if not self.peer_allowed(addr):
            self._count("forbidden_peer", str(addr))
            return
        alloc.down.push(data, self._now_ms(), (addr[0], addr[1]))
        self._service(alloc)

    # ----------------------------------------------------------------- timer
    def _service(self, alloc: Allocation) -> None:
        """Send what both links have due, then re-arm the allocation's one timer."""
        now_ms = self._now_ms()
        if alloc.transport is None:
            return
        for payload, peer in alloc.up.pop_ready_items(now_ms):
            try:
                alloc.transport.sendto(payload, peer)
                self.stats["relayed_up"] += 1
            except Exception:  # noqa: BLE001 - e.g. a closed socket
                self._count("send_errors")
        for payload, peer in alloc.down.pop_ready_items(now_ms):
            number = alloc.peer_channel.get(peer)
            if number is not None:
                frame = struct.pack("!HH", number, len(payload)) + payload
            else:
                ind = stun.Message(stun.Method.DATA, stun.Class.INDICATION)
                ind.attributes["XOR-PEER-ADDRESS"] = peer
                ind.attributes["DATA"] = payload
                frame = bytes(ind)
            self._send_client(frame, alloc.client)
            self.stats["relayed_down"] += 1
        deadlines = [d for d in (alloc.up.next_deadline(), alloc.down.next_deadline()) if d is not None]
        if not deadlines:
            return
        due = min(deadlines)
        if alloc.timer is not None:
            if alloc.timer_at <= due:
                return
            alloc.timer.cancel()
        loop = asyncio.get_running_loop()
        alloc.timer_at = due
        alloc.timer = loop.call_at(due / 1000.0, self._on_timer, alloc)

    def _on_timer(self, alloc: Allocation) -> None:
        alloc.timer = None
        self._service(alloc)

    def _sweep(self) -> None:
        """Expire allocations, permissions and channels (once a second)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for alloc in list(self._allocs.values()):
            if alloc.expires_at <= now:
                logger.info("allocation %d expired", alloc.id)
                self._delete(alloc)
                continue
            for ip, exp in list(alloc.permissions.items()):
                if exp <= now:
                    del alloc.permissions[ip]
            for number, (peer, exp) in list(alloc.channels.items()):
                if exp <= now:
                    del alloc.channels[number]
                    alloc.peer_channel.pop(peer, None)
        self._sweeper = loop.call_later(1.0, self._sweep)

    def _delete(self, alloc: Allocation) -> None:
        self._allocs.pop(alloc.client, None)
        if alloc.timer is not None:
            alloc.timer.cancel()
            alloc.timer = None
        if alloc.transport is not None:
            alloc.transport.close()
            alloc.transport = None

    # ------------------------------------------------------------ control API
    async def start_control(
        self, host: str = "127.0.0.1", port: int = 0, *, token: str | None = None
    ) -> Addr:
        """Serve the JSON control API; returns its address.

        ``GET /profiles``, ``PUT /profiles/{name}`` (body: a spec string,
        ``"UP|DOWN"``, or ``{"up": ..., "down": ...}``), ``GET /allocations``,
        ``POST /allocations/{id}/profile`` (body ``{"profile": NAME}``),
        ``GET /stats``. Every request needs ``Authorization: Bearer TOKEN``:
        ``token``, or a random one generated here; either is ``control_token``.
        """
        from aiohttp import web

        from netem.control import make_app

        self.control_token = token or secrets.token_urlsafe(24)
        runner = web.AppRunner(make_app(self, self.control_token))
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._control = runner
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        return sockets[0].getsockname()[:2] if sockets else (host, port)
