"""Benchmark: what sending costs per datagram through the media socket's outbox, with
and without UDP GSO.

A keyframe-sized fan-out (``--packets`` equal datagrams of ``--size`` bytes to each of
``--peers`` loopback sockets, the fan-out's order: packet by packet) is added to a held
``Outbox`` and flushed; only the flush is timed (wall and the process's CPU), the peers
are drained between rounds, untimed. No SRTP: this is the kernel's share of forwarding.

    python bench/udp_send.py --peers 80 --packets 20 --rounds 50

Prints one JSON object: µs per datagram for each mode, alternating rounds.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from media.transport import udp_mux  # noqa: E402


def _peers(n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        out.append(s)
    return out


def _drain(peers: list[socket.socket]) -> int:
    got = 0
    for s in peers:
        while True:
            try:
                s.recv(2048)
            except BlockingIOError:
                break
            got += 1
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=80)
    ap.add_argument("--packets", type=int, default=20, help="datagrams per peer per round")
    ap.add_argument("--size", type=int, default=1100)
    ap.add_argument("--rounds", type=int, default=50)
    args = ap.parse_args()
    if udp_mux._fastpath is None:
        sys.exit("the native send path is not built (python setup.py build_ext --inplace)")
    peers = _peers(args.peers)
    addrs = [p.getsockname() for p in peers]
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    outbox = udp_mux._fastpath.Outbox(tx.fileno())
    outbox.cap = udp_mux.MAX_HOLD_CAP
    data = bytes(args.size)
    per = args.peers * args.packets
    totals = {"gso": [0.0, 0.0, 0], "one_by_one": [0.0, 0.0, 0]}
    for r in range(2 * args.rounds):
        mode = "gso" if r % 2 == 0 else "one_by_one"
        outbox.gso = mode == "gso"
        outbox.held = True
        for _ in range(args.packets):
            for host, port in addrs:
                outbox.add(data, host, port, 0, 0, 0)
        w0, c0 = time.perf_counter(), time.process_time()
        outbox.flush()
        w1, c1 = time.perf_counter(), time.process_time()
        totals[mode][0] += w1 - w0
        totals[mode][1] += c1 - c0
        totals[mode][2] += _drain(peers)
    result: dict[str, object] = {"peers": args.peers, "packets": args.packets, "size": args.size, "rounds": args.rounds}
    for mode, (wall, cpu, got) in totals.items():
        n = per * args.rounds
        result[mode] = {
            "us_per_datagram_wall": round(wall * 1e6 / n, 3),
            "us_per_datagram_cpu": round(cpu * 1e6 / n, 3),
            "received": got,
            "sent": n,
        }
    result["gso_refused"] = outbox.gso_refused
    print(json.dumps(result))


if __name__ == "__main__":
    main()
