"""``ferry record ...`` subcommands, mounted by ``signaling.cli`` (its PLUGIN_MODULES).

    ferry record repair DIR     finalize an interrupted recording (files + manifest)
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``record`` command (with its subcommands) to ``subparsers``."""
    record = subparsers.add_parser("record", help="recordings: repair (compose comes later)")
    record.set_defaults(func=run)
    sub = record.add_subparsers(dest="record_command", required=True)
    repair = sub.add_parser("repair", help="finalize an interrupted recording directory")
    repair.add_argument("dir", help="DIR/<room>/<recording id> as written by ferry serve")
    return record


def run(args: argparse.Namespace) -> int:
    if args.record_command == "repair":
        from .repair import repair  # PyAV is imported only when a command needs it

        manifest = repair(args.dir)
        summary = [
            {"file": t.file, "frames": t.frames, "duration_s": t.duration_s}
            for t in manifest.tracks
        ]
        print(json.dumps({"dir": args.dir, "state": manifest.state, "tracks": summary}))
        return 0
    return 2
