"""Session resume: a dropped signaling connection comes back as the same participant."""

from __future__ import annotations

import time
from typing import Any

import pytest

from clients.channel import FerryError, SignalingChannel
from clients.client import FerryClient, allow_loopback
from clients.lite import LiteClient
from clients.media_sources import TestPatternVideoTrack, ToneAudioTrack
from clients.quic_channel import QuicChannel
from netem.proxy import UdpProxy
from signaling.app import FerryServer
from signaling.resume import EventLog, ResumeError, ResumeTokens
from tests.conftest import make_config, wait_until

# -- the sans-I/O core ------------------------------------------------------------------


def test_event_log_replays_what_came_after_last_seq_in_order() -> None:
    log = EventLog(limit=3)
    for i in range(5):
        log.append({"type": "e", "n": i})
    assert [m["seq"] for m in log.since(3)] == [4, 5]
    assert log.since(5) == []
    assert [m["n"] for m in log.since(2)] == [2, 3, 4]
    with pytest.raises(ResumeError) as gap:
        log.since(1)  # seq 2 fell out of the bounded log
    assert gap.value.code == "resume_gap"
    with pytest.raises(ResumeError):
        log.since(6)


def test_event_log_keeps_only_the_newest_offer_and_stays_within_its_bytes() -> None:
    log = EventLog(limit=100, max_bytes=10_000)
    log.append({"type": "subscriber_offer", "sdp": "a" * 3000, "version": 1})
    log.append({"type": "track_muted", "track_sid": "T"})
    log.append({"type": "subscriber_offer", "sdp": "b" * 3000, "version": 2})
    replay = log.since(0)
    assert [(e["type"], e["seq"]) for e in replay] == [("track_muted", 2), ("subscriber_offer", 3)]
    for version in range(3, 10):  # big events beyond the byte bound push out the oldest
        log.append({"type": "caption", "text": "c" * 3000, "version": version})
    with pytest.raises(ResumeError) as gap:
        log.since(0)
    assert gap.value.code == "resume_gap"
    kept = log.since(log.last_seq - 2)
    assert [e["seq"] for e in kept] == [log.last_seq - 1, log.last_seq]


def test_resume_tokens_are_single_use_and_rotate() -> None:
    counter = iter(range(100))
    tokens = ResumeTokens(lambda: f"t{next(counter)}")
    state = tokens.register("room", "PA_1")
    first = state.token
    assert tokens.redeem(first) is state
    assert state.token != first
    with pytest.raises(ResumeError) as used:
        tokens.redeem(first)
    assert used.value.code == "resume_used"
    with pytest.raises(ResumeError) as unknown:
        tokens.redeem("nope")
    assert unknown.value.code == "resume_expired"
    current = state.token
    tokens.forget("PA_1")
    with pytest.raises(ResumeError) as gone:
        tokens.redeem(current)
    assert gone.value.code == "resume_expired"


# -- through a real server ----------------------------------------------------------------


@pytest.fixture(autouse=True)
def _loopback():
    with allow_loopback():
        yield


def _url(server: FerryServer, transport: str) -> str:
    return server.quic_url if transport == "quic" else server.ws_url


def _frames(client: FerryClient, sid: str) -> int:
    sink = client.sink_for(sid, "video")
    return sink.received_frames if sink is not None else 0


@pytest.mark.parametrize("transport", ["ws", "quic"])
async def test_dropped_connection_resumes_within_3s_and_nobody_sees_it_leave(
    server: FerryServer, transport: str
) -> None:
    room = f"resume-{transport}"
    a, b, c = FerryClient(connect_timeout=15.0), FerryClient(connect_timeout=15.0), FerryClient()
    try:
        await a.connect(_url(server, transport))
        await a.join(server.token(room, "a"))
        await b.connect(server.ws_url)
        await b.join(server.token(room, "b"))
        await a.publish(TestPatternVideoTrack(), ToneAudioTrack())
        published = await b.publish(TestPatternVideoTrack(), ToneAudioTrack())
        a_sid, b_sid = a.participant["sid"], b.participant["sid"]
        await a.wait_for(lambda: _frames(a, b_sid) > 5, timeout=15)
        await b.wait_for(lambda: _frames(b, a_sid) > 5, timeout=15)
        assert a.resume_token

        a.drop_connection()
        dropped_at = time.monotonic()
        # While a is away: b mutes a track and c joins; a must get both events on resume.
        await b.request("mute", track_sid=published[0]["sid"], muted=True)
        await c.connect(server.ws_url)
        await c.join(server.token(room, "c"))
        await a.wait_for(lambda: a.resumes == 1, timeout=3, message="not resumed within 3 s")
        assert time.monotonic() - dropped_at < 3.0
        assert a.participant["sid"] == a_sid and a.transport == transport
        await a.wait_for(
            lambda: any(e["type"] == "participant_joined" and e["participant"]["identity"] == "c" for e in a.event_log)
            and any(e["type"] == "track_muted" and e["participant_sid"] == b_sid for e in a.event_log),
            timeout=3,
            message="missed events not replayed",
        )
        seqs = [e["seq"] for e in a.event_log if "seq" in e]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), "events replayed out of order or twice"

        # Media keeps flowing both ways; the room still has a with its tracks.
        a_frames, b_frames = _frames(a, b_sid), _frames(b, a_sid)
        await a.wait_for(lambda: _frames(a, b_sid) > a_frames + 10, timeout=10, message="a stopped receiving")
        await b.wait_for(lambda: _frames(b, a_sid) > b_frames + 10, timeout=10, message="b stopped receiving")
        participant = server.rooms.rooms[room].participants[a_sid]
        assert participant.connected and len(participant.tracks()) == 2
        assert (await a.request("ping"))["ok"]
        for other in (b, c):
            assert not any(e["type"] == "participant_left" for e in other.event_log)
    finally:
        for client in (a, b, c):
            await client.close()


async def _hello(channel: SignalingChannel, url: str) -> SignalingChannel:
    await channel.open(url)
    await channel.request("hello", version=1)
    return channel


async def _raw(url: str) -> SignalingChannel:
    events: list[dict[str, Any]] = []
    channel: SignalingChannel = (
        QuicChannel(events.append, request_timeout=5.0) if url.startswith("quic") else SignalingChannel(
            events.append, request_timeout=5.0
        )
    )
    return await _hello(channel, url)


@pytest.mark.parametrize("transport", ["ws", "quic"])
async def test_a_token_presented_twice_is_refused_the_second_time(server: FerryServer, transport: str) -> None:
    a = FerryClient()
    a.auto_resume = False
    first = second = None
    try:
        await a.connect(server.ws_url)
        await a.join(server.token("twice", "a"))
        token = a.resume_token
        first = await _raw(_url(server, transport))
        reply = await first.request("resume", token=token, last_seq=0)
        assert reply["participant"]["sid"] == a.participant["sid"]
        assert reply["resume_token"] != token
        second = await _raw(_url(server, transport))
        with pytest.raises(FerryError) as refused:
            await second.request("resume", token=token, last_seq=0)
        assert refused.value.code == "resume_used"
        # The first connection took over: the old one was told and closed.
        await a.wait_for(lambda: any(e.get("reason") == "resumed" for e in a.event_log), timeout=5)
        assert (await first.request("ping"))["ok"]
    finally:
        for channel in (first, second):
            if channel is not None:
                await channel.close()
        await a.close()


async def test_resume_after_the_grace_period_is_refused_and_others_see_the_leave() -> None:
    srv = FerryServer(make_config(reconnect_grace_s=0.5))
    await srv.start()
    a, b = FerryClient(), FerryClient()
    a.auto_resume = False
    raw = None
    try:
        await a.connect(srv.ws_url)
        await a.join(srv.token("late", "a"))
        await b.connect(srv.ws_url)
        await b.join(srv.token("late", "b"))
        token, a_sid = a.resume_token, a.participant["sid"]
        a.drop_connection()
        await b.wait_for(
            lambda: any(e["type"] == "participant_left" and e["sid"] == a_sid for e in b.event_log), timeout=5
        )
        left = next(e for e in b.event_log if e["type"] == "participant_left")
        assert left["reason"] == "disconnected"
        raw = await _raw(srv.ws_url)
        with pytest.raises(FerryError) as refused:
            await raw.request("resume", token=token, last_seq=0)
        assert refused.value.code == "resume_expired"
    finally:
        if raw is not None:
            await raw.close()
        await a.close()
        await b.close()
        await srv.stop()


async def test_resume_with_a_seq_beyond_the_log_is_a_gap(server: FerryServer) -> None:
    a = FerryClient()
    a.auto_resume = False
    raw = None
    try:
        await a.connect(server.ws_url)
        await a.join(server.token("gap", "a"))
        raw = await _raw(server.ws_url)
        with pytest.raises(FerryError) as refused:
            await raw.request("resume", token=a.resume_token, last_seq=10_000)
        assert refused.value.code == "resume_gap"
        with pytest.raises(FerryError) as bad:
            await raw.request("resume", token="", last_seq=0)
        assert bad.value.code == "bad_request"
    finally:
        if raw is not None:
            await raw.close()
        await a.close()


async def test_quic_client_keeps_its_connection_when_its_nat_rebinds(server: FerryServer) -> None:
    proxy = UdpProxy(("127.0.0.1", 0), ("127.0.0.1", server.quic.port))
    listen = await proxy.start()
    url = f"quic://127.0.0.1:{listen[1]}?sha256={server.quic.certificate_sha256.hex()}"
    a, b = FerryClient(connect_timeout=15.0), FerryClient(connect_timeout=15.0)
    try:
        await a.connect(url)
        await a.join(server.token("nat", "a"))
        await b.connect(server.ws_url)
        await b.join(server.token("nat", "b"))
        await b.publish(TestPatternVideoTrack())
        b_sid = b.participant["sid"]
        await a.wait_for(lambda: _frames(a, b_sid) > 5, timeout=15)
        connection = next(c for c in server.quic.connections if c.peer is not None)
        before = connection._quic._network_paths[0].addr
        proxy.rebind()
        assert (await a.request("ping", timeout=3))["ok"]
        await wait_until(lambda: connection._quic._network_paths[0].addr != before, timeout=3)
        assert connection.peer is not None and not connection.terminated
        assert a.resumes == 0 and not a.reconnecting, "migration, not a reconnect"
        frames = _frames(a, b_sid)
        # A publish after the rebinding goes through the migrated connection.
        await a.publish(ToneAudioTrack())
        await a.wait_for(lambda: _frames(a, b_sid) > frames + 10, timeout=10)
        assert not any(e["type"] == "participant_left" for e in b.event_log)
    finally:
        await a.close()
        await b.close()
        await proxy.close()


async def test_lite_client_resumes_by_itself_over_quic(server: FerryServer) -> None:
    lite, other = LiteClient(), FerryClient()
    try:
        await lite.connect(server.quic_url)
        await lite.join(server.token("lite", "lite"))
        sid = lite.participant["sid"]
        await other.connect(server.ws_url)
        await other.join(server.token("lite", "other"))
        lite.drop_connection()
        await lite.wait_for(lambda: lite.resumes == 1, timeout=3, message="LiteClient did not resume")
        assert lite.participant["sid"] == sid and lite.transport == "quic"
        assert (await lite.request("ping"))["ok"]
        assert not any(e["type"] == "participant_left" for e in other.event_log)
    finally:
        await lite.close()
        await other.close()
