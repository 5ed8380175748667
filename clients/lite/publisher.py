"""The lite publisher: paces pre-encoded VP8 (1..3 simulcast layers) and Opus to Ferry."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiortc.rtp import (
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
)

from media.ortc import EXT_AUDIO_LEVEL, EXT_MID, EXT_REPAIRED_RID, EXT_RID, EXT_TWCC
from media.rtp.ntp import ntp_from_unix
from media.rtp.rtx import RtxCache
from media.rtp.twcc import TwccFeedback
from media.transport.certificate import Certificate
from media.wire.rtcp import Fir, build_sdes_cname, build_sr, nack_seqs
from media.wire.rtp import build_audio_level, build_rtp, build_twcc_seq, parse_rtp
from signaling.sdp import PT_OPUS, PT_RTX, PT_VP8, PUBLISHER_EXTENSION_IDS

from .clips import is_vp8_keyframe
from .live import LiveVp8Source
from .transport import CandidateRewrite, LiteTransport

__all__ = ["AudioStream", "LitePublisher", "VideoLayer"]

logger = logging.getLogger("ferry.lite_client")

# Extension ids of the offer (`signaling.sdp.build_publisher_offer`) this publisher sends.
EXT_ID_AUDIO_LEVEL = PUBLISHER_EXTENSION_IDS[EXT_AUDIO_LEVEL]
EXT_ID_TWCC = PUBLISHER_EXTENSION_IDS[EXT_TWCC]
EXT_ID_MID = PUBLISHER_EXTENSION_IDS[EXT_MID]
EXT_ID_RID = PUBLISHER_EXTENSION_IDS[EXT_RID]
EXT_ID_RRID = PUBLISHER_EXTENSION_IDS[EXT_REPAIRED_RID]

SR_INTERVAL_MS = 1000.0
MAX_PAYLOAD = 1200  # bytes of RTP payload (VP8 descriptor included)
VP8_DESCRIPTOR = 4  # X, I byte and a 15-bit picture id
_AUDIO_LEVEL = build_audio_level(True, 30)


class VideoLayer:
    """One simulcast encoding (or the only one): its SSRCs, frames and RTX cache.

    The frames are a pre-encoded clip sent in a loop, or a ``LiveVp8Source`` that
    encodes each one (stamped with its capture time) when it is due.
    """

    def __init__(self, rid: str | None, frames: Sequence[bytes] | LiveVp8Source) -> None:
        self.rid = rid
        self.rid_bytes = rid.encode("ascii") if rid else b""
        self.live = frames if isinstance(frames, LiveVp8Source) else None
        self.frames = [] if isinstance(frames, LiveVp8Source) else list(frames)
        self.keyframe_indices = [i for i, f in enumerate(self.frames) if is_vp8_keyframe(f)]
        if self.live is None and not self.frames:
            raise ValueError("a video layer needs at least one frame")
        if self.live is None and not self.keyframe_indices:
            raise ValueError(f"layer {rid!r}: the clip has no VP8 keyframe")
        self.ssrc = random.getrandbits(32) or 1
        self.rtx_ssrc = random.getrandbits(32) or 2
        self.seq = random.getrandbits(16)
        self.rtx_seq = random.getrandbits(16)
        self.ts_base = random.getrandbits(32)
        self.picture_id = random.getrandbits(15)
        self.index = self.keyframe_indices[0] if self.keyframe_indices else 0
        self.active = True
        self.cache = RtxCache(1024)
        self.last_ts = self.ts_base
        self.last_ts_ms = 0.0
        self.frames_sent = 0
        self.packets_sent = 0
        self.bytes_sent = 0
        self.keyframes_sent = 0
        self.plis = 0
        self.nacked = 0
        self.rtx_sent = 0

    def jump_to_keyframe(self) -> None:
        """Answer a PLI: the next frame sent is a keyframe (live: of the picture then;
        a clip: its next keyframe)."""
        if self.live is not None:
            self.live.jump_to_keyframe()
            return
        current = self.index
        nxt = next((k for k in self.keyframe_indices if k >= current), self.keyframe_indices[0])
        self.index = nxt

    def next_frame(self) -> tuple[bytes, bool] | None:
        """The next frame to send and whether it is a keyframe (None: none this time)."""
        if self.live is not None:
            return self.live.next_frame()
        frame = self.frames[self.index]
        self.index = (self.index + 1) % len(self.frames)
        return frame, is_vp8_keyframe(frame)

    def summary(self) -> dict[str, Any]:
        return {
            "rid": self.rid,
            "ssrc": self.ssrc,
            "rtx_ssrc": self.rtx_ssrc,
            "active": self.active,
            "frames_sent": self.frames_sent,
            "packets_sent": self.packets_sent,
            "bytes_sent": self.bytes_sent,
            "keyframes_sent": self.keyframes_sent,
            "plis": self.plis,
            "nacked": self.nacked,
            "rtx_sent": self.rtx_sent,
        }


def _encode_layers(layers: list[VideoLayer]) -> list[tuple[bytes, bool] | None]:
    """The next frame of each live layer (run on a worker thread), stamped now."""
    return [layer.next_frame() for layer in layers]


class AudioStream:
    def __init__(self, packets: Sequence[bytes]) -> None:
        if not packets:
            raise ValueError("audio needs at least one Opus packet")
        self.packets = list(packets)
        self.ssrc = random.getrandbits(32) or 3
        self.seq = random.getrandbits(16)
        self.ts_base = random.getrandbits(32)
        self.index = 0
        self.last_ts = self.ts_base
        self.last_ts_ms = 0.0
        self.packets_sent = 0
        self.bytes_sent = 0


class LitePublisher(LiteTransport):
    """The publisher PC: paces pre-encoded VP8 (1..3 simulcast layers) and Opus.

    Sending is done by two tasks on absolute deadlines (frame ``n`` at ``start + n/fps``,
    so loop jitter does not accumulate into drift); a frame is packetized per RFC 7741
    and sent as one burst, like a browser without a pacer. RTCP from Ferry is answered
    here: NACK -> RTX from the per-layer cache (on the layer's RTX SSRC, with
    repaired-rid), PLI/FIR -> jump to the next keyframe.
    """

    def __init__(
        self,
        certificate: Certificate,
        layers: list[VideoLayer],
        audio: AudioStream | None,
        *,
        fps: int,
        simulcast: bool,
        name: str = "publisher",
        candidate_rewrite: CandidateRewrite | None = None,
    ) -> None:
        super().__init__(name, certificate, candidate_rewrite=candidate_rewrite)
        self.layers = layers
        self.audio = audio
        self.fps = fps
        self.simulcast = simulcast
        self.video_mid = b""
        self.audio_mid = b""
        self.cname = secrets.token_hex(8)
        self._by_ssrc = {layer.ssrc: layer for layer in layers}
        self._twcc_seq = random.getrandbits(16)
        self._tasks: list[asyncio.Task[None]] = []
        self._next_sr_ms = 0.0
        self._wall_offset = time.time() - self._loop.time()
        self.twcc_feedback_received = 0
        self.receiver_reports: dict[int, RtcpReceiverInfo] = {}

    def set_mids(self, audio_mid: str | None, video_mid: str | None) -> None:
        self.audio_mid = (audio_mid or "").encode("ascii")
        self.video_mid = (video_mid or "").encode("ascii")

    # -- pacing --------------------------------------------------------------------------
    def start_media(self) -> None:
        if self._tasks:
            return
        if any(layer.live is not None for layer in self.layers):
            self._tasks.append(asyncio.ensure_future(self._pace_live()))
        elif self.layers:
            self._tasks.append(asyncio.ensure_future(self._pace(self.fps, self._send_frames)))
        if self.audio is not None:
            self._tasks.append(asyncio.ensure_future(self._pace(50, self._send_audio)))

    async def _pace(self, rate: int, emit: Callable[[int, float], None]) -> None:
        """Call ``emit(n, now_ms)`` for tick n at start + n/rate; catch up at most 5 ticks."""
        loop = self._loop
        start = loop.time()
        n = 0
        try:
            while self.state == "connected":
                now = loop.time()
                due = int((now - start) * rate) + 1
                if due - n > 5:  # stalled (loop overload): resync rather than burst
                    n = due - 1
                while n < due:
                    emit(n, now * 1000.0)
                    n += 1
                await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log_once("pacer_error", repr(exc))
            logger.debug("%s: pacer error", self.name, exc_info=True)

    async def _pace_live(self) -> None:
        """Frame ``n`` of live layers at ``start + n/fps``: each is encoded on a worker
        thread (libvpx releases the GIL) while the loop goes on receiving; a tick the
        encoder missed is skipped, as a camera drops frames, rather than sent late."""
        loop = self._loop
        start = loop.time()
        n = 0
        try:
            while self.state == "connected":
                active = [layer for layer in self.layers if layer.active]
                frames = await loop.run_in_executor(None, _encode_layers, active)
                if self.state != "connected":
                    break
                now = loop.time()
                ts_step = 90000 // self.fps
                for layer, got in zip(active, frames, strict=True):
                    self._send_frame(layer, (layer.ts_base + n * ts_step) & 0xFFFFFFFF, now * 1000.0, got)
                n = max(n + 1, int((loop.time() - start) * self.fps) + 1)
                await asyncio.sleep(max(0.0, start + n / self.fps - loop.time()))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log_once("pacer_error", repr(exc))
            logger.debug("%s: live pacer error", self.name, exc_info=True)

    def _next_twcc(self) -> bytes:
        self._twcc_seq = (self._twcc_seq + 1) & 0xFFFF
        return build_twcc_seq(self._twcc_seq)

    def _send_frames(self, n: int, now_ms: float) -> None:
        ts_step = 90000 // self.fps
        for layer in self.layers:
            if layer.active:
                self._send_frame(layer, (layer.ts_base + n * ts_step) & 0xFFFFFFFF, now_ms)

    def _send_frame(
        self, layer: VideoLayer, timestamp: int, now_ms: float, got: tuple[bytes, bool] | None = None
    ) -> None:
        """Packetize and send one frame: ``got`` when encoded already, else the layer's next."""
        if got is None and layer.live is None:
            got = layer.next_frame()
        if got is None:
            return  # the live encoder dropped this frame
        frame, key = got
        pid = layer.picture_id
        layer.picture_id = (pid + 1) & 0x7FFF
        pid_bytes = bytes((0x80 | (pid >> 8), pid & 0xFF))
        chunk = MAX_PAYLOAD - VP8_DESCRIPTOR
        total = len(frame)
        mid, rid = self.video_mid, layer.rid_bytes
        for offset in range(0, total, chunk):
            first = offset == 0
            descriptor = bytes((0x90 if first else 0x80, 0x80)) + pid_bytes
            extensions = [(EXT_ID_MID, mid)]
            if rid:
                extensions.append((EXT_ID_RID, rid))
            extensions.append((EXT_ID_TWCC, self._next_twcc()))
            seq = layer.seq
            layer.seq = (seq + 1) & 0xFFFF
            packet = build_rtp(
                payload_type=PT_VP8,
                seq=seq,
                timestamp=timestamp,
                ssrc=layer.ssrc,
                payload=descriptor + frame[offset : offset + chunk],
                marker=offset + chunk >= total,
                extensions=extensions,
            )
            layer.cache.put(seq, packet, now_ms)
            layer.packets_sent += 1
            layer.bytes_sent += len(packet)
            self.send_rtp(packet)
        layer.frames_sent += 1
        layer.keyframes_sent += key
        layer.last_ts, layer.last_ts_ms = timestamp, now_ms

    def _send_audio(self, n: int, now_ms: float) -> None:
        audio = self.audio
        assert audio is not None
        payload = audio.packets[audio.index]
        audio.index = (audio.index + 1) % len(audio.packets)
        timestamp = (audio.ts_base + n * 960) & 0xFFFFFFFF
        packet = build_rtp(
            payload_type=PT_OPUS,
            seq=audio.seq,
            timestamp=timestamp,
            ssrc=audio.ssrc,
            payload=payload,
            marker=n == 0,
            extensions=[
                (EXT_ID_AUDIO_LEVEL, _AUDIO_LEVEL),
                (EXT_ID_MID, self.audio_mid),
                (EXT_ID_TWCC, self._next_twcc()),
            ],
        )
        audio.seq = (audio.seq + 1) & 0xFFFF
        audio.packets_sent += 1
        audio.bytes_sent += len(packet)
        audio.last_ts, audio.last_ts_ms = timestamp, now_ms
        self.send_rtp(packet)

    # -- dynacast ----------------------------------------------------------------------
    def set_layers(self, wanted: dict[str, Any]) -> None:
        """``publisher_layers``: pause/resume layers by rid; a resumed layer restarts on a keyframe."""
        for layer in self.layers:
            if layer.rid is None or layer.rid not in wanted:
                continue
            on = bool(wanted[layer.rid])
            if on and not layer.active:
                layer.jump_to_keyframe()
            layer.active = on

    # -- RTCP in -----------------------------------------------------------------------
    def handle_rtcp(self, packet: bytes, now_ms: float) -> None:
        for p in self.rtcp_packets(packet):
            if isinstance(p, RtcpRtpfbPacket) and p.fmt == 1:
                layer = self._by_ssrc.get(p.media_ssrc)
                if layer is not None:
                    self._retransmit(layer, nack_seqs(p), now_ms)
            elif isinstance(p, RtcpPsfbPacket) and p.fmt == 1:
                self._keyframe(p.media_ssrc)
            elif isinstance(p, Fir):
                for ssrc, _ in p.entries:
                    self._keyframe(ssrc)
            elif isinstance(p, TwccFeedback):
                self.twcc_feedback_received += 1
            elif isinstance(p, (RtcpRrPacket, RtcpSrPacket)):
                for report in p.reports:
                    self.receiver_reports[report.ssrc] = report

    def _keyframe(self, ssrc: int) -> None:
        layer = self._by_ssrc.get(ssrc)
        if layer is not None:
            layer.plis += 1
            layer.jump_to_keyframe()

    def _retransmit(self, layer: VideoLayer, seqs: list[int], now_ms: float) -> None:
        layer.nacked += len(seqs)
        for seq in seqs:
            original = layer.cache.get(seq, now_ms)
            if original is None:
                continue
            view = parse_rtp(original)
            extensions = [(EXT_ID_MID, self.video_mid)]
            if layer.rid_bytes:
                extensions.append((EXT_ID_RRID, layer.rid_bytes))
            extensions.append((EXT_ID_TWCC, self._next_twcc()))
            rtx_seq = layer.rtx_seq
            layer.rtx_seq = (rtx_seq + 1) & 0xFFFF
            packet = build_rtp(
                payload_type=PT_RTX,
                seq=rtx_seq,
                timestamp=view.timestamp,
                ssrc=layer.rtx_ssrc,
                payload=view.seq.to_bytes(2, "big") + bytes(view.payload),
                marker=view.marker,
                extensions=extensions,
            )
            layer.rtx_sent += 1
            self.send_rtp(packet)

    # -- reports -----------------------------------------------------------------------
    def on_tick(self, now_ms: float) -> None:
        if now_ms < self._next_sr_ms:
            return
        self._next_sr_ms = now_ms + SR_INTERVAL_MS
        ntp = ntp_from_unix(self._wall_offset + now_ms / 1000.0)
        chunk = b""
        streams: list[tuple[int, int, float, int, int, int]] = [
            (
                layer.ssrc,
                layer.last_ts,
                layer.last_ts_ms,
                90000,
                layer.packets_sent,
                layer.bytes_sent,
            )
            for layer in self.layers
            if layer.packets_sent
        ]
        audio = self.audio
        if audio is not None and audio.packets_sent:
            streams.append(
                (
                    audio.ssrc,
                    audio.last_ts,
                    audio.last_ts_ms,
                    48000,
                    audio.packets_sent,
                    audio.bytes_sent,
                )
            )
        for ssrc, last_ts, last_ms, rate, count, octets in streams:
            rtp_ts = last_ts + int((now_ms - last_ms) * rate / 1000.0)
            chunk += build_sr(ssrc, ntp, rtp_ts, count, octets) + build_sdes_cname(ssrc, self.cname)
        if chunk:
            self.send_rtcp(chunk)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        super().close()

    def summary(self) -> dict[str, Any]:
        audio = self.audio
        return {
            "state": self.state,
            "layers": {(layer.rid or "single"): layer.summary() for layer in self.layers},
            "audio": None
            if audio is None
            else {
                "ssrc": audio.ssrc,
                "packets_sent": audio.packets_sent,
                "bytes_sent": audio.bytes_sent,
            },
            "twcc_feedback_received": self.twcc_feedback_received,
            "packets_out": self.packets_out,
            "bytes_out": self.bytes_out,
        }
