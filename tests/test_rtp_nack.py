"""NackGenerator in simulated time: rows of (now_ms, op, arg, expected)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.rtp.nack import NackGenerator
from media.wire.seqnum import Unwrapper

Row = tuple[float, str, Any, Any]


def run(gen: NackGenerator, rows: list[Row]) -> None:
    """Ops: pkt/kf/rtx (16-bit seq in), poll (expected seqs), deadline, rtt, kfneed."""
    uw = Unwrapper()
    for i, (now, op, arg, expected) in enumerate(rows):
        where = f"row {i}: {(now, op, arg, expected)}"
        if op == "pkt":
            gen.on_packet(uw.unwrap(arg), now)
        elif op == "kf":
            gen.on_packet(uw.unwrap(arg), now, is_keyframe=True)
        elif op == "rtx":
            gen.on_packet(uw.unwrap(arg), now, is_retransmission=True)
        elif op == "poll":
            assert gen.poll(now) == expected, where
        elif op == "deadline":
            assert gen.next_deadline() == expected, where
        elif op == "rtt":
            gen.rtt_ms = arg
        elif op == "kfneed":
            assert gen.take_keyframe_needed() is expected, where
        else:  # pragma: no cover - table typo
            raise AssertionError(f"unknown op {op!r}")


def pkts(now: float, *seqs: int) -> list[Row]:
    return [(now, "pkt", s, None) for s in seqs]


CASES: list[tuple[str, dict[str, Any], list[Row], dict[str, int]]] = [
    (
        "in order: nothing to do",
        {},
        [*pkts(0, 100, 101, 102, 103), (0, "deadline", None, None), (50, "poll", None, [])],
        {"lost": 0, "recovered": 0, "nacks_sent": 0, "pending": 0},
    ),
    (
        "single gap waits the reorder allowance",
        {},
        [
            *pkts(0, 100, 102),
            (0, "poll", None, []),
            (0, "deadline", None, 5.0),
            (4.9, "poll", None, []),
            (5, "poll", None, [101]),
            (5, "deadline", None, 105.0),  # default rtt 100 ms
        ],
        {"lost": 1, "nacks_sent": 1, "pending": 1},
    ),
    (
        "reordered packet arrives inside the allowance: never NACKed",
        {},
        [*pkts(0, 100, 102), *pkts(2, 101), (10, "poll", None, []), (10, "deadline", None, None)],
        {"lost": 1, "recovered": 1, "nacks_sent": 0, "pending": 0},
    ),
    (
        "a seq far enough behind the newest is NACKed at once",
        {},
        [
            *pkts(0, 100, 104),  # 101..103 missing; 101 is 3 behind 104
            (0, "deadline", None, 0.0),
            (0, "poll", None, [101]),
            (0, "deadline", None, 5.0),
            *pkts(1, 105),  # now 102 is 3 behind
            (1, "deadline", None, 1.0),
            (1, "poll", None, [102]),
            (5, "poll", None, [103]),
        ],
        {"lost": 3, "nacks_sent": 3, "pending": 3},
    ),
    (
        "duplicates are ignored",
        {},
        [*pkts(0, 100, 101, 101, 100, 102, 102), (20, "poll", None, [])],
        {"lost": 0, "recovered": 0, "pending": 0},
    ),
    (
        "16-bit wrap-around",
        {},
        [
            *pkts(0, 65530, 65531, 65532, 65534, 0, 2),  # missing 65533, 65535, 1
            (10, "poll", None, [65533, 65535, 1]),
            *pkts(11, 65535),  # late across the wrap
            (200, "poll", None, [65533, 1]),
        ],
        {"lost": 3, "recovered": 1, "nacks_sent": 5, "pending": 2},
    ),
    (
        "late packet after a NACK counts as recovered",
        {},
        [*pkts(0, 100, 102), (5, "poll", None, [101]), *pkts(60, 101), (200, "poll", None, [])],
        {"lost": 1, "recovered": 1, "nacks_sent": 1, "pending": 0},
    ),
    (
        "retransmission recovers and is counted",
        {},
        [*pkts(0, 100, 102), (5, "poll", None, [101]), (60, "rtx", 101, None)],
        {"lost": 1, "recovered": 1, "rtx_received": 1, "pending": 0},
    ),
    (
        "RTT-aware spacing, and a new RTT applies at the next poll",
        {"min_interval_ms": 20.0},
        [
            *pkts(0, 100, 102),
            (5, "poll", None, [101]),
            (5, "deadline", None, 105.0),
            (104, "poll", None, []),
            (105, "poll", None, [101]),
            (105, "rtt", 10.0, None),  # below min_interval: 20 ms wins
            (105, "deadline", None, 105.0),
            (105, "poll", None, []),
            (105, "deadline", None, 125.0),
            (125, "poll", None, [101]),
            (125, "rtt", 300.0, None),
            (125, "poll", None, []),
            (125, "deadline", None, 425.0),
        ],
        {"nacks_sent": 3, "pending": 1},
    ),
    (
        "gives up after max_retries and asks for a keyframe once",
        {"max_retries": 3},
        [
            (0, "rtt", 50.0, None),
            *pkts(0, 100, 102),
            (5, "poll", None, [101]),
            (55, "poll", None, [101]),
            (105, "poll", None, [101]),
            (105, "kfneed", None, False),
            (105, "deadline", None, 155.0),
            (155, "poll", None, []),
            (155, "deadline", None, None),
            (155, "kfneed", None, True),
            (156, "kfneed", None, False),
            *pkts(300, 101),  # too late: not recovered
        ],
        {"lost": 1, "given_up": 1, "recovered": 0, "nacks_sent": 3, "pending": 0},
    ),
    (
        "gives up after max_age even between retries",
        {"max_age_ms": 100.0},
        [
            (0, "rtt", 200.0, None),
            *pkts(0, 100, 102),
            (5, "poll", None, [101]),
            (5, "deadline", None, 100.0),
            (100, "poll", None, []),
            (100, "kfneed", None, True),
        ],
        {"given_up": 1, "nacks_sent": 1, "pending": 0},
    ),
    (
        "a keyframe obsoletes older missing seqs and the keyframe request",
        {"max_retries": 1},
        [
            (0, "rtt", 20.0, None),
            *pkts(0, 100, 102),
            (5, "poll", None, [101]),
            (25, "poll", None, []),  # 101 given up
            *pkts(30, 103, 106),  # 104, 105 missing
            (30, "kf", 110, None),  # gap 107..109 skipped, 104/105 dropped
            (30, "deadline", None, None),
            (30, "kfneed", None, False),
            *pkts(31, 111, 113),
            (40, "poll", None, [112]),
        ],
        {"lost": 7, "given_up": 1, "obsoleted": 5, "nacks_sent": 2, "pending": 1},
    ),
    (
        "a reordered old keyframe does not cancel a newer give-up",
        {"max_retries": 1},
        [
            (0, "rtt", 20.0, None),
            *pkts(0, 100, 105),  # 101..104 missing
            (2, "kf", 101, None),  # late first packet of a keyframe
            (5, "poll", None, [102, 103, 104]),
            (25, "poll", None, []),
            (25, "kfneed", None, True),
        ],
        {"lost": 4, "recovered": 1, "given_up": 3, "pending": 0},
    ),
    (
        "huge gap clears the list and asks for a keyframe",
        {"max_missing": 10},
        [
            *pkts(0, 100, 102),
            *pkts(1, 120),
            (1, "deadline", None, None),
            (1, "kfneed", None, True),
            *pkts(2, 122),
            (10, "poll", None, [121]),
        ],
        {"lost": 19, "given_up": 18, "pending": 1},
    ),
    (
        "too many missing: the oldest are evicted",
        {"max_missing": 5},
        [
            *pkts(0, 100, 104),  # 101..103
            *pkts(1, 108),  # 105..107 -> 101 evicted
            (1, "kfneed", None, True),
            (10, "poll", None, [102, 103, 105, 106, 107]),
        ],
        {"lost": 6, "given_up": 1, "pending": 5},
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "rows", "counters"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_nack_table(kwargs: dict[str, Any], rows: list[Row], counters: dict[str, int]) -> None:
    gen = NackGenerator(**kwargs)
    run(gen, rows)
    for name, value in counters.items():
        assert getattr(gen, name) == value, name


def test_stepping_to_deadlines_tries_max_retries_times() -> None:
    """Drive only by next_deadline(): retries spaced by the RTT until the give-up."""
    gen = NackGenerator(max_retries=4, max_age_ms=10_000.0)
    gen.rtt_ms = 80.0
    gen.on_packet(1000, 0.0)
    gen.on_packet(1002, 0.0)
    sent_at: list[float] = []
    now = 0.0
    while (deadline := gen.next_deadline()) is not None:
        assert deadline >= now
        now = deadline
        if gen.poll(now):
            sent_at.append(now)
    assert sent_at == [5.0, 85.0, 165.0, 245.0]
    assert now == 325.0
    assert gen.given_up == 1 and gen.take_keyframe_needed()


@pytest.mark.parametrize(
    "kwargs",
    [{"max_retries": 0}, {"max_missing": 0}, {"max_age_ms": 0.0}, {"reorder_packets": 0}],
)
def test_bad_config(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        NackGenerator(**kwargs)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(-20, 40), st.integers(0, 30), st.booleans(), st.booleans()),
        max_size=80,
    )
)
def test_accounting_invariant(steps: list[tuple[int, int, bool, bool]]) -> None:
    """lost == recovered + given_up + obsoleted + pending; NACKs name pending seqs."""
    gen = NackGenerator(max_missing=30, max_retries=3, max_age_ms=200.0)
    uw = Unwrapper()
    now = 0.0
    seq = 60000
    for jump, dt, keyframe, do_poll in steps:
        now += dt
        seq = (seq + jump) & 0xFFFF
        gen.on_packet(uw.unwrap(seq), now, is_keyframe=keyframe and jump > 0)
        if do_poll:
            pending = {ext & 0xFFFF for ext in gen._missing}
            nacked = gen.poll(now)
            assert set(nacked) <= pending
            assert len(set(nacked)) == len(nacked)
        assert gen.lost == gen.recovered + gen.given_up + gen.obsoleted + gen.pending
        deadline = gen.next_deadline()
        assert (deadline is None) == (gen.pending == 0)
