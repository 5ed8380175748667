"""Speech through a real Ferry for the end-to-end caption tests.

A `Script` is espeak-ng sentences (and optional noise) laid on one 48 kHz timeline with
pauses; a LiteClient publishes it as Opus RTP in real time (with a tiny VP8 video, as a
LiteClient publishes video), once: long trailing silence keeps its loop from speaking
again while the test listens. Each sentence's voiced start and end are known as sample
offsets; `speech_unix_ms` maps an offset to the Unix time the publisher's RTCP sender
reports give it, which is the timeline the captions are timed by.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np

from clients.lite import LiteClient, encode_vp8_clip
from signaling.app import FerryServer

from .asr_media import silence, speak, white_noise

RATE = 48000
VOICED = 300  # |sample| above this is voice (espeak pads each sentence with silence)


@dataclass
class Line:
    text: str
    start: int  # first voiced sample on the timeline
    end: int  # last voiced sample


@dataclass
class Script:
    lines: list[Line] = field(default_factory=list)
    quiet: list[tuple[int, int]] = field(default_factory=list)  # noise or silence spans
    pcm: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int16))

    def add_silence(self, seconds: float, *, quiet: bool = False) -> Script:
        return self._append(silence(seconds, RATE), quiet)

    def add_noise(self, seconds: float, level: float = 3000.0) -> Script:
        return self._append(white_noise(seconds, RATE, level=level), True)

    def add_line(self, text: str, voice: str = "en-us") -> Script:
        speech = speak(text, voice=voice, rate=RATE)
        loud = np.flatnonzero(np.abs(speech.astype(np.int32)) > VOICED)
        at = len(self.pcm)
        self.lines.append(Line(text, at + int(loud[0]), at + int(loud[-1])))
        return self._append(speech, False)

    def _append(self, pcm: np.ndarray, quiet: bool) -> Script:
        if quiet:
            self.quiet.append((len(self.pcm), len(self.pcm) + len(pcm)))
        self.pcm = np.concatenate([self.pcm, pcm])
        return self

    def frames(self) -> list[bytes]:
        return opus_fec_frames(self.pcm)

    @property
    def seconds(self) -> float:
        return len(self.pcm) / RATE


def opus_fec_frames(pcm48: np.ndarray, *, bit_rate: int = 32000, expected_loss: int = 10) -> list[bytes]:
    """Mono 48 kHz int16 -> 20 ms mono Opus frames with in-band FEC, as a browser sends
    them on a lossy link (it sets the expected loss from the receiver reports it gets)."""
    pad = (-len(pcm48)) % 960
    pcm48 = np.concatenate([pcm48, np.zeros(pad, dtype=np.int16)])
    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate, ctx.layout, ctx.format, ctx.bit_rate = RATE, "mono", "s16", bit_rate
    ctx.options = {"fec": "1", "packet_loss": str(expected_loss)}
    out: list[bytes] = []
    for i in range(len(pcm48) // 960):
        frame = av.AudioFrame.from_ndarray(pcm48[i * 960 : (i + 1) * 960].reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = RATE, i * 960
        out += [bytes(p) for p in ctx.encode(frame)]
    out += [bytes(p) for p in ctx.encode(None)]
    return out[: len(pcm48) // 960]


def speech_unix_ms(client: LiteClient, sample: int) -> float:
    """Unix ms of timeline sample `sample`, as the publisher's sender reports map it.

    The packet that carried the sample got an RTP timestamp (recorded as it was sent:
    a stalled pacer skips timestamps); the sender reports tie `last_ts` to the wall
    clock at `last_ts_ms`, so any timestamp maps through that pair.
    """
    pub = client.publisher
    assert pub is not None and pub.audio is not None
    audio = pub.audio
    sent: dict[int, int] = client.sent_ts  # type: ignore[attr-defined]
    ts = (sent[sample // 960] + sample % 960) & 0xFFFFFFFF
    ahead = ((ts - audio.last_ts + 2**31) & 0xFFFFFFFF) - 2**31  # signed distance
    return pub._wall_offset * 1000.0 + audio.last_ts_ms + ahead / (RATE / 1000.0)


def _record_timestamps(client: LiteClient) -> None:
    """Keep the RTP timestamp each audio packet (by its index in the clip) was first sent with."""
    pub = client.publisher
    assert pub is not None and pub.audio is not None
    audio, original, sent = pub.audio, pub._send_audio, {}
    client.sent_ts = sent  # type: ignore[attr-defined]

    def send_audio(n: int, now_ms: float) -> None:
        index = audio.index
        original(n, now_ms)
        sent.setdefault(index, audio.last_ts)

    pub._send_audio = send_audio  # type: ignore[method-assign]


async def publish_script(
    server: FerryServer, room: str, identity: str, script: Script, *, tail_s: float = 30.0, rewrite: Any = None
) -> LiteClient:
    """A LiteClient in `room` publishing `script` (then `tail_s` of silence) from its first sample."""
    frames = opus_fec_frames(np.concatenate([script.pcm, silence(tail_s, RATE)]))
    client = LiteClient(name=identity, candidate_rewrite=rewrite)
    await client.connect(server.ws_url)
    await client.join(server.token(room, identity, name=identity.title()), auto_subscribe=False)
    video = encode_vp8_clip(64, 64, 10, 40_000, keyframe_interval=10)
    await client.publish_vp8(video, fps=5, simulcast_rids=None, audio=frames, wait_connected=False)
    _record_timestamps(client)  # before the media starts (on connect)
    await client.wait_connected("publisher")
    return client


def by_line(
    client: LiteClient, script: Script, finals: list[tuple[float, dict[str, Any]]]
) -> list[tuple[Line, list[tuple[float, dict[str, Any]]]]]:
    """Each line of `script` with the finals (arrival ms, event) whose time overlaps it."""
    out = []
    for line in script.lines:
        lo, hi = speech_unix_ms(client, line.start), speech_unix_ms(client, line.end)
        out.append((line, [(t, e) for t, e in finals if e["start_ms"] < hi and e["end_ms"] > lo]))
    return out


class Listener:
    """A participant that records every caption event with the wall-clock time it arrived."""

    def __init__(self, client: LiteClient) -> None:
        self.client = client
        self.events: list[tuple[float, dict[str, Any]]] = []
        client.on_event.append(self._on_event)

    def _on_event(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "caption":
            self.events.append((time.time() * 1000.0, msg))

    @classmethod
    async def join(cls, server: FerryServer, room: str, identity: str = "listener", **grants: Any) -> Listener:
        client = LiteClient(name=identity)
        listener = cls(client)
        await client.connect(server.ws_url)
        await client.join(server.token(room, identity, **grants), auto_subscribe=False)
        return listener

    def finals(self, identity: str | None = None) -> list[tuple[float, dict[str, Any]]]:
        return [
            (t, e) for t, e in self.events
            if e["final"] and e["text"] and (identity is None or e["identity"] == identity)
        ]

    def partials(self, identity: str | None = None) -> list[tuple[float, dict[str, Any]]]:
        return [(t, e) for t, e in self.events if not e["final"] and (identity is None or e["identity"] == identity)]

    def text(self, identity: str | None = None) -> str:
        return " ".join(e["text"] for _, e in self.finals(identity))
