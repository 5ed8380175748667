"""One subscriber's copy of one published track.

The DownTrack *acts*: it builds each outgoing packet (SSRC, payload type, Ferry's own
header extensions, and through its `StreamRewriter` sequence number, timestamp and VP8
picture id / TL0PICIDX continuous whatever layer is forwarded), keeps the
retransmission cache, and answers NACK and PLI. Which layer to forward, and whether
to forward at all, is its `LayerSelector`'s decision (`selector`), fed by the
allocator, the subscriber's settings and the engine tick.
"""

from __future__ import annotations

import random
import struct
from collections import deque
from typing import TYPE_CHECKING, Protocol

from media.audio.duplicates import COPY_OFFSETS, AudioDuplicates
from media.audio.red_encoder import RedEncoder
from media.lanes import DownTrackState, Lane
from media.rtp.rtx import new_rtx_cache
from media.rtp.stream_send import RtpStreamSend
from media.transport.udp_mux import SEND_PATH
from media.wire.red import parse_red
from media.wire.rtp import RtpView, build_padding_only, wrap_rtx
from media.wire.vp8 import Vp8Descriptor

from .layer_selector import DROP, FORWARD, SWITCH, LayerSelector
from .rewriter import StreamContinuity, StreamRewriter

if TYPE_CHECKING:
    from .published_track import Layer, PublishedTrack

__all__ = ["TWCC_OFFSET", "DownTrack", "DownTrackSink", "StreamContinuity"]


_HEADER = struct.Struct("!BBHII")

# Where the transport-wide seq sits in packets built with it as the first one-byte
# extension and no CSRCs: 12-byte header + 4-byte extension header + 1-byte id/len.
TWCC_OFFSET = 17


# Audio extension blocks by (layout, level ext id), then by level byte: a few layouts
# (the negotiated ids), at most 256 blocks each.
_AUDIO_BLOCKS: dict[tuple[bytes, int | None], dict[int, bytes]] = {}

PROBE_PACKET_MAX_AGE_MS = 1000.0  # a probe packet is replaced by a smaller one after this
NACK_LOSS_PACKETS = 50  # audio: loss before repair is measured over this many packets


class DownTrackSink(Protocol):
    """The subscriber transport side a DownTrack sends through."""

    def send_rtp(self, packet: bytes, kind: str, now_ms: float) -> None: ...

    def resend_rtp(self, packet: bytes, now_ms: float) -> bool:
        """Send ``packet`` again exactly as it first went out (same transport-wide seq:
        the same bytes under the same SRTP index); False when that is not known."""
        ...


class DownTrack(DownTrackState):
    """Forwards one PublishedTrack to one subscriber.

    `_window_sent`, `nack_loss` and `_red_level` are the base's (`media.lanes`): an
    audio lane moves them from C.
    """

    def __init__(
        self,
        track: PublishedTrack,
        sink: DownTrackSink,
        *,
        mid: str,
        ssrc: int,
        rtx_ssrc: int | None,
        payload_type: int,
        rtx_payload_type: int | None,
        red_payload_type: int | None,
        clock_rate: int,
        twcc_ext_id: int | None,
        audio_level_ext_id: int | None,
        rng: random.Random | None = None,
        add_red: bool = True,
        audio_nack: bool = True,
    ) -> None:
        self.track = track
        self.sink = sink
        self.mid = mid
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.payload_type = payload_type
        self.rtx_payload_type = rtx_payload_type
        self.red_payload_type = red_payload_type
        self.clock_rate = clock_rate
        self.twcc_ext_id = twcc_ext_id
        self.audio_level_ext_id = audio_level_ext_id
        self.is_video = track.kind == "video"
        rng = rng or random.Random()
        self.stream = RtpStreamSend(ssrc, clock_rate)
        # Rings sized for a usual stream (256 video packets, 64 audio: over a second of
        # each), doubling when a stream sends more within the resend horizon.
        native = SEND_PATH == "native"  # FERRY_NATIVE_SEND=0: no native code at all
        self.rtx_cache = (
            new_rtx_cache(256, max_capacity=4096, native=native)
            if self.is_video
            else new_rtx_cache(64, max_capacity=512, native=native)
        )
        self.closed = False
        self.selector = LayerSelector(track, len(track.layers), is_video=self.is_video)
        self.rewriter = StreamRewriter(
            clock_rate,
            first_seq=rng.randrange(1 << 15),
            first_ts=rng.randrange(1 << 31),
            rtx_seq=rng.randrange(1 << 16),
        )
        self.add_red = add_red  # Ferry may wrap plain Opus in RED toward lossy subscribers
        self.red_added = 0
        self.resends_skipped = 0  # NACKed packets not resent (no RTX, see on_nack)
        self.padding_skipped = 0  # padding-only audio packets not forwarded
        # Audio: the share of packets the subscriber NACKed over the last window, i.e.
        # its loss before repair (its receiver reports count repaired packets as
        # received: a Chrome listener at 20 % loss reports under 1 %).
        self.nack_loss = 0.0
        self._nacked: set[int] = set()
        self._window_sent = 0
        # A listener with neither RED nor audio NACK gets each Opus packet again after
        # the next ones while its reports show loss (media.audio.duplicates).
        self.duplicates: AudioDuplicates | None = None
        if not self.is_video and red_payload_type is None and not audio_nack:
            self.duplicates = AudioDuplicates()
        self.audio_duplicates = 0  # copies sent
        self._recent_audio: deque[bytes] = deque(maxlen=max(COPY_OFFSETS))
        self._reports_seen = 0
        self._probe_packet: bytes | None = None  # a recent large video packet (RTX probes)
        self._probe_packet_ms = 0.0
        self._red_level = 0
        # History for distance 2 serves 1 too; kept from the first frame (the lane too).
        self._red_encoder = RedEncoder(2, payload_type) if red_payload_type is not None and not self.is_video else None
        # Extension blocks (one-byte form). The TWCC value is a placeholder stamped at
        # send time by the subscriber peer, at TWCC_OFFSET.
        self._ext_video = b""
        if twcc_ext_id:
            self._ext_video = b"\xbe\xde\x00\x01" + bytes((twcc_ext_id << 4 | 1, 0, 0, 0))
        twcc_el = bytes((twcc_ext_id << 4 | 1, 0, 0)) if twcc_ext_id else b""
        body = len(twcc_el) + (2 if audio_level_ext_id else 0)
        padded = (body + 3) // 4 * 4
        self._ext_audio_head = (
            b"\xbe\xde" + (padded // 4).to_bytes(2, "big") + twcc_el if body else b""
        )
        self._ext_audio_pad = bytes(padded - body)
        self._ext_audio_fixed = self._ext_audio_head + self._ext_audio_pad if body else b""  # no level
        # Blocks by audio level byte, shared by every DownTrack with the same layout.
        self._ext_audio_by_level = _AUDIO_BLOCKS.setdefault((self._ext_audio_head, audio_level_ext_id), {})
        has_ext = bool(self._ext_video) if self.is_video else bool(body)
        self._first_byte = 0x90 if has_ext else 0x80
        # On the native send path: the lane through which `fan_out_video` / `fan_out_audio`
        # forward this subscriber's steady packets from C (media.lanes); None: always
        # write_video / write_audio.
        self.lane = None
        target = getattr(sink, "send_target", None)
        laned = Lane is not None and native and target is not None
        if laned and self.is_video:
            self.lane = Lane(
                self.selector, self.rewriter, self.stream, self.rtx_cache, target,
                self._first_byte, payload_type, ssrc, self._ext_video,
            )  # fmt: skip
        elif laned and self.duplicates is None:  # audio; duplicates are the Python path's
            self.lane = Lane(
                self.selector, self.rewriter, self.stream, self.rtx_cache, target,
                self._first_byte, payload_type, ssrc, self._ext_audio_head,
                state=self, red=self._red_encoder, level_id=audio_level_ext_id or 0,
                extension_pad=len(self._ext_audio_pad),
            )  # fmt: skip

    def continuity(self) -> StreamContinuity:
        return self.rewriter.continuity(self.ssrc)

    def continue_from(self, previous: StreamContinuity) -> None:
        """Go on with `previous`'s sequence numbers, timestamps and picture ids (same
        SSRC, recycled m-line): the first packet forwarded is the next one of that stream."""
        assert previous.ssrc == self.ssrc, "only a stream on the same SSRC continues"
        self.rewriter.continue_from(previous)

    @property
    def packets_sent(self) -> int:
        """Media packets sent on this SSRC (what its sender reports count)."""
        return self.stream.packets_sent

    # -- forward path ----------------------------------------------------------------
    def write_video(
        self,
        layer: Layer,
        view: RtpView,
        ext_seq: int,
        vp8: Vp8Descriptor | None,
        keyframe: bool,
        now_ms: float,
    ) -> None:
        """Forward one received video packet of `layer` (extended seq `ext_seq`) to this
        subscriber, or drop it: the forward path's hottest code (once per packet and
        subscriber), kept to the steps a video packet takes."""
        placed = self._place(layer, view, ext_seq, vp8, keyframe, vp8 is None or vp8.start_of_partition, now_ms)
        if placed is None:
            return
        out_ext_seq, out_ts, newest = placed
        payload = view.payload
        # The one copy of the packet before SRTP: fixed header + Ferry's own extension
        # block + payload. The publisher's extensions (its mid/rid/twcc ids) mean
        # nothing downstream.
        prefix = _HEADER.pack(
            self._first_byte,
            self.payload_type | (0x80 if view.marker else 0),
            out_ext_seq & 0xFFFF,
            out_ts,
            self.ssrc,
        ) + self._ext_video
        rest = payload
        if vp8 is not None and vp8.picture_id is not None:
            head = self.rewriter.follow_vp8(payload, vp8, newest)
            if head is not None:
                prefix += head
                rest = payload[vp8.size :]
        packet = prefix + rest
        # The cache keeps the parts: the payload is a view of the received packet,
        # shared by every subscriber's cache, so a cached video packet costs ~300
        # bytes per subscriber instead of a ~1.2 KB copy (joined again on a NACK).
        self.rtx_cache.put(out_ext_seq & 0xFFFF, prefix, now_ms, rest)
        self.stream.on_packet_sent(out_ts, len(payload), now_ms)
        self.send_built(packet, now_ms)

    def send_built(self, packet: bytes, now_ms: float) -> None:
        """Send a video packet built for this subscriber (by `write_video`, or by its
        lane for a paced subscriber), cached and counted: the sink paces, stamps and
        sends it. A large one is kept as the next RTX probe's payload."""
        probe = self._probe_packet
        if probe is None or len(packet) >= len(probe) or now_ms - self._probe_packet_ms > PROBE_PACKET_MAX_AGE_MS:
            self._probe_packet = packet
            self._probe_packet_ms = now_ms
        self.sink.send_rtp(packet, "video", now_ms)

    def write_audio(
        self, layer: Layer, view: RtpView, ext_seq: int, keyframe: bool, now_ms: float, recovered: bool = False
    ) -> None:
        """Forward one received audio packet of `layer` (extended seq `ext_seq`) to this
        subscriber, or drop it: RED in or out, audio level, NACK loss window;
        `recovered`: rebuilt from a RED packet's redundancy."""
        if view.payload_end <= view.payload_start:
            self._skip_audio_padding(ext_seq)
            return
        placed = self._place(layer, view, ext_seq, None, keyframe, True, now_ms)
        if placed is None:
            return
        out_ext_seq, out_ts, newest = placed
        self._window_sent += 1
        if self._window_sent >= NACK_LOSS_PACKETS:
            self.nack_loss = len(self._nacked) / self._window_sent
            self._nacked.clear()
            self._window_sent = 0
        audio = self._audio_payload(view, out_ts, recovered)
        if audio is None:
            return
        payload_type, payload = audio
        marked = payload_type | (0x80 if view.marker else 0)
        header = _HEADER.pack(self._first_byte, marked, out_ext_seq & 0xFFFF, out_ts, self.ssrc)
        packet = b"".join((header, self._audio_extensions(view), payload))
        self.rtx_cache.put(out_ext_seq & 0xFFFF, packet, now_ms)
        self.stream.on_packet_sent(out_ts, len(payload), now_ms)
        self.sink.send_rtp(packet, "audio", now_ms)
        if self.duplicates is not None and newest:
            self._send_duplicates(packet, now_ms)

    def _place(
        self,
        layer: Layer,
        view: RtpView,
        ext_seq: int,
        vp8: Vp8Descriptor | None,
        keyframe: bool,
        start: bool,
        now_ms: float,
    ) -> tuple[int, int, bool] | None:
        """The selector's verdict on a packet and, unless dropped, where it goes in the
        outgoing stream: its extended seq, its timestamp, and whether it is the newest so
        far (the continuity point)."""
        verdict = self.selector.accept(layer.index, ext_seq, keyframe, start)
        if verdict == DROP:
            return None
        rw = self.rewriter
        if verdict != FORWARD:  # START or SWITCH: this packet follows the last one out
            rw.start(ext_seq, view.timestamp, vp8, now_ms)
            if verdict == SWITCH:
                self.track.stats.layer_switches += 1
        out_ext_seq = ext_seq + rw.seq_offset
        out_ts = (view.timestamp + rw.ts_offset) & 0xFFFFFFFF
        newest = out_ext_seq > rw.last_ext_seq
        if newest:
            rw.last_ext_seq = out_ext_seq
            rw.last_ts = out_ts
            rw.last_ms = now_ms
        return out_ext_seq, out_ts, newest

    def _send_duplicates(self, packet: bytes, now_ms: float) -> None:
        """The previous packets again, as many as the listener's loss asks for."""
        duplicates = self.duplicates
        assert duplicates is not None
        stream = self.stream
        if stream.reports_received != self._reports_seen:
            self._reports_seen = stream.reports_received
            duplicates.on_report(stream.fraction_lost, now_ms)
        recent = self._recent_audio
        for k in duplicates.offsets:
            if k > len(recent):
                break
            copy = recent[-k]
            if self.twcc_ext_id:  # the same bytes under the same SRTP index (see on_nack)
                if not self.sink.resend_rtp(copy, now_ms):
                    continue
            else:
                self.sink.send_rtp(copy, "audio", now_ms)
            self.audio_duplicates += 1
        recent.append(packet)

    def _skip_audio_padding(self, ext_seq: int) -> None:
        """A padding-only audio packet: nothing to forward, and no hole left for it.

        Chrome pads its bandwidth probes on the audio SSRC when it sends no video (an
        audio-only publisher): empty payloads that use up sequence numbers. Dropped as
        they are, each left a hole in the outgoing sequence that receivers count as
        loss: Chrome NACKs it, aiortc's audio jitter buffer drops ~5 frames for it.
        When it directly follows the last packet out, the next packet takes its number.
        """
        rw = self.rewriter
        if rw.last_ms is not None and ext_seq + rw.seq_offset == rw.last_ext_seq + 1:
            rw.seq_offset -= 1
        self.padding_skipped += 1

    # -- audio: RED in, RED out ----------------------------------------------------
    def _audio_payload(
        self, view: RtpView, out_ts: int, recovered: bool
    ) -> tuple[int, bytes | memoryview] | None:
        """Choose plain Opus or RED for this subscriber (RFC 2198).

        Subscribers without RED get the primary block. RED subscribers get
        redundancy only while their receiver reports show loss (clean links pay
        nothing): Chrome's RED is forwarded as it is, plain Opus is wrapped here.
        Chrome sends one redundant block; toward a subscriber at distance 2 (10 % loss
        and more) Ferry rebuilds RED that carries fewer blocks with two, which leaves
        0.8 % instead of 4 % of frames to a NACK that often comes after the receiver
        concealed them (live, 20 % loss: a Chrome listener conceals 0.9-1.5 % of
        samples instead of 1.5-2.8 %).
        Packets Ferry rebuilt from redundancy (`recovered`) go only to non-RED
        subscribers; RED ones already had the copy inside the RED packet.
        """
        track = self.track
        payload = view.payload
        is_red = track.red_pt is not None and view.payload_type == track.red_pt
        red_pt = self.red_payload_type
        if recovered and red_pt is not None and self._red_distance() > 0:
            if self.add_red:
                self._red_history(out_ts, payload, 0)  # a block of Ferry's next RED, if any
            return None  # the RED packet already carried this frame to them
        primary: bytes | memoryview = payload
        redundant = 0
        if is_red:
            try:
                blocks = parse_red(payload)
            except ValueError:
                track.stats.drop("red_malformed")
                return None
            primary = blocks[-1].data
            redundant = len(blocks) - 1
        if red_pt is None:
            return self.payload_type, primary
        distance = self._red_distance()
        if distance == 0:
            if not is_red:
                self._red_history(out_ts, primary, 0)
            return self.payload_type, primary
        if is_red and (redundant >= distance or not self.add_red):
            if distance < 2 and self.add_red:
                self._red_history(out_ts, primary, 0)  # ready for distance 2
            return red_pt, payload
        if not self.add_red:
            return self.payload_type, primary
        wrapped = self._red_history(out_ts, primary, distance)
        self.red_added += 1
        track.stats.red_added += 1
        return red_pt, wrapped

    def _red_history(self, out_ts: int, primary: bytes | memoryview, distance: int) -> bytes:
        """RED payload at `distance`; both encoders see every frame, so a switch from
        distance 1 to 2 has its history ready."""
        encoder = self._red_encoder
        assert encoder is not None, "RED history without RED negotiated"
        if distance == 0:
            encoder.remember(out_ts, primary)  # what encode would keep, without building
            return b""
        return encoder.encode(out_ts, primary, distance)

    def _red_distance(self) -> int:
        """Redundancy by the subscriber's loss (reported, or NACKed if more), with
        hysteresis."""
        loss = max(self.stream.fraction_lost or 0.0, self.nack_loss)
        current = self._red_level
        if loss >= 0.10:
            level = 2
        elif loss >= 0.02:
            level = max(1, current) if loss >= 0.05 or current else 1
        elif loss < 0.01:
            level = 0
        else:
            level = current
        self._red_level = level
        return level

    def _audio_extensions(self, view: RtpView) -> bytes:
        """The extension block for an audio packet: built once per audio level byte."""
        if not self.audio_level_ext_id:
            return self._ext_audio_fixed
        level = self.track.level_byte(view)
        block = self._ext_audio_by_level.get(level)
        if block is None:
            block = self._ext_audio_head + bytes((self.audio_level_ext_id << 4, level)) + self._ext_audio_pad
            self._ext_audio_by_level[level] = block
        return block

    # -- feedback from the subscriber ------------------------------------------------
    def on_nack(self, seqs: list[int], now_ms: float) -> int:
        """Retransmit what the cache still has; returns how many were sent."""
        if not self.is_video:
            self._nacked.update(seqs)
        sent = 0
        rtt = self.stream.rtt_ms or 0.0
        for seq in seqs:
            packet = self.rtx_cache.get(seq, now_ms, rtt)
            if packet is None:
                continue
            if self.rtx_ssrc is not None and self.rtx_payload_type is not None:
                packet = self._wrap_rtx(packet)
            elif self.twcc_ext_id:
                # Without RTX the resend reuses the original SRTP index; restamping its
                # transport-wide seq would encrypt different bytes under the same
                # nonce (AES-GCM). Audio (never RTX in browsers) goes again byte for
                # byte with the seq it first had; video skips: its PLI path recovers.
                if not self.is_video and self.sink.resend_rtp(packet, now_ms):
                    sent += 1
                    continue
                self.resends_skipped += 1
                continue
            self.sink.send_rtp(packet, "rtx", now_ms)
            sent += 1
        return sent

    def _wrap_rtx(self, packet: bytes) -> bytes:
        """RFC 4588 copy of a packet Ferry sent: its header (with the TWCC placeholder
        first, restamped at send time) on the RTX SSRC and payload type."""
        assert self.rtx_payload_type is not None and self.rtx_ssrc is not None
        return wrap_rtx(
            packet, payload_type=self.rtx_payload_type, seq=self.rewriter.next_rtx_seq(), ssrc=self.rtx_ssrc
        )

    @property
    def can_probe(self) -> bool:
        """True when ``rtx_probe`` has a packet to send."""
        return self._probe_packet is not None and self.rtx_ssrc is not None and bool(self.rtx_payload_type)

    def rtx_probe(self) -> bytes | None:
        """A recent large video packet again, RTX-wrapped: bandwidth probe payload.

        Large, because a probe's result is bytes over arrival time: a burst of small
        packets measures the receiver's per-packet cost more than the link.
        """
        if not self.can_probe:
            return None
        assert self._probe_packet is not None
        return self._wrap_rtx(self._probe_packet)

    def rtx_padding(self, size: int) -> bytes | None:
        """A padding-only packet of about ``size`` bytes (at most 255 of padding) on the
        RTX SSRC, with the transport-wide seq placeholder first: it draws feedback
        and is counted by the receiver, but adds little to a queue (libwebrtc sends the
        same when it has no packet to resend)."""
        if self.rtx_ssrc is None or not self.rtx_payload_type or not self.twcc_ext_id:
            return None
        return build_padding_only(
            payload_type=self.rtx_payload_type, seq=self.rewriter.next_rtx_seq(),
            timestamp=self.rewriter.last_ts, ssrc=self.rtx_ssrc, size=size,
            extensions=((self.twcc_ext_id, b"\x00\x00"),),
        )

    def capture_timestamp(self, now_ms: float) -> int | None:
        """This stream's RTP timestamp for the capture instant ``now_ms``, from the
        forwarded layer's latest sender report through the rewriter's offset; None
        before the layer has sent one (`media.rtp.remote_clock` says why)."""
        current = self.selector.current
        if current is None:
            return None
        anchor = self.track.layers[current].capture_anchor
        if anchor is None:
            return None
        rtp_ts, at_ms = anchor
        elapsed = round((now_ms - at_ms) * self.clock_rate / 1000.0)
        return (rtp_ts + self.rewriter.ts_offset + elapsed) & 0xFFFFFFFF

    def request_keyframe(self, now_ms: float) -> None:
        """A PLI/FIR from the subscriber, or our own need after a switch."""
        self.selector.request_keyframe(now_ms)

    def select_layer(self, now_ms: float) -> None:
        """Target the best layer the publisher sends within the allocation and cap."""
        if self.is_video and self.track.simulcast:
            self.selector.select(self.track.available_layers(now_ms), now_ms)

    def on_timer(self, now_ms: float) -> None:
        self.selector.on_timer(now_ms)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.selector.close()
        self.track.remove_down_track(self)

    def info(self) -> dict[str, object]:
        selector = self.selector
        return {
            "track_sid": self.track.sid,
            "mid": self.mid,
            "ssrc": self.ssrc,
            "current_layer": selector.current,
            "target_layer": selector.target,
            "desired_layer": selector.allocated,
            "paused": selector.paused,
            "packets_sent": self.packets_sent,
            "rtt_ms": self.stream.rtt_ms,
            "fraction_lost": self.stream.fraction_lost,
        }
