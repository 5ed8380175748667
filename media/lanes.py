"""Where a video DownTrack's per-packet state lives: in C when the native send path runs.

`media.transport._fastpath.fan_out_video` forwards a video packet to all of a track's
steady subscribers in one call (see `_lane.c`). It reads and moves the same fields
the Python forward path does, so those fields are kept in C base classes that
`LayerSelector`, `StreamRewriter` and `RtpStreamSend` extend: one copy of each value,
nothing to keep in sync. With the native path off (`FERRY_NATIVE_SEND=0`, or no
compiler at install) the bases below are plain slotted classes and every packet takes
the Python path. Chosen once, at import.
"""

from __future__ import annotations

from typing import Any

from media.transport.udp_mux import SEND_PATH, _fastpath

NATIVE = SEND_PATH == "native"

__all__ = [
    "NATIVE",
    "RewriterState",
    "SelectorState",
    "SendCounters",
    "SendTarget",
    "VideoLane",
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

    __slots__ = ("packets_sent", "bytes_sent", "_last_rtp_ts", "_last_sent_ms", "_mark")


SelectorState: Any
RewriterState: Any
SendCounters: Any
SendTarget: Any
VideoLane: Any
fan_out_video: Any

if NATIVE:
    SelectorState = _fastpath.SelectorState
    RewriterState = _fastpath.RewriterState
    SendCounters = _fastpath.SendCounters
    SendTarget = _fastpath.SendTarget
    VideoLane = _fastpath.VideoLane
    fan_out_video = _fastpath.fan_out_video
else:
    SelectorState = _SelectorState
    RewriterState = _RewriterState
    SendCounters = _SendCounters
    SendTarget = VideoLane = fan_out_video = None
