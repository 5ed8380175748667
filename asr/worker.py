"""Bounded recognition workers shared by every captioned track.

Recognizers block in native code (CTranslate2, Kaldi) that releases the GIL, so a
thread pool runs them in parallel with the event loop; `bench/captions.py` measures
threads against a process pool. `max_workers` bounds how many recognizer calls run at
once. Each track has a `Lane`: its jobs run one at a time and in order (a recognizer
is stateful), and lanes take turns on the pool (after each job a lane goes to the
back of the pool's queue). Submitting never blocks and never waits for a worker: the
event loop only appends to a deque. A lane reports how late it is (`oldest_wait_s`)
so the captioner can degrade (lag, then pause) instead of queueing without bound.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

__all__ = ["Lane", "RecognitionPool"]

log = logging.getLogger("ferry.asr")


class RecognitionPool:
    """The shared thread pool plus counters for metrics."""

    def __init__(self, max_workers: int = 4, *, name: str = "ferry-asr") -> None:
        self.max_workers = max(1, max_workers)
        self.spare_slots = max(1, (os.cpu_count() or 1) // 2)
        self._executor = ThreadPoolExecutor(self.max_workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self.busy = 0  # jobs running now
        self.waiting_lanes = 0  # lanes with work queued for a worker
        self.jobs_done = 0
        self.job_errors = 0
        self.busy_seconds = 0.0  # wall time spent inside jobs, summed over workers
        self.closed = False

    @property
    def idle(self) -> bool:
        """A worker is free and no lane is waiting for one."""
        return self.busy + self.waiting_lanes < self.max_workers

    @property
    def quiet(self) -> bool:
        """Spare CPU for optional work: fewer jobs running than half the cores."""
        return self.busy + self.waiting_lanes < self.spare_slots

    @property
    def free_core(self) -> bool:
        """Fewer jobs running or waiting than cores: optional work does not queue."""
        return self.busy + self.waiting_lanes < 2 * self.spare_slots

    def submit_detached(self, job: Callable[[], None]) -> bool:
        """Run `job` on a worker outside any lane (optional work: a snapshot partial)."""
        if self.closed:
            return False
        with self._lock:
            self.waiting_lanes += 1

        def run() -> None:
            with self._lock:
                self.waiting_lanes -= 1
                self.busy += 1
            start = time.monotonic()
            try:
                job()
            except Exception:
                self.job_errors += 1
                log.exception("caption job failed")
            finally:
                with self._lock:
                    self.busy -= 1
                    self.jobs_done += 1
                    self.busy_seconds += time.monotonic() - start

        try:
            self._executor.submit(run)
        except RuntimeError:
            with self._lock:
                self.waiting_lanes -= 1
            return False
        return True

    def lane(self) -> Lane:
        return Lane(self)

    def _schedule(self, lane: Lane) -> None:
        with self._lock:
            self.waiting_lanes += 1
        try:
            self._executor.submit(lane._run_one)
        except RuntimeError:  # shut down
            with self._lock:
                self.waiting_lanes -= 1

    def shutdown(self, wait: bool = True) -> None:
        self.closed = True
        self._executor.shutdown(wait=wait, cancel_futures=True)


class Lane:
    """One track's serial queue of jobs on a `RecognitionPool`."""

    def __init__(self, pool: RecognitionPool) -> None:
        self.pool = pool
        self._jobs: deque[tuple[Callable[[], None], float, bool]] = deque()
        self.heavy = 0  # queued jobs marked heavy (a recognizer pass, not a feed)
        self._lock = threading.Lock()
        self._scheduled = False
        self.closed = False

    def submit(self, job: Callable[[], None], *, heavy: bool = False) -> None:
        """Queue `job` (runs on a worker thread after this lane's earlier jobs).

        `heavy` marks a recognizer pass (a partial, a final) for `heavy` counting.
        """
        if self.closed or self.pool.closed:
            return
        with self._lock:
            self._jobs.append((job, time.monotonic(), heavy))
            self.heavy += heavy
            if self._scheduled:
                return
            self._scheduled = True
        self.pool._schedule(self)

    @property
    def depth(self) -> int:
        return len(self._jobs)

    @property
    def running(self) -> bool:
        return self._scheduled

    def oldest_wait_s(self) -> float:
        """How long the oldest queued job has waited (0 when none is queued)."""
        try:
            _, queued, _ = self._jobs[0]
        except IndexError:
            return 0.0
        return time.monotonic() - queued

    def clear(self) -> int:
        """Drop the queued jobs (not the running one); returns how many."""
        with self._lock:
            n = len(self._jobs)
            self._jobs.clear()
            self.heavy = 0
        return n

    def close(self) -> None:
        self.closed = True
        self.clear()

    def _run_one(self) -> None:
        pool = self.pool
        with pool._lock:
            pool.waiting_lanes -= 1
            pool.busy += 1
        start = time.monotonic()
        try:
            with self._lock:
                item = self._jobs.popleft() if self._jobs else None
                if item is not None:
                    self.heavy -= item[2]
            if item is not None:
                try:
                    item[0]()
                except Exception:
                    pool.job_errors += 1
                    log.exception("caption job failed")
        finally:
            with pool._lock:
                pool.busy -= 1
                pool.jobs_done += 1
                pool.busy_seconds += time.monotonic() - start
            with self._lock:
                again = bool(self._jobs) and not self.closed
                self._scheduled = again
            if again:
                pool._schedule(self)
