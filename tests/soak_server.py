"""`ferry serve` with a memory-dump hook, for telling a leak from allocator noise.

RSS alone cannot say whether memory is held by live objects (a leak) or by memory the
allocators keep after a peak (reused, not growing). This wrapper runs the ordinary
``ferry serve`` entry point and, on each SIGUSR2, runs a full garbage collection and
writes ``dump-N.json`` (N counts from 1) into ``$FERRY_SOAK_DUMP_DIR``:

* ``py_blocks`` (``sys.getallocatedblocks``) and ``gc_objects``: live Python objects;
* ``malloc_in_use`` / ``malloc_free`` / ``malloc_mmap`` (glibc ``mallinfo2``): bytes the C
  allocator hands out (C libraries such as OpenSSL and libsrtp, and Python objects over
  512 bytes), bytes it holds free (fragmentation), and large blocks it mapped;
* with ``FERRY_SOAK_TRACEMALLOC`` set, tracemalloc runs from the start and
  ``dump-N.pickle`` holds a snapshot; :func:`growth` diffs two by allocation site.

``dump-N.done`` is written last, so a driver can wait for it. Usage (what
``tests/test_soak.py`` does)::

    FERRY_SOAK_DUMP_DIR=/tmp/tm FERRY_SOAK_TRACEMALLOC=1 python -m tests.soak_server serve
    kill -USR2 <pid>   # after warm-up, and again after N churn cycles
    python -m tests.soak_server diff /tmp/tm/dump-1.pickle /tmp/tm/dump-2.pickle
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import signal
import sys
import tempfile
import threading
import tracemalloc
from pathlib import Path
from types import FrameType
from typing import Any
from xml.etree import ElementTree

FRAMES = 12  # stack depth kept per allocation: enough to reach the owning module
ROOT = str(Path(__file__).resolve().parent.parent)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def malloc_info() -> dict[str, int]:
    """glibc's heap figures (empty where mallinfo2 is missing: musl, glibc < 2.33)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return {}
    mallinfo2.restype = _Mallinfo2
    info = mallinfo2()
    return {
        "malloc_in_use": info.uordblks + info.hblkhd,
        "malloc_free": info.fordblks,
        "malloc_mmap": info.hblkhd,
    }


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def glibc_arenas() -> dict[str, Any]:
    """Per-arena system bytes from glibc's ``malloc_info`` XML: the main arena (brk heap)
    and one per thread that ever allocated while the others were busy."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_info"):
        return {}
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    with tempfile.NamedTemporaryFile(suffix=".xml") as tmp:
        fp = libc.fopen(tmp.name.encode(), b"w")
        if not fp:
            return {}
        libc.malloc_info(0, fp)
        libc.fclose(fp)
        root = ElementTree.parse(tmp.name).getroot()
    heaps = []
    for heap in root.findall("heap"):
        current = heap.find("system[@type='current']")
        rest = heap.find("total[@type='rest']")
        heaps.append(
            (
                int(current.get("size", 0)) if current is not None else 0,
                int(rest.get("size", 0)) if rest is not None else 0,
            )
        )
    return {
        "glibc_arenas": len(heaps),
        "glibc_arena_system": [h[0] for h in heaps],
        "glibc_arena_free": [h[1] for h in heaps],
    }


def pymalloc_arenas() -> dict[str, int]:
    """pymalloc's arena counts from ``sys._debugmallocstats`` (written to C stderr): its
    1 MiB arenas are mmapped outside glibc, so mallinfo2 does not see them."""
    wanted = {
        "# arenas allocated current": "pymalloc_arenas",
        "# arenas highwater mark": "pymalloc_arenas_max",
        "# bytes in allocated blocks": "pymalloc_used",
        "# bytes in available blocks": "pymalloc_avail",
    }
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as tmp:
            sys.stderr.flush()
            os.dup2(tmp.fileno(), 2)
            try:
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
    finally:
        os.close(saved)
    out: dict[str, int] = {}
    for line in text.splitlines():
        head, _, value = line.partition("=")
        name = wanted.get(head.strip())
        if name and name not in out:
            out[name] = int(value.strip().replace(",", ""))
    return out


def smaps_rss() -> dict[str, int]:
    """Resident kB by mapping kind (/proc/self/smaps): glibc's brk heap, anonymous maps
    (thread arenas, pymalloc arenas, large mallocs, thread stacks) and file maps."""
    out = {"rss_heap_kb": 0, "rss_anon_kb": 0, "rss_file_kb": 0, "anon_maps": 0}
    kind = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/smaps").read_text().splitlines():
            first = line.split(maxsplit=6)
            if "-" in first[0] and len(first) >= 5 and not first[0].endswith(":"):
                path = first[5] if len(first) > 5 else ""
                if path == "[heap]":
                    kind = "rss_heap_kb"
                elif path.startswith("/"):
                    kind = "rss_file_kb"
                else:
                    kind = "rss_anon_kb"
                    out["anon_maps"] += 1
            elif first[0] == "Rss:" and kind:
                out[kind] += int(first[1])
    return out


def memory_figures() -> dict[str, Any]:
    """What :func:`_install_dump_hook` writes, after a full collection."""
    gc.collect()
    rss_kb = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    out: dict[str, Any] = {
        "rss_kb": rss_kb,
        "py_blocks": sys.getallocatedblocks(),
        "gc_objects": len(gc.get_objects()),
    }
    out.update(malloc_info())
    out.update(glibc_arenas())
    out.update(pymalloc_arenas())
    out.update(smaps_rss())
    out["threads"] = threading.active_count()
    if tracemalloc.is_tracing():
        out["traced_bytes"] = tracemalloc.get_traced_memory()[0]
    return out


def _install_dump_hook(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0

    def dump(signum: int, frame: FrameType | None) -> None:
        nonlocal count
        count += 1
        figures = memory_figures()
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(str(out_dir / f"dump-{count}.pickle"))
        (out_dir / f"dump-{count}.json").write_text(json.dumps(figures))
        (out_dir / f"dump-{count}.done").write_text("")

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
    if os.environ.get("FERRY_SOAK_TRACEMALLOC"):
        tracemalloc.start(FRAMES)
    out = os.environ.get("FERRY_SOAK_DUMP_DIR")
    if out:
        _install_dump_hook(Path(out))
    from signaling.cli import main as ferry_main

    return ferry_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
