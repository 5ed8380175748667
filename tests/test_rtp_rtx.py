"""RtxCache and its C twin (RtxRing): rows of (now_ms, op, seq, expected) in simulated
time, each table run against both; argument checks are RtxCache's (new_rtx_cache
applies them to both)."""

from __future__ import annotations

from typing import Any

import pytest

from media.rtp.rtx import NativeRtxRing, RtxCache, new_rtx_cache

IMPLEMENTATIONS = [
    pytest.param(RtxCache, id="python"),
    pytest.param(
        NativeRtxRing,
        id="native",
        marks=pytest.mark.skipif(NativeRtxRing is None, reason="native extension not built"),
    ),
]


@pytest.fixture(params=IMPLEMENTATIONS)
def ring(request: pytest.FixtureRequest) -> Any:
    """The ring class under test."""
    return request.param


def pkt(seq: int) -> bytes:
    return b"\x80\x60" + seq.to_bytes(2, "big") + b"payload"


Row = tuple[float, str, int, Any]

CASES: list[tuple[str, dict[str, Any], list[Row], dict[str, int]]] = [
    (
        "hit then miss for a never-sent seq",
        {},
        [(0, "put", 10, None), (5, "get", 10, pkt(10)), (6, "get", 11, None)],
        {"hits": 1, "misses": 1, "suppressed": 0},
    ),
    (
        "overwritten slot is a miss (stored seq check)",
        {"capacity": 16},
        [
            (0, "put", 1, None),
            (1, "put", 17, None),  # same slot as 1
            (2, "get", 1, None),
            (2, "get", 17, pkt(17)),
        ],
        {"hits": 1, "misses": 1},
    ),
    (
        "older than max_age_ms is a miss; exactly max_age is still served",
        {"max_age_ms": 100.0},
        [
            (0, "put", 5, None),
            (0, "put", 6, None),
            (100, "get", 5, pkt(5)),
            (100.5, "get", 6, None),
        ],
        {"hits": 1, "misses": 1},
    ),
    (
        "repeated NACK inside 0.8 * rtt is suppressed",
        {},
        [
            (0, "put", 7, None),
            (10, "rtt", 100, None),
            (10, "get", 7, pkt(7)),
            (50, "get", 7, None),  # 40 ms later < 80 ms
            (89.9, "get", 7, None),
            (90, "get", 7, pkt(7)),
        ],
        {"hits": 2, "suppressed": 2, "misses": 0},
    ),
    (
        "with no RTT known the floor is 5 ms",
        {},
        [(0, "put", 8, None), (1, "get", 8, pkt(8)), (5.9, "get", 8, None), (6, "get", 8, pkt(8))],
        {"hits": 2, "suppressed": 1},
    ),
    (
        "a re-put seq resets the suppression",
        {"capacity": 16},
        [(0, "put", 3, None), (1, "get", 3, pkt(3)), (2, "put", 3, None), (3, "get", 3, pkt(3))],
        {"hits": 2, "suppressed": 0},
    ),
    (
        "16-bit wrap: 65535 and 0 live in different slots",
        {"capacity": 1024},
        [
            (0, "put", 65535, None),
            (1, "put", 0, None),
            (2, "get", 65535, pkt(65535)),
            (2, "get", 0, pkt(0)),
        ],
        {"hits": 2},
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "rows", "counters"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rtx_table(ring: Any, kwargs: dict[str, Any], rows: list[Row], counters: dict[str, int]) -> None:
    cache = ring(**kwargs)
    rtt = 0.0
    for i, (now, op, seq, expected) in enumerate(rows):
        if op == "put":
            cache.put(seq, pkt(seq), now)
        elif op == "rtt":
            rtt = float(seq)
        else:
            assert cache.get(seq, now, rtt) == expected, f"row {i}"
    for name, value in counters.items():
        assert getattr(cache, name) == value, name


def test_full_ring_keeps_the_newest_capacity_packets(ring: Any) -> None:
    cache = ring(capacity=64)
    for seq in range(65500, 65500 + 200):
        cache.put(seq, pkt(seq & 0xFFFF), seq * 0.1)
    newest = [(s & 0xFFFF) for s in range(65500 + 200 - 64, 65500 + 200)]
    assert all(cache.get(s, 6570.0) == pkt(s) for s in newest)
    assert cache.get((65500 + 200 - 65) & 0xFFFF, 6570.0) is None
    cache.clear()
    assert cache.get(newest[-1], 6570.0) is None


def test_ring_grows_instead_of_dropping_a_packet_it_could_still_resend(ring: Any) -> None:
    cache = ring(capacity=16, max_age_ms=1000.0, max_capacity=64)
    # 40 packets within 100 ms, across the seq wrap: more than 16 are resendable at once.
    for n in range(40):
        cache.put((65520 + n) & 0xFFFF, pkt(n), n * 2.5)
    assert cache.capacity == 64
    assert [cache.get((65520 + n) & 0xFFFF, 100.0) for n in range(40)] == [pkt(n) for n in range(40)]
    # Old packets expire as before: a slow stream later keeps the ring where it is.
    for n in range(40, 200):
        cache.put((65520 + n) & 0xFFFF, pkt(n), 2000.0 + n * 20.0)
    assert cache.capacity == 64
    assert cache.get((65520 + 199) & 0xFFFF, 2000.0 + 199 * 20.0) == pkt(199)


def test_ring_at_its_max_capacity_overwrites_the_oldest(ring: Any) -> None:
    cache = ring(capacity=16, max_capacity=32)
    for n in range(100):
        cache.put(n, pkt(n), n * 1.0)
    assert cache.capacity == 32
    assert cache.get(99, 100.0) == pkt(99) and cache.get(67, 100.0) is None


def test_max_capacity_is_a_power_of_two_not_below_capacity() -> None:
    with pytest.raises(ValueError, match="max_capacity"):
        RtxCache(capacity=64, max_capacity=100)
    with pytest.raises(ValueError, match="below capacity"):
        RtxCache(capacity=64, max_capacity=32)


@pytest.mark.parametrize("capacity", [0, 3, 1000, 65536, 1024.0, -2])
def test_capacity_must_be_power_of_two(capacity: Any) -> None:
    with pytest.raises(ValueError, match=r"power of two.*allowed: 1, 2, 4, .*32768"):
        RtxCache(capacity=capacity)


def test_bad_age() -> None:
    with pytest.raises(ValueError):
        RtxCache(max_age_ms=0.0)


def test_a_packet_kept_in_two_parts_is_resent_whole(ring: Any) -> None:
    cache = ring(capacity=16)
    payload = memoryview(b"\x00" * 4 + b"shared payload")[4:]  # a view, as forwarded video is
    cache.put(7, b"\x80\x60\x00\x07head", 0.0, payload)
    cache.put(8, b"whole", 0.0)
    assert cache.get(7, 10.0) == b"\x80\x60\x00\x07headshared payload"
    assert cache.get(8, 10.0) == b"whole"


def test_native_and_python_rings_answer_a_seeded_stream_alike() -> None:
    """Puts across the seq wrap with bursts (growth), late packets and gaps, NACKs with
    repeats under an RTT: every answer and counter the same."""
    if NativeRtxRing is None:
        pytest.skip("native extension not built")
    import random

    rng = random.Random(7)
    rings = [RtxCache(16, max_capacity=256), NativeRtxRing(16, max_capacity=256)]
    answers: list[list[object]] = [[], []]
    now, seq, asked = 0.0, 65400, 65400
    for _ in range(3000):
        now += rng.choice((0.1, 1.0, 5.0, 20.0, 20.0, 1200.0 if rng.random() < 0.01 else 2.0))
        step = rng.choice((1, 1, 1, 2, -3))
        seq = (seq + step) & 0xFFFF
        if rng.random() < 0.7:
            data = seq.to_bytes(2, "big") * rng.randint(1, 4)
            rest = memoryview(b"r" * rng.randint(0, 3)) if rng.random() < 0.5 else None
            for r in rings:
                r.put(seq, data, now, rest)
        else:
            if rng.random() < 0.5:  # a NACK again (browsers repeat until the RTX arrives)
                asked = (seq - rng.randint(0, 60)) & 0xFFFF
            rtt = rng.choice((0.0, 10.0, 30.0, 400.0))
            for r, out in zip(rings, answers, strict=True):
                out.append(r.get(asked, now, rtt))
    assert answers[0] == answers[1]
    python, native = rings
    assert (python.hits, python.misses, python.suppressed, python.capacity) == (
        native.hits,
        native.misses,
        native.suppressed,
        native.capacity,
    )
    assert python.hits > 100 and python.misses > 100 and python.capacity > 16


def test_new_rtx_cache_checks_arguments_for_both_and_falls_back_to_python() -> None:
    with pytest.raises(ValueError, match="power of two"):
        new_rtx_cache(100, native=True)
    assert type(new_rtx_cache(64, native=False)) is RtxCache
    if NativeRtxRing is not None:
        assert type(new_rtx_cache(64, max_capacity=128)) is NativeRtxRing
