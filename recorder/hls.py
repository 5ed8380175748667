"""Live HLS of a recording in progress: the composite, rendered as the files grow.

Its own process, so forwarding never waits on it (`python -m recorder.hls`):

    python -m recorder.hls --recording DIR/<room>/<id> --out HLSDIR
        [--width 1280 --height 720 --fps 25 --segment 2 --list-size 6 --delay 1.5]

It follows the recording's growing track files (see `compose_sources.TailFile`)
and its manifest (re-read when it changes), and renders the same composite as
`ferry record compose` (`compose_scene.Scene`) at the wall clock, `delay` seconds
behind it (the recorder flushes about every second), into
`HLSDIR/index.m3u8` + `HLSDIR/seg_00000.ts`, ...: MPEG-TS segments of `segment`
seconds, H.264 (a keyframe at every segment start) + AAC, a sliding playlist
of `list-size` segments (0: keep all, an EVENT playlist). `HLSDIR/stream.json`
says when composite time 0 is (`t0_unix`), the composite frame the stream starts
at (`first_frame`, at `fps`) and whether it is live (`state`: live / ended). A
previous stream's playlist and segments in HLSDIR are removed at start.

Started while a recording is under way, it begins at the live edge (wall clock
minus `delay`); given a stopped recording, it renders all of it as fast as it can
(an HLS copy of the recording). Stop: SIGTERM (or SIGINT) finishes the segment being written and ends the
playlist with EXT-X-ENDLIST, exit status 0. It also ends by itself once the
recording is stopped and everything in it has been rendered. Use `command()`,
`start()` and `stop()` to run it from Ferry.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from . import manifest as mf
from .compose import open_streams
from .compose_scene import Scene
from .compose_sources import RATE

__all__ = ["LiveRenderer", "command", "environment", "main", "start", "stop"]

log = logging.getLogger("ferry.recorder.hls")

PLAYLIST = "index.m3u8"
STATUS = "stream.json"
DELAY_S = 1.5  # behind the wall clock: the recorder flushes a cluster every second
MANIFEST_POLL_S = 0.5


def command(recording: str | os.PathLike[str], out: str | os.PathLike[str], *, width: int = 1280,
            height: int = 720, fps: float = 25.0, segment_s: float = 2.0, list_size: int = 6,
            delay_s: float = DELAY_S, python: str = sys.executable) -> list[str]:
    """The command line of a live HLS renderer (for `subprocess` / `asyncio` process APIs)."""
    return [python, "-m", "recorder.hls", "--recording", str(recording), "--out", str(out),
            "--width", str(width), "--height", str(height), "--fps", str(fps),
            "--segment", str(segment_s), "--list-size", str(list_size), "--delay", str(delay_s)]


def environment() -> dict[str, str]:
    """The renderer's environment: this one, with Ferry's checkout importable (`-m recorder.hls`)."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
    return env


def start(recording: str | os.PathLike[str], out: str | os.PathLike[str], **options: Any) -> subprocess.Popen[bytes]:
    """Start a renderer process (its stderr is the caller's; it logs little)."""
    return subprocess.Popen(command(recording, out, **options), stdin=subprocess.DEVNULL, env=environment())


def stop(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> int | None:
    """SIGTERM, then wait: the playlist gets its EXT-X-ENDLIST. Kills it after `timeout_s`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class LiveRenderer:
    """Renders a growing recording to HLS at the pace of `clock` (Unix seconds)."""

    def __init__(self, recording: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 width: int = 1280, height: int = 720, fps: float = 25.0, segment_s: float = 2.0,
                 list_size: int = 6, delay_s: float = DELAY_S, preset: str = "veryfast",
                 clock: Callable[[], float] = time.time) -> None:
        self.recording = Path(recording)
        self.out = Path(out)
        self.width, self.height, self.fps = width, height, fps
        self.segment_s, self.list_size, self.delay_s = segment_s, list_size, delay_s
        self.preset = preset
        self.clock = clock
        self.stopping = threading.Event()
        self.frames = 0
        self.late_frames = 0  # rendered more than a frame behind their due time (CPU short)
        self.t0: float | None = None
        self.first_frame = 0  # composite frame index of the stream's first frame

    def run(self) -> dict[str, Any]:
        """Render until `stopping` is set or the recording ended; returns counters."""
        manifest = self._wait_manifest()
        if manifest is None:
            return {"frames": 0}
        self.out.mkdir(parents=True, exist_ok=True)
        scene = Scene(self.recording, width=self.width, height=self.height, fps=self.fps, live=True,
                      t0=manifest.started_unix)
        scene.update(manifest)
        self.t0 = manifest.started_unix
        self.first_frame = self._first_frame(manifest)
        self._clear_old()
        self._status("live")
        seen = self._stamp()
        next_poll = 0.0
        container = av.open(str(self.out / PLAYLIST), "w", format="hls", options=self._options())
        try:
            video, audio = open_streams(container, self.width, self.height,
                                        Fraction(self.fps).limit_denominator(1001), preset=self.preset,
                                        crf=23, gop=max(1, round(self.segment_s * self.fps)),
                                        tune="zerolatency")
            k = self.first_frame
            while not self.stopping.is_set():
                due = self.t0 + k / self.fps + self.delay_s
                wait = due - self.clock()
                if wait > 0 and self.stopping.wait(wait):
                    break
                if self.clock() - due > 1.0 / self.fps:
                    self.late_frames += 1
                if self.clock() >= next_poll:
                    next_poll = self.clock() + MANIFEST_POLL_S
                    stamp = self._stamp()
                    if stamp != seen:
                        seen = stamp
                        manifest = self._load() or manifest
                        scene.update(manifest)
                if manifest.state != "recording" and k / self.fps >= self._end(manifest, scene):
                    break
                chunk = scene.audio(k)
                samples = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt", layout="mono")
                samples.sample_rate, samples.pts = RATE, round(k * RATE / self.fps)
                container.mux(audio.encode(samples))
                picture = scene.video(k)
                picture.pts = k
                container.mux(video.encode(picture))
                k += 1
                self.frames += 1
            container.mux(video.encode(None))
            container.mux(audio.encode(None))
        finally:
            container.close()  # the hls muxer writes the last segment and EXT-X-ENDLIST
            scene.close()
            self._status("ended")
        return {"frames": self.frames, "late_frames": self.late_frames, "t0_unix": self.t0}

    # -- internals -------------------------------------------------------------------
    def _options(self) -> dict[str, str]:
        flags = "independent_segments" + ("+delete_segments" if self.list_size else "")
        options = {
            "hls_time": str(self.segment_s),
            "hls_list_size": str(self.list_size),
            "hls_flags": flags,
            "hls_segment_filename": str(self.out / "seg_%05d.ts"),
        }
        if not self.list_size:
            options["hls_playlist_type"] = "event"
        return options

    def _first_frame(self, manifest: mf.Manifest) -> int:
        """Join a recording in progress at its live edge; a stopped one is rendered whole."""
        assert self.t0 is not None
        if manifest.state != "recording":
            return 0
        return max(0, math.floor((self.clock() - self.delay_s - self.t0) * self.fps))

    def _clear_old(self) -> None:
        """Remove a previous stream's playlist and segments (a restarted stream starts clean)."""
        for path in [self.out / PLAYLIST, *self.out.glob("seg_*.ts")]:
            path.unlink(missing_ok=True)

    def _end(self, manifest: mf.Manifest, scene: Scene) -> float:
        """Composite time at which a stopped recording has been rendered in full."""
        assert self.t0 is not None
        if manifest.stopped_unix is not None:
            return max(scene.duration_s, manifest.stopped_unix - self.t0)
        return scene.duration_s

    def _wait_manifest(self) -> mf.Manifest | None:
        while not self.stopping.is_set():
            manifest = self._load()
            if manifest is not None:
                return manifest
            self.stopping.wait(MANIFEST_POLL_S)
        return None

    def _load(self) -> mf.Manifest | None:
        try:
            return mf.load(self.recording)
        except (OSError, ValueError):
            return None  # not there yet (or a recorder from the future): try again

    def _stamp(self) -> int:
        try:
            return (self.recording / mf.MANIFEST).stat().st_mtime_ns
        except OSError:
            return 0

    def _status(self, state: str) -> None:
        status = {"state": state, "t0_unix": self.t0, "first_frame": self.first_frame,
                  "fps": self.fps, "delay_s": self.delay_s,
                  "segment_s": self.segment_s, "playlist": PLAYLIST, "frames": self.frames}
        mf.write_atomic(self.out / STATUS, (json.dumps(status) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recorder.hls", description=__doc__.split("\n")[0])
    parser.add_argument("--recording", required=True, help="the recording directory (with manifest.json)")
    parser.add_argument("--out", required=True, help="where index.m3u8 and the segments go")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--segment", type=float, default=2.0, help="segment length, seconds")
    parser.add_argument("--list-size", type=int, default=6, help="segments in the playlist (0: all)")
    parser.add_argument("--delay", type=float, default=DELAY_S, help="seconds behind the wall clock")
    parser.add_argument("--preset", default="veryfast", help="x264 preset")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="hls: %(message)s")
    renderer = LiveRenderer(args.recording, args.out, width=args.width, height=args.height, fps=args.fps,
                            segment_s=args.segment, list_size=args.list_size, delay_s=args.delay,
                            preset=args.preset)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: renderer.stopping.set())
    result = renderer.run()
    log.info("ended: %s", json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
