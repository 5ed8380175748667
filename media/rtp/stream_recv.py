"""Publisher-side receive statistics for one SSRC (RFC 3550 appendix A.1, A.3, A.8).

Feed primary-stream packets and RTX repairs once unwrapped (a repair fills its gap):
loss then reflects the network, as the RR the publisher's congestion control reads
expects. This is the receive path's one duplicate filter: a seq seen within the last
``DUP_WINDOW`` is not counted twice (``cumulative_lost`` never goes negative because
of a duplicating link) and ``on_packet`` returns None for it, so the caller drops it.

It is also where a sequence number that jumps is stopped (RFC 3550 A.1): a packet
more than ``MAX_DROPOUT`` ahead of the newest is dropped unless the next packet follows
it (then the sender's numbering moved and is followed), and one more than
``MAX_MISORDER`` behind is always dropped (``SEQ_JUMP``). Forwarded, such a packet
would land behind the subscriber's SRTP replay window and fail there, far from its
cause; a numbering that moved back is followed again once it is ahead of the newest.

Per packet: one unwrap, a ring-slot check, a few float operations, a bucketed rate
add; no allocation.
"""

from __future__ import annotations

from aiortc.rtp import RtcpReceiverInfo, clamp_packets_lost

from media.rtp.rate import RateCounter
from media.wire.seqnum import SEQ_MOD, Unwrapper

__all__ = ["RtpStreamRecv"]

# Seqs remembered for duplicate detection (a power of two): seconds of video at 1 Mbit/s.
DUP_WINDOW = 2048
# A forward jump larger than this needs a second, consecutive packet (RFC 3550 A.1).
MAX_DROPOUT = 3000
# Late by more than this (a NACK repair or reordering is seconds of video at most) is
# dropped: forwarded, it would fall behind the subscriber's SRTP window (1024).
MAX_MISORDER = 512
# What `on_packet` returns for a packet dropped for a sequence jump.
SEQ_JUMP = -1


class RtpStreamRecv:
    """Sequence, loss, jitter and bitrate bookkeeping; builds RR report blocks."""

    __slots__ = (
        "ssrc",
        "clock_rate",
        "_unwrapper",
        "_base",
        "_max",
        "_seen",
        "_ts_per_ms",
        "_last_arrival_ms",
        "_last_rtp_ts",
        "_jitter",
        "_expected_prior",
        "_received_prior",
        "_lsr",
        "_lsr_ms",
        "_rate",
        "_loss_window_ms",
        "_loss_snap_ms",
        "_loss_snap_expected",
        "_loss_snap_received",
        "loss_rate",
        "packets_received",
        "bytes_received",
        "duplicates",
        "seq_jumps",
        "_probation",
    )

    def __init__(self, ssrc: int, clock_rate: int, *, loss_window_ms: float = 1000.0) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock_rate must be > 0, got {clock_rate!r}")
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self._unwrapper = Unwrapper(SEQ_MOD)
        self._base: int | None = None
        self._max = 0
        self._seen: list[int] = [-1] * DUP_WINDOW
        self._ts_per_ms = clock_rate / 1000.0
        self._last_arrival_ms = 0.0
        self._last_rtp_ts = 0
        self._jitter = 0.0
        self._expected_prior = 0
        self._received_prior = 0
        self._lsr = 0
        self._lsr_ms = 0.0
        self._rate = RateCounter()
        self._loss_window_ms = loss_window_ms
        self._loss_snap_ms = 0.0
        self._loss_snap_expected = 0
        self._loss_snap_received = 0
        self.loss_rate = 0.0  # fraction lost over the last completed loss window
        self.packets_received = 0
        self.bytes_received = 0
        self.duplicates = 0
        self.seq_jumps = 0
        self._probation = -1  # the seq that would confirm the last forward jump

    # -- forward plane -------------------------------------------------------------

    def on_packet(self, seq: int, rtp_ts: int, arrival_ms: float, size: int) -> int | None:
        """Account one packet; returns its extended seq (for the NACK log, forwarding),
        None when it is a duplicate of one already accounted, or ``SEQ_JUMP``."""
        unwrapper = self._unwrapper
        highest = unwrapper.highest
        if highest is not None:
            delta = ((seq - highest + 0x8000) & 0xFFFF) - 0x8000
            if delta > MAX_DROPOUT:
                if seq != self._probation:
                    self._probation = (seq + 1) & 0xFFFF
                    self.seq_jumps += 1
                    return SEQ_JUMP
            elif delta < -MAX_MISORDER:
                self.seq_jumps += 1
                return SEQ_JUMP
            self._probation = -1
        ext = unwrapper.unwrap(seq)
        base = self._base
        if base is None:
            self._base = self._max = ext
            self._seen[ext & (DUP_WINDOW - 1)] = ext
            self._last_arrival_ms = arrival_ms
            self._last_rtp_ts = rtp_ts
            self._loss_snap_ms = arrival_ms
            self._count(size, arrival_ms)
            return ext
        slot = ext & (DUP_WINDOW - 1)
        if ext > self._max:
            self._seen[slot] = ext
            # RFC 3550 A.8, on in-order packets (reordered ones would add their
            # reordering delay to the jitter, as aiortc and libwebrtc avoid too).
            # seq_diff(rtp_ts, last, TS_MOD) inlined with a mask: this runs per packet.
            ts_delta = ((rtp_ts - self._last_rtp_ts + 0x8000_0000) & 0xFFFF_FFFF) - 0x8000_0000
            d = (arrival_ms - self._last_arrival_ms) * self._ts_per_ms - ts_delta
            if d < 0:
                d = -d
            self._jitter += (d - self._jitter) / 16.0
            self._last_arrival_ms = arrival_ms
            self._last_rtp_ts = rtp_ts
            self._max = ext
        elif self._max - ext < DUP_WINDOW:
            if self._seen[slot] == ext:
                self.duplicates += 1
                return None
            self._seen[slot] = ext
            if ext < base:
                self._base = ext
        elif ext < base:
            # Very late, from before the first packet: widen what we expected.
            self._base = ext
        self.packets_received += 1
        self.bytes_received += size
        self._rate.add(size, arrival_ms)
        if arrival_ms - self._loss_snap_ms >= self._loss_window_ms:
            self._roll_loss_window(arrival_ms)
        return ext

    def _count(self, size: int, arrival_ms: float) -> None:
        self.packets_received += 1
        self.bytes_received += size
        self._rate.add(size, arrival_ms)

    def _roll_loss_window(self, now_ms: float) -> None:
        expected = self.expected
        received = self.packets_received
        d_expected = expected - self._loss_snap_expected
        d_received = received - self._loss_snap_received
        if d_expected > 0:
            lost = d_expected - d_received
            self.loss_rate = min(1.0, max(0.0, lost / d_expected))
        self._loss_snap_ms = now_ms
        self._loss_snap_expected = expected
        self._loss_snap_received = received

    # -- derived values ----------------------------------------------------------------

    @property
    def expected(self) -> int:
        """Packets expected so far: highest - base + 1 (extended seqs)."""
        if self._base is None:
            return 0
        return self._max - self._base + 1

    @property
    def cumulative_lost(self) -> int:
        """Expected minus received (unclamped; the report block clamps it to 24 bits)."""
        return self.expected - self.packets_received

    @property
    def highest_ext_seq(self) -> int | None:
        """Highest extended seq as unwrapped locally (None before the first packet)."""
        return None if self._base is None else self._max

    @property
    def jitter(self) -> float:
        """Interarrival jitter in RTP timestamp units."""
        return self._jitter

    @property
    def jitter_ms(self) -> float:
        """Interarrival jitter in milliseconds."""
        return self._jitter / self._ts_per_ms

    def bitrate_bps(self, now_ms: float) -> float:
        """Received payload bitrate over the last second."""
        return self._rate.rate_bps(now_ms)

    # -- feedback plane --------------------------------------------------------------

    def on_sender_report(self, ntp_middle32: int, now_ms: float) -> None:
        """Remember the SR's compact NTP time and when it arrived (for LSR/DLSR)."""
        self._lsr = ntp_middle32 & 0xFFFFFFFF
        self._lsr_ms = now_ms

    def report_block(self, now_ms: float) -> RtcpReceiverInfo:
        """RR report block; starts a new interval for ``fraction_lost``."""
        expected = self.expected
        received = self.packets_received
        expected_interval = expected - self._expected_prior
        lost_interval = expected_interval - (received - self._received_prior)
        self._expected_prior = expected
        self._received_prior = received
        if expected_interval <= 0 or lost_interval <= 0:
            fraction = 0
        else:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        if self._base is None:
            highest = 0
        else:
            # The Unwrapper puts the first packet in cycle 1; the wire counts from 0.
            highest = (self._max - SEQ_MOD) & 0xFFFFFFFF
        if self._lsr:
            dlsr = min(0xFFFFFFFF, max(0, int((now_ms - self._lsr_ms) * 65.536)))
        else:
            dlsr = 0
        return RtcpReceiverInfo(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            packets_lost=clamp_packets_lost(expected - received),
            highest_sequence=highest,
            jitter=min(0xFFFFFFFF, int(self._jitter)),
            lsr=self._lsr,
            dlsr=dlsr,
        )
