"""Drawing on a YUV 4:2:0 canvas with numpy: tiles, name labels, name cards, highlight.

The composite is drawn straight into the planes of the frame handed to the encoder,
in its own format (YUV 4:2:0), so no colour conversion or copy runs per frame. Text is
rendered once per (text, size) with Pillow and DejaVu Sans into an alpha mask and
blended into the luma plane; everything per frame is slice arithmetic.
"""

from __future__ import annotations

import functools
import logging

import av
import numpy as np

from .compose_layout import Rect, fit

__all__ = ["Canvas", "yuv"]

log = logging.getLogger("ferry.recorder")

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
FONT_BOLD = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
BACKGROUND = (18, 18, 22)
TILE = (44, 46, 54)
CARD = (58, 64, 84)
HIGHLIGHT = (64, 200, 96)


def yuv(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """BT.601 limited-range Y, U, V of an RGB colour (what libx264 assumes by default)."""
    r, g, b = rgb
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return round(y), round(u), round(v)


@functools.lru_cache(maxsize=256)
def text_mask(text: str, height: int, bold: bool = False) -> np.ndarray:
    """An alpha mask (float32, 0..1) of `text` about `height` pixels tall."""
    try:
        from PIL import Image, ImageDraw, ImageFont

        font = ImageFont.truetype(FONT_BOLD if bold else FONT, max(6, height))
    except (ImportError, OSError) as exc:  # no Pillow or no font: tiles go unnamed
        log.warning("cannot draw names: %s", exc)
        return np.zeros((1, 1), np.float32)
    left, top, right, bottom = font.getbbox(text)
    img = Image.new("L", (max(1, right - left), max(1, bottom - top)))
    ImageDraw.Draw(img).text((-left, -top), text, fill=255, font=font)
    return np.asarray(img, np.float32) / 255.0


class Canvas:
    """One composite frame being drawn; `frame()` hands it to the encoder."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self._scaled: dict[int, tuple[object, np.ndarray]] = {}
        self._new()

    def _new(self) -> None:
        """Draw straight into a new frame's planes (no copy of the picture to encode it)."""
        self._frame = av.VideoFrame(self.width, self.height, "yuv420p")
        self.y, self.u, self.v = (
            np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width]
            for p in self._frame.planes
        )

    def clear(self, rgb: tuple[int, int, int] = BACKGROUND) -> None:
        """Start a new picture, all background."""
        self._new()
        y, u, v = yuv(rgb)
        self.y.fill(y)
        self.u.fill(u)
        self.v.fill(v)

    def fill(self, r: Rect, rgb: tuple[int, int, int]) -> None:
        y, u, v = yuv(rgb)
        self.y[r.y : r.y + r.h, r.x : r.x + r.w] = y
        self.u[r.y // 2 : (r.y + r.h) // 2, r.x // 2 : (r.x + r.w) // 2] = u
        self.v[r.y // 2 : (r.y + r.h) // 2, r.x // 2 : (r.x + r.w) // 2] = v

    def video(self, key: int, frame: av.VideoFrame, box: Rect) -> None:
        """Scale `frame` into `box` (letterboxed) with swscale; reuses the last scaling per key."""
        r = fit(frame.width, frame.height, box)
        cached = self._scaled.get(key)
        if cached is not None and cached[0] is frame and cached[1].shape[1] == r.w:
            planes = cached[1]
        else:
            planes = frame.reformat(width=r.w, height=r.h, format="yuv420p").to_ndarray()
            self._scaled[key] = (frame, planes)
        if r != box:
            self.fill(box, TILE)
        self.y[r.y : r.y + r.h, r.x : r.x + r.w] = planes[: r.h]
        chroma = planes[r.h :].reshape(2, r.h // 2, r.w // 2)
        self.u[r.y // 2 : (r.y + r.h) // 2, r.x // 2 : (r.x + r.w) // 2] = chroma[0]
        self.v[r.y // 2 : (r.y + r.h) // 2, r.x // 2 : (r.x + r.w) // 2] = chroma[1]

    def card(self, box: Rect, name: str) -> None:
        """A name card: for a participant with audio only, or while their video is gone."""
        self.fill(box, CARD)
        initials = "".join(w[0] for w in name.split()[:2]).upper() or "?"
        self.text(initials, box.x + box.w // 2, box.y + box.h // 2, max(8, box.h // 4), bold=True,
                  center=True)

    def label(self, box: Rect, name: str) -> None:
        """The name at the tile's bottom left, on a darkened band."""
        size = max(8, min(28, box.h // 12))
        band = min(box.h, size * 2)
        top = box.y + box.h - band
        region = self.y[top : box.y + box.h, box.x : box.x + box.w]
        region[:] = (region.astype(np.uint16) * 3 // 8 + 10).astype(np.uint8)
        self.text(name, box.x + size // 2, top + (band - size) // 2, size, max_w=box.w - size)

    def text(self, text: str, x: int, y: int, size: int, *, bold: bool = False, center: bool = False,
             max_w: int | None = None) -> None:
        """White text blended into the luma plane (chroma left as is: white on grey)."""
        mask = text_mask(text, size, bold)
        h, w = mask.shape
        if max_w is not None and w > max_w:
            mask, w = mask[:, : max(0, max_w)], max(0, max_w)
        if center:
            x, y = x - w // 2, y - h // 2
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(self.width, x + w), min(self.height, y + h)
        if x1 <= x0 or y1 <= y0:
            return
        m = mask[y0 - y : y1 - y, x0 - x : x1 - x]
        region = self.y[y0:y1, x0:x1]
        region[:] = (region * (1.0 - m) + 235.0 * m).astype(np.uint8)
        cu = self.u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2]
        cv = self.v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2]
        mc = m[: cu.shape[0] * 2 : 2, : cu.shape[1] * 2 : 2]
        cu[:] = (cu * (1.0 - mc) + 128.0 * mc).astype(np.uint8)
        cv[:] = (cv * (1.0 - mc) + 128.0 * mc).astype(np.uint8)

    def border(self, box: Rect, rgb: tuple[int, int, int] = HIGHLIGHT, thickness: int = 4) -> None:
        """A frame inside the tile's edge: the active speaker's highlight."""
        t = max(2, thickness // 2 * 2)
        for r in (Rect(box.x, box.y, box.w, t), Rect(box.x, box.y + box.h - t, box.w, t),
                  Rect(box.x, box.y, t, box.h), Rect(box.x + box.w - t, box.y, t, box.h)):
            self.fill(r, rgb)

    def frame(self) -> av.VideoFrame:
        """The picture drawn since `clear` (the next `clear` starts another)."""
        return self._frame
