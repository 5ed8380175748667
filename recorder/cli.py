"""``ferry record ...`` subcommands, mounted by ``signaling.cli`` (its PLUGIN_MODULES).

    ferry record start|stop|list ROOM [--url U --token T]
                                a running Ferry's recording API (recorder.remote)
    ferry record repair DIR     finalize an interrupted recording (files + manifest)
    ferry record compose DIR --out FILE.mp4 [--width 1280 --height 720 --fps 25]
                                the recording as one H.264 + AAC MP4 (grid, names, speaker,
                                screen share, mixed audio, captions from transcript.json)
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from . import remote

__all__ = ["register", "run"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``record`` command (with its subcommands) to ``subparsers``."""
    record = subparsers.add_parser("record", help="recordings: start, stop, list, repair, compose")
    record.set_defaults(func=run)
    sub = record.add_subparsers(dest="record_command", required=True)
    remote.add_parsers(sub)
    repair = sub.add_parser("repair", help="finalize an interrupted recording directory")
    repair.add_argument("dir", help="DIR/<room>/<recording id> as written by ferry serve")
    compose = sub.add_parser("compose", help="render a recording as one MP4 (H.264 + AAC)")
    compose.add_argument("dir", help="DIR/<room>/<recording id> as written by ferry serve")
    compose.add_argument("--out", help="the MP4 to write (default: DIR/composite.mp4)")
    compose.add_argument("--width", type=int, default=1280)
    compose.add_argument("--height", type=int, default=720)
    compose.add_argument("--fps", type=float, default=25.0)
    compose.add_argument("--preset", default="veryfast", help="x264 preset (speed vs size)")
    compose.add_argument("--crf", type=int, default=23, help="x264 quality (lower is better)")
    compose.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return record


def run(args: argparse.Namespace) -> int:
    if args.record_command in remote.ACTIONS:
        return remote.run(args)
    if args.record_command == "repair":
        from .repair import repair  # PyAV is imported only when a command needs it

        manifest = repair(args.dir)
        summary = [
            {"file": t.file, "frames": t.frames, "duration_s": t.duration_s}
            for t in manifest.tracks
        ]
        print(json.dumps({"dir": args.dir, "state": manifest.state, "tracks": summary}))
        return 0
    if args.record_command == "compose":
        return _compose(args)
    return 2


def _compose(args: argparse.Namespace) -> int:
    import os
    import sys

    from .compose import Progress, compose

    out = args.out or os.path.join(args.dir, "composite.mp4")
    try:
        made = compose(args.dir, out, width=args.width, height=args.height, fps=args.fps,
                       preset=args.preset, crf=args.crf,
                       progress=None if args.no_progress else Progress(0.0))
    except (OSError, ValueError) as exc:
        print(f"ferry record compose: {exc}", file=sys.stderr)
        return 1
    if made["state"] == "recording":
        print("ferry record compose: the recording is not finished (still running, or crashed:"
              " run `ferry record repair` first for its full length)", file=sys.stderr)
    print(json.dumps(made))
    return 0
