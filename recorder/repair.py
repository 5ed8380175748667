"""`ferry record repair DIR`: finalize a recording a crash (or SIGKILL) interrupted.

An interrupted WebM/Matroska file has no duration, no cues and an open-ended
segment; an interrupted Ogg file ends without its last page. Both play up to their
last complete cluster or page, but seeking and durations are wrong. Repair remuxes
each file (no transcoding) into a finalized one, replaces it atomically, measures
what it holds, and rewrites the manifest (rebuilt from the files if it is missing).
A repaired recording can be repaired again: it is idempotent.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import av

from . import manifest as mf
from .mux import CODEC_FORMATS

__all__ = ["FileInfo", "remux", "repair"]

log = logging.getLogger("ferry.recorder")

_BY_EXT = {ext: (codec, fmt) for codec, (fmt, ext) in CODEC_FORMATS.items()}


@dataclass(slots=True)
class FileInfo:
    frames: int
    duration_s: float
    last_s: float  # start of the last frame, from the first (its RTP time in the file)
    truncated: bool  # the input ended in a partial cluster or page


def remux(path: str | os.PathLike[str]) -> FileInfo:
    """Rewrite `path` as a finalized file of the same format; returns what it holds."""
    path = Path(path)
    fmt = _BY_EXT[path.suffix.lstrip(".")][1]
    tmp = path.with_name(f".{path.name}.repair")
    frames, first, end, last, truncated = 0, None, None, 0.0, False
    with av.open(str(path)) as src:
        if not src.streams:
            raise ValueError(f"{path}: no stream to repair")
        ins = src.streams[0]
        with av.open(str(tmp), "w", format=fmt) as dst:
            out = dst.add_stream_from_template(ins)
            try:
                for packet in src.demux(ins):
                    if packet.dts is None or packet.size == 0:
                        continue  # the demuxer's end-of-stream marker
                    assert packet.time_base is not None and packet.pts is not None
                    start = float(packet.pts * packet.time_base)
                    stop = start + float((packet.duration or 0) * packet.time_base)
                    first = start if first is None else first
                    end = stop if end is None else max(end, stop)
                    last = max(last, start)
                    packet.stream = out
                    dst.mux(packet)
                    frames += 1
            except (av.error.InvalidDataError, av.error.EOFError, OSError) as exc:
                truncated = True  # a cluster or page cut short by the crash
                log.info("%s: stopped at a damaged tail (%s)", path, exc)
    os.replace(tmp, path)
    if first is None or end is None:
        return FileInfo(frames, 0.0, 0.0, truncated)
    return FileInfo(frames, end - first, last - first, truncated)


def repair(directory: str | os.PathLike[str]) -> mf.Manifest:
    """Finalize every file of the recording in `directory` and rewrite its manifest."""
    directory = Path(directory)
    try:
        manifest = mf.load(directory)
    except (OSError, ValueError) as exc:
        log.warning("%s: manifest unreadable (%s); rebuilding it from the files", directory, exc)
        manifest = mf.Manifest(room=directory.parent.name, id=directory.name, started_unix=0.0)
    listed = {t.file for t in manifest.tracks}
    for path in sorted(directory.iterdir()):
        ext = path.suffix.lstrip(".")
        if ext in _BY_EXT and path.name not in listed and not path.name.startswith("."):
            codec = _BY_EXT[ext][0]
            manifest.tracks.append(
                mf.TrackEntry(
                    sid=path.stem,
                    participant_sid="",
                    kind="audio" if codec == "opus" else "video",
                    source="unknown",
                    codec=codec,
                    file=path.name,
                    clock_rate=48000 if codec == "opus" else 90000,
                )
            )
    for entry in manifest.tracks:
        path = directory / entry.file
        if not path.exists() or path.stat().st_size == 0:
            entry.duration_s = None  # nothing was ever written (no keyframe came)
            continue
        try:
            info = remux(path)
        except (av.FFmpegError, ValueError) as exc:  # unreadable: leave it, repair the rest
            log.warning("%s: cannot repair: %s", path, exc)
            entry.duration_s = None
            continue
        entry.frames = info.frames
        entry.duration_s = round(info.duration_s, 3)
        entry.closed = True
        if entry.first_rtp is not None:  # the manifest may predate the crash by seconds
            entry.last_rtp = entry.first_rtp + round(info.last_s * entry.clock_rate)
            if entry.first_unix is not None:
                entry.last_unix = entry.first_unix + info.last_s
    ends = [t.last_unix for t in manifest.tracks if t.last_unix is not None]
    if manifest.stopped_unix is None and ends:
        manifest.stopped_unix = max(ends)
    manifest.state = "repaired"
    mf.save(directory, manifest)
    return manifest
