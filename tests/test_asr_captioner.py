"""The TrackCaptioner as a PacketSink on a real PublishedTrack, and its overload policy.

Packets go through `Layer.on_packet` as the router hands them over (after dedupe),
Chrome-style RED on, the sender report through the layer; the captioner runs on its own
event-loop timer. Overload uses a fake slow recognizer so the test is cheap and exact.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

import asr.track_captioner as tc
from asr.api import Caption, CaptionConfig
from asr.engine import CaptionEngine
from asr.segmenter import SegmenterConfig
from asr.worker import RecognitionPool
from media.rtp.ntp import ntp_from_unix

from .asr_media import drive, opus_frames, red_packets, rtp_packets, silence, speak, wer
from .test_routing import audio_track

TS0 = 4_294_000_000


class _Feeder:
    """`drive` target that hands packets to the track's layer (the router's path)."""

    def __init__(self, track, captioner) -> None:
        self.track, self.captioner = track, captioner
        self.lane = captioner.lane

    def on_packet(self, layer, view, ext_seq, keyframe, now_ms) -> None:
        self.track.layers[0].on_packet(view, now_ms, False)

    def on_timer(self, now_ms: float) -> None:
        pass  # the captioner's own timer runs

    @property
    def busy(self) -> bool:
        return self.captioner.busy


async def test_captioner_on_a_published_red_track_with_its_own_timer() -> None:
    engine = CaptionEngine(CaptionConfig(backend="whisper", max_concurrent=1))
    try:
        track, _ = audio_track(red_pt=63)
        got: list[Caption] = []
        sink = engine.open_track(participant_sid=track.participant_sid, track_sid=track.sid,
                                 identity="bob", on_caption=got.append, red_pt=track.red_pt)
        track.add_sink(sink)
        assert track.sink_layer == 0
        text = "Please open the window before the meeting starts."
        speech = speak(text, rate=48000)
        pcm = np.concatenate([silence(0.4), speech, silence(0.8)])
        unix0 = time.time()
        track.layers[0].on_sender_report(ntp_from_unix(unix0), TS0, asyncio.get_running_loop().time() * 1000)
        fed = await drive(_Feeder(track, sink), red_packets(opus_frames(pcm), ts0=TS0, ssrc=2001),
                          real_time=True)
        for _ in range(100):
            if any(c.final for c in got):
                break
            await asyncio.sleep(0.05)
        track.close()  # on_track_closed -> the captioner closes
        assert sink.closed
        finals = [c for c in got if c.final]
        assert len(finals) == 1 and wer(text, finals[0].text) <= 0.2, got
        lead = int(np.argmax(np.abs(speech) > 300))
        began = (unix0 + (int(0.4 * 48000) + lead) / 48000) * 1000
        assert abs(finals[0].start_ms - began) <= 300
        assert engine.stats()["finals"] == 1 and engine.stats()["active_tracks"] == 0
        assert len(fed) == -(-len(pcm) // 960)
    finally:
        await engine.close()


class _SlowRecognizer:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.fed = 0

    def start(self) -> None:
        self.fed = 0

    def feed(self, pcm: np.ndarray) -> None:
        self.fed += len(pcm)

    def partial(self) -> str:
        return ""

    def partial_of(self, pcm: np.ndarray) -> str:
        return ""

    def final(self, drop_tail: int = 0) -> str:
        time.sleep(self.delay)
        return f"{self.fed} samples"

    def cancel(self) -> None:
        self.fed = 0


class _SlowBackend:
    name = "slow"
    partial_every_ms = 1000
    snapshot_partials = False

    def check_language(self, language: str) -> None:
        pass

    def close(self) -> None:
        pass


async def test_overload_lags_then_pauses_then_resumes_and_packets_never_wait(monkeypatch) -> None:
    monkeypatch.setattr(tc, "LAG_S", 0.2)
    monkeypatch.setattr(tc, "PAUSE_S", 0.5)
    pool = RecognitionPool(1)
    statuses: list[str] = []
    got: list[Caption] = []
    sink = tc.TrackCaptioner(
        backend=_SlowBackend(), recognizer=_SlowRecognizer(0.5), pool=pool,
        participant_sid="PA", track_sid="TR", identity="x", on_caption=got.append,
        on_status=lambda sid, s: statuses.append(s), loop=asyncio.get_running_loop(),
        unix_offset_s=0.0, timer=False, segmenter=SegmenterConfig(hangover_ms=200),
    )
    word = speak("hello there", rate=48000)
    pcm = np.concatenate([np.concatenate([word, silence(0.5)]) for _ in range(12)])
    packets = rtp_packets(opus_frames(pcm))
    worst = 0.0
    for i, view, ext in packets:  # 12 utterances arrive 10x faster than real time
        t = time.perf_counter()
        sink.on_packet(0, view, ext, False, 20.0 * i)
        worst = max(worst, time.perf_counter() - t)
        if i % 2 == 0:
            sink.on_timer(20.0 * i)
            await asyncio.sleep(0.004)
    while sink.lane.depth or sink.lane.running:
        await asyncio.sleep(0.05)
    sink.on_timer(20.0 * len(packets) + 1000)
    await asyncio.sleep(0.05)
    # Lagging first (it may clear and come back), then paused, and resumed once drained.
    assert statuses[0] == "lagging" and "paused" in statuses, statuses
    assert statuses[-1] == "resumed" and statuses.count("paused") >= 1
    assert sink.dropped_segments > 0
    assert 0 < len([c for c in got if c.final]) < 12
    assert worst < 0.005  # on_packet only copies
    sink.close(flush=False)
    pool.shutdown()


@pytest.mark.parametrize("flush", [True, False])
async def test_close_flushes_the_open_utterance_or_not(flush: bool) -> None:
    pool = RecognitionPool(1)
    got: list[Caption] = []
    sink = tc.TrackCaptioner(
        backend=_SlowBackend(), recognizer=_SlowRecognizer(0.0), pool=pool,
        participant_sid="PA", track_sid="TR", identity="x", on_caption=got.append,
        loop=asyncio.get_running_loop(), unix_offset_s=0.0, timer=False,
    )
    pcm = speak("good morning everyone", rate=48000)  # no trailing silence: still open
    for i, view, ext in rtp_packets(opus_frames(pcm[: len(pcm) * 9 // 10])):
        sink.on_packet(0, view, ext, False, 20.0 * i)
        sink.on_timer(20.0 * i)
    assert sink.segmenter.active
    sink.close(flush=flush)
    sink.on_packet(0, view, ext + 1, False, 0.0)  # after close: ignored
    await asyncio.sleep(0.3)
    assert len(got) == (1 if flush else 0)
    pool.shutdown()


async def test_a_long_mute_does_not_replay_the_gap_and_speech_after_it_is_captioned() -> None:
    pool = RecognitionPool(1)
    got: list[Caption] = []
    sink = tc.TrackCaptioner(
        backend=_SlowBackend(), recognizer=_SlowRecognizer(0.0), pool=pool,
        participant_sid="PA", track_sid="TR", identity="x", on_caption=got.append,
        loop=asyncio.get_running_loop(), unix_offset_s=0.0, timer=False,
    )
    pcm = np.concatenate([silence(0.3), speak("good morning everyone", rate=48000), silence(1.0)])
    frames = opus_frames(pcm)
    packets = rtp_packets(frames)
    gap = 3000  # 60 s of nothing: the publisher muted (timestamps and clock moved on)
    later = rtp_packets(frames, seq0=65000 + len(frames), ts0=TS0 + 960 * (len(frames) + gap))
    await drive(sink, packets, t0_ms=0.0)
    before = sink.frames
    await drive(sink, later, t0_ms=20.0 * (len(frames) + gap))
    assert sink.frames - before < len(frames) + 100  # the 3000 muted slots were not rendered
    assert [c.seq for c in got if c.final] == [1, 2]
    sink.close(flush=False)
    pool.shutdown()
