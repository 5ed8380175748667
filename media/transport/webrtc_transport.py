"""One WebRTC transport (one RTCPeerConnection of a client): ICE-lite + DTLS + SRTP.

A thin shell over the sans-I/O cores (`IceLiteAgent`, `DtlsSession`, `SrtpContext`):
it moves bytes between them and the shared `UdpMux`, and tells its listener about
decrypted RTP/RTCP and state changes. Timers are driven by the engine's ticker
through `on_timer(now_ms)`.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Protocol

from .certificate import Certificate
from .dtls import DtlsSession
from .ice_lite import IceLiteAgent, generate_credentials
from .srtp import SrtpContext, SrtpError, SrtpReplayError
from .udp_mux import Addr, UdpMux, _fastpath

log = logging.getLogger("ferry.media.transport")

# While the link toward the peer is out (``set_link_out``), binding responses on the
# selected path are not sent, for at most this long: sent, each waits in the
# bottleneck until the link returns and the peer reads the outage as its round-trip
# time (live, 3G profile: 1.5-2.2 s against 0.2 s). The peer's checks go unanswered
# as they would on a dead link; its consent lasts 30 s (RFC 7675).
LINK_OUT_HOLD_MS = 4000.0
_BINDING_SUCCESS = b"\x01\x01"


class TransportListener(Protocol):
    def on_transport_connected(self, now_ms: float) -> None: ...

    def on_transport_failed(self, reason: str) -> None: ...

    def on_rtp(self, data: bytes, now_ms: float) -> None: ...

    def on_rtcp(self, data: bytes, now_ms: float) -> None: ...


class WebRtcTransport:
    """ICE-lite/DTLS server side of one peer connection."""

    def __init__(
        self,
        mux: UdpMux,
        certificate: Certificate,
        *,
        consent_timeout_ms: float = 30000.0,
        name: str = "",
    ) -> None:
        self.mux = mux
        self.certificate = certificate
        self.name = name
        ufrag, pwd = generate_credentials()
        self.ice = IceLiteAgent(
            ufrag,
            pwd,
            consent_timeout_ms=consent_timeout_ms,
            disconnected_after_ms=min(7500.0, consent_timeout_ms),
        )
        # Created now so a ClientHello that beats the SDP answer is not lost; the
        # handshake completes but keys are held until the fingerprints are known.
        self.dtls = DtlsSession(certificate, role="server", remote_fingerprints=[])
        self._srtp: SrtpContext | None = None
        self.listener: TransportListener | None = None
        self._remote_addr: Addr | None = None
        # Where lanes send this transport's packets from C (media.lanes; native
        # send path only): set while an SRTP session and an address are known.
        self.send_target = _fastpath.SendTarget() if mux.send_path == "native" else None
        self.state = "new"  # new | connecting | connected | failed | closed
        self.drops: Counter[str] = Counter()
        self._link_out_since: float | None = None
        self._armed = False  # remote description known: start the connect timeout
        self._created_ms: float | None = None
        mux.register(ufrag, self)

    @property
    def srtp(self) -> SrtpContext | None:
        return self._srtp

    @srtp.setter
    def srtp(self, value: SrtpContext | None) -> None:
        self._srtp = value
        self._update_send_target()

    @property
    def remote_addr(self) -> Addr | None:
        return self._remote_addr

    @remote_addr.setter
    def remote_addr(self, value: Addr | None) -> None:
        self._remote_addr = value
        self._update_send_target()

    def _update_send_target(self) -> None:
        target = self.send_target
        if target is None:
            return
        srtp, addr, outbox = self._srtp, self._remote_addr, self.mux.outbox
        if srtp is not None and srtp.native_tx and addr is not None and outbox is not None and self.state != "closed":
            target.set(outbox, addr[0], addr[1], srtp.native_tx)
        else:
            target.clear()

    @property
    def ice_ufrag(self) -> str:
        return self.ice.local_ufrag

    @property
    def ice_pwd(self) -> str:
        return self.ice.local_pwd

    def set_remote(self, fingerprints: list[tuple[str, str]], ice_ufrag: str | None = None) -> None:
        """Called once the remote SDP is known: arms DTLS with the fingerprints to verify."""
        if ice_ufrag and self.ice.remote_ufrag is None:
            self.ice.remote_ufrag = ice_ufrag
        self._armed = True
        if not self.dtls.remote_fingerprints:
            self.dtls.set_remote_fingerprints(fingerprints)
            self._check_dtls_state(None)

    def restart_ice(self) -> tuple[str, str]:
        """ICE restart: new local credentials; the old ufrag stays routable until replaced."""
        ufrag, pwd = generate_credentials()
        self.ice.restart(ufrag, pwd)
        self.mux.register(ufrag, self)
        return ufrag, pwd

    def set_link_out(self, out: bool, now_ms: float) -> None:
        """The sender's estimator says the link toward the peer is out (True) or back:
        see ``LINK_OUT_HOLD_MS``."""
        self._link_out_since = now_ms if out else None

    # -- from the mux --------------------------------------------------------------
    def on_stun(self, data: bytes, addr: Addr, now_ms: float) -> None:
        if self.state == "closed":
            return
        before = self.ice.selected_addr
        response = self.ice.handle(data, addr, now_ms)
        if response is not None:
            out = self._link_out_since
            if (out is not None and now_ms - out < LINK_OUT_HOLD_MS and addr == before
                    and response[:2] == _BINDING_SUCCESS):
                self.drops["stun_response_link_out"] += 1
            else:
                self.mux.sendto(response, addr)
        # Only an authenticated binding request moves the selected address (RFC 8445
        # 7.3), so only then is the sender bound: a 400/401 answer binds nothing, or
        # whoever saw the ufrag pair could take the peer's DTLS before it connects.
        selected = self.ice.selected_addr
        if selected is not None and selected != before:
            self.remote_addr = selected
            self.mux.bind_addr(selected, self)
            if self.state == "new":
                self.state = "connecting"

    def on_dtls(self, data: bytes, addr: Addr, now_ms: float) -> None:
        was_connected = self.dtls.state == "connected"
        self.dtls.feed(data, now_ms)
        self._flush_dtls()
        if not was_connected:
            self._check_dtls_state(now_ms)

    def on_srtp(self, data: bytes, addr: Addr, now_ms: float) -> None:
        srtp = self._srtp
        listener = self.listener
        if srtp is None or listener is None:
            self.drops["srtp_before_dtls"] += 1
            return
        if len(data) < 12:
            self.drops["srtp_short"] += 1
            return
        pt = data[1]
        try:
            if 191 < pt < 224:
                plain = srtp.unprotect_rtcp(data)
                listener.on_rtcp(plain, now_ms)
            else:
                plain = srtp.unprotect(data)
                listener.on_rtp(plain, now_ms)
        except SrtpReplayError:
            self.drops["srtp_replay"] += 1
        except SrtpError:
            self.drops["srtp_auth"] += 1

    # -- to the peer ---------------------------------------------------------------
    def send_rtp(self, packet: bytes, seq_at: int = 0, seq: int = 0) -> None:
        """Protect and send; `seq_at` > 0 stamps the 16-bit `seq` at that byte of what
        is sent (the transport-wide seq, see `SrtpContext.protect`)."""
        srtp = self._srtp
        addr = self._remote_addr
        if srtp is None or addr is None:
            return
        if srtp.native_tx and self.mux.holding:
            # Native path: protected in C into the held outbox (see UdpMux).
            self.mux.queue(packet, addr[0], addr[1], srtp.native_tx, seq_at, seq & 0xFFFF)
            return
        try:
            data = srtp.protect(packet, seq_at, seq)
        except SrtpError:
            self.drops["srtp_protect"] += 1
            return
        self.mux.sendto(data, addr)

    def send_rtcp(self, packet: bytes) -> None:
        srtp = self.srtp
        addr = self.remote_addr
        if srtp is None or addr is None:
            return
        try:
            data = srtp.protect_rtcp(packet)
        except SrtpError:
            self.drops["srtcp_protect"] += 1
            return
        self.mux.sendto(data, addr)

    # -- timers --------------------------------------------------------------------
    def on_timer(self, now_ms: float) -> None:
        if self.state in ("closed", "failed"):
            return
        if not self._armed:
            return
        if self._created_ms is None:
            self._created_ms = now_ms
        elif self.state in ("new", "connecting") and now_ms - self._created_ms > self.ice.consent_timeout_ms:
            self._fail("never connected")
            return
        dtls = self.dtls
        if dtls.state in ("connecting", "new"):
            deadline = dtls.next_deadline()
            if deadline is not None and deadline <= now_ms:
                dtls.on_timer(now_ms)
                self._flush_dtls()
                self._check_dtls_state(now_ms)
        if self.state == "failed":
            return
        if self.ice.state(now_ms) == "failed" and self.state != "failed":
            self._fail("ICE consent expired (peer gone)")

    def close(self) -> None:
        if self.state == "closed":
            return
        if self.dtls.state == "connected":
            try:
                self.dtls.close()
                self._flush_dtls()
            except Exception:  # best effort
                pass
        self.state = "closed"
        self._update_send_target()
        self.mux.unregister(self)
        self.listener = None

    # -- internals -----------------------------------------------------------------
    def _flush_dtls(self) -> None:
        addr = self.remote_addr
        out = self.dtls.datagrams_to_send()
        if addr is None:
            return
        for datagram in out:
            self.mux.sendto(datagram, addr)

    def _check_dtls_state(self, now_ms: float | None) -> None:
        dtls = self.dtls
        if dtls.state == "connected" and self.srtp is None:
            profile, local_key, remote_key = dtls.srtp_keys()
            self.srtp = SrtpContext(profile, local_key, remote_key)
            self.state = "connected"
            log.info("transport %s connected (%s) from %s", self.name, profile, self.remote_addr)
            if self.listener is not None:
                self.listener.on_transport_connected(now_ms if now_ms is not None else self.mux.now_ms())
        elif dtls.state == "failed" and self.state != "failed":
            self._fail(f"DTLS failed: {dtls.failure_reason}")

    def _fail(self, reason: str) -> None:
        self.state = "failed"
        log.info("transport %s failed: %s", self.name, reason)
        listener = self.listener
        if listener is not None:
            listener.on_transport_failed(reason)
