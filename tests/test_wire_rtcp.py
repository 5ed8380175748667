"""media.wire.rtcp: compound parsing, builders, golden bytes and exact errors."""

from __future__ import annotations

import pytest
from aiortc.rtp import (
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSrPacket,
)

from media.wire.rtcp import (
    Fir,
    Remb,
    Unknown,
    build_bye,
    build_fir,
    build_nack,
    build_pli,
    build_remb,
    build_rr,
    build_sdes_cname,
    build_sr,
    nack_seqs,
    parse_rtcp,
)
from media.wire.twcc import TwccFeedback

REPORT = RtcpReceiverInfo(
    ssrc=0x11, fraction_lost=12, packets_lost=-3, highest_sequence=70000, jitter=40, lsr=0x1234, dlsr=99
)
# TWCC example from draft-era captures: one packet received, 37 ms after reference time
TWCC_GOLDEN = bytes.fromhex("afcd0005fa17fa17" "43032fa0" "00990001" "3de80217" "2001" "94" "01")


def test_pli_golden() -> None:
    data = build_pli(1, 2)
    assert data == bytes.fromhex("81ce0002" "00000001" "00000002")
    [pkt] = parse_rtcp(data)
    assert pkt == RtcpPsfbPacket(fmt=1, ssrc=1, media_ssrc=2, fci=b"")
    assert bytes(pkt) == data


def test_nack_golden_and_round_trip() -> None:
    data = build_nack(1, 2, [100, 101, 116])
    assert data == bytes.fromhex("81cd0003" "00000001" "00000002" "0064" "8001")
    [pkt] = parse_rtcp(data)
    assert isinstance(pkt, RtcpRtpfbPacket)
    assert nack_seqs(pkt) == [100, 101, 116]
    assert bytes(pkt) == data


def test_nack_across_wrap_is_one_pair() -> None:
    data = build_nack(1, 2, [65534, 65535, 0, 1])
    assert data == bytes.fromhex("81cd0003" "00000001" "00000002" "fffe" "0007")
    [pkt] = parse_rtcp(data)
    assert isinstance(pkt, RtcpRtpfbPacket)
    assert nack_seqs(pkt) == [65534, 65535, 0, 1]


def test_nack_splits_far_seqs_and_dedups() -> None:
    data = build_nack(1, 2, [10, 10, 27, 11, 70010])  # 70010 & 0xffff == 4474
    [pkt] = parse_rtcp(data)
    assert isinstance(pkt, RtcpRtpfbPacket)
    assert nack_seqs(pkt) == [10, 11, 27, 4474]
    assert len(data) == 12 + 4 * 3


def test_nack_needs_seqs() -> None:
    with pytest.raises(ValueError, match="^NACK needs at least one sequence number$"):
        build_nack(1, 2, [])


def test_fir_golden_and_round_trip() -> None:
    data = build_fir(1, 2, 263)
    assert data == bytes.fromhex("84ce0004" "00000001" "00000000" "00000002" "07000000")
    [pkt] = parse_rtcp(data)
    assert pkt == Fir(sender_ssrc=1, media_ssrc=0, entries=[(2, 7)])
    assert bytes(pkt) == data


def test_fir_many_entries() -> None:
    fir = Fir(9, 0, [(1, 1), (2, 255)])
    [pkt] = parse_rtcp(bytes(fir))
    assert pkt == fir


def test_remb_golden_and_round_trip() -> None:
    data = build_remb(1, 1_500_000, [2])
    assert data == bytes.fromhex("8fce0005" "00000001" "00000000" "52454d42" "010edc6c" "00000002")
    [pkt] = parse_rtcp(data)
    assert pkt == Remb(sender_ssrc=1, bitrate=1_500_000, ssrcs=[2])
    assert bytes(pkt) == data


def test_remb_lossy_mantissa() -> None:
    [pkt] = parse_rtcp(build_remb(1, 10_000_001, [2, 3]))
    assert isinstance(pkt, Remb)
    assert pkt.ssrcs == [2, 3]
    assert 10_000_001 - 64 < pkt.bitrate <= 10_000_001


def test_afb_that_is_not_remb_is_generic_psfb() -> None:
    data = bytes.fromhex("8fce0003" "00000001" "00000002" "41424344")
    [pkt] = parse_rtcp(data)
    assert pkt == RtcpPsfbPacket(fmt=15, ssrc=1, media_ssrc=2, fci=b"ABCD")


def test_sr_rr_round_trip() -> None:
    sr = build_sr(0xABCDEF, (3_900_000_000 << 32) | 0x80000000, 90000, 10, 12000, [REPORT])
    rr = build_rr(0xABCDEF, [REPORT, REPORT])
    [p_sr, p_rr] = parse_rtcp(sr + rr)
    assert isinstance(p_sr, RtcpSrPacket) and isinstance(p_rr, RtcpRrPacket)
    assert p_sr.ssrc == 0xABCDEF
    assert p_sr.sender_info.ntp_timestamp == (3_900_000_000 << 32) | 0x80000000
    assert (p_sr.sender_info.rtp_timestamp, p_sr.sender_info.packet_count, p_sr.sender_info.octet_count) == (90000, 10, 12000)
    assert p_sr.reports == [REPORT]
    assert p_rr.reports == [REPORT, REPORT]
    assert bytes(p_sr) == sr and bytes(p_rr) == rr
    assert build_rr(1, []) == bytes.fromhex("80c90001" "00000001")


def test_sr_with_profile_extension_is_accepted() -> None:
    sr = bytearray(build_sr(1, 2, 3, 4, 5))
    sr[3] += 1
    sr += b"\xde\xad\xbe\xef"
    [pkt] = parse_rtcp(bytes(sr))
    assert isinstance(pkt, RtcpSrPacket) and pkt.reports == []


def test_sdes_cname() -> None:
    data = build_sdes_cname(0x01020304, "abcde")
    assert data == bytes.fromhex("81ca0003" "01020304" "0105" "6162636465" "00")
    short = build_sdes_cname(1, "abcd")
    assert short == bytes.fromhex("81ca0003" "00000001" "0104" "61626364" "0000")
    [pkt] = parse_rtcp(data)
    assert isinstance(pkt, RtcpSdesPacket)
    assert pkt.chunks[0].ssrc == 0x01020304
    assert pkt.chunks[0].items == [(1, b"abcde")]


def test_sdes_two_aligned_chunks() -> None:
    chunk1 = bytes.fromhex("00000001" "0103616263" "000000")  # 12 bytes
    chunk2 = bytes.fromhex("00000002" "01016a" "00")  # 8 bytes
    data = bytes.fromhex("82ca0005") + chunk1 + chunk2
    [pkt] = parse_rtcp(data)
    assert isinstance(pkt, RtcpSdesPacket)
    assert [(c.ssrc, c.items) for c in pkt.chunks] == [(1, [(1, b"abc")]), (2, [(1, b"j")])]


def test_bye_round_trip() -> None:
    data = build_bye([1, 2])
    assert data == bytes.fromhex("82cb0002" "00000001" "00000002")
    [pkt] = parse_rtcp(data)
    assert pkt == RtcpByePacket(sources=[1, 2])
    assert bytes(pkt) == data


def test_twcc_in_compound() -> None:
    data = build_rr(1, []) + TWCC_GOLDEN + build_pli(1, 2)
    rr, twcc, pli = parse_rtcp(data)
    assert isinstance(rr, RtcpRrPacket) and isinstance(pli, RtcpPsfbPacket)
    assert isinstance(twcc, TwccFeedback)
    assert twcc.base_seq == 153 and twcc.fb_pkt_count == 23
    assert bytes(twcc) == TWCC_GOLDEN


def test_unknown_types() -> None:
    app = bytes.fromhex("80cc0002" "00000001" "41424344")
    xr = bytes.fromhex("80cf0001" "00000001")
    tmmbr = bytes.fromhex("83cd0002" "00000001" "00000002")
    pkts = parse_rtcp(app + xr + tmmbr)
    assert pkts == [Unknown(204, 0, app), Unknown(207, 0, xr), Unknown(205, 3, tmmbr)]
    assert bytes(pkts[0]) == app


def test_padding_on_last_packet() -> None:
    data = bytes.fromhex("a0c90002" "00000001" "00000004")
    [pkt] = parse_rtcp(data)
    assert pkt == RtcpRrPacket(ssrc=1, reports=[])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "RTCP packet is empty"),
        (bytes.fromhex("80c800"), "RTCP packet length is less than 4 bytes"),
        (build_pli(1, 2) + b"\x81", "RTCP packet length is less than 4 bytes"),
        (bytes.fromhex("00c80000"), "RTCP packet has invalid version"),
        (bytes.fromhex("80c80001"), "RTCP packet is truncated"),
        (bytes.fromhex("a0c90001" "00000000"), "RTCP packet padding length is invalid"),
        (bytes.fromhex("a0c90001" "00000005"), "RTCP packet padding length is invalid"),
        (bytes.fromhex("a0c90000"), "RTCP packet padding length is invalid"),
        (bytes.fromhex("80c80001" "00000001"), "RTCP sender report length is invalid"),
        (bytes.fromhex("81c90001" "00000001"), "RTCP receiver report length is invalid"),
        (bytes.fromhex("81ca0000"), "RTCP SDES source is truncated"),
        (bytes.fromhex("81ca0001" "00000001"), "RTCP SDES item is truncated"),
        (bytes.fromhex("81ca0002" "00000001" "01056162"), "RTCP SDES item is truncated"),
        (bytes.fromhex("82cb0001" "00000001"), "RTCP bye length is invalid"),
        (bytes.fromhex("81cd0001" "00000001"), "RTCP RTP feedback length is invalid"),
        (bytes.fromhex("81ce0001" "00000001"), "RTCP payload-specific feedback length is invalid"),
        (bytes.fromhex("84ce0003" "00000001" "00000000" "00000002"), "RTCP FIR length is invalid"),
        (bytes.fromhex("8fcd0004" "00000001" "00000002" "00000001" "00000000"),
         "TWCC packet status chunks are truncated"),
    ],
)
def test_parse_errors(data: bytes, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_rtcp(data)
    assert str(exc.value) == message


def test_struct_errors_become_value_errors() -> None:
    # REMB announcing 2 SSRCs but carrying one: aiortc raises struct.error inside
    data = bytes.fromhex("8fce0005" "00000001" "00000000" "52454d42" "020edc6c" "00000002")
    with pytest.raises(ValueError, match="^RTCP packet is malformed: "):
        parse_rtcp(data)


def test_builder_limits() -> None:
    with pytest.raises(ValueError):
        build_rr(1, [REPORT] * 32)
    with pytest.raises(ValueError):
        build_bye(list(range(32)))
    with pytest.raises(ValueError):
        build_sdes_cname(1, "x" * 256)
    with pytest.raises(ValueError):
        build_remb(1, -1, [])
