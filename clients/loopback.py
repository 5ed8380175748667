"""Loopback host candidates for aiortc: tests and the CLI on 127.0.0.1-only machines."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import aioice.ice


class allow_loopback(contextlib.AbstractContextManager["allow_loopback"]):  # noqa: N801
    """Make aioice gather a host candidate on 127.0.0.1 (and only there).

    aioice's ``get_host_addresses`` deliberately skips 127.0.0.1, so an aiortc client in
    a loopback-only network namespace gathers no candidate at all, and in the host
    namespace it would use eth0 (tests must never send there, DESIGN §8). This patches
    ``aioice.ice.get_host_addresses`` process-wide to return ``["127.0.0.1"]``.

    Use it as a context manager (restored on exit) or call it once for the lifetime of
    the process (the CLI does this); ``undo()`` restores explicitly. Not needed with a
    relay-only policy, where aioice gathers no host candidates anyway.
    """

    def __init__(self, addresses: list[str] | None = None) -> None:
        self.addresses = list(addresses or ["127.0.0.1"])
        self._previous: Callable[..., list[str]] | None = aioice.ice.get_host_addresses
        addrs = self.addresses

        def _loopback_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
            return [a for a in addrs if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

        aioice.ice.get_host_addresses = _loopback_host_addresses

    def undo(self) -> None:
        """Restore the lookup that was in place when this patch was applied."""
        if self._previous is not None:
            aioice.ice.get_host_addresses = self._previous
            self._previous = None

    def __exit__(self, *exc: object) -> None:
        self.undo()


# --------------------------------------------------------------------------- SDP helpers
