"""Allocator policy, table-driven in simulated time."""

from __future__ import annotations

import pytest

from media.routing.allocator import (
    PRIO_AUDIO,
    PRIO_SCREEN,
    PRIO_SPEAKER,
    PRIO_VIDEO,
    RESUME_HOLD_MS,
    UP_HOLD_MS,
    Allocator,
    AllocTrack,
)

LAYERS = [150_000.0, 500_000.0, 1_500_000.0]


def video(key: str, prio: int = PRIO_VIDEO, current: int | None = None, max_layer: int = 2) -> AllocTrack:
    return AllocTrack(key, "video", prio, list(LAYERS), max_layer, current)


def audio(key: str = "a") -> AllocTrack:
    return AllocTrack(key, "audio", PRIO_AUDIO, [40_000.0], 0, 0)


@pytest.mark.parametrize(
    ("budget", "expected"),
    [
        (3_000_000, {"a": 0, "v": 2}),
        (1_000_000, {"a": 0, "v": 1}),
        (300_000, {"a": 0, "v": 0}),
        (100_000, {"a": 0, "v": None}),  # paused, audio kept
        (0, {"a": 0, "v": None}),
    ],
)
def test_single_track_layer_by_budget(budget, expected):
    alloc = Allocator().allocate(budget, [audio(), video("v")], 0.0)
    assert alloc.layers == expected


def test_priority_order_screen_then_speaker_then_rest():
    tracks = [video("cam1"), video("spk", PRIO_SPEAKER), video("screen", PRIO_SCREEN), audio()]
    alloc = Allocator().allocate(2_300_000, tracks, 0.0)
    # Everyone gets q first (450k + audio), then screen climbs to f (1.35M more),
    # the speaker to h with what is left, the plain camera stays on q.
    assert alloc.layers == {"a": 0, "screen": 2, "spk": 1, "cam1": 0}
    assert alloc.used_bps <= 2_300_000


def test_scarce_budget_pauses_lowest_priority_first():
    tracks = [video("cam1"), video("spk", PRIO_SPEAKER), audio()]
    alloc = Allocator().allocate(250_000, tracks, 0.0)
    assert alloc.layers == {"a": 0, "spk": 0, "cam1": None}


def test_max_layer_caps_adaptive_stream():
    alloc = Allocator().allocate(10_000_000, [video("small", max_layer=0), video("big")], 0.0)
    assert alloc.layers == {"small": 0, "big": 2}


def test_hysteresis_no_flapping():
    allocator = Allocator()
    # Start on h; the budget falls just under what h needs: go down at once.
    first = allocator.allocate(450_000, [video("v", current=1)], 0.0)
    assert first.layers["v"] == 0
    # Budget comes back to exactly h's rate: not enough headroom to go up.
    again = allocator.allocate(500_000, [video("v", current=0)], 5000.0)
    assert again.layers["v"] == 0
    # With headroom but right after a change: hold.
    held = allocator.allocate(1_000_000, [video("v", current=0)], 100.0)
    assert held.layers["v"] == 0
    # With headroom after the hold time: up.
    up = allocator.allocate(1_000_000, [video("v", current=0)], 100.0 + UP_HOLD_MS + 1)
    assert up.layers["v"] == 1
    # Staying on a layer needs no headroom.
    stay = allocator.allocate(500_000, [video("v", current=1)], 10_000.0)
    assert stay.layers["v"] == 1


def test_a_paused_track_resumes_its_lowest_layer_sooner_than_it_climbs():
    """A pause for a moment's backlog must not cost UP_HOLD_MS of frozen video; the
    climb above the lowest layer keeps the full hold."""
    alloc = Allocator()
    assert alloc.allocate(1_000_000, [video("v", current=1)], 0.0).layers == {"v": 1}
    assert alloc.allocate(0, [video("v", current=1)], 100.0).layers == {"v": None}
    early = alloc.allocate(3_000_000, [video("v", current=None)], 100.0 + RESUME_HOLD_MS / 2)
    assert early.layers == {"v": None}
    back = alloc.allocate(3_000_000, [video("v", current=None)], 100.0 + RESUME_HOLD_MS)
    assert back.layers == {"v": 0}
    t = 100.0 + RESUME_HOLD_MS
    assert alloc.allocate(3_000_000, [video("v", current=0)], t + 100.0).layers == {"v": 0}
    assert alloc.allocate(3_000_000, [video("v", current=0)], t + UP_HOLD_MS).layers == {"v": 2}


def test_a_dip_just_under_the_lowest_layer_does_not_pause_it_nor_hand_it_to_a_camera():
    """Pausing costs a freeze and a keyframe burst to resume: a track on its lowest
    layer keeps it while the budget is within a headroom of its price, so a dip does not
    hand the link to a cheaper, less important camera."""
    screen = AllocTrack("screen", "video", PRIO_SCREEN, [200_000.0, 500_000.0], 1, 0)
    camera = AllocTrack("cam", "video", PRIO_VIDEO, [100_000.0, 300_000.0], 1, None)
    alloc = Allocator()
    # 5 % under the screen's price: kept, and nothing left for the camera.
    dip = alloc.allocate(80_000 + 190_000, [audio("a1"), audio("a2"), screen, camera], 0.0)
    assert dip.layers == {"a1": 0, "a2": 0, "screen": 0, "cam": None}
    # Well under it (more than the headroom): paused, and the camera may use the link.
    low = alloc.allocate(80_000 + 150_000, [audio("a1"), audio("a2"), screen, camera], 5000.0)
    assert low.layers == {"a1": 0, "a2": 0, "screen": None, "cam": 0}
    # A paused track needs the headroom above its price to resume.
    paused = AllocTrack("screen", "video", PRIO_SCREEN, [200_000.0, 500_000.0], 1, None)
    assert alloc.allocate(210_000, [paused], 10_000.0).layers == {"screen": None}
    assert alloc.allocate(235_000, [paused], 10_000.0).layers == {"screen": 0}
