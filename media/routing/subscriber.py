"""The sending side of a participant's subscriber transport.

Holds the participant's DownTracks, stamps transport-wide sequence numbers on
everything sent, answers RTCP from the subscriber (NACK -> RTX cache, PLI/FIR ->
coalesced keyframe request upstream, RR -> RTT/loss, TWCC -> send history for the
bandwidth estimator) and sends sender reports.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from aiortc.rtp import RtcpPsfbPacket, RtcpRrPacket, RtcpRtpfbPacket, RtcpSrPacket

from media.bwe.estimator import GccEstimator
from media.bwe.pacer import Pacer
from media.rtp.twcc import TwccFeedback, TwccSendHistory
from media.stats import EngineStats
from media.transport.webrtc_transport import WebRtcTransport
from media.wire.rtcp import Fir, Remb, build_sdes_cname, build_sr, nack_seqs, parse_rtcp

from .allocator import (
    PRIO_AUDIO,
    PRIO_SCREEN,
    PRIO_SPEAKER,
    PRIO_VIDEO,
    Allocator,
    AllocTrack,
)
from .down_track import TWCC_OFFSET, DownTrack, StreamContinuity

SR_INTERVAL_MS = 1000.0
ALLOCATE_INTERVAL_MS = 500.0
START_BPS = 1_000_000
AUDIO_BPS = 48_000.0
RESEND_MEMORY = 2048  # audio packets whose transport-wide seq is kept (~40 s of one track)
DESIRED_HEADROOM = 1.3  # > allocator.UP_HEADROOM, so probing can unlock the next layer
# How far a video stream's timestamps jump ahead when it resumes after an outage (see
# _on_outage): past the 10 s beyond which libwebrtc finds a frame's render time bad
# and resets its video timing and jitter estimate.
OUTAGE_RESUME_TS_SKIP_MS = 15_000.0
# Padding asked for at or under this size (RTP padding holds 255 bytes) is padding alone;
# above it, a probe: a full-size RTX copy (see _padding_packet).
SMALL_PADDING_BYTES = 255


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
        schedule: Callable[[float, Callable[[], None]], object] | None = None,
    ) -> None:
        self.participant_sid = participant_sid
        self.transport = transport
        self.stats = stats
        self.rtcp_ssrc = rtcp_ssrc
        self.cname = cname
        self.ntp_at = ntp_at
        self.on_failed = on_failed
        self.down_tracks: dict[str, DownTrack] = {}  # by track sid
        # Where each removed DownTrack's stream stopped, by mid: the next one on that
        # m-line with the same SSRC continues it.
        self.ended_streams: dict[str, StreamContinuity] = {}
        self._by_ssrc: dict[int, DownTrack] = {}
        self._twcc_seq = 0
        self.send_history = TwccSendHistory()
        self._next_sr_ms = 0.0
        self.connected = False
        self.last_rtcp_ms: float | None = None  # for connection quality: a silent viewer is lost
        # Bandwidth: a GCC estimator once the subscriber negotiated transport-cc, else
        # its REMB if it sends one, else unlimited. The pacer runs only with GCC.
        self.estimator: GccEstimator | None = None
        self.pacer: Pacer | None = None
        self.remb_bps: int | None = None
        self.allocator = Allocator()
        self._next_alloc_ms = 0.0
        self._allocated_budget = 0.0
        self.speakers: set[str] = set()  # participant sids currently speaking (priority)
        self.on_track_paused: Callable[[str, bool], None] | None = None
        # Told when a DownTrack is gone, so the router can free its SSRCs.
        self.on_down_track_removed: Callable[[DownTrack], None] | None = None
        # One-shot timer at an engine time (ms) for the pacer's next send. Without it
        # the pacer drains on the 20 ms tick only: a probe cluster then leaves in 20 ms
        # bursts and can never measure more than ~1 Mbit/s.
        self.schedule = schedule
        self._pacer_timer_at: float | None = None
        self._outage = False  # the estimator's outage, as last seen (see _on_outage)
        self._last_audio_ms: float | None = None  # when audio last left (see _on_outage)
        self._twcc_id: int | None = None
        # The byte a packet starts its extensions with when the transport-wide seq
        # is its first one-byte extension (0: transport-cc not negotiated).
        self._twcc_marker = 0
        self.padding_sent = 0
        # Audio without RTX but with transport-cc: the transport-wide seq each packet
        # went out with, so a NACKed packet can go again as the same bytes. Keyed by
        # the packet's bytes 2..12 (seq, timestamp, SSRC), SSRCs as on the wire: one
        # slice per packet, no tuple and no int parsing on the forward path.
        self._resend_ssrcs: set[bytes] = set()
        self._sent_twcc: OrderedDict[bytes, int] = OrderedDict()
        self.audio_resent = 0
        transport.listener = self

    # -- DownTracks ----------------------------------------------------------------
    def enable_bwe(self, twcc_ext_id: int | None) -> None:
        """Turn on send-side estimation once the subscriber accepted transport-cc."""
        if twcc_ext_id is None or self.estimator is not None:
            return
        self._twcc_id = twcc_ext_id
        self._twcc_marker = (twcc_ext_id << 4) | 1
        self.estimator = GccEstimator(start_bps=START_BPS)
        self.pacer = Pacer(START_BPS)
        if self.send_target is not None:
            self.send_target.paced = True  # lanes build, the pacer sends (DownTrack.send_built)

    @property
    def send_target(self) -> object | None:
        """DownTrackSink: where lanes send this subscriber's packets from C
        (media.lanes), None on the Python send path."""
        return self.transport.send_target

    def estimate_bps(self, now_ms: float) -> float | None:
        if self.estimator is not None:
            return float(self.estimator.estimate_bps(now_ms))
        if self.remb_bps is not None:
            return float(self.remb_bps)
        return None

    def add_down_track(self, down: DownTrack) -> None:
        self.enable_bwe(down.twcc_ext_id)
        self.down_tracks[down.track.sid] = down
        self._by_ssrc[down.ssrc] = down
        if down.rtx_ssrc is not None:
            self._by_ssrc[down.rtx_ssrc] = down
        elif not down.is_video and down.twcc_ext_id:
            self._resend_ssrcs.add(down.ssrc.to_bytes(4, "big"))
        down.track.add_down_track(down)

    def remove_down_track(self, track_sid: str) -> DownTrack | None:
        down = self.down_tracks.pop(track_sid, None)
        if down is not None:
            self.ended_streams[down.mid] = down.continuity()
            self._by_ssrc = {k: v for k, v in self._by_ssrc.items() if v is not down}
            self._resend_ssrcs.discard(down.ssrc.to_bytes(4, "big"))
            self.allocator.forget(track_sid)
            down.close()
            if self.on_down_track_removed is not None:
                self.on_down_track_removed(down)
        return down

    # -- DownTrackSink -------------------------------------------------------------
    def send_rtp(self, packet: bytes, kind: str, now_ms: float) -> None:
        pacer = self.pacer
        if pacer is None or pacer.try_send_now(len(packet), kind, now_ms):
            self._transmit(packet, kind, now_ms)
            return
        pacer.enqueue(packet, len(packet), kind, now_ms)
        self._drain(now_ms)

    def _drain(self, now_ms: float) -> None:
        pacer = self.pacer
        assert pacer is not None
        est = self.estimator
        if est is not None:
            outage = est.set_pacer_window(pacer, now_ms)
            if outage != self._outage:
                self._on_outage(outage, now_ms)
        for item in pacer.pop(now_ms, self._padding_packet):
            packet = item.packet
            if packet is None:
                continue
            seq = self._transmit(packet, item.kind, now_ms)
            if item.probe_id is not None and self.estimator is not None and seq is not None:
                self.estimator.on_probe_sent(item.probe_id, seq, len(packet), now_ms)
        when = pacer.next_send_time(now_ms)
        if when is not None and self.schedule is not None:
            if self._pacer_timer_at is None or when < self._pacer_timer_at:
                self._pacer_timer_at = when
                self.schedule(when, self._on_pacer_timer)

    def _on_outage(self, active: bool, now_ms: float) -> None:
        """Video stops while the link is out and starts again on a keyframe when it returns,
        its timestamps jumped ahead by ``OUTAGE_RESUME_TS_SKIP_MS``.

        Video forwarded into the outage would wait in the pacer and reach the viewer
        seconds late, after the frames it references were shed: undecodable until a
        keyframe anyway. Paused, the selector resumes on the next keyframe of the target
        layer, asked for the moment feedback is back.

        The frames sent in the round trip before the outage could be told still wait
        it out in the bottleneck and arrive ~2 s late; Chrome maps RTP timestamps to
        local time from arrivals, so they shift its mapping and every frame after them
        waits in its jitter buffer (live, 3G profile: 400-700 ms for 2-3 s after each
        outage, against a minimum delay of 30-70 ms). The timestamp jump makes the
        resumed keyframe's render time lie over 10 s away, and Chrome starts its timing
        afresh from it (measured: 10-120 ms of jitter buffer in the 2 s after the outage).
        Sender reports follow the rewritten timestamps, so lip sync holds.

        The audio sent in that round trip arrives in the same burst, and Chrome's audio
        jitter buffer plays every packet of it: audio resumed at once would stay that
        late for seconds (300-450 ms of audio jitter buffer after the outage, shed over
        4 s and more). So audio resumes only once the receiver has about played the
        burst: what was sent between the oldest packet the outage caught and the last
        audio, less the round trip the receiver has been playing it before its
        feedback came back (then 110-180 ms).
        """
        self._outage = active
        self.transport.set_link_out(active, now_ms)
        est = self.estimator
        assert est is not None and self.pacer is not None
        self.pacer.on_outage(active, now_ms, est.in_flight.oldest_send_ms(), self._last_audio_ms, est.rtt_ms)
        self.allocate(now_ms)
        if not active:
            for down in self.down_tracks.values():
                if down.is_video:
                    # also a track that stays paused: the late frames reached it too
                    down.rewriter.skip_ahead(OUTAGE_RESUME_TS_SKIP_MS)
                    if down.selector.active:
                        down.request_keyframe(now_ms)

    def _on_pacer_timer(self) -> None:
        self._pacer_timer_at = None
        if self.pacer is not None and not self.transport.state == "closed":
            self._drain(self.transport.mux.now_ms())

    def _transmit(self, packet: bytes, kind: str, now_ms: float) -> int | None:
        """Stamp the transport-wide seq (at send time, for the estimator) and send."""
        stats = self.stats
        size = len(packet)
        stats.rtp_out += 1
        stats.rtp_bytes_out += size
        marker = self._twcc_marker
        if marker and size > TWCC_OFFSET + 2 and packet[16] == marker:
            seq = self._twcc_seq = self._twcc_seq + 1
            self.send_history.on_sent(seq, now_ms, size)
            estimator = self.estimator
            if estimator is not None:
                estimator.on_packet_sent(seq, size, now_ms)
            if kind == "audio":
                self._last_audio_ms = now_ms
                if packet[8:12] in self._resend_ssrcs:
                    sent = self._sent_twcc
                    sent[packet[2:12]] = seq
                    if len(sent) > RESEND_MEMORY:
                        sent.popitem(last=False)
            # Stamped in the copy SRTP encrypts: `packet` (also in the RTX cache) keeps
            # its placeholder.
            self.transport.send_rtp(packet, TWCC_OFFSET, seq)
            return seq
        self.transport.send_rtp(packet)
        return None

    def resend_rtp(self, packet: bytes, now_ms: float) -> bool:
        """DownTrackSink: ``packet`` again with the transport-wide seq it first had."""
        seq = self._sent_twcc.get(packet[2:12])
        if seq is None:
            return False
        self.stats.rtp_out += 1
        self.stats.rtp_bytes_out += len(packet)
        self.audio_resent += 1
        self.transport.send_rtp(packet, TWCC_OFFSET, seq)
        return True

    def _padding_packet(self, size: int) -> bytes | None:
        """A packet on an RTX SSRC that only has to reach the receiver.

        For a probe (``size`` over ``SMALL_PADDING_BYTES``), a recent full-size video
        packet again, as Chrome does (harmless to the receiver); None when no track has
        one: probes start only once video flows (``on_timer``), and RTP padding (<= 255
        bytes) would measure the receiver's per-packet cost, not the link; the pacer
        then abandons the cluster. For the packet that leaves past a full window, or
        every 200 ms of an outage, only to draw feedback: padding alone, so what waits
        out an outage in the bottleneck is ~200 bytes a time, not a full packet.
        """
        if self._twcc_id is None:
            return None
        if size <= SMALL_PADDING_BYTES:
            down = next((d for d in self.down_tracks.values() if d.rtx_ssrc is not None), None)
            made = down.rtx_padding(size) if down is not None else None
        else:
            down = next((d for d in self.down_tracks.values() if d.can_probe), None)
            made = down.rtx_probe() if down is not None else None
        if made is not None:
            self.padding_sent += 1
        return made

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
        self.last_rtcp_ms = now_ms
        try:
            packets = parse_rtcp(data)
        except ValueError:
            self.stats.drop("rtcp_malformed")
            return
        for packet in packets:
            self._handle_rtcp(packet, now_ms)

    def _handle_rtcp(self, packet: object, now_ms: float) -> None:
        if isinstance(packet, TwccFeedback):
            self._on_twcc(packet, now_ms)
        elif isinstance(packet, Remb):
            self.remb_bps = packet.bitrate
        elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == 1:
            self._on_nack(packet, now_ms)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == 1:
            self._keyframe_for(packet.media_ssrc, now_ms)
        elif isinstance(packet, Fir):
            for ssrc, _seqnr in packet.entries:
                self._keyframe_for(ssrc, now_ms)
        elif isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            self._on_reports(packet.reports, now_ms)

    def _on_twcc(self, feedback: TwccFeedback, now_ms: float) -> None:
        results = self.send_history.on_feedback(feedback, now_ms)
        est = self.estimator
        if est is None:
            return
        est.outage.on_feedback_count(feedback.fb_pkt_count, now_ms)
        if results:
            est.on_packet_results(results, now_ms)
            estimate = est.estimate_bps(now_ms)
            if self.pacer is not None:
                self.pacer.set_rate(estimate, now_ms)
                self._drain(now_ms)  # the feedback may have opened the congestion window
            if estimate < 0.85 * self._allocated_budget:
                self.allocate(now_ms)  # a drop: shed layers now, not at the next round

    def _on_nack(self, packet: RtcpRtpfbPacket, now_ms: float) -> None:
        down = self._by_ssrc.get(packet.media_ssrc)
        if down is None:
            return
        seqs = nack_seqs(packet)
        stats = self.stats
        stats.nack_received += len(seqs)
        sent = down.on_nack(seqs, now_ms)
        stats.rtx_sent += sent
        stats.rtx_missed += len(seqs) - sent

    def _keyframe_for(self, ssrc: int, now_ms: float) -> None:
        down = self._by_ssrc.get(ssrc)
        if down is not None:
            self.stats.pli_received += 1
            down.request_keyframe(now_ms)

    def _on_reports(self, reports: list, now_ms: float) -> None:
        ntp_mid = (self.ntp_at(now_ms) >> 16) & 0xFFFFFFFF
        for report in reports:
            down = self._by_ssrc.get(report.ssrc)
            if down is None:
                continue
            down.stream.on_report_block(report, now_ms, ntp_mid)
            rtt = down.stream.rtt_ms
            if rtt is not None and self.estimator is not None:
                self.estimator.on_rtt(rtt, now_ms)

    # -- timers ----------------------------------------------------------------------
    def on_timer(self, now_ms: float) -> None:
        self.send_history.prune(now_ms)
        if self.transport.srtp is not None:
            self._on_connected_timer(now_ms)
        # After the allocation, each track targets the best layer the publisher sends
        # within it (also before the transport is up: the first keyframe asked for at
        # connection is then the right layer's).
        for down in self.down_tracks.values():
            down.select_layer(now_ms)

    def _on_connected_timer(self, now_ms: float) -> None:
        for down in self.down_tracks.values():
            down.on_timer(now_ms)
        if now_ms >= self._next_alloc_ms:
            self._next_alloc_ms = now_ms + ALLOCATE_INTERVAL_MS
            self.allocate(now_ms)
        if self.estimator is not None and self.pacer is not None:
            # Probe only once video flows: RTX copies of real packets are full-size,
            # RTP padding (<= 255 bytes) would measure per-packet cost, not the link.
            for down in self.down_tracks.values():
                if down.can_probe:
                    cluster = self.estimator.next_probe(now_ms)
                    if cluster is not None:
                        self.pacer.start_probe(cluster, now_ms)
                    break
            self._drain(now_ms)
        if now_ms >= self._next_sr_ms:
            self._next_sr_ms = now_ms + SR_INTERVAL_MS
            self._send_sender_reports(now_ms)

    def allocate(self, now_ms: float) -> None:
        """Split the estimate over the DownTracks (audio, screen, speaker, rest)."""
        budget = self.estimate_bps(now_ms)
        if budget is not None and self._outage:
            budget = 0.0  # audio only (never starved): see _on_outage
        elif budget is not None and self.pacer is not None:
            # A backlog held by the congestion window drains only if less is forwarded.
            budget *= self.pacer.pushback(now_ms)
        tracks: list[AllocTrack] = []
        for sid, down in self.down_tracks.items():
            track = down.track
            selector = down.selector
            if not selector.enabled:
                continue  # hidden by the subscriber: its share goes to the others
            if track.kind == "audio":
                tracks.append(AllocTrack(sid, "audio", PRIO_AUDIO, [AUDIO_BPS], 0, 0))
                continue
            if track.source == "screen":
                prio = PRIO_SCREEN
            elif track.participant_sid in self.speakers:
                prio = PRIO_SPEAKER
            else:
                prio = PRIO_VIDEO
            current = None if selector.paused else selector.allocated
            prices = track.update_layer_prices(now_ms)
            tracks.append(AllocTrack(sid, "video", prio, prices, selector.max_layer, current))
        if budget is None:
            for down in self.down_tracks.values():
                if down.selector.enabled:
                    self._allocate(down, down.selector.max_layer)
            return
        self._allocated_budget = budget
        allocation = self.allocator.allocate(budget, tracks, now_ms)
        if self.estimator is not None:
            # Probe past what the layers need: going up requires the allocator's headroom.
            self.estimator.set_desired_bps(allocation.wanted_bps * DESIRED_HEADROOM)
        for sid, layer in allocation.layers.items():
            down = self.down_tracks[sid]
            if down.is_video:
                self._allocate(down, layer)

    def _allocate(self, down: DownTrack, layer: int | None) -> None:
        """Give `down` its layer (None: pause it); a pause or resume is told."""
        if down.selector.set_allocation(layer) and self.on_track_paused is not None:
            self.on_track_paused(down.track.sid, layer is None)

    def bwe_stats(self, now_ms: float) -> dict[str, object]:
        out: dict[str, object] = {"estimate_bps": self.estimate_bps(now_ms)}
        if self.estimator is not None:
            out.update(self.estimator.stats())
        if self.pacer is not None:
            out["pacer_queue_ms"] = self.pacer.queue_delay_ms(now_ms)
        return out

    def _send_sender_reports(self, now_ms: float) -> None:
        ntp = self.ntp_at(now_ms)
        chunk = b""
        for down in self.down_tracks.values():
            if down.stream.packets_sent == 0:
                continue
            info = down.stream.sender_report_info(now_ms, ntp, down.capture_timestamp(now_ms))
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
