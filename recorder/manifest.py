"""`manifest.json`: what a recording holds and how its tracks line up in time.

Each track's first and last RTP timestamps (on its file's timeline: file time 0 is
`first_rtp`) are mapped to Unix time through the publisher's RTCP sender reports
(`sync: "rtcp"`), or by arrival time when none came (`sync: "arrival"`), so a
composer can align tracks recorded from different senders. The file is rewritten
atomically (temp file, fsync, rename, fsync of the directory): after a crash it is
either the old or the new version, never a torn one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST", "Manifest", "ParticipantEntry", "TrackEntry", "load", "save", "write_atomic"]

MANIFEST = "manifest.json"
VERSION = 1


@dataclass(slots=True)
class ParticipantEntry:
    sid: str
    identity: str
    name: str = ""


@dataclass(slots=True)
class TrackEntry:
    sid: str
    participant_sid: str
    kind: str  # "audio" | "video"
    source: str  # "camera" | "microphone" | "screen_share" | ...
    codec: str  # "vp8" | "h264" | "opus"
    file: str  # relative to the recording directory
    clock_rate: int
    first_rtp: int | None = None
    last_rtp: int | None = None
    first_unix: float | None = None
    last_unix: float | None = None
    sync: str | None = None  # "rtcp" | "arrival"
    frames: int = 0
    gaps: int = 0  # unrepairable holes (video: resumed at the next keyframe)
    dropped: int = 0  # frames the writer queue could not take
    layer_switches: int = 0
    duration_s: float | None = None  # measured from the file (close or repair)
    closed: bool = False
    error: str | None = None  # why the file stopped early (e.g. a full disk)
    # [start, end] Unix times the publisher had the track muted (end None: still muted).
    muted: list[list[float | None]] = field(default_factory=list)


@dataclass(slots=True)
class Manifest:
    room: str
    id: str
    started_unix: float
    state: str = "recording"  # "recording" | "stopped" | "repaired"
    stopped_unix: float | None = None
    stop_reason: str | None = None  # "stopped", "room_closed", "disk_full", "server_shutdown"
    participants: list[ParticipantEntry] = field(default_factory=list)
    tracks: list[TrackEntry] = field(default_factory=list)
    version: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Inverse of `to_dict`; unknown keys (from a newer Ferry) are ignored."""
        base = _known(cls, data)
        base["participants"] = [
            ParticipantEntry(**_known(ParticipantEntry, p)) for p in data.get("participants", [])
        ]
        base["tracks"] = [TrackEntry(**_known(TrackEntry, t)) for t in data.get("tracks", [])]
        return cls(**base)


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new file, whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(directory: str | os.PathLike[str], manifest: Manifest) -> None:
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n"
    write_atomic(Path(directory) / MANIFEST, text.encode())


def load(directory: str | os.PathLike[str]) -> Manifest:
    """Read `DIR/manifest.json`; OSError when missing, ValueError when not a manifest."""
    data = json.loads((Path(directory) / MANIFEST).read_text())
    if not isinstance(data, dict) or "room" not in data:
        raise ValueError(f"{directory}: not a Ferry recording manifest")
    return Manifest.from_dict(data)
