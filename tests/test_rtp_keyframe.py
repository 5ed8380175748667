"""KeyframeRequester / KeyframeWaiter in simulated time."""

from __future__ import annotations

from typing import Any

import pytest

from media.rtp.keyframe import KeyframeRequester, KeyframeWaiter

Row = tuple[float, str, Any]

REQUESTER_CASES: list[tuple[str, list[Row], tuple[int, int]]] = [
    (
        "first request goes out at once",
        [(0, "request", True), (0, "deadline", None)],
        (1, 1),
    ),
    (
        "requests inside the interval are deferred to its end, once",
        [
            (0, "request", True),
            (100, "request", False),
            (200, "request", False),
            (200, "deadline", 300.0),
            (299, "timer", False),
            (300, "timer", True),
            (300, "deadline", None),
            (301, "timer", False),
        ],
        (3, 2),
    ),
    (
        "a keyframe cancels the deferred request",
        [
            (0, "request", True),
            (100, "request", False),
            (150, "keyframe", None),
            (150, "deadline", None),
            (300, "timer", False),
            (310, "request", True),
        ],
        (3, 2),
    ),
    (
        "request after the interval goes out directly",
        [
            (0, "request", True),
            (300, "request", True),
            (599, "request", False),
            (600, "timer", True),
        ],
        (3, 3),
    ),
]


@pytest.mark.parametrize(
    ("rows", "counts"), [c[1:] for c in REQUESTER_CASES], ids=[c[0] for c in REQUESTER_CASES]
)
def test_requester_table(rows: list[Row], counts: tuple[int, int]) -> None:
    kr = KeyframeRequester(300.0)
    for i, (now, op, expected) in enumerate(rows):
        if op == "request":
            assert kr.request(now) is expected, f"row {i}"
        elif op == "timer":
            assert kr.on_timer(now) is expected, f"row {i}"
        elif op == "deadline":
            assert kr.next_deadline() == expected, f"row {i}"
        else:
            kr.on_keyframe(now)
    assert (kr.requested, kr.sent) == counts


def test_ten_requests_in_300ms_make_two_plis() -> None:
    """Ten subscribers asking within 300 ms: one PLI now, one at the interval's end."""
    kr = KeyframeRequester(300.0)
    plis: list[float] = []
    events = [float(t) for t in range(0, 300, 30)]  # 0, 30, ..., 270
    now = 0.0
    for t in events:
        deadline = kr.next_deadline()
        if deadline is not None and deadline <= t and kr.on_timer(deadline):
            plis.append(deadline)
        now = t
        if kr.request(now):
            plis.append(now)
    while (deadline := kr.next_deadline()) is not None:
        if kr.on_timer(deadline):
            plis.append(deadline)
    assert plis == [0.0, 300.0]
    assert (kr.requested, kr.sent) == (10, 2)


WAITER_CASES: list[tuple[str, list[Row], int]] = [
    (
        "asks at once, then every retry_ms until the keyframe",
        [
            (0, "poll", False),
            (10, "need", None),
            (10, "poll", True),
            (10, "deadline", 510.0),
            (509, "poll", False),
            (510, "poll", True),
            (600, "need", None),  # already waiting: keeps its schedule
            (600, "poll", False),
            (1010, "poll", True),
            (1100, "keyframe", None),
            (1100, "deadline", None),
            (2000, "poll", False),
        ],
        3,
    ),
    (
        "need again after a keyframe starts over",
        [
            (0, "need", None),
            (0, "poll", True),
            (5, "keyframe", None),
            (7, "need", None),
            (7, "poll", True),
        ],
        2,
    ),
]


@pytest.mark.parametrize(
    ("rows", "requests"), [c[1:] for c in WAITER_CASES], ids=[c[0] for c in WAITER_CASES]
)
def test_waiter_table(rows: list[Row], requests: int) -> None:
    kw = KeyframeWaiter(retry_ms=500.0)
    for i, (now, op, expected) in enumerate(rows):
        if op == "need":
            kw.need(now)
        elif op == "poll":
            assert kw.poll(now) is expected, f"row {i}"
        elif op == "deadline":
            assert kw.next_deadline() == expected, f"row {i}"
        else:
            kw.on_keyframe()
    assert kw.requests == requests


@pytest.mark.parametrize(("cls", "arg"), [(KeyframeRequester, -1.0), (KeyframeWaiter, 0.0)])
def test_bad_config(cls: type, arg: float) -> None:
    with pytest.raises(ValueError):
        cls(arg)
