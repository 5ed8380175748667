"""Shared fixtures: a real Ferry server on loopback with free ports."""

from __future__ import annotations

import asyncio
import gc
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable

import pytest

from signaling.app import FerryServer
from signaling.config import Config

# Test servers write their audit log here unless a test names a directory (or a data
# or recordings directory it owns): never into the working tree.
_AUDIT_DIR = os.path.join(tempfile.gettempdir(), f"ferry-test-audit-{os.getpid()}")


def make_config(**overrides: object) -> Config:
    # Captions off unless a test asks: a recognizer per audio track would load every test's CPU.
    base = dict(
        host="127.0.0.1", http_port=0, media_port=0, quic_port=0, room_empty_timeout_s=2.0, captions="off"
    )
    base.update(overrides)
    if not any(k in overrides for k in ("audit_dir", "data_dir", "recordings_dir")):
        base["audit_dir"] = _AUDIT_DIR
    return Config(**base)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _earlier_tests_out_of_the_gc() -> None:
    """What earlier tests left alive goes out of the cyclic GC's sight, as `ferry serve`
    freezes its start-up objects: late in a session a full collection over everything
    the session made held the loop 180-320 ms (measured) in the middle of live calls,
    a freeze the code under test did not cause. Garbage is collected first; objects
    freed by reference count still go."""
    gc.collect()
    gc.freeze()


@pytest.fixture
async def server() -> AsyncIterator[FerryServer]:
    srv = FerryServer(make_config())
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> None:
    """Poll `predicate` until it is truthy or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        await asyncio.sleep(interval)
