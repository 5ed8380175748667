"""A TURN allocation's state and the peer addresses it may reach.

Apart from the relay's protocol handling (``netem.turn``) so each stays one concept:
what an allocation holds (relayed socket, permissions, channels, its two links) and
how a configured peer entry reads.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any

from aioice import stun

from netem.link import Link

Addr = tuple[str, int]


def parse_peer(entry: str | Addr) -> tuple[str, int | None]:
    """``"IP:PORT"``, ``"IP"`` (any port) or ``(ip, port)`` -> (ip, port or None).

    ``ValueError`` names the entry when the address is not an IP literal (the relay
    compares addresses as the socket reports them, so host names would never match).
    """
    if isinstance(entry, tuple):
        host, port = entry[0], int(entry[1])
    else:
        text = entry.strip()
        host, sep, port_text = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
        if not sep:
            host = text.strip("[]")
        if sep and not port_text.isdigit():
            raise ValueError(f"bad peer {entry!r} (use IP, IP:PORT or *)")
        port = int(port_text) if sep else None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad peer {entry!r}: {host!r} is not an IP address") from None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"bad peer {entry!r}: port out of range")
    return host, port


def peer_addresses(data: bytes, transaction_id: bytes) -> list[Addr]:
    """Every XOR-PEER-ADDRESS in a raw message (aioice keeps only the last)."""
    out: list[Addr] = []
    pos = stun.HEADER_LENGTH
    while pos + 4 <= len(data):
        attr_type, attr_len = struct.unpack_from("!HH", data, pos)
        if attr_type == 0x0012:
            out.append(stun.unpack_xor_address(data[pos + 4 : pos + 4 + attr_len], transaction_id))
        pos += 4 + attr_len + stun.padding_length(attr_len)
    return out


@dataclass(eq=False)
class Allocation:
    """One client's allocation: relayed socket, permissions, channels, two links."""

    id: int
    client: Addr
    username: str
    profile: str
    key: bytes
    transaction_id: bytes
    up: Link
    down: Link
    expires_at: float
    relayed: Addr = ("0.0.0.0", 0)
    transport: asyncio.DatagramTransport | None = None
    permissions: dict[str, float] = field(default_factory=dict)
    channels: dict[int, tuple[Addr, float]] = field(default_factory=dict)
    peer_channel: dict[Addr, int] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None
    timer_at: float = 0.0
    response: bytes = b""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "client": f"{self.client[0]}:{self.client[1]}",
            "relayed": f"{self.relayed[0]}:{self.relayed[1]}",
            "username": self.username,
            "profile": self.profile,
            "permissions": sorted(self.permissions),
            "channels": {str(n): f"{p[0]}:{p[1]}" for n, (p, _) in self.channels.items()},
            "up": self.up.stats.to_dict(),
            "down": self.down.stats.to_dict(),
        }
