"""A room's transcript: the final captions, as WebVTT, JSON and plain text.

Files live under the recordings directory, `<recordings_dir>/<room>/transcript.{vtt,json,txt}`,
so they outlive the room; a room that opens again under the same name appends to
them (each segment names its room `sid`). A recording also gets `transcript.json` in
its own folder, in the shape `recorder/captions.py` turns into the composite's
subtitle track: `{"version": 1, "segments": [{speaker, start_ms, end_ms, text}]}`.

Times are Unix milliseconds of the speech itself (RTP timestamps mapped through the
publisher's sender reports), not of when a result was ready. WebVTT cue times count
from the first segment's start, which the file names in a `NOTE t0_unix_ms=` line.
Files are written atomically (a temporary file renamed over the old one), so a reader
never sees half a transcript.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "FORMATS",
    "Segment",
    "load_json",
    "recording_json",
    "render",
    "write_atomic",
]

FORMATS = {"vtt": "text/vtt", "json": "application/json", "txt": "text/plain"}


@dataclass(frozen=True)
class Segment:
    """One final caption of one speaker."""

    speaker: str  # the participant's identity
    name: str  # the participant's display name
    participant_sid: str
    track_sid: str
    room_sid: str
    start_ms: int
    end_ms: int
    text: str

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Segment | None:
        """A segment read back from `transcript.json`; None when it is malformed."""
        try:
            return cls(
                speaker=str(data.get("speaker") or ""),
                name=str(data.get("name") or data.get("speaker") or ""),
                participant_sid=str(data.get("participant_sid") or ""),
                track_sid=str(data.get("track_sid") or ""),
                room_sid=str(data.get("room_sid") or ""),
                start_ms=int(data["start_ms"]),  # type: ignore[call-overload]
                end_ms=int(data["end_ms"]),  # type: ignore[call-overload]
                text=str(data["text"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


def _vtt_time(ms: int) -> str:
    ms = max(0, ms)
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _vtt_escape(text: str) -> str:
    # A cue's text may not hold "-->" nor a blank line; & and < start markup.
    text = " ".join(text.split())
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_vtt(segments: list[Segment]) -> str:
    lines = ["WEBVTT", ""]
    if segments:
        t0 = min(s.start_ms for s in segments)
        lines += [f"NOTE t0_unix_ms={t0}", ""]
        for i, seg in enumerate(segments, 1):
            start = seg.start_ms - t0
            end = max(seg.end_ms - t0, start + 1)
            voice = _vtt_escape(seg.name or seg.speaker or "?")
            lines += [str(i), f"{_vtt_time(start)} --> {_vtt_time(end)}", f"<v {voice}>{_vtt_escape(seg.text)}", ""]
    return "\n".join(lines) + "\n"


def render_json(room: str, segments: list[Segment]) -> str:
    return json.dumps({"version": 1, "room": room, "segments": [asdict(s) for s in segments]}, ensure_ascii=False)


def render_txt(segments: list[Segment]) -> str:
    out = []
    for seg in segments:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seg.start_ms / 1000.0))
        out.append(f"[{when} UTC] {seg.name or seg.speaker}: {' '.join(seg.text.split())}")
    return "".join(line + "\n" for line in out)


def render(fmt: str, room: str, segments: list[Segment]) -> str:
    """The transcript in `fmt` (one of FORMATS), segments in order of their start."""
    ordered = sorted(segments, key=lambda s: (s.start_ms, s.end_ms))
    if fmt == "vtt":
        return render_vtt(ordered)
    if fmt == "json":
        return render_json(room, ordered)
    if fmt == "txt":
        return render_txt(ordered)
    raise ValueError(f"unknown transcript format {fmt!r}")


def recording_json(segments: Iterable[Segment]) -> str:
    """`transcript.json` of a recording folder, as recorder/captions.py reads it."""
    ordered = sorted(segments, key=lambda s: (s.start_ms, s.end_ms))
    body = [{"speaker": s.speaker, "start_ms": s.start_ms, "end_ms": s.end_ms, "text": s.text} for s in ordered]
    return json.dumps({"version": 1, "segments": body}, ensure_ascii=False)


def load_json(path: Path) -> tuple[str | None, list[Segment]]:
    """(room name, segments) of a transcript.json; (None, []) when absent or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, []
    if not isinstance(data, dict) or not isinstance(data.get("segments"), list):
        return None, []
    segments = [s for s in (Segment.from_dict(d) for d in data["segments"] if isinstance(d, dict)) if s]
    room = data.get("room")
    return (room if isinstance(room, str) else None), segments


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it private; a transcript is read like the recordings
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
