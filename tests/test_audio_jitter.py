"""AudioJitterBuffer in virtual time: order, duplicates, wrap, lateness, adaptation, RED."""

from __future__ import annotations

import math
import random

import pytest

from media.audio.jitter_buffer import AudioJitterBuffer, PlayoutSlot
from media.wire.red import build_red

FRAME = 960  # 20 ms at 48 kHz

Arrival = tuple[float, int, int, bytes]  # (arrival_ms, seq, ts, payload)


def stream(n: int, *, seq0: int = 1000, ts0: int = 5000, start_ms: float = 0.0) -> list[Arrival]:
    """n packets sent every 20 ms, arriving 50 ms later; payload names the index."""
    return [
        (start_ms + 20.0 * i + 50.0, (seq0 + i) & 0xFFFF, (ts0 + i * FRAME) & 0xFFFFFFFF,
         f"p{i}".encode())
        for i in range(n)
    ]


def drive(jb: AudioJitterBuffer, arrivals: list[Arrival], end_ms: float, *, red: bool = False,
          results: list[str | None] | None = None) -> list[PlayoutSlot]:
    """Interleave puts and pops by time (puts first at equal times), like a shell would."""
    pending = sorted(arrivals, key=lambda a: a[0])
    slots: list[PlayoutSlot] = []
    i = 0
    while True:
        nd = jb.next_deadline()
        na = pending[i][0] if i < len(pending) else math.inf
        t = min(na, nd if nd is not None else math.inf)
        if t > end_ms:
            break
        if na <= t:
            arr, seq, ts, payload = pending[i]
            if red:
                r = jb.put_red(seq, ts, payload, arr, 111)
            else:
                r = jb.put(seq, ts, payload, arr)
            if results is not None:
                results.append(r)
            i += 1
        else:
            slots.extend(jb.pop(t))
    return slots


def played(slots: list[PlayoutSlot]) -> list[bytes | None]:
    return [s.payload for s in slots if s.kind != "stretch" and not s.discard]


def test_in_order_stream_plays_every_packet_at_min_delay() -> None:
    jb = AudioJitterBuffer()
    assert jb.next_deadline() is None and jb.pop(1e9) == []
    slots = drive(jb, stream(50), end_ms=2000)
    assert played(slots) == [f"p{i}".encode() for i in range(50)] + [None] * (len(slots) - 50)
    assert jb.stats.received == 50 and jb.stats.lost == 0 and jb.stats.late == 0
    assert jb.stats.target_delay_ms == 20.0
    # The first slot plays min_delay after the first arrival.
    jb2 = AudioJitterBuffer()
    jb2.put(1, 0, b"x", 100.0)
    assert jb2.next_deadline() == 120.0
    assert jb2.pop(119.9) == []
    assert [s.kind for s in jb2.pop(120.0)] == ["packet"]


def test_reordering_within_the_buffer_is_undone() -> None:
    arrivals = stream(20)
    # packet 5 overtakes packet 4 (both before packet 4's slot); 10 arrives after 11 and 12
    a4, a5 = arrivals[4], arrivals[5]
    arrivals[4], arrivals[5] = (a5[0] - 1, *a4[1:]), (a5[0] - 2, *a5[1:])
    a10 = arrivals[10]
    arrivals[10] = (a10[0] + 15.0, *a10[1:])
    jb = AudioJitterBuffer(min_delay_ms=40)
    slots = drive(jb, arrivals, end_ms=600)
    assert played(slots)[:20] == [f"p{i}".encode() for i in range(20)]
    assert jb.stats.lost == 0 and jb.stats.late == 0


def test_duplicates_are_dropped_and_counted() -> None:
    arrivals = stream(10)
    arrivals.append((arrivals[3][0] + 1.0, *arrivals[3][1:]))  # while buffered
    arrivals.append((arrivals[6][0] + 200.0, *arrivals[6][1:]))  # after it was played
    results: list[str | None] = []
    jb = AudioJitterBuffer()
    slots = drive(jb, arrivals, end_ms=400, results=results)
    assert results.count("duplicate") == 2
    assert jb.stats.duplicates == 2 and jb.stats.late == 0
    assert played(slots)[:10] == [f"p{i}".encode() for i in range(10)]


def test_sequence_and_timestamp_wrap_around() -> None:
    arrivals = stream(40, seq0=65_520, ts0=(1 << 32) - 10 * FRAME)
    jb = AudioJitterBuffer()
    slots = drive(jb, arrivals, end_ms=1000)
    assert played(slots)[:40] == [f"p{i}".encode() for i in range(40)]
    assert jb.stats.lost == 0
    seqs = [s.seq for s in slots if s.kind == "packet"]
    assert seqs == sorted(seqs) and seqs[-1] - seqs[0] == 39  # extended, monotonic
    ts = [s.timestamp for s in slots]
    assert all(b - a == FRAME for a, b in zip(ts, ts[1:], strict=False))


def test_late_packet_is_dropped_and_its_slot_is_missing() -> None:
    arrivals = stream(12)
    arrivals[5] = (arrivals[5][0] + 100.0, *arrivals[5][1:])  # 100 ms late, past its slot
    results: list[str | None] = []
    jb = AudioJitterBuffer(max_delay_ms=20)  # pin the delay: no adaptation in this test
    slots = drive(jb, arrivals, end_ms=400, results=results)
    assert "late" in results and jb.stats.late == 1
    out = played(slots)
    assert out[5] is None and out[4] == b"p4" and out[6] == b"p6"
    missing = [s for s in slots if s.kind == "missing"][0]
    assert missing.lost and missing.next_payload == b"p6"  # FEC source is buffered
    assert jb.stats.lost == 1


def test_missing_slot_without_next_packet_has_no_fec_source() -> None:
    arrivals = [a for i, a in enumerate(stream(12)) if i not in (5, 6)]
    jb = AudioJitterBuffer()
    slots = drive(jb, arrivals, end_ms=400)
    miss = [s for s in slots if s.kind == "missing"][:2]
    assert [s.next_payload for s in miss] == [None, b"p7"]
    assert jb.stats.lost == 2


def test_dtx_gap_is_not_counted_as_loss() -> None:
    # seq keeps counting while the timestamp jumps 200 ms (Opus DTX)
    arrivals = stream(5) + [(50.0 + 20 * 15, 1005, 5000 + 15 * FRAME, b"after")]
    jb = AudioJitterBuffer()
    slots = drive(jb, arrivals, end_ms=600)
    gap = [s for s in slots if s.kind == "missing" and s.timestamp < 5000 + 15 * FRAME + (1 << 32)]
    assert len(gap) == 10
    # Once the next packet is in hand the buffer knows no sequence number was skipped.
    assert gap[-1].next_payload == b"after" and not gap[-1].lost
    assert b"after" in played(slots) and jb.stats.lost == 0


def _jittery(n: int, rng: random.Random, jitter_ms: float, start: int, t0: float) -> list[Arrival]:
    out: list[Arrival] = []
    last = -math.inf
    for i in range(start, start + n):
        arr = t0 + 20.0 * i + 50.0 + rng.uniform(0.0, jitter_ms)
        last = max(last, arr)  # keep order (like netem without reorder)
        out.append((last, (1000 + i) & 0xFFFF, (5000 + i * FRAME) & 0xFFFFFFFF, b"x"))
    return out


def test_delay_grows_with_jitter_and_shrinks_back() -> None:
    rng = random.Random(7)
    jb = AudioJitterBuffer(window_packets=100)
    calm1 = _jittery(100, rng, 0.0, 0, 0.0)  # 0-2 s
    noisy = _jittery(250, rng, 80.0, 100, 0.0)  # 2-7 s, 0..80 ms extra delay
    calm2 = _jittery(400, rng, 0.0, 350, 0.0)  # 7-15 s
    checkpoints: dict[str, tuple[float, float]] = {}
    for name, segment in (("calm", calm1), ("noisy", noisy), ("after", calm2)):
        drive(jb, segment, end_ms=segment[-1][0])
        checkpoints[name] = (jb.stats.target_delay_ms, jb.current_delay_ms())
    calm_target, calm_current = checkpoints["calm"]
    noisy_target, noisy_current = checkpoints["noisy"]
    after_target, after_current = checkpoints["after"]
    assert calm_target == 20.0 and calm_current == pytest.approx(20.0)
    assert noisy_target > 70.0 and noisy_current >= noisy_target - 20.0
    assert after_target == 20.0 and after_current <= 40.0
    assert jb.stats.stretched > 0 and jb.stats.shrunk > 0
    # Adaptation keeps lateness rare: late packets are the few jitter outliers.
    assert jb.stats.late < 0.1 * len(noisy)


def test_red_blocks_fill_holes_before_playout() -> None:
    base = stream(12)
    red_arrivals: list[Arrival] = []
    for i, (arr, seq, ts, payload) in enumerate(base):
        redundant = [(FRAME, base[i - 1][3])] if i > 0 else []
        red_arrivals.append((arr, seq, ts, build_red(111, payload, redundant)))
    del red_arrivals[4]  # packet 4 lost; packet 5 carries it as redundancy
    jb = AudioJitterBuffer()
    slots = drive(jb, red_arrivals, end_ms=400, red=True)
    out = [s for s in slots if s.kind == "packet"]
    assert [s.payload for s in out][:12] == [f"p{i}".encode() for i in range(12)]
    assert [s.from_red for s in out][:6] == [False, False, False, False, True, False]
    assert jb.stats.red_stored == 1 and jb.stats.red_played == 1 and jb.stats.lost == 0


def test_red_redundancy_never_duplicates_and_bad_red_is_counted() -> None:
    jb = AudioJitterBuffer()
    assert jb.put_red(1, 0, build_red(111, b"a", []), 0.0) is None
    assert jb.put_red(2, FRAME, build_red(111, b"b", [(FRAME, b"a")]), 20.0) is None
    assert jb.stats.red_stored == 0  # slot already held the primary
    assert jb.put_red(3, 2 * FRAME, b"\x80", 40.0) == "malformed"
    assert jb.put_red(3, 2 * FRAME, build_red(63, b"c", []), 40.0) == "not_opus"
    assert jb.stats.malformed == 2


def test_forward_timestamp_jump_resyncs() -> None:
    jb = AudioJitterBuffer()
    drive(jb, stream(10), end_ms=300)
    jump = [(300.0 + 20 * i, 1010 + i, 5000 + (10 + 500 + i) * FRAME, b"j") for i in range(5)]
    slots = drive(jb, jump, end_ms=500)
    assert jb.stats.resyncs == 1
    assert played(slots).count(b"j") == 5


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(ValueError):
        AudioJitterBuffer(min_delay_ms=50, max_delay_ms=10)
    with pytest.raises(ValueError):
        AudioJitterBuffer(frame_ms=0)
