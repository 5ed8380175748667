"""Benchmark: the per-subscriber cost of forwarding a packet, in one process.

A Chromium publisher's Opus audio and top simulcast layer (the real offer in
tests/fixtures; ~600 kbit/s of video, 50 audio packets a second) are forwarded to N
viewers through the production Router, DownTracks, subscriber peers,
SRTP contexts and media socket (native or Python send path), sending to a loopback
socket nobody reads. No signaling, no ICE/DTLS handshake (the SRTP keys are fixed), no
load generator: the figure is Ferry's own CPU per forwarded packet, steady enough
(a few %) to compare two versions of the forward path, where bench/forward.py's
end-to-end figure moves by 10 % between runs.

    python bench/fanout.py --subscribers 80 --packets 3000 [--rx raw|twcc] [--feedback-ms 50]

With ``--rx twcc`` every viewer also sends transport-wide CC feedback (``--feedback-ms``,
0: none), as a browser does: the bench reads what each viewer was actually sent off the
sink sockets (the transport-wide seq is in the clear RTP header), gives each packet an
arrival time (send time + 10 ms + seeded jitter of up to 1 ms), and every
``--feedback-ms`` builds that viewer's feedback with the production `TwccRecorder`,
SRTCP-protects it and hands it to the viewer's transport as the media socket would
(unprotect -> parse -> send history -> estimator -> pacer and allocation). The engine's
timers (the 20 ms tick in 4 phases, the pacers' one-shot timers) then run on the
bench's simulated clock too. Building the feedback and reading the sinks are the
viewers' work, not Ferry's: their CPU is left out of the figure.

Prints one JSON object: µs of CPU per forwarded packet (process time), packets sent,
and the send path.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import heapq
import itertools
import json
import random
import socket
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from media.engine import TICK_MS, Engine, EngineConfig  # noqa: E402
from media.routing.down_track import TWCC_OFFSET  # noqa: E402
from media.routing.router import TIMER_PHASES  # noqa: E402
from media.rtp.twcc import TwccRecorder  # noqa: E402
from media.transport.srtp import SRTP_AEAD_AES_128_GCM, SrtpContext  # noqa: E402
from media.wire.rtp import build_rtp, parse_rtp  # noqa: E402
from tests.router_setup import publish, subscribe  # noqa: E402

KEY = bytes(range(28))
PACKET_PAYLOAD = 1150  # bytes of VP8 after the descriptor: a full video packet
PACKETS_PER_FRAME = 5
OPUS_PAYLOAD = 80  # bytes: 32 kbit/s in 20 ms frames
MS_PER_PACKET = 16.0  # ~600 kbit/s: under the start estimate, so the pacer lets it through
ONE_WAY_MS = 10.0  # viewer feedback: media's one-way delay, and feedback's way back
JITTER_MS = 1.0  # ... plus up to this much (seeded) on each media packet
START_MS = 1_000_000.0  # the engine's clock at the start, with feedback
FEEDBACK_GROUPS = 10  # viewers' feedback timers fall in this many phases of the interval


def _vp8(picture_id: int, keyframe: bool, start: bool, size: int) -> bytes:
    """A VP8 payload descriptor with a 15-bit picture id, then frame bytes."""
    desc = bytes((0x90 if start else 0x80, 0x80, 0x80 | (picture_id >> 8) & 0x7F, picture_id & 0xFF))
    if start:
        # VP8 payload header: P bit 0 on keyframes, then the keyframe start code and size.
        head = bytes((0x00 if keyframe else 0x01, 0, 0)) + (b"\x9d\x01\x2a\x80\x02\xe0\x01" if keyframe else b"")
    else:
        head = b""
    return desc + head + bytes(size - len(head))


class Viewers:
    """The viewers' side of feedback: what each was sent (read off its sink socket),
    their arrival times, and their TWCC feedback (the production `TwccRecorder`),
    SRTCP-protected as a browser sends it."""

    def __init__(self, sinks: list[socket.socket], subs: list[Any], twcc_ext_id: int, seed: int = 1) -> None:
        self.sinks = sinks
        self.subs = subs
        self.marker = (twcc_ext_id << 4) | 1  # the one-byte extension's id/len byte
        self.by_ssrc: dict[int, int] = {}
        for i, sub in enumerate(subs):
            for down in sub.down_tracks.values():
                self.by_ssrc[down.ssrc] = i
                if down.rtx_ssrc is not None:
                    self.by_ssrc[down.rtx_ssrc] = i
        self.recorders = [TwccRecorder(0xFEED0000 + i, 0) for i in range(len(subs))]
        self.pending: list[list[tuple[int, float]]] = [[] for _ in subs]
        self.srtp = [SrtpContext(SRTP_AEAD_AES_128_GCM, KEY, KEY) for _ in subs]
        self.random = random.Random(seed)
        self.received = 0
        self.feedbacks = 0

    def drain(self, now_ms: float) -> None:
        """Everything sent so far left at ``now_ms``: note each packet's arrival."""
        marker, by_ssrc, pending, rnd = self.marker, self.by_ssrc, self.pending, self.random.random
        for sink in self.sinks:
            recv = sink.recv
            while True:
                try:
                    data = recv(2048)
                except BlockingIOError:
                    break
                if 192 <= data[1] <= 223 or len(data) < TWCC_OFFSET + 2 or data[16] != marker:
                    continue  # RTCP (sender reports), or no transport-wide seq
                i = by_ssrc.get(int.from_bytes(data[8:12], "big"))
                if i is None:
                    continue
                self.received += 1
                seq = (data[TWCC_OFFSET] << 8) | data[TWCC_OFFSET + 1]
                pending[i].append((seq, now_ms + ONE_WAY_MS + JITTER_MS * rnd()))

    def feedback(self, i: int, now_ms: float) -> list[bytes]:
        """Viewer ``i``'s feedback reaching Ferry at ``now_ms`` (built a one-way delay
        earlier from what had arrived by then), SRTCP-protected."""
        at = now_ms - ONE_WAY_MS
        recorder, pending = self.recorders[i], self.pending[i]
        keep = []
        for seq, arrival in pending:
            if arrival <= at:
                recorder.record(seq, arrival)
            else:
                keep.append((seq, arrival))
        self.pending[i] = keep
        packets = recorder.build_feedback(at)
        self.feedbacks += len(packets)
        srtp = self.srtp[i]
        return [srtp.protect_rtcp(p) for p in packets]


def _sink(read: bool) -> socket.socket:
    """A viewer's loopback socket; one the bench reads holds a whole step of packets."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    if read:
        sink.setblocking(False)
        try:  # as root, past net.core.rmem_max
            sink.setsockopt(socket.SOL_SOCKET, 33, 1 << 20)  # SO_RCVBUFFORCE
        except OSError:
            sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return sink


async def run(
    subscribers: int, packets: int, send_path: str | None, rx: str, idle_s: float = 0.0, feedback_ms: float = 0.0
) -> dict[str, object]:
    engine = Engine(EngineConfig(port=0))
    if send_path:
        engine.mux.send_path = send_path
    engine.mux.open()
    # One sink per viewer, as real viewers have their own addresses: the native path
    # sends one viewer's run of packets as one GSO message, never several viewers'.
    with_feedback = rx == "twcc" and feedback_ms > 0
    sinks = [_sink(with_feedback) for _ in range(subscribers)]
    try:
        router = engine.router("bench")
        pub = router.add_participant("PA_pub")
        tracks = publish(pub)
        video = next(t for t in tracks if t.kind == "video")
        audio = next(t for t in tracks if t.kind == "audio")
        # With feedback the engine runs on the bench's clock, from a fixed start: the
        # feedback's reference times, and so the estimator's work, are the same each run.
        clock = [START_MS]
        if with_feedback:
            engine.mux.now_ms = engine.now_ms = lambda: clock[0]  # type: ignore[method-assign]
        now = engine.mux.now_ms()
        subs = []
        for i in range(subscribers):
            viewer = router.add_participant(f"PA_v{i}")
            subscribe(viewer, audio, 0, twcc=rx == "twcc")
            subscribe(viewer, video, 1, twcc=rx == "twcc")
            sub = viewer.subscriber
            transport = sub.transport
            transport.srtp = SrtpContext(SRTP_AEAD_AES_128_GCM, KEY, KEY)
            transport.remote_addr = sinks[i].getsockname()
            sub.on_transport_connected(now)
            subs.append(sub)
        layer = video.layers[-1]
        layer.bind_ssrc(0x5EED)
        audio_layer = audio.layers[0]
        audio_layer.bind_ssrc(0xA0D1)
        for d in video.down_tracks:
            d.selector.set_allocation(len(video.layers) - 1)
            d.select_layer(now)
        mux = engine.mux

        def deliver(into: Any, data: bytes, now_ms: float) -> None:
            """One received packet, as the media socket hands it on: its fan-out is sent
            in one batch."""
            opened = mux.open_batch()
            into.on_packet(parse_rtp(data), now_ms, False)
            if opened:
                mux.flush()

        def feed(k: int, now_ms: float) -> None:
            frame, part = divmod(k, PACKETS_PER_FRAME)
            data = build_rtp(
                payload_type=video.codec.payload_type,
                seq=(1000 + k) & 0xFFFF,
                timestamp=(frame * 3000) & 0xFFFFFFFF,
                ssrc=0x5EED,
                payload=_vp8(frame & 0x7FFF, frame % 150 == 0, part == 0, PACKET_PAYLOAD),
                marker=part == PACKETS_PER_FRAME - 1,
            )
            deliver(layer, data, now_ms)
            if k % 4 == 0:  # 16 ms video packets, 20 ms audio ones: 4 of each 5 have one
                return
            n = k - k // 4
            opus = build_rtp(
                payload_type=audio.codec.payload_type,
                seq=(7000 + n) & 0xFFFF,
                timestamp=(n * 960) & 0xFFFFFFFF,
                ssrc=0xA0D1,
                payload=b"\x78" + bytes(OPUS_PAYLOAD - 1),
            )
            deliver(audio_layer, opus, now_ms)

        gc.collect()
        gc.freeze()  # as `ferry serve` does once started
        warm = PACKETS_PER_FRAME * 20
        if not with_feedback:
            for k in range(warm):
                feed(k, now + k * MS_PER_PACKET)
            before_out = mux.packets_out
            cpu0 = time.process_time()
            for k in range(warm, warm + packets):
                feed(k, now + k * MS_PER_PACKET)
                if idle_s:
                    time.sleep(idle_s)
            cpu = time.process_time() - cpu0
            forwarded = mux.packets_out - before_out
            extra: dict[str, object] = {}
        else:
            cpu, forwarded, extra = _run_with_feedback(
                engine, router, subs, sinks, feed, clock, warm, packets, feedback_ms, idle_s
            )
        return {
            "subscribers": subscribers,
            "packets_in": packets,
            "forwarded": forwarded,
            "send_path": mux.send_path,
            "rx": rx,
            **extra,
            "us_per_forwarded_packet": round(cpu * 1e6 / max(forwarded, 1), 3),
        }
    finally:
        gc.unfreeze()
        for sink in sinks:
            sink.close()
        engine.mux.close()


def _run_with_feedback(
    engine: Engine,
    router: Any,
    subs: list[Any],
    sinks: list[socket.socket],
    feed: Any,
    clock: list[float],
    warm: int,
    packets: int,
    feedback_ms: float,
    idle_s: float,
) -> tuple[float, int, dict[str, object]]:
    """Publisher packets, engine ticks, pacer timers and viewer feedback in the order of
    a simulated clock the engine reads too. Returns (Ferry's CPU s over the measured
    packets, packets it sent meanwhile, extra figures)."""
    mux = engine.mux
    start_ms = clock[0]
    timers: list[tuple[float, int, Any]] = []
    order = itertools.count()
    for sub in subs:
        sub.schedule = lambda when, cb: heapq.heappush(timers, (when, next(order), cb))
    twcc_id = subs[0]._twcc_id
    viewers = Viewers(sinks, subs, twcc_id)
    tick_ms = TICK_MS / TIMER_PHASES
    groups = [list(range(g, len(subs), FEEDBACK_GROUPS)) for g in range(FEEDBACK_GROUPS)]
    # next time of each kind of event: publisher packet, tick, feedback group
    next_tick, phase = start_ms + tick_ms, 0
    next_fb = [start_ms + feedback_ms * (g + 1) / FEEDBACK_GROUPS for g in range(FEEDBACK_GROUPS)]
    k, end = 0, warm + packets
    cpu0 = out0 = None
    viewer_cpu = 0.0  # the viewers' work inside the measured span, taken out
    pt = time.process_time
    while k < end:
        t_feed = start_ms + k * MS_PER_PACKET
        t_fb = min(next_fb)
        t_timer = timers[0][0] if timers else float("inf")
        t = min(t_feed, next_tick, t_fb, t_timer)
        clock[0] = t
        if k == warm and t == t_feed and cpu0 is None:
            cpu0, out0 = pt(), mux.packets_out
            viewer_cpu = 0.0
        if t == t_timer:
            _, _, cb = heapq.heappop(timers)
            opened = mux.open_batch()
            cb()
            if opened:
                mux.flush()
        elif t == t_feed:
            feed(k, t)
            k += 1
            if idle_s and cpu0 is not None:
                time.sleep(idle_s)
        elif t == next_tick:
            opened = mux.open_batch()
            router.on_timer(t, phase)
            if opened:
                mux.flush()
            phase = (phase + 1) % TIMER_PHASES
            next_tick += tick_ms
        else:
            g = next_fb.index(t_fb)
            next_fb[g] += feedback_ms
            v0 = pt()
            viewers.drain(t)
            built = [(i, viewers.feedback(i, t)) for i in groups[g]]
            viewer_cpu += pt() - v0
            for i, datagrams in built:
                transport = subs[i].transport
                for data in datagrams:
                    opened = mux.open_batch()
                    transport.on_srtp(data, transport.remote_addr, t)
                    if opened:
                        mux.flush()
            continue
        v0 = pt()
        viewers.drain(t)
        viewer_cpu += pt() - v0
    assert cpu0 is not None and out0 is not None
    cpu = pt() - cpu0 - viewer_cpu
    forwarded = mux.packets_out - out0
    estimates = sorted(int(s.estimate_bps(clock[0]) or 0) for s in subs)
    extra: dict[str, object] = {
        "feedback_ms": feedback_ms,
        "feedback_packets": viewers.feedbacks,
        "viewer_received": viewers.received,
        "probe_packets": sum(s.padding_sent for s in subs),
        "estimate_bps_min_median_sum": [estimates[0], estimates[len(estimates) // 2], sum(estimates)],
        "viewer_cpu_s": round(viewer_cpu, 3),
    }
    return cpu, forwarded, extra


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=80)
    parser.add_argument("--packets", type=int, default=3000, help="video packets in from the publisher")
    parser.add_argument("--send-path", choices=("native", "python"), default=None)
    parser.add_argument(
        "--rx",
        choices=("raw", "twcc"),
        default="raw",
        help="raw: viewers without transport-cc (bench/forward.py --rx raw, the Janus "
        "comparison); twcc: with it (transport-wide seqs, send history, pacer)",
    )
    parser.add_argument(
        "--feedback-ms",
        type=float,
        default=50.0,
        help="with --rx twcc: each viewer's TWCC feedback interval (0: no feedback, no timers)",
    )
    parser.add_argument(
        "--idle-ms",
        type=float,
        default=0.0,
        help="sleep between packets, as a server waits for the next one (caches go cold)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best is reported too")
    args = parser.parse_args(argv)
    results = [asyncio.run(run(args.subscribers, args.packets, args.send_path, args.rx, args.idle_ms / 1000.0, args.feedback_ms)) for _ in range(args.repeat)]
    figures = [r["us_per_forwarded_packet"] for r in results]
    print(json.dumps({**results[-1], "runs_us_per_forwarded_packet": figures, "best": min(figures)}))


if __name__ == "__main__":
    main()
