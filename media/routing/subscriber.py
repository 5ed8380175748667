"""The sending side of a participant's subscriber transport.

Holds the participant's DownTracks, stamps transport-wide sequence numbers on
everything sent, answers RTCP from the subscriber (NACK -> RTX cache, PLI/FIR ->
coalesced keyframe request upstream, RR -> RTT/loss, TWCC -> send history for the
bandwidth estimator) and sends sender reports.
"""

from __future__ import annotations

from collections.abc import Callable

from aiortc.rtp import RtcpPsfbPacket, RtcpRrPacket, RtcpRtpfbPacket, RtcpSrPacket

from media.rtp.twcc import TwccFeedback, TwccSendHistory
from media.stats import EngineStats
from media.transport.webrtc_transport import WebRtcTransport
from media.wire.rtcp import Fir, build_sdes_cname, build_sr, nack_seqs, parse_rtcp

from .down_track import DownTrack

SR_INTERVAL_MS = 1000.0


class SubscriberPeer:
    """Sends media to one participant."""

    def __init__(
        self,
        participant_sid: str,
        transport: WebRtcTransport,
        stats: EngineStats,
        *,
        rtcp_ssrc: int,
        cname: str,
        ntp_at: Callable[[float], int],
        on_failed: Callable[[str], None] | None = None,
    ) -> None:
        self.participant_sid = participant_sid
        self.transport = transport
        self.stats = stats
        self.rtcp_ssrc = rtcp_ssrc
        self.cname = cname
        self.ntp_at = ntp_at
        self.on_failed = on_failed
        self.down_tracks: dict[str, DownTrack] = {}  # by track sid
        self._by_ssrc: dict[int, DownTrack] = {}
        self._twcc_seq = 0
        self.send_history = TwccSendHistory()
        self.feedback_listeners: list[Callable[[list, float], None]] = []
        self._next_sr_ms = 0.0
        self.connected = False
        transport.listener = self

    # -- DownTracks ----------------------------------------------------------------
    def add_down_track(self, down: DownTrack) -> None:
        self.down_tracks[down.track.sid] = down
        self._by_ssrc[down.ssrc] = down
        if down.rtx_ssrc is not None:
            self._by_ssrc[down.rtx_ssrc] = down
        down.track.add_down_track(down)

    def remove_down_track(self, track_sid: str) -> DownTrack | None:
        down = self.down_tracks.pop(track_sid, None)
        if down is not None:
            self._by_ssrc = {k: v for k, v in self._by_ssrc.items() if v is not down}
            down.close()
        return down

    # -- DownTrackSink -------------------------------------------------------------
    def next_twcc_seq(self) -> int:
        self._twcc_seq += 1
        return self._twcc_seq & 0xFFFF

    def send_rtp(self, packet: bytes, size: int, now_ms: float) -> None:
        self.send_history.on_sent(self._twcc_seq, now_ms, size)
        stats = self.stats
        stats.rtp_out += 1
        stats.rtp_bytes_out += size
        self.transport.send_rtp(packet)

    # -- TransportListener -----------------------------------------------------------
    def on_transport_connected(self, now_ms: float) -> None:
        self.connected = True
        for down in self.down_tracks.values():
            down.request_keyframe(now_ms)

    def on_transport_failed(self, reason: str) -> None:
        if self.on_failed is not None:
            self.on_failed(reason)

    def on_rtp(self, data: bytes, now_ms: float) -> None:
        self.stats.drop("rtp_on_subscriber_transport")

    def on_rtcp(self, data: bytes, now_ms: float) -> None:
        try:
            packets = parse_rtcp(data)
        except ValueError:
            self.stats.drop("rtcp_malformed")
            return
        for packet in packets:
            self._handle_rtcp(packet, now_ms)

    def _handle_rtcp(self, packet: object, now_ms: float) -> None:
        stats = self.stats
        if isinstance(packet, TwccFeedback):
            results = self.send_history.on_feedback(packet, now_ms)
            for listener in self.feedback_listeners:
                listener(results, now_ms)
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == 1:
            down = self._by_ssrc.get(packet.media_ssrc)
            if down is None:
                return
            seqs = nack_seqs(packet)
            stats.nack_received += len(seqs)
            sent = down.on_nack(seqs, now_ms)
            stats.rtx_sent += sent
            stats.rtx_missed += len(seqs) - sent
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == 1:
            down = self._by_ssrc.get(packet.media_ssrc)
            if down is not None:
                stats.pli_received += 1
                down.request_keyframe(now_ms)
        elif isinstance(packet, Fir):
            for ssrc, _seqnr in packet.entries:
                down = self._by_ssrc.get(ssrc)
                if down is not None:
                    stats.pli_received += 1
                    down.request_keyframe(now_ms)
        elif isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            ntp_mid = (self.ntp_at(now_ms) >> 16) & 0xFFFFFFFF
            for report in packet.reports:
                down = self._by_ssrc.get(report.ssrc)
                if down is not None:
                    down.stream.on_report_block(report, now_ms, ntp_mid)

    # -- timers ----------------------------------------------------------------------
    def on_timer(self, now_ms: float) -> None:
        if self.transport.srtp is None:
            return
        for down in self.down_tracks.values():
            down.on_timer(now_ms)
        if now_ms >= self._next_sr_ms:
            self._next_sr_ms = now_ms + SR_INTERVAL_MS
            self._send_sender_reports(now_ms)

    def _send_sender_reports(self, now_ms: float) -> None:
        ntp = self.ntp_at(now_ms)
        chunk = b""
        for down in self.down_tracks.values():
            if down.stream.packets_sent == 0:
                continue
            info = down.stream.sender_report_info(now_ms, ntp)
            chunk += build_sr(
                down.ssrc,
                info.ntp_timestamp,
                info.rtp_timestamp,
                info.packet_count,
                info.octet_count,
            ) + build_sdes_cname(down.ssrc, self.cname)
            if len(chunk) > 1000:
                self.transport.send_rtcp(chunk)
                chunk = b""
        if chunk:
            self.transport.send_rtcp(chunk)

    def close(self) -> None:
        for sid in list(self.down_tracks):
            self.remove_down_track(sid)
        self.transport.close()
