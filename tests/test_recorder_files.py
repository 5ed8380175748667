"""Recording real VP8 / H.264 / Opus RTP into files: counts, durations, gaps, crash, repair."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from recorder import manifest as mf
from recorder.recording import Recording
from recorder.repair import repair
from recorder.worker import MuxWorker

from .recorder_media import (
    FakeHost,
    Pkt,
    decode_count,
    encode_opus,
    encode_video,
    packetize,
    probe,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
FPS = 30
VSTEP, ASTEP = 3000, 960


def new_recording(tmp_path: Path, worker: MuxWorker | None = None) -> Recording:
    rec = Recording(tmp_path / "room" / "rec1", room="room", recording_id="rec1",
                    unix_offset_s=1.7e9, now_ms=0.0, worker=worker)
    rec.add_participant("PA_1", "alice", "Alice")
    return rec


def add(rec: Recording, codec: str, host: FakeHost | None = None):  # type: ignore[no-untyped-def]
    audio = codec == "opus"
    return rec.add_track(sid=f"TR_{codec}", participant_sid="PA_1",
                         kind="audio" if audio else "video",
                         source="microphone" if audio else "camera", codec=codec,
                         clock_rate=48000 if audio else 90000, host=host)


def feed(recorder, pkts: list[Pkt], ms_per_frame: float) -> None:  # type: ignore[no-untyped-def]
    for p in pkts:
        recorder.on_packet(p.layer, p.view, p.ext_seq, p.keyframe, p.frame * ms_per_frame)


def media(codec: str, n: int) -> tuple[list[Pkt], float, int]:
    """Packets, ms per frame and RTP step for `n` frames of `codec`."""
    if codec == "opus":
        return packetize("opus", list(encode_opus(n)), ts_step=ASTEP), 20.0, ASTEP
    return packetize(codec, [f for f, _ in encode_video(codec, n)]), 1000 / FPS, VSTEP


@pytest.mark.parametrize("codec", ["vp8", "h264", "opus"])
def test_every_frame_recorded_with_the_rtp_duration(tmp_path: Path, codec: str) -> None:
    n = 90 if codec != "opus" else 150
    rec = new_recording(tmp_path)
    recorder = add(rec, codec, FakeHost())
    pkts, ms, step = media(codec, n)
    feed(recorder, pkts, ms)
    manifest = rec.stop(n * ms)
    path = rec.directory / manifest.tracks[0].file
    frames, duration, times, keys = probe(str(path))
    assert frames == n and decode_count(str(path)) == n
    rate = 48000 if codec == "opus" else 90000
    span = n * step / rate  # first to last RTP timestamp, plus the last frame
    assert abs(duration - span) / span < 0.02, (duration, span)
    assert keys[0] or codec == "opus"
    assert path.suffix == {"vp8": ".webm", "h264": ".mkv", "opus": ".ogg"}[codec]


def test_video_loss_resumes_at_a_keyframe_and_keeps_the_gap(tmp_path: Path) -> None:
    rec = new_recording(tmp_path)
    host = FakeHost()
    recorder = add(rec, "vp8", host)
    pkts, ms, _ = media("vp8", 90)
    kept = [p for p in pkts if p.frame != 40]  # never repaired
    feed(recorder, kept, ms)
    rec.stop(90 * ms)
    path = str(rec.directory / rec.manifest.tracks[0].file)
    frames, _, times, keys = probe(path)
    assert frames == 90 - 20  # frames 40..59 depend on the lost one; 60 is a keyframe
    assert decode_count(path) == frames
    index = [round(t * FPS) for t in times]
    assert index == [*range(40), *range(60, 90)]  # the hole stays a hole in pts
    assert keys[40]
    assert any(now >= 41 * ms for _, now in host.requests)  # a PLI for the resync
    assert rec.manifest.tracks[0].gaps == 1


def test_audio_loss_is_a_gap_in_pts(tmp_path: Path) -> None:
    rec = new_recording(tmp_path)
    recorder = add(rec, "opus")
    pkts, ms, _ = media("opus", 150)
    feed(recorder, [p for p in pkts if not 50 <= p.frame < 100], ms)  # 1 s lost
    rec.stop(150 * ms)
    frames, _, times, _ = probe(str(rec.directory / rec.manifest.tracks[0].file))
    assert frames == 100
    jumps = [round((b - a) * 1000) for a, b in zip(times, times[1:], strict=False)]
    assert sorted(set(jumps)) == [20, 1020]


def test_recording_starts_at_a_keyframe_and_asks_for_one(tmp_path: Path) -> None:
    rec = new_recording(tmp_path)
    host = FakeHost()
    recorder = add(rec, "vp8", host)
    pkts, ms, _ = media("vp8", 90)
    feed(recorder, [p for p in pkts if p.frame >= 10], ms)  # joined mid-GOP
    rec.stop(90 * ms)
    frames, _, times, keys = probe(str(rec.directory / rec.manifest.tracks[0].file))
    assert frames == 60 and keys[0] and times[0] == 0.0
    assert host.requests and host.requests[0][1] == 10 * ms


def test_a_full_writer_queue_drops_and_resyncs_at_a_keyframe(tmp_path: Path) -> None:
    worker = MuxWorker(max_jobs=8)
    rec = new_recording(tmp_path, worker)
    recorder = add(rec, "vp8", FakeHost())
    wait_until(lambda: worker.idle)
    release, started = threading.Event(), threading.Event()
    worker.submit(lambda: (started.set(), release.wait(10)))
    wait_until(started.is_set)
    pkts, ms, _ = media("vp8", 90)
    feed(recorder, [p for p in pkts if p.frame < 45], ms)
    assert recorder.entry.dropped >= 1 and worker.dropped >= 1
    release.set()
    for p in pkts:
        if p.frame >= 45:  # now at the writer's pace: no more drops
            wait_until(lambda: worker.idle)
            feed(recorder, [p], ms)
    assert worker.dropped == recorder.entry.dropped
    rec.stop(90 * ms)
    path = str(rec.directory / rec.manifest.tracks[0].file)
    frames, _, times, keys = probe(path)
    index = [round(t * FPS) for t in times]
    assert index == [*range(8), *range(60, 90)]  # 8 queued, then the first keyframe after
    assert keys[8] and decode_count(path) == frames


def test_a_full_writer_queue_still_finalizes_files_and_the_manifest(tmp_path: Path) -> None:
    worker = MuxWorker(max_jobs=8)
    rec = new_recording(tmp_path, worker)
    recorder = add(rec, "vp8", FakeHost())
    wait_until(lambda: worker.idle)
    release, started = threading.Event(), threading.Event()
    worker.submit(lambda: (started.set(), release.wait(10)))
    wait_until(started.is_set)
    pkts, ms, _ = media("vp8", 30)
    feed(recorder, pkts, ms)  # fills the queue: frames beyond it are dropped
    assert worker.dropped >= 1
    release.set()
    rec.stop(30 * ms)  # the close and the final manifest are queued behind a full queue
    entry = rec.manifest.tracks[0]
    assert entry.closed and entry.dropped >= 1  # the close ran: its counts reached the manifest
    frames, _, _, _ = probe(str(rec.directory / entry.file))
    assert frames == entry.frames - entry.dropped >= 8  # every queued frame reached the file


def test_manifest_round_trips_and_lists_tracks_with_timing(tmp_path: Path) -> None:
    rec = new_recording(tmp_path)
    video, audio = add(rec, "vp8", FakeHost()), add(rec, "opus")
    vp, _, _ = media("vp8", 60)
    ap, _, _ = media("opus", 100)
    feed(video, vp, 1000 / FPS)
    audio.on_sender_report(0, 0xE000_0000_0000_0000, ap[0].view.timestamp, 0.0)
    feed(audio, ap, 20.0)
    rec.stop(2000.0)
    loaded = mf.load(rec.directory)
    assert loaded.to_dict() == rec.manifest.to_dict()
    assert loaded.state == "stopped" and loaded.participants[0].identity == "alice"
    v, a = loaded.tracks
    assert (v.codec, v.kind, v.file, v.frames, v.closed) == ("vp8", "video", "alice_TR_vp8.webm", 60, True)
    assert v.sync == "arrival" and a.sync == "rtcp"
    assert a.last_rtp is not None and a.first_rtp is not None
    assert a.last_rtp - a.first_rtp == 99 * ASTEP
    assert a.first_unix == pytest.approx(0xE000_0000 - mf_ntp_offset(), abs=1e-6)
    assert v.duration_s == pytest.approx(59 / FPS)
    data = json.loads((rec.directory / "manifest.json").read_text())
    data["future_field"] = 1
    assert mf.Manifest.from_dict(data) == loaded  # newer keys are ignored
    assert not list(rec.directory.glob(".*.tmp"))


def mf_ntp_offset() -> int:
    from media.rtp.ntp import NTP_UNIX_OFFSET_S

    return NTP_UNIX_OFFSET_S


def test_sigkill_leaves_playable_files_and_repair_finalizes_them(tmp_path: Path) -> None:
    seconds = 4
    directory = tmp_path / "crash" / "r1"
    code = f"from tests.recorder_media import crash_child; crash_child({str(directory)!r}, {seconds})"
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    manifest = mf.load(directory)
    assert manifest.state == "recording" and len(manifest.tracks) == 2
    expect = {"vp8": seconds * FPS, "opus": seconds * 50}
    per_second = {"vp8": FPS, "opus": 50}
    for track in manifest.tracks:
        path = str(directory / track.file)
        frames, _, times, _ = probe(path)
        assert frames >= expect[track.codec] - 2 * per_second[track.codec], track.file
        assert decode_count(path) >= frames - 1  # at most a cut-off last frame
        counted = subprocess.run(["ffprobe", "-v", "error", "-count_packets", "-show_entries",
                                  "stream=nb_read_packets", "-of", "csv=p=0", path],
                                 capture_output=True, text=True, check=True)
        assert int(counted.stdout) == frames  # ffmpeg's own tools read it as far too
        assert track.last_unix is not None and track.first_unix is not None
    repaired = repair(directory)
    assert repaired.state == "repaired"
    for track in repaired.tracks:
        path = str(directory / track.file)
        frames, duration, _, _ = probe(path)
        assert track.frames == frames and track.closed
        assert track.last_rtp is not None and track.first_rtp is not None
        held = (track.last_rtp - track.first_rtp) / track.clock_rate
        assert held == pytest.approx(duration - 1 / {"vp8": FPS, "opus": 50}[track.codec], abs=0.01)
        assert track.duration_s == pytest.approx(duration, abs=0.05)
        assert decode_count(path) == frames
        out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration",
                              "-of", "csv=p=0", path], capture_output=True, text=True, check=True)
        assert float(out.stdout) == pytest.approx(duration, abs=0.05)  # finalized: known duration
    again = repair(directory)  # idempotent
    assert [t.frames for t in again.tracks] == [t.frames for t in repaired.tracks]


def test_cli_record_repair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from signaling.cli import main

    rec = new_recording(tmp_path)
    feed(add(rec, "opus"), media("opus", 50)[0], 20.0)
    rec.stop(1000.0)
    assert main(["record", "repair", str(rec.directory)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["state"] == "repaired" and report["tracks"][0]["frames"] == 50


def test_a_full_disk_stops_that_file_only_and_is_reported(tmp_path: Path) -> None:
    rec = new_recording(tmp_path)
    (rec.directory / "alice_TR_vp8.webm").symlink_to("/dev/full")  # every write: ENOSPC
    video, audio = add(rec, "vp8", FakeHost()), add(rec, "opus")
    feed(video, media("vp8", 30)[0], 1000 / FPS)
    feed(audio, media("opus", 50)[0], 20.0)
    manifest = rec.stop(1000.0)
    v, a = manifest.tracks
    assert v.error is not None and "No space left" in v.error
    assert rec.worker.errors == 1  # the first failure only: later frames are not written
    assert a.error is None and a.closed and probe(str(rec.directory / a.file))[0] == 50
    assert mf.load(rec.directory).tracks[0].error == v.error


def test_a_pause_in_the_stream_is_a_gap_in_pts(tmp_path: Path) -> None:
    # The camera stopped for 2 s (muted): sequence numbers continue, timestamps jump.
    rec = new_recording(tmp_path)
    recorder = add(rec, "vp8", FakeHost())
    frames = [f for f, _ in encode_video("vp8", 120)]
    first = packetize("vp8", frames[:30])
    second = packetize("vp8", frames[90:], seq0=first[-1].ext_seq + 1, first_frame=90)
    feed(recorder, first + second, 1000 / FPS)
    rec.stop(4000.0)
    _, _, times, keys = probe(str(rec.directory / rec.manifest.tracks[0].file))
    assert [round(t * FPS) for t in times] == [*range(30), *range(90, 120)]
    assert rec.manifest.tracks[0].gaps == 0  # nothing was lost: no keyframe needed
