"""The captions contract: what the server (signaling/captions.py) codes against.

* `CaptionConfig` picks a backend and its model; `CaptionEngine(config)` (asr.engine)
  raises `CaptionsUnavailable` with one clear line when it cannot caption.
* `Caption` is one result for one utterance of one track. `seq` numbers the track's
  utterances (1, 2, ...): the partials of an utterance and its final share its `seq`,
  so a final replaces the partials with the same `(track_sid, seq)`; `seq` never goes
  down on a track. A final with empty `text` only comes after partials of that
  utterance were sent (it retracts them: the audio turned out not to be speech);
  an utterance with no partial and no text sends nothing.
* `start_ms`/`end_ms` are Unix milliseconds of the utterance's first and last voiced
  audio, from RTP timestamps mapped through the publisher's RTCP sender reports (until
  the first sender report: through the packets' arrival times).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BACKENDS", "Caption", "CaptionConfig", "CaptionsUnavailable"]

BACKENDS = ("whisper", "vosk")


@dataclass(frozen=True)
class Caption:
    """One caption event of one track (see the module docstring for `seq` and timing)."""

    participant_sid: str
    track_sid: str
    identity: str
    text: str
    final: bool
    start_ms: int
    end_ms: int
    seq: int

    def to_event(self) -> dict[str, object]:
        """The `caption` event body: exactly these 8 fields (no `type`)."""
        return {
            "participant_sid": self.participant_sid,
            "track_sid": self.track_sid,
            "identity": self.identity,
            "text": self.text,
            "final": self.final,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "seq": self.seq,
        }


class CaptionsUnavailable(Exception):
    """Captions cannot run as configured; `message` is one line for a person."""

    def __init__(self, message: str, code: str = "captions_unavailable") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class CaptionConfig:
    """Which recognizer to run and where its model is."""

    backend: str  # "whisper" | "vosk"
    whisper_model: str | None = None  # a CTranslate2 Whisper model folder; None = bundled tiny.en
    vosk_model: str | None = None  # a Vosk model folder; None = vosk is unavailable
    language: str = "en"  # the default language of every track
    max_concurrent: int = 4  # recognizers running at once (worker threads)
