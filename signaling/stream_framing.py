"""Sans-I/O: which QUIC stream carries signaling, and the frames on it.

A QUIC (or WebTransport) connection carries exactly one signaling stream: the first
bidirectional stream the client opens. Its bytes are length-prefixed frames (4-byte
big-endian length, then UTF-8 JSON: docs/protocol.md), reassembled by
:class:`signaling.protocol.FrameDecoder`, which also skips oversized frames without
buffering them. Any other stream the client opens is refused (reset) with a
``bad_request`` error on the signaling stream; a client that keeps opening streams
(:data:`MAX_REFUSED_STREAMS`) has its connection closed. Nothing here touches a socket.
"""

from __future__ import annotations

from dataclasses import dataclass

from .protocol import MAX_SDP_MESSAGE_BYTES, FrameDecoder, ProtocolError, frame

__all__ = ["MAX_REFUSED_STREAMS", "StreamVerdict", "StreamGate", "BodyDecoder", "frame"]

# Streams refused on one connection before it counts as a flood and is closed.
MAX_REFUSED_STREAMS = 8


class BodyDecoder(FrameDecoder):
    """Frames as raw UTF-8 bodies (the session decodes and validates them, as on /ws)."""

    @staticmethod
    def _parse(body: bytes) -> bytes:  # type: ignore[override]
        return body

    def feed(self, data: bytes) -> list[bytes | ProtocolError]:  # type: ignore[override]
        return super().feed(data)  # type: ignore[return-value]


@dataclass(frozen=True)
class StreamVerdict:
    """What the shell does with data on a stream: ``accept`` it, ``refuse`` (reset) the
    stream, or ``close`` the whole connection (stream flood)."""

    action: str  # "accept" | "refuse" | "close"
    error: ProtocolError | None = None


class StreamGate:
    """Accepts the first client bidirectional stream; refuses and counts the others."""

    # Frames up to the SDP limit reach the session, whose decode() applies the limit
    # of each request type (64 KiB, or 256 KiB for an SDP), as on /ws.
    def __init__(self, max_refused: int = MAX_REFUSED_STREAMS, max_bytes: int = MAX_SDP_MESSAGE_BYTES) -> None:
        self.max_refused = max_refused
        self.signaling_stream: int | None = None
        self.refused: set[int] = set()
        self.decoder = BodyDecoder(max_bytes)

    def classify(self, stream_id: int, bidirectional: bool) -> StreamVerdict:
        """Called for every stream data event; cheap for the accepted stream."""
        if stream_id == self.signaling_stream:
            return StreamVerdict("accept")
        if stream_id in self.refused:
            return StreamVerdict("refuse")  # more data on a stream already reset: ignore it
        if self.signaling_stream is None and bidirectional:
            self.signaling_stream = stream_id
            return StreamVerdict("accept")
        self.refused.add(stream_id)
        if len(self.refused) > self.max_refused:
            return StreamVerdict(
                "close",
                ProtocolError("bad_request", f"more than {self.max_refused} extra streams opened (stream flood)"),
            )
        kind = "bidirectional" if bidirectional else "unidirectional"
        return StreamVerdict(
            "refuse",
            ProtocolError(
                "bad_request",
                f"{kind} stream {stream_id} refused: signaling uses one bidirectional stream per connection",
            ),
        )

    def feed(self, data: bytes) -> list[bytes | ProtocolError]:
        """Frames completed by ``data`` on the signaling stream, in order."""
        return self.decoder.feed(data)

    @property
    def buffered(self) -> int:
        return self.decoder.buffered
