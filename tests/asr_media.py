"""Speech for the caption tests and bench: espeak-ng sentences, Opus RTP packets, WER.

espeak-ng speaks known text into a WAV; sox converts it to what the test needs (16 kHz
mono for the recognizer, 48 kHz for the Opus encoder). Packets carry what the router
hands a sink: layer 0, the RTP view, the unwrapped sequence number.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
import wave

import numpy as np

from media.wire.rtp import RtpView, build_rtp, parse_rtp

from .recorder_media import encode_opus_pcm

OPUS_PT = 111


def read_wav(path: str) -> tuple[np.ndarray, int]:
    with wave.open(path) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        if w.getnchannels() > 1:
            data = data.reshape(-1, w.getnchannels()).mean(axis=1).astype(np.int16)
        return data, w.getframerate()


@functools.lru_cache(maxsize=64)
def _espeak(text: str, voice: str, rate: int, speed: int) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = os.path.join(tmp, "raw.wav"), os.path.join(tmp, "out.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", raw, text], check=True,
                       capture_output=True)
        subprocess.run(["sox", raw, "-r", str(rate), "-c", "1", "-b", "16", out], check=True,
                       capture_output=True)
        pcm, _ = read_wav(out)
        return pcm.tobytes()


def speak(text: str, *, voice: str = "en-us", rate: int = 16000, speed: int = 160) -> np.ndarray:
    """espeak-ng's `text` as int16 mono PCM at `rate` (leading/trailing silence kept)."""
    return np.frombuffer(_espeak(text, voice, rate, speed), dtype=np.int16).copy()


def silence(seconds: float, rate: int = 48000) -> np.ndarray:
    return np.zeros(int(seconds * rate), dtype=np.int16)


def white_noise(seconds: float, rate: int = 48000, level: float = 3000.0, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0, level, int(seconds * rate)), -32768, 32767).astype(np.int16)


def opus_frames(pcm48: np.ndarray, bit_rate: int = 32000) -> tuple[bytes, ...]:
    """48 kHz mono int16 -> 20 ms stereo Opus frames (padded to whole frames)."""
    pad = (-len(pcm48)) % 960
    pcm48 = np.concatenate([pcm48, np.zeros(pad, dtype=np.int16)])
    return encode_opus_pcm(pcm48, bit_rate)


def rtp_packets(frames: tuple[bytes, ...] | list[bytes], *, seq0: int = 65000,
                ts0: int = 4_294_000_000, ssrc: int = 4321) -> list[tuple[int, RtpView, int]]:
    """(frame index, RTP view, extended seq) per frame; seq and timestamp wrap on purpose."""
    out = []
    for i, payload in enumerate(frames):
        data = build_rtp(payload_type=OPUS_PT, seq=seq0 + i, timestamp=ts0 + 960 * i,
                         ssrc=ssrc, payload=payload)
        out.append((i, parse_rtp(data), seq0 + i))
    return out


_PUNCT = re.compile(r"[^\w\s']")


def normalize(text: str) -> str:
    """Lower case, punctuation stripped except the apostrophe, whitespace collapsed."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def word_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(edit distance in words, reference words) after `normalize`."""
    r, h = normalize(ref).split(), normalize(hyp).split()
    prev = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        cur = [i] + [0] * len(h)
        for j, hw in enumerate(h, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (rw != hw))
        prev = cur
    return prev[-1], len(r)


def wer(ref: str, hyp: str) -> float:
    errors, n = word_errors(ref, hyp)
    return errors / max(n, 1)


# -- driving a TrackCaptioner ------------------------------------------------------------
RED_PT = 63


def red_packets(frames: tuple[bytes, ...] | list[bytes], *, seq0: int = 65000,
                ts0: int = 4_294_000_000, ssrc: int = 4321) -> list[tuple[int, RtpView, int]]:
    """Like `rtp_packets` but each packet is RED carrying the previous frame too (Chrome)."""
    from media.wire.red import build_red

    out = []
    for i, payload in enumerate(frames):
        redundant = [(960, frames[i - 1])] if i > 0 else []
        data = build_rtp(payload_type=RED_PT, seq=seq0 + i, timestamp=ts0 + 960 * i, ssrc=ssrc,
                         payload=build_red(OPUS_PT, payload, redundant))
        out.append((i, parse_rtp(data), seq0 + i))
    return out


async def drive(sink, packets, *, loss: float = 0.0, seed: int = 1, real_time: bool = False,
                tick_frames: int = 2, t0_ms: float | None = None) -> dict[int, float]:
    """Feed `packets` (20 ms apart) to `sink`, ticking its timer every `tick_frames` frames.

    Fast by default (synthetic arrival times, as fast as the CPU goes); `real_time`
    paces them on the loop clock. Drops a seeded `loss` share. Returns the loop time
    (ms) at which each frame index was handed over, then waits until the recognizer
    queue is empty and the results were delivered.
    """
    import asyncio
    import random

    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    base = loop.time() * 1000.0 if t0_ms is None else t0_ms
    fed: dict[int, float] = {}
    now = base
    for i, view, ext in packets:
        now = base + 20.0 * i
        if real_time:
            delay = (now - loop.time() * 1000.0) / 1000.0
            if delay > 0:
                await asyncio.sleep(delay)
            now = loop.time() * 1000.0
        if rng.random() >= loss:
            sink.on_packet(0, view, ext, False, now)
        fed[i] = loop.time() * 1000.0
        if i % tick_frames == 0:
            sink.on_timer(now)
            if not real_time and i % 50 == 0:
                await asyncio.sleep(0)
    for k in range(1, 40):  # play out the jitter buffer and the hangover
        sink.on_timer(now + 20.0 * k)
        if real_time:
            await asyncio.sleep(0.02)
    await settle(sink)
    return fed


async def settle(sink, timeout: float = 60.0) -> None:
    """Wait until the sink's recognizer jobs ran and their results reached the loop."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while sink.busy and loop.time() < deadline:
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)


# -- how fast this machine runs a recognizer now ------------------------------------------
# The caption latency bounds are this machine's figures (2 cores, AMD EPYC, idle): a
# machine that computes slower gets proportionally longer bounds, so a test fails on
# added waiting (a final queued behind a partial, a lost speculative pass), not on a
# slower CPU. REFERENCE_MS is `cpu_pace_ms()` measured here.
REFERENCE_MS = 60.0


def cpu_pace_ms() -> float:
    """Median of three runs of a fixed single-threaded numeric workload (FFTs and a
    nonlinearity over frames), in ms: what one recognizer thread gets of a core."""
    import time

    a = np.random.default_rng(3).uniform(-1.0, 1.0, (64, 4096))
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(13):
            # sin(3x) keeps the values of order 1 (never denormal, whatever FTZ a loaded
            # library set), so the work is the same on every run.
            a = np.sin(3.0 * np.fft.irfft(np.fft.rfft(a, axis=1), n=4096, axis=1))
        runs.append((time.perf_counter() - started) * 1000.0)
    return sorted(runs)[1]


def slowness() -> float:
    """This machine's pace now against the reference (>= 1.0): bounds are multiplied by it."""
    pace = cpu_pace_ms()
    factor = max(1.0, pace / REFERENCE_MS)
    print("CPU_PACE", {"ms": round(pace, 1), "reference_ms": REFERENCE_MS, "slowness": round(factor, 2)})
    return factor
