"""A *lite* WebRTC endpoint on Ferry's own sans-I/O cores, for load and scenario tests.

Why it exists: aiortc costs ~50-100 µs per packet per peer in Python, so it cannot play
50 subscribers in a benchmark or 20 students in a netem classroom, and it cannot send
simulcast at all. ``LiteClient`` speaks the same signaling as :class:`FerryClient`
(``hello``, ``join``, ``publish``, ``subscriber_offer``/``subscriber_answer``) but its
media stack is Ferry's own: ICE (a controlling full agent toward Ferry's ICE-lite),
:class:`DtlsSession` as DTLS client, :class:`SrtpContext`, and the RTP/RTCP wire helpers.

What it does not do: decode, jitter-buffer or congestion-control. A publisher paces
pre-encoded frames (:func:`encode_vp8_clip`, :func:`encode_opus_clip`) in real time,
with simulcast (rid q/h/f, no ``a=ssrc`` lines, like Chrome), RTX answering NACKs and
keyframes on PLI; a subscriber counts what arrives per SSRC (packets, bytes, loss,
VP8 keyframes) and sends NACK, receiver reports and transport-wide CC feedback.

Typical use::

    client = LiteClient()
    await client.connect(server.ws_url)
    await client.join(server.token("room", "alice"))
    video = [encode_vp8_clip(w, h, 60, br) for w, h, br in LAYERS]
    await client.publish_vp8(video, audio=encode_opus_clip(2.0))
    ...
    print(client.stats())
    await client.close()

Every wait is bounded; every error on the media path is counted and logged once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fractions
import functools
import logging
import random
import secrets
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aioice import stun
from aiortc.rtp import (
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
)

from media.ortc import (
    EXT_ABS_SEND_TIME,
    EXT_AUDIO_LEVEL,
    EXT_MID,
    EXT_REPAIRED_RID,
    EXT_RID,
    EXT_TWCC,
    MediaDescription,
    RtpCodec,
    SessionDescription,
    TransportParameters,
)
from media.rtp.nack import NackGenerator
from media.rtp.ntp import ntp_from_unix, ntp_middle32
from media.rtp.rtx import RtxCache
from media.rtp.twcc import TwccFeedback, TwccRecorder
from media.transport.certificate import Certificate
from media.transport.dtls import DtlsSession
from media.transport.ice_lite import generate_credentials
from media.transport.srtp import SrtpContext, SrtpError
from media.wire.rtcp import (
    Fir,
    build_nack,
    build_pli,
    build_rr,
    build_sdes_cname,
    build_sr,
    nack_seqs,
    parse_rtcp,
)
from media.wire.rtp import build_audio_level, build_rtp, build_twcc_seq, parse_rtp
from media.wire.vp8 import parse_vp8
from signaling import sdp
from signaling.channel import FerryError, RequestTimeout, SignalingChannel  # noqa: F401
from signaling.client import ConnectTimeout

__all__ = [
    "LiteClient",
    "LitePublisher",
    "LiteSubscriber",
    "LiteTransport",
    "RecvCounters",
    "build_publisher_offer",
    "build_subscriber_answer",
    "encode_opus_clip",
    "encode_vp8_clip",
    "is_vp8_keyframe",
]

logger = logging.getLogger("ferry.lite_client")

PROTOCOL_VERSION = 1

# Payload types and extension ids of our publisher offer: Chrome's numbers, so the
# fixture-tested parts of Ferry see what a browser would send.
PT_OPUS = 111
PT_VP8 = 96
PT_RTX = 97
EXT_ID_AUDIO_LEVEL = 1
EXT_ID_ABS_SEND_TIME = 2
EXT_ID_TWCC = 3
EXT_ID_MID = 4
EXT_ID_RID = 10
EXT_ID_RRID = 11

TICK_S = 0.02  # transport timer: ICE retries, DTLS timers, RTCP feedback
ICE_RETRY_MS = 50.0
CONSENT_INTERVAL_MS = 5000.0
CONSENT_TIMEOUT_MS = 30000.0
RR_INTERVAL_MS = 1000.0
SR_INTERVAL_MS = 1000.0
MAX_PAYLOAD = 1200  # bytes of RTP payload (VP8 descriptor included)
VP8_DESCRIPTOR = 4  # X, I byte and a 15-bit picture id
RECV_BUFFER = 1 << 20
DRAIN_LIMIT = 256  # datagrams read per wakeup before yielding to the loop
MAX_TRACKED_GAP = 2000  # larger seq jumps are counted lost outright, not remembered
EVENT_LOG_LIMIT = 5000

_SSRC = struct.Struct("!I")
_AUDIO_LEVEL = build_audio_level(True, 30)
# Priority of a peer-reflexive candidate (RFC 8445 §5.1.2: type pref 110, local 65535).
_PRIORITY = (110 << 24) | (65535 << 8) | 255

Addr = tuple[str, int]


def _now_ms() -> float:
    return asyncio.get_running_loop().time() * 1000.0


_default_certificate: Certificate | None = None


def _shared_certificate() -> Certificate:
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


# --------------------------------------------------------------------------- media clips


def is_vp8_keyframe(frame: bytes) -> bool:
    """RFC 6386 §9.1: the frame tag's lowest bit is 0 on a key frame."""
    return bool(frame) and not frame[0] & 0x01


@functools.lru_cache(maxsize=16)
def _encode_vp8(
    width: int, height: int, frames: int, bitrate: int, keyframe_interval: int, fps: int
) -> tuple[bytes, ...]:
    import av
    import numpy as np

    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width, height
    codec.pix_fmt = "yuv420p"
    codec.bit_rate = bitrate
    codec.framerate = fractions.Fraction(fps, 1)
    codec.time_base = fractions.Fraction(1, fps)
    codec.gop_size = keyframe_interval
    codec.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",  # one packet per input frame, no look-ahead
        "kf-max-dist": str(keyframe_interval),
        "kf-min-dist": str(keyframe_interval),
    }
    out: list[bytes] = []
    plane = np.zeros((height * 3 // 2, width), np.uint8)
    xx = np.arange(width, dtype=np.int32)[None, :]
    yy = np.arange(height, dtype=np.int32)[:, None]
    box_w, box_h = max(8, width // 6), max(8, height // 6)
    for i in range(frames):
        # A moving diagonal gradient plus a bouncing box: enough motion that inter
        # frames carry real data at the target bitrate.
        plane[:height] = (xx + 2 * yy + 4 * i) % 256
        bx = (i * 7) % max(1, width - box_w)
        by = (i * 3) % max(1, height - box_h)
        plane[by : by + box_h, bx : bx + box_w] = 255 - (i * 5) % 128
        plane[height:] = 128
        plane[height : height + height // 4, : width // 2] = (i * 3) % 256
        frame = av.VideoFrame.from_ndarray(plane, format="yuv420p")
        frame.pts = i
        out.extend(bytes(p) for p in codec.encode(frame))
    out.extend(bytes(p) for p in codec.encode(None))
    if not out or not is_vp8_keyframe(out[0]):
        raise RuntimeError("libvpx produced no leading keyframe")
    return tuple(out)


def encode_vp8_clip(
    width: int,
    height: int,
    frames: int,
    bitrate: int,
    *,
    keyframe_interval: int = 30,
    fps: int = 30,
) -> list[bytes]:
    """Encode a synthetic moving pattern with libvpx (PyAV); one VP8 frame per entry.

    Cached per argument set, so a benchmark that builds 50 publishers (or runs several
    rounds) encodes once. Frame 0 is a keyframe and one follows every
    ``keyframe_interval`` frames, so the clip loops cleanly and a PLI is answered by
    jumping to the next keyframe.
    """
    return list(_encode_vp8(width, height, frames, bitrate, keyframe_interval, fps))


@functools.lru_cache(maxsize=8)
def _encode_opus(seconds: float, frequency: float, bitrate: int) -> tuple[bytes, ...]:
    import av
    import numpy as np

    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = 48000
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = bitrate
    codec.time_base = fractions.Fraction(1, 48000)
    samples = 960  # 20 ms at 48 kHz, libopus' default frame duration
    total = int(seconds * 50)
    out: list[bytes] = []
    for i in range(total):
        t = (np.arange(samples) + i * samples) / 48000.0
        tone = (np.sin(2 * np.pi * frequency * t) * 8000).astype(np.int16)
        stereo = np.repeat(tone, 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = i * samples
        out.extend(bytes(p) for p in codec.encode(frame))
    out.extend(bytes(p) for p in codec.encode(None))
    return tuple(p for p in out if p)


def encode_opus_clip(
    seconds: float, *, frequency: float = 440.0, bitrate: int = 32000
) -> list[bytes]:
    """Encode a sine tone with libopus (PyAV) into 20 ms packets; cached like the video."""
    return list(_encode_opus(float(seconds), float(frequency), int(bitrate)))


# --------------------------------------------------------------------------- transport


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

    def __init__(self, name: str, certificate: Certificate, *, host: str = "127.0.0.1") -> None:
        self.name = name
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
        addr = _first_udp_candidate(remote.candidates)
        if addr is None:
            raise FerryError("bad_sdp", f"{self.name}: remote SDP has no UDP candidate")
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
        now = _now_ms()
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
        now = _now_ms()
        self._last_response_ms = now
        if self.state == "checking" and self.dtls is not None:
            self.state = "dtls"
            self.dtls.start(now)
            self._flush_dtls()

    def _on_dtls(self, data: bytes) -> None:
        dtls = self.dtls
        if dtls is None:
            return
        dtls.feed(data, _now_ms())
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
            self.on_connected(_now_ms())
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
        srtp = self.srtp
        if srtp is None:
            return
        try:
            data = srtp.protect(packet)
        except SrtpError as exc:
            self.log_once("srtp_protect", exc)
            return
        self._send_raw(data)

    def send_rtcp(self, packet: bytes) -> None:
        srtp = self.srtp
        if srtp is None:
            return
        try:
            data = srtp.protect_rtcp(packet)
        except SrtpError as exc:
            self.log_once("srtcp_protect", exc)
            return
        self._send_raw(data)

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
        now = _now_ms()
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


def _first_udp_candidate(candidates: Sequence[str]) -> Addr | None:
    for cand in candidates:
        value = cand.strip()
        for prefix in ("a=", "candidate:"):
            if value.startswith(prefix):
                value = value[len(prefix) :]
        parts = value.split()
        if len(parts) >= 6 and parts[2].lower() == "udp" and parts[5].isdigit():
            return parts[4], int(parts[5])
    return None


# --------------------------------------------------------------------------- publisher


class _VideoLayer:
    """One simulcast encoding (or the only one): its SSRCs, clip position and RTX cache."""

    def __init__(self, rid: str | None, frames: Sequence[bytes]) -> None:
        if not frames:
            raise ValueError("a video layer needs at least one frame")
        self.rid = rid
        self.rid_bytes = rid.encode("ascii") if rid else b""
        self.frames = list(frames)
        self.keyframe_indices = [i for i, f in enumerate(self.frames) if is_vp8_keyframe(f)]
        if not self.keyframe_indices:
            raise ValueError(f"layer {rid!r}: the clip has no VP8 keyframe")
        self.ssrc = random.getrandbits(32) or 1
        self.rtx_ssrc = random.getrandbits(32) or 2
        self.seq = random.getrandbits(16)
        self.rtx_seq = random.getrandbits(16)
        self.ts_base = random.getrandbits(32)
        self.picture_id = random.getrandbits(15)
        self.index = self.keyframe_indices[0]
        self.active = True
        self.cache = RtxCache(1024)
        self.last_ts = self.ts_base
        self.last_ts_ms = 0.0
        self.frames_sent = 0
        self.packets_sent = 0
        self.bytes_sent = 0
        self.keyframes_sent = 0
        self.plis = 0
        self.nacked = 0
        self.rtx_sent = 0

    def jump_to_keyframe(self) -> None:
        """Answer a PLI: the next frame sent is the next keyframe of the clip."""
        current = self.index
        nxt = next((k for k in self.keyframe_indices if k >= current), self.keyframe_indices[0])
        self.index = nxt

    def next_frame(self) -> tuple[bytes, bool]:
        frame = self.frames[self.index]
        self.index = (self.index + 1) % len(self.frames)
        return frame, is_vp8_keyframe(frame)

    def summary(self) -> dict[str, Any]:
        return {
            "rid": self.rid,
            "ssrc": self.ssrc,
            "rtx_ssrc": self.rtx_ssrc,
            "active": self.active,
            "frames_sent": self.frames_sent,
            "packets_sent": self.packets_sent,
            "bytes_sent": self.bytes_sent,
            "keyframes_sent": self.keyframes_sent,
            "plis": self.plis,
            "nacked": self.nacked,
            "rtx_sent": self.rtx_sent,
        }


class _AudioStream:
    def __init__(self, packets: Sequence[bytes]) -> None:
        if not packets:
            raise ValueError("audio needs at least one Opus packet")
        self.packets = list(packets)
        self.ssrc = random.getrandbits(32) or 3
        self.seq = random.getrandbits(16)
        self.ts_base = random.getrandbits(32)
        self.index = 0
        self.last_ts = self.ts_base
        self.last_ts_ms = 0.0
        self.packets_sent = 0
        self.bytes_sent = 0


def build_publisher_offer(
    *,
    ufrag: str,
    pwd: str,
    fingerprint: tuple[str, str],
    port: int,
    audio_ssrc: int | None,
    video_ssrcs: Sequence[tuple[int, int]] | None,
    rids: Sequence[str] | None,
    stream_id: str,
    audio_track_id: str,
    video_track_id: str,
    cname: str,
    host: str = "127.0.0.1",
    session_id: int | None = None,
) -> str:
    """Chrome-shaped publisher offer: sendonly opus and VP8(+rtx), BUNDLE, rtcp-mux.

    With ``rids`` the video m-line carries ``a=rid:<rid> send`` and
    ``a=simulcast:send q;h;f`` and no SSRC lines (Ferry learns SSRCs from MID/RID, as
    with Chrome, DESIGN §8); otherwise ``video_ssrcs[0]`` is announced with an FID group.
    """
    mids: list[str] = []
    sections: list[list[str]] = []
    common = [
        f"c=IN IP4 {host}",
        f"a=candidate:1 1 udp 2122260223 {host} {port} typ host",
        f"a=ice-ufrag:{ufrag}",
        f"a=ice-pwd:{pwd}",
        f"a=fingerprint:{fingerprint[0]} {fingerprint[1]}",
        "a=setup:actpass",
    ]
    if audio_ssrc is not None:
        mid = str(len(mids))
        mids.append(mid)
        sections.append(
            [
                f"m=audio {port} UDP/TLS/RTP/SAVPF {PT_OPUS}",
                *common,
                f"a=mid:{mid}",
                f"a=extmap:{EXT_ID_AUDIO_LEVEL} {EXT_AUDIO_LEVEL}",
                f"a=extmap:{EXT_ID_ABS_SEND_TIME} {EXT_ABS_SEND_TIME}",
                f"a=extmap:{EXT_ID_TWCC} {EXT_TWCC}",
                f"a=extmap:{EXT_ID_MID} {EXT_MID}",
                "a=sendonly",
                f"a=msid:{stream_id} {audio_track_id}",
                "a=rtcp-mux",
                "a=rtcp-rsize",
                f"a=rtpmap:{PT_OPUS} opus/48000/2",
                f"a=rtcp-fb:{PT_OPUS} transport-cc",
                f"a=fmtp:{PT_OPUS} minptime=10;useinbandfec=1",
                f"a=ssrc:{audio_ssrc} cname:{cname}",
                f"a=ssrc:{audio_ssrc} msid:{stream_id} {audio_track_id}",
            ]
        )
    if video_ssrcs:
        mid = str(len(mids))
        mids.append(mid)
        video = [
            f"m=video {port} UDP/TLS/RTP/SAVPF {PT_VP8} {PT_RTX}",
            *common,
            f"a=mid:{mid}",
            f"a=extmap:{EXT_ID_ABS_SEND_TIME} {EXT_ABS_SEND_TIME}",
            f"a=extmap:{EXT_ID_TWCC} {EXT_TWCC}",
            f"a=extmap:{EXT_ID_MID} {EXT_MID}",
            f"a=extmap:{EXT_ID_RID} {EXT_RID}",
            f"a=extmap:{EXT_ID_RRID} {EXT_REPAIRED_RID}",
            "a=sendonly",
            f"a=msid:{stream_id} {video_track_id}",
            "a=rtcp-mux",
            "a=rtcp-rsize",
            f"a=rtpmap:{PT_VP8} VP8/90000",
            *(
                f"a=rtcp-fb:{PT_VP8} {fb}"
                for fb in ("goog-remb", "transport-cc", "ccm fir", "nack", "nack pli")
            ),
            f"a=rtpmap:{PT_RTX} rtx/90000",
            f"a=fmtp:{PT_RTX} apt={PT_VP8}",
        ]
        if rids:
            video += [f"a=rid:{rid} send" for rid in rids]
            video.append(f"a=simulcast:send {';'.join(rids)}")
        else:
            ssrc, rtx = video_ssrcs[0]
            video += [
                f"a=ssrc-group:FID {ssrc} {rtx}",
                f"a=ssrc:{ssrc} cname:{cname}",
                f"a=ssrc:{ssrc} msid:{stream_id} {video_track_id}",
                f"a=ssrc:{rtx} cname:{cname}",
                f"a=ssrc:{rtx} msid:{stream_id} {video_track_id}",
            ]
        sections.append(video)
    sid = session_id if session_id is not None else random.getrandbits(62)
    lines = [
        "v=0",
        f"o=- {sid} 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        f"a=group:BUNDLE {' '.join(mids)}",
        "a=extmap-allow-mixed",
        f"a=msid-semantic: WMS {stream_id}",
    ]
    for section in sections:
        lines += section
    return "".join(f"{line}\r\n" for line in lines)


class LitePublisher(LiteTransport):
    """The publisher PC: paces pre-encoded VP8 (1..3 simulcast layers) and Opus.

    Sending is done by two tasks on absolute deadlines (frame ``n`` at ``start + n/fps``,
    so loop jitter does not accumulate into drift); a frame is packetized per RFC 7741
    and sent as one burst, like a browser without a pacer. RTCP from Ferry is answered
    here: NACK -> RTX from the per-layer cache (on the layer's RTX SSRC, with
    repaired-rid), PLI/FIR -> jump to the next keyframe.
    """

    def __init__(
        self,
        certificate: Certificate,
        layers: list[_VideoLayer],
        audio: _AudioStream | None,
        *,
        fps: int,
        simulcast: bool,
        name: str = "publisher",
    ) -> None:
        super().__init__(name, certificate)
        self.layers = layers
        self.audio = audio
        self.fps = fps
        self.simulcast = simulcast
        self.video_mid = b""
        self.audio_mid = b""
        self.cname = secrets.token_hex(8)
        self._by_ssrc = {layer.ssrc: layer for layer in layers}
        self._twcc_seq = random.getrandbits(16)
        self._tasks: list[asyncio.Task[None]] = []
        self._next_sr_ms = 0.0
        self._wall_offset = time.time() - self._loop.time()
        self.twcc_feedback_received = 0
        self.receiver_reports: dict[int, RtcpReceiverInfo] = {}

    def set_mids(self, audio_mid: str | None, video_mid: str | None) -> None:
        self.audio_mid = (audio_mid or "").encode("ascii")
        self.video_mid = (video_mid or "").encode("ascii")

    # -- pacing --------------------------------------------------------------------------
    def start_media(self) -> None:
        if self._tasks:
            return
        if self.layers:
            self._tasks.append(asyncio.ensure_future(self._pace(self.fps, self._send_frames)))
        if self.audio is not None:
            self._tasks.append(asyncio.ensure_future(self._pace(50, self._send_audio)))

    async def _pace(self, rate: int, emit: Callable[[int, float], None]) -> None:
        """Call ``emit(n, now_ms)`` for tick n at start + n/rate; catch up at most 5 ticks."""
        loop = self._loop
        start = loop.time()
        n = 0
        try:
            while self.state == "connected":
                now = loop.time()
                due = int((now - start) * rate) + 1
                if due - n > 5:  # stalled (loop overload): resync rather than burst
                    n = due - 1
                while n < due:
                    emit(n, now * 1000.0)
                    n += 1
                await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log_once("pacer_error", repr(exc))
            logger.debug("%s: pacer error", self.name, exc_info=True)

    def _next_twcc(self) -> bytes:
        self._twcc_seq = (self._twcc_seq + 1) & 0xFFFF
        return build_twcc_seq(self._twcc_seq)

    def _send_frames(self, n: int, now_ms: float) -> None:
        ts_step = 90000 // self.fps
        for layer in self.layers:
            if layer.active:
                self._send_frame(layer, (layer.ts_base + n * ts_step) & 0xFFFFFFFF, now_ms)

    def _send_frame(self, layer: _VideoLayer, timestamp: int, now_ms: float) -> None:
        frame, key = layer.next_frame()
        pid = layer.picture_id
        layer.picture_id = (pid + 1) & 0x7FFF
        pid_bytes = bytes((0x80 | (pid >> 8), pid & 0xFF))
        chunk = MAX_PAYLOAD - VP8_DESCRIPTOR
        total = len(frame)
        mid, rid = self.video_mid, layer.rid_bytes
        for offset in range(0, total, chunk):
            first = offset == 0
            descriptor = bytes((0x90 if first else 0x80, 0x80)) + pid_bytes
            extensions = [(EXT_ID_MID, mid)]
            if rid:
                extensions.append((EXT_ID_RID, rid))
            extensions.append((EXT_ID_TWCC, self._next_twcc()))
            seq = layer.seq
            layer.seq = (seq + 1) & 0xFFFF
            packet = build_rtp(
                payload_type=PT_VP8,
                seq=seq,
                timestamp=timestamp,
                ssrc=layer.ssrc,
                payload=descriptor + frame[offset : offset + chunk],
                marker=offset + chunk >= total,
                extensions=extensions,
            )
            layer.cache.put(seq, packet, now_ms)
            layer.packets_sent += 1
            layer.bytes_sent += len(packet)
            self.send_rtp(packet)
        layer.frames_sent += 1
        layer.keyframes_sent += key
        layer.last_ts, layer.last_ts_ms = timestamp, now_ms

    def _send_audio(self, n: int, now_ms: float) -> None:
        audio = self.audio
        assert audio is not None
        payload = audio.packets[audio.index]
        audio.index = (audio.index + 1) % len(audio.packets)
        timestamp = (audio.ts_base + n * 960) & 0xFFFFFFFF
        packet = build_rtp(
            payload_type=PT_OPUS,
            seq=audio.seq,
            timestamp=timestamp,
            ssrc=audio.ssrc,
            payload=payload,
            marker=n == 0,
            extensions=[
                (EXT_ID_AUDIO_LEVEL, _AUDIO_LEVEL),
                (EXT_ID_MID, self.audio_mid),
                (EXT_ID_TWCC, self._next_twcc()),
            ],
        )
        audio.seq = (audio.seq + 1) & 0xFFFF
        audio.packets_sent += 1
        audio.bytes_sent += len(packet)
        audio.last_ts, audio.last_ts_ms = timestamp, now_ms
        self.send_rtp(packet)

    # -- dynacast ----------------------------------------------------------------------
    def set_layers(self, wanted: dict[str, Any]) -> None:
        """``publisher_layers``: pause/resume layers by rid; a resumed layer restarts on a keyframe."""
        for layer in self.layers:
            if layer.rid is None or layer.rid not in wanted:
                continue
            on = bool(wanted[layer.rid])
            if on and not layer.active:
                layer.jump_to_keyframe()
            layer.active = on

    # -- RTCP in -----------------------------------------------------------------------
    def handle_rtcp(self, packet: bytes, now_ms: float) -> None:
        try:
            packets = parse_rtcp(packet)
        except ValueError:
            self.log_once("rtcp_malformed")
            return
        for p in packets:
            if isinstance(p, RtcpRtpfbPacket) and p.fmt == 1:
                layer = self._by_ssrc.get(p.media_ssrc)
                if layer is not None:
                    self._retransmit(layer, nack_seqs(p), now_ms)
            elif isinstance(p, RtcpPsfbPacket) and p.fmt == 1:
                self._keyframe(p.media_ssrc)
            elif isinstance(p, Fir):
                for ssrc, _ in p.entries:
                    self._keyframe(ssrc)
            elif isinstance(p, TwccFeedback):
                self.twcc_feedback_received += 1
            elif isinstance(p, (RtcpRrPacket, RtcpSrPacket)):
                for report in p.reports:
                    self.receiver_reports[report.ssrc] = report

    def _keyframe(self, ssrc: int) -> None:
        layer = self._by_ssrc.get(ssrc)
        if layer is not None:
            layer.plis += 1
            layer.jump_to_keyframe()

    def _retransmit(self, layer: _VideoLayer, seqs: list[int], now_ms: float) -> None:
        layer.nacked += len(seqs)
        for seq in seqs:
            original = layer.cache.get(seq, now_ms)
            if original is None:
                continue
            view = parse_rtp(original)
            extensions = [(EXT_ID_MID, self.video_mid)]
            if layer.rid_bytes:
                extensions.append((EXT_ID_RRID, layer.rid_bytes))
            extensions.append((EXT_ID_TWCC, self._next_twcc()))
            rtx_seq = layer.rtx_seq
            layer.rtx_seq = (rtx_seq + 1) & 0xFFFF
            packet = build_rtp(
                payload_type=PT_RTX,
                seq=rtx_seq,
                timestamp=view.timestamp,
                ssrc=layer.rtx_ssrc,
                payload=view.seq.to_bytes(2, "big") + bytes(view.payload),
                marker=view.marker,
                extensions=extensions,
            )
            layer.rtx_sent += 1
            self.send_rtp(packet)

    # -- reports -----------------------------------------------------------------------
    def on_tick(self, now_ms: float) -> None:
        if now_ms < self._next_sr_ms:
            return
        self._next_sr_ms = now_ms + SR_INTERVAL_MS
        ntp = ntp_from_unix(self._wall_offset + now_ms / 1000.0)
        chunk = b""
        streams: list[tuple[int, int, float, int, int, int]] = [
            (
                layer.ssrc,
                layer.last_ts,
                layer.last_ts_ms,
                90000,
                layer.packets_sent,
                layer.bytes_sent,
            )
            for layer in self.layers
            if layer.packets_sent
        ]
        audio = self.audio
        if audio is not None and audio.packets_sent:
            streams.append(
                (
                    audio.ssrc,
                    audio.last_ts,
                    audio.last_ts_ms,
                    48000,
                    audio.packets_sent,
                    audio.bytes_sent,
                )
            )
        for ssrc, last_ts, last_ms, rate, count, octets in streams:
            rtp_ts = last_ts + int((now_ms - last_ms) * rate / 1000.0)
            chunk += build_sr(ssrc, ntp, rtp_ts, count, octets) + build_sdes_cname(ssrc, self.cname)
        if chunk:
            self.send_rtcp(chunk)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        super().close()

    def summary(self) -> dict[str, Any]:
        audio = self.audio
        return {
            "state": self.state,
            "layers": {(layer.rid or "single"): layer.summary() for layer in self.layers},
            "audio": None
            if audio is None
            else {
                "ssrc": audio.ssrc,
                "packets_sent": audio.packets_sent,
                "bytes_sent": audio.bytes_sent,
            },
            "twcc_feedback_received": self.twcc_feedback_received,
            "packets_out": self.packets_out,
            "bytes_out": self.bytes_out,
        }


# --------------------------------------------------------------------------- subscriber


@dataclass(slots=True)
class RecvCounters:
    """What one received SSRC delivered; RTX packets are folded into their primary.

    ``highest``/``base`` are extended sequence numbers (offset by 65536 so reordering
    before the first packet stays positive). ``unique`` counts distinct sequence numbers,
    original or recovered by RTX, so ``lost`` is what never arrived at all.
    """

    ssrc: int
    kind: str
    mid: str
    participant_sid: str | None = None
    track_sid: str | None = None
    rtx_ssrc: int | None = None
    payload_types: dict[int, str] = field(default_factory=dict)
    packets: int = 0
    bytes: int = 0
    unique: int = 0
    duplicates: int = 0
    rtx_packets: int = 0
    recovered: int = 0
    keyframes: int = 0
    first_keyframe_ms: float | None = None
    first_packet_ms: float | None = None
    last_packet_ms: float | None = None
    base: int = -1
    highest: int = -1
    missing: set[int] = field(default_factory=set)
    nack: NackGenerator | None = None
    # receiver-report interval state
    rr_expected: int = 0
    rr_unique: int = 0

    @property
    def expected(self) -> int:
        return 0 if self.highest < 0 else self.highest - self.base + 1

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.unique)

    def unwrap(self, seq: int) -> int:
        """Extended seq of a 16-bit ``seq`` relative to the highest seen."""
        highest = self.highest
        if highest < 0:
            return seq + 65536
        delta = (seq - highest) & 0xFFFF
        return highest + delta if delta < 0x8000 else highest + delta - 0x10000

    def account(self, ext: int) -> bool:
        """Record that ``ext`` arrived; True if it is new (not a duplicate)."""
        highest = self.highest
        if highest < 0:
            self.base = self.highest = ext
            self.unique += 1
            return True
        if ext > highest:
            gap = ext - highest - 1
            if 0 < gap <= MAX_TRACKED_GAP and len(self.missing) < 4 * MAX_TRACKED_GAP:
                self.missing.update(range(highest + 1, ext))
            self.highest = ext
            self.unique += 1
            return True
        if ext in self.missing:
            self.missing.discard(ext)
            self.unique += 1
            return True
        if ext < self.base:  # reordered before the first packet we saw
            self.missing.update(range(ext + 1, self.base))
            self.base = ext
            self.unique += 1
            return True
        self.duplicates += 1
        return False

    def summary(self) -> dict[str, Any]:
        return {
            "ssrc": self.ssrc,
            "kind": self.kind,
            "mid": self.mid,
            "track_sid": self.track_sid,
            "participant_sid": self.participant_sid,
            "packets": self.packets,
            "bytes": self.bytes,
            "expected": self.expected,
            "lost": self.lost,
            "rtx_packets": self.rtx_packets,
            "recovered": self.recovered,
            "duplicates": self.duplicates,
            "keyframes": self.keyframes,
            "highest_seq": (self.highest - 65536) & 0xFFFF if self.highest >= 0 else None,
        }


_ANSWER_EXTENSIONS = frozenset({EXT_MID, EXT_TWCC, EXT_ABS_SEND_TIME, EXT_AUDIO_LEVEL})
_ANSWER_CODECS = frozenset({"opus", "vp8", "red"})


def _answer_feedback(codec: RtpCodec, twcc: bool) -> list[tuple[str, str | None]]:
    keep = {("nack", None), ("nack", "pli"), ("ccm", "fir")}
    if twcc:
        keep.add(("transport-cc", None))
    return [fb for fb in codec.rtcp_feedback if fb in keep]


def _answer_section(md: MediaDescription, ice: list[str], twcc: bool) -> list[str] | None:
    """Lines of one accepted m-section, or None to reject it."""
    codecs = [c for c in md.codecs if c.name.lower() in _ANSWER_CODECS]
    if not codecs:
        return None
    pts: list[int] = []
    for c in codecs:
        pts.append(c.payload_type)
        if c.rtx_payload_type is not None:
            pts.append(c.rtx_payload_type)
    direction = "recvonly" if md.direction in ("sendonly", "sendrecv") else "inactive"
    lines = [f"m={md.kind} 9 {md.protocol} {' '.join(map(str, pts))}", "c=IN IP4 0.0.0.0", *ice]
    lines.append(f"a=mid:{md.mid}")
    for ext in md.header_extensions:
        if ext.uri in _ANSWER_EXTENSIONS and (twcc or ext.uri != EXT_TWCC):
            lines.append(f"a=extmap:{ext.id} {ext.uri}")
    lines += [f"a={direction}", "a=rtcp-mux"]
    if md.rtcp_rsize:
        lines.append("a=rtcp-rsize")
    for c in codecs:
        name = f"{c.name}/{c.clock_rate}" + (
            f"/{c.channels}" if c.channels and c.channels != 1 else ""
        )
        lines.append(f"a=rtpmap:{c.payload_type} {name}")
        for fb_type, fb_param in _answer_feedback(c, twcc):
            lines.append(
                f"a=rtcp-fb:{c.payload_type} {fb_type}" + (f" {fb_param}" if fb_param else "")
            )
        if c.parameters:
            fmtp = ";".join(k if v == "" else f"{k}={v}" for k, v in c.parameters.items())
            lines.append(f"a=fmtp:{c.payload_type} {fmtp}")
        if c.rtx_payload_type is not None:
            lines.append(f"a=rtpmap:{c.rtx_payload_type} rtx/{c.clock_rate}")
            lines.append(f"a=fmtp:{c.rtx_payload_type} apt={c.payload_type}")
    return lines


def build_subscriber_answer(
    offer: SessionDescription,
    *,
    ufrag: str,
    pwd: str,
    fingerprint: tuple[str, str],
    twcc: bool = True,
    session_id: int | None = None,
) -> str:
    """Answer Ferry's subscriber offer: recvonly for what it sends, setup:active.

    Accepts opus, VP8, their RTX and RED as offered, with transport-cc (if ``twcc``),
    nack, nack pli and ccm fir feedback; other codecs are dropped and a section left
    without codecs is rejected (port 0), as a browser would.
    """
    ice = [
        f"a=ice-ufrag:{ufrag}",
        f"a=ice-pwd:{pwd}",
        f"a=fingerprint:{fingerprint[0]} {fingerprint[1]}",
        "a=setup:active",
    ]
    body: list[str] = []
    accepted: list[str] = []
    for md in offer.media:
        lines = None
        if not md.rejected and md.kind in ("audio", "video"):
            lines = _answer_section(md, ice, twcc)
        if lines is None:
            formats = " ".join(md.formats[:1]) or "0"
            lines = [
                f"m={md.kind} 0 {md.protocol} {formats}",
                "c=IN IP4 0.0.0.0",
                f"a=mid:{md.mid}",
            ]
            if md.kind in ("audio", "video"):
                lines.append("a=inactive")
        else:
            accepted.append(md.mid)
        body += lines
    sid = session_id if session_id is not None else random.getrandbits(62)
    head = ["v=0", f"o=- {sid} 2 IN IP4 127.0.0.1", "s=-", "t=0 0"]
    if accepted:
        head.append(f"a=group:BUNDLE {' '.join(accepted)}")
    head += ["a=msid-semantic: WMS", *ice]
    return "".join(f"{line}\r\n" for line in head + body)


class LiteSubscriber(LiteTransport):
    """The subscriber PC: counts what Ferry forwards and sends the feedback a browser would.

    The per-packet path is deliberately small (no decode, no allocation beyond the
    decrypted packet): unprotect, read SSRC/seq, update counters, and look at the VP8
    descriptor only on the first packet of a frame to spot keyframes. NACKs (if
    ``nack``) and RRs (every second, with LSR/DLSR so Ferry gets an RTT) are produced
    from the 20 ms timer, TWCC feedback (if ``twcc`` and negotiated) every 50 ms.
    """

    def __init__(
        self, certificate: Certificate, *, nack: bool, twcc: bool, name: str = "subscriber"
    ) -> None:
        super().__init__(name, certificate)
        self.nack_enabled = nack
        self.twcc_enabled = twcc
        self.received: dict[int, RecvCounters] = {}
        self.ended: list[RecvCounters] = []  # counters of tracks whose SSRC went to another track
        self._by_ssrc: dict[int, RecvCounters] = {}  # primary and RTX SSRCs
        self._rtx_ssrcs: set[int] = set()
        self._twcc_ext = 0
        self.twcc: TwccRecorder | None = None
        self._feedback_timer: asyncio.TimerHandle | None = None
        self._next_rr_ms = 0.0
        self._lsr: dict[int, tuple[int, float]] = {}  # sender ssrc -> (LSR, arrival ms)
        self.unknown_ssrc = 0
        self.nacks_sent = 0
        self.plis_sent = 0

    def apply_offer(self, offer: SessionDescription) -> None:
        """Map every sending section's SSRC (and RTX SSRC) to its counters."""
        live: set[int] = set()
        for md in offer.media:
            if md.rejected or md.direction not in ("sendonly", "sendrecv") or not md.encodings:
                continue
            enc = md.encodings[0]
            if enc.ssrc is None:
                continue
            live.add(enc.ssrc)
            counters = self.received.get(enc.ssrc)
            if counters is not None and md.msid is not None and counters.track_sid not in (None, md.msid[1]):
                # A recycled m-line: Ferry kept the SSRC for another track.
                self.ended.append(counters)
                counters = None
            if counters is None:
                counters = RecvCounters(ssrc=enc.ssrc, kind=str(md.kind), mid=md.mid)
                if self.nack_enabled and md.kind == "video":
                    counters.nack = NackGenerator()
                self.received[enc.ssrc] = counters
            if md.msid is not None:
                counters.participant_sid, counters.track_sid = md.msid
            counters.payload_types = {c.payload_type: c.name.lower() for c in md.codecs}
            counters.rtx_ssrc = enc.rtx_ssrc
            self._by_ssrc[enc.ssrc] = counters
            if enc.rtx_ssrc is not None:
                self._by_ssrc[enc.rtx_ssrc] = counters
                self._rtx_ssrcs.add(enc.rtx_ssrc)
            twcc_id = md.extension_id(EXT_TWCC)
            if self.twcc_enabled and twcc_id and self.twcc is None:
                self._twcc_ext = twcc_id
                self.twcc = TwccRecorder(self.rtcp_ssrc, enc.ssrc)
        # Sections that went inactive keep their counters (stats) but stop routing.
        for ssrc, counters in list(self._by_ssrc.items()):
            if counters.ssrc not in live:
                del self._by_ssrc[ssrc]

    # -- hot path ---------------------------------------------------------------------
    def handle_rtp(self, packet: bytes, now_ms: float) -> None:
        # Transport-wide: every packet counts, whatever its SSRC (as in browsers), or
        # Ferry's probes on an SSRC we do not know would read as loss.
        twcc = self.twcc
        if twcc is not None and packet[0] & 0x10:
            value = parse_rtp(packet).extension(self._twcc_ext)
            if value is not None and len(value) == 2:
                twcc.record((value[0] << 8) | value[1], now_ms)
                if self._feedback_timer is None:
                    self._arm_feedback()
        ssrc = _SSRC.unpack_from(packet, 8)[0]
        counters = self._by_ssrc.get(ssrc)
        if counters is None:
            self.unknown_ssrc += 1
            return
        counters.packets += 1
        counters.bytes += len(packet)
        counters.last_packet_ms = now_ms
        b0 = packet[0]
        offset = 12 + 4 * (b0 & 0x0F)
        if b0 & 0x10:
            offset += 4 + 4 * ((packet[offset + 2] << 8) | packet[offset + 3])
        if ssrc in self._rtx_ssrcs:
            if len(packet) < offset + 2:
                return  # padding-only probe
            counters.rtx_packets += 1
            ext = counters.unwrap((packet[offset] << 8) | packet[offset + 1])
            if counters.account(ext):
                counters.recovered += 1
            if counters.nack is not None:
                counters.nack.on_packet(ext, now_ms, is_retransmission=True)
            return
        if counters.first_packet_ms is None:
            counters.first_packet_ms = now_ms
        ext = counters.unwrap((packet[2] << 8) | packet[3])
        counters.account(ext)
        keyframe = False
        if (
            counters.kind == "video"
            and len(packet) > offset + 1
            and packet[offset] & 0x17 == 0x10  # S=1, PID=0: first packet of a frame
        ):
            keyframe = is_descriptor_keyframe(memoryview(packet)[offset:])
            if keyframe:
                counters.keyframes += 1
                if counters.first_keyframe_ms is None:
                    counters.first_keyframe_ms = now_ms
        if counters.nack is not None:
            counters.nack.on_packet(ext, now_ms, is_keyframe=keyframe)

    # -- RTCP ----------------------------------------------------------------------------
    def handle_rtcp(self, packet: bytes, now_ms: float) -> None:
        try:
            packets = parse_rtcp(packet)
        except ValueError:
            self.log_once("rtcp_malformed")
            return
        for p in packets:
            if isinstance(p, RtcpSrPacket):
                self._lsr[p.ssrc] = (ntp_middle32(p.sender_info.ntp_timestamp), now_ms)

    def on_tick(self, now_ms: float) -> None:
        send = self.send_rtcp
        for counters in self.received.values():
            gen = counters.nack
            if gen is None:
                continue
            deadline = gen.next_deadline()
            if deadline is not None and deadline <= now_ms:
                seqs = gen.poll(now_ms)
                if seqs:
                    self.nacks_sent += len(seqs)
                    send(build_nack(self.rtcp_ssrc, counters.ssrc, seqs))
            if gen.take_keyframe_needed():
                self.plis_sent += 1
                send(build_pli(self.rtcp_ssrc, counters.ssrc))
        if now_ms >= self._next_rr_ms:
            self._next_rr_ms = now_ms + RR_INTERVAL_MS
            self._send_receiver_reports(now_ms)

    def _arm_feedback(self) -> None:
        """TWCC feedback on its own timer, at the recorder's deadline, as browsers do:
        on the 20 ms tick a 50 ms interval became 60 ms, and congestion news is late."""
        deadline = self.twcc.next_deadline() if self.twcc is not None else None
        if deadline is not None and self.state != "closed":
            self._feedback_timer = self._loop.call_at(deadline / 1000.0, self._send_feedback)

    def _send_feedback(self) -> None:
        self._feedback_timer = None
        twcc = self.twcc
        if twcc is None or self.state == "closed":
            return
        now_ms = self._loop.time() * 1000.0
        for fb in twcc.build_feedback(now_ms):
            self.send_rtcp(fb)
        self._arm_feedback()

    def close(self) -> None:
        if self._feedback_timer is not None:
            self._feedback_timer.cancel()
            self._feedback_timer = None
        super().close()

    def _send_receiver_reports(self, now_ms: float) -> None:
        reports: list[RtcpReceiverInfo] = []
        for c in self.received.values():
            if c.highest < 0 or c.ssrc not in self._by_ssrc:
                continue
            expected, unique = c.expected, c.unique
            exp_int, got_int = expected - c.rr_expected, unique - c.rr_unique
            c.rr_expected, c.rr_unique = expected, unique
            fraction = (
                0 if exp_int <= 0 or got_int >= exp_int else ((exp_int - got_int) << 8) // exp_int
            )
            lsr, dlsr = 0, 0
            if c.ssrc in self._lsr:
                lsr, at_ms = self._lsr[c.ssrc]
                dlsr = int((now_ms - at_ms) * 65.536)
            reports.append(
                RtcpReceiverInfo(
                    ssrc=c.ssrc,
                    fraction_lost=min(255, fraction),
                    packets_lost=min(c.lost, 0x7FFFFF),
                    highest_sequence=(c.highest - 65536) & 0xFFFFFFFF,
                    jitter=0,
                    lsr=lsr,
                    dlsr=dlsr,
                )
            )
        for i in range(0, len(reports), 31):
            self.send_rtcp(build_rr(self.rtcp_ssrc, reports[i : i + 31]))

    def summary(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "streams": {str(ssrc): c.summary() for ssrc, c in self.received.items()},
            "unknown_ssrc": self.unknown_ssrc,
            "nacks_sent": self.nacks_sent,
            "plis_sent": self.plis_sent,
            "packets_in": self.packets_in,
            "bytes_in": self.bytes_in,
        }


def is_descriptor_keyframe(payload: memoryview | bytes) -> bool:
    """True if an RTP payload starting with a VP8 descriptor begins a key frame."""
    try:
        return parse_vp8(payload).is_keyframe
    except ValueError:
        return False


# --------------------------------------------------------------------------- client


def _normalize_layers(
    frames_per_layer: Sequence[Sequence[bytes]] | Sequence[bytes],
    simulcast_rids: Sequence[str] | None,
) -> tuple[list[list[bytes]], list[str] | None]:
    """(frames per layer, rids or None): a flat list of frames is one plain layer."""
    if not frames_per_layer:
        raise ValueError("no video frames")
    if isinstance(frames_per_layer[0], (bytes, bytearray, memoryview)):
        return [[bytes(f) for f in frames_per_layer]], None  # type: ignore[union-attr]
    layers = [list(layer) for layer in frames_per_layer]  # type: ignore[arg-type]
    if len(layers) == 1:
        return layers, None
    if not simulcast_rids:
        raise ValueError("several layers need simulcast_rids")
    if len(simulcast_rids) < len(layers):
        raise ValueError(f"{len(layers)} layers but only rids {list(simulcast_rids)}")
    return layers, list(simulcast_rids[: len(layers)])


class LiteClient:
    """One participant: signaling WebSocket plus a lite publisher and/or subscriber PC.

    Signaling is exactly :class:`FerryClient`'s (``hello`` first, requests matched by
    ``id``, events without one). Public state:

    * ``events``: recent server events (a bounded deque), ``server_info``, ``room``,
      ``participant``, ``published`` (TrackInfo list of the publish reply);
    * ``publisher`` / ``subscriber``: the transports once created;
    * ``received``: SSRC -> :class:`RecvCounters` of the subscriber PC;
    * :meth:`stats` for a JSON-friendly summary.
    """

    def __init__(
        self,
        *,
        request_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        nack: bool = True,
        twcc: bool = True,
        certificate: Certificate | None = None,
        name: str = "lite",
    ) -> None:
        """``nack``/``twcc`` choose the subscriber's feedback (both on, like a browser)."""
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.nack = nack
        self.twcc = twcc
        self.certificate = certificate or _shared_certificate()
        self.name = name
        self.server_info: dict[str, Any] = {}
        self.room: dict[str, Any] = {}
        self.participant: dict[str, Any] = {}
        self.published: list[dict[str, Any]] = []
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENT_LOG_LIMIT)
        self.on_event: list[Callable[[dict[str, Any]], None]] = []
        self.publisher: LitePublisher | None = None
        self.subscriber: LiteSubscriber | None = None
        self.subscriber_version: int | None = None
        self.subscriber_errors: list[BaseException] = []
        self._channel: SignalingChannel | None = None
        self._offer_worker: asyncio.Task[None] | None = None
        self._offers: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=64)
        self._starter: asyncio.Future[None] | None = None
        self._leaving = False
        self._closed = False

    # -- signaling -----------------------------------------------------------------------
    async def connect(self, url: str) -> dict[str, Any]:
        """Open the WebSocket and send ``hello``; returns (and keeps) its reply."""
        self._channel = SignalingChannel(
            self._dispatch, request_timeout=self.request_timeout, name=self.name
        )
        await self._channel.open(url)
        self._offer_worker = asyncio.ensure_future(self._process_offers())
        self.server_info = await self.request("hello", version=PROTOCOL_VERSION)
        return self.server_info

    async def request(
        self, msg_type: str, /, *, timeout: float | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Send a request, await the reply with the same ``id``; FerryError on ``ok: false``."""
        if self._channel is None:
            raise FerryError("closed", "not connected")
        return await self._channel.request(msg_type, timeout=timeout, **fields)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        """An event from the server (replies are matched by the channel)."""
        self.events.append(msg)
        kind = msg.get("type")
        if kind == "subscriber_offer":
            try:
                self._offers.put_nowait(msg)
            except asyncio.QueueFull:  # the server serializes offers: cannot happen
                logger.warning("%s: too many pending subscriber offers", self.name)
        elif kind == "publisher_layers" and self.publisher is not None:
            self.publisher.set_layers(dict(msg.get("layers") or {}))
        for callback in list(self.on_event):
            try:
                callback(msg)
            except Exception:
                logger.exception("%s: event callback failed", self.name)

    async def join(self, token: str, *, auto_subscribe: bool = True) -> dict[str, Any]:
        reply = await self.request("join", token=token, auto_subscribe=auto_subscribe)
        self.room = reply.get("room") or {}
        self.participant = reply.get("participant") or {}
        return reply

    # -- publishing ----------------------------------------------------------------------
    async def publish_vp8(
        self,
        frames_per_layer: Sequence[Sequence[bytes]] | Sequence[bytes],
        *,
        fps: int = 30,
        simulcast_rids: Sequence[str] | None = ("q", "h", "f"),
        audio: Sequence[bytes] | None = None,
        wait_connected: bool = True,
    ) -> list[dict[str, Any]]:
        """Offer VP8 (1..3 layers, ascending quality) and optional Opus, connect, start pacing.

        ``frames_per_layer`` is either one clip (a list of VP8 frames: no simulcast) or
        one clip per layer, low to high, sent with ``simulcast_rids``. Returns the
        publish reply's TrackInfo list. Raises :class:`ConnectTimeout` if ICE/DTLS does
        not come up within ``connect_timeout``.
        """
        if self.publisher is not None:
            raise FerryError("conflict", "this LiteClient already publishes")
        clips, rids = _normalize_layers(frames_per_layer, simulcast_rids)
        layers = [_VideoLayer(rids[i] if rids else None, clip) for i, clip in enumerate(clips)]
        stream = _AudioStream(audio) if audio else None
        pub = LitePublisher(
            self.certificate, layers, stream, fps=fps, simulcast=bool(rids), name=f"{self.name}/pub"
        )
        self.publisher = pub
        stream_id, audio_id, video_id = (secrets.token_hex(8) for _ in range(3))
        offer = build_publisher_offer(
            ufrag=pub.ufrag,
            pwd=pub.pwd,
            fingerprint=pub.fingerprint,
            port=pub.port,
            audio_ssrc=stream.ssrc if stream else None,
            video_ssrcs=[(layer.ssrc, layer.rtx_ssrc) for layer in layers],
            rids=rids,
            stream_id=stream_id,
            audio_track_id=audio_id,
            video_track_id=video_id,
            cname=pub.cname,
        )
        tracks = {video_id: {"source": "camera"}}
        if stream is not None:
            tracks[audio_id] = {"source": "microphone"}
        reply = await self.request("publish", sdp=offer, tracks=tracks)
        answer = sdp.parse(reply["sdp"], "answer")
        self._check_publisher_answer(answer, audio=stream is not None)
        pub.set_mids("0" if stream else None, "1" if stream else "0")
        pub.set_remote(answer.transport)
        pub.start(self.connect_timeout)
        self.published = list(reply.get("tracks") or [])
        if wait_connected:
            await pub.wait_connected(self.connect_timeout + 1.0)
            pub.start_media()
        else:
            self._starter = asyncio.ensure_future(self._start_when_connected(pub))
        return self.published

    async def _start_when_connected(self, pub: LitePublisher) -> None:
        with contextlib.suppress(FerryError):
            await pub.wait_connected(self.connect_timeout + 1.0)
            pub.start_media()

    @staticmethod
    def _check_publisher_answer(answer: SessionDescription, *, audio: bool) -> None:
        video = [m for m in answer.media if m.kind == "video" and not m.rejected]
        if not video or not any(c.name.upper() == "VP8" for c in video[0].codecs):
            raise FerryError("rejected", "Ferry did not accept VP8")
        if audio and not any(m.kind == "audio" and not m.rejected for m in answer.media):
            raise FerryError("rejected", "Ferry did not accept Opus")

    # -- subscribing ---------------------------------------------------------------------
    async def _process_offers(self) -> None:
        """Answer ``subscriber_offer`` events strictly one at a time, in arrival order.

        Only the newest queued offer is answered (the server accepts only an answer to
        its latest offer); a ``conflict`` reply means a newer offer is on its way.
        """
        while True:
            offer = await self._offers.get()
            while not self._offers.empty():
                offer = self._offers.get_nowait()
            try:
                await self._answer_offer(offer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, FerryError) and exc.code == "conflict":
                    logger.info("%s: subscriber offer v%s superseded", self.name, offer.get("version"))
                    continue
                # An offer racing our own leave/close is expected, not worth a warning.
                closing = self._closed or self._leaving
                closing = closing or (isinstance(exc, FerryError) and exc.code == "closed")
                (logger.debug if closing else logger.warning)(
                    "%s: subscriber offer v%s failed: %r", self.name, offer.get("version"), exc
                )
                self.subscriber_errors.append(exc)

    async def _answer_offer(self, event: dict[str, Any]) -> None:
        offer = sdp.parse(event["sdp"], "offer")
        if self.subscriber is None:
            self.subscriber = LiteSubscriber(
                self.certificate, nack=self.nack, twcc=self.twcc, name=f"{self.name}/sub"
            )
        sub = self.subscriber
        sub.apply_offer(offer)
        text = build_subscriber_answer(
            offer, ufrag=sub.ufrag, pwd=sub.pwd, fingerprint=sub.fingerprint, twcc=self.twcc
        )
        await self.request("subscriber_answer", sdp=text, version=event.get("version"))
        self.subscriber_version = event.get("version")
        if any(not m.rejected for m in offer.media):
            sub.set_remote(offer.transport)
            sub.start(self.connect_timeout)

    @property
    def received(self) -> dict[int, RecvCounters]:
        """Subscriber counters by primary SSRC (empty before the first offer)."""
        return self.subscriber.received if self.subscriber is not None else {}

    async def wait_connected(self, which: str = "publisher", timeout: float | None = None) -> None:
        """Wait (bounded) until the publisher/subscriber transport is connected."""
        t = self.connect_timeout if timeout is None else timeout
        deadline = time.monotonic() + t
        while True:
            transport = self.publisher if which == "publisher" else self.subscriber
            if transport is not None:
                await transport.wait_connected(max(0.01, deadline - time.monotonic()))
                return
            if time.monotonic() >= deadline:
                raise ConnectTimeout("connect_timeout", f"no {which} transport after {t}s")
            await asyncio.sleep(0.02)

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Poll ``predicate`` every 20 ms until truthy; TimeoutError at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.name}: condition not met within {timeout}s")
            await asyncio.sleep(0.02)

    def stats(self) -> dict[str, Any]:
        """JSON-friendly counters of both PCs plus subscriber totals."""
        totals = {
            "packets": 0,
            "bytes": 0,
            "expected": 0,
            "lost": 0,
            "recovered": 0,
            "keyframes": 0,
        }
        for c in self.received.values():
            totals["packets"] += c.packets
            totals["bytes"] += c.bytes
            totals["expected"] += c.expected
            totals["lost"] += c.lost
            totals["recovered"] += c.recovered
            totals["keyframes"] += c.keyframes
        return {
            "publisher": self.publisher.summary() if self.publisher else None,
            "subscriber": self.subscriber.summary() if self.subscriber else None,
            "received_totals": totals,
        }

    # -- teardown ------------------------------------------------------------------------
    async def leave(self) -> None:
        """Send ``leave`` (errors ignored), then :meth:`close`."""
        self._leaving = True
        if self._channel is not None and not self._channel.closed:
            with contextlib.suppress(FerryError, TimeoutError):
                await self.request("leave", timeout=min(self.request_timeout, 5.0))
        await self.close()

    async def close(self) -> None:
        """Close transports, tasks and the socket (idempotent, bounded)."""
        if self._closed:
            return
        self._closed = True
        if self._starter is not None:
            self._starter.cancel()
        for transport in (self.publisher, self.subscriber):
            if transport is not None:
                transport.close()
        if self._offer_worker is not None:
            self._offer_worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._offer_worker
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> LiteClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
