"""Two Python publishers joining a room apart always receive each other.

The report: two ``ferry client join --publish both`` started 2 s apart, and one of them
"received nothing". Traced, both receive everything; the one that leaves last printed its
final stats line after the other had left, when its live ``tracks`` were rightly empty.
These tests pin both halves: the join/publish/first-offer orderings never lose a
subscription, and the CLI's last lines say what arrived over the whole call.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import pytest

from clients.cli import run_join
from clients.client import FerryClient, allow_loopback
from clients.media_sources import TestPatternVideoTrack, ToneAudioTrack


@pytest.fixture(autouse=True)
def _loopback():
    with allow_loopback():
        yield


def _receives(client: FerryClient, other_sid: str) -> bool:
    video = client.sink_for(other_sid, "video")
    audio = client.sink_for(other_sid, "audio")
    return bool(video and audio and video.received_frames > 0 and audio.received_audio_samples > 0)


async def _joined(server, room: str, identity: str) -> FerryClient:
    client = FerryClient(connect_timeout=15.0)
    await client.connect(server.ws_url)
    await client.join(server.token(room, identity))
    return client


async def test_two_publishers_joining_apart_always_receive_each_other(server):
    # Start gaps between A's publish and B's join; the last ones make both publish
    # concurrently after both joined, so every order of join reply, publish answer and
    # first subscriber_offer on either side is exercised.
    scenarios = [0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, None, None, None]
    lost: list[str] = []
    for i, gap in enumerate(scenarios):
        room = f"race{i}"
        a = await _joined(server, room, "a")
        b: FerryClient | None = None
        try:
            if gap is None:
                b = await _joined(server, room, "b")
                await asyncio.gather(
                    a.publish(ToneAudioTrack(), TestPatternVideoTrack()),
                    b.publish(ToneAudioTrack(), TestPatternVideoTrack()),
                )
            else:
                await a.publish(ToneAudioTrack(), TestPatternVideoTrack())
                await asyncio.sleep(gap)  # the scenario's start offset, not a wait
                b = await _joined(server, room, "b")
                await b.publish(ToneAudioTrack(), TestPatternVideoTrack())
            a_sid, b_sid = a.participant["sid"], b.participant["sid"]
            try:
                both = lambda a=a, b=b, x=a_sid, y=b_sid: _receives(a, y) and _receives(b, x)  # noqa: E731
                await a.wait_for(both, timeout=10)
            except TimeoutError:
                lost.append(f"run {i} (gap {gap}): a<-b {_receives(a, b_sid)}, b<-a {_receives(b, a_sid)}")
            assert not a.subscriber_errors and not b.subscriber_errors
        finally:
            if b is not None:
                await b.close()
            await a.close()
    assert not lost, f"subscriptions lost in {len(lost)}/{len(scenarios)} runs: {lost}"


async def test_cli_reports_what_it_received_after_the_other_side_left(server, capsys):
    # A publishes and leaves while B (the CLI) is still in the call: B's last stats line
    # shows no live track, and its summary still lists A's audio and video with frames.
    a = await _joined(server, "cli", "a")
    await a.publish(ToneAudioTrack(), TestPatternVideoTrack())
    a_sid = a.participant["sid"]
    args = argparse.Namespace(
        url=server.ws_url,
        token=server.token("cli", "b"),
        publish="both",
        duration=4.0,
        stats_interval=0.5,
        connect_timeout=15.0,
        turn=None,
        turn_user=None,
        turn_pass=None,
        relay=False,
        server_ice_servers=False,
        no_loopback=True,  # the fixture already patched aioice
    )
    cli = asyncio.ensure_future(run_join(args))
    room = lambda: server.rooms.rooms.get("cli")  # noqa: E731
    try:
        await a.wait_for(lambda: (r := room()) is not None and len(r.participants) == 2, timeout=10)
        b_sid = next(sid for sid in room().participants if sid != a_sid)
        await a.wait_for(lambda: len(a.sinks) == 2, timeout=10)
        # Leave once B has decoded A's media (B's subscriber DownTracks carried packets).
        await a.wait_for(
            lambda: (downs := _down_tracks(server, "cli", b_sid)) and all(d.packets_sent > 50 for d in downs),
            timeout=10,
        )
    finally:
        await a.leave()
    assert await asyncio.wait_for(cli, 15) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    stats = [line for line in lines if "subscriber" in line]
    assert stats and stats[-1]["subscriber"]["tracks"] == {}, "A left: no live track expected"
    final = lines[-1]
    assert final["event"] == "left"
    for line in (stats[-1], final):
        mine = {k: v for k, v in line["received"].items() if k.startswith(a_sid + "/")}
        kinds = {v["kind"]: v for v in mine.values()}
        assert set(kinds) == {"audio", "video"}, line
        assert kinds["video"]["framesDecoded"] > 0 and kinds["audio"]["audioSamplesReceived"] > 0
        assert not any(v["live"] for v in mine.values())


def _down_tracks(server, room: str, sid: str) -> list:
    participant = server.rooms.rooms[room].participants[sid]
    downs = list(participant.media.subscriber.down_tracks.values())
    return downs if len(downs) == 2 else []
