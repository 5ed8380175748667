"""Room statistics over REST and the operator's /dashboard page.

``GET /api/rooms/{room}/stats`` answers a roomAdmin token (for the room or "*") with
each participant's figures, and refuses others with a coded error; ``/dashboard`` in
headless Chromium lists the participants of a live call with figures that move, and
the test saves its screenshot (``dashboard.png`` in the test's tmp dir, path printed).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from signaling.app import FerryServer

from .browser import chromium, needs_chromium
from .conftest import wait_until
from .test_adaptive import open_720p_page


async def _get(server: FerryServer, path: str, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.http_url}{path}", headers=headers) as resp:
            return resp.status, await resp.json()


async def test_room_stats_need_room_admin_for_that_room(server: FerryServer) -> None:
    status, body = await _get(server, "/api/rooms/nowhere/stats", None)
    assert status == 401 and body["error"]["code"]
    status, body = await _get(
        server, "/api/rooms/nowhere/stats", server.token("nowhere", "student")
    )
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await _get(
        server, "/api/rooms/nowhere/stats", server.token("elsewhere", "t", room_admin=True)
    )
    assert status == 403 and "elsewhere" in body["error"]["message"]
    status, body = await _get(
        server, "/api/rooms/nowhere/stats", server.token("*", "ops", room_admin=True)
    )
    assert status == 404 and body["error"]["code"] == "not_found"


@pytest.mark.browser
@needs_chromium
async def test_dashboard_shows_a_live_call_with_moving_figures(
    server: FerryServer, tmp_path: Path
) -> None:
    room = "dash"
    admin = server.token("*", "ops", room_admin=True)
    async with chromium() as browser:
        cams = [
            await open_720p_page(browser, f"{server.http_url}/?room={room}&name=cam{i}&autojoin=1")
            for i in (1, 2)
        ]

        def video_tracks() -> int:
            r = server.rooms.rooms.get(room)
            return 0 if r is None else sum(1 for t in r.router.tracks.values() if t.kind == "video")

        await wait_until(lambda: video_tracks() == 2, 20.0)
        status, stats = await _get(server, f"/api/rooms/{room}/stats", admin)
        assert status == 200 and len(stats["participants"]) == 2
        page = await browser.new_page(viewport={"width": 1400, "height": 600})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"{server.http_url}/dashboard?token={admin}")
        rows = f"document.querySelectorAll('.dash-room[data-room=\"{room}\"] tbody tr')"
        await page.wait_for_function(f"{rows}.length === 2", timeout=15_000)
        # Figures move: both publish and receive, and each has a quality level.
        deadline = time.monotonic() + 15.0
        table: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            table = await page.evaluate(
                f"[...{rows}].map(r => ({{name: r.querySelector('.name').textContent, q: r.dataset.quality,"
                " inb: r.querySelector('.in').textContent, out: r.querySelector('.out').textContent,"
                " layers: r.querySelector('.layers').textContent}))"
            )
            if all(r["q"] and int(r["inb"] or 0) > 100 and int(r["out"] or 0) > 100 for r in table):
                break
            await page.wait_for_timeout(300)
        await page.wait_for_function("window.dashboard.rounds >= 2", timeout=10_000)
        rounds = await page.evaluate("window.dashboard.rounds")
        shot = tmp_path / "dashboard.png"
        await page.screenshot(path=str(shot), full_page=True)
        print(f"DASHBOARD screenshot {shot} rows {table}")
        assert sorted(r["name"] for r in table) == ["cam1", "cam2"]
        assert all(r["q"] in ("excellent", "good") for r in table), table
        assert all(int(r["inb"]) > 100 and int(r["out"]) > 100 for r in table), table
        assert rounds >= 2 and shot.stat().st_size > 10_000
        assert errors == [] and all(c.ferry_errors == [] for c in cams)
        # A token that is not an admin's gets the error on the page, not a blank table.
        student = await browser.new_page()
        await student.goto(f"{server.http_url}/dashboard?token={server.token(room, 'student')}")
        await student.wait_for_function(
            "window.dashboard && window.dashboard.lastError", timeout=10_000
        )
        assert "forbidden" in await student.evaluate("window.dashboard.lastError")
