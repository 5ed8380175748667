"""A class on Ferry: a teacher (roomAdmin) moderates two students with media flowing.

LiteClients on 127.0.0.1: a student without the publish grant is refused, allowed the
microphone, heard by the other student, muted at the server (the other stops receiving),
removed from the locked room and refused when joining again; the audit log and the
webhooks a local receiver verified record every step.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.channel import FerryError
from clients.lite import LiteClient, encode_opus_clip
from signaling.app import FerryServer
from signaling.audit import read_entries

from .conftest import make_config, wait_until
from .test_webhooks import KEY, SECRET, Receiver, receiver  # noqa: F401  (fixture)


async def joined(server: FerryServer, identity: str, **grants: object) -> LiteClient:
    client = LiteClient(name=identity)
    await client.connect(server.ws_url)
    await client.join(server.token("class", identity, **grants))
    return client


def packets(client: LiteClient) -> int:
    return sum(c.packets for c in client.received.values())


def sent(client: LiteClient) -> int:
    assert client.publisher is not None and client.publisher.audio is not None
    return client.publisher.audio.packets_sent


async def test_teacher_allows_mutes_and_removes_a_student(tmp_path: Path, receiver: Receiver) -> None:  # noqa: F811
    config = make_config(
        recordings_dir=str(tmp_path / "recordings"),
        api_keys={KEY: SECRET},
        webhooks=[{"url": receiver.url + "/ok", "api_key": KEY}],
    )
    server = FerryServer(config)
    await server.start()
    clients: list[LiteClient] = []
    try:
        teacher = await joined(server, "teacher", room_admin=True)
        alice = await joined(server, "alice", can_publish=False)
        bob = await joined(server, "bob", can_publish=False)
        clients += [teacher, alice, bob]
        audio = encode_opus_clip(2.0)
        with pytest.raises(FerryError) as info:
            await alice.publish_audio(audio)
        assert info.value.code == "forbidden"

        await teacher.request(
            "update_participant", identity="alice",
            permission={"canPublish": True, "canPublishSources": ["microphone"]},
        )
        await alice.wait_for(lambda: [e for e in alice.events if e.get("type") == "permissions_changed"])
        tracks = await alice.publish_audio(audio)
        track_sid = tracks[0]["sid"]
        await bob.wait_for(lambda: packets(bob) >= 50, 15, message="bob does not hear alice")

        await teacher.request("mute_published_track", identity="alice", track_sid=track_sid, muted=True)
        for client in (alice, bob):
            await client.wait_for(
                lambda c=client: any(
                    e.get("type") == "track_muted" and e.get("muted") and e.get("by") == "teacher" for e in c.events
                )
            )
        with pytest.raises(FerryError) as info:
            await alice.request("mute", track_sid=track_sid, muted=False)
        assert info.value.code == "forbidden"
        # Alice keeps sending 1.5 s of audio; bob gets none of it (a few in flight at most).
        before_bob, before_alice = packets(bob), sent(alice)
        await alice.wait_for(lambda: sent(alice) >= before_alice + 75, 10)
        assert packets(bob) - before_bob <= 5, (before_bob, packets(bob))

        await teacher.request("set_room_locked", locked=True)
        await teacher.request("remove_participant", identity="alice")
        await alice.wait_for(
            lambda: any(e.get("type") == "leave" and e.get("reason") == "removed" for e in alice.events)
        )
        room = server.rooms.rooms["class"]
        assert room.by_identity("alice") is None
        again = LiteClient(name="alice-again")
        clients.append(again)
        await again.connect(server.ws_url)
        with pytest.raises(FerryError) as info:
            await again.join(server.token("class", "alice"))
        assert info.value.code == "room_locked"

        # The audit log has every step.
        assert server.audit.flush()
        entries = list(read_entries(config.audit_dir or "", room="class"))
        steps = [
            (e["kind"], e.get("action") or e.get("what") or e.get("code"), e.get("identity"))
            for e in entries if e["kind"] in ("join", "refused", "moderation")
        ]
        assert steps == [
            ("join", None, "teacher"),
            ("join", None, "alice"),
            ("join", None, "bob"),
            ("refused", "publish", "alice"),
            ("moderation", "update_participant", "alice"),
            ("moderation", "mute_published_track", "alice"),
            ("moderation", "set_room_locked", None),
            ("moderation", "remove_participant", "alice"),
            ("refused", "join", "alice"),
        ], steps
        assert entries[-1]["code"] == "room_locked"
        # And so have the verified webhooks.
        def hooks() -> list[tuple[str, str | None]]:
            return [(e["event"], (e.get("participant") or {}).get("identity")) for e in receiver.events]

        await wait_until(lambda: ("participant_left", "alice") in hooks(), 10)
        assert receiver.bad == []
        assert hooks()[:6] == [
            ("room_started", None),
            ("participant_joined", "teacher"),
            ("participant_joined", "alice"),
            ("participant_joined", "bob"),
            ("track_published", "alice"),
            ("participant_left", "alice"),
        ], hooks()
    finally:
        for client in clients:
            await client.close()
        await server.stop()
