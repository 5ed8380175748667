"""Which hosts name this server and which page origins may open its WebSocket (DNS rebinding, CSWSH)."""

from __future__ import annotations

from aiohttp import web
from yarl import URL

from .config import Config, is_loopback_host

_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def request_host(request: web.Request) -> str | None:
    """The host name of the request's Host header, lower case; None when unparsable."""
    try:
        host = request.url.host
    except ValueError:  # a Host header yarl cannot parse ("x:y:z") names no host of ours
        return None
    return host.lower() if host else None


def known_host(config: Config, host: str | None) -> bool:
    """Whether ``host`` (from a Host header) names this server, not some other domain.

    A web page on another domain that re-points its name at this address (DNS
    rebinding) reaches the server with its own name in Host; only loopback names,
    the bind and announce addresses and the hosts of ``allowed_origins`` pass.
    """
    if not host:
        return False
    host = host.strip("[]").lower().rstrip(".")
    if is_loopback_host(host):
        return True
    names = {config.host.lower(), *(ip.lower() for ip in config.announce_ips)}
    names.update((URL(o).host or "").lower() for o in config.allowed_origins if o != "*")
    return host in names - _WILDCARD_HOSTS


def origin_allowed(config: Config, request: web.Request) -> bool:
    """Browsers send Origin on WebSocket upgrades; other clients send none (allowed).

    Allowed by default: pages from this server's own host and from loopback; beyond
    that only ``allowed_origins`` (``*`` for any).
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    allowed = config.allowed_origins
    origin = origin.strip().lower().rstrip("/")
    if "*" in allowed or origin in allowed:
        return True
    try:
        host = URL(origin).host
    except ValueError:
        return False
    if not host:
        return False
    return is_loopback_host(host) or host == request_host(request)
