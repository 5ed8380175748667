"""A track a participant publishes: audio, or video with 1..3 simulcast layers.

Each layer owns its receive-side cores (RFC 3550 stats, NACK generator, keyframe
request coalescing). Packets enter through `Layer.on_packet` from the publisher's
transport and leave through every subscribed `DownTrack` (`write_video` or
`write_audio`) and every internal `PacketSink` (recorder, captions; see `sink.py`).
Keyframe requests
from all subscribers of a layer are coalesced here (one PLI per ~300 ms).
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Protocol

from media.lanes import fan_out_audio, fan_out_video
from media.ortc import RtpCodec
from media.rtp.keyframe import KeyframeRequester
from media.rtp.nack import NackGenerator
from media.rtp.stream_recv import SEQ_JUMP, RtpStreamRecv
from media.stats import EngineStats
from media.transport.udp_mux import EARLY_FLUSH
from media.wire.h264 import is_keyframe_start
from media.wire.red import parse_red
from media.wire.rtp import RtpView, build_rtp_view
from media.wire.vp8 import Vp8Descriptor, parse_vp8

from .down_track import NACK_LOSS_PACKETS
from .pricing import update_layer_prices

if TYPE_CHECKING:
    from .down_track import DownTrack
    from .sink import PacketSink

# Simulcast layers in ascending quality, as Chrome names them.
RID_ORDER = {"q": 0, "l": 0, "h": 1, "m": 1, "f": 2}


class KeyframeSink(Protocol):
    """Where PLIs toward the publisher go (its transport side)."""

    def send_pli(self, media_ssrc: int) -> None: ...


class AudioLevel:
    """Smoothed audio level from the ssrc-audio-level extension (RFC 6464)."""

    __slots__ = ("level", "voice_until_ms")

    def __init__(self) -> None:
        self.level = 0.0  # 0..1, linear-ish loudness
        self.voice_until_ms = 0.0

    def update(self, dbov: int, voice: bool, now_ms: float) -> None:
        # -dBov 0 is loudest, 127 silence; map 0..80 dB onto 1..0 and smooth.
        value = max(0.0, 1.0 - min(dbov, 80) / 80.0)
        self.level = self.level * 0.9 + value * 0.1
        if voice and dbov < 50:
            self.voice_until_ms = now_ms + 500.0



class Layer:
    """One RTP stream of a track (a simulcast encoding, or the only one)."""

    __slots__ = (
        "track",
        "index",
        "rid",
        "ssrc",
        "rtx_ssrc",
        "stream",
        "nack",
        "keyframes",
        "last_keyframe_ms",
        "width",
        "height",
        "active",
        "resumed_ms",
        "last_packet_ms",
        "last_bps",
        "price_ms",
        "capture_anchor",
        "_highest_ext",
        "_rebuilt",
    )

    def __init__(self, track: PublishedTrack, index: int, rid: str | None) -> None:
        self.track = track
        self.index = index
        self.rid = rid
        self.ssrc: int | None = None
        self.rtx_ssrc: int | None = None
        self.stream: RtpStreamRecv | None = None
        self.nack = NackGenerator()
        self.keyframes = KeyframeRequester()
        self.last_keyframe_ms: float | None = None
        self.width: int | None = None
        self.height: int | None = None
        self.active = True  # dynacast: False when paused at the publisher
        self.resumed_ms: float | None = None  # when dynacast last turned it back on
        self.last_packet_ms: float | None = None
        self.last_bps = 0.0  # its price: recent peak rate (pricing.py)
        self.price_ms = 0.0  # when last_bps was last measured
        # (RTP timestamp, Ferry ms) of the latest sender report: the capture clock
        # Ferry's own reports for this layer's forwarded stream are drawn from.
        self.capture_anchor: tuple[int, float] | None = None
        self._highest_ext: int | None = None
        self._rebuilt: set[int] = set()  # audio seqs rebuilt from RED (not to forward twice)

    def bind_ssrc(self, ssrc: int) -> None:
        self.ssrc = ssrc
        self.stream = RtpStreamRecv(ssrc, self.track.codec.clock_rate)

    def on_packet(self, view: RtpView, now_ms: float, is_rtx: bool) -> None:  # noqa: C901 (the forward path, inline)
        """The forward path for one received (decrypted, RTX-unwrapped) packet."""
        stream = self.stream
        if stream is None:
            return
        track = self.track
        self.last_packet_ms = now_ms
        ext_seq = stream.on_packet(view.seq, view.timestamp, now_ms, view.payload_end)
        if ext_seq == SEQ_JUMP:
            track.stats.drop("rtp_seq_jump")  # RFC 3550 A.1, see RtpStreamRecv
            return
        if ext_seq is None:
            # Chrome probes its uplink with RTX copies of packets it already sent, and
            # answers a NACK twice when the first repair was late. Forwarded, each
            # copy reuses an SRTP index downstream: the subscriber drops it as a
            # replay, and its transport-wide feedback reports it lost.
            track.stats.drop("duplicate")
            return
        keyframe = False
        if track.is_vp8 and view.payload_end > view.payload_start:
            try:
                desc = parse_vp8(view.payload)
            except ValueError:
                track.stats.drop("vp8_malformed")
                return
            keyframe = desc.is_keyframe
            if keyframe:
                self._on_keyframe(now_ms)
                if desc.width:
                    self.width, self.height = desc.width, desc.height
        else:
            desc = None
            if track.is_h264 and view.payload_end > view.payload_start:
                keyframe = is_keyframe_start(view.payload)
                if keyframe:
                    self._on_keyframe(now_ms)
        if self._rebuilt and ext_seq in self._rebuilt:
            self._rebuilt.discard(ext_seq)
            return  # already rebuilt from RED and forwarded: a late original or a resend
        self.nack.on_packet(ext_seq, now_ms, is_keyframe=keyframe, is_retransmission=is_rtx)
        highest = self._highest_ext
        if highest is None or ext_seq > highest:
            self._highest_ext = ext_seq
            if (
                highest is not None
                and ext_seq > highest + 1
                and track.red_pt is not None
                and view.payload_type == track.red_pt
                and track.forwarding
            ):
                self._recover_from_red(view, ext_seq, ext_seq - highest - 1, now_ms)
        if not track.forwarding:
            return  # muted by a moderator: received and repaired, forwarded to no one
        if track.kind == "video":
            downs, lanes = track.down_tracks, track.lanes
            if lanes is None:
                for down in downs:
                    down.write_video(self, view, ext_seq, desc, keyframe, now_ms)
            else:
                self._fan_out_video(downs, lanes, view, ext_seq, desc, keyframe, now_ms)
        else:
            downs, lanes = track.down_tracks, track.lanes
            if lanes is None or view.payload_end <= view.payload_start:  # no lanes, or padding
                for down in downs:
                    down.write_audio(self, view, ext_seq, keyframe, now_ms)
            else:
                self._fan_out_audio(downs, lanes, view, ext_seq, keyframe, now_ms)
        if track.sinks:  # internal consumers (recorder, captions); empty list costs one test
            track.fan_out(self.index, view, ext_seq, keyframe, now_ms)

    def _on_keyframe(self, now_ms: float) -> None:
        if self.last_keyframe_ms != now_ms:
            self.track.stats.keyframes_in += 1
        self.last_keyframe_ms = now_ms
        self.keyframes.on_keyframe(now_ms)

    def _recover_from_red(self, view: RtpView, ext_seq: int, missing: int, now_ms: float) -> None:
        """Rebuild lost Opus packets from the redundant blocks of this RED packet.

        Chrome's RED carries the previous packets' frames (distance 1 or 2), so the
        k-th block from the end is the packet k sequence numbers back. The rebuilt
        packets go to subscribers that do not take RED themselves.
        """
        try:
            blocks = parse_red(view.payload)[:-1]
        except ValueError:
            return
        track = self.track
        assert self.ssrc is not None
        for k in range(min(missing, len(blocks)), 0, -1):
            block = blocks[-k]
            if not block.data:
                continue
            rebuilt = build_rtp_view(
                payload_type=block.payload_type,
                seq=ext_seq - k,
                timestamp=view.timestamp - block.timestamp_offset,
                ssrc=self.ssrc,
                payload=block.data,
            )
            track.stats.red_recovered += 1
            seq = ext_seq - k
            self.nack.on_packet(seq, now_ms, is_retransmission=True)  # no NACK for it
            self._rebuilt.add(seq)
            if len(self._rebuilt) > 64:
                self._rebuilt = {s for s in self._rebuilt if s > ext_seq - 64}
            for down in track.down_tracks:
                down.write_audio(self, rebuilt, ext_seq - k, False, now_ms, recovered=True)
            if track.sinks:
                track.fan_out(self.index, rebuilt, ext_seq - k, False, now_ms)

    def _fan_out_video(
        self,
        downs: list[DownTrack],
        lanes: list[object],
        view: RtpView,
        ext_seq: int,
        desc: Vp8Descriptor | None,
        keyframe: bool,
        now_ms: float,
    ) -> None:
        """One video packet to every subscriber: the steady ones from C in one call
        (media.lanes), the rest (layer starts, keyframes) through `write_video`. A
        paced subscriber's packet is built in C and sent here through its pacer
        (`send_built`). Lanes send at once; the others queue on the mux's batch.
        Per subscriber the order is the Python path's: a subscriber's packet goes one
        way or the other, never both."""
        if desc is None:
            pid, bits, tl0, size, start = -1, 0, -1, 0, True
        else:
            pid = -1 if desc.picture_id is None else desc.picture_id
            tl0 = -1 if desc.tl0picidx is None or pid < 0 else desc.tl0picidx
            bits, size, start = desc.picture_id_bits, desc.size, desc.start_of_partition
        forwarded, nbytes, fallback, handoff = fan_out_video(
            lanes, self.index, view.payload, view.timestamp, view.marker, ext_seq,
            keyframe, start, pid, bits, tl0, size, now_ms, EARLY_FLUSH,
        )  # fmt: skip
        if forwarded:
            stats = self.track.stats
            stats.rtp_out += forwarded
            stats.rtp_bytes_out += nbytes
        if handoff is not None:  # paced subscribers: built in C, through their pacer here
            pairs = iter(handoff)
            for i, packet in zip(pairs, pairs, strict=True):
                downs[i].send_built(packet, now_ms)
        if fallback is not None:
            for i in fallback:
                downs[i].write_video(self, view, ext_seq, desc, keyframe, now_ms)

    def _fan_out_audio(
        self, downs: list[DownTrack], lanes: list[object], view: RtpView, ext_seq: int, keyframe: bool, now_ms: float
    ) -> None:
        """One audio packet to every subscriber: those that get plain Opus from C in one
        call (media.lanes), the rest (RED out, duplicates, a stream start, the NACK-loss
        window's roll) through `write_audio`; a paced subscriber's packet is built in C
        and sent here through its pacer."""
        track = self.track
        payload = view.payload
        primary_at = -1
        if track.red_pt is not None and view.payload_type == track.red_pt:
            try:
                blocks = parse_red(payload)
            except ValueError:  # write_audio counts it, per subscriber
                blocks = None
            if blocks is None:
                for down in downs:
                    down.write_audio(self, view, ext_seq, keyframe, now_ms)
                return
            primary_at = len(payload) - len(blocks[-1].data)
        forwarded, nbytes, fallback, handoff = fan_out_audio(
            lanes, self.index, payload, primary_at, view.timestamp, view.marker, ext_seq,
            track.level_byte(view), NACK_LOSS_PACKETS, now_ms, EARLY_FLUSH,
        )  # fmt: skip
        if forwarded:
            stats = track.stats
            stats.rtp_out += forwarded
            stats.rtp_bytes_out += nbytes
        if handoff is not None:
            pairs = iter(handoff)
            for i, packet in zip(pairs, pairs, strict=True):
                downs[i].sink.send_rtp(packet, "audio", now_ms)
        if fallback is not None:
            for i in fallback:
                downs[i].write_audio(self, view, ext_seq, keyframe, now_ms)

    def set_active(self, active: bool, now_ms: float) -> None:
        """Dynacast paused (False) or resumed (True) this layer at the publisher."""
        if active and not self.active:
            self.resumed_ms = now_ms
        self.active = active

    def request_keyframe(self, now_ms: float) -> None:
        if self.ssrc is not None and self.keyframes.request(now_ms):
            self.track.send_pli(self.ssrc)

    def on_sender_report(self, ntp: int, rtp_timestamp: int, now_ms: float, at_ms: float | None = None) -> None:
        """An RTCP SR for this layer: LSR/DLSR bookkeeping, the capture anchor (``at_ms``:
        the report's NTP instant on Ferry's clock), then the sinks' clock mapping."""
        if at_ms is not None:
            self.capture_anchor = (rtp_timestamp, at_ms)
        if self.stream is not None:
            self.stream.on_sender_report((ntp >> 16) & 0xFFFFFFFF, now_ms)
        for sink in self.track.sinks:
            sink.on_sender_report(self.index, ntp, rtp_timestamp, now_ms)


class PublishedTrack:
    """A published audio or video track and the DownTracks that consume it."""

    def __init__(
        self,
        *,
        participant_sid: str,
        mid: str,
        kind: str,
        codec: RtpCodec,
        rids: list[str] | None,
        stats: EngineStats,
        keyframe_sink: KeyframeSink | None = None,
        source: str = "unknown",
        name: str = "",
        msid_track: str | None = None,
        red_pt: int | None = None,
    ) -> None:
        self.sid = "TR_" + secrets.token_hex(6)
        self.participant_sid = participant_sid
        self.mid = mid
        self.kind = kind
        self.codec = codec
        self.red_pt = red_pt
        self.audio_level_ext_id: int | None = None  # the publisher's id, for forwarding
        self.is_vp8 = codec.name.upper() == "VP8"
        self.is_h264 = codec.name.upper() == "H264"
        self.stats = stats
        self.keyframe_sink = keyframe_sink
        self.source = source
        self.name = name
        self.msid_track = msid_track
        self.muted = False
        # False while a moderator has the track muted: packets are received (stats, NACK)
        # but reach no subscriber and no internal sink.
        self.forwarding = True
        self.closed = False
        ordered = sorted(rids, key=lambda r: RID_ORDER.get(r, 3)) if rids else [None]
        self.layers = [Layer(self, i, rid) for i, rid in enumerate(ordered)]
        self.down_tracks: list[DownTrack] = []
        # Each DownTrack's lane (media.lanes), in the same order; None while no
        # DownTrack has one (the Python send path): every packet takes write_video /
        # write_audio.
        self.lanes: list[object] | None = None
        self.sinks: list[PacketSink] = []  # copy-on-write, like down_tracks
        self.audio_level = AudioLevel()
        # The ssrc-audio-level byte of the packet being forwarded, read once for all
        # subscribers (see level_byte).
        self._level_view: RtpView | None = None
        self._level_byte = 127

    def level_byte(self, view: RtpView) -> int:
        """``view``'s ssrc-audio-level byte (RFC 6464; 127, silence, when it has none),
        parsed once per packet however many subscribers forward it."""
        if view is not self._level_view:
            ext_id = self.audio_level_ext_id
            try:
                value = view.extension(ext_id) if ext_id else None
            except ValueError:
                value = None
            self._level_byte = value[0] if value and len(value) == 1 else 127
            self._level_view = view
        return self._level_byte

    @property
    def simulcast(self) -> bool:
        return len(self.layers) > 1

    def layer_by_rid(self, rid: str) -> Layer | None:
        for layer in self.layers:
            if layer.rid == rid:
                return layer
        return None

    def info(self) -> dict[str, object]:
        return {
            "sid": self.sid,
            "participant_sid": self.participant_sid,
            "mid": self.mid,
            "cid": self.msid_track,
            "kind": self.kind,
            "source": self.source,
            "name": self.name,
            "muted": self.muted,
            "simulcast": self.simulcast,
            "layers": [layer.rid for layer in self.layers if layer.rid],
            "codec": self.codec.name,
        }

    def send_pli(self, media_ssrc: int) -> None:
        if self.keyframe_sink is not None:
            self.stats.pli_sent += 1
            self.keyframe_sink.send_pli(media_ssrc)

    def update_layer_prices(self, now_ms: float) -> list[float]:
        """Measure each layer and return its price (expected bitrate, `pricing.py`)."""
        return update_layer_prices(self.layers, now_ms)

    def available_layers(self, now_ms: float, window_ms: float = 1500.0) -> list[int]:
        """Layers that received media recently (the publisher may not send them all).

        A layer dynacast paused is not available, and one it resumed only once media
        arrived since: its last packets from before the pause are recent enough to pass
        the window, and a subscriber sent to it would wait for the publisher to restart
        it instead of taking a running lower layer at once.
        """
        out = []
        for layer in self.layers:
            last = layer.last_packet_ms
            if last is None or now_ms - last >= window_ms or not layer.active:
                continue
            if layer.resumed_ms is not None and last < layer.resumed_ms:
                continue
            out.append(layer.index)
        return out

    def on_timer(self, now_ms: float) -> None:
        for layer in self.layers:
            deadline = layer.keyframes.next_deadline()
            if deadline is not None and deadline <= now_ms and layer.keyframes.on_timer(now_ms):
                if layer.ssrc is not None:
                    self.send_pli(layer.ssrc)

    def add_down_track(self, down: DownTrack) -> None:
        self._set_down_tracks([*self.down_tracks, down])  # copy-on-write: safe during iteration

    def remove_down_track(self, down: DownTrack) -> None:
        self._set_down_tracks([d for d in self.down_tracks if d is not down])

    def _set_down_tracks(self, down_tracks: list[DownTrack]) -> None:
        lanes = [d.lane for d in down_tracks]
        self.lanes = lanes if any(lane is not None for lane in lanes) else None
        self.down_tracks = down_tracks

    # -- internal sinks (media.routing.sink) ---------------------------------------------
    def add_sink(self, sink: PacketSink) -> None:
        self.sinks = [*self.sinks, sink]

    def remove_sink(self, sink: PacketSink) -> None:
        self.sinks = [s for s in self.sinks if s is not sink]

    @property
    def sink_layer(self) -> int:
        """The highest layer an internal sink wants sent (dynacast keeps it on); 0 if none."""
        return max((sink.wanted_layer for sink in self.sinks), default=0)

    def request_keyframe(self, layer: int, now_ms: float) -> None:
        """SinkHost: a sink asks for a keyframe on `layer` (coalesced per layer)."""
        if 0 <= layer < len(self.layers):
            self.layers[layer].request_keyframe(now_ms)

    def fan_out(self, layer: int, view: RtpView, ext_seq: int, keyframe: bool, now_ms: float) -> None:
        """Hand one packet to every sink; a failing sink is counted, never fatal to forwarding."""
        for sink in self.sinks:
            try:
                sink.on_packet(layer, view, ext_seq, keyframe, now_ms)
            except Exception:  # a recorder bug must not stop the room's media
                self.stats.drop("sink_error")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for layer in self.layers:
            self.stats.upstream_lost += layer.nack.lost
            self.stats.upstream_recovered += layer.nack.recovered
            self.stats.upstream_unrecovered += layer.nack.given_up
        for down in list(self.down_tracks):
            down.close()
        self._set_down_tracks([])
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.on_track_closed()
        # Layers point back at the track (a cycle the cyclic GC frees late): without the
        # publisher peer, a closed track holds no transport, DTLS or SRTP state meanwhile.
        self.keyframe_sink = None
