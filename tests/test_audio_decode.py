"""AudioDecodePath: FEC from the next packet, PLC, silence baseline, RED, quality on real speech."""

from __future__ import annotations

import importlib.util
import math
from functools import cache

import numpy as np
import pytest

from media.audio.decode_path import AudioDecodePath, DecodedFrame
from media.audio.opus_decoder import OpusDecoder, packet_has_fec
from media.audio.red_encoder import RedEncoder
from media.wire.red import parse_red

FRAME = 960
SPEECH_CLIP = "h16"  # 5.4 s of read speech (LibriSpeech)


def _have_speech() -> bool:
    try:
        from bench.audio_loss import speech_dir

        speech_dir()
    except (FileNotFoundError, ImportError):
        return False
    return importlib.util.find_spec("scipy") is not None


needs_speech = pytest.mark.skipif(
    not _have_speech(), reason="needs ../shared/data/speech/wav and scipy (pip install scipy)"
)


@cache
def speech_packets() -> tuple[bytes, ...]:
    from bench.audio_loss import encode_opus, load_clip, to_48k

    return tuple(encode_opus(to_48k(load_clip(SPEECH_CLIP))))


def run_path(
    packets: list[bytes] | tuple[bytes, ...],
    drop: set[int],
    mode: str,
    *,
    red: RedEncoder | None = None,
    min_delay_ms: float = 20.0,
) -> tuple[AudioDecodePath, list[DecodedFrame]]:
    """Send packets every 20 ms (arrival = send + 30 ms) minus ``drop``; pull as time goes."""
    path = AudioDecodePath(mode=mode, min_delay_ms=min_delay_ms)  # type: ignore[arg-type]
    frames: list[DecodedFrame] = []
    n = len(packets)
    for i in range(n):
        ts = (1234 + i * FRAME) & 0xFFFFFFFF
        data = red.encode(ts, packets[i]) if red is not None else packets[i]
        now = 20.0 * i + 30.0
        if i not in drop:
            if red is not None:
                path.put_red(7 + i, ts, data, now)
            else:
                path.put(7 + i, ts, data, now)
        frames.extend(path.pull_frames(now))
    frames.extend(path.pull_frames(20.0 * n + 30.0))
    return path, frames


def by_ts(frames: list[DecodedFrame]) -> list[DecodedFrame]:
    return [f for f in frames if f.timestamp is not None]


@cache
def clean_frames() -> tuple[np.ndarray, ...]:
    dec = OpusDecoder()
    return tuple(dec.decode(p) for p in speech_packets())


def first_fec_gap(packets: tuple[bytes, ...]) -> int:
    """The loudest frame k whose next two packets carry in-band FEC (voiced speech)."""
    clean = clean_frames()
    ks = [k for k in range(10, len(packets) - 3)
          if packet_has_fec(packets[k + 1]) and packet_has_fec(packets[k + 2])]
    assert ks, "no packet with in-band FEC in the clip"
    return max(ks, key=lambda k: rms(clean[k]))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


# ---------------------------------------------------------------- decoder unit


def test_opus_decoder_decode_fec_and_conceal_shapes() -> None:
    from media.audio.opus_decoder import opuslib, set_encoder_ctl

    enc = opuslib.Encoder(48000, 2, "voip")
    set_encoder_ctl(enc, "set_inband_fec", 1)
    set_encoder_ctl(enc, "set_packet_loss_perc", 20)
    t = np.arange(FRAME * 10) / 48000
    tone = (6000 * np.sin(2 * np.pi * 200 * t)).astype(np.int16)
    stereo = np.repeat(tone, 2)
    pkts = [enc.encode(stereo[i * 2 * FRAME : (i + 1) * 2 * FRAME].tobytes(), FRAME) for i in range(10)]
    dec = OpusDecoder(48000, 2)
    assert dec.decode(pkts[0]).shape == (FRAME, 2)
    assert dec.conceal(FRAME).shape == (FRAME, 2)
    assert dec.decode_fec(pkts[2], FRAME).shape == (FRAME, 2)
    mono = OpusDecoder(16000, 1)
    assert mono.decode(pkts[3]).shape == (320,)
    assert mono.conceal(320).dtype == np.int16
    with pytest.raises(ValueError):
        OpusDecoder(44100, 1)
    with pytest.raises(ValueError):
        dec.decode(b"")


def test_packet_has_fec_follows_the_encoder_setting() -> None:
    from media.audio.opus_decoder import opuslib, set_encoder_ctl

    t = np.arange(FRAME * 30) / 48000
    x = (8000 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))).astype(np.int16)
    counts = []
    for fec in (0, 1):
        enc = opuslib.Encoder(48000, 1, "voip")
        enc.bitrate = 32000
        set_encoder_ctl(enc, "set_inband_fec", fec)
        set_encoder_ctl(enc, "set_packet_loss_perc", 20)
        pkts = [enc.encode(x[i * FRAME : (i + 1) * FRAME].tobytes(), FRAME) for i in range(30)]
        counts.append(sum(packet_has_fec(p) for p in pkts))
    assert counts[0] == 0 and counts[1] > 10
    assert not packet_has_fec(b"") and not packet_has_fec(b"\xfc\x00")  # CELT-only TOC


# ---------------------------------------------------------------- decode path


@needs_speech
def test_missing_packet_is_rebuilt_from_next_packets_fec() -> None:
    pk = speech_packets()
    k = first_fec_gap(pk)
    path, frames = run_path(pk, {k}, "plc+fec")
    s = path.stats
    assert s.frames_fec_recovered == 1 and s.frames_concealed == 0 and s.samples_concealed == 0
    assert s.frames_decoded == len(pk) - 1
    out = by_ts(frames)
    assert out[k].source == "fec"
    # The FEC frame is speech, not silence, and it is what libopus rebuilds from packet k+1.
    ref = OpusDecoder()
    for p in pk[:k]:
        ref.decode(p)
    expected = ref.decode_fec(pk[k + 1], FRAME)
    np.testing.assert_array_equal(out[k].pcm, expected)
    clean = clean_frames()[k]
    assert rms(out[k].pcm) > 0.3 * rms(clean) > 300.0
    corr = float(np.corrcoef(out[k].pcm.astype(float), clean.astype(float))[0, 1])
    assert corr > 0.5  # a low-bitrate copy of the same speech
    assert path.jitter_stats.lost == 1


@needs_speech
def test_two_missing_in_a_row_first_is_plc_then_fec() -> None:
    pk = speech_packets()
    k = first_fec_gap(pk)
    path, frames = run_path(pk, {k, k + 1}, "plc+fec")
    out = by_ts(frames)
    assert [out[k].source, out[k + 1].source] == ["plc", "fec"]
    assert path.stats.frames_concealed == 1 and path.stats.frames_fec_recovered == 1
    assert path.stats.samples_concealed == FRAME
    assert rms(out[k].pcm) > 0.0  # PLC continues the voice, it is not silence


@needs_speech
def test_plc_mode_conceals_every_gap_without_fec() -> None:
    pk = speech_packets()
    k = first_fec_gap(pk)
    path, frames = run_path(pk, {k, k + 1, k + 5}, "plc")
    out = by_ts(frames)
    assert [out[i].source for i in (k, k + 1, k + 5)] == ["plc"] * 3
    assert path.stats.frames_concealed == 3 and path.stats.frames_fec_recovered == 0
    assert path.stats.samples_concealed == 3 * FRAME and path.stats.silence_inserted == 0


@needs_speech
def test_silence_mode_fills_zeros() -> None:
    pk = speech_packets()
    k = first_fec_gap(pk)
    path, frames = run_path(pk, {k, k + 1}, "silence")
    out = by_ts(frames)
    assert not out[k].pcm.any() and not out[k + 1].pcm.any()
    assert out[k].pcm.shape == (FRAME,)
    assert path.stats.silence_inserted == 2 and path.stats.frames_concealed == 0
    assert path.stats.samples_concealed == 2 * FRAME
    assert path.stats.frames_fec_recovered == 0


@needs_speech
def test_red_recovers_a_lost_packet_at_full_quality() -> None:
    pk = speech_packets()[:60]
    _, clean = run_path(pk, set(), "plc+fec")
    path, frames = run_path(
        pk, {30, 40, 41}, "plc+fec", red=RedEncoder(distance=2), min_delay_ms=40.0
    )
    s = path.stats
    assert s.frames_red_recovered == 3 and s.frames_fec_recovered == 0
    assert s.frames_concealed == 0 and path.jitter_stats.lost == 0
    a, b = by_ts(clean), by_ts(frames)
    for i in (30, 40, 41):
        assert b[i].source == "red"
        np.testing.assert_array_equal(a[i].pcm, b[i].pcm)  # identical bytes, identical PCM
    # With the default 20 ms floor the buffer grows its lookahead to RED's span by itself:
    # one stretch frame (concealed) at the first hole, then every hole is filled.
    path, _ = run_path(pk, {30, 40, 41}, "plc+fec", red=RedEncoder(distance=2))
    assert path.jitter_stats.target_delay_ms == 40.0
    assert path.stats.frames_red_recovered == 3
    assert path.stats.frames_concealed == path.stats.frames_stretched == 1


def test_corrupt_packet_is_concealed_and_counted() -> None:
    path = AudioDecodePath(mode="plc")
    path.put(1, 0, b"\x0b\xff\xff\xff", 0.0)  # code 3 TOC with an impossible frame count
    frames = path.pull_frames(100.0)
    assert path.stats.decode_errors == 1
    assert frames[0].source == "plc" and frames[0].pcm.shape == (FRAME,)
    assert path.counters()["decode_errors"] == 1
    with pytest.raises(ValueError):
        AudioDecodePath(mode="magic")  # type: ignore[arg-type]


def test_sixteen_khz_output_for_captions() -> None:
    from media.audio.opus_decoder import opuslib

    enc = opuslib.Encoder(48000, 1, "voip")
    tone = (5000 * np.sin(2 * np.pi * 300 * np.arange(FRAME * 5) / 48000)).astype(np.int16)
    pk = [enc.encode(tone[i * FRAME : (i + 1) * FRAME].tobytes(), FRAME) for i in range(5)]
    path = AudioDecodePath(sample_rate=16000)
    for i, p in enumerate(pk):
        path.put(i, i * FRAME, p, 20.0 * i)
    pcm = path.pull(200.0)
    assert [len(x) for x in pcm[:5]] == [320] * 5


# ---------------------------------------------------------------- RED encoder


def test_red_encoder_carries_previous_frames_across_ts_wrap() -> None:
    enc = RedEncoder(distance=2, opus_pt=111)
    ts0 = (1 << 32) - FRAME
    p0 = enc.encode(ts0, b"a")
    p1 = enc.encode(ts0 + FRAME, b"bb")
    p2 = enc.encode(ts0 + 2 * FRAME, b"ccc")
    assert [(b.timestamp_offset, b.data) for b in parse_red(p0)] == [(0, b"a")]
    assert [(b.timestamp_offset, b.data) for b in parse_red(p1)] == [(FRAME, b"a"), (0, b"bb")]
    assert [(b.timestamp_offset, b.data) for b in parse_red(p2)] == [
        (2 * FRAME, b"a"), (FRAME, b"bb"), (0, b"ccc")
    ]
    assert all(b.payload_type == 111 for b in parse_red(p2))
    small = RedEncoder(distance=2, max_payload=1 + 3 + 4 + 2)
    small.encode(0, b"a")
    small.encode(FRAME, b"bb")
    assert [b.data for b in parse_red(small.encode(2 * FRAME, b"ccc"))] == [b"bb", b"ccc"]
    with pytest.raises(ValueError):
        RedEncoder(distance=3)


# ---------------------------------------------------------------- quality (issue acceptance 4)


@needs_speech
@pytest.mark.skipif(
    importlib.util.find_spec("pesq") is None or importlib.util.find_spec("pystoi") is None,
    reason="quality test needs `pip install pesq pystoi` (PESQ wide-band, STOI)",
)
@pytest.mark.parametrize("loss", ["10%", "20%"])
def test_plc_fec_beats_silence_by_half_a_pesq_point(loss: str) -> None:
    from bench.audio_loss import decode_clean, score, simulate, to_16k

    pk = list(speech_packets())
    ref16 = to_16k(decode_clean(pk))
    results = {}
    for mode in ("silence", "plc+fec"):
        run = simulate(pk, f"delay 40ms loss {loss}", mode, seed=3)
        results[mode] = score(ref16, to_16k(run.pcm48))
    (p_sil, s_sil), (p_fec, s_fec) = results["silence"], results["plc+fec"]
    assert not math.isnan(p_sil) and not math.isnan(p_fec)
    assert p_fec - p_sil >= 0.5, results
    assert s_fec > s_sil
