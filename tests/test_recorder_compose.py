"""`ferry record compose`: a recording of real encoded media -> one MP4, checked by its pixels and samples."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from recorder.captions import TRANSCRIPT
from recorder.compose import compose
from recorder.compose_audio import CEILING, Limiter, Speakers
from recorder.compose_draw import CARD, HIGHLIGHT, yuv
from recorder.compose_layout import Rect, layout

from .recorder_flash import Person, beep_onsets, decode, ffprobe_codecs, flash_onsets, luma, record

W, H, FPS = 384, 216, 25
T0 = 1.7e9  # the recording's clock: Alice's first frame


def people() -> list[Person]:
    return [Person("PA_a", "alice", "Alice Smith", 0.0, 3.0, (0.5, 1.5, 2.5)),
            Person("PA_b", "bob", "Bob Jones", 0.7, 3.0, (0.5, 1.5))]


@pytest.fixture(scope="module")
def composite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    base = tmp_path_factory.mktemp("compose")
    rec = record(str(base / "rec"), people(), unix_offset_s=T0)
    out = base / "out.mp4"
    return out, compose(rec.directory, out, width=W, height=H, fps=FPS)


def test_flashes_and_beeps_line_up_within_80_ms(composite: tuple[Path, dict[str, object]]) -> None:
    path, made = composite
    assert made["t0_unix"] == pytest.approx(T0, abs=1e-3)
    assert ffprobe_codecs(path) == ["h264", "aac"]
    times, frames, pcm = decode(path)
    assert len(frames) == made["frames"] and abs(len(frames) - 3.8 * FPS) <= 1  # to the stop, 0.1 s after the last frame
    beeps = beep_onsets(pcm)
    # Video: each person's flashes in their tile, while both are on screen (layout fixed).
    both = layout(W, H, ["PA_a", "PA_b"])
    flashes = []
    for key, person in zip(["PA_a", "PA_b"], people(), strict=True):
        seen = flash_onsets(times, frames, both[key], after_s=0.72)
        expected = [person.start_s + f for f in person.flashes if person.start_s + f > 0.8]
        assert len(seen) == len(expected), (key, seen, expected)
        for got, want in zip(seen, expected, strict=True):
            assert abs(got - want) < 0.08, (key, got, want)  # on the wall clock
        flashes += seen
    assert len(beeps) == 5  # Alice 0.5 1.5 2.5, Bob 1.2 2.2 (all in the mix)
    for t in flashes:
        offset = min(abs(t - b) for b in beeps)
        assert offset < 0.08, (t, beeps)  # audio/video sync of the composite


def test_names_drawn_and_active_speaker_highlighted(composite: tuple[Path, dict[str, object]]) -> None:
    path, _ = composite
    times, frames, _ = decode(path)
    tiles = layout(W, H, ["PA_a", "PA_b"])

    def at(t: float) -> np.ndarray:
        return frames[min(range(len(times)), key=lambda i: abs(times[i] - t))]

    def band(frame: np.ndarray, r: Rect) -> np.ndarray:
        size = max(8, min(28, r.h // 12))
        return frame[r.y + r.h - 2 * size + 2 : r.y + r.h - 2, r.x + 4 : r.x + r.w - 4].astype(int)

    frame = at(1.0)  # nobody flashes: dark pictures
    for r in tiles.values():
        assert (band(frame, r) > 180).sum() > 30  # white text on the darkened band
    a, b = band(frame, tiles["PA_a"]), band(frame, tiles["PA_b"])
    assert np.abs(a - b).mean() > 5  # two different names

    def border_uv(frame: np.ndarray, r: Rect) -> tuple[float, float]:
        u = frame[H : H + H // 4].reshape(H // 2, W // 2)
        v = frame[H + H // 4 :].reshape(H // 2, W // 2)
        rows = slice(r.y // 2, r.y // 2 + 1)
        cols = slice(r.x // 2 + 4, (r.x + r.w) // 2 - 4)
        return float(u[rows, cols].mean()), float(v[rows, cols].mean())

    _, hu, hv = yuv(HIGHLIGHT)
    for t, speaker, quiet in ((0.8, "PA_a", "PA_b"), (1.45, "PA_b", "PA_a")):
        # 0.8 s: Alice beeped at 0.5; 1.45 s: Bob at 1.2 (Alice's next beep is at 1.5).
        frame = at(t)
        u, v = border_uv(frame, tiles[speaker])
        assert abs(u - hu) < 20 and abs(v - hv) < 20, (t, speaker, u, v)
        u, v = border_uv(frame, tiles[quiet])
        assert abs(u - hu) > 30 or abs(v - hv) > 30, (t, quiet, u, v)


def test_screen_share_gets_the_big_tile_and_audio_only_a_name_card(tmp_path: Path) -> None:
    cast = [Person("PA_a", "alice", "Alice Smith", 0.0, 1.2, (), screen=True),
            Person("PA_b", "bob", "Bob Jones", 0.0, 1.2, (0.2,), camera=False)]
    rec = record(str(tmp_path / "rec"), cast, unix_offset_s=T0)
    out = tmp_path / "share.mp4"
    compose(rec.directory, out, width=W, height=H, fps=FPS)
    times, frames, pcm = decode(out)
    tiles = layout(W, H, ["PA_a", "PA_b"], f"screen:{cast[0].files['screen']}")
    big = max(tiles.values(), key=lambda r: r.area)
    assert big == tiles[f"screen:{cast[0].files['screen']}"]
    frame = frames[times.index(min(times, key=lambda t: abs(t - 0.8)))]
    assert abs(luma(frame, big) - 180) < 12  # the shared screen fills the big tile
    assert abs(luma(frame, tiles["PA_a"]) - 40) < 12  # Alice's camera, small
    card_y = yuv(CARD)[0]
    r = tiles["PA_b"]
    corner = frame[r.y + 4 : r.y + 10, r.x + 4 : r.x + 10]
    assert abs(float(corner.mean()) - card_y) < 6  # Bob has no camera: his name card
    assert float(np.abs(pcm).max()) > 0.3  # and his beep is in the mix


def test_a_muted_camera_shows_the_name_card_at_once(tmp_path: Path) -> None:
    rec = record(str(tmp_path / "rec"), [Person("PA_a", "alice", "Alice Smith", 0.0, 1.6, ())],
                 unix_offset_s=T0)
    data = json.loads((rec.directory / "manifest.json").read_text())
    video = next(t for t in data["tracks"] if t["kind"] == "video")
    video["muted"] = [[T0 + 0.6, T0 + 1.0]]  # frames kept coming: only the span says so
    (rec.directory / "manifest.json").write_text(json.dumps(data))
    out = tmp_path / "muted.mp4"
    compose(rec.directory, out, width=W, height=H, fps=FPS)
    times, frames, _ = decode(out)
    tile = layout(W, H, ["PA_a"])["PA_a"]
    corner = {round(t, 2): float(f[tile.y + 4 : tile.y + 10, tile.x + 60 : tile.x + 66].mean())
              for t, f in zip(times, frames, strict=True)}
    card_y = yuv(CARD)[0]
    assert abs(corner[0.4] - 40) < 8 and abs(corner[1.2] - 40) < 8  # the camera
    assert abs(corner[0.64] - card_y) < 6 and abs(corner[0.96] - card_y) < 6  # muted: the card


def test_captions_from_transcript_become_a_mov_text_track(tmp_path: Path) -> None:
    rec = record(str(tmp_path / "rec"), people()[:1], unix_offset_s=T0)
    segments = [{"speaker": "alice", "start_ms": T0 * 1000 + 1000, "end_ms": T0 * 1000 + 2200,
                 "text": "Good morning, class."},
                {"speaker": "", "start_ms": T0 * 1000 + 2000, "end_ms": T0 * 1000 + 2800, "text": "Hi!"},
                {"speaker": "alice", "start_ms": "soon", "end_ms": 1, "text": "bad"}]
    (rec.directory / TRANSCRIPT).write_text(json.dumps({"version": 1, "segments": segments}))
    out = tmp_path / "captions.mp4"
    made = compose(rec.directory, out, width=W, height=H, fps=FPS)
    assert made["captions"] == 2
    assert ffprobe_codecs(out) == ["h264", "aac", "mov_text"]
    srt = subprocess.run(["ffmpeg", "-v", "error", "-i", str(out), "-map", "0:s", "-f", "srt", "-"],
                         capture_output=True, text=True, check=True).stdout
    assert "00:00:01,000 --> 00:00:02,000\nAlice Smith: Good morning, class." in srt  # cut at the next
    assert "00:00:02,000 --> 00:00:02,800\nHi!" in srt


def test_cli_compose_prints_progress_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from signaling.cli import main

    rec = record(str(tmp_path / "rec"), people()[:1], unix_offset_s=T0)
    out = tmp_path / "cli.mp4"
    assert main(["record", "compose", str(rec.directory), "--out", str(out), "--width", "192",
                 "--height", "108", "--fps", "10"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    stopped = json.loads((rec.directory / "manifest.json").read_text())["stopped_unix"]
    assert 3.0 < stopped - summary["t0_unix"] < 3.2  # 3 s of media, and 0.1 s to the stop
    assert summary["frames"] == math.ceil((stopped - summary["t0_unix"]) * 10 - 1e-6) and out.exists()
    assert "100.0%" in captured.err and "[####" in captured.err
    assert main(["record", "compose", str(tmp_path / "missing"), "--out", str(out)]) == 1


def test_limiter_turns_a_loud_sum_down_instead_of_clipping() -> None:
    t = np.arange(4800) / 48000
    loud = (np.sin(2 * np.pi * 440 * t) * 0.9).astype(np.float32)
    limiter = Limiter(48000)
    out = np.concatenate([limiter.process(loud + loud) for _ in range(5)])
    assert float(np.abs(out).max()) <= CEILING + 1e-6
    assert limiter.limited == 5
    quiet = limiter.process(loud * 0.1)  # the gain comes back up, smoothly
    assert 0.0 < float(np.abs(quiet).max()) <= 0.09 + 1e-6
    assert float(np.abs(np.diff(quiet)).max()) < 0.02  # no step in the gain ramp


def test_speakers_hold_the_highlight_until_someone_is_clearly_louder() -> None:
    s = Speakers(4, floor_rms=0.01)
    loud, soft, silent = np.full(10, 0.2), np.full(10, 0.15), np.zeros(10)
    assert s.update({"a": loud, "b": silent}) == "a"
    for _ in range(4):
        assert s.update({"a": soft, "b": loud}) == "a"  # b louder, but not twice as loud
    assert s.update({"a": silent, "b": loud}) == "b"
    for _ in range(4):
        s.update({"a": silent, "b": silent})
    assert s.active is None  # quiet room: nobody highlighted


def test_people_live_at_the_stop_keep_their_tiles_to_the_last_frame(tmp_path: Path) -> None:
    # Bob's last packets come 80 ms after Alice's, and he flashes at the very end:
    # had Alice left the picture first, Bob's flash would fill her tile.
    cast = [Person("PA_a", "alice", "Alice Smith", 0.0, 1.2, ()),
            Person("PA_b", "bob", "Bob Jones", 0.0, 1.28, (1.0,))]
    rec = record(str(tmp_path / "rec"), cast, unix_offset_s=T0)
    out = tmp_path / "stop.mp4"
    compose(rec.directory, out, width=W, height=H, fps=FPS)
    times, frames, _ = decode(out)
    tiles = layout(W, H, ["PA_a", "PA_b"])
    assert times[-1] > 1.25
    assert flash_onsets(times, frames, tiles["PA_b"]) != []  # Bob's flash is seen in his tile
    assert max(luma(f, tiles["PA_a"]) for f in frames[5:]) < 80  # and never in Alice's
