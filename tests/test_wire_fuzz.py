"""Property tests: the wire parsers only ever raise ValueError, and builders round-trip.

Derandomized so a run is reproducible; example counts kept small for CI on 2 cores.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from media.wire.rtcp import parse_rtcp
from media.wire.rtp import build_rtp, parse_rtp
from media.wire.twcc import TwccFeedback
from media.wire.vp8 import parse_vp8

FUZZ = settings(derandomize=True, max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(derandomize=True, max_examples=150, deadline=None)


def _rtp_probe(data: bytes) -> None:
    try:
        v = parse_rtp(data)
    except ValueError:
        return
    assert 12 <= v.payload_start <= v.payload_end <= len(data)
    assert len(v.payload) == v.payload_end - v.payload_start
    for i in range(1, 15):
        try:
            v.extension(i)
        except ValueError:
            pass
    try:
        v.extensions()
    except ValueError:
        pass


@FUZZ
@given(st.binary(max_size=1500))
def test_parse_rtp_only_raises_value_error(data: bytes) -> None:
    _rtp_probe(data)


@FUZZ
@given(st.sampled_from([0x80, 0x90, 0xA0, 0xB0, 0x91, 0xB2]), st.binary(max_size=11),
       st.sampled_from([b"\xbe\xde", b"\x10\x00", b"\x10\x07", b"\x00\x00"]), st.binary(max_size=80))
def test_parse_rtp_guided(b0: int, rest: bytes, profile: bytes, tail: bytes) -> None:
    header = bytes([b0]) + rest.ljust(11, b"\x00")
    cc = b0 & 0x0F
    _rtp_probe(header + bytes(4 * cc)[: len(tail)] + profile + tail)
    _rtp_probe(header + profile + tail)


@FUZZ
@given(st.binary(max_size=1500))
def test_parse_vp8_only_raises_value_error(data: bytes) -> None:
    try:
        d = parse_vp8(data)
    except ValueError:
        return
    assert 1 <= d.size < len(data)


@FUZZ
@given(st.binary(max_size=1500))
def test_parse_rtcp_only_raises_value_error(data: bytes) -> None:
    try:
        parse_rtcp(data)
    except ValueError:
        pass


@st.composite
def rtcp_packets(draw: st.DrawFn) -> bytes:
    """Well-framed RTCP packets with random contents, to get past the framing checks."""
    out = b""
    for _ in range(draw(st.integers(1, 3))):
        pt = draw(st.integers(200, 207))
        b0 = 0x80 | draw(st.integers(0, 31)) | (0x20 if draw(st.booleans()) else 0)
        words = draw(st.integers(0, 12))
        body = draw(st.binary(min_size=4 * words, max_size=4 * words))
        out += struct.pack("!BBH", b0, pt, words) + body
    return out


@FUZZ
@given(rtcp_packets())
def test_parse_rtcp_guided(data: bytes) -> None:
    try:
        parse_rtcp(data)
    except ValueError:
        pass


@FUZZ
@given(st.binary(max_size=1500))
def test_twcc_parse_only_raises_value_error(data: bytes) -> None:
    try:
        fb = TwccFeedback.parse(data)
    except ValueError:
        return
    assert TwccFeedback.parse(bytes(fb)) == fb


@FUZZ
@given(st.integers(0, 0xFFFF), st.integers(1, 40), st.binary(min_size=0, max_size=200), st.booleans())
def test_twcc_parse_guided(base: int, count: int, body: bytes, pad: bool) -> None:
    body += b"\x00" * (-len(body) % 4)
    if pad and body:
        body = body[:-1] + bytes([1 + body[-1] % 4])
    data = struct.pack("!BBHIIHHI", 0x8F | (0x20 if pad else 0), 205, 4 + len(body) // 4, 1, 2, base, count, 7) + body
    try:
        fb = TwccFeedback.parse(data)
    except ValueError:
        return
    assert len(fb.packets) == count
    assert TwccFeedback.parse(bytes(fb)) == fb


# --- round trips ----------------------------------------------------------------------

one_byte_ext = st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16))
two_byte_ext = st.tuples(st.integers(1, 255), st.binary(max_size=255))


@ROUND_TRIP
@given(
    pt=st.integers(0, 127),
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
    payload=st.binary(max_size=1200),
    csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15),
    exts=st.one_of(st.lists(one_byte_ext, max_size=6), st.lists(two_byte_ext, max_size=4)),
)
def test_build_parse_round_trip(
    pt: int, seq: int, ts: int, ssrc: int, marker: bool, payload: bytes,
    csrcs: list[int], exts: list[tuple[int, bytes]],
) -> None:
    # lookups return the first element with an id, so keep ids unique
    unique = list({i: (i, v) for i, v in reversed(exts)}.values())[::-1]
    data = build_rtp(payload_type=pt, seq=seq, timestamp=ts, ssrc=ssrc, payload=payload,
                     marker=marker, extensions=unique, csrcs=csrcs)
    v = parse_rtp(data)
    assert (v.payload_type, v.seq, v.timestamp, v.ssrc, v.marker) == (pt, seq, ts, ssrc, marker)
    assert v.csrcs == csrcs
    assert bytes(v.payload) == payload
    assert v.extensions() == unique
    for i, val in unique:
        assert v.extension(i) == val


@st.composite
def feedbacks(draw: st.DrawFn) -> TwccFeedback:
    base = draw(st.integers(0, 0xFFFF))
    ref = draw(st.integers(0, 0xFFFFFF))
    statuses = draw(st.lists(st.one_of(st.none(), st.integers(0, 255), st.integers(-0x8000, 0x7FFF)),
                             max_size=300))
    t = ref * 64000
    packets: list[tuple[int, int | None]] = []
    for i, delta in enumerate(statuses):
        if delta is None:
            packets.append(((base + i) & 0xFFFF, None))
        else:
            t += delta * 250
            packets.append(((base + i) & 0xFFFF, t))
    return TwccFeedback(draw(st.integers(0, 0xFFFFFFFF)), draw(st.integers(0, 0xFFFFFFFF)),
                        base, ref, draw(st.integers(0, 255)), packets)


@ROUND_TRIP
@given(feedbacks())
def test_twcc_round_trip(fb: TwccFeedback) -> None:
    data = bytes(fb)
    assert len(data) % 4 == 0
    assert TwccFeedback.parse(data) == fb
    assert bytes(TwccFeedback.parse(data)) == data
    [again] = parse_rtcp(data)
    assert again == fb
