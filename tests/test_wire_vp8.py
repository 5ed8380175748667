"""media.wire.vp8: RFC 7741 payload descriptor parse and in-place rewrite."""

from __future__ import annotations

import pytest

from media.wire.vp8 import Vp8Descriptor, parse_vp8, rewrite_vp8

# VP8 key frame payload header: frame tag (P=0, show_frame), start code, 640x360
KEY_HEADER = bytes.fromhex("5003009d012a" "8002" "6801")
# interframe: P bit (LSB of the first byte) = 1
INTER_HEADER = bytes.fromhex("3102") + bytes(8)


def test_minimal_descriptor() -> None:
    d = parse_vp8(b"\x10" + KEY_HEADER)
    assert d == Vp8Descriptor(
        start_of_partition=True, partition_index=0, size=1, is_keyframe=True, width=640, height=360,
    )
    assert d.picture_id is None and d.picture_id_bits == 0
    assert d.tl0picidx is None and d.tid is None and d.keyidx is None


def test_chrome_style_15_bit_picture_id_with_temporal_layers() -> None:
    # X=1 S=1 PID=0 | I L T | M=1 picture id 0x1234 | TL0PICIDX 7 | TID=2 Y=1 KEYIDX=0
    payload = bytes([0x90, 0xE0, 0x92, 0x34, 0x07, 0xA0]) + INTER_HEADER
    d = parse_vp8(payload)
    assert d.start_of_partition is True
    assert d.partition_index == 0
    assert (d.picture_id, d.picture_id_bits) == (0x1234, 15)
    assert d.tl0picidx == 7
    assert (d.tid, d.layer_sync) == (2, True)
    assert d.keyidx is None  # K bit clear
    assert d.size == 6
    assert d.is_keyframe is False
    assert d.width is None and d.height is None


def test_7_bit_picture_id_and_keyidx_only() -> None:
    # X=1 N=1 S=0 PID=3 | I K | picture id 0x55 | KEYIDX 0x1b
    payload = bytes([0xA3, 0x90, 0x55, 0x1B]) + b"\x00"
    d = parse_vp8(payload)
    assert d.non_reference is True
    assert d.start_of_partition is False and d.partition_index == 3
    assert (d.picture_id, d.picture_id_bits) == (0x55, 7)
    assert d.tid is None and d.layer_sync is False
    assert d.keyidx == 0x1B
    assert d.size == 4
    assert d.is_keyframe is False  # not the start of partition 0


def test_keyframe_detection() -> None:
    assert parse_vp8(bytes([0x10]) + KEY_HEADER).is_keyframe
    assert not parse_vp8(bytes([0x10]) + INTER_HEADER).is_keyframe
    assert not parse_vp8(bytes([0x00]) + KEY_HEADER).is_keyframe  # S=0
    assert not parse_vp8(bytes([0x11]) + KEY_HEADER).is_keyframe  # partition 1


def test_keyframe_too_short_for_dimensions() -> None:
    d = parse_vp8(bytes([0x10]) + KEY_HEADER[:6])
    assert d.is_keyframe is True
    assert d.width is None and d.height is None
    d = parse_vp8(bytes([0x10]) + b"\x50\x03\x00\x00\x00\x00" + KEY_HEADER[6:])  # bad start code
    assert d.is_keyframe is True and d.width is None


def test_dimensions_ignore_scale_bits() -> None:
    header = bytes.fromhex("5003009d012a") + (1280 | 0x4000).to_bytes(2, "little") + (720 | 0xC000).to_bytes(2, "little")
    d = parse_vp8(bytes([0x10]) + header)
    assert (d.width, d.height) == (1280, 720)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "VP8 payload descriptor is truncated"),
        (b"\x80", "VP8 payload descriptor is truncated"),
        (b"\x80\x80", "VP8 payload descriptor is truncated"),
        (b"\x80\x80\x80", "VP8 payload descriptor is truncated"),
        (b"\x80\x40", "VP8 payload descriptor is truncated"),
        (b"\x80\xe0\x01\x02", "VP8 payload descriptor is truncated"),
        (b"\x80\x10", "VP8 payload descriptor is truncated"),
        (b"\x10", "VP8 payload is empty"),
        (b"\x80\xe0\x81\x02\x03\x04", "VP8 payload is empty"),
    ],
)
def test_truncated(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_vp8(payload)
    assert str(exc.value) == message


def test_memoryview_input() -> None:
    buf = b"rtpheader" + bytes([0x90, 0x80, 0x05]) + INTER_HEADER
    d = parse_vp8(memoryview(buf)[9:])
    assert d.picture_id == 5


def test_rewrite_15_bit_wraps() -> None:
    prefix = b"\x00" * 12  # pretend RTP header
    buf = bytearray(prefix + bytes([0x90, 0xF0, 0xFF, 0xFF, 0x07, 0x65]) + INTER_HEADER)
    d = parse_vp8(buf[12:])
    assert d.keyidx == 5 and d.tid == 1 and d.layer_sync
    rewrite_vp8(buf, 12, d, picture_id=32768 + 3, tl0picidx=256 + 9, keyidx=33)
    again = parse_vp8(buf[12:])
    assert (again.picture_id, again.picture_id_bits) == (3, 15)
    assert again.tl0picidx == 9
    assert again.keyidx == 1
    assert (again.tid, again.layer_sync) == (1, True)  # untouched bits
    assert (d.picture_id, d.tl0picidx, d.keyidx) == (32767, 7, 5)  # shared desc untouched
    assert buf[:12] == prefix and buf[18:] == INTER_HEADER


def test_rewrite_7_bit_wraps() -> None:
    buf = bytearray([0x90, 0xC0, 0x7F, 0x01]) + INTER_HEADER
    d = parse_vp8(buf)
    rewrite_vp8(buf, 0, d, picture_id=130)
    assert parse_vp8(buf).picture_id == 2
    assert parse_vp8(buf).picture_id_bits == 7
    rewrite_vp8(buf, 0, d, tl0picidx=300)
    assert parse_vp8(buf).tl0picidx == 44
    assert buf[4:] == INTER_HEADER


def test_rewrite_absent_fields() -> None:
    buf = bytearray([0x10]) + INTER_HEADER
    d = parse_vp8(buf)
    with pytest.raises(ValueError, match="^VP8 descriptor has no picture id$"):
        rewrite_vp8(buf, 0, d, picture_id=1)
    with pytest.raises(ValueError, match="^VP8 descriptor has no TL0PICIDX$"):
        rewrite_vp8(buf, 0, d, tl0picidx=1)
    with pytest.raises(ValueError, match="^VP8 descriptor has no KEYIDX$"):
        rewrite_vp8(buf, 0, d, keyidx=1)
    rewrite_vp8(buf, 0, d)  # nothing to do
    assert buf == bytearray([0x10]) + INTER_HEADER


def test_rewrite_tl0_without_picture_id() -> None:
    buf = bytearray([0x90, 0x60, 0x04, 0x40]) + INTER_HEADER
    d = parse_vp8(buf)
    assert d.picture_id is None and d.tl0picidx == 4 and d.tid == 1
    rewrite_vp8(buf, 0, d, tl0picidx=5)
    assert parse_vp8(buf).tl0picidx == 5
    assert parse_vp8(buf).tid == 1


def test_rewritten_descriptor_is_built_once_per_picture_id_pair_and_matches_rewrite() -> None:
    payload = bytes([0x90, 0xC0, 0x80 | 0x12, 0x34, 0x07]) + b"frame bytes"  # 15-bit id, TL0
    d = parse_vp8(payload)
    first = d.rewritten(payload, 0x7FFF, 255)
    again = d.rewritten(memoryview(payload), 0x7FFF, 255)
    other = d.rewritten(payload, 5, 9)
    assert again is first  # shared by every subscriber with the same offsets
    expected = bytearray(payload[: d.size])
    rewrite_vp8(expected, 0, d, picture_id=0x7FFF, tl0picidx=255)
    assert first == bytes(expected) and len(first) == d.size
    assert other != first and parse_vp8(other + b"x").picture_id == 5
    assert parse_vp8(other + b"x").tl0picidx == 9
    assert d == parse_vp8(payload)  # the cache is no field: equality and repr ignore it
    assert "_heads" not in repr(d)
