"""The caption segmenter and RTP clock: sans-I/O, driven by timestamps (the fake clock)."""

from __future__ import annotations

import numpy as np
import pytest

from asr.clock import RtpWallClock
from asr.segmenter import Segmenter, SegmenterConfig, frame_features
from media.rtp.ntp import ntp_from_unix, ntp_to_unix

from .asr_media import silence, speak, white_noise

TS0 = 4_294_960_000  # wraps within the first seconds


def run(seg: Segmenter, pcm: np.ndarray, ts0: int = TS0) -> list[tuple[str, int, str, int]]:
    """Feed 16 kHz `pcm` in 20 ms frames; (kind, ts, reason, frame index) per event."""
    out = []
    for i in range(len(pcm) // 320):
        for ev in seg.feed(pcm[i * 320 : (i + 1) * 320], (ts0 + 960 * i) % (1 << 32)):
            out.append((ev.kind, ev.ts, ev.reason, i))
    return out


def onset_frame(pcm: np.ndarray, threshold: float = 300.0) -> int:
    """First 20 ms frame whose RMS passes `threshold` (where the speech starts)."""
    for i in range(len(pcm) // 320):
        x = pcm[i * 320 : (i + 1) * 320].astype(np.float64)
        if np.sqrt(np.mean(x * x)) > threshold:
            return i
    raise AssertionError("no speech")


def test_one_sentence_is_one_utterance_starting_where_the_voice_starts() -> None:
    speech = speak("Please open the window before the meeting starts.")
    pcm = np.concatenate([silence(1.0, 16000), speech, silence(1.5, 16000)])
    events = run(Segmenter(), pcm)
    kinds = [k for k, *_ in events if k != "audio"]
    assert kinds == ["start", "end"], kinds
    start = next(e for e in events if e[0] == "start")
    onset = 50 + onset_frame(speech)
    started = ((start[1] - TS0) % (1 << 32)) // 960
    assert abs(started - onset) <= 5, (started, onset)  # within 100 ms
    end = next(e for e in events if e[0] == "end")
    assert end[2] == "silence"
    # The end is declared one hangover (300 ms) after the last voiced frame.
    last_voiced = ((end[1] - TS0) % (1 << 32)) // 960
    assert end[3] - last_voiced == pytest.approx(15, abs=2)


def test_two_sentences_with_a_pause_are_two_utterances() -> None:
    a, b = speak("Good morning everyone."), speak("Let us begin the lesson.")
    pcm = np.concatenate([silence(0.5, 16000), a, silence(1.0, 16000), b, silence(1.0, 16000)])
    kinds = [k for k, *_ in run(Segmenter(), pcm) if k != "audio"]
    assert kinds == ["start", "end", "start", "end"]


def test_a_monologue_is_cut_into_pieces_no_longer_than_max() -> None:
    cfg = SegmenterConfig(soft_max_ms=3000, max_ms=5000)
    text = "one two three four five six seven eight nine ten " * 3
    pcm = np.concatenate([speak(text, speed=200), silence(1.0, 16000)])
    events = run(Segmenter(cfg), pcm)
    starts = [e[3] for e in events if e[0] == "start"]
    ends = [(e[3], e[2]) for e in events if e[0] in ("end", "drop")]
    assert len(starts) >= 3
    assert any(reason == "max_length" for _, reason in ends)
    for s, (e, _) in zip(starts, ends, strict=False):
        assert (e - s) * 20 <= cfg.max_ms + 20


@pytest.mark.parametrize("name", ["silence", "white_noise", "loud_white_noise", "hum"])
def test_no_utterance_from_silence_or_noise(name: str) -> None:
    n = 16000 * 30
    if name == "silence":
        pcm = silence(30, 16000)
    elif name == "white_noise":
        pcm = white_noise(30, 16000, level=2000)
    elif name == "loud_white_noise":
        pcm = white_noise(30, 16000, level=12000)
    else:  # 50 Hz mains hum, quiet
        pcm = (np.sin(2 * np.pi * 50 * np.arange(n) / 16000) * 200).astype(np.int16)
    seg = Segmenter()
    events = run(seg, pcm)
    assert [e for e in events if e[0] in ("start", "end")] == []


def test_clipped_speech_still_segments() -> None:
    speech = speak("Can everyone hear me clearly now?").astype(np.int32) * 8
    clipped = np.clip(speech, -32768, 32767).astype(np.int16)
    assert np.mean(np.abs(clipped) == 32767) > 0.01  # really clipped
    pcm = np.concatenate([silence(0.5, 16000), clipped, silence(1.0, 16000)])
    kinds = [k for k, *_ in run(Segmenter(), pcm) if k != "audio"]
    assert kinds == ["start", "end"]


def test_short_click_is_dropped_not_captioned() -> None:
    seg = Segmenter(SegmenterConfig(min_voiced_ms=400))
    burst = speak("hi")[:16000 * 3 // 10]  # 300 ms of voice
    pcm = np.concatenate([silence(0.5, 16000), burst, silence(1.0, 16000)])
    kinds = [k for k, *_ in run(seg, pcm) if k != "audio"]
    assert "end" not in kinds


def test_flatness_separates_voice_from_white_noise() -> None:
    voice = speak("Good morning everyone.")
    frames = [voice[i : i + 320] for i in range(0, len(voice) - 320, 320)]
    loud = [f for f in frames if frame_features(f)[0] > 1000]
    assert np.median([frame_features(f)[1] for f in loud]) < 0.2
    noise = white_noise(1, 16000, level=3000)
    assert frame_features(noise[:320])[1] > 0.45


def test_wrong_frame_size_is_refused() -> None:
    with pytest.raises(ValueError, match="320 samples"):
        Segmenter().feed(np.zeros(160, dtype=np.int16), 0)


# -- RtpWallClock ----------------------------------------------------------------------
def test_clock_maps_through_the_sender_report_across_a_wrap() -> None:
    clock = RtpWallClock(48000)
    unix = 1_800_000_000.25
    clock.on_sender_report(ntp_from_unix(unix), (1 << 32) - 48000)  # 1 s before the wrap
    assert clock.source == "rtcp"
    assert clock.to_unix((1 << 32) - 48000) == pytest.approx(unix, abs=1e-6)
    assert clock.to_unix(48000) == pytest.approx(unix + 2.0, abs=1e-6)  # after the wrap
    assert clock.to_unix_ms(0) == round((unix + 1.0) * 1000)
    assert ntp_to_unix(ntp_from_unix(unix)) == pytest.approx(unix, abs=1e-6)


def test_clock_falls_back_to_the_least_delayed_arrival_until_a_report() -> None:
    clock = RtpWallClock(48000)
    assert clock.to_unix(0) is None and clock.source is None
    clock.on_arrival(1000, 100.080)  # 80 ms late
    clock.on_arrival(1000 + 960, 100.040)  # 20 ms after: 20 ms late, the better anchor
    clock.on_arrival(1000 + 1920, 100.300)  # very late: ignored
    assert clock.source == "arrival"
    assert clock.to_unix(1000) == pytest.approx(100.020, abs=1e-9)
    clock.on_sender_report(ntp_from_unix(200.0), 1000)
    assert clock.to_unix(1000 + 4800) == pytest.approx(200.1)
