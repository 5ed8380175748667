"""A room's timer work is cut into slices, and every participant still runs once a tick.

The engine runs one of ``TIMER_PHASES`` slices of participants per call, every
``TICK_MS / TIMER_PHASES``, so that a big room's per-peer timers (RTCP, feedback,
allocation) never hold the event loop for the whole room at once while received
packets wait. Socket-free: a Router on an Engine whose socket is never opened.
"""

from __future__ import annotations

from collections import Counter

from media.engine import TICK_MS, Engine, EngineConfig
from media.routing.router import TIMER_PHASES, MediaParticipant


def _count_timers(participants: list[MediaParticipant], calls: Counter[str]) -> None:
    for p in participants:
        original = p.on_timer

        def counted(now_ms: float, _p: MediaParticipant = p, _orig=original) -> None:
            calls[_p.sid] += 1
            _orig(now_ms)

        p.on_timer = counted  # type: ignore[method-assign]


def test_each_phase_runs_an_even_slice_and_a_full_cycle_runs_everyone_once() -> None:
    engine = Engine(EngineConfig(port=0))
    router = engine.router("phases", None)
    participants = [router.add_participant(f"P{i}") for i in range(4 * TIMER_PHASES + 1)]
    calls: Counter[str] = Counter()
    _count_timers(participants, calls)
    now = engine.now_ms()
    sizes = []
    for phase in range(TIMER_PHASES):
        before = sum(calls.values())
        router.on_timer(now + phase * TICK_MS / TIMER_PHASES, phase)
        sizes.append(sum(calls.values()) - before)
    assert max(sizes) - min(sizes) <= 1, sizes  # slices are even
    assert max(sizes) < len(participants)  # no call runs the whole room
    assert set(calls) == {p.sid for p in participants}
    assert set(calls.values()) == {1}  # a full cycle of phases: each participant once


def test_without_a_phase_every_participant_runs() -> None:
    engine = Engine(EngineConfig(port=0))
    router = engine.router("all", None)
    participants = [router.add_participant(f"Q{i}") for i in range(6)]
    calls: Counter[str] = Counter()
    _count_timers(participants, calls)
    router.on_timer(engine.now_ms())
    assert set(calls.values()) == {1} and len(calls) == 6


def test_engine_ticks_cycle_through_every_phase_once_per_tick_period() -> None:
    engine = Engine(EngineConfig(port=0))
    router = engine.router("cycle", None)
    seen: list[int | None] = []
    original = router.on_timer

    def spy(now_ms: float, phase: int | None = None) -> None:
        seen.append(phase)
        original(now_ms, phase)

    router.on_timer = spy  # type: ignore[method-assign]
    engine._schedule = lambda: None  # type: ignore[method-assign]  # no loop: ticks by hand
    for _ in range(2 * TIMER_PHASES):
        engine._tick()
    assert seen == list(range(TIMER_PHASES)) * 2
