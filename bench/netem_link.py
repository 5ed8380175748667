"""Benchmark: netem link model throughput in virtual time (packets/s of CPU).

Prints one JSON object. Aim: > 200k packets/s.
Run: python bench/netem_link.py [--packets N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from netem.link import Link, LinkConfig  # noqa: E402

SPECS = {
    "unimpaired": "",
    "delay_jitter": "delay 80ms 20ms",
    "loss_5pct": "delay 40ms loss 5%",
    "gemodel": "delay 40ms loss gemodel 2% 30% 60% 0.1%",
    "rate_100mbit": "delay 40ms rate 100mbit limit 1mb",
    "rate_1mbit_tail_drop": "delay 40ms rate 1mbit limit 100kb",
    "full": "delay 80ms 20ms loss gemodel 1% 30% duplicate 1% corrupt 0.1% rate 10mbit limit 200kb",
}


def run(spec: str, packets: int) -> float:
    link = Link(LinkConfig.parse(f"{spec} seed 1"))
    payload = bytes(1200)
    push, pop, deadline = link.push, link.pop_ready, link.next_deadline
    t0 = time.perf_counter()
    for i in range(packets):
        now = i * 0.1  # 10k packets/s offered
        push(payload, now)
        d = deadline()
        if d is not None and d <= now:
            pop(now)
    pop(float("inf"))
    return packets / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packets", type=int, default=200_000)
    args = parser.parse_args()
    results = {name: round(run(spec, args.packets)) for name, spec in SPECS.items()}
    print(json.dumps({"bench": "netem_link", "packets": args.packets,
                      "packets_per_s": results}, indent=2))


if __name__ == "__main__":
    main()
