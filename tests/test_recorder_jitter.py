"""JitterBuffer: reordering, late repairs, loss after the wait, keyframe resync (sans-I/O)."""

from __future__ import annotations

from recorder.jitter import Frame, Gap, JitterBuffer

WAIT = 1000.0


def video_frames(n: int, per_frame: int = 3, key_every: int = 10, seq0: int = 70000) -> list[tuple]:
    """(ext_seq, ts, marker, payload, keyframe) packets of `n` frames."""
    out = []
    seq = seq0
    for f in range(n):
        for j in range(per_frame):
            key = f % key_every == 0 and j == 0
            out.append((seq, (f * 3000) & 0xFFFFFFFF, j == per_frame - 1, bytes([f & 0xFF, j]), key))
            seq += 1
    return out


def run(buf: JitterBuffer, packets: list[tuple], now_ms: float = 0.0) -> list[Frame | Gap]:
    out: list[Frame | Gap] = []
    for p in packets:
        buf.push(*p)
        out += buf.pop(now_ms)
    return out


def frames_of(items: list[Frame | Gap]) -> list[int]:
    return [i.payloads[0][0] for i in items if isinstance(i, Frame)]


def test_in_order_video_gives_whole_frames_from_the_first_keyframe() -> None:
    pkts = video_frames(25)
    buf = JitterBuffer(video=True)
    out = run(buf, pkts[4:])  # starts mid-frame 1: nothing until the keyframe of frame 10
    assert frames_of(out) == list(range(10, 25))
    first = out[0]
    assert isinstance(first, Frame) and first.keyframe and len(first.payloads) == 3


def test_reordered_packets_are_put_back_in_order() -> None:
    pkts = video_frames(12)
    swapped = pkts[:]
    for i in range(0, len(swapped) - 1, 2):
        swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    out = run(JitterBuffer(video=True), swapped)
    assert frames_of(out) == list(range(12))
    assert all(f.payloads == [bytes([k, 0]), bytes([k, 1]), bytes([k, 2])]
               for k, f in enumerate(out) if isinstance(f, Frame))


def test_a_repair_within_the_wait_completes_the_frame() -> None:
    pkts = video_frames(6)
    buf = JitterBuffer(video=True, loss_wait_ms=WAIT)
    lost = pkts.pop(7)  # frame 2, middle packet
    out = run(buf, pkts, now_ms=0.0)
    assert frames_of(out) == [0, 1]  # blocked at the hole
    assert buf.pop(WAIT - 1) == []
    buf.push(*lost)  # the NACK repair arrives late
    assert frames_of(buf.pop(WAIT - 1)) == [2, 3, 4, 5]
    assert buf.packets_lost == 0


def test_video_hole_after_the_wait_resyncs_at_the_next_keyframe() -> None:
    pkts = video_frames(25)
    del pkts[13]  # frame 4
    buf = JitterBuffer(video=True, loss_wait_ms=WAIT)
    out = run(buf, pkts, now_ms=0.0)
    assert frames_of(out) == [0, 1, 2, 3]
    later = buf.pop(WAIT)
    assert isinstance(later[0], Gap) and later[0].lost == 1
    assert frames_of(later) == list(range(10, 25))  # frames 4..9 depend on the lost one
    assert buf.gaps == 1
    buf.push(*video_frames(25)[13])  # the repair after giving up: late, ignored
    assert buf.pop(WAIT + 1) == [] and buf.packets_late == 1


def test_audio_hole_is_skipped_and_its_timestamps_stay_a_gap() -> None:
    pkts = [(100 + i, (i * 960) & 0xFFFFFFFF, True, bytes([i]), False) for i in range(20)]
    del pkts[5:10]
    buf = JitterBuffer(video=False, loss_wait_ms=WAIT)
    out = run(buf, pkts, now_ms=50.0)
    assert frames_of(out) == [0, 1, 2, 3, 4]
    rest = buf.pop(50.0 + WAIT)
    assert isinstance(rest[0], Gap) and rest[0].lost == 5
    tail = [f for f in rest if isinstance(f, Frame)]
    assert [f.payloads[0][0] for f in tail] == list(range(10, 20))
    assert tail[0].timestamp - out[-1].timestamp == 6 * 960  # 100 ms hole kept


def test_timestamps_unwrap_across_2_to_the_32() -> None:
    pkts = [(i, (0xFFFFFFFF - 1920 + i * 960) & 0xFFFFFFFF, True, b"x", False) for i in range(5)]
    out = run(JitterBuffer(video=False), pkts)
    stamps = [f.timestamp for f in out if isinstance(f, Frame)]
    assert [b - a for a, b in zip(stamps, stamps[1:], strict=False)] == [960] * 4


def test_buffer_overflow_declares_loss_without_waiting() -> None:
    pkts = video_frames(40, per_frame=2, key_every=20)
    del pkts[3]
    buf = JitterBuffer(video=True, loss_wait_ms=WAIT, max_packets=20)
    out = run(buf, pkts, now_ms=0.0)
    assert any(isinstance(i, Gap) for i in out)
    assert frames_of(out)[-1] == 39


def test_steady_audio_loss_never_lets_the_buffer_fall_behind() -> None:
    """Every 10th packet lost for good: each hole expires WAIT after it was revealed,
    not WAIT after the hole before it, so output lags arrival by about WAIT at most."""
    buf = JitterBuffer(video=False)
    out: list[Frame | Gap] = []
    for i in range(500):  # 10 s of 20 ms Opus packets
        now = i * 20.0
        if i % 10 != 5:
            buf.push(1000 + i, i * 960, False, bytes([i & 0xFF]), False, now)
        out += buf.pop(now)
        done = [(f.timestamp - out[0].timestamp) // 960 for f in out if isinstance(f, Frame)]
        if i >= 100:
            assert done[-1] >= i - (WAIT + 60) / 20, (i, done[-1])
    assert sum(isinstance(g, Gap) for g in out) >= 44
