"""What an aiortc client does with a remote track: decode it and count what decoded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

logger = logging.getLogger(__name__)

TrackKey = tuple[str, str]
"""(participant_sid, track_sid), as carried by the subscriber offer's ``a=msid`` line."""


@dataclass
class TrackSink:
    """Consumes one remote track (``recv()`` loop) and counts what decoded.

    Times are ``time.monotonic()`` seconds. ``first_keyframe_at`` is set from the
    decoder's key-frame flag when PyAV exposes it; aiortc's VP8 decoder only yields
    pictures once it has a key frame, so ``first_frame_at`` is the first decodable
    picture either way.
    """

    participant_sid: str
    track_sid: str
    kind: str
    track: MediaStreamTrack
    received_frames: int = 0
    received_audio_samples: int = 0
    first_frame_at: float | None = None
    first_keyframe_at: float | None = None
    last_frame_at: float | None = None
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    ended: bool = False
    started_at: float = field(default_factory=time.monotonic)
    on_frame: Callable[[Any], None] | None = None
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start the consuming task (idempotent)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            try:
                frame = await self.track.recv()
            except (MediaStreamError, asyncio.CancelledError):
                break
            except Exception:  # a decoder error must not kill the sink silently
                logger.exception("sink %s/%s: recv failed", self.participant_sid, self.track_sid)
                break
            self._count(frame)
        self.ended = True

    def _count(self, frame: Any) -> None:
        now = time.monotonic()
        if self.first_frame_at is None:
            self.first_frame_at = now
        self.last_frame_at = now
        if self.kind == "video":
            self.received_frames += 1
            self.width, self.height = frame.width, frame.height
            if self.first_keyframe_at is None and getattr(frame, "key_frame", False):
                self.first_keyframe_at = now
        else:
            self.received_frames += 1
            self.received_audio_samples += frame.samples
            self.sample_rate = frame.sample_rate
        if self.on_frame is not None:
            self.on_frame(frame)

    def rebind(self, participant_sid: str, track_sid: str) -> None:
        """The server reused this m-line for another track: restart the counters."""
        self.participant_sid, self.track_sid = participant_sid, track_sid
        self.received_frames = self.received_audio_samples = 0
        self.first_frame_at = self.first_keyframe_at = self.last_frame_at = None
        self.started_at = time.monotonic()

    async def stop(self) -> None:
        """Cancel the consuming task."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.ended = True

    def summary(self) -> dict[str, Any]:
        """JSON-friendly counters (used by :meth:`FerryClient.stats`)."""
        return {
            "framesDecoded": self.received_frames if self.kind == "video" else None,
            "audioFrames": self.received_frames if self.kind == "audio" else None,
            "audioSamplesReceived": self.received_audio_samples if self.kind == "audio" else None,
            "width": self.width or None,
            "height": self.height or None,
            "firstFrameDelay": (self.first_frame_at - self.started_at)
            if self.first_frame_at
            else None,
            "ended": self.ended,
        }


# --------------------------------------------------------------------------- client
