"""The writer thread: muxing and file I/O off the event loop, behind a bounded queue.

The packet path only ever calls `submit`, which never blocks: when the queue holds
`max_jobs` frames the job is dropped and counted (the caller then resyncs its video at the next
keyframe, so a dropped frame never corrupts what follows). One thread serves a
whole recording; jobs run in submission order, so a track's frames, its close and
the manifest rewrite that follows it land on disk in that order.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["MuxWorker"]

log = logging.getLogger("ferry.recorder")

QUEUE_JOBS = 1024  # ~10 s of one video track at 30 fps plus its audio


class MuxWorker:
    """Runs callables on one daemon thread; counts drops, errors and its own CPU time."""

    def __init__(self, name: str = "ferry-recorder", max_jobs: int = QUEUE_JOBS) -> None:
        self._queue: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = queue.Queue()
        self.max_jobs = max_jobs
        self.submitted = 0
        self.dropped = 0
        self.errors = 0
        self.done = 0
        self.cpu_s = 0.0  # thread CPU time spent in jobs
        self.last_error: str | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, essential: bool = False) -> bool:
        """Queue `fn(*args)`; False (and counted) when closed, or full and not essential.

        Essential jobs (a file's close, a manifest rewrite) are few and always queued:
        dropping one would leave a file unfinalized or a stale manifest.
        """
        if self._closed or (not essential and self._queue.qsize() >= self.max_jobs):
            self.dropped += 1
            return False
        self._queue.put_nowait((fn, args))
        self.submitted += 1
        return True

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    @property
    def idle(self) -> bool:
        """Every job submitted so far has run (for tests and orderly shutdown)."""
        return self.done >= self.submitted

    def close(self, timeout_s: float = 10.0) -> bool:
        """Run what is queued, then stop; True when the thread finished within the timeout."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        clock = time.thread_time
        while True:
            job = self._queue.get()
            if job is None:
                return
            fn, args = job
            start = clock()
            try:
                fn(*args)
            except Exception as exc:  # a full disk or a bad frame: count it, keep going
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.errors == 1 or log.isEnabledFor(logging.DEBUG):
                    log.warning("recorder job failed: %s", self.last_error)
            self.cpu_s += clock() - start
            self.done += 1
