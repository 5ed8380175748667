"""Benchmark: CPU per recorded track, for the recorder's writer path alone.

Real media (PyAV encoders: VP8 640x360 30 fps with a moving noise texture, ~2 Mbit/s
as `file_kbit_s` shows, plus 320x180 and 160x90 layers; Opus 20 ms), packetized into RTP as the router hands it to a `PacketSink`, is fed to
a `Recording` as fast as it goes (simulated arrival times). Measured separately:

* ``loop_us_per_packet``: CPU on the calling thread (the event loop in Ferry):
  payload copy, jitter buffer, layer choice, depacketize, queueing;
* ``writer_us_per_frame``: CPU on the writer thread (PyAV mux, file writes);
* ``core_pct``: both together per second of media, as % of one core: what one
  recorded track costs a server (issue target: < 3 % per video track).

``video_simulcast3`` feeds all three layers (the recorder keeps the top one and must
still look at the others' packets). Best of ``--repeat`` runs.

Then the composite (``--compose-seconds``, default 60; 0 skips it): four people, each
VP8 640x360 30 fps ~1 Mbit/s (a moving lit shape on a gradient with sensor noise:
webcam-like) and Opus, recorded through the recorder core, then

* ``compose_4p_720p``: ``ferry record compose`` to 1280x720 25 fps (x264 veryfast):
  ``speed_x`` (media seconds per wall second, on this machine as loaded now),
  ``cpu_speed_x`` (media seconds per CPU second of the whole process, all threads:
  what one free core would do);
* ``hls_live_720p``: the live HLS renderer's work for the same composite (x264
  veryfast + zerolatency, 2 s segments), run on the finished recording as fast as
  it goes: ``core_pct`` is its CPU per second of media, i.e. the share of a core
  a live stream of this room costs.

Prints one JSON object.

Run: python bench/record.py [--seconds 10] [--repeat 3] [--compose-seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from recorder.recording import Recording  # noqa: E402
from tests.recorder_media import (  # noqa: E402
    FakeHost,
    Pkt,
    encode_opus,
    encode_video,
    packetize,
)

FPS = 30


def video_layers(seconds: int, layers: int) -> list[tuple[float, Pkt]]:
    sizes = [(640, 360), (320, 180), (160, 90)][:layers]
    rates = [1_000_000, 300_000, 100_000]
    out: list[tuple[float, Pkt]] = []
    for index, (w, h) in enumerate(reversed(sizes)):
        layer = index
        frames = [f for f, _ in encode_video("vp8", seconds * FPS, width=w, height=h, noisy=True,
                                             bit_rate=rates[len(sizes) - 1 - index])]
        pkts = packetize("vp8", frames, layer=layer, ssrc=10 + layer, ts0=layer * 1_000_000)
        out += [(p.frame * 1000.0 / FPS + 0.1 * layer, p) for p in pkts]
    out.sort(key=lambda item: item[0])
    return out


def audio(seconds: int) -> list[tuple[float, Pkt]]:
    pkts = packetize("opus", list(encode_opus(seconds * 50)), ts_step=960)
    return [(p.frame * 20.0, p) for p in pkts]


def run_once(stream: list[tuple[float, Pkt]], kind: str, layers: int, seconds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        rec = Recording(Path(tmp) / "r", room="bench", recording_id="b", unix_offset_s=0.0, now_ms=0.0)
        codec, rate = ("opus", 48000) if kind == "audio" else ("vp8", 90000)
        sink = rec.add_track(sid="TR", participant_sid="PA", kind=kind, source="bench",
                             codec=codec, clock_rate=rate, layers=layers, host=FakeHost())
        start_loop, start_all = time.thread_time(), time.process_time()
        for now, p in stream:
            sink.on_packet(p.layer, p.view, p.ext_seq, p.keyframe, now)
        loop_s = time.thread_time() - start_loop
        rec.stop(seconds * 1000.0)
        total_s = time.process_time() - start_all
        size = os.path.getsize(rec.directory / rec.manifest.tracks[0].file)
        frames = rec.manifest.tracks[0].frames
        writer_s = rec.worker.cpu_s
    return {
        "packets": len(stream),
        "frames": frames,
        "file_kbit_s": round(size * 8 / seconds / 1000, 1),
        "loop_us_per_packet": round(loop_s / len(stream) * 1e6, 2),
        "writer_us_per_frame": round(writer_s / max(1, frames) * 1e6, 2),
        "core_pct": round(total_s / seconds * 100, 3),
    }


def bench_composite(seconds: int) -> dict[str, object]:
    """Compose speed and live HLS CPU for four people (see the module docstring)."""
    from recorder.compose import compose
    from recorder.hls import LiveRenderer
    from tests.recorder_flash import Person, record

    people = [Person(f"PA_{i}", f"p{i}", f"Person {i}", 0.0, float(seconds),
                     tuple(k + 0.25 * i for k in range(1, seconds - 1, 4)))  # each speaks in turn
              for i in range(4)]
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        rec = record(str(Path(tmp) / "rec"), people, width=640, height=360, texture="camera")
        inputs = sum(os.path.getsize(rec.directory / t.file) for t in rec.manifest.tracks)
        cpu, wall = time.process_time(), time.monotonic()
        made = compose(rec.directory, Path(tmp) / "out.mp4")
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        media_s = float(made["duration_s"])
        out["compose_4p_720p"] = {
            "media_s": media_s,
            "inputs_kbit_s": round(inputs * 8 / media_s / 1000, 1),
            "output_kbit_s": round(os.path.getsize(Path(tmp) / "out.mp4") * 8 / media_s / 1000, 1),
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "speed_x": round(media_s / wall, 2),
            "cpu_speed_x": round(media_s / cpu, 2),
        }
        renderer = LiveRenderer(rec.directory, Path(tmp) / "hls")  # 1280x720 25 fps, 2 s segments
        cpu, wall = time.process_time(), time.monotonic()
        result = renderer.run()
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        media_s = result["frames"] / renderer.fps
        out["hls_live_720p"] = {
            "media_s": media_s,
            "cpu_s": round(cpu, 2),
            "core_pct": round(cpu / media_s * 100, 1),
            "speed_x": round(media_s / wall, 2),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compose-seconds", type=int, default=60, help="0: skip the composite")
    args = parser.parse_args(argv)
    cases = {
        "audio_opus": (audio(args.seconds), "audio", 1),
        "video_vp8_1layer": (video_layers(args.seconds, 1), "video", 1),
        "video_simulcast3": (video_layers(args.seconds, 3), "video", 3),
    }
    results: dict[str, object] = {"seconds_of_media": args.seconds, "repeat": args.repeat}
    for name, (stream, kind, layers) in cases.items():
        runs = [run_once(stream, kind, layers, args.seconds) for _ in range(args.repeat)]
        results[name] = min(runs, key=lambda r: r["core_pct"])
    if args.compose_seconds:
        results.update(bench_composite(args.compose_seconds))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
