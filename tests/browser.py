"""Headless Debian Chromium driven by Playwright (DESIGN section 7, item 4)."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager

import pytest

from clients.chromium import CHROMIUM_ARGS
from clients.chromium import CHROMIUM_PATH as CHROMIUM

needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="Debian chromium is not installed (apt-get install chromium)"
)


@asynccontextmanager
async def chromium():
    """One headless browser process; yields the Playwright Browser."""
    from playwright.async_api import async_playwright

    # Playwright gives every launch a fresh temporary profile (its own --user-data-dir).
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def open_page(browser, url: str):
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    page.ferry_errors = errors  # type: ignore[attr-defined]
    return page
