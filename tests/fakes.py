"""Fakes at the routing seams (STYLE habit 7): sinks that record, a manual clock,
and packet builders for VP8 simulcast layers and Opus / RED audio.

Every builder returns plain bytes; tests parse them with `parse_rtp` and feed the
view to `Layer.on_packet`, exactly as `PublisherPeer.on_rtp` does. Payloads end
with a tag naming their origin (layer and input seq), so a test can map every
forwarded packet back to the input packet it came from.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from media.wire.red import build_red
from media.wire.rtp import RtpView, build_rtp, parse_rtp
from media.wire.vp8 import parse_vp8

# --------------------------------------------------------------------------- clock


class ManualClock:
    """Monotonic milliseconds that move only when a test says so."""

    def __init__(self, start_ms: float = 0.0) -> None:
        self.now_ms = start_ms

    def __call__(self) -> float:
        return self.now_ms

    def advance(self, ms: float) -> float:
        if ms < 0:
            raise ValueError("a monotonic clock cannot go back")
        self.now_ms += ms
        return self.now_ms


# --------------------------------------------------------------------------- sinks


@dataclass
class SentPacket:
    data: bytes
    kind: str  # "video" | "audio" | "rtx"
    now_ms: float

    @property
    def view(self) -> RtpView:
        return parse_rtp(self.data)

    @property
    def payload(self) -> bytes:
        return bytes(self.view.payload)

    @property
    def tag(self) -> tuple[int, int] | None:
        """(layer, input seq) named by the payload's origin tag, if any."""
        return parse_tag(self.data)


@dataclass
class FakeDownTrackSink:
    """A `DownTrackSink` (the subscriber transport) that records what it is given."""

    sent: list[SentPacket] = field(default_factory=list)

    def send_rtp(self, packet: bytes, kind: str, now_ms: float) -> None:
        assert isinstance(packet, bytes)
        self.sent.append(SentPacket(packet, kind, now_ms))

    def resend_rtp(self, packet: bytes, now_ms: float) -> bool:
        self.sent.append(SentPacket(packet, "resend", now_ms))
        return True

    def media(self) -> list[SentPacket]:
        return [p for p in self.sent if p.kind != "rtx"]

    def rtx(self) -> list[SentPacket]:
        return [p for p in self.sent if p.kind == "rtx"]

    def take(self) -> list[SentPacket]:
        """Everything sent since the last take (and forget it)."""
        out, self.sent = self.sent, []
        return out


@dataclass
class FakeKeyframeSink:
    """A `KeyframeSink` (the publisher transport) that records PLIs by media SSRC."""

    plis: list[int] = field(default_factory=list)

    def send_pli(self, media_ssrc: int) -> None:
        self.plis.append(media_ssrc)


# --------------------------------------------------------------------------- tags

_TAG = re.compile(rb"<L(\d+)S(\d+)>")


def make_tag(layer: int, seq: int) -> bytes:
    return b"<L%dS%d>" % (layer, seq)


def parse_tag(data: bytes | memoryview) -> tuple[int, int] | None:
    found = _TAG.findall(bytes(data))
    if not found:
        return None
    layer, seq = found[-1]  # the primary block of a RED payload comes last
    return int(layer), int(seq)


# --------------------------------------------------------------------------- VP8


def vp8_payload(
    *,
    picture_id: int | None,
    tl0picidx: int | None = None,
    tid: int | None = None,
    keyframe: bool = False,
    start: bool = True,
    body: bytes = b"",
    width: int = 640,
    height: int = 360,
) -> bytes:
    """One VP8 RTP payload: descriptor (15-bit picture id) + a minimal frame header.

    With `start` and `keyframe`, the payload header says key frame and carries the
    start code and size (so `parse_vp8(...).is_keyframe`); with `start` and not
    `keyframe` it says inter frame; without `start` it is a continuation packet.
    """
    x = 0
    ext = bytearray()
    if picture_id is not None:
        x |= 0x80
        ext += bytes((0x80 | (picture_id >> 8) & 0x7F, picture_id & 0xFF))
    if tl0picidx is not None:
        x |= 0x40
        ext.append(tl0picidx & 0xFF)
    if tid is not None:
        x |= 0x20
        ext.append((tid & 0x03) << 6)
    b0 = 0x80 | (0x10 if start else 0)
    desc = bytes((b0, x)) + bytes(ext)
    if start and keyframe:
        # Frame tag with P=0 (key frame), start code, 14-bit width/height LE.
        head = (
            b"\x50\x02\x00\x9d\x01\x2a" + width.to_bytes(2, "little") + height.to_bytes(2, "little")
        )
    elif start:
        head = b"\x51\x02\x00"  # P=1: inter frame
    else:
        head = b"\xaa"
    return desc + head + body


@dataclass
class Vp8Layer:
    """One simulcast encoding as a publisher sends it: its own SSRC, seq, timestamp,
    15-bit picture id and TL0PICIDX. `frame()` builds every packet of one frame and
    advances the counters (all 16/32/15/8-bit fields wrap)."""

    index: int
    ssrc: int
    seq: int = 1000
    ts: int = 90_000
    picture_id: int = 100
    tl0picidx: int = 10
    payload_type: int = 96
    ts_step: int = 3000  # 30 fps at 90 kHz

    def frame(self, *, keyframe: bool = False, packets: int = 1) -> list[bytes]:
        out = []
        for i in range(packets):
            seq = self.seq
            payload = vp8_payload(
                picture_id=self.picture_id,
                tl0picidx=self.tl0picidx,
                tid=0,
                keyframe=keyframe,
                start=i == 0,
                body=make_tag(self.index, seq),
            )
            out.append(
                build_rtp(
                    payload_type=self.payload_type,
                    seq=seq,
                    timestamp=self.ts,
                    ssrc=self.ssrc,
                    payload=payload,
                    marker=i == packets - 1,
                )
            )
            self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + self.ts_step) & 0xFFFFFFFF
        self.picture_id = (self.picture_id + 1) & 0x7FFF
        self.tl0picidx = (self.tl0picidx + 1) & 0xFF
        return out


def vp8_fields(packet: bytes) -> tuple[int | None, int | None, bool]:
    """(picture id, TL0PICIDX, is keyframe) of a forwarded VP8 packet."""
    desc = parse_vp8(parse_rtp(packet).payload)
    return desc.picture_id, desc.tl0picidx, desc.is_keyframe


# --------------------------------------------------------------------------- audio


def opus_frame(seq: int) -> bytes:
    """A distinct stand-in Opus frame for input seq `seq`."""
    return b"\xfc" + make_tag(0, seq)


@dataclass
class OpusStream:
    """An Opus publisher, sending plain Opus or Chrome-style RED (PT 63, the previous
    `distance` frames as redundant blocks, oldest first), with an optional RFC 6464
    audio level extension."""

    ssrc: int
    seq: int = 5000
    ts: int = 48_000
    payload_type: int = 111
    red_pt: int = 63
    ts_step: int = 960  # 20 ms at 48 kHz
    audio_level_ext_id: int | None = None
    history: list[tuple[int, int]] = field(default_factory=list)  # (seq, ts) sent or skipped

    def next(self, *, red: bool, distance: int = 2, level: int | None = None) -> bytes:
        seq, ts = self.seq, self.ts
        if red:
            redundant = (
                [
                    ((ts - old_ts) & 0xFFFFFFFF, opus_frame(old_seq))
                    for old_seq, old_ts in self.history[-distance:]
                ]
                if distance
                else []
            )
            payload = build_red(self.payload_type, opus_frame(seq), redundant)
            pt = self.red_pt
        else:
            payload = opus_frame(seq)
            pt = self.payload_type
        extensions: Sequence[tuple[int, bytes]] = ()
        if self.audio_level_ext_id is not None and level is not None:
            extensions = [(self.audio_level_ext_id, bytes((level,)))]
        self.history.append((seq, ts))
        self.seq = (seq + 1) & 0xFFFF
        self.ts = (ts + self.ts_step) & 0xFFFFFFFF
        return build_rtp(
            payload_type=pt,
            seq=seq,
            timestamp=ts,
            ssrc=self.ssrc,
            payload=payload,
            extensions=extensions,
        )
