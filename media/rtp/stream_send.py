"""Subscriber-side send statistics for one outgoing SSRC (RFC 3550 6.4).

Builds the sender info of our SRs (so the subscriber can sync audio and video and
compute LSR/DLSR) and digests the subscriber's report blocks into RTT, loss and
jitter, which the NACK/RTX logic and the allocator read.
"""

from __future__ import annotations

from aiortc.rtp import RtcpReceiverInfo, RtcpSenderInfo

from media.lanes import SendCounters
from media.rtp.ntp import ntp_to_ms

__all__ = ["RtpStreamSend"]

_MIN_RTT_MS = 1.0


class RtpStreamSend(SendCounters):
    """Counters of what we sent, plus what the receiver told us about it.

    `packets_sent`, `bytes_sent`, `_last_rtp_ts`, `_last_sent_ms`, `_mark` and
    `fraction_lost` are the base's (`media.lanes`): a lane counts its packets there
    from C, and an audio lane reads the loss that sets the RED distance.
    """

    __slots__ = (
        "ssrc",
        "clock_rate",
        "_ts_per_ms",
        "rtt_ms",
        "jitter_ms",
        "packets_lost",
        "reports_received",
    )

    def __init__(self, ssrc: int, clock_rate: int) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock_rate must be > 0, got {clock_rate!r}")
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self._ts_per_ms = clock_rate / 1000.0
        self._last_rtp_ts: int | None = None
        self._last_sent_ms = 0.0
        self._mark: tuple[float, int] | None = None  # (ms, bytes_sent) for bitrate_bps
        self.packets_sent = 0
        self.bytes_sent = 0
        self.rtt_ms: float | None = None  # None until a report block with LSR came back
        self.fraction_lost = 0.0
        self.jitter_ms = 0.0
        self.packets_lost = 0
        self.reports_received = 0

    def on_packet_sent(self, rtp_ts: int, size: int, now_ms: float) -> None:
        """Count one sent packet; ``size`` is the payload size (the SR octet count)."""
        self.packets_sent += 1
        self.bytes_sent += size
        self._last_rtp_ts = rtp_ts
        self._last_sent_ms = now_ms
        if self._mark is None:
            self._mark = (now_ms - 1.0, 0)

    def bitrate_bps(self, now_ms: float) -> float:
        """Sent payload bitrate, computed on read (the send path only counts bytes):
        over the time since a mark (first the first packet) that moves once it is a
        second old."""
        mark = self._mark
        if mark is None:
            return 0.0
        elapsed = now_ms - mark[0]
        rate = (self.bytes_sent - mark[1]) * 8000.0 / elapsed if elapsed > 0 else 0.0
        if elapsed >= 1000.0:
            self._mark = (now_ms, self.bytes_sent)
        return rate

    def sender_report_info(self, now_ms: float, ntp: int, rtp_ts: int | None = None) -> RtcpSenderInfo:
        """Sender info for an SR sent at ``now_ms`` (wall time ``ntp``).

        ``rtp_ts`` is the stream's timestamp for that instant when the caller knows the
        capture clock; else it is the last sent packet's, advanced by the time since at
        the clock rate (RFC 3550 6.4.1), which reads late by however long that packet
        waited before it was sent.
        """
        if rtp_ts is None:
            if self._last_rtp_ts is None:
                rtp_ts = 0
            else:
                elapsed = (now_ms - self._last_sent_ms) * self._ts_per_ms
                rtp_ts = (self._last_rtp_ts + round(elapsed)) & 0xFFFFFFFF
        return RtcpSenderInfo(
            ntp_timestamp=ntp,
            rtp_timestamp=rtp_ts,
            packet_count=self.packets_sent & 0xFFFFFFFF,
            octet_count=self.bytes_sent & 0xFFFFFFFF,
        )

    def on_report_block(self, info: RtcpReceiverInfo, now_ms: float, ntp_middle32_now: int) -> None:
        """Digest the receiver's report block about this SSRC.

        RTT = A - LSR - DLSR in compact NTP units (RFC 3550 6.4.1); ``lsr == 0``
        means the receiver has not seen an SR yet. A slightly negative result
        (rounding) is clamped to 1 ms, as libwebrtc does.
        """
        self.reports_received += 1
        self.fraction_lost = info.fraction_lost / 256.0
        self.jitter_ms = info.jitter / self._ts_per_ms
        self.packets_lost = info.packets_lost
        if info.lsr == 0:
            return
        rtt_units = (ntp_middle32_now - info.lsr - info.dlsr) & 0xFFFFFFFF
        if rtt_units >= 0x80000000:
            self.rtt_ms = _MIN_RTT_MS
        else:
            self.rtt_ms = max(_MIN_RTT_MS, ntp_to_ms(rtt_units))
