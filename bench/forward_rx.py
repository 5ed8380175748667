"""Receivers and send stamps for bench/forward.py: raw counting and forwarding latency.

``--rx raw`` subscribers behave like the issue's Janus comparison receivers: they
complete ICE and DTLS, then only count SRTP packets (SSRC and sequence number are in
the clear RTP header, so loss is counted without decrypting) and send no RTCP at all,
so the server does forwarding and nothing else.

Forwarding latency is publisher send -> subscriber receive on one clock: the
publisher stamps ``time.time()`` on every packet it sends, keyed by the packet's last
bytes (the payload's tail, which an SFU forwards unchanged), and sampled subscribers
read the kernel's receive time (``SO_TIMESTAMPNS``, the same CLOCK_REALTIME) for each
datagram, decrypt it and look the key up. Kernel timestamps keep the client process's
own scheduling out of the figure; what is left is the time in Ferry's socket queue,
Ferry's processing and loopback.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections import OrderedDict, deque
from typing import Any

from clients.lite.subscriber import LiteSubscriber, RecvCounters
from media.transport.srtp import SrtpError
from signaling.sdp import PT_VP8 as VIDEO_PT

__all__ = ["LatencyLog", "RawSubscriber", "pace_publisher", "stamp_publisher"]

KEY_BYTES = 12  # tail of the packet used as its identity
STAMP_MEMORY = 4096  # send stamps kept (~10 s of one publisher)
AMBIGUOUS_S = 1.0
_SSRC = struct.Struct("!I")
_TIMESPEC = struct.Struct("@qq")
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


class LatencyLog:
    """Send stamps of one publisher and the latencies sampled receivers measured."""

    def __init__(self) -> None:
        self.sent: OrderedDict[bytes, float | None] = OrderedDict()
        self.samples: list[float] = []  # ms
        self.recording = False
        self.unmatched = 0

    def stamp(self, packet: bytes) -> None:
        key = packet[-KEY_BYTES:]
        sent = self.sent
        now = time.time()
        # A payload sent again within a second (an Opus silence frame) is ambiguous:
        # its receive could match either send, so it is not measured. A clip looping
        # after seconds is not: the earlier copy has long arrived.
        prev = sent.get(key, 0.0)
        sent[key] = None if prev is None or now - prev < AMBIGUOUS_S else now
        sent.move_to_end(key)
        if len(sent) > STAMP_MEMORY:
            sent.popitem(last=False)

    def received(self, plain: bytes, at_s: float) -> None:
        if not self.recording:
            return
        sent = self.sent.get(plain[-KEY_BYTES:], 0.0)
        if sent is None:
            return
        if sent == 0.0:
            self.unmatched += 1
            return
        self.samples.append((at_s - sent) * 1000.0)

    def summary(self) -> dict[str, Any]:
        s = sorted(self.samples)
        if not s:
            return {"samples": 0, "unmatched": self.unmatched}

        def pct(p: float) -> float:
            return round(s[min(len(s) - 1, int(p / 100.0 * len(s)))], 3)

        return {
            "samples": len(s),
            "p50_ms": pct(50),
            "p90_ms": pct(90),
            "p99_ms": pct(99),
            "max_ms": round(s[-1], 3),
            "unmatched": self.unmatched,
        }


def stamp_publisher(publisher: Any, log: LatencyLog) -> None:
    """Wrap a LitePublisher's ``send_rtp`` so every RTP packet it sends is stamped."""
    send = publisher.send_rtp

    def send_rtp(packet: bytes) -> None:
        log.stamp(packet)
        send(packet)

    publisher.send_rtp = send_rtp


def pace_publisher(publisher: Any, log: LatencyLog, rate_bps: float, interval_s: float = 0.005) -> None:
    """Send the publisher's video through a pacer as Chrome does (a token bucket at
    ``rate_bps``, typically 2.5x the video bitrate, topped up each ``interval_s``)
    instead of a whole frame at once; audio is not paced (Chrome's default). Packets are
    stamped when they leave the pacer, so latency is the SFU's, not the pacer queue's."""
    loop = asyncio.get_running_loop()
    queue: deque[bytes] = deque()
    send = publisher.send_rtp
    burst = rate_bps / 8.0 * interval_s
    state: dict[str, Any] = {"budget": burst, "at": loop.time(), "timer": None}

    def drain() -> None:
        state["timer"] = None
        now = loop.time()
        budget = min(burst, state["budget"] + (now - state["at"]) * rate_bps / 8.0)
        state["at"] = now
        while queue and budget > 0:
            packet = queue.popleft()
            budget -= len(packet)
            log.stamp(packet)
            send(packet)
        state["budget"] = budget
        if queue:
            state["timer"] = loop.call_later(interval_s, drain)

    def send_rtp(packet: bytes) -> None:
        if packet[1] & 0x7F != VIDEO_PT:
            log.stamp(packet)
            send(packet)
            return
        queue.append(packet)
        if state["timer"] is None:
            drain()

    publisher.send_rtp = send_rtp


class RawSubscriber(LiteSubscriber):
    """Counts SRTP packets from the clear header; no RTCP; optional latency sampling."""

    def __init__(self, *args: Any, latency: LatencyLog | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("nack", False)
        kwargs.setdefault("twcc", False)
        super().__init__(*args, **kwargs)
        self.latency = latency
        self.rtcp_in = 0
        if latency is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self._loop.remove_reader(self.sock.fileno())
            self._loop.add_reader(self.sock.fileno(), self._on_readable_stamped)

    def on_tick(self, now_ms: float) -> None:
        """No receiver reports, NACKs or PLIs: the server only forwards."""

    def _on_srtp(self, data: bytes) -> None:
        if 191 < data[1] < 224:
            self.rtcp_in += 1
            return
        self._count(data)

    def _count(self, data: bytes) -> RecvCounters | None:
        counters = self._by_ssrc.get(_SSRC.unpack_from(data, 8)[0])
        if counters is None:
            self.unknown_ssrc += 1
            return None
        counters.packets += 1
        counters.bytes += len(data)
        if counters.ssrc != _SSRC.unpack_from(data, 8)[0]:
            counters.rtx_packets += 1  # RTX: its OSN is encrypted; counted, not accounted
            return counters
        counters.account(counters.unwrap((data[2] << 8) | data[3]))
        return counters

    def _on_readable_stamped(self) -> None:
        recvmsg = self.sock.recvmsg
        space = socket.CMSG_SPACE(_TIMESPEC.size)
        latency = self.latency
        assert latency is not None
        for _ in range(256):
            try:
                data, ancdata, _flags, _addr = recvmsg(2048, space)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log_once("recv_error", exc)
                return
            self.packets_in += 1
            self.bytes_in += len(data)
            if not data:
                continue
            first = data[0]
            if 127 < first < 192:
                if 191 < data[1] < 224:
                    self.rtcp_in += 1
                    continue
                self._count(data)
                srtp = self.srtp
                if srtp is None or not latency.recording:
                    continue
                at = time.time()
                for level, kind, value in ancdata:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        sec, nsec = _TIMESPEC.unpack_from(value)
                        at = sec + nsec * 1e-9
                try:
                    plain = srtp.unprotect(data)
                except SrtpError:
                    continue
                latency.received(plain, at)
            elif first < 4:
                self._on_stun(data)
            elif 19 < first < 64:
                self._on_dtls(data)
