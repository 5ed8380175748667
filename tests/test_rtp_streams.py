"""RtpStreamRecv / RtpStreamSend / RateCounter / ntp against hand-computed values."""

from __future__ import annotations

import pytest
from aiortc.rtp import RtcpReceiverInfo

from media.rtp.ntp import NTP_UNIX_OFFSET_S, ntp_at, ntp_from_unix, ntp_middle32, ntp_to_ms
from media.rtp.rate import RateCounter
from media.rtp.stream_recv import MAX_DROPOUT, MAX_MISORDER, SEQ_JUMP, RtpStreamRecv
from media.rtp.stream_send import RtpStreamSend

# -- ntp -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unix", "ntp"),
    [
        (0.0, NTP_UNIX_OFFSET_S << 32),
        (1.5, ((NTP_UNIX_OFFSET_S + 1) << 32) | 0x8000_0000),
        (1.25, ((NTP_UNIX_OFFSET_S + 1) << 32) | 0x4000_0000),
    ],
)
def test_ntp_from_unix(unix: float, ntp: int) -> None:
    assert ntp_from_unix(unix) == ntp


def test_ntp_compact_and_ms() -> None:
    ntp = (0x1234_5678 << 32) | 0x9ABC_DEF0
    assert ntp_middle32(ntp) == 0x5678_9ABC
    assert ntp_to_ms(65536) == 1000.0
    assert ntp_to_ms(32768) == 500.0
    assert ntp_at(2500.0, 10.0) == ntp_from_unix(12.5)


# -- RateCounter -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("adds", "now", "expected_bps"),
    [
        ([], 1000.0, 0.0),
        # 1000 B every 10 ms = 800 kbit/s, read at various points
        ([(1000, t * 10.0) for t in range(101)], 1000.0, 800_000.0),
        ([(1000, t * 10.0) for t in range(301)], 3000.0, 800_000.0),
        # stream stopped 2 s ago: the window is empty
        ([(1000, t * 10.0) for t in range(101)], 3000.0, 0.0),
        # 12500 B at once, read 0.5 s later: 100 kbit over a 1 s window
        ([(12_500, 500.0)], 1000.0, 100_000.0),
    ],
)
def test_rate_counter(adds: list[tuple[int, float]], now: float, expected_bps: float) -> None:
    rc = RateCounter(1000.0)
    for size, t in adds:
        rc.add(size, t)
    assert rc.rate_bps(now) == pytest.approx(expected_bps, rel=0.06)


def test_rate_counter_ignores_samples_older_than_window() -> None:
    rc = RateCounter(1000.0)
    rc.add(100, 5000.0)
    rc.add(100_000, 3000.0)  # clock went backwards by 2 s: outside the window
    assert rc.total_bytes == 100


# -- RtpStreamRecv -------------------------------------------------------------------------


def test_jitter_rfc3550_a8_by_hand() -> None:
    """90 kHz; packets 10 ms apart in RTP time, arriving at 0, 10, 22, 28 ms.

    D = 0, 180, -360 (ts units) -> J = 0, 180/16 = 11.25, 11.25 + (360 - 11.25)/16.
    """
    s = RtpStreamRecv(0x1111, 90_000)
    rows = [(10, 0, 0.0, 0.0), (11, 900, 10.0, 0.0), (12, 1800, 22.0, 11.25)]
    rows.append((13, 2700, 28.0, 11.25 + (360 - 11.25) / 16))
    for seq, ts, arrival, jitter in rows:
        s.on_packet(seq, ts, arrival, 100)
        assert s.jitter == pytest.approx(jitter)
    assert s.report_block(30.0).jitter == 33
    assert s.jitter_ms == pytest.approx(33.046875 / 90)


def test_jitter_survives_timestamp_wrap() -> None:
    s = RtpStreamRecv(1, 48_000)
    s.on_packet(1, 0xFFFF_FF00, 0.0, 10)
    s.on_packet(2, (0xFFFF_FF00 + 960) & 0xFFFF_FFFF, 20.0, 10)  # perfectly paced
    assert s.jitter == 0.0


def test_loss_fraction_and_cumulative_by_hand() -> None:
    s = RtpStreamRecv(0xABC, 90_000)
    # interval 1: seqs 10..19, 12 and 15 lost, 13 duplicated
    for i, seq in enumerate([10, 11, 13, 13, 14, 16, 17, 18, 19]):
        s.on_packet(seq, seq * 3000, i * 33.0, 1000)
    assert (s.expected, s.packets_received, s.duplicates) == (10, 8, 1)
    rb = s.report_block(400.0)
    assert (rb.fraction_lost, rb.packets_lost) == ((2 << 8) // 10, 2)  # 51
    assert rb.ssrc == 0xABC
    assert rb.highest_sequence == 19
    assert s.bytes_received == 8000
    # interval 2: 20..29 all arrive, plus late 12: more received than expected
    for seq in [*range(20, 30), 12]:
        s.on_packet(seq, seq * 3000, 500.0, 1000)
    rb = s.report_block(800.0)
    assert (rb.fraction_lost, rb.packets_lost) == (0, 1)
    # interval 3: nothing arrived
    rb = s.report_block(1200.0)
    assert (rb.fraction_lost, rb.packets_lost) == (0, 1)


def test_highest_sequence_counts_cycles() -> None:
    s = RtpStreamRecv(1, 90_000)
    for i, seq in enumerate([65530, 65531, 65533, 65535, 0, 1, 5]):
        s.on_packet(seq, i * 3000, i * 33.0, 100)
    rb = s.report_block(500.0)
    assert rb.highest_sequence == (1 << 16) | 5
    # expected 65530..65535, 0..5 = 12; received 7
    assert (s.expected, rb.packets_lost) == (12, 5)
    assert rb.fraction_lost == (5 << 8) // 12


def test_lone_forward_seq_jump_is_dropped_and_the_stream_goes_on() -> None:
    s = RtpStreamRecv(1, 90_000)
    exts = [s.on_packet(seq, seq * 10, float(seq), 100) for seq in (100, 101)]
    assert s.on_packet(101 + MAX_DROPOUT + 1, 0, 3.0, 100) == SEQ_JUMP
    exts.append(s.on_packet(102, 1020, 4.0, 100))
    assert exts[2] == exts[1] + 1
    assert (s.seq_jumps, s.packets_received, s.cumulative_lost) == (1, 3, 0)


def test_forward_jump_confirmed_by_the_next_packet_is_followed() -> None:
    s = RtpStreamRecv(1, 90_000)
    first = s.on_packet(65000, 0, 0.0, 100)
    assert first is not None
    assert s.on_packet(65000 + 5000 - 65536, 1, 1.0, 100) == SEQ_JUMP
    ext = s.on_packet(65001 + 5000 - 65536, 2, 2.0, 100)  # its successor: a new numbering
    assert ext == first + 5001
    assert s.on_packet(65002 + 5000 - 65536, 3, 3.0, 100) == ext + 1
    assert s.seq_jumps == 1


def test_packet_far_behind_the_newest_is_dropped_while_a_late_one_is_not() -> None:
    s = RtpStreamRecv(1, 90_000)
    for seq in range(2000, 3000):
        s.on_packet(seq, seq, float(seq), 100)
    assert s.on_packet(2999 - MAX_MISORDER - 1, 0, 3000.0, 100) == SEQ_JUMP
    assert s.on_packet(2999 - MAX_MISORDER - 2, 0, 3000.0, 100) == SEQ_JUMP  # never confirmed
    assert s.seq_jumps == 2
    late = s.on_packet(2999 - MAX_MISORDER, 0, 3000.0, 100)  # a duplicate, not a jump
    assert late is None
    assert s.on_packet(3000, 3000, 3001.0, 100) is not None


def test_packets_lost_clamped_to_24_bits_and_fraction_to_255() -> None:
    s = RtpStreamRecv(1, 90_000)
    seq = 0
    for i in range(300):  # 300 jumps of 30000 seqs, each confirmed by its successor: ~9M lost
        s.on_packet(seq, i, float(i), 10)
        s.on_packet((seq + 1) & 0xFFFF, i, float(i), 10)
        seq = (seq + 30_000) & 0xFFFF
    rb = s.report_block(1000.0)
    assert s.cumulative_lost > 0x7F_FFFF
    assert rb.packets_lost == 0x7F_FFFF
    assert rb.fraction_lost == 255
    assert RtcpReceiverInfo.parse(bytes(rb)) == rb


def test_lsr_dlsr() -> None:
    s = RtpStreamRecv(1, 90_000)
    s.on_packet(1, 0, 0.0, 10)
    rb = s.report_block(10.0)
    assert (rb.lsr, rb.dlsr) == (0, 0)  # no SR yet
    s.on_sender_report(0x1234_5678, 1000.0)
    rb = s.report_block(1500.0)
    assert (rb.lsr, rb.dlsr) == (0x1234_5678, 32768)  # 0.5 s in 1/65536 s


def test_loss_rate_over_recent_window_and_bitrate() -> None:
    s = RtpStreamRecv(1, 90_000)
    for i in range(250):  # 10 ms apart; every 10th packet lost
        if i % 10 != 5:
            s.on_packet(i, i * 900, i * 10.0, 1000)
    assert s.loss_rate == pytest.approx(0.1, abs=0.011)
    assert s.bitrate_bps(2490.0) == pytest.approx(720_000, rel=0.06)


# -- RtpStreamSend ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clock", "sent", "now", "rtp_ts"),
    [
        (90_000, [(1000, 0.0), (4000, 30.0)], 50.0, 4000 + 20 * 90),
        (48_000, [(0xFFFF_FF00, 0.0)], 10.0, (0xFFFF_FF00 + 480) & 0xFFFF_FFFF),
        (90_000, [], 50.0, 0),
    ],
)
def test_sr_timestamp_extrapolated(
    clock: int, sent: list[tuple[int, float]], now: float, rtp_ts: int
) -> None:
    s = RtpStreamSend(0x42, clock)
    for ts, t in sent:
        s.on_packet_sent(ts, 1200, t)
    info = s.sender_report_info(now, ntp=0x1122_3344_5566_7788)
    assert info.rtp_timestamp == rtp_ts
    assert info.ntp_timestamp == 0x1122_3344_5566_7788
    assert (info.packet_count, info.octet_count) == (len(sent), 1200 * len(sent))


def _block(lsr: int, dlsr: int, fraction: int = 64, jitter: int = 900) -> RtcpReceiverInfo:
    return RtcpReceiverInfo(
        ssrc=0x42,
        fraction_lost=fraction,
        packets_lost=7,
        highest_sequence=1,
        jitter=jitter,
        lsr=lsr,
        dlsr=dlsr,
    )


def test_rtt_from_lsr_dlsr() -> None:
    t_sr = 1_700_000_000.125
    lsr = ntp_middle32(ntp_from_unix(t_sr))
    s = RtpStreamSend(0x42, 90_000)
    # receiver held it 200 ms; the RR arrives 250 ms after the SR went out
    s.on_report_block(_block(lsr, int(0.2 * 65536)), 0.0, ntp_middle32(ntp_from_unix(t_sr + 0.25)))
    assert s.rtt_ms == pytest.approx(50.0, abs=0.05)
    assert s.fraction_lost == 0.25
    assert s.jitter_ms == 10.0
    assert s.packets_lost == 7


@pytest.mark.parametrize(
    ("lsr", "dlsr", "now32", "rtt"),
    [
        (0, 0, 0x10000, None),  # lsr 0: no SR seen yet, RTT unknown
        (0x1000_0000, 0x100, 0x1000_0000, 1.0),  # slightly negative: clamped
        (0xFFFF_0000, 0, 0x0000_8000, 1500.0),  # compact NTP wraps between SR and RR
    ],
)
def test_rtt_edges(lsr: int, dlsr: int, now32: int, rtt: float | None) -> None:
    s = RtpStreamSend(0x42, 90_000)
    s.on_report_block(_block(lsr, dlsr), 0.0, now32)
    assert s.rtt_ms == rtt


def test_send_recv_round_trip_rtt() -> None:
    """SR -> receiver (20 ms) -> RR after 100 ms -> sender (20 ms): RTT 40 ms."""
    offset = 1_700_000_000.0
    tx = RtpStreamSend(7, 90_000)
    rx = RtpStreamRecv(7, 90_000)
    tx.on_packet_sent(0, 1000, 1000.0)
    rx.on_packet(1, 0, 1020.0, 1000)
    sr = tx.sender_report_info(1000.0, ntp_at(1000.0, offset))
    rx.on_sender_report(ntp_middle32(sr.ntp_timestamp), 5020.0)  # receiver's own clock
    rb = rx.report_block(5120.0)
    tx.on_report_block(rb, 1140.0, ntp_middle32(ntp_at(1140.0, offset)))
    assert tx.rtt_ms == pytest.approx(40.0, abs=0.05)
    assert tx.bitrate_bps(1140.0) > 0
    assert (tx.packets_sent, tx.bytes_sent) == (1, 1000)
