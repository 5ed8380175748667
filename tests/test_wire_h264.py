"""H.264 keyframe detection (RFC 6184 packetization modes)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.wire.h264 import is_keyframe_start


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x67\x42\x00\x1f", True),  # SPS alone
        (b"\x65\x88\x84", True),  # IDR single NAL
        (b"\x41\x9a\x00", False),  # non-IDR slice
        (b"\x18\x00\x02\x67\x42\x00\x02\x68\xce", True),  # STAP-A with SPS first
        (b"\x18\x00\x02\x68\xce\x00\x03\x65\x88\x84", True),  # STAP-A, IDR second
        (b"\x18\x00\x02\x41\x9a", False),  # STAP-A without keyframe NALs
        (b"\x18\x00\x09\x67", False),  # STAP-A length past the end
        (b"\x7c\x85\x88", True),  # FU-A start of an IDR
        (b"\x7c\x05\x88", False),  # FU-A middle of an IDR
        (b"\x7c\x81\x88", False),  # FU-A start of a non-IDR slice
        (b"\x7c", False),
        (b"", False),
    ],
)
def test_keyframe_start(payload, expected):
    assert is_keyframe_start(payload) is expected


@given(st.binary(max_size=64))
def test_never_raises(data):
    assert is_keyframe_start(data) in (True, False)
