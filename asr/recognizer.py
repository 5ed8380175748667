"""The one small interface between the captioner and a speech engine.

A `Backend` holds a loaded model (shared by every track, safe to use from several
worker threads at once) and makes one `Recognizer` per track. A recognizer hears one
utterance at a time: `start()`, then `feed()` 16 kHz mono int16 PCM as it comes,
`partial()` for the text so far (may be expensive: the caller decides how often) and
`final()` for the utterance's text, after which it is ready for the next `start()`.
`cancel()` forgets the utterance (the segmenter decided it was not speech). All calls
of one recognizer come from one worker at a time, in order; they may block.

A segment-based backend (Whisper: every pass reads the whole utterance again) sets
`snapshot_partials`: its partials are `partial_of(pcm)` on a copy of the audio so far,
run beside the track's queue and only when the pool is quiet, so a partial in progress
never delays the final (which would otherwise wait behind it), and a partial that
comes back after its final is dropped.
"""

from __future__ import annotations

import re
from typing import Protocol

import numpy as np

__all__ = ["Backend", "Recognizer", "clean_text"]


class Recognizer(Protocol):
    def start(self) -> None: ...

    def feed(self, pcm: np.ndarray) -> None: ...

    def partial(self) -> str: ...

    # `drop_tail`: samples of trailing silence to leave out, where the backend can (a
    # segment backend transcribes the whole utterance at once; a streaming one cannot).
    def final(self, drop_tail: int = 0) -> str: ...

    def cancel(self) -> None: ...

    # Only for a backend with `snapshot_partials`: thread-safe, independent of the above.
    def partial_of(self, pcm: np.ndarray) -> str: ...


class Backend(Protocol):
    name: str
    # How often the captioner asks for a partial while an utterance grows (ms of
    # audio), and whether partials are snapshot passes (see the module docstring).
    partial_every_ms: int
    snapshot_partials: bool

    def check_language(self, language: str) -> None:
        """Raise `CaptionsUnavailable` if the model cannot caption `language`."""
        ...

    def recognizer(self, language: str) -> Recognizer: ...

    def close(self) -> None: ...


_NON_SPEECH = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*|[♪♫]+")
_SPACES = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Drop non-speech annotations ("[BLANK_AUDIO]", "(music)", "♪") and extra spaces."""
    text = _NON_SPEECH.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    if not any(ch.isalnum() for ch in text):
        return ""
    return text
