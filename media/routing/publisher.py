"""The receiving side of a participant's publisher transport.

Per datagram, in order (STYLE habit 4): parse once -> latch SSRC to (track, layer)
from MID/RID/repaired-RID or SDP SSRCs -> record transport-wide seq -> unwrap RTX ->
stats + NACK log -> forward. Feedback toward the publisher (RR, NACK, PLI, TWCC)
is produced in `on_timer`, and REMB for a sender that takes no transport-wide feedback
(``media.bwe.remb``: its abs-send-time stamps, when it sends no transport-wide seq).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiortc.rtp import RtcpSrPacket

from media.bwe.remb import RembEstimator
from media.ortc import (
    EXT_ABS_SEND_TIME,
    EXT_AUDIO_LEVEL,
    EXT_MID,
    EXT_REPAIRED_RID,
    EXT_RID,
    EXT_TWCC,
)
from media.rtp.remote_clock import RemoteClock
from media.rtp.twcc import TwccRecorder
from media.stats import EngineStats
from media.transport.webrtc_transport import WebRtcTransport
from media.wire.rtcp import build_nack, build_pli, build_remb, build_rr, parse_rtcp
from media.wire.rtp import (
    RtpView,
    build_rtp_view,
    parse_audio_level,
    parse_rtp,
    parse_sdes_string,
    parse_twcc_seq,
    unwrap_rtx,
)

from .published_track import Layer, PublishedTrack

log = logging.getLogger("ferry.media.publisher")

RR_INTERVAL_MS = 1000.0


class PublisherPeer:
    """Receives one participant's published media and feeds its tracks."""

    def __init__(
        self,
        participant_sid: str,
        transport: WebRtcTransport,
        stats: EngineStats,
        *,
        rtcp_ssrc: int,
        ntp_at: Callable[[float], int],
        on_failed: Callable[[str], None] | None = None,
    ) -> None:
        self.participant_sid = participant_sid
        self.transport = transport
        self.stats = stats
        self.rtcp_ssrc = rtcp_ssrc
        self.ntp_at = ntp_at
        self.on_failed = on_failed
        self.tracks_by_mid: dict[str, PublishedTrack] = {}
        self._ssrc_map: dict[int, tuple[Layer, bool]] = {}
        self._ext_mid: int | None = None
        self._ext_rid: int | None = None
        self._ext_rrid: int | None = None
        self._ext_twcc: int | None = None
        self._ext_audio_level: int | None = None
        self.twcc: TwccRecorder | None = None
        self._ext_abs: int | None = None
        self.remb: RembEstimator | None = None
        self.clock = RemoteClock()  # its reports' NTP time on Ferry's clock
        self._next_rr_ms = 0.0
        self.connected = False
        transport.listener = self

    # -- configuration ---------------------------------------------------------------
    def set_extensions(self, ids: dict[str, int]) -> None:
        """Extension ids of the publisher's BUNDLE (one id per URI across m-lines)."""
        self._ext_mid = ids.get(EXT_MID)
        self._ext_rid = ids.get(EXT_RID)
        self._ext_rrid = ids.get(EXT_REPAIRED_RID)
        self._ext_audio_level = ids.get(EXT_AUDIO_LEVEL)
        twcc = ids.get(EXT_TWCC)
        if twcc != self._ext_twcc:
            self._ext_twcc = twcc
            self.twcc = TwccRecorder(self.rtcp_ssrc, 0) if twcc else None
        # A sender that stamps abs-send-time but no transport-wide seq estimates nothing
        # itself (aiortc): Ferry estimates its uplink and tells it by REMB.
        abs_id = ids.get(EXT_ABS_SEND_TIME) if not twcc else None
        if abs_id != self._ext_abs:
            self._ext_abs = abs_id
            self.remb = RembEstimator() if abs_id else None

    def add_track(self, track: PublishedTrack, ssrcs: list[tuple[int | None, int | None]]) -> None:
        """Register a track; `ssrcs` are (primary, rtx) per layer when the SDP names them."""
        track.audio_level_ext_id = self._ext_audio_level
        self.tracks_by_mid[track.mid] = track
        for layer, (ssrc, rtx) in zip(track.layers, ssrcs, strict=False):
            if ssrc is not None:
                layer.bind_ssrc(ssrc)
                self._ssrc_map[ssrc] = (layer, False)
            if rtx is not None:
                layer.rtx_ssrc = rtx
                self._ssrc_map[rtx] = (layer, True)

    def remove_track(self, mid: str) -> PublishedTrack | None:
        track = self.tracks_by_mid.pop(mid, None)
        if track is not None:
            self._ssrc_map = {k: v for k, v in self._ssrc_map.items() if v[0].track is not track}
            track.close()
        return track

    # -- TransportListener -----------------------------------------------------------
    def on_transport_connected(self, now_ms: float) -> None:
        self.connected = True

    def on_transport_failed(self, reason: str) -> None:
        if self.on_failed is not None:
            self.on_failed(reason)

    def on_rtp(self, data: bytes, now_ms: float) -> None:
        stats = self.stats
        stats.rtp_in += 1
        stats.rtp_bytes_in += len(data)
        # Extension elements are parsed on demand and raise ValueError when one runs
        # past the block: every read here is inside the try, so such a packet is a
        # counted drop before anything downstream (DownTrack reads the same elements).
        try:
            view = parse_rtp(data)
            entry = self._ssrc_map.get(view.ssrc)
            if entry is None:
                entry = self._latch(view)
                if entry is None:
                    stats.drop("rtp_unknown_ssrc")
                    return
            value = view.extension(self._ext_twcc) if self.twcc is not None and self._ext_twcc else None
            sent_at = view.extension(self._ext_abs) if self.remb is not None and self._ext_abs else None
            level = None
            if self._ext_audio_level and not entry[1] and entry[0].track.kind == "audio":
                level = view.extension(self._ext_audio_level)
        except ValueError:
            stats.drop("rtp_malformed")
            return
        if self.twcc is not None:
            if value is not None and len(value) == 2:
                if self.twcc.media_ssrc == 0:
                    # Chrome ignores transport-wide feedback naming media SSRC 0.
                    self.twcc.media_ssrc = view.ssrc
                self.twcc.record(parse_twcc_seq(value), now_ms)
        if sent_at is not None and len(sent_at) == 3 and self.remb is not None:
            self.remb.on_packet(int.from_bytes(sent_at, "big"), now_ms, len(data))
        layer, is_rtx = entry
        track = layer.track
        if track.closed:
            return
        if is_rtx:
            if view.payload_end - view.payload_start < 2:
                stats.drop("rtx_padding")  # bandwidth probes: nothing to forward
                return
            try:
                osn, payload = unwrap_rtx(view)
            except ValueError:
                stats.drop("rtx_malformed")
                return
            if layer.ssrc is None:
                return
            view = build_rtp_view(
                payload_type=track.codec.payload_type,
                seq=osn,
                timestamp=view.timestamp,
                ssrc=layer.ssrc,
                payload=payload,
                marker=view.marker,
            )
        elif level:
            voice, dbov = parse_audio_level(level)
            track.audio_level.update(dbov, voice, now_ms)
        layer.on_packet(view, now_ms, is_rtx)

    def _latch(self, view: RtpView) -> tuple[Layer, bool] | None:
        """Learn which track/layer an unknown SSRC belongs to (Chrome simulcast: no a=ssrc)."""
        track = None
        if self._ext_mid:
            value = view.extension(self._ext_mid)
            if value:
                try:
                    track = self.tracks_by_mid.get(parse_sdes_string(value))
                except ValueError:
                    return None
        if track is None:
            candidates = [
                t
                for t in self.tracks_by_mid.values()
                if view.payload_type in (t.codec.payload_type, t.codec.rtx_payload_type, t.red_pt)
            ]
            if len(candidates) != 1:
                return None
            track = candidates[0]
        is_rtx = view.payload_type == track.codec.rtx_payload_type
        layer: Layer | None = None
        if track.simulcast:
            rid = None
            for ext_id, rtx in ((self._ext_rid, False), (self._ext_rrid, True)):
                value = view.extension(ext_id) if ext_id else None
                if value:
                    try:
                        rid = parse_sdes_string(value)
                    except ValueError:
                        return None
                    is_rtx = is_rtx or rtx
                    break
            if rid is None:
                return None
            layer = track.layer_by_rid(rid)
        else:
            layer = track.layers[0]
        if layer is None:
            return None
        if is_rtx:
            layer.rtx_ssrc = view.ssrc
        else:
            if layer.ssrc is not None and layer.ssrc in self._ssrc_map:
                del self._ssrc_map[layer.ssrc]
            layer.bind_ssrc(view.ssrc)
        entry = (layer, is_rtx)
        self._ssrc_map[view.ssrc] = entry
        log.debug("latched ssrc %d to %s/%s rtx=%s", view.ssrc, track.mid, layer.rid, is_rtx)
        return entry

    def on_rtcp(self, data: bytes, now_ms: float) -> None:
        try:
            packets = parse_rtcp(data)
        except ValueError:
            self.stats.drop("rtcp_malformed")
            return
        for packet in packets:
            if isinstance(packet, RtcpSrPacket):
                entry = self._ssrc_map.get(packet.ssrc)
                if entry is not None and not entry[1] and entry[0].stream is not None:
                    info = packet.sender_info
                    at_ms = self.clock.on_sender_report(info.ntp_timestamp, now_ms)
                    entry[0].on_sender_report(info.ntp_timestamp, info.rtp_timestamp, now_ms, at_ms)

    def send_pli(self, media_ssrc: int) -> None:
        self.transport.send_rtcp(build_pli(self.rtcp_ssrc, media_ssrc))

    # -- timers ------------------------------------------------------------------------
    def on_timer(self, now_ms: float) -> None:
        if self.transport.srtp is None:
            return
        send = self.transport.send_rtcp
        for track in self.tracks_by_mid.values():
            track.on_timer(now_ms)
            for layer in track.layers:
                if layer.ssrc is None:
                    continue
                deadline = layer.nack.next_deadline()
                if deadline is not None and deadline <= now_ms:
                    seqs = layer.nack.poll(now_ms)
                    if seqs:
                        self.stats.nack_sent += len(seqs)
                        send(build_nack(self.rtcp_ssrc, layer.ssrc, seqs))
                if layer.nack.take_keyframe_needed():
                    layer.request_keyframe(now_ms)
        twcc = self.twcc
        if twcc is not None:
            deadline = twcc.next_deadline()
            if deadline is not None and deadline <= now_ms:
                for packet in twcc.build_feedback(now_ms):
                    send(packet)
        bps = self.remb.due(now_ms) if self.remb is not None else None
        if bps is not None:
            ssrcs = [
                layer.ssrc
                for track in self.tracks_by_mid.values()
                if track.kind == "video"
                for layer in track.layers
                if layer.ssrc is not None
            ]
            if ssrcs:
                send(build_remb(self.rtcp_ssrc, bps, ssrcs))
        if now_ms >= self._next_rr_ms:
            self._next_rr_ms = now_ms + RR_INTERVAL_MS
            reports = [
                layer.stream.report_block(now_ms)
                for track in self.tracks_by_mid.values()
                for layer in track.layers
                if layer.stream is not None
            ]
            for i in range(0, len(reports), 31):
                send(build_rr(self.rtcp_ssrc, reports[i : i + 31]))

    def close(self) -> None:
        for mid in list(self.tracks_by_mid):
            self.remove_track(mid)
        self.transport.close()
