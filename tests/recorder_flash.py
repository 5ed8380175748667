"""A test source whose picture flashes exactly when its audio beeps, and recordings of it.

Each person's camera is dark grey except for `FLASH_S` after every flash time,
when it is white; their microphone is silent except for a 1 kHz beep at exactly
the same times. They are encoded for real (libvpx, libopus) and fed through the
recorder core as packets with RTCP sender reports, audio and video on different
RTP bases and arriving at different delays, so the only way a composite can
line them up is the manifest's clock mapping. Used by the compose and HLS tests
and by bench/record.py. The detectors at the end find flashes and beeps again in
what the composite and the HLS renderer made.
"""

from __future__ import annotations

import fractions
import functools
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from media.rtp.ntp import ntp_from_unix
from recorder.compose_layout import Rect
from recorder.recording import Recording
from recorder.track_recorder import TrackRecorder

from .recorder_media import FakeHost, Pkt, encode_opus_pcm, packetize, wait_until

FPS = 30
FLASH_S = 0.1
DARK, BRIGHT = 40, 220
BEEP_HZ, BEEP_AMP = 1000.0, 0.5
VIDEO_DELAY_MS = 60.0  # the network delays video more than audio: arrival time is not capture time


@dataclass(slots=True)
class Person:
    sid: str
    identity: str
    name: str
    start_s: float  # wall time of their first frame, from the recording's start
    seconds: float
    flashes: tuple[float, ...]  # flash / beep times from their own start
    screen: bool = False  # also share a screen (a flat mid grey picture)
    camera: bool = True  # False: audio only
    files: dict[str, str] = field(default_factory=dict)


@functools.lru_cache(maxsize=16)
def flash_video(n: int, flashes: tuple[float, ...], width: int = 160, height: int = 120,
                level: int = -1, texture: str = "flat", gop: int = FPS) -> tuple[tuple[bytes, bool], ...]:
    """`n` VP8 frames at FPS, a keyframe every `gop`; white during each flash (or flat `level` if given).

    `texture` between flashes: "flat" grey; "camera" a slowly moving lit shape on a
    gradient with a little sensor noise (what a webcam sends); "noise" a moving
    noise texture (the worst case for every codec).
    """
    ctx = av.CodecContext.create("libvpx", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = fractions.Fraction(1, FPS)
    ctx.framerate = FPS
    ctx.gop_size = gop
    ctx.bit_rate = 300_000 if texture == "flat" else 1_000_000
    ctx.options = {"deadline": "realtime", "cpu-used": "16", "threads": "1"}
    chroma = np.full((height // 2, width), 128, np.uint8)
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 60, (height, width), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for i in range(n):
        t = i / FPS
        on = any(f <= t < f + FLASH_S for f in flashes)
        value = level if level >= 0 else (BRIGHT if on else DARK)
        luma = np.full((height, width), value, np.uint8)
        if texture == "noise" and not on:
            luma = luma + np.roll(noise, i * 3, axis=1)
        elif texture == "camera" and not on:
            cx, cy = width * (0.5 + 0.08 * np.sin(t * 1.3)), height * (0.55 + 0.05 * np.sin(t * 0.7))
            head = ((xx - cx) / (width * 0.16)) ** 2 + ((yy - cy) / (height * 0.3)) ** 2 < 1
            shade = 30 + xx * 40 // width + yy * 20 // height + 90 * head
            luma = (shade + rng.integers(0, 4, (height, width))).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(np.vstack([luma, chroma]), format="yuv420p")
        frame.pts = i
        out += [(bytes(p), bool(p.is_keyframe)) for p in ctx.encode(frame)]
    out += [(bytes(p), bool(p.is_keyframe)) for p in ctx.encode(None)]
    return tuple(out[:n])


@functools.lru_cache(maxsize=16)
def beep_audio(n: int, flashes: tuple[float, ...]) -> tuple[bytes, ...]:
    """`n` 20 ms Opus frames: silence, and a 1 kHz beep during each flash."""
    t = np.arange(960 * n) / 48000.0
    on = np.zeros(len(t), bool)
    for f in flashes:
        on |= (t >= f) & (t < f + FLASH_S)
    pcm = (np.sin(2 * np.pi * BEEP_HZ * t) * BEEP_AMP * 32767 * on).astype(np.int16)
    # libopus delays its output by its pre-skip (312 samples): packet i holds what
    # was captured 6.5 ms earlier, as a browser's would; the Ogg header says so.
    return encode_opus_pcm(pcm, 64000)


def packets(person: Person, index: int, width: int = 160, height: int = 120,
            texture: str = "flat") -> dict[str, list[tuple[float, Pkt]]]:
    """(capture ms from the recording's start, packet) per track kind of `person`."""
    nv, na = round(person.seconds * FPS), round(person.seconds * 50)
    start_ms = person.start_s * 1000.0
    video = [f for f, _ in flash_video(nv, person.flashes, width, height, texture=texture)]
    vp = packetize("vp8", video, ssrc=10 + index, ts0=(123_456 + index * 7_777_777) & 0xFFFFFFFF)
    ap = packetize("opus", list(beep_audio(na, person.flashes)), ssrc=20 + index, ts_step=960,
                   ts0=(3_999_999_000 + index * 55_555) & 0xFFFFFFFF)
    out = {"video": [(start_ms + p.frame * 1000.0 / FPS, p) for p in vp],
           "audio": [(start_ms + p.frame * 20.0, p) for p in ap]}
    if not person.camera:
        del out["video"]
    if person.screen:
        screen = [f for f, _ in flash_video(nv, (), width, height, level=180)]
        sp = packetize("vp8", screen, ssrc=30 + index, ts0=77_000 + index)
        out["screen"] = [(start_ms + p.frame * 1000.0 / FPS, p) for p in sp]
    return out


class Feeder:
    """Feeds people's packets to a `Recording` in capture order, with sender reports."""

    def __init__(self, rec: Recording, people: list[Person], **media: object) -> None:
        self.rec = rec
        self.events: list[tuple[float, int, TrackRecorder, Pkt, float]] = []
        for index, person in enumerate(people):
            rec.add_participant(person.sid, person.identity, person.name)
            for kind, pkts in packets(person, index, **media).items():  # type: ignore[arg-type]
                audio = kind == "audio"
                sink = rec.add_track(sid=f"TR_{person.identity}_{kind}", participant_sid=person.sid,
                                     kind="audio" if audio else "video",
                                     source={"audio": "microphone", "video": "camera"}.get(kind, "screen"),
                                     codec="opus" if audio else "vp8",
                                     clock_rate=48000 if audio else 90000, host=FakeHost())
                person.files[kind] = sink.entry.file
                delay = 0.0 if audio else VIDEO_DELAY_MS
                for capture, p in pkts:
                    self.events.append((capture + delay, len(self.events), sink, p, capture))
        self.events.sort(key=lambda e: (e[0], e[1]))
        self.sent = 0
        self._reported: set[int] = set()

    def feed_until(self, now_ms: float) -> None:
        """Deliver every packet that has arrived by `now_ms` (recording time)."""
        rec = self.rec
        while self.sent < len(self.events) and self.events[self.sent][0] <= now_ms:
            arrival, _, sink, p, capture = self.events[self.sent]
            self.sent += 1
            key = id(sink)
            if key not in self._reported or p.frame % 25 == 0:  # an SR now and then
                self._reported.add(key)
                ntp = ntp_from_unix(rec.unix_offset_s + capture / 1000.0)
                sink.on_sender_report(0, ntp, p.view.timestamp, arrival)
            sink.on_packet(p.layer, p.view, p.ext_seq, p.keyframe, arrival)
            rec.on_timer(arrival)
            if rec.worker.pending > 256:  # fed faster than real time: let the writer catch up
                wait_until(lambda: rec.worker.pending < 64)

    @property
    def end_ms(self) -> float:
        return self.events[-1][0] if self.events else 0.0


def record(directory: str, people: list[Person], unix_offset_s: float = 1.7e9,
           **media: object) -> Recording:
    """A finished recording of `people` (fed as fast as it goes)."""
    rec = Recording(directory, room="class", recording_id="r1", unix_offset_s=unix_offset_s, now_ms=0.0)
    feeder = Feeder(rec, people, **media)
    feeder.feed_until(feeder.end_ms)
    rec.stop(feeder.end_ms + 100.0)
    return rec


# -- detecting flashes and beeps in rendered output ----------------------------------
BEEP_WINDOW = 240  # 5 ms at 48 kHz


def decode(path: Path | str) -> tuple[list[float], list[np.ndarray], np.ndarray]:
    """(frame times, YUV 4:2:0 frames, mono samples at 48 kHz) of a file or playlist."""
    with av.open(str(path)) as c:
        frames = [(float(f.time), f.to_ndarray()) for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        pcm = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)])
    return [t for t, _ in frames], [f for _, f in frames], pcm


def luma(frame: np.ndarray, r: Rect) -> float:
    """Mean luma of a tile's middle (clear of its label and border)."""
    return float(frame[r.y + r.h // 4 : r.y + r.h // 2, r.x + r.w // 3 : r.x + 2 * r.w // 3].mean())


def onsets(values: list[float] | np.ndarray, times: list[float] | np.ndarray, threshold: float) -> list[float]:
    """Times where `values` rise above `threshold`."""
    on = np.asarray(values) > threshold
    return [float(times[i]) for i in range(1, len(on)) if on[i] and not on[i - 1]]


def beep_onsets(pcm: np.ndarray, start_s: float = 0.0) -> list[float]:
    """Beep starts in 48 kHz mono samples: RMS over 0.1 in 5 ms windows."""
    n = len(pcm) // BEEP_WINDOW
    rms = np.sqrt(np.mean(pcm[: n * BEEP_WINDOW].reshape(-1, BEEP_WINDOW) ** 2, axis=1))
    return onsets(rms, start_s + np.arange(n) * BEEP_WINDOW / 48000, 0.1)


def flash_onsets(times: list[float], frames: list[np.ndarray], tile: Rect, after_s: float = -1e9) -> list[float]:
    """Times where a tile turns bright (a flash), among frames from `after_s` on."""
    shown = [(t, luma(f, tile)) for t, f in zip(times, frames, strict=True) if t >= after_s]
    return onsets([v for _, v in shown], [t for t, _ in shown], 130)


def ffprobe_codecs(path: Path | str) -> list[str]:
    """Codec names of a file's streams, once each (MPEG-TS lists its streams twice)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name", "-of", "csv=p=0",
                          str(path)], capture_output=True, text=True, check=True)
    return list(dict.fromkeys(out.stdout.split()))


def playlist_segments(text: str) -> list[str]:
    """The segment names an HLS media playlist lists."""
    return [line for line in text.splitlines() if line and not line.startswith("#")]
