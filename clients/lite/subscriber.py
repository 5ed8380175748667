"""The lite subscriber: counts what Ferry forwards and sends the feedback a browser would."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field
from typing import Any

from aiortc.rtp import RtcpReceiverInfo, RtcpSrPacket

from media.ortc import EXT_TWCC, SessionDescription
from media.rtp.nack import NackGenerator
from media.rtp.ntp import ntp_middle32
from media.rtp.twcc import TwccRecorder
from media.transport.certificate import Certificate
from media.wire.rtcp import build_nack, build_pli, build_rr
from media.wire.rtp import parse_rtp
from media.wire.seqnum import SEQ_MOD, seq_diff

from .clips import is_descriptor_keyframe
from .transport import CandidateRewrite, LiteTransport

__all__ = ["LiteSubscriber", "RecvCounters"]

RR_INTERVAL_MS = 1000.0
MAX_TRACKED_GAP = 2000  # larger seq jumps are counted lost outright, not remembered

_SSRC = struct.Struct("!I")


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
            return seq + SEQ_MOD
        return highest + seq_diff(seq, highest)

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


class LiteSubscriber(LiteTransport):
    """The subscriber PC: counts what Ferry forwards and sends the feedback a browser would.

    The per-packet path is deliberately small (no decode, no allocation beyond the
    decrypted packet): unprotect, read SSRC/seq, update counters, and look at the VP8
    descriptor only on the first packet of a frame to spot keyframes. NACKs (if
    ``nack``) and RRs (every second, with LSR/DLSR so Ferry gets an RTT) are produced
    from the 20 ms timer, TWCC feedback (if ``twcc`` and negotiated) every 50 ms.
    """

    def __init__(
        self,
        certificate: Certificate,
        *,
        nack: bool,
        twcc: bool,
        name: str = "subscriber",
        candidate_rewrite: CandidateRewrite | None = None,
    ) -> None:
        super().__init__(name, certificate, candidate_rewrite=candidate_rewrite)
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
            end = len(packet) - (packet[-1] if b0 & 0x20 else 0)  # RTP padding (P bit)
            if end < offset + 2:
                return  # padding only: a probe, or what draws feedback past a full window
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
        for p in self.rtcp_packets(packet):
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
