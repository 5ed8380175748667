"""Benchmark: speech quality of Ferry's audio decode path under loss.

A real speech clip (16 kHz, ../shared/data/speech/wav) is resampled to 48 kHz,
Opus-encoded (VOIP, 20 ms, 32 kbit/s, in-band FEC with packet_loss_perc 20),
packetized (seq and timestamp start near their wrap), sent through a seeded
netem ``Link`` and decoded by ``AudioDecodePath`` in four modes:

* ``silence``      - missing frames become zeros (no concealment, the baseline);
* ``plc``          - Opus packet-loss concealment;
* ``plc+fec``      - in-band FEC from the next packet, else PLC;
* ``plc+fec+red``  - the same, with packets sent as RFC 2198 RED (``RedEncoder``).

Every mode sees exactly the same drops (same link seed; the link has no rate
stage, so packet size does not change the draws). Output frames are placed by
RTP timestamp (frames inserted to grow the delay are left out, frames dropped to
shrink it stay silent), resampled to 16 kHz and scored against the decode of the
lossless stream: PESQ wide-band (``pesq``) and STOI (``pystoi``), averaged over
clips. Prints a markdown table, then one JSON object (also written to --json).

Run: python bench/audio_loss.py [--clips h01,h04,h16,h21] [--seeds 2] [--jitter-ms 0]
Needs: pip install pesq pystoi scipy
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from media.audio.decode_path import AudioDecodePath, Mode  # noqa: E402
from media.audio.opus_decoder import OpusDecoder, opuslib, set_encoder_ctl  # noqa: E402
from media.audio.red_encoder import RedEncoder  # noqa: E402
from netem.link import Link, LinkConfig  # noqa: E402

RATE = 48000
FRAME = 960  # 20 ms at 48 kHz
OPUS_PT = 111
SEQ0 = 65_500  # start near the wraps so every run crosses them
TS0 = (1 << 32) - 20 * FRAME

PROFILES: dict[str, str] = {
    "random 5%": "loss 5%",
    "random 10%": "loss 10%",
    "random 20%": "loss 20%",
    "random 30%": "loss 30%",
    "GE bursts ~9% (p 4% r 40%)": "loss gemodel 4% 40%",
    "GE bursts ~20% (p 10% r 40%)": "loss gemodel 10% 40%",
}
MODES = ("silence", "plc", "plc+fec", "plc+fec+red")
DEFAULT_CLIPS = ("h01", "h04", "h16", "h21")


def speech_dir() -> Path:
    """The shared speech clips (never copied into the repo)."""
    for cand in (
        Path("/work/shared/data/speech/wav"),
        Path(__file__).resolve().parents[1].parent / "shared" / "data" / "speech" / "wav",
    ):
        if cand.is_dir():
            return cand
    raise FileNotFoundError("speech clips not found (../shared/data/speech/wav)")


def load_clip(name: str) -> np.ndarray:
    """A 16 kHz mono int16 clip as float64 in [-1, 1)."""
    with wave.open(str(speech_dir() / f"{name}.wav"), "rb") as w:
        if w.getframerate() != 16000 or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise ValueError(f"{name}: expected 16 kHz mono 16-bit")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return data.astype(np.float64) / 32768.0


def to_48k(x16: np.ndarray) -> np.ndarray:
    from scipy.signal import resample_poly

    return resample_poly(x16, 3, 1)


def to_16k(x48: np.ndarray) -> np.ndarray:
    from scipy.signal import resample_poly

    return resample_poly(x48.astype(np.float64) / 32768.0, 1, 3)


def encode_opus(x48: np.ndarray, *, bitrate: int = 32000, loss_perc: int = 20) -> list[bytes]:
    """20 ms Opus packets, VOIP application, in-band FEC on."""
    enc = opuslib.Encoder(RATE, 1, "voip")
    enc.bitrate = bitrate
    set_encoder_ctl(enc, "set_inband_fec", 1)
    set_encoder_ctl(enc, "set_packet_loss_perc", loss_perc)
    pcm = np.clip(np.round(x48 * 32767.0), -32768, 32767).astype(np.int16)
    pad = (-len(pcm)) % FRAME
    pcm = np.concatenate([pcm, np.zeros(pad + FRAME, dtype=np.int16)])  # flush lookahead
    return [enc.encode(pcm[i : i + FRAME].tobytes(), FRAME) for i in range(0, len(pcm), FRAME)]


def decode_clean(packets: list[bytes]) -> np.ndarray:
    """The lossless reference: every packet decoded in order (48 kHz int16)."""
    dec = OpusDecoder(RATE, 1)
    return np.concatenate([dec.decode(p) for p in packets])


@dataclass
class RunResult:
    pcm48: np.ndarray  # output placed by timestamp, same length as the reference
    counters: dict[str, float]


def simulate(
    packets: list[bytes], spec: str, mode: str, *, seed: int, red_distance: int = 1
) -> RunResult:
    """Send ``packets`` every 20 ms through a seeded link and decode them."""
    path_mode: Mode = "plc+fec" if mode == "plc+fec+red" else mode  # type: ignore[assignment]
    path = AudioDecodePath(mode=path_mode)
    link = Link(LinkConfig.parse(f"{spec} seed {seed}"))
    red = RedEncoder(distance=red_distance, opus_pt=OPUS_PT) if mode == "plc+fec+red" else None
    n = len(packets)
    out = np.zeros(n * FRAME, dtype=np.int16)
    last_ts = (TS0 + (n - 1) * FRAME) & 0xFFFFFFFF
    i = 0
    done = False
    while not done:
        cands = [d for d in (link.next_deadline(), path.next_deadline()) if d is not None]
        if i < n:
            cands.append(i * 20.0)
        if not cands:
            break
        now = min(cands)
        if i < n and i * 20.0 <= now:
            ts = (TS0 + i * FRAME) & 0xFFFFFFFF
            data = red.encode(ts, packets[i]) if red is not None else packets[i]
            link.push(data, now, meta=((SEQ0 + i) & 0xFFFF, ts))
            i += 1
            continue
        for data, (seq, ts) in link.pop_ready_items(now):
            if red is not None:
                path.put_red(seq, ts, data, now, OPUS_PT)
            else:
                path.put(seq, ts, data, now)
        for frame in path.pull_frames(now):
            if frame.timestamp is None:
                continue  # stretch frame: audio that belongs to no timestamp
            wire_ts = frame.timestamp & 0xFFFFFFFF
            idx = ((wire_ts - TS0) & 0xFFFFFFFF) // FRAME
            if idx < n:
                out[idx * FRAME : (idx + 1) * FRAME] = frame.pcm
            if wire_ts == last_ts:
                done = True
        if i >= n and link.held == 0 and now > n * 20.0 + 2000:
            break
    counters = path.counters()
    counters["link_sent"] = link.stats.sent
    counters["link_dropped"] = link.stats.dropped_loss
    return RunResult(out, counters)


def score(ref16: np.ndarray, deg16: np.ndarray) -> tuple[float, float]:
    """(PESQ wb, STOI); NaN PESQ when pesq finds no utterance."""
    from pesq import pesq
    from pystoi import stoi

    m = min(len(ref16), len(deg16))
    ref, deg = ref16[:m], deg16[:m]
    try:
        p = float(pesq(16000, ref, deg, "wb"))
    except Exception:  # pesq raises its own NoUtterancesError / BufferTooShortError
        p = math.nan
    return p, float(stoi(ref, deg, 16000, extended=False))


def run_clip(
    name: str, profiles: dict[str, str], modes: tuple[str, ...], *, seed: int, red_distance: int
) -> dict[str, dict[str, dict[str, float]]]:
    """{profile: {mode: {pesq, stoi, residual_loss, ...}}} for one clip."""
    packets = encode_opus(to_48k(load_clip(name)))
    ref16 = to_16k(decode_clean(packets))
    res: dict[str, dict[str, dict[str, float]]] = {}
    for prof, spec in profiles.items():
        res[prof] = {}
        for mode in modes:
            run = simulate(packets, spec, mode, seed=seed, red_distance=red_distance)
            p, s = score(ref16, to_16k(run.pcm48))
            c = run.counters
            frames = max(1, len(packets))
            res[prof][mode] = {
                "pesq": p,
                "stoi": s,
                "network_loss": c["link_dropped"] / max(1, c["link_sent"]),
                "residual_loss": c["jb_lost"] / frames,  # after the buffer (RED fills holes)
                "concealed_frames": c["frames_concealed"] + c["silence_inserted"],
                "fec_frames": c["frames_fec_recovered"],
                "red_frames": c["frames_red_recovered"],
            }
    return res


def _mean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def aggregate(per_run: list[dict[str, dict[str, dict[str, float]]]]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for prof in per_run[0]:
        out[prof] = {}
        for mode in per_run[0][prof]:
            keys = per_run[0][prof][mode].keys()
            out[prof][mode] = {k: _mean([r[prof][mode][k] for r in per_run]) for k in keys}
    return out


def markdown(table: dict[str, dict[str, dict[str, float]]], modes: tuple[str, ...]) -> str:
    head = "| loss profile | " + " | ".join(f"{m} PESQ / STOI" for m in modes) + " |"
    sep = "| --- |" + " --- |" * len(modes)
    rows = [head, sep]
    for prof, by_mode in table.items():
        cells = [f"{by_mode[m]['pesq']:.2f} / {by_mode[m]['stoi']:.3f}" for m in modes]
        rows.append(f"| {prof} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, object]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", default=",".join(DEFAULT_CLIPS))
    ap.add_argument("--seeds", type=int, default=2, help="link seeds per clip")
    ap.add_argument("--jitter-ms", type=float, default=0.0, help="add delay 40ms +-J jitter")
    ap.add_argument("--red-distance", type=int, default=1, choices=(1, 2))
    ap.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    delay = f"delay 40ms {args.jitter_ms:g}ms" if args.jitter_ms else "delay 40ms"
    profiles = {k: f"{delay} {v}" for k, v in PROFILES.items()}
    clips = [c.strip() for c in args.clips.split(",") if c.strip()]
    runs = [
        run_clip(c, profiles, MODES, seed=1000 * k + j + 1, red_distance=args.red_distance)
        for j, c in enumerate(clips)
        for k in range(args.seeds)
    ]
    table = aggregate(runs)
    result: dict[str, object] = {
        "bench": "audio_loss",
        "clips": clips,
        "seeds_per_clip": args.seeds,
        "link": delay,
        "opus": {"bitrate": 32000, "frame_ms": 20, "inband_fec": True, "packet_loss_perc": 20},
        "red_distance": args.red_distance,
        "profiles": profiles,
        "results": table,
        "elapsed_s": round(time.perf_counter() - t0, 1),
    }
    log(markdown(table, MODES))
    text = json.dumps(result, indent=2, allow_nan=True)
    log(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
