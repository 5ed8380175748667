"""The classroom in Chromium: a teacher's page moderates a student's page."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import pytest

from signaling.app import FerryServer

from .browser import chromium, needs_chromium, open_page
from .conftest import wait_until

pytestmark = [pytest.mark.browser, needs_chromium]


async def _poll(page, predicate_js: str, timeout_ms: int = 10000) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_ms / 1000.0
    while not await page.evaluate(predicate_js):
        if loop.time() > deadline:
            raise AssertionError(f"not true within {timeout_ms} ms: {predicate_js[:200]}")
        await asyncio.sleep(0.1)


def page_url(server: FerryServer, identity: str, **grants: object) -> str:
    token = server.token("class", identity, **grants)
    return f"{server.http_url}/?room=class&autojoin=1&name={identity}&token={quote(token)}&url={quote(server.ws_url)}"


async def test_teacher_page_mutes_a_student_who_sees_it_and_raises_a_hand(server: FerryServer) -> None:
    async with chromium() as browser:
        console: list[str] = []
        teacher = await open_page(browser, page_url(server, "teacher", room_admin=True))
        student = await open_page(browser, page_url(server, "student"))
        for page in (teacher, student):
            page.on("console", lambda msg: console.append(msg.text))
        room = server.rooms.rooms["class"]
        await wait_until(lambda: (s := room.by_identity("student")) is not None and any(
            t.kind == "audio" for t in s.tracks()), 15)
        # The join form is gone once joined; only the teacher has the lock and tile buttons.
        for page in (teacher, student):
            assert not await page.is_visible("#join-form")
        assert await teacher.is_visible("#lock") and not await student.is_visible("#lock")
        assert await student.is_visible("#hand")
        await _poll(teacher, "() => !!document.querySelector('.tile.remote .mod button[data-act=mute]:not([disabled])')")
        assert await student.evaluate("() => !document.querySelector('.mod')")
        await teacher.click(".tile.remote .mod button[data-act=mute]")
        await _poll(student, "() => document.getElementById('teacher-note').textContent.includes('muted by the teacher')")
        mic = next(t for t in room.by_identity("student").tracks() if t.kind == "audio")
        assert mic.muted and not mic.forwarding
        await student.click("#hand")
        await _poll(teacher, "() => !!document.querySelector('.tile.remote.hand-raised')")
        await teacher.click("#lock")
        await wait_until(lambda: room.locked, 5)
        assert not [line for line in console if "not subscribed" in line], console
        for page in (teacher, student):
            assert page.ferry_errors == []
