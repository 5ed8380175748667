"""A stand-in caption engine with the `asr.engine.CaptionEngine` interface, for the
server-side tests of captions (protocol, transcripts, REST, metrics) that need no speech.

Its captioners count a track's real RTP packets and say one utterance per second of
audio: a partial after 0.5 s, then the final `"utterance N"`, timed by the wall clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from asr.api import Caption, CaptionConfig, CaptionsUnavailable

PACKETS_PER_UTTERANCE = 50  # 20 ms Opus packets: one second


class FakeCaptioner:
    wanted_layer = 0

    def __init__(self, engine: FakeEngine, on_caption: Callable[[Caption], None], **who: Any) -> None:
        self.engine = engine
        self.on_caption = on_caption
        self.on_status = who.pop("on_status", None)
        self.language = who.pop("language", None)
        self.participant_sid, self.track_sid, self.identity = who["participant_sid"], who["track_sid"], who["identity"]
        self.packets = 0
        self.seq = 0
        self.started_ms = 0
        self.closed = False
        self.track_closed = False
        self.loop = asyncio.get_running_loop()

    def on_packet(self, layer: int, view: Any, ext_seq: int, keyframe: bool, now_ms: float) -> None:
        if self.closed:
            return
        self.packets += 1
        step = self.packets % PACKETS_PER_UTTERANCE
        if step == 1:
            self.seq += 1
            self.started_ms = int(time.time() * 1000)
        elif step == PACKETS_PER_UTTERANCE // 2:
            self._say(False)
            if self.on_status is not None and self.seq == 2:
                self.loop.call_soon(self.on_status, self.track_sid, "lagging")
        elif step == 0:
            self._say(True)

    def _say(self, final: bool) -> None:
        text = f"utterance {self.seq}" if final else "utter"
        caption = Caption(
            participant_sid=self.participant_sid,
            track_sid=self.track_sid,
            identity=self.identity,
            text=text,
            final=final,
            start_ms=self.started_ms,
            end_ms=int(time.time() * 1000) - 20,
            seq=self.seq,
        )
        self.loop.call_soon(self.on_caption, caption)  # results come later, on the loop

    def on_sender_report(self, layer: int, ntp: int, rtp_timestamp: int, now_ms: float) -> None:
        pass

    def on_track_closed(self) -> None:
        self.track_closed = True

    def close(self, flush: bool = True) -> None:
        self.closed = True


class FakeEngine:
    """`CaptionEngine(config)`; `instances` collects every engine made, `fail` makes the
    next ones raise `CaptionsUnavailable` like an engine without a model."""

    instances: list[FakeEngine] = []
    fail: str | None = None

    def __init__(self, config: CaptionConfig) -> None:
        if FakeEngine.fail is not None:
            raise CaptionsUnavailable(FakeEngine.fail)
        self.config = config
        self.captioners: list[FakeCaptioner] = []
        self.closed = False
        FakeEngine.instances.append(self)

    def open_track(self, *, on_caption: Callable[[Caption], None], **who: Any) -> FakeCaptioner:
        if who.get("language") not in (None, "en", "ko"):
            raise CaptionsUnavailable(f"the fake model has no language {who.get('language')!r}")
        for extra in ("red_pt", "opus_pt", "clock_rate"):
            who.pop(extra, None)
        captioner = FakeCaptioner(self, on_caption, **who)
        self.captioners.append(captioner)
        return captioner

    async def close(self) -> None:
        self.closed = True

    def stats(self) -> dict[str, float]:
        return {"active_tracks": float(sum(not c.closed for c in self.captioners))}
