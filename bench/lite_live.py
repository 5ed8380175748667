"""Benchmark: what a live-stamped LiteClient layer costs to encode per frame.

Why: the QA runner's first LiteClient publisher of a group encodes its three simulcast
layers live (``clients.lite.LiveVp8Source``) on a worker thread of the process that
also runs Ferry and every client, so its CPU is taken from theirs. This prints the
cost per frame and the bitrate reached against each layer's target, for the layers the
runner uses (``qa.participants.LITE_LAYERS``).

    python bench/lite_live.py [--fps 15] [--seconds 4]

Prints one JSON object per layer: width, height, target and reached kbit/s, ms of
process time per frame, and how many frames were keyframes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clients.lite.live import LiveVp8Source  # noqa: E402
from qa.participants import LITE_LAYERS  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args(argv)
    frames = int(args.fps * args.seconds)
    for width, height, bitrate in LITE_LAYERS:
        source = LiveVp8Source(width, height, bitrate, args.fps)
        size = 0
        start = time.process_time()
        for i in range(frames):
            got = source.next_frame(stamp_ms=i * 1000.0 / args.fps)
            size += len(got[0]) if got else 0
        cpu = time.process_time() - start
        print(json.dumps({
            "width": width, "height": height, "target_kbps": bitrate / 1000,
            "kbps": round(size * 8 / args.seconds / 1000, 1),
            "cpu_ms_per_frame": round(cpu * 1000 / frames, 2),
            "frames": source.frames_encoded, "keyframes": source.keyframes_encoded,
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
