"""One subscriber's copy of one published track.

The DownTrack *acts*: it rewrites SSRC, payload type, sequence number, timestamp and
VP8 picture id / TL0PICIDX so the subscriber sees one continuous stream whatever
layer is forwarded, keeps the retransmission cache, and answers NACK and PLI.
Which layer to forward is decided elsewhere (`target_layer`, set by the allocator or
the subscriber's preferences); a switch happens only on a keyframe of the target.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from media.audio.red_encoder import RedEncoder
from media.rtp.keyframe import KeyframeWaiter
from media.rtp.rtx import RtxCache
from media.rtp.stream_send import RtpStreamSend
from media.wire.red import parse_red
from media.wire.rtp import RtpView, build_rtp, parse_rtp
from media.wire.vp8 import Vp8Descriptor, rewrite_vp8

if TYPE_CHECKING:
    from .published_track import Layer, PublishedTrack


_HEADER = struct.Struct("!BBHII")

# Where the transport-wide seq sits in packets built with it as the first one-byte
# extension and no CSRCs: 12-byte header + 4-byte extension header + 1-byte id/len.
TWCC_OFFSET = 17


PROBE_PACKET_MAX_AGE_MS = 1000.0  # a probe packet is replaced by a smaller one after this

@dataclass(frozen=True, slots=True)
class StreamContinuity:
    """Where a DownTrack's output stream stopped: its successor on the same m-line and
    SSRC goes on from here, so the subscriber sees one stream rather than a jump."""

    ssrc: int
    last_ext_seq: int
    last_ts: int
    last_ms: float | None
    last_pid: int | None
    last_tl0: int | None
    rtx_seq: int


class DownTrackSink(Protocol):
    """The subscriber transport side a DownTrack sends through."""

    def send_rtp(self, packet: bytes, kind: str, now_ms: float) -> None: ...


class DownTrack:
    """Forwards one PublishedTrack to one subscriber."""

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
        self.rtx_cache = RtxCache(1024 if self.is_video else 256)
        self.keyframe_waiter = KeyframeWaiter()
        self.closed = False
        self.paused = False  # by the allocator: not enough bandwidth
        self.enabled = True  # by the subscriber: false while its tile is hidden
        # Layer selection: None means "nothing forwarded yet".
        self.current_layer: int | None = None
        self.target_layer: int = len(track.layers) - 1
        self.desired_layer: int = len(track.layers) - 1  # the allocator's choice within the cap
        self.pinned_layer: int | None = None  # max_layer the subscriber asked for
        self.size_layer: int | None = None  # smallest layer covering its rendered size
        # Munging state.
        self._seq_offset = 0
        self._ts_offset = 0
        self._pid_offset = 0
        self._tl0_offset = 0
        self._switch_ext_seq = 0
        self._last_out_ext_seq = rng.randrange(1 << 15)
        self._last_out_ts = rng.randrange(1 << 31)
        self._last_out_ms: float | None = None
        self._last_pid: int | None = None
        self._last_tl0: int | None = None
        self._rtx_seq = rng.randrange(1 << 16)
        self.packets_sent = 0
        self.bytes_sent = 0
        self.add_red = add_red  # Ferry may wrap plain Opus in RED toward lossy subscribers
        self.red_added = 0
        self.resends_skipped = 0  # NACKed packets not resent (no RTX, see on_nack)
        self._probe_packet: bytes | None = None  # a recent large video packet (RTX probes)
        self._probe_packet_ms = 0.0
        self._red_level = 0
        self._red_encoders: dict[int, RedEncoder] = {}
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
        has_ext = bool(self._ext_video) if self.is_video else bool(body)
        self._first_byte = 0x90 if has_ext else 0x80
        if self.is_video:
            self.keyframe_waiter.need(0.0)

    def continuity(self) -> StreamContinuity:
        return StreamContinuity(
            self.ssrc,
            self._last_out_ext_seq,
            self._last_out_ts,
            self._last_out_ms,
            self._last_pid,
            self._last_tl0,
            self._rtx_seq,
        )

    def continue_from(self, previous: StreamContinuity) -> None:
        """Go on with `previous`'s sequence numbers, timestamps and picture ids (same
        SSRC, recycled m-line): the first packet forwarded is the next one of that stream."""
        assert previous.ssrc == self.ssrc, "only a stream on the same SSRC continues"
        self._last_out_ext_seq = previous.last_ext_seq
        self._last_out_ts = previous.last_ts
        self._last_out_ms = previous.last_ms
        self._last_pid = previous.last_pid
        self._last_tl0 = previous.last_tl0
        self._rtx_seq = previous.rtx_seq

    # -- forward path ----------------------------------------------------------------
    def write(
        self,
        layer: Layer,
        view: RtpView,
        ext_seq: int,
        vp8: Vp8Descriptor | None,
        keyframe: bool,
        now_ms: float,
        recovered: bool = False,
    ) -> None:
        if self.paused or not self.enabled or self.closed:
            return
        if layer.index != self.current_layer:
            if layer.index != self.target_layer or not (keyframe or not self.is_video):
                return
            if vp8 is not None and not vp8.start_of_partition:
                return  # switch on the first packet of the keyframe only
            self._switch_to(layer, view, ext_seq, vp8, now_ms)
        elif ext_seq < self._switch_ext_seq:
            return  # a late packet from before the switch point would collide
        elif self.desired_layer < layer.index and self.target_layer != layer.index:
            # The allocator cut this subscriber below the layer it is on: the link is
            # congested. Shed the layer now (a short freeze until the lower layer's
            # keyframe) instead of filling the bottleneck queue while waiting for it.
            return
        out_ext_seq = ext_seq + self._seq_offset
        out_ts = (view.timestamp + self._ts_offset) & 0xFFFFFFFF
        newest = out_ext_seq > self._last_out_ext_seq
        if newest:
            self._last_out_ext_seq = out_ext_seq
            self._last_out_ts = out_ts
            self._last_out_ms = now_ms
        payload: bytes | memoryview = view.payload
        payload_type = self.payload_type
        if not self.is_video:
            audio = self._audio_payload(view, out_ts, recovered)
            if audio is None:
                return
            payload_type, payload = audio
        # One copy: fixed header + Ferry's own extension block + payload. The
        # publisher's extensions (its mid/rid/twcc ids) mean nothing downstream.
        header = _HEADER.pack(
            self._first_byte,
            payload_type | (0x80 if view.marker else 0),
            out_ext_seq & 0xFFFF,
            out_ts,
            self.ssrc,
        )
        ext = self._ext_video if self.is_video else self._audio_extensions(view)
        if vp8 is not None and vp8.picture_id is not None and (self._pid_offset or self._tl0_offset):
            head = self._munge_vp8(payload, vp8, newest)
            packet = b"".join((header, ext, head, payload[vp8.size :]))
        else:
            if newest and vp8 is not None and vp8.picture_id is not None:
                # Only the newest packet moves the continuity point: a late packet or
                # an RTX repair of an older frame must not pull it back.
                self._last_pid = vp8.picture_id
                if vp8.tl0picidx is not None:
                    self._last_tl0 = vp8.tl0picidx
            packet = b"".join((header, ext, payload))
        self.rtx_cache.put(out_ext_seq & 0xFFFF, packet, now_ms)
        if self.is_video and (
            self._probe_packet is None
            or len(packet) >= len(self._probe_packet)
            or now_ms - self._probe_packet_ms > PROBE_PACKET_MAX_AGE_MS
        ):
            self._probe_packet = packet
            self._probe_packet_ms = now_ms
        self.stream.on_packet_sent(out_ts, len(payload), now_ms)
        self.packets_sent += 1
        self.bytes_sent += len(packet)
        if keyframe:
            self.keyframe_waiter.on_keyframe()
        self.sink.send_rtp(packet, "video" if self.is_video else "audio", now_ms)

    # -- audio: RED in, RED out ----------------------------------------------------
    def _audio_payload(
        self, view: RtpView, out_ts: int, recovered: bool
    ) -> tuple[int, bytes | memoryview] | None:
        """Choose plain Opus or RED for this subscriber (RFC 2198).

        Subscribers without RED get the primary block. RED subscribers get
        redundancy only while their receiver reports show loss (clean links pay
        nothing): Chrome's RED is forwarded as it is, plain Opus is wrapped here.
        Packets Ferry rebuilt from redundancy (`recovered`) go only to non-RED
        subscribers; RED ones already had the copy inside the RED packet.
        """
        track = self.track
        payload = view.payload
        is_red = track.red_pt is not None and view.payload_type == track.red_pt
        red_pt = self.red_payload_type
        if recovered and red_pt is not None and self._red_distance() > 0:
            return None  # the RED packet already carried this frame to them
        primary: bytes | memoryview = payload
        if is_red:
            try:
                primary = parse_red(payload)[-1].data
            except ValueError:
                track.stats.drop("red_malformed")
                return None
        if red_pt is None:
            return self.payload_type, primary
        distance = self._red_distance()
        if distance == 0:
            if not is_red:
                self._red_history(out_ts, primary, 0)
            return self.payload_type, primary
        if is_red:
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
        encoders = self._red_encoders
        if not encoders:
            encoders[1] = RedEncoder(1, self.payload_type)
            encoders[2] = RedEncoder(2, self.payload_type)
        data = bytes(primary)
        out = b""
        for d, encoder in encoders.items():
            red = encoder.encode(out_ts, data)
            if d == distance:
                out = red
        return out

    def _red_distance(self) -> int:
        """Redundancy by the subscriber's reported loss, with hysteresis."""
        loss = self.stream.fraction_lost or 0.0
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
        head = self._ext_audio_head
        if not head:
            return b""
        level_el = b""
        if self.audio_level_ext_id:
            track = self.track
            value = view.extension(track.audio_level_ext_id) if track.audio_level_ext_id else None
            level = value[0] if value and len(value) == 1 else 127
            level_el = bytes((self.audio_level_ext_id << 4, level))
        return head + level_el + self._ext_audio_pad

    def set_paused(self, paused: bool) -> bool:
        """Pause/resume for bandwidth; returns True when the state changed."""
        if paused == self.paused:
            return False
        self.paused = paused
        if paused:
            self.current_layer = None  # resume only on a keyframe
        return True

    def set_enabled(self, enabled: bool) -> bool:
        """The subscriber's own on/off (a hidden tile); True when the state changed.

        Disabled, the track is forwarded nothing and counts for nothing: the allocator
        gives its share to other tracks and dynacast may pause its layers. It resumes on
        a keyframe, which ``on_timer`` asks for.
        """
        if enabled == self.enabled:
            return False
        self.enabled = enabled
        self.current_layer = None
        return True

    def _switch_to(
        self, layer: Layer, view: RtpView, ext_seq: int, vp8: Vp8Descriptor | None, now_ms: float
    ) -> None:
        """Start forwarding `layer` from this packet on, continuing seq/ts/picture id."""
        self._seq_offset = self._last_out_ext_seq + 1 - ext_seq
        if self._last_out_ms is None:
            gap = 0
        else:
            gap = max(1, int((now_ms - self._last_out_ms) * self.clock_rate / 1000.0))
        self._ts_offset = (self._last_out_ts + gap - view.timestamp) & 0xFFFFFFFF
        if vp8 is not None and vp8.picture_id is not None:
            if self._last_pid is not None:
                self._pid_offset = self._last_pid + 1 - vp8.picture_id
            if vp8.tl0picidx is not None and self._last_tl0 is not None:
                self._tl0_offset = self._last_tl0 + 1 - vp8.tl0picidx
        self._switch_ext_seq = ext_seq
        if self.current_layer is not None:
            self.track.stats.layer_switches += 1
        self.current_layer = layer.index

    def _munge_vp8(self, payload: bytes | memoryview, vp8: Vp8Descriptor, newest: bool = True) -> bytes:
        """Rewritten copy of the VP8 descriptor only (picture id / TL0PICIDX continuity)."""
        assert vp8.picture_id is not None
        modulus = 1 << vp8.picture_id_bits
        pid = (vp8.picture_id + self._pid_offset) % modulus
        tl0 = None
        if vp8.tl0picidx is not None:
            tl0 = (vp8.tl0picidx + self._tl0_offset) & 0xFF
            if newest:
                self._last_tl0 = tl0
        if newest:
            self._last_pid = pid
        head = bytearray(payload[: vp8.size])
        rewrite_vp8(head, 0, vp8, picture_id=pid, tl0picidx=tl0)
        return bytes(head)

    # -- feedback from the subscriber ------------------------------------------------
    def on_nack(self, seqs: list[int], now_ms: float) -> int:
        """Retransmit what the cache still has; returns how many were sent."""
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
                # nonce (AES-GCM). Skip it: the receiver's PLI path recovers.
                self.resends_skipped += 1
                continue
            self.sink.send_rtp(packet, "rtx", now_ms)
            sent += 1
        return sent

    def _wrap_rtx(self, packet: bytes) -> bytes:
        view = parse_rtp(packet)
        self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        extensions = []
        if self.twcc_ext_id:
            extensions.append((self.twcc_ext_id, b"\x00\x00"))
        assert self.rtx_payload_type is not None and self.rtx_ssrc is not None
        return build_rtp(
            payload_type=self.rtx_payload_type,
            seq=self._rtx_seq,
            timestamp=view.timestamp,
            ssrc=self.rtx_ssrc,
            payload=view.seq.to_bytes(2, "big") + bytes(view.payload),
            marker=view.marker,
            extensions=extensions,
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

    def request_keyframe(self, now_ms: float) -> None:
        """A PLI/FIR from the subscriber, or our own need after a switch."""
        if not self.is_video:
            return
        index = self.current_layer if self.current_layer is not None else self.target_layer
        self.track.layers[index].request_keyframe(now_ms)

    # -- layer choice ----------------------------------------------------------------
    def set_target_layer(self, index: int, now_ms: float) -> None:
        index = max(0, min(index, len(self.track.layers) - 1))
        if index == self.target_layer:
            return
        self.target_layer = index
        if index != self.current_layer:
            self.track.layers[index].request_keyframe(now_ms)

    @property
    def max_layer(self) -> int:
        """The subscriber's cap: the lower of its pin and its rendered size."""
        cap = len(self.track.layers) - 1
        if self.pinned_layer is not None:
            cap = min(cap, self.pinned_layer)
        if self.size_layer is not None:
            cap = min(cap, self.size_layer)
        return cap

    @property
    def active(self) -> bool:
        """Forwarding, or waiting to: neither paused for bandwidth nor disabled."""
        return self.enabled and not self.paused and not self.closed

    def on_timer(self, now_ms: float) -> None:
        if not self.is_video or not self.active:
            return
        if self.current_layer != self.target_layer or self.current_layer is None:
            self.keyframe_waiter.need(now_ms)
        if self.keyframe_waiter.poll(now_ms):
            self.track.layers[self.target_layer].request_keyframe(now_ms)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.track.remove_down_track(self)

    def info(self) -> dict[str, object]:
        return {
            "track_sid": self.track.sid,
            "mid": self.mid,
            "ssrc": self.ssrc,
            "current_layer": self.current_layer,
            "target_layer": self.target_layer,
            "desired_layer": self.desired_layer,
            "paused": self.paused,
            "packets_sent": self.packets_sent,
            "rtt_ms": self.stream.rtt_ms,
            "fraction_lost": self.stream.fraction_lost,
        }

