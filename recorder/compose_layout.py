"""Where each tile of the composite goes: a grid of people, or a screen share and a strip.

Pure geometry (no media): the scene asks for the layout of whoever is visible at a
moment and caches it per set of tiles. Rectangles have even coordinates and sizes,
so the YUV 4:2:0 chroma planes line up with the luma plane.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Rect", "fit", "layout"]

GAP = 8  # pixels between tiles and around the edge (at 1280x720; scaled)


@dataclass(frozen=True, slots=True)
class Rect:
    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return self.w * self.h


def _even(v: float) -> int:
    return max(2, int(v) // 2 * 2)


def _rect(x: float, y: float, w: float, h: float) -> Rect:
    return Rect(_even(x), _even(y), _even(w), _even(h))


def layout(width: int, height: int, people: list[str], screen: str | None = None) -> dict[str, Rect]:
    """Tiles keyed by person (and `screen`'s key for the big tile when one is shared).

    Without a screen share: a grid of ceil(sqrt(n)) columns, cells 16:9 where the
    canvas allows. With one: the share takes the left three quarters, people a
    column (two when more than four) on the right.
    """
    gap = max(2, round(GAP * width / 1280))
    if screen is None:
        return _grid(0, 0, width, height, people, gap)
    if not people:
        return {screen: _rect(gap, gap, width - 2 * gap, height - 2 * gap)}
    side = width // 4 if len(people) <= 4 else width // 3
    tiles = {screen: _rect(gap, gap, width - side - 2 * gap, height - 2 * gap)}
    cols = 1 if len(people) <= 4 else 2
    rows = max(4, math.ceil(len(people) / cols))
    cw = (side - gap) / cols
    ch = (height - gap) / rows
    top = gap + max(0.0, (height - gap - ch * math.ceil(len(people) / cols)) / 2)
    for i, key in enumerate(people):
        r, c = divmod(i, cols)
        x = width - side + c * cw
        tiles[key] = _rect(x, top + r * ch, cw - gap, ch - gap)
    return tiles


def _grid(x0: int, y0: int, width: int, height: int, people: list[str], gap: int) -> dict[str, Rect]:
    n = len(people)
    if n == 0:
        return {}
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    cw = (width - gap) / cols
    ch = min((height - gap) / rows, (cw - gap) * 9 / 16 + gap)  # cells no taller than 16:9
    top = y0 + (height - gap - rows * ch) / 2
    tiles = {}
    for i, key in enumerate(people):
        r, c = divmod(i, cols)
        in_row = min(cols, n - r * cols)  # centre a short last row
        left = x0 + (width - in_row * cw) / 2 if in_row < cols else x0
        tiles[key] = _rect(left + gap + c * cw, top + gap + r * ch, cw - gap, ch - gap)
    return tiles


def fit(src_w: int, src_h: int, box: Rect) -> Rect:
    """The largest rectangle of the source's aspect ratio centred in `box` (letterbox)."""
    if src_w <= 0 or src_h <= 0:
        return box
    scale = min(box.w / src_w, box.h / src_h)
    w, h = _even(src_w * scale), _even(src_h * scale)
    w, h = min(w, box.w), min(h, box.h)
    return Rect(box.x + (box.w - w) // 4 * 2, box.y + (box.h - h) // 4 * 2, w, h)
