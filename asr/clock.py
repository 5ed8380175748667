"""RTP timestamps -> Unix milliseconds for one audio track (sans-I/O).

The publisher's RTCP sender reports pair an NTP wall time with an RTP timestamp;
`to_unix_ms` maps any RTP timestamp near it through the clock rate (48 kHz for Opus).
Until the first sender report, arrival times stand in: the anchor is the packet that
arrived earliest relative to its timestamp (the least-delayed one), so jitter and
late repairs never move the mapping later. Timestamps are 32-bit and wrap; the
difference to the anchor is taken as a signed 32-bit number (good for +-12 hours).
"""

from __future__ import annotations

from media.rtp.ntp import ntp_to_unix

__all__ = ["RtpWallClock"]

_MOD = 1 << 32
_HALF = 1 << 31


def _diff32(a: int, b: int) -> int:
    """`a - b` for 32-bit wrapping timestamps, as a signed number."""
    d = (a - b) % _MOD
    return d - _MOD if d >= _HALF else d


class RtpWallClock:
    """The RTP -> wall-clock mapping of one track (see the module docstring)."""

    def __init__(self, clock_rate: int = 48000) -> None:
        self.clock_rate = clock_rate
        self._sr: tuple[int, float] | None = None  # (rtp32, unix seconds)
        self._arrival: tuple[int, float] | None = None  # (rtp32, unix seconds)
        self.sender_reports = 0

    @property
    def source(self) -> str | None:
        """"rtcp" once a sender report came, "arrival" before, None before any packet."""
        if self._sr is not None:
            return "rtcp"
        return "arrival" if self._arrival is not None else None

    def on_sender_report(self, ntp: int, rtp_timestamp: int) -> None:
        self._sr = (rtp_timestamp % _MOD, ntp_to_unix(ntp))
        self.sender_reports += 1

    def on_arrival(self, rtp_timestamp: int, unix_s: float) -> None:
        """A packet with `rtp_timestamp` arrived at Unix time `unix_s`."""
        ts = rtp_timestamp % _MOD
        anchor = self._arrival
        if anchor is None:
            self._arrival = (ts, unix_s)
            return
        # Where this packet puts the anchor's timestamp; keep the earliest.
        implied = unix_s - _diff32(ts, anchor[0]) / self.clock_rate
        if implied < anchor[1]:
            self._arrival = (anchor[0], implied)

    def to_unix(self, rtp_timestamp: int) -> float | None:
        """Unix seconds of `rtp_timestamp`, or None before any packet or report."""
        anchor = self._sr if self._sr is not None else self._arrival
        if anchor is None:
            return None
        return anchor[1] + _diff32(rtp_timestamp % _MOD, anchor[0]) / self.clock_rate

    def to_unix_ms(self, rtp_timestamp: int) -> int | None:
        unix = self.to_unix(rtp_timestamp)
        return None if unix is None else round(unix * 1000.0)
