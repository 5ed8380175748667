"""Benchmark: the per-subscriber cost of forwarding a packet, in one process.

A Chromium publisher's Opus audio and top simulcast layer (the real offer in
tests/fixtures; ~600 kbit/s of video, 50 audio packets a second) are forwarded to N
viewers through the production Router, DownTracks, subscriber peers,
SRTP contexts and media socket (native or Python send path), sending to a loopback
socket nobody reads. No signaling, no ICE/DTLS handshake (the SRTP keys are fixed), no
load generator: the figure is Ferry's own CPU per forwarded packet, steady enough
(a few %) to compare two versions of the forward path, where bench/forward.py's
end-to-end figure moves by 10 % between runs.

    python bench/fanout.py --subscribers 80 --packets 3000 [--rx raw|twcc]

Prints one JSON object: µs of CPU per forwarded packet (process time), packets sent,
and the send path.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from media.engine import Engine, EngineConfig  # noqa: E402
from media.transport.srtp import SRTP_AEAD_AES_128_GCM, SrtpContext  # noqa: E402
from media.wire.rtp import build_rtp, parse_rtp  # noqa: E402
from tests.router_setup import publish, subscribe  # noqa: E402

KEY = bytes(range(28))
PACKET_PAYLOAD = 1150  # bytes of VP8 after the descriptor: a full video packet
PACKETS_PER_FRAME = 5
OPUS_PAYLOAD = 80  # bytes: 32 kbit/s in 20 ms frames
MS_PER_PACKET = 16.0  # ~600 kbit/s: under the start estimate, so the pacer lets it through


def _vp8(picture_id: int, keyframe: bool, start: bool, size: int) -> bytes:
    """A VP8 payload descriptor with a 15-bit picture id, then frame bytes."""
    desc = bytes((0x90 if start else 0x80, 0x80, 0x80 | (picture_id >> 8) & 0x7F, picture_id & 0xFF))
    if start:
        # VP8 payload header: P bit 0 on keyframes, then the keyframe start code and size.
        head = bytes((0x00 if keyframe else 0x01, 0, 0)) + (b"\x9d\x01\x2a\x80\x02\xe0\x01" if keyframe else b"")
    else:
        head = b""
    return desc + head + bytes(size - len(head))


async def run(
    subscribers: int, packets: int, send_path: str | None, rx: str, idle_s: float = 0.0
) -> dict[str, object]:
    engine = Engine(EngineConfig(port=0))
    if send_path:
        engine.mux.send_path = send_path
    engine.mux.open()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    try:
        router = engine.router("bench")
        pub = router.add_participant("PA_pub")
        tracks = publish(pub)
        video = next(t for t in tracks if t.kind == "video")
        audio = next(t for t in tracks if t.kind == "audio")
        now = engine.mux.now_ms()
        for i in range(subscribers):
            viewer = router.add_participant(f"PA_v{i}")
            subscribe(viewer, audio, 0, twcc=rx == "twcc")
            subscribe(viewer, video, 1, twcc=rx == "twcc")
            sub = viewer.subscriber
            transport = sub.transport
            transport.srtp = SrtpContext(SRTP_AEAD_AES_128_GCM, KEY, KEY)
            transport.remote_addr = sink.getsockname()
            sub.on_transport_connected(now)
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
        return {
            "subscribers": subscribers,
            "packets_in": packets,
            "forwarded": forwarded,
            "send_path": mux.send_path,
            "rx": rx,
            "us_per_forwarded_packet": round(cpu * 1e6 / max(forwarded, 1), 3),
        }
    finally:
        gc.unfreeze()
        sink.close()
        engine.mux.close()


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
        "--idle-ms",
        type=float,
        default=0.0,
        help="sleep between packets, as a server waits for the next one (caches go cold)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best is reported too")
    args = parser.parse_args(argv)
    results = [asyncio.run(run(args.subscribers, args.packets, args.send_path, args.rx, args.idle_ms / 1000.0)) for _ in range(args.repeat)]
    figures = [r["us_per_forwarded_packet"] for r in results]
    print(json.dumps({**results[-1], "runs_us_per_forwarded_packet": figures, "best": min(figures)}))


if __name__ == "__main__":
    main()
