"""Transcript files (signaling/transcript.py): WebVTT that a real parser reads back with
names and times, JSON that round-trips, text, the recording's transcript.json as the
composite reads it, atomic writes, and unreadable files."""

from __future__ import annotations

import html
import io
import json
from pathlib import Path

import webvtt

from recorder.captions import load_captions
from signaling import transcript as tr

T0 = 1_796_000_000_000


def seg(name: str, start_s: float, end_s: float, text: str, room_sid: str = "RM_1") -> tr.Segment:
    return tr.Segment(
        speaker=name.lower().replace(" ", ""), name=name, participant_sid="PA_" + name[:2], track_sid="TR_" + name[:2],
        room_sid=room_sid, start_ms=T0 + int(start_s * 1000), end_ms=T0 + int(end_s * 1000), text=text,
    )


SEGMENTS = [
    seg("Bob", 3.25, 5.0, "Is <this> on & working?"),
    seg("Ms Rivera", 0.5, 2.75, "Good   morning,\nclass."),
    seg("Bob", 3661.0, 3662.5, "An hour later --> still here"),
]


def test_webvtt_parses_back_in_order_with_voices_and_times() -> None:
    text = tr.render("vtt", "class", SEGMENTS)
    assert text.startswith("WEBVTT\n") and f"NOTE t0_unix_ms={T0 + 500}" in text
    cues = webvtt.from_buffer(io.StringIO(text)).captions
    # Markup characters are escaped (as character references, which players unescape);
    # "-->" may not stand in a cue at all.
    assert "&lt;this&gt; on &amp;" in text and all("-->" not in c.raw_text for c in cues)
    assert [(c.voice, html.unescape(c.text)) for c in cues] == [
        ("Ms Rivera", "Good morning, class."),
        ("Bob", "Is <this> on & working?"),
        ("Bob", "An hour later --> still here"),
    ]
    assert [(c.start, c.end) for c in cues] == [
        ("00:00:00.000", "00:00:02.250"),
        ("00:00:02.750", "00:00:04.500"),
        ("01:01:00.500", "01:01:02.000"),
    ]


def test_json_round_trips_and_text_names_each_speaker(tmp_path: Path) -> None:
    path = tmp_path / "transcript.json"
    tr.write_atomic(path, tr.render("json", "class", SEGMENTS))
    room, segments = tr.load_json(path)
    assert room == "class"
    assert segments == sorted(SEGMENTS, key=lambda s: s.start_ms)
    lines = tr.render("txt", "class", SEGMENTS).splitlines()
    assert lines[0].endswith("UTC] Ms Rivera: Good morning, class.")
    assert lines[1].endswith("UTC] Bob: Is <this> on & working?")
    assert [p.name for p in tmp_path.iterdir()] == ["transcript.json"]  # no temporary file left
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_recordings_transcript_is_what_the_composite_reads(tmp_path: Path) -> None:
    (tmp_path / "transcript.json").write_text(tr.recording_json(SEGMENTS))
    body = json.loads((tmp_path / "transcript.json").read_text())
    assert set(body["segments"][0]) == {"speaker", "start_ms", "end_ms", "text"}
    captions = load_captions(tmp_path, T0 / 1000.0, {"msrivera": "Ms Rivera"})
    assert captions is not None
    assert [(c.start_ms, c.text) for c in captions][:2] == [(500, "Ms Rivera: Good   morning,\nclass."), (3250, "bob: Is <this> on & working?")]


def test_unreadable_or_foreign_files_give_no_segments(tmp_path: Path) -> None:
    assert tr.load_json(tmp_path / "missing.json") == (None, [])
    bad = tmp_path / "bad.json"
    for content in ("not json", "[1, 2]", '{"segments": 3}'):
        bad.write_text(content)
        assert tr.load_json(bad) == (None, [])
    bad.write_text(json.dumps({"room": "x", "segments": [{"start_ms": "soon"}, {"start_ms": 1, "end_ms": 2, "text": "ok"}]}))
    room, segments = tr.load_json(bad)
    assert room == "x" and [s.text for s in segments] == ["ok"]
    assert tr.render("vtt", "empty", []) == "WEBVTT\n\n"
