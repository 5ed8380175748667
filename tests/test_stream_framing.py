"""The sans-I/O stream gate of QUIC signaling: which stream is accepted, frames on it."""

from __future__ import annotations

import struct

from signaling.protocol import ProtocolError
from signaling.stream_framing import MAX_REFUSED_STREAMS, StreamGate


def _frame(body: bytes) -> bytes:
    return struct.pack("!I", len(body)) + body


def test_first_bidirectional_stream_is_signaling_and_others_are_refused() -> None:
    gate = StreamGate()
    assert gate.classify(2, bidirectional=False).action == "refuse"  # unidirectional first
    assert gate.classify(0, bidirectional=True).action == "accept"
    assert gate.signaling_stream == 0
    refused = gate.classify(4, bidirectional=True)
    assert refused.action == "refuse" and refused.error is not None and refused.error.code == "bad_request"
    again = gate.classify(4, bidirectional=True)  # more data on a refused stream: no new error
    assert again.action == "refuse" and again.error is None
    assert gate.classify(0, bidirectional=True).action == "accept"


def test_a_flood_of_streams_closes_the_connection() -> None:
    gate = StreamGate()
    gate.classify(0, bidirectional=True)
    actions = [gate.classify(4 * (i + 1), bidirectional=True).action for i in range(MAX_REFUSED_STREAMS + 1)]
    assert actions == ["refuse"] * MAX_REFUSED_STREAMS + ["close"]


def test_frames_come_out_as_raw_bodies_in_any_chunking() -> None:
    gate = StreamGate(max_bytes=100)
    data = _frame(b'{"a":1}') + _frame(b"x" * 150) + _frame(b'{"b":2}')
    out: list[bytes | ProtocolError] = []
    for i in range(0, len(data), 7):
        out += gate.feed(data[i : i + 7])
    assert out[0] == b'{"a":1}'
    assert isinstance(out[1], ProtocolError) and out[1].code == "too_large"
    assert out[2] == b'{"b":2}'
    assert gate.buffered == 0
