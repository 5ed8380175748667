"""Vosk (Kaldi) streaming recognition: partials as audio arrives, a final per VAD segment.

Vosk endpoints on trailing silence by itself; we do not wait for that: when the
segmenter closes an utterance the recognizer is asked for `FinalResult` at once
(DESIGN §10). Text that Vosk finalized on its own mid-utterance is kept and joined.
A Vosk model folder does not say its language in a machine-readable way; its README
usually names it ("Small Korean for Vosk ..."), which is checked when present.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .api import CaptionsUnavailable
from .recognizer import clean_text

__all__ = ["VoskBackend", "VoskRecognizer", "model_language"]

SAMPLE_RATE = 16000

# Language names as Vosk model READMEs spell them -> ISO 639-1.
_LANGUAGES = {
    "english": "en", "korean": "ko", "german": "de", "french": "fr", "spanish": "es",
    "russian": "ru", "chinese": "zh", "japanese": "ja", "italian": "it", "portuguese": "pt",
    "dutch": "nl", "turkish": "tr", "vietnamese": "vi", "indian english": "en", "hindi": "hi",
    "ukrainian": "uk", "polish": "pl", "arabic": "ar", "persian": "fa", "czech": "cs",
}  # fmt: skip


def model_language(folder: Path) -> str | None:
    """The language a Vosk model's README names in its first line, if any."""
    readme = folder / "README"
    try:
        first = readme.read_text(encoding="utf-8", errors="replace").splitlines()[0].lower()
    except (OSError, IndexError):
        return None
    for name in sorted(_LANGUAGES, key=len, reverse=True):
        if name in first:
            return _LANGUAGES[name]
    return None


class VoskBackend:
    """One loaded Vosk model; each track gets its own KaldiRecognizer over it."""

    name = "vosk"
    partial_every_ms = 200
    snapshot_partials = False

    def __init__(self, model_path: str | None) -> None:
        if not model_path:
            raise CaptionsUnavailable("no Vosk model: pass --vosk-model PATH (a Vosk model directory)")
        folder = Path(model_path)
        if not folder.is_dir():
            raise CaptionsUnavailable(f"Vosk model {model_path}: no such directory")
        if not (folder / "am").is_dir() and not (folder / "final.mdl").is_file():
            raise CaptionsUnavailable(f"Vosk model {model_path} is not a Vosk model folder (no am/)")
        try:
            import vosk

            vosk.SetLogLevel(-1)
            self.model = vosk.Model(str(folder))
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CaptionsUnavailable(f"Vosk model {model_path} cannot be loaded: {reason}") from None
        self._vosk = vosk
        self.path = str(folder)
        self.language = model_language(folder)

    def check_language(self, language: str) -> None:
        if self.language is not None and language != self.language:
            raise CaptionsUnavailable(
                f"the Vosk model {self.path} is for {self.language!r}; it cannot caption {language!r}",
                code="language_unsupported",
            )

    def recognizer(self, language: str) -> VoskRecognizer:
        self.check_language(language)
        return VoskRecognizer(self._vosk.KaldiRecognizer(self.model, SAMPLE_RATE))

    def close(self) -> None:
        self.model = None


class VoskRecognizer:
    def __init__(self, rec: object) -> None:
        self.rec = rec
        self._done: list[str] = []  # text Vosk finalized itself within the utterance

    def start(self) -> None:
        self._done = []

    def feed(self, pcm: np.ndarray) -> None:
        if self.rec.AcceptWaveform(pcm.astype(np.int16).tobytes()):  # type: ignore[attr-defined]
            text = json.loads(self.rec.Result()).get("text", "")  # type: ignore[attr-defined]
            if text:
                self._done.append(text)

    def partial(self) -> str:
        text = json.loads(self.rec.PartialResult()).get("partial", "")  # type: ignore[attr-defined]
        return clean_text(" ".join([*self._done, text]))

    def partial_of(self, pcm: np.ndarray) -> str:
        raise NotImplementedError("Vosk streams: use feed() and partial()")

    def final(self, drop_tail: int = 0) -> str:
        text = json.loads(self.rec.FinalResult()).get("text", "")  # type: ignore[attr-defined]
        out = clean_text(" ".join([*self._done, text]))
        self._done = []
        return out

    def cancel(self) -> None:
        self.rec.Reset()  # type: ignore[attr-defined]
        self._done = []
