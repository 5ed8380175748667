"""Webhooks: room events POSTed as JSON to the operator's endpoints, LiveKit's scheme.

Events: ``room_started``, ``room_finished``, ``participant_joined``,
``participant_left``, ``track_published``, ``track_unpublished``,
``recording_started``, ``recording_finished``. The body is
``{"event", "id", "createdAt", "room", "participant"?, "track"?, ...}``; the
``Authorization`` header is a JWT (HS256 with the api secret) whose claims are
``iss`` = the api key and ``sha256`` = base64 of the body's SHA-256, as LiveKit signs
them, so LiveKit's webhook receivers verify Ferry's posts (:func:`verify` does the same).

Posting never blocks the SFU: :meth:`WebhookNotifier.notify` puts the body on each
endpoint's bounded queue (full: the oldest event is dropped, counted and logged once
per run of drops), and one task per endpoint posts them in order with a timeout and
retries with exponential backoff. A hanging or failing endpoint delays only its own
queue; a failure is logged once per run of failures.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt

from media.routing.published_track import PublishedTrack

from .auth import ALGORITHM
from .rooms import Participant, Room, RoomObserverBase

__all__ = ["Endpoint", "WebhookError", "WebhookEvents", "WebhookNotifier", "sign", "verify"]

log = logging.getLogger("ferry.signaling.webhooks")

CONTENT_TYPE = "application/webhook+json"
QUEUE_LIMIT = 1000
TIMEOUT_S = 5.0
ATTEMPTS = 4  # one post and three retries
BACKOFF_S = 0.5  # doubles per retry
TOKEN_TTL_S = 600


class WebhookError(Exception):
    """A webhook post that does not verify."""


def sign(body: bytes, api_key: str, api_secret: str, now: float) -> str:
    """The ``Authorization`` value for ``body``: a JWT carrying the body's SHA-256."""
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
    claims = {"iss": api_key, "nbf": int(now), "exp": int(now + TOKEN_TTL_S), "sha256": digest}
    return jwt.encode(claims, api_secret, algorithm=ALGORITHM)


def verify(body: bytes, authorization: str, keys: dict[str, str], now: float) -> dict[str, Any]:
    """The event of a post whose signature, key and body hash check out (a receiver's side)."""
    try:
        issuer = jwt.decode(authorization, options={"verify_signature": False}).get("iss")
        secret = keys.get(issuer) if isinstance(issuer, str) else None
        if secret is None:
            raise WebhookError(f"unknown api key {issuer!r}")
        claims = jwt.decode(authorization, secret, algorithms=[ALGORITHM], options={"verify_nbf": False,
                                                                                 "verify_exp": False})
    except jwt.PyJWTError as exc:
        raise WebhookError(f"bad token: {exc}") from None
    if not claims.get("exp", 0) >= now - 10:
        raise WebhookError("token expired")
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
    if claims.get("sha256") != digest:
        raise WebhookError("body does not match the signed sha256")
    event = json.loads(body)
    if not isinstance(event, dict):
        raise WebhookError("body is not a JSON object")
    return event


@dataclass
class Endpoint:
    """One receiver and its queue of pending bodies."""

    url: str
    api_key: str
    api_secret: str
    queue: deque[bytes] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sent: int = 0
    failed: int = 0  # events given up on after every attempt
    dropped: int = 0  # events pushed out of a full queue
    failing: bool = False
    dropping: bool = False


class WebhookNotifier:
    """Posts events to every configured endpoint; see the module docstring."""

    def __init__(
        self,
        endpoints: list[tuple[str, str, str]],
        *,
        queue_limit: int = QUEUE_LIMIT,
        timeout_s: float = TIMEOUT_S,
        attempts: int = ATTEMPTS,
        backoff_s: float = BACKOFF_S,
    ) -> None:
        self.endpoints = [Endpoint(url, key, secret) for url, key, secret in endpoints]
        self.queue_limit = queue_limit
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if not self.endpoints or self._tasks:
            return
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        self._tasks = [asyncio.create_task(self._worker(e), name=f"webhook {e.url}") for e in self.endpoints]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    def notify(self, event: str, **fields: Any) -> None:
        """Queue ``event`` for every endpoint (never blocks, never raises)."""
        if not self.endpoints:
            return
        payload = {"event": event, "id": "EV_" + secrets.token_hex(8), "createdAt": int(time.time()), **fields}
        body = json.dumps(payload, separators=(",", ":"), default=str).encode("utf-8")
        for endpoint in self.endpoints:
            if len(endpoint.queue) >= self.queue_limit:
                endpoint.queue.popleft()
                endpoint.dropped += 1
                if not endpoint.dropping:
                    log.warning("webhook %s: queue full (%d events); dropping the oldest", endpoint.url,
                                self.queue_limit)
                endpoint.dropping = True
            else:
                endpoint.dropping = False
            endpoint.queue.append(body)
            endpoint.wake.set()

    def snapshot(self) -> dict[str, int]:
        return {
            "webhooks_sent": sum(e.sent for e in self.endpoints),
            "webhooks_failed": sum(e.failed for e in self.endpoints),
            "webhooks_dropped": sum(e.dropped for e in self.endpoints),
            "webhooks_queued": sum(len(e.queue) for e in self.endpoints),
        }

    async def _worker(self, endpoint: Endpoint) -> None:
        while True:
            while not endpoint.queue:
                endpoint.wake.clear()
                await endpoint.wake.wait()
            body = endpoint.queue[0]
            ok = await self._deliver(endpoint, body)
            if endpoint.queue and endpoint.queue[0] is body:
                endpoint.queue.popleft()
            if ok:
                endpoint.sent += 1
                if endpoint.failing:
                    log.info("webhook %s answers again", endpoint.url)
                endpoint.failing = False
            else:
                endpoint.failed += 1

    async def _deliver(self, endpoint: Endpoint, body: bytes) -> bool:
        """Post with retries; False once every attempt failed (logged once per run)."""
        assert self._session is not None
        error = ""
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            headers = {"Content-Type": CONTENT_TYPE,
                       "Authorization": sign(body, endpoint.api_key, endpoint.api_secret, time.time())}
            try:
                async with self._session.post(endpoint.url, data=body, headers=headers) as response:
                    if 200 <= response.status < 300:
                        return True
                    error = f"HTTP {response.status}"
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if not endpoint.failing:
            log.warning("webhook %s failed after %d attempts (%s); later failures are not logged until it answers",
                        endpoint.url, self.attempts, error)
        endpoint.failing = True
        return False


def _room(room: Room) -> dict[str, object]:
    return {"sid": room.sid, "name": room.name, "metadata": room.metadata}


def _participant(participant: Participant) -> dict[str, object]:
    return {"sid": participant.sid, "identity": participant.identity, "name": participant.name,
            "metadata": participant.metadata}


class WebhookEvents(RoomObserverBase):
    """A RoomObserver turning room changes into webhook events."""

    def __init__(self, notifier: WebhookNotifier) -> None:
        self.notifier = notifier

    def room_created(self, room: Room) -> None:
        self.notifier.notify("room_started", room=_room(room))

    def room_closed(self, room: Room) -> None:
        self.notifier.notify("room_finished", room=_room(room))

    def participant_joined(self, room: Room, participant: Participant) -> None:
        self.notifier.notify("participant_joined", room=_room(room), participant=_participant(participant))

    def participant_left(self, room: Room, participant: Participant) -> None:
        self.notifier.notify("participant_left", room=_room(room), participant=_participant(participant))

    def tracks_published(self, room: Room, participant: Participant, tracks: list[PublishedTrack]) -> None:
        for track in tracks:
            self.notifier.notify("track_published", room=_room(room), participant=_participant(participant),
                                 track=track.info())

    def tracks_unpublished(self, room: Room, participant: Participant, tracks: list[PublishedTrack]) -> None:
        for track in tracks:
            self.notifier.notify("track_unpublished", room=_room(room), participant=_participant(participant),
                                 track=track.info())

