"""Voice-activity segmentation of one track's 16 kHz audio into utterances (sans-I/O).

Feed 20 ms frames (320 int16 samples) with their RTP timestamps; get events back:

* ``start``: an utterance began; ``ts`` is the timestamp of its first voiced frame
  (what the caption's ``start_ms`` is made of), and ``pcm`` the padding before it
  plus the frames that triggered it (the recognizer gets some context);
* ``audio``: more of the open utterance;
* ``end``: it ended (``ts`` is the end of its last voiced frame); ``reason`` says why:
  ``"silence"`` (the hangover ran out), ``"max_length"`` (a monologue is cut into
  pieces of at most ``max_ms``, preferably at a short pause after ``soft_max_ms``) or
  ``"flush"``;
* ``drop``: it turned out not to be speech (too little voiced audio, or too small a
  share of it): the recognizer must forget it.

A frame counts as voiced when webrtcvad says speech *and* it is loud enough *and* its
spectrum is not flat (white or hiss-like noise fools webrtcvad; speech has formants).
An utterance opens when ``trigger_voiced`` of the last ``trigger_frames`` frames are
voiced and closes after ``hangover_ms`` without a voiced frame.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
import webrtcvad

__all__ = ["SegmentEvent", "Segmenter", "SegmenterConfig", "frame_features", "frame_flatness", "frame_rms"]

SAMPLE_RATE = 16000
FRAME_SAMPLES = 320  # 20 ms


@dataclass(frozen=True)
class SegmenterConfig:
    aggressiveness: int = 3  # webrtcvad 0..3
    trigger_frames: int = 10  # window that opens an utterance (200 ms)
    trigger_voiced: int = 6  # voiced frames in that window needed to open
    pad_ms: int = 200  # audio before the first voiced frame handed to the recognizer
    hangover_ms: int = 300  # silence that closes an utterance
    min_voiced_ms: int = 200  # less voiced audio than this: not speech (dropped)
    min_voiced_ratio: float = 0.25  # voiced share of the utterance below this: dropped
    soft_max_ms: int = 9000  # after this long, cut at the first unvoiced frame
    max_ms: int = 13000  # hard cut
    min_rms: float = 60.0  # int16 RMS below this is silence whatever webrtcvad says
    max_flatness: float = 0.45  # spectral flatness above this is noise, not a voice


@dataclass(frozen=True)
class SegmentEvent:
    kind: Literal["start", "audio", "end", "drop"]
    ts: int = 0  # start: first voiced frame; end: end of the last voiced frame
    pcm: np.ndarray | None = None
    reason: str = ""


def frame_rms(pcm: np.ndarray) -> float:
    x = pcm.astype(np.float32)
    return float(np.sqrt(np.dot(x, x) / max(len(x), 1)))


def frame_flatness(pcm: np.ndarray) -> float:
    """Spectral flatness (geometric / arithmetic mean of the power); ~0.56 for white noise."""
    power = np.abs(np.fft.rfft(pcm.astype(np.float32) * _WINDOW)) ** 2 + 1e-3
    return float(np.exp(np.mean(np.log(power))) / np.mean(power))


def frame_features(pcm: np.ndarray) -> tuple[float, float]:
    """(RMS, spectral flatness) of one frame (flatness 1.0 for digital silence)."""
    rms = frame_rms(pcm)
    return rms, (frame_flatness(pcm) if rms >= 1.0 else 1.0)


_WINDOW = np.hanning(FRAME_SAMPLES).astype(np.float32)


class Segmenter:
    """One track's utterance detector; see the module docstring."""

    def __init__(self, config: SegmenterConfig | None = None, *, ts_per_frame: int = 960) -> None:
        self.config = cfg = config or SegmenterConfig()
        self.ts_per_frame = ts_per_frame  # RTP ticks per 20 ms frame (48 kHz clock: 960)
        self._vad = webrtcvad.Vad(cfg.aggressiveness)
        pad_frames = max(cfg.pad_ms // 20, 0)
        self._ring: deque[tuple[np.ndarray, int, bool]] = deque(maxlen=cfg.trigger_frames + pad_frames)
        self._hangover = max(cfg.hangover_ms // 20, 1)
        self.active = False
        self._frames = 0  # frames in the open utterance
        self._voiced = 0
        self._silent_run = 0
        self._last_voiced_end = 0
        self.frames_in = 0
        self.voiced_frames = 0
        self.utterances = 0
        self.dropped = 0

    @property
    def silent_ms(self) -> int:
        """How long the open utterance has been silent (0 when not in one)."""
        return self._silent_run * 20 if self.active else 0

    @property
    def last_voiced_end(self) -> int:
        """RTP timestamp where the open utterance's last voiced frame ends."""
        return self._last_voiced_end

    def is_voiced(self, pcm: np.ndarray) -> bool:
        cfg = self.config  # cheapest test first: most frames stop at the first or second
        if frame_rms(pcm) < cfg.min_rms:
            return False
        if not self._vad.is_speech(pcm.astype(np.int16, copy=False).tobytes(), SAMPLE_RATE):
            return False
        return frame_flatness(pcm) <= cfg.max_flatness

    def feed(self, pcm: np.ndarray, ts: int) -> list[SegmentEvent]:
        """One 20 ms frame (320 int16 samples) whose first sample has RTP timestamp `ts`."""
        if len(pcm) != FRAME_SAMPLES:
            raise ValueError(f"frames are {FRAME_SAMPLES} samples (20 ms at 16 kHz), got {len(pcm)}")
        voiced = self.is_voiced(pcm)
        self.frames_in += 1
        self.voiced_frames += voiced
        if not self.active:
            return self._idle(pcm, ts, voiced)
        return self._open(pcm, ts, voiced)

    def flush(self) -> list[SegmentEvent]:
        """End the open utterance now (the track closed)."""
        if not self.active:
            return []
        return [self._close("flush")]

    # -- internals -------------------------------------------------------------------
    def _idle(self, pcm: np.ndarray, ts: int, voiced: bool) -> list[SegmentEvent]:
        cfg = self.config
        self._ring.append((pcm, ts, voiced))
        window = list(self._ring)[-cfg.trigger_frames :]
        if sum(v for _, _, v in window) < cfg.trigger_voiced:
            return []
        first = next(t for _, t, v in window if v)
        frames = list(self._ring)
        self._ring.clear()
        self.active = True
        self.utterances += 1
        self._frames = len(window)
        self._voiced = sum(v for _, _, v in window)
        self._silent_run = 0
        last_voiced_ts = max(t for _, t, v in window if v)
        self._last_voiced_end = last_voiced_ts + self.ts_per_frame
        self._start_ts = first
        return [SegmentEvent("start", ts=first, pcm=np.concatenate([f for f, _, _ in frames]))]

    def _open(self, pcm: np.ndarray, ts: int, voiced: bool) -> list[SegmentEvent]:
        cfg = self.config
        self._frames += 1
        if voiced:
            self._voiced += 1
            self._silent_run = 0
            self._last_voiced_end = ts + self.ts_per_frame
        else:
            self._silent_run += 1
        out = [SegmentEvent("audio", pcm=pcm)]
        length_ms = self._frames * 20
        if self._silent_run >= self._hangover:
            out.append(self._close("silence"))
        elif length_ms >= cfg.max_ms or (length_ms >= cfg.soft_max_ms and not voiced):
            out.append(self._close("max_length"))
        return out

    def _close(self, reason: str) -> SegmentEvent:
        cfg = self.config
        self.active = False
        voiced_ms = self._voiced * 20
        ratio = self._voiced / max(self._frames, 1)
        if voiced_ms < cfg.min_voiced_ms or ratio < cfg.min_voiced_ratio:
            self.dropped += 1
            return SegmentEvent("drop", reason="not_speech")
        return SegmentEvent("end", ts=self._last_voiced_end, reason=reason)
