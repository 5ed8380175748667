"""Micro-benchmark of the wire codecs on the forwarding hot path (DESIGN §3).

Run from the repo root: `python -m bench.wire` (or `python bench/wire.py`). Prints JSON
with ns per operation (best of several repeats, so other load on the machine inflates
the numbers less), next to aiortc's `RtpPacket.parse` on the same packet.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aiortc.rtp import RtpPacket  # noqa: E402

from media.wire.rtp import build_abs_send_time, build_rtp, parse_rtp, rewrite_header  # noqa: E402
from media.wire.vp8 import parse_vp8  # noqa: E402

VP8_PAYLOAD = bytes([0x90, 0xE0, 0x92, 0x34, 0x07, 0xA0]) + bytes([0x31, 0x02]) + bytes(1092)
EXTENSIONS = [(1, b"\x00\x2a"), (2, build_abs_send_time(1234.5)), (3, b"\x01\x02")]  # 3 one-byte


def bench(fn: Callable[[], object], number: int, repeat: int = 5) -> float:
    """Best ns/op over `repeat` runs of `number` calls."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter_ns() - t0) / number)
    return best


def main() -> None:
    number = int(os.environ.get("BENCH_N", "50000"))
    packet = build_rtp(
        payload_type=96, seq=4711, timestamp=123456, ssrc=0x1234ABCD,
        payload=VP8_PAYLOAD, marker=True, extensions=EXTENSIONS,
    )
    view = parse_rtp(packet)
    buf = bytearray(packet)
    payload = view.payload
    empty = bench(lambda: None, number)

    results = {
        "packet_bytes": len(packet),
        "call_overhead_ns": round(empty, 1),
        "parse_rtp_ns": round(bench(lambda: parse_rtp(packet), number) - empty, 1),
        "aiortc_RtpPacket_parse_ns": round(bench(lambda: RtpPacket.parse(packet), number) - empty, 1),
        "extension_first_ns": round(bench(lambda: view.extension(1), number) - empty, 1),
        "extension_third_ns": round(bench(lambda: view.extension(3), number) - empty, 1),
        "extension_absent_ns": round(bench(lambda: view.extension(9), number) - empty, 1),
        "rewrite_header_ns": round(
            bench(lambda: rewrite_header(buf, seq=1, timestamp=2, ssrc=3), number) - empty, 1
        ),
        "rewrite_header_pt_marker_ns": round(
            bench(lambda: rewrite_header(buf, seq=1, timestamp=2, ssrc=3, payload_type=97, marker=False), number)
            - empty,
            1,
        ),
        "parse_vp8_ns": round(bench(lambda: parse_vp8(payload), number) - empty, 1),
        "build_rtp_ns": round(
            bench(
                lambda: build_rtp(
                    payload_type=96, seq=1, timestamp=2, ssrc=3, payload=VP8_PAYLOAD,
                    extensions=EXTENSIONS,
                ),
                number // 5,
            )
            - empty,
            1,
        ),
        "note": "ns per op, best of 5, loop/lambda overhead subtracted",
    }
    results["parse_speedup_vs_aiortc"] = round(
        results["aiortc_RtpPacket_parse_ns"] / results["parse_rtp_ns"], 2  # type: ignore[operator]
    )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
