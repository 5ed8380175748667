"""A tiny HTTP/JSON control API for the TURN relay (aiohttp).

Why: a scenario runner in another process (or a human with curl) needs to
change link profiles while calls are running, and to see which client got
which profile. Errors come back as ``{"error": {"code", "message"}}``.

Routes: ``GET /profiles``, ``PUT /profiles/{name}``, ``GET /allocations``,
``POST /allocations/{id}/profile``, ``GET /stats``. Every request must carry
``Authorization: Bearer TOKEN`` (the relay's ``control_token``): the API changes what
every client's network does, and a web page the operator visits can reach 127.0.0.1.
Without the token the answer is 401 ``unauthorized``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from netem.profiles import Profile


class Described(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class ControlledRelay(Protocol):
    """What the API reads and changes of a relay (``netem.turn.TurnRelay`` is one)."""

    @property
    def profiles(self) -> Mapping[str, Profile]: ...

    @property
    def allocations(self) -> Sequence[Described]: ...

    @property
    def stats(self) -> Mapping[str, int]: ...

    def set_profile(self, name: str, value: Any) -> Profile: ...

    def set_allocation_profile(self, alloc_id: int, name: str) -> None: ...


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def _body(request: web.Request) -> Any:
    text = await request.text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare netem spec is fine too


def _bearer_auth(token: str) -> Any:
    """Middleware: 401 unless the request's bearer token equals ``token``."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return _error(401, "unauthorized", "missing or wrong bearer token")
        return await handler(request)

    return check


def make_app(relay: ControlledRelay, token: str) -> web.Application:
    """Build the aiohttp application bound to ``relay``, guarded by ``token``."""
    if not token:
        raise ValueError("the control API needs a non-empty token")
    routes = web.RouteTableDef()

    @routes.get("/profiles")
    async def list_profiles(request: web.Request) -> web.Response:
        return web.json_response({n: p.to_dict() for n, p in relay.profiles.items()})

    @routes.put("/profiles/{name}")
    async def put_profile(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            profile = relay.set_profile(name, await _body(request))
        except (ValueError, TypeError, OSError) as exc:
            return _error(400, "bad_profile", str(exc))
        return web.json_response(profile.to_dict())

    @routes.get("/allocations")
    async def list_allocations(request: web.Request) -> web.Response:
        return web.json_response([a.to_dict() for a in relay.allocations])

    @routes.post("/allocations/{id}/profile")
    async def move_allocation(request: web.Request) -> web.Response:
        body = await _body(request)
        name = body.get("profile") if isinstance(body, dict) else None
        if not isinstance(name, str):
            return _error(400, "bad_request", 'body must be {"profile": NAME}')
        try:
            relay.set_allocation_profile(int(request.match_info["id"]), name)
        except ValueError:
            return _error(400, "bad_request", "allocation id must be an integer")
        except KeyError as exc:
            return _error(404, "not_found", str(exc.args[0]))
        return web.json_response({"ok": True})

    @routes.get("/stats")
    async def stats(request: web.Request) -> web.Response:
        return web.json_response(dict(relay.stats))

    app = web.Application(middlewares=[_bearer_auth(token)])
    app.add_routes(routes)
    return app
