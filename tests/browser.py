"""Headless Debian Chromium driven by Playwright (DESIGN section 7, item 4)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from clients.chromium import CHROMIUM_PATH as CHROMIUM
from clients.chromium import chromium_browser
from netem.turn import TurnRelay

needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="Debian chromium is not installed (apt-get install chromium)"
)


chromium = chromium_browser  # one headless browser process; yields the Playwright Browser


async def open_page(browser, url: str):
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    page.ferry_errors = errors  # type: ignore[attr-defined]
    return page


@asynccontextmanager
async def relayed_viewer(server: Any, room: str, link: str) -> AsyncIterator[tuple[TurnRelay, str]]:
    """netem's TURN relay with one profile, ``link`` ("up|down"), and the URL of a
    subscribe-only page named "viewer" that joins `room` relay-only through it
    (``relay.set_profile("link", ...)`` changes its link mid-call)."""
    relay = TurnRelay(
        "127.0.0.1", 0,
        profiles={"link": link},
        users={"viewer": "viewer-pw"},
        allowed_peers=[f"127.0.0.1:{server.engine.port}"],
    )
    await relay.start()
    url = (
        f"{server.http_url}/?room={room}&name=viewer&autojoin=1&publish=0&relay=1"
        f"&turn=turn:127.0.0.1:{relay.port}&turnuser=link:viewer&turnpass=viewer-pw"
    )
    try:
        yield relay, url
    finally:
        await relay.close()
