"""Issue 5 acceptance: media survives lossy links (NACK/RTX for video, RED for audio).

Everything runs on 127.0.0.1 with seeded netem links:

* LiteClients are put behind a netem ``UdpProxy`` (one per leg) by rewriting the
  candidate they take from Ferry's SDP (``candidate_rewrite=proxy.route``), so every
  datagram of that peer connection (STUN, DTLS, RTP, RTCP) crosses the emulated link both ways;
* Chromium is put behind netem's TURN relay (relay-only ICE, the profile picked by the
  TURN username).

The subscriber side is measured per packet by wrapping the LiteSubscriber's RTP hook
(``_VideoProbe``/``_AudioProbe``) or the aiortc receiver's: sequence numbers for loss,
frame completion times for freezes, RED blocks for audio frames recovered from
redundancy. ``_DownTap`` observes what Ferry hands a DownTrack (arrived in order,
retransmitted late, or rebuilt from RED). Each test prints its figures (``-s``).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp
import pytest

from clients.client import FerryClient, allow_loopback
from clients.lite import (
    LiteClient,
    LiteSubscriber,
    encode_opus_clip,
    encode_vp8_clip,
)
from clients.lite import client as lite_client
from media.wire.red import parse_red
from media.wire.rtp import parse_rtp
from netem.proxy import UdpProxy
from netem.turn import TurnRelay
from qa.measurement import LoopLag
from signaling.app import FerryServer
from tests.browser import chromium, needs_chromium, open_page
from tests.conftest import wait_until

# --------------------------------------------------------------------------- helpers


async def _proxy(server: FerryServer, up: str, down: str, seed: int) -> UdpProxy:
    proxy = UdpProxy(("127.0.0.1", 0), ("127.0.0.1", server.engine.port), up, down, seed=seed)
    await proxy.start()
    return proxy


async def _metrics(server: FerryServer) -> dict[str, float]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.http_url}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            out[name] = float(value)
    return out


async def _settle(value: Callable[[], int], *, quiet_s: float, timeout: float) -> int:
    """Poll ``value`` until it is 0 or unchanged for ``quiet_s``; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    last, since = value(), time.monotonic()
    while last and time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        await asyncio.sleep(0.05)
        now = value()
        if now != last:
            last, since = now, time.monotonic()
    return last


async def _wait_subscriber(client: LiteClient, timeout: float = 10.0) -> LiteSubscriber:
    await client.wait_for(lambda: client.subscriber is not None, timeout)
    await client.wait_connected("subscriber", timeout)
    assert client.subscriber is not None
    return client.subscriber


def _hook_rtp(sub: LiteSubscriber, probe: Callable[[bytes, float], None]) -> None:
    """Call ``probe`` on every decrypted RTP packet before the subscriber's own counting."""
    handle = sub.handle_rtp

    def handle_rtp(packet: bytes, now_ms: float) -> None:
        probe(packet, now_ms)
        handle(packet, now_ms)

    sub.handle_rtp = handle_rtp  # type: ignore[method-assign]


class _VideoProbe:
    """Per-sequence-number arrival (original or RTX) and frame completion times.

    A frame (one RTP timestamp) is complete once its first packet (VP8 S bit, partition
    0), its marker packet and every sequence number between them have arrived.
    """

    def __init__(self, ssrc: int, rtx_ssrc: int | None) -> None:
        self.ssrc = ssrc
        self.rtx_ssrc = rtx_ssrc
        self.seqs: dict[int, float] = {}  # extended seq -> first arrival (ms)
        self.rtx = 0
        self._highest: int | None = None
        self._frames: dict[int, list[int | None]] = {}  # ts -> [first ext, last ext]
        self.completed: dict[int, float] = {}  # ts -> completion time (ms)
        self.arrivals: list[float] = []  # every packet of the stream or its RTX (ms)

    def _extend(self, seq: int) -> int:
        if self._highest is None:
            return seq + (1 << 16)
        delta = (seq - self._highest) & 0xFFFF
        return self._highest + delta if delta < 0x8000 else self._highest + delta - 0x10000

    def __call__(self, packet: bytes, now_ms: float) -> None:
        view = parse_rtp(packet)
        payload = view.payload
        if view.ssrc == self.rtx_ssrc:
            if len(payload) < 3:
                return  # padding probe
            seq = (payload[0] << 8) | payload[1]
            payload = payload[2:]
            self.rtx += 1
        elif view.ssrc == self.ssrc:
            seq = view.seq
        else:
            return
        self.arrivals.append(now_ms)
        ext = self._extend(seq)
        if self._highest is None or ext > self._highest:
            self._highest = ext
        if ext in self.seqs:
            return
        self.seqs[ext] = now_ms
        frame = self._frames.setdefault(view.timestamp, [None, None])
        if payload and payload[0] & 0x17 == 0x10:  # S=1, partition 0
            frame[0] = ext
        if view.marker:
            frame[1] = ext
        first, last = frame
        if (
            view.timestamp not in self.completed
            and first is not None
            and last is not None
            and all(s in self.seqs for s in range(first, last + 1))
        ):
            self.completed[view.timestamp] = now_ms

    @property
    def highest(self) -> int:
        assert self._highest is not None
        return self._highest

    def missing(self, lo: int, hi: int) -> int:
        return sum(1 for s in range(lo, hi + 1) if s not in self.seqs)

    def longest_silence(self, start_ms: float, end_ms: float) -> float:
        """The longest time (ms) in ``start_ms .. end_ms`` with no packet arriving."""
        times = [start_ms, *(t for t in self.arrivals if start_ms < t < end_ms), end_ms]
        return max(b - a for a, b in zip(times, times[1:], strict=False))

    def longest_freeze(self, t0: float, t1: float) -> tuple[float, float, float]:
        """(length, start, end) in ms of the longest gap between completed frames."""
        times = sorted(t for t in self.completed.values() if t0 <= t <= t1)
        edges = [t0, *times, t1]
        return max((b - a, a, b) for a, b in zip(edges, edges[1:], strict=False))


class _LoopStalls:
    """When the test's own event loop woke late, and by how much (``LoopLag``).

    The clients, the proxies and Ferry share this process's loop: while it does not
    run, packets wait in socket buffers and frames complete late, so a freeze seen
    then is partly the test machine's, not the network's or Ferry's."""

    def __init__(self) -> None:
        self.lag = LoopLag(stall_ms=20.0)
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.lag.woke(loop.time())  # the clock the probe stamps frames with
            await asyncio.sleep(LoopLag.PERIOD_S)

    def within(self, start_ms: float, end_ms: float) -> float:
        """Milliseconds the loop stood still between ``start_ms`` and ``end_ms``."""
        return sum(min(lag, t * 1000.0 - start_ms) for t, lag in self.lag.stalls
                   if start_ms < t * 1000.0 <= end_ms)

    def stop(self) -> None:
        self._task.cancel()


# --------------------------------------------------------------------------- 1. video


VIDEO_SECONDS = 60.0
VIDEO_LOSS = "loss 10%"


async def test_video_through_10pct_loss_both_legs(server: FerryServer) -> None:
    """10% random loss on both legs -> <1% unrecovered, no freeze > 500 ms in 60 s (not
    counting time the test's own event loop stood still: see ``_LoopStalls``).

    Publisher (LiteClient, one VP8 layer 640x360 ~550 kbit/s, keyframe every 2 s,
    answering NACKs with RTX) -> [proxy: 10% loss each way] -> Ferry -> [proxy: 10% loss
    each way] -> subscriber (LiteClient, NACKing, RR and TWCC feedback).
    """
    clip = encode_vp8_clip(640, 360, 60, 500_000, keyframe_interval=60)
    up = await _proxy(server, VIDEO_LOSS, VIDEO_LOSS, seed=51)
    down = await _proxy(server, VIDEO_LOSS, VIDEO_LOSS, seed=52)
    pub = LiteClient(name="vpub", candidate_rewrite=up.route)
    sub = LiteClient(name="vsub", candidate_rewrite=down.route)
    stalls: _LoopStalls | None = None
    try:
        await sub.connect(server.ws_url)
        await sub.join(server.token("loss10", "sub"))
        await pub.connect(server.ws_url)
        await pub.join(server.token("loss10", "pub"), auto_subscribe=False)
        await pub.publish_vp8(clip, simulcast_rids=None)
        subscriber = await _wait_subscriber(sub)
        (counters,) = [c for c in subscriber.received.values() if c.kind == "video"]
        probe = _VideoProbe(counters.ssrc, counters.rtx_ssrc)
        _hook_rtp(subscriber, probe)
        await wait_until(lambda: len(probe.completed) > 30, 15.0)
        loop = asyncio.get_running_loop()
        stalls = _LoopStalls()
        t0 = loop.time() * 1000.0
        lo = probe.highest + 1
        stats0 = server.engine.stats.as_dict()
        started = time.monotonic()
        await asyncio.sleep(VIDEO_SECONDS)  # the measurement window itself, not a wait
        t1 = loop.time() * 1000.0
        hi = probe.highest
        # The tail of the window is still being repaired (the stream keeps flowing, so
        # later packets reveal every gap): wait until nothing in it is missing, or until
        # the count has not moved for 0.5 s (the NACK generators gave up or obsoleted).
        await _settle(lambda: probe.missing(lo, hi), quiet_s=0.5, timeout=4.0)
        window_s = time.monotonic() - started
        expected = hi - lo + 1
        unrecovered = probe.missing(lo, hi)
        freeze, freeze_from, freeze_to = probe.longest_freeze(t0, t1)
        stalled = stalls.within(freeze_from, freeze_to)
        frames = sum(1 for t in probe.completed.values() if t0 <= t <= t1)
        snap = server.engine.snapshot()
        (layer,) = [t.layers[0] for t in server.rooms.rooms["loss10"].router.tracks.values()]
        figures = {
            "window_s": round(window_s, 1),
            "expected": expected,
            "unrecovered": unrecovered,
            "unrecovered_pct": round(100.0 * unrecovered / max(1, expected), 3),
            "max_freeze_ms": round(freeze, 1),
            "silence_in_freeze_ms": round(probe.longest_silence(freeze_from, freeze_to), 1),
            "sub_outages": [
                p.subscriber.estimator.outage.outages
                for p in server.rooms.rooms["loss10"].router.participants.values()
                if p.subscriber.estimator is not None
            ],
            "loop_stalled_in_freeze_ms": round(stalled, 1),
            "loop_stalls_over_100ms": len([x for x in stalls.lag.stalls if x[1] > 100.0]),
            "complete_frames": frames,
            "rtx_received": probe.rtx,
            "up_dropped": [c.up.stats.dropped_loss for c in up.clients.values()],
            "down_dropped": [c.down.stats.dropped_loss for c in down.clients.values()],
            "nack_sent_to_pub": snap["nack_sent"] - stats0["nack_sent"],
            "rtx_sent_to_sub": snap["rtx_sent"] - stats0["rtx_sent"],
            "upstream_lost": snap["upstream_lost"],
            "upstream_unrecovered": snap["upstream_unrecovered"],
            "sub_nacks": subscriber.nacks_sent,
            "sub_nack_log": {
                k: getattr(counters.nack, k) for k in ("lost", "recovered", "given_up", "obsoleted")
            },
            "sub_plis": subscriber.plis_sent,
            "layer_switches": snap["layer_switches"],
            "ferry_nack_log": {
                k: getattr(layer.nack, k) for k in ("lost", "recovered", "given_up", "obsoleted")
            },
        }
        print("video 10% loss:", figures)
        assert expected > 2000, figures
        assert unrecovered < 0.01 * expected, figures
        # The freeze less the time this process's loop stood still within it.
        assert freeze - stalled <= 500.0, figures
    finally:
        if stalls is not None:
            stalls.stop()
        await pub.close()
        await sub.close()
        await up.close()
        await down.close()


# --------------------------------------------------------------------------- 2. audio


class _AudioProbe:
    """Which Opus frames (by RTP timestamp, 20 ms = 960 ticks) reached the subscriber.

    A frame counts as received if it arrived as a plain Opus packet, as the primary
    block of a RED packet, or inside a later RED packet's redundant blocks.
    """

    def __init__(self, ssrc: int, payload_types: dict[int, str]) -> None:
        self.ssrc = ssrc
        self.names = dict(payload_types)
        self.ts0: int | None = None
        self.primary: dict[int, float] = {}  # frame index -> arrival (ms)
        self.redundant: dict[int, float] = {}  # frame index -> first arrival as redundancy
        self.packets_by_name: dict[str, int] = {}
        self.red_blocks = 0

    def _index(self, ts: int) -> int:
        if self.ts0 is None:
            self.ts0 = ts
        delta = (ts - self.ts0) & 0xFFFFFFFF
        if delta >= 1 << 31:
            delta -= 1 << 32
        return round(delta / 960)

    def __call__(self, packet: bytes, now_ms: float) -> None:
        view = parse_rtp(packet)
        if view.ssrc != self.ssrc:
            return
        name = self.names.get(view.payload_type, str(view.payload_type))
        self.packets_by_name[name] = self.packets_by_name.get(name, 0) + 1
        if name == "red":
            blocks = parse_red(view.payload)
            for block in blocks[:-1]:
                if block.data:
                    self.red_blocks += 1
                    i = self._index(view.timestamp - block.timestamp_offset)
                    self.redundant.setdefault(i, now_ms)
        self.primary.setdefault(self._index(view.timestamp), now_ms)

    @property
    def newest(self) -> int:
        return max(self.primary)

    def unrecovered(self, lo: int, hi: int) -> int:
        return sum(
            1 for i in range(lo, hi + 1) if i not in self.primary and i not in self.redundant
        )

    def primary_missing(self, lo: int, hi: int) -> int:
        return sum(1 for i in range(lo, hi + 1) if i not in self.primary)


AUDIO_SECONDS = 8.0


@contextmanager
def _publisher_offers_red() -> Iterator[None]:
    """LiteClient publishers also offer ``red/48000/2`` (opus/opus) but still send plain
    Opus (PT 111), which RFC 2198 negotiation allows: Ferry then has a RED payload type
    for the track and must wrap the Opus itself for RED subscribers."""
    original = lite_client.build_publisher_offer

    def build(**kwargs: Any) -> str:
        text = original(**kwargs)
        text = re.sub(r"(m=audio \d+ UDP/TLS/RTP/SAVPF 111)", r"\1 63", text)
        return re.sub(
            r"(a=fmtp:111 [^\r]*\r\n)", r"\1a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\n", text
        )

    lite_client.build_publisher_offer = build  # type: ignore[assignment]
    try:
        yield
    finally:
        lite_client.build_publisher_offer = original  # type: ignore[assignment]


async def _red_run(
    server: FerryServer, *, add_red: bool, publisher_red: bool, seed: int
) -> dict[str, Any]:
    """Opus LiteClient publisher -> Ferry -> [20% loss down] -> RED-capable LiteClient.

    Returns the figures of one run; the measurement window starts after a warm-up, as
    Ferry sizes the redundancy from the subscriber's receiver reports (one per second).
    """
    server.engine.config.add_red = add_red  # read when the subscriber's DownTrack is made
    tag = f"{int(publisher_red)}{int(add_red)}"
    room = f"red-{tag}"
    tiny = encode_vp8_clip(160, 90, 30, 60_000, keyframe_interval=30)
    proxy = await _proxy(server, "", "loss 20%", seed=seed)
    pub = LiteClient(name=f"apub{tag}")
    sub = LiteClient(name=f"asub{tag}", candidate_rewrite=proxy.route)
    stats0 = server.engine.stats.as_dict()
    try:
        await pub.connect(server.ws_url)
        await pub.join(server.token(room, "pub"), auto_subscribe=False)
        if publisher_red:
            with _publisher_offers_red():
                await pub.publish_vp8(tiny, simulcast_rids=None, audio=encode_opus_clip(2.0))
        else:
            await pub.publish_vp8(tiny, simulcast_rids=None, audio=encode_opus_clip(2.0))
        await sub.connect(server.ws_url)
        await sub.join(server.token(room, "sub"))
        subscriber = await _wait_subscriber(sub)
        (counters,) = [c for c in subscriber.received.values() if c.kind == "audio"]
        offered = sorted(set(counters.payload_types.values()))
        if add_red:
            # A subscriber that can take RED must be offered it for every Opus track,
            # or Ferry has no way to add redundancy toward it.
            assert "red" in offered, f"subscriber offer for the Opus track lacks RED: {offered}"
        probe = _AudioProbe(counters.ssrc, counters.payload_types)
        _hook_rtp(subscriber, probe)
        await wait_until(lambda: len(probe.primary) > 100, 10.0)  # warm-up: ~2 s of audio
        lo = probe.newest + 1
        started = time.monotonic()
        await asyncio.sleep(AUDIO_SECONDS)  # the measurement window
        hi = probe.newest
        # Redundancy for the window's last frames rides on the next packets.
        await wait_until(lambda: probe.newest >= hi + 10, 5.0)
        snap = server.engine.snapshot()
        downs = [
            d
            for t in server.rooms.rooms[room].router.tracks.values()
            if t.kind == "audio"
            for d in t.down_tracks
        ]
        return {
            "add_red": add_red,
            "window_s": round(time.monotonic() - started, 1),
            "frames": hi - lo + 1,
            "unrecovered": probe.unrecovered(lo, hi),
            "primary_missing": probe.primary_missing(lo, hi),
            "packets_by_codec": probe.packets_by_name,
            "red_blocks": probe.red_blocks,
            "offered": offered,
            "down_red_pt": [d.red_payload_type for d in downs],
            "down_fraction_lost": [d.stream.fraction_lost for d in downs],
            "red_added": snap["red_added"] - stats0["red_added"],
            "link_dropped": [c.down.stats.dropped_loss for c in proxy.clients.values()],
        }
    finally:
        await pub.close()
        await sub.close()
        await proxy.close()


@pytest.mark.parametrize(
    "publisher_red",
    [
        pytest.param(
            False,
            id="plain-opus-publisher",
        ),
        pytest.param(True, id="red-negotiated-publisher-sending-plain-opus"),
    ],
)
async def test_ferry_adds_red_for_lossy_red_subscriber(
    server: FerryServer, publisher_red: bool
) -> None:
    """Issue 5: Ferry-added RED halves a 20%-downlink-loss subscriber's unrecovered audio.

    Opus publisher (LiteClient, no loss) -> Ferry -> [proxy: 20% loss toward the
    subscriber] -> RED-capable subscriber (LiteClient accepting red). A frame counts as
    received if it arrived as primary or inside a later RED packet's redundant blocks.
    Two runs, ``add_red`` on then off (set before the subscriber joins), same link seed.
    """
    with_red = await _red_run(server, add_red=True, publisher_red=publisher_red, seed=20)
    without = await _red_run(server, add_red=False, publisher_red=publisher_red, seed=20)
    metrics = await _metrics(server)
    print("audio 20% down, with RED:   ", with_red)
    print("audio 20% down, without RED:", without)
    print("ferry_red_added_total:", metrics.get("ferry_red_added_total"))
    assert without["unrecovered"] > 0.1 * without["frames"], without  # the link really loses
    assert with_red["unrecovered"] <= 0.5 * without["unrecovered"], (with_red, without)
    assert metrics["ferry_red_added_total"] > 0
    assert without["red_added"] == 0, without


class _DownTap:
    """What Ferry handed one subscriber's DownTrack, per sequence number of the track.

    Wraps the DownTrack's ``write_audio``, which the track's fan-out and its RED
    recovery call (observation only). Keys are Ferry's extended
    sequence numbers of the published stream. ``in_order`` are packets that arrived
    from the publisher as the newest so far (not lost on the uplink); ``late`` arrived
    after a newer one (a retransmission answering Ferry's NACK, or reordering);
    ``rebuilt`` were rebuilt by Ferry from RED redundancy; ``first`` says how each seq
    was first seen.
    """

    def __init__(self, down: Any) -> None:
        self.down = down
        self.in_order: set[int] = set()
        self.late: set[int] = set()
        self.rebuilt: set[int] = set()
        self.first: dict[int, str] = {}
        self.red_depths: dict[int, int] = {}
        self._highest = -1
        red_pt = down.track.red_pt
        write = down.write_audio

        def tapped(layer: Any, view: Any, ext_seq: int, *args: Any, **kwargs: Any) -> None:
            if kwargs.get("recovered"):
                kind = "rebuilt"
            elif ext_seq > self._highest:
                kind = "in_order"
                self._highest = ext_seq
                if red_pt is not None and view.payload_type == red_pt:
                    try:
                        depth = len(parse_red(view.payload)) - 1
                    except ValueError:
                        depth = -1
                    self.red_depths[depth] = self.red_depths.get(depth, 0) + 1
            else:
                kind = "late"
            getattr(self, kind).add(ext_seq)
            self.first.setdefault(ext_seq, kind)
            write(layer, view, ext_seq, *args, **kwargs)

        down.write_audio = tapped

    def subscriber_seq(self, ext_seq: int) -> int:
        return (ext_seq + self.down.rewriter.seq_offset) & 0xFFFF

    @property
    def highest(self) -> int:
        return self._highest


CHROME_SECONDS = 20.0


@pytest.mark.browser
@needs_chromium
async def test_chromium_red_uplink_20pct_rebuilt_for_plain_opus_subscriber(
    server: FerryServer,
) -> None:
    """Issue 5: Chromium publishes RED through 20% uplink loss; a non-RED subscriber
    (aiortc FerryClient) gets plain Opus missing < 1/3 of the upstream-lost frames.

    Chromium (Ferry's web client: RED preferred for audio, one video layer) reaches
    Ferry only through netem's TURN relay with profile ``loss 20%|`` (uplink only).
    """
    relay = TurnRelay("127.0.0.1", 0, profiles={"red20": "loss 20%|"}, users={"web": "web-pw"},
                      allowed_peers=[f"127.0.0.1:{server.engine.port}"], seed=5)
    await relay.start()
    patch = allow_loopback()
    client = FerryClient(connect_timeout=15)
    room = "chromered"
    seqs: set[int] = set()
    pts: dict[int, int] = {}
    dups = [0]

    def tap_receiver(receiver: Any) -> None:
        handle = receiver._handle_rtp_packet

        async def handle_rtp_packet(packet: Any, arrival_time_ms: int) -> None:
            if packet.sequence_number in seqs:
                dups[0] += 1
            seqs.add(packet.sequence_number)
            pts[packet.payload_type] = pts.get(packet.payload_type, 0) + 1
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = handle_rtp_packet

    try:
        await client.connect(server.ws_url)
        await client.join(server.token(room, "py"), auto_subscribe=False)
        url = (
            f"{server.http_url}/?room={room}&name=web&autojoin=1&simulcast=0&relay=1"
            f"&turn=turn:127.0.0.1:{relay.port}&turnuser=red20:web&turnpass=web-pw"
        )
        async with chromium() as browser:
            page = await open_page(browser, url)
            router = server.rooms.rooms[room].router

            def audio_track() -> Any:
                return next((t for t in router.tracks.values() if t.kind == "audio"), None)

            await wait_until(lambda: audio_track() is not None, 20.0)
            track = audio_track()
            assert track.red_pt is not None, "Chromium did not negotiate RED for audio"
            await client.request("subscribe", track_sids=[track.sid])
            await wait_until(lambda: track.down_tracks, 10.0)
            (down,) = track.down_tracks
            tap = _DownTap(down)
            pc = await client.wait_for(lambda: client.subscriber, 10.0)
            (transceiver,) = await client.wait_for(
                lambda: [t for t in pc.getTransceivers() if t.kind == "audio"], 10.0
            )
            tap_receiver(transceiver.receiver)
            await wait_until(lambda: len(seqs) > 50 and tap.in_order, 15.0)
            lo = tap.highest + 1
            started = time.monotonic()
            await asyncio.sleep(CHROME_SECONDS)  # the measurement window
            hi = tap.highest
            window = range(lo, hi + 1)

            def missing_now() -> int:
                return sum(1 for s in window if tap.subscriber_seq(s) not in seqs)

            # Let the window's tail land (retransmissions of its last losses included).
            await _settle(missing_now, quiet_s=0.5, timeout=3.0)
            window_s = time.monotonic() - started
            # Lost on the uplink: not received from Chromium in order (never, or only
            # later as a retransmission answering Ferry's NACK).
            upstream_lost = [s for s in window if s not in tap.in_order]
            # What RED alone left missing: lost upstream and not rebuilt from redundancy
            # before a retransmission (if any) arrived.
            unrebuilt = [s for s in upstream_lost if tap.first.get(s) != "rebuilt"]
            missing = [s for s in window if tap.subscriber_seq(s) not in seqs]
            metrics = await _metrics(server)
            opus_pt = down.payload_type
            nack = track.layers[0].nack
            figures = {
                "window_s": round(window_s, 1),
                "packets": len(window),
                "upstream_lost": len(upstream_lost),
                "rebuilt_from_red": len(upstream_lost) - len(unrebuilt),
                "not_rebuilt": len(unrebuilt),
                "late_retransmissions": len([s for s in window if s in tap.late]),
                # Rebuilt from RED, then the NACKed retransmission forwarded as well.
                "forwarded_twice": len([s for s in window if s in tap.rebuilt and s in tap.late]),
                "missing_at_subscriber": len(missing),
                "missing_over_lost": round(len(missing) / max(1, len(upstream_lost)), 3),
                "not_rebuilt_over_lost": round(len(unrebuilt) / max(1, len(upstream_lost)), 3),
                "subscriber_pts": pts,
                "subscriber_duplicates": dups[0],
                "opus_pt": opus_pt,
                "chrome_red_depths": tap.red_depths,
                "audio_nack": {
                    "lost": nack.lost,
                    "recovered": nack.recovered,
                    "given_up": nack.given_up,
                },
                "relay_up_dropped": [a.up.stats.dropped_loss for a in relay.allocations],
                "ferry_red_recovered_total": metrics.get("ferry_red_recovered_total"),
                "ferry_nack_sent_total": metrics.get("ferry_nack_sent_total"),
                "ferry_upstream_lost_total": metrics.get("ferry_upstream_lost_total"),
            }
            print("chromium RED uplink 20%:", figures)
            assert page.ferry_errors == []  # type: ignore[attr-defined]
        assert set(pts) == {opus_pt}, figures  # plain Opus only, no RED toward aiortc
        assert len(upstream_lost) > 0.1 * (hi - lo + 1), figures  # the uplink really loses
        assert len(missing) < len(upstream_lost) / 3, figures
        assert len(unrebuilt) < len(upstream_lost) / 3, figures  # RED alone does it
        assert metrics["ferry_red_recovered_total"] > 0, figures
    finally:
        await client.close()
        patch.undo()
        await relay.close()
