"""`ferry serve` with tracemalloc, for telling a leak from allocator noise in the soak.

RSS alone cannot say whether memory is held by live Python objects (a leak) or by
arenas the allocator keeps after a peak (reused, not growing). This wrapper runs the
ordinary ``ferry serve`` entry point with tracemalloc on; each SIGUSR2 runs a full
garbage collection and writes a snapshot to ``$FERRY_SOAK_TRACEMALLOC/snapshot-N.pickle``
(N counts from 1), then touches ``snapshot-N.done`` so a driver can wait for it.
:func:`growth` diffs two snapshots by allocation site.

Usage (what ``tests/test_soak.py`` does when ``FERRY_SOAK_TRACEMALLOC`` is set)::

    FERRY_SOAK_TRACEMALLOC=/tmp/tm python -m tests.soak_server serve --http-port 7880
    kill -USR2 <pid>   # after warm-up, and again after N churn cycles
    python -m tests.soak_server diff /tmp/tm/snapshot-1.pickle /tmp/tm/snapshot-2.pickle
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

FRAMES = 12  # stack depth kept per allocation: enough to reach the owning module
ROOT = str(Path(__file__).resolve().parent.parent)


def _install_dump_hook(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0

    def dump(signum: int, frame: FrameType | None) -> None:
        nonlocal count
        count += 1
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
        path = out_dir / f"snapshot-{count}.pickle"
        snapshot.dump(str(path))
        current, peak = tracemalloc.get_traced_memory()
        (out_dir / f"snapshot-{count}.done").write_text(f"{current} {peak}\n")

    signal.signal(signal.SIGUSR2, dump)


def growth(before: str | Path, after: str | Path, *, limit: int = 25, key: str = "traceback") -> list[str]:
    """The allocation sites that grew most from ``before`` to ``after``, one line each.

    ``key`` is tracemalloc's grouping: ``"lineno"`` for the allocating line,
    ``"traceback"`` for the whole stack (the line shown is the innermost frame in
    Ferry's own packages, which is where the holder usually is).
    """
    filters = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
        tracemalloc.Filter(False, "<unknown>"),
    ]
    old = tracemalloc.Snapshot.load(str(before)).filter_traces(filters)
    new = tracemalloc.Snapshot.load(str(after)).filter_traces(filters)
    stats = new.compare_to(old, key)
    total = sum(s.size_diff for s in stats)
    lines = [f"total {total / 1024:+.1f} KiB over {len(stats)} sites"]
    for stat in stats[:limit]:
        frames = list(stat.traceback)
        ours = [f for f in frames if f.filename.startswith(ROOT) and "/tests/" not in f.filename]
        where = ours[-1] if ours else frames[-1]
        inner = frames[-1]
        lines.append(
            f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  "
            f"{where.filename}:{where.lineno}"
            + (f"  (allocated at {inner.filename}:{inner.lineno})" if inner is not where else "")
        )
    return lines


def main(argv: list[str]) -> int:
    if argv[:1] == ["diff"]:
        key = "lineno" if "--lineno" in argv else "traceback"
        paths = [a for a in argv[1:] if not a.startswith("--")]
        print("\n".join(growth(paths[0], paths[1], limit=40, key=key)))
        return 0
    out = os.environ.get("FERRY_SOAK_TRACEMALLOC")
    if out:
        tracemalloc.start(FRAMES)
        _install_dump_hook(Path(out))
    from signaling.cli import main as ferry_main

    return ferry_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
