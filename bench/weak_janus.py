"""Benchmark: Ferry beside Janus on the same weak link, in the same run.

Why: Ferry is built for viewers on bad links, and Janus is the SFU it is measured
against. Here one live-stamped LiteClient simulcast publisher (three layers, 15 fps,
``clients.lite.LiveVp8Source``) publishes into each, and one LiteClient viewer of
each sits behind its own netem ``UdpProxy`` with the same link schedule: 2.5 Mbit/s,
then 0.3 Mbit/s, then 2.5 Mbit/s again (20 ms each way, drop-tail buffers of 64 and 32
kB, bandwidth-cliff's links). Both run at once in this process, so they share the
machine's load.

Per SFU and phase it prints the video the viewer received (kbit/s), its frame rate,
the longest gap between frames, glass-to-glass latency (the viewer assembles and
decodes the VP8 and reads the publisher's stamp: a lower bound of what a browser
shows, without a playout buffer), the audio packets that never came (of those sent
while the phase's packets were arriving), and the queue the viewer's packets met in
the bottleneck (p95 / max).

Janus (Debian's, VideoRoom, ``bench/janus.py``) is told the simulcast rids high to low
(f;h;q, as its demos send them), so its viewer gets the top layer; it picks a
subscriber's layer only when asked (``configure`` with ``substream``) and does not
follow the viewer's link. Ferry picks the layer from its estimate of that link.

    python bench/weak_janus.py [--seconds 30] [--step-at 10] [--step-for 10]

Needs ``janus`` (``apt-get install janus``); runs outside a network namespace (Janus
meets its clients on the host's address, see ``bench/janus.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.forward import FerryProcess  # noqa: E402
from bench.janus import (  # noqa: E402
    JanusApi,
    JanusLitePublisher,
    JanusLiteSubscriber,
    JanusProcess,
    JanusSubscriber,
    create_room,
    janus_available,
    media_host,
    new_room_id,
)
from clients.lite import LiteClient, LiveVp8Source, encode_opus_clip  # noqa: E402
from clients.lite.publisher import AudioStream, VideoLayer  # noqa: E402
from clients.lite.subscriber import LiteSubscriber  # noqa: E402
from clients.lite.transport import shared_certificate  # noqa: E402
from clients.stamp import latency_ms, read_stamp  # noqa: E402
from netem.proxy import UdpProxy  # noqa: E402
from qa.participants import LITE_LAYERS  # noqa: E402
from qa.vp8_frames import Vp8Decoder, Vp8FrameAssembler  # noqa: E402
from signaling import sdp  # noqa: E402
from signaling.sdp import build_publisher_offer  # noqa: E402

FPS = 15
FAST = "delay 20ms rate 2500kbit limit 64kb"
SLOW = "delay 20ms rate 300kbit limit 32kb"


class Watch:
    """What one viewer's transport receives: frame times, stamps, bytes, audio seqs."""

    def __init__(self, sub: LiteSubscriber) -> None:
        self.sub = sub
        self.frames: list[float] = []  # monotonic s of each video frame's last packet
        self.latency: list[tuple[float, float]] = []  # (monotonic s, glass-to-glass ms)
        self.video_bytes: list[tuple[float, int]] = []
        self.audio: list[tuple[float, int]] = []  # (monotonic s, extended seq) first arrivals
        self._seen_audio: set[int] = set()
        self._audio_high: int | None = None
        self._assembler, self._decoder = Vp8FrameAssembler(), Vp8Decoder()
        original = sub.handle_rtp

        def handle(packet: bytes, now_ms: float) -> None:
            self._on_rtp(packet)
            original(packet, now_ms)

        sub.handle_rtp = handle  # type: ignore[method-assign]

    def _on_rtp(self, packet: bytes) -> None:
        ssrc = int.from_bytes(packet[8:12], "big")
        counters = self.sub._by_ssrc.get(ssrc)
        if counters is None or ssrc != counters.ssrc:
            return  # RTX and unknown streams: the first arrival is what counts here
        now = time.monotonic()
        seq = (packet[2] << 8) | packet[3]
        if counters.kind == "audio":
            high = self._audio_high
            ext = seq if high is None else high + ((seq - high + 0x8000) & 0xFFFF) - 0x8000
            self._audio_high = ext if high is None else max(high, ext)
            if ext not in self._seen_audio:
                self._seen_audio.add(ext)
                self.audio.append((now, ext))
            return
        self.video_bytes.append((now, len(packet)))
        b0 = packet[0]
        off = 12 + 4 * (b0 & 0x0F)
        if b0 & 0x10:
            off += 4 + 4 * ((packet[off + 2] << 8) | packet[off + 3])
        end = len(packet) - (packet[-1] if b0 & 0x20 else 0)
        marker = bool(packet[1] & 0x80)
        if marker:
            self.frames.append(now)
        timestamp = int.from_bytes(packet[4:8], "big")
        for frame in self._assembler.add(seq, timestamp, marker, packet[off:end]):
            plane = self._decoder.decode(frame)
            stamp = read_stamp(plane) if plane is not None else None
            if stamp is not None:
                self.latency.append((now, latency_ms(time.time() * 1000.0, stamp)))

    def phase(self, start: float, end: float, queue: list[float]) -> dict[str, Any]:
        frames = [t for t in self.frames if start <= t < end]
        gaps = [b - a for a, b in zip([start, *frames], [*frames, end], strict=True)]
        lat = sorted(ms for t, ms in self.latency if start <= t < end)
        # Audio by sequence number, not arrival time: the packets between the highest
        # seq heard when the phase began and when it ended, and how many of them ever
        # came (a queue that builds delays packets into the next phase; that is not loss).
        lo = max((x for t, x in self.audio if t < start), default=None)
        if lo is None:  # nothing heard before the phase: from its first packet on
            lo = min((x - 1 for t, x in self.audio if start <= t < end), default=None)
        hi = max((x for t, x in self.audio if t < end), default=None)
        expected = 0 if lo is None or hi is None else hi - lo
        got = 0 if lo is None or hi is None else sum(1 for x in self._seen_audio if lo < x <= hi)
        q = sorted(queue)
        return {
            "video_kbps": round(sum(n for t, n in self.video_bytes if start <= t < end) * 8 / (end - start) / 1000, 1),
            "fps": round(len(frames) / (end - start), 1),
            "longest_frame_gap_ms": round(max(gaps) * 1000),
            "glass_to_glass_p50_ms": _pct(lat, 0.5),
            "glass_to_glass_p95_ms": _pct(lat, 0.95),
            "audio_lost": round((expected - got) / expected, 3) if expected > 0 else None,
            "queue_p95_ms": _pct(q, 0.95),
            "queue_max_ms": round(q[-1]) if q else None,
        }


def _pct(values: list[float], q: float) -> float | None:
    return round(values[min(len(values) - 1, int(q * len(values)))]) if values else None


def _queue_log(proxy: UdpProxy) -> list[float]:
    """The queue delays (ms) of the viewer's downlink so far (one client per proxy)."""
    return [d for c in proxy.clients.values() for d in c.down.stats.queue_delay_ms]


def _layers(rids: str) -> list[VideoLayer]:
    sizes = dict(zip("qhf", LITE_LAYERS, strict=True))
    return [VideoLayer(rid, LiveVp8Source(*sizes[rid], FPS)) for rid in rids]


async def _ferry(server: FerryProcess, proxy: UdpProxy) -> tuple[list[Any], Watch]:
    room = "weak"
    pub = LiteClient(name="ferry-pub")
    await pub.connect(server.ws_url)
    await pub.join(server.token(room, "pub"), auto_subscribe=False)
    sizes = dict(zip("qhf", LITE_LAYERS, strict=True))
    await pub.publish_vp8([LiveVp8Source(*sizes[r], FPS) for r in "qhf"], fps=FPS, audio=encode_opus_clip(4.0))
    viewer = LiteClient(name="ferry-viewer", candidate_rewrite=proxy.route)
    await viewer.connect(server.ws_url)
    await viewer.join(server.token(room, "viewer"), auto_subscribe=True)
    deadline = time.monotonic() + 20.0
    while viewer.subscriber is None:  # watched from before its first packet (and keyframe)
        if time.monotonic() > deadline:
            raise TimeoutError("Ferry never offered the viewer a subscription")
        await asyncio.sleep(0.005)
    watch = Watch(viewer.subscriber)
    while not any(c.kind == "video" and c.packets for c in viewer.received.values()):
        if time.monotonic() > deadline:
            raise TimeoutError("Ferry's viewer got no video")
        await asyncio.sleep(0.05)
    return [pub, viewer], watch


async def _janus(api: JanusApi, proxy: UdpProxy) -> tuple[list[Any], Watch]:
    room = new_room_id()
    await create_room(api, await api.attach(), room)
    layers = _layers("fhq")  # high to low, as Janus takes them
    pub = JanusLitePublisher(shared_certificate(), layers, AudioStream(encode_opus_clip(4.0)), fps=FPS,
                             simulcast=True, name="janus-pub")
    handle = await api.attach()
    joined = await api.message(handle, {"request": "join", "ptype": "publisher", "room": room, "display": "pub"})
    feed = int(joined["data"]["id"])
    offer = build_publisher_offer(
        ufrag=pub.ufrag, pwd=pub.pwd, fingerprint=pub.fingerprint, port=pub.port,
        audio_ssrc=pub.audio.ssrc if pub.audio else None,
        video_ssrcs=[(layer.ssrc, layer.rtx_ssrc) for layer in layers], rids=[layer.rid or "" for layer in layers],
        stream_id=secrets.token_hex(8), audio_track_id=secrets.token_hex(8), video_track_id=secrets.token_hex(8),
        cname=pub.cname, host=media_host(),
    )
    reply = await api.message(handle, {"request": "publish", "audio": True, "video": True},
                              {"type": "offer", "sdp": offer})
    pub.set_mids("0", "1")
    pub.set_remote(sdp.parse(reply["jsep"]["sdp"], "answer").transport)
    await api.trickle_completed(handle)
    pub.start(15.0)
    await pub.wait_connected(16.0)
    pub.start_media()
    transport = JanusLiteSubscriber(shared_certificate(), nack=True, twcc=True, name="janus-viewer",
                                    candidate_rewrite=proxy.route)
    watch = Watch(transport)  # from before its first packet (and keyframe)
    sub = JanusSubscriber(api, room, transport)
    await sub.join(feed)
    await transport.wait_connected(30.0)
    return [pub, sub], watch


async def run(seconds: float, step_at: float, step_for: float) -> dict[str, Any]:
    ferry, janus = FerryProcess(), JanusProcess()
    await ferry.start()
    await janus.start()
    proxies = {name: UdpProxy((media_host() if name == "janus" else "127.0.0.1", 0), ("127.0.0.1", 9),
                              FAST, FAST, seed=1) for name in ("ferry", "janus")}
    for proxy in proxies.values():
        await proxy.start()
    held: list[Any] = []
    try:
        async with JanusApi(janus.url) as api:
            got_ferry, got_janus = await asyncio.gather(_ferry(ferry, proxies["ferry"]),
                                                        _janus(api, proxies["janus"]))
            held = got_ferry[0] + got_janus[0]
            watches = {"ferry": got_ferry[1], "janus": got_janus[1]}
            t0 = time.monotonic()
            bounds = [t0, t0 + step_at, t0 + step_at + step_for, t0 + seconds]
            queue_at: list[dict[str, int]] = []
            for k, link in enumerate((FAST, SLOW, FAST)):
                for proxy in proxies.values():
                    proxy.set_links(link, link)
                queue_at.append({n: len(_queue_log(p)) for n, p in proxies.items()})
                await asyncio.sleep(max(0.0, bounds[k + 1] - time.monotonic()))
            queue_at.append({n: len(_queue_log(p)) for n, p in proxies.items()})
            out: dict[str, Any] = {"link": {"fast": FAST, "slow": SLOW, "slow_from_s": step_at, "slow_for_s": step_for}}
            for name, watch in watches.items():
                log = _queue_log(proxies[name])
                out[name] = {
                    label: watch.phase(bounds[k], bounds[k + 1], log[queue_at[k][name]:queue_at[k + 1][name]])
                    for k, label in enumerate(("fast", "slow", "fast_again"))
                }
            return out
    finally:
        for thing in held:
            close = getattr(thing, "close", None) or getattr(thing, "leave", None)
            try:
                result = close() if close else None
                if asyncio.iscoroutine(result):
                    await asyncio.wait_for(result, 5.0)
            except Exception:  # noqa: BLE001 - tearing down: the figures are out
                pass
        for proxy in proxies.values():
            await proxy.close()
        janus.stop()
        ferry.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--step-at", type=float, default=10.0)
    ap.add_argument("--step-for", type=float, default=10.0)
    args = ap.parse_args(argv)
    missing = janus_available()
    if missing:
        print(json.dumps({"error": missing}))
        return 2
    print(json.dumps(asyncio.run(run(args.seconds, args.step_at, args.step_for))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
