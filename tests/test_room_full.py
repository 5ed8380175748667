"""A join past max_participants_per_room is refused with the coded error room_full,
whose message names the limit; a place freed by a leave can be taken again."""

from __future__ import annotations

import json

import aiohttp

from signaling.app import FerryServer

from .conftest import make_config


async def _call(ws: aiohttp.ClientWebSocketResponse, msg: dict) -> dict:
    await ws.send_str(json.dumps(msg))
    while True:
        reply = json.loads((await ws.receive(timeout=5)).data)
        if reply.get("id") == msg["id"]:
            return reply


async def test_join_past_the_room_limit_is_room_full_with_the_limit() -> None:
    server = FerryServer(make_config(max_participants_per_room=2))
    await server.start()
    http = aiohttp.ClientSession()
    sockets = []
    try:
        replies = []
        for i in range(3):
            ws = await http.ws_connect(server.ws_url)
            sockets.append(ws)
            assert (await _call(ws, {"type": "hello", "id": 1, "version": 1}))["ok"] is True
            replies.append(await _call(ws, {"type": "join", "id": 2, "token": server.token("class", f"p{i}")}))
        assert [r["ok"] for r in replies] == [True, True, False]
        error = replies[2]["error"]
        assert error["code"] == "room_full"
        assert "limit 2" in error["message"] and "max_participants_per_room" in error["message"]
        # Another room is not affected by this one's count.
        other = await _call(sockets[2], {"type": "join", "id": 3, "token": server.token("other", "p2")})
        assert other["ok"] is True
    finally:
        for ws in sockets:
            await ws.close()
        await http.close()
        await server.stop()
