"""Captions for the composite: `DIR/transcript.json` -> an MP4 subtitle track (mov_text).

The caption engine writes `transcript.json` beside `manifest.json`, in wall clock,
so captions line up with the tracks the same way the tracks line up together:

    {"version": 1,
     "segments": [{"speaker": "alice", "start_ms": 1733390000123,
                   "end_ms": 1733390002450, "text": "Good morning, class."}]}

`speaker` is the participant's identity (or sid; "" when unknown), `start_ms` and
`end_ms` are Unix time in milliseconds, `text` is one caption (final results only).
A bare list of segments is accepted too; rewrite the file atomically (temp file +
rename) as segments come. In the MP4 each caption reads "Name: text", timed from
the composite's start; overlapping captions are cut where the next one starts.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TRANSCRIPT", "Caption", "load_captions", "mov_text"]

log = logging.getLogger("ferry.recorder")

TRANSCRIPT = "transcript.json"


@dataclass(frozen=True, slots=True)
class Caption:
    start_ms: int  # from the composite's start
    end_ms: int
    text: str


def load_captions(directory: str | os.PathLike[str], t0_unix: float,
                  names: dict[str, str] | None = None) -> list[Caption] | None:
    """Captions of `DIR/transcript.json` timed from `t0_unix`; None when there is no transcript.

    `names` maps a speaker (identity or sid) to the name shown. Bad segments are
    skipped (logged), a file that is not JSON gives no captions.
    """
    path = Path(directory) / TRANSCRIPT
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable transcript: %s", path, exc)
        return None
    segments = data.get("segments", []) if isinstance(data, dict) else data
    names = names or {}
    t0_ms = t0_unix * 1000.0
    out: list[Caption] = []
    for seg in segments if isinstance(segments, list) else []:
        try:
            start = round(float(seg["start_ms"]) - t0_ms)
            end = round(float(seg["end_ms"]) - t0_ms)
            text = str(seg["text"]).strip()
            speaker = str(seg.get("speaker") or "")
        except (KeyError, TypeError, ValueError, AttributeError):
            log.warning("%s: skipping a bad segment: %r", path, seg)
            continue
        if not text or end <= max(0, start):
            continue
        who = names.get(speaker, speaker)
        out.append(Caption(max(0, start), end, f"{who}: {text}" if who else text))
    out.sort(key=lambda c: c.start_ms)
    for i in range(len(out) - 1):  # one caption at a time on screen
        if out[i].end_ms > out[i + 1].start_ms:
            out[i] = Caption(out[i].start_ms, out[i + 1].start_ms, out[i].text)
    return [c for c in out if c.end_ms > c.start_ms]


def mov_text(text: str) -> bytes:
    """A mov_text (3GPP timed text) sample: 16-bit big-endian length, then UTF-8 text."""
    data = text.encode()[:65535]
    return struct.pack(">H", len(data)) + data
