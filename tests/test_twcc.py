"""media.wire.twcc (the feedback codec) and media.rtp.twcc (recorder and send history),
in simulated time."""

from __future__ import annotations

import random

import pytest

from media.rtp.twcc import PacketResult, TwccRecorder, TwccSendHistory
from media.wire.twcc import TwccFeedback, _encode_chunks

# Captures published with pion/rtcp's tests (draft-holmer-...-01 format).
ONE_PACKET = bytes.fromhex("afcd0005fa17fa17" "43032fa0" "00990001" "3de80217" "2001" "94" "01")
SEVEN_PACKETS = bytes.fromhex(
    "afcd0007fa17fa17" "193dd8bb" "00040007" "10636e01" "2007" "4c242410" "0c0c10" "000003"
)


def chunks_of(data: bytes) -> list[int]:
    """Raw 16-bit chunks of an encoded feedback (walks the chunk list like a decoder)."""
    count = int.from_bytes(data[14:16], "big")
    pos, seen, out = 20, 0, []
    while seen < count:
        chunk = int.from_bytes(data[pos : pos + 2], "big")
        out.append(chunk)
        pos += 2
        if chunk & 0x8000 == 0:
            seen += chunk & 0x1FFF
        else:
            seen += 14 if chunk & 0x4000 == 0 else 7
    return out


def test_parse_one_packet_capture() -> None:
    fb = TwccFeedback.parse(ONE_PACKET)
    assert fb.sender_ssrc == 0xFA17FA17
    assert fb.media_ssrc == 0x43032FA0
    assert fb.base_seq == 153
    assert fb.reference_time == 4057090
    assert fb.fb_pkt_count == 23
    assert fb.packets == [(153, 4057090 * 64000 + 148 * 250)]
    assert bytes(fb) == ONE_PACKET


def test_parse_seven_packet_capture() -> None:
    fb = TwccFeedback.parse(SEVEN_PACKETS)
    assert fb.base_seq == 4 and fb.reference_time == 1074030 and fb.fb_pkt_count == 1
    origin = 1074030 * 64000
    deltas_us = [19000, 9000, 9000, 4000, 3000, 3000, 4000]
    expected, t = [], origin
    for i, d in enumerate(deltas_us):
        t += d
        expected.append((4 + i, t))
    assert fb.packets == expected
    assert bytes(fb) == SEVEN_PACKETS


def test_hand_computed_vector() -> None:
    origin = 10 * 64000
    fb = TwccFeedback(
        sender_ssrc=1,
        media_ssrc=2,
        base_seq=65534,
        reference_time=10,
        fb_pkt_count=3,
        packets=[
            (65534, origin + 1000),  # +4 ticks: small
            (65535, None),
            (0, origin + 500),  # -2 ticks: large (negative)
            (1, origin + 500 + 255 * 250),  # +255 ticks: small
        ],
    )
    expected = bytes.fromhex(
        "afcd0006" "00000001" "00000002"  # V=2 P=1 FMT=15, PT=205, 7 words
        "fffe" "0004"  # base seq, status count
        "00000a" "03"  # reference time 10, fb count 3
        "d240"  # two-bit vector: small, not received, large, small
        "04" "fffe" "ff"  # deltas
        "0002"  # padding, count 2
    )
    assert bytes(fb) == expected
    assert TwccFeedback.parse(expected) == fb


def test_no_padding_when_aligned() -> None:
    fb = TwccFeedback(1, 2, 0, 0, 0, [(0, 250), (1, 500)])  # 20 + 2 + 2 = 24
    data = bytes(fb)
    assert len(data) == 24
    assert data[0] == 0x8F  # P bit clear
    assert TwccFeedback.parse(data) == fb


def test_empty_feedback_round_trip() -> None:
    fb = TwccFeedback(1, 2, 100, 5, 0, [])
    assert TwccFeedback.parse(bytes(fb)) == fb


def test_chunk_choice_run_length_for_runs() -> None:
    fb = TwccFeedback(1, 2, 0, 0, 0, [(i, 250 * i) for i in range(20)])
    assert chunks_of(bytes(fb)) == [0x2000 | 20]


def test_chunk_choice_one_bit_vector_for_mixed_small() -> None:
    assert _encode_chunks([1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]) == b"\xba\x00"
    assert _encode_chunks([1, 0]) == b"\xa0\x00"  # tail vector, unused bits zero


def test_chunk_choice_two_bit_vector_when_large_delta() -> None:
    assert _encode_chunks([1, 2, 0, 0, 0, 0, 0, 1]) == bytes.fromhex("d800" "2001")
    assert _encode_chunks([2] * 7 + [1]) == bytes.fromhex("4007" "2001")


def test_chunk_choice_long_loss_run() -> None:
    symbols = [1] + [0] * 1000 + [1]
    assert _encode_chunks(symbols) == bytes.fromhex("a000") + (0x0000 | 987).to_bytes(2, "big") + bytes.fromhex("2001")
    assert _encode_chunks([0] * 9000) == bytes.fromhex("1fff") + (9000 - 8191).to_bytes(2, "big")


def test_every_chunk_but_last_covers_seven() -> None:
    rng = random.Random(7)
    for _ in range(200):
        symbols = [rng.choice([0, 0, 1, 1, 1, 2]) for _ in range(rng.randrange(1, 60))]
        fb_packets = []
        t = 0
        for i, s in enumerate(symbols):
            if s == 0:
                fb_packets.append((i, None))
            else:
                t += 250 * (rng.randrange(0, 256) if s == 1 else rng.choice([-5, 300, 1000]))
                fb_packets.append((i, t))
        fb = TwccFeedback(1, 2, 0, 0, 0, fb_packets)
        data = bytes(fb)
        assert TwccFeedback.parse(data) == fb
        assert len(chunks_of(data)) <= len(symbols) // 7 + 1


def test_large_and_negative_deltas_round_trip() -> None:
    origin = 1000 * 64000
    packets = [(0, origin + 8_191_750), (1, origin - 250), (2, origin - 8_192_250), (3, origin - 1150)]
    fb = TwccFeedback(5, 6, 0, 1000, 0, packets)
    data = bytes(fb)
    assert data[20:22] == bytes.fromhex("4004")  # run of 4 large deltas
    assert data[22:30] == bytes.fromhex("7fff" "8000" "8000" "7ffc")  # +32767, -32768, -32768, +32764
    parsed = TwccFeedback.parse(data)
    # -1150 µs rounds to -5 ticks
    assert parsed.packets == [(0, origin + 8_191_750), (1, origin - 250), (2, origin - 8_192_250), (3, origin - 1250)]


def test_delta_out_of_range_is_rejected() -> None:
    fb = TwccFeedback(1, 2, 0, 0, 0, [(0, 32768 * 250)])
    with pytest.raises(ValueError, match="^TWCC receive delta does not fit in 16 bits$"):
        bytes(fb)


def test_non_consecutive_packets_rejected() -> None:
    with pytest.raises(ValueError, match="consecutive"):
        bytes(TwccFeedback(1, 2, 0, 0, 0, [(0, 0), (2, 0)]))


def test_wrapping_base_seq() -> None:
    packets = [((65530 + i) & 0xFFFF, 1000 * i if i % 3 else None) for i in range(12)]
    fb = TwccFeedback(1, 2, 65530, 0, 255, packets)
    parsed = TwccFeedback.parse(bytes(fb))
    assert [s for s, _ in parsed.packets] == [65530, 65531, 65532, 65533, 65534, 65535, 0, 1, 2, 3, 4, 5]
    assert parsed == fb


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (bytes(19), "TWCC feedback is shorter than 20 bytes"),
        (bytes.fromhex("0fcd0004") + bytes(16), "RTCP packet has invalid version"),
        (bytes.fromhex("81cd0004") + bytes(16), "RTCP packet is not a TWCC feedback"),
        (bytes.fromhex("8fcd0005") + bytes(16), "TWCC feedback is truncated"),
        (bytes.fromhex("8fcd0003") + bytes(16), "TWCC feedback length is invalid"),
        (bytes.fromhex("afcd0004") + bytes(16), "TWCC feedback padding length is invalid"),
        (bytes.fromhex("afcd0005") + bytes(16) + b"\x00\x00\x00\x05", "TWCC feedback padding length is invalid"),
        (bytes.fromhex("8fcd0004" "00000001" "00000002" "00000001" "00000000"),
         "TWCC packet status chunks are truncated"),
        (bytes.fromhex("afcd0005" "00000001" "00000002" "00000001" "00000000" "20010002"),
         "TWCC receive deltas are truncated"),
        (bytes.fromhex("afcd0005" "00000001" "00000002" "00000001" "00000000" "40010002"),
         "TWCC receive deltas are truncated"),
        (bytes.fromhex("8fcd0005" "00000001" "00000002" "00000001" "00000000" "60010000"),
         "TWCC packet status symbol is reserved"),
    ],
)
def test_parse_errors(data: bytes, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        TwccFeedback.parse(data)
    assert str(exc.value) == message


def test_trailing_zero_padding_without_p_bit_is_tolerated() -> None:
    data = bytearray(ONE_PACKET)
    data[0] &= ~0x20
    data[-1] = 0
    fb = TwccFeedback.parse(bytes(data))
    assert fb.packets == TwccFeedback.parse(ONE_PACKET).packets


# --- recorder ---------------------------------------------------------------------


def decode(packets: list[bytes]) -> list[TwccFeedback]:
    return [TwccFeedback.parse(p) for p in packets]


def test_recorder_basic_cycle_and_deadlines() -> None:
    rec = TwccRecorder(sender_ssrc=1, media_ssrc=2, interval_ms=50.0)
    assert rec.next_deadline() is None
    assert rec.build_feedback(0.0) == []
    rec.record(100, 1000.0)
    rec.record(101, 1001.0)
    rec.record(103, 1003.0)
    assert rec.next_deadline() == 1050.0
    [fb] = decode(rec.build_feedback(1050.0))
    assert fb.base_seq == 100 and fb.fb_pkt_count == 0
    assert fb.sender_ssrc == 1 and fb.media_ssrc == 2
    ref_us = fb.reference_time * 64000
    assert ref_us <= 1_000_000 < ref_us + 64000
    assert fb.packets == [(100, 1_000_000), (101, 1_001_000), (102, None), (103, 1_003_000)]
    assert rec.next_deadline() is None
    # steady cadence while packets flow
    rec.record(104, 1060.0)
    assert rec.next_deadline() == 1100.0
    [fb2] = decode(rec.build_feedback(1100.0))
    assert fb2.base_seq == 104 and fb2.fb_pkt_count == 1
    # after an idle gap, wait one interval from the first new packet
    rec.record(105, 5000.0)
    assert rec.next_deadline() == 5050.0


def test_recorder_reordering_and_duplicates() -> None:
    rec = TwccRecorder(1, 2)
    for seq, t in [(10, 0.0), (12, 2.0), (11, 3.0), (12, 4.0), (9, 5.0)]:
        rec.record(seq, t)
    assert rec.duplicate_packets == 1
    [fb] = decode(rec.build_feedback(50.0))
    assert fb.base_seq == 9
    by_seq = dict(fb.packets)
    assert by_seq == {9: 5000, 10: 0, 11: 3000, 12: 2000}  # negative deltas encoded
    assert fb.reference_time == 0


def test_recorder_late_packets_dropped_and_counted() -> None:
    rec = TwccRecorder(1, 2)
    rec.record(1, 0.0)
    rec.record(3, 1.0)
    [fb] = decode(rec.build_feedback(50.0))
    assert fb.packets[1] == (2, None)
    rec.record(2, 60.0)  # already reported as lost
    rec.record(3, 61.0)  # already reported as received
    assert rec.late_packets == 2
    assert rec.build_feedback(100.0) == []
    rec.record(4, 70.0)
    [fb2] = decode(rec.build_feedback(100.0))
    assert fb2.base_seq == 4 and len(fb2.packets) == 1


def test_recorder_wraps_16_bit_seq() -> None:
    rec = TwccRecorder(1, 2)
    for i in range(10):
        rec.record((65531 + i) & 0xFFFF, float(i))
    [fb] = decode(rec.build_feedback(50.0))
    assert fb.base_seq == 65531
    assert [s for s, _ in fb.packets] == [65531, 65532, 65533, 65534, 65535, 0, 1, 2, 3, 4]
    rec.record(5, 60.0)
    rec.record(65535, 61.0)  # late, across the wrap
    assert rec.late_packets == 1
    [fb2] = decode(rec.build_feedback(100.0))
    assert fb2.base_seq == 5


def test_recorder_large_gap_is_a_not_received_run() -> None:
    rec = TwccRecorder(1, 2)
    rec.record(0, 0.0)
    rec.record(5000, 1.0)
    [raw] = rec.build_feedback(50.0)
    fb = TwccFeedback.parse(raw)
    assert len(fb.packets) == 5001
    assert sum(1 for _, a in fb.packets if a is None) == 4999
    assert len(raw) < 40  # run-length chunk, not 5000 symbols


def test_recorder_splits_under_1200_bytes() -> None:
    rec = TwccRecorder(1, 2)
    # alternating arrival jumps force large deltas and two-bit vectors
    for i in range(1500):
        rec.record(i & 0xFFFF, 1000.0 + (i % 2) * 100.0 + i * 0.01)
    out = rec.build_feedback(1200.0)
    assert len(out) >= 3
    assert all(len(p) <= 1200 for p in out)
    fbs = decode(out)
    assert [fb.fb_pkt_count for fb in fbs] == list(range(len(fbs)))
    seqs = [s for fb in fbs for s, _ in fb.packets]
    assert seqs == list(range(1500))
    for fb in fbs:
        for seq, arrival in fb.packets:
            assert arrival is not None
            assert abs(arrival - (1000.0 + (seq % 2) * 100.0 + seq * 0.01) * 1000) <= 125


def test_recorder_splits_when_delta_overflows() -> None:
    rec = TwccRecorder(1, 2)
    rec.record(1, 0.0)
    rec.record(2, 9000.0)  # 36000 ticks later: does not fit a 16-bit delta
    fbs = decode(rec.build_feedback(9050.0))
    assert [(fb.base_seq, len(fb.packets)) for fb in fbs] == [(1, 1), (2, 1)]
    assert fbs[1].reference_time == int(9000 * 1000 // 64000)
    assert fbs[1].packets[0][1] == 9_000_000


def test_fb_pkt_count_wraps() -> None:
    rec = TwccRecorder(1, 2)
    counts = []
    for i in range(258):
        rec.record(i, i * 50.0)
        counts.append(TwccFeedback.parse(rec.build_feedback(i * 50.0 + 1)[0]).fb_pkt_count)
    assert counts[:2] == [0, 1] and counts[255:] == [255, 0, 1]


# --- send history -----------------------------------------------------------------


def test_send_history_matches_feedback() -> None:
    hist = TwccSendHistory()
    rec = TwccRecorder(1, 2)
    for i in range(6):
        hist.on_sent(65533 + i, send_ms=10.0 * i, size=1000 + i)
    # receiver sees 16-bit seqs; one lost, one reordered; path delay 40 ms + queueing
    for seq, t in [(65533, 40.0), (65534, 51.0), (0, 75.0), (65535, 72.0), (2, 95.0)]:
        rec.record(seq & 0xFFFF, t)
    [fb] = decode(rec.build_feedback(100.0))
    results = hist.on_feedback(fb, 100.0)
    assert [r.seq for r in results] == [65533, 65534, 65535, 65536, 65537, 65538]
    assert [r.size for r in results] == [1000, 1001, 1002, 1003, 1004, 1005]
    arrivals = [r.arrival_ms for r in results]
    assert arrivals[4] is None
    assert arrivals[:4] == [40.0, 51.0, 72.0, 75.0] and arrivals[5] == 95.0
    assert results[0] == PacketResult(65533, 0.0, 40.0, 1000)
    assert len(hist) == 0
    assert hist.on_feedback(fb, 100.0) == []  # each packet is reported once


def test_send_history_prunes_old_entries() -> None:
    hist = TwccSendHistory(max_age_ms=1000.0)
    for i in range(10):
        hist.on_sent(i, send_ms=100.0 * i, size=100)
    fb = TwccFeedback(1, 2, 0, 0, 0, [(i, 1000 * i) for i in range(10)])
    results = hist.on_feedback(fb, now_ms=1500.0)
    assert [r.seq for r in results] == [5, 6, 7, 8, 9]
    assert len(hist) == 0


def test_send_history_reference_time_wrap_keeps_receiver_clock_monotonic() -> None:
    hist = TwccSendHistory()
    hist.on_sent(1, 0.0, 100)
    hist.on_sent(2, 10.0, 100)
    last_ref = (1 << 24) - 1
    fb1 = TwccFeedback(1, 2, 1, last_ref, 0, [(1, last_ref * 64000 + 1000)])
    fb2 = TwccFeedback(1, 2, 2, 0, 1, [(2, 1000)])
    [r1] = hist.on_feedback(fb1, 20.0)
    [r2] = hist.on_feedback(fb2, 30.0)
    assert r1.arrival_ms is not None and r2.arrival_ms is not None
    assert r2.arrival_ms - r1.arrival_ms == 64.0


def test_send_history_ignores_unknown_seqs() -> None:
    hist = TwccSendHistory()
    assert hist.on_feedback(TwccFeedback(1, 2, 0, 0, 0, [(0, 0)]), 0.0) == []
    hist.on_sent(100, 0.0, 10)
    assert hist.on_feedback(TwccFeedback(1, 2, 500, 0, 0, [(500, 0)]), 1.0) == []
    assert len(hist) == 1


def test_a_viewer_that_never_sends_feedback_keeps_the_send_history_bounded() -> None:
    """A receiver may negotiate transport-cc and never answer: what its sender remembers
    per packet is forgotten after the history's max age all the same."""
    from .router_setup import audio_viewer

    _, sub, down = audio_viewer()
    sub.transport.send_rtp = lambda packet, seq_at=0, seq=0: None  # type: ignore[method-assign]
    twcc_byte = bytes((down.twcc_ext_id << 4 | 1, 0, 0, 0))
    now = 1000.0
    for seq in range(1500):  # 30 s of 20 ms audio, the timer every 20 ms
        header = bytes((0x90, 111)) + seq.to_bytes(2, "big") + (960 * seq).to_bytes(4, "big") + down.ssrc.to_bytes(4, "big")
        sub.send_rtp(header + b"\xbe\xde\x00\x01" + twcc_byte + bytes(80), "audio", now)
        sub.on_timer(now)
        now += 20.0
    assert sub.stats.rtp_out == 1500
    assert len(sub.send_history) <= sub.send_history.max_age_ms / 20.0 + 1


def _all_received(base: int, n: int) -> TwccFeedback:
    return TwccFeedback(1, 2, base & 0xFFFF, 0, 0, [((base + i) & 0xFFFF, 1000 * i) for i in range(n)])


def test_send_history_grows_its_ring_when_more_packets_are_in_flight_than_it_holds() -> None:
    hist = TwccSendHistory(capacity=4)
    for seq in range(10, 30):
        hist.on_sent(seq, float(seq), seq + 1000)
    assert hist.capacity == 32 and len(hist) == 20
    results = hist.on_feedback(_all_received(10, 20), 30.0)
    assert [(r.seq, r.send_ms, r.size) for r in results] == [(s, float(s), s + 1000) for s in range(10, 30)]
    assert len(hist) == 0


def test_send_history_reuses_ring_slots_as_feedback_frees_them() -> None:
    hist = TwccSendHistory(capacity=8)
    seq = 0
    for _ in range(50):  # 5 packets out, then feedback for them: the ring never grows
        for _ in range(5):
            hist.on_sent(seq, float(seq), 100)
            seq += 1
        assert [r.seq for r in hist.on_feedback(_all_received(seq - 5, 5), float(seq))] == list(range(seq - 5, seq))
    assert hist.capacity == 8 and len(hist) == 0


def test_send_history_prune_passes_over_reported_packets_to_the_oldest_unreported() -> None:
    hist = TwccSendHistory(max_age_ms=100.0, capacity=16)
    for seq in range(10):
        hist.on_sent(seq, 10.0 * seq, 100)
    hist.on_feedback(_all_received(0, 3), 0.0)  # 0-2 reported
    hist.prune(150.0)  # 3, 4 older than 100 ms; 5 (50 ms) is the oldest kept
    assert len(hist) == 5
    assert [r.seq for r in hist.on_feedback(_all_received(0, 10), 150.0)] == [5, 6, 7, 8, 9]


def test_send_history_forgets_packets_feedback_could_no_longer_name() -> None:
    """Feedback's 16-bit seqs are unwrapped within half a cycle of the highest sent:
    an entry 2^15 or more behind can never be matched, and is not kept."""
    hist = TwccSendHistory(max_age_ms=1e9)
    hist.on_sent(0, 0.0, 100)
    hist.on_sent(1, 1.0, 100)
    hist.on_sent(40_000, 2.0, 100)
    assert len(hist) == 1 and hist.capacity <= 1 << 15
    assert [r.seq for r in hist.on_feedback(_all_received(40_000, 1), 3.0)] == [40_000]
