"""The lite client's transport: one UDP socket, ICE (controlling), DTLS client, SRTP.

Subclasses (:class:`LitePublisher`, :class:`LiteSubscriber`) handle decrypted RTP and
RTCP and add periodic work; everything here is shared by both PeerConnections.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import socket
from collections.abc import Callable
from typing import Any

from aioice import stun

from media.ortc import TransportParameters
from media.transport.certificate import Certificate
from media.transport.dtls import DtlsSession
from media.transport.ice_lite import generate_credentials
from media.transport.srtp import SrtpContext, SrtpError
from media.wire.rtcp import parse_rtcp
from signaling.sdp import first_udp_candidate

from ..channel import ConnectTimeout, FerryError

__all__ = ["Addr", "CandidateRewrite", "LiteTransport", "shared_certificate"]

logger = logging.getLogger("ferry.lite_client")

TICK_S = 0.02  # transport timer: ICE retries, DTLS timers, RTCP feedback
ICE_RETRY_MS = 50.0
CONSENT_INTERVAL_MS = 5000.0
CONSENT_TIMEOUT_MS = 30000.0
RECV_BUFFER = 1 << 20
DRAIN_LIMIT = 256  # datagrams read per wakeup before yielding to the loop

# Priority of a peer-reflexive candidate (RFC 8445 §5.1.2: type pref 110, local 65535).
_PRIORITY = (110 << 24) | (65535 << 8) | 255

Addr = tuple[str, int]
#: Maps Ferry's UDP candidate to the address actually sent to (e.g. a proxy in front
#: of Ferry, whose target it sets).
CandidateRewrite = Callable[[Addr], Addr]


def now_ms() -> float:
    return asyncio.get_running_loop().time() * 1000.0


_default_certificate: Certificate | None = None


def shared_certificate() -> Certificate:
    """One certificate for every LiteClient in the process.

    DtlsSession builds one SSL.Context per certificate, so sharing it keeps 50 clients
    from paying 50 key generations and contexts; peers are told apart by ICE/addresses.
    """
    global _default_certificate
    if _default_certificate is None:
        _default_certificate = Certificate.generate()
    return _default_certificate


class _LogOnce:
    """Log each distinct failure reason once per object: media errors repeat per packet."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.seen: set[str] = set()
        self.counts: collections.Counter[str] = collections.Counter()

    def __call__(self, reason: str, detail: object = "") -> None:
        self.counts[reason] += 1
        if reason not in self.seen:
            self.seen.add(reason)
            logger.warning("%s: %s %s", self.owner, reason, detail)


class LiteTransport:
    """One PeerConnection's transport: a UDP socket, ICE checks, DTLS client, SRTP.

    Ferry is ICE-lite, so this side is the controlling full agent: it sends binding
    requests (USE-CANDIDATE from the start, aggressive nomination) to Ferry's single
    candidate every 50 ms until one succeeds, then consent checks every 5 s. DTLS starts
    once ICE succeeds (Ferry binds our address from the check). The socket is read with
    ``add_reader`` and drained until EAGAIN, as Ferry's mux does (DESIGN §3), and each
    datagram is demuxed by its first byte (RFC 7983) straight in the callback.
    Subclasses handle decrypted RTP/RTCP and add periodic work in :meth:`on_tick`.
    """

    def __init__(
        self,
        name: str,
        certificate: Certificate,
        *,
        host: str = "127.0.0.1",
        candidate_rewrite: CandidateRewrite | None = None,
    ) -> None:
        self.name = name
        self.candidate_rewrite = candidate_rewrite
        self.certificate = certificate
        self.ufrag, self.pwd = generate_credentials()
        self.state = "new"  # new | checking | dtls | connected | failed | closed
        self.failure: str | None = None
        self.connected = asyncio.Event()
        self.srtp: SrtpContext | None = None
        self.dtls: DtlsSession | None = None
        self.remote_ufrag = ""
        self.remote_pwd = b""
        self.remote_addr: Addr | None = None
        self.log_once = _LogOnce(name)
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0
        self.rtcp_ssrc = random.getrandbits(32) or 1
        self._tie_breaker = random.getrandbits(64)
        self._pending_tids: dict[bytes, float] = {}
        self._next_check_ms = 0.0
        self._last_response_ms: float | None = None
        self._connect_deadline_ms = float("inf")
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        sock.bind((host, 0))
        sock.setblocking(False)
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self._loop.add_reader(sock.fileno(), self._on_readable)

    # -- setup -------------------------------------------------------------------------
    @property
    def fingerprint(self) -> tuple[str, str]:
        return ("sha-256", self.certificate.fingerprint("sha-256"))

    def set_remote(self, remote: TransportParameters) -> None:
        """Take ICE credentials, DTLS fingerprints and the candidate from Ferry's SDP."""
        addr = first_udp_candidate(remote.candidates)
        if addr is None:
            raise FerryError("bad_sdp", f"{self.name}: remote SDP has no UDP candidate")
        if self.candidate_rewrite is not None:
            addr = self.candidate_rewrite(addr)
        if self.dtls is not None:
            if remote.ice_ufrag != self.remote_ufrag:
                self.log_once("ice_restart_ignored", "(Ferry changed its ufrag; not supported)")
            return
        self.remote_ufrag = remote.ice_ufrag
        self.remote_pwd = remote.ice_pwd.encode("utf8")
        self.remote_addr = addr
        self.sock.connect(addr)  # loopback peer: send() is cheaper than sendto()
        self.dtls = DtlsSession(
            self.certificate, role="client", remote_fingerprints=list(remote.fingerprints)
        )

    def start(self, connect_timeout_s: float) -> None:
        """Begin connectivity checks (idempotent); fail after ``connect_timeout_s``."""
        if self.state != "new" or self.dtls is None:
            return
        self.state = "checking"
        now = now_ms()
        self._connect_deadline_ms = now + connect_timeout_s * 1000.0
        self._send_check(now, nominate=True)
        self._schedule()

    async def wait_connected(self, timeout_s: float) -> None:
        """Wait for DTLS-SRTP; raises :class:`ConnectTimeout` (bounded, never hangs)."""
        try:
            await asyncio.wait_for(self.connected.wait(), timeout_s)
        except TimeoutError:
            raise ConnectTimeout(
                "connect_timeout", f"{self.name} still {self.state!r} after {timeout_s}s"
            ) from None
        if self.state != "connected":
            raise ConnectTimeout(
                "connect_timeout", f"{self.name} ended {self.state!r}: {self.failure}"
            )

    # -- receive path -------------------------------------------------------------------
    def _on_readable(self) -> None:
        recv = self.sock.recv
        for _ in range(DRAIN_LIMIT):
            try:
                data = recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ECONNREFUSED after Ferry went away
                self.log_once("recv_error", exc)
                return
            self.packets_in += 1
            self.bytes_in += len(data)
            if not data:
                continue
            first = data[0]
            if first > 127:
                if first < 192:
                    self._on_srtp(data)
            elif first < 4:
                self._on_stun(data)
            elif 19 < first < 64:
                self._on_dtls(data)

    def _on_srtp(self, data: bytes) -> None:
        srtp = self.srtp
        if srtp is None or len(data) < 12:
            return
        try:
            if 191 < data[1] < 224:
                self.handle_rtcp(srtp.unprotect_rtcp(data), self._loop.time() * 1000.0)
            else:
                self.handle_rtp(srtp.unprotect(data), self._loop.time() * 1000.0)
        except SrtpError as exc:
            self.log_once("srtp_unprotect", exc)
        except Exception as exc:  # a bug in a handler must not kill the reader
            self.log_once("handler_error", repr(exc))
            logger.debug("%s: handler error", self.name, exc_info=True)

    def _on_stun(self, data: bytes) -> None:
        try:
            msg = stun.parse_message(data)
        except Exception:
            self.log_once("stun_malformed")
            return
        if msg.transaction_id not in self._pending_tids:
            return  # Ferry never sends requests (ICE-lite); stray responses are ignored
        del self._pending_tids[msg.transaction_id]
        if msg.message_class == stun.Class.ERROR:
            self.log_once("stun_error", msg.attributes.get("ERROR-CODE"))
            return
        if msg.message_class != stun.Class.RESPONSE:
            return
        try:
            ok = msg.check_message_integrity(self.remote_pwd)
        except Exception:
            ok = False
        if not ok:
            self.log_once("stun_integrity")
            return
        now = now_ms()
        self._last_response_ms = now
        if self.state == "checking" and self.dtls is not None:
            self.state = "dtls"
            self.dtls.start(now)
            self._flush_dtls()

    def _on_dtls(self, data: bytes) -> None:
        dtls = self.dtls
        if dtls is None:
            return
        dtls.feed(data, now_ms())
        self._flush_dtls()
        self._check_dtls()

    def _check_dtls(self) -> None:
        dtls = self.dtls
        if dtls is None:
            return
        if dtls.state == "connected" and self.srtp is None:
            profile, local_key, remote_key = dtls.srtp_keys()
            self.srtp = SrtpContext(profile, local_key, remote_key)
            self.state = "connected"
            logger.debug("%s connected (%s)", self.name, profile)
            self.on_connected(now_ms())
            self.connected.set()
        elif dtls.state == "failed" and self.state not in ("failed", "closed"):
            self._fail(f"DTLS failed: {dtls.failure_reason}")

    # -- send path ----------------------------------------------------------------------
    def _send_raw(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            self.log_once("send_buffer_full")
            return
        except OSError as exc:
            self.log_once("send_error", exc)
            return
        self.packets_out += 1
        self.bytes_out += len(data)

    def send_rtp(self, packet: bytes) -> None:
        """Protect and send one RTP packet (dropped silently before DTLS is up)."""
        if self.srtp is not None:
            self._send_protected(self.srtp.protect, packet, "srtp_protect")

    def send_rtcp(self, packet: bytes) -> None:
        """Protect and send one (compound) RTCP packet, like :meth:`send_rtp`."""
        if self.srtp is not None:
            self._send_protected(self.srtp.protect_rtcp, packet, "srtcp_protect")

    def _send_protected(
        self, protect: Callable[[bytes], bytes], packet: bytes, failure: str
    ) -> None:
        try:
            data = protect(packet)
        except SrtpError as exc:
            self.log_once(failure, exc)
            return
        self._send_raw(data)

    def rtcp_packets(self, packet: bytes) -> list[Any]:
        """The packets of a decrypted compound RTCP packet; none if it is malformed."""
        try:
            return parse_rtcp(packet)
        except ValueError:
            self.log_once("rtcp_malformed")
            return []

    def _send_check(self, now_ms: float, *, nominate: bool) -> None:
        msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        msg.attributes["USERNAME"] = f"{self.remote_ufrag}:{self.ufrag}"
        msg.attributes["PRIORITY"] = _PRIORITY
        msg.attributes["ICE-CONTROLLING"] = self._tie_breaker
        if nominate:
            msg.attributes["USE-CANDIDATE"] = None
        msg.add_message_integrity(self.remote_pwd)  # adds FINGERPRINT too
        if len(self._pending_tids) > 64:  # bounded: forget the oldest unanswered checks
            for tid in list(self._pending_tids)[:32]:
                del self._pending_tids[tid]
        self._pending_tids[msg.transaction_id] = now_ms
        self._send_raw(bytes(msg))

    def _flush_dtls(self) -> None:
        if self.dtls is not None:
            for datagram in self.dtls.datagrams_to_send():
                self._send_raw(datagram)

    # -- timers -------------------------------------------------------------------------
    def _schedule(self) -> None:
        if self.state not in ("closed", "failed"):
            self._timer = self._loop.call_later(TICK_S, self._tick)

    def _tick(self) -> None:
        now = now_ms()
        try:
            self._tick_transport(now)
            if self.srtp is not None and self.state == "connected":
                self.on_tick(now)
        except Exception as exc:
            self.log_once("timer_error", repr(exc))
            logger.debug("%s: timer error", self.name, exc_info=True)
        self._schedule()

    def _tick_transport(self, now: float) -> None:
        if self.state in ("checking", "dtls") and now > self._connect_deadline_ms:
            self._fail("connect timeout")
            return
        if self.state == "checking":
            if now >= self._next_check_ms:
                self._next_check_ms = now + ICE_RETRY_MS
                self._send_check(now, nominate=True)
        elif self._last_response_ms is not None:
            if now - self._last_response_ms > CONSENT_TIMEOUT_MS:
                self._fail("ICE consent expired")
                return
            if now >= self._next_check_ms:
                self._next_check_ms = now + CONSENT_INTERVAL_MS * random.uniform(0.8, 1.2)
                self._send_check(now, nominate=True)
        dtls = self.dtls
        if dtls is not None and self.state == "dtls":
            deadline = dtls.next_deadline()
            if deadline is not None and deadline <= now:
                dtls.on_timer(now)
                self._flush_dtls()
                self._check_dtls()

    def _fail(self, reason: str) -> None:
        if self.state in ("failed", "closed"):
            return
        self.state = "failed"
        self.failure = reason
        logger.warning("%s failed: %s", self.name, reason)
        self.connected.set()  # wake waiters; they check the state

    # -- hooks --------------------------------------------------------------------------
    def on_connected(self, now_ms: float) -> None:
        """SRTP keys are ready."""

    def on_tick(self, now_ms: float) -> None:
        """Every TICK_S once connected: RTCP feedback and reports."""

    def handle_rtp(self, packet: bytes, now_ms: float) -> None:
        """One decrypted RTP packet (hot path)."""

    def handle_rtcp(self, packet: bytes, now_ms: float) -> None:
        """One decrypted (compound) RTCP packet."""

    # -- teardown -----------------------------------------------------------------------
    def close(self) -> None:
        """Send DTLS close_notify, stop timers and release the socket (idempotent)."""
        if self.state == "closed":
            return
        if self.dtls is not None and self.dtls.state == "connected":
            with contextlib.suppress(Exception):
                self.dtls.close()
                self._flush_dtls()
        self.state = "closed"
        self.connected.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with contextlib.suppress(Exception):
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
