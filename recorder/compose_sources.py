"""Decoded media of one track file, for the composer (offline) and the live HLS renderer.

Each track is decoded by PyAV on its own thread (decoding releases the GIL, so two
cores work for one composite) into a bounded queue. The compositor asks for
frames by *file time* (seconds from the file's first frame, which the manifest
maps to wall clock). Offline (`live=False`) it waits for the decoder, so every
frame is used; live it takes what has been decoded and never waits.

A live track file is still growing: `TailFile` is a read-only, non-seekable file
object that waits for more bytes at the end instead of reporting end of file,
until the track is closed. Measured here: following a growing WebM / Ogg this way
decodes every frame, 0.6-0.7 s (median) after the recorder wrote it, bounded by
the recorder's flushes (a cluster per second, an Ogg page per half second).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

__all__ = ["AudioTrack", "Feed", "TailFile", "VideoTrack", "RATE"]

log = logging.getLogger("ferry.recorder")

RATE = 48000  # the mix's sample rate
VIDEO_QUEUE = 24  # decoded frames waiting (a 640x360 frame is ~350 kB)
AUDIO_QUEUE = 100  # decoded 20 ms chunks waiting
_EOF = object()


class TailFile:
    """A growing file read to its end, then waited on until `finish()` (or `abort()`)."""

    def __init__(self, path: str | os.PathLike[str], poll_s: float = 0.05) -> None:
        self.path = Path(path)
        self.poll_s = poll_s
        self._file = None
        self._finished = threading.Event()
        self._aborted = threading.Event()

    def finish(self) -> None:
        """The writer closed the file: read what is left, then end."""
        self._finished.set()

    def abort(self) -> None:
        """Stop now (the renderer is shutting down)."""
        self._aborted.set()
        self._finished.set()

    def read(self, size: int = -1) -> bytes:
        while not self._aborted.is_set():
            if self._file is None and self.path.exists():
                self._file = open(self.path, "rb")  # noqa: SIM115 - lives as long as the reader
            if self._file is not None:
                data = self._file.read(size if size > 0 else 1 << 16)
                if data:
                    return data
            if self._finished.is_set():
                if self._file is not None:  # a last write may have landed since
                    return self._file.read(size if size > 0 else 1 << 16)
                return b""
            self._finished.wait(self.poll_s)
        return b""

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@dataclass(slots=True)
class Item:
    time: float  # file time (s) of the item's first sample / the frame
    value: object  # av.VideoFrame, or a mono float32 ndarray at RATE


class Feed:
    """A decoding thread and the items it produced, taken in time order by `until`."""

    def __init__(self, source: str | TailFile, kind: str, *, live: bool) -> None:
        self.source = source
        self.kind = kind
        self.live = live
        self.eof = False
        self.decoded = 0
        self.errors = 0
        self._queue: queue.Queue[object] = queue.Queue(VIDEO_QUEUE if kind == "video" else AUDIO_QUEUE)
        self._ahead: Item | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ferry-decode-{kind}", daemon=True)
        self._thread.start()

    def until(self, t: float) -> list[Item]:
        """Items with time <= `t` not taken yet; offline, waits until the decoder is past `t`."""
        out: list[Item] = []
        while True:
            if self._ahead is None:
                if self.eof:
                    break
                try:
                    got = self._queue.get(block=not self.live)
                except queue.Empty:
                    break
                if got is _EOF:
                    self.eof = True
                    break
                assert isinstance(got, Item)
                self._ahead = got
            if self._ahead.time > t:
                break
            out.append(self._ahead)
            self._ahead = None
        return out

    def close(self) -> None:
        self._stop.set()
        if isinstance(self.source, TailFile):
            self.source.abort()
        while self._thread.is_alive():  # unblock a full queue
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        if isinstance(self.source, TailFile):
            self.source.close()

    # -- decoding thread -------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._decode()
        except Exception as exc:  # a damaged file ends its track, not the composite
            log.warning("%s: decoding stopped: %s", self._name(), exc)
            self.errors += 1
        finally:
            self._put(_EOF)

    def _name(self) -> str:
        return str(self.source.path if isinstance(self.source, TailFile) else self.source)

    def _decode(self) -> None:
        fmt = {".webm": "webm", ".mkv": "matroska", ".ogg": "ogg"}.get(Path(self._name()).suffix)
        with av.open(self.source, format=fmt) as container:
            stream = container.streams[0]
            stream.thread_type = "AUTO" if not self.live else "SLICE"
            resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE) if self.kind == "audio" else None
            for packet in container.demux(stream):
                if self._stop.is_set():
                    return
                try:
                    frames = packet.decode()
                except av.FFmpegError:
                    self.errors += 1  # a damaged frame: the next keyframe resyncs
                    continue
                for frame in frames:
                    if frame.pts is None:
                        continue
                    self.decoded += 1
                    if resampler is None:
                        self._put(Item(float(frame.time), frame))
                        continue
                    chunks = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
                    if chunks:
                        self._put(Item(float(frame.time), np.concatenate(chunks)))

    def _put(self, item: object) -> None:
        while not self._stop.is_set() or item is _EOF:
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if item is _EOF and self._stop.is_set():
                    return


class VideoTrack:
    """The frame to show at a file time: the latest one due, held for `hold_s` at most."""

    def __init__(self, feed: Feed, fps: float, hold_s: float) -> None:
        self.feed = feed
        self.half_frame = 0.5 / fps  # show the frame nearest in time, not the one before
        self.hold_s = hold_s
        self.current: Item | None = None

    def frame_at(self, t: float) -> av.VideoFrame | None:
        items = self.feed.until(t + self.half_frame)
        if items:
            self.current = items[-1]
        if self.current is None or t - self.current.time > self.hold_s:
            return None  # a gap (muted camera, loss) or not started: the name card shows
        return self.current.value  # type: ignore[return-value]


class AudioTrack:
    """Samples (mono, RATE) by file-time sample index; holes and gaps are silence."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self._buf = np.zeros(0, np.float32)
        self._start = 0  # sample index of _buf[0]

    def read(self, start: int, n: int) -> np.ndarray:
        """`n` samples from file sample `start`; samples before it are dropped for good."""
        for item in self.feed.until((start + n) / RATE):
            self._place(round(item.time * RATE), item.value)  # type: ignore[arg-type]
        out = np.zeros(n, np.float32)
        lo, hi = max(start, self._start), min(start + n, self._start + len(self._buf))
        if hi > lo:
            out[lo - start : hi - start] = self._buf[lo - self._start : hi - self._start]
        keep = start + n - self._start
        if keep > 0:
            self._buf = self._buf[keep:]
            self._start = start + n
        return out

    def _place(self, at: int, samples: np.ndarray) -> None:
        end = self._start + len(self._buf)
        if not len(self._buf):
            self._start, end = max(at, self._start), max(at, self._start)
        if at < end:  # overlaps what is buffered or already played: keep the new part
            samples = samples[end - at :]
            at = end
        if not len(samples):
            return
        gap = np.zeros(at - end, np.float32)
        self._buf = np.concatenate([self._buf, gap, samples.astype(np.float32, copy=False)])

