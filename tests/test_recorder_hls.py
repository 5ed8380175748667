"""Live HLS (`python -m recorder.hls`): a renderer process following a recording as it grows."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import av
import numpy as np

from recorder import hls
from recorder.recording import Recording

from .recorder_flash import (
    Feeder,
    Person,
    beep_onsets,
    ffprobe_codecs,
    packets,
    playlist_segments,
    record,
)
from .recorder_media import wait_until

W, H, FPS = 320, 180, 25
SECONDS = 10.0
FLASHES = (1.0, 3.0, 5.0, 7.0)  # after the first few (probing) seconds, one per 2 s segment


def segments(playlist: Path) -> list[str]:
    try:
        return playlist_segments(playlist.read_text())
    except OSError:
        return []


def flash_frames(out: Path, names: list[str]) -> tuple[list[int], list[tuple[int, str]]]:
    """Frame indexes where the picture turns bright, and (first frame, name) per segment."""
    levels, starts = [], []
    for name in names:
        starts.append((len(levels), name))
        with av.open(str(out / name)) as c:
            for f in c.decode(video=0):
                y = f.to_ndarray()[:H]
                levels.append(float(y[H // 4 : H // 2, W // 3 : 2 * W // 3].mean()))
    on = np.asarray(levels) > 130
    return [i for i in range(1, len(on)) if on[i] and not on[i - 1]], starts


def av_offsets(playlist: Path) -> list[float]:
    """Per flash in the stream, the distance to the nearest beep (both on the stream's clock)."""
    with av.open(str(playlist)) as c:
        video = [(float(f.time), float(f.to_ndarray()[H // 4 : H // 2, W // 3 : 2 * W // 3].mean()))
                 for f in c.decode(video=0)]
    with av.open(str(playlist)) as c:
        chunks = [(float(f.time), f.to_ndarray()[0]) for f in c.decode(audio=0)]
    flashes = [video[i][0] for i in range(1, len(video)) if video[i][1] > 130 >= video[i - 1][1]]
    beeps = beep_onsets(np.concatenate([pcm for _, pcm in chunks]), chunks[0][0])
    return [min((abs(f - b) for b in beeps), default=99.0) for f in flashes]


def test_live_hls_of_a_growing_recording_and_its_latency(tmp_path: Path) -> None:
    rec_dir, out = tmp_path / "rec", tmp_path / "hls"
    person = Person("PA_a", "alice", "Alice Smith", 0.0, SECONDS, FLASHES)
    packets(person, 0)  # encoded (and cached) before the clock starts
    origin = time.time()  # the recording's time 0: the source captures its first frame now
    rec = Recording(rec_dir, room="class", recording_id="r1", unix_offset_s=origin, now_ms=0.0)
    feeder = Feeder(rec, [person])
    proc = hls.start(rec_dir, out, width=W, height=H, fps=FPS)
    playlist = out / hls.PLAYLIST
    listed: dict[str, float] = {}
    try:
        while feeder.sent < len(feeder.events):
            feeder.feed_until((time.time() - origin) * 1000.0)
            for name in segments(playlist):
                listed.setdefault(name, time.time())
            time.sleep(0.01)  # the source's own pace (real time), not a wait for a result
        rec.stop((time.time() - origin) * 1000.0)
        wait_until(lambda: len(segments(playlist)) >= 4, 10.0)
        assert proc.poll() is None  # live: it runs until stopped
        assert hls.stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for name in segments(playlist):
        listed.setdefault(name, time.time())
    text = playlist.read_text()
    assert text.rstrip().endswith("#EXT-X-ENDLIST") and "#EXT-X-TARGETDURATION:2" in text
    names = segments(playlist)
    assert len(names) >= 4
    assert ffprobe_codecs(out / names[1]) == ["h264", "aac"]
    assert ffprobe_codecs(playlist) == ["h264", "aac"]
    status = json.loads((out / hls.STATUS).read_text())
    assert status["state"] == "ended" and status["t0_unix"] == origin
    flashes, starts = flash_frames(out, names)
    latencies = []
    for index in flashes:
        frame = status["first_frame"] + index  # composite frame index
        source = origin + min(FLASHES, key=lambda f: abs(origin + f - status["t0_unix"] - frame / FPS))
        shown = status["t0_unix"] + frame / FPS
        assert abs(shown - source) < 0.08  # the live composite is on the wall clock
        segment = [name for first, name in starts if first <= index][-1]
        latencies.append(listed[segment] - source)
    assert len(flashes) >= 3
    offsets = av_offsets(playlist)
    assert len(offsets) == len(flashes) and max(offsets) < 0.08  # live audio kept up with video
    print(f"HLS latency, flash at the source -> its segment listed: "
          f"{', '.join(f'{x:.2f}' for x in latencies)} s; "
          f"A/V offsets {', '.join(f'{x * 1000:.0f}' for x in offsets)} ms")
    assert max(latencies) < 6.0


def test_renderer_of_a_stopped_recording_renders_it_all_and_exits(tmp_path: Path) -> None:
    rec = record(str(tmp_path / "rec"), [Person("PA_a", "alice", "Alice", 0.0, 2.0, (0.5,))])
    out = tmp_path / "hls"
    renderer = hls.LiveRenderer(rec.directory, out, width=W, height=H, fps=FPS, list_size=0)
    result = renderer.run()  # t0 is long past: as fast as it goes, then the end
    assert result["frames"] >= 2.0 * FPS
    text = (out / hls.PLAYLIST).read_text()
    assert "#EXT-X-PLAYLIST-TYPE:EVENT" in text and text.rstrip().endswith("#EXT-X-ENDLIST")
    assert ffprobe_codecs(out / hls.PLAYLIST) == ["h264", "aac"]


def test_renderer_joins_a_recording_in_progress_at_its_live_edge(tmp_path: Path) -> None:
    rec = record(str(tmp_path / "rec"), [Person("PA_a", "alice", "Alice", 0.0, 1.0, ())])
    data = json.loads((rec.directory / "manifest.json").read_text())
    data["state"], data["started_unix"] = "recording", time.time() - 30.0  # 30 s in
    (rec.directory / "manifest.json").write_text(json.dumps(data))
    out = tmp_path / "hls"
    renderer = hls.LiveRenderer(rec.directory, out, width=W, height=H, fps=FPS, delay_s=1.5)
    thread = threading.Thread(target=renderer.run)
    thread.start()
    try:
        wait_until(lambda: len(segments(out / hls.PLAYLIST)) >= 1, 15.0)
    finally:
        renderer.stopping.set()
        thread.join(10)
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
                            "stream=start_time", "-of", "csv=p=0", str(out / hls.PLAYLIST)],
                           capture_output=True, text=True, check=True)
    start = float(probe.stdout.split()[0])
    assert 28.0 < start < 29.0  # wall clock minus the delay, not the recording's first second
    assert (out / hls.PLAYLIST).read_text().rstrip().endswith("#EXT-X-ENDLIST")


def test_command_line_for_the_server() -> None:
    cmd = hls.command("/rec/room/r1", "/hls/room", width=640, height=360, list_size=0)
    assert cmd[1:3] == ["-m", "recorder.hls"]
    assert cmd[cmd.index("--recording") + 1] == "/rec/room/r1" and cmd[cmd.index("--out") + 1] == "/hls/room"
    assert cmd[cmd.index("--list-size") + 1] == "0" and cmd[cmd.index("--width") + 1] == "640"
