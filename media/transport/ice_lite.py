"""Sans-I/O ICE-lite agent (RFC 8445 §2.5) for one transport on the shared UDP port.

Ferry never sends checks: it answers the browser's binding requests, learns and selects
the remote address from them (USE-CANDIDATE, or the first valid check), and tracks consent
freshness (RFC 7675) from those same requests. The shell calls `handle()` for every STUN
datagram and sends back what it returns; `state(now_ms)` says when to give up on the peer.
STUN parsing and building is aioice's `stun` module.
"""

from __future__ import annotations

import logging
import secrets
import string
import struct

from aioice import stun

logger = logging.getLogger("ferry.media.ice")

Addr = tuple[str, int]

_ICE_CHARS = string.ascii_letters + string.digits + "+/"
_BINDING_REQUEST = 0x0001
_USERNAME = 0x0006
_MAGIC_COOKIE = 0x2112A442


def generate_credentials() -> tuple[str, str]:
    """Fresh (ufrag, pwd): 8 and 24 ice-chars, above RFC 8445's 24/128-bit minimums."""
    ufrag = "".join(secrets.choice(_ICE_CHARS) for _ in range(8))
    pwd = "".join(secrets.choice(_ICE_CHARS) for _ in range(24))
    return ufrag, pwd


def stun_local_ufrag(data: bytes) -> str | None:
    """Our (local) ufrag from a binding request's USERNAME, without a full parse.

    The mux calls this for datagrams from unknown addresses to find their transport, so it
    only walks the attribute headers. It does not authenticate: `IceLiteAgent.handle` does.
    """
    n = len(data)
    if n < 20 or data[0] & 0xC0:
        return None
    msg_type, length, cookie = struct.unpack_from("!HHI", data, 0)
    if msg_type != _BINDING_REQUEST or cookie != _MAGIC_COOKIE or 20 + length != n:
        return None
    pos = 20
    while pos + 4 <= n:
        attr_type, attr_len = struct.unpack_from("!HH", data, pos)
        end = pos + 4 + attr_len
        if end > n:
            return None
        if attr_type == _USERNAME:
            local, colon, _ = data[pos + 4 : end].partition(b":")
            if not colon or not local:
                return None
            try:
                return local.decode("ascii")
            except UnicodeDecodeError:
                return None
        pos = end + (-attr_len % 4)
    return None


class _Credentials:
    __slots__ = ("ufrag", "pwd", "key", "remote_ufrag")

    def __init__(self, ufrag: str, pwd: str, remote_ufrag: str | None) -> None:
        self.ufrag = ufrag
        self.pwd = pwd
        self.key = pwd.encode("utf8")
        self.remote_ufrag = remote_ufrag


class IceLiteAgent:
    """Answers connectivity checks for one peer and tracks the selected address's consent.

    States: "new" (no valid check yet), "connected", "disconnected" (no consent for
    `disconnected_after_ms`; media may resume), "failed" (no consent for
    `consent_timeout_ms`; the shell drops the peer).
    """

    def __init__(
        self,
        local_ufrag: str,
        local_pwd: str,
        *,
        consent_timeout_ms: float = 30000.0,
        disconnected_after_ms: float = 7500.0,
    ) -> None:
        # RFC 7675 checks come every 5 s +-20 %, so 7.5 s tolerates one late check
        # without flapping to "disconnected".
        if not 0 < disconnected_after_ms <= consent_timeout_ms:
            raise ValueError("need 0 < disconnected_after_ms <= consent_timeout_ms")
        self._creds = _Credentials(local_ufrag, local_pwd, None)
        # After restart(), the old credentials stay valid until a check uses the new ones,
        # so consent on the current path is not lost during renegotiation.
        self._old_creds: _Credentials | None = None
        self.consent_timeout_ms = consent_timeout_ms
        self.disconnected_after_ms = disconnected_after_ms
        self.selected_addr: Addr | None = None
        self._now_ms = float("-inf")  # latest time seen, for next_deadline()
        self._consent: dict[Addr, float] = {}  # addr -> time of last valid check
        self.bad_requests = 0  # malformed or non-binding requests
        self.auth_failures = 0  # 401s sent
        self.wrong_ufrag = 0  # 400s sent for a USERNAME that is not ours

    # -- credentials -------------------------------------------------------------------

    @property
    def local_ufrag(self) -> str:
        return self._creds.ufrag

    @property
    def local_pwd(self) -> str:
        return self._creds.pwd

    @property
    def remote_ufrag(self) -> str | None:
        """The peer's ufrag: from SDP if set, else learned from the first valid check."""
        return self._creds.remote_ufrag

    @remote_ufrag.setter
    def remote_ufrag(self, value: str | None) -> None:
        self._creds.remote_ufrag = value

    def restart(self, local_ufrag: str, local_pwd: str, remote_ufrag: str | None = None) -> None:
        """ICE restart: new credentials; the selected address is kept until a new check."""
        self._old_creds = self._creds
        self._creds = _Credentials(local_ufrag, local_pwd, remote_ufrag)

    # -- checks ------------------------------------------------------------------------

    def handle(self, data: bytes, addr: Addr, now_ms: float) -> bytes | None:
        """Process one STUN datagram from `addr`; return the response to send, if any."""
        self._now_ms = max(self._now_ms, now_ms)
        try:
            msg = stun.parse_message(data)
        except Exception:  # aioice raises ValueError, struct.error, ...: all mean malformed
            self.bad_requests += 1
            return None
        if msg.message_class != stun.Class.REQUEST:
            return None  # indications are keepalives; ICE-lite sends no requests
        if msg.message_method != stun.Method.BINDING:
            self.bad_requests += 1
            return _error(msg, 400, "Bad Request")
        username = msg.attributes.get("USERNAME")
        if (
            not isinstance(username, str)
            or "MESSAGE-INTEGRITY" not in msg.attributes
            or "FINGERPRINT" not in msg.attributes
        ):
            self.bad_requests += 1
            return _error(msg, 400, "Bad Request")
        local, colon, remote = username.partition(":")
        creds = self._match(local, remote if colon else None)
        if creds is None:
            self.wrong_ufrag += 1
            return _error(msg, 400, "Bad Request")
        try:
            ok = msg.check_message_integrity(creds.key)
        except Exception:
            ok = False
        if not ok:
            self.auth_failures += 1
            return _error(msg, 401, "Unauthenticated")

        if creds is self._creds:
            self._old_creds = None  # the peer has switched to the restarted credentials
            if creds.remote_ufrag is None:
                creds.remote_ufrag = remote
        self._refresh(addr, now_ms, "USE-CANDIDATE" in msg.attributes)

        response = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=msg.transaction_id,
        )
        response.attributes["XOR-MAPPED-ADDRESS"] = addr
        response.add_message_integrity(creds.key)  # also adds FINGERPRINT
        return bytes(response)

    def _match(self, local: str, remote: str | None) -> _Credentials | None:
        for creds in (self._creds, self._old_creds):
            if creds is None or local != creds.ufrag or not remote:
                continue
            if creds.remote_ufrag is None or creds.remote_ufrag == remote:
                return creds
        return None

    def _refresh(self, addr: Addr, now_ms: float, nominated: bool) -> None:
        # Forget addresses whose consent has expired, so the table stays small.
        expired = [a for a, t in self._consent.items() if now_ms - t >= self.consent_timeout_ms]
        for a in expired:
            del self._consent[a]
        self._consent[addr] = now_ms
        if nominated or self.selected_addr is None:
            if addr != self.selected_addr and logger.isEnabledFor(logging.DEBUG):
                logger.debug("ice %s: selected %s", self._creds.ufrag, addr)
            self.selected_addr = addr

    # -- consent -----------------------------------------------------------------------

    def _last_consent(self) -> float | None:
        if self.selected_addr is None:
            return None
        return self._consent.get(self.selected_addr)

    def state(self, now_ms: float) -> str:
        """ "new", "connected", "disconnected" or "failed", from the selected address's consent."""
        self._now_ms = max(self._now_ms, now_ms)
        if self.selected_addr is None:
            return "new"
        last = self._last_consent()
        if last is None:
            return "failed"  # its entry expired and was pruned
        idle = now_ms - last
        if idle >= self.consent_timeout_ms:
            return "failed"
        if idle >= self.disconnected_after_ms:
            return "disconnected"
        return "connected"

    def next_deadline(self) -> float | None:
        """When `state()` next changes without input; None if nothing is pending."""
        last = self._last_consent()
        if last is None:
            return None
        for deadline in (last + self.disconnected_after_ms, last + self.consent_timeout_ms):
            if deadline > self._now_ms:
                return deadline
        return None

    def on_timer(self, now_ms: float) -> None:
        """Advance to `now_ms` so `next_deadline()` moves past deadlines already reached."""
        self._now_ms = max(self._now_ms, now_ms)


def _error(request: stun.Message, code: int, reason: str) -> bytes:
    # 400/401 answer unauthenticated requests, so they carry no MESSAGE-INTEGRITY
    # (RFC 8489 §9.1.3); FINGERPRINT is always added (RFC 8445 §7.3).
    response = stun.Message(
        message_method=request.message_method,
        message_class=stun.Class.ERROR,
        transaction_id=request.transaction_id,
    )
    response.attributes["ERROR-CODE"] = (code, reason)
    response.add_fingerprint()
    return bytes(response)
