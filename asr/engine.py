"""`CaptionEngine`: one loaded recognizer backend and worker pool for the whole server.

    engine = CaptionEngine(CaptionConfig(backend="whisper"))   # raises CaptionsUnavailable
    sink = engine.open_track(participant_sid=..., track_sid=..., identity=...,
                             on_caption=room_broadcast, red_pt=track.red_pt)
    media_engine.add_sink(room, track_sid, sink)                # a PacketSink
    ...
    media_engine.remove_sink(room, track_sid, sink); sink.close()
    await engine.close()

`open_track` must be called on the event loop that delivers the track's packets:
captions and statuses are delivered on that loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

from .api import BACKENDS, Caption, CaptionConfig, CaptionsUnavailable
from .recognizer import Backend
from .track_captioner import TrackCaptioner
from .worker import RecognitionPool

__all__ = ["CaptionEngine", "TrackCaptioner", "load_backend"]

log = logging.getLogger("ferry.asr")


def load_backend(config: CaptionConfig) -> Backend:
    """Load the configured model; `CaptionsUnavailable` with one line when it cannot."""
    if config.backend == "whisper":
        from .whisper_backend import WhisperBackend

        return WhisperBackend(config.whisper_model, workers=config.max_concurrent)
    if config.backend == "vosk":
        from .vosk_backend import VoskBackend

        return VoskBackend(config.vosk_model)
    raise CaptionsUnavailable(
        f"unknown captions backend {config.backend!r} (known: {', '.join(BACKENDS)})", code="bad_request"
    )


class CaptionEngine:
    """See the module docstring; `stats()` feeds /metrics."""

    def __init__(self, config: CaptionConfig) -> None:
        if config.max_concurrent < 1:
            raise CaptionsUnavailable("captions need max_concurrent >= 1", code="bad_request")
        self.config = config
        started = time.monotonic()
        self.backend = load_backend(config)
        self.backend.check_language(config.language)
        self.load_seconds = time.monotonic() - started
        self.pool = RecognitionPool(config.max_concurrent)
        self.tracks: dict[int, TrackCaptioner] = {}
        self.closed = False
        # Totals of tracks that closed (so counters never go down).
        self._done = {"utterances": 0.0, "dropped_segments": 0.0, "finals": 0.0, "partials": 0.0}
        log.info("captions: %s backend loaded in %.2f s (%d workers, %d cores)", self.backend.name,
                 self.load_seconds, config.max_concurrent, os.cpu_count() or 1)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def open_track(
        self,
        *,
        participant_sid: str,
        track_sid: str,
        identity: str,
        on_caption: Callable[[Caption], None],
        on_status: Callable[[str, str], None] | None = None,
        language: str | None = None,
        red_pt: int | None = None,
        opus_pt: int = 111,
        clock_rate: int = 48000,
        timer: bool = True,
    ) -> TrackCaptioner:
        """A new captioner (PacketSink) for one audio track.

        `red_pt`: the track's RED payload type (`PublishedTrack.red_pt`) so RED packets
        are unwrapped and their redundancy fills losses; `timer=False` leaves calling
        `on_timer(now_ms)` to the caller (tests drive time themselves).
        Raises `CaptionsUnavailable` when the model cannot do `language`.
        """
        if self.closed:
            raise CaptionsUnavailable("captions are shut down")
        lang = language or self.config.language
        recognizer = self.backend.recognizer(lang)  # raises for a language the model lacks
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        unix_offset_s = time.time() - (loop.time() if loop is not None else time.monotonic())
        captioner = TrackCaptioner(
            backend=self.backend,
            recognizer=recognizer,
            pool=self.pool,
            participant_sid=participant_sid,
            track_sid=track_sid,
            identity=identity,
            on_caption=on_caption,
            on_status=on_status,
            loop=loop,
            red_pt=red_pt,
            opus_pt=opus_pt,
            clock_rate=clock_rate,
            unix_offset_s=unix_offset_s,
            timer=timer,
            on_closed=self._closed,
        )
        self.tracks[id(captioner)] = captioner
        return captioner

    def _closed(self, captioner: TrackCaptioner) -> None:
        if self.tracks.pop(id(captioner), None) is not None:
            for key in self._done:
                self._done[key] += getattr(captioner, key)

    async def close(self) -> None:
        """Close every track (no more captions) and stop the workers."""
        if self.closed:
            return
        for captioner in list(self.tracks.values()):
            captioner.close(flush=False)
        self.closed = True
        await asyncio.get_running_loop().run_in_executor(None, self.pool.shutdown, True)
        self.backend.close()

    def stats(self) -> dict[str, float]:
        tracks = list(self.tracks.values())
        out: dict[str, float] = {
            "active_tracks": float(len(tracks)),
            "paused_tracks": float(sum(t.paused for t in tracks)),
            "lagging_tracks": float(sum(t.lagging for t in tracks)),
            "queue_depth": float(sum(t.lane.depth for t in tracks)),
            "busy_workers": float(self.pool.busy),
            "max_workers": float(self.pool.max_workers),
            "worker_busy_seconds": self.pool.busy_seconds,
            "jobs_done": float(self.pool.jobs_done),
            "job_errors": float(self.pool.job_errors),
            "inbox_dropped": float(sum(t.inbox_dropped for t in tracks)),
        }
        for key, done in self._done.items():
            out[key] = done + sum(getattr(t, key) for t in tracks)
        return out
