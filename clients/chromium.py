"""How Ferry's tools launch headless Debian Chromium (DESIGN.md section 7, item 4).

One list for the netem scenario runner and the browser tests: without
`--allow-loopback-in-peer-connection` Chrome gathers no 127.0.0.1 candidate, and
without the background-networking switches it tries to reach the internet.
Chromium keeps only the last `--disable-features=`, so the list is merged here.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

CHROMIUM_PATH = shutil.which("chromium") or "/usr/bin/chromium"

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns,MediaRouter,OptimizationHints,Translate",
    "--autoplay-policy=no-user-gesture-required",
]


@asynccontextmanager
async def chromium_browser() -> AsyncIterator[Any]:
    """One headless Chromium (Playwright ``Browser``) with these switches; Playwright
    gives every launch a fresh temporary profile (its own ``--user-data-dir``)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM_PATH, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()
