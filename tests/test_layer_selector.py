"""`LayerSelector`: every layer rule for one subscriber of one track, without packets' bytes.

Driven directly with layer indexes, ext seqs and keyframe flags; keyframe requests land
in a recording host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from media.routing.layer_selector import DROP, FORWARD, START, SWITCH, LayerSelector, layer_for_size


@dataclass
class Host:
    requests: list[int] = field(default_factory=list)

    def request_keyframe(self, layer: int, now_ms: float) -> None:
        self.requests.append(layer)


@dataclass
class Size:
    index: int
    width: int | None = None
    height: int | None = None


def video(layers: int = 3) -> tuple[LayerSelector, Host]:
    host = Host()
    return LayerSelector(host, layers, is_video=True), host


def test_forwarding_starts_on_a_keyframe_of_the_target_only() -> None:
    selector, _ = video()
    assert selector.target == 2
    assert selector.accept(2, 10, keyframe=False, start=True) == DROP
    assert selector.accept(1, 10, keyframe=True, start=True) == DROP  # not the target
    assert selector.accept(2, 11, keyframe=True, start=False) == DROP  # not its first packet
    assert selector.accept(2, 12, keyframe=True, start=True) == START
    assert selector.current == 2
    assert selector.accept(2, 13, keyframe=False, start=False) == FORWARD
    assert selector.accept(2, 11, keyframe=True, start=False) == DROP  # from before the start


def test_a_switch_waits_for_the_new_targets_keyframe_and_asks_for_it() -> None:
    selector, host = video()
    selector.accept(2, 100, keyframe=True, start=True)
    selector.set_target(0, 0.0)
    assert host.requests == [0]
    assert selector.accept(2, 101, keyframe=False, start=True) == FORWARD  # until then
    assert selector.accept(0, 50, keyframe=True, start=True) == SWITCH
    assert selector.accept(2, 102, keyframe=False, start=True) == DROP
    assert (selector.current, selector.switch_ext_seq) == (0, 50)


def test_audio_starts_on_its_first_packet() -> None:
    selector = LayerSelector(Host(), 1, is_video=False)
    assert selector.accept(0, 7, keyframe=False, start=True) == START
    assert selector.accept(0, 8, keyframe=False, start=True) == FORWARD


def test_an_allocation_below_the_current_layer_sheds_it_before_the_lower_keyframe() -> None:
    selector, _ = video()
    selector.accept(2, 100, keyframe=True, start=True)
    selector.set_allocation(0)
    assert selector.accept(2, 101, keyframe=False, start=True) == FORWARD  # target still 2
    selector.set_target(0, 0.0)
    assert selector.accept(2, 102, keyframe=False, start=True) == DROP


# Rows: (publisher sends, allocation, pin, expected target).
SELECT_ROWS = [
    ([0, 1, 2], 2, None, 2),
    ([0, 1, 2], 1, None, 1),
    ([0, 1, 2], 2, 0, 0),
    ([0, 1], 2, None, 1),  # f stopped (dynacast, the publisher's own congestion)
    ([1, 2], 0, None, 1),  # nothing fits: the lowest one sent
]


@pytest.mark.parametrize(("available", "allocated", "pin", "expected"), SELECT_ROWS)
def test_target_is_the_best_layer_sent_within_allocation_and_cap(
    available: list[int], allocated: int, pin: int | None, expected: int
) -> None:
    selector, _ = video()
    selector.set_allocation(allocated)
    selector.pin(pin)
    selector.select(available, 0.0)
    assert selector.target == expected


def test_pause_and_disable_block_every_packet_and_resume_on_a_keyframe() -> None:
    selector, host = video(1)
    selector.accept(0, 1, keyframe=True, start=True)
    assert selector.set_allocation(None) is True and selector.paused and selector.wanted_layer is None
    assert selector.set_allocation(None) is False
    assert selector.accept(0, 2, keyframe=True, start=True) == DROP
    assert selector.set_allocation(0) is True and selector.current is None
    assert selector.accept(0, 3, keyframe=False, start=True) == DROP
    assert selector.accept(0, 4, keyframe=True, start=True) == START
    assert selector.set_enabled(False) is True and not selector.active
    selector.on_timer(1000.0)
    assert host.requests == [], "hidden: no keyframe requests"
    assert selector.accept(0, 5, keyframe=True, start=True) == DROP
    selector.set_enabled(True)
    selector.on_timer(1020.0)
    assert host.requests == [0]


def test_cap_is_the_lower_of_pin_and_size() -> None:
    selector, _ = video()
    layers = [Size(0), Size(1), Size(2)]
    selector.pin(1)
    selector.set_rendered_size(layers, 1280, 720)
    assert selector.max_layer == 1
    selector.set_rendered_size(layers, 300, 170)
    assert selector.max_layer == 0
    selector.pin(None)
    selector.set_rendered_size(layers, 0, 0)
    assert selector.max_layer == 2


# Rows: (layer sizes from keyframes, rendered width x height, expected layer).
SIZE_ROWS = [
    ([None, None, None], (320, 180), 0),  # unknown: halved from 1280x720 per layer
    ([None, None, None], (640, 360), 1),
    ([None, None, None], (720, 400), 2),  # more than 10% over h
    ([None, None, None], (2000, 2000), 2),
    ([(160, 90), (320, 180), (640, 360)], (320, 180), 1),
    ([(160, 90), (320, 180), (640, 360)], (300, 170), 1),  # 10% slack
    ([None, None, (640, 360)], (150, 80), 0),  # q taken as 160x90
]


@pytest.mark.parametrize(("sizes", "rendered", "expected"), SIZE_ROWS)
def test_layer_for_size_is_the_smallest_covering_the_rendered_size(
    sizes: list[tuple[int, int] | None], rendered: tuple[int, int], expected: int
) -> None:
    layers = [Size(i, *(size or (None, None))) for i, size in enumerate(sizes)]
    assert layer_for_size(layers, *rendered) == expected
    assert layer_for_size(layers, rendered[0], 0) is None
