"""Live VP8 for the lite publisher: a stamped test pattern, encoded frame by frame.

Why beside the clips: a pre-encoded clip cannot carry the wall-clock stamp
(``clients.stamp``) that glass-to-glass latency is read from, and a PLI answered by
jumping ahead in a clip shows a picture from up to a keyframe interval later. A live
encoder stamps each frame when it is made and answers a PLI with a keyframe of the
current picture, as a browser does. It costs libvpx time for every frame
(``bench/lite_live.py`` prints it), so the QA runner gives it to one publisher per
group and sends clips from the others. The publisher encodes on a worker thread:
encoded on the event loop that every client and Ferry share in a QA run, each frame
holds the loop ~7 ms, the receivers' arrival times (their TWCC feedback) carry that
jitter, and Ferry's estimate of a 2.5 Mbit/s link swings between 0.3 and 1.6 Mbit/s
(measured on the capacity-step scenario).
"""

from __future__ import annotations

import time

import av

from clients.stamp import draw_stamp

from .clips import MovingPattern, is_vp8_keyframe, open_vp8_encoder

__all__ = ["LiveVp8Source"]

KEYFRAME_INTERVAL_S = 10  # keyframes otherwise come when asked for (PLI/FIR)


class LiveVp8Source:
    """One simulcast layer's frames: ``next_frame()`` encodes the pattern stamped now."""

    def __init__(self, width: int, height: int, bitrate: int, fps: int) -> None:
        self.width, self.height, self.bitrate, self.fps = width, height, bitrate, fps
        self._pattern = MovingPattern(width, height)
        self._codec = open_vp8_encoder(width, height, bitrate, fps, KEYFRAME_INTERVAL_S * fps,
                                       fixed_keyframes=False)
        self._index = 0
        self._want_key = True
        self.frames_encoded = 0
        self.keyframes_encoded = 0

    def jump_to_keyframe(self) -> None:
        """Answer a PLI: the next frame is encoded as a keyframe."""
        self._want_key = True

    def next_frame(self, stamp_ms: float | None = None) -> tuple[bytes, bool] | None:
        """The next VP8 frame and whether it is a keyframe; None when libvpx gave none.

        ``stamp_ms`` is the capture time drawn into the picture (default: now).
        """
        plane = self._pattern.plane(self._index)
        draw_stamp(plane[: self.height], time.time() * 1000.0 if stamp_ms is None else stamp_ms)
        frame = av.VideoFrame.from_ndarray(plane, format="yuv420p")
        frame.pts = self._index
        frame.time_base = self._codec.time_base
        if self._want_key:
            frame.pict_type = av.video.frame.PictureType.I
        self._index += 1
        data = b"".join(bytes(p) for p in self._codec.encode(frame))
        if not data:
            return None
        key = is_vp8_keyframe(data)
        if key:
            self._want_key = False
            self.keyframes_encoded += 1
        self.frames_encoded += 1
        return data, key
