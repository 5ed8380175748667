"""The one UDP socket every peer shares (ICE-lite on a single port).

Demultiplexing follows RFC 7983 on the first byte: STUN (0-3) is routed by the
USERNAME's local ufrag (which also binds the remote address once the check is
valid), DTLS (20-63) and SRTP/SRTCP (128-191) by remote address. Everything else is a
counted drop.

The socket is read with ``loop.add_reader`` and drained until EAGAIN: asyncio's
datagram transport reads one datagram per loop iteration, which drops keyframe bursts
(DESIGN section 3). Each datagram is handled synchronously in the callback, with no
per-packet await.

Sending has two paths, chosen once at start (``SEND_PATH``, logged and in /metrics):
``native`` (the optional C extension ``_fastpath``, built by pip on install) builds
and protects datagrams in the socket's ``Outbox`` and holds them while one drain of
the socket (every fan-out of what was read) or one engine tick runs, then sends them
grouped by peer: ``sendmmsg``, and UDP GSO for a run of one peer's datagrams, so a
keyframe fanned out to 80 peers is 80 messages to the kernel, not 80 per packet.
``python`` sends each datagram with ``sendto`` as it is produced.
``FERRY_NATIVE_SEND=0`` forces ``python`` (and the Python RTX cache: see
``media.rtp.rtx.new_rtx_cache``); ``FERRY_GSO=0`` keeps the native path off GSO.
Both send the same bytes, in the same order to each peer.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from collections import Counter
from typing import Any, Protocol

from .ice_lite import stun_local_ufrag
from .srtp import PROTECT_ADDRESS

try:
    from . import _fastpath  # type: ignore[attr-defined]
except ImportError:  # not built (no compiler at install, not Linux): the Python path
    _fastpath = None

log = logging.getLogger("ferry.media.mux")


def native_available() -> bool:
    """True when the C send path is built and can reach pylibsrtp's libsrtp."""
    return _fastpath is not None and PROTECT_ADDRESS != 0


def _choose_send_path() -> str:
    if os.environ.get("FERRY_NATIVE_SEND", "1").strip() in ("0", "false", "no", "off"):
        return "python"
    return "native" if native_available() else "python"


UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)


def _kernel_has_gso(sock: socket.socket) -> bool:
    """Linux >= 4.18 knows the UDP_SEGMENT option; an older kernel would ignore the
    control message and send a run as one big datagram, so it must not get one."""
    try:
        sock.getsockopt(socket.SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def _gso_wanted() -> bool:
    return os.environ.get("FERRY_GSO", "1").strip() not in ("0", "false", "no", "off")


#: The send path this process uses: "native" (sendmmsg + protect in C) or "python".
SEND_PATH = _choose_send_path()
if SEND_PATH == "native":
    _fastpath.set_protect(PROTECT_ADDRESS)  # for the lanes (media.lanes)

Addr = tuple[str, int]

MAX_DATAGRAM = 2048
DRAIN_LIMIT = 512  # datagrams per wakeup before yielding to the loop
#: Outside a drain or a tick (the outbox not held), a fan-out's datagrams leave every
#: EARLY_FLUSH: the first subscribers get their copy while the rest are built.
EARLY_FLUSH = 16
#: A held outbox sends once this many datagrams wait: what one drain reads is grouped
#: per peer (GSO), and the first peers of a fan-out wait at most this many builds.
#: A room bigger than HOLD_CAP / PACKETS_PER_RUN raises it (`fit_fan_out`), so each
#: peer's run still holds a few packets (at 500 viewers, measured: 3 % of datagrams in
#: GSO runs with a cap of 512, 69 % with 2048; 7.4 and 6.9 µs per forwarded packet).
HOLD_CAP = 512
PACKETS_PER_RUN = 4
MAX_HOLD_CAP = 4096


class MuxEndpoint(Protocol):
    """What the mux routes datagrams to (a WebRtcTransport)."""

    def on_stun(self, data: bytes, addr: Addr, now_ms: float) -> None: ...

    def on_dtls(self, data: bytes, addr: Addr, now_ms: float) -> None: ...

    def on_srtp(self, data: bytes, addr: Addr, now_ms: float) -> None: ...


class UdpMux:
    """Owns the shared media socket; transports register by ufrag and bind by address."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 7882,
        *,
        rcvbuf: int = 4 << 20,
        send_path: str | None = None,
    ) -> None:
        self.host = host
        self.send_path = send_path or SEND_PATH
        if self.send_path == "native" and not native_available():
            raise ValueError("the native send path is not built (media/transport/_fastpath.c)")
        # Native path: where datagrams are built, protected and held (made at open()).
        self.outbox: Any = None
        self.gso = self.send_path == "native" and _gso_wanted()
        self.batches = 0
        self.port = port
        self._rcvbuf = rcvbuf
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._by_ufrag: dict[str, MuxEndpoint] = {}
        self._by_addr: dict[Addr, MuxEndpoint] = {}
        self.drops: Counter[str] = Counter()
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0
        self._warned: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------
    def open(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._rcvbuf)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._rcvbuf)
        except OSError:  # pragma: no cover - platform limits
            pass
        sock.bind((self.host, self.port))
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._sock = sock
        if self.send_path == "native":
            if self.gso and not _kernel_has_gso(sock):
                self.gso = False
                log.info("this kernel has no UDP GSO: datagrams leave one by one")
            self.outbox = _fastpath.Outbox(sock.fileno(), self.account)
            self.outbox.gso = self.gso
            self.outbox.cap = HOLD_CAP
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._on_readable)
        log.info(
            "media socket listening on udp %s:%d (send path: %s)", self.host, self.port, self.send_path_label
        )

    def close(self) -> None:
        if self._sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        if self.outbox is not None:
            self.outbox.held = False
            self.outbox.fd = -1  # what is still built fails as a counted send error
        self._sock.close()
        self._sock = None

    @property
    def send_path_label(self) -> str:
        """The send path as the start-up line and /metrics name it."""
        if self.send_path != "native":
            return self.send_path
        return "native, UDP GSO" if self.gso_active else "native"

    @property
    def gso_active(self) -> bool:
        """GSO is on and the kernel has not refused it."""
        return self.outbox is not None and bool(self.outbox.gso)

    def fileno(self) -> int:
        """The media socket's descriptor; -1 when closed."""
        return self._sock.fileno() if self._sock is not None else -1

    def now_ms(self) -> float:
        loop = self._loop or asyncio.get_event_loop()
        return loop.time() * 1000.0

    # -- registration ----------------------------------------------------------------
    def register(self, ufrag: str, endpoint: MuxEndpoint) -> None:
        self._by_ufrag[ufrag] = endpoint

    def unregister(self, endpoint: MuxEndpoint) -> None:
        for key in [k for k, v in self._by_ufrag.items() if v is endpoint]:
            del self._by_ufrag[key]
        for key in [k for k, v in self._by_addr.items() if v is endpoint]:
            del self._by_addr[key]

    def bind_addr(self, addr: Addr, endpoint: MuxEndpoint) -> None:
        self._by_addr[addr] = endpoint

    # -- I/O -------------------------------------------------------------------------
    @property
    def holding(self) -> bool:
        """Sends are held in the outbox until `flush` (native path, a batch open)."""
        outbox = self.outbox
        return outbox is not None and outbox.held

    def sendto(self, data: bytes, addr: Addr) -> None:
        outbox = self.outbox
        if outbox is not None and outbox.held:
            outbox.add(data, addr[0], addr[1], 0, 0, 0)
            return
        sock = self._sock
        if sock is None:
            return
        try:
            sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self._drop("send_buffer_full")
            return
        except OSError as exc:
            self._drop("send_error", exc)
            return
        self.packets_out += 1
        self.bytes_out += len(data)

    def queue(self, data: bytes, host: str, port: int, srtp: int, seq_at: int, seq: int) -> None:
        """Add one RTP packet to the held outbox, protected there with the libsrtp
        session at address `srtp`, the 16-bit `seq` stamped at `seq_at` (> 0)."""
        self.outbox.add(data, host, port, srtp, seq_at, seq)

    def open_batch(self) -> bool:
        """Hold sends until `flush` (native path; no-op on the Python path or when a
        batch is already open). Returns True when this call opened it."""
        outbox = self.outbox
        if outbox is None or outbox.held or self._sock is None:
            return False
        outbox.held = True
        return True

    def fit_fan_out(self, peers: int) -> None:
        """Size the held outbox for a fan-out to `peers` (the biggest room's)."""
        outbox = self.outbox
        if outbox is not None:
            outbox.cap = min(MAX_HOLD_CAP, max(HOLD_CAP, PACKETS_PER_RUN * peers))

    def flush(self) -> None:
        """Send what the outbox holds and end the batch."""
        outbox = self.outbox
        if outbox is None:
            return
        outbox.held = False
        if self._sock is None:
            return
        outbox.flush()
        if not outbox.gso and self.gso and outbox.gso_refused:
            self.gso = False
            log.warning(
                "the kernel refused UDP GSO (%s): sending datagrams one by one",
                errno.errorcode.get(outbox.gso_refused, outbox.gso_refused),
            )

    def account(self, sent: int, nbytes: int, protect_errors: int, send_errors: int, would_block: int) -> None:
        """Count what the outbox sent (told by the outbox when it sends)."""
        self.batches += 1
        self.packets_out += sent
        self.bytes_out += nbytes  # before SRTP's tag, as close as the Python path's count
        if protect_errors:
            self.drops["srtp_protect"] += protect_errors
        if send_errors:
            self._drop("send_error")
            self.drops["send_error"] += send_errors - 1
        if would_block:
            self._drop("send_buffer_full")
            self.drops["send_buffer_full"] += would_block - 1

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        if self.open_batch():
            # What the drain's fan-outs build leaves at its end (or at HOLD_CAP), one
            # message per peer and run.
            try:
                self._drain(sock)
            finally:
                self.flush()
        else:
            self._drain(sock)

    def _drain(self, sock: socket.socket) -> None:
        recvfrom = sock.recvfrom
        clock = time.monotonic  # the loop's clock base; read per datagram (TWCC needs it)
        for _ in range(DRAIN_LIMIT):
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH):
                    continue  # ICMP from a gone peer; nothing to do
                self._drop("recv_error", exc)
                return
            self.packets_in += 1
            self.bytes_in += len(data)
            try:
                self.dispatch(data, addr[:2], clock() * 1000.0)
            except Exception:  # a bug must not kill the socket for everyone
                self.drops["handler_error"] += 1
                log.exception("error handling a datagram from %s", addr)

    def dispatch(self, data: bytes, addr: Addr, now_ms: float) -> None:
        if not data:
            self._drop("empty")
            return
        first = data[0]
        if first < 4:
            endpoint = None
            ufrag = stun_local_ufrag(data)
            if ufrag is not None:
                endpoint = self._by_ufrag.get(ufrag)
            if endpoint is None:
                endpoint = self._by_addr.get(addr)
            if endpoint is None:
                self._drop("stun_unknown_ufrag")
                return
            endpoint.on_stun(data, addr, now_ms)
            return
        endpoint = self._by_addr.get(addr)
        if endpoint is None:
            self._drop("unknown_address")
            return
        if 127 < first < 192:
            endpoint.on_srtp(data, addr, now_ms)
        elif 19 < first < 64:
            endpoint.on_dtls(data, addr, now_ms)
        else:
            self._drop("unknown_protocol")

    def _drop(self, reason: str, exc: BaseException | None = None) -> None:
        self.drops[reason] += 1
        if reason not in self._warned:
            self._warned.add(reason)
            log.warning("dropping datagram: %s%s (logged once)", reason, f" ({exc})" if exc else "")
