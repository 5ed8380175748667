"""TrackAssembler: follows the best simulcast layer, switching only on keyframes."""

from __future__ import annotations

from media.rtp.ntp import ntp_from_unix
from recorder.assembler import LIVE_WINDOW_MS, TrackAssembler
from recorder.jitter import Frame

from .recorder_media import LAYER_TS_BASE, simulcast

N = 150  # 5 s at 30 fps
STEP = 3000


def run(asm: TrackAssembler, stream: list, *, reports: bool) -> tuple[list[Frame], list[tuple[float, int]]]:
    """Feed the stream; returns output frames and (time, layer) keyframe requests."""
    if reports:
        for layer, base in enumerate(LAYER_TS_BASE):
            asm.on_sender_report(layer, ntp_from_unix(1_700_000_000.0), base)
    out: list[Frame] = []
    asks: list[tuple[float, int]] = []
    source: dict[bytes, int] = {}  # first payload of a frame -> its frame index
    for now, p in stream:
        v = p.view
        payload = bytes(v.payload)
        source.setdefault(payload, p.frame)
        asm.push(p.layer, p.ext_seq, v.timestamp, v.marker, payload, p.keyframe, now)
        got = asm.pop(now)
        for f in got:
            f.payloads = [source[f.payloads[0]].to_bytes(2, "big")]  # the source frame index
        out += got
        asks += [(now, layer) for layer in asm.keyframe_requests]
        asm.keyframe_requests.clear()
    return out, asks


def frame_index(f: Frame) -> int:
    """The source frame a recorded frame came from (same index on every layer)."""
    return int.from_bytes(f.payloads[0], "big")


def test_starts_on_the_top_layer_at_a_keyframe() -> None:
    asm = TrackAssembler(video=True, layers=3)
    out, _ = run(asm, simulcast(N), reports=False)
    assert out[0].keyframe and out[0].layer == 2
    assert {f.layer for f in out} == {2}
    assert [frame_index(f) for f in out] == list(range(N))  # nothing lost
    assert all(f.timestamp - out[0].timestamp == i * STEP for i, f in enumerate(out))


def test_layer_pause_and_resume_switch_on_keyframes_only() -> None:
    # Layer 2 paused (dynacast) for frames 45..119; it restarts with a keyframe at 120.
    active = {2: range(0, 45), 0: range(N), 1: range(N)}
    active[2] = [*range(0, 45), *range(120, N)]  # type: ignore[assignment]
    asm = TrackAssembler(video=True, layers=3)
    out, asks = run(asm, simulcast(N, active=active), reports=True)
    layers = [f.layer for f in out]
    switches = [i for i in range(1, len(out)) if layers[i] != layers[i - 1]]
    assert [layers[i] for i in switches] == [1, 2]
    assert all(out[i].keyframe for i in switches)  # every switch lands on a keyframe
    down, up = (frame_index(out[i]) for i in switches)
    assert frame_index(out[switches[0] - 1]) == 44  # layer 2 recorded to its last frame
    # Layer 1 became the target once layer 2 was silent for the live window, and a
    # keyframe was asked for on it; the switch came at its next keyframe.
    t_silent = 44 * 1000 / 30 + LIVE_WINDOW_MS
    assert any(layer == 1 and t >= t_silent for t, layer in asks)
    assert down % 30 == 0 and down * 1000 / 30 >= t_silent
    assert up == 120
    assert asm.switches == 2
    # Sender reports map each layer onto one timeline: frame i is at i * 3000 (a switch
    # keyframe captured with the old layer's last frame goes one tick after it).
    base = out[0].timestamp
    assert all(abs(f.timestamp - base - frame_index(f) * STEP) <= 1 for f in out)
    assert sum(f.timestamp != base + frame_index(f) * STEP for f in out) <= 2
    stamps = [f.timestamp for f in out]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_without_sender_reports_a_switch_is_placed_by_arrival() -> None:
    active = {0: range(N), 1: range(N), 2: range(0, 45)}
    asm = TrackAssembler(video=True, layers=3)
    out, _ = run(asm, simulcast(N, active=active), reports=False)
    i = next(i for i in range(1, len(out)) if out[i].layer != out[i - 1].layer)
    gap = out[i].timestamp - out[i - 1].timestamp
    expected = (frame_index(out[i]) - frame_index(out[i - 1])) * STEP
    assert abs(gap - expected) <= STEP  # within a frame of the true spacing
    after = [f.timestamp for f in out[i:]]
    assert all(b - a == STEP for a, b in zip(after, after[1:], strict=False))


def test_audio_is_a_single_layer_without_keyframe_requests() -> None:
    asm = TrackAssembler(video=False, clock_rate=48000)
    for i in range(10):
        asm.push(0, 500 + i, i * 960, True, b"\xfc", False, i * 20.0)
    out = asm.pop(200.0)
    assert [f.timestamp - out[0].timestamp for f in out] == [i * 960 for i in range(10)]
    assert asm.keyframe_requests == []
