"""Where a DownTrack's per-packet state lives: in C when the native send path runs.

`media.transport._fastpath.fan_out_video` / `fan_out_audio` forward a packet to all
of a track's steady subscribers in one call (see `_lane.c`). They read and move the
same fields the Python forward path does, so those fields are kept in C base classes
that `LayerSelector`, `StreamRewriter`, `RtpStreamSend`, `DownTrack` and `RedEncoder`
extend: one copy of each value, nothing to keep in sync. With the native path off
(`FERRY_NATIVE_SEND=0`, or no compiler at install) the bases below are plain slotted
classes and every packet takes the Python path. Chosen once, at import.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from media.transport.udp_mux import SEND_PATH, _fastpath

NATIVE = SEND_PATH == "native"

__all__ = [
    "NATIVE",
    "DownTrackState",
    "Lane",
    "RedHistory",
    "RewriterState",
    "SelectorState",
    "SendCounters",
    "SendTarget",
    "fan_out_audio",
    "fan_out_video",
]


class _SelectorState:
    """LayerSelector's per-packet fields (the C base's stand-in)."""

    __slots__ = ("blocked", "current", "target", "allocated", "switch_ext_seq")


class _RewriterState:
    """StreamRewriter's fields (the C base's stand-in)."""

    __slots__ = (
        "clock_rate",
        "seq_offset",
        "ts_offset",
        "pid_offset",
        "tl0_offset",
        "last_ext_seq",
        "last_ts",
        "last_ms",
        "last_pid",
        "last_tl0",
        "rtx_seq",
    )


class _SendCounters:
    """RtpStreamSend's send-side counters (the C base's stand-in)."""

    __slots__ = (
        "packets_sent",
        "bytes_sent",
        "_last_rtp_ts",
        "_last_sent_ms",
        "_mark",
        "fraction_lost",
    )


class _DownTrackState:
    """DownTrack's audio fields (the C base's stand-in)."""

    __slots__ = ("_window_sent", "nack_loss", "_red_level")


class _RedHistory:
    """The frames a RedEncoder repeats, oldest first (the C base's stand-in)."""

    __slots__ = ("_frames_kept",)

    def __init__(self, capacity: int = 1) -> None:
        if capacity not in (1, 2):
            raise ValueError("a RED history holds 1 or 2 frames")
        self._frames_kept: deque[tuple[int, Any]] = deque(maxlen=capacity)

    def _remember(self, timestamp: int, data: Any) -> None:
        self._frames_kept.append((timestamp, data))

    def _frames(self) -> list[tuple[int, Any]]:
        return list(self._frames_kept)

    def _forget(self) -> None:
        self._frames_kept.clear()


SelectorState: Any
RewriterState: Any
SendCounters: Any
DownTrackState: Any
RedHistory: Any
SendTarget: Any
Lane: Any
fan_out_video: Any
fan_out_audio: Any

if NATIVE:
    SelectorState = _fastpath.SelectorState
    RewriterState = _fastpath.RewriterState
    SendCounters = _fastpath.SendCounters
    DownTrackState = _fastpath.DownTrackState
    RedHistory = _fastpath.RedHistory
    SendTarget = _fastpath.SendTarget
    Lane = _fastpath.Lane
    fan_out_video = _fastpath.fan_out_video
    fan_out_audio = _fastpath.fan_out_audio
else:
    SelectorState = _SelectorState
    RewriterState = _RewriterState
    SendCounters = _SendCounters
    DownTrackState = _DownTrackState
    RedHistory = _RedHistory
    SendTarget = Lane = fan_out_video = fan_out_audio = None
