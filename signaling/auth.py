"""Access tokens: JWT (HS256) minting and verification.

Claim layout (docs/protocol.md, "Tokens")::

    {"iss": <api key>, "sub": <identity>, "exp": <unix seconds>, "nbf": <unix seconds>,
     "name": <display name>,
     "video": {"room", "roomJoin", "canPublish", "canSubscribe", "canPublishData",
               "roomAdmin", "roomRecord", "hidden"}}

Time is an argument (STYLE §9.1): :meth:`TokenVerifier.verify` and :func:`mint_token`
take ``now`` in unix seconds instead of reading the clock, so expiry is testable without
sleeping or patching ``time``. PyJWT's own ``exp``/``nbf`` checks are therefore disabled
and done here against ``now``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

__all__ = [
    "ADMIN_ALL_ROOMS",
    "ALGORITHM",
    "AuthError",
    "Claims",
    "Grants",
    "TokenVerifier",
    "admin_scope",
    "check_join",
    "generate_dev_keys",
    "mint_token",
]

ALGORITHM = "HS256"

# The room name of a server-wide admin token: `roomAdmin` over every room. No one joins it.
ADMIN_ALL_ROOMS = "*"

# Clock skew tolerated between the minting host and this server, in seconds.
DEFAULT_LEEWAY_S = 10.0

# camelCase wire name -> Grants field name.
_GRANT_KEYS: dict[str, str] = {
    "roomJoin": "room_join",
    "canPublish": "can_publish",
    "canSubscribe": "can_subscribe",
    "canPublishData": "can_publish_data",
    "roomAdmin": "room_admin",
    "roomRecord": "room_record",
    "hidden": "hidden",
}


class AuthError(Exception):
    """A token was rejected.

    ``code`` is a protocol error code (``unauthorized`` or ``forbidden``) so the session
    layer can turn it into ``{error: {code, message}}`` without a mapping table.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Grants:
    """What the bearer may do; the ``video`` object of the token, in snake_case."""

    room: str | None = None
    room_join: bool = False
    can_publish: bool = False
    can_subscribe: bool = False
    can_publish_data: bool = False
    room_admin: bool = False
    room_record: bool = False
    hidden: bool = False

    def to_claim(self) -> dict[str, Any]:
        """The camelCase ``video`` object as written into the JWT."""
        out: dict[str, Any] = {"room": self.room}
        for wire, attr in _GRANT_KEYS.items():
            out[wire] = getattr(self, attr)
        return out

    @classmethod
    def from_claim(cls, video: Any) -> Grants:
        """Parse a ``video`` object; missing booleans default to False (least privilege)."""
        if video is None:
            return cls()
        if not isinstance(video, dict):
            raise AuthError("unauthorized", "malformed token: 'video' grant is not an object")
        room = video.get("room")
        if room is not None and not isinstance(room, str):
            raise AuthError("unauthorized", "malformed token: 'video.room' is not a string")
        kwargs: dict[str, Any] = {"room": room}
        for wire, attr in _GRANT_KEYS.items():
            value = video.get(wire, False)
            if not isinstance(value, bool):
                raise AuthError("unauthorized", f"malformed token: 'video.{wire}' is not a boolean")
            kwargs[attr] = value
        return cls(**kwargs)


@dataclass(frozen=True)
class Claims:
    """A verified token."""

    identity: str
    name: str
    grants: Grants
    expires_at: float
    issuer: str


class TokenVerifier:
    """Verifies tokens against a set of API keys.

    Several keys can be active at once (key rotation); the token's ``iss`` claim selects
    which secret must have signed it.
    """

    def __init__(self, keys: dict[str, str], *, leeway_s: float = DEFAULT_LEEWAY_S) -> None:
        self._keys = dict(keys)
        self._leeway_s = leeway_s

    def verify(self, token: str, *, now: float) -> Claims:
        """Return the token's claims or raise ``AuthError("unauthorized", ...)``.

        ``now`` is unix time in seconds. The message says which check failed (malformed,
        unknown key, bad signature, expired, not yet valid) because operators debugging a
        failed join need to know, and none of it leaks the secret.
        """
        if not isinstance(token, str) or not token:
            raise AuthError("unauthorized", "malformed token: empty")
        if not token.isascii():
            # A JWT is base64url and dots; PyJWT's UTF-8 encode raises on a lone surrogate.
            raise AuthError("unauthorized", "malformed token: not ASCII")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise AuthError("unauthorized", f"malformed token: {exc}") from None
        if header.get("alg") != ALGORITHM:
            raise AuthError("unauthorized", f"malformed token: algorithm must be {ALGORITHM}")
        issuer = unverified.get("iss")
        if not isinstance(issuer, str):
            raise AuthError("unauthorized", "malformed token: missing 'iss' (api key)")
        secret = self._keys.get(issuer)
        if secret is None:
            raise AuthError("unauthorized", f"unknown api key {issuer!r}")
        try:
            payload = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                # exp/nbf are checked below against the caller's ``now``.
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.InvalidSignatureError:
            raise AuthError("unauthorized", "bad token signature") from None
        except jwt.PyJWTError as exc:
            raise AuthError("unauthorized", f"malformed token: {exc}") from None
        return self._claims(payload, issuer, now)

    def _claims(self, payload: dict[str, Any], issuer: str, now: float) -> Claims:
        exp = payload.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise AuthError("unauthorized", "malformed token: missing or non-numeric 'exp'")
        if now > exp + self._leeway_s:
            raise AuthError("unauthorized", f"token expired {now - exp:.0f}s ago (exp={exp})")
        nbf = payload.get("nbf")
        if nbf is not None:
            if isinstance(nbf, bool) or not isinstance(nbf, int | float):
                raise AuthError("unauthorized", "malformed token: non-numeric 'nbf'")
            if now + self._leeway_s < nbf:
                raise AuthError("unauthorized", f"token not valid yet (nbf={nbf})")
        identity = payload.get("sub")
        if not isinstance(identity, str) or not identity:
            raise AuthError("unauthorized", "malformed token: missing 'sub' (identity)")
        name = payload.get("name", identity)
        if not isinstance(name, str):
            raise AuthError("unauthorized", "malformed token: 'name' is not a string")
        return Claims(
            identity=identity,
            name=name or identity,
            grants=Grants.from_claim(payload.get("video")),
            expires_at=float(exp),
            issuer=issuer,
        )


def check_join(claims: Claims, room: str) -> None:
    """Raise ``AuthError("forbidden", ...)`` unless the token may join ``room``.

    A grant without a room name allows any room (an admin/dev convenience); a named room
    must match exactly.
    """
    if not claims.grants.room_join:
        raise AuthError("forbidden", "token lacks the roomJoin grant")
    if claims.grants.room is not None and claims.grants.room != room:
        raise AuthError(
            "forbidden",
            f"token is for room {claims.grants.room!r}, not {room!r}",
        )


def check_room_admin(claims: Claims, room: str, action: str) -> None:
    """Raise ``AuthError("forbidden", ...)`` unless the token is ``roomAdmin`` for ``room`` (or "*")."""
    grants = claims.grants
    if not grants.room_admin:
        raise AuthError("forbidden", f"{action} needs the roomAdmin grant")
    if grants.room not in (room, ADMIN_ALL_ROOMS):
        raise AuthError("forbidden", f"token is for room {grants.room!r}, not {room!r}")


def request_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str:
    """An HTTP request's token: ``Authorization: Bearer``, else ``?token=`` (a link from a page)."""
    header = headers.get("Authorization", "")
    return header[7:] if header.startswith("Bearer ") else query.get("token", "")


def admin_scope(claims: Claims) -> str:
    """The room a ``roomAdmin`` grant covers, or :data:`ADMIN_ALL_ROOMS` for every room.

    An admin grant is scoped to its token's room, so a room host's token cannot list other
    rooms; a server-wide admin must say so with room ``"*"``. A grant without a room
    covers nothing. Raises ``AuthError("forbidden", ...)``.
    """
    if not claims.grants.room_admin:
        raise AuthError("forbidden", "roomAdmin grant required")
    room = claims.grants.room
    if not room:
        raise AuthError("forbidden", "roomAdmin token names no room (use room '*' for all rooms)")
    return room


def mint_token(
    api_key: str,
    api_secret: str,
    *,
    identity: str,
    room: str | None,
    now: float,
    name: str | None = None,
    ttl_s: float = 6 * 3600,
    can_publish: bool = True,
    can_subscribe: bool = True,
    can_publish_data: bool = True,
    room_admin: bool = False,
    room_record: bool = False,
    hidden: bool = False,
) -> str:
    """Sign a join token for ``identity`` in ``room``, valid from ``now`` for ``ttl_s``."""
    if not identity:
        raise ValueError("identity must be non-empty")
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
    grants = Grants(
        room=room,
        room_join=True,
        can_publish=can_publish,
        can_subscribe=can_subscribe,
        can_publish_data=can_publish_data,
        room_admin=room_admin,
        room_record=room_record,
        hidden=hidden,
    )
    payload: dict[str, Any] = {
        "iss": api_key,
        "sub": identity,
        "name": name if name is not None else identity,
        "nbf": int(now),
        "exp": int(now + ttl_s),
        "video": grants.to_claim(),
    }
    return jwt.encode(payload, api_secret, algorithm=ALGORITHM)


def generate_dev_keys() -> tuple[str, str]:
    """A fresh (api key, secret) pair for a server started without configured keys.

    The secret has 32 random bytes (HS256 wants at least the hash size) and is urlsafe so
    it can be pasted into environment variables and shell commands.
    """
    return "APIdev" + secrets.token_hex(6), secrets.token_urlsafe(32)
