"""Benchmark (issue #12): CPU per recorded track, for the recorder's writer path alone.

Real media (PyAV encoders: VP8 640x360 30 fps with a moving noise texture, ~2 Mbit/s
as `file_kbit_s` shows, plus 320x180 and 160x90 layers; Opus 20 ms), packetized into RTP as the router hands it to a `PacketSink`, is fed to
a `Recording` as fast as it goes (simulated arrival times). Measured separately:

* ``loop_us_per_packet``: CPU on the calling thread (the event loop in Ferry):
  payload copy, jitter buffer, layer choice, depacketize, queueing;
* ``writer_us_per_frame``: CPU on the writer thread (PyAV mux, file writes);
* ``core_pct``: both together per second of media, as % of one core: what one
  recorded track costs a server (issue target: < 3 % per video track).

``video_simulcast3`` feeds all three layers (the recorder keeps the top one and must
still look at the others' packets). Best of ``--repeat`` runs. Prints one JSON object.

Run: python bench/record.py [--seconds 10] [--repeat 3]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
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
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
