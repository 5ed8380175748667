"""Room and participant lifecycle: dead peers, empty rooms, reconnects."""

from __future__ import annotations

import aiohttp

from clients.client import FerryClient, allow_loopback
from clients.media_sources import ToneAudioTrack
from signaling.app import FerryServer

from .conftest import make_config, wait_until


async def test_dead_peer_is_dropped_and_empty_room_closed():
    server = FerryServer(
        make_config(consent_timeout_s=8.0, room_empty_timeout_s=1.0, reconnect_grace_s=1.0)
    )
    await server.start()
    try:
        with allow_loopback():
            watcher = FerryClient()
            ghost = FerryClient()
            await watcher.connect(server.ws_url)
            await watcher.join(server.token("life", "watcher"))
            await ghost.connect(server.ws_url)
            await ghost.join(server.token("life", "ghost"))
            await ghost.publish(ToneAudioTrack())
            ghost_sid = ghost.participant["sid"]
            track_sid = ghost.published[0]["sid"]
            room = server.rooms.rooms["life"]
            # The ghost's media stops (no more ICE consent checks) while its socket stays
            # open: its track goes away (aioice refreshes consent every ~5 s, hence 8 s).
            await ghost.publisher.close()
            await watcher.wait_for(
                lambda: any(
                    e["type"] == "track_unpublished" and e["track_sid"] == track_sid
                    for e in watcher.event_log
                ),
                timeout=14,
            )
            assert ghost_sid in room.participants and track_sid not in room.router.tracks
            # Now its socket dies without `leave`: dropped after the reconnect grace.
            await ghost.close()
            await wait_until(lambda: ghost_sid not in room.participants, 5)
            await watcher.wait_for(
                lambda: any(e["type"] == "participant_left" and e["sid"] == ghost_sid for e in watcher.event_log),
                timeout=2,
            )
            assert "watcher" in [p.identity for p in room.participants.values()]
            await watcher.close()
            await wait_until(lambda: "life" not in server.rooms.rooms, 5)
            assert "life" not in server.engine.routers
    finally:
        await server.stop()


async def test_rejoin_with_same_identity_replaces(server):
    with allow_loopback():
        first = FerryClient()
        other = FerryClient()
        await other.connect(server.ws_url)
        await other.join(server.token("re", "other"))
        await first.connect(server.ws_url)
        await first.join(server.token("re", "alice"))
        old_sid = first.participant["sid"]
        second = FerryClient()
        await second.connect(server.ws_url)
        await second.join(server.token("re", "alice"))
        room = server.rooms.rooms["re"]
        identities = [p.identity for p in room.participants.values()]
        assert identities.count("alice") == 1
        assert old_sid not in room.participants
        for c in (first, second, other):
            await c.close()


async def test_rest_rooms_and_metrics(server):
    with allow_loopback():
        c = FerryClient()
        await c.connect(server.ws_url)
        await c.join(server.token("api", "alice"))
        async with aiohttp.ClientSession() as http:
            async with http.get(server.http_url + "/api/rooms") as resp:
                assert resp.status == 401
            headers = {"Authorization": "Bearer " + server.token("api", "viewer")}
            async with http.get(server.http_url + "/api/rooms", headers=headers) as resp:
                assert resp.status == 403
            headers = {"Authorization": "Bearer " + server.token("api", "ops", room_admin=True)}
            async with http.get(server.http_url + "/api/rooms", headers=headers) as resp:
                body = await resp.json()
            assert [r["name"] for r in body["rooms"]] == ["api"]
            assert body["rooms"][0]["participants"][0]["identity"] == "alice"
            async with http.get(server.http_url + "/metrics") as resp:
                text = await resp.text()
            assert "ferry_rooms 1.0" in text and "ferry_participants 1.0" in text
            async with http.get(server.http_url + "/api/dev-token?room=x&name=Bob") as resp:
                token = (await resp.json())["token"]
            assert server.verifier.verify(token, now=__import__("time").time()).grants.room == "x"
        await c.close()
