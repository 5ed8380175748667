"""Sans-I/O DTLS-SRTP session (RFC 5764) over pyOpenSSL memory BIOs.

The shell feeds DTLS datagrams in, sends `datagrams_to_send()` out and drives retransmission
through `next_deadline()`/`on_timer()`. Once `state == "connected"`, `srtp_keys()` gives
the keying material for `SrtpContext`. The peer is authenticated by the certificate
fingerprint from SDP (RFC 8122), not by a CA chain. DTLS application data (SCTP data
channels) is out of scope: it is discarded and counted.

Retransmission: OpenSSL's DTLS timer runs on the wall clock and cannot be driven from
outside through pyOpenSSL, so the session keeps its own RFC 6347 timer in `now_ms`
(1 s doubling to 60 s, plus a few ms of slack). When it fires, OpenSSL is asked to
retransmit (fresh record numbers: the normal path live, where both clocks agree); if
OpenSSL's own timer has not expired (simulated time), the session re-sends its last flight
verbatim, which a peer that lost it accepts. A server whose final flight was lost re-sends it when the client
retransmits, as RFC 6347 §4.2.4 asks.
"""

from __future__ import annotations

import logging
import weakref
from typing import Literal

from OpenSSL import SSL, crypto

from .certificate import FINGERPRINT_ALGORITHMS, Certificate, certificate_fingerprint
from .srtp import SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_SHA1_80, key_salt_length

logger = logging.getLogger("ferry.media.dtls")

DtlsRole = Literal["server", "client"]

# Offered/accepted in preference order; OpenSSL's server picks its first shared profile.
DEFAULT_SRTP_PROFILES: tuple[str, ...] = (SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_SHA1_80)
# Our key is ECDSA, so the server side can only use ECDSA suites (as aiortc does).
_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA"
)
_DTLS1_2_VERSION = 0xFEFD
_RECORD_HEADER = 13
_CONTENT_TYPES = frozenset((20, 21, 22, 23, 25, 26))  # ccs, alert, handshake, app, ack, ...
INITIAL_RTO_MS = 1000.0
MAX_RTO_MS = 60000.0
# Our deadline trails OpenSSL's wall-clock timer (started a moment after `now_ms` was
# stamped) by this much, so that live, OpenSSL's timer has expired when ours fires.
TIMER_SLACK_MS = 5.0
MAX_RETRANSMITS = 6  # 1+2+4+8+16+32 s: the handshake fails about a minute after the last reply


def _verify_callback(
    conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int
) -> bool:
    ref = conn.get_app_data()
    session = ref() if isinstance(ref, weakref.ref) else None
    if not isinstance(session, DtlsSession) or depth != 0:
        return True  # only the leaf certificate is identified, by fingerprint
    return session._verify_peer(cert)


_contexts: weakref.WeakKeyDictionary[Certificate, dict[tuple[str, ...], SSL.Context]] = (
    weakref.WeakKeyDictionary()
)


def _context(certificate: Certificate, profiles: tuple[str, ...]) -> SSL.Context:
    """One SSL.Context per (certificate, profiles): built once, shared by all sessions."""
    per_cert = _contexts.setdefault(certificate, {})
    ctx = per_cert.get(profiles)
    if ctx is None:
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_QUERY_MTU)
        # Record buffers only while a record is in flight: DTLS-SRTP carries no app data
        # after the handshake, so each connected transport would keep ~6 KB idle.
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        # DTLS 1.2 is what every browser speaks; it keeps the flight structure (and the
        # retransmission logic above) predictable.
        ctx.set_max_proto_version(_DTLS1_2_VERSION)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_callback)
        ctx.use_certificate(certificate.x509)
        ctx.use_privatekey(certificate.private_key)
        ctx.set_cipher_list(_CIPHERS)
        ctx.set_tlsext_use_srtp(b":".join(p.encode("ascii") for p in profiles))
        per_cert[profiles] = ctx
    return ctx


def split_records(data: bytes) -> list[bytes] | None:
    """Split a datagram into DTLS records; None if it is not a well-formed record sequence."""
    records = []
    pos, n = 0, len(data)
    while pos < n:
        if n - pos < _RECORD_HEADER:
            return None
        if data[pos] not in _CONTENT_TYPES or data[pos + 1] != 0xFE:
            return None
        end = pos + _RECORD_HEADER + int.from_bytes(data[pos + 11 : pos + 13], "big")
        if end > n:
            return None
        records.append(data[pos:end])
        pos = end
    return records


class DtlsSession:
    """One DTLS-SRTP association; `role` is fixed by SDP a=setup (Ferry is the server)."""

    def __init__(
        self,
        certificate: Certificate,
        *,
        role: DtlsRole,
        remote_fingerprints: list[tuple[str, str]],
        srtp_profiles: tuple[str, ...] = DEFAULT_SRTP_PROFILES,
        mtu: int = 1200,
    ) -> None:
        if role not in ("server", "client"):
            raise ValueError(f"role must be 'server' or 'client', not {role!r}")
        self.role: DtlsRole = role
        self.mtu = mtu
        self.state = "new"
        self.failure_reason: str | None = None
        self._handshake_done = False
        self._peer_verified = False
        self._remote_fingerprints: list[tuple[str, str]] = []
        self.set_remote_fingerprints(remote_fingerprints)

        # The OpenSSL connection is made when the handshake starts: every participant has
        # a publisher transport, and a viewer's never handshakes (~22 KB each otherwise).
        self._context = _context(certificate, tuple(srtp_profiles))
        self._conn: SSL.Connection = None  # type: ignore[assignment]  # set by start()

        self._out: list[bytes] = []
        self._flight: list[bytes] = []  # last handshake flight, for verbatim re-sending
        self._deadline: float | None = None
        self._rto = INITIAL_RTO_MS
        self._retransmits = 0
        self._keys: tuple[str, bytes, bytes] | None = None

        # counters
        self.bad_records = 0  # malformed datagrams and records OpenSSL rejected
        self.app_data_discarded = 0  # application-data bytes (SCTP) we do not handle
        self.retransmissions = 0

    # -- remote identity ---------------------------------------------------------------

    @property
    def remote_fingerprints(self) -> list[tuple[str, str]]:
        return list(self._remote_fingerprints)

    def set_remote_fingerprints(self, fingerprints: list[tuple[str, str]]) -> None:
        """Set or update the SDP fingerprints (a subscriber's answer may arrive late).

        If the handshake already finished without them, verification happens now.
        """
        self._remote_fingerprints = [(alg.lower(), value.upper()) for alg, value in fingerprints]
        if self._handshake_done and not self._peer_verified and self.state == "connecting":
            cert = self._conn.get_peer_certificate()
            if cert is None:
                self._fail("peer sent no certificate")
            elif self._verify_peer(cert):
                self._complete()
            else:
                self._fail(self.failure_reason or "fingerprint mismatch")

    def _verify_peer(self, cert: crypto.X509) -> bool:
        """True if `cert` matches a remote fingerprint (any algorithm we can compute)."""
        if not self._remote_fingerprints:
            return True  # not known yet: checked again in set_remote_fingerprints()
        supported = [(a, v) for a, v in self._remote_fingerprints if a in FINGERPRINT_ALGORITHMS]
        if not supported:
            algs = ", ".join(a for a, _ in self._remote_fingerprints)
            self.failure_reason = f"no supported fingerprint algorithm in remote SDP ({algs})"
            return False
        x509 = cert.to_cryptography()
        for alg, value in supported:
            if certificate_fingerprint(x509, alg) == value:
                self._peer_verified = True
                return True
        alg = supported[0][0]
        self.failure_reason = (
            f"remote certificate fingerprint mismatch: {alg} is "
            f"{certificate_fingerprint(x509, alg)}, SDP says {supported[0][1]}"
        )
        return False

    # -- inputs ------------------------------------------------------------------------

    def start(self, now_ms: float) -> None:
        """Begin the handshake: a client sends its ClientHello, a server waits for one."""
        if self.state != "new":
            return
        self.state = "connecting"
        conn = self._conn = SSL.Connection(self._context, None)
        # A weak reference: a strong one would make session and connection a cycle, and
        # every closed transport's OpenSSL state would wait for the cyclic GC.
        conn.set_app_data(weakref.ref(self))
        conn.set_ciphertext_mtu(self.mtu)
        if self.role == "server":
            conn.set_accept_state()
        else:
            conn.set_connect_state()
            self._handshake(now_ms)

    def feed(self, data: bytes, now_ms: float) -> None:
        """Process one DTLS datagram from the peer. Never raises on bad input."""
        if self.state in ("failed", "closed"):
            return
        records = split_records(data)
        if records is None:
            self.bad_records += 1
            return
        if self.state == "new":
            self.start(now_ms)
        try:
            self._conn.bio_write(data)
        except SSL.Error:
            self.bad_records += 1
            return
        was_done = self._handshake_done
        if not was_done:
            self._handshake(now_ms)
        if self._handshake_done and self.state in ("connecting", "connected"):
            self._read_app_data()
            replied = self._drain()
            if was_done and not replied and self._flight and any(r[0] == 22 for r in records):
                # The peer retransmitted its last flight, so ours was lost; OpenSSL dropped the
                # copy as a replay (a verbatim re-send from a simulated-time peer): re-send.
                self._out.extend(self._flight)
                self.retransmissions += 1

    def on_timer(self, now_ms: float) -> None:
        """Retransmit the last flight if its timer expired; fail after MAX_RETRANSMITS."""
        if self._deadline is None or now_ms < self._deadline:
            return
        if self._retransmits >= MAX_RETRANSMITS:
            self._fail("handshake timed out")
            return
        try:
            by_openssl = self._conn.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            self._fail(f"handshake timed out ({_describe(exc)})")
            return
        if by_openssl:
            self._drain()
        else:
            self._out.extend(self._flight)
        self._retransmits += 1
        self.retransmissions += 1
        self._rto = min(self._rto * 2, MAX_RTO_MS)
        self._deadline = now_ms + self._rto + TIMER_SLACK_MS

    def close(self) -> None:
        """Queue a close_notify alert; idempotent."""
        if self.state in ("closed", "failed"):
            return
        if self._handshake_done:
            try:
                self._conn.shutdown()
            except SSL.Error:
                pass
            self._drain()
        self.state = "closed"
        self._deadline = None

    # -- outputs -----------------------------------------------------------------------

    def datagrams_to_send(self) -> list[bytes]:
        """Datagrams queued since the last call, in order."""
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        """When `on_timer` must next run (handshake retransmission), or None."""
        return self._deadline

    def srtp_keys(self) -> tuple[str, bytes, bytes]:
        """(profile, local key+salt to protect with, remote key+salt to unprotect with)."""
        if self._keys is None:
            raise RuntimeError(f"DTLS session is {self.state}, SRTP keys need 'connected'")
        return self._keys

    # -- internals ---------------------------------------------------------------------

    def _handshake(self, now_ms: float) -> None:
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            flight = self._drain()
            if flight:
                self._new_flight(flight, now_ms)
            return
        except SSL.Error as exc:
            self._drain()  # the alert telling the peer why
            self._fail(self.failure_reason or f"handshake failed ({_describe(exc)})")
            return
        self._handshake_done = True
        # A client's handshake ends on receiving the server's last flight; a server's final
        # flight is re-sent by OpenSSL when the client retransmits. No timer either way.
        self._deadline = None
        # A server keeps its final flight to answer a client that did not get it.
        self._flight = self._drain() if self.role == "server" else []
        if self._conn.get_peer_certificate() is None:
            self._fail("peer sent no certificate")
        elif self._peer_verified:
            self._complete()
        # else: fingerprints not known yet; set_remote_fingerprints() completes.

    def _new_flight(self, flight: list[bytes], now_ms: float) -> None:
        self._flight = flight
        self._rto = INITIAL_RTO_MS
        self._retransmits = 0
        self._deadline = now_ms + self._rto + TIMER_SLACK_MS

    def _complete(self) -> None:
        profile_name = self._conn.get_selected_srtp_profile().decode("ascii", "replace")
        try:
            length = key_salt_length(profile_name)
        except ValueError:
            self._fail(f"no SRTP profile negotiated ({profile_name or 'none'})")
            return
        key_len = {16 + 12: 16, 16 + 14: 16, 32 + 12: 32}[length]
        salt_len = length - key_len
        # RFC 5764 §4.2: client key, server key, client salt, server salt.
        material = self._conn.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * length)
        client = material[:key_len] + material[2 * key_len : 2 * key_len + salt_len]
        server = material[key_len : 2 * key_len] + material[2 * key_len + salt_len :]
        if self.role == "client":
            self._keys = (profile_name, client, server)
        else:
            self._keys = (profile_name, server, client)
        self.state = "connected"
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("dtls %s connected, %s", self.role, profile_name)

    def _read_app_data(self) -> None:
        while True:
            try:
                data = self._conn.recv(65536)
            except SSL.WantReadError:
                return
            except SSL.ZeroReturnError:
                self.state = "closed"  # close_notify from the peer
                self._deadline = None
                return
            except SSL.Error:
                self.bad_records += 1
                return
            self.app_data_discarded += len(data)

    def _drain(self) -> list[bytes]:
        """Move OpenSSL's output into datagrams of at most `mtu` bytes; returns them."""
        chunks = []
        while True:
            try:
                chunk = self._conn.bio_read(65536)
            except SSL.Error:
                break
            if not chunk:
                break
            chunks.append(chunk)
        if not chunks:
            return []
        data = b"".join(chunks)
        # The memory BIO is a byte stream: re-split it on record boundaries and pack whole
        # records into datagrams (RFC 6347 §4.1.1 allows several records per datagram).
        records = split_records(data) or [data]
        datagrams = []
        datagram = b""
        for record in records:
            if datagram and len(datagram) + len(record) > self.mtu:
                datagrams.append(datagram)
                datagram = b""
            datagram += record
        datagrams.append(datagram)
        self._out.extend(datagrams)
        return datagrams

    def _fail(self, reason: str) -> None:
        if self.state != "failed":
            self.state = "failed"
            self.failure_reason = reason
            self._deadline = None
            if logger.isEnabledFor(logging.INFO):
                logger.info("dtls %s failed: %s", self.role, reason)


def _describe(exc: SSL.Error) -> str:
    try:
        return "; ".join(str(part[2]) for part in exc.args[0]) or repr(exc)
    except (IndexError, TypeError):
        return repr(exc)
