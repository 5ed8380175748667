"""`ferry record compose DIR --out FILE.mp4`: the recording as one video, without a browser.

A grid of the participants (names, active speaker highlighted, screen share in the
big tile; see `compose_scene`), their audio mixed, captions from a transcript as a
mov_text subtitle track (see `captions`), encoded to H.264 + AAC in an MP4 with
its index at the front (`faststart`, for playing over HTTP). Runs as fast as the
machine allows: decoders on their own threads, compositing as numpy slices on
YUV 4:2:0, x264 `veryfast` by default.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any, TextIO

import av

from . import manifest as mf
from .captions import Caption, load_captions, mov_text
from .compose_scene import Scene
from .compose_sources import RATE

__all__ = ["Progress", "compose", "h264_encoder", "open_streams"]

H264_ENCODERS = ("libx264", "libopenh264", "h264")


def h264_encoder() -> str:
    """libx264 when PyAV has it, else another H.264 encoder it has."""
    for name in H264_ENCODERS:
        if name in av.codecs_available:
            try:
                av.codec.Codec(name, "w")
                return name
            except Exception:  # noqa: S112 - a decoder-only name: try the next one
                continue
    raise RuntimeError("this PyAV build has no H.264 encoder")


def open_streams(container: Any, width: int, height: int, fps: Fraction, *, preset: str,
                 crf: int, gop: int, audio_kbit: int = 96, tune: str | None = None) -> tuple[Any, Any]:
    """Add the H.264 video and AAC (mono, 48 kHz) streams the composite is encoded to.

    A keyframe exactly every `gop` frames (no scene-cut ones), so HLS segments and
    seeking land on a regular grid.
    """
    name = h264_encoder()
    options = {"preset": preset, "crf": str(crf)} if name == "libx264" else {}
    if name == "libx264":
        options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
        if tune:
            options["tune"] = tune
    video = container.add_stream(name, rate=fps, options=options)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    video.codec_context.gop_size = gop
    audio = container.add_stream("aac", rate=RATE, layout="mono")
    audio.bit_rate = audio_kbit * 1000
    return video, audio


class Progress:
    """A one-line progress bar on stderr (no dependency): percent, media time, speed."""

    def __init__(self, total_s: float, stream: TextIO | None = None, width: int = 30) -> None:
        self.total_s = max(total_s, 1e-9)
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, done_s: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.25:
            return
        self._last = now
        share = min(1.0, done_s / self.total_s)
        filled = round(share * self.width)
        speed = done_s / max(now - self.started, 1e-9)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {share * 100:5.1f}% {done_s:7.1f}/{self.total_s:.1f} s {speed:4.1f}x")
        self.stream.flush()

    def finish(self, done_s: float) -> None:
        self.update(done_s, force=True)
        self.stream.write("\n")
        self.stream.flush()


def compose(directory: str | os.PathLike[str], out: str | os.PathLike[str], *, width: int = 1280,
            height: int = 720, fps: float = 25.0, preset: str = "veryfast", crf: int = 23,
            progress: Callable[[float, float], None] | Progress | None = None) -> dict[str, Any]:
    """Render the recording in `directory` to the MP4 `out`; returns what was made.

    `progress` is a `Progress` bar or a callback `(done_s, total_s)`, per frame.
    Raises ValueError when the recording has no track with timing (nothing to show).
    """
    manifest = mf.load(directory)
    scene = Scene(directory, width=width, height=height, fps=fps, live=False)
    scene.update(manifest)
    duration = scene.duration_s
    if not scene.tracks or duration <= 0:
        raise ValueError(f"{directory}: no track with timing to compose")
    assert scene.t0 is not None
    if isinstance(progress, Progress):
        progress.total_s = duration
    rate = Fraction(fps).limit_denominator(1001)
    frames = math.ceil(duration * fps - 1e-6)  # not one more for a float's last bit
    names = {p.identity: p.name or p.identity for p in manifest.participants}
    names.update({p.sid: p.name or p.identity for p in manifest.participants})
    captions = load_captions(directory, scene.t0, names)
    started = time.monotonic()
    tmp = f"{out}.part"
    try:
        with av.open(tmp, "w", format="mp4", options={"movflags": "+faststart"}) as container:
            video, audio = open_streams(container, width, height, rate, preset=preset, crf=crf,
                                        gop=max(1, round(fps * 2)))
            subtitles = container.add_mux_stream("mov_text") if captions else None
            pending = list(captions or [])
            for k in range(frames):
                chunk = scene.audio(k)
                samples = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt", layout="mono")
                samples.sample_rate, samples.pts = RATE, round(k * RATE / fps)
                container.mux(audio.encode(samples))
                picture = scene.video(k)
                picture.pts = k
                container.mux(video.encode(picture))
                while pending and pending[0].start_ms <= (k + 1) * 1000 / fps:
                    _mux_caption(container, subtitles, pending.pop(0))
                if isinstance(progress, Progress):
                    progress.update(k / fps)
                elif progress is not None:
                    progress(k / fps, duration)
            for caption in pending:
                _mux_caption(container, subtitles, caption)
            container.mux(video.encode(None))
            container.mux(audio.encode(None))
        os.replace(tmp, out)
    finally:
        scene.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
    if isinstance(progress, Progress):
        progress.finish(frames / fps)
    took = time.monotonic() - started
    return {
        "out": str(out),
        "duration_s": round(frames / fps, 3),
        "frames": frames,
        "people": len(scene.people),
        "tracks": len(scene.tracks),
        "captions": len(captions or []),
        "seconds": round(took, 3),
        "speed_x": round(frames / fps / max(took, 1e-9), 2),
        "t0_unix": scene.t0,
        "state": manifest.state,  # "recording": still going, or crashed (repair it first)
    }


def _mux_caption(container: Any, stream: Any, caption: Caption) -> None:
    packet = av.Packet(mov_text(caption.text))
    packet.stream = stream
    packet.time_base = Fraction(1, 1000)
    packet.pts = packet.dts = caption.start_ms
    packet.duration = caption.end_ms - caption.start_ms
    container.mux(packet)
