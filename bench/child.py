"""Waiting for a server the bench started as a child process (Ferry, Janus)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from typing import Any

import aiohttp

__all__ = ["stop_child", "wait_healthy"]


async def wait_healthy(proc: subprocess.Popen, url: str, timeout: float, what: str) -> Any:
    """Poll `url` until it answers 200 and return its body (JSON if it is JSON).

    Raises RuntimeError naming `what` as soon as the process exits, or at `timeout`:
    a server that died at start must not cost the whole timeout.
    """
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url) as resp:
                    if resp.status == 200:
                        with contextlib.suppress(ValueError, aiohttp.ContentTypeError):
                            return await resp.json(content_type=None)
                        return None
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} did not answer on {url} in {timeout}s")


def stop_child(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL after 10 s: a server that hangs in its stop cannot hang the bench."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
