"""Internal consumers of a published track's packets (the recorder, the captioner).

A `PacketSink` sits on a `PublishedTrack` beside its DownTracks (DESIGN §12). It gets
every packet after SRTP unprotect, dedupe and NACK repair, straight from the socket
callback, so it must never block: copy what it keeps and hand heavy work to a thread
or process through a bounded queue (dropping and counting when full). It sees every
simulcast layer and picks its own, like a DownTrack; it asks for a keyframe through
the `SinkHost` it was given (the track coalesces PLIs with its subscribers').
"""

from __future__ import annotations

from typing import Protocol

from media.wire.rtp import RtpView


class SinkHost(Protocol):
    """What a track offers its sinks: a coalesced keyframe request toward the publisher."""

    def request_keyframe(self, layer: int, now_ms: float) -> None: ...


class PacketSink(Protocol):
    """Receives one track's packets; all calls come from the event loop and must not block."""

    # The highest simulcast layer this sink wants the publisher to keep sending:
    # dynacast pauses no layer at or below it (a recorder wants the best one).
    wanted_layer: int

    def on_packet(
        self, layer: int, view: RtpView, ext_seq: int, keyframe: bool, now_ms: float
    ) -> None:
        """A received packet of simulcast layer `layer` (0 = lowest).

        `view.buf` may be reused once this returns: keep a copy, not the view.
        `ext_seq` is the layer's unwrapped sequence number; `keyframe` is true on the
        first packet of a keyframe (VP8, H.264). Repairs arrive late and out of order.
        """
        ...

    def on_sender_report(self, layer: int, ntp: int, rtp_timestamp: int, now_ms: float) -> None:
        """An RTCP sender report of `layer`: 64-bit NTP time <-> RTP timestamp."""
        ...

    def on_track_closed(self) -> None:
        """The track was unpublished or its publisher left; no more packets come."""
        ...
