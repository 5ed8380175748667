"""Where a remote sender's wall clock (the NTP time in its RTCP SRs) sits on Ferry's
monotonic clock.

A sender report pairs an NTP instant with the RTP timestamp of that instant on the
sender's capture clock (RFC 3550 6.4.1). Ferry forwards a publisher's streams with its
own sender reports, and a browser lines up audio and video (lip sync) by those reports.
If Ferry stamped them from the times it *sent* packets, video would read as captured
later than audio by the time it spent in pacers (the publisher's and Ferry's), and the
browser would hold video back by that much more than the audio. Mapped through the
publisher's own reports, both kinds name their capture instants.

The offset between the sender's clock and Ferry's is the smallest (arrival - NTP) seen
over a short window: a report that waited in a queue on the way in arrives late, never
early, so the minimum is the one that did not wait. The window is short enough that
clock drift (tens of ppm) does not matter and a stepped sender clock is followed within
it.
"""

from __future__ import annotations

from collections import deque

from media.rtp.ntp import ntp_to_unix

__all__ = ["RemoteClock"]

WINDOW_MS = 10_000.0


class RemoteClock:
    """One remote sender's NTP clock seen from Ferry's ``now_ms`` clock."""

    __slots__ = ("_samples",)

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque()  # (arrival ms, arrival - NTP ms)

    def on_sender_report(self, ntp: int, now_ms: float) -> float:
        """A report sent at ``ntp`` arrived at ``now_ms``: the Ferry time of ``ntp``."""
        samples = self._samples
        at = ntp_to_unix(ntp) * 1000.0
        samples.append((now_ms, now_ms - at))
        while samples[0][0] < now_ms - WINDOW_MS:
            samples.popleft()
        return at + min(offset for _, offset in samples)
