"""Issue 3, acceptance 2: clients reach Ferry through netem's TURN relay (relay-only ICE),
and a profile adding 100 ms each way (+200 ms round trip) shows up in their getStats RTT.

* aiortc ``FerryClient`` publishing to Ferry: ``remote-inbound-rtp.roundTripTime`` of its
  senders (from Ferry's receiver reports). aiortc smooths that value (EWMA with
  ``RTT_ALPHA``), so each raw sample is recovered exactly from two consecutive values
  instead of waiting ~12 reports for the average to settle.
* Chromium (Ferry's web client, ``relay=1&turn=...``): the selected candidate pair's
  ``currentRoundTripTime`` (``window.ferry.localStats().rtt``), i.e. ICE consent checks
  that cross the relay both ways.

Everything is on 127.0.0.1 with ephemeral (high) ports: Chrome ignores TURN ports
below 1024.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator

import pytest

from clients.client import FerryClient
from clients.media_sources import TestPatternVideoTrack, ToneAudioTrack
from netem.turn import TurnRelay

from .browser import chromium, needs_chromium, open_page
from .conftest import wait_until

DELAY = "delay 100ms|delay 100ms"  # 100 ms each way: +200 ms round trip
TURN_USERS = {"py": "py-secret", "web": "web-secret"}  # usernames carry the profile: rttpy:py


@pytest.fixture
async def relay(server) -> AsyncIterator[TurnRelay]:
    # Configured as the netem runner does: per-user passwords, only Ferry's media address.
    r = TurnRelay("127.0.0.1", 0, profiles={"rttpy": "", "rttweb": ""}, users=TURN_USERS,
                  allowed_peers=[f"127.0.0.1:{server.engine.port}"])
    await r.start()
    try:
        yield r
    finally:
        await r.close()


class RawRtt:
    """Raw RTT samples (ms) recovered from aiortc's smoothed ``roundTripTime``."""

    def __init__(self, client: FerryClient) -> None:
        from aiortc.rtcrtpsender import RTT_ALPHA

        self.client = client
        self.alpha = RTT_ALPHA
        self.last: dict[str, float] = {}
        self.samples: list[float] = []

    async def poll(self) -> None:
        assert self.client.publisher is not None
        for tr in self.client.publisher.getTransceivers():
            report = await tr.sender.getStats()
            for s in report.values():
                if s.type != "remote-inbound-rtp" or s.roundTripTime is None:
                    continue
                prev = self.last.get(tr.kind)
                if prev is not None and s.roundTripTime != prev:
                    raw = (s.roundTripTime - self.alpha * prev) / (1 - self.alpha)
                    self.samples.append(raw * 1000.0)
                self.last[tr.kind] = s.roundTripTime

    async def collect(self, n: int, timeout: float) -> float:
        """Median of the next ``n`` raw samples (polled every 50 ms, bounded)."""
        start = len(self.samples)
        deadline = time.monotonic() + timeout
        while len(self.samples) - start < n:
            assert time.monotonic() < deadline, f"only {len(self.samples) - start} RTT samples"
            await self.poll()
            await asyncio.sleep(0.05)
        return statistics.median(self.samples[start:])


async def test_aiortc_through_relay_sees_200ms_more_rtt(server, relay: TurnRelay) -> None:
    client = FerryClient(turn_url=f"turn:127.0.0.1:{relay.port}", turn_username="rttpy:py",
                         turn_password=TURN_USERS["py"], relay_only=True, connect_timeout=15)
    try:
        await client.connect(server.ws_url)
        await client.join(server.token("relayrtt", "py"))
        await client.publish(ToneAudioTrack(), TestPatternVideoTrack(320, 240, 15))
        sdp = client.publisher.localDescription.sdp  # type: ignore[union-attr]
        cands = [ln for ln in sdp.splitlines() if ln.startswith("a=candidate")]
        assert cands and all("typ relay" in c for c in cands), cands
        room = server.rooms.rooms["relayrtt"]
        await wait_until(lambda: any(t.kind == "video" for t in room.router.tracks.values()), 10)
        assert {a.profile for a in relay.allocations} == {"rttpy"}
        assert relay.stats["relayed_up"] > 0

        rtt = RawRtt(client)
        base = await rtt.collect(3, 15)
        relay.set_profile("rttpy", DELAY)
        await rtt.collect(1, 10)  # the report in flight at the switch may straddle it
        delayed = await rtt.collect(3, 15)
        assert 170 <= delayed - base <= 300, (base, delayed, rtt.samples)
    finally:
        await client.leave()


@pytest.mark.browser
@needs_chromium
async def test_chromium_through_relay_sees_200ms_more_rtt(server, relay: TurnRelay) -> None:
    url = (f"{server.http_url}/?room=relayweb&name=web&autojoin=1&relay=1"
           f"&turn=turn:127.0.0.1:{relay.port}&turnuser=rttweb:web&turnpass={TURN_USERS['web']}")

    async with chromium() as browser:
        page = await open_page(browser, url)
        await page.wait_for_function("window.ferry && window.ferry.state === 'joined'",
                                     timeout=15000)
        room = server.rooms.rooms["relayweb"]
        await wait_until(lambda: any(t.kind == "video" for t in room.router.tracks.values()), 15)
        # All of the page's media crosses the relay: every allocation is the page's profile.
        await wait_until(lambda: relay.stats["relayed_up"] > 50 and relay.stats["relayed_down"] > 10, 15)
        assert relay.allocations and {a.profile for a in relay.allocations} == {"rttweb"}

        async def rtt_ms() -> float | None:
            value = (await page.evaluate("window.ferry.localStats()"))["rtt"]
            return None if value is None else value * 1000.0

        await wait_until_async(lambda: rtt_ms(), 15)
        # The base is the least reading over two consent checks (~2.5 s apart): one
        # taken in a load spike of this shared machine read 79 ms against 2.
        readings: list[float] = []
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            value = await rtt_ms()
            if value is not None:
                readings.append(value)
            await asyncio.sleep(0.2)  # the poll interval of a measurement window
        base = min(readings)
        assert base < 150, readings
        relay.set_profile("rttweb", DELAY)
        seen: list[float | None] = []

        async def raised() -> bool:
            # One consent check per reading: a single load spike on this shared machine
            # may overshoot, so wait for a reading in range rather than judge the first.
            value = await rtt_ms()
            seen.append(value)
            return value is not None and 170 <= value - base <= 300

        try:
            await wait_until_async(raised, 20)
        except AssertionError:
            raise AssertionError(f"RTT never rose by 170-300 ms: base {base}, seen {seen[-5:]}") from None
        assert page.ferry_errors == []  # type: ignore[attr-defined]


async def wait_until_async(predicate, timeout: float, interval: float = 0.2) -> None:  # type: ignore[no-untyped-def]
    """Like ``wait_until`` for an async predicate."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"condition not met within {timeout}s"
        await asyncio.sleep(interval)
